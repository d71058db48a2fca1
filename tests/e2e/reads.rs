//! What a slice reads, seen at the object store: the engine runs over a store that wraps
//! the local file system, records every read, and can fail or hang reads on purpose.
//! Retries run on a manual clock, so their waits pass at once and can be read back.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_engine::clock::Clock;
use backfill_engine::run::{Observer, RunEvent, Silent};
use backfill_engine::{Backfill, RequestRetry, RunOptions, Selection, SliceOutcome};

use crate::stores::{open_over, open_over_with, TestStore};
use crate::support::{Case, Scratch};

/// Opens `pipeline` writing to `table`, with every source read going through a new
/// counting store, and returns both.
async fn open_counted(
    pipeline: &std::path::Path,
    table: &std::path::Path,
) -> (Arc<TestStore>, Arc<Backfill>) {
    let store = Arc::new(TestStore::default());
    let backfill = open_over(store.clone(), pipeline, table).await.unwrap();
    (store, Arc::new(backfill))
}

async fn run(
    backfill: &Arc<Backfill>,
    keys: &[&str],
    options: &RunOptions,
) -> backfill_engine::RunSummary {
    run_observed(backfill, keys, options, Arc::new(Silent)).await
}

async fn run_observed(
    backfill: &Arc<Backfill>,
    keys: &[&str],
    options: &RunOptions,
    observer: Arc<dyn Observer>,
) -> backfill_engine::RunSummary {
    let selection = Selection::keys(keys.iter().map(|k| k.to_string()).collect());
    backfill
        .clone()
        .run(&selection, options, observer)
        .await
        .unwrap()
}

/// Runs `keys`, injecting `faults` into the store once the pre-flight has passed, so
/// that they meet the slices' own reads rather than the planning before the run.
async fn run_with_faults(
    backfill: &Arc<Backfill>,
    keys: &[&str],
    options: &RunOptions,
    faults: impl Fn() + Send + Sync + 'static,
) -> backfill_engine::RunSummary {
    run_observed(backfill, keys, options, Arc::new(AfterPreflight(faults))).await
}

struct AfterPreflight<F>(F);

impl<F: Fn() + Send + Sync> Observer for AfterPreflight<F> {
    fn on(&self, event: &RunEvent) {
        if matches!(event, RunEvent::Started { .. }) {
            (self.0)()
        }
    }
}

/// Runs `pipeline` for `day` and returns the store that saw the slice's reads.
async fn run_counting(
    pipeline: &std::path::Path,
    table: &std::path::Path,
    day: &str,
) -> Arc<TestStore> {
    let (store, backfill) = open_counted(pipeline, table).await;
    store.reads.lock().unwrap().clear(); // count the slice, not the schema inference
    let summary = run(&backfill, &[day], &RunOptions::default()).await;
    assert!(
        matches!(summary.outcomes[0].status, SliceOutcome::Committed { .. }),
        "{summary:?}"
    );
    store
}

#[tokio::test]
async fn slice_opens_only_its_own_partition_files() {
    let scratch = Scratch::new();
    let store = run_counting(
        &scratch.path("pipelines/orders_clean.toml"),
        &scratch.path("warehouse/t"),
        "2024-01-03",
    )
    .await;
    let bucket = scratch.path("buckets/shop").display().to_string();
    let source_reads: Vec<String> = store
        .paths_read()
        .into_iter()
        .filter(|p| p.contains(bucket.trim_start_matches('/')))
        .collect();
    assert!(!source_reads.is_empty(), "the slice must read its source");
    assert!(
        source_reads
            .iter()
            .all(|p| p.contains("/orders/dt=2024-01-03/")),
        "files of other days were opened: {source_reads:#?}"
    );
}

#[tokio::test]
async fn merge_reads_the_slice_sources_once_like_overwrite() {
    let scratch = Scratch::new();
    let merge = scratch.path("pipelines/orders_merge.toml");
    // The same SQL published by overwrite: the source is scanned exactly once there.
    let text = std::fs::read_to_string(&merge).unwrap().replace(
        "strategy = \"merge\"\nmerge_keys = [\"order_id\"]",
        "strategy = \"overwrite\"",
    );
    let overwrite = scratch.pipeline("orders_overwrite", &text);
    let day = "/orders/dt=2024-01-04/";

    let merged = run_counting(&merge, &scratch.path("warehouse/m"), "2024-01-04").await;
    let overwritten = run_counting(&overwrite, &scratch.path("warehouse/o"), "2024-01-04").await;
    let (requests, bytes) = merged.reads_of(day);
    assert!(bytes > 0);
    assert_eq!(
        (requests, bytes),
        overwritten.reads_of(day),
        "merge must not run the slice's SQL twice"
    );
}

