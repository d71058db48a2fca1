//! The committer on real Delta tables in a temporary folder: several slices in one commit,
//! each with its own `txn` and record, read back by the ledger.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::memory::MemoryStream;
use deltalake::DeltaTable;

use super::{Committer, Published, Sink, SliceCommit, StagedOutput};
use crate::ledger::{app_id, Ledger, SliceRecord, Summaries};
use crate::pipeline::{Destination, Strategy};
use crate::retry::RequestRetry;
use crate::slice::{Selection, Slice, SliceKind, SliceSpec};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("dt", DataType::Utf8, true),
    ]))
}

async fn sink(folder: &std::path::Path, strategy: Strategy) -> Sink {
    sink_of("p", folder, strategy).await
}

/// The sink of pipeline `pipeline` writing to `folder`.
async fn sink_of(pipeline: &str, folder: &std::path::Path, strategy: Strategy) -> Sink {
    let by_day = !matches!(strategy, Strategy::Append);
    partitioned(pipeline, folder, strategy, by_day).await
}

/// The sink of pipeline `pipeline` writing to `folder`, partitioned by `dt` (the daily
/// slices' column) or not at all.
async fn partitioned(
    pipeline: &str,
    folder: &std::path::Path,
    strategy: Strategy,
    by_day: bool,
) -> Sink {
    let partition_by = match by_day {
        true => vec!["dt".to_string()],
        false => vec![],
    };
    let destination = Destination {
        url: url::Url::from_directory_path(folder).unwrap(),
        partition_by,
        slices_own_partitions: by_day,
        strategy,
        storage_options: Default::default(),
    };
    let loaded = Sink::load(&destination, None, RequestRetry::default()).await;
    Sink::open(pipeline, &destination, schema(), loaded.unwrap()).unwrap()
}

fn days(start: &str, end: &str) -> Vec<Slice> {
    let spec = SliceSpec::of_kind(SliceKind::Daily, vec!["dt".to_string()], None);
    spec.cut(&Selection::range(start, end)).unwrap()
}

/// Stages `rows` rows of `slice` (ids from `first`).
async fn stage(sink: &Sink, slice: &Slice, first: i64, rows: i64) -> StagedOutput {
    let ids: Vec<i64> = (first..first + rows).collect();
    let dt = vec![slice.key.clone(); ids.len()];
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(dt)),
        ],
    )
    .unwrap();
    let stream = MemoryStream::try_new(vec![batch], schema(), None).unwrap();
    sink.stage(slice, Box::pin(stream)).await.unwrap()
}

fn record(slice: &Slice, staged: &StagedOutput, txn_version: i64) -> SliceRecord {
    SliceRecord {
        strategy: "test".into(),
        txn_version,
        rows: staged.rows,
        bytes: staged.bytes,
        ..SliceRecord::example(&slice.key, &format!("run-{txn_version}"))
    }
}

/// Stages and publishes `slices` together, `rows` rows each, as txn version `txn`.
async fn publish_together(sink: &Sink, slices: &[Slice], rows: i64, txn: i64) -> Vec<Published> {
    try_publish_together(sink, slices, rows, txn).await.unwrap()
}

async fn try_publish_together(
    sink: &Sink,
    slices: &[Slice],
    rows: i64,
    txn: i64,
) -> crate::Result<Vec<Published>> {
    let mut staged = Vec::new();
    for (i, slice) in slices.iter().enumerate() {
        staged.push(stage(sink, slice, i as i64 * 1000, rows).await);
    }
    let records: Vec<SliceRecord> = slices
        .iter()
        .zip(&staged)
        .map(|(slice, staged)| record(slice, staged, txn))
        .collect();
    let group: Vec<SliceCommit> = slices
        .iter()
        .zip(&staged)
        .zip(&records)
        .map(|((slice, staged), record)| SliceCommit {
            slice,
            staged,
            record,
        })
        .collect();
    sink.publish_together(&group).await
}

async fn rows(table: &DeltaTable) -> usize {
    let ctx = datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx.sql("SELECT * FROM t").await.unwrap().collect().await;
    batches.unwrap().iter().map(|b| b.num_rows()).sum()
}

