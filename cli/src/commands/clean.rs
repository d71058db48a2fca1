//! `backfill clean`: deletes what attempts that never committed left in the table's
//! folder, refusing a window short enough to race a run still in flight.

use std::time::Duration;

use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::sink::clean::{CleanOptions, Cleaned};
use clap::Args;

use super::Outcome;
use crate::args::PipelineArgs;
use crate::printer::{self, human_bytes};

#[derive(Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Keep leftovers younger than this, e.g. 7d or 36h: an attempt still running may
    /// be about to commit a file it wrote. Under an hour needs --no-run-in-flight.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    older_than: Duration,
    /// Assert that no run of this pipeline is in flight anywhere, which allows
    /// --older-than under an hour.
    #[arg(long)]
    no_run_in_flight: bool,
    /// List what would be deleted without deleting it.
    #[arg(long)]
    dry_run: bool,
    /// Print the files deleted (or, with --dry-run, to delete) as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: CleanArgs) -> anyhow::Result<Outcome> {
    let options = CleanOptions {
        older_than: args.older_than,
        no_run_in_flight: args.no_run_in_flight,
        dry_run: args.dry_run,
    };
    let backfill = args.pipeline.open(None).await?;
    let cleaned = backfill.clean(&options, SystemClock.now()).await?;
    match args.json {
        true => printer::json(&cleaned)?,
        false => print(&cleaned),
    }
    Ok(Outcome::Success)
}

fn print(cleaned: &Cleaned) {
    let verb = if cleaned.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for path in &cleaned.deleted {
        println!("{verb} {path}");
    }
    println!(
        "{verb} {} leftover file(s), {}; {} younger one(s) kept",
        cleaned.deleted.len(),
        human_bytes(cleaned.bytes),
        cleaned.too_young
    );
}
