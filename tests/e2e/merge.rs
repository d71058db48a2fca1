//! Merges within a slice's partitions, which commit as overwrites of them with the merged
//! rows, and across a table, one MERGE per slice: what stays, what changes, and the
//! memory a large partition costs.

use std::sync::Arc;

use backfill_engine::fixtures::{generate, FixtureSpec};
use backfill_engine::{Backfill, OpenOptions, RunOptions, Selection};

use crate::support::*;

/// Without `dt` in `partition_by`, a day's keys may match rows of any day: each slice is
/// one MERGE over the whole table, from its output staged apart.
#[tokio::test]
async fn a_merge_across_an_unpartitioned_table_upserts_on_keys_and_leaves_no_staging() {
    let case = Case::new("orders_merge");
    case.edit_pipeline("partition_by = [\"dt\"]", "partition_by = []");
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    case.ok("run", &range, 0);
    case.edit_pipeline(
        "SELECT order_id, customer_id, amount,",
        "SELECT order_id, customer_id, amount * 2 AS amount,",
    );
    // Every order of the three days again, as the first day's output: the keys of the
    // other days are found in the rows the first run wrote for them.
    case.edit_pipeline(
        "FROM orders WHERE dt = {{ slice }}",
        "FROM orders WHERE dt <= '2024-01-03' AND {{ slice }} = '2024-01-01'",
    );
    case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-01"], 0);
    let all = "SELECT order_id, amount, dt FROM t ORDER BY order_id";
    let expected = case
        .expected(
            "SELECT order_id, amount * 2 AS amount, dt
             FROM orders WHERE dt <= '2024-01-03' ORDER BY order_id",
        )
        .await;
    assert_eq!(case.stored(all).await, expected);
    let staging = std::fs::read_dir(case.table.join("_backfill/staging"))
        .unwrap()
        .count();
    assert_eq!(staging, 0, "the merge's staged output is gone");
}

/// A forced merge of one day whose SQL no longer returns that day's cancelled orders: they
/// stay (a merge updates and inserts, never deletes), the orders it returns are updated,
/// and no other day's files change.
#[tokio::test]
async fn a_forced_merge_of_one_day_keeps_the_rows_it_does_not_return_and_no_other_day_changes() {
    let case = Case::new("orders_merge");
    case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-03"], 0);
    let before = case.files_by_partition(1);
    case.edit_pipeline(
        "SELECT order_id, customer_id, amount, status, dt FROM orders WHERE dt = {{ slice }}",
        "SELECT order_id, customer_id, amount * 2 AS amount, status, dt FROM orders \
         WHERE dt = {{ slice }} AND status <> 'cancelled'",
    );
    let day = ["--start", "2024-01-02", "--end", "2024-01-02", "--force"];
    let out = case.ok("run", &day, 0);
    assert!(out.contains("1 slice, 1 committed"), "{out}");

    let after = case.files_by_partition(1);
    assert_eq!(after.len(), 3, "{after:?}");
    for other in ["dt=2024-01-01", "dt=2024-01-03"] {
        assert_eq!(after[other], before[other], "{other} was not touched");
    }
    assert_ne!(after["dt=2024-01-02"], before["dt=2024-01-02"]);
    let all = "SELECT order_id, customer_id, amount, status, dt FROM t ORDER BY order_id";
    let expected = case
        .expected(
            "SELECT order_id, customer_id,
               CASE WHEN dt = '2024-01-02' AND status <> 'cancelled' THEN amount * 2 ELSE amount END AS amount,
               status, dt
             FROM orders WHERE dt <= '2024-01-03' ORDER BY order_id",
        )
        .await;
    assert_eq!(case.stored(all).await, expected);
    // Else the day would have nothing to keep.
    let cancelled = case
        .stored("SELECT count(*) AS n FROM t WHERE dt = '2024-01-02' AND status = 'cancelled'")
        .await;
    assert!(
        !cancelled.iter().any(|line| line == "| 0 |"),
        "{cancelled:?}"
    );
}

/// A day already holding 200,000 orders takes a merge of every thousandth of them again
/// within 2 MiB of memory, far below the day's size: the output's keys are held, and the
/// day's rows stream past them into the files that replace the day's.
#[tokio::test]
async fn a_merge_into_a_large_partition_streams_its_rows_within_a_small_memory_limit() {
    let case = Case::new("orders_merge");
    let big_day = FixtureSpec::orders_only(1, 200_000);
    generate(&case.scratch.path("buckets/shop"), &big_day).unwrap();
    let day = ["--start", "2024-01-01", "--end", "2024-01-01"];
    case.ok("run", &day, 0);
    case.edit_pipeline(
        "SELECT order_id, customer_id, amount,",
        "SELECT order_id, customer_id, amount * 2 AS amount,",
    );
    case.edit_pipeline(
        "FROM orders WHERE dt = {{ slice }}",
        "FROM orders WHERE dt = {{ slice }} AND order_id % 1000 = 0",
    );

    let mut pipeline = backfill_engine::pipeline::load(&case.pipeline).unwrap();
    pipeline.destination.url = url::Url::from_directory_path(&case.table).unwrap();
    let options = OpenOptions {
        memory_limit: 2 << 20,
        ..OpenOptions::default()
    };
    let backfill = Arc::new(Backfill::open(pipeline, options).await.unwrap());
    let selection = Selection::range("2024-01-01", "2024-01-01");
    let silent = Arc::new(backfill_engine::run::Silent);
    let summary = backfill
        .run(&selection, &RunOptions::default(), silent)
        .await;
    let summary = summary.unwrap();
    assert_eq!(summary.committed(), 1, "{:?}", summary.outcomes);

    // In whole cents, which add up exactly in any order.
    let totals = "SELECT count(*) AS n, count(DISTINCT order_id) AS ids, \
                  sum(CAST(round(amount * 100) AS BIGINT)) AS cents";
    assert_eq!(
        case.stored(&format!("{totals} FROM t")).await,
        case.expected(&format!(
            "{totals} FROM (SELECT order_id, CASE WHEN order_id % 1000 = 0 THEN amount * 2 ELSE amount END AS amount
             FROM orders WHERE dt = '2024-01-01')"
        ))
        .await
    );
}

/// A destination whose files need more than Parquet to read (here deletion vectors, as a
/// Spark writer may turn on) is refused before anything runs: a merge reads the rows that
/// stay from those files, and would bring deleted rows back.
#[test]
fn a_destination_with_deletion_vectors_is_refused_before_a_merge_runs() {
    let case = Case::new("orders_merge");
    case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-01"], 0);
    let upgrade = [
        r#"{"commitInfo":{"timestamp":1704067200000,"operation":"UPGRADE PROTOCOL"}}"#,
        r#"{"protocol":{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["deletionVectors"],"writerFeatures":["deletionVectors"]}}"#,
    ];
    let next = case.table.join("_delta_log/00000000000000000001.json");
    std::fs::write(next, upgrade.join("\n") + "\n").unwrap();
    let before = case.data_files();

    let out = backfill(&case.args("run", &["--start", "2024-01-01", "--end", "2024-01-02"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the table uses deletionVectors, but a merge reads the rows"),
        "{stderr}"
    );
    assert_eq!(case.data_files(), before, "nothing was written");
}
