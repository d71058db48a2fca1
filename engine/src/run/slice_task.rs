//! One attempt at one slice: skip it if the pre-flight chose not to run it, plan it, skip
//! it if it needs no run after all, execute its transform, stage the output, check it,
//! and publish it with its record (or, for a rebuild, remember it for the swap).

use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::{millis, Run};
use crate::assertions;
use crate::error::{Error, Result};
use crate::ledger::{SliceRecord, StagedSlice};
use crate::sink::strategy::Publishing;
use crate::sink::Committer;
use crate::slice::Slice;
use crate::states::{SliceState, SliceStatus};

impl Run {
    pub(super) async fn run_slice(
        &self,
        slice: Slice,
        index: usize,
        attempt: u32,
        started: Instant,
        place: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<SliceStatus> {
        if let Some(state) = self.not_run[index] {
            return Ok(SliceStatus::Skipped {
                state: state.to_string(),
            });
        }
        let backfill = &self.backfill;
        let (planned, prepared) = backfill
            .plan_slice(
                slice,
                &self.known,
                self.options.reprocess,
                self.options.partitions_per_slice(),
            )
            .await?;
        if !planned.will_run {
            return Ok(SliceStatus::Skipped {
                state: planned.state.name().to_string(),
            });
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
        if let Some(problem) = planned.problem {
            return Err(Error::Data {
                context: format!("slice {}", slice.key),
                message: problem,
            });
        }
        if let SliceState::Staged { staged, .. } = &planned.state {
            if backfill.sink.still_staged(staged).await? {
                let (rows, bytes) = (staged.record.rows, staged.record.bytes);
                self.remember_staged(staged.as_ref().clone());
                return Ok(SliceStatus::Staged {
                    rows,
                    bytes,
                    reused: true,
                });
            }
            tracing::warn!(slice = %slice.key, "staged files are gone: computing the slice again");
        }
        let previous = planned.state.committed().map(|c| &c.record);
        let planned_at = started.elapsed();
        let staged = self.stage(&planned, &prepared).await?;
        let staged_at = started.elapsed();

        let checked = assertions::check(
            async || self.session().await,
            &backfill.pipeline.assertions,
            &staged,
            &backfill.schema,
            &slice.variables(),
            &backfill.pipeline.file.display().to_string(),
        )
        .await;
        let results = match checked {
            Ok(results) if results.iter().all(|r| r.passed) => results,
            Ok(results) => {
                backfill.sink.discard(&staged).await;
                let failures = results
                    .into_iter()
                    .filter(|r| !r.passed)
                    .map(|r| r.measured)
                    .collect();
                return Err(Error::Assertion {
                    slice: slice.key.clone(),
                    failures,
                });
            }
            Err(error) => {
                backfill.sink.discard(&staged).await;
                return Err(error);
            }
        };

        let record = SliceRecord {
            pipeline: backfill.pipeline.name.clone(),
            slice: slice.key.clone(),
            run_id: self.run_id.clone(),
            attempt,
            strategy: backfill.pipeline.destination.strategy.name().to_string(),
            txn_version: previous.map_or(1, |p| p.txn_version + 1),
            rows: staged.rows,
            bytes: staged.bytes,
            duration_ms: millis(started.elapsed()),
            source_files: planned.files.len() as u64,
            source_bytes: planned.files.iter().map(|f| f.size).sum(),
            source_fingerprint: planned.source_fingerprint.clone(),
            sql_fingerprint: backfill.sql_fingerprint.clone(),
            assertions: results,
            promoted_from: None,
        };
        let checked_at = started.elapsed();
        match backfill.sink.strategy().publishing() {
            Publishing::Swap => {
                let staged_slice = StagedSlice {
                    staging_key: backfill.staging_key(slice, &planned.source_fingerprint),
                    record,
                    adds: staged.adds.clone(),
                    staged_at: self.options.clock.now(),
                };
                if let Err(error) = backfill.sink.remember(&staged_slice).await {
                    backfill.sink.discard(&staged).await;
                    return Err(error);
                }
                self.remember_staged(staged_slice);
                return Ok(SliceStatus::Staged {
                    rows: staged.rows,
                    bytes: staged.bytes,
                    reused: false,
                });
            }
            Publishing::Commits(_) => {}
        }
        // Computing is done: the place goes to another slice while this one waits for its
        // commit.
        drop(place.take());
        let most = self.options.most_per_commit;
        let published = backfill.sink.publish(slice, &staged, &record, most).await?;
        tracing::debug!(
            slice = %slice.key,
            planned_ms = millis(planned_at),
            staged_ms = millis(staged_at - planned_at),
            checked_ms = millis(checked_at - staged_at),
            committed_ms = millis(started.elapsed() - checked_at),
            "slice published"
        );
        Ok(match published.by {
            Committer::ThisAttempt | Committer::EarlierAttempt => SliceStatus::Committed {
                version: published.version,
                rows: staged.rows,
                bytes: staged.bytes,
            },
            Committer::OtherRun { run_id } => SliceStatus::CommittedMeanwhile {
                by_run: run_id,
                version: published.version,
            },
        })
    }
}
