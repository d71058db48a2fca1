//! Attempts at one slice: the time limit, and retries with exponential backoff and
//! jitter for failures that may pass (and only those).

use std::time::{Duration, Instant};

use super::schedule::Slot;
use super::{millis, Run, RunEvent};
use crate::error::Error;
use crate::history::Attempt;
use crate::lineage::AttemptFacts;
use crate::slice::Slice;
use crate::states::SliceOutcome;

impl Run {
    /// Runs a slice until it succeeds, fails for a reason retrying cannot fix, or has used
    /// its retries, starting in `slot`. Returns its status and the number of attempts.
    pub(super) async fn attempt_slice(
        &self,
        slice: &Slice,
        index: usize,
        slot: Slot,
    ) -> (SliceOutcome, u32) {
        let options = &self.options;
        let mut attempt = 0;
        let mut slot = Some(slot);
        loop {
            attempt += 1;
            if slot.is_none() {
                slot = Some(self.slots.take().await);
            }
            let started = Instant::now();
            let at = options.clock.now();
            self.lineage_emitted(self.lineage.attempt_started(index, slice, attempt, at));
            let mut facts = AttemptFacts::default();
            let running = self.run_slice(
                slice.clone(),
                index,
                attempt,
                started,
                &mut slot,
                &mut facts,
            );
            let result = match options.slice_timeout {
                None => running.await,
                Some(limit) => tokio::time::timeout(limit, running)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::execution(
                            format!("slice {}", slice.key),
                            format!("the attempt timed out after {limit:?}"),
                        ))
                    }),
            };
            // A failure that may pass, with its reason.
            let (status, passing) = match result {
                Ok(status) => (status, None),
                Err(error) => {
                    let failed = SliceOutcome::Failed {
                        error: error.to_string(),
                        fault: error.fault(),
                    };
                    (failed, error.is_transient().then(|| error.to_string()))
                }
            };
            let record = Attempt {
                slice: slice.key.clone(),
                attempt,
                status: status.clone(),
                duration_ms: millis(started.elapsed()),
                finished_at: options.clock.now(),
            };
            self.lineage_emitted(self.lineage.attempt_ended(index, &record, facts));
            self.record_attempt(index, record).await;
            let Some(reason) = passing.filter(|_| attempt <= options.retries) else {
                return (status, attempt);
            };
            // Nothing to compute while waiting to retry: the slot goes to another slice.
            slot = None;
            let wait = backoff(options.backoff, attempt);
            tracing::warn!(slice = %slice.key, attempt, "retrying in {wait:?} after a transient failure");
            self.tell(RunEvent::Retrying {
                pipeline: self.pipeline().to_string(),
                slice: slice.key.clone(),
                attempt,
                error: reason,
                wait_ms: millis(wait),
            });
            options.clock.sleep(wait).await;
        }
    }
}

impl Run {
    /// Records an attempt in the run history and tells the observer. Losing the record
    /// loses a line of history, never data: the Delta log says what is done.
    /// Records at once, in one history object, the slices the pre-flight chose not to run,
    /// and tells the observer of each as of any attempt.
    pub(super) async fn record_skipped(&self) {
        let now = self.options.clock.now();
        let (indices, attempts): (Vec<usize>, Vec<Attempt>) = (self.not_run.iter().enumerate())
            .filter_map(|(index, state)| {
                let attempt = Attempt {
                    slice: self.slices[index].key.clone(),
                    attempt: 1,
                    status: SliceOutcome::Skipped {
                        state: (*state)?.to_string(),
                    },
                    duration_ms: 0,
                    finished_at: now,
                };
                Some((index, attempt))
            })
            .unzip();
        if attempts.is_empty() {
            return;
        }
        if let Err(error) = self.history.skipped(&self.run_id, &attempts).await {
            // The Delta log, not the history, says what is done.
            tracing::warn!("could not record the skipped slices in the run history: {error}");
        }
        let mut folded = self.folded.lock().expect("not poisoned");
        attempts
            .iter()
            .for_each(|a| folded.fold_attempt(&self.run_id, a));
        drop(folded);
        for (index, attempt) in indices.into_iter().zip(attempts) {
            self.tell(RunEvent::Attempted {
                pipeline: self.pipeline().to_string(),
                index,
                attempt,
            });
        }
    }

    pub(super) async fn record_attempt(&self, index: usize, attempt: Attempt) {
        let event = RunEvent::Attempted {
            pipeline: self.pipeline().to_string(),
            index,
            attempt,
        };
        // `send` only warns when an attempt cannot be recorded.
        let _ = self.send(event).await;
    }
}

/// The wait before retry `attempt` (1, 2, ...): `base` doubled per attempt, scaled by a
/// random factor in [0.5, 1.5) so that slices failing together do not retry together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1 << (attempt - 1).min(16));
    doubled.mul_f64(rand::Rng::random_range(&mut rand::rng(), 0.5..1.5))
}
