//! The events a run tells its observer, recorded over a real run: a slice retried after a
//! read failure, a slice failing its check, and slices committed together while a commit
//! is held in flight.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_engine::run::{Observer, Phase, RunEvent, RunStatus};
use backfill_engine::{RunOptions, Selection, SliceOutcome};
use tokio::sync::Semaphore;

use crate::reads::ManualClock;
use crate::stores::{open_through, TestStore};
use crate::support::Case;

const DAYS: [&str; 4] = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"];

/// Records every event, fails the first read of `2024-01-01`'s first computation, and
/// lets commits through once three slices wait for one.
struct Recorder {
    events: Mutex<Vec<RunEvent>>,
    store: Arc<TestStore>,
    hold: Arc<Semaphore>,
}

impl Observer for Recorder {
    fn on(&self, event: &RunEvent) {
        let mut events = self.events.lock().unwrap();
        events.push(event.clone());
        let phases = |wanted: Phase, slice: Option<&str>| {
            events
                .iter()
                .filter(|e| matches!(e, RunEvent::Phase { phase, slice: s, .. } if *phase == wanted && slice.is_none_or(|w| w == s)))
                .count()
        };
        if let RunEvent::Phase { slice, phase, .. } = event {
            if *phase == Phase::Computing
                && slice == DAYS[0]
                && phases(Phase::Computing, Some(DAYS[0])) == 1
            {
                self.store.failing_reads.store(1, Ordering::SeqCst);
            }
            if *phase == Phase::WaitingForCommit && phases(Phase::WaitingForCommit, None) == 3 {
                self.hold.add_permits(Semaphore::MAX_PERMITS / 2);
            }
        }
    }
}

/// Where `wanted` is among `events`, failing if it is not there.
fn position(events: &[RunEvent], what: &str, wanted: impl Fn(&RunEvent) -> bool) -> usize {
    events
        .iter()
        .position(wanted)
        .unwrap_or_else(|| panic!("no event {what} in {events:#?}"))
}

