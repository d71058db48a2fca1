//! Inputs meant to hurt: SQL that is not a query, destinations that would read their own
//! output or swallow other files, absurd ranges, and a table whose files went missing.
//! Each is refused before anything is written (exit 2), or repaired, never passed over.

use crate::support::*;

/// Runs `backfill` expecting a refusal (exit 2) that says `message`; returns stderr.
fn refused(args: &[&str], message: &str) -> String {
    let output = backfill(args);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: expected {message:?} in\n{stderr}"
    );
    stderr
}

/// `orders_clean` with its transform replaced by `sql`, as a new pipeline file.
fn with_transform(case: &Case, name: &str, sql: &str) -> String {
    let text = std::fs::read_to_string(&case.pipeline).unwrap();
    let start = text.find("sql = \"\"\"").unwrap();
    let end = start + text[start..].find("\"\"\"\n\n").unwrap() + 3;
    let changed = format!("{}sql = \"\"\"{sql}\"\"\"{}", &text[..start], &text[end..]);
    let path = case.scratch.pipeline(name, &changed);
    path.to_str().unwrap().to_string()
}

#[test]
fn sql_that_is_not_one_read_only_query_is_refused_and_writes_nothing() {
    let case = Case::new("orders_clean");
    let leak = case.scratch.path("leak.csv");
    let sources_before = case.scratch.files_under("buckets/shop/orders");
    let destination = case.table.to_str().unwrap();
    let not_a_query = [
        (
            "copy",
            format!("COPY (SELECT * FROM orders) TO '{}'", leak.display()),
            "`COPY (SELECT ...` is not allowed",
        ),
        (
            "insert",
            "INSERT INTO orders SELECT * FROM orders".to_string(),
            "`INSERT INTO ...` is not allowed",
        ),
        (
            "external",
            "CREATE EXTERNAL TABLE secrets STORED AS CSV LOCATION '/etc/passwd'".to_string(),
            "`CREATE EXTERNAL ...` is not allowed",
        ),
        (
            "drop",
            "DROP TABLE orders".to_string(),
            "`DROP TABLE ...` is not allowed",
        ),
        (
            "view",
            "CREATE VIEW v AS SELECT 1".to_string(),
            "`CREATE VIEW ...` is not allowed",
        ),
        (
            "two",
            "SELECT * FROM orders; SELECT * FROM orders".to_string(),
            "holds 2 SQL statements",
        ),
        (
            "file_as_table",
            "SELECT * FROM '/etc/hosts'".to_string(),
            "table 'datafusion.public./etc/hosts' not found",
        ),
    ];
    for (name, sql, message) in &not_a_query {
        let pipeline = with_transform(&case, name, sql);
        let said = refused(
            &["validate", &pipeline, "--destination", destination],
            message,
        );
        assert!(
            said.contains(&format!("{name}.toml")),
            "names the file: {said}"
        );
        refused(
            &[
                "run",
                &pipeline,
                "--keys",
                "2024-01-01",
                "--destination",
                destination,
            ],
            message,
        );
    }
    assert!(!leak.exists(), "COPY wrote {}", leak.display());
    assert_eq!(
        case.scratch.files_under("buckets/shop/orders"),
        sources_before
    );
    assert!(!case.table.join("_delta_log").exists());

    case.edit_pipeline(
        "sql = \"SELECT count(*) = 0 FROM slice WHERE amount < 0\"",
        &format!("sql = \"COPY (SELECT true) TO '{}'\"", leak.display()),
    );
    let pipeline = case.pipeline.to_str().unwrap();
    refused(
        &["validate", pipeline, "--destination", destination],
        "is not allowed",
    );
    assert!(!leak.exists());
}

#[test]
fn rebuild_preview_sql_is_read_only() {
    let case = Case::new("orders_rebuild");
    let leak = case.scratch.path("preview.csv");
    case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-02"], 0);
    let copy = format!("COPY (SELECT * FROM staged) TO '{}'", leak.display());
    let range = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-02",
        "--sql",
        &copy,
    ];
    refused(
        &case.args("rebuild-preview", &range),
        "`COPY (SELECT ...` is not allowed",
    );
    assert!(!leak.exists());
}

