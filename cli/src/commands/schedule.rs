//! `backfill schedule`: a long-running process that catches a pipeline (or a project) up
//! through now at every tick, as `run --through now` would, and stops cleanly on Ctrl-C
//! or SIGTERM once the run in flight reaches a slice boundary.

use std::sync::Arc;
use std::time::Duration;

use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::estimate::Budget;
use backfill_engine::run::{LeaseWait, Silent, Stop};
use backfill_engine::schedule::Cadence;
use backfill_engine::{CatchUp, Error, Fault, RunOptions, Selection, Through};
use clap::Args;

use super::Outcome;
use crate::args::{PipelineArgs, ProjectArgs, Target};
use crate::printer::timestamp;

#[derive(Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    project: ProjectArgs,
    /// Tick every interval, e.g. 1h or 15m, from the start of the tick before.
    #[arg(long, value_parser = humantime::parse_duration, required_unless_present = "cron")]
    every: Option<Duration>,
    /// Tick on a cron expression read in UTC, e.g. "5 * * * *" or "@hourly".
    #[arg(long, conflicts_with = "every")]
    cron: Option<String>,
    /// Each catch-up's first slice, instead of the pipeline's `[slices] start`.
    #[arg(long)]
    start: Option<String>,
    /// Check done slices for changed inputs only within the last N slices through now,
    /// as `run --lookback` does.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    lookback: Option<u32>,
    /// Run slices whose sources have no data, instead of leaving them for a later tick.
    #[arg(long)]
    allow_empty: bool,
    /// Further attempts for a slice that failed for a transient reason.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Slices computed at once [default: as `run` chooses].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
}

pub async fn execute(args: ScheduleArgs) -> anyhow::Result<Outcome> {
    let cadence = match (&args.every, &args.cron) {
        (Some(every), _) => Cadence::every(*every)?,
        (None, Some(cron)) => Cadence::cron(cron)?,
        (None, None) => unreachable!("clap requires --every or --cron"),
    };
    let stop = Stop::default();
    stop_on_signals(stop.clone());
    println!("schedule: catching up through now {}", cadence.describe());
    let mut first = true;
    loop {
        let tick = SystemClock.now();
        print!("tick {}: ", timestamp(&tick));
        match run_once(&args, &stop).await {
            Ok(()) => {}
            Err(error) => {
                let engine = error.downcast_ref::<Error>();
                if let Some(Error::Busy { message }) = engine {
                    println!("skipped: {message}");
                } else if first && engine.is_some_and(|e| e.fault() == Fault::User) {
                    // A mistake in the pipeline or the options shows at once.
                    println!("refused");
                    return Err(error);
                } else {
                    println!("failed: {}", crate::in_cli_words(&error));
                }
            }
        }
        first = false;
        if stop.is_stopping() {
            break;
        }
        let next = cadence.next_after(tick)?;
        println!("next tick at {}", timestamp(&next));
        let wait = (next - SystemClock.now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.stopping() => break,
        }
    }
    println!("schedule stopped");
    Ok(Outcome::Success)
}

/// One tick: a catch-up through now, refused while another run holds the lease.
async fn run_once(args: &ScheduleArgs, stop: &Stop) -> anyhow::Result<()> {
    let selection = Selection {
        catch_up: Some(CatchUp {
            start: args.start.clone(),
            through: Through::Now(crate::args::now()?),
            lookback: args.lookback,
        }),
        ..Selection::default()
    };
    let options = RunOptions {
        concurrency: args.concurrency.map(usize::from),
        retries: args.retries,
        stop: stop.clone(),
        budget: Budget {
            allow_empty: args.allow_empty,
            ..Budget::default()
        },
        lease: LeaseWait::Refuse,
        ..RunOptions::default()
    };
    let target = args.pipeline.target(&args.project, Some(selection.clone()));
    match target.await? {
        Target::Pipeline(backfill) => {
            let summary = backfill.run(&selection, &options, Arc::new(Silent)).await?;
            super::run::print(&summary);
        }
        Target::Project(project) => {
            let summary = project.run(&selection, &options, Arc::new(Silent)).await?;
            println!();
            for run in &summary.runs {
                print!("  {}: ", run.pipeline);
                super::run::print(run);
            }
        }
    }
    Ok(())
}

/// The first Ctrl-C or SIGTERM starts no new slice, lets the slices in flight finish,
/// and ends the schedule; a second Ctrl-C abandons them.
fn stop_on_signals(stop: Stop) {
    tokio::spawn(async move {
        let terminated = async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                match signal(SignalKind::terminate()) {
                    Ok(mut signal) => signal.recv().await,
                    Err(_) => std::future::pending().await,
                }
            }
            #[cfg(not(unix))]
            std::future::pending::<Option<()>>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        stop.stop_starting();
        eprintln!("stopping: no new slices start; slices in flight finish, then the schedule ends");
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.abandon_in_flight();
            eprintln!("abandoning the slices in flight: what they staged stays invisible");
        }
    });
}
