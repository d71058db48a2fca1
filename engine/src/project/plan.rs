//! Opening a project's pipelines for one selection, and [`ProjectPlan`]: every
//! pipeline's plan, in dependency order, as a run would take them. Reading only.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::Project;
use crate::backfill::{Backfill, OpenOptions};
use crate::error::{Error, Result, Setting};
use crate::estimate::PlanOptions;
use crate::plan::Plan;
use crate::run::runs;
use crate::slice::Selection;
use crate::source::Unwritten;
use crate::status::Status;
use crate::upstream::Upstream;

/// The plan of a project's run: each pipeline's, upstream first, and the whole run's.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectPlan {
    pub environment: String,
    pub pipelines: Vec<PipelinePlan>,
    pub total: Total,
    /// What a run of the project would decide, as [`crate::plan::hash_of`] names it.
    pub hash: String,
}

/// What the whole run would compute and read. Pipelines share the slots to compute in,
/// so the run takes about the sum of their durations. A slice waiting for upstream slices
/// reads what they write, which is known only once they have: it counts as a slice, not
/// in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Total {
    pub slices: usize,
    pub files: u64,
    pub bytes: u64,
    /// Slices that read what upstream slices of the run write first.
    pub after_upstream: usize,
    /// The sum of the pipelines' estimated durations, of those that have one.
    pub duration_ms: Option<u64>,
    /// Pipelines with slices to compute but no estimate (nothing to measure yet).
    pub unestimated: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelinePlan {
    pub pipeline: String,
    pub destination: String,
    /// The pipelines of the run it reads.
    pub upstream: Vec<String>,
    #[serde(flatten)]
    pub plan: Plan,
}

/// A project's pipelines opened, upstream first, each with the selection as its kind of
/// slices takes it; the sources that read another pipeline of the run know its slices.
pub(crate) type Opened = Vec<(Arc<Backfill>, Option<Selection>)>;

impl Project {
    /// Plans every pipeline's slices of `selection`, in dependency order: a slice that
    /// reads upstream slices a run would run first is shown `after` them.
    pub async fn plan(&self, selection: &Selection, options: &PlanOptions) -> Result<ProjectPlan> {
        let opened = self.open(Some(selection)).await?;
        let mut running = HashSet::new();
        let mut pipelines = Vec::new();
        for (backfill, own) in &opened {
            let own = own.as_ref().expect("opened for a selection");
            let plan = backfill.plan_after(own, options, &running).await?;
            let name = &backfill.pipeline().name;
            running.extend(runs(name, &plan.slices));
            pipelines.push(PipelinePlan {
                pipeline: name.clone(),
                destination: backfill.pipeline().destination.url.to_string(),
                upstream: backfill
                    .upstreams
                    .iter()
                    .map(|u| u.pipeline.clone())
                    .collect(),
                plan,
            });
        }
        let mut total = Total::default();
        for PipelinePlan { pipeline, plan, .. } in &pipelines {
            let estimate = &plan.estimate;
            total.slices += estimate.slices;
            total.files += estimate.files;
            total.bytes += estimate.bytes;
            total.after_upstream += plan
                .slices
                .iter()
                .filter(|s| s.will_run && !s.after.is_empty())
                .count();
            match estimate.duration_ms {
                Some(ms) => total.duration_ms = Some(total.duration_ms.unwrap_or(0) + ms),
                None if estimate.slices > 0 => total.unestimated.push(pipeline.clone()),
                None => {}
            }
        }
        let hash = crate::plan::hash_of(
            (pipelines.iter()).map(|p| (p.pipeline.as_str(), p.plan.slices.as_slice())),
        );
        Ok(ProjectPlan {
            environment: self.environment.clone(),
            pipelines,
            total,
            hash,
        })
    }

    /// What each pipeline's destination records, for a selection or (without one) for
    /// the slices it has committed.
    pub async fn status(&self, selection: Option<&Selection>) -> Result<Vec<(String, Status)>> {
        let opened = self.open(selection).await?;
        let mut statuses = Vec::new();
        for (backfill, own) in &opened {
            let status = backfill.status(own.as_ref()).await?;
            statuses.push((backfill.pipeline().name.clone(), status));
        }
        Ok(statuses)
    }

    /// Opens every pipeline, upstream first, as `validate` does one: sources resolved and
    /// SQL planned (over an upstream's columns where its table is not written yet).
    pub async fn validate(&self) -> Result<Vec<Arc<Backfill>>> {
        let opened = self.open(None).await?;
        Ok(opened.into_iter().map(|(backfill, _)| backfill).collect())
    }

    /// Refuses keys chosen for a dimension no pipeline has: each pipeline leaves out the
    /// dimensions it does not have, so a misspelt one would select nothing anywhere.
    fn check_dimensions(&self, selection: &Selection) -> Result<()> {
        let dimensions = self.pipelines.iter().flat_map(|p| &p.slices.keyed);
        let known: Vec<&str> = dimensions.map(|d| d.name.as_str()).collect();
        match selection.dimensions_named().find(|named| !known.contains(named)) {
            None => Ok(()),
            Some(unknown) => Err(Error::setting(
                &[Setting::Keys],
                format!(
                    "no pipeline of this project has a dimension `{unknown}`; their dimensions are {}",
                    if known.is_empty() { "days or hours alone".to_string() } else { known.join(", ") }
                ),
            )),
        }
    }

    /// Opens every pipeline for `selection` (as each one's kind of slices takes it),
    /// upstream first.
    pub(crate) async fn open(&self, selection: Option<&Selection>) -> Result<Opened> {
        if let Some(selection) = selection {
            self.check_dimensions(selection)?;
        }
        let mut opened: Vec<(Arc<Backfill>, Option<Selection>)> = Vec::new();
        // Each pipeline's sessions get a share of the memory one pipeline would.
        let memory_limit = OpenOptions::default().memory_limit / self.pipelines.len().max(1);
        for pipeline in &self.pipelines {
            let own = selection.map(|s| s.for_spec(&pipeline.slices));
            let mut chained = Vec::new();
            for source in &pipeline.sources {
                let Some(name) = &source.upstream else {
                    continue;
                };
                let Some((upstream, selected)) =
                    opened.iter().find(|(b, _)| &b.pipeline().name == name)
                else {
                    // Not in this run: its table is read as it is.
                    continue;
                };
                chained.push(Upstream {
                    source: source.name.clone(),
                    pipeline: name.clone(),
                    slices: match selected {
                        Some(selected) => upstream.slices(selected)?,
                        None => vec![],
                    },
                    unwritten: Unwritten {
                        schema: upstream.schema().clone(),
                        partition_by: upstream.pipeline().destination.partition_by.clone(),
                    },
                    rows: Default::default(),
                });
            }
            let options = OpenOptions {
                scope: own.clone(),
                memory_limit,
                ..OpenOptions::default()
            };
            let backfill = Backfill::open_chained(pipeline.clone(), options, chained).await?;
            opened.push((Arc::new(backfill), own));
        }
        Ok(opened)
    }
}