/// The table's rows, and what a clean run of the first three days leaves.
async fn first_three_days(case: &Case) -> (Vec<String>, Vec<String>) {
    let stored = case.stored("SELECT order_id, amount, dt FROM t ORDER BY order_id");
    let expected = case.expected(
        "SELECT order_id, amount, dt FROM orders WHERE dt <= '2024-01-03' ORDER BY order_id",
    );
    (stored.await, expected.await)
}

/// Retries whose waits pass at once, on a clock the test controls.
fn quick_retries(retries: u32) -> RunOptions {
    RunOptions {
        retries,
        clock: ManualClock::new(),
        ..RunOptions::default()
    }
}

#[tokio::test]
async fn transient_read_failures_are_retried_into_the_same_table() {
    let case = Case::new("orders_clean");
    let (store, backfill) = open_counted(&case.pipeline, &case.table).await;
    let days = ["2024-01-01", "2024-01-02", "2024-01-03"];
    let faults = move || store.failing_reads.store(3, Ordering::SeqCst);
    let summary = run_with_faults(&backfill, &days, &quick_retries(5), faults).await;

    assert_eq!(summary.committed(), days.len(), "{summary:#?}");
    let attempts: u32 = summary.outcomes.iter().map(|o| o.attempts).sum();
    assert!(
        attempts > 3,
        "the injected failures were retried: {summary:#?}"
    );
    let (stored, expected) = first_three_days(&case).await;
    assert_eq!(
        stored, expected,
        "retried slices leave exactly the clean run's table"
    );
    assert_eq!(case.committed_slices(), days, "each slice committed once");
    assert!(
        case.version().await <= 2,
        "at most one commit per slice, failed attempts commit nothing"
    );

    // Every attempt is in the run history, the failed ones with their retry number.
    let run = backfill
        .history()
        .run(&summary.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.attempts.len() as u32, attempts);
    let failed: Vec<_> = run
        .attempts
        .iter()
        .filter(|a| matches!(a.status, SliceOutcome::Failed { .. }))
        .collect();
    assert_eq!(failed.len() as u32, attempts - 3, "{:#?}", run.attempts);
    assert!(run
        .attempts
        .iter()
        .any(|a| a.attempt > 1 && matches!(a.status, SliceOutcome::Committed { .. })));
    assert_eq!(run.end.unwrap().committed, 3);

    // `status` counts the same retries.
    let selection = Selection::keys(days.iter().map(|d| d.to_string()).collect());
    let status = backfill.status(Some(&selection)).await.unwrap();
    assert_eq!(
        status.slices.iter().map(|s| s.retries).sum::<u32>(),
        attempts - 3
    );
    assert_eq!((status.done, status.remaining), (3, 0));
}

#[tokio::test]
async fn without_retries_a_transient_failure_fails_only_its_slice() {
    let case = Case::new("orders_clean");
    let (store, backfill) = open_counted(&case.pipeline, &case.table).await;
    let options = RunOptions {
        concurrency: Some(1),
        ..quick_retries(0)
    };
    let faults = move || store.failing_reads.store(1, Ordering::SeqCst);
    let days = ["2024-01-01", "2024-01-02"];
    let summary = run_with_faults(&backfill, &days, &options, faults).await;

    let first = &summary.outcomes[0];
    assert_eq!(first.attempts, 1);
    match &first.status {
        SliceOutcome::Failed { error, fault } => {
            assert_eq!(*fault, backfill_engine::Fault::Environment);
            assert!(error.contains("injected failure"), "{error}");
        }
        other => panic!("the first slice should fail, got {other:?}"),
    }
    assert!(
        matches!(summary.outcomes[1].status, SliceOutcome::Committed { .. }),
        "{summary:#?}"
    );
}

