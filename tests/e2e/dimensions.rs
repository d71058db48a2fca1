//! Slices over several dimensions: days × tenants (× regions), with tenants that start
//! later, selections per dimension, keys of any characters, and a chain that reads every
//! tenant of its day.

use crate::support::*;

const DAYS: [&str; 4] = ["--start", "2024-01-01", "--end", "2024-01-05"];

const STORED: &str =
    "SELECT dt, tenant, region, events, users, units FROM t ORDER BY dt, tenant, region";

const FROM_RAW: &str = "SELECT dt, tenant, region, count(*) AS events, count(DISTINCT user_id) AS users, sum(units) AS units
     FROM usage GROUP BY dt, tenant, region ORDER BY dt, tenant, region";

/// The keys of a `plan --json`'s slices, in plan order.
fn planned(plan: &serde_json::Value) -> Vec<String> {
    let slices = plan.as_array().unwrap().iter();
    slices
        .map(|s| s["slice"].as_str().unwrap().to_string())
        .collect()
}

/// The slices committed since `before` (both as `Case::committed_slices` lists them).
fn committed_since(before: &[String], after: &[String]) -> Vec<String> {
    let mut new = after.to_vec();
    for old in before {
        let at = new.iter().position(|s| s == old).unwrap();
        new.remove(at);
    }
    new
}

#[tokio::test]
async fn a_day_by_tenant_pipeline_equals_its_sql_over_the_raw_files_without_cells_before_a_tenant_starts(
) {
    let case = Case::new("tenant_usage");
    assert_eq!(
        planned(&case.plan(&DAYS, 0)),
        [
            "2024-01-01/tenant=acme",
            "2024-01-02/tenant=acme",
            "2024-01-03/tenant=acme",
            "2024-01-03/tenant=globex",
            "2024-01-04/tenant=acme",
            "2024-01-04/tenant=globex",
            "2024-01-05/tenant=acme",
            "2024-01-05/tenant=globex",
            "2024-01-05/tenant=o'brien",
        ],
        "globex starts on 2024-01-03 and o'brien on 2024-01-05, as the manifest says"
    );
    let out = case.ok("run", &DAYS, 0);
    assert!(out.contains("9 slices, 9 committed"), "{out}");
    assert_eq!(case.stored(STORED).await, case.expected(FROM_RAW).await);
    let folders: Vec<String> = case.files_by_partition(2).into_keys().collect();
    assert_eq!(folders.len(), 9, "{folders:?}");
    assert!(
        // The folder `tenant=o%27brien`, as the log writes its path.
        folders.contains(&"dt=2024-01-05/tenant=o%2527brien".to_string()),
        "{folders:?}"
    );

    // The report's grid: a row per tenant, a column per day, blank before it started.
    let (report, _) = case.report_of_last_run();
    let row_of = |tenant: &str| -> Vec<&str> {
        let start = format!("<div class=\"row\"><span class=\"label\">{tenant}</span>");
        let row = report
            .split(&start)
            .nth(1)
            .unwrap()
            .split("</div>")
            .next()
            .unwrap();
        let cells = row.split("<span class=\"cell ").skip(1);
        cells.map(|cell| cell.split('"').next().unwrap()).collect()
    };
    assert_eq!(row_of("acme"), ["committed"; 5]);
    assert_eq!(
        row_of("globex"),
        ["absent", "absent", "committed", "committed", "committed"]
    );

    let out = case.ok("run", &DAYS, 0);
    assert!(out.contains("9 slices, 0 committed, 9 skipped"), "{out}");
}

#[tokio::test]
async fn rerunning_one_tenant_over_all_days_rewrites_that_tenants_files_and_no_other() {
    let case = Case::new("tenant_usage");
    case.ok("run", &DAYS, 0);
    let before = case.files_by_partition(2);
    let committed = case.committed_slices();

    let acme = ["--keys", "tenant=acme", "--force"];
    let out = case.ok("run", &[&DAYS[..], &acme].concat(), 0);
    assert!(out.contains("5 slices, 5 committed"), "{out}");
    let new = committed_since(&committed, &case.committed_slices());
    assert!(
        new.len() == 5 && new.iter().all(|s| s.ends_with("/tenant=acme")),
        "{new:?}"
    );
    let after = case.files_by_partition(2);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (folder, files) in &before {
        match folder.ends_with("tenant=acme") {
            true => assert_ne!(&after[folder], files, "{folder} is rewritten"),
            false => assert_eq!(&after[folder], files, "{folder} is left alone"),
        }
    }
    assert_eq!(case.stored(STORED).await, case.expected(FROM_RAW).await);
}