/// Each slice's record in the ledger, at `version`, and its `txn` at `txn`.
async fn assert_recorded(table: &DeltaTable, slices: &[Slice], version: u64, txn: i64) {
    let ledger = Ledger::read(Some(table), "p", Summaries::ReadOnly)
        .await
        .unwrap();
    let snapshot = table.snapshot().unwrap();
    for slice in slices {
        let committed = ledger.get(&slice.key).unwrap();
        assert_eq!(committed.version, Some(version), "{}", slice.key);
        assert_eq!(committed.record.txn_version, txn);
        let app = app_id("p", &slice.key);
        let log_store = table.log_store();
        let recorded = snapshot.transaction_version(log_store.as_ref(), app).await;
        assert_eq!(recorded.unwrap(), Some(txn), "{}", slice.key);
    }
}

#[tokio::test]
async fn several_overwrite_slices_go_in_one_commit_each_with_its_txn_and_record() {
    let folder = tempfile::tempdir().unwrap();
    let sink = sink(folder.path(), Strategy::Overwrite).await;
    let three = days("2024-01-01", "2024-01-03");
    let published = publish_together(&sink, &three, 10, 1).await;
    let created = Published {
        version: 0,
        by: Committer::ThisAttempt,
    };
    assert_eq!(published, vec![created; 3], "one commit creates the table");
    let table = sink.table().await.unwrap();
    assert_eq!(rows(&table).await, 30);
    assert_recorded(&table, &three, 0, 1).await;

    // Two of them again, together: their partitions are replaced, the third stays.
    let published = publish_together(&sink, &three[..2], 4, 2).await;
    assert!(published.iter().all(|p| p.version == 1));
    let table = sink.table().await.unwrap();
    assert_eq!(table.version(), Some(1));
    assert_eq!(rows(&table).await, 4 + 4 + 10);
    assert_recorded(&table, &three[..2], 1, 2).await;
    assert_recorded(&table, &three[2..], 0, 1).await;
}

#[tokio::test]
async fn several_append_slices_go_in_one_commit_and_replace_their_own_rows() {
    let folder = tempfile::tempdir().unwrap();
    let sink = sink(folder.path(), Strategy::Append).await;
    let four = days("2024-01-01", "2024-01-04");
    publish_together(&sink, &four[..1], 5, 1).await;
    let published = publish_together(&sink, &four, 7, 2).await;
    assert!(published.iter().all(|p| p.version == 1), "{published:?}");
    let table = sink.table().await.unwrap();
    assert_eq!(
        rows(&table).await,
        4 * 7,
        "the first slice's rows were replaced"
    );
    assert_recorded(&table, &four, 1, 2).await;
}

#[tokio::test]
async fn a_merge_across_the_table_and_a_rebuild_refuse_a_group_and_commit_nothing() {
    // A merge across the table commits one slice at a time; a rebuild publishes only by
    // its swap.
    let merge = Strategy::Merge {
        keys: vec!["id".into()],
    };
    for (strategy, by_day, why) in [
        (merge.clone(), false, "2 slices in one commit"),
        (Strategy::Rebuild, true, "only by its swap"),
    ] {
        let folder = tempfile::tempdir().unwrap();
        let sink = partitioned("p", folder.path(), strategy.clone(), by_day).await;
        let two = days("2024-01-01", "2024-01-02");
        let refused = try_publish_together(&sink, &two, 3, 1).await.unwrap_err();
        assert!(
            matches!(&refused, crate::Error::Internal(m) if m.contains(why)),
            "{strategy:?}: {refused}"
        );
        assert!(
            sink.table().await.is_none(),
            "{strategy:?} committed nothing"
        );
        let parquet = walk(folder.path())
            .filter(|p| p.ends_with(".parquet"))
            .count();
        assert_eq!(parquet, 0, "{strategy:?}: the staged files were discarded");
    }
    // A merge across the table publishes one slice per commit.
    let folder = tempfile::tempdir().unwrap();
    let sink = partitioned("p", folder.path(), merge, false).await;
    let one = days("2024-01-01", "2024-01-01");
    let published = publish_together(&sink, &one, 3, 1).await;
    assert_eq!(published.len(), 1);
    assert_eq!(rows(&sink.table().await.unwrap()).await, 3);
}

