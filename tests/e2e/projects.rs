//! Projects: the bundled chain (`fixtures/backfill.toml`: orders_clean → orders_daily,
//! hourly_events → events_daily) run together, slice by slice, in an environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use backfill_engine::ledger::CommitRecord;

use crate::support::*;

pub(crate) const DAYS: [&str; 4] = ["--start", "2024-01-01", "--end", "2024-01-03"];
/// The days the fixture bucket has events for.
const EVENT_DAYS: [&str; 4] = ["--start", "2024-01-01", "--end", "2024-01-02"];

/// orders_daily from 2024-01-01 to `last_day`, computed straight from the raw orders the
/// way orders_clean then orders_daily compute it.
pub(crate) fn orders_daily_from_raw(last_day: &str) -> String {
    format!(
        "SELECT dt, upper(status) AS status, count(*) AS orders, \
        count(DISTINCT customer_id) AS customers, round(sum(amount), 2) AS revenue \
        FROM orders WHERE dt BETWEEN '2024-01-01' AND '{last_day}' \
        AND to_char(ordered_at, '%Y-%m-%d') = dt \
        GROUP BY dt, upper(status) ORDER BY dt, status"
    )
}
pub(crate) const ORDERS_DAILY_STORED: &str =
    "SELECT dt, status, orders, customers, round(revenue, 2) AS revenue FROM t ORDER BY dt, status";

/// events_daily computed straight from the raw events.
const EVENTS_DAILY_FROM_RAW: &str = "SELECT dt, customer_id, count(*) AS events, \
    sum(CASE WHEN kind = 'click' THEN 1 ELSE 0 END) AS clicks, \
    count(DISTINCT hr) AS active_hours \
    FROM events WHERE dt BETWEEN '2024-01-01' AND '2024-01-02' \
    GROUP BY dt, customer_id ORDER BY dt, customer_id";
const EVENTS_DAILY_STORED: &str = "SELECT dt, customer_id, events, clicks, active_hours \
    FROM t ORDER BY dt, customer_id";

/// A copy of the repository's `fixtures/` folder, laid out as in the repository, so the
/// project and its pipelines run unchanged: tables go to `warehouse/` (and
/// `warehouse-staging/`) beside it.
pub(crate) struct ProjectCase {
    dir: tempfile::TempDir,
}

impl ProjectCase {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = dir.path().join("fixtures");
        copy_tree(&bucket(), &fixtures.join("buckets/shop"));
        copy_tree(
            &root().join("fixtures/pipelines"),
            &fixtures.join("pipelines"),
        );
        std::fs::copy(
            root().join("fixtures/backfill.toml"),
            fixtures.join("backfill.toml"),
        )
        .unwrap();
        ProjectCase { dir }
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub(crate) fn project(&self) -> String {
        self.path("fixtures/backfill.toml").display().to_string()
    }

    pub(crate) fn table(&self, pipeline: &str) -> PathBuf {
        self.path(&format!("warehouse/{pipeline}"))
    }

    /// `backfill <command> <project> <rest>`, asserting the exit code.
    pub(crate) fn ok(&self, command: &str, rest: &[&str], code: i32) -> String {
        let project = self.project();
        backfill_ok(&[&[command, project.as_str()], rest].concat(), code)
    }

    pub(crate) fn json(&self, command: &str, rest: &[&str], code: i32) -> serde_json::Value {
        let project = self.project();
        json(
            &[&[command, project.as_str()], rest, &["--json"]].concat(),
            code,
        )
    }

    /// Each pipeline's run of `run --json`, by pipeline.
    pub(crate) fn run(&self, rest: &[&str], code: i32) -> HashMap<String, serde_json::Value> {
        let summary = self.json("run", rest, code);
        let runs = summary["runs"].as_array().unwrap();
        runs.iter()
            .map(|run| (run["pipeline"].as_str().unwrap().to_string(), run.clone()))
            .collect()
    }
}

