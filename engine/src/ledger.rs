//! What the destination's Delta log says about each slice.
//!
//! Every slice commit carries its own record: an application transaction (`txn`) whose id
//! names the pipeline and slice, and a [`SliceRecord`] under the `backfill` key of the
//! commit's `commitInfo`. Both are in the same atomic commit as the data, so data and
//! progress can never disagree. A rebuild's swap commit carries a [`SwapRecord`] there
//! instead: the records of every slice now in the table. A swap replaced the whole table,
//! so records older than it no longer describe anything. A rebuild's [`SwapManifest`] is the
//! record of a checked slice waiting for its swap. This module only reads the log; writing
//! records is the sink's job.
//!
//! Reading every commit entry costs a request per commit, so a long history would make
//! every `plan` slower. The ledger of a pipeline as of a table version is therefore saved
//! as a summary under `_backfill/ledger/<pipeline>/<version>.json`; a reader takes the
//! newest summary of the same table and reads only the commit entries after it. Versions
//! of a Delta log never change once written, so a summary stays true for as long as its
//! table exists; one of a table since deleted and created again at the same place is told
//! apart by the table's id. Summaries are a cache: losing one only means more reading.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::kernel::Add;
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ResultExt};
use crate::source::Reads;

/// The key under which a slice's record sits in `commitInfo`.
pub const COMMIT_INFO_KEY: &str = "backfill";

/// The application transaction id of a pipeline's slice. Delta rejects two concurrent
/// commits with the same id, so a slice cannot be committed twice by racing runs.
pub fn app_id(pipeline: &str, slice: &str) -> String {
    format!("backfill:{pipeline}:{slice}")
}

/// The record a slice commit carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceRecord {
    pub pipeline: String,
    pub slice: String,
    pub run_id: String,
    /// Which attempt of the run made the commit (1, 2, ...). With `run_id` it names one
    /// attempt, so an attempt whose commit failed ambiguously can find out whether it
    /// landed. Records written before it existed read as 0.
    #[serde(default)]
    pub attempt: u32,
    pub strategy: String,
    /// The slice's application transaction version: 1 for its first commit, then 2, ...
    pub txn_version: i64,
    pub rows: u64,
    /// Bytes of Parquet the commit added.
    pub bytes: u64,
    pub duration_ms: u64,
    pub source_files: u64,
    pub source_bytes: u64,
    pub source_fingerprint: String,
    pub sql_fingerprint: String,
    pub assertions: Vec<AssertionResult>,
    /// The environment this slice was computed in, when it was promoted from there
    /// rather than computed in this table's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<String>,
    /// The promotion's run that committed this slice here, when it was promoted:
    /// `run_id` stays the run that computed it, in `promoted_from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_by: Option<String>,
    /// What the slice's plan read of each Parquet source, for a later plan to find its
    /// files again without planning it; absent when it cannot (see [`Reads`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<Reads>,
}

impl SliceRecord {
    /// The run that made this commit, as this table's history knows it: the promotion's
    /// run for a promoted slice, or the run that computed it.
    pub fn committed_by(&self) -> &str {
        self.promoted_by.as_deref().unwrap_or(&self.run_id)
    }
}

#[cfg(test)]
impl SliceRecord {
    /// A record of `slice` of pipeline `p`, committed by `run_id`, for tests to adjust.
    pub(crate) fn example(slice: &str, run_id: &str) -> Self {
        SliceRecord {
            pipeline: "p".into(),
            slice: slice.into(),
            run_id: run_id.into(),
            attempt: 1,
            strategy: "overwrite".into(),
            txn_version: 1,
            rows: 10,
            bytes: 100,
            duration_ms: 5,
            source_files: 1,
            source_bytes: 50,
            source_fingerprint: "files".into(),
            sql_fingerprint: "sql".into(),
            assertions: vec![],
            promoted_from: None,
            promoted_by: None,
            reads: None,
        }
    }
}

/// The record a rebuild's swap commit carries: every slice of the new table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapRecord {
    pub rebuild: RebuildRecord,
    pub slices: Vec<SliceRecord>,
}

