//! The pre-flight of a run: every pipeline's slices planned (listings and footers, no
//! data) before any slice starts, upstream pipelines first, so that a downstream slice
//! knows which upstream slices of the run it waits for.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Member, RunOptions, PREFLIGHT_CONCURRENCY};
use crate::backfill::{Backfill, Lookback, Recorded, SlicePlan};
use crate::error::Result;
use crate::ledger::Summaries;
use crate::slice::Slice;
use crate::upstream::UpstreamSlice;

/// A pipeline's slices, planned before any starts.
pub(crate) struct Preflight {
    pub(crate) recorded: Arc<Recorded>,
    /// Each slice's plan, in run order.
    pub(crate) planned: Vec<SlicePlan>,
}

/// Plans every member's run, upstream first: each pipeline learns which slices the
/// pipelines before it run.
pub(super) async fn plan_all(members: &[Member], options: &RunOptions) -> Result<Vec<Preflight>> {
    let mut running = HashSet::new();
    let mut preflights = Vec::with_capacity(members.len());
    for member in members {
        let backfill = &member.backfill;
        let preflight = backfill
            .plan_run(member.slices.clone(), member.lookback, options, &running)
            .await?;
        running.extend(runs(&backfill.pipeline.name, &preflight.planned));
        preflights.push(preflight);
    }
    Ok(preflights)
}

/// Every slice of every member, as the gates of a chained run know them.
pub(super) fn all_slices(members: &[Member]) -> impl Iterator<Item = UpstreamSlice> + '_ {
    members.iter().flat_map(|member| {
        let pipeline = &member.backfill.pipeline.name;
        member.slices.iter().map(|slice| UpstreamSlice {
            pipeline: pipeline.clone(),
            slice: slice.key.clone(),
        })
    })
}

/// The slices of `pipeline` that a run of `plans` runs.
pub(crate) fn runs<'a>(
    pipeline: &'a str,
    plans: &'a [SlicePlan],
) -> impl Iterator<Item = UpstreamSlice> + 'a {
    plans.iter().filter(|p| p.will_run).map(|p| UpstreamSlice {
        pipeline: pipeline.to_string(),
        slice: p.slice.key.clone(),
    })
}

impl Backfill {
    /// The pre-flight of a run of `slices`: every source one its cluster can read, if it
    /// has one; every slice planned before any starts. The plans are not kept: each slice
    /// to run plans again when it starts, so it sees files that arrive in between; one
    /// whose planning outlasts the slice timeout is left to plan in its attempt. In a
    /// chained run, the upstream pipelines run the slices `running` first.
    pub(crate) async fn plan_run(
        self: &Arc<Self>,
        mut slices: Vec<Slice>,
        lookback: Lookback,
        options: &RunOptions,
        running: &HashSet<UpstreamSlice>,
    ) -> Result<Preflight> {
        #[cfg(feature = "cluster")]
        if options.cluster.is_some() {
            self.sources.check_portable()?;
        }
        if options.newest_first {
            slices.reverse();
        }
        let recorded = Arc::new(self.recorded(Summaries::Save).await?);
        let mut planned = self
            .plan_slices(
                slices,
                &recorded,
                options.reprocess,
                lookback,
                PREFLIGHT_CONCURRENCY,
                options.slice_timeout,
            )
            .await?;
        self.wait_for_upstream(&mut planned, running, options.reprocess);
        lookback.await_data(&mut planned, options.budget.allow_empty);
        Ok(Preflight { recorded, planned })
    }
}
