//! [`Plan`]: what `plan` shows before a run, as one value: every slice's [`SlicePlan`],
//! the estimate of the run, and for a rebuild what its swap would replace. `plan --json`
//! is this value serialized. Reading only.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use crate::engine::{Backfill, SlicePlan};
use crate::error::Result;
use crate::estimate::{chosen_concurrency, Estimate, PlanOptions};
use crate::ledger::Summaries;
use crate::run::default_concurrency;
use crate::sink::rebuild::Replaced;
use crate::slice::Selection;
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
        let known = Arc::new(self.known(Summaries::ReadOnly).await?);
        let mut slices = self
            .plan_slices(self.slices(selection)?, &known, reprocess, cores)
            .await?;
        self.wait_for_upstream(&mut slices, running, reprocess);
        let chosen = || chosen_concurrency(&slices, cores);
        let concurrency = options.concurrency.unwrap_or_else(chosen);
        let estimate = self
            .estimate(&slices, &known.ledger, concurrency, options)
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
