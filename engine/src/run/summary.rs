//! What a run did: each slice's [`FinishedSlice`] and a pipeline's [`RunSummary`].

use serde::Serialize;

use crate::history::RunEnd;
use crate::states::{RebuildOutcome, SliceOutcome};

/// What became of one slice in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinishedSlice {
    pub slice: String,
    #[serde(flatten)]
    pub status: SliceOutcome,
    pub duration_ms: u64,
    /// Attempts made: 1 unless transient failures were retried.
    pub attempts: u32,
}

/// The result of a pipeline's run: every started slice's outcome, in run order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub pipeline: String,
    pub outcomes: Vec<FinishedSlice>,
    /// Whether the run was stopped before it had started every slice.
    pub stopped: bool,
    /// The selected slices it never started, in run order.
    pub not_started: Vec<String>,
    /// For a rebuild, whether and how the table was swapped.
    pub rebuild: Option<RebuildOutcome>,
}

impl RunSummary {
    pub fn count(&self, matches: impl Fn(&SliceOutcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| matches(&o.status)).count()
    }

    pub fn committed(&self) -> usize {
        self.count(|s| matches!(s, SliceOutcome::Committed { .. }))
    }

    pub fn skipped(&self) -> usize {
        self.count(|s| matches!(s, SliceOutcome::Skipped { .. }))
    }

    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, SliceOutcome::Failed { .. }))
    }

    pub fn blocked(&self) -> usize {
        self.count(|s| matches!(s, SliceOutcome::Blocked { .. }))
    }

    /// Slices in the table by this run or, meanwhile, by another.
    pub fn in_the_table(&self) -> usize {
        self.count(SliceOutcome::is_in_the_table)
    }

    /// Slices that ran and are not in the table: failed, blocked or abandoned.
    pub fn not_committed(&self) -> usize {
        self.count(SliceOutcome::is_not_committed)
    }

    /// Whether the run left work undone that a rerun would do: failed or blocked slices,
    /// or a rebuild that did not swap.
    pub fn incomplete(&self) -> bool {
        self.failed() + self.blocked() > 0
            || matches!(
                self.rebuild,
                Some(RebuildOutcome::Waiting { .. } | RebuildOutcome::Refused { .. })
            )
    }

    /// How the run ended, for its history.
    pub(crate) fn end(&self, ended_at: chrono::DateTime<chrono::Utc>) -> RunEnd {
        RunEnd {
            ended_at,
            committed: self.committed(),
            skipped: self.skipped(),
            failed: self.failed(),
            rebuild: self.rebuild.clone(),
            stopped: self.stopped,
        }
    }
}