/// What a swap replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildRecord {
    pub pipeline: String,
    pub run_id: String,
    /// The table version the rebuild read and replaced; `None` if there was no table.
    pub replaced_version: Option<u64>,
    pub removed_files: u64,
    pub added_files: u64,
}

/// The record a commit of several slices carries: one record per slice, each slice with
/// its own `txn` in the same commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub slices: Vec<SliceRecord>,
}

/// What `commitInfo.backfill` holds: one slice's record, a swap's, or a group's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommitRecord {
    Slice(SliceRecord),
    // Before `Group`: a swap's record has `slices` too, and `rebuild` besides.
    Swap(SwapRecord),
    Group(GroupRecord),
}

impl CommitRecord {
    /// The record carried by one commit entry of the log (`_delta_log/<version>.json`),
    /// if it is a `backfill` commit.
    pub fn in_commit_entry(entry: &[u8]) -> Option<CommitRecord> {
        record_in(&commit_info(entry)?)
    }

    /// The slice records it carries: one, or every slice of a swap or a group.
    pub fn slices(&self) -> &[SliceRecord] {
        match self {
            CommitRecord::Slice(record) => std::slice::from_ref(record),
            CommitRecord::Swap(swap) => &swap.slices,
            CommitRecord::Group(group) => &group.slices,
        }
    }
}

/// A slice's checked output, staged for a rebuild and remembered durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapManifest {
    /// Sums up everything the output depends on (see `Backfill::staging_key`); staged
    /// output is reused only while it matches.
    pub staging_key: String,
    /// The record the swap commit will carry for this slice.
    pub record: SliceRecord,
    /// The staged files, relative to the table's root, tagged with pipeline and slice.
    pub adds: Vec<Add>,
    pub staged_at: DateTime<Utc>,
}

/// The outcome of one assertion on one slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssertionResult {
    pub assertion: String,
    pub passed: bool,
    /// What was measured, e.g. `null rate of amount = 0.0034`.
    pub measured: String,
}

/// How many of a table's latest commits are read for other writers, before a rebuild's
/// swap or a promotion.
pub(crate) const RECENT_COMMITS: u64 = 20;

/// Commits among a table's latest that another writer made (another engine, or another
/// pipeline), which a rebuild's swap races: the swap is refused if one lands after the
/// rebuild read the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtherWriters {
    /// How many of the table's latest commits the others made, of how many read.
    pub commits: usize,
    pub of_latest: usize,
    /// When the newest of them was made.
    pub latest_at: Option<DateTime<Utc>>,
    /// Who made them, each once: `WRITE by delta-rs.1.1.3`, `pipeline orders_clean`.
    pub writers: Vec<String>,
}

impl OtherWriters {
    /// Reads the latest `latest` commit entries of `table` for commits that `pipeline`
    /// did not make; `None` if there are none.
    pub async fn of(
        table: &DeltaTable,
        pipeline: &str,
        latest: u64,
    ) -> Result<Option<OtherWriters>> {
        let Some(current) = table.version() else {
            return Ok(None);
        };
        let from = (current + 1).saturating_sub(latest);
        let store = table.log_store().object_store(None);
        let entries = commit_entries(store.as_ref(), from, current)
            .await
            .context(|| format!("reading the Delta log of {}", table.table_url()))?;
        let mut others = Vec::new();
        for (_, entry) in &entries {
            let Some(info) = commit_info(entry) else {
                continue;
            };
            let writer = match record_in(&info) {
                Some(record) => match record.slices().first() {
                    Some(slice) if slice.pipeline == pipeline => continue,
                    Some(slice) => format!("pipeline {}", slice.pipeline),
                    None => continue,
                },
                None => {
                    let text = |key: &str| info.get(key).and_then(|v| v.as_str());
                    let operation = text("operation").unwrap_or("a commit");
                    let engine = text("engineInfo").or_else(|| text("clientVersion"));
                    format!("{operation} by {}", engine.unwrap_or("an unnamed engine"))
                }
            };
            others.push((writer, committed_at(&info)));
        }
        if others.is_empty() {
            return Ok(None);
        }
        let latest_at = others.iter().filter_map(|(_, at)| *at).max();
        let mut writers: Vec<String> = others.iter().map(|(w, _)| w.clone()).collect();
        writers.sort();
        writers.dedup();
        Ok(Some(OtherWriters {
            commits: others.len(),
            of_latest: entries.len(),
            latest_at,
            writers,
        }))
    }
}

