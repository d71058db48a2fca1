//! A run's watch over its own history while it goes on: every second it looks for a stop
//! request that another process wrote next to the run's history (`backfill cancel`), and
//! every few seconds it rewrites the run's heartbeat there. A request found stops the run
//! as a first Ctrl-C does: no new slice starts, slices in flight finish their commit.
//!
//! These waits are real time whatever the run's clock: they pace requests to storage
//! for other processes to see, and a test clock that never waits would spin.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Observer, RunEvent, RunOptions};
use crate::history::{Heartbeat, History, HEARTBEAT_EVERY};

/// How often a run looks for a stop request.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Watches the run `run_id`, whose pipelines' histories are `histories`, until the token
/// returned is cancelled. The first heartbeat is written before this returns, so every
/// run that starts leaves one.
pub(super) async fn start(
    histories: Vec<History>,
    run_id: String,
    options: &RunOptions,
    observer: Arc<dyn Observer>,
) -> CancellationToken {
    let watch = Watch {
        histories,
        run_id,
        stop: options.stop.clone(),
        clock: options.clock.clone(),
        observer,
    };
    watch.beat().await;
    let ended = CancellationToken::new();
    let until = ended.clone();
    tokio::spawn(async move {
        let mut looks = tokio::time::interval(LOOK_EVERY);
        looks.tick().await;
        let beats_every = (HEARTBEAT_EVERY.as_secs() / LOOK_EVERY.as_secs()).max(1);
        for look in 1u64.. {
            tokio::select! {
                _ = until.cancelled() => return,
                _ = looks.tick() => {}
            }
            if look.is_multiple_of(beats_every) {
                watch.beat().await;
            }
            if !watch.stop.is_stopping() {
                watch.look_for_a_stop_request().await;
            }
        }
    });
    ended
}

/// What a run's watch needs.
struct Watch {
    histories: Vec<History>,
    run_id: String,
    stop: super::Stop,
    clock: Arc<dyn crate::clock::Clock>,
    observer: Arc<dyn Observer>,
}

impl Watch {
    /// Rewrites the run's heartbeat in every pipeline's history.
    async fn beat(&self) {
        let heartbeat = Heartbeat {
            at: self.clock.now(),
            host: host(),
            pid: std::process::id(),
        };
        for history in &self.histories {
            if let Err(error) = history.beat(&self.run_id, &heartbeat).await {
                tracing::warn!("could not write the run's heartbeat: {error}");
            }
        }
    }

    /// Stops the run as a first Ctrl-C does if anyone asked it to stop.
    async fn look_for_a_stop_request(&self) {
        for history in &self.histories {
            match history.stop_request(&self.run_id).await {
                Ok(Some(request)) => {
                    self.stop.stop_starting();
                    self.observer.on(&RunEvent::StopRequested {
                        by: request.by,
                        requested_at: request.requested_at,
                    });
                    return;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!("could not look for a stop request: {error}"),
            }
        }
    }
}

/// This machine's name, as far as the environment says.
pub fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".to_string())
}
