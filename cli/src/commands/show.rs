//! `backfill show`: one run, what it was asked to do and every attempt it made.

use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::history::{Liveness, RunRecord};
use clap::Args;

use super::Outcome;
use crate::args::PipelineArgs;
use crate::printer::{self, human_duration, timestamp};

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The run id, as `run` printed it and `history` lists it, or `latest`.
    run: String,
    /// Print the run and its attempts as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: ShowArgs) -> anyhow::Result<Outcome> {
    let backfill = args.pipeline.open(None).await?;
    let record = backfill.run_record(&args.run).await?;
    match args.json {
        true => printer::json(&record)?,
        false => print(&record),
    }
    Ok(Outcome::Success)
}

fn print(run: &RunRecord) {
    let header = &run.header;
    let promoted = match &header.promoted_from {
        Some(environment) => format!(", promoted from {environment}: no SQL ran"),
        None => String::new(),
    };
    println!(
        "run {} of {}: {} ({} slices){promoted}",
        header.run_id, header.pipeline, header.selection, header.slices
    );
    match header.promoted_from {
        Some(_) => println!("  started {}", timestamp(&header.started_at)),
        None => println!(
            "  started {}, reprocess {}, concurrency {}, retries {}",
            timestamp(&header.started_at),
            header.reprocess.join(","),
            header.concurrency,
            header.retries
        ),
    }
    match &run.end {
        Some(end) => {
            println!(
                "  ended {}: {} committed, {} skipped, {} failed",
                timestamp(&end.ended_at),
                end.committed,
                end.skipped,
                end.failed
            );
            if let Some(rebuild) = &end.rebuild {
                println!("  rebuild: {}", printer::describe_rebuild(rebuild));
            }
        }
        None => match run.liveness(SystemClock.now()) {
            Liveness::Running => println!("  running (its heartbeat is recent)"),
            _ => println!("  did not finish: killed or its machine lost (no recent heartbeat); its command finishes the job"),
        },
    }
    let rebuild = run.end.as_ref().and_then(|end| end.rebuild.as_ref());
    let mut table = printer::table(["slice", "attempt", "took", "outcome", ""], &[1, 2]);
    for attempt in &run.attempts {
        let words = printer::status_words_after(&attempt.status, rebuild);
        table.add_row([
            attempt.slice.clone(),
            attempt.attempt.to_string(),
            human_duration(attempt.duration_ms),
            words.label.to_string(),
            words.detail,
        ]);
    }
    printer::print_table(&table);
    for line in printer::not_committed_of(&run.last_attempts()) {
        println!("{line}");
    }
}
