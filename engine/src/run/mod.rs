//! Running slices: plan, skip what is done, stage, check, publish.
//!
//! Slices run concurrently (each on its own task, `concurrency` computing at once, more
//! waiting for their commit), each one streaming from its sources through the transform
//! into staged files, so both cores stay busy with reading, computing and writing at once. A slice is the unit of retry
//! and is idempotent: whatever happens to it, the table either has all of its new
//! output, in one commit, or none of it. That is what makes retrying safe: a slice that
//! fails for a transient reason (storage, a conflict with another writer, a time limit)
//! is tried again with exponential backoff and jitter; a failed check, bad SQL or bad
//! data is not. Progress goes to a [`Reporter`]; this module never prints.
//!
//! This file holds the run's API types, its loop (concurrency, stop, reporter, the
//! history's header and end) and `Run`, one run in progress, whose jobs are in their
//! own files: `attempts.rs` retries and time limits, `slice_task.rs` one attempt at one
//! slice, `executor.rs` where a slice's plan executes, `rebuild.rs` the swap that ends a
//! rebuild, `gates.rs` the waits of a chained run's downstream slices for the upstream
//! slices they read. A run is launched (its pre-flight plans) and then executed, so a
//! project can launch all its pipelines' runs before any executes, and execute them
//! together in shared places.

mod attempts;
mod executor;
pub(crate) mod gates;
mod rebuild;
mod slice_task;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::clock::{Clock, SystemClock};
use crate::engine::{Backfill, Known, SlicePlan};
use crate::error::{Error, Result};
use crate::estimate::Budget;
use crate::history::{History, RunEnd, RunHeader};
use crate::ledger::{Ledger, StagedSlice, Summaries};
use crate::sink::strategy::Publishing;
use crate::slice::{Selection, Slice};
use crate::states::{RebuildOutcome, Reprocess, SliceStatus};
use crate::upstream::UpstreamSlice;
use gates::Gates;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How a run behaves, beyond which slices it runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Which slices to run, by their state.
    pub reprocess: Reprocess,
    /// Slices computed at once (checked slices waiting for their commit do not count);
    /// `None` chooses from the slices' sizes once they are planned
    /// ([`crate::estimate::chosen_concurrency`]).
    pub concurrency: Option<usize>,
    /// The most slices one commit carries; `None` takes every checked slice waiting, up
    /// to what the strategy and the sink allow.
    pub most_per_commit: Option<usize>,
    /// Further attempts for a slice that failed for a transient reason.
    pub retries: u32,
    /// About how long the first retry waits; each later one waits twice as long.
    pub backoff: Duration,
    /// An attempt running longer than this fails (and may be retried).
    pub slice_timeout: Option<Duration>,
    /// Run the newest slices first.
    pub newest_first: bool,
    /// Lets another task stop the run (on Ctrl-C, say).
    pub stop: Stop,
    /// The time stamped on records, and the waits between retries.
    pub clock: Arc<dyn Clock>,
    /// What the run must stay within, checked before any slice starts.
    pub budget: Budget,
    /// The cluster slices' transforms run on, instead of this process.
    #[cfg(feature = "cluster")]
    pub cluster: Option<crate::cluster::Cluster>,
}

/// Stops a run in two steps: first no new slice starts and the ones in flight finish;
/// then the ones in flight are abandoned. Either way nothing is half-written: a slice's
/// commit is atomic, and what it staged stays invisible.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    starting: CancellationToken,
    in_flight: CancellationToken,
}

impl Stop {
    /// Start no new slice.
    pub fn stop_starting(&self) {
        self.starting.cancel();
    }

    /// Abandon the slices in flight too.
    pub fn abandon_in_flight(&self) {
        self.starting.cancel();
        self.in_flight.cancel();
    }

    pub fn is_stopping(&self) -> bool {
        self.starting.is_cancelled()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            reprocess: Reprocess::default(),
            concurrency: None,
            most_per_commit: None,
            retries: 2,
            backoff: Duration::from_secs(1),
            slice_timeout: None,
            newest_first: false,
            stop: Stop::default(),
            clock: Arc::new(SystemClock),
            budget: Budget::default(),
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }
}