/// The slices each pipeline's run committed, in run order.
pub(crate) fn committed(run: &serde_json::Value) -> Vec<String> {
    let outcomes = run["outcomes"].as_array().unwrap();
    outcomes
        .iter()
        .filter(|o| o["status"] == "committed")
        .map(|o| o["slice"].as_str().unwrap().to_string())
        .collect()
}

/// When each slice's record was committed to `table`, in milliseconds since the epoch.
fn commit_times(table: &Path) -> HashMap<String, i64> {
    let mut times = HashMap::new();
    for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let Some(record) = CommitRecord::in_commit_entry(&bytes) else {
            continue;
        };
        let text = String::from_utf8(bytes).unwrap();
        let info: serde_json::Value = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|action| action.get("commitInfo").is_some())
            .unwrap();
        let at = info["commitInfo"]["timestamp"].as_i64().unwrap();
        for slice in record.slices() {
            times.insert(slice.slice.clone(), at);
        }
    }
    times
}

#[tokio::test]
async fn a_chain_equals_its_sql_over_the_raw_files_and_each_slice_commits_after_what_it_reads() {
    let case = ProjectCase::new();
    let runs = case.run(&EVENT_DAYS, 0);
    assert_eq!(committed(&runs["orders_clean"]).len(), 2);
    assert_eq!(committed(&runs["orders_daily"]).len(), 2);
    assert_eq!(committed(&runs["hourly_events"]).len(), 48);
    assert_eq!(committed(&runs["events_daily"]).len(), 2);
    let ids: Vec<&str> = runs
        .values()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one run id: {ids:?}");

    let raw = case.path("fixtures/buckets/shop");
    assert_eq!(
        query_table(&case.table("orders_daily"), ORDERS_DAILY_STORED).await,
        query_sources(&raw, &orders_daily_from_raw("2024-01-02")).await
    );
    assert_eq!(
        query_table(&case.table("events_daily"), EVENTS_DAILY_STORED).await,
        query_sources(&raw, EVENTS_DAILY_FROM_RAW).await
    );

    // Every downstream slice was committed after every upstream slice it reads.
    let clean = commit_times(&case.table("orders_clean"));
    for (day, at) in commit_times(&case.table("orders_daily")) {
        assert!(
            at >= clean[&day],
            "orders_daily {day} before orders_clean {day}"
        );
    }
    let hours = commit_times(&case.table("hourly_events"));
    for (day, at) in commit_times(&case.table("events_daily")) {
        let last_hour = (0..24)
            .map(|h| hours[&format!("{day}T{h:02}")])
            .max()
            .unwrap();
        assert!(at >= last_hour, "events_daily {day} before its last hour");
    }

    // Run again: every slice of every pipeline is done.
    for run in case.run(&EVENT_DAYS, 0).values() {
        assert!(committed(run).is_empty(), "{run}");
    }
    let status = case.json("status", &[], 0);
    let done: Vec<(&str, u64)> = [
        "orders_clean",
        "orders_daily",
        "hourly_events",
        "events_daily",
    ]
    .into_iter()
    .map(|p| (p, status[p]["done"].as_u64().unwrap()))
    .collect();
    assert_eq!(
        done,
        [
            ("orders_clean", 2),
            ("orders_daily", 2),
            ("hourly_events", 48),
            ("events_daily", 2)
        ]
    );
}

