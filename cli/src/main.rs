//! The `backfill` command: parses arguments, calls the engine, presents what it returns.
//! No logic lives here; anything a library user could need belongs in `backfill-engine`.
//!
//! Exit codes: 0 all selected slices passed, 1 a slice failed (assertion or error) or the
//! run could not proceed, 2 a usage or configuration error (nothing ran).

mod output;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use backfill_engine::estimate::Budget;
use backfill_engine::pipeline::{self, location_to_url};
use backfill_engine::{Backfill, Fault, OpenOptions, Reprocess, RunOptions, Selection, Setting};
use clap::{Args, Parser, Subcommand};

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
    /// Parse the pipeline, resolve its sources and plan its SQL, without running anything.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Show the selected slices, each one's state, and whether `run` with the same options
    /// would run it. The destination's Delta log says which slices are done, changed
    /// (source files or SQL differ from the commit's record) or missing; a missing slice
    /// whose last attempt failed is failed.
    Plan {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        #[command(flatten)]
        selection: SelectionArgs,
        #[command(flatten)]
        choice: ChoiceArgs,
        #[command(flatten)]
        overrides: Overrides,
        /// The slices in flight the duration estimate assumes, as `run --concurrency`
        /// [default: the number of cores].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: Option<u16>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the slices of the selection that are missing, changed or failed (or the
    /// states --reprocess chooses; all of them with --force).
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        #[command(flatten)]
        selection: SelectionArgs,
        #[command(flatten)]
        choice: ChoiceArgs,
        #[command(flatten)]
        overrides: Overrides,
        /// Slices in flight at once [default: the number of cores].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: Option<u16>,
        /// Further attempts for a slice that failed for a transient reason (storage, a
        /// conflict with another writer, the time limit), with exponential backoff and
        /// jitter. Failed checks, SQL errors and bad data are never retried.
        #[arg(long, default_value_t = 2)]
        retries: u32,
        /// Fail an attempt that runs longer than this, e.g. 90s or 15m.
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
        /// Print a JSON summary instead of a line per slice.
        #[arg(long)]
        json: bool,
    },
    /// Show what the destination's Delta log records: committed slices with run id, rows,
    /// duration and time.
    Status {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Without a selection, the committed slices.
        #[command(flatten)]
        selection: SelectionArgs,
        #[command(flatten)]
        overrides: Overrides,
        #[arg(long)]
        json: bool,
    },
    /// List the runs of this pipeline recorded next to its destination table.
    History {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
        #[arg(long)]
        json: bool,
    },
    /// Show one run: what it was asked to do and every slice attempt it made.
    Show {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The run id, as `history` lists it.
        run: String,
        #[command(flatten)]
        overrides: Overrides,
        #[arg(long)]
        json: bool,
    },
    /// Write one run as a single self-contained HTML page (no network needed to view it):
    /// summary, slices coloured by status, duration per slice, retries and failures.
    Report {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The run id, as `history` lists it.
        run: String,
        /// Where to write the page.
        #[arg(short, long, default_value = "report.html")]
        output: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Query a rebuild before its swap. `staged` is the table the swap would make (the
    /// staged slices plus the done ones it keeps); `current` is the table readers see now.
    /// Without --sql, lists the slices and the rows each holds in `staged`.
    RebuildPreview {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        #[command(flatten)]
        selection: SelectionArgs,
        #[command(flatten)]
        overrides: Overrides,
        /// A query over `staged` and `current`, e.g.
        /// "SELECT count(*) FROM staged EXCEPT SELECT count(*) FROM current".
        #[arg(long)]
        sql: Option<String>,
        /// Print the slices as JSON (ignored with --sql).
        #[arg(long)]
        json: bool,
    },
    /// Delete what attempts of this pipeline that never committed left in the table's
    /// folder (killed runs' staged files, merge staging, log temporaries): only files no
    /// retained version or rebuild manifest references, whose Parquet footer names this
    /// pipeline, and that are older than --older-than.
    Clean {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
        /// Keep leftovers younger than this, e.g. 7d or 36h: an attempt still running may
        /// be about to commit a file it wrote. Under an hour needs --no-run-in-flight.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        older_than: std::time::Duration,
        /// Assert that no run of this pipeline is in flight anywhere, which allows
        /// --older-than under an hour.
        #[arg(long)]
        no_run_in_flight: bool,
        /// List what would be deleted without deleting it.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write a deterministic fixture bucket of hive-partitioned Parquet (orders,
    /// customers, events, signups). Without options, the bundled one.
    Fixtures {
        /// The bucket's root folder.
        out: PathBuf,
        /// Days of orders (from 2024-01-01).
        #[arg(long)]
        days: Option<u32>,
        /// Orders per day.
        #[arg(long)]
        orders_per_day: Option<u64>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Order {
    Asc,
    Desc,
}

/// Which states of slices to run.
#[derive(Args)]
struct ChoiceArgs {
    /// The states to run, comma-separated [default: missing,changed,failed].
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "force")]
    reprocess: Vec<State>,
    /// Redo every selected slice, done ones too (still one atomic commit each, no
    /// duplicates); the same as --reprocess all.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum State {
    Missing,
    Changed,
    Failed,
    All,
}

impl ChoiceArgs {
    fn reprocess(&self) -> Reprocess {
        if self.force || self.reprocess.contains(&State::All) {
            return Reprocess::ALL;
        }
        if self.reprocess.is_empty() {
            return Reprocess::default();
        }
        let has = |state| self.reprocess.contains(&state);
        Reprocess {
            missing: has(State::Missing),
            changed: has(State::Changed),
            failed: has(State::Failed),
            done: false,
        }
    }
}

/// Which slices: an inclusive range, or keys.
#[derive(Args)]
struct SelectionArgs {
    /// First slice, inclusive: YYYY-MM-DD (daily) or YYYY-MM-DDTHH (hourly).
    #[arg(long, requires = "end", conflicts_with = "keys")]
    start: Option<String>,
    /// Last slice, inclusive.
    #[arg(long, requires = "start")]
    end: Option<String>,
    /// Slice keys, comma-separated. For list slices, defaults to the pipeline's keys.
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
}

impl SelectionArgs {
    fn selection(&self) -> Selection {
        match (&self.start, &self.end) {
            (Some(start), Some(end)) => Selection::Range {
                start: start.clone(),
                end: end.clone(),
            },
            _ => Selection::Keys(self.keys.clone()),
        }
    }
}

/// Settings that override the pipeline file for this invocation.
#[derive(Args)]
struct Overrides {
    /// Write to this Delta table instead of the pipeline's destination.url
    /// (a path relative to the working directory, or a URL).
    #[arg(long, value_name = "PATH_OR_URL")]
    destination: Option<String>,
}

impl Overrides {
    fn load(&self, path: &std::path::Path) -> backfill_engine::Result<pipeline::Pipeline> {
        let mut pipeline = pipeline::load(path)?;
        if let Some(destination) = &self.destination {
            let cwd = std::env::current_dir().unwrap_or_default();
            pipeline.destination.url = location_to_url(destination, &cwd)
                .map_err(|m| backfill_engine::Error::config("--destination", m))?;
        }
        Ok(pipeline)
    }
}

/// The shortest `clean --older-than` allowed without --no-run-in-flight: longer than any
/// attempt's time between writing a file and committing it.
const SHORTEST_SAFE_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// How the command ended, for the exit code.
enum Outcome {
    Success,
    SlicesFailed,
    /// Stopped by Ctrl-C: 130, as shells report a command ended by SIGINT.
    Interrupted,
}

/// First Ctrl-C: start no new slice and let those in flight finish. Second: abandon them.
fn stop_on_ctrl_c(stop: backfill_engine::run::Stop) {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BACKFILL_LOG")
                .unwrap_or_else(|_| "warn,deltalake_core::operations::merge=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(execute(cli.command)) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::SlicesFailed) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(error) => {
            eprintln!("error: {}", in_cli_words(&error));
            let user = error
                .downcast_ref::<backfill_engine::Error>()
                .is_some_and(|e| e.fault() == Fault::User);
            ExitCode::from(if user { 2 } else { 1 })
        }
    }
}

/// The error and its causes, with the engine's run settings named by their flags.
fn in_cli_words(error: &anyhow::Error) -> String {
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
    }
}

