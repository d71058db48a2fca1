//! [`Backfill`]: a pipeline opened against its sources and destination.
//!
//! Opening resolves the sources, plans the transform once to learn its output schema,
//! and checks the pipeline against that schema and the destination table; every later
//! step reuses this work. [`Backfill::plan`] says, for each slice, what the Delta log
//! knows of it. Running is in [`crate::run`].

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::Column;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{Expr, SessionContext};
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::column_lineage::ColumnLineage;
use crate::error::{Error, Result, ResultExt};
use crate::ledger::{Ledger, Summaries, SwapManifest};
use crate::pipeline::{Assertion, Pipeline};
use crate::retry::RequestRetry;
use crate::sink::rebuild::Replaced;
use crate::sink::strategy::Publishing;
use crate::sink::Sink;
use crate::slice::{Selection, Slice};
use crate::source::{self, Listing, Reads, SourceFile, Sources, StoreOverrides};
use crate::states::{self, Facts, Reprocess, SliceState};
use crate::template;
use crate::upstream::{self, Upstream, UpstreamSlice};
use std::collections::{HashMap, HashSet};

/// A pipeline, opened: sources resolved, SQL planned, destination checked.
pub struct Backfill {
    pub(crate) pipeline: Pipeline,
    pub(crate) sources: Sources,
    pub(crate) schema: SchemaRef,
    pub(crate) sink: Sink,
    pub(crate) sql_fingerprint: String,
    /// Which source columns each output column derives from, if the plan tells.
    pub(crate) column_lineage: Option<ColumnLineage>,
    /// The sources that read pipelines of the same chained run.
    pub(crate) upstreams: Vec<Upstream>,
    /// The selection the pipeline was opened for, if any, cut once.
    scope: Option<Scope>,
}

/// A selection and its slices.
struct Scope {
    selection: Selection,
    slices: Vec<Slice>,
    lookback: Lookback,
}

/// Options for opening a pipeline that are not in its file.
pub struct OpenOptions {
    /// Object stores to use instead of the defaults (tests count requests this way).
    pub stores: StoreOverrides,
    /// A store to reach the destination table through instead of the one its URL names
    /// (tests inject storage faults this way). Rooted at the root of the bucket or disk.
    pub destination_store: Option<Arc<dyn object_store::ObjectStore>>,
    /// Memory for query execution across all slices in flight, in bytes.
    pub memory_limit: usize,
    /// The slices the command works on, if it knows: sources partitioned like the slices
    /// then read the footers of those slices' files only to learn their schema, so a bad
    /// or old file elsewhere neither costs a read nor blocks the run.
    pub scope: Option<Selection>,
    /// How long a storage read that fails for a passing reason (a reset connection, a
    /// busy server) is asked again, request by request.
    pub request_retry: RequestRetry,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            stores: vec![],
            destination_store: None,
            memory_limit: 4 << 30,
            scope: None,
            request_retry: RequestRetry::default(),
        }
    }
}

/// A slice's plan, as plain data: the SQL as rendered, the files it reads, their
/// fingerprint, the slice's state and whether a run runs it. It holds no execution
/// handles: the runner prepares execution from the slice when the slice starts (seeing
/// the files there are by then), and `plan --json` is this type serialized.
#[derive(Debug, Clone)]
pub struct SlicePlan {
    pub slice: Slice,
    pub sql: String,
    pub files: Vec<SourceFile>,
    /// The sources the SQL reads that have no file for this slice.
    pub empty_sources: Vec<String>,
    pub source_fingerprint: String,
    pub state: SliceState,
    /// Whether a run with the same choice of states (and catch-up) runs this slice.
    pub will_run: bool,
    /// Why the slice cannot run as its sources are now (a source file it reads is not
    /// valid Parquet, say); running it fails with this, and only it.
    pub problem: Option<String>,
    /// Why the slice could not be planned now (storage kept failing past the retries of
    /// its reads). Its state, files and whether it has source data are unknown; a run
    /// plans it again when it starts, and checks it then.
    pub unplanned: Option<String>,
    /// How long computing it should take, once a plan's estimate has a basis.
    pub estimated_ms: Option<u64>,
    /// In a chained run, the upstream pipelines' slices of the run it reads.
    pub reads: Vec<UpstreamSlice>,
    /// Those of them a run runs first: the slice waits for them, and its own state is
    /// decided once they are done.
    pub after: Vec<UpstreamSlice>,
    /// What it reads of each Parquet source, as its commit records it.
    pub source_reads: Option<Reads>,
    /// Whether its inputs were looked at: not for a done slice before a catch-up's
    /// lookback, which the log alone calls done.
    pub inputs_checked: bool,
    /// A catch-up's slice with no source data yet: not run, as its data has not landed.
    pub awaiting_data: bool,
}

/// How a catch-up plans its slices beyond their states ([`crate::slice::CatchUp`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Lookback {
    /// Done slices that start before this are done as the log says, their inputs not
    /// looked at.
    pub(crate) checked_from: Option<NaiveDateTime>,
    /// Slices without source data wait for it rather than run or stop the run.
    pub(crate) data_awaited: bool,
}