#[tokio::test]
async fn access_denied_is_not_retried() {
    let case = Case::new("orders_clean");
    let (store, backfill) = open_counted(&case.pipeline, &case.table).await;
    let faults = move || store.denied_reads.store(1, Ordering::SeqCst);
    let summary = run_with_faults(&backfill, &["2024-01-01"], &quick_retries(3), faults).await;
    let only = &summary.outcomes[0];
    assert_eq!(
        only.attempts, 1,
        "asking again gives the same answer: {summary:#?}"
    );
    match &only.status {
        SliceOutcome::Failed { error, fault } => {
            assert_eq!(*fault, backfill_engine::Fault::Environment);
            assert!(error.contains("access denied"), "{error}");
        }
        other => panic!("the slice should fail, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_assertions_are_not_retried() {
    let case = Case::new("orders_clean");
    case.edit_pipeline("min_rows = 1000", "min_rows = 1000000");
    let (_, backfill) = open_counted(&case.pipeline, &case.table).await;
    let summary = run(&backfill, &["2024-01-01"], &quick_retries(3)).await;
    assert_eq!(summary.outcomes[0].attempts, 1, "{summary:#?}");
    assert!(matches!(
        summary.outcomes[0].status,
        SliceOutcome::Failed {
            fault: backfill_engine::Fault::Data,
            ..
        }
    ));
}

/// A clock that stands still until the run sleeps, and then jumps: retries happen at once,
/// and the history's timestamps show exactly the waits the run chose.
#[derive(Debug)]
pub(crate) struct ManualClock {
    start: chrono::DateTime<chrono::Utc>,
    slept: Mutex<Duration>,
}

impl ManualClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ManualClock {
            start: "2024-06-01T00:00:00Z".parse().unwrap(),
            slept: Mutex::new(Duration::ZERO),
        })
    }
}

impl Clock for ManualClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.start + *self.slept.lock().unwrap()
    }

    fn sleep(&self, duration: Duration) -> futures::future::BoxFuture<'static, ()> {
        *self.slept.lock().unwrap() += duration;
        Box::pin(std::future::ready(()))
    }
}

