//! [`Plan`]: what `plan` shows before a run, as one value: every slice's [`SlicePlan`],
//! the estimate of the run, and for a rebuild what its swap would replace. `plan --json`
//! is this value serialized. Reading only.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use crate::backfill::{Backfill, SlicePlan};
use crate::error::Result;
use crate::estimate::{chosen_concurrency, Estimate, PlanOptions};
use crate::ledger::Summaries;
use crate::run::default_concurrency;
use crate::sink::rebuild::Replaced;
use crate::slice::Selection;
use crate::states::SliceState;
use crate::upstream::UpstreamSlice;

/// The plan of a selection: every slice's plan, what a run would read and take, and for a
/// rebuild what its swap would replace.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub slices: Vec<SlicePlan>,
    pub estimate: Estimate,
    pub rebuild: Option<Replaced>,
}

impl Backfill {
    /// Plans every slice of a selection: its state, whether a run with the same
    /// `reprocess` choice would run it, what it reads, and an estimate of the whole.
    pub async fn plan(
        self: &Arc<Self>,
        selection: &Selection,
        options: &PlanOptions,
    ) -> Result<Plan> {
        self.plan_after(selection, options, &HashSet::new()).await
    }

    /// [`Backfill::plan`] in a chained run, whose upstream pipelines run the slices
    /// `running` first.
    pub(crate) async fn plan_after(
        self: &Arc<Self>,
        selection: &Selection,
        options: &PlanOptions,
        running: &HashSet<UpstreamSlice>,
    ) -> Result<Plan> {
        let cores = default_concurrency();
        let reprocess = options.reprocess;
        let recorded = Arc::new(self.recorded(Summaries::ReadOnly).await?);
        let mut slices = self
            .plan_slices(self.slices(selection)?, &recorded, reprocess, cores)
            .await?;
        self.wait_for_upstream(&mut slices, running, reprocess);
        let chosen = || chosen_concurrency(&slices, cores);
        let concurrency = options.concurrency.unwrap_or_else(chosen);
        let estimate = self
            .estimate(&slices, &recorded.ledger, concurrency, options)
            .await?;
        for slice in &mut slices {
            slice.estimated_ms = estimate.slice_ms(slice.source_bytes());
        }
        let rebuild = self.swap_preview(&slices).await?;
        Ok(Plan {
            slices,
            estimate,
            rebuild,
        })
    }
}

/// How many slices of a plan are in each state, and what a run would do with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub done: usize,
    pub missing: usize,
    pub changed: usize,
    pub failed: usize,
    /// Staged for a rebuild's swap: a run reuses them.
    pub staged: usize,
    /// Waiting for upstream slices of the run: their state is known once those are done.
    pub pending_upstream: usize,
    /// Slices a run would compute (staged ones are reused, not computed).
    pub to_compute: usize,
}

impl Counts {
    pub fn of(planned: &[SlicePlan]) -> Counts {
        let mut counts = Counts::default();
        for plan in planned {
            if plan.will_run && !matches!(plan.state, SliceState::Staged { .. }) {
                counts.to_compute += 1;
            }
            if !plan.after.is_empty() {
                counts.pending_upstream += 1;
                continue;
            }
            let count = match plan.state {
                SliceState::Done { .. } => &mut counts.done,
                SliceState::Missing => &mut counts.missing,
                SliceState::Changed { .. } => &mut counts.changed,
                SliceState::Failed { .. } => &mut counts.failed,
                SliceState::Staged { .. } => &mut counts.staged,
            };
            *count += 1;
        }
        counts
    }
}