impl Lookback {
    /// The lookback of `selection`'s catch-up, if it is one, for `pipeline`.
    pub(crate) fn of(pipeline: &Pipeline, selection: &Selection) -> Result<Lookback> {
        let resolved = pipeline.slices.resolve(selection)?;
        Ok(Lookback {
            checked_from: pipeline.slices.checked_from(&resolved),
            data_awaited: resolved.catch_up.is_some(),
        })
    }

    /// Whether `slice`'s inputs are left unchecked.
    fn trusts(&self, slice: &Slice) -> bool {
        let window = slice.window.map(|(start, _)| start);
        (self.checked_from.zip(window)).is_some_and(|(from, start)| start < from)
    }

    /// Leaves the slices of `plans` that have no source data to a later catch-up, unless
    /// `allow_empty`.
    pub(crate) fn await_data(&self, plans: &mut [SlicePlan], allow_empty: bool) {
        if !self.data_awaited || allow_empty {
            return;
        }
        // A slice after upstream slices of the run is decided at its gate, once they are.
        let waiting = plans.iter_mut().filter(|plan| {
            plan.will_run
                && plan.after.is_empty()
                && plan.unplanned.is_none()
                && !plan.empty_sources.is_empty()
        });
        for plan in waiting {
            plan.will_run = false;
            plan.awaiting_data = true;
        }
    }
}

impl SlicePlan {
    /// The state a plan shows: the slice's, or `pending` while it waits for upstream
    /// slices, `unknown` when it could not be planned.
    pub fn shown_state(&self) -> &'static str {
        match (&self.unplanned, self.after.is_empty()) {
            (Some(_), _) => "unknown",
            (None, false) => "pending",
            (None, true) => self.state.name(),
        }
    }
}

impl Serialize for SlicePlan {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut plan = serializer.serialize_struct("SlicePlan", 14)?;
        plan.serialize_field("slice", &self.slice.key)?;
        plan.serialize_field("state", &self.state)?;
        plan.serialize_field("will_run", &self.will_run)?;
        if !self.after.is_empty() {
            plan.serialize_field("after", &self.after)?;
        }
        plan.serialize_field("source_files", &self.files.len())?;
        plan.serialize_field("source_bytes", &self.source_bytes())?;
        plan.serialize_field("source_rows", &self.source_rows())?;
        plan.serialize_field("no_source_data", &self.empty_sources)?;
        plan.serialize_field("problem", &self.problem)?;
        if let Some(unplanned) = &self.unplanned {
            plan.serialize_field("unplanned", unplanned)?;
        }
        plan.serialize_field("estimated_ms", &self.estimated_ms)?;
        plan.serialize_field("source_fingerprint", &self.source_fingerprint)?;
        if !self.inputs_checked {
            plan.serialize_field("inputs_checked", &false)?;
        }
        if self.awaiting_data {
            plan.serialize_field("awaiting_data", &true)?;
        }
        plan.serialize_field("sql", &self.sql)?;
        plan.end()
    }
}

/// What a slice runs with: the DataFusion session it was planned in and its physical
/// plan, prepared when the slice starts (or for a sample), never kept in a [`SlicePlan`].
pub(crate) struct Prepared {
    pub(crate) state: SessionState,
    pub(crate) plan: Arc<dyn ExecutionPlan>,
}

impl Prepared {
    /// What the plan executes with: the session it was planned in.
    pub(crate) fn task_ctx(&self) -> Arc<TaskContext> {
        Arc::new(TaskContext::from(&self.state))
    }
}

/// A slice's transform, planned: the data of its plan and what executes it.
pub(crate) struct Transform {
    sql: String,
    files: Vec<SourceFile>,
    empty_sources: Vec<String>,
    problem: Option<String>,
    reads: Vec<UpstreamSlice>,
    source_reads: Option<Reads>,
    pub(crate) prepared: Prepared,
}

impl Backfill {
    /// Opens a pipeline: resolves its sources, plans its SQL for a sample slice, and
    /// checks the output against the assertions and the destination.
    pub async fn open(pipeline: Pipeline, options: OpenOptions) -> Result<Self> {
        Self::open_chained(pipeline, options, vec![]).await
    }

