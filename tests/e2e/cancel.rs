//! `backfill cancel`: a run started by one process is stopped by another, through the
//! stop request it leaves next to the run's history, as a first Ctrl-C stops it; the same
//! command then finishes the job. On a local folder and on the S3 test server.

use std::time::Duration;

use backfill_engine::slice::{describe_spans, spans};

use crate::support::{backfill, long_run_bucket, start_long_run, Case, LONG_RUN, LONG_RUN_DAYS};

#[tokio::test]
async fn cancel_from_another_process_stops_a_run_like_ctrl_c_and_the_same_command_finishes() {
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    let range = LONG_RUN;
    let (running, id) = start_long_run(&case);

    let cancel = backfill(&case.args("cancel", &[&id]));
    let said = String::from_utf8_lossy(&cancel.stdout);
    assert_eq!(cancel.status.code(), Some(0), "{said}");
    assert!(said.contains("asked to stop"), "{said}");

    // As after a first Ctrl-C: the slices in flight commit, no other starts, and the run
    // says exactly what is in the table.
    let (code, printed) = running.end_within(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{printed}");
    assert!(
        printed.contains("stopping: ") && printed.contains("(backfill cancel)"),
        "{printed}"
    );
    assert!(
        printed.contains("stopped. committed: 2024-01-01"),
        "{printed}"
    );
    assert!(
        printed.contains("not started: ") && printed.contains("2024-03-30"),
        "{printed}"
    );
    let committed = case.committed_slices();
    assert!(
        (1..LONG_RUN_DAYS as usize).contains(&committed.len()),
        "{} slices committed before the stop",
        committed.len()
    );
    let told = printed
        .lines()
        .find_map(|l| l.strip_prefix("stopped. committed: "))
        .unwrap();
    let first = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let days: Vec<String> = (first.iter_days().take(LONG_RUN_DAYS as usize))
        .map(|day| day.to_string())
        .collect();
    let in_spans = spans(days.iter().map(String::as_str), |day| {
        committed.iter().any(|c| c == day)
    });
    assert_eq!(told, describe_spans(&in_spans), "the summary is exact");

    // The history shows who asked, and that the run ended; asking again says so.
    let history = case.json("history", &[], 0);
    let record = history.as_array().unwrap().last().unwrap();
    assert_eq!(record["run_id"], id.as_str());
    assert!(
        record["stop"]["by"].as_str().unwrap().contains('@'),
        "{record}"
    );
    assert!(
        record["end"].is_object() && record["heartbeat"].is_object(),
        "{record}"
    );
    let again = case.ok("cancel", &[&id], 0);
    assert!(again.contains("had ended"), "{again}");

    // The same command finishes the job: the table an uninterrupted run gives.
    let finished = case.json("run", &range, 0);
    assert_eq!(
        finished["outcomes"].as_array().unwrap().len(),
        LONG_RUN_DAYS as usize
    );
    let stored = case.stored("SELECT order_id, amount, dt FROM t ORDER BY order_id");
    let expected = case.expected(
        "SELECT order_id, amount, dt FROM orders WHERE dt <= '2024-03-30' ORDER BY order_id",
    );
    assert_eq!(stored.await, expected.await);
    let days: Vec<String> = committed_days();
    assert_eq!(case.committed_slices(), days, "each slice committed once");
}

/// Every day of the bucket, as slice keys.
fn committed_days() -> Vec<String> {
    let first = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    (0..LONG_RUN_DAYS)
        .map(|d| (first + chrono::Days::new(d.into())).to_string())
        .collect()
}

#[test]
fn cancel_names_the_destination_when_it_has_no_such_run() {
    let case = Case::new("orders_clean");
    let out = backfill(&case.args("cancel", &["20240101T000000Z-abcdef"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no run `20240101T000000Z-abcdef` in the history of file://")
            && stderr.contains("backfill history"),
        "{stderr}"
    );
}
