//! Running a project: every pipeline's slices in one run, in dependency order slice by
//! slice. A downstream slice starts once the upstream slices it reads are in their
//! tables, so day 1 of an aggregate runs while day 5 of its facts computes; a failed
//! upstream slice blocks only the slices that read it. The pipelines share one
//! pre-flight, one run id and the same places to compute in.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::plan::runs;
use super::Project;
use crate::error::Result;
use crate::estimate::{chosen_concurrency, preflight};
use crate::run::gates::Gates;
use crate::run::{default_concurrency, new_run_id, Reporter, RunOptions, RunSummary, Shared};
use crate::slice::Selection;
use crate::upstream::UpstreamSlice;

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
    /// Runs every pipeline's selected slices that need it. The pre-flight (plans, empty
    /// sources, budgets) covers the whole project before any slice starts.
    pub async fn run(
        &self,
        selection: &Selection,
        options: &RunOptions,
        reporter: Arc<dyn Reporter>,
    ) -> Result<ProjectSummary> {
        let opened = self.open(Some(selection)).await?;
        let selections: Vec<Selection> = opened
            .iter()
            .map(|(_, own)| own.clone().expect("opened for a selection"))
            .collect();
        let mut running = HashSet::new();
        let mut launches = Vec::new();
        for ((backfill, _), selection) in opened.iter().zip(&selections) {
            let launch = backfill.launch(selection, options, &running).await?;
            running.extend(runs(&backfill.pipeline().name, &launch.planned));
            launches.push(launch);
        }
        let planned: Vec<_> = launches.iter().flat_map(|l| l.planned.clone()).collect();
        preflight(&planned, &options.budget)?;
        let concurrency = options
            .concurrency
            .unwrap_or_else(|| chosen_concurrency(&planned, default_concurrency()));
        let options = RunOptions {
            concurrency: Some(concurrency),
            ..options.clone()
        };
        let all_slices = opened.iter().zip(&launches).flat_map(|((b, _), l)| {
            l.planned.iter().map(|p| UpstreamSlice {
                pipeline: b.pipeline().name.clone(),
                slice: p.slice.key.clone(),
            })
        });
        let gates = Arc::new(Gates::new(all_slices));
        let shared = Shared::new(
            new_run_id(options.clock.now()),
            concurrency,
            Some(gates.clone()),
        );
        reporter.run_started(&shared.run_id, planned.len());
        let pipelines = opened.iter().zip(&selections).zip(launches);
        let runs = pipelines.map(|(((backfill, _), selection), launch)| {
            let (backfill, reporter, gates) = (backfill.clone(), reporter.clone(), gates.clone());
            let (options, shared) = (&options, &shared);
            async move {
                let name = backfill.pipeline().name.clone();
                let keys: Vec<String> =
                    launch.planned.iter().map(|p| p.slice.key.clone()).collect();
                let ran = backfill
                    .execute(selection, launch, options, shared, reporter)
                    .await;
                // A run that could not go on leaves no downstream slice waiting for it.
                gates.settle_rest(&name, &keys, None);
                ran
            }
        });
        let runs = futures::future::join_all(runs)
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(ProjectSummary {
            run_id: shared.run_id.clone(),
            environment: self.environment.clone(),
            runs,
        })
    }
}