#[test]
fn a_destination_overlapping_a_source_is_refused() {
    let case = Case::new("orders_clean");
    let orders = case.scratch.path("buckets/shop/orders");
    for destination in [
        orders.clone(),
        orders.join("out"),
        case.scratch.path("buckets"),
    ] {
        let args = [
            "validate",
            case.pipeline.to_str().unwrap(),
            "--destination",
            destination.to_str().unwrap(),
        ];
        refused(&args, "overlaps source `orders`");
    }
    assert!(!orders.join("_delta_log").exists());
}

#[test]
fn a_destination_that_is_not_an_empty_folder_or_a_table_is_refused() {
    let case = Case::new("orders_clean");
    let pipeline = case.pipeline.to_str().unwrap();
    let foreign = case.scratch.path("warehouse/foreign");
    std::fs::create_dir_all(foreign.join("reports")).unwrap();
    std::fs::write(foreign.join("reports/q1.csv"), "keep me").unwrap();
    let run = |destination: &str, message: &str| {
        let args = [
            "run",
            pipeline,
            "--keys",
            "2024-01-01",
            "--destination",
            destination,
        ];
        refused(&args, message);
    };
    run(
        foreign.to_str().unwrap(),
        "holds files (such as `reports/`) but no Delta table",
    );
    assert_eq!(
        case.scratch.files_under("warehouse/foreign"),
        ["reports/q1.csv"]
    );

    let file = case.scratch.path("warehouse/a_file");
    std::fs::write(&file, "not a folder").unwrap();
    run(file.to_str().unwrap(), "is a file, not a folder");
    run("s3://", "`s3://` names no bucket");
}

