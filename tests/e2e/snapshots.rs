//! What people see: the CLI's output, snapshotted with `insta`. Temporary paths, run ids,
//! times and durations are redacted; everything else must stay as reviewed.

use crate::support::*;

/// Settings that redact what changes from run to run.
fn settings(scratch: &Scratch) -> insta::Settings {
    settings_in(scratch.dir.path())
}

/// Settings that redact what changes from run to run, `dir` (a test's temporary folder)
/// among them.
pub(crate) fn settings_in(dir: &std::path::Path) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("snapshots");
    settings.set_prepend_module_to_snapshot(false);
    let dir = dir.display().to_string();
    settings.add_filter(&dir.replace('.', r"\."), "[SCRATCH]");
    settings.add_filter(r"\d{8}T\d{6}Z-[0-9a-f]{6}", "[RUN]");
    settings.add_filter(r"plan [0-9a-f]{16}", "plan [HASH]");
    settings.add_filter(r"--expect-plan [0-9a-f]{16}", "--expect-plan [HASH]");
    settings.add_filter(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z", "[TIME]");
    settings.add_filter(r" +\d+(\.\d+)?m?s\b", " [DURATION]");
    settings.add_filter(
        r"durations in slice order: .*",
        "durations in slice order: [TREND]",
    );
    settings.add_filter(r"median duration [^,]+", "median duration [DURATION]");
    settings.add_filter(r"at [\d.]+ [KMG]?i?B/s", "at [RATE]");
    settings
}

#[test]
fn help_output() {
    let scratch = Scratch::new();
    let help = backfill_ok(&["--help"], 0);
    let run_help = backfill_ok(&["run", "--help"], 0);
    settings(&scratch).bind(|| {
        insta::assert_snapshot!("help", help);
        insta::assert_snapshot!("run_help", run_help);
    });
}

#[test]
fn validate_plan_run_status_output() {
    let scratch = Scratch::new();
    let pipeline = scratch.path("pipelines/daily_revenue.toml");
    let table = scratch.path("warehouse/daily_revenue");
    let (p, t) = (pipeline.to_str().unwrap(), table.to_str().unwrap());
    let validate = backfill_ok(&["validate", p, "--destination", t], 0);
    let run = backfill_ok(
        &[
            "run",
            p,
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--concurrency",
            "1",
            "--destination",
            t,
        ],
        0,
    );
    let plan = backfill_ok(
        &[
            "plan",
            p,
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-03",
            "--concurrency",
            "2",
            "--destination",
            t,
        ],
        0,
    );
    let status = backfill_ok(&["status", p, "--destination", t], 0);
    settings(&scratch).bind(|| {
        insta::assert_snapshot!("validate", validate);
        insta::assert_snapshot!("run", run);
        insta::assert_snapshot!("plan", plan);
        insta::assert_snapshot!("status", status);
    });
}
