//! What the destination's Delta log says about each slice.
//!
//! Every slice commit carries its own record: an application transaction (`txn`) whose id
//! names the pipeline and slice, and a [`SliceRecord`] under the `backfill` key of the
//! commit's `commitInfo`. Both are in the same atomic commit as the data, so data and
//! progress can never disagree. A rebuild's swap commit carries a [`SwapRecord`] there
//! instead: the records of every slice now in the table. A swap replaced the whole table,
//! so records older than it no longer describe anything. A rebuild's [`StagedSlice`] is the
//! record of a checked slice waiting for its swap. This module only reads the log; writing
//! records is the sink's job.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deltalake::kernel::Add;
use deltalake::DeltaTable;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ResultExt};

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
        entry
            .split(|byte| *byte == b'\n')
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .find_map(|action| {
                let value = action.get("commitInfo")?.get(COMMIT_INFO_KEY)?;
                serde_json::from_value(value.clone()).ok()
            })
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
pub struct StagedSlice {
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

/// A committed slice as read back from the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Committed {
    pub record: SliceRecord,
    /// The table version of the commit, and when it was made.
    pub version: Option<u64>,
    pub committed_at: Option<DateTime<Utc>>,
}

/// Every slice record of one pipeline in a table's log.
#[derive(Debug, Default)]
pub struct Ledger {
    latest: HashMap<String, Committed>,
}

impl Ledger {
    /// Reads the log of `table` (if it exists) for the records of `pipeline`.
    pub async fn read(table: Option<&DeltaTable>, pipeline: &str) -> Result<Self> {
        let Some(table) = table else {
            return Ok(Ledger::default());
        };
        let context = || format!("reading the Delta log of {}", table.table_url());
        let current = table.version();
        let infos: Vec<_> = table.history(None).try_collect().await.context(context)?;
        let mut latest = HashMap::new();
        // History comes newest first; the first record of a slice is its latest commit.
        for (index, info) in infos.into_iter().enumerate() {
            let Some(value) = info.info.get(COMMIT_INFO_KEY) else {
                continue;
            };
            let Ok(found) = serde_json::from_value::<CommitRecord>(value.clone()) else {
                continue;
            };
            let (records, replaced_table) = match found {
                CommitRecord::Slice(record) => (vec![record], false),
                CommitRecord::Swap(swap) => (swap.slices, true),
                CommitRecord::Group(group) => (group.slices, false),
            };
            for record in records {
                if record.pipeline != pipeline || latest.contains_key(&record.slice) {
                    continue;
                }
                let committed = Committed {
                    record,
                    version: current.map(|v| v - index as u64),
                    committed_at: info.timestamp.and_then(DateTime::from_timestamp_millis),
                };
                latest.insert(committed.record.slice.clone(), committed);
            }
            // Whatever older commits wrote, of any pipeline, the swap removed.
            if replaced_table {
                break;
            }
        }
        Ok(Ledger { latest })
    }

    pub fn get(&self, slice: &str) -> Option<&Committed> {
        self.latest.get(slice)
    }

    /// All committed slices, ordered by slice key.
    pub fn committed(&self) -> Vec<&Committed> {
        let mut all: Vec<_> = self.latest.values().collect();
        all.sort_by(|a, b| a.record.slice.cmp(&b.record.slice));
        all
    }
}

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

    #[tokio::test]
    async fn the_ledger_keeps_each_slices_newest_record_and_nothing_from_before_a_swap() {
        let folder = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(folder.path()).unwrap();
        let mut table = deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .build()
            .unwrap()
            .create()
            .with_columns([StructField::new("id", DataType::LONG, true)])
            .await
            .unwrap();
        assert!(Ledger::read(None, "p")
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

        let ledger = Ledger::read(Some(&table), "p").await.unwrap();
        let seen: Vec<(&str, &str, Option<u64>)> = ledger
            .committed()
            .into_iter()
            .map(|c| (c.record.slice.as_str(), c.record.run_id.as_str(), c.version))
            .collect();
        assert_eq!(
            seen,
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
