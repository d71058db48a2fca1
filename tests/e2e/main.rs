//! End-to-end tests: the real `backfill` binary over the fixture bucket, with every Delta
//! table read back and compared with the same query run directly over the Parquet sources.

mod ambiguous;
mod browser;
mod cancel;
mod catch_up;
mod clean;
#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "cluster")]
mod cluster_key;
mod concurrent;
mod delta_sources;
mod dimensions;
mod events;
mod faults;
mod hostile;
mod lease;
mod lineage;
mod merge;
mod newcomer;
mod preflight;
mod projects;
mod reads;
mod rebuild;
mod s3;
mod serve;
mod snapshots;
mod stores;
mod support;

use serde_json::Value;
use support::*;

/// `(slice, state)` of each slice of a `plan --json`.
fn slice_states(plan: &Value) -> Vec<(String, String)> {
    let slices = plan.as_array().unwrap().iter();
    slices
        .map(|s| {
            (
                s["slice"].as_str().unwrap().into(),
                s["state"]["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn states(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(slice, state)| (slice.to_string(), state.to_string()))
        .collect()
}

/// The application transaction version of each committed slice of a `plan --json`.
fn txn_versions(plan: &Value) -> Vec<i64> {
    let slices = plan.as_array().unwrap().iter();
    slices
        .map(|p| {
            p["state"]["committed"]["record"]["txn_version"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn overwrite_table_matches_the_sql_run_over_the_sources() {
    let case = Case::new("daily_revenue");
    let out = case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-05"], 0);
    assert!(out.contains("5 slices, 5 committed, 0 skipped"), "{out}");

    let stored = case
        .stored("SELECT dt, region, orders, priced_orders, round(revenue, 2) AS revenue FROM t ORDER BY dt, region")
        .await;
    let expected = case
        .expected(
            "SELECT o.dt, c.region, count(*) AS orders, count(o.amount) AS priced_orders, round(sum(o.amount), 2) AS revenue
             FROM orders o JOIN customers c ON o.customer_id = c.customer_id
             WHERE o.dt BETWEEN '2024-01-01' AND '2024-01-05' AND o.status <> 'cancelled'
             GROUP BY o.dt, c.region ORDER BY o.dt, c.region",
        )
        .await;
    assert_eq!(stored, expected);
    assert_eq!(
        stored.len(),
        15 + 4,
        "5 days x 3 regions, plus table borders"
    );

    // Plain Delta: protocol 1/2, readable by any Delta reader.
    let table = open(&case.table).await;
    let protocol = table.snapshot().unwrap().protocol().clone();
    assert_eq!(
        (protocol.min_reader_version(), protocol.min_writer_version()),
        (1, 2)
    );
}

#[tokio::test]
async fn sources_whose_files_spell_strings_differently_are_read_as_one_table() {
    let case = Case::new("orders_clean");
    let all = "SELECT order_id, status, dt FROM orders WHERE dt BETWEEN '2024-01-01' AND '2024-01-03' ORDER BY order_id";
    let expected = case.expected(all).await;
    // As polars writes strings (LargeUtf8), and as DataFusion does by default (Utf8View).
    for (day, string_type) in [("2024-01-02", "LargeUtf8"), ("2024-01-03", "Utf8View")] {
        let folder = case.scratch.path(&format!("buckets/shop/orders/dt={day}"));
        let sql = format!("SELECT order_id, customer_id, amount, arrow_cast(status, '{string_type}') AS status, ordered_at FROM day");
        rewrite_parquet(&folder, &sql).await;
    }
    case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-03"], 0);
    let stored = case
        .stored("SELECT order_id, lower(status) AS status, dt FROM t ORDER BY order_id")
        .await;
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn rerun_is_a_no_op_and_force_rewrites_identical_contents() {
    let case = Case::new("orders_clean");
    let range = ["--start", "2024-01-02", "--end", "2024-01-04"];
    case.ok("run", &range, 0);
    let version = case.version().await;
    let all = "SELECT * FROM t ORDER BY order_id";
    let before = case.stored(all).await;

    let out = case.ok("run", &range, 0);
    assert!(out.contains("3 slices, 0 committed, 3 skipped"), "{out}");
    assert_eq!(case.version().await, version, "a re-run must not commit");

    let out = case.ok("run", &[&range[..], &["--force"]].concat(), 0);
    assert!(out.contains("3 committed"), "{out}");
    let forced = case.version().await - version;
    assert!(
        (1..=3).contains(&forced),
        "at most one commit per forced slice"
    );
    assert_eq!(
        case.stored(all).await,
        before,
        "a forced re-run leaves identical contents"
    );

    let txn = txn_versions(&case.plan(&range, 0));
    assert_eq!(
        txn,
        vec![2, 2, 2],
        "the forced commits carry the next transaction version"
    );
}

#[tokio::test]
async fn failing_assertion_commits_nothing_and_names_slice_and_value() {
    let case = Case::new("orders_clean");
    case.ok("run", &["--start", "2024-01-08", "--end", "2024-01-09"], 0);
    let version = case.version().await;
    let files_before = case
        .scratch
        .files_under("warehouse/orders_clean/dt=2024-01-09");

    // A stricter null-rate ceiling: 2024-01-09 is a noisy day.
    case.edit_pipeline("rate = 0.05", "rate = 0.01");
    let out = case.ok("run", &["--keys", "2024-01-09", "--force"], 1);
    assert!(
        out.contains("assertion failed on slice 2024-01-09: null rate of amount = 0.0295 > 0.01"),
        "{out}"
    );
    assert_eq!(
        case.version().await,
        version,
        "the table version is unchanged"
    );
    let files_after = case
        .scratch
        .files_under("warehouse/orders_clean/dt=2024-01-09");
    assert_eq!(files_after, files_before, "staged files were cleaned up");
}

#[tokio::test]
async fn first_run_failing_every_slice_creates_no_table() {
    let case = Case::new("orders_clean");
    case.edit_pipeline("min_rows = 1000", "min_rows = 1000000");
    let out = case.ok("run", &["--keys", "2024-01-01"], 1);
    assert!(out.contains("rows = 2000 < 1000000"), "{out}");
    assert!(
        !case.table.join("_delta_log").exists(),
        "nothing may be committed"
    );
    assert_eq!(case.data_files(), Vec::<String>::new());
    let history = case
        .scratch
        .files_under("warehouse/orders_clean/_backfill/runs");
    let (lineage, records): (Vec<&String>, Vec<&String>) =
        history.iter().partition(|file| file.contains("/lineage/"));
    assert_eq!(
        records.len(),
        4,
        "the run's header, its heartbeat, its one attempt and its end: {history:?}"
    );
    assert!(!lineage.is_empty(), "and its lineage events: {history:?}");
}

#[tokio::test]
async fn late_arriving_source_file_is_planned_as_changed_and_rerun() {
    let case = Case::new("daily_revenue");
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    case.json("run", &range, 0);

    // A second file lands late in one day's partition.
    let day = case.scratch.path("buckets/shop/orders/dt=2024-01-02");
    std::fs::copy(
        day.join("part-00000.parquet"),
        day.join("part-00001.parquet"),
    )
    .unwrap();
    let plan = case.plan(&range, 0);
    assert_eq!(
        slice_states(&plan),
        states(&[
            ("2024-01-01", "done"),
            ("2024-01-02", "changed"),
            ("2024-01-03", "done")
        ])
    );
    assert_eq!(
        plan[1]["state"]["what"],
        serde_json::json!(["source files"])
    );
    assert_eq!(plan[1]["source_files"], 3);

    assert_eq!(
        statuses(&case.json("run", &range, 0)),
        ["skipped", "committed", "skipped"]
    );
    let stored = case
        .stored("SELECT dt, sum(orders) AS orders FROM t GROUP BY dt ORDER BY dt")
        .await;
    let expected = case
        .expected("SELECT dt, count(*) AS orders FROM orders WHERE dt <= '2024-01-03' AND status <> 'cancelled' GROUP BY dt ORDER BY dt")
        .await;
    assert_eq!(stored, expected, "the late file's rows are in the table");
}

#[tokio::test]
async fn changed_sql_is_planned_as_changed() {
    let case = Case::new("orders_clean");
    case.ok("run", &["--keys", "2024-01-01"], 0);
    case.edit_pipeline("upper(status)", "lower(status)");
    let plan = case.plan(&["--keys", "2024-01-01"], 0);
    assert_eq!(plan[0]["state"]["state"], "changed");
    assert_eq!(plan[0]["state"]["what"], serde_json::json!(["SQL"]));
}

#[tokio::test]
async fn partition_pruning_plans_only_the_slice_files() {
    let case = Case::new("daily_revenue");
    let plan = case.plan(&["--keys", "2024-01-03"], 0);
    // The day's orders file and the dimension table, and nothing of the other 13 days.
    assert_eq!(plan[0]["source_files"], 2, "{plan}");
    let size = |file: &str| std::fs::metadata(case.scratch.path(file)).unwrap().len();
    let bytes = size("buckets/shop/orders/dt=2024-01-03/part-00000.parquet")
        + size("buckets/shop/customers/part-00000.parquet");
    assert_eq!(plan[0]["source_bytes"], bytes);
}

#[tokio::test]
async fn hourly_slices_match_zero_padded_hour_folders() {
    let case = Case::new("hourly_events");
    let out = case.ok(
        "run",
        &["--start", "2024-01-01T07", "--end", "2024-01-01T09"],
        0,
    );
    assert!(out.contains("3 committed"), "{out}");
    let stored = case
        .stored("SELECT dt, hr, sum(events) AS events, sum(clicks) AS clicks FROM t GROUP BY dt, hr ORDER BY hr")
        .await;
    let expected = case
        .expected(
            "SELECT dt, hr, count(*) AS events, sum(CASE WHEN kind = 'click' THEN 1 ELSE 0 END) AS clicks
             FROM events WHERE dt = '2024-01-01' AND hr IN ('07', '08', '09') GROUP BY dt, hr ORDER BY hr",
        )
        .await;
    assert_eq!(stored, expected);
    assert!(
        stored.iter().any(|line| line.contains("| 07 ")),
        "{stored:?}"
    );
}

#[tokio::test]
async fn list_slices_from_a_manifest_handle_an_awkward_key() {
    let case = Case::new("tenant_signups");
    let out = case.ok("run", &[], 0);
    assert!(out.contains("3 slices, 3 committed"), "{out}");
    let stored = case
        .stored("SELECT tenant, plan, users FROM t ORDER BY tenant, plan")
        .await;
    let expected = case
        .expected(
            "SELECT tenant, coalesce(plan, 'none') AS plan, count(*) AS users FROM signups
             GROUP BY tenant, plan ORDER BY tenant, plan",
        )
        .await;
    assert_eq!(stored, expected);
    assert!(
        stored.iter().any(|line| line.contains("o'brien")),
        "{stored:?}"
    );
    // Planning that key alone finds it done.
    assert_eq!(
        slice_states(&case.plan(&["--keys", "o'brien"], 0)),
        states(&[("o'brien", "done")])
    );
}

#[tokio::test]
async fn merge_upserts_on_keys_without_duplicates() {
    let case = Case::new("orders_merge");
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    case.ok("run", &range, 0);
    // Change the SQL so that every row is an update, and run again: same keys, new values.
    case.edit_pipeline(
        "SELECT order_id, customer_id, amount,",
        "SELECT order_id, customer_id, amount * 2 AS amount,",
    );
    case.ok("run", &range, 0);

    let stored = case.stored("SELECT count(*) AS n, count(DISTINCT order_id) AS keys, round(sum(amount), 2) AS total FROM t").await;
    let expected = case
        .expected(
            "SELECT count(*) AS n, count(DISTINCT order_id) AS keys, round(sum(amount * 2), 2) AS total
             FROM orders WHERE dt BETWEEN '2024-01-01' AND '2024-01-03'",
        )
        .await;
    assert_eq!(stored, expected);
    assert!(
        case.data_files()
            .iter()
            .all(|f| !f.starts_with("_backfill/staging")),
        "no merge's staged output is left"
    );
}

const APPENDED: &str = "SELECT count(*) AS n, count(DISTINCT order_id) AS keys FROM t";

#[tokio::test]
async fn append_never_duplicates_on_rerun_or_force() {
    let case = Case::new("orders_append");
    let range = ["--start", "2024-01-01", "--end", "2024-01-02"];
    case.ok("run", &range, 0);
    case.ok("run", &range, 0);
    case.ok("run", &[&range[..], &["--force"]].concat(), 0);
    let expected = case
        .expected(
            "SELECT count(*) AS n, count(DISTINCT order_id) AS keys FROM orders
             WHERE dt IN ('2024-01-01', '2024-01-02') AND status = 'shipped'",
        )
        .await;
    assert_eq!(case.stored(APPENDED).await, expected);
}

#[tokio::test]
async fn append_after_the_log_history_expired_replaces_instead_of_duplicating() {
    let case = Case::new("orders_append");
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    let one_at_a_time = ["--concurrency", "1", "--max-slices-per-commit", "1"];
    case.ok("run", &[&range[..], &one_at_a_time].concat(), 0);

    // Log cleanup: a checkpoint at version 2, then the commits before it (and the records
    // of 2024-01-01 and 2024-01-02 in them) are gone.
    deltalake::checkpoints::create_checkpoint(&open(&case.table).await, None)
        .await
        .unwrap();
    for version in 0..=1 {
        std::fs::remove_file(case.table.join(format!("_delta_log/{version:020}.json"))).unwrap();
    }
    let plan = case.plan(&range, 0);
    assert_eq!(
        slice_states(&plan),
        states(&[
            ("2024-01-01", "missing"),
            ("2024-01-02", "missing"),
            ("2024-01-03", "done")
        ])
    );

    case.ok("run", &range, 0);
    let expected = case
        .expected(
            "SELECT count(*) AS n, count(DISTINCT order_id) AS keys FROM orders
             WHERE dt <= '2024-01-03' AND status = 'shipped'",
        )
        .await;
    assert_eq!(
        case.stored(APPENDED).await,
        expected,
        "the re-run replaced the slices' tagged files"
    );
}

#[tokio::test]
async fn rows_outside_the_slice_partition_commit_nothing() {
    let case = reaching_past_its_partition();
    let run = case.json("run", &["--keys", "2024-01-13"], 1);
    refused_outside_its_partition(&case, &run["outcomes"][0], "2024-01-13");
}

/// `orders_clean`, its SQL changed to return the rows of later days too.
pub(crate) fn reaching_past_its_partition() -> Case {
    let case = Case::new("orders_clean");
    case.edit_pipeline(
        "WHERE dt = '{{ slice }}'\n  AND ordered_at >= {{ start_ts }} AND ordered_at < {{ end_ts }}",
        "WHERE dt >= '{{ slice }}'",
    );
    case
}

/// `outcome`, of slice `key` of `case`'s pipeline, failed for a row outside its
/// partition: the SQL's fault, tried once, nothing committed and nothing left behind.
pub(crate) fn refused_outside_its_partition(case: &Case, outcome: &serde_json::Value, key: &str) {
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["fault"], "user", "the SQL is at fault: {outcome}");
    assert_eq!(
        outcome["attempts"], 1,
        "a fault of the SQL is not retried: {outcome}"
    );
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("outside the slice's partition dt = {key}")),
        "{error}"
    );
    assert!(!case.table.join("_delta_log").exists());
    assert_eq!(
        case.data_files(),
        Vec::<String>::new(),
        "staged files were cleaned up"
    );
}

#[tokio::test]
async fn concurrent_slices_give_the_same_table_as_a_serial_run() {
    let serial = Case::new("orders_clean");
    let parallel = Case::new("orders_clean");
    let range = ["--start", "2024-01-01", "--end", "2024-01-14"];
    serial.ok("run", &[&range[..], &["--concurrency", "1"]].concat(), 0);
    let run = parallel.json("run", &[&range[..], &["--concurrency", "6"]].concat(), 0);
    let all = "SELECT * FROM t ORDER BY order_id";
    let rows = serial.stored(all).await;
    assert_eq!(rows.len(), 14 * 2000 + 4);
    assert_eq!(parallel.stored(all).await, rows);
    // Slices that finish while a commit is in flight go together in the next one.
    assert!(
        parallel.version().await <= 13,
        "at most one commit per slice"
    );
    let attempts = run["outcomes"].as_array().unwrap().iter();
    assert!(
        attempts
            .map(|o| o["attempts"].as_u64())
            .all(|a| a == Some(1)),
        "none lost to conflicts: {run:#}"
    );
    assert_eq!(
        txn_versions(&parallel.plan(&range, 0)),
        vec![1; 14],
        "each slice committed once"
    );
}

#[test]
fn bad_inputs_fail_before_anything_runs_with_exit_code_2() {
    let case = Case::new("orders_clean");
    let expect = |args: Vec<&str>, message: &str| {
        let output = backfill(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in\n{stderr}"
        );
    };
    expect(
        case.args("run", &["--start", "2024-01-05", "--end", "2024-01-01"]),
        "the range is reversed",
    );
    expect(
        case.args("run", &["--start", "2024-1-05", "--end", "2024-01-06"]),
        "`2024-1-05` is not a day (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH",
    );
    // A range's bounds may be hours (each stands for its day here); keys name slices
    // exactly, so an hour is no key of a daily pipeline.
    expect(
        case.args("run", &["--keys", "2024-01-05T03"]),
        "`2024-01-05T03` is not a day of the form YYYY-MM-DD",
    );
    expect(case.args("run", &[]), "no slices selected");

    // Broken variants of the pipeline, each validated on its own.
    let text = std::fs::read_to_string(&case.pipeline).unwrap();
    let variant = |name: &str, from: &str, to: &str| {
        assert!(text.contains(from), "{from:?}");
        case.scratch
            .pipeline(name, &text.replace(from, to))
            .to_str()
            .unwrap()
            .to_string()
    };
    let validate = |path: &str, message: &str| {
        expect(
            vec![
                "validate",
                path,
                "--destination",
                case.table.to_str().unwrap(),
            ],
            message,
        )
    };
    validate(
        &variant("typo", "partition_by = [\"dt\"]", "partition_by = [\"dt\"]\npartiton = 1"),
        "typo.toml:23: unknown field `partiton`, expected one of `url`, `partition_by`, `strategy`, `merge_keys`",
    );
    validate(
        &variant("bad_sql", "FROM orders", "FROM nowhere"),
        "bad_sql.toml:15:6: transform: table 'datafusion.public.nowhere' not found\n   15 | FROM nowhere",
    );
    validate(
        &variant("bad_var", "{{ start_ts }}", "{{ start_time }}"),
        "unknown variable `start_time`",
    );
    validate(
        &variant(
            "bad_check",
            "count(*) = 0 FROM slice",
            "count(*) FROM slice",
        ),
        "assertion `SELECT count(*) FROM slice WHERE amount < 0`: must return one boolean column",
    );
    validate(
        &variant(
            "missing_source",
            "../buckets/shop/orders",
            "../buckets/shop/nothing",
        ),
        "source `orders` at file://",
    );

    std::fs::write(case.scratch.path("pipelines/empty.txt"), "# nobody\n\n").unwrap();
    let tenants =
        std::fs::read_to_string(case.scratch.path("pipelines/tenant_signups.toml")).unwrap();
    let empty = case.scratch.pipeline(
        "empty_manifest",
        &tenants.replace("tenants.txt", "empty.txt"),
    );
    expect(
        vec![
            "plan",
            empty.to_str().unwrap(),
            "--destination",
            case.table.to_str().unwrap(),
        ],
        "empty.txt: the manifest lists no keys",
    );

    assert!(
        !case.table.join("_delta_log").exists(),
        "nothing was written"
    );
}

#[tokio::test]
async fn timestamps_without_time_zone_keep_the_table_on_protocol_1_2() {
    let case = Case::new("orders_clean");
    case.edit_pipeline(
        "ordered_at, dt",
        "CAST(ordered_at AS TIMESTAMP) AS ordered_at, dt",
    );
    case.ok("run", &["--keys", "2024-01-01"], 0);
    let table = open(&case.table).await;
    let protocol = table.snapshot().unwrap().protocol().clone();
    assert_eq!(
        (protocol.min_reader_version(), protocol.min_writer_version()),
        (1, 2)
    );
    let stored = case.stored("SELECT min(ordered_at) AS first FROM t").await;
    let expected = case
        .expected("SELECT min(ordered_at) AS first FROM orders WHERE dt = '2024-01-01'")
        .await;
    assert_eq!(stored, expected, "stored as the same UTC instants");
}

#[test]
fn history_lists_runs_and_show_lists_their_attempts() {
    let case = Case::new("orders_clean");
    case.ok("run", &["--keys", "2024-01-01,2024-01-02"], 0);
    case.edit_pipeline("min_rows = 1000", "min_rows = 1000000");
    case.ok("run", &["--keys", "2024-01-01,2024-01-03"], 1);

    let runs = case.json("history", &[], 0);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["selection"], "2024-01-01,2024-01-02");
    assert_eq!(runs[0]["end"]["committed"], 2);
    assert_eq!(
        runs[1]["end"]["skipped"], 1,
        "2024-01-01 is done: new checks do not change a slice"
    );
    assert_eq!(runs[1]["end"]["failed"], 1);
    let second = runs[1]["run_id"].as_str().unwrap();

    let shown = case.json("show", &[second], 0);
    let attempts: Vec<(String, String)> = shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["slice"].as_str().unwrap().into(),
                a["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        states(&[("2024-01-01", "skipped"), ("2024-01-03", "failed")])
    );
    assert!(shown["attempts"][1]["error"]
        .as_str()
        .unwrap()
        .contains("rows = 2000 < 1000000"));
}

#[test]
fn reprocess_chooses_slices_by_state_and_plan_shows_the_choice() {
    let case = Case::new("orders_clean");
    case.edit_pipeline("rate = 0.05", "rate = 0.01");
    let range = ["--start", "2024-01-08", "--end", "2024-01-10"];
    let run = case.json("run", &range, 1);
    assert_eq!(
        statuses(&run),
        ["committed", "failed", "committed"],
        "2024-01-09 is the noisy day"
    );

    let plan = case.plan(&["--start", "2024-01-08", "--end", "2024-01-11"], 0);
    assert_eq!(
        slice_states(&plan),
        states(&[
            ("2024-01-08", "done"),
            ("2024-01-09", "failed"),
            ("2024-01-10", "done"),
            ("2024-01-11", "missing")
        ])
    );
    let will_run = |plan: &Value| {
        plan.as_array()
            .unwrap()
            .iter()
            .map(|s| s["will_run"].as_bool().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(will_run(&plan), [false, true, false, true]);
    assert!(plan[1]["state"]["error"]
        .as_str()
        .unwrap()
        .contains("null rate of amount"));

    let only_missing = [
        "--start",
        "2024-01-08",
        "--end",
        "2024-01-11",
        "--reprocess",
        "missing",
    ];
    assert_eq!(
        will_run(&case.plan(&only_missing, 0)),
        [false, false, false, true]
    );
    let run = case.json("run", &only_missing, 0);
    assert_eq!(
        statuses(&run),
        ["skipped", "skipped", "skipped", "committed"]
    );
    assert_eq!(
        run["outcomes"][1]["state"], "failed",
        "skipped because failed was not chosen"
    );

    case.edit_pipeline("rate = 0.01", "rate = 0.05");
    let run = case.json(
        "run",
        &[
            "--start",
            "2024-01-08",
            "--end",
            "2024-01-11",
            "--reprocess",
            "failed",
        ],
        0,
    );
    assert_eq!(
        statuses(&run),
        ["skipped", "committed", "skipped", "skipped"]
    );
    let plan = case.plan(&["--start", "2024-01-08", "--end", "2024-01-11"], 0);
    assert_eq!(
        will_run(&plan),
        [false, false, false, false],
        "everything is done"
    );
}

#[tokio::test]
async fn a_run_given_the_plan_hash_runs_that_plan_and_refuses_one_that_changed() {
    let case = Case::new("orders_clean");
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    let hash = |rest: &[&str]| {
        case.json("plan", rest, 0)["hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = hash(&range);
    assert_eq!(first, hash(&range), "planning again decides the same");
    assert!(case
        .ok("plan", &range, 0)
        .contains(&format!("--expect-plan {first} runs exactly this plan")));

    let run = case.json("run", &[&range[..], &["--expect-plan", &first]].concat(), 0);
    assert_eq!(statuses(&run), ["committed"; 3]);

    // The slices are done now: the plan confirmed before is not the plan any more.
    let now = hash(&range);
    assert_ne!(now, first);
    let forced = hash(&[&range[..], &["--force"]].concat());
    assert_ne!(forced, now, "another choice of states is another plan");
    let version = case.version().await;
    let runs = case.json("history", &[], 0).as_array().unwrap().len();
    let refused = backfill(&case.args("run", &[&range[..], &["--expect-plan", &first]].concat()));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--expect-plan: the plan has changed since {first} was confirmed"
        )) && stderr.contains(&format!("it is now {now}; nothing ran")),
        "{stderr}"
    );
    assert_eq!(case.version().await, version, "nothing was committed");
    let after = case.json("history", &[], 0).as_array().unwrap().len();
    assert_eq!(after, runs, "a refused run records no run");
    case.ok("run", &[&range[..], &["--expect-plan", &now]].concat(), 0);
}

#[tokio::test]
async fn ctrl_c_stops_starting_slices_and_a_rerun_finishes_the_job() {
    let case = Case::new("orders_clean");
    let range = ["--start", "2024-01-01", "--end", "2024-01-14"];
    let args = case.args("run", &[&range[..], &["--concurrency", "1"]].concat());
    // Interrupt once the first slice has committed.
    let (code, output) = interrupt_when(&args, |line| line.contains(" committed "));
    assert_eq!(code, Some(130), "{output}");
    assert!(
        output.contains("stopped. committed: 2024-01-01"),
        "{output}"
    );
    assert!(
        output.contains("not started: ") && output.contains("2024-01-14"),
        "{output}"
    );
    let committed = case.json("status", &[], 0)["done"].as_u64().unwrap() as usize;
    assert!(
        (1..14).contains(&committed),
        "{committed} slices committed before the stop"
    );
    let stopped = &case.json("history", &[], 0)[0]["end"];
    assert_eq!(
        stopped["stopped"], true,
        "its history says it was stopped: {stopped:#}"
    );

    let run = case.json("run", &range, 0);
    assert_eq!(
        statuses(&run).iter().filter(|s| *s == "committed").count(),
        14 - committed
    );
    let stored = case
        .stored("SELECT order_id, amount, dt FROM t ORDER BY order_id")
        .await;
    let expected = case
        .expected("SELECT order_id, amount, dt FROM orders ORDER BY order_id")
        .await;
    assert_eq!(stored, expected, "the table an uninterrupted run gives");
    let days: Vec<String> = (1..=14).map(|d| format!("2024-01-{d:02}")).collect();
    assert_eq!(case.committed_slices(), days, "each slice committed once");
    assert!(case.version().await <= 13, "at most one commit per slice");
}

#[test]
fn status_shows_done_remaining_and_the_last_error_of_failed_slices() {
    let case = Case::new("orders_clean");
    case.edit_pipeline("rate = 0.05", "rate = 0.01");
    case.ok("run", &["--start", "2024-01-08", "--end", "2024-01-10"], 1);

    let status = case.json(
        "status",
        &["--start", "2024-01-08", "--end", "2024-01-11"],
        0,
    );
    assert_eq!(
        (status["done"].as_u64(), status["remaining"].as_u64()),
        (Some(2), Some(2))
    );
    let lines = status["slices"].as_array().unwrap();
    let states: Vec<&str> = lines.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["done", "failed", "done", "missing"]);
    assert!(lines[1]["last_error"]
        .as_str()
        .unwrap()
        .contains("null rate of amount = 0.0295 > 0.01"));
    assert_eq!(lines[0]["rows"], 2000);
    assert!(lines[0]["duration_ms"].as_u64().is_some() && lines[3]["duration_ms"].is_null());
    assert!(status["median_duration_ms"].as_u64().is_some());

    // Without a selection: from the first to the last slice committed or attempted, so
    // the failed one shows (a first run failing everything still shows its failures).
    let seen = case.json("status", &[], 0);
    let states: Vec<&str> = (seen["slices"].as_array().unwrap().iter())
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "failed", "done"], "{seen:#}");
    assert_eq!(
        (seen["remaining"].as_u64(), seen["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let text = case.ok(
        "status",
        &["--start", "2024-01-08", "--end", "2024-01-11"],
        0,
    );
    assert!(text.contains("2 done, 2 remaining"), "{text}");
    assert!(text.contains("durations in slice order: "), "{text}");
}

#[test]
fn report_is_one_self_contained_html_page() {
    let case = Case::new("tenant_signups");
    case.ok("run", &[], 0);
    let (html, run) = case.report_of_last_run();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for external in ["<script", "<link", "src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the page must not load anything: found {external}"
        );
    }
    assert!(html.contains(&format!("Run {run} of tenant_signups")));
    assert!(html.contains(">3</span> committed, 0 skipped, <span id=\"failed\">0</span> failed"));
    assert!(
        html.contains("o&#x27;brien") && !html.contains("o'brien"),
        "keys are escaped"
    );
    assert_eq!(html.matches("class=\"cell committed\"").count(), 3);
}

#[tokio::test]
async fn kill_9_at_any_point_then_the_same_command_gives_the_clean_table() {
    // One slice per commit, so that the fourteen slices take many commits to kill
    // between.
    let range = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-14",
        "--concurrency",
        "2",
        "--max-slices-per-commit",
        "1",
    ];
    let clean = Case::new("orders_clean");
    clean.ok("run", &range, 0);
    let all = "SELECT * FROM t ORDER BY order_id";
    let expected = clean.stored(all).await;

    // Kill at several moments: before, during and between slices' staging and commits.
    let mut committed_when_killed = Vec::new();
    let moments = [
        Moment::Start,
        Moment::Files(1),
        Moment::Commits(1),
        Moment::Files(6),
        Moment::Commits(4),
        Moment::Commits(9),
        Moment::Commits(13),
    ];
    for moment in moments {
        let case = Case::new("orders_clean");
        kill_at(&case.args("run", &range), &case.table, moment);
        let status = case.json("status", &range[..4], 0);
        committed_when_killed.push(status["done"].as_u64().unwrap());

        case.ok("run", &range, 0);
        assert_eq!(case.stored(all).await, expected, "killed at {moment:?}");
        let txn = txn_versions(&case.plan(&range[..4], 0));
        assert_eq!(
            txn,
            vec![1; 14],
            "killed at {moment:?}: every slice committed exactly once"
        );
    }
    assert!(
        committed_when_killed.iter().any(|n| (1..14).contains(n)),
        "at least one kill must land in the middle of the run: {committed_when_killed:?}"
    );
}

#[tokio::test]
async fn kill_9_during_grouped_commits_then_the_same_command_commits_each_slice_once() {
    // 48 tiny hourly slices, 8 computed at once: slices wait for each other's commits and
    // go together, four at most, so that there are commits to kill between.
    let range = ["--start", "2024-01-01T00", "--end", "2024-01-02T23"];
    let eight_at_once = [
        &range[..],
        &["--concurrency", "8", "--max-slices-per-commit", "4"],
    ]
    .concat();
    let clean = Case::new("hourly_events");
    clean.ok("run", &eight_at_once, 0);
    let all = "SELECT * FROM t ORDER BY dt, hr, customer_id";
    let expected = clean.stored(all).await;
    let mut commits = vec![clean.version().await + 1];
    for moment in [Moment::Files(5), Moment::Commits(2), Moment::Commits(6)] {
        let case = Case::new("hourly_events");
        kill_at(&case.args("run", &eight_at_once), &case.table, moment);
        case.ok("run", &eight_at_once, 0);
        assert_eq!(case.stored(all).await, expected, "killed at {moment:?}");
        let txn = txn_versions(&case.plan(&range, 0));
        assert_eq!(
            txn,
            vec![1; 48],
            "killed at {moment:?}: each slice committed once"
        );
        commits.push(case.version().await + 1);
    }
    assert!(
        commits.iter().any(|&n| n < 48),
        "some commits must have carried several slices: {commits:?} commits for 48 slices"
    );
    assert!(
        commits[0] >= 12,
        "--max-slices-per-commit 4: {} commits for 48 slices",
        commits[0]
    );
}

#[tokio::test]
async fn a_slice_waiting_for_its_commit_leaves_its_place_to_the_next_slice() {
    // One place to compute in, and commits that take a second and a half: while the first
    // slice's commit is slow, the next slices compute and wait together for the next
    // commit. If a waiting slice kept its place, each slice would commit on its own.
    let case = Case::new("orders_clean");
    let store = std::sync::Arc::new(stores::TestStore::default());
    *store.commit_delay.lock().unwrap() = std::time::Duration::from_millis(1500);
    let mut pipeline = backfill_engine::pipeline::load(&case.pipeline).unwrap();
    pipeline.destination.url = url::Url::from_directory_path(&case.table).unwrap();
    let options = backfill_engine::OpenOptions {
        destination_store: Some(store),
        ..backfill_engine::OpenOptions::default()
    };
    let backfill = std::sync::Arc::new(
        backfill_engine::Backfill::open(pipeline, options)
            .await
            .unwrap(),
    );
    let selection = backfill_engine::Selection::range("2024-01-01", "2024-01-06");
    let options = backfill_engine::RunOptions {
        concurrency: Some(1),
        ..backfill_engine::RunOptions::default()
    };
    let silent = std::sync::Arc::new(backfill_engine::run::Silent);
    let summary = backfill.run(&selection, &options, silent).await.unwrap();
    assert_eq!(summary.committed(), 6, "{summary:?}");

    let commits = case.version().await + 1;
    assert!(
        commits < 6,
        "{commits} commits for 6 slices computed one at a time"
    );
    let range = ["--start", "2024-01-01", "--end", "2024-01-06"];
    let reference = Case::new("orders_clean");
    reference.ok("run", &range, 0);
    let all = "SELECT * FROM t ORDER BY order_id";
    assert_eq!(case.stored(all).await, reference.stored(all).await);
    assert_eq!(txn_versions(&case.plan(&range, 0)), vec![1; 6]);
}

#[tokio::test]
async fn a_slice_failing_its_check_among_grouped_slices_is_left_out_and_the_rest_commit_once() {
    // 48 tiny hourly slices, 8 in flight, so that checked slices wait in line for each
    // other's commits; one hour fails its check.
    let case = Case::new("hourly_events");
    case.edit_pipeline(
        "min_rows = 1",
        "min_rows = 1\n\n[[assertions]]\nsql = \"SELECT NOT (min(dt) = '2024-01-01' AND min(hr) = '07') FROM slice\"",
    );
    let range = ["--start", "2024-01-01T00", "--end", "2024-01-02T23"];
    let out = case.ok("run", &[&range[..], &["--concurrency", "8"]].concat(), 1);
    assert!(
        out.contains("assertion failed on slice 2024-01-01T07"),
        "{out}"
    );
    let plan = case.plan(&range, 0);
    let failed: Vec<_> = slice_states(&plan)
        .into_iter()
        .filter(|(_, state)| state != "done")
        .collect();
    assert_eq!(failed, states(&[("2024-01-01T07", "failed")]));
    let mut done: Vec<String> = slice_states(&plan)
        .into_iter()
        .filter(|(_, state)| state == "done")
        .map(|(slice, _)| slice)
        .collect();
    done.sort();
    assert_eq!(done.len(), 47);
    assert_eq!(case.committed_slices(), done, "each passing slice once");
    let failed_hour = "SELECT count(*) AS n FROM t WHERE dt = '2024-01-01' AND hr = '07'";
    let rows = case.stored(failed_hour).await;
    assert!(rows.contains(&"| 0 |".to_string()), "{rows:?}");
}

/// `--order desc` runs the newest slices first, and still skips the ones that are done:
/// what the pre-flight decided for a slice stays with that slice whatever the order.
#[test]
fn newest_first_runs_the_newest_slices_first_and_skips_the_done_ones() {
    let case = Case::new("orders_clean");
    case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-02"], 0);
    let args = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-04",
        "--order",
        "desc",
    ];
    let run = case.json("run", &args, 0);
    let slices: Vec<&str> = run["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["slice"].as_str().unwrap())
        .collect();
    assert_eq!(
        slices,
        ["2024-01-04", "2024-01-03", "2024-01-02", "2024-01-01"]
    );
    assert_eq!(
        statuses(&run),
        ["committed", "committed", "skipped", "skipped"]
    );
    let days: Vec<String> = (1..=4).map(|d| format!("2024-01-{d:02}")).collect();
    assert_eq!(case.committed_slices(), days, "each slice committed once");
}

/// `latest` opens the newest run wherever a run id is taken, and a run that is not there
/// is named with the destination it was looked for in and the command that lists runs.
#[test]
fn latest_opens_the_newest_run_and_an_unknown_run_names_where_it_was_looked_for() {
    let case = Case::new("orders_clean");
    case.ok("run", &["--keys", "2024-01-01"], 0);
    let second = case.json("run", &["--keys", "2024-01-02"], 0);
    let shown = case.json("show", &["latest"], 0);
    assert_eq!(shown["run_id"], second["run_id"]);
    let page = case.scratch.path("latest.html");
    case.ok("report", &["latest", "-o", page.to_str().unwrap()], 0);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(second["run_id"].as_str().unwrap()), "{html}");
    let cancel = case.ok("cancel", &["latest"], 0);
    assert!(
        cancel.contains(second["run_id"].as_str().unwrap()) && cancel.contains("had ended"),
        "{cancel}"
    );

    let out = backfill(&case.args("show", &["20240101T000000Z-abcdef"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let table = url::Url::from_directory_path(&case.table).unwrap();
    assert!(
        stderr.contains(&format!(
            "no run `20240101T000000Z-abcdef` of orders_clean in the history of {table}; `backfill history` lists its runs"
        )),
        "{stderr}"
    );
}
