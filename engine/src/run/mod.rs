//! Running slices: plan, skip what is done, compute, check, publish.
//!
//! Slices run concurrently (each on its own task, `concurrency` computing at once, more
//! waiting for their commit), each one streaming from its sources through the transform
//! into staged files, so both cores stay busy with reading, computing and writing at
//! once. A slice is the unit of retry and is idempotent: whatever happens to it, the
//! table either has all of its new output, in one commit, or none of it. That is what
//! makes retrying safe: a slice that fails for a transient reason (storage, a conflict
//! with another writer, a time limit) is tried again with exponential backoff and jitter;
//! a failed check, bad SQL or bad data is not. What happens is told as [`RunEvent`]s to
//! an [`Observer`]; this module never prints.
//!
//! One path runs a single pipeline and a project's pipelines alike ([`run_pipelines`]):
//! the pre-flight of every pipeline (`preflight.rs`), then each pipeline's slices scheduled
//! on the slots the run shares (`schedule.rs`), each slice's attempts (`attempts.rs`),
//! one attempt as plan, compute, check, publish (`slice_task.rs`, computing where
//! `executor.rs` says), and each pipeline's run finished (`finish.rs`, with a rebuild's
//! swap in `rebuild.rs`). In a chained run, downstream slices wait at the `gates.rs` of
//! the upstream slices they read. `events.rs` holds the events and writes the run
//! history from them; `summary.rs` what a run did; `watch.rs` the run's heartbeat and
//! the stop requests other processes leave next to its history (`cancel.rs` writes
//! them).

mod attempts;
pub mod cancel;
pub mod events;
mod executor;
mod finish;
pub(crate) mod gates;
mod leases;
mod preflight;
mod rebuild;
mod schedule;
mod slice_task;
mod summary;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backfill::{Backfill, Lookback, Recorded};
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, Setting};
use crate::estimate::{check_preflight, chosen_concurrency, default_concurrency, Budget, Estimate};
pub use crate::history::{host, who};
use crate::history::{History, SliceHistory};
use crate::ledger::SwapManifest;
use crate::lineage::Lineage;
use crate::sink::strategy::Publishing;
use crate::slice::{Selection, Slice};
use crate::states::Reprocess;
use crate::upstream::UpstreamSlice;
pub use events::{Observer, Phase, RunEvent, RunStatus, Silent};
use gates::Gates;
pub use leases::LeaseWait;
pub(crate) use preflight::runs;
use preflight::Preflight;
pub(crate) use schedule::Slots;
pub use summary::{FinishedSlice, RunSummary};
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
    /// The hash of the plan the run was confirmed on (`Plan::hash`): if the pre-flight
    /// decides anything else, the run is refused before any slice starts.
    pub expected_plan: Option<String>,
    /// What the run does while another run holds a pipeline's lease.
    pub lease: LeaseWait,
    /// Who started the run, as its history records it; `None`: [`who`].
    pub started_by: Option<String>,
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

    /// Waits until the run is asked to stop starting slices.
    pub async fn stopping(&self) {
        self.starting.cancelled().await
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
            expected_plan: None,
            lease: LeaseWait::Refuse,
            started_by: None,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }
}

/// Slices planned at once before a run: planning waits on listings and footers, not cores.
const PREFLIGHT_CONCURRENCY: usize = 16;

/// Checked slices that may wait for their commit, per slot to compute: waiting, they hold
/// no slot, so other slices compute meanwhile. Commits slow down as the table grows
/// (delta-rs replays the table's file list after each), and more slices then go in each
/// one instead of computing stalling until the commit is done.
const WAITING_PER_SLOT: usize = 3;

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

impl Backfill {
    /// Runs the selected slices whose state `options.reprocess` chooses: a run of this
    /// pipeline alone. Errors in the selection come back before anything runs; a slice's
    /// own failure is in its outcome, and the other slices go on.
    pub async fn run(
        self: Arc<Self>,
        selection: &Selection,
        options: &RunOptions,
        observer: Arc<dyn Observer>,
    ) -> Result<RunSummary> {
        let member = Member::new(self, selection)?;
        let (_, mut summaries) = run_pipelines(vec![member], options, observer).await?;
        Ok(summaries.remove(0))
    }
}