/// The `commitInfo` action of a commit entry, if it has one.
fn commit_info(entry: &[u8]) -> Option<serde_json::Value> {
    entry
        .split(|byte| *byte == b'\n')
        // Only the line of the `commitInfo` action is worth parsing.
        .filter(|line| line.windows(12).any(|w| w == b"\"commitInfo\""))
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .find_map(|mut action| Some(action.get_mut("commitInfo")?.take()))
}

/// The `backfill` record of a `commitInfo`, if it is a `backfill` commit.
fn record_in(info: &serde_json::Value) -> Option<CommitRecord> {
    serde_json::from_value(info.get(COMMIT_INFO_KEY)?.clone()).ok()
}

/// When the commit of a `commitInfo` was made.
fn committed_at(info: &serde_json::Value) -> Option<DateTime<Utc>> {
    let millis = info.get("timestamp")?.as_i64()?;
    DateTime::from_timestamp_millis(millis)
}

/// A committed slice as read back from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    pub record: SliceRecord,
    /// The table version of the commit, and when it was made.
    pub version: Option<u64>,
    pub committed_at: Option<DateTime<Utc>>,
}

/// Every slice record of one pipeline in a table's log.
#[derive(Debug, Default)]
pub struct Ledger {
    latest: HashMap<String, Arc<Committed>>,
}

/// Whether a reader may save a summary of what it read next to the table, so that the
/// next reader reads less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summaries {
    /// A run: it writes next to the table anyway.
    Save,
    /// `plan`, `status`: they write nothing, so read-only credentials are enough.
    ReadOnly,
}

/// A reader that read at least this many commit entries after the newest summary saves a
/// new one. Every commit costs a request, a summary a few.
const SAVE_AFTER: usize = 100;

/// The ledger of one pipeline as of one version of one table.
#[derive(Serialize, Deserialize)]
struct Summary {
    table_id: String,
    version: u64,
    slices: Vec<Arc<Committed>>,
}

impl Ledger {
    /// Reads the log of `table` (if it exists) for the records of `pipeline`: the newest
    /// summary, and the commit entries after it.
    pub async fn read(
        table: Option<&DeltaTable>,
        pipeline: &str,
        summaries: Summaries,
    ) -> Result<Self> {
        let save_after = (summaries == Summaries::Save).then_some(SAVE_AFTER);
        Self::read_saving_after(table, pipeline, save_after).await
    }

    async fn read_saving_after(
        table: Option<&DeltaTable>,
        pipeline: &str,
        save_after: Option<usize>,
    ) -> Result<Self> {
        let Some((table, current)) = table.and_then(|t| Some((t, t.version()?))) else {
            return Ok(Ledger::default());
        };
        let context = || format!("reading the Delta log of {}", table.table_url());
        let table_id = table
            .snapshot()
            .context(context)?
            .metadata()
            .id()
            .to_string();
        let store = table.log_store().object_store(None);
        let folder = Path::from(SUMMARIES).join(pipeline);
        let saved = newest_summary(store.as_ref(), &folder, &table_id, current).await;
        let from = saved.as_ref().map_or(0, |s| s.version + 1);
        let entries = commit_entries(store.as_ref(), from, current)
            .await
            .context(context)?;

        let mut latest = HashMap::new();
        let mut replaced_table = false;
        // Newest first: the first record of a slice is its latest commit.
        for (version, entry) in entries.iter().rev() {
            let Some(info) = commit_info(entry) else {
                continue;
            };
            let Some(found) = record_in(&info) else {
                continue;
            };
            let committed_at = committed_at(&info);
            for record in found.slices() {
                if record.pipeline == pipeline && !latest.contains_key(&record.slice) {
                    let committed = Arc::new(Committed {
                        record: record.clone(),
                        version: Some(*version),
                        committed_at,
                    });
                    latest.insert(record.slice.clone(), committed);
                }
            }
            // Whatever older commits wrote, of any pipeline, the swap removed.
            if matches!(found, CommitRecord::Swap(_)) {
                replaced_table = true;
                break;
            }
        }
        if let Some(saved) = saved.filter(|_| !replaced_table) {
            for committed in saved.slices {
                latest
                    .entry(committed.record.slice.clone())
                    .or_insert(committed);
            }
        }
        let ledger = Ledger { latest };
        if save_after.is_some_and(|after| entries.len() >= after) {
            let summary = Summary {
                table_id,
                version: current,
                slices: ledger.latest.values().cloned().collect(),
            };
            save_summary(store.as_ref(), &folder, &summary).await;
        }
        Ok(ledger)
    }