/// Slices planned at once before a run: planning waits on listings and footers, not cores.
const PREFLIGHT_CONCURRENCY: usize = 16;

/// Checked slices that may wait for their commit, per place to compute: waiting, they hold
/// no place, so other slices compute meanwhile. Commits slow down as the table grows
/// (delta-rs replays the table's file list after each), and more slices then go in each
/// one instead of computing stalling until the commit is done.
const WAITING_PER_PLACE: usize = 3;

impl RunOptions {
    /// How many streams DataFusion splits one slice's plan into: the cores left to each
    /// slice computing. When slices computing already keep every core busy, splitting a
    /// slice further only adds work (repartitioning, merging partial aggregates, which
    /// for `count(DISTINCT)` means merging whole sets) and runs nothing sooner.
    pub fn partitions_per_slice(&self) -> usize {
        let in_flight = self.concurrency.unwrap_or_else(default_concurrency);
        (default_concurrency() / in_flight.max(1)).max(1)
    }
}

/// The number of cores: slices computed at once for slices that are not small.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Receives progress from a run (of one pipeline, or of a project's pipelines together).
/// Only the CLI draws; the engine only reports.
pub trait Reporter: Send + Sync {
    fn run_started(&self, _run_id: &str, _slices: usize) {}
    fn slice_started(&self, _pipeline: &str, _slice: &str) {}
    fn slice_finished(&self, _pipeline: &str, _outcome: &SliceOutcome) {}
}

/// A reporter that ignores everything.
pub struct Silent;
impl Reporter for Silent {}

/// What became of one slice in a run.
#[derive(Debug, Clone, Serialize)]
pub struct SliceOutcome {
    pub slice: String,
    #[serde(flatten)]
    pub status: SliceStatus,
    pub duration_ms: u64,
    /// Attempts made: 1 unless transient failures were retried.
    pub attempts: u32,
}

/// The result of a run: every started slice's outcome, in run order.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub pipeline: String,
    pub outcomes: Vec<SliceOutcome>,
    /// Whether the run was stopped before it had started every slice.
    pub stopped: bool,
    /// The selected slices it never started, in run order.
    pub not_started: Vec<String>,
    /// For a rebuild, whether and how the table was swapped.
    pub rebuild: Option<RebuildOutcome>,
}

impl RunSummary {
    pub fn count(&self, matches: impl Fn(&SliceStatus) -> bool) -> usize {
        self.outcomes.iter().filter(|o| matches(&o.status)).count()
    }

    pub fn committed(&self) -> usize {
        self.count(|s| matches!(s, SliceStatus::Committed { .. }))
    }

    pub fn skipped(&self) -> usize {
        self.count(|s| matches!(s, SliceStatus::Skipped { .. }))
    }

    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, SliceStatus::Failed { .. }))
    }

    pub fn blocked(&self) -> usize {
        self.count(|s| matches!(s, SliceStatus::Blocked { .. }))
    }

    /// Whether the run left work undone that a rerun would do: failed or blocked slices,
    /// or a rebuild that did not swap.
    pub fn incomplete(&self) -> bool {
        self.failed() + self.blocked() > 0
            || matches!(
                self.rebuild,
                Some(RebuildOutcome::Waiting { .. } | RebuildOutcome::Refused { .. })
            )
    }
}

impl Backfill {
    /// Runs the selected slices whose state `options.reprocess` chooses.
    /// Errors in the selection come back before anything runs; a slice's own failure
    /// is in its outcome, and the other slices go on.
    pub async fn run(
        self: Arc<Self>,
        selection: &Selection,
        options: &RunOptions,
        reporter: Arc<dyn Reporter>,
    ) -> Result<RunSummary> {
        let launch = self.launch(selection, options, &HashSet::new()).await?;
        crate::estimate::preflight(&launch.planned, &options.budget)?;
        let chosen = || crate::estimate::chosen_concurrency(&launch.planned, default_concurrency());
        let concurrency = options.concurrency.unwrap_or_else(chosen);
        let options = RunOptions {
            concurrency: Some(concurrency),
            ..options.clone()
        };
        let shared = Shared::new(new_run_id(options.clock.now()), concurrency, None);
        reporter.run_started(&shared.run_id, launch.planned.len());
        self.execute(selection, launch, &options, &shared, reporter)
            .await
    }