#[tokio::test]
async fn changing_one_raw_day_redoes_that_day_in_each_table_of_the_chain() {
    let case = ProjectCase::new();
    let orders = ["--pipelines", "orders_clean", "--downstream"];
    case.run(&[&DAYS[..], &orders].concat(), 0);
    let versions = [
        version(&case.table("orders_clean")).await,
        version(&case.table("orders_daily")).await,
    ];

    let day = case.path("fixtures/buckets/shop/orders/dt=2024-01-02");
    rewrite_parquet(&day, "SELECT * FROM day WHERE order_id % 3 <> 0").await;
    let plan = case.json("plan", &[&DAYS[..], &orders].concat(), 0);
    let pipelines = plan["pipelines"].as_array().unwrap();
    let clean = &pipelines[0]["slices"];
    let daily = &pipelines[1]["slices"];
    assert_eq!(plan_states(clean), ["done", "changed", "done"], "{plan}");
    assert_eq!(plan_states(daily), ["done", "done", "done"], "{plan}");
    let after: Vec<&serde_json::Value> = daily
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["after"])
        .collect();
    assert_eq!(
        after,
        [
            &serde_json::Value::Null,
            &serde_json::json!(["orders_clean 2024-01-02"]),
            &serde_json::Value::Null
        ],
        "only day 2 waits for its upstream day, and runs: {plan}"
    );
    let will_run: Vec<bool> = daily
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["will_run"].as_bool().unwrap())
        .collect();
    assert_eq!(will_run, [false, true, false]);
    let text = case.ok("plan", &[&DAYS[..], &orders].concat(), 0);
    assert!(
        text.contains("pending  yes") && text.contains("after orders_clean 2024-01-02; now done"),
        "{text}"
    );

    let runs = case.run(&[&DAYS[..], &orders].concat(), 0);
    assert_eq!(committed(&runs["orders_clean"]), ["2024-01-02"]);
    assert_eq!(committed(&runs["orders_daily"]), ["2024-01-02"]);
    assert_eq!(version(&case.table("orders_clean")).await, versions[0] + 1);
    assert_eq!(version(&case.table("orders_daily")).await, versions[1] + 1);
    let raw = case.path("fixtures/buckets/shop");
    assert_eq!(
        query_table(&case.table("orders_daily"), ORDERS_DAILY_STORED).await,
        query_sources(&raw, &orders_daily_from_raw("2024-01-03")).await
    );
}

#[tokio::test]
async fn a_failed_upstream_hour_blocks_only_the_day_that_reads_it() {
    let case = ProjectCase::new();
    let hour = case.path("fixtures/buckets/shop/events/dt=2024-01-02/hr=05");
    std::fs::remove_dir_all(&hour).unwrap();
    let events = ["--pipelines", "hourly_events", "--downstream"];
    // The pre-flight refuses an hour without data; allowed, its `min_rows` fails it.
    let refused = case.ok("run", &[&EVENT_DAYS[..], &events].concat(), 2);
    assert!(refused.is_empty(), "{refused}");
    let args = [&EVENT_DAYS[..], &events, &["--allow-empty"]].concat();
    let runs = case.run(&args, 1);
    let statuses = |pipeline: &str| -> Vec<(String, String)> {
        let outcomes = runs[pipeline]["outcomes"].as_array().unwrap();
        outcomes
            .iter()
            .map(|o| {
                let status = o["status"].as_str().unwrap().to_string();
                (o["slice"].as_str().unwrap().to_string(), status)
            })
            .collect()
    };
    let failed: Vec<_> = statuses("hourly_events")
        .into_iter()
        .filter(|(_, status)| status != "committed")
        .collect();
    assert_eq!(
        failed,
        [("2024-01-02T05".to_string(), "failed".to_string())]
    );
    let daily: Vec<_> = statuses("events_daily");
    assert_eq!(
        daily,
        [
            ("2024-01-01".to_string(), "committed".to_string()),
            ("2024-01-02".to_string(), "blocked".to_string()),
        ]
    );
    let blocked = &runs["events_daily"]["outcomes"][1];
    assert_eq!(
        blocked["by"],
        serde_json::json!(["hourly_events 2024-01-02T05"])
    );
    let text = case.ok("run", &args, 1);
    assert!(
        text.contains("events_daily: run") && text.contains("1 blocked by upstream slices"),
        "{text}"
    );
}