#[tokio::test]
async fn a_run_tells_its_phases_retries_failed_checks_and_group_commits_in_order() {
    let case = Case::new("orders_clean");
    // 2024-01-03 fails a check; the others pass.
    case.edit_pipeline(
        "WHERE amount < 0\"",
        "WHERE amount < 0 OR dt = '2024-01-03'\"",
    );
    let store = Arc::new(TestStore::default());
    let hold = Arc::new(Semaphore::new(0));
    *store.commit_hold.lock().unwrap() = Some(hold.clone());
    let backfill = open_through(store.clone(), &case.pipeline, &case.table).await;
    let recorder = Arc::new(Recorder {
        events: Mutex::default(),
        store,
        hold: hold.clone(),
    });
    let options = RunOptions {
        concurrency: Some(1),
        retries: 2,
        clock: ManualClock::new(),
        ..RunOptions::default()
    };
    let selection = Selection::keys(DAYS.iter().map(|d| d.to_string()).collect());
    let running = backfill.clone().run(&selection, &options, recorder.clone());
    let summary = match tokio::time::timeout(Duration::from_secs(120), running).await {
        Ok(summary) => summary.unwrap(),
        Err(_) => {
            hold.add_permits(Semaphore::MAX_PERMITS / 2);
            panic!(
                "the run did not end within two minutes: {:#?}",
                recorder.events.lock().unwrap()
            );
        }
    };
    let events = recorder.events.lock().unwrap().clone();

    // The run starts, then the pipeline's part; it ends with the pipeline's summary and
    // the run's end, which counts what is in the table.
    let RunEvent::Started {
        run_id,
        slices,
        to_run,
        concurrency,
        ..
    } = &events[0]
    else {
        panic!("the first event starts the run: {:?}", events[0]);
    };
    assert_eq!(
        (run_id, *slices, *to_run, *concurrency),
        (&summary.run_id, 4, 4, 1)
    );
    assert!(matches!(&events[1], RunEvent::PipelineStarted { header } if header.slices == 4));
    let n = events.len();
    assert_eq!(
        events[n - 2],
        RunEvent::PipelineEnded {
            summary: summary.clone()
        }
    );
    assert_eq!(
        events[n - 1],
        RunEvent::Ended {
            run_id: summary.run_id.clone(),
            status: RunStatus::Incomplete,
            committed: 3,
            not_committed: 1,
            not_started: 0,
        }
    );

    // Each slice goes through its phases in order, and is told finished last.
    let at = |slice: &str, phase: Phase| {
        position(
            &events,
            &format!("{slice} {phase:?}"),
            |e| matches!(e, RunEvent::Phase { slice: s, phase: p, .. } if s == slice && *p == phase),
        )
    };
    let finished = |slice: &str| {
        position(
            &events,
            &format!("{slice} finished"),
            |e| matches!(e, RunEvent::SliceFinished { outcome, .. } if outcome.slice == slice),
        )
    };
    for day in [DAYS[0], DAYS[1], DAYS[3]] {
        let order = [
            at(day, Phase::Planning),
            at(day, Phase::Computing),
            at(day, Phase::Checking),
            at(day, Phase::WaitingForCommit),
            at(day, Phase::Committing),
            finished(day),
        ];
        assert!(order.is_sorted(), "{day}: {order:?} in {events:#?}");
    }

    // The first day's first attempt failed on a read: recorded, told as a retry with its
    // reason and wait, and the second attempt committed it.
    let failed_attempt = position(&events, "first day's failed attempt", |e| {
        matches!(e, RunEvent::Attempted { attempt, .. }
            if attempt.slice == DAYS[0] && attempt.attempt == 1
                && matches!(attempt.status, SliceOutcome::Failed { .. }))
    });
    let retry = position(&events, "a retry", |e| {
        matches!(e, RunEvent::Retrying { .. })
    });
    let RunEvent::Retrying {
        slice,
        attempt,
        error,
        wait_ms,
        ..
    } = &events[retry]
    else {
        unreachable!()
    };
    assert_eq!((slice.as_str(), *attempt), (DAYS[0], 1));
    assert!(!error.is_empty() && *wait_ms > 0, "{:?}", events[retry]);
    assert!(failed_attempt < retry && retry < finished(DAYS[0]));
    assert_eq!(summary.outcomes[0].attempts, 2);

    // The third day failed its check: checked, never waiting for a commit, not retried.
    assert!(at(DAYS[2], Phase::Checking) < finished(DAYS[2]));
    let never = |e: &RunEvent| match e {
        RunEvent::Phase { slice, phase, .. } => {
            slice == DAYS[2] && matches!(phase, Phase::WaitingForCommit | Phase::Committing)
        }
        RunEvent::Retrying { slice, .. } => slice == DAYS[2],
        _ => false,
    };
    assert!(!events.iter().any(never), "{events:#?}");
    assert!(matches!(
        &summary.outcomes[2].status,
        SliceOutcome::Failed {
            fault: backfill_engine::Fault::Data,
            ..
        }
    ));

    // Commits: held until three slices waited, so two of them went in one commit; each
    // committed slice is told in exactly one commit, before it is told finished.
    let commits: Vec<(u64, Vec<String>)> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Committed {
                version, slices, ..
            } => Some((*version, slices.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(commits.len(), 2, "{commits:?}");
    assert_eq!((commits[0].0, commits[1].0), (0, 1));
    let sizes = [commits[0].1.len(), commits[1].1.len()];
    assert!(
        sizes == [1, 2] || sizes == [2, 1],
        "a group commit: {commits:?}"
    );
    let committed: BTreeSet<&str> = commits
        .iter()
        .flat_map(|(_, s)| s)
        .map(|s| s.as_str())
        .collect();
    assert_eq!(committed, BTreeSet::from([DAYS[0], DAYS[1], DAYS[3]]));
    for (day, version) in [DAYS[0], DAYS[1], DAYS[3]].map(|day| {
        let outcome = summary.outcomes.iter().find(|o| o.slice == day).unwrap();
        let SliceOutcome::Committed { version, .. } = outcome.status else {
            panic!("{day}: {outcome:?}")
        };
        (day, version)
    }) {
        let told = position(
            &events,
            &format!("{day}'s commit"),
            |e| matches!(e, RunEvent::Committed { slices, version: v, .. } if *v == version && slices.iter().any(|s| s == day)),
        );
        assert!(told < finished(day), "{day}");
    }

    // Slots: one, taken and given back, never more.
    let slots: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Slots { in_use, of } => Some((*in_use, *of)),
            _ => None,
        })
        .collect();
    assert!(
        slots.iter().all(|&(in_use, of)| of == 1 && in_use <= 1),
        "{slots:?}"
    );
    assert!(
        slots.contains(&(1, 1)) && slots.last() == Some(&(0, 1)),
        "{slots:?}"
    );

    // The history holds what the events told.
    let history = backfill
        .history()
        .run(&summary.run_id)
        .await
        .unwrap()
        .unwrap();
    let attempted: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Attempted { attempt, .. } => Some(attempt.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(history.attempts.len(), attempted.len());
    assert_eq!(history.end.unwrap().committed, 3);
}

/// `run --events` prints every event as a JSON line, as it happens: the run's start, each
/// slice's phases and outcome, the commits, the end.
#[test]
fn run_events_prints_each_event_as_a_json_line() {
    let case = Case::new("orders_clean");
    let printed = case.ok(
        "run",
        &["--start", "2024-01-01", "--end", "2024-01-03", "--events"],
        0,
    );
    let events: Vec<serde_json::Value> = printed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"ended"), "{kinds:?}");
    assert_eq!(events[0]["slices"], 3);
    assert_eq!(events.last().unwrap()["status"], "done");
    assert_eq!(events.last().unwrap()["committed"], 3);
    let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
    assert_eq!(count("slice_finished"), 3);
    assert_eq!(count("pipeline_ended"), 1);
    let committed: usize = events
        .iter()
        .filter(|e| e["event"] == "committed")
        .map(|e| e["slices"].as_array().unwrap().len())
        .sum();
    assert_eq!(committed, 3, "every slice is in one commit");
}
