//! `backfill run`: runs the selected slices that need it, with live progress, Ctrl-C
//! handling and a summary that says exactly what is in the table.

use std::collections::HashMap;
use std::sync::Arc;

use backfill_engine::estimate::Budget;
use backfill_engine::run::{LeaseWait, Observer, Stop};
use backfill_engine::slice::{describe_spans, spans};
use backfill_engine::{RunOptions, RunSummary, SliceOutcome};
use clap::Args;

use super::Outcome;
use crate::args::{ChoiceArgs, PipelineArgs, ProjectArgs, SelectionArgs, Target};
use crate::printer;
use crate::progress::{JsonLines, Progress};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    selection: SelectionArgs,
    #[command(flatten)]
    choice: ChoiceArgs,
    /// Slices computed at once; checked slices waiting for their commit do not count
    /// [default: one per core, or 8 per core when nine in ten slices to compute read at
    /// most 8 MiB].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
    /// Commit at most N slices together [default: every checked slice waiting for a
    /// commit, up to 128]; 1 commits each slice on its own.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    max_slices_per_commit: Option<u16>,
    /// Further attempts for a slice that failed for a transient reason (storage, a
    /// conflict with another writer, the time limit), with exponential backoff and
    /// jitter. Failed checks, SQL errors and bad data are never retried.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Fail an attempt that runs longer than this, e.g. 90s or 15m, as a transient fault
    /// (so it is retried) [default: no limit; storage requests and cluster jobs have
    /// their own].
    #[arg(long, value_parser = humantime::parse_duration)]
    slice_timeout: Option<std::time::Duration>,
    /// Run the slices oldest first (asc) or newest first (desc).
    #[arg(long, value_enum, default_value_t = Order::Asc)]
    order: Order,
    /// Run slices whose sources have no files for them (by default, run refuses to
    /// start: expired data, a wrong path or a wrong range would pass silently).
    #[arg(long)]
    allow_empty: bool,
    /// Refuse to start if the slices to run would read more than this, e.g. 50GiB.
    #[arg(long, value_name = "SIZE")]
    max_bytes: Option<bytesize::ByteSize>,
    /// Refuse to start if more than this many slices would run.
    #[arg(long, value_name = "N")]
    max_slices: Option<usize>,
    /// Run only if the plan is still the one `plan` showed with this hash; if another
    /// run committed, a source or the SQL changed, or the arguments differ, refuse
    /// before any slice starts.
    #[arg(long, value_name = "HASH")]
    expect_plan: Option<String>,
    /// While another run holds the pipeline's lease, wait for it (at most this long, e.g.
    /// 30m) instead of exiting at once with code 75.
    #[arg(long, value_name = "LIMIT", num_args = 0..=1, default_missing_value = "1h",
          value_parser = humantime::parse_duration, conflicts_with = "no_lease")]
    wait: Option<std::time::Duration>,
    /// Run without taking the pipeline's lease, even while another run holds it. Still
    /// safe (each slice commits once, as the Delta log decides); the two runs may compute
    /// the same slices twice.
    #[arg(long)]
    no_lease: bool,
    /// Print a JSON summary instead of a line per slice.
    #[arg(long)]
    json: bool,
    /// Print every event of the run (phases, retries, commits, slots, outcomes, the
    /// summary) as a JSON line, as it happens, for a program watching the run.
    #[arg(long, conflicts_with = "json")]
    events: bool,
    #[cfg(feature = "cluster")]
    #[command(flatten)]
    cluster: crate::args::ClusterArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Order {
    Asc,
    Desc,
}

