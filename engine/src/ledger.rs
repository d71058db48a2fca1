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
