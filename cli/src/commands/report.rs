//! `backfill report`: writes one run as a self-contained HTML page.

use std::path::PathBuf;

use anyhow::Context;
use backfill_engine::clock::{Clock, SystemClock};
use clap::Args;

use super::Outcome;
use crate::args::PipelineArgs;

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The run id, as `run` printed it and `history` lists it, or `latest`.
    run: String,
    /// Where to write the page.
    #[arg(short, long, default_value = "report.html")]
    output: PathBuf,
}

pub async fn execute(args: ReportArgs) -> anyhow::Result<Outcome> {
    let backfill = args.pipeline.open(None).await?;
    let record = backfill.run_record(&args.run).await?;
    let destination = backfill.pipeline().destination.url.to_string();
    let page = crate::report::render(&record, &destination, SystemClock.now())?;
    std::fs::write(&args.output, page)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!("wrote {}", args.output.display());
    Ok(Outcome::Success)
}