    pub fn get(&self, slice: &str) -> Option<&Arc<Committed>> {
        self.latest.get(slice)
    }

    /// All committed slices, ordered by slice key.
    pub fn committed(&self) -> Vec<&Committed> {
        let mut all: Vec<&Committed> = self.latest.values().map(Arc::as_ref).collect();
        all.sort_by(|a, b| a.record.slice.cmp(&b.record.slice));
        all
    }
}

const SUMMARIES: &str = "_backfill/ledger";

/// The summary in `folder` of the newest version up to `current` of the table `table_id`;
/// `None` if there is none, or it cannot be read (it is read again from the log).
async fn newest_summary(
    store: &dyn ObjectStore,
    folder: &Path,
    table_id: &str,
    current: u64,
) -> Option<Summary> {
    let saved = summaries_in(store, folder).await.ok()?;
    let candidates = saved
        .into_iter()
        .rev()
        .filter(|(version, _)| *version <= current);
    // A table created again at the same place may have older summaries of the first.
    for (_, path) in candidates {
        let Ok(got) = store.get(&path).await else {
            continue;
        };
        let Ok(bytes) = got.bytes().await else {
            continue;
        };
        match serde_json::from_slice::<Summary>(&bytes) {
            Ok(summary) if summary.table_id == table_id => return Some(summary),
            _ => continue,
        }
    }
    None
}

/// Saves `summary`, then deletes the summaries of older versions. Best effort: failing
/// only means the next reader reads more.
async fn save_summary(store: &dyn ObjectStore, folder: &Path, summary: &Summary) {
    let path = folder.clone().join(format!("{:020}.json", summary.version));
    let Ok(bytes) = serde_json::to_vec(summary) else {
        return;
    };
    if let Err(error) = store.put(&path, PutPayload::from(bytes)).await {
        tracing::warn!("could not save the ledger summary {path}: {error}");
        return;
    }
    let saved = summaries_in(store, folder).await.unwrap_or_default();
    for (_, path) in saved.iter().filter(|(v, _)| *v < summary.version) {
        let _ = store.delete(path).await;
    }
}

/// The summaries in `folder`, by the version each one is of, oldest first.
async fn summaries_in(
    store: &dyn ObjectStore,
    folder: &Path,
) -> object_store::Result<Vec<(u64, Path)>> {
    let listed: Vec<_> = store.list(Some(folder)).try_collect().await?;
    let mut saved: Vec<(u64, Path)> = listed
        .into_iter()
        .filter_map(|meta| {
            let name = meta.location.filename()?.strip_suffix(".json")?;
            Some((name.parse().ok()?, meta.location))
        })
        .collect();
    saved.sort();
    Ok(saved)
}

/// The commit entries of versions `from..=to` still in the log, oldest first. One listing
/// finds them (entries that expired with the log's retention are simply not there).
async fn commit_entries(
    store: &dyn ObjectStore,
    from: u64,
    to: u64,
) -> object_store::Result<Vec<(u64, Vec<u8>)>> {
    if from > to {
        return Ok(vec![]);
    }
    // Listed names come after the offset: `<from>.json` comes after `<from>`.
    let offset = Path::from(format!("_delta_log/{from:020}"));
    let listed: Vec<_> = store
        .list_with_offset(Some(&Path::from("_delta_log")), &offset)
        .try_collect()
        .await?;
    let mut versions: Vec<(u64, Path)> = listed
        .into_iter()
        .filter_map(|meta| {
            let name = meta.location.filename()?.strip_suffix(".json")?;
            let version = (name.len() == 20).then(|| name.parse().ok())??;
            Some((version, meta.location))
        })
        .filter(|(version, _)| (from..=to).contains(version))
        .collect();
    versions.sort();
    futures::stream::iter(versions)
        .map(|(version, path)| async move {
            let bytes = store.get(&path).await?.bytes().await?;
            Ok((version, bytes.to_vec()))
        })
        .buffered(READS_AT_ONCE)
        .try_collect()
        .await
}

