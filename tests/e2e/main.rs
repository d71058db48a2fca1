//! End-to-end tests: the real `backfill` binary over the fixture bucket, with every Delta
//! table read back and compared with the same query run directly over the Parquet sources.

mod reads;
mod snapshots;
mod support;

use serde_json::Value;
use support::*;

/// `backfill <command> <pipeline> <args> --destination <table>` in a scratch copy.
fn cmd<'a>(command: &'a str, pipeline: &'a str, table: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![command, pipeline];
    args.extend_from_slice(rest);
    args.extend_from_slice(&["--destination", table]);
    args
}

fn slice_states(plan: &Value) -> Vec<(String, String)> {
    plan.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["slice"].as_str().unwrap().to_string(),
                s["state"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn overwrite_table_matches_the_sql_run_over_the_sources() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/daily_revenue.toml"),
        scratch.path("warehouse/daily_revenue"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let out = backfill_ok(
        &cmd(
            "run",
            p,
            t,
            &["--start", "2024-01-01", "--end", "2024-01-05"],
        ),
        0,
    );
    assert!(out.contains("5 slices, 5 committed, 0 skipped"), "{out}");

    let stored = query_table(&table, "SELECT dt, region, orders, priced_orders, round(revenue, 2) AS revenue FROM t ORDER BY dt, region").await;
    let expected = query_sources(
        &scratch.path("buckets/shop"),
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
    let opened = open(&table).await;
    let protocol = opened.snapshot().unwrap().protocol().clone();
    assert_eq!(
        (protocol.min_reader_version(), protocol.min_writer_version()),
        (1, 2)
    );
}

#[tokio::test]
async fn rerun_is_a_no_op_and_force_rewrites_identical_contents() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/orders_clean.toml"),
        scratch.path("warehouse/orders_clean"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let range = ["--start", "2024-01-02", "--end", "2024-01-04"];
    backfill_ok(&cmd("run", p, t, &range), 0);
    let version = version(&table).await;
    let all = "SELECT * FROM t ORDER BY order_id";
    let before = query_table(&table, all).await;

    let out = backfill_ok(&cmd("run", p, t, &range), 0);
    assert!(out.contains("3 slices, 0 committed, 3 skipped"), "{out}");
    assert_eq!(
        support::version(&table).await,
        version,
        "a re-run must not commit"
    );

    let out = backfill_ok(&cmd("run", p, t, &[&range[..], &["--force"]].concat()), 0);
    assert!(out.contains("3 committed"), "{out}");
    assert_eq!(
        support::version(&table).await,
        version + 3,
        "one commit per forced slice"
    );
    assert_eq!(
        query_table(&table, all).await,
        before,
        "a forced re-run leaves identical contents"
    );

    let status = json(&cmd("status", p, t, &["--json"]), 0);
    let txn: Vec<i64> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["record"]["txn_version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        txn,
        vec![2, 2, 2],
        "the forced commits carry the next transaction version"
    );
}

#[tokio::test]
async fn failing_assertion_commits_nothing_and_names_slice_and_value() {
    let scratch = Scratch::new();
    let table = scratch.path("warehouse/orders_clean");
    let t = table.to_str().unwrap();
    let good = scratch.path("pipelines/orders_clean.toml");
    backfill_ok(
        &cmd(
            "run",
            good.to_str().unwrap(),
            t,
            &["--start", "2024-01-08", "--end", "2024-01-09"],
        ),
        0,
    );
    let version = version(&table).await;
    let files_before = scratch.files_under("warehouse/orders_clean/dt=2024-01-09");

    // The same pipeline with a stricter null-rate ceiling: 2024-01-09 is a noisy day.
    let strict = std::fs::read_to_string(&good)
        .unwrap()
        .replace("rate = 0.05", "rate = 0.01");
    let strict = scratch.pipeline("orders_strict", &strict);
    let output = backfill(&cmd(
        "run",
        strict.to_str().unwrap(),
        t,
        &["--keys", "2024-01-09", "--force"],
    ));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .contains("assertion failed on slice 2024-01-09: null rate of amount = 0.0295 > 0.01"),
        "{stdout}"
    );
    assert_eq!(
        support::version(&table).await,
        version,
        "the table version is unchanged"
    );
    assert_eq!(
        scratch.files_under("warehouse/orders_clean/dt=2024-01-09"),
        files_before,
        "staged files were cleaned up"
    );
}

#[tokio::test]
async fn first_run_failing_every_slice_creates_no_table() {
    let scratch = Scratch::new();
    let good = std::fs::read_to_string(scratch.path("pipelines/orders_clean.toml")).unwrap();
    let strict = scratch.pipeline(
        "orders_strict",
        &good.replace("min_rows = 1000", "min_rows = 1000000"),
    );
    let table = scratch.path("warehouse/never");
    let out = backfill_ok(
        &cmd(
            "run",
            strict.to_str().unwrap(),
            table.to_str().unwrap(),
            &["--keys", "2024-01-01"],
        ),
        1,
    );
    assert!(out.contains("rows = 2000 < 1000000"), "{out}");
    assert!(
        !table.join("_delta_log").exists(),
        "nothing may be committed"
    );
    assert_eq!(scratch.files_under("warehouse/never"), Vec::<String>::new());
}

#[tokio::test]
async fn late_arriving_source_file_is_planned_as_changed_and_rerun() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/daily_revenue.toml"),
        scratch.path("warehouse/daily_revenue"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let range = ["--start", "2024-01-01", "--end", "2024-01-03", "--json"];
    backfill_ok(&cmd("run", p, t, &range), 0);

    // A second file lands late in one day's partition.
    let day = scratch.path("buckets/shop/orders/dt=2024-01-02");
    std::fs::copy(
        day.join("part-00000.parquet"),
        day.join("part-00001.parquet"),
    )
    .unwrap();
    let plan = json(&cmd("plan", p, t, &range), 0);
    assert_eq!(
        slice_states(&plan),
        [
            ("2024-01-01", "done"),
            ("2024-01-02", "changed"),
            ("2024-01-03", "done")
        ]
        .map(|(a, b)| (a.into(), b.into()))
    );
    assert_eq!(
        plan[1]["state"]["what"],
        serde_json::json!(["source files"])
    );
    assert_eq!(plan[1]["source_files"], 3);

    let run = json(&cmd("run", p, t, &range), 0);
    let statuses: Vec<&str> = run["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["skipped", "committed", "skipped"]);
    let stored = query_table(
        &table,
        "SELECT dt, sum(orders) AS orders FROM t GROUP BY dt ORDER BY dt",
    )
    .await;
    let expected = query_sources(
        &scratch.path("buckets/shop"),
        "SELECT dt, count(*) AS orders FROM orders WHERE dt <= '2024-01-03' AND status <> 'cancelled' GROUP BY dt ORDER BY dt",
    )
    .await;
    assert_eq!(stored, expected, "the late file's rows are in the table");
}

#[tokio::test]
async fn changed_sql_is_planned_as_changed() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/orders_clean.toml"),
        scratch.path("warehouse/orders_clean"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    backfill_ok(&cmd("run", p, t, &["--keys", "2024-01-01"]), 0);
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("upper(status)", "lower(status)");
    std::fs::write(&pipeline, text).unwrap();
    let plan = json(&cmd("plan", p, t, &["--keys", "2024-01-01", "--json"]), 0);
    assert_eq!(plan[0]["state"]["state"], "changed");
    assert_eq!(plan[0]["state"]["what"], serde_json::json!(["SQL"]));
}

#[tokio::test]
async fn partition_pruning_plans_only_the_slice_files() {
    let scratch = Scratch::new();
    let pipeline = scratch.path("pipelines/daily_revenue.toml");
    let table = scratch.path("warehouse/x");
    let plan = json(
        &cmd(
            "plan",
            pipeline.to_str().unwrap(),
            table.to_str().unwrap(),
            &["--keys", "2024-01-03", "--json"],
        ),
        0,
    );
    // The day's orders file and the dimension table, and nothing of the other 13 days.
    assert_eq!(plan[0]["source_files"], 2, "{plan}");
    let bytes =
        std::fs::metadata(scratch.path("buckets/shop/orders/dt=2024-01-03/part-00000.parquet"))
            .unwrap()
            .len()
            + std::fs::metadata(scratch.path("buckets/shop/customers/part-00000.parquet"))
                .unwrap()
                .len();
    assert_eq!(plan[0]["source_bytes"], bytes);
}

#[tokio::test]
async fn hourly_slices_match_zero_padded_hour_folders() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/hourly_events.toml"),
        scratch.path("warehouse/hourly"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let out = backfill_ok(
        &cmd(
            "run",
            p,
            t,
            &["--start", "2024-01-01T07", "--end", "2024-01-01T09"],
        ),
        0,
    );
    assert!(out.contains("3 committed"), "{out}");
    let stored = query_table(&table, "SELECT dt, hr, sum(events) AS events, sum(clicks) AS clicks FROM t GROUP BY dt, hr ORDER BY hr").await;
    let expected = query_sources(
        &scratch.path("buckets/shop"),
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
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/tenant_signups.toml"),
        scratch.path("warehouse/tenants"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let out = backfill_ok(&cmd("run", p, t, &[]), 0);
    assert!(out.contains("3 slices, 3 committed"), "{out}");
    let stored = query_table(
        &table,
        "SELECT tenant, plan, users FROM t ORDER BY tenant, plan",
    )
    .await;
    let expected = query_sources(
        &scratch.path("buckets/shop"),
        "SELECT tenant, coalesce(plan, 'none') AS plan, count(*) AS users FROM signups GROUP BY tenant, plan ORDER BY tenant, plan",
    )
    .await;
    assert_eq!(stored, expected);
    assert!(
        stored.iter().any(|line| line.contains("o'brien")),
        "{stored:?}"
    );
    // Re-running one key alone finds it done.
    let plan = json(&cmd("plan", p, t, &["--keys", "o'brien", "--json"]), 0);
    assert_eq!(
        slice_states(&plan),
        vec![("o'brien".to_string(), "done".to_string())]
    );
}

#[tokio::test]
async fn merge_upserts_on_keys_without_duplicates() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/orders_merge.toml"),
        scratch.path("warehouse/merge"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    backfill_ok(&cmd("run", p, t, &range), 0);
    // Change the SQL so every row is an update, and run again: same keys, new values.
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        "SELECT order_id, customer_id, amount, status",
        "SELECT order_id, customer_id, amount * 2 AS amount, status",
    );
    std::fs::write(&pipeline, text).unwrap();
    backfill_ok(&cmd("run", p, t, &range), 0);

    let stored = query_table(&table, "SELECT count(*) AS n, count(DISTINCT order_id) AS keys, round(sum(amount), 2) AS total FROM t").await;
    let expected = query_sources(
        &scratch.path("buckets/shop"),
        "SELECT count(*) AS n, count(DISTINCT order_id) AS keys, round(sum(amount * 2), 2) AS total FROM orders WHERE dt BETWEEN '2024-01-01' AND '2024-01-03'",
    )
    .await;
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn append_never_duplicates_on_rerun_or_force() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/orders_append.toml"),
        scratch.path("warehouse/append"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let range = ["--start", "2024-01-01", "--end", "2024-01-02"];
    backfill_ok(&cmd("run", p, t, &range), 0);
    backfill_ok(&cmd("run", p, t, &range), 0);
    backfill_ok(&cmd("run", p, t, &[&range[..], &["--force"]].concat()), 0);
    let stored = query_table(
        &table,
        "SELECT count(*) AS n, count(DISTINCT order_id) AS keys FROM t",
    )
    .await;
    let expected = query_sources(
        &scratch.path("buckets/shop"),
        "SELECT count(*) AS n, count(DISTINCT order_id) AS keys FROM orders WHERE dt IN ('2024-01-01', '2024-01-02') AND status = 'shipped'",
    )
    .await;
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn rows_outside_the_slice_partition_commit_nothing() {
    let scratch = Scratch::new();
    let text = std::fs::read_to_string(scratch.path("pipelines/orders_clean.toml")).unwrap().replace(
        "WHERE dt = '{{ slice }}'\n  AND ordered_at >= {{ start_ts }} AND ordered_at < {{ end_ts }}",
        "WHERE dt >= '{{ slice }}'",
    );
    let pipeline = scratch.pipeline("leaky", &text);
    let table = scratch.path("warehouse/leaky");
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let run = json(&cmd("run", p, t, &["--keys", "2024-01-13", "--json"]), 1);
    let outcome = &run["outcomes"][0];
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["fault"], "user", "the SQL is at fault");
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains("outside the slice's partition dt = 2024-01-13"),
        "{error}"
    );
    assert!(!table.join("_delta_log").exists());
    assert_eq!(
        scratch.files_under("warehouse/leaky"),
        Vec::<String>::new(),
        "staged files were cleaned up"
    );
}

#[test]
fn bad_inputs_fail_before_anything_runs_with_exit_code_2() {
    let scratch = Scratch::new();
    let pipeline = scratch.path("pipelines/orders_clean.toml");
    let p = pipeline.to_str().unwrap();
    let table = scratch.path("warehouse/bad");
    let t = table.to_str().unwrap();
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
        cmd(
            "run",
            p,
            t,
            &["--start", "2024-01-05", "--end", "2024-01-01"],
        ),
        "the range is reversed",
    );
    expect(
        cmd(
            "run",
            p,
            t,
            &["--start", "2024-1-05", "--end", "2024-01-06"],
        ),
        "`2024-1-05` is not a day of the form YYYY-MM-DD",
    );
    expect(
        cmd(
            "run",
            p,
            t,
            &["--start", "2024-01-05T03", "--end", "2024-01-06T04"],
        ),
        "is not a day of the form",
    );
    expect(cmd("run", p, t, &[]), "no slices selected");

    let text = std::fs::read_to_string(&pipeline).unwrap();
    let typo = scratch.pipeline(
        "typo",
        &text.replace(
            "partition_by = [\"dt\"]",
            "partition_by = [\"dt\"]\npartiton = 1",
        ),
    );
    expect(cmd("validate", typo.to_str().unwrap(), t, &[]), "typo.toml:23: unknown field `partiton`, expected one of `url`, `partition_by`, `strategy`, `merge_keys`");

    let bad_sql = scratch.pipeline("bad_sql", &text.replace("FROM orders", "FROM nowhere"));
    expect(cmd("validate", bad_sql.to_str().unwrap(), t, &[]), "bad_sql.toml: transform: Error during planning: table 'datafusion.public.nowhere' not found");

    let bad_var = scratch.pipeline(
        "bad_var",
        &text.replace("{{ start_ts }}", "{{ start_time }}"),
    );
    expect(
        cmd("validate", bad_var.to_str().unwrap(), t, &[]),
        "unknown variable `start_time`",
    );

    let bad_check = scratch.pipeline(
        "bad_check",
        &text.replace("count(*) = 0 FROM slice", "count(*) FROM slice"),
    );
    expect(
        cmd("validate", bad_check.to_str().unwrap(), t, &[]),
        "assertion `SELECT count(*) FROM slice WHERE amount < 0`: must return one boolean column",
    );

    std::fs::write(scratch.path("pipelines/empty.txt"), "# nobody\n\n").unwrap();
    let tenants = std::fs::read_to_string(scratch.path("pipelines/tenant_signups.toml")).unwrap();
    let empty = scratch.pipeline(
        "empty_manifest",
        &tenants.replace("tenants.txt", "empty.txt"),
    );
    expect(
        cmd("plan", empty.to_str().unwrap(), t, &[]),
        "empty.txt: the manifest lists no keys",
    );

    let missing = scratch.pipeline(
        "missing_source",
        &text.replace("../buckets/shop/orders", "../buckets/shop/nothing"),
    );
    expect(
        cmd("validate", missing.to_str().unwrap(), t, &[]),
        "source `orders`",
    );

    assert!(!table.join("_delta_log").exists(), "nothing was written");
}

#[tokio::test]
async fn concurrent_slices_give_the_same_table_as_a_serial_run() {
    let scratch = Scratch::new();
    let pipeline = scratch.path("pipelines/orders_clean.toml");
    let p = pipeline.to_str().unwrap();
    let (serial, parallel) = (
        scratch.path("warehouse/serial"),
        scratch.path("warehouse/parallel"),
    );
    let range = ["--start", "2024-01-01", "--end", "2024-01-14"];
    backfill_ok(
        &cmd(
            "run",
            p,
            serial.to_str().unwrap(),
            &[&range[..], &["--concurrency", "1"]].concat(),
        ),
        0,
    );
    backfill_ok(
        &cmd(
            "run",
            p,
            parallel.to_str().unwrap(),
            &[&range[..], &["--concurrency", "6"]].concat(),
        ),
        0,
    );
    let all = "SELECT * FROM t ORDER BY order_id";
    let rows = query_table(&serial, all).await;
    assert_eq!(rows.len(), 14 * 2000 + 4);
    assert_eq!(query_table(&parallel, all).await, rows);
    assert_eq!(
        version(&parallel).await,
        13,
        "one commit per slice, none lost to conflicts"
    );
}

#[tokio::test]
async fn append_after_the_log_history_expired_replaces_instead_of_duplicating() {
    let scratch = Scratch::new();
    let (pipeline, table) = (
        scratch.path("pipelines/orders_append.toml"),
        scratch.path("warehouse/append"),
    );
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    backfill_ok(
        &cmd("run", p, t, &[&range[..], &["--concurrency", "1"]].concat()),
        0,
    );

    // Log cleanup: a checkpoint at version 2, then the commits before it (and the records
    // of 2024-01-01 and 2024-01-02 in them) are gone.
    deltalake::checkpoints::create_checkpoint(&open(&table).await, None)
        .await
        .unwrap();
    for version in 0..=1 {
        std::fs::remove_file(table.join(format!("_delta_log/{version:020}.json"))).unwrap();
    }
    let plan = json(&cmd("plan", p, t, &[&range[..], &["--json"]].concat()), 0);
    assert_eq!(
        slice_states(&plan)[0].1,
        "missing",
        "the records expired with the history"
    );

    backfill_ok(&cmd("run", p, t, &range), 0);
    let stored = query_table(
        &table,
        "SELECT count(*) AS n, count(DISTINCT order_id) AS keys FROM t",
    )
    .await;
    let expected = query_sources(
        &scratch.path("buckets/shop"),
        "SELECT count(*) AS n, count(DISTINCT order_id) AS keys FROM orders WHERE dt <= '2024-01-03' AND status = 'shipped'",
    )
    .await;
    assert_eq!(
        stored, expected,
        "the re-run replaced the slices' tagged files"
    );
}
