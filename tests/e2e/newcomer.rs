//! What a newcomer trips on (issue 22): outputs that must not mislead and hints that must
//! point the right way, each pinned to its exact text where it is meant for people.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::projects::ProjectCase;
use crate::snapshots::settings_in;
use crate::support::*;

/// Runs `backfill` expecting exit code `code`; returns stdout and stderr together.
fn said(args: &[&str], code: i32) -> String {
    let output = backfill(args);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(code), "{args:?}:\n{printed}");
    printed
}

#[test]
fn a_failed_check_says_a_rerun_fails_the_same_way_and_status_counts_it_remaining() {
    let case = Case::new("orders_clean");
    // A stricter null-rate ceiling: 2024-01-09 is a noisy day.
    case.edit_pipeline("rate = 0.05", "rate = 0.01");
    let range = ["--start", "2024-01-08", "--end", "2024-01-10"];
    let run = case.ok("run", &[&range[..], &["--concurrency", "1"]].concat(), 1);
    // Without a selection, status spans the days the table has seen: the failed one too.
    let status = case.ok("status", &[], 0);
    settings_in(case.scratch.dir.path()).bind(|| {
        insta::assert_snapshot!("failed_check_run", run);
        insta::assert_snapshot!("failed_check_status", status);
    });
}

#[test]
fn a_rebuild_waiting_for_a_failed_check_says_how_to_finish_and_finishes_over_a_narrower_range() {
    let case = Case::new("orders_rebuild");
    let range = ["--start", "2024-01-08", "--end", "2024-01-10"];
    let run = case.ok("run", &[&range[..], &["--concurrency", "1"]].concat(), 1);
    settings_in(case.scratch.dir.path()).bind(|| {
        insta::assert_snapshot!("rebuild_waiting_run", run);
    });
    // What the README says finishes the bundled example: a range without the noisy day.
    let narrower = case.json("run", &["--start", "2024-01-01", "--end", "2024-01-08"], 0);
    assert_eq!(narrower["rebuild"]["swap"], "swapped", "{narrower:#}");
    let shown = case.json("show", &["latest"], 0);
    let reused: Vec<&str> = (shown["attempts"].as_array().unwrap().iter())
        .filter(|a| a["reused"] == true)
        .map(|a| a["slice"].as_str().unwrap())
        .collect();
    assert_eq!(reused, ["2024-01-08"], "the staged day is reused");
}

#[test]
fn validate_and_plan_create_nothing_where_the_table_would_be() {
    let case = Case::new("orders_clean");
    case.ok("validate", &[], 0);
    case.ok("plan", &["--start", "2024-01-01", "--end", "2024-01-02"], 0);
    case.ok("status", &[], 0);
    assert!(!case.table.exists(), "{} was created", case.table.display());
    case.ok("run", &["--keys", "2024-01-01"], 0);
    assert!(case.table.join("_delta_log").exists());
}

