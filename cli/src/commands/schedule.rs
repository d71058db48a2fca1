//! `backfill schedule`: a long-running process that catches a pipeline (or a project) up
//! through now at every tick, as `run --through now` would, and stops cleanly on Ctrl-C
//! or SIGTERM once the run in flight reaches a slice boundary.

use std::sync::Arc;
use std::time::Duration;

use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::estimate::Budget;
use backfill_engine::history::{History, ScheduleBeat};
use backfill_engine::run::{who, LeaseWait, Observer, RunEvent, Stop};
use backfill_engine::schedule::Cadence;
use backfill_engine::{CatchUp, Error, Fault, RunOptions, RunSummary, Selection, Through};
use chrono::{DateTime, Utc};
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
    let mut beat = Beat::new(&args, cadence.describe())?;
    println!("schedule: catching up through now {}", cadence.describe());
    loop {
        let tick = SystemClock.now();
        let first = beat.first();
        beat.ticking(tick).await;
        print!("tick {}: ", timestamp(&tick));
        let outcome = match run_once(&args, &stop, &beat.started_by).await {
            Ok((run_id, outcome)) => (Some(run_id), outcome),
            Err(error) => {
                let engine = error.downcast_ref::<Error>();
                let said = match engine {
                    Some(Error::Busy { message }) => format!("skipped: {message}"),
                    // A mistake in the pipeline or the options shows at once.
                    Some(e) if first && e.fault() == Fault::User => {
                        println!("refused");
                        return Err(error);
                    }
                    _ => format!("failed: {}", crate::in_cli_words(&error)),
                };
                println!("{said}");
                (None, said)
            }
        };
        let next = (!stop.is_stopping())
            .then(|| cadence.next_after(tick))
            .transpose()?;
        beat.ticked(outcome, next).await;
        let Some(next) = next else { break };
        println!("next tick at {}", timestamp(&next));
        let wait = (next - SystemClock.now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.stopping() => break,
        }
    }
    beat.stopped(SystemClock.now()).await;
    println!("schedule stopped");
    Ok(Outcome::Success)
}

/// The schedule's account of itself, written next to each pipeline's history for
/// `status` and the run page.
struct Beat {
    histories: Vec<(String, History)>,
    beat: ScheduleBeat,
    /// Who starts the schedule's runs, as their history records it.
    started_by: String,
}

impl Beat {
    fn new(args: &ScheduleArgs, cadence: String) -> anyhow::Result<Beat> {
        let pipelines = args.pipeline.pipelines(&args.project)?;
        let histories = pipelines.iter().map(|pipeline| {
            let history = backfill_engine::sink::history_at(&pipeline.destination)?;
            Ok::<_, anyhow::Error>((pipeline.name.clone(), history))
        });
        Ok(Beat {
            histories: histories.collect::<anyhow::Result<_>>()?,
            started_by: format!("{} through backfill schedule ({cadence})", who()),
            beat: ScheduleBeat::starting(cadence, SystemClock.now()),
        })
    }

    fn first(&self) -> bool {
        self.beat.last_tick.is_none()
    }

    /// A tick starts; the first is not told, so a schedule refused at its first tick
    /// (a mistake in the pipeline) writes nothing.
    async fn ticking(&mut self, tick: DateTime<Utc>) {
        let first = self.first();
        self.beat.next_tick = None;
        self.beat.last_tick = Some(tick);
        if !first {
            self.write().await;
        }
    }

    async fn ticked(
        &mut self,
        (run, outcome): (Option<String>, String),
        next: Option<DateTime<Utc>>,
    ) {
        self.beat.last_run = run;
        self.beat.last_outcome = Some(outcome);
        self.beat.next_tick = next;
        self.write().await;
    }

    async fn stopped(&mut self, at: DateTime<Utc>) {
        self.beat.next_tick = None;
        self.beat.stopped_at = Some(at);
        self.write().await;
    }

    /// Best effort: a schedule that cannot say how it is goes on ticking.
    async fn write(&self) {
        for (pipeline, history) in &self.histories {
            if let Err(error) = history.write_schedule(pipeline, &self.beat).await {
                eprintln!(
                    "warning: could not write the schedule next to {pipeline}'s history: {error}"
                );
            }
        }
    }
}

/// One tick: a catch-up through now, refused while another run holds the lease. Its run
/// and what it did.
async fn run_once(
    args: &ScheduleArgs,
    stop: &Stop,
    started_by: &str,
) -> anyhow::Result<(String, String)> {
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
        started_by: Some(started_by.to_string()),
        ..RunOptions::default()
    };
    let target = args.pipeline.target(&args.project, Some(selection.clone()));
    let runs = match target.await? {
        Target::Pipeline(backfill) => {
            let summary = backfill.run(&selection, &options, Arc::new(Told)).await?;
            super::run::print(&summary);
            vec![summary]
        }
        Target::Project(project) => {
            let summary = project.run(&selection, &options, Arc::new(Told)).await?;
            println!();
            for run in &summary.runs {
                print!("  {}: ", run.pipeline);
                super::run::print(run);
            }
            summary.runs
        }
    };
    let sum = |of: fn(&RunSummary) -> usize| runs.iter().map(of).sum::<usize>();
    let did = format!(
        "{} committed, {} skipped, {} failed",
        sum(RunSummary::committed),
        sum(RunSummary::skipped),
        sum(RunSummary::failed)
    );
    let run_id = runs
        .first()
        .map(|run| run.run_id.clone())
        .unwrap_or_default();
    Ok((run_id, did))
}

/// What a tick tells as it runs, beside its summary: a lease it took over.
struct Told;

impl Observer for Told {
    fn on(&self, event: &RunEvent) {
        if let RunEvent::LeaseTakenOver { pipeline, from } = event {
            println!("{}", crate::printer::lease_taken_over(pipeline, from));
        }
    }
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
