//! Commits whose outcome the client cannot see: on object storage a commit's PUT can take
//! effect while the client gets an error (a 500 after the write, a reset mid-response);
//! object_store's retry then finds the version taken, by this very commit. The engine runs
//! here over a destination store that performs each commit's PUT and then reports such an
//! error, and every table must stay readable at every version, with each slice committed
//! exactly once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use backfill_engine::RebuildOutcome;
use backfill_engine::{pipeline, Backfill, OpenOptions, RunOptions, Selection, SliceOutcome};
use datafusion::prelude::SessionContext;

use crate::stores::TestStore;
use crate::support::Case;

/// A destination store that makes every `n`-th commit ambiguous.
fn ambiguous_every(n: usize) -> Arc<TestStore> {
    let store = TestStore::default();
    store.ambiguous_commits.store(n, Ordering::SeqCst);
    Arc::new(store)
}

const DAYS: [&str; 6] = [
    "2024-01-01",
    "2024-01-02",
    "2024-01-03",
    "2024-01-04",
    "2024-01-05",
    "2024-01-06",
];

/// Runs `case`'s pipeline over `DAYS` with its destination behind `store`, no retries.
async fn run_behind(case: &Case, store: Arc<TestStore>) -> backfill_engine::RunSummary {
    let mut pipeline = pipeline::load(&case.pipeline).unwrap();
    pipeline.destination.url = url::Url::from_directory_path(&case.table).unwrap();
    let options = OpenOptions {
        destination_store: Some(store),
        ..OpenOptions::default()
    };
    let backfill = Arc::new(Backfill::open(pipeline, options).await.unwrap());
    let selection = Selection::keys(DAYS.iter().map(|d| d.to_string()).collect());
    let options = RunOptions {
        retries: 0,
        concurrency: Some(2),
        reprocess: backfill_engine::Reprocess::ALL,
        ..RunOptions::default()
    };
    backfill
        .run(&selection, &options, Arc::new(backfill_engine::run::Silent))
        .await
        .unwrap()
}

/// Reads every version of the table in full: each file any version references is there.
async fn assert_readable_at_every_version(case: &Case) {
    let latest = case.version().await;
    for version in 0..=latest {
        let url = deltalake::ensure_table_uri(case.table.to_str().unwrap()).unwrap();
        let table = deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .with_version(version)
            .load()
            .await
            .unwrap();
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let read = ctx.sql("SELECT * FROM t").await.unwrap().collect().await;
        assert!(read.is_ok(), "version {version} is unreadable: {read:?}");
    }
}

async fn assert_each_day_committed_once(case: &Case, summary: &backfill_engine::RunSummary) {
    for outcome in &summary.outcomes {
        assert!(
            matches!(outcome.status, SliceOutcome::Committed { .. }),
            "{outcome:?}"
        );
    }
    assert_eq!(case.committed_slices(), DAYS.to_vec());
    assert_readable_at_every_version(case).await;
}

#[tokio::test]
async fn an_overwrite_whose_commits_report_errors_after_landing_keeps_every_file() {
    let case = Case::new("orders_clean");
    let store = ambiguous_every(1);
    let summary = run_behind(&case, store.clone()).await;
    // Slices that finish while a commit is in flight go together in the next one.
    let last = case.version().await;
    assert!(last <= 5, "at most one commit per slice");
    assert_eq!(
        store.ambiguous.load(Ordering::SeqCst) as u64,
        last + 1,
        "every commit faulted"
    );
    assert_each_day_committed_once(&case, &summary).await;
    // The versions the outcomes name are the ones the log holds the slices at.
    let mut versions: Vec<u64> = summary
        .outcomes
        .iter()
        .map(|o| match o.status {
            SliceOutcome::Committed { version, .. } => version,
            _ => unreachable!(),
        })
        .collect();
    versions.sort();
    versions.dedup();
    assert_eq!(versions, (0..=last).collect::<Vec<_>>());
    assert_eq!(
        case.stored("SELECT order_id, dt FROM t ORDER BY order_id")
            .await,
        case.expected("SELECT order_id, dt FROM orders WHERE dt <= '2024-01-06' ORDER BY order_id")
            .await
    );
}

#[tokio::test]
async fn an_append_whose_commits_report_errors_after_landing_adds_each_day_once() {
    let case = Case::new("orders_append");
    let summary = run_behind(&case, ambiguous_every(2)).await;
    assert_each_day_committed_once(&case, &summary).await;
    assert_eq!(
        case.stored("SELECT order_id FROM t ORDER BY order_id").await,
        case.expected(
            "SELECT order_id FROM orders WHERE status = 'shipped' AND dt <= '2024-01-06' ORDER BY order_id"
        )
        .await
    );
    // Run again, forced, with every commit faulted: each day replaced once more.
    let summary = run_behind(&case, ambiguous_every(1)).await;
    assert!(summary
        .outcomes
        .iter()
        .all(|o| matches!(o.status, SliceOutcome::Committed { .. })));
    assert_readable_at_every_version(&case).await;
    assert_eq!(case.committed_slices().len(), 12);
    assert_eq!(
        case.stored("SELECT count(*) AS n, count(DISTINCT order_id) AS ids FROM t").await,
        case.expected(
            "SELECT count(*) AS n, count(DISTINCT order_id) AS ids FROM orders WHERE status = 'shipped' AND dt <= '2024-01-06'"
        )
        .await
    );
}

#[tokio::test]
async fn a_merge_whose_commits_report_errors_after_landing_merges_each_day_once() {
    let case = Case::new("orders_merge");
    let summary = run_behind(&case, ambiguous_every(1)).await;
    assert_each_day_committed_once(&case, &summary).await;
    assert_eq!(
        case.stored("SELECT order_id, customer_id, amount, status, dt FROM t ORDER BY order_id")
            .await,
        case.expected(
            "SELECT order_id, customer_id, amount, status, dt FROM orders WHERE dt <= '2024-01-06' ORDER BY order_id"
        )
        .await
    );
    assert!(
        case.data_files()
            .iter()
            .all(|f| !f.starts_with("_backfill/staging")),
        "merge's staging is cleaned up"
    );
}

#[tokio::test]
async fn a_rebuild_whose_swap_reports_an_error_after_landing_is_swapped() {
    let case = Case::new("orders_rebuild");
    for expected_version in [0, 1] {
        let summary = run_behind(&case, ambiguous_every(1)).await;
        assert!(
            matches!(summary.rebuild, Some(RebuildOutcome::Swapped { version, .. }) if version == expected_version),
            "{:?}",
            summary.rebuild
        );
        assert_readable_at_every_version(&case).await;
        assert_eq!(case.version().await, expected_version);
    }
    assert_eq!(
        case.stored("SELECT order_id, amount_cents, dt FROM t ORDER BY order_id").await,
        case.expected(
            "SELECT order_id, CAST(round(amount * 100) AS BIGINT) AS amount_cents, dt FROM orders WHERE dt <= '2024-01-06' ORDER BY order_id"
        )
        .await
    );
}