/// Commit entries read at once: enough to hide an object store's latency.
const READS_AT_ONCE: usize = 16;

#[cfg(test)]
mod tests {
    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    use deltalake::kernel::{DataType, StructField};
    use deltalake::protocol::{DeltaOperation, SaveMode};

    use super::*;

    /// Commits nothing but `record` (as `backfill` would with a slice's files).
    async fn commit(table: &mut DeltaTable, record: &CommitRecord) {
        let value = serde_json::to_value(record).unwrap();
        let properties =
            CommitProperties::default().with_metadata([(COMMIT_INFO_KEY.to_string(), value)]);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let committed = CommitBuilder::from(properties)
            .build(
                Some(table.snapshot().unwrap()),
                table.log_store(),
                operation,
            )
            .await
            .unwrap();
        table.state = Some(committed.snapshot());
    }

    fn slice(key: &str, run: &str) -> SliceRecord {
        SliceRecord::example(key, run)
    }

    /// Each slice's run and version.
    fn seen(ledger: &Ledger) -> Vec<(&str, &str, Option<u64>)> {
        let committed = ledger.committed().into_iter();
        committed
            .map(|c| (c.record.slice.as_str(), c.record.run_id.as_str(), c.version))
            .collect()
    }

    async fn new_table(folder: &std::path::Path) -> DeltaTable {
        let url = url::Url::from_directory_path(folder).unwrap();
        deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .build()
            .unwrap()
            .create()
            .with_columns([StructField::new("id", DataType::LONG, true)])
            .await
            .unwrap()
    }

