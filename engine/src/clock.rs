//! Time as the engine reads it: the wall clock stamped on records (run ids, attempts,
//! staged slices, promotions, heartbeats) and the waits between a slice's retries.
//! Injected through `RunOptions::clock`, so a test can run a whole backoff schedule at
//! once and read exact timestamps. Durations are measured with the monotonic clock
//! instead, and so are the waits that pace requests to storage or to other processes (a
//! read asked again, a run's watch for stop requests): they describe real time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
    /// Waits `duration`, or as a test clock sees fit.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// The real time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}
