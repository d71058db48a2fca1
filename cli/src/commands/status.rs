//! `backfill status`: what the destination's Delta log records for each slice, with the
//! last attempt's error and the durations' trend.

use backfill_engine::status::Status;
use clap::Args;

use super::Outcome;
use crate::args::{PipelineArgs, ProjectArgs, SelectionArgs, Target};
use crate::printer;
use crate::printer::status::{notes, row, COLUMNS};

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    project: ProjectArgs,
    /// Without a selection, every slice from the first to the last one committed or
    /// attempted (list slices: the pipeline's keys and every key seen).
    #[command(flatten)]
    selection: SelectionArgs,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: StatusArgs) -> anyhow::Result<Outcome> {
    let chosen = args.selection.given()?;
    match args.pipeline.target(&args.project, chosen.clone()).await? {
        Target::Pipeline(backfill) => {
            let status = backfill.status(chosen.as_ref()).await?;
            match args.json {
                true => printer::json(&status)?,
                false => print(&status),
            }
        }
        Target::Project(project) => {
            let statuses = project.status(chosen.as_ref()).await?;
            if args.json {
                let by_pipeline: serde_json::Map<String, serde_json::Value> = statuses
                    .iter()
                    .map(|(name, status)| Ok((name.clone(), serde_json::to_value(status)?)))
                    .collect::<serde_json::Result<_>>()?;
                printer::json(&by_pipeline)?;
                return Ok(Outcome::Success);
            }
            for (i, (name, status)) in statuses.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                println!("pipeline {name}");
                print(status);
            }
        }
    }
    Ok(Outcome::Success)
}

fn print(status: &Status) {
    if status.slices.is_empty() {
        println!("no slice committed or attempted yet");
        return;
    }
    match &status.grid {
        Some(grid) => printer::grid::print(grid),
        None => {
            let mut table = printer::table(COLUMNS, &[2, 3, 4, 5, 6]);
            for line in &status.slices {
                table.add_row(row(line));
            }
            printer::print_table(&table);
        }
    }
    let durations: Vec<Option<u64>> = status.slices.iter().map(|s| s.duration_ms).collect();
    if durations.iter().flatten().count() > 1 {
        println!("durations in slice order: {}", sparkline(&durations));
    }
    for line in notes(status) {
        println!("{line}");
    }
}

/// Durations as a line of bars, blank where a slice has none: the trend at a glance.
fn sparkline(durations: &[Option<u64>]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = durations
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    durations
        .iter()
        .map(|d| match d {
            Some(d) => BARS[((*d as f64 / max as f64) * (BARS.len() - 1) as f64).round() as usize],
            None => ' ',
        })
        .collect()
}
