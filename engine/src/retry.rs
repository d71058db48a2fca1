//! Retrying reads that storage may fail for a moment.
//!
//! Owns [`RetryingStore`], which asks every storage read again, request by request, while
//! it fails for a passing reason (`store.rs`), and one small loop, [`patiently`], for the
//! few reads whose outcome decides what happens next (the log after a failed commit),
//! where even a fault past the store's retries should not leave an outcome unknown. A
//! slice's own retries, with jitter and the run's clock, are the runner's; this module
//! knows nothing of slices.

mod store;

use std::future::Future;
use std::time::Duration;

pub use store::{RequestRetry, RetryingStore};

/// Runs `read` up to `tries` times while it fails with an error `transient` accepts,
/// waiting 0.4 s, then 0.8 s, ... between tries; returns its last result.
pub(crate) async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    tries: u32,
    transient: impl Fn(&E) -> bool,
    mut read: impl FnMut() -> F,
) -> Result<T, E> {
    let mut tried = 0;
    loop {
        tried += 1;
        match read().await {
            Err(error) if tried < tries && transient(&error) => {
                tracing::warn!("{what} again after: {error}");
                tokio::time::sleep(Duration::from_millis(200 << tried)).await;
            }
            result => return result,
        }
    }
}
