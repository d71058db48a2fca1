//! `backfill report`: writes one run as a self-contained HTML page: the run page as it
//! stands, with nothing to load, no script and no links.

use std::path::PathBuf;

use anyhow::Context;
use backfill_engine::clock::{Clock, SystemClock};
use clap::Args;

use super::Outcome;
use crate::args::PipelineArgs;
use crate::html::{RunView, Shown};

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
    let view = RunView::of(&record, Some(backfill.pipeline()), SystemClock.now());
    let page = view.page(Shown::Report)?;
    std::fs::write(&args.output, page)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!("wrote {}", args.output.display());
    Ok(Outcome::Success)
}
