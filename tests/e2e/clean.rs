//! `clean`: what killed attempts leave behind goes, and nothing any version, manifest or
//! other writer needs is touched.

use std::collections::BTreeSet;

use crate::support::*;

/// Every file any commit in the log adds, relative to the table, decoded.
fn added_by_the_log(case: &Case) -> BTreeSet<String> {
    let mut added = BTreeSet::new();
    for commit in case.commit_entries() {
        for action in commit.as_array().unwrap() {
            if let Some(path) = action.pointer("/add/path").and_then(|p| p.as_str()) {
                added.insert(path.replace("%27", "'"));
            }
        }
    }
    added
}

/// Data files in the table's folder, outside the run history.
fn parquet_files(case: &Case) -> BTreeSet<String> {
    let files = case.data_files().into_iter();
    files.filter(|f| f.contains(".parquet")).collect()
}

fn clean(case: &Case, rest: &[&str]) -> serde_json::Value {
    case.json("clean", rest, 0)
}

fn clean_now(case: &Case) -> serde_json::Value {
    clean(case, &["--older-than", "0s", "--no-run-in-flight"])
}

/// Kills runs of each strategy at several moments, reruns them, and cleans: afterwards
/// every Parquet file in the folder is one the log adds, and the table is the clean one.
#[tokio::test]
async fn after_kills_and_reruns_clean_leaves_only_files_the_log_references() {
    // One slice per commit, so that the eight slices take several commits to kill
    // between.
    let range = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-08",
        "--concurrency",
        "2",
        "--max-slices-per-commit",
        "1",
    ];
    let mut leftovers = 0;
    for pipeline in ["orders_clean", "orders_merge", "orders_append"] {
        let reference = Case::new(pipeline);
        reference.ok("run", &range, 0);
        let all = "SELECT * FROM t ORDER BY order_id";
        let expected = reference.stored(all).await;
        let moments = [
            Moment::Files(1),
            Moment::Files(3),
            Moment::Commits(2),
            Moment::Commits(5),
        ];
        for moment in moments {
            let case = Case::new(pipeline);
            kill_at(&case.args("run", &range), &case.table, moment);
            case.ok("run", &range, 0);
            let before: BTreeSet<String> = case.data_files().into_iter().collect();
            let cleaned = clean_now(&case);
            let deleted: BTreeSet<String> = cleaned["deleted"]
                .as_array()
                .unwrap()
                .iter()
                .map(|path| path.as_str().unwrap().to_string())
                .collect();
            leftovers += deleted.len();
            assert_eq!(
                parquet_files(&case),
                added_by_the_log(&case),
                "{pipeline} killed at {moment:?}"
            );
            // What went is exactly what clean reports: a kill mid-commit also leaves the
            // log's upload temporary, which is not a Parquet file.
            let after: BTreeSet<String> = case.data_files().into_iter().collect();
            let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
            assert_eq!(gone, deleted, "{pipeline} killed at {moment:?}");
            let log = std::fs::read_dir(case.table.join("_delta_log")).unwrap();
            let names: Vec<String> = log
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(names.iter().all(|n| !n.contains('#')), "{names:?}");
            assert_eq!(
                case.stored(all).await,
                expected,
                "{pipeline} killed at {moment:?}"
            );
        }
    }
    assert!(
        leftovers > 0,
        "no kill left anything to clean: the sweep tested nothing"
    );
}

#[tokio::test]
async fn clean_keeps_what_versions_manifests_young_attempts_and_other_writers_need() {
    let case = Case::new("orders_clean");
    // One slice per commit, so that version 0 holds exactly one slice's file.
    let days = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-02",
        "--max-slices-per-commit",
        "1",
    ];
    case.ok("run", &days, 0);
    case.ok("run", &[&days[..], &["--force"]].concat(), 0);
    // The forced run replaced the first files: only versions 0 and 1 reference them.
    let added: Vec<String> = added_by_the_log(&case).into_iter().collect();
    // A file another writer put in the folder, with no footer tag of ours.
    let foreign = case.table.join("dt=2024-01-01/foreign.parquet");
    std::fs::copy(
        case.scratch
            .path("buckets/shop/orders/dt=2024-01-01/part-00000.parquet"),
        &foreign,
    )
    .unwrap();

    let cleaned = clean(&case, &[]);
    assert_eq!(cleaned["deleted"].as_array().unwrap().len(), 0, "{cleaned}");
    let cleaned = clean_now(&case);
    assert_eq!(cleaned["deleted"].as_array().unwrap().len(), 0, "{cleaned}");
    for file in &added {
        assert!(
            case.table.join(file).exists(),
            "{file} is referenced by a version"
        );
    }
    assert!(foreign.exists(), "another writer's file");
    let url = deltalake::ensure_table_uri(case.table.to_str().unwrap()).unwrap();
    let mut old = deltalake::open_table(url).await.unwrap();
    old.load_version(0).await.unwrap();
    assert_eq!(
        old.get_file_uris().unwrap().count(),
        1,
        "version 0 still reads"
    );

    // A rebuild waiting on a failed day keeps its staged slices for the swap.
    let rebuild = Case::new("orders_rebuild");
    rebuild.ok("run", &["--start", "2024-01-08", "--end", "2024-01-09"], 1);
    let staged = rebuild.data_files();
    let cleaned = clean_now(&rebuild);
    assert_eq!(cleaned["deleted"].as_array().unwrap().len(), 0, "{cleaned}");
    assert_eq!(rebuild.data_files(), staged);
}

#[test]
fn a_window_under_an_hour_needs_no_run_in_flight() {
    let case = Case::new("orders_clean");
    let output = backfill(&case.args("clean", &["--older-than", "10m"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--no-run-in-flight"), "{stderr}");
}

/// A process killed while the local store writes a file leaves `<name>#<n>`, which the
/// store's listings hide; clean finds them on disk, and only once they are old enough.
#[test]
fn clean_deletes_the_local_stores_half_written_temporaries() {
    let case = Case::new("orders_clean");
    case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-01"], 0);
    let data = case
        .table
        .join("dt=2024-01-01/part-00000-killed.snappy.parquet#1");
    let commit = case.table.join("_delta_log/00000000000000000001.json#3");
    let not_ours = case.table.join("dt=2024-01-01/notes.txt#1");
    for file in [&data, &commit, &not_ours] {
        std::fs::write(file, b"half written").unwrap();
    }

    let cleaned = clean(&case, &[]);
    assert_eq!(cleaned["deleted"].as_array().unwrap().len(), 0, "{cleaned}");
    assert_eq!(cleaned["too_young"], 2, "{cleaned}");
    let dry = clean(
        &case,
        &["--older-than", "0s", "--no-run-in-flight", "--dry-run"],
    );
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 2, "{dry}");
    assert!(
        data.exists() && commit.exists(),
        "a dry run deletes nothing"
    );

    let cleaned = clean_now(&case);
    assert_eq!(
        cleaned["deleted"],
        serde_json::json!([
            "_delta_log/00000000000000000001.json#3",
            "dt=2024-01-01/part-00000-killed.snappy.parquet#1"
        ])
    );
    assert!(!data.exists() && !commit.exists());
    assert!(
        not_ours.exists(),
        "only Parquet and commit temporaries are ours to judge"
    );
    case.ok("run", &["--start", "2024-01-01", "--end", "2024-01-02"], 0);
}
