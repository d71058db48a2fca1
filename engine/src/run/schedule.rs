//! Scheduling a pipeline's slices on the run's slots: in run order, each slice waits for
//! the upstream slices it reads, then for a slot, then runs its attempts on a task of
//! its own; once the run is asked to stop, no new slice starts.

use std::sync::Arc;
use std::time::Instant;

use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{millis, FinishedSlice, Observer, Run, RunEvent, RunSummary, WAITING_PER_SLOT};
use crate::error::{Error, Result};
use crate::history::RunHeader;
use crate::slice::Slice;
use crate::states::SliceOutcome;

/// The slots to compute a slice in, `concurrency` of them, shared by a run's pipelines;
/// every slot taken or given back is told as [`RunEvent::Slots`].
pub(crate) struct Slots {
    slots: Arc<Semaphore>,
    of: usize,
    observer: Arc<dyn Observer>,
}

/// A slot taken; given back when dropped.
pub(super) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Slots {
    pub(crate) fn new(of: usize, observer: Arc<dyn Observer>) -> Arc<Slots> {
        let of = of.max(1);
        Arc::new(Slots {
            slots: Arc::new(Semaphore::new(of)),
            of,
            observer,
        })
    }

    /// Waits for a slot.
    pub(super) async fn take(self: &Arc<Self>) -> Slot {
        let permit = self.slots.clone().acquire_owned().await;
        let slot = Slot {
            permit: Some(permit.expect("the slots are never closed")),
            slots: self.clone(),
        };
        self.tell();
        slot
    }

    fn tell(&self) {
        self.observer.on(&RunEvent::Slots {
            in_use: self.of - self.slots.available_permits(),
            of: self.of,
        });
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.slots.tell();
    }
}

impl Run {
    /// Runs this pipeline's part of the run: its history's header, its slices, then its
    /// end. A part that cannot go on leaves no downstream slice waiting for it.
    pub(super) async fn execute(self, selection: String) -> Result<RunSummary> {
        let run = Arc::new(self);
        let keys: Vec<String> = run.slices.iter().map(|s| s.key.clone()).collect();
        let summary = run.clone().start_and_schedule(selection, &keys).await;
        if let (Some(gates), Err(_)) = (&run.gates, &summary) {
            gates.settle_rest(run.pipeline(), &keys, None);
        }
        summary
    }

    async fn start_and_schedule(
        self: Arc<Self>,
        selection: String,
        keys: &[String],
    ) -> Result<RunSummary> {
        let options = &self.options;
        let header = RunHeader {
            run_id: self.run_id.clone(),
            pipeline: self.pipeline().to_string(),
            selection,
            slices: keys.len(),
            reprocess: options
                .reprocess
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            concurrency: options.concurrency.unwrap_or(1),
            retries: options.retries,
            started_at: options.clock.now(),
            promoted_from: None,
            cluster: super::cluster_of(options),
            started_by: Some(options.started_by.clone().unwrap_or_else(super::who)),
        };
        self.send(RunEvent::PipelineStarted { header }).await?;
        self.record_skipped().await;
        let finished = self.clone().schedule(self.slices.clone()).await?;
        self.finish(keys, finished).await
    }

    /// Starts the slices in run order, each on its own task once it may start, and
    /// returns each finished slice's outcome with its index; a slice never started has
    /// none.
    async fn schedule(
        self: Arc<Self>,
        slices: Vec<Slice>,
    ) -> Result<Vec<(usize, Option<FinishedSlice>)>> {
        let stop = self.options.stop.clone();
        let concurrency = self.options.concurrency.unwrap_or(1).max(1);
        futures::stream::iter(slices.into_iter().enumerate())
            // Asked each time a task ends: once stopping, no new slice starts.
            .take_while(move |_| std::future::ready(!stop.is_stopping()))
            // Upstream slices are waited for, and slots taken, here, one slice after the
            // other, so slices start in run order.
            .then(|(index, slice)| {
                let run = self.clone();
                async move {
                    let ready = match (&run.gates, run.not_run[index]) {
                        // Recorded as skipped already: it takes no slot.
                        (_, Some(state)) => Err(SliceOutcome::Skipped {
                            state: state.to_string(),
                        }),
                        (Some(gates), None) if !run.after[index].is_empty() => {
                            run.wait_for(gates, &run.after[index]).await
                        }
                        _ => Ok(()),
                    };
                    let slot = match ready {
                        Ok(()) => Ok(run.slots.take().await),
                        Err(status) => Err(status),
                    };
                    (index, slice, slot)
                }
            })
            // Each slice on its own task, so slices compute on all cores at once; a skipped
            // slice is only told about, here (a rerun of a long history skips thousands).
            .map(|(index, slice, slot)| {
                let skipped = matches!(slot, Err(SliceOutcome::Skipped { .. }));
                let task = self.clone().slice(index, slice, slot);
                if skipped {
                    task.map(Ok).left_future()
                } else {
                    tokio::spawn(task).right_future()
                }
            })
            .buffer_unordered(concurrency * (1 + WAITING_PER_SLOT))
            .map(|joined| {
                joined.map_err(|e| Error::Internal(format!("a slice task panicked: {e}")))
            })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// One slice's task: its attempts in `slot`, or its status if it may not start.
    async fn slice(
        self: Arc<Self>,
        index: usize,
        slice: Slice,
        slot: std::result::Result<Slot, SliceOutcome>,
    ) -> (usize, Option<FinishedSlice>) {
        let stop = &self.options.stop;
        if stop.is_stopping() {
            // Stopped while it waited for a slot: it never started.
            return (index, None);
        }
        let started = Instant::now();
        let (status, attempts) = match slot {
            Ok(slot) => {
                self.tell(RunEvent::SliceStarted {
                    pipeline: self.pipeline().to_string(),
                    slice: slice.key.clone(),
                });
                tokio::select! {
                    finished = self.attempt_slice(&slice, index, slot) => finished,
                    _ = stop.in_flight.cancelled() => (SliceOutcome::Abandoned, 1),
                }
            }
            Err(skipped @ SliceOutcome::Skipped { .. }) => (skipped, 1),
            Err(blocked) => (self.record_blocked(&slice, index, blocked).await, 0),
        };
        if let Some(gates) = &self.gates {
            gates.settle(self.pipeline(), &slice.key, &status);
        }
        let outcome = FinishedSlice {
            slice: slice.key,
            status,
            duration_ms: millis(started.elapsed()),
            attempts,
        };
        self.tell(RunEvent::SliceFinished {
            pipeline: self.pipeline().to_string(),
            outcome: outcome.clone(),
        });
        (index, Some(outcome))
    }
}
