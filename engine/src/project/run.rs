//! Running a project: every pipeline's slices in one run, in dependency order slice by
//! slice. A downstream slice starts once the upstream slices it reads are in their
//! tables, so day 1 of an aggregate runs while day 5 of its facts computes; a failed
//! upstream slice blocks only the slices that read it. The pipelines share one
//! pre-flight, one run id and the same slots to compute in.

use std::sync::Arc;

use serde::Serialize;

use super::Project;
use crate::error::Result;
use crate::run::{run_pipelines, Member, Observer, RunOptions, RunSummary};
use crate::slice::Selection;

/// What a project's run did: each pipeline's run, upstream first.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectSummary {
    pub run_id: String,
    pub environment: String,
    pub runs: Vec<RunSummary>,
}

impl ProjectSummary {
    /// Whether the run left work undone that a rerun would do.
    pub fn incomplete(&self) -> bool {
        self.runs.iter().any(RunSummary::incomplete)
    }

    /// Whether it was stopped before it started every slice.
    pub fn stopped(&self) -> bool {
        self.runs.iter().any(|run| run.stopped)
    }
}

impl Project {
    /// Runs every pipeline's selected slices that need it, as one run (the path a single
    /// pipeline's run takes too). The pre-flight (plans, empty sources, budgets) covers the
    /// whole project before any slice starts.
    pub async fn run(
        &self,
        selection: &Selection,
        options: &RunOptions,
        observer: Arc<dyn Observer>,
    ) -> Result<ProjectSummary> {
        let members = self
            .open(Some(selection))
            .await?
            .into_iter()
            .map(|(backfill, own)| Member::new(backfill, &own.expect("opened for a selection")))
            .collect::<Result<Vec<_>>>()?;
        let (run_id, runs) = run_pipelines(members, options, observer).await?;
        Ok(ProjectSummary {
            run_id,
            environment: self.environment.clone(),
            runs,
        })
    }
}
