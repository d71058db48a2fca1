//! `backfill status`: what the destination's Delta log records for each slice, with the
//! last attempt's error and the durations' trend.

use std::collections::HashSet;

use backfill_engine::slice::{describe_spans, spans};
use backfill_engine::status::{SliceLine, Status, SKEW_FACTOR};
use clap::Args;

use super::Outcome;
use crate::args::{PipelineArgs, ProjectArgs, SelectionArgs, Target};
use crate::printer::{self, human_bytes, human_duration, or_blank};

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
    let chosen = args.selection.given();
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

/// The columns of the status table, and which of them hold numbers.
pub const COLUMNS: [&str; 9] = [
    "slice",
    "state",
    "rows",
    "bytes",
    "computed in",
    "retries",
    "version",
    "run",
    "note",
];

fn print(status: &Status) {
    if status.slices.is_empty() {
        println!("no slice committed or attempted yet");
        return;
    }
    let mut table = printer::table(COLUMNS, &[2, 3, 4, 5, 6]);
    for line in &status.slices {
        table.add_row(row(line));
    }
    printer::print_table(&table);
    let durations: Vec<Option<u64>> = status.slices.iter().map(|s| s.duration_ms).collect();
    if durations.iter().flatten().count() > 1 {
        println!("durations in slice order: {}", sparkline(&durations));
    }
    for line in notes(status) {
        println!("{line}");
    }
}

/// One slice's row of the status table, as `status` prints it and the run page shows it.
pub fn row(s: &SliceLine) -> [String; 9] {
    let note = match (&s.last_error, s.skewed) {
        (Some(error), _) => error.clone(),
        (None, true) => format!("skewed: over {SKEW_FACTOR}x the median"),
        (None, false) => String::new(),
    };
    [
        s.slice.clone(),
        s.state.to_string(),
        or_blank(s.rows),
        or_blank(s.bytes.map(human_bytes)),
        or_blank(s.duration_ms.map(human_duration)),
        s.retries.to_string(),
        or_blank(s.version),
        or_blank(s.run_id.clone()),
        note,
    ]
}

/// What the status table adds up to: the counts, and the slices not done in spans.
pub fn notes(status: &Status) -> Vec<String> {
    let median = status
        .median_duration_ms
        .map(|m| format!(", median duration {}", human_duration(m)))
        .unwrap_or_default();
    let skewed = status.slices.iter().filter(|s| s.skewed).count();
    let mut notes = vec![format!(
        "{} done, {} remaining ({} failed, {} missing){median}, {skewed} skewed",
        status.done,
        status.remaining,
        status.failed,
        status.remaining - status.failed
    )];
    let not_done: HashSet<&str> = (status.slices.iter())
        .filter(|s| s.state != "done")
        .map(|s| s.slice.as_str())
        .collect();
    let keys = status.slices.iter().map(|s| s.slice.as_str());
    let not_done = spans(keys, |key| not_done.contains(key));
    if !not_done.is_empty() {
        notes.push(format!("not done: {}", describe_spans(&not_done)));
    }
    notes
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
