//! `backfill history`: the runs recorded next to the destination table.

use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::history::{Liveness, RunRecord};
use clap::Args;

use super::Outcome;
use crate::args::PipelineArgs;
use crate::printer::{self, timestamp};

#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Print the runs as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: HistoryArgs) -> anyhow::Result<Outcome> {
    let backfill = args.pipeline.open(None).await?;
    let runs = backfill.history().runs(&backfill.pipeline().name).await?;
    match args.json {
        true => printer::json(&runs)?,
        false => print(&runs),
    }
    Ok(Outcome::Success)
}

fn print(runs: &[RunRecord]) {
    let now = SystemClock.now();
    let mut table = printer::table(
        [
            "run",
            "started",
            "slices",
            "committed",
            "skipped",
            "failed",
            "selection",
        ],
        &[2, 3, 4, 5],
    );
    for run in runs {
        let header = &run.header;
        let counts = match (&run.end, run.liveness(now)) {
            (Some(end), _) => [end.committed, end.skipped, end.failed].map(|n| n.to_string()),
            (None, Liveness::Running) => ["(running)".to_string(), String::new(), String::new()],
            (None, _) => ["(killed)".to_string(), String::new(), String::new()],
        };
        let [committed, skipped, failed] = counts;
        table.add_row([
            header.run_id.clone(),
            timestamp(&header.started_at),
            header.slices.to_string(),
            committed,
            skipped,
            failed,
            match &header.promoted_from {
                Some(environment) => format!("{} promoted from {environment}", header.selection),
                None => header.selection.clone(),
            },
        ]);
    }
    printer::print_table(&table);
    println!("{}", printer::count(runs.len(), "run"));
}