    /// Opens a pipeline whose `upstreams` run in the same run: their tables may not be
    /// written yet, and its slices say which of their slices they read.
    pub(crate) async fn open_chained(
        pipeline: Pipeline,
        options: OpenOptions,
        upstreams: Vec<Upstream>,
    ) -> Result<Self> {
        let scope = match options.scope {
            Some(selection) => Some(Scope {
                slices: pipeline.cut(&selection)?,
                lookback: Lookback::of(&pipeline, &selection)?,
                selection,
            }),
            None => None,
        };
        // A catch-up reads footers and lists only where it checks inputs: its cost
        // follows its lookback, not the history.
        let with_lookback = scope.as_ref().filter(|s| s.lookback.checked_from.is_some());
        let checked: Option<Vec<Slice>> = with_lookback.map(|scope| {
            let checked = scope.slices.iter().filter(|s| !scope.lookback.trusts(s));
            checked.cloned().collect()
        });
        let inferred_from = checked
            .as_deref()
            .or(scope.as_ref().map(|s| s.slices.as_slice()));
        let unwritten: Vec<_> = upstreams
            .iter()
            .map(|u| (u.source.clone(), u.unwritten.clone()))
            .collect();
        let sources = Sources::resolve(
            &pipeline,
            &options.stores,
            options.request_retry,
            options.memory_limit,
            inferred_from,
            &unwritten,
        );
        // The destination loads meanwhile; its errors still come after the transform's.
        let destination = async {
            let loaded = Sink::load(
                &pipeline.destination,
                options.destination_store,
                options.request_retry,
            );
            let loaded = loaded.await?;
            // A plan follows, which looks for done slices' files.
            Ok::<_, Error>(match scope.is_some() {
                true => loaded.list_data_files(),
                false => loaded,
            })
        };
        let (sources, destination) = futures::join!(sources, destination);
        let sources = sources?;
        let sample = pipeline.slices.sample();
        let variables = sample.variables();
        let sql = template::render(&pipeline.sql, &variables, &pipeline.sql_origin)?;
        let frame = source::read_only_query(sources.planning_state(1), &sql, || {
            format!("{}: transform", pipeline.sql_origin)
        })
        .await
        .map_err(|error| WrittenSql::transform(&pipeline).point(&variables, error))?;
        let schema = output_schema(frame.schema().as_arrow())
            .map_err(|m| Error::config(&pipeline.sql_origin, m))?;
        let column_lineage = ColumnLineage::of(frame.logical_plan());
        check_columns(&pipeline, &schema)?;
        check_destination_apart(&pipeline)?;
        check_assertion_sql(&pipeline, &sources.context(1)?, &schema, &sample).await?;
        let sink = Sink::open(
            &pipeline.name,
            &pipeline.destination,
            schema.clone(),
            destination?,
        )?;
        sink.share_runtime(sources.runtime().clone());
        let sql_fingerprint = source::fingerprint_text(&pipeline.sql);
        Ok(Backfill {
            pipeline,
            sources,
            schema,
            sink,
            sql_fingerprint,
            column_lineage,
            upstreams,
            scope,
        })
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The transform's output columns, as the destination stores them.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Cuts a selection into slices. Pure: no IO. The selection the pipeline was opened
    /// for was cut then, and is not cut again.
    pub fn slices(&self, selection: &Selection) -> Result<Vec<Slice>> {
        match &self.scope {
            Some(scope) if scope.selection == *selection => Ok(scope.slices.clone()),
            _ => self.pipeline.cut(selection),
        }
    }

    /// Deletes what this pipeline's attempts left in the table's folder without ever
    /// committing it, if older than the options' window as of `now`, refusing a window
    /// that could race a run in flight; see [`crate::sink::clean`].
    pub async fn clean(
        &self,
        options: &crate::sink::clean::CleanOptions,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::sink::clean::Cleaned> {
        options.check()?;
        self.sink
            .clean(options.older_than, now, options.dry_run)
            .await
    }

    /// The run `run` of this pipeline's history (`latest` for its newest), or an error
    /// naming the destination it was looked for in.
    pub async fn run_record(&self, run: &str) -> Result<crate::history::RunRecord> {
        let history = self.history();
        let found = match history.resolve(run, &self.pipeline.name).await? {
            Some(run_id) => history.run(&run_id).await?,
            None => None,
        };
        found.ok_or_else(|| self.no_run(run))
    }

    /// The OpenLineage events run `run` (`latest` for the newest) wrote next to its
    /// history, one JSON text each, in order, with the run's id.
    pub async fn lineage_events(&self, run: &str) -> Result<(String, Vec<String>)> {
        let history = self.history();
        let run_id = history.resolve(run, &self.pipeline.name).await?;
        let found = match &run_id {
            Some(run_id) => history.lineage(run_id).await?,
            None => None,
        };
        match (run_id, found) {
            (Some(run_id), Some(events)) => Ok((run_id, events)),
            _ => Err(self.no_run(run)),
        }
    }

    /// The error for a run `run` this pipeline's history does not hold.
    fn no_run(&self, run: &str) -> Error {
        Error::config(
            "RUN",
            format!(
                "no run `{run}` of {} in the history of {}; `backfill history` lists its runs",
                self.pipeline.name, self.pipeline.destination.url
            ),
        )
    }

    /// The run history kept next to the destination table.
    pub fn history(&self) -> crate::history::History {
        crate::history::History::new(self.sink.store())
    }

    /// What the destination's Delta log records for this pipeline.
    pub async fn ledger(&self) -> Result<Ledger> {
        self.read_ledger(Summaries::ReadOnly).await
    }

    async fn read_ledger(&self, summaries: Summaries) -> Result<Ledger> {
        let table = self.sink.table().await;
        Ledger::read(table.as_ref(), &self.pipeline.name, summaries).await
    }

    /// What is recorded of the slices before a run: the Delta log's records, and from the
    /// run history the slices whose last attempt failed.
    pub(crate) async fn recorded(&self, summaries: Summaries) -> Result<Recorded> {
        let ledger = self.read_ledger(summaries).await?;
        let history = self
            .history()
            .slices(&self.pipeline.name, summaries)
            .await?;
        let (staged, table_fits) = match self.sink.strategy().publishing() {
            Publishing::Swap => (
                self.sink.staged_slices().await?,
                self.sink.fits_table().await,
            ),
            Publishing::Commits(_) => (HashMap::new(), true),
        };
        let table_files = self
            .sink
            .table_files(&self.pipeline.slices.columns())
            .await?;
        Ok(Recorded {
            ledger,
            last_failures: history.last_failures(),
            retries: history.retries(),
            staged,
            table_fits,
            table_files,
        })
    }

    /// The plans of a selection's slices, without an estimate.
    pub async fn slice_plans(
        self: &Arc<Self>,
        selection: &Selection,
        reprocess: Reprocess,
        concurrency: usize,
    ) -> Result<Vec<SlicePlan>> {
        let slices = self.slices(selection)?;
        let lookback = self.lookback(selection)?;
        let recorded = Arc::new(self.recorded(Summaries::ReadOnly).await?);
        let mut plans = self
            .plan_slices(slices, &recorded, reprocess, lookback, concurrency, None)
            .await?;
        lookback.await_data(&mut plans, false);
        Ok(plans)
    }

    /// How `selection` is planned if it is a catch-up.
    pub(crate) fn lookback(&self, selection: &Selection) -> Result<Lookback> {
        match &self.scope {
            Some(scope) if scope.selection == *selection => Ok(scope.lookback),
            _ => Lookback::of(&self.pipeline, selection),
        }
    }

    /// Plans `slices`, `concurrency` at a time, each on a task of its own so that
    /// planning thousands of slices uses every core; the plans come back in order. Slices
    /// that stay done are found first, without planning their SQL. A slice whose planning
    /// fails for a reason that may pass (storage), or outlasts `deadline`, is
    /// [`SlicePlan::unplanned`]: one slice's storage fault does not stop the others.
    pub(crate) async fn plan_slices(
        self: &Arc<Self>,
        slices: Vec<Slice>,
        recorded: &Arc<Recorded>,
        reprocess: Reprocess,
        lookback: Lookback,
        concurrency: usize,
        deadline: Option<Duration>,
    ) -> Result<Vec<SlicePlan>> {
        let ahead = self
            .done_ahead(slices, recorded, reprocess, lookback, concurrency)
            .await?;
        futures::stream::iter(ahead)
            .map(|ahead| {
                let slice = match ahead {
                    Ok(done) => return futures::future::ready(Ok(Ok(done))).left_future(),
                    Err(slice) => slice,
                };
                let (backfill, recorded) = (self.clone(), recorded.clone());
                tokio::spawn(async move {
                    // These plans are never executed: one partition is the cheapest to plan.
                    let planned = backfill.plan_slice(slice.clone(), &recorded, reprocess, 1);
                    let planned =
                        match deadline {
                            None => planned.await,
                            Some(limit) => tokio::time::timeout(limit, planned)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(Error::execution(
                                        format!("slice {}", slice.key),
                                        format!("planning timed out after {limit:?}"),
                                    ))
                                }),
                        };
                    match planned {
                        Ok((plan, _prepared)) => Ok(plan),
                        Err(error) if error.is_transient() => {
                            tracing::warn!(slice = %slice.key, "planning failed: {error}");
                            Ok(SlicePlan::unplanned(slice, &error))
                        }
                        Err(error) => Err(error),
                    }
                })
                .right_future()
            })
            .buffered(concurrency.max(1))
            .map(|joined| {
                joined.map_err(|e| Error::Internal(format!("planning a slice panicked: {e}")))?
            })
            .try_collect()
            .await
    }

