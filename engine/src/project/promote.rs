//! Promoting slices from one environment of a project to another (staging to prod)
//! without running any SQL: each slice's files are copied into the target table and
//! committed there with the record the slice was committed with, so the target's
//! ledger says `done` for it afterwards. Everything is checked before anything is
//! copied: a slice that is not done in the source environment, or that the target
//! committed after the source did, refuses the whole promotion. A slice whose record the
//! target already carries is promoted already, and is left alone.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::Project;
use crate::clock::Clock;
use crate::error::{Error, Result, ResultExt};
use crate::history::{Attempt, History, RunEnd, RunHeader};
use crate::ledger::{Committed, Ledger, OtherWriters, SliceRecord, Summaries};
use crate::pipeline::Pipeline;
use crate::retry::RequestRetry;
use crate::sink::{strategy, Committer, Sink};
use crate::slice::{describe_spans, spans_by, Selection, Slice};
use crate::states::SliceOutcome;

/// Slices of one pipeline promoted at once; their commits group as a run's do.
const PROMOTIONS_IN_FLIGHT: usize = 8;

/// What a promotion did.
#[derive(Debug, Clone, Serialize)]
pub struct Promotion {
    /// The promotion's run, in the history of every target table it wrote to.
    pub run_id: String,
    pub from: String,
    pub to: String,
    pub pipelines: Vec<PipelinePromotion>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelinePromotion {
    pub pipeline: String,
    pub destination: String,
    pub slices: Vec<PromotedSlice>,
    /// Who but this pipeline made the target table's latest commits, if anyone.
    pub other_writers: Option<OtherWriters>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromotedSlice {
    pub slice: String,
    #[serde(flatten)]
    pub outcome: Promoted,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "promotion", rename_all = "snake_case")]
pub enum Promoted {
    /// Copied and committed in table version `version`.
    Committed {
        version: u64,
        files: usize,
        rows: u64,
        bytes: u64,
    },
    /// The target carries this slice's record already.
    Already { version: Option<u64> },
    /// Another run committed the slice to the target while this promotion ran.
    CommittedMeanwhile { by_run: String, version: u64 },
}

/// One pipeline's promotion, checked and ready to copy.
struct Ready {
    pipeline: Pipeline,
    from: Sink,
    to: Sink,
    /// In slice order: the slice, the record its promotion carries, and the target's
    /// commit of it if the target carries that record already.
    slices: Vec<(Slice, SliceRecord, Option<Arc<Committed>>)>,
    other_writers: Option<OtherWriters>,
}

impl Project {
    /// Promotes the slices of `selection` of every pipeline of this project (the source
    /// environment) into `target`, the same project in another environment. `clock`
    /// stamps the promotion's run id and history.
    pub async fn promote(
        &self,
        target: &Project,
        selection: &Selection,
        clock: &dyn Clock,
    ) -> Result<Promotion> {
        let mut ready = Vec::new();
        let mut refusals = Vec::new();
        for pipeline in &self.pipelines {
            let goal = target.same(pipeline);
            match self
                .check(pipeline, goal, &target.environment, selection)
                .await?
            {
                Ok(checked) => ready.push(checked),
                Err(refused) => refusals.extend(refused),
            }
        }
        if !refusals.is_empty() {
            return Err(self.refused(target, &refusals));
        }
        let run_id = crate::run::new_run_id(clock.now());
        let mut pipelines = Vec::new();
        for ready in ready {
            pipelines.push(
                ready
                    .promote(&run_id, &self.environment, selection, clock)
                    .await?,
            );
        }
        Ok(Promotion {
            run_id,
            from: self.environment.clone(),
            to: target.environment.clone(),
            pipelines,
        })
    }

    /// The refusal of a whole promotion: every reason, one line per pipeline and reason,
    /// and what to do next.
    fn refused(&self, target: &Project, refusals: &[String]) -> Error {
        let (from, project) = (&self.environment, self.file.display());
        let next = format!("next: run those slices in {from} (`backfill run {project} --env {from}` with the same range), or promote only what {from} has done (`backfill plan {project} --env {from}` shows it)");
        Error::config(
            format!("promoting from {from} to {}", target.environment),
            format!(
                "refused, nothing was copied:\n  {}\n{next}",
                refusals.join("\n  ")
            ),
        )
    }

