//! One attempt at one slice: plan it (skipping it if the pre-flight chose not to run it,
//! or if it needs no run after all), compute its output into staged files, check it, and
//! publish it with its record (or, for a rebuild, remember it for the swap). Each step
//! is told as a [`Phase`].

use std::time::{Duration, Instant};

use super::schedule::Slot;
use super::{millis, Phase, Publishing, Run, RunEvent};
use crate::assertions;
use crate::backfill::{Prepared, SlicePlan};
use crate::error::{Error, Result};
use crate::ledger::{AssertionResult, SliceRecord, SwapManifest};
use crate::lineage::AttemptFacts;
use crate::sink::{CommitStep, Committer, StagedOutput};
use crate::slice::Slice;
use crate::states::{SliceOutcome, SliceState};

/// A slice planned for an attempt: to compute, or settled without computing.
enum Planned {
    Compute(Box<SlicePlan>, Box<Prepared>),
    Settled(SliceOutcome),
}

/// When each step of an attempt ended, from its start, for the debug log.
struct Timings {
    started: Instant,
    planned: Duration,
    staged: Duration,
    checked: Duration,
}

impl Run {
    /// One attempt at `slice`, the `index`-th of the run, computing in `slot` (given up
    /// while the checked slice waits for its commit).
    pub(super) async fn run_slice(
        &self,
        slice: Slice,
        index: usize,
        attempt: u32,
        started: Instant,
        slot: &mut Option<Slot>,
        facts: &mut AttemptFacts,
    ) -> Result<SliceOutcome> {
        let key = slice.key.clone();
        self.phase(&key, Phase::Planning);
        let (planned, prepared) = match self.plan(slice, index).await? {
            Planned::Compute(planned, prepared) => (planned, prepared),
            Planned::Settled(status) => return Ok(status),
        };
        facts.sql = Some(planned.sql.clone());
        facts.files = planned.files.clone();
        facts.versions = self.backfill.sources.delta_versions();
        let planned_at = started.elapsed();
        self.phase(&key, Phase::Computing);
        let staged = self.stage(&planned, &prepared).await?;
        let staged_at = started.elapsed();
        self.phase(&key, Phase::Checking);
        let results = self.check(&planned.slice, &staged, facts).await?;
        let record = self.record(&planned, &staged, results, attempt, started);
        let timings = Timings {
            started,
            planned: planned_at,
            staged: staged_at,
            checked: started.elapsed(),
        };
        match self.backfill.sink.strategy().publishing() {
            Publishing::Swap => {
                self.phase(&key, Phase::Remembering);
                self.keep_for_swap(&planned, &staged, record).await
            }
            Publishing::Commits(_) => {
                // Computing is done: the slot goes to another slice while this one
                // waits for its commit.
                drop(slot.take());
                self.phase(&key, Phase::WaitingForCommit);
                self.publish(&planned.slice, &staged, &record, timings)
                    .await
            }
        }
    }

    /// Plans the slice against its sources as they are now, and settles it without
    /// computing when it needs no run after all, or when a rebuild staged it already.
    async fn plan(&self, slice: Slice, index: usize) -> Result<Planned> {
        let backfill = &self.backfill;
        let (planned, prepared) = backfill
            .plan_slice(
                slice,
                &self.recorded,
                self.options.reprocess,
                self.options.partitions_per_slice(),
            )
            .await?;
        if !planned.will_run {
            return Ok(Planned::Settled(SliceOutcome::Skipped {
                state: planned.state.name().to_string(),
            }));
        }
        let slice = &planned.slice;
        let budget = &self.options.budget;
        if self.unplanned[index] && !planned.empty_sources.is_empty() && !budget.allow_empty {
            // What the pre-flight refuses for every slice it planned.
            return Err(Error::Data {
                context: format!("slice {}", slice.key),
                message: format!(
                    "no source data ({}), and the pre-flight could not look before the run",
                    planned.empty_sources.join(", ")
                ),
            });
        }
        if let Some(problem) = &planned.problem {
            return Err(Error::Data {
                context: format!("slice {}", slice.key),
                message: problem.clone(),
            });
        }
        if let SliceState::Staged { staged, .. } = &planned.state {
            if backfill.sink.still_staged(staged).await? {
                let (rows, bytes) = (staged.record.rows, staged.record.bytes);
                self.remember_staged(staged.as_ref().clone());
                return Ok(Planned::Settled(SliceOutcome::Staged {
                    rows,
                    bytes,
                    reused: true,
                }));
            }
            tracing::warn!(slice = %slice.key, "staged files are gone: computing the slice again");
        }
        Ok(Planned::Compute(Box::new(planned), Box::new(prepared)))
    }