/// Stages `ids` as `slice`'s output and publishes it alone, as txn version `txn`.
async fn merge_ids(sink: &Sink, slice: &Slice, ids: std::ops::Range<i64>, txn: i64) {
    let staged = stage(sink, slice, ids.start, ids.end - ids.start).await;
    let record = record(slice, &staged, txn);
    let member = SliceCommit {
        slice,
        staged: &staged,
        record: &record,
    };
    sink.publish_together(&[member]).await.unwrap();
}

/// The ids in the table on `day`, in order, and the paths of the files holding them.
async fn ids_on(table: &DeltaTable, day: &str) -> (Vec<i64>, Vec<String>) {
    let ctx = datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let sql = format!("SELECT id FROM t WHERE dt = '{day}' ORDER BY id");
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let ids = batches.iter().flat_map(|batch| {
        let ids = batch.column(0).as_any().downcast_ref::<Int64Array>();
        ids.unwrap().values().to_vec()
    });
    let log = table.snapshot().unwrap().log_data();
    let on_day = log.iter();
    let on_day = on_day.filter(|f| f.partition_values_map().get("dt") == Some(&Some(day.into())));
    let mut paths: Vec<String> = on_day.map(|f| f.path().into_owned()).collect();
    paths.sort();
    (ids.collect(), paths)
}

#[tokio::test]
async fn a_merge_within_its_partition_updates_its_keys_keeps_the_other_rows_and_leaves_files_without_its_keys(
) {
    let folder = tempfile::tempdir().unwrap();
    let merge = Strategy::Merge {
        keys: vec!["id".into()],
    };
    let sink = sink(folder.path(), merge).await;
    let [day, next]: [Slice; 2] = days("2024-01-01", "2024-01-02").try_into().unwrap();
    merge_ids(&sink, &day, 0..5, 1).await;
    merge_ids(&sink, &day, 100..105, 2).await;
    let table = sink.table().await.unwrap();
    let (ids, low_and_high) = ids_on(&table, &day.key).await;
    assert_eq!(ids, [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]);
    assert_eq!(
        low_and_high.len(),
        2,
        "ids 0-4 are apart from 100-104: their file stays"
    );

    // Ids 3-4 and 102 are updated, 200 inserted: the file of 0-4 and that of 100-104 are
    // rewritten without those ids, and the rows they do not have stay. The output comes
    // in three files, as a slice's output may.
    let mut parts = Vec::new();
    for ids in [3..5, 102..103, 200..201] {
        parts.push(stage(&sink, &day, ids.start, ids.end - ids.start).await);
    }
    let output = StagedOutput {
        adds: parts.iter().flat_map(|part| part.adds.clone()).collect(),
        rows: parts.iter().map(|part| part.rows).sum(),
        ..parts[0].clone()
    };
    // The next day goes in the same commit.
    let next_output = stage(&sink, &next, 7, 1).await;
    let records = [record(&day, &output, 3), record(&next, &next_output, 3)];
    let group = [
        SliceCommit {
            slice: &day,
            staged: &output,
            record: &records[0],
        },
        SliceCommit {
            slice: &next,
            staged: &next_output,
            record: &records[1],
        },
    ];
    let published = sink.publish_together(&group).await.unwrap();
    assert_eq!(published[0].version, published[1].version, "one commit");
    let table = sink.table().await.unwrap();
    let (ids, files) = ids_on(&table, &day.key).await;
    assert_eq!(ids, [0, 1, 2, 3, 4, 100, 101, 102, 103, 104, 200]);
    assert!(
        files.iter().all(|f| !low_and_high.contains(f)),
        "both files held keys of the output: {files:?}"
    );
    assert_eq!(ids_on(&table, &next.key).await.0, [7]);

    // Ids 300-301 are apart from every file's range: nothing is rewritten.
    merge_ids(&sink, &day, 300..302, 4).await;
    let table = sink.table().await.unwrap();
    let (ids, after) = ids_on(&table, &day.key).await;
    assert_eq!(ids.len(), 13);
    assert_eq!(after.len(), files.len() + 1);
    assert!(files.iter().all(|f| after.contains(f)), "{files:?} stay");
}