/// One pipeline of a run, with its slices, cut once from its selection.
pub(crate) struct Member {
    pub(crate) backfill: Arc<Backfill>,
    /// The selection as people write it, for the run history: a catch-up's range as
    /// this pipeline resolved it.
    pub(crate) selection: String,
    pub(crate) slices: Vec<Slice>,
    pub(crate) lookback: Lookback,
}

impl Member {
    pub(crate) fn new(backfill: Arc<Backfill>, selection: &Selection) -> Result<Member> {
        Ok(Member {
            slices: backfill.slices(selection)?,
            selection: backfill.pipeline.slices.resolve(selection)?.describe(),
            lookback: backfill.lookback(selection)?,
            backfill,
        })
    }
}

/// Runs `members`, a pipeline alone or a project's pipelines upstream first, as one run:
/// each pipeline's lease taken, one pre-flight over every slice before any starts, one
/// run id, the same slots to compute in, and downstream slices waiting for the upstream
/// slices they read; the leases given up at the end. Returns the run id and each
/// pipeline's summary, in the order given.
pub(crate) async fn run_pipelines(
    members: Vec<Member>,
    options: &RunOptions,
    observer: Arc<dyn Observer>,
) -> Result<(String, Vec<RunSummary>)> {
    let run_id = new_run_id(options.clock.now());
    let leases = leases::take(&members, &run_id, options, observer.as_ref()).await?;
    let ran = async {
        // Under the lease, the run decides from the log as the run before it left it.
        if !leases.is_empty() {
            for member in &members {
                member.backfill.sink.read_latest().await?;
            }
        }
        run_leased(members, options, observer, run_id).await
    };
    let ran = ran.await;
    leases::release(leases).await;
    ran
}

/// [`run_pipelines`] once the leases are taken.
async fn run_leased(
    members: Vec<Member>,
    options: &RunOptions,
    observer: Arc<dyn Observer>,
    run_id: String,
) -> Result<(String, Vec<RunSummary>)> {
    let preflights = preflight::plan_all(&members, options).await?;
    if let Some(expected) = &options.expected_plan {
        let names = members.iter().map(|m| m.backfill.pipeline.name.as_str());
        let plans = preflights.iter().map(|p| p.planned.as_slice());
        check_plan(expected, &crate::plan::hash_of(names.zip(plans)))?;
    }
    let every_plan = || preflights.iter().flat_map(|l| &l.planned);
    // The checks and the estimate are about the slices to run; a rerun of a long history
    // has none to copy.
    let planned: Vec<_> = every_plan().filter(|p| p.will_run).cloned().collect();
    check_preflight(&planned, &options.budget)?;
    let cores = default_concurrency();
    let concurrency = options
        .concurrency
        .unwrap_or_else(|| chosen_concurrency(&planned, cores));
    let options = RunOptions {
        concurrency: Some(concurrency),
        ..options.clone()
    };
    let ledgers = preflights.iter().map(|l| &l.recorded.ledger);
    let estimate = Estimate::of(
        &planned,
        crate::estimate::history_basis(ledgers),
        concurrency,
    );
    let chained = members.iter().any(|m| !m.backfill.upstreams.is_empty());
    let gates = chained.then(|| Arc::new(Gates::new(preflight::all_slices(&members))));
    let in_flight = watch::InFlight::around(observer, concurrency);
    let observer: Arc<dyn Observer> = in_flight.clone();
    let slots = Slots::new(concurrency, observer.clone());
    observer.on(&RunEvent::Started {
        run_id: run_id.clone(),
        pipelines: members
            .iter()
            .map(|m| m.backfill.pipeline.name.clone())
            .collect(),
        slices: every_plan().count(),
        to_run: every_plan()
            .filter(|p| p.will_run || !p.after.is_empty())
            .count(),
        concurrency,
        estimate,
    });
    let histories = members.iter().map(|m| m.backfill.history()).collect();
    let watching = watch::start(histories, run_id.clone(), &options, in_flight).await;
    let _stop_watching = watching.drop_guard();
    let runs = members
        .into_iter()
        .zip(preflights)
        .map(|(member, preflight)| {
            let run = Run::new(
                &member, preflight, &options, &run_id, &slots, &gates, &observer,
            );
            run.execute(member.selection)
        });
    let summaries: Vec<RunSummary> = futures::future::join_all(runs)
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let count = |of: fn(&RunSummary) -> usize| summaries.iter().map(of).sum();
    observer.on(&RunEvent::Ended {
        run_id: run_id.clone(),
        status: RunStatus::of(&summaries),
        committed: count(RunSummary::in_the_table),
        not_committed: count(RunSummary::not_committed),
        not_started: count(|s| s.not_started.len()),
    });
    Ok((run_id, summaries))
}

