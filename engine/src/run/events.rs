//! What a run tells whoever watches it: a typed stream of [`RunEvent`]s, in the order
//! things happened, to an [`Observer`] (the CLI's progress bar and `--events` lines, a
//! test's recorder). The run history is written from the same events
//! ([`Run::send`]), so what is shown and what is recorded cannot disagree. This module
//! never prints; observers draw.

use serde::Serialize;

use super::{FinishedSlice, Run, RunSummary};
use crate::error::Result;
use crate::estimate::Estimate;
use crate::history::{Attempt, RunHeader};
pub use crate::states::RunStatus;

/// One thing that happened in a run (of one pipeline, or of a project's pipelines).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The pre-flight passed: the run starts with these slices.
    Started {
        run_id: String,
        pipelines: Vec<String>,
        /// Every selected slice, whether it will run or not.
        slices: usize,
        /// The slices the pre-flight chose to run (a chained run may add some).
        to_run: usize,
        /// Slots to compute in.
        concurrency: usize,
        /// What the slices to run read, and how long they should take from the
        /// throughput of the pipelines' committed slices, if they have any.
        estimate: Estimate,
    },
    /// One pipeline's part of the run starts; its run history's header.
    PipelineStarted { header: RunHeader },
    /// A slice took a slot and its first attempt starts.
    SliceStarted { pipeline: String, slice: String },
    /// A slice's attempt moved on to another phase.
    Phase {
        pipeline: String,
        slice: String,
        phase: Phase,
    },
    /// An attempt ended; its record in the run history.
    Attempted {
        pipeline: String,
        /// The slice's position in the run order.
        index: usize,
        attempt: Attempt,
    },
    /// An attempt failed for a reason that may pass: the slice is tried again after a
    /// wait.
    Retrying {
        pipeline: String,
        slice: String,
        /// The attempt that failed.
        attempt: u32,
        error: String,
        wait_ms: u64,
    },
    /// A commit landed with these slices (a rebuild's swap with all of its slices).
    Committed {
        pipeline: String,
        version: u64,
        slices: Vec<String>,
    },
    /// What became of a slice in this run.
    SliceFinished {
        pipeline: String,
        outcome: FinishedSlice,
    },
    /// Slots to compute in that are taken, of all of them.
    Slots { in_use: usize, of: usize },
    /// Another process asked the run to stop (`backfill cancel`): no new slice starts,
    /// and slices in flight finish their commit.
    StopRequested {
        by: String,
        requested_at: chrono::DateTime<chrono::Utc>,
    },
    /// The run took over a pipeline's lease that had expired: its holder was killed, or
    /// lost its machine, without giving it up.
    LeaseTakenOver {
        pipeline: String,
        from: crate::history::LeaseHolder,
    },
    /// One pipeline's part of the run ended: its summary.
    PipelineEnded { summary: RunSummary },
    /// An OpenLineage event the run emitted, for the console (`[lineage] console`).
    Lineage {
        pipeline: String,
        lineage: serde_json::Value,
    },
    /// The run ended.
    Ended {
        run_id: String,
        status: RunStatus,
        /// Slices in the table by this run (or another run meanwhile).
        committed: usize,
        /// Slices that ran and are not in the table: failed, blocked, abandoned.
        not_committed: usize,
        not_started: usize,
    },
}

/// Where a slice's attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Planning its transform against the sources as they are now.
    Planning,
    /// Running its transform into staged files, here or on a cluster.
    Computing,
    /// Running its assertions over the staged output.
    Checking,
    /// Checked, waiting for a commit to carry it (its slot went to another slice).
    WaitingForCommit,
    /// In a commit being made.
    Committing,
    /// A rebuild's slice: remembered for the swap that ends the run.
    Remembering,
}

/// How a run ends, from its pipelines' summaries.
impl RunStatus {
    /// How a run whose pipelines' summaries are `summaries` ended.
    pub fn of(summaries: &[RunSummary]) -> RunStatus {
        if summaries.iter().any(|s| s.stopped) {
            RunStatus::Stopped
        } else if summaries.iter().any(RunSummary::incomplete) {
            RunStatus::Incomplete
        } else {
            RunStatus::Done
        }
    }
}

/// Receives a run's events, in order. Called from the run's tasks: keep it quick.
pub trait Observer: Send + Sync {
    fn on(&self, event: &RunEvent);
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {
    fn on(&self, _event: &RunEvent) {}
}

impl Run {
    /// Sends `event` to the run history (the events it records) and then to the
    /// observer. Only a history that cannot be written fails.
    pub(super) async fn send(&self, event: RunEvent) -> Result<()> {
        match &event {
            RunEvent::PipelineStarted { header } => {
                self.history.start(header).await?;
                self.lineage_emitted(self.lineage.started(header, &self.slices));
            }
            RunEvent::Attempted { index, attempt, .. } => {
                (self.folded.lock().expect("not poisoned")).fold_attempt(&self.run_id, attempt);
                let recorded = self.history.attempt(&self.run_id, *index, attempt).await;
                if let Err(error) = recorded {
                    // The Delta log, not the history, says what is done: losing this
                    // record loses a line of history, never data.
                    tracing::warn!(slice = %attempt.slice, "could not record the attempt in the run history: {error}");
                }
            }
            RunEvent::PipelineEnded { summary } => {
                let end = summary.end(self.options.clock.now());
                self.history.end(&summary.run_id, &end).await?;
                let status = RunStatus::of(std::slice::from_ref(summary));
                self.lineage_emitted(self.lineage.ended(status, &end));
                let folded = std::mem::take(&mut *self.folded.lock().expect("not poisoned"));
                let pipeline = &self.backfill.pipeline.name;
                let saved = self.history.remember_ended(pipeline, &self.run_id, folded);
                if let Err(error) = saved.await {
                    // A summary is a cache: without it, the next reader reads this run.
                    tracing::warn!("could not save the history summary: {error}");
                }
            }
            _ => {}
        }
        self.observer.on(&event);
        Ok(())
    }

    /// Tells the observer of an OpenLineage event the run emitted, if it goes to the
    /// console.
    pub(super) fn lineage_emitted(&self, event: Option<serde_json::Value>) {
        if let Some(event) = event {
            self.tell(RunEvent::Lineage {
                pipeline: self.pipeline().to_string(),
                lineage: event,
            });
        }
    }

    /// Sends an event the run history does not record.
    pub(super) fn tell(&self, event: RunEvent) {
        self.observer.on(&event);
    }

    /// Tells the observer that `slice` of this run's pipeline moved to `phase`.
    pub(super) fn phase(&self, slice: &str, phase: Phase) {
        self.tell(RunEvent::Phase {
            pipeline: self.backfill.pipeline.name.clone(),
            slice: slice.to_string(),
            phase,
        });
    }
}