#[tokio::test]
async fn a_tenant_added_to_the_manifest_with_a_start_is_backfilled_from_that_day_only() {
    let case = Case::new("tenant_usage");
    let manifest = case.scratch.path("pipelines/usage_tenants.csv");
    std::fs::write(&manifest, "key,start\nacme,\nglobex,2024-01-03\n").unwrap();
    let out = case.ok("run", &DAYS, 0);
    assert!(out.contains("8 slices, 8 committed"), "{out}");
    let committed = case.committed_slices();

    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}o'brien,2024-01-05\n")).unwrap();
    let plan = case.ok("plan", &DAYS, 0);
    let rows: Vec<Vec<&str>> = (plan.lines())
        .take_while(|line| !line.starts_with("by time:"))
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["tenant", "cells", "done", "missing"],
            vec!["acme", "5", "5", "0"],
            vec!["globex", "3", "3", "0"],
            vec!["o'brien", "1", "0", "1"],
        ],
        "{plan}"
    );
    for line in [
        "  2024-01-01, 2024-01-02: 1 of 1 done",
        "  2024-01-03, 2024-01-04: 2 of 2 done",
        "  2024-01-05: 2 of 3 done, 1 missing",
        "holes:\n  o'brien: 2024-01-05 missing",
    ] {
        assert!(plan.contains(line), "{line:?} in {plan}");
    }
    let plan = case.plan(&DAYS, 0);
    let missing: Vec<String> = (plan.as_array().unwrap().iter())
        .filter(|s| s["state"]["state"] != "done")
        .map(|s| s["slice"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(missing, ["2024-01-05/tenant=o'brien"]);
    case.ok("run", &DAYS, 0);
    assert_eq!(
        committed_since(&committed, &case.committed_slices()),
        ["2024-01-05/tenant=o'brien"]
    );
    let status = case.ok("status", &[], 0);
    assert!(status.contains("no holes: every cell is done"), "{status}");
    let status = case.json("status", &[], 0);
    assert_eq!(
        status["slices"].as_array().unwrap().len(),
        9,
        "every cell: {status}"
    );
    assert_eq!(
        status["grid"]["by_key"]["tenant"],
        serde_json::json!({
            "acme": {"cells": 5, "done": 5},
            "globex": {"cells": 3, "done": 3},
            "o'brien": {"cells": 1, "done": 1}
        })
    );
    assert_eq!(case.stored(STORED).await, case.expected(FROM_RAW).await);
}

#[tokio::test]
async fn append_and_rebuild_over_days_by_tenants_give_the_table_of_their_selection() {
    for strategy in ["append", "rebuild"] {
        let case = Case::new("tenant_usage");
        let strategy_line = format!("strategy = \"{strategy}\"");
        case.edit_pipeline("strategy = \"overwrite\"", &strategy_line);
        case.ok("run", &DAYS, 0);
        assert_eq!(
            case.stored(STORED).await,
            case.expected(FROM_RAW).await,
            "{strategy}"
        );
        let acme = ["--keys", "tenant=acme", "--force"];
        let out = case.ok("run", &[&DAYS[..], &acme].concat(), 0);
        assert!(out.contains("5 slices"), "{strategy}: {out}");
        // Append replaces acme's rows and keeps the others; a rebuild's table is its
        // selection, so acme's alone.
        let expected = match strategy {
            "append" => case.expected(FROM_RAW).await,
            _ => {
                let acme = FROM_RAW.replace("GROUP BY", "WHERE tenant = 'acme' GROUP BY");
                case.expected(&acme).await
            }
        };
        assert_eq!(case.stored(STORED).await, expected, "{strategy}");
    }
}

/// Days × tenants × regions, merged per cell.
const THREE_DIMENSIONS: &str = r#"
name = "usage_cells"

[sources.usage]
url = "../buckets/shop/usage"
format = "parquet"
partitioning = ["dt", "tenant", "region"]

[slices]
kind = "daily"

[[slices.dimensions]]
name = "tenant"
manifest = "usage_tenants.csv"

[[slices.dimensions]]
name = "area"
column = "region"
keys = ["eu", "us"]

[transform]
sql = """
SELECT dt, tenant, region, count(*) AS events, count(DISTINCT user_id) AS users, sum(units) AS units
FROM usage
WHERE dt = {{ start_date }} AND tenant = {{ tenant }} AND region = {{ area }}
GROUP BY dt, tenant, region
"""

[destination]
url = "../warehouse/usage_cells"
partition_by = ["dt", "tenant", "region"]
strategy = "merge"
merge_keys = ["region"]
"#;

#[tokio::test]
async fn a_day_by_tenant_by_region_pipeline_merges_per_cell_and_selects_per_dimension() {
    let case = Case::new("tenant_usage");
    let pipeline = case.scratch.pipeline("usage_cells", THREE_DIMENSIONS);
    let table = case.scratch.path("warehouse/usage_cells");
    let args = |command: &'static str, rest: &[&'static str]| -> Vec<String> {
        let mut args = vec![command.to_string(), pipeline.display().to_string()];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };
    let run = |rest: &[&'static str]| {
        let args = args("run", rest);
        backfill_ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0)
    };
    let eu = ["--keys", "area=eu"];
    let plan = args("plan", &[&DAYS[..], &eu, &["--json"]].concat());
    let plan = json(&plan.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    let eu_cells = planned(&plan["slices"]);
    assert_eq!(eu_cells.len(), 9, "{eu_cells:?}");
    assert!(
        eu_cells.iter().all(|s| s.ends_with("/area=eu")),
        "{eu_cells:?}"
    );
    assert_eq!(eu_cells[0], "2024-01-01/tenant=acme/area=eu");

    let out = run(&[&DAYS[..], &eu].concat());
    assert!(out.contains("9 slices, 9 committed"), "{out}");
    let out = run(&DAYS);
    assert!(out.contains("18 slices, 9 committed, 9 skipped"), "{out}");
    let stored = query_table(&table, STORED).await;
    assert_eq!(stored, case.expected(FROM_RAW).await);
    let out = run(&[
        &DAYS[..],
        &["--keys", "tenant=globex", "--keys", "area=us", "--force"],
    ]
    .concat());
    assert!(out.contains("3 slices, 3 committed"), "{out}");
    assert_eq!(
        query_table(&table, STORED).await,
        stored,
        "a merge again changes nothing"
    );
}