    /// In order, the plan of each slice of `slices` that stays done ([`Backfill::still_done`],
    /// or before the `lookback`, [`Backfill::trusted_done`]), or the slice, to plan in
    /// full. Deciding that costs microseconds a slice, so the slices are split among
    /// `tasks` tasks rather than given a task each.
    async fn done_ahead(
        self: &Arc<Self>,
        slices: Vec<Slice>,
        recorded: &Arc<Recorded>,
        reprocess: Reprocess,
        lookback: Lookback,
        tasks: usize,
    ) -> Result<Vec<std::result::Result<SlicePlan, Slice>>> {
        let checked = slices.iter().filter(|slice| !lookback.trusts(slice));
        let listing = self.listing_for(checked, recorded, reprocess).await?;
        if listing.is_none() && lookback.checked_from.is_none() {
            return Ok(slices.into_iter().map(Err).collect());
        }
        let per_task = slices.len().div_ceil(tasks.max(1));
        let mut slices = slices.into_iter();
        let deciding: Vec<_> = std::iter::from_fn(|| {
            let chunk: Vec<Slice> = slices.by_ref().take(per_task).collect();
            (!chunk.is_empty()).then_some(chunk)
        })
        .map(|chunk| {
            let (backfill, recorded, listing) = (self.clone(), recorded.clone(), listing.clone());
            tokio::spawn(async move {
                let mut ahead = Vec::with_capacity(chunk.len());
                for slice in chunk {
                    let done = match &listing {
                        _ if lookback.trusts(&slice) => {
                            backfill.trusted_done(&slice, &recorded, reprocess).await?
                        }
                        Some(listing) => {
                            let done = backfill.still_done(&slice, &recorded, listing, reprocess);
                            done.await?
                        }
                        None => None,
                    };
                    ahead.push(done.ok_or(slice));
                }
                Ok::<_, Error>(ahead)
            })
        })
        .collect();
        let mut ahead = Vec::new();
        for task in deciding {
            let chunk = task.await;
            let chunk =
                chunk.map_err(|e| Error::Internal(format!("planning slices panicked: {e}")));
            ahead.extend(chunk??);
        }
        Ok(ahead)
    }

