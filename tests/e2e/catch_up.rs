//! Catching up: `--through` a bound or `now` (set by the test through BACKFILL_NOW), from
//! the pipeline's history start, with a lookback that bounds which done slices have
//! their inputs checked, and slices whose data has not landed left for a later catch-up.

use std::path::Path;

use crate::support::*;

/// A daily pipeline over 20 days of orders, whose history starts on 2024-01-01.
fn case() -> Case {
    let case = Case::new("daily_revenue");
    let spec = backfill_engine::fixtures::FixtureSpec {
        days: 20,
        ..backfill_engine::fixtures::FixtureSpec::bundled()
    };
    backfill_engine::fixtures::generate(&case.scratch.path("buckets/shop"), &spec).unwrap();
    case.edit_pipeline(
        "kind = \"daily\"",
        "kind = \"daily\"\nstart = \"2024-01-01\"",
    );
    case
}

/// `backfill <command> … --json` with "now" at `now`, asserting the exit code.
fn at(case: &Case, now: &str, command: &str, rest: &[&str], code: i32) -> serde_json::Value {
    let args = case.args(command, &[rest, &["--json"]].concat());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(&args)
        .env("BACKFILL_NOW", now)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// The slices a run committed, in order.
fn committed(run: &serde_json::Value) -> Vec<String> {
    let outcomes = run["outcomes"].as_array().unwrap().iter();
    let committed = outcomes.filter(|o| o["status"] == "committed");
    committed
        .map(|o| o["slice"].as_str().unwrap().to_string())
        .collect()
}

fn days(first: u32, last: u32) -> Vec<String> {
    (first..=last).map(|d| format!("2024-01-{d:02}")).collect()
}

/// A second file lands in a day's folder: its inputs change.
fn late_file(case: &Case, day: &str) {
    let folder = case.scratch.path(&format!("buckets/shop/orders/dt={day}"));
    std::fs::copy(
        folder.join("part-00000.parquet"),
        folder.join("part-00001.parquet"),
    )
    .unwrap();
}

#[tokio::test]
async fn a_catch_up_with_a_lookback_rechecks_only_its_last_slices_and_one_without_checks_all() {
    let case = case();
    let first = at(
        &case,
        "2024-01-11T00:30:00Z",
        "run",
        &["--through", "now"],
        0,
    );
    assert_eq!(
        committed(&first),
        days(1, 10),
        "through the last complete day"
    );

    late_file(&case, "2024-01-03");
    late_file(&case, "2024-01-09");
    let now = "2024-01-16T00:30:00Z";
    let caught_up = ["--through", "now", "--lookback", "7"];
    let plan = at(&case, now, "plan", &caught_up, 0)["slices"].clone();
    let slice = |day: &str| {
        let slices = plan.as_array().unwrap().iter();
        slices.clone().find(|s| s["slice"] == day).unwrap().clone()
    };
    assert_eq!(plan.as_array().unwrap().len(), 15);
    assert_eq!(slice("2024-01-03")["state"]["state"], "done");
    assert_eq!(slice("2024-01-03")["inputs_checked"], false);
    assert_eq!(slice("2024-01-09")["state"]["state"], "changed");
    assert_eq!(slice("2024-01-08")["inputs_checked"], false);
    assert!(slice("2024-01-10").get("inputs_checked").is_none());

    let run = at(&case, now, "run", &caught_up, 0);
    let mut expected = days(9, 9);
    expected.extend(days(11, 15));
    assert_eq!(committed(&run), expected);
    let run = at(&case, now, "run", &["--through", "now"], 0);
    assert_eq!(
        committed(&run),
        days(3, 3),
        "every done slice's inputs checked"
    );

    let stored = case
        .stored("SELECT dt, sum(orders) AS orders FROM t GROUP BY dt ORDER BY dt")
        .await;
    let expected = case
        .expected("SELECT dt, count(*) AS orders FROM orders WHERE dt <= '2024-01-15' AND status <> 'cancelled' GROUP BY dt ORDER BY dt")
        .await;
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn days_whose_data_has_not_landed_wait_for_a_later_catch_up_which_fills_them_alone() {
    let case = case();
    at(
        &case,
        "2024-01-11T00:30:00Z",
        "run",
        &["--through", "now"],
        0,
    );
    // An outage upstream: three days' data lands only later.
    let orders = case.scratch.path("buckets/shop/orders");
    let held = case.scratch.path("held");
    std::fs::create_dir_all(&held).unwrap();
    for day in days(11, 13) {
        let folder = format!("dt={day}");
        std::fs::rename(orders.join(&folder), held.join(&folder)).unwrap();
    }
    let now = "2024-01-16T09:00:00Z";
    let plan = at(&case, now, "plan", &["--through", "now"], 0)["slices"].clone();
    let awaiting: Vec<&str> = (plan.as_array().unwrap().iter())
        .filter(|s| s["awaiting_data"] == true)
        .map(|s| s["slice"].as_str().unwrap())
        .collect();
    assert_eq!(awaiting, days(11, 13));
    let printed = case.ok("plan", &["--through", "2024-01-15"], 0);
    assert!(
        printed.contains("no source data yet, left for a later catch-up (or --allow-empty): 2024-01-11..2024-01-13 (3 slices)"),
        "{printed}"
    );

    let run = at(&case, now, "run", &["--through", "now"], 0);
    assert_eq!(committed(&run), days(14, 15));
    let waiting = (run["outcomes"].as_array().unwrap().iter())
        .filter(|o| o["status"] == "skipped" && o["state"] == "no source data yet")
        .count();
    assert_eq!(waiting, 3, "{run}");

    for day in days(11, 13) {
        let folder = format!("dt={day}");
        std::fs::rename(held.join(&folder), orders.join(&folder)).unwrap();
    }
    let run = at(&case, now, "run", &["--through", "now"], 0);
    assert_eq!(committed(&run), days(11, 13), "the gap alone, nothing else");
    let done = case.committed_slices();
    assert_eq!(done, days(1, 15), "each day committed once");
}

#[tokio::test]
async fn a_delay_holds_back_the_days_whose_data_may_still_land() {
    let case = case();
    case.edit_pipeline(
        "start = \"2024-01-01\"",
        "start = \"2024-01-05\"\ndelay = \"2h\"",
    );
    let last = |now: &str| {
        let plan = at(&case, now, "plan", &["--through", "now"], 0)["slices"].clone();
        let slices = plan.as_array().unwrap();
        let first = slices.first().unwrap()["slice"]
            .as_str()
            .unwrap()
            .to_string();
        (
            first,
            slices.last().unwrap()["slice"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    assert_eq!(
        last("2024-01-11T01:59:00Z"),
        ("2024-01-05".into(), "2024-01-09".into())
    );
    assert_eq!(
        last("2024-01-11T02:00:00Z"),
        ("2024-01-05".into(), "2024-01-10".into())
    );
    let from = at(
        &case,
        "2024-01-11T02:00:00Z",
        "plan",
        &["--through", "now", "--start", "2024-01-08"],
        0,
    );
    assert_eq!(from["slices"].as_array().unwrap().len(), 3);
}

/// `backfill <args>` with "now" at 2024-01-16: the exit code and what it printed.
fn refused(case: &Case, rest: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(case.args("run", rest))
        .env("BACKFILL_NOW", "2024-01-16T00:00:00Z")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    (output.status.code(), printed)
}

#[tokio::test]
async fn bad_catch_ups_are_refused_with_exit_2_and_nothing_written() {
    let case = case();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--through", "2023-12-01"],
            "--through: --through 2023-12-01 is before the first slice 2024-01-01: nothing to catch up on",
        ),
        (&["--through", "yesterday"], "`yesterday` is not a day"),
        (&["--through", "now", "--lookback", "-1"], "'-1'"),
        (&["--through", "now", "--lookback", "many"], "--lookback"),
        (&["--lookback", "3", "--start", "2024-01-01", "--end", "2024-01-02"], "--through"),
        (&["--start", "2024-01-01"], "--start: give --end too, or --through to catch up from it"),
    ];
    for (rest, says) in cases {
        let (code, printed) = refused(&case, rest);
        assert_eq!(code, Some(2), "{rest:?}: {printed}");
        assert!(printed.contains(says), "{rest:?}: {printed}");
    }
    case.edit_pipeline("start = \"2024-01-01\"", "");
    let (code, printed) = refused(&case, &["--through", "now"]);
    assert_eq!(code, Some(2), "{printed}");
    assert!(
        printed.contains("catching up needs a first slice: give --start, or `start` in the pipeline file's [slices]"),
        "{printed}"
    );
    case.edit_pipeline("kind = \"daily\"", "kind = \"daily\"\ndelay = \"soon\"");
    let (code, printed) = refused(&case, &["--through", "now"]);
    assert_eq!(code, Some(2), "{printed}");
    assert!(printed.contains("daily_revenue.toml:"), "{printed}");
    assert!(
        printed.contains("slices.delay: `soon` is not a duration"),
        "{printed}"
    );

    let list = Case::new("tenant_signups");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(list.args("run", &["--through", "now"]))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("have no days or hours to catch up on"),
        "{printed}"
    );
    assert!(!Path::new(&case.table).exists() && !list.table.exists());
}

#[tokio::test]
async fn a_schedule_ticks_commits_what_lands_between_ticks_and_stops_on_sigterm() {
    let case = case();
    // The last day's data lands only after the first tick.
    let (orders, held) = (
        case.scratch.path("buckets/shop/orders/dt=2024-01-15"),
        case.scratch.path("held-2024-01-15"),
    );
    std::fs::rename(&orders, &held).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    command
        .args(case.args("schedule", &["--every", "1s", "--lookback", "3"]))
        .env("BACKFILL_NOW", "2024-01-16T00:30:00Z");
    let mut schedule = Watched::spawn(command);
    let limit = std::time::Duration::from_secs(120);
    let first = schedule.line_where(limit, |l| l.starts_with("tick "));
    assert!(
        first.contains("15 slices, 14 committed, 1 skipped, 0 failed"),
        "{first}"
    );
    schedule.line_where(limit, |l| l.starts_with("next tick at "));
    // `status`, its JSON and the run page say what the schedule is doing.
    let status = case.ok("status", &[], 0);
    let kept = format!(
        "kept current by backfill schedule every 1s (pid {} on ",
        schedule.pid()
    );
    assert!(status.contains(&kept), "{status}");
    // The last tick's counts: the first tick's, or, on a machine slow enough that another
    // tick ran since, that one's (nothing new).
    assert!(
        status.contains(": 14 committed, 1 skipped, 0 failed")
            || status.contains(": 0 committed, 15 skipped, 0 failed"),
        "{status}"
    );
    let beat = case.json("status", &[], 0)["schedule"].clone();
    assert_eq!(beat["cadence"], "every 1s", "{beat}");
    assert!(beat["last_run"].as_str().unwrap().len() > 10, "{beat}");
    let (_server, address) = crate::serve::serve(&case, None);
    let page = crate::serve::http(&address, "GET", "/status", &[]).body;
    assert!(page.contains(&kept), "{page}");
    let runs = crate::serve::http(&address, "GET", "/", &[]).body;
    assert!(
        runs.contains("through backfill schedule (every 1s)"),
        "the schedule's runs, marked: {runs}"
    );
    let history = case.json("history", &[], 0);
    let started_by = history[0]["started_by"].as_str().unwrap();
    assert!(
        started_by.ends_with(" through backfill schedule (every 1s)"),
        "{history}"
    );

    std::fs::rename(&held, &orders).unwrap();
    let landed = schedule.line_where(limit, |l| {
        l.starts_with("tick ") && !l.contains(" 0 committed")
    });
    assert!(
        landed.contains("15 slices, 1 committed, 14 skipped, 0 failed"),
        "{landed}"
    );
    // An idle tick: nothing left to do.
    let idle = schedule.line_where(limit, |l| l.starts_with("tick "));
    assert!(
        idle.contains("15 slices, 0 committed, 15 skipped, 0 failed"),
        "{idle}"
    );

    schedule.signal("TERM");
    let (code, printed) = schedule.end_within(std::time::Duration::from_secs(60));
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("schedule stopped"), "{printed}");
    assert_eq!(case.committed_slices(), days(1, 15), "each day once");
    let status = case.ok("status", &[], 0);
    assert!(
        status.contains("backfill schedule every 1s (pid "),
        "{status}"
    );
    assert!(status.contains(" stopped at "), "{status}");
}

#[tokio::test]
async fn a_schedule_with_a_bad_cadence_or_pipeline_is_refused_at_once() {
    let case = case();
    for (rest, says) in [
        (
            &["--cron", "every hour"][..],
            "--cron: `every hour` is not a cron expression",
        ),
        (&["--every", "soon"][..], "--every"),
        (
            &["--every", "1s", "--start", "2030-01-01"][..],
            "nothing to catch up on",
        ),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
        command.args(case.args("schedule", rest));
        let limit = std::time::Duration::from_secs(60);
        let (code, printed) = Watched::spawn(command).end_within(limit);
        assert_eq!(code, Some(2), "{rest:?}: {printed}");
        assert!(printed.contains(says), "{rest:?}: {printed}");
    }
    assert!(!case.table.exists());
}
