//! The sink's view of its table: the table as last read, and which slices of the pipeline
//! commits since the sink opened carry.
//!
//! A run decides what to do from the log as it was when the run started. Other writers
//! (another run of the same backfill, say) may commit the same slices afterwards, and a
//! commit whose PUT failed ambiguously may have landed after all. Delta's conflict checker
//! only compares a commit with the versions after the snapshot it is built on, so the view
//! also reads every version it steps over and remembers the slice records they carry.
//! Before a slice commits, and after any commit fails, the sink asks the view who committed
//! that slice since the run read the log. Stepping over versions costs one read per version
//! someone else wrote; a run alone on its table reads nothing extra.

use std::collections::HashMap;

use deltalake::DeltaTable;

use crate::error::{Result, ResultExt};
use crate::ledger::{CommitRecord, SliceRecord};

/// The table as the sink last read it, and the slice commits it has stepped over.
pub(super) struct TableView {
    pub(super) table: Option<DeltaTable>,
    pipeline: String,
    /// The newest commit of each slice of the pipeline seen since the sink opened.
    slices: HashMap<String, Sighting>,
}

/// A slice commit the view stepped over.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sighting {
    pub(super) run_id: String,
    pub(super) attempt: u32,
    pub(super) version: u64,
}

impl Sighting {
    /// Whether this is the commit of the attempt that `record` describes.
    pub(super) fn is_attempt(&self, record: &SliceRecord) -> bool {
        self.run_id == record.run_id && self.attempt == record.attempt
    }
}

impl TableView {
    pub(super) fn new(pipeline: &str, table: Option<DeltaTable>) -> Self {
        TableView {
            table,
            pipeline: pipeline.to_string(),
            slices: HashMap::new(),
        }
    }

    pub(super) fn version(&self) -> Option<u64> {
        self.table.as_ref().and_then(|t| t.version())
    }

    /// The newest commit of `slice` made since the sink opened, if any.
    pub(super) fn sighting(&self, slice: &str) -> Option<&Sighting> {
        self.slices.get(slice)
    }

    /// Moves the view to `table`, reading the commits between the version it had and
    /// the new one, except `ours` (a commit this sink just made, whose record it knows).
    /// Returns the records of the commits it stepped over, by version.
    pub(super) async fn step_to(
        &mut self,
        table: Option<DeltaTable>,
        ours: Option<u64>,
    ) -> Result<Vec<(u64, CommitRecord)>> {
        let mut stepped_over = Vec::new();
        let from = self.version().map_or(0, |v| v + 1);
        if let Some(new) = &table {
            let to = new.version().unwrap_or_default();
            let context = || format!("reading the Delta log of {}", new.table_url());
            for version in (from..=to).filter(|v| Some(*v) != ours) {
                // A version whose entry is gone was cleaned up long ago: nothing this run
                // could have raced with.
                let Some(entry) = new
                    .log_store()
                    .read_commit_entry(version)
                    .await
                    .context(context)?
                else {
                    continue;
                };
                if let Some(record) = CommitRecord::in_commit_entry(&entry) {
                    self.saw(&record, version);
                    stepped_over.push((version, record));
                }
            }
        }
        self.table = table;
        Ok(stepped_over)
    }

    fn saw(&mut self, record: &CommitRecord, version: u64) {
        for slice in record.slices() {
            if slice.pipeline != self.pipeline {
                continue;
            }
            let sighting = Sighting {
                run_id: slice.run_id.clone(),
                attempt: slice.attempt,
                version,
            };
            self.slices.insert(slice.slice.clone(), sighting);
        }
    }
}