    /// One listing of the Parquet sources, when some of `slices` are done with their reads
    /// recorded and a run would leave done slices alone: what [`Backfill::still_done`]
    /// finds their files in.
    async fn listing_for(
        &self,
        slices: impl Iterator<Item = &Slice>,
        recorded: &Recorded,
        reprocess: Reprocess,
    ) -> Result<Option<Arc<Listing>>> {
        let mut committed = slices.filter_map(|s| recorded.ledger.get(&s.key));
        if reprocess.done || !committed.any(|c| c.record.reads.is_some()) {
            return Ok(None);
        }
        Ok(Some(Arc::new(self.sources.listing().await?)))
    }

    /// The plan of a done slice that stays done, found without planning its SQL: its
    /// record's reads give its files in `listing`, and their fingerprint is the one it
    /// was committed with. `None` when that cannot tell (nothing recorded, a source not
    /// listed, anything changed, a problem to show): the slice is planned in full.
    async fn still_done(
        &self,
        slice: &Slice,
        recorded: &Recorded,
        listing: &Listing,
        reprocess: Reprocess,
    ) -> Result<Option<SlicePlan>> {
        let Some(committed) = recorded.ledger.get(&slice.key) else {
            return Ok(None);
        };
        let Some(files) = (committed.record.reads.as_ref()).and_then(|r| listing.files(r)) else {
            return Ok(None);
        };
        let source_fingerprint = source::fingerprint_files(&files);
        if source_fingerprint != committed.record.source_fingerprint
            || self.sources.left_out(&files).is_some()
        {
            return Ok(None);
        }
        let state = self.state_of(slice, recorded, &source_fingerprint, reprocess);
        let state = state.await?;
        if !matches!(state, SliceState::Done { .. }) || reprocess.wants(&state) {
            return Ok(None);
        }
        let reads = committed.record.reads.clone().expect("reads were found");
        let empty_sources = (reads.keys())
            .filter(|source| !files.iter().any(|f| &f.source == *source))
            .cloned()
            .collect();
        let plan = self.done_plan(slice, state, files, source_fingerprint, Some(reads))?;
        Ok(Some(SlicePlan {
            empty_sources,
            ..plan
        }))
    }

    /// The plan of a done slice before a catch-up's lookback, from the log alone: its
    /// inputs are not looked at, so it stays done unless the log says otherwise (its SQL
    /// changed, its files are gone). `None` when it does not: it is planned in full.
    async fn trusted_done(
        &self,
        slice: &Slice,
        recorded: &Recorded,
        reprocess: Reprocess,
    ) -> Result<Option<SlicePlan>> {
        let Some(committed) = recorded.ledger.get(&slice.key) else {
            return Ok(None);
        };
        let record = &committed.record;
        let state = self.state_of(slice, recorded, &record.source_fingerprint, reprocess);
        let state = state.await?;
        if !matches!(state, SliceState::Done { .. }) || reprocess.wants(&state) {
            return Ok(None);
        }
        let fingerprint = record.source_fingerprint.clone();
        let plan = self.done_plan(slice, state, vec![], fingerprint, record.reads.clone())?;
        Ok(Some(SlicePlan {
            inputs_checked: false,
            ..plan
        }))
    }

    /// The plan of `slice`, done and not run, reading `files`.
    fn done_plan(
        &self,
        slice: &Slice,
        state: SliceState,
        files: Vec<SourceFile>,
        source_fingerprint: String,
        source_reads: Option<Reads>,
    ) -> Result<SlicePlan> {
        let variables = slice.variables();
        let sql = template::render(&self.pipeline.sql, &variables, &self.pipeline.sql_origin)?;
        Ok(SlicePlan {
            slice: slice.clone(),
            sql,
            empty_sources: vec![],
            files,
            source_fingerprint,
            state,
            will_run: false,
            problem: None,
            unplanned: None,
            estimated_ms: None,
            reads: vec![],
            after: vec![],
            source_reads,
            inputs_checked: true,
            awaiting_data: false,
        })
    }

    /// In a chained run, marks the slices of `plans` that read upstream slices the run
    /// runs first (`running`): they wait for them, and their state is decided once those
    /// are done (a done slice is changed by then). A source those slices fill is not
    /// empty for them. A slice that could not be planned waits for all of them.
    pub(crate) fn wait_for_upstream(
        &self,
        plans: &mut [SlicePlan],
        running: &HashSet<UpstreamSlice>,
        reprocess: Reprocess,
    ) {
        // A slice the pre-flight could not plan may read any slice of its upstreams.
        let any_unplanned = plans.iter().any(|p| p.unplanned.is_some());
        let every_upstream_slice: Vec<UpstreamSlice> = self
            .upstreams
            .iter()
            .filter(|_| any_unplanned)
            .flat_map(|u| {
                u.slices.iter().map(|s| UpstreamSlice {
                    pipeline: u.pipeline.clone(),
                    slice: s.key.clone(),
                })
            })
            .collect();
        for plan in plans {
            let reads = match plan.unplanned {
                Some(_) => &every_upstream_slice,
                None => &plan.reads,
            };
            plan.after = reads
                .iter()
                .filter(|slice| running.contains(slice))
                .cloned()
                .collect();
            if plan.after.is_empty() {
                continue;
            }
            plan.will_run = match &plan.state {
                SliceState::Done { .. } => reprocess.changed || reprocess.done,
                state => reprocess.wants(state),
            };
            let filled: Vec<&str> = self
                .upstreams
                .iter()
                .filter(|u| plan.after.iter().any(|a| a.pipeline == u.pipeline))
                .map(|u| u.source.as_str())
                .collect();
            plan.empty_sources
                .retain(|source| !filled.contains(&source.as_str()));
        }
    }