#[test]
fn plan_piped_into_a_reader_that_stops_early_ends_quietly() {
    let case = Case::new("hourly_events");
    let mut child = Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(case.args("plan", &["--start", "2024-01-01", "--end", "2024-01-02"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader goes away after one line, as `| head -1` does.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(first.starts_with("slice"), "{first}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "{stderr}");
}

#[test]
fn an_hourly_pipeline_takes_a_range_of_days_alone_as_in_a_project() {
    let case = Case::new("hourly_events");
    let plan = case.plan(&["--start", "2024-01-01", "--end", "2024-01-02"], 0);
    let slices = plan.as_array().unwrap();
    assert_eq!(slices.len(), 48);
    assert_eq!(slices[0]["slice"], "2024-01-01T00");
    assert_eq!(slices[47]["slice"], "2024-01-02T23");
}

#[test]
fn a_pipeline_that_reads_another_points_at_the_project_that_lists_it() {
    let project = ProjectCase::new();
    let alone = project.path("fixtures/pipelines/events_daily.toml");
    let alone = alone.to_str().unwrap();
    let refused = said(
        &["run", alone, "--start", "2024-01-01", "--end", "2024-01-01"],
        2,
    );
    let unknown = said(
        &[
            "plan",
            &project.project(),
            "--pipeline",
            "nope",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-01",
        ],
        2,
    );
    // The hint works as given, and validate on a project file validates every pipeline.
    let hinted = said(
        &["validate", &project.project(), "--pipeline", "events_daily"],
        0,
    );
    let all = said(&["validate", &project.project()], 0);
    settings_in(project.dir()).bind(|| {
        insta::assert_snapshot!("needs_project", refused);
        insta::assert_snapshot!("unknown_member", unknown);
        insta::assert_snapshot!("validate_member", hinted);
        insta::assert_snapshot!("validate_project", all);
    });
}

#[test]
fn a_refused_promotion_groups_the_slices_and_every_printed_run_id_opens() {
    let project = ProjectCase::new();
    let days = ["--start", "2024-01-01", "--end", "2024-01-02"];
    project.ok(
        "run",
        &[
            &days[..],
            &["--env", "staging", "--pipelines", "orders_clean"],
        ]
        .concat(),
        0,
    );
    let wider = ["--start", "2024-01-01", "--end", "2024-01-10"];
    let refused = said(
        &[
            &["promote", &project.project()],
            &wider[..],
            &["--from", "staging"],
        ]
        .concat(),
        2,
    );
    settings_in(project.dir()).bind(|| {
        insta::assert_snapshot!("promotion_refused", refused);
    });

    let promoted = project.ok(
        "promote",
        &[
            &days[..],
            &["--from", "staging", "--pipeline", "orders_clean"],
        ]
        .concat(),
        0,
    );
    assert!(
        promoted.contains("promoted 2000 rows in 1 file ("),
        "{promoted}"
    );
    let last = promoted.lines().last().unwrap();
    let promotion = run_id_of(last.trim_start_matches("promotion "));
    let status = project.json("status", &["--pipeline", "orders_clean"], 0);
    let runs: Vec<&str> = status["orders_clean"]["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(runs, [promotion.as_str(), promotion.as_str()], "{status:#}");
    let show = project.ok("show", &["--pipeline", "orders_clean", &promotion], 0);
    assert!(show.contains("promoted from staging"), "{show}");
    let report = project.path("report.html");
    project.ok(
        "report",
        &[
            "--pipeline",
            "orders_clean",
            &promotion,
            "-o",
            report.to_str().unwrap(),
        ],
        0,
    );
    let plan = project.ok(
        "plan",
        &[&days[..], &["--pipelines", "orders_clean"]].concat(),
        0,
    );
    assert!(
        plan.contains(&format!(
            "run {promotion} (promoted from staging, where run "
        )),
        "{plan}"
    );

    // A downstream slice waiting for its upstream says what it is now, then its detail.
    project.ok("run", &days, 0);
    let raw = project.path("fixtures/buckets/shop/orders/dt=2024-01-02/part-00000.parquet");
    let touched = std::fs::File::options().write(true).open(&raw).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    touched.set_modified(later).unwrap();
    let downstream = ["--pipelines", "orders_clean", "--downstream"];
    let plan = project.ok("plan", &[&days[..], &downstream].concat(), 0);
    let pending = (plan.lines())
        .find(|l| l.starts_with("2024-01-02") && l.contains("pending"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        pending.contains("after orders_clean 2024-01-02; now done: committed "),
        "{pending}"
    );
}

#[test]
fn a_sql_error_points_at_the_file_line_and_column_as_written() {
    let case = Case::new("orders_clean");
    // In a SQL file: a syntax error on its last line.
    let sql = case.scratch.path("pipelines/daily_revenue.sql");
    let text = std::fs::read_to_string(&sql).unwrap();
    std::fs::write(&sql, text.replace("GROUP BY", "GROUP BYY")).unwrap();
    let daily = case.scratch.path("pipelines/daily_revenue.toml");
    let in_file = said(&["validate", daily.to_str().unwrap()], 2);
    // Inline, after a placeholder on the same line: the column is the one written, not
    // the one in the SQL the slice's values were put into.
    case.edit_pipeline(
        "WHERE dt = '{{ slice }}'",
        "WHERE dt = {{ slice }} AND amountt > 0",
    );
    let inline = said(&case.args("validate", &[]), 2);
    // In an assertion, on the line of the pipeline file that holds it.
    let checked = Case::new("orders_clean");
    checked.edit_pipeline("WHERE amount < 0", "WHERE amountt < 0");
    let assertion = said(&checked.args("validate", &[]), 2);
    settings_in(case.scratch.dir.path()).bind(|| {
        insta::assert_snapshot!("sql_error_in_file", in_file);
        insta::assert_snapshot!("sql_error_inline", inline);
    });
    settings_in(checked.scratch.dir.path()).bind(|| {
        insta::assert_snapshot!("sql_error_in_assertion", assertion);
    });
}

#[test]
fn every_json_flag_says_what_it_prints() {
    let commands = [
        "plan",
        "run",
        "status",
        "history",
        "show",
        "cancel",
        "clean",
        "diff",
        "promote",
        "rebuild-preview",
    ];
    for command in commands {
        let help = backfill_ok(&[command, "--help"], 0);
        let line = help.lines().find(|l| l.trim_start().starts_with("--json"));
        let said = line.map(|l| l.trim_start().trim_start_matches("--json").trim());
        assert!(
            said.is_some_and(|s| s.starts_with("Print")),
            "{command} --help: {line:?}"
        );
    }
}

#[test]
fn the_report_of_a_rebuild_that_did_not_swap_says_so_and_what_to_do() {
    let case = Case::new("orders_rebuild");
    case.ok(
        "run",
        &[
            "--start",
            "2024-01-08",
            "--end",
            "2024-01-10",
            "--concurrency",
            "1",
        ],
        1,
    );
    let shown = case.ok("show", &["latest"], 0);
    let (html, _) = case.report_of_last_run();
    // What a person reads first: the summary, the rebuild's outcome and the slices.
    let summary = &html[html.find("<h1>").unwrap()..html.find("<h2>Duration").unwrap()];
    // The page escapes `/` in URLs, which reads the same in a browser.
    let summary = summary.replace("&#x2f;", "/");
    let mut settings = settings_in(case.scratch.dir.path());
    settings.add_filter(r"\[TIME\] by [^:]+:", "[TIME] by [WHO]:");
    settings.add_filter(r"\d+ rows/s, [\d.]+ [KMG]?i?B/s", "[PACE]");
    settings.add_filter(r"\(\d+(\.\d+)?m?s\)", "([DURATION])");
    // The duration column is as wide as its widest value.
    settings.add_filter(r"attempt +took", "attempt  took");
    settings.bind(|| {
        insta::assert_snapshot!("rebuild_waiting_show", shown);
        insta::assert_snapshot!("rebuild_waiting_report", summary);
    });
}
