//! Asking a run to stop from outside its process: a stop request written next to the
//! run's history in each pipeline's destination, which the run notices within a second
//! or two (see `watch.rs`) and treats as a first Ctrl-C. Writing the request is all this
//! does; the run decides how to stop.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::history::{Liveness, StopRequest};
use crate::pipeline::Pipeline;

/// What asking one pipeline's part of a run to stop did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StopAsked {
    pub run_id: String,
    pub pipeline: String,
    #[serde(flatten)]
    pub outcome: Asked,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "asked", rename_all = "snake_case")]
pub enum Asked {
    /// The request is written; the run will see it.
    Now,
    /// Someone asked already; the run sees their request.
    Already { request: StopRequest },
    /// The run had ended: nothing to stop.
    Ended,
    /// The run never ended and its heartbeat is stale: it was killed, and nothing runs to
    /// stop. Running the same command again finishes its work.
    PresumedDead,
}

/// Asks run `run` (an id, or `latest`: the newest run of any of `pipelines`) to stop in
/// the history of every pipeline of `pipelines` that has it. A run no pipeline knows is an
/// error naming where it was looked for.
pub async fn request_stop(
    pipelines: &[Pipeline],
    run: &str,
    request: &StopRequest,
) -> Result<Vec<StopAsked>> {
    let mut histories = Vec::with_capacity(pipelines.len());
    let mut newest = None;
    for pipeline in pipelines {
        let history = crate::sink::history_at(&pipeline.destination)?;
        let resolved = history.resolve(run, &pipeline.name).await?;
        newest = newest.max(resolved);
        histories.push(history);
    }
    let run_id = newest.unwrap_or_else(|| run.to_string());
    let run_id = run_id.as_str();
    let mut asked = Vec::new();
    for (pipeline, history) in pipelines.iter().zip(&histories) {
        let Some(liveness) = history.liveness(run_id, request.requested_at).await? else {
            continue;
        };
        let outcome = match liveness {
            Liveness::Ended => Asked::Ended,
            Liveness::PresumedDead => Asked::PresumedDead,
            Liveness::Running => match history.request_stop(run_id, request).await? {
                true => Asked::Now,
                false => Asked::Already {
                    request: history
                        .stop_request(run_id)
                        .await?
                        .unwrap_or(request.clone()),
                },
            },
        };
        asked.push(StopAsked {
            run_id: run_id.to_string(),
            pipeline: pipeline.name.clone(),
            outcome,
        });
    }
    if asked.is_empty() {
        let destinations: Vec<String> = pipelines
            .iter()
            .map(|p| p.destination.url.to_string())
            .collect();
        return Err(Error::config(
            "RUN",
            format!(
                "no run `{run}` in the history of {}; `backfill history` lists the runs",
                destinations.join(", ")
            ),
        ));
    }
    Ok(asked)
}