#[tokio::test]
async fn retries_back_off_exponentially_with_jitter() {
    let case = Case::new("orders_clean");
    let (store, backfill) = open_counted(&case.pipeline, &case.table).await;
    let base = Duration::from_secs(600);
    let options = RunOptions {
        concurrency: Some(1),
        retries: 5,
        backoff: base,
        clock: ManualClock::new(),
        ..RunOptions::default()
    };
    let faults = move || store.failing_reads.store(3, Ordering::SeqCst);
    let summary = run_with_faults(&backfill, &["2024-01-01"], &options, faults).await;
    assert!(
        matches!(summary.outcomes[0].status, SliceOutcome::Committed { .. }),
        "{summary:#?}"
    );
    assert!(summary.outcomes[0].attempts > 1, "{summary:#?}");

    // Retry n waits base * 2^(n-1), scaled by a factor in [0.5, 1.5).
    let history = backfill
        .history()
        .run(&summary.run_id)
        .await
        .unwrap()
        .unwrap();
    let ends: Vec<_> = history.attempts.iter().map(|a| a.finished_at).collect();
    for (retry, pair) in ends.windows(2).enumerate() {
        let waited = (pair[1] - pair[0]).to_std().unwrap();
        let nominal = base * 2u32.pow(retry as u32);
        assert!(
            waited >= nominal / 2 && waited < nominal * 3 / 2,
            "retry {} waited {waited:?}, expected about {nominal:?}",
            retry + 1
        );
    }
    assert_eq!(
        history.header.started_at,
        "2024-06-01T00:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );
    assert!(
        summary.run_id.starts_with("20240601T000000Z-"),
        "{}",
        summary.run_id
    );
}

#[tokio::test]
async fn a_hung_attempt_times_out_and_is_retried() {
    let case = Case::new("orders_clean");
    let (store, backfill) = open_counted(&case.pipeline, &case.table).await;
    let options = RunOptions {
        concurrency: Some(1),
        retries: 1,
        slice_timeout: Some(Duration::from_millis(500)),
        clock: ManualClock::new(),
        ..RunOptions::default()
    };
    let faults = move || store.hanging_reads.store(1, Ordering::SeqCst);
    let summary = run_with_faults(&backfill, &["2024-01-02"], &options, faults).await;
    assert!(
        matches!(summary.outcomes[0].status, SliceOutcome::Committed { .. }),
        "{summary:#?}"
    );
    let history = backfill
        .history()
        .run(&summary.run_id)
        .await
        .unwrap()
        .unwrap();
    match &history.attempts[0].status {
        SliceOutcome::Failed { error, fault } => {
            assert!(error.contains("timed out after 500ms"), "{error}");
            assert_eq!(*fault, backfill_engine::Fault::Environment);
        }
        other => panic!("the hung attempt should have failed, got {other:?}"),
    }
    assert_eq!(history.attempts.len(), 2);
    assert_eq!(
        case.stored("SELECT count(*) AS n FROM t").await,
        case.expected("SELECT count(*) AS n FROM orders WHERE dt = '2024-01-02'")
            .await
    );
}

/// The planning before a run reads footers too, and may hang there: it gives the slice up
/// after the slice timeout, and the slice plans again in its attempt, which commits it.
#[tokio::test]
async fn a_read_hung_while_planning_before_the_run_times_out_and_the_slice_still_runs() {
    let case = Case::new("orders_clean");
    let (store, backfill) = open_counted(&case.pipeline, &case.table).await;
    store.hanging_reads.store(1, Ordering::SeqCst);
    let options = RunOptions {
        concurrency: Some(1),
        retries: 0,
        slice_timeout: Some(Duration::from_millis(500)),
        clock: ManualClock::new(),
        ..RunOptions::default()
    };
    let hangs_left_at_start = Arc::new(Mutex::new(None));
    let seen = (store.clone(), hangs_left_at_start.clone());
    let at_start = move || {
        let left = seen.0.hanging_reads.load(Ordering::SeqCst);
        *seen.1.lock().unwrap() = Some(left);
    };
    let running = run_with_faults(&backfill, &["2024-01-02"], &options, at_start);
    let summary = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("no run waits forever on a hung read");
    assert_eq!(
        *hangs_left_at_start.lock().unwrap(),
        Some(0),
        "the planning before the run met the hung read"
    );
    assert!(
        matches!(summary.outcomes[0].status, SliceOutcome::Committed { .. }),
        "{summary:#?}"
    );
    assert_eq!(summary.outcomes[0].attempts, 1, "{summary:#?}");
    assert_eq!(
        case.stored("SELECT count(*) AS n FROM t").await,
        case.expected("SELECT count(*) AS n FROM orders WHERE dt = '2024-01-02'")
            .await
    );
}

#[tokio::test]
async fn max_source_requests_caps_concurrent_reads_across_slices() {
    let days: Vec<String> = (1..=6).map(|d| format!("2024-01-{d:02}")).collect();
    let days: Vec<&str> = days.iter().map(String::as_str).collect();
    let options = RunOptions {
        concurrency: Some(6),
        ..RunOptions::default()
    };
    let mut most = Vec::new();
    for limit in ["", "max_source_requests = 2\n"] {
        let case = Case::new("orders_clean");
        case.edit_pipeline(
            "name = \"orders_clean\"\n",
            &format!("name = \"orders_clean\"\n{limit}"),
        );
        let (store, backfill) = open_counted(&case.pipeline, &case.table).await;
        *store.read_delay.lock().unwrap() = Duration::from_millis(30);
        let summary = run(&backfill, &days, &options).await;
        assert_eq!(summary.committed(), 6, "{summary:#?}");
        most.push(store.most_in_flight.load(Ordering::SeqCst));
    }
    assert!(
        most[0] > 2,
        "without a cap, six slices read at once: {most:?}"
    );
    assert!(most[1] <= 2, "with max_source_requests = 2: {most:?}");
}

#[tokio::test]
async fn dropped_connections_while_reading_schemas_at_start_up_are_asked_again() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/orders_clean.toml"),
        scratch.path("warehouse/t"),
    );
    let store = Arc::new(TestStore::default());
    store.dropped_reads.store(6, Ordering::SeqCst);
    open_over(store.clone(), &pipeline, &table).await.unwrap();
    assert_eq!(
        store.dropped_reads.load(Ordering::SeqCst),
        0,
        "every fault was met, and each read asked again"
    );

    // A store that keeps failing past a read's budget is the environment's fault (exit
    // 1), not the pipeline's.
    store.dropped_reads.store(usize::MAX, Ordering::SeqCst);
    let patience = RequestRetry {
        budget: Duration::from_millis(300),
        ..RequestRetry::default()
    };
    let started = std::time::Instant::now();
    let error = open_over_with(store, &pipeline, &table, patience)
        .await
        .err()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the budget ends it"
    );
    assert_eq!(
        error.fault(),
        backfill_engine::Fault::Environment,
        "{error}"
    );
    assert!(
        error.to_string().contains("cannot list or read its files"),
        "{error}"
    );
}