async fn find_run(
    backfill: &Backfill,
    run: &str,
) -> anyhow::Result<backfill_engine::history::RunRecord> {
    let record = backfill.history().run(run).await?;
    Ok(record.ok_or_else(|| {
        backfill_engine::Error::config(
            "RUN",
            format!("no run `{run}` in the history of this destination"),
        )
    })?)
}

/// Opens a pipeline; `scope` is the selection the command works on, if it has one.
async fn open(
    path: &std::path::Path,
    overrides: &Overrides,
    scope: Option<Selection>,
) -> anyhow::Result<Backfill> {
    let pipeline = overrides.load(path)?;
    let options = OpenOptions {
        scope,
        ..OpenOptions::default()
    };
    Ok(Backfill::open(pipeline, options).await?)
}

async fn execute(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Validate {
            pipeline,
            overrides,
        } => {
            let backfill = open(&pipeline, &overrides, None).await?;
            output::validated(&backfill);
        }
        Command::Plan {
            pipeline,
            selection,
            choice,
            overrides,
            concurrency,
            json,
        } => {
            let backfill = open(&pipeline, &overrides, Some(selection.selection())).await?;
            let concurrency =
                concurrency.map_or_else(backfill_engine::run::default_concurrency, usize::from);
            let plan = backfill
                .plan(&selection.selection(), choice.reprocess(), concurrency)
                .await?;
            output::plan(&plan, json)?;
        }
        Command::Run {
            pipeline,
            selection,
            choice,
            overrides,
            concurrency,
            retries,
            slice_timeout,
            order,
            allow_empty,
            max_bytes,
            max_slices,
            json,
        } => {
            let backfill =
                Arc::new(open(&pipeline, &overrides, Some(selection.selection())).await?);
            let options = RunOptions {
                reprocess: choice.reprocess(),
                concurrency: concurrency
                    .map_or_else(backfill_engine::run::default_concurrency, usize::from),
                retries,
                slice_timeout,
                newest_first: order == Order::Desc,
                budget: Budget {
                    allow_empty,
                    max_bytes: max_bytes.map(|size| size.as_u64()),
                    max_slices,
                },
                ..RunOptions::default()
            };
            stop_on_ctrl_c(options.stop.clone());
            let reporter = Arc::new(output::Progress::new(json));
            let summary = backfill
                .run(&selection.selection(), &options, reporter.clone())
                .await?;
            reporter.finish();
            output::summary(&summary, json)?;
            if summary.stopped {
                return Ok(Outcome::Interrupted);
            }
            if summary.incomplete() {
                return Ok(Outcome::SlicesFailed);
            }
        }
        Command::Status {
            pipeline,
            selection,
            overrides,
            json,
        } => {
            let chosen = (selection.start.is_some() || !selection.keys.is_empty())
                .then(|| selection.selection());
            let backfill = open(&pipeline, &overrides, chosen.clone()).await?;
            output::status(&backfill.status(chosen.as_ref()).await?, json)?;
        }
        Command::History {
            pipeline,
            overrides,
            json,
        } => {
            let backfill = open(&pipeline, &overrides, None).await?;
            output::history(
                &backfill.history().runs(&backfill.pipeline().name).await?,
                json,
            )?;
        }
        Command::Show {
            pipeline,
            run,
            overrides,
            json,
        } => {
            let backfill = open(&pipeline, &overrides, None).await?;
            let record = find_run(&backfill, &run).await?;
            output::show(&record, json)?;
        }
        Command::Report {
            pipeline,
            run,
            output,
            overrides,
        } => {
            let backfill = open(&pipeline, &overrides, None).await?;
            let record = find_run(&backfill, &run).await?;
            std::fs::write(&output, report::render(&record)?)
                .with_context(|| format!("writing {}", output.display()))?;
            println!("wrote {}", output.display());
        }
        Command::RebuildPreview {
            pipeline,
            selection,
            overrides,
            sql,
            json,
        } => {
            let backfill = open(&pipeline, &overrides, Some(selection.selection())).await?;
            let preview = backfill.rebuild_preview(&selection.selection()).await?;
            match sql {
                Some(sql) => output::batches(&preview.query(&sql).await?)?,
                None => output::preview(&preview, json)?,
            }
        }
        Command::Clean {
            pipeline,
            overrides,
            older_than,
            no_run_in_flight,
            dry_run,
            json,
        } => {
            if older_than < SHORTEST_SAFE_WINDOW && !no_run_in_flight {
                return Err(backfill_engine::Error::config(
                    "--older-than",
                    format!("{} could delete files that a run still in flight is about to commit, leaving the table pointing at missing files; use at least 1h, or stop every run of this pipeline and pass --no-run-in-flight", humantime::format_duration(older_than)),
                )
                .into());
            }
            let backfill = open(&pipeline, &overrides, None).await?;
            let now = backfill_engine::clock::Clock::now(&backfill_engine::clock::SystemClock);
            output::cleaned(&backfill.clean(older_than, now, dry_run).await?, json)?;
        }
        Command::Fixtures {
            out,
            days,
            orders_per_day,
        } => {
            let mut spec = backfill_engine::fixtures::FixtureSpec::bundled();
            spec.days = days.unwrap_or(spec.days);
            spec.orders_per_day = orders_per_day.unwrap_or(spec.orders_per_day);
            backfill_engine::fixtures::generate(&out, &spec)
                .with_context(|| format!("writing fixtures to {}", out.display()))?;
            println!(
                "wrote fixture bucket {} ({} days of {} orders)",
                out.display(),
                spec.days,
                spec.orders_per_day
            );
        }
    }
    Ok(Outcome::Success)
}