#[test]
fn a_cycle_of_pipelines_is_refused_naming_them() {
    let case = ProjectCase::new();
    let pipelines = case.path("fixtures/pipelines");
    let reads = |name: &str, upstream: &str| {
        let text = std::fs::read_to_string(pipelines.join("events_daily.toml")).unwrap();
        let text = text
            .replace("name = \"events_daily\"", &format!("name = \"{name}\""))
            .replace(
                "pipeline = \"hourly_events\"",
                &format!("pipeline = \"{upstream}\""),
            )
            .replace("warehouse/events_daily", &format!("warehouse/{name}"));
        std::fs::write(pipelines.join(format!("{name}.toml")), text).unwrap();
    };
    reads("a", "c");
    reads("b", "a");
    reads("c", "b");
    let project = case.path("fixtures/backfill.toml");
    let text = std::fs::read_to_string(&project).unwrap();
    let text = text.replace(
        "\"pipelines/events_daily.toml\",",
        "\"pipelines/events_daily.toml\",\n    \"pipelines/[abc].toml\",",
    );
    std::fs::write(&project, text).unwrap();
    let out = backfill(&["plan", project.to_str().unwrap(), "--keys", "2024-01-01"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pipelines a → b → c → a read each other's output in a cycle"),
        "{stderr}"
    );
}

#[test]
fn a_pipeline_naming_another_runs_only_through_its_project() {
    let case = ProjectCase::new();
    let pipeline = case.path("fixtures/pipelines/events_daily.toml");
    let out = backfill(&["plan", pipeline.to_str().unwrap(), "--keys", "2024-01-01"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("events_daily.toml:8: sources.hourly.pipeline: `hourly_events` is another pipeline's output, which only a project file resolves"),
        "{stderr}"
    );

    let unknown = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("pipeline = \"hourly_events\"", "pipeline = \"hourly\"");
    std::fs::write(&pipeline, unknown).unwrap();
    let out = backfill(&["plan", &case.project(), "--keys", "2024-01-01"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sources.hourly.pipeline: no pipeline `hourly` in")
            && stderr
                .contains("(it lists orders_clean, orders_daily, hourly_events, events_daily)"),
        "{stderr}"
    );

    let out = backfill(&[
        "run",
        &case.project(),
        "--keys",
        "2024-01-01",
        "--env",
        "qa",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--env: ")
            && stderr.contains("declares no environment `qa` (it declares prod, staging)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_staging_run_writes_only_under_stagings_root_and_leaves_production_untouched() {
    let case = ProjectCase::new();
    let orders = ["--pipelines", "orders_clean", "--downstream"];
    case.run(&[&["--keys", "2024-01-01"][..], &orders].concat(), 0);
    let production = snapshot(&case.path("warehouse"));

    let staging = ["--env", "staging"];
    let runs = case.run(&[&DAYS[..], &orders, &staging].concat(), 0);
    assert_eq!(committed(&runs["orders_daily"]).len(), 3);
    assert_eq!(
        snapshot(&case.path("warehouse")),
        production,
        "not a byte of production changed, its logs included"
    );
    let staged = case.path("warehouse-staging/orders_daily");
    let raw = case.path("fixtures/buckets/shop");
    assert_eq!(
        query_table(&staged, ORDERS_DAILY_STORED).await,
        query_sources(&raw, &orders_daily_from_raw("2024-01-03")).await,
        "staging's orders_daily read staging's orders_clean"
    );
    let plan = case.json("plan", &[&DAYS[..], &orders, &staging].concat(), 0);
    assert_eq!(plan["environment"], "staging");
    let project = case.project();
    let runs_in = |env: &str| {
        let history = &[
            "history",
            &project,
            "--pipeline",
            "orders_daily",
            "--env",
            env,
            "--json",
        ];
        json(history, 0).as_array().unwrap().len()
    };
    assert_eq!((runs_in("staging"), runs_in("prod")), (1, 1));
    for pipeline in plan["pipelines"].as_array().unwrap() {
        assert_eq!(plan_states(&pipeline["slices"]), ["done", "done", "done"]);
    }
    let plan = case.json("plan", &[&DAYS[..], &orders].concat(), 0);
    assert_eq!(
        plan_states(&plan["pipelines"][0]["slices"]),
        ["done", "missing", "missing"],
        "production has only what production ran"
    );
}

/// Every file under `folder` with its contents.
fn snapshot(folder: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(folder).unwrap().display().to_string();
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Every row of a table, in a stable order, for comparing two environments' tables.
const EVERY_ROW: &str = "SELECT * FROM t ORDER BY 1, 2, 3";

#[tokio::test]
async fn promote_publishes_stagings_slices_without_recomputing_them_once_and_only_if_production_did_not_move(
) {
    let case = ProjectCase::new();
    let orders = ["--pipelines", "orders_clean", "--downstream"];
    let staging = [&DAYS[..], &orders, &["--env", "staging"]].concat();
    case.run(&staging, 0);

    // Production has nothing yet: every staging row would be new there. Differences are
    // what diff reports (exit 0); --exit-code makes them an exit 1, for scripts.
    let diff = case.json("diff", &staging, 0);
    case.ok("diff", &[&staging[..], &["--exit-code"]].concat(), 1);
    let daily = &diff["pipelines"][1];
    assert_eq!(daily["pipeline"], "orders_daily");
    for slice in daily["slices"].as_array().unwrap() {
        assert_eq!(slice["rows_there"], 0, "{diff}");
        assert_eq!(slice["only_here"], slice["rows"], "{diff}");
    }

    // No source is left to compute from: promoting must copy, not recompute.
    let raw = case.path("fixtures/buckets/shop/orders");
    std::fs::rename(&raw, case.path("orders-away")).unwrap();
    let promote = [&DAYS[..], &orders, &["--from", "staging"]].concat();
    let promoted = case.json("promote", &promote, 0);
    for pipeline in promoted["pipelines"].as_array().unwrap() {
        let outcomes: Vec<&str> = pipeline["slices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["promotion"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["committed"; 3], "{promoted}");
    }
    for pipeline in ["orders_clean", "orders_daily"] {
        let staged = case.path(&format!("warehouse-staging/{pipeline}"));
        assert_eq!(
            query_table(&case.table(pipeline), EVERY_ROW).await,
            query_table(&staged, EVERY_ROW).await,
            "{pipeline}: production equals staging"
        );
    }
    let versions = [
        version(&case.table("orders_clean")).await,
        version(&case.table("orders_daily")).await,
    ];
    let project = case.project();
    let history = json(
        &["history", &project, "--pipeline", "orders_daily", "--json"],
        0,
    );
    assert_eq!(history[0]["promoted_from"], "staging", "{history}");
    // The promotion's own run opens with `show`, and says what it was.
    let shown = backfill_ok(
        &["show", &project, "--pipeline", "orders_daily", "latest"],
        0,
    );
    assert!(
        shown.contains("promoted from staging: no SQL ran") && !shown.contains("reprocess ,"),
        "{shown}"
    );
    let again = case.json("promote", &promote, 0);
    let outcomes: Vec<&str> = again["pipelines"][0]["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["promotion"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes, ["already"; 3],
        "promoting twice is a no-op: {again}"
    );
    assert_eq!(version(&case.table("orders_clean")).await, versions[0]);
    assert_eq!(version(&case.table("orders_daily")).await, versions[1]);

    // With the sources back, production's plan says done: the records came along, and
    // orders_daily read files named as production's orders_clean names them.
    std::fs::rename(case.path("orders-away"), &raw).unwrap();
    let plan = case.json("plan", &[&DAYS[..], &orders].concat(), 0);
    for pipeline in plan["pipelines"].as_array().unwrap() {
        assert_eq!(plan_states(&pipeline["slices"]), ["done"; 3], "{plan}");
    }
    let diff = case.json("diff", &[&staging[..], &["--exit-code"]].concat(), 0);
    for pipeline in diff["pipelines"].as_array().unwrap() {
        for slice in pipeline["slices"].as_array().unwrap() {
            assert_eq!(
                (&slice["only_here"], &slice["only_there"]),
                (&serde_json::json!(0), &serde_json::json!(0)),
                "{diff}"
            );
        }
    }

    // Production moves on: promoting is refused, and nothing is copied.
    let day_two = [
        "--keys",
        "2024-01-02",
        "--force",
        "--pipelines",
        "orders_clean",
    ];
    case.run(&day_two, 0);
    let moved = version(&case.table("orders_clean")).await;
    let out = backfill(&[&["promote", project.as_str()], &promote[..]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "refused, nothing was copied:\n  orders_clean: 2024-01-02 committed in prod by run"
        ) && stderr.contains("after staging committed it\nnext: run those slices in staging"),
        "{stderr}"
    );
    assert_eq!(version(&case.table("orders_clean")).await, moved);
    assert_eq!(version(&case.table("orders_daily")).await, versions[1]);

    // A slice staging has not done is refused too.
    let beyond = [
        "--keys",
        "2024-01-04",
        "--pipelines",
        "orders_clean",
        "--from",
        "staging",
    ];
    let out = backfill(&[&["promote", project.as_str()], &beyond[..]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("orders_clean: 2024-01-04 not done in staging"),
        "{stderr}"
    );
}

#[tokio::test]
async fn diff_matches_rows_by_merge_key_and_counts_the_changed_ones() {
    let case = ProjectCase::new();
    let project = case.path("fixtures/backfill.toml");
    let text = std::fs::read_to_string(&project).unwrap().replace(
        "\"pipelines/events_daily.toml\",",
        "\"pipelines/events_daily.toml\",\n    \"pipelines/orders_merge.toml\",",
    );
    std::fs::write(&project, text).unwrap();
    let merge = [
        "--keys",
        "2024-01-01,2024-01-02",
        "--pipelines",
        "orders_merge",
    ];
    case.run(&merge, 0);
    // WriteTarget computes day 2 from amounts changed for one order in ten.
    let day = case.path("fixtures/buckets/shop/orders/dt=2024-01-02");
    rewrite_parquet(
        &day,
        "SELECT order_id, customer_id, \
         CASE WHEN order_id % 10 = 0 THEN amount + 1 ELSE amount END AS amount, \
         status, ordered_at FROM day",
    )
    .await;
    case.run(&[&merge[..], &["--env", "staging"]].concat(), 0);
    let changed = query_sources(
        &case.path("fixtures/buckets/shop"),
        "SELECT count(*) FROM orders WHERE dt = '2024-01-02' AND order_id % 10 = 0 \
         AND amount IS NOT NULL",
    )
    .await;

    let diff = case.json("diff", &[&merge[..], &["--env", "staging"]].concat(), 0);
    let pipeline = &diff["pipelines"][0];
    assert_eq!(pipeline["keys"], serde_json::json!(["order_id"]));
    let slices = pipeline["slices"].as_array().unwrap();
    let counts = |slice: &serde_json::Value| {
        ["only_here", "only_there", "changed"].map(|k| slice[k].as_u64().unwrap())
    };
    assert_eq!(counts(&slices[0]), [0, 0, 0], "{diff}");
    let expected: u64 = changed[3].trim_matches(['|', ' ']).parse().unwrap();
    assert!(expected > 0);
    assert_eq!(counts(&slices[1]), [0, 0, expected], "{diff}");
    let text = case.ok("diff", &[&merge[..], &["--env", "staging"]].concat(), 0);
    assert!(
        text.contains("rows compared by key (order_id)")
            && text.contains(&format!("1 of 2 slices differ between staging and prod: promoting them would change {expected} rows")),
        "{text}"
    );
}

/// The `txn_version` of each slice's commit, per pipeline, from a project's `plan --json`.
fn txn_versions(plan: &serde_json::Value) -> Vec<Vec<i64>> {
    let pipelines = plan["pipelines"].as_array().unwrap();
    pipelines
        .iter()
        .map(|p| {
            let slices = p["slices"].as_array().unwrap();
            let record = |s: &serde_json::Value| s["state"]["committed"]["record"].clone();
            slices
                .iter()
                .map(|s| record(s)["txn_version"].as_i64().unwrap())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn kill_9_during_a_chained_run_then_the_same_command_gives_the_uninterrupted_tables() {
    let events = ["--pipelines", "hourly_events", "--downstream"];
    let args = [&EVENT_DAYS[..], &events, &["--max-slices-per-commit", "2"]].concat();
    let uninterrupted = ProjectCase::new();
    uninterrupted.run(&args, 0);
    let every_row = "SELECT * FROM t ORDER BY dt, customer_id";
    let hourly = "SELECT * FROM t ORDER BY dt, hr, customer_id";
    let expected = (
        query_table(&uninterrupted.table("hourly_events"), hourly).await,
        query_table(&uninterrupted.table("events_daily"), every_row).await,
    );
    for (table, moment) in [
        ("hourly_events", Moment::Files(6)),
        ("hourly_events", Moment::Commits(12)),
        ("events_daily", Moment::Commits(1)),
    ] {
        let case = ProjectCase::new();
        let project = case.project();
        let command = [&["run", project.as_str()], &args[..]].concat();
        kill_at(&command, &case.table(table), moment);
        case.run(&args, 0);
        let got = (
            query_table(&case.table("hourly_events"), hourly).await,
            query_table(&case.table("events_daily"), every_row).await,
        );
        assert!(got == expected, "killed at {moment:?} of {table}");
        let plan = case.json("plan", &[&EVENT_DAYS[..], &events].concat(), 0);
        assert_eq!(
            txn_versions(&plan),
            [vec![1; 48], vec![1; 2]],
            "killed at {moment:?} of {table}: every slice committed once"
        );
    }
}

#[tokio::test]
async fn kill_9_during_a_promotion_then_the_same_command_finishes_it() {
    let orders = ["--pipelines", "orders_clean", "--downstream"];
    let promote = [&DAYS[..], &orders, &["--from", "staging"]].concat();
    for (table, moment) in [
        ("orders_clean", Moment::Files(1)),
        ("orders_clean", Moment::Commits(2)),
        ("orders_daily", Moment::Commits(1)),
    ] {
        let case = ProjectCase::new();
        case.run(&[&DAYS[..], &orders, &["--env", "staging"]].concat(), 0);
        let project = case.project();
        let command = [&["promote", project.as_str()], &promote[..]].concat();
        kill_at(&command, &case.table(table), moment);
        case.json("promote", &promote, 0);
        for pipeline in ["orders_clean", "orders_daily"] {
            let staged = case.path(&format!("warehouse-staging/{pipeline}"));
            assert_eq!(
                query_table(&case.table(pipeline), EVERY_ROW).await,
                query_table(&staged, EVERY_ROW).await,
                "killed at {moment:?} of {table}: {pipeline} in production equals staging"
            );
        }
        let plan = case.json("plan", &[&DAYS[..], &orders].concat(), 0);
        assert_eq!(
            txn_versions(&plan),
            [vec![1; 3], vec![1; 3]],
            "killed at {moment:?} of {table}: every slice promoted once"
        );
    }
}

/// A project catches up pipeline by pipeline: each through its own last slice, hourly
/// ones by the hour, and a day whose events have not landed waits in both the hourly
/// pipeline and the daily one reading it.
#[tokio::test]
async fn a_project_catches_up_each_pipeline_and_leaves_what_has_no_data_yet_for_later() {
    let case = ProjectCase::new();
    let runs = case.run(&["--start", "2024-01-01", "--through", "2024-01-02"], 0);
    assert_eq!(committed(&runs["orders_clean"]).len(), 2);
    assert_eq!(committed(&runs["hourly_events"]).len(), 48);
    assert_eq!(committed(&runs["events_daily"]).len(), 2);

    let caught_up = [
        "--start",
        "2024-01-01",
        "--through",
        "2024-01-03",
        "--lookback",
        "1",
    ];
    let runs = case.run(&caught_up, 0);
    assert_eq!(committed(&runs["orders_clean"]), ["2024-01-03"]);
    assert_eq!(committed(&runs["orders_daily"]), ["2024-01-03"]);
    assert!(committed(&runs["hourly_events"]).is_empty());
    assert!(committed(&runs["events_daily"]).is_empty());
    let waiting = |pipeline: &str| {
        let outcomes = runs[pipeline]["outcomes"].as_array().unwrap().iter();
        let waiting = outcomes.filter(|o| o["state"] == "no source data yet");
        waiting.count()
    };
    assert_eq!(
        waiting("hourly_events"),
        24,
        "the day without events, by the hour"
    );
    assert_eq!(waiting("events_daily"), 1);
}