pub async fn execute(args: RunArgs) -> anyhow::Result<Outcome> {
    // An unreachable scheduler stops the run before anything is opened or written.
    #[cfg(feature = "cluster")]
    let cluster = args.cluster.connect().await?;
    let selection = args.selection.selection()?;
    let target = args
        .pipeline
        .target(&args.project, Some(selection.clone()))
        .await?;
    let options = RunOptions {
        reprocess: args.choice.reprocess(),
        concurrency: args.concurrency.map(usize::from),
        most_per_commit: args.max_slices_per_commit.map(usize::from),
        retries: args.retries,
        slice_timeout: args.slice_timeout,
        newest_first: args.order == Order::Desc,
        budget: Budget {
            allow_empty: args.allow_empty,
            max_bytes: args.max_bytes.map(|size| size.as_u64()),
            max_slices: args.max_slices,
        },
        expected_plan: args.expect_plan,
        lease: match (args.no_lease, args.wait) {
            (true, _) => LeaseWait::Ignore,
            (false, Some(limit)) => LeaseWait::Wait(limit),
            (false, None) => LeaseWait::Refuse,
        },
        #[cfg(feature = "cluster")]
        cluster,
        ..RunOptions::default()
    };
    stop_on_ctrl_c(options.stop.clone());
    let project = matches!(target, Target::Project(_));
    let (observer, progress): (Arc<dyn Observer>, _) = match args.events {
        true => (Arc::new(JsonLines), None),
        false => {
            let progress = Arc::new(Progress::new(args.json, project));
            (progress.clone(), Some(progress))
        }
    };
    let finish = || progress.iter().for_each(|p| p.finish());
    let (stopped, incomplete) = match target {
        Target::Pipeline(backfill) => {
            let summary = backfill.run(&selection, &options, observer).await?;
            finish();
            match (args.json, args.events) {
                (true, _) => printer::json(&summary)?,
                (false, false) => print(&summary),
                (false, true) => {}
            }
            (summary.stopped, summary.incomplete())
        }
        Target::Project(project) => {
            let summary = project.run(&selection, &options, observer).await?;
            finish();
            match (args.json, args.events) {
                (true, _) => printer::json(&summary)?,
                (false, false) => summary.runs.iter().for_each(|run| {
                    print!("{}: ", run.pipeline);
                    print(run);
                }),
                (false, true) => {}
            }
            (summary.stopped(), summary.incomplete())
        }
    };
    Ok(if stopped {
        Outcome::Interrupted
    } else if incomplete {
        Outcome::SlicesFailed
    } else {
        Outcome::Success
    })
}

/// First Ctrl-C: start no new slice and let those in flight finish. Second: abandon them.
fn stop_on_ctrl_c(stop: Stop) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.stop_starting();
            eprintln!("stopping: no new slices start; slices in flight finish (Ctrl-C again to abandon them)");
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.abandon_in_flight();
            eprintln!("abandoning the slices in flight: what they staged stays invisible");
        }
    });
}

pub(crate) fn print(summary: &RunSummary) {
    let blocked = match summary.blocked() {
        0 => String::new(),
        n => format!(", {n} blocked by upstream slices"),
    };
    let meanwhile = match summary.count(|s| matches!(s, SliceOutcome::CommittedMeanwhile { .. })) {
        0 => String::new(),
        n => format!(", {n} committed meanwhile by other runs"),
    };
    let slices = match summary.not_started.len() {
        0 => printer::count(summary.outcomes.len(), "slice"),
        n => format!(
            "{} of {} slices",
            summary.outcomes.len(),
            summary.outcomes.len() + n
        ),
    };
    println!(
        "run {}: {slices}, {} committed, {} skipped, {} failed{blocked}{meanwhile}",
        summary.run_id,
        summary.committed(),
        summary.skipped(),
        summary.failed()
    );
    print_not_committed(summary);
    if let Some(rebuild) = &summary.rebuild {
        println!("rebuild: {}", printer::describe_rebuild(rebuild));
    }
    if !summary.stopped {
        return;
    }
    // After a stop, say exactly what is in the table and what is not.
    let outcome = outcomes(summary);
    let slices = |chosen: fn(&SliceOutcome) -> bool| {
        let keys = summary.outcomes.iter().map(|o| o.slice.as_str());
        let spans = spans(keys, |key| chosen(outcome[key]));
        match spans.is_empty() {
            true => "none".to_string(),
            false => describe_spans(&spans),
        }
    };
    println!(
        "stopped. committed: {}",
        slices(SliceOutcome::is_in_the_table)
    );
    if summary.rebuild.is_some() {
        println!(
            "staged for the rebuild's swap: {}",
            slices(|s| matches!(s, SliceOutcome::Staged { .. }))
        );
    }
    println!("not committed: {}", slices(SliceOutcome::is_not_committed));
    let not_started = spans(summary.not_started.iter().map(String::as_str), |_| true);
    println!("not started: {}", describe_spans(&not_started));
}

/// The slices that failed, in spans of consecutive slices, grouped by what to do next;
/// then those blocked by failed upstream slices.
fn print_not_committed(summary: &RunSummary) {
    let keys = summary.outcomes.iter().map(|o| o.slice.as_str());
    let outcome = outcomes(summary);
    for line in printer::not_committed(keys, |key| outcome[key]) {
        println!("{line}");
    }
}

/// Each slice's outcome, by key.
fn outcomes(summary: &RunSummary) -> HashMap<&str, &SliceOutcome> {
    let outcomes = summary.outcomes.iter();
    outcomes.map(|o| (o.slice.as_str(), &o.status)).collect()
}