#[tokio::test]
async fn keys_of_any_characters_are_read_from_hive_escaped_folders_and_written_as_delta_escapes_them(
) {
    let case = Case::new("tenant_usage");
    let keys = [
        "a/b", "50% off", "x|y", "o'brien", "zürich", "\"q\"", "c:d=e",
    ];
    let copied = case
        .scratch
        .path("buckets/shop/usage/dt=2024-01-01/tenant=acme/region=eu/part-00000.parquet");
    for key in keys {
        let folder = format!(
            "buckets/shop/odd/dt=2024-01-01/tenant={}",
            backfill_engine::fixtures::hive_escape(key)
        );
        let folder = case.scratch.path(&folder);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(&copied, folder.join("part-00000.parquet")).unwrap();
    }
    let listed: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    let pipeline = format!(
        r#"
name = "odd_keys"

[sources.odd]
url = "../buckets/shop/odd"
format = "parquet"
partitioning = ["dt", "tenant"]

[slices]
kind = "daily"

[[slices.dimensions]]
name = "tenant"
keys = [{}]

[transform]
sql = "SELECT dt, tenant, count(*) AS events FROM odd WHERE dt = {{{{ start_date }}}} AND tenant = {{{{ tenant }}}} GROUP BY dt, tenant"

[destination]
url = "../warehouse/odd_keys"
partition_by = ["dt", "tenant"]
strategy = "overwrite"

[[assertions]]
min_rows = 1
"#,
        listed.join(", ")
    );
    let pipeline = case.scratch.pipeline("odd_keys", &pipeline);
    let pipeline = pipeline.to_str().unwrap();
    let day = ["--start", "2024-01-01", "--end", "2024-01-01"];
    let out = backfill_ok(&[&["run", pipeline], &day[..]].concat(), 0);
    assert!(out.contains("7 slices, 7 committed"), "{out}");

    let table = case.scratch.path("warehouse/odd_keys");
    let stored = query_table(&table, "SELECT tenant, events FROM t ORDER BY tenant").await;
    let raw = "SELECT count(*) AS n FROM usage WHERE dt = '2024-01-01' AND tenant = 'acme' AND region = 'eu'";
    let rows = case.expected(raw).await[3]
        .trim_matches(|c| c == '|' || c == ' ')
        .to_string();
    let mut sorted = keys.to_vec();
    sorted.sort();
    for key in sorted {
        assert!(
            stored
                .iter()
                .any(|line| line.contains(&format!("| {key} "))
                    && line.contains(&format!(" {rows} "))),
            "{key} holds the {rows} rows of its folder: {stored:#?}"
        );
    }

    // A key names its slice alone, as a dimension's key or as a whole slice key.
    for chosen in [
        &[
            "--keys=tenant=a/b",
            "--start=2024-01-01",
            "--end=2024-01-01",
        ][..],
        &["--keys=2024-01-01/tenant=a%2Fb"],
    ] {
        let args = [&["plan", pipeline, "--json"][..], chosen].concat();
        let plan = json(&args, 0);
        assert_eq!(
            planned(&plan["slices"]),
            ["2024-01-01/tenant=a%2Fb"],
            "{chosen:?}"
        );
    }
    let args = [
        &["plan", pipeline, "--keys=tenant=a/b,50% off", "--json"][..],
        &day,
    ]
    .concat();
    assert_eq!(
        planned(&json(&args, 0)["slices"]),
        ["2024-01-01/tenant=a%2Fb", "2024-01-01/tenant=50%25 off"]
    );
}

