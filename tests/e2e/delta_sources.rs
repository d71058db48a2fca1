//! Delta tables as sources: `orders_daily` aggregates `orders_clean`'s output table.

use crate::support::*;

const RANGE: [&str; 4] = ["--start", "2024-01-01", "--end", "2024-01-04"];

/// The aggregate `orders_daily` computes, straight from the upstream table (`t`).
const AGGREGATE: &str = "SELECT dt, status, count(*) AS orders, \
    count(DISTINCT customer_id) AS customers, round(sum(amount), 2) AS revenue \
    FROM t GROUP BY dt, status ORDER BY dt, status";
const STORED: &str =
    "SELECT dt, status, orders, customers, round(revenue, 2) AS revenue FROM t ORDER BY dt, status";

/// The `orders_daily` pipeline of `upstream`'s scratch copy, reading `upstream`'s table.
pub(crate) fn downstream_pipeline(upstream: &Case) -> std::path::PathBuf {
    let pipeline = upstream.scratch.path("pipelines/orders_daily.toml");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let table = upstream.table.to_str().unwrap();
    let text = text.replace("../../warehouse/orders_clean", table);
    let text = text.replace(
        "../../warehouse/orders_daily",
        &table.replace("orders_clean", "orders_daily"),
    );
    std::fs::write(&pipeline, text).unwrap();
    pipeline
}

/// `backfill <command> orders_daily <rest> --json` in `upstream`'s scratch copy.
fn downstream(upstream: &Case, command: &str, rest: &[&str], code: i32) -> serde_json::Value {
    let pipeline = downstream_pipeline(upstream);
    let args = [&[command, pipeline.to_str().unwrap()], rest, &["--json"]].concat();
    json(&args, code)
}

#[tokio::test]
async fn a_pipeline_reads_another_pipelines_table_and_redoes_exactly_the_slices_it_recommitted() {
    let upstream = Case::new("orders_clean");
    upstream.ok("run", &RANGE, 0);
    let run = downstream(&upstream, "run", &RANGE, 0);
    assert_eq!(run["outcomes"].as_array().unwrap().len(), 4, "{run}");
    let daily = upstream.scratch.path("warehouse/orders_daily");
    let expected = query_table(&upstream.table, AGGREGATE).await;
    assert_eq!(query_table(&daily, STORED).await, expected);

    // Day 2 again upstream: its old file is removed from the table but stays in the
    // folder, and only the downstream day that reads it changes.
    upstream.ok("run", &["--keys", "2024-01-02", "--force"], 0);
    let plan = downstream(&upstream, "plan", &RANGE, 0)["slices"].clone();
    let states: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "changed", "done", "done"], "{plan}");
    for slice in plan.as_array().unwrap() {
        assert_eq!(
            slice["source_files"], 1,
            "a slice reads its own day only: {slice}"
        );
    }
    let upstream_files = upstream.data_files();
    let day_two = upstream_files
        .iter()
        .filter(|f| f.contains("dt=2024-01-02/") && f.ends_with(".parquet"))
        .count();
    assert_eq!(day_two, 2, "the removed file is still in the folder");

    let rerun = downstream(&upstream, "run", &RANGE, 0);
    let committed: Vec<&str> = rerun["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["status"] == "committed")
        .map(|o| o["slice"].as_str().unwrap())
        .collect();
    assert_eq!(committed, ["2024-01-02"]);
    let expected = query_table(&upstream.table, AGGREGATE).await;
    assert_eq!(
        query_table(&daily, STORED).await,
        expected,
        "the removed file is not read"
    );
}

#[test]
fn a_delta_source_must_be_a_delta_table_whose_partitioning_is_in_its_log() {
    let upstream = Case::new("orders_clean");
    let pipeline = downstream_pipeline(&upstream);
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let plan = |text: String| {
        std::fs::write(&pipeline, text).unwrap();
        let out = backfill(&["plan", pipeline.to_str().unwrap(), "--keys", "2024-01-01"]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), stderr)
    };

    // Nothing committed upstream yet: there is no table to read.
    let (code, stderr) = plan(text.clone());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("source `orders`") && stderr.contains("is not a Delta table"),
        "{stderr}"
    );

    upstream.ok("run", &["--keys", "2024-01-01"], 0);
    let partitioned = text.replace(
        "format = \"delta\"",
        "format = \"delta\"\npartitioning = [\"dt\"]",
    );
    let (code, stderr) = plan(partitioned);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("sources.orders.partitioning")
            && stderr.contains("partitioning is in its log"),
        "{stderr}"
    );
}
