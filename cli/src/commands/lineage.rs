//! `backfill lineage`: a run's OpenLineage events as it wrote them next to its history,
//! printed as JSON lines, or sent again to the collector the pipeline file or the
//! OpenLineage variables name.

use backfill_engine::Error;
use clap::Args;

use super::Outcome;
use crate::args::PipelineArgs;

#[derive(Args)]
pub struct LineageArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The run id, as `run` printed it and `history` lists it, or `latest`.
    run: String,
    /// Send the events to the collector (`[lineage] url`, or OPENLINEAGE_URL) instead of
    /// printing them: for a collector that was down during the run. The events keep the
    /// run's ids and times, so a collector records no run twice.
    #[arg(long)]
    send: bool,
}

pub async fn execute(args: LineageArgs) -> anyhow::Result<Outcome> {
    let backfill = args.pipeline.open(None).await?;
    let (run_id, events) = backfill.lineage_events(&args.run).await?;
    if events.is_empty() {
        eprintln!("run {run_id} wrote no lineage events: `[lineage] log` was off, OPENLINEAGE_DISABLED was set, or it ran before backfill wrote them");
        return Ok(Outcome::Success);
    }
    if !args.send {
        events.iter().for_each(|event| println!("{event}"));
        return Ok(Outcome::Success);
    }
    let pipeline = backfill.pipeline();
    let Some(collector) = &pipeline.lineage.http else {
        let message =
            "no OpenLineage collector to send to: give `[lineage] url` or set OPENLINEAGE_URL";
        return Err(Error::in_file(&pipeline.file, message).into());
    };
    let sent = backfill_engine::lineage::send(collector, &events).await?;
    eprintln!("sent {sent} events of run {run_id} to {}", collector.url);
    Ok(Outcome::Success)
}
