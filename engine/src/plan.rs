//! [`Plan`]: what `plan` shows before a run, as one value: every slice's [`SlicePlan`],
//! the estimate of the run, and for a rebuild what its swap would replace. `plan --json`
//! is this value serialized. Reading only.
//!
//! A plan's [`hash_of`] names what a run would decide, so that a run can be launched on
//! the condition that it still decides the same (`run --expect-plan`, the run page).

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::backfill::{Backfill, SlicePlan};
use crate::error::Result;
use crate::estimate::{chosen_concurrency, default_concurrency, Estimate, PlanOptions};
use crate::grid::Grid;
use crate::ledger::Summaries;
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
    /// What a run would decide, as [`hash_of`] names it.
    pub hash: String,
    /// For slices over several dimensions, their states by dimension and their holes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<Grid>,
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
        let lookback = self.lookback(selection)?;
        let slices = self.slices(selection)?;
        let mut slices =
            (self.plan_slices(slices, &recorded, reprocess, lookback, cores, None)).await?;
        self.wait_for_upstream(&mut slices, running, reprocess);
        // As a run without `allow_empty` would.
        lookback.await_data(&mut slices, false);
        let chosen = || chosen_concurrency(&slices, cores);
        let concurrency = options.concurrency.unwrap_or_else(chosen);
        let estimate = self
            .estimate(&slices, &recorded.ledger, concurrency, options)
            .await?;
        for slice in &mut slices {
            slice.estimated_ms = estimate.slice_ms(slice.source_bytes());
        }
        let rebuild = self.swap_preview(&slices).await?;
        let hash = hash_of([(self.pipeline.name.as_str(), slices.as_slice())]);
        let states = slices
            .iter()
            .map(|p| (p.slice.key.as_str(), p.shown_state()));
        let grid = Grid::of(&self.pipeline().slices, states);
        Ok(Plan {
            slices,
            estimate,
            rebuild,
            hash,
            grid,
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

/// A digest of what a run of these pipelines' plans would decide: for every slice (in
/// key order, whichever order a run takes them), its key, its state and the commit or
/// failure it comes from, whether it runs, its inputs and SQL, what it waits for, and
/// whether it could be planned. Estimates are left out: they are guesses, and a sample
/// slice's timing varies. Another run's commit, a changed source file or SQL, or another
/// choice of states changes it.
pub fn hash_of<'a>(pipelines: impl IntoIterator<Item = (&'a str, &'a [SlicePlan])>) -> String {
    let mut hash = Sha256::new();
    let mut field = |text: &str| {
        hash.update(text.as_bytes());
        hash.update([0]);
    };
    for (pipeline, slices) in pipelines {
        field(pipeline);
        let mut sorted: Vec<&SlicePlan> = slices.iter().collect();
        sorted.sort_by(|a, b| a.slice.key.cmp(&b.slice.key));
        for plan in sorted {
            field(&plan.slice.key);
            field(&state_of(&plan.state));
            field(if plan.will_run { "runs" } else { "kept" });
            field(&plan.source_fingerprint);
            field(&crate::source::fingerprint_text(&plan.sql));
            field(plan.problem.as_deref().unwrap_or(""));
            field(if plan.unplanned.is_some() {
                "unplanned"
            } else {
                ""
            });
            for upstream in &plan.after {
                field(&upstream.to_string());
            }
        }
    }
    hex::encode(&hash.finalize()[..8])
}

/// A slice's state and what it comes from: the commit (its version and run) or the run
/// that failed it.
fn state_of(state: &SliceState) -> String {
    let name = state.name();
    match state {
        SliceState::Missing => name.to_string(),
        SliceState::Failed { run_id, .. } => format!("{name} in {run_id}"),
        SliceState::Done { committed } | SliceState::Changed { committed, .. } => {
            format!(
                "{name} at {:?} by {}",
                committed.version, committed.record.run_id
            )
        }
        SliceState::Staged { staged_at, .. } => format!("{name} at {staged_at}"),
    }
}