/// Every file under `folder`, as paths.
fn walk(folder: &std::path::Path) -> impl Iterator<Item = String> {
    let mut files = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap().flatten() {
            match entry.file_type().unwrap().is_dir() {
                true => folders.push(entry.path()),
                false => files.push(entry.path().display().to_string()),
            }
        }
    }
    files.into_iter()
}

#[tokio::test]
async fn a_sink_that_reads_its_table_afresh_still_sees_what_others_committed() {
    let folder = tempfile::tempdir().unwrap();
    let sink = sink(folder.path(), Strategy::Overwrite).await;
    let all = days("2024-01-01", "2024-04-10");
    let (ours, theirs) = (&all[..100], &all[100..]);
    for slice in &ours[..99] {
        publish_together(&sink, std::slice::from_ref(slice), 1, 1).await;
    }
    // Another writer commits version 99; this sink's next commit is version 100, after
    // which it reads the table afresh.
    let other = self::sink(folder.path(), Strategy::Overwrite).await;
    publish_together(&other, theirs, 2, 7).await;
    let published = publish_together(&sink, &ours[99..], 1, 1).await;
    assert_eq!(published[0].version, 100);
    let table = sink.table().await.unwrap();
    assert_eq!(table.version(), Some(100));
    assert_eq!(rows(&table).await, 100 + 2);

    // The other writer's slice is known as theirs: it is not committed again.
    let again = publish_together(&sink, theirs, 3, 8).await;
    let by_them = Committer::OtherRun {
        run_id: "run-7".into(),
    };
    assert_eq!(again[0].by, by_them);
    assert_eq!(sink.table().await.unwrap().version(), Some(100));
}

/// Spawns a task publishing each of `slices`, staged with `rows` rows, as txn version 1.
async fn spawn_publishers(
    sink: &Arc<Sink>,
    slices: &[Slice],
    rows: i64,
) -> Vec<tokio::task::JoinHandle<crate::Result<Published>>> {
    let mut tasks = Vec::new();
    for slice in slices {
        let staged = stage(sink, slice, 0, rows).await;
        let record = record(slice, &staged, 1);
        let (sink, slice) = (sink.clone(), slice.clone());
        tasks.push(tokio::spawn(async move {
            sink.publish(&slice, &staged, &record, None, &|_| {}).await
        }));
    }
    tasks
}

