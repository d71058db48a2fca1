//! Attempts at one slice: the time limit, and retries with exponential backoff and
//! jitter for failures that may pass (and only those).

use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::{millis, Run};
use crate::error::Error;
use crate::history::Attempt;
use crate::slice::Slice;
use crate::states::SliceStatus;

impl Run {
    /// Runs a slice until it succeeds, fails for a reason retrying cannot fix, or has used
    /// its retries, starting in `place`. Returns its status and the number of attempts.
    pub(super) async fn attempt_slice(
        &self,
        slice: &Slice,
        index: usize,
        place: OwnedSemaphorePermit,
    ) -> (SliceStatus, u32) {
        let options = &self.options;
        let mut attempt = 0;
        let mut place = Some(place);
        loop {
            attempt += 1;
            if place.is_none() {
                place = Some(self.place().await);
            }
            let started = Instant::now();
            let running = self.run_slice(slice.clone(), index, attempt, started, &mut place);
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
            let (status, transient) = match result {
                Ok(status) => (status, false),
                Err(error) => {
                    let failed = SliceStatus::Failed {
                        error: error.to_string(),
                        fault: error.fault(),
                    };
                    (failed, error.is_transient())
                }
            };
            let record = Attempt {
                slice: slice.key.clone(),
                attempt,
                status: status.clone(),
                duration_ms: millis(started.elapsed()),
                finished_at: options.clock.now(),
            };
            if let Err(error) = self.history.attempt(&self.run_id, index, &record).await {
                // The Delta log, not the history, says what is done: losing this record
                // loses a line of history, never data.
                tracing::warn!(slice = %slice.key, "could not record the attempt in the run history: {error}");
            }
            if !transient || attempt > options.retries {
                return (status, attempt);
            }
            // Nothing to compute while waiting to retry: the place goes to another slice.
            place = None;
            let wait = backoff(options.backoff, attempt);
            tracing::warn!(slice = %slice.key, attempt, "retrying in {wait:?} after a transient failure");
            options.clock.sleep(wait).await;
        }
    }
}

/// The wait before retry `attempt` (1, 2, ...): `base` doubled per attempt, scaled by a
/// random factor in [0.5, 1.5) so that slices failing together do not retry together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1 << (attempt - 1).min(16));
    doubled.mul_f64(rand::Rng::random_range(&mut rand::rng(), 0.5..1.5))
}