    /// Runs the slice's assertions over its staged output; a failed check (or one that
    /// cannot run) discards the staged files.
    async fn check(
        &self,
        slice: &Slice,
        staged: &StagedOutput,
        facts: &mut AttemptFacts,
    ) -> Result<Vec<AssertionResult>> {
        let backfill = &self.backfill;
        let checked = assertions::check(
            async || self.session().await,
            &backfill.pipeline.assertions,
            staged,
            &backfill.schema,
            &slice.variables(),
            &backfill.pipeline.file.display().to_string(),
        )
        .await;
        if let Ok(results) = &checked {
            facts.checks = results.clone();
        }
        match checked {
            Ok(results) if results.iter().all(|r| r.passed) => Ok(results),
            Ok(results) => {
                backfill.sink.discard(staged).await;
                let failures = results
                    .into_iter()
                    .filter(|r| !r.passed)
                    .map(|r| r.measured)
                    .collect();
                Err(Error::Assertion {
                    slice: slice.key.clone(),
                    failures,
                })
            }
            Err(error) => {
                backfill.sink.discard(staged).await;
                Err(error)
            }
        }
    }

    /// The record the slice's commit carries: what it read, wrote and checked, in which
    /// attempt of which run. Its `txn` version follows the slice's last commit.
    fn record(
        &self,
        planned: &SlicePlan,
        staged: &StagedOutput,
        assertions: Vec<AssertionResult>,
        attempt: u32,
        started: Instant,
    ) -> SliceRecord {
        let backfill = &self.backfill;
        let previous = planned.state.committed().map(|c| &c.record);
        SliceRecord {
            pipeline: backfill.pipeline.name.clone(),
            slice: planned.slice.key.clone(),
            run_id: self.run_id.clone(),
            attempt,
            strategy: backfill.pipeline.destination.strategy.name().to_string(),
            txn_version: previous.map_or(1, |p| p.txn_version + 1),
            rows: staged.rows,
            bytes: staged.bytes,
            duration_ms: millis(started.elapsed()),
            source_files: planned.files.len() as u64,
            source_bytes: planned.source_bytes(),
            source_fingerprint: planned.source_fingerprint.clone(),
            sql_fingerprint: backfill.sql_fingerprint.clone(),
            assertions,
            promoted_from: None,
            promoted_by: None,
            reads: planned.source_reads.clone(),
        }
    }

    /// A rebuild's checked slice: remembered durably for the swap that ends the run.
    async fn keep_for_swap(
        &self,
        planned: &SlicePlan,
        staged: &StagedOutput,
        record: SliceRecord,
    ) -> Result<SliceOutcome> {
        let backfill = &self.backfill;
        let staged_slice = SwapManifest {
            staging_key: backfill.staging_key(&planned.slice, &planned.source_fingerprint),
            record,
            adds: staged.adds.clone(),
            staged_at: self.options.clock.now(),
        };
        if let Err(error) = backfill.sink.remember(&staged_slice).await {
            backfill.sink.discard(staged).await;
            return Err(error);
        }
        self.remember_staged(staged_slice);
        Ok(SliceOutcome::Staged {
            rows: staged.rows,
            bytes: staged.bytes,
            reused: false,
        })
    }

    /// Publishes a checked slice in a commit, with other slices waiting at the same time.
    async fn publish(
        &self,
        slice: &Slice,
        staged: &StagedOutput,
        record: &SliceRecord,
        timings: Timings,
    ) -> Result<SliceOutcome> {
        let most = self.options.most_per_commit;
        let watch = |step: CommitStep<'_>| self.commit_step(step);
        let published = self
            .backfill
            .sink
            .publish(slice, staged, record, most, &watch)
            .await?;
        tracing::debug!(
            slice = %slice.key,
            planned_ms = millis(timings.planned),
            staged_ms = millis(timings.staged - timings.planned),
            checked_ms = millis(timings.checked - timings.staged),
            committed_ms = millis(timings.started.elapsed() - timings.checked),
            "slice published"
        );
        Ok(match published.by {
            Committer::ThisAttempt | Committer::EarlierAttempt => SliceOutcome::Committed {
                version: published.version,
                rows: staged.rows,
                bytes: staged.bytes,
            },
            Committer::OtherRun { run_id } => SliceOutcome::CommittedMeanwhile {
                by_run: run_id,
                version: published.version,
            },
        })
    }

    /// Tells a step of a commit this slice's task makes, for every slice in it.
    fn commit_step(&self, step: CommitStep<'_>) {
        match step {
            CommitStep::Committing { slices } => {
                for slice in slices {
                    self.phase(slice, Phase::Committing);
                }
            }
            CommitStep::Committed { version, slices } => self.tell(RunEvent::Committed {
                pipeline: self.pipeline().to_string(),
                version,
                slices: slices.to_vec(),
            }),
        }
    }
}