/// Waits until `n` slices wait in the sink's line; panics if they do not within a minute,
/// rather than hang the test run.
async fn until_waiting(sink: &Sink, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let waiting = sink.line.lock().unwrap().len();
        if waiting >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} slices wait in line after a minute, not {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn slices_that_finish_while_a_commit_is_in_flight_go_together_in_the_next_one() {
    let folder = tempfile::tempdir().unwrap();
    let sink = Arc::new(sink(folder.path(), Strategy::Overwrite).await);
    let four = days("2024-01-01", "2024-01-04");
    publish_together(&sink, &four[..1], 1, 1).await;

    // A commit in flight holds the view; three slices finish meanwhile and wait.
    let in_flight = sink.view.lock().await;
    let tasks = spawn_publishers(&sink, &four[1..], 5).await;
    until_waiting(&sink, 3).await;
    drop(in_flight);
    let mut published = Vec::new();
    for task in tasks {
        published.push(task.await.unwrap().unwrap());
    }
    let together = Published {
        version: 1,
        by: Committer::ThisAttempt,
    };
    assert_eq!(published, vec![together; 3], "one commit for the three");
    let table = sink.table().await.unwrap();
    assert_eq!(table.version(), Some(1));
    assert_eq!(rows(&table).await, 1 + 3 * 5);
    assert_recorded(&table, &four[1..], 1, 1).await;
    assert_recorded(&table, &four[..1], 0, 1).await;
}

#[tokio::test]
async fn a_slice_whose_task_stops_while_waiting_is_not_committed() {
    let folder = tempfile::tempdir().unwrap();
    let sink = Arc::new(sink(folder.path(), Strategy::Overwrite).await);
    let two = days("2024-01-01", "2024-01-02");
    let in_flight = sink.view.lock().await;
    let mut tasks = spawn_publishers(&sink, &two, 5).await;
    until_waiting(&sink, 2).await;
    let stopped = tasks.remove(0);
    stopped.abort();
    assert!(stopped.await.unwrap_err().is_cancelled());
    drop(in_flight);
    let published = tasks.remove(0).await.unwrap().unwrap();
    assert_eq!(published.version, 0);
    let table = sink.table().await.unwrap();
    assert_eq!(rows(&table).await, 5, "only the slice still waiting");
    let ledger = Ledger::read(Some(&table), "p", Summaries::ReadOnly)
        .await
        .unwrap();
    assert!(ledger.get(&two[0].key).is_none());
}

#[tokio::test]
async fn a_group_that_conflicts_with_another_runs_commit_leaves_that_slice_to_it_and_commits_the_rest(
) {
    let folder = tempfile::tempdir().unwrap();
    let ours = sink(folder.path(), Strategy::Overwrite).await;
    let three = days("2024-01-01", "2024-01-03");
    publish_together(&ours, &three, 10, 1).await;

    // Another run, with its own view of the table, rewrites the first day (version 1).
    let other = sink(folder.path(), Strategy::Overwrite).await;
    publish_together(&other, &three[..1], 3, 2).await;

    // Ours, still at version 0, rewrites the first two days together: its commit removes
    // files of the first day that the other run already removed, so it conflicts. The
    // first day is the other run's now; the second goes alone, on top.
    let published = publish_together(&ours, &three[..2], 5, 3).await;
    let by_other = Published {
        version: 1,
        by: Committer::OtherRun {
            run_id: "run-2".into(),
        },
    };
    let ours_alone = Published {
        version: 2,
        by: Committer::ThisAttempt,
    };
    assert_eq!(published, [by_other, ours_alone]);
    let table = ours.reload().await.unwrap().unwrap();
    assert_eq!(table.version(), Some(2));
    assert_eq!(rows(&table).await, 3 + 5 + 10);
    assert_recorded(&table, &three[..1], 1, 2).await;
    assert_recorded(&table, &three[1..2], 2, 3).await;
}

#[tokio::test]
async fn a_group_that_conflicts_with_a_writer_of_another_pipeline_commits_none_of_its_slices() {
    let folder = tempfile::tempdir().unwrap();
    let ours = sink(folder.path(), Strategy::Overwrite).await;
    let three = days("2024-01-01", "2024-01-03");
    publish_together(&ours, &three, 10, 1).await;

    // A writer that is not this pipeline rewrites the first day.
    let other = sink_of("q", folder.path(), Strategy::Overwrite).await;
    let staged = stage(&other, &three[0], 0, 3).await;
    let record = SliceRecord {
        pipeline: "q".into(),
        ..record(&three[0], &staged, 1)
    };
    other
        .publish(&three[0], &staged, &record, None, &|_| {})
        .await
        .unwrap();

    let error = try_publish_together(&ours, &three[..2], 5, 2)
        .await
        .unwrap_err();
    assert!(error.is_transient(), "a conflict is retried: {error}");
    assert!(
        error.to_string().contains("slice 2024-01-01, 2024-01-02"),
        "{error}"
    );
    let table = ours.reload().await.unwrap().unwrap();
    assert_eq!(table.version(), Some(1), "nothing of the group landed");
    assert_eq!(rows(&table).await, 3 + 10 + 10);
    assert_recorded(&table, &three[1..], 0, 1).await;
    let left = std::fs::read_dir(folder.path().join("dt=2024-01-02")).unwrap();
    assert_eq!(left.count(), 1, "the group's staged files were removed");
}