    /// The pre-flight of a run: every source one its cluster can read, if it has one;
    /// every slice planned (listings and footers, no data) before any starts. The plans
    /// are not kept: each slice to run plans again when it starts, so it sees files that
    /// arrive in between. In a chained run, the upstream pipelines run the slices
    /// `running` first.
    pub(crate) async fn launch(
        self: &Arc<Self>,
        selection: &Selection,
        options: &RunOptions,
        running: &HashSet<UpstreamSlice>,
    ) -> Result<Launch> {
        let mut slices = self.slices(selection)?;
        #[cfg(feature = "cluster")]
        if options.cluster.is_some() {
            self.sources.check_portable()?;
        }
        if options.newest_first {
            slices.reverse();
        }
        let known = Arc::new(self.known(Summaries::Save).await?);
        let mut planned = self
            .plan_slices(slices, &known, options.reprocess, PREFLIGHT_CONCURRENCY)
            .await?;
        self.wait_for_upstream(&mut planned, running, options.reprocess);
        Ok(Launch { known, planned })
    }

    /// Runs a launched run's slices, `options.concurrency` computing at once in the
    /// places the run `shared` gives.
    pub(crate) async fn execute(
        self: Arc<Self>,
        selection: &Selection,
        launch: Launch,
        options: &RunOptions,
        shared: &Shared,
        reporter: Arc<dyn Reporter>,
    ) -> Result<RunSummary> {
        let Launch { known, planned } = launch;
        let slices: Vec<Slice> = planned.iter().map(|p| p.slice.clone()).collect();
        let concurrency = options.concurrency.unwrap_or(1).max(1);
        let pipeline = self.pipeline.name.clone();
        // A slice the pre-flight chose not to run (done, or a state not chosen) is
        // skipped without planning it again, unless it waits for upstream slices: its
        // state is known only once they are done.
        let not_run = planned
            .iter()
            .map(|p| (!p.will_run && p.after.is_empty()).then(|| p.state.name()))
            .collect();
        let unplanned = planned.iter().map(|p| p.unplanned.is_some()).collect();
        let after: Vec<Vec<UpstreamSlice>> = planned.into_iter().map(|p| p.after).collect();
        let run_id = shared.run_id.clone();
        let run = Arc::new(Run {
            backfill: self.clone(),
            options: options.clone(),
            known,
            not_run,
            unplanned,
            places: shared.places.clone(),
            history: History::new(self.sink.store()),
            run_id: run_id.clone(),
            staged: Default::default(),
        });
        let header = RunHeader {
            run_id: run_id.clone(),
            pipeline: pipeline.clone(),
            selection: describe(selection),
            slices: slices.len(),
            reprocess: options
                .reprocess
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            concurrency,
            retries: options.retries,
            started_at: options.clock.now(),
            promoted_from: None,
            cluster: cluster_of(options),
        };
        run.history.start(&header).await?;
        let keys: Vec<String> = slices.iter().map(|s| s.key.clone()).collect();
        let stop = options.stop.clone();
        let gates = shared.gates.clone();
        let finished: Vec<(usize, Option<SliceOutcome>)> =
            futures::stream::iter(slices.into_iter().enumerate())
                // Asked each time a task ends: once stopping, no new slice starts.
                .take_while(move |_| std::future::ready(!stop.is_stopping()))
                // Upstream slices are waited for, and places taken, here, one slice after
                // the other, so slices start in run order.
                .then(|(index, slice)| {
                    let (run, gates, after) = (run.clone(), gates.clone(), &after[index]);
                    async move {
                        let ready = match &gates {
                            Some(gates) if !after.is_empty() => run.wait_for(gates, after).await,
                            _ => Ok(()),
                        };
                        let place = match ready {
                            Ok(()) => Ok(run.place().await),
                            Err(status) => Err(status),
                        };
                        (index, slice, place)
                    }
                })
                .map(|(index, slice, place)| {
                    let (run, reporter, stop) =
                        (run.clone(), reporter.clone(), options.stop.clone());
                    let (gates, pipeline) = (shared.gates.clone(), pipeline.clone());
                    // Each slice on its own task, so slices compute on all cores at once.
                    tokio::spawn(async move {
                        if stop.is_stopping() {
                            // Stopped while it waited for a place: it never started.
                            return (index, None);
                        }
                        let started = Instant::now();
                        let (status, attempts) = match place {
                            Ok(place) => {
                                reporter.slice_started(&pipeline, &slice.key);
                                tokio::select! {
                                    finished = run.attempt_slice(&slice, index, place) => finished,
                                    _ = stop.in_flight.cancelled() => (SliceStatus::Abandoned, 1),
                                }
                            }
                            Err(blocked) => (run.record_blocked(&slice, index, blocked).await, 0),
                        };
                        if let Some(gates) = &gates {
                            gates.settle(&pipeline, &slice.key, &status);
                        }
                        let outcome = SliceOutcome {
                            slice: slice.key,
                            status,
                            duration_ms: millis(started.elapsed()),
                            attempts,
                        };
                        reporter.slice_finished(&pipeline, &outcome);
                        (index, Some(outcome))
                    })
                })
                .buffer_unordered(concurrency * (1 + WAITING_PER_PLACE))
                .map(|joined| {
                    joined.map_err(|e| Error::Internal(format!("a slice task panicked: {e}")))
                })
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_>>()?;
        // Slices finish in any order; the summary lists them in run order.
        let mut in_run_order: Vec<Option<SliceOutcome>> = keys.iter().map(|_| None).collect();
        for (index, outcome) in finished {
            in_run_order[index] = outcome;
        }
        let not_started = keys
            .iter()
            .zip(&in_run_order)
            .filter(|(_, outcome)| outcome.is_none())
            .map(|(key, _)| key.clone())
            .collect::<Vec<_>>();
        let mut outcomes: Vec<SliceOutcome> = in_run_order.into_iter().flatten().collect();
        if outcomes.iter().any(|o| o.status == SliceStatus::Abandoned) {
            self.settle_abandoned(&mut outcomes, &run.run_id).await?;
        }
        let rebuild = match self.sink.strategy().publishing() {
            Publishing::Swap => {
                let staged = std::mem::take(&mut *run.staged.lock().expect("not poisoned"));
                Some(
                    run.finish_rebuild(&mut outcomes, &not_started, staged)
                        .await,
                )
            }
            Publishing::Commits(_) => None,
        };
        if let Some(gates) = &shared.gates {
            // What downstream slices still wait for: a rebuild's slices, visible from its
            // swap on, and slices that never started.
            gates.settle_rest(&pipeline, &keys, rebuild.as_ref());
        }
        let summary = RunSummary {
            run_id,
            pipeline,
            stopped: options.stop.is_stopping() && !not_started.is_empty(),
            not_started,
            outcomes,
            rebuild,
        };
        if summary.committed() > 0 || summary.rebuild.is_some() {
            self.summarize_ledger().await;
        }
        let end = RunEnd {
            ended_at: options.clock.now(),
            committed: summary.committed(),
            skipped: summary.skipped(),
            failed: summary.failed(),
            rebuild: summary.rebuild.clone(),
        };
        run.history.end(&summary.run_id, &end).await?;
        Ok(summary)
    }

