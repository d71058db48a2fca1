//! The gates of a chained run: one per slice of every pipeline in it, which downstream
//! slices wait at until the upstream slices they read are in their table (open, with the
//! version that holds them) or will not be in this run (closed: failed, blocked, never
//! started). A slice's gate is settled once, when its outcome is known; a rebuild's
//! slices open together, with its swap.

use std::collections::HashMap;

use tokio::sync::watch;

use super::Run;
use crate::error::Error;
use crate::history::Attempt;
use crate::slice::Slice;
use crate::states::{RebuildOutcome, SliceOutcome};
use crate::upstream::UpstreamSlice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Pending,
    /// In the table as of `version` (0: it already was before the run).
    Open {
        version: u64,
    },
    Closed,
}

/// Every slice's gate in a chained run.
pub(crate) struct Gates {
    gates: HashMap<UpstreamSlice, watch::Sender<Gate>>,
}

impl Gates {
    /// Gates for `slices`, all pending.
    pub(crate) fn new(slices: impl IntoIterator<Item = UpstreamSlice>) -> Gates {
        let gates = slices
            .into_iter()
            .map(|slice| (slice, watch::Sender::new(Gate::Pending)))
            .collect();
        Gates { gates }
    }

    /// Settles `slice`'s gate from its outcome in this run. A rebuild's staged slices are
    /// settled by its swap ([`Gates::settle_rest`]).
    pub(crate) fn settle(&self, pipeline: &str, slice: &str, status: &SliceOutcome) {
        let gate = match status {
            SliceOutcome::Committed { version, .. }
            | SliceOutcome::CommittedMeanwhile { version, .. } => Gate::Open { version: *version },
            SliceOutcome::Skipped { .. } => Gate::Open { version: 0 },
            SliceOutcome::Staged { .. } => return,
            SliceOutcome::Failed { .. }
            | SliceOutcome::Abandoned
            | SliceOutcome::Blocked { .. } => Gate::Closed,
        };
        self.set(pipeline, slice, gate);
    }

    /// Settles the gates of `pipeline`'s slices that are still pending once its run is
    /// over: a rebuild's open with its swap; any other never started.
    pub(crate) fn settle_rest(
        &self,
        pipeline: &str,
        slices: &[String],
        rebuild: Option<&RebuildOutcome>,
    ) {
        let gate = match rebuild {
            Some(RebuildOutcome::Swapped { version, .. }) => Gate::Open { version: *version },
            Some(RebuildOutcome::Unchanged) => Gate::Open { version: 0 },
            _ => Gate::Closed,
        };
        for slice in slices {
            self.set(pipeline, slice, gate);
        }
    }

    fn set(&self, pipeline: &str, slice: &str, gate: Gate) {
        let key = UpstreamSlice {
            pipeline: pipeline.to_string(),
            slice: slice.to_string(),
        };
        if let Some(sender) = self.gates.get(&key) {
            sender.send_if_modified(|now| {
                let pending = *now == Gate::Pending;
                if pending {
                    *now = gate;
                }
                pending
            });
        }
    }

    /// Waits until every one of `slices` is settled: the newest version that holds them,
    /// per upstream pipeline, or the slices that will not be there.
    async fn wait(
        &self,
        slices: &[UpstreamSlice],
    ) -> std::result::Result<HashMap<String, u64>, Vec<String>> {
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut closed = Vec::new();
        for slice in slices {
            let Some(sender) = self.gates.get(slice) else {
                continue;
            };
            let mut receiver = sender.subscribe();
            let settled = receiver
                .wait_for(|gate| *gate != Gate::Pending)
                .await
                .map(|gate| *gate);
            match settled {
                Ok(Gate::Open { version }) => {
                    let newest = versions.entry(slice.pipeline.clone()).or_default();
                    *newest = (*newest).max(version);
                }
                // The senders live as long as the run: a dropped one is a closed gate.
                _ => closed.push(slice.to_string()),
            }
        }
        match closed.is_empty() {
            true => Ok(versions),
            false => Err(closed),
        }
    }
}

impl Run {
    /// Waits for the upstream slices `after` to be in their tables, then brings the
    /// sources that read them forward to those versions. A slice whose upstream slice
    /// failed, was blocked or never started is blocked; a stop ends the wait.
    pub(super) async fn wait_for(
        &self,
        gates: &Gates,
        after: &[UpstreamSlice],
    ) -> std::result::Result<(), SliceOutcome> {
        let stop = &self.options.stop;
        let versions = tokio::select! {
            waited = gates.wait(after) => waited.map_err(|by| SliceOutcome::Blocked { by })?,
            _ = stop.starting.cancelled() => return Err(SliceOutcome::Abandoned),
        };
        for upstream in &self.backfill.upstreams {
            let Some(version) = versions.get(&upstream.pipeline) else {
                continue;
            };
            let caught_up = self
                .backfill
                .sources
                .catch_up(&upstream.source, *version)
                .await;
            caught_up.map_err(|error: Error| SliceOutcome::Failed {
                error: error.to_string(),
                fault: error.fault(),
            })?;
        }
        Ok(())
    }

    /// Records in the run history that `slice` did not start, and why.
    pub(super) async fn record_blocked(
        &self,
        slice: &Slice,
        index: usize,
        status: SliceOutcome,
    ) -> SliceOutcome {
        let record = Attempt {
            slice: slice.key.clone(),
            attempt: 0,
            status: status.clone(),
            duration_ms: 0,
            finished_at: self.options.clock.now(),
        };
        self.record_attempt(index, record).await;
        status
    }
}
