//! Two runs of the same backfill at once (a user or a scheduler starting the same command
//! twice): every slice is committed exactly once, by one of them, and the other says so.

use std::sync::Arc;
use std::time::Duration;

use backfill_engine::RebuildOutcome;
use backfill_engine::{Backfill, RunOptions, RunSummary, Selection, SliceOutcome};

use crate::stores::{open_over, TestStore};
use crate::support::*;

const DAYS: [&str; 4] = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"];

/// Opens the case's pipeline with its sources behind a store whose every read takes
/// 40 ms, so that each slice takes long enough for two runs to be inside it together.
async fn open_slow(case: &Case) -> Arc<Backfill> {
    let store = TestStore::default();
    *store.read_delay.lock().unwrap() = Duration::from_millis(40);
    let backfill = open_over(Arc::new(store), &case.pipeline, &case.table).await;
    Arc::new(backfill.unwrap())
}

/// Runs the same selection twice at once, one slice at a time each, in the same order:
/// both read the log before either commits, and then race on every slice.
async fn run_twice_at_once(case: &Case) -> (RunSummary, RunSummary) {
    let (first, second) = (open_slow(case).await, open_slow(case).await);
    let selection = Selection::keys(DAYS.iter().map(|d| d.to_string()).collect());
    // Without the pipeline's lease, which would keep the second from running at all:
    // what is shown here is that the log alone keeps the table right.
    let options = RunOptions {
        concurrency: Some(1),
        lease: backfill_engine::run::LeaseWait::Ignore,
        ..RunOptions::default()
    };
    let silent = || Arc::new(backfill_engine::run::Silent);
    let (first, second) = tokio::join!(
        first.run(&selection, &options, silent()),
        second.run(&selection, &options, silent())
    );
    (first.unwrap(), second.unwrap())
}

/// Each slice is committed by one run, and the other run names it as the committer.
fn assert_each_slice_committed_by_one(first: &RunSummary, second: &RunSummary) {
    for (a, b) in first.outcomes.iter().zip(&second.outcomes) {
        assert_eq!(a.slice, b.slice);
        let meanwhile_by = |status: &SliceOutcome| match status {
            SliceOutcome::CommittedMeanwhile { by_run, .. } => Some(by_run.clone()),
            _ => None,
        };
        let committed = |status: &SliceOutcome| matches!(status, SliceOutcome::Committed { .. });
        let one_way = committed(&a.status) && meanwhile_by(&b.status) == Some(first.run_id.clone());
        let other_way =
            committed(&b.status) && meanwhile_by(&a.status) == Some(second.run_id.clone());
        assert!(one_way || other_way, "{a:?}\n{b:?}");
    }
}

async fn assert_two_runs_commit_each_slice_once(pipeline: &str, stored: &str, expected: &str) {
    let case = Case::new(pipeline);
    let (first, second) = run_twice_at_once(&case).await;
    assert_each_slice_committed_by_one(&first, &second);
    assert_eq!(case.committed_slices(), DAYS.to_vec());
    assert_eq!(case.stored(stored).await, case.expected(expected).await);
}

#[tokio::test]
async fn two_overwrite_runs_at_once_commit_each_slice_once() {
    assert_two_runs_commit_each_slice_once(
        "orders_clean",
        "SELECT order_id, dt FROM t ORDER BY order_id",
        "SELECT order_id, dt FROM orders WHERE dt <= '2024-01-04' ORDER BY order_id",
    )
    .await;
}

#[tokio::test]
async fn two_append_runs_at_once_never_duplicate_rows() {
    assert_two_runs_commit_each_slice_once(
        "orders_append",
        "SELECT order_id FROM t ORDER BY order_id",
        "SELECT order_id FROM orders WHERE status = 'shipped' AND dt <= '2024-01-04' ORDER BY order_id",
    )
    .await;
}

