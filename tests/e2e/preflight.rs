//! Before launch: what `plan` estimates a backfill costs, and the checks with which `run`
//! refuses to start (slices without source data, budgets).

use crate::support::*;

const FIRST_THREE_DAYS: [&str; 4] = ["--start", "2024-01-01", "--end", "2024-01-03"];

/// Bytes of the Parquet files under `folder` of the scratch bucket.
fn bytes_under(case: &Case, folder: &str) -> u64 {
    let files = case.scratch.files_under(folder);
    let size = |f: &String| {
        let path = case.scratch.path(&format!("{folder}/{f}"));
        std::fs::metadata(path).unwrap().len()
    };
    files
        .iter()
        .filter(|f| f.ends_with(".parquet"))
        .map(size)
        .sum()
}

/// Runs `backfill run` expecting a refusal (exit 2) and returns what it said.
fn refused(case: &Case, rest: &[&str]) -> String {
    let output = backfill(&case.args("run", rest));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!case.table.join("_delta_log").exists(), "nothing ran");
    stderr
}

#[tokio::test]
async fn plan_estimates_what_the_run_then_reads() {
    let case = Case::new("orders_clean");
    let plan = case.json("plan", &FIRST_THREE_DAYS, 0);
    let estimate = &plan["estimate"];
    let days = ["2024-01-01", "2024-01-02", "2024-01-03"];
    let bytes: u64 = days
        .iter()
        .map(|day| bytes_under(&case, &format!("buckets/shop/orders/dt={day}")))
        .sum();
    assert_eq!(estimate["slices"], 3);
    assert_eq!(estimate["files"], 3);
    assert_eq!(estimate["bytes"], bytes);
    // Rows come from the footers; here they are counted from the data itself.
    let counted = case
        .expected("SELECT count(*) AS n FROM orders WHERE dt <= '2024-01-03'")
        .await;
    assert!(
        counted[3].contains(&format!(" {} ", estimate["rows"])),
        "{counted:?} vs {estimate}"
    );
    assert_eq!(estimate["basis"]["from"], "sample");
    assert_eq!(estimate["basis"]["slice"], "2024-01-01");
    let sampled_ms = estimate["duration_ms"].as_u64().unwrap();

    let run = case.json("run", &FIRST_THREE_DAYS, 0);
    let plan = case.json("plan", &[&FIRST_THREE_DAYS[..], &["--force"]].concat(), 0);
    let records: Vec<&serde_json::Value> = plan["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["state"]["committed"]["record"])
        .collect();
    let read: u64 = records
        .iter()
        .map(|r| r["source_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(read, bytes, "the run read exactly the estimated files");

    // Only the duration's order of magnitude is promised, and these machines are shared
    // and noisy: the bounds are wide, and compare with the slices' summed durations.
    let took: u64 = run["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["duration_ms"].as_u64().unwrap())
        .sum();
    assert!(
        sampled_ms <= took * 10 && took <= sampled_ms.max(1) * 100,
        "estimated {sampled_ms} ms from a sample, the slices took {took} ms"
    );
    // Once the pipeline has committed slices, estimates come from them.
    assert_eq!(plan["estimate"]["basis"]["from"], "history");
    assert_eq!(plan["estimate"]["basis"]["slices"], 3);
}

#[test]
fn run_refuses_slices_without_source_data_unless_allowed() {
    let case = Case::new("daily_revenue");
    let range = ["--start", "2024-01-13", "--end", "2024-01-16"];
    let plan = case.plan(&range, 0);
    let empty: Vec<&serde_json::Value> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["no_source_data"])
        .collect();
    let orders = serde_json::json!(["orders"]);
    let none = serde_json::json!([]);
    assert_eq!(empty, [&none, &none, &orders, &orders]);
    let text = case.ok("plan", &range, 0);
    assert!(
        text.contains("2 slices to run have no source data"),
        "{text}"
    );

    let stderr = refused(&case, &range);
    assert!(
        stderr.contains("2 of 4 slices to run have no source data: 2024-01-15, 2024-01-16 (orders); nothing ran"),
        "{stderr}"
    );

    // Allowed, they run, and their own checks decide: an empty day fails `min_rows = 1`.
    let run = case.json("run", &[&range[..], &["--allow-empty"]].concat(), 1);
    assert_eq!(
        statuses(&run),
        ["committed", "committed", "failed", "failed"]
    );
}

#[test]
fn budgets_refuse_to_launch_and_say_by_how_much() {
    let case = Case::new("orders_clean");
    let estimate = case.json("plan", &FIRST_THREE_DAYS, 0)["estimate"].clone();
    let bytes = estimate["bytes"].as_u64().unwrap();

    let stderr = refused(
        &case,
        &[&FIRST_THREE_DAYS[..], &["--max-slices", "2"]].concat(),
    );
    assert!(
        stderr.contains("would run 3 slices, 1 over --max-slices 2; nothing ran"),
        "{stderr}"
    );

    let under = (bytes - 100).to_string();
    let stderr = refused(
        &case,
        &[&FIRST_THREE_DAYS[..], &["--max-bytes", &under]].concat(),
    );
    assert!(
        stderr.contains("from 3 slices, 100 B over --max-bytes"),
        "{stderr}"
    );

    // Exactly the budget is within it.
    let exact = bytes.to_string();
    let within = [
        &FIRST_THREE_DAYS[..],
        &["--max-bytes", &exact, "--max-slices", "3"],
    ]
    .concat();
    let out = case.ok("run", &within, 0);
    assert!(out.contains("3 committed"), "{out}");
}
