//! A run's watch over its own history while it goes on: every second it looks for a stop
//! request that another process wrote next to the run's history (`backfill cancel`), and
//! every few seconds it rewrites the run's heartbeat there, with the slots in use and the
//! slices in flight (`InFlight`, kept from the run's events). A request found stops the
//! run as a first Ctrl-C does: no new slice starts, slices in flight finish their commit.
//!
//! These waits are real time whatever the run's clock: they pace requests to storage
//! for other processes to see, and a test clock that never waits would spin.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Observer, RunEvent, RunOptions};
use crate::history::{host, Heartbeat, History, SlotsInUse, HEARTBEAT_EVERY};

/// How often a run looks for a stop request.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Watches the run `run_id`, whose pipelines' histories are `histories`, until the token
/// returned is cancelled. The first heartbeat is written before this returns, so every
/// run that starts leaves one.
pub(super) async fn start(
    histories: Vec<History>,
    run_id: String,
    options: &RunOptions,
    observer: Arc<InFlight>,
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
    observer: Arc<InFlight>,
}

impl Watch {
    /// Rewrites the run's heartbeat in every pipeline's history.
    async fn beat(&self) {
        let (slots, in_flight) = self.observer.now();
        let heartbeat = Heartbeat {
            at: self.clock.now(),
            host: host(),
            pid: std::process::id(),
            slots: Some(slots),
            in_flight,
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

/// The run's observer, seen through: what the run is doing now, as its events tell it,
/// for the heartbeat.
pub(super) struct InFlight {
    observer: Arc<dyn Observer>,
    now: Mutex<Now>,
}

struct Now {
    slots: SlotsInUse,
    /// Slices started and not finished, by pipeline.
    slices: BTreeMap<String, BTreeSet<String>>,
}

impl InFlight {
    /// Sees `observer`'s events through for a run of `of` slots.
    pub(super) fn around(observer: Arc<dyn Observer>, of: usize) -> Arc<InFlight> {
        let now = Now {
            slots: SlotsInUse { in_use: 0, of },
            slices: BTreeMap::new(),
        };
        Arc::new(InFlight {
            observer,
            now: Mutex::new(now),
        })
    }

    /// The slots in use, and the slices in flight by pipeline.
    fn now(&self) -> (SlotsInUse, BTreeMap<String, Vec<String>>) {
        let now = self.now.lock().expect("not poisoned");
        let slices = (now.slices.iter())
            .filter(|(_, slices)| !slices.is_empty())
            .map(|(pipeline, slices)| (pipeline.clone(), slices.iter().cloned().collect()))
            .collect();
        (now.slots, slices)
    }
}

impl Observer for InFlight {
    fn on(&self, event: &RunEvent) {
        {
            let mut now = self.now.lock().expect("not poisoned");
            match event {
                RunEvent::Slots { in_use, of } => {
                    now.slots = SlotsInUse {
                        in_use: *in_use,
                        of: *of,
                    }
                }
                RunEvent::SliceStarted { pipeline, slice } => {
                    let slices = now.slices.entry(pipeline.clone()).or_default();
                    slices.insert(slice.clone());
                }
                RunEvent::SliceFinished { pipeline, outcome } => {
                    if let Some(slices) = now.slices.get_mut(pipeline) {
                        slices.remove(&outcome.slice);
                    }
                }
                _ => {}
            }
        }
        self.observer.on(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{FinishedSlice, Silent};
    use crate::SliceOutcome;

    #[test]
    fn in_flight_holds_the_slices_started_and_not_finished_and_the_slots_in_use() {
        let seen = InFlight::around(Arc::new(Silent), 2);
        let started = |slice: &str| RunEvent::SliceStarted {
            pipeline: "p".into(),
            slice: slice.into(),
        };
        seen.on(&started("d1"));
        seen.on(&RunEvent::Slots { in_use: 1, of: 2 });
        seen.on(&started("d2"));
        seen.on(&RunEvent::Slots { in_use: 2, of: 2 });
        seen.on(&RunEvent::SliceFinished {
            pipeline: "p".into(),
            outcome: FinishedSlice {
                slice: "d1".into(),
                status: SliceOutcome::Committed {
                    version: 0,
                    rows: 1,
                    bytes: 1,
                },
                duration_ms: 1,
                attempts: 1,
            },
        });
        seen.on(&RunEvent::Slots { in_use: 1, of: 2 });
        let (slots, in_flight) = seen.now();
        assert_eq!(slots, SlotsInUse { in_use: 1, of: 2 });
        assert_eq!(
            in_flight,
            BTreeMap::from([("p".to_string(), vec!["d2".to_string()])])
        );
    }
}