    /// Reads the ledger afresh, saving a summary of it if the commits since the last one
    /// are many, so that the next `plan` reads only what commits after this run. Best
    /// effort: the run's work is done either way.
    async fn summarize_ledger(&self) {
        let read = async {
            let table = self.sink.reload().await?;
            Ledger::read(table.as_ref(), &self.pipeline.name, Summaries::Save).await
        };
        if let Err(error) = read.await {
            tracing::warn!("could not summarize the Delta log after the run: {error}");
        }
    }

    /// An abandoned slice may have committed just before it was dropped: the Delta log,
    /// read afresh, says which did, so the summary tells exactly what is in the table.
    async fn settle_abandoned(&self, outcomes: &mut [SliceOutcome], run_id: &str) -> Result<()> {
        let table = self.sink.reload().await?;
        let ledger = Ledger::read(table.as_ref(), &self.pipeline.name, Summaries::ReadOnly).await?;
        for outcome in outcomes
            .iter_mut()
            .filter(|o| o.status == SliceStatus::Abandoned)
        {
            if let Some(committed) = ledger
                .get(&outcome.slice)
                .filter(|c| c.record.run_id == run_id)
            {
                let record = &committed.record;
                outcome.status = SliceStatus::Committed {
                    version: committed.version.unwrap_or_default(),
                    rows: record.rows,
                    bytes: record.bytes,
                };
            }
        }
        Ok(())
    }
}

