//! `strategy = "rebuild"`: every slice staged and checked, then one commit swaps the whole
//! table. Readers see the old table or the new one, never a mix; an interrupted rebuild
//! resumes from what it staged and still swaps exactly once.

use std::sync::Arc;

use backfill_engine::RebuildOutcome;
use backfill_engine::{pipeline, Backfill, OpenOptions, RunOptions, Selection};
use serde_json::Value;

use crate::support::*;

const ALL: &str = "SELECT * FROM t ORDER BY order_id";

/// What `orders_rebuild` should leave for days `start..=end`, computed from the sources.
async fn expected_rebuild(case: &Case, start: &str, end: &str) -> Vec<String> {
    case.expected(&format!(
        "SELECT order_id, customer_id, amount, CAST(round(amount * 100) AS BIGINT) AS amount_cents,
                upper(status) AS status, ordered_at, dt
         FROM orders WHERE dt BETWEEN '{start}' AND '{end}' ORDER BY order_id"
    ))
    .await
}

/// Fills the case's table with another pipeline first: `orders_clean` for `start..=end`,
/// one overwrite commit per day.
fn write_with_orders_clean(case: &Case, start: &str, end: &str) {
    let clean = case.scratch.path("pipelines/orders_clean.toml");
    let args = [
        "run",
        clean.to_str().unwrap(),
        "--start",
        start,
        "--end",
        end,
        "--destination",
        case.table.to_str().unwrap(),
    ];
    backfill_ok(&args, 0);
}