    /// For a rebuild, what swapping in the output of `planned` would replace in the table
    /// as it is now: every file but those of the done slices the run keeps.
    pub(crate) async fn swap_preview(&self, planned: &[SlicePlan]) -> Result<Option<Replaced>> {
        match self.sink.strategy().publishing() {
            Publishing::Swap => {}
            Publishing::Commits(_) => return Ok(None),
        }
        let kept = planned
            .iter()
            .filter(|p| !p.will_run && matches!(p.state, SliceState::Done { .. }))
            .map(|p| p.slice.key.as_str())
            .collect();
        self.sink.replaced(&kept).await.map(Some)
    }

    /// Plans one slice: its transform, split into `partitions` streams, and its state
    /// from what is `recorded`.
    pub(crate) async fn plan_slice(
        &self,
        slice: Slice,
        recorded: &Recorded,
        reprocess: Reprocess,
        partitions: usize,
    ) -> Result<(SlicePlan, Prepared)> {
        let transform = self.plan_transform(&slice, partitions).await?;
        let source_fingerprint = source::fingerprint_files(&transform.files);
        let state = self.state_of(&slice, recorded, &source_fingerprint, reprocess);
        let state = state.await?;
        let plan = SlicePlan {
            slice,
            sql: transform.sql,
            files: transform.files,
            empty_sources: transform.empty_sources,
            source_fingerprint,
            will_run: reprocess.wants(&state),
            state,
            problem: transform.problem,
            unplanned: None,
            estimated_ms: None,
            reads: transform.reads,
            after: vec![],
            source_reads: transform.source_reads,
            inputs_checked: true,
            awaiting_data: false,
        };
        Ok((plan, transform.prepared))
    }

    /// The state of `slice` whose inputs now have `source_fingerprint`, from what the log
    /// and the history record.
    async fn state_of(
        &self,
        slice: &Slice,
        recorded: &Recorded,
        source_fingerprint: &str,
        reprocess: Reprocess,
    ) -> Result<SliceState> {
        let committed = recorded.ledger.get(&slice.key);
        // A done slice is skipped, so its files are looked for: a table that points at
        // files gone from storage fails every reader, and rewriting the slice repairs it.
        let missing_files = match committed {
            Some(_) => {
                self.sink
                    .missing_files(&recorded.table_files, slice)
                    .await?
            }
            None => vec![],
        };
        // The staging key sums up the output's every input: worth it for a staged slice.
        let staged = recorded.staged.get(&slice.key);
        let staging_key = staged.map(|_| self.staging_key(slice, source_fingerprint));
        Ok(states::decide(&Facts {
            committed,
            last_failure: recorded.last_failures.get(&slice.key),
            source_fingerprint,
            sql_fingerprint: &self.sql_fingerprint,
            table_fits: recorded.table_fits,
            missing_files: &missing_files,
            staged: staged.zip(staging_key.as_deref()),
            reprocess,
        }))
    }

    /// `slice`'s SQL, rendered, and its transform planned in `state` (here, or on a
    /// cluster) as the destination stores its rows.
    pub(crate) async fn transform_frame(
        &self,
        state: SessionState,
        slice: &Slice,
        context: impl Fn() -> String + Copy,
    ) -> Result<(String, datafusion::dataframe::DataFrame)> {
        let variables = slice.variables();
        let sql = template::render(&self.pipeline.sql, &variables, &self.pipeline.sql_origin)?;
        let frame = source::read_only_query(state, &sql, context)
            .await
            .map_err(|error| WrittenSql::transform(&self.pipeline).point(&variables, error))?;
        Ok((sql, self.as_output(frame, slice, context)?))
    }

    /// The transform's rows of `slice` as the destination stores them: each column cast to
    /// the output schema's type; an error if the columns differ from other slices'.
    fn as_output(
        &self,
        frame: datafusion::dataframe::DataFrame,
        slice: &Slice,
        context: impl Fn() -> String + Copy,
    ) -> Result<datafusion::dataframe::DataFrame> {
        let casts: Vec<_> = frame
            .schema()
            .iter()
            .zip(self.schema.fields())
            .map(|((qualifier, field), target)| {
                let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
                if field.data_type() == target.data_type() {
                    column
                } else {
                    datafusion::logical_expr::cast(column, target.data_type().clone())
                        .alias(field.name())
                }
            })
            .collect();
        let frame = frame.select(casts).context(context)?;
        let types = |fields: &datafusion::arrow::datatypes::Fields| {
            fields
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect::<Vec<_>>()
        };
        if types(frame.schema().as_arrow().fields()) != types(self.schema.fields()) {
            return Err(Error::config(
                &self.pipeline.sql_origin,
                format!(
                    "slice {}: the transform's output columns differ from other slices'",
                    slice.key
                ),
            ));
        }
        Ok(frame)
    }