/// A run's slices, planned before any starts.
pub(crate) struct Launch {
    pub(crate) known: Arc<Known>,
    /// Each slice's plan, in run order.
    pub(crate) planned: Vec<SlicePlan>,
}

/// What the pipelines of one run share: its id, the places to compute in, and in a
/// chained run the gates their slices wait at.
pub(crate) struct Shared {
    pub(crate) run_id: String,
    pub(crate) places: Arc<Semaphore>,
    pub(crate) gates: Option<Arc<Gates>>,
}

impl Shared {
    pub(crate) fn new(run_id: String, concurrency: usize, gates: Option<Arc<Gates>>) -> Self {
        Shared {
            run_id,
            places: Arc::new(Semaphore::new(concurrency.max(1))),
            gates,
        }
    }
}

/// One run in progress: what its slices share, and the jobs of running them (attempts,
/// one slice's task, finishing a rebuild), each in its own file.
struct Run {
    backfill: Arc<Backfill>,
    options: RunOptions,
    run_id: String,
    /// The Delta log's records and the failed slices, as the run started.
    known: Arc<Known>,
    /// For each slice, in run order, the state for which the pre-flight chose not to run
    /// it, if it did.
    not_run: Vec<Option<&'static str>>,
    /// For each slice, whether the pre-flight could not plan it (storage kept failing),
    /// so that what it refuses is checked when the slice runs.
    unplanned: Vec<bool>,
    /// The places to compute a slice in, `concurrency` of them. A checked slice gives
    /// its place up while it waits for its commit.
    places: Arc<Semaphore>,
    history: History,
    /// A rebuild's slices staged (or found staged) by this run, for its swap.
    staged: std::sync::Mutex<HashMap<String, StagedSlice>>,
}

impl Run {
    /// Waits for a place to compute a slice in.
    async fn place(&self) -> OwnedSemaphorePermit {
        let places = self.places.clone();
        places
            .acquire_owned()
            .await
            .expect("the places are never closed")
    }

    fn remember_staged(&self, staged: StagedSlice) {
        let mut all = self.staged.lock().expect("not poisoned");
        all.insert(staged.record.slice.clone(), staged);
    }
}

/// Where the run's slices compute, for the run history: a cluster's address.
fn cluster_of(_options: &RunOptions) -> Option<String> {
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &_options.cluster {
        return Some(cluster.url().to_string());
    }
    None
}

/// A selection as people write it, for the run history.
pub(crate) fn describe(selection: &Selection) -> String {
    match selection {
        Selection::Range { start, end } => format!("{start}..{end}"),
        Selection::Keys(keys) if keys.is_empty() => "the pipeline's keys".to_string(),
        Selection::Keys(keys) => keys.join(","),
    }
}

pub(crate) fn new_run_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let now = now.format("%Y%m%dT%H%M%SZ");
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{now}-{suffix}")
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}