/// Refuses a run whose plan is not the one confirmed.
fn check_plan(expected: &str, now: &str) -> Result<()> {
    if expected == now {
        return Ok(());
    }
    Err(crate::Error::setting(
        &[Setting::ExpectedPlan],
        format!("the plan has changed since {expected} was confirmed (another run committed, a source or the SQL changed, or the selection differs): it is now {now}; nothing ran. Plan again to see what a run would do now"),
    ))
}

/// One pipeline's run in progress: what its slices share, and the jobs of running them
/// (scheduling, attempts, one slice's task, finishing), each in its own file.
struct Run {
    backfill: Arc<Backfill>,
    options: RunOptions,
    run_id: String,
    /// The Delta log's records and the failed slices, as the run started.
    recorded: Arc<Recorded>,
    /// For each slice, in run order, the state for which the pre-flight chose not to run
    /// it, if it did.
    not_run: Vec<Option<&'static str>>,
    /// For each slice, whether the pre-flight could not plan it (storage kept failing),
    /// so that what it refuses is checked when the slice runs.
    unplanned: Vec<bool>,
    /// The slices, in run order (the pre-flight's: newest first if asked).
    slices: Vec<Slice>,
    /// For each slice, the upstream slices of the run it waits for.
    after: Vec<Vec<UpstreamSlice>>,
    /// The slots to compute a slice in, shared by the run's pipelines. A checked slice
    /// gives its slot up while it waits for its commit.
    slots: Arc<Slots>,
    /// In a chained run, every slice's gate.
    gates: Option<Arc<Gates>>,
    history: History,
    observer: Arc<dyn Observer>,
    /// A rebuild's slices staged (or found staged) by this run, for its swap.
    staged: std::sync::Mutex<HashMap<String, SwapManifest>>,
    /// What this run's attempts say about each slice, saved in the history's summary
    /// when it ends, so that readers need not read its attempts.
    folded: std::sync::Mutex<SliceHistory>,
    /// The run's OpenLineage events, built as it goes.
    lineage: Lineage,
}

impl Run {
    fn new(
        member: &Member,
        preflight: Preflight,
        options: &RunOptions,
        run_id: &str,
        slots: &Arc<Slots>,
        gates: &Option<Arc<Gates>>,
        observer: &Arc<dyn Observer>,
    ) -> Run {
        let Preflight { recorded, planned } = preflight;
        // A slice the pre-flight chose not to run (done, or a state not chosen) is
        // skipped without planning it again, unless it waits for upstream slices: its
        // state is recorded only once they are done.
        let not_run = planned
            .iter()
            .map(|p| match p.awaiting_data {
                true => Some("no source data yet"),
                false => (!p.will_run && p.after.is_empty()).then(|| p.state.name()),
            })
            .collect();
        let unplanned = planned.iter().map(|p| p.unplanned.is_some()).collect();
        let backfill = member.backfill.clone();
        Run {
            lineage: Lineage::new(&backfill, run_id, backfill.history()),
            history: backfill.history(),
            backfill,
            options: options.clone(),
            run_id: run_id.to_string(),
            recorded,
            not_run,
            unplanned,
            slices: planned.iter().map(|p| p.slice.clone()).collect(),
            after: planned.into_iter().map(|p| p.after).collect(),
            slots: slots.clone(),
            gates: gates.clone(),
            observer: observer.clone(),
            staged: Default::default(),
            folded: Default::default(),
        }
    }

    fn remember_staged(&self, staged: SwapManifest) {
        let mut all = self.staged.lock().expect("not poisoned");
        all.insert(staged.record.slice.clone(), staged);
    }

    fn pipeline(&self) -> &str {
        &self.backfill.pipeline.name
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

/// A new run's id: the second it started, then a random suffix.
pub(crate) fn new_run_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let now = now.format(crate::history::RUN_ID_SECOND);
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{now}-{suffix}")
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}