#[test]
fn a_selection_of_millions_of_slices_is_refused_at_once() {
    let case = Case::new("orders_clean");
    let started = std::time::Instant::now();
    refused(
        &case.args("plan", &["--start", "2013-01-01", "--end", "9999-12-31"]),
        "2013-01-01..9999-12-31 is 2917191 slices, more than the 100000",
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// A data file of a committed slice deleted behind the table's back (by a tool, or by the
/// ambiguous-commit bug of earlier versions): the slice is no longer done, and a rerun
/// rewrites it instead of exiting 0 over a table every reader fails on.
#[tokio::test]
async fn a_done_slice_whose_files_are_gone_is_changed_and_rewritten() {
    for pipeline in ["orders_clean", "orders_append"] {
        let case = Case::new(pipeline);
        let days = ["--start", "2024-01-01", "--end", "2024-01-03"];
        case.ok("run", &days, 0);
        std::fs::remove_file(file_tagged(&case, "2024-01-02")).unwrap();

        let plan = case.plan(&days, 0);
        assert_eq!(
            plan_states(&plan),
            ["done", "changed", "done"],
            "{pipeline}"
        );
        let what = plan[1]["state"]["what"].to_string();
        assert!(what.contains("1 missing from storage"), "{what}");

        let out = case.ok("run", &days, 0);
        assert!(out.contains("1 committed, 2 skipped"), "{pipeline}: {out}");
        let all = match pipeline {
            "orders_append" => "SELECT order_id FROM t ORDER BY order_id",
            _ => "SELECT order_id, dt FROM t ORDER BY order_id",
        };
        let expected = match pipeline {
            "orders_append" => "SELECT order_id FROM orders WHERE status = 'shipped' AND dt <= '2024-01-03' ORDER BY order_id",
            _ => "SELECT order_id, dt FROM orders WHERE dt <= '2024-01-03' ORDER BY order_id",
        };
        assert_eq!(
            case.stored(all).await,
            case.expected(expected).await,
            "{pipeline}"
        );
    }
}

/// The local path of the file that `slice` wrote last, from its `add.tags`.
fn file_tagged(case: &Case, slice: &str) -> std::path::PathBuf {
    let mut found = None;
    for commit in case.commit_entries() {
        for action in commit.as_array().unwrap() {
            if action
                .pointer("/add/tags/backfill.slice")
                .and_then(|s| s.as_str())
                == Some(slice)
            {
                found = action
                    .pointer("/add/path")
                    .and_then(|p| p.as_str())
                    .map(str::to_string);
            }
        }
    }
    case.table.join(found.unwrap())
}

/// One truncated file and one file whose `amount` is text, as a bad day from another
/// writer would be: only the two slices that read them fail, each naming its file; the
/// rest commit, and a run that reads neither day never opens them.
#[tokio::test]
async fn a_bad_source_file_fails_only_the_slices_that_read_it() {
    let case = Case::new("orders_clean");
    let day = |d: &str| case.scratch.path(&format!("buckets/shop/orders/dt={d}"));
    let truncated = day("2024-01-05").join("part-00000.parquet");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let sql = "SELECT order_id, customer_id, CAST(amount AS VARCHAR) AS amount, status, ordered_at FROM day";
    rewrite_parquet(&day("2024-01-09"), sql).await;

    let ten_days = ["--start", "2024-01-01", "--end", "2024-01-10"];
    let plan = case.plan(&ten_days, 0);
    let problems: Vec<(usize, String)> = plan
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s["problem"].as_str().map(|p| (i, p.to_string())))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].0, 4);
    assert!(
        problems[0].1.contains("dt=2024-01-05/part-00000.parquet"),
        "{problems:?}"
    );
    assert_eq!(problems[1].0, 8);
    assert!(
        problems[1].1.contains("dt=2024-01-09/part-00000.parquet"),
        "{problems:?}"
    );
    assert!(
        problems[1].1.contains("left out of the source's schema"),
        "{problems:?}"
    );

    // The odd file is the newest of the selection: the columns most files agree on still
    // win, and only its slice cannot run.
    let newest_odd = case.plan(&["--start", "2024-01-06", "--end", "2024-01-09"], 0);
    let cannot_run: Vec<bool> = newest_odd
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["problem"].is_string())
        .collect();
    assert_eq!(cannot_run, [false, false, false, true], "{newest_odd:#}");

    let run = case.json("run", &ten_days, 1);
    let failed: Vec<(&str, &str, &str)> = run["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["status"] == "failed")
        .map(|o| {
            let slice = o["slice"].as_str().unwrap();
            (
                slice,
                o["error"].as_str().unwrap(),
                o["fault"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (slice, error, fault) in &failed {
        assert!(
            error.contains(&format!("dt={slice}/part-00000.parquet")),
            "{error}"
        );
        assert_eq!(*fault, "data", "not retried as a storage fault: {error}");
    }
    // The expected rows come from the pristine bucket: the scratch copy's bad files would
    // break the oracle as well.
    let good = "dt NOT IN ('2024-01-05', '2024-01-09') AND dt <= '2024-01-10'";
    assert_eq!(
        case.stored("SELECT order_id, dt FROM t ORDER BY order_id")
            .await,
        query_sources(
            &bucket(),
            &format!("SELECT order_id, dt FROM orders WHERE {good} ORDER BY order_id")
        )
        .await
    );

    let output = backfill(&case.args("run", &["--start", "2024-01-11", "--end", "2024-01-12"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("left out"),
        "read a footer outside its slices: {stderr}"
    );
}

/// Keys with characters Hive escapes in folder names (`"`, `%`, `[`, `]`), in folders as
/// Spark, Hive and pyarrow write them: `tenant=a%22b` holds the rows of tenant `a"b`.
/// Each key finds its folder, its rows carry the key itself, and a rerun finds it done.
#[tokio::test]
async fn keys_that_hive_escapes_match_their_escaped_folders() {
    let case = Case::new("tenant_signups");
    let signups = case.scratch.path("buckets/shop/signups");
    for folder in ["a%22b", "50%25", "x%5B1%5D"] {
        copy_tree(
            &signups.join("tenant=acme"),
            &signups.join(format!("tenant={folder}")),
        );
    }
    let keys = ["--keys", "a\"b,50%,x[1]"];
    let out = case.ok("run", &keys, 0);
    assert!(out.contains("3 slices, 3 committed"), "{out}");
    let stored = case
        .stored("SELECT DISTINCT tenant FROM t ORDER BY tenant")
        .await;
    let tenants: Vec<&str> = stored[3..6]
        .iter()
        .map(|l| l.trim_matches(['|', ' ']))
        .collect();
    assert_eq!(tenants, ["50%", "a\"b", "x[1]"]);
    let plan = case.plan(&keys, 0);
    assert_eq!(plan_states(&plan), ["done", "done", "done"]);
    let cleaned = case.json("clean", &["--older-than", "0s", "--no-run-in-flight"], 0);
    assert_eq!(cleaned["deleted"].as_array().unwrap().len(), 0, "{cleaned}");
    assert_eq!(case.plan(&keys, 0), plan, "clean kept every file");
}
