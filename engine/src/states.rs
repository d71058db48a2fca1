//! The vocabulary of slice states, shared by every layer: what the Delta log says of a
//! slice before a run ([`SliceState`]), which states a run takes on ([`Reprocess`]), what
//! became of a slice in a run ([`SliceStatus`]) and how a rebuild ended for the table
//! ([`RebuildOutcome`]). Plain data: no IO, and nothing here decides a state.

use serde::{Deserialize, Serialize};

use crate::error::Fault;
use crate::ledger::{Committed, StagedSlice};

/// Which states of slices a run (re)processes; `plan` shows the same choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reprocess {
    pub missing: bool,
    pub changed: bool,
    pub failed: bool,
    /// Slices that are done, with unchanged inputs (`--force`).
    pub done: bool,
}

impl Default for Reprocess {
    /// Everything that is not done.
    fn default() -> Self {
        Reprocess {
            missing: true,
            changed: true,
            failed: true,
            done: false,
        }
    }
}

impl Reprocess {
    pub const ALL: Reprocess = Reprocess {
        missing: true,
        changed: true,
        failed: true,
        done: true,
    };
    pub const NOTHING: Reprocess = Reprocess {
        missing: false,
        changed: false,
        failed: false,
        done: false,
    };

    /// The chosen states, for people: `missing, changed, failed`.
    pub fn names(&self) -> Vec<&'static str> {
        let chosen = [
            (self.missing, "missing"),
            (self.changed, "changed"),
            (self.failed, "failed"),
            (self.done, "done"),
        ];
        chosen
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name)
            .collect()
    }

    pub fn wants(&self, state: &SliceState) -> bool {
        match state {
            SliceState::Missing => self.missing,
            SliceState::Failed { .. } => self.failed,
            SliceState::Changed { .. } => self.changed,
            SliceState::Done { .. } => self.done,
            // Checked output waiting for a rebuild's swap: finishing it costs no compute.
            SliceState::Staged { .. } => true,
        }
    }
}

/// What the Delta log says of a slice, compared with its inputs now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SliceState {
    /// Never committed.
    Missing,
    /// Never committed, and its last recorded attempt failed.
    Failed { run_id: String, error: String },
    /// Committed, and its source files and SQL are the ones recorded.
    Done { committed: Box<Committed> },
    /// Committed, but its source files or SQL differ from what the commit recorded.
    Changed {
        committed: Box<Committed>,
        what: Vec<String>,
    },
    /// Computed and checked for a rebuild that has not swapped yet; still valid for the
    /// slice's inputs, so a run reuses it instead of computing it again.
    Staged {
        rows: u64,
        bytes: u64,
        staged_at: chrono::DateTime<chrono::Utc>,
        #[serde(skip)]
        staged: Box<StagedSlice>,
    },
}

impl SliceState {
    pub fn name(&self) -> &'static str {
        match self {
            SliceState::Missing => "missing",
            SliceState::Failed { .. } => "failed",
            SliceState::Done { .. } => "done",
            SliceState::Changed { .. } => "changed",
            SliceState::Staged { .. } => "staged",
        }
    }

    pub fn committed(&self) -> Option<&Committed> {
        match self {
            SliceState::Missing | SliceState::Failed { .. } | SliceState::Staged { .. } => None,
            SliceState::Done { committed } | SliceState::Changed { committed, .. } => {
                Some(committed)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SliceStatus {
    /// Published in table version `version`.
    Committed { version: u64, rows: u64, bytes: u64 },
    /// Committed by another run (`by_run`, in table version `version`) after this run
    /// read the log; this run did not commit it again.
    CommittedMeanwhile { by_run: String, version: u64 },
    /// Checked and staged for a rebuild's swap, which has not happened (yet); `reused`
    /// when an earlier run had staged it.
    Staged { rows: u64, bytes: u64, reused: bool },
    /// Not run: its state (`done`, or one not chosen by `Reprocess`).
    Skipped { state: String },
    /// Nothing was committed; `fault` says whose move it is.
    Failed { error: String, fault: Fault },
    /// Left unfinished when the run was stopped; nothing was committed.
    Abandoned,
}

/// How a rebuild's run ended for the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "swap", rename_all = "snake_case")]
pub enum RebuildOutcome {
    /// One commit replaced the table: the staged slices' files in, every file not of a
    /// kept (done) slice out.
    Swapped {
        version: u64,
        removed_files: u64,
        added_files: u64,
        kept_slices: usize,
    },
    /// Every slice was done and the table held nothing else: nothing to commit.
    Unchanged,
    /// Not every slice is staged or done: nothing was committed. A rerun reuses what is
    /// staged and swaps once the rest passes.
    Waiting { staged: usize, waiting: Vec<String> },
    /// The swap itself failed (another writer committed, say): the table is unchanged
    /// and what was staged is kept for a rerun.
    Refused { error: String },
}
