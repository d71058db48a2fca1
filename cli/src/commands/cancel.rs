//! `backfill cancel`: asks a run started anywhere (another terminal, another machine, a
//! scheduler) to stop, by writing a stop request next to its history. The run starts no
//! new slice, lets the slices in flight finish their commit, and ends with its summary,
//! as after a first Ctrl-C; the same command that started it finishes the job.

use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::history::StopRequest;
use backfill_engine::run::cancel::{request_stop, Asked, StopAsked};
use clap::Args;

use super::Outcome;
use crate::args::{PipelineArgs, ProjectArgs};
use crate::printer::{self, timestamp};

#[derive(Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    project: ProjectArgs,
    /// The run's id, as `run` printed it and `history` lists it, or `latest`.
    run: String,
    /// Print what became of the request as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: CancelArgs) -> anyhow::Result<Outcome> {
    let pipelines = args.pipeline.pipelines(&args.project)?;
    let request = StopRequest {
        requested_at: SystemClock.now(),
        by: backfill_engine::run::who(),
    };
    let asked = request_stop(&pipelines, &args.run, &request).await?;
    match args.json {
        true => printer::json(&asked)?,
        false => print(&asked),
    }
    Ok(Outcome::Success)
}

fn print(asked: &[StopAsked]) {
    for one in asked {
        let what = match &one.outcome {
            Asked::Now => "asked to stop: no new slice starts, and slices in flight finish their commit within seconds; the same command finishes the job".to_string(),
            Asked::Already { request } => format!(
                "already asked to stop by {} at {}",
                request.by,
                timestamp(&request.requested_at)
            ),
            Asked::Ended => "had ended: nothing to stop".to_string(),
            Asked::PresumedDead => "never ended and has left no heartbeat for a while: it was killed, and nothing runs; the same command finishes the job".to_string(),
        };
        println!("run {}, {}: {what}", one.run_id, one.pipeline);
    }
}