#[test]
fn bad_dimensions_and_selections_are_refused_with_exit_2_and_nothing_written() {
    let case = Case::new("tenant_usage");
    let manifest = case.scratch.path("pipelines/usage_tenants.csv");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let refused = |rest: &[&str], wanted: &str| {
        let out = backfill(&case.args("run", &[&DAYS[..], rest].concat()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{rest:?}: {stderr}");
        assert!(
            stderr.contains(wanted),
            "{rest:?}: {wanted:?} not in {stderr}"
        );
        assert!(!case.table.exists(), "{rest:?} wrote the table");
    };
    refused(
        &["--keys", "regoin=eu"],
        "these slices have no dimension `regoin`; they are daily × tenant",
    );
    refused(
        &["--keys", "tenant=nobody"],
        "tenant has no key \"nobody\"; its keys are \"acme\", \"globex\", \"o'brien\"",
    );
    refused(
        &["--keys", "acme"],
        "`acme`: name the dimension it is a key of, as `tenant=acme`",
    );

    let with_manifest = |text: &str, wanted: &str| {
        std::fs::write(&manifest, text).unwrap();
        refused(&[], wanted);
    };
    with_manifest("key\n", "usage_tenants.csv: the manifest lists no keys");
    with_manifest(
        "key\nacme\nglobex\nacme\n",
        "usage_tenants.csv:4: tenant: key \"acme\" is listed twice (first at ",
    );
    with_manifest(
        "key,start,end\nacme,2024-01-05,2024-01-02\n",
        "usage_tenants.csv:2: tenant: key \"acme\" starts (2024-01-05) after it ends (2024-01-02)",
    );
    std::fs::write(&manifest, original).unwrap();

    case.edit_pipeline(
        "partition_by = [\"dt\", \"tenant\"]",
        "partition_by = [\"dt\"]",
    );
    refused(
        &[],
        "destination.partition_by must include the slice column `tenant`",
    );
    case.edit_pipeline(
        "partition_by = [\"dt\"]",
        "partition_by = [\"dt\", \"tenant\"]",
    );
    case.edit_pipeline(
        "manifest = \"usage_tenants.csv\"",
        "manifest = \"usage_tenants.csv\"\n\n[[slices.dimensions]]\nname = \"tenant\"\ncolumn = \"t2\"\nkeys = [\"x\"]",
    );
    refused(
        &[],
        "tenant_usage.toml:20: slices.dimensions: `tenant` is named twice",
    );
}

const DAILY_OF_TENANTS: &str = r#"
name = "usage_daily"

[sources.usage]
pipeline = "tenant_usage"

[slices]
kind = "daily"

[transform]
sql = "SELECT dt, sum(events) AS events, sum(units) AS units, count(DISTINCT tenant) AS tenants FROM usage WHERE dt = {{ slice }} GROUP BY dt"

[destination]
url = "../../warehouse/usage_daily"
partition_by = ["dt"]
strategy = "overwrite"
"#;

#[tokio::test]
async fn a_daily_pipeline_chained_after_a_day_by_tenant_one_waits_for_and_reads_every_tenant_of_its_day(
) {
    let case = crate::projects::ProjectCase::new();
    std::fs::write(
        case.path("fixtures/pipelines/usage_daily.toml"),
        DAILY_OF_TENANTS,
    )
    .unwrap();
    let project = case.path("fixtures/usage.toml");
    let pipelines = "pipelines/tenant_usage.toml\", \"pipelines/usage_daily.toml";
    std::fs::write(&project, format!("pipelines = [\"{pipelines}\"]\n")).unwrap();
    let project = project.to_str().unwrap();
    let plan = json(&[&["plan", project], &DAYS[..], &["--json"]].concat(), 0);
    let daily = &plan["pipelines"][1];
    assert_eq!(daily["pipeline"], "usage_daily", "{plan}");
    let day_3 = &daily["slices"][2];
    assert_eq!(day_3["slice"], "2024-01-03");
    assert_eq!(
        day_3["after"],
        serde_json::json!([
            "tenant_usage 2024-01-03/tenant=acme",
            "tenant_usage 2024-01-03/tenant=globex"
        ]),
        "{plan}"
    );

    backfill_ok(&[&["run", project], &DAYS[..]].concat(), 0);
    let stored = query_table(
        &case.table("usage_daily"),
        "SELECT dt, events, units, tenants FROM t ORDER BY dt",
    )
    .await;
    let raw = "SELECT dt, count(*) AS events, sum(units) AS units, count(DISTINCT tenant) AS tenants FROM usage GROUP BY dt ORDER BY dt";
    let bucket = case.path("fixtures/buckets/shop");
    assert_eq!(stored, query_sources(&bucket, raw).await);
}

/// A project of `tenant_usage` alone, with a staging environment beside production.
fn usage_project(case: &crate::projects::ProjectCase) -> String {
    let project = case.path("fixtures/usage.toml");
    let text = "pipelines = [\"pipelines/tenant_usage.toml\"]\n\n\
        [environments.prod]\nroot = \"../warehouse\"\n\n\
        [environments.staging]\nroot = \"../warehouse-staging\"\n";
    std::fs::write(&project, text).unwrap();
    project.display().to_string()
}

#[tokio::test]
async fn diff_and_promote_work_per_cell_and_one_tenant_is_promoted_alone() {
    let case = crate::projects::ProjectCase::new();
    let project = usage_project(&case);
    let project = project.as_str();
    let staging = [&["--env", "staging"][..], &DAYS].concat();
    backfill_ok(&[&["run", project][..], &staging].concat(), 0);

    let diff = json(&[&["diff", project][..], &staging, &["--json"]].concat(), 0);
    let cells = diff["pipelines"][0]["slices"].as_array().unwrap();
    assert_eq!(cells.len(), 9, "{diff}");
    assert!(cells.iter().all(|cell| cell["rows_there"] == 0), "{diff}");

    let acme = ["--keys", "tenant=acme"];
    let promote = [
        &["promote", project][..],
        &DAYS,
        &acme,
        &["--from", "staging", "--json"],
    ]
    .concat();
    let promoted = json(&promote, 0);
    let slices = promoted["pipelines"][0]["slices"].as_array().unwrap();
    let keys: Vec<&str> = slices
        .iter()
        .map(|s| s["slice"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 5, "{promoted}");
    assert!(
        keys.iter().all(|k| k.ends_with("/tenant=acme")),
        "{promoted}"
    );
    assert!(
        slices.iter().all(|s| s["promotion"] == "committed"),
        "{promoted}"
    );

    let prod = case.table("tenant_usage");
    let staged = case.path("warehouse-staging/tenant_usage");
    let of_acme = "SELECT dt, tenant, region, events, users, units FROM t WHERE tenant = 'acme' ORDER BY dt, region";
    assert_eq!(
        query_table(&prod, of_acme).await,
        query_table(&staged, of_acme).await
    );
    let others = query_table(&prod, "SELECT count(*) AS n FROM t WHERE tenant <> 'acme'").await;
    assert!(
        others.iter().any(|line| line.contains("| 0 ")),
        "only acme is promoted: {others:?}"
    );
    let diff = json(
        &[&["diff", project][..], &staging, &acme, &["--json"]].concat(),
        0,
    );
    let cells = diff["pipelines"][0]["slices"].as_array().unwrap();
    assert!(
        cells
            .iter()
            .all(|c| c["only_here"] == 0 && c["only_there"] == 0),
        "{diff}"
    );

    let out = backfill(&[&["plan", project][..], &DAYS, &["--keys", "regoin=eu"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "no pipeline of this project has a dimension `regoin`; their dimensions are tenant"
        ),
        "{stderr}"
    );
}