#[tokio::test]
async fn two_merge_runs_at_once_commit_each_slice_once() {
    assert_two_runs_commit_each_slice_once(
        "orders_merge",
        "SELECT order_id, amount, dt FROM t ORDER BY order_id",
        "SELECT order_id, amount, dt FROM orders WHERE dt <= '2024-01-04' ORDER BY order_id",
    )
    .await;
}

#[tokio::test]
async fn two_rebuild_runs_at_once_swap_once() {
    let case = Case::new("orders_rebuild");
    let (first, second) = run_twice_at_once(&case).await;
    let outcomes = [first.rebuild.clone(), second.rebuild.clone()];
    let swapped = |o: &Option<RebuildOutcome>| matches!(o, Some(RebuildOutcome::Swapped { .. }));
    let refused = |o: &Option<RebuildOutcome>| matches!(o, Some(RebuildOutcome::Refused { .. }));
    assert!(
        (swapped(&outcomes[0]) && refused(&outcomes[1]))
            || (refused(&outcomes[0]) && swapped(&outcomes[1])),
        "{outcomes:?}"
    );
    assert_eq!(case.version().await, 0, "one swap created the table");
    assert_eq!(case.committed_slices(), DAYS.to_vec());
}

/// Two runs of disjoint days, both opened while there is no table: the second to commit
/// still believes there is none, so its first commit tries to create the table, loses to
/// the first run's creation, and must commit on top of it instead. The race is forced,
/// not hoped for: the second run starts only after the first has finished.
#[tokio::test]
async fn the_run_that_loses_the_race_to_create_the_table_commits_on_top() {
    let case = Case::new("orders_clean");
    let (first, second) = (open_slow(&case).await, open_slow(&case).await);
    let week = |from: u32| {
        Selection::keys(
            (from..from + 7)
                .map(|d| format!("2024-01-{d:02}"))
                .collect(),
        )
    };
    let silent = || Arc::new(backfill_engine::run::Silent);
    let options = RunOptions::default();

    let summary = first.run(&week(1), &options, silent()).await.unwrap();
    assert_eq!(summary.committed(), 7);
    assert!(
        second.ledger().await.unwrap().committed().is_empty(),
        "the second run must still see no table, or there is no race"
    );
    let summary = second.run(&week(8), &options, silent()).await.unwrap();
    assert_eq!(summary.committed(), 7, "{:?}", summary.outcomes);

    let days: Vec<String> = (1..=14).map(|d| format!("2024-01-{d:02}")).collect();
    assert_eq!(case.committed_slices(), days);
    assert!(case.version().await <= 13, "at most one commit per slice");
    assert_eq!(
        case.stored("SELECT order_id, dt FROM t ORDER BY order_id")
            .await,
        case.expected("SELECT order_id, dt FROM orders ORDER BY order_id")
            .await
    );
    // Only the table's creation sets metadata: the loser committed its slices on top, not
    // a second creation.
    let creations = case.commit_entries().into_iter().filter(|commit| {
        let actions = commit.as_array().unwrap();
        actions
            .iter()
            .any(|action| action.get("metaData").is_some())
    });
    assert_eq!(creations.count(), 1);
}

/// The same command started twice as real processes without the lease (`--no-lease`):
/// both exit 0, and the table holds each day's rows once.
#[tokio::test]
async fn the_same_command_started_twice_without_the_lease_commits_each_slice_once() {
    let case = Case::new("orders_append");
    let range = ["--start", "2024-01-01", "--end", "2024-01-14", "--no-lease"];
    let args = case.args("run", &range);
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn()];
    for child in children {
        let output = child.wait_with_output().unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{printed}\n{errors}");
    }
    let days: Vec<String> = (1..=14).map(|d| format!("2024-01-{d:02}")).collect();
    assert_eq!(case.committed_slices(), days);
    assert_eq!(
        case.stored("SELECT order_id FROM t ORDER BY order_id")
            .await,
        case.expected("SELECT order_id FROM orders WHERE status = 'shipped' ORDER BY order_id")
            .await
    );
}