    /// Renders and plans one slice's SQL, split into `partitions` streams; the physical
    /// plan names the files it reads.
    pub(crate) async fn plan_transform(
        &self,
        slice: &Slice,
        partitions: usize,
    ) -> Result<Transform> {
        let state = self.sources.planning_state(partitions);
        let context = || format!("slice {}: planning the transform", slice.key);
        let (sql, frame) = self.transform_frame(state, slice, context).await?;
        let referenced = referenced_tables(frame.logical_plan());
        let (state, logical) = frame.into_parts();
        let optimized = state.optimize(&logical).context(context)?;
        let reads = upstream::slices_read(&optimized, &self.upstreams);
        let source_reads = self.sources.reads_of(&optimized);
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await;
        let (plan, files, problem) = match physical.context(context) {
            Ok(plan) => {
                let files = self.sources.scanned_files(&plan);
                let problem = self.sources.left_out(&files).map(|(file, why)| {
                    format!("source file {file} was left out of the source's schema: {why}")
                });
                (plan, files, problem)
            }
            // A source file that is not valid Parquet fails this slice only; `plan` shows
            // it rather than failing for every slice.
            Err(Error::Data { message, .. }) => {
                let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(self.schema.clone()));
                (empty, vec![], Some(message))
            }
            Err(error) => return Err(error),
        };
        // A source the SQL reads but whose partitions hold no file for this slice:
        // expired by retention, a wrong path, or a range beyond the data.
        let empty_sources = referenced
            .into_iter()
            .filter(|name| self.sources.has(name) && !files.iter().any(|f| &f.source == name))
            // Without a plan, which files the slice reads is not known.
            .filter(|_| problem.is_none())
            .collect();
        Ok(Transform {
            sql,
            files,
            empty_sources,
            problem,
            reads,
            source_reads,
            prepared: Prepared { state, plan },
        })
    }
}

impl Backfill {
    /// Sums up everything a slice's checked output depends on: its inputs, the SQL, the
    /// output's columns and partitioning, and the assertions it passed.
    pub(crate) fn staging_key(&self, slice: &Slice, source_fingerprint: &str) -> String {
        let columns: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        let assertions: Vec<String> = self
            .pipeline
            .assertions
            .iter()
            .map(|a| a.describe())
            .collect();
        let described = serde_json::json!({
            "pipeline": self.pipeline.name,
            "slice": slice.key,
            "sources": source_fingerprint,
            "sql": self.sql_fingerprint,
            "columns": columns,
            "partition_by": self.pipeline.destination.partition_by,
            "assertions": assertions,
        });
        source::fingerprint_text(&described.to_string())
    }
}

impl SlicePlan {
    /// The plan of `slice` when planning it failed with `error`, which may pass: a run
    /// runs it, and plans it again when it starts.
    fn unplanned(slice: Slice, error: &Error) -> SlicePlan {
        SlicePlan {
            slice,
            sql: String::new(),
            files: vec![],
            empty_sources: vec![],
            source_fingerprint: String::new(),
            state: SliceState::Missing,
            will_run: true,
            problem: None,
            unplanned: Some(error.to_string()),
            estimated_ms: None,
            reads: vec![],
            after: vec![],
            source_reads: None,
            inputs_checked: true,
            awaiting_data: false,
        }
    }

