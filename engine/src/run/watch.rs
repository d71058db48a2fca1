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

/// Watches the run `run_id`, whose pipelines' histories are `histories`, until `ended`.
pub(super) fn spawn(
    histories: Vec<History>,
    run_id: String,
    options: &RunOptions,
    observer: Arc<dyn Observer>,
) -> CancellationToken {
    let ended = CancellationToken::new();
    let (stop, clock, until) = (options.stop.clone(), options.clock.clone(), ended.clone());
    tokio::spawn(async move {
        let heartbeat = |at| Heartbeat {
            at,
            host: host(),
            pid: std::process::id(),
        };
        let mut looks = tokio::time::interval(LOOK_EVERY);
        let beats_every = (HEARTBEAT_EVERY.as_secs() / LOOK_EVERY.as_secs()).max(1);
        for look in 0u64.. {
            tokio::select! {
                _ = until.cancelled() => return,
                _ = looks.tick() => {}
            }
            if look.is_multiple_of(beats_every) {
                for history in &histories {
                    if let Err(error) = history.beat(&run_id, &heartbeat(clock.now())).await {
                        tracing::warn!("could not write the run's heartbeat: {error}");
                    }
                }
            }
            if stop.is_stopping() {
                continue;
            }
            for history in &histories {
                match history.stop_request(&run_id).await {
                    Ok(Some(request)) => {
                        stop.stop_starting();
                        observer.on(&RunEvent::StopRequested {
                            by: request.by,
                            requested_at: request.requested_at,
                        });
                        break;
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!("could not look for a stop request: {error}"),
                }
            }
        }
    });
    ended
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
