//! `backfill clean`: deletes what attempts that never committed left in the table's
//! folder, refusing a window short enough to race a run still in flight.

use std::time::Duration;

use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::sink::clean::Cleaned;
use clap::Args;

use super::Outcome;
use crate::args::PipelineArgs;
use crate::printer::{self, human_bytes};

/// The shortest `--older-than` allowed without --no-run-in-flight: longer than any
/// attempt's time between writing a file and committing it.
const SHORTEST_SAFE_WINDOW: Duration = Duration::from_secs(3600);

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
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: CleanArgs) -> anyhow::Result<Outcome> {
    if args.older_than < SHORTEST_SAFE_WINDOW && !args.no_run_in_flight {
        return Err(backfill_engine::Error::config(
            "--older-than",
            format!("{} could delete files that a run still in flight is about to commit, leaving the table pointing at missing files; use at least 1h, or stop every run of this pipeline and pass --no-run-in-flight", humantime::format_duration(args.older_than)),
        )
        .into());
    }
    let backfill = args.pipeline.open(None).await?;
    let now = SystemClock.now();
    let cleaned = backfill.clean(args.older_than, now, args.dry_run).await?;
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