    /// Checks `pipeline`'s slices in this environment against `goal`, the same pipeline
    /// in the target: the reasons to refuse, or what to copy.
    async fn check(
        &self,
        pipeline: &Pipeline,
        goal: &Pipeline,
        target: &str,
        selection: &Selection,
    ) -> Result<std::result::Result<Ready, Vec<String>>> {
        let name = &pipeline.name;
        if !strategy::of(&pipeline.destination).slices_own_their_files() {
            return Err(Error::config(
                pipeline.file.display().to_string(),
                format!(
                    "{name}: promote copies a slice's own files, which strategy = \"{}\" does not keep apart from other slices'; run it in {target} instead",
                    pipeline.destination.strategy.name(),
                ),
            ));
        }
        let Some(table) = crate::sink::existing_table(&pipeline.destination).await? else {
            let reason = format!("{name}: no table in {} yet", self.environment);
            return Ok(Err(vec![reason]));
        };
        let context = || format!("destination {}", pipeline.destination.url);
        let schema = table.snapshot().context(context)?.snapshot().arrow_schema();
        let from = {
            let loaded = Sink::load(&pipeline.destination, None, RequestRetry::default()).await?;
            Sink::open(name, &pipeline.destination, schema.clone(), loaded)?
        };
        let to = {
            let loaded = Sink::load(&goal.destination, None, RequestRetry::default()).await?;
            Sink::open(name, &goal.destination, schema, loaded)?
        };
        let source = ledger_of(&from, name).await?;
        let there_now = ledger_of(&to, name).await?;
        let slices = pipeline.cut(&selection.for_spec(&pipeline.slices))?;
        let mut refused: Vec<(String, String)> = Vec::new();
        let mut checked = Vec::new();
        for slice in &slices {
            let Some(promoted) = source.get(&slice.key) else {
                let why = format!("not done in {}", self.environment);
                refused.push((slice.key.clone(), why));
                continue;
            };
            let there = there_now.get(&slice.key);
            if let Some(there) = there.filter(|t| !is_promotion_of(&t.record, &promoted.record)) {
                if committed_after(there, promoted) {
                    let why = format!(
                        "committed in {target} by run {} after {} committed it",
                        there.record.committed_by(),
                        self.environment
                    );
                    refused.push((slice.key.clone(), why));
                    continue;
                }
            }
            let already = there
                .filter(|t| is_promotion_of(&t.record, &promoted.record))
                .cloned();
            let mut record = promoted.record.clone();
            record.promoted_from = Some(self.environment.clone());
            record.txn_version = there.map_or(1, |t| t.record.txn_version + 1);
            checked.push((slice.clone(), record, already));
        }
        let refusals = grouped(name, &slices, &refused);
        if !refusals.is_empty() {
            return Ok(Err(refusals));
        }
        let other_writers = match to.table().await {
            Some(table) => OtherWriters::of(&table, name, crate::ledger::RECENT_COMMITS).await?,
            None => None,
        };
        Ok(Ok(Ready {
            pipeline: pipeline.clone(),
            from,
            to,
            slices: checked,
            other_writers,
        }))
    }
}

impl Ready {
    /// Copies and commits every slice the target does not carry yet, recording the
    /// promotion in the target's run history as run `run_id`.
    async fn promote(
        self,
        run_id: &str,
        from_environment: &str,
        selection: &Selection,
        clock: &dyn Clock,
    ) -> Result<PipelinePromotion> {
        // Recorded first: the history's folder also marks the target's folder as ours
        // before any file is copied into it, for a rerun after a kill to write there.
        let history = History::new(self.to.store());
        let header = RunHeader {
            run_id: run_id.to_string(),
            pipeline: self.pipeline.name.clone(),
            selection: selection.describe(),
            slices: self.slices.len(),
            reprocess: vec![],
            concurrency: PROMOTIONS_IN_FLIGHT,
            retries: 0,
            started_at: clock.now(),
            promoted_from: Some(from_environment.to_string()),
            cluster: None,
            started_by: Some(crate::run::who()),
        };
        history.start(&header).await?;
        let to_copy: Vec<String> = self
            .slices
            .iter()
            .filter(|(_, _, already)| already.is_none())
            .map(|(slice, _, _)| slice.key.clone())
            .collect();
        let mut files: HashMap<String, Vec<deltalake::kernel::Add>> = to_copy
            .iter()
            .cloned()
            .zip(self.from.files_of_slices(&to_copy).await?)
            .collect();
        let this = Arc::new(self);
        let history = &history;
        let promotions = this.slices.iter().enumerate().map(|(index, (slice, record, already))| {
            let adds = files.remove(&slice.key).unwrap_or_default();
            let this = this.clone();
            async move {
                let started = std::time::Instant::now();
                let outcome = match already {
                    Some(there) => Promoted::Already {
                        version: there.version,
                    },
                    None => this.promote_slice(slice, record, adds, run_id).await?,
                };
                let attempt = Attempt {
                    slice: slice.key.clone(),
                    attempt: 1,
                    status: outcome.status(),
                    duration_ms: started.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
                    finished_at: clock.now(),
                };
                if let Err(error) = history.attempt(run_id, index, &attempt).await {
                    tracing::warn!(slice = %slice.key, "could not record the promotion in the run history: {error}");
                }
                Ok::<_, Error>(PromotedSlice {
                    slice: slice.key.clone(),
                    outcome,
                })
            }
        });
        let slices = futures::stream::iter(promotions)
            .buffered(PROMOTIONS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let count =
            |wanted: fn(&Promoted) -> bool| slices.iter().filter(|s| wanted(&s.outcome)).count();
        let end = RunEnd {
            ended_at: clock.now(),
            committed: count(|o| matches!(o, Promoted::Committed { .. })),
            skipped: count(|o| !matches!(o, Promoted::Committed { .. })),
            failed: 0,
            rebuild: None,
            stopped: false,
        };
        history.end(run_id, &end).await?;
        Ok(PipelinePromotion {
            pipeline: this.pipeline.name.clone(),
            destination: this.to.url().to_string(),
            slices,
            other_writers: this.other_writers.clone(),
        })
    }

    async fn promote_slice(
        &self,
        slice: &Slice,
        record: &SliceRecord,
        adds: Vec<deltalake::kernel::Add>,
        run_id: &str,
    ) -> Result<Promoted> {
        let files = adds.len();
        let record = &SliceRecord {
            promoted_by: Some(run_id.to_string()),
            ..record.clone()
        };
        let staged = self.to.copy_in(&self.from, adds, record).await?;
        let bytes = staged.bytes;
        let published = self
            .to
            .publish(slice, &staged, record, None, &|_| {})
            .await?;
        Ok(match published.by {
            Committer::ThisAttempt | Committer::EarlierAttempt => Promoted::Committed {
                version: published.version,
                files,
                rows: record.rows,
                bytes,
            },
            Committer::OtherRun { run_id } => Promoted::CommittedMeanwhile {
                by_run: run_id,
                version: published.version,
            },
        })
    }
}

/// What `sink`'s table records for `pipeline`.
async fn ledger_of(sink: &Sink, pipeline: &str) -> Result<Ledger> {
    let table = sink.table().await;
    Ledger::read(table.as_ref(), pipeline, Summaries::ReadOnly).await
}

impl Promoted {
    /// How the run history records it.
    fn status(&self) -> SliceOutcome {
        match self {
            Promoted::Committed {
                version,
                rows,
                bytes,
                ..
            } => SliceOutcome::Committed {
                version: *version,
                rows: *rows,
                bytes: *bytes,
            },
            Promoted::Already { .. } => SliceOutcome::Skipped {
                state: "promoted already".into(),
            },
            Promoted::CommittedMeanwhile { by_run, version } => SliceOutcome::CommittedMeanwhile {
                by_run: by_run.clone(),
                version: *version,
            },
        }
    }
}

/// One line per pipeline and reason, naming the refused slices by spans:
/// `orders_clean: 2024-01-03..2024-01-14 (12 slices) not done in staging`.
fn grouped(pipeline: &str, slices: &[Slice], refused: &[(String, String)]) -> Vec<String> {
    let why: HashMap<&str, &str> = refused
        .iter()
        .map(|(key, why)| (key.as_str(), why.as_str()))
        .collect();
    let keys = slices.iter().map(|s| s.key.as_str());
    (spans_by(keys, |key| why.get(key).copied()).into_iter())
        .map(|(reason, spans)| format!("{pipeline}: {} {reason}", describe_spans(&spans)))
        .collect()
}

/// Whether `there` is `record` promoted: the same attempt's output.
fn is_promotion_of(there: &SliceRecord, record: &SliceRecord) -> bool {
    there.run_id == record.run_id && there.attempt == record.attempt
}

/// Whether the target committed the slice after the source environment did.
fn committed_after(there: &Committed, promoted: &Committed) -> bool {
    match (there.committed_at, promoted.committed_at) {
        (Some(there), Some(promoted)) => there > promoted,
        // Without times, a commit in the target newer than the source's cannot be ruled out.
        _ => true,
    }
}