/// The `status` of each attempt of a run, with `reused` for staged ones.
fn attempt_statuses(run: &Value) -> Vec<String> {
    let attempts = run["attempts"].as_array().unwrap().iter();
    attempts
        .map(|a| match a["reused"].as_bool() {
            Some(true) => format!("{} (reused)", a["status"].as_str().unwrap()),
            _ => a["status"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Parquet files in the table's folder that its current version does not reference.
async fn unreferenced_files(case: &Case) -> Vec<String> {
    let table = open(&case.table).await;
    let active: Vec<String> = table
        .get_file_uris()
        .unwrap()
        .map(|uri| uri.rsplit('/').next().unwrap().to_string())
        .collect();
    let folder = case.table.strip_prefix(case.scratch.path("")).unwrap();
    let files = case.scratch.files_under(folder.to_str().unwrap());
    files
        .into_iter()
        .filter(|f| f.ends_with(".parquet") && !f.starts_with("_"))
        .filter(|f| !active.iter().any(|a| f.ends_with(a.as_str())))
        .collect()
}

#[tokio::test]
async fn rebuild_replaces_the_whole_table_in_one_commit() {
    let case = Case::new("orders_rebuild");
    write_with_orders_clean(&case, "2024-01-01", "2024-01-05");
    let old_version = case.version().await;
    let old = case.stored(ALL).await;
    let range = ["--start", "2024-01-03", "--end", "2024-01-07"];

    let plan = case.json("plan", &range, 0);
    assert_eq!(
        plan["rebuild"],
        serde_json::json!({
            "version": old_version,
            "files": 5,
            "bytes": plan["rebuild"]["bytes"],
            "schema_changes": true,
            // orders_clean made every commit so far.
            "other_writers": {
                "commits": old_version + 1,
                "of_latest": old_version + 1,
                "latest_at": plan["rebuild"]["other_writers"]["latest_at"],
                "writers": ["pipeline orders_clean"],
            },
        })
    );

    let run = case.json("run", &range, 0);
    assert_eq!(run["rebuild"]["swap"], "swapped", "{run:#}");
    assert_eq!(run["rebuild"]["removed_files"], 5);
    assert_eq!(run["rebuild"]["version"], old_version + 1);
    assert_eq!(
        case.version().await,
        old_version + 1,
        "one commit, the swap"
    );
    assert_eq!(
        case.stored(ALL).await,
        expected_rebuild(&case, "2024-01-03", "2024-01-07").await,
        "the table is exactly the rebuild: new column, days 1 and 2 gone"
    );

    // The version before the swap is still the old table, for readers that pinned it.
    let mut pinned = open(&case.table).await;
    pinned.load_version(old_version).await.unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    pinned.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", pinned.table_provider().await.unwrap())
        .unwrap();
    assert_eq!(rows(&ctx, ALL).await, old);

    // Plain Delta still, and the staging manifests are gone.
    let table = open(&case.table).await;
    let protocol = table.snapshot().unwrap().protocol().clone();
    assert_eq!(
        (protocol.min_reader_version(), protocol.min_writer_version()),
        (1, 2)
    );
    let backfill_folder = case
        .scratch
        .files_under("warehouse/orders_rebuild/_backfill");
    assert!(
        backfill_folder
            .iter()
            .all(|f| f.starts_with("runs/") || f.starts_with("summaries/")),
        "only the run history stays: {backfill_folder:?}"
    );

    // Done is done: the same command swaps nothing.
    let rerun = case.json("run", &range, 0);
    assert_eq!(rerun["rebuild"]["swap"], "unchanged", "{rerun:#}");
    assert_eq!(case.version().await, old_version + 1);

    // --force recomputes every slice and swaps again, to identical contents.
    let forced = case.json("run", &[&range[..], &["--force"]].concat(), 0);
    assert_eq!(forced["rebuild"]["swap"], "swapped", "{forced:#}");
    assert_eq!(forced["rebuild"]["kept_slices"], 0);
    assert_eq!(case.version().await, old_version + 2);
    assert_eq!(
        case.stored(ALL).await,
        expected_rebuild(&case, "2024-01-03", "2024-01-07").await
    );

    // A narrower rebuild keeps the done days' files and drops the rest, computing nothing.
    let narrower = ["--start", "2024-01-04", "--end", "2024-01-05"];
    let run = case.json("run", &narrower, 0);
    assert_eq!(run["rebuild"]["swap"], "swapped", "{run:#}");
    assert_eq!(run["rebuild"]["kept_slices"], 2);
    assert_eq!(run["rebuild"]["added_files"], 0);
    assert_eq!(
        case.stored(ALL).await,
        expected_rebuild(&case, "2024-01-04", "2024-01-05").await
    );

    // Changed slices that a run does not choose are not kept: nothing is swapped.
    let version = case.version().await;
    case.edit_pipeline("upper(status) AS status", "lower(status) AS status");
    let missing_only = [&narrower[..], &["--reprocess", "missing"]].concat();
    let run = case.json("run", &missing_only, 1);
    assert_eq!(run["rebuild"]["swap"], "waiting", "{run:#}");
    assert_eq!(case.version().await, version);
}

#[tokio::test]
async fn a_failed_slice_leaves_the_old_table_and_the_rerun_reuses_what_passed() {
    let case = Case::new("orders_rebuild");
    write_with_orders_clean(&case, "2024-01-07", "2024-01-10");
    let (version, before) = (case.version().await, case.stored(ALL).await);
    let range = ["--start", "2024-01-07", "--end", "2024-01-10"];

    // 2024-01-09 has 2.95% null amounts; the rebuild allows 2%.
    let run = case.json("run", &range, 1);
    assert_eq!(statuses(&run), ["staged", "staged", "failed", "staged"]);
    assert_eq!(run["rebuild"]["swap"], "waiting");
    assert_eq!(run["rebuild"]["waiting"], serde_json::json!(["2024-01-09"]));
    assert_eq!(case.version().await, version, "nothing was committed");
    assert_eq!(
        case.stored(ALL).await,
        before,
        "readers still see the old table"
    );
    assert_eq!(
        unreferenced_files(&case).await.len(),
        3,
        "the staged files of the three slices that passed, none of the failed one"
    );
    let manifests = "warehouse/orders_rebuild/_backfill/rebuild/orders_rebuild";
    assert_eq!(
        case.scratch.files_under(manifests),
        ["2024-01-07.json", "2024-01-08.json", "2024-01-10.json"]
    );
    assert_eq!(
        plan_states(&case.plan(&range, 0)),
        ["staged", "staged", "failed", "staged"]
    );

    // Before any swap, the staged table can be read and compared with the current one.
    let staged_days = "dt IN ('2024-01-07', '2024-01-08', '2024-01-10')";
    let preview = case.ok(
        "rebuild-preview",
        &[
            &range[..],
            &["--sql", "SELECT * FROM staged ORDER BY order_id"],
        ]
        .concat(),
        0,
    );
    let expected = case
        .expected(&format!(
            "SELECT order_id, customer_id, amount, CAST(round(amount * 100) AS BIGINT) AS amount_cents,
                    upper(status) AS status, ordered_at, dt
             FROM orders WHERE {staged_days} ORDER BY order_id"
        ))
        .await;
    assert_eq!(preview.lines().collect::<Vec<_>>(), expected);
    let current = case.ok(
        "rebuild-preview",
        &[&range[..], &["--sql", "SELECT count(*) AS n FROM current"]].concat(),
        0,
    );
    assert!(current.contains("| 8000 |"), "{current}");
    let listed = case.json("rebuild-preview", &range, 0);
    assert_eq!(
        listed[2],
        serde_json::json!({"slice": "2024-01-09", "state": "failed", "rows": null})
    );

    // Fix the data, then the same command computes only the fixed day and swaps.
    let day = case.scratch.path("buckets/shop/orders/dt=2024-01-09");
    rewrite_parquet(&day, "SELECT * FROM day WHERE amount IS NOT NULL").await;
    let run = case.json("run", &range, 0);
    assert_eq!(run["rebuild"]["swap"], "swapped", "{run:#}");
    assert_eq!(case.version().await, version + 1);
    let run_id = run["run_id"].as_str().unwrap();
    assert_eq!(
        attempt_statuses(&case.json("show", &[run_id], 0)),
        [
            "staged (reused)",
            "staged (reused)",
            "staged",
            "staged (reused)"
        ]
    );
    assert_eq!(
        case.stored(ALL).await,
        expected_rebuild(&case, "2024-01-07", "2024-01-10").await
    );
    assert_eq!(case.scratch.files_under(manifests), Vec::<String>::new());
}

#[tokio::test]
async fn the_swap_is_refused_when_another_writer_committed_after_the_rebuild_read_the_table() {
    let case = Case::new("orders_rebuild");
    write_with_orders_clean(&case, "2024-01-01", "2024-01-02");
    let mut pipeline = pipeline::load(&case.pipeline).unwrap();
    pipeline.destination.url = url::Url::from_directory_path(&case.table).unwrap();
    let rebuild = Arc::new(
        Backfill::open(pipeline, OpenOptions::default())
            .await
            .unwrap(),
    );

    // Another writer commits a day while the rebuild is under way.
    write_with_orders_clean(&case, "2024-01-03", "2024-01-03");
    let version = case.version().await;
    let written_by_other = case.stored(ALL).await;

    let selection = Selection::range("2024-01-01", "2024-01-03");
    let silent = Arc::new(backfill_engine::run::Silent);
    // A run that takes the pipeline's lease reads the log again first; without it, the
    // run decides from the log as it was opened, before the other writer committed.
    let options = RunOptions {
        lease: backfill_engine::run::LeaseWait::Ignore,
        ..RunOptions::default()
    };
    let summary = rebuild.run(&selection, &options, silent).await.unwrap();
    match &summary.rebuild {
        Some(RebuildOutcome::Refused { error }) => {
            assert!(
                error.contains("another writer committed")
                    && error.contains(": 1 commit since, by pipeline orders_clean"),
                "{error}"
            )
        }
        other => panic!("the swap must be refused, got {other:?}"),
    }
    assert!(summary.incomplete());
    assert_eq!(case.version().await, version);
    assert_eq!(
        case.stored(ALL).await,
        written_by_other,
        "the other writer's commit is intact"
    );

    // Running again rebuilds on top of the new version, reusing every staged slice.
    let run = case.json("run", &["--start", "2024-01-01", "--end", "2024-01-03"], 0);
    assert_eq!(run["rebuild"]["swap"], "swapped", "{run:#}");
    assert_eq!(run["rebuild"]["removed_files"], 3);
    let run_id = run["run_id"].as_str().unwrap();
    assert_eq!(
        attempt_statuses(&case.json("show", &[run_id], 0)),
        ["staged (reused)"; 3]
    );
    assert_eq!(
        case.stored(ALL).await,
        expected_rebuild(&case, "2024-01-01", "2024-01-03").await
    );
}

#[tokio::test]
async fn ctrl_c_stops_a_rebuild_before_its_swap_and_the_rerun_finishes_it() {
    let case = Case::new("orders_rebuild");
    let range = ["--start", "2024-01-01", "--end", "2024-01-08"];
    let args = case.args("run", &[&range[..], &["--concurrency", "1"]].concat());
    // Interrupt once the first slice is staged.
    let (code, output) = interrupt_when(&args, |line| line.contains(" staged "));
    assert_eq!(code, Some(130), "{output}");
    assert!(
        output.contains("staged for the rebuild's swap: 2024-01-01"),
        "{output}"
    );
    assert!(output.contains("rebuild: not swapped"), "{output}");
    assert!(
        !case.table.join("_delta_log").exists(),
        "nothing was committed"
    );

    let states = plan_states(&case.plan(&range, 0));
    let staged = states.iter().filter(|s| *s == "staged").count();
    assert!(
        (1..8).contains(&staged),
        "{staged} slices staged before the stop"
    );

    let run = case.json("run", &range, 0);
    assert_eq!(run["rebuild"]["swap"], "swapped", "{run:#}");
    let run_id = run["run_id"].as_str().unwrap();
    let attempts = attempt_statuses(&case.json("show", &[run_id], 0));
    assert_eq!(
        attempts.iter().filter(|a| a.contains("reused")).count(),
        staged
    );
    assert_eq!(case.version().await, 0, "one swap, which created the table");
    assert_eq!(
        case.stored(ALL).await,
        expected_rebuild(&case, "2024-01-01", "2024-01-08").await
    );
}

#[tokio::test]
async fn plan_names_the_other_writers_a_rebuilds_swap_would_race() {
    let range = ["--start", "2024-01-01", "--end", "2024-01-02"];
    let alone = Case::new("orders_rebuild");
    alone.ok("run", &range, 0);
    let plan = alone.json("plan", &range, 0);
    assert_eq!(plan["rebuild"]["other_writers"], Value::Null, "{plan:#}");

    // Another pipeline commits a day, and another engine deletes rows.
    let case = Case::new("orders_rebuild");
    write_with_orders_clean(&case, "2024-01-01", "2024-01-01");
    let (_, metrics) = open(&case.table)
        .await
        .delete()
        .with_predicate("amount < 10")
        .await
        .unwrap();
    assert!(metrics.num_deleted_rows.unwrap_or(0) > 0);

    let plan = case.json("plan", &range, 0);
    let others = &plan["rebuild"]["other_writers"];
    assert_eq!(
        (&others["commits"], &others["of_latest"]),
        (&2.into(), &2.into()),
        "{plan:#}"
    );
    let writers: Vec<&str> = others["writers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(writers.len(), 2, "{writers:?}");
    assert!(writers[0].starts_with("DELETE by "), "{writers:?}");
    assert_eq!(writers[1], "pipeline orders_clean");
    let out = case.ok("plan", &range, 0);
    assert!(
        out.contains("other writers: 2 of the table's last 2 commits were made by DELETE by ")
            && out.contains("Pause them"),
        "{out}"
    );
}

#[tokio::test]
async fn kill_9_during_a_rebuild_then_the_same_command_swaps_exactly_once() {
    // Two slices at a time, so that the eight are staged one after the other and a kill
    // can land between them (by default all eight, small, would stage at once).
    let range = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-08",
        "--concurrency",
        "2",
    ];
    let clean = Case::new("orders_rebuild");
    clean.ok("run", &range, 0);
    let expected = clean.stored(ALL).await;

    let mut staged_when_killed = Vec::new();
    let moments = [
        Moment::Start,
        Moment::Files(1),
        Moment::Files(4),
        Moment::Files(8),
        Moment::Commits(1),
    ];
    for moment in moments {
        let case = Case::new("orders_rebuild");
        kill_at(&case.args("run", &range), &case.table, moment);
        let states = plan_states(&case.plan(&range, 0));
        // Either the swap happened (all done) or readers see no table at all.
        let done = states.iter().filter(|s| *s == "done").count();
        assert!(done == 0 || done == 8, "killed at {moment:?}: {states:?}");
        if done == 0 {
            assert!(!case.table.join("_delta_log").exists());
        }
        staged_when_killed.push(states.iter().filter(|s| *s == "staged").count());

        case.ok("run", &range, 0);
        assert_eq!(case.stored(ALL).await, expected, "killed at {moment:?}");
        assert_eq!(case.version().await, 0, "one swap, which created the table");
    }
    assert!(
        staged_when_killed.iter().any(|n| (1..8).contains(n)),
        "at least one kill must land in the middle of the staging: {staged_when_killed:?}"
    );
}

/// A rebuild waiting on a failed day: its report shows the staged slices in a colour of
/// their own, named in the legend, in the grid and in the duration chart alike; the
/// legend names only the statuses the run's slices ended in.
#[test]
fn a_rebuild_report_gives_every_status_its_own_style_and_legend_entry() {
    let case = Case::new("orders_rebuild");
    case.ok("run", &["--start", "2024-01-07", "--end", "2024-01-10"], 1);
    let (html, _) = case.report_of_last_run();

    let colour_of = |class: &str| {
        let rule = format!(".cell.{class}, .legend .{class} {{ background: ");
        let start = html
            .find(&rule)
            .unwrap_or_else(|| panic!("no style for {class}"))
            + rule.len();
        html[start..start + 7].to_string()
    };
    let cells: Vec<&str> = html
        .split("class=\"cell ")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(cells, ["staged", "staged", "failed", "staged"]);
    let legend = &html[html.find("class=\"legend\"").unwrap()..html.find("class=\"grid").unwrap()];
    for class in [
        "committed",
        "meanwhile",
        "staged",
        "skipped",
        "failed",
        "abandoned",
    ] {
        assert_eq!(
            legend.contains(&format!("<span class=\"{class}\">")),
            cells.contains(&class),
            "{class} is in the legend exactly when a slice ended so"
        );
        let colour = colour_of(class);
        assert_eq!(
            html.matches(&format!("background: {colour}; }}")).count(),
            1,
            "{class}'s colour {colour} is its own"
        );
    }
    let staged_bars = html
        .matches(&format!("fill=\"{}\"", colour_of("staged")))
        .count();
    assert_eq!(
        staged_bars, 3,
        "the chart draws staged slices in the staged colour"
    );
}