    fn summaries(folder: &std::path::Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(folder.join("_backfill/ledger/p")) else {
            return vec![];
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_saved_summary_answers_for_the_commits_it_covers_and_a_swap_after_it_voids_it() {
        let folder = tempfile::tempdir().unwrap();
        let mut table = new_table(folder.path()).await;
        commit(&mut table, &CommitRecord::Slice(slice("a", "r1"))).await;
        let group = GroupRecord {
            slices: vec![slice("b", "r2"), slice("c", "r2")],
        };
        commit(&mut table, &CommitRecord::Group(group)).await;
        let read_only = Ledger::read(Some(&table), "p", Summaries::ReadOnly).await;
        assert!(
            summaries(folder.path()).is_empty(),
            "read-only readers save nothing"
        );
        let whole_log = seen(&read_only.unwrap())
            .into_iter()
            .map(|(s, r, v)| (s.to_string(), r.to_string(), v))
            .collect::<Vec<_>>();
        let saving = Ledger::read_saving_after(Some(&table), "p", Some(3))
            .await
            .unwrap();
        assert_eq!(summaries(folder.path()), [format!("{:020}.json", 2)]);

        // The summary now answers for versions 0 to 2: their entries are not read again.
        for version in 0..=2 {
            let entry = folder.path().join(format!("_delta_log/{version:020}.json"));
            std::fs::write(entry, "not a commit entry").unwrap();
        }
        let from_summary = Ledger::read(Some(&table), "p", Summaries::ReadOnly)
            .await
            .unwrap();
        assert_eq!(seen(&from_summary), seen(&saving));
        let expected: Vec<_> = whole_log
            .iter()
            .map(|(s, r, v)| (s.as_str(), r.as_str(), *v))
            .collect();
        assert_eq!(seen(&from_summary), expected);
        assert_eq!(
            expected,
            [
                ("a", "r1", Some(1)),
                ("b", "r2", Some(2)),
                ("c", "r2", Some(2))
            ]
        );

        // A newer commit of a slice overrides the summary's; a newer summary replaces it.
        commit(&mut table, &CommitRecord::Slice(slice("b", "r3"))).await;
        commit(&mut table, &CommitRecord::Slice(slice("d", "r3"))).await;
        let ledger = Ledger::read_saving_after(Some(&table), "p", Some(2))
            .await
            .unwrap();
        let expected = [
            ("a", "r1", Some(1)),
            ("b", "r3", Some(3)),
            ("c", "r2", Some(2)),
            ("d", "r3", Some(4)),
        ];
        assert_eq!(seen(&ledger), expected);
        assert_eq!(summaries(folder.path()), [format!("{:020}.json", 4)]);

        // A swap after the summary removed everything before it.
        let swap = SwapRecord {
            rebuild: RebuildRecord {
                pipeline: "p".into(),
                run_id: "r4".into(),
                replaced_version: Some(4),
                removed_files: 0,
                added_files: 0,
            },
            slices: vec![slice("a", "r4")],
        };
        commit(&mut table, &CommitRecord::Swap(swap)).await;
        let ledger = Ledger::read(Some(&table), "p", Summaries::ReadOnly)
            .await
            .unwrap();
        assert_eq!(seen(&ledger), [("a", "r4", Some(5))]);
    }

    #[tokio::test]
    async fn a_summary_of_a_table_since_created_again_at_the_same_place_is_not_used() {
        let folder = tempfile::tempdir().unwrap();
        let mut first = new_table(folder.path()).await;
        commit(&mut first, &CommitRecord::Slice(slice("a", "r1"))).await;
        commit(&mut first, &CommitRecord::Slice(slice("b", "r1"))).await;
        Ledger::read_saving_after(Some(&first), "p", Some(1))
            .await
            .unwrap();
        assert_eq!(summaries(folder.path()), [format!("{:020}.json", 2)]);

        std::fs::remove_dir_all(folder.path().join("_delta_log")).unwrap();
        let mut second = new_table(folder.path()).await;
        commit(&mut second, &CommitRecord::Slice(slice("c", "r2"))).await;
        commit(&mut second, &CommitRecord::Slice(slice("d", "r2"))).await;
        let ledger = Ledger::read(Some(&second), "p", Summaries::ReadOnly)
            .await
            .unwrap();
        assert_eq!(seen(&ledger), [("c", "r2", Some(1)), ("d", "r2", Some(2))]);
    }

    #[tokio::test]
    async fn the_ledger_keeps_each_slices_newest_record_and_nothing_from_before_a_swap() {
        let folder = tempfile::tempdir().unwrap();
        let mut table = new_table(folder.path()).await;
        assert!(Ledger::read(None, "p", Summaries::ReadOnly)
            .await
            .unwrap()
            .committed()
            .is_empty());

        // v1: a and b (to be voided by the swap); v2: a group of b and c; v3: the swap of
        // c and d; v4: another pipeline's d; v5: a again.
        commit(&mut table, &CommitRecord::Slice(slice("a", "r1"))).await;
        let group = GroupRecord {
            slices: vec![slice("b", "r2"), slice("c", "r2")],
        };
        commit(&mut table, &CommitRecord::Group(group)).await;
        let swap = SwapRecord {
            rebuild: RebuildRecord {
                pipeline: "p".into(),
                run_id: "r3".into(),
                replaced_version: Some(2),
                removed_files: 0,
                added_files: 0,
            },
            slices: vec![slice("c", "r3"), slice("d", "r3")],
        };
        commit(&mut table, &CommitRecord::Swap(swap)).await;
        let other = SliceRecord {
            pipeline: "q".into(),
            ..slice("d", "r4")
        };
        commit(&mut table, &CommitRecord::Slice(other)).await;
        commit(&mut table, &CommitRecord::Slice(slice("a", "r5"))).await;

        let ledger = Ledger::read(Some(&table), "p", Summaries::ReadOnly)
            .await
            .unwrap();
        assert_eq!(
            seen(&ledger),
            [
                ("a", "r5", Some(5)),
                ("c", "r3", Some(3)),
                ("d", "r3", Some(3))
            ],
            "b was committed before the swap, which removed it"
        );
        let entry = std::fs::read(folder.path().join("_delta_log/00000000000000000003.json"));
        let record = CommitRecord::in_commit_entry(&entry.unwrap()).unwrap();
        assert!(matches!(record, CommitRecord::Swap(_)), "{record:?}");
        assert_eq!(record.slices().len(), 2);
    }
}
