//! The `backfill` command: parses arguments, calls the engine, presents what it returns.
//! No logic lives here; anything a library user could need belongs in `backfill-engine`.
//! Each command is one file in `commands/`; argument groups several share are in `args`.
//!
//! Exit codes: 0 all selected slices passed, 1 a slice failed (assertion or error) or the
//! run could not proceed (or `diff --exit-code` found differences), 2 a usage or
//! configuration error (nothing ran), 75 another run holds the pipeline's lease
//! (nothing ran; `EX_TEMPFAIL`: try again later), 130 interrupted.

mod args;
mod commands;
mod html;
mod printer;
mod progress;
mod serve;

use std::process::ExitCode;

use backfill_engine::{Fault, Setting};
use clap::{Parser, Subcommand};

use commands::Outcome;

/// Replays a pipeline over history into a Delta table, one checked, atomic commit per slice.
///
/// A pipeline file (TOML) names Parquet sources, a DataFusion SQL transform, a Delta
/// destination, a write strategy and per-slice assertions. Typical use:
///
///   backfill validate pipeline.toml
///   backfill plan pipeline.toml --start 2024-01-01 --end 2024-01-31
///   backfill run  pipeline.toml --start 2024-01-01 --end 2024-01-31
///   backfill status pipeline.toml
#[derive(Parser)]
#[command(name = "backfill", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse the pipeline (or every pipeline of a project), resolve its sources and plan
    /// its SQL, without running anything or creating any file.
    Validate(commands::validate::ValidateArgs),
    /// Show the selected slices, each one's state, and whether `run` with the same options
    /// would run it. The destination's Delta log says which slices are done, changed
    /// (source files or SQL differ from the commit's record) or missing; a missing slice
    /// whose last attempt failed is failed.
    Plan(commands::plan::PlanArgs),
    /// Run the slices of the selection that are missing, changed or failed (or the
    /// states --reprocess chooses; all of them with --force).
    Run(commands::run::RunArgs),
    /// Keep a pipeline (or a project) current: at every tick (--every 1h, or --cron),
    /// catch it up through now as `run --through now` does; a tick while another run
    /// holds the lease is skipped. Stops cleanly on Ctrl-C or SIGTERM.
    Schedule(commands::schedule::ScheduleArgs),
    /// Show what the destination's Delta log and run history record of each slice: done
    /// (rows, compute time, run) or failed (its error) or missing, by default from the
    /// first to the last slice committed or attempted.
    Status(commands::status::StatusArgs),
    /// Ask a run started anywhere to stop, as a first Ctrl-C does: no new slice starts,
    /// slices in flight finish their commit, and the run ends with its summary within
    /// seconds. Running its command again finishes the job.
    Cancel(commands::cancel::CancelArgs),
    /// List the runs of this pipeline recorded next to its destination table.
    History(commands::history::HistoryArgs),
    /// Show one run: what it was asked to do and every slice attempt it made.
    Show(commands::show::ShowArgs),
    /// Print a run's OpenLineage events (JSON lines), as it wrote them next to its
    /// history, or send them again to the collector (--send), for one that was down.
    Lineage(commands::lineage::LineageArgs),
    /// Write one run as a single self-contained HTML page (no network needed to view it):
    /// summary, slices coloured by status, duration per slice, retries and failures.
    Report(commands::report::ReportArgs),
    /// Query a rebuild before its swap. `staged` is the table the swap would make (the
    /// staged slices plus the done ones it keeps); `current` is the table readers see now.
    /// Without --sql, lists the slices and the rows each holds in `staged`.
    RebuildPreview(commands::rebuild_preview::RebuildPreviewArgs),
    /// Delete what attempts of this pipeline that never committed left in the table's
    /// folder (killed runs' staged files, merge staging, half-written temporaries): only files no
    /// retained version or rebuild manifest references, whose Parquet footer names this
    /// pipeline, and that are older than --older-than.
    Clean(commands::clean::CleanArgs),
    /// Compare a project's tables in one environment (--env) with another's (--against,
    /// prod by default), slice by slice: rows on each side and how many differ, by merge
    /// key where there is one.
    Diff(commands::diff::DiffArgs),
    /// Publish a project's done slices from one environment (--from) into another (--to,
    /// prod by default) without running any SQL: their files are copied and committed
    /// with the records they were committed with. Refused, changing nothing, if a slice is
    /// not done in --from or --to committed it since. Promoting again is a no-op.
    Promote(commands::promote::PromoteArgs),
    /// Serve the run page: every run recorded next to the tables (from any process or
    /// machine; for a project, in every environment unless --env names one), each run
    /// live as it goes, with a button that cancels it; a launch form that shows the plan
    /// and runs exactly it; the tables' status; and the same as JSON under /api/.
    Serve(commands::serve::ServeArgs),
    /// Form an Apache DataFusion Ballista cluster from this binary: a scheduler, and
    /// executors that work for it, reading storage as runs do.
    #[cfg(feature = "cluster")]
    Cluster(commands::cluster::ClusterArgs),
    /// Write a deterministic fixture bucket of hive-partitioned Parquet (orders,
    /// customers, events, signups). Without options, the bundled one.
    Fixtures(commands::fixtures::FixturesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.command.writes() {
        end_quietly_when_the_reader_goes();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BACKFILL_LOG")
                // A cluster's executors say what each task wrote.
                .unwrap_or_else(|_| {
                    "warn,deltalake_core::operations::merge=error,backfill_engine::cluster=info"
                        .into()
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(execute(cli.command)) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::SlicesFailed | Outcome::Differs) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(error) => {
            eprintln!("error: {}", in_cli_words(&error));
            let engine = error.downcast_ref::<backfill_engine::Error>();
            match engine {
                Some(backfill_engine::Error::Busy { .. }) => {
                    eprintln!("run the same command once that run ends, or with --wait");
                    ExitCode::from(75)
                }
                Some(e) if e.fault() == Fault::User => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

impl Command {
    /// Whether the command changes tables or their history. Those keep going when their
    /// output's reader goes away: their work matters more than their printing.
    fn writes(&self) -> bool {
        match self {
            Command::Run(_)
            | Command::Schedule(_)
            | Command::Cancel(_)
            | Command::Clean(_)
            | Command::Promote(_)
            | Command::Fixtures(_)
            | Command::Report(_)
            | Command::Serve(_) => true,
            #[cfg(feature = "cluster")]
            Command::Cluster(_) => true,
            Command::Validate(_)
            | Command::Plan(_)
            | Command::Status(_)
            | Command::History(_)
            | Command::Show(_)
            | Command::Lineage(_)
            | Command::RebuildPreview(_)
            | Command::Diff(_) => false,
        }
    }
}

/// `backfill plan ... | head` ends as every Unix tool does when its reader has read
/// enough, by SIGPIPE, rather than by a panic on the next line printed (Rust ignores
/// SIGPIPE by default).
fn end_quietly_when_the_reader_goes() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The error and its causes, with the engine's run settings named by their flags.
pub(crate) fn in_cli_words(error: &anyhow::Error) -> String {
    let causes = error.chain().map(
        |cause| match cause.downcast_ref::<backfill_engine::Error>() {
            Some(engine) => engine.worded(&|setting| flag(setting).to_string()),
            None => cause.to_string(),
        },
    );
    causes.collect::<Vec<_>>().join(": ")
}

/// The flag that sets each of the engine's run settings.
fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Start => "--start",
        Setting::End => "--end",
        Setting::Keys => "--keys",
        Setting::MaxSlices => "--max-slices",
        Setting::MaxBytes => "--max-bytes",
        Setting::AllowEmpty => "--allow-empty",
        Setting::OlderThan => "--older-than",
        Setting::NoRunInFlight => "--no-run-in-flight",
        Setting::ExpectedPlan => "--expect-plan",
        Setting::Through => "--through",
        Setting::Lookback => "--lookback",
        Setting::Every => "--every",
        Setting::Cron => "--cron",
    }
}

async fn execute(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Validate(args) => commands::validate::execute(args).await,
        Command::Plan(args) => commands::plan::execute(args).await,
        Command::Run(args) => commands::run::execute(args).await,
        Command::Schedule(args) => commands::schedule::execute(args).await,
        Command::Status(args) => commands::status::execute(args).await,
        Command::Cancel(args) => commands::cancel::execute(args).await,
        Command::History(args) => commands::history::execute(args).await,
        Command::Show(args) => commands::show::execute(args).await,
        Command::Lineage(args) => commands::lineage::execute(args).await,
        Command::Report(args) => commands::report::execute(args).await,
        Command::RebuildPreview(args) => commands::rebuild_preview::execute(args).await,
        Command::Clean(args) => commands::clean::execute(args).await,
        Command::Diff(args) => commands::diff::execute(args).await,
        Command::Promote(args) => commands::promote::execute(args).await,
        Command::Serve(args) => commands::serve::execute(args).await,
        Command::Fixtures(args) => commands::fixtures::execute(args).await,
        #[cfg(feature = "cluster")]
        Command::Cluster(args) => commands::cluster::execute(args).await,
    }
}