#[tokio::test]
async fn dropped_connections_during_a_run_are_asked_again_and_fail_no_slice() {
    let case = Case::new("orders_clean");
    let (store, backfill) = open_counted(&case.pipeline, &case.table).await;
    store.dropped_reads.store(12, Ordering::SeqCst);
    let days = ["2024-01-01", "2024-01-02", "2024-01-03"];
    let summary = run(&backfill, &days, &quick_retries(0)).await;
    assert_eq!(summary.committed(), days.len(), "{summary:#?}");
    assert!(
        summary.outcomes.iter().all(|o| o.attempts == 1),
        "no slice needed a second attempt: {summary:#?}"
    );
    assert_eq!(store.dropped_reads.load(Ordering::SeqCst), 0);
    let (stored, expected) = first_three_days(&case).await;
    assert_eq!(stored, expected);
}

/// Storage failing every read of one slice's files, past the retries of each read: the
/// pre-flight plans the other slices and the run commits them, failing only that one as
/// a storage fault; a byte budget, which cannot be checked for it, refuses the run
/// before anything runs, naming it; once storage is back, the same run commits it.
#[tokio::test]
async fn a_slice_whose_files_storage_keeps_failing_fails_alone_and_the_others_commit() {
    let case = Case::new("orders_clean");
    let store = Arc::new(TestStore::default());
    let patience = RequestRetry {
        budget: Duration::from_millis(200),
        ..RequestRetry::default()
    };
    let backfill = open_over_with(store.clone(), &case.pipeline, &case.table, patience);
    let backfill = Arc::new(backfill.await.unwrap());
    store
        .dropped_paths
        .lock()
        .unwrap()
        .push("dt=2024-01-02".into());
    let days = ["2024-01-01", "2024-01-02", "2024-01-03"];
    let summary = run(&backfill, &days, &quick_retries(1)).await;
    let statuses: Vec<&SliceOutcome> = summary.outcomes.iter().map(|o| &o.status).collect();
    assert!(
        matches!(statuses[0], SliceOutcome::Committed { .. }),
        "{summary:#?}"
    );
    assert!(
        matches!(statuses[2], SliceOutcome::Committed { .. }),
        "{summary:#?}"
    );
    match statuses[1] {
        SliceOutcome::Failed { fault, error } => {
            assert_eq!(*fault, backfill_engine::Fault::Environment, "{error}");
            assert!(error.contains("reset by peer"), "{error}");
        }
        other => panic!("2024-01-02 should fail, got {other:?}"),
    }

    let selection = Selection::keys(days.iter().map(|d| d.to_string()).collect());
    let budgeted = RunOptions {
        budget: backfill_engine::estimate::Budget {
            max_bytes: Some(1 << 30),
            ..Default::default()
        },
        ..quick_retries(0)
    };
    let silent = Arc::new(backfill_engine::run::Silent);
    let refused = backfill.clone().run(&selection, &budgeted, silent).await;
    let error = refused.expect_err("the budget cannot be checked");
    assert_eq!(
        error.fault(),
        backfill_engine::Fault::Environment,
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("1 of 1 slices to run could not be planned: 2024-01-02"),
        "{message}"
    );

    store.dropped_paths.lock().unwrap().clear();
    let summary = run(&backfill, &days, &quick_retries(0)).await;
    assert_eq!(summary.committed(), 1, "{summary:#?}");
    let (stored, expected) = first_three_days(&case).await;
    assert_eq!(stored, expected);
    assert_eq!(case.committed_slices(), days);
}
