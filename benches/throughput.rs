//! Per-slice throughput of real backfills on a generated bucket.
//!
//! `cargo bench -p backfill-engine --bench throughput -- [--days N] [--rows N] [--tiny N] [--concurrency N]`
//!
//! Generates (once, cached under `target/bench-buckets/`) a bucket of `--days` days of
//! `--rows` orders each, then backfills it into a fresh Delta table three ways:
//! - row-level: every order, one column rewritten (overwrite by day);
//! - aggregating: per customer and day (overwrite by day);
//! - tiny slices: `--tiny` days of 100 rows, for the fixed cost of a slice.
//!
//! Each case runs `--repeat` times (default 5) into a fresh table; the median run is
//! reported: rows/s and MB/s of source read, and milliseconds per slice. Compare with
//! `benches/polars_loop.py`, the same slices in a Python loop of polars + delta-rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use backfill_engine::fixtures::{generate, FixtureSpec};
use backfill_engine::{pipeline, Backfill, OpenOptions, RunOptions, Selection};

const ROW_LEVEL: &str =
    "SELECT order_id, customer_id, amount, upper(status) AS status, ordered_at, dt \
                         FROM orders WHERE dt = {{ slice }}";
const AGGREGATING: &str = "SELECT dt, customer_id, count(*) AS orders, sum(amount) AS revenue, max(ordered_at) AS last_order \
                           FROM orders WHERE dt = {{ slice }} GROUP BY dt, customer_id";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let (days, rows, tiny) = (
        option("--days", 8) as u32,
        option("--rows", 1_000_000),
        option("--tiny", 60) as u32,
    );
    let repeat = option("--repeat", 5) as usize;
    let options = RunOptions {
        concurrency: option("--concurrency", RunOptions::default().concurrency as u64) as usize,
        ..RunOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-buckets");

    let big = bucket(&target, days, rows);
    println!(
        "bucket {} ({days} days x {rows} orders, {:.1} MB)",
        big.display(),
        mb(dir_bytes(&big.join("orders")))
    );
    println!(
        "{:<14} {:>7} {:>12} {:>10} {:>9} {:>12}",
        "case", "slices", "rows/s", "MB/s", "s total", "ms/slice"
    );
    for (case, sql) in [("row-level", ROW_LEVEL), ("aggregating", AGGREGATING)] {
        runtime.block_on(measure(case, &big, sql, days, &options, repeat));
    }
    let small = bucket(&target, tiny, 100);
    runtime.block_on(measure(
        "tiny slices",
        &small,
        ROW_LEVEL,
        tiny,
        &options,
        repeat,
    ));
}

/// The bucket for a size, generated on first use.
fn bucket(target: &Path, days: u32, rows: u64) -> PathBuf {
    let root = target.join(format!("orders-{days}x{rows}"));
    if !root.join("done").exists() {
        generate(&root, &FixtureSpec::orders_only(days, rows)).expect("the bucket is written");
        std::fs::write(root.join("done"), "").unwrap();
    }
    root
}

async fn measure(
    case: &str,
    bucket: &Path,
    sql: &str,
    days: u32,
    options: &RunOptions,
    repeat: usize,
) {
    let last = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap()
        + chrono::Duration::days(i64::from(days) - 1);
    let selection = Selection::Range {
        start: "2024-01-01".into(),
        end: last.to_string(),
    };
    let mut runs = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        runs.push(run_once(bucket, sql, &selection, options).await);
    }
    runs.sort_by(f64::total_cmp);
    let seconds = runs[runs.len() / 2];
    let (source_bytes, source_rows) = (dir_bytes(&bucket.join("orders")), rows_in(bucket));
    println!(
        "{case:<14} {:>7} {:>12.0} {:>10.1} {:>9.2} {:>12.1}",
        days,
        source_rows as f64 / seconds,
        mb(source_bytes) / seconds,
        seconds,
        seconds * 1000.0 / f64::from(days)
    );
}

/// One backfill of the selection into a fresh table, opening included; its seconds.
async fn run_once(bucket: &Path, sql: &str, selection: &Selection, options: &RunOptions) -> f64 {
    let destination = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"bench\"\n[sources.orders]\nurl = \"{}\"\nformat = \"parquet\"\npartitioning = [\"dt\"]\n\
         [slices]\nkind = \"daily\"\n[transform]\nsql = \"{sql}\"\n\
         [destination]\nurl = \"{}\"\npartition_by = [\"dt\"]\nstrategy = \"overwrite\"\n",
        bucket.join("orders").display(),
        destination.path().join("table").display(),
    );
    let pipeline =
        pipeline::parse(&text, &destination.path().join("bench.toml")).expect("a valid pipeline");
    let started = Instant::now();
    let backfill = Arc::new(
        Backfill::open(pipeline, OpenOptions::default())
            .await
            .expect("opens"),
    );
    let summary = backfill
        .run(selection, options, Arc::new(backfill_engine::run::Silent))
        .await
        .expect("runs");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(summary.committed(), summary.outcomes.len(), "{summary:?}");
    seconds
}

fn rows_in(bucket: &Path) -> u64 {
    let name = bucket.file_name().unwrap().to_string_lossy().to_string();
    let (days, rows) = name.trim_start_matches("orders-").split_once('x').unwrap();
    days.parse::<u64>().unwrap() * rows.parse::<u64>().unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    if e.path().is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}