    pub fn source_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Rows in the files it reads, from their footers; `None` if a footer did not say.
    pub fn source_rows(&self) -> Option<u64> {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// The names of the tables a logical plan scans.
fn referenced_tables(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let mut names = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            names.push(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("the visitor never fails");
    names.sort();
    names.dedup();
    names
}

/// What the Delta log and the run history record of a selection's slices before a run.
pub(crate) struct Recorded {
    pub(crate) ledger: Ledger,
    /// Slices whose last recorded attempt failed: the run and the error.
    pub(crate) last_failures: HashMap<String, (String, String)>,
    /// Attempts beyond the first, per slice, over every recorded run.
    pub(crate) retries: HashMap<String, u32>,
    /// A rebuild's staged slices, by key; always empty for other strategies.
    pub(crate) staged: HashMap<String, SwapManifest>,
    /// Whether the table (if any) has the pipeline's columns and partitioning. When it
    /// has not, a rebuild cannot keep any of its files.
    pub(crate) table_fits: bool,
    /// The table's files by slice, to look for a done slice's files in storage.
    pub(crate) table_files: crate::sink::TableFiles,
}

/// A SQL text as the pipeline's author wrote it: where, and what it is for.
struct WrittenSql<'a> {
    text: &'a str,
    file: &'a str,
    start: crate::pipeline::SqlStart,
    /// `transform`, `assertion`.
    what: &'a str,
}

impl<'a> WrittenSql<'a> {
    fn transform(pipeline: &'a Pipeline) -> Self {
        WrittenSql {
            text: &pipeline.sql,
            file: &pipeline.sql_origin,
            start: pipeline.sql_start,
            what: "transform",
        }
    }

    /// A SQL error of this text rendered with `variables`, pointed at the file, line and
    /// column where the text as written has what is wrong, and shown as written there:
    /// `daily_revenue.sql:12:1: transform: syntax error: ...`, that line and a caret.
    fn point(&self, variables: &[(&str, String)], error: Error) -> Error {
        let Error::Sql { context, error, .. } = error else {
            return error;
        };
        let (message, at) = source::query::described(&error);
        let written = at
            .and_then(|(line, column)| template::written_place(self.text, variables, line, column));
        let Some((line, column)) = written else {
            return Error::Sql {
                context,
                error,
                shown: Some(message),
            };
        };
        let text = self.text.lines().nth(line - 1).unwrap_or_default();
        // Under the character at fault, keeping the line's tabs so the caret lines up.
        let caret: String = (text.chars().take(column - 1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .chain(['^'])
            .collect();
        let (file_line, file_column) = self.start.place(line, column);
        let place = format!("{}:{file_line}:{file_column}", self.file);
        // A slice's own context (`slice 2024-01-09: planning ...`) is kept.
        let context = match context.starts_with(self.file) {
            true => format!("{place}: {}", self.what),
            false => format!("{context} ({place})"),
        };
        Error::Sql {
            context,
            error,
            shown: Some(format!(
                "{message}\n{file_line:>5} | {text}\n      | {caret}"
            )),
        }
    }
}

/// The schema the destination stores for a transform's output: types that Delta readers
/// of protocol 1/2 understand. Timestamps without a time zone would silently upgrade the
/// table's protocol, so they are stored as UTC microseconds.
fn output_schema(schema: &Schema) -> std::result::Result<SchemaRef, String> {
    fn storable(name: &str, data_type: &DataType) -> std::result::Result<DataType, String> {
        Ok(match data_type {
            DataType::Utf8View
            | DataType::LargeUtf8
            | DataType::BinaryView
            | DataType::LargeBinary => source::plain_type(data_type),
            DataType::Timestamp(_, None) => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            DataType::Timestamp(_, Some(zone)) => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(zone.clone()))
            }
            DataType::Dictionary(_, values) => storable(name, values)?,
            DataType::Null => {
                return Err(format!(
                    "output column `{name}` has no type (it is always NULL): CAST it to one"
                ))
            }
            other => other.clone(),
        })
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        if fields.iter().any(|f: &Field| f.name() == field.name()) {
            return Err(format!(
                "the transform returns two columns named `{}`",
                field.name()
            ));
        }
        fields.push(Field::new(
            field.name(),
            storable(field.name(), field.data_type())?,
            true,
        ));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Plans every SQL assertion over an empty `slice` with the output's schema, so that a
/// mistake in one is reported before any slice runs.
async fn check_assertion_sql(
    pipeline: &Pipeline,
    ctx: &SessionContext,
    schema: &SchemaRef,
    sample: &Slice,
) -> Result<()> {
    let empty = datafusion::datasource::empty::EmptyTable::new(schema.clone());
    ctx.register_table("slice", Arc::new(empty))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let file = pipeline.file.display().to_string();
    for assertion in &pipeline.assertions {
        let Assertion::Sql { sql, start } = assertion else {
            continue;
        };
        let variables = sample.variables();
        let rendered = template::render(sql, &variables, &file)?;
        let context = || format!("{file}: assertion `{sql}`");
        let written = WrittenSql {
            text: sql,
            file: &file,
            start: *start,
            what: "assertion",
        };
        let frame = source::read_only_query(ctx.state(), &rendered, context)
            .await
            .map_err(|error| written.point(&variables, error))?;
        let fields = frame.schema().fields();
        if fields.len() != 1 || fields[0].data_type() != &DataType::Boolean {
            return Err(Error::config(context(), "must return one boolean column"));
        }
    }
    Ok(())
}

/// Refuses a destination that is, holds or lies inside a source's folder: every run would
/// read its own output back, and a day's rows would double each time.
fn check_destination_apart(pipeline: &Pipeline) -> Result<()> {
    let destination = pipeline.destination.url.as_str();
    for source in &pipeline.sources {
        let location = source.url.as_str();
        if destination.starts_with(location) || location.starts_with(destination) {
            return Err(Error::config(
                pipeline.file.display().to_string(),
                format!(
                    "the destination {destination} overlaps source `{}` at {location}: each run would read its own output back. Write the table outside the sources' folders",
                    source.name
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that every column the pipeline file names exists in the output.
fn check_columns(pipeline: &Pipeline, schema: &Schema) -> Result<()> {
    let file = pipeline.file.display().to_string();
    let missing = |column: &str, what: &str| {
        Error::config(
            &file,
            format!("{what} names column `{column}`, which the transform does not return"),
        )
    };
    for column in &pipeline.destination.partition_by {
        schema
            .index_of(column)
            .map_err(|_| missing(column, "destination.partition_by"))?;
    }
    if let Some(keys) = crate::sink::strategy::of(&pipeline.destination).row_keys() {
        for column in keys {
            schema
                .index_of(column)
                .map_err(|_| missing(column, "destination.merge_keys"))?;
        }
    }
    for assertion in &pipeline.assertions {
        let columns: Vec<&String> = match assertion {
            Assertion::MaxNullRate { column, .. } => vec![column],
            Assertion::Unique(columns) => columns.iter().collect(),
            Assertion::MinRows(_) | Assertion::Sql { .. } => vec![],
        };
        for column in columns {
            schema
                .index_of(column)
                .map_err(|_| missing(column, &format!("assertion `{}`", assertion.describe())))?;
        }
    }
    Ok(())
}
