//! Which event says what: a pipeline's part of a run is a parent run (its START when the
//! part starts, COMPLETE, FAIL or ABORT when it ends), and each attempt at a slice is a
//! run of the pipeline's job with that parent, its slice's window as its nominal time,
//! and, once it ends, what it read, wrote and checked. Ids come from the run's id, the
//! pipeline, the slice and the attempt, and times from the run's history, so the same
//! event is the same whenever it is sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Map, Value};

use super::event::{self, facet, Dataset, Event, EventType, Job, JobName, Run};
use super::outlets::Outlets;
use crate::backfill::Backfill;
use crate::column_lineage::{ColumnLineage, Origins, SourceColumn};
use crate::history::{Attempt, History, RunEnd, RunHeader, RUN_ID_SECOND};
use crate::ledger::AssertionResult;
use crate::pipeline::SourceFormat;
use crate::slice::Slice;
use crate::source::SourceFile;
use crate::states::{RebuildOutcome, RunStatus, SliceOutcome};

/// What an attempt at a slice read, ran and checked, as far as it got.
#[derive(Debug, Default)]
pub struct AttemptFacts {
    /// The SQL it ran, rendered for its slice.
    pub sql: Option<String>,
    /// The files its plan read.
    pub files: Vec<SourceFile>,
    /// The version of each Delta source its plan read.
    pub versions: Vec<(String, u64)>,
    /// Its assertions' results, passed or not.
    pub checks: Vec<AssertionResult>,
}

/// A source as an input dataset, with its name in the SQL.
struct Input {
    source: String,
    dataset: Dataset,
}

/// A pipeline's part of a run, as OpenLineage events. Each method emits one event and
/// returns it if it goes to the console.
pub struct Lineage {
    /// The backfill run's id, and when it started (to the second, from the id).
    run_id: String,
    started: DateTime<Utc>,
    pipeline: String,
    parent: JobName,
    job: JobName,
    sql: String,
    inputs: Vec<Input>,
    output: Dataset,
    /// Attempts started and not ended, by slice index: their slice and attempt.
    open: Mutex<HashMap<usize, (Slice, u32)>>,
    outlets: Outlets,
}

impl Lineage {
    /// The lineage of `backfill`'s part of run `run_id`, whose history is `history`.
    pub fn new(backfill: &Backfill, run_id: &str, history: History) -> Lineage {
        let pipeline = backfill.pipeline();
        let settings = &pipeline.lineage;
        let job = JobName {
            namespace: settings.namespace().to_string(),
            name: pipeline.name.clone(),
        };
        let inputs: Vec<Input> = (pipeline.sources.iter())
            .map(|source| {
                let delta = source.format == SourceFormat::Delta;
                let mut dataset = Dataset::at(&source.url);
                dataset.facets = data_source(&source.url, delta);
                Input {
                    source: source.name.clone(),
                    dataset,
                }
            })
            .collect();
        let destination = &pipeline.destination.url;
        let mut output = Dataset::at(destination);
        output.facets = data_source(destination, true);
        output
            .facets
            .insert("schema".into(), schema(&backfill.schema));
        if let Some(columns) = &backfill.column_lineage {
            let columns = column_lineage(columns, &inputs);
            output.facets.insert("columnLineage".into(), columns);
        }
        Lineage {
            run_id: run_id.to_string(),
            started: started_of(run_id),
            pipeline: pipeline.name.clone(),
            parent: JobName {
                name: format!("{}.backfill", pipeline.name),
                ..job.clone()
            },
            job,
            sql: pipeline.sql.clone(),
            inputs,
            output,
            open: Mutex::default(),
            outlets: Outlets::new(settings, history, run_id),
        }
    }

    /// The parent run starts: the pipeline's part of the run, over `slices`.
    pub fn started(&self, header: &RunHeader, slices: &[Slice]) -> Option<Value> {
        if self.outlets.off() {
            return None;
        }
        let mut run = Run {
            run_id: self.parent_id(),
            facets: engine_facet(),
        };
        if let Some(nominal) = nominal_time(slices.iter().filter_map(|s| s.window)) {
            run.facets.insert("nominalTime".into(), nominal);
        }
        let event = Event::new(EventType::Start, header.started_at, run, self.parent_job());
        self.emit(event)
    }

    /// Attempt `attempt` at `slice`, the `index`-th of the run, starts at `at`.
    pub fn attempt_started(
        &self,
        index: usize,
        slice: &Slice,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> Option<Value> {
        if self.outlets.off() {
            // Nothing opened: its end builds nothing either.
            return None;
        }
        let mut open = self.open.lock().expect("not poisoned");
        open.insert(index, (slice.clone(), attempt));
        drop(open);
        let mut event = Event::new(
            EventType::Start,
            at,
            self.slice_run(slice, attempt),
            self.slice_job(&self.sql),
        );
        // Datasets by name only: their facets come with the attempt's end (a consumer
        // merges a run's events), which keeps a year of hourly slices' log small.
        event.inputs = self.inputs.iter().map(|i| i.dataset.named()).collect();
        event.outputs = vec![self.output.named()];
        self.emit(event)
    }

    /// An attempt ended as `attempt` (the history's record) says, having got as far as
    /// `facts` tell.
    pub fn attempt_ended(
        &self,
        index: usize,
        attempt: &Attempt,
        facts: AttemptFacts,
    ) -> Option<Value> {
        let (slice, _) = self.open.lock().expect("not poisoned").remove(&index)?;
        self.end(&slice, attempt, facts)
    }

    /// The attempts still open when the pipeline's part ends (abandoned as the run was
    /// stopped) end at `at` as `settled` says of their slice: committed after all, as the
    /// log says, or abandoned.
    pub fn close_open(
        &self,
        at: DateTime<Utc>,
        settled: impl Fn(&str) -> SliceOutcome,
    ) -> Vec<Value> {
        let open: Vec<(Slice, u32)> = (self.open.lock().expect("not poisoned").drain())
            .map(|(_, opened)| opened)
            .collect();
        let ended = open.into_iter().filter_map(|(slice, attempt)| {
            let record = Attempt {
                status: settled(&slice.key),
                slice: slice.key.clone(),
                attempt,
                duration_ms: 0,
                finished_at: at,
            };
            self.end(&slice, &record, AttemptFacts::default())
        });
        ended.collect()
    }

    /// The end of `attempt` at `slice`.
    fn end(&self, slice: &Slice, attempt: &Attempt, facts: AttemptFacts) -> Option<Value> {
        let event_type = match &attempt.status {
            SliceOutcome::Failed { .. } | SliceOutcome::Blocked { .. } => EventType::Fail,
            SliceOutcome::Abandoned => EventType::Abort,
            SliceOutcome::Committed { .. }
            | SliceOutcome::CommittedMeanwhile { .. }
            | SliceOutcome::Staged { .. }
            | SliceOutcome::Skipped { .. } => EventType::Complete,
        };
        let mut run = self.slice_run(slice, attempt.attempt);
        if let SliceOutcome::Failed { error, .. } = &attempt.status {
            run.facets
                .insert("errorMessage".into(), error_message(error));
        }
        let sql = facts.sql.as_deref().unwrap_or(&self.sql);
        let mut event = Event::new(event_type, attempt.finished_at, run, self.slice_job(sql));
        event.inputs = self.read(&facts);
        event.outputs = vec![self.written(&attempt.status, &facts.checks)];
        self.emit(event)
    }

    /// The parent run ended as `status` says, as its history's `end` records.
    pub fn ended(&self, status: RunStatus, end: &RunEnd) -> Option<Value> {
        if self.outlets.off() {
            return None;
        }
        let mut run = Run {
            run_id: self.parent_id(),
            facets: engine_facet(),
        };
        let event_type = match status {
            RunStatus::Done => EventType::Complete,
            RunStatus::Stopped => EventType::Abort,
            RunStatus::Incomplete => {
                let message = match &end.rebuild {
                    Some(RebuildOutcome::Waiting { .. } | RebuildOutcome::Refused { .. }) => {
                        "the rebuild did not swap the table".to_string()
                    }
                    _ => format!("{} slices failed or were blocked", end.failed),
                };
                run.facets
                    .insert("errorMessage".into(), error_message(&message));
                EventType::Fail
            }
        };
        self.emit(Event::new(event_type, end.ended_at, run, self.parent_job()))
    }

    /// Hands what was emitted to the log and the collector, and waits (a bounded time) for
    /// them to take it.
    pub async fn finish(&self) {
        self.outlets.finish().await;
    }

    /// Hands `event` to the log and the collector; returns it if it goes to the console
    /// too, for the caller to tell its observer (the engine never prints).
    fn emit(&self, event: Event) -> Option<Value> {
        let line = serde_json::to_string(&event).expect("events serialize");
        self.outlets.take(line);
        let console = self.outlets.console;
        console.then(|| serde_json::to_value(&event).expect("events serialize"))
    }

    fn parent_id(&self) -> uuid::Uuid {
        event::run_id(self.started, &[&self.run_id, &self.pipeline])
    }

    fn parent_job(&self) -> Job {
        Job {
            name: self.parent.clone(),
            facets: job_type("BACKFILL"),
        }
    }

    fn slice_job(&self, sql: &str) -> Job {
        let mut facets = job_type("SLICE");
        let query = json!({"query": sql, "dialect": "datafusion"});
        facets.insert("sql".into(), facet("1-1-0/SQLJobFacet", query));
        Job {
            name: self.job.clone(),
            facets,
        }
    }

    fn slice_run(&self, slice: &Slice, attempt: u32) -> Run {
        let attempt = attempt.to_string();
        let id = [self.run_id.as_str(), &self.pipeline, &slice.key, &attempt];
        let mut facets = engine_facet();
        let parent = json!({"runId": self.parent_id()});
        let job = json!({"namespace": self.parent.namespace, "name": self.parent.name});
        let fields = json!({"run": parent, "job": job, "root": {"run": parent, "job": job}});
        facets.insert("parent".into(), facet("1-2-0/ParentRunFacet", fields));
        if let Some(nominal) = nominal_time(slice.window) {
            facets.insert("nominalTime".into(), nominal);
        }
        Run {
            run_id: event::run_id(self.started, &id),
            facets,
        }
    }

    /// The sources, with what the attempt read of each: its files summarized, and the
    /// version of a Delta table.
    fn read(&self, facts: &AttemptFacts) -> Vec<Dataset> {
        let inputs = self.inputs.iter().map(|input| {
            let mut dataset = input.dataset.clone();
            let name = &input.source;
            let files: Vec<&SourceFile> =
                facts.files.iter().filter(|f| &f.source == name).collect();
            // Only Delta sources have versions.
            if let Some((_, version)) = facts.versions.iter().find(|(source, _)| source == name) {
                dataset
                    .facets
                    .insert("version".into(), dataset_version(*version));
            }
            if facts.sql.is_some() {
                let mut fields = json!({
                    "fileCount": files.len(),
                    "size": files.iter().map(|f| f.size).sum::<u64>(),
                });
                if let Some(rows) = files.iter().map(|f| f.rows).sum::<Option<u64>>() {
                    fields["rowCount"] = rows.into();
                }
                let statistics = facet("1-0-0/InputStatisticsInputDatasetFacet", fields);
                dataset
                    .input_facets
                    .insert("inputStatistics".into(), statistics);
            }
            dataset
        });
        inputs.collect()
    }

    /// The destination as an attempt that ended as `status` left it, with its checks.
    fn written(&self, status: &SliceOutcome, checks: &[AssertionResult]) -> Dataset {
        let mut output = self.output.clone();
        let version = match status {
            SliceOutcome::Committed { version, .. }
            | SliceOutcome::CommittedMeanwhile { version, .. } => Some(*version),
            _ => None,
        };
        if let Some(version) = version {
            output
                .facets
                .insert("version".into(), dataset_version(version));
        }
        if let (Some((rows, bytes)), SliceOutcome::Committed { .. }) = (status.written(), status) {
            let fields = json!({"rowCount": rows, "size": bytes});
            let statistics = facet("1-0-2/OutputStatisticsOutputDatasetFacet", fields);
            output
                .output_facets
                .insert("outputStatistics".into(), statistics);
        }
        if !checks.is_empty() {
            output
                .facets
                .insert("dataQualityAssertions".into(), assertions(checks));
        }
        output
    }
}

/// When run `run_id` started, to the second: its id starts with it.
fn started_of(run_id: &str) -> DateTime<Utc> {
    let second = run_id.split('-').next().unwrap_or_default();
    NaiveDateTime::parse_from_str(second, RUN_ID_SECOND)
        .map(|at| at.and_utc())
        .unwrap_or_default()
}

/// A Delta table's version, as the `version` dataset facet.
fn dataset_version(version: u64) -> Value {
    let fields = json!({"datasetVersion": version.to_string()});
    facet("1-0-1/DatasetVersionDatasetFacet", fields)
}

fn engine_facet() -> Map<String, Value> {
    let fields = json!({"version": env!("CARGO_PKG_VERSION"), "name": "backfill"});
    let engine = facet("1-1-1/ProcessingEngineRunFacet", fields);
    Map::from_iter([("processing_engine".to_string(), engine)])
}

fn job_type(job_type: &str) -> Map<String, Value> {
    let fields = json!({"processingType": "BATCH", "integration": "BACKFILL", "jobType": job_type});
    Map::from_iter([(
        "jobType".to_string(),
        facet("2-0-4/JobTypeJobFacet", fields),
    )])
}

fn error_message(message: &str) -> Value {
    let fields = json!({"message": message, "programmingLanguage": "rust"});
    facet("1-0-1/ErrorMessageRunFacet", fields)
}

/// The nominal time of windows: from the first's start to the last's end.
fn nominal_time(
    windows: impl IntoIterator<Item = (NaiveDateTime, NaiveDateTime)>,
) -> Option<Value> {
    let (start, end) = windows
        .into_iter()
        .reduce(|(s, e), (start, end)| (s.min(start), e.max(end)))?;
    let fields = json!({
        "nominalStartTime": event::time(start.and_utc()),
        "nominalEndTime": event::time(end.and_utc()),
    });
    Some(facet("1-0-1/NominalTimeRunFacet", fields))
}

/// Where a table is, and how it is stored: a Delta table, or hive-partitioned Parquet.
fn data_source(url: &url::Url, delta: bool) -> Map<String, Value> {
    let fields = json!({"name": url.as_str().trim_end_matches('/'), "uri": url.as_str()});
    let layer = if delta { "delta" } else { "hive" };
    let storage = json!({"storageLayer": layer, "fileFormat": "parquet"});
    Map::from_iter([
        (
            "dataSource".to_string(),
            facet("1-0-1/DatasourceDatasetFacet", fields),
        ),
        (
            "storage".to_string(),
            facet("1-0-1/StorageDatasetFacet", storage),
        ),
    ])
}

fn schema(schema: &datafusion::arrow::datatypes::Schema) -> Value {
    let fields: Vec<Value> = (schema.fields().iter())
        .map(|field| json!({"name": field.name(), "type": field.data_type().to_string()}))
        .collect();
    facet("1-2-0/SchemaDatasetFacet", json!({"fields": fields}))
}

/// The `columnLineage` facet of `lineage`, its tables named as the sources `inputs` are.
fn column_lineage(lineage: &ColumnLineage, inputs: &[Input]) -> Value {
    let fields_of = |origins: &Origins| -> Vec<Value> {
        let mut by_column: BTreeMap<&SourceColumn, Vec<Value>> = BTreeMap::new();
        for (column, how) in origins {
            let (kind, subtype) = how.words();
            let transformation = json!({"type": kind, "subtype": subtype});
            by_column.entry(column).or_default().push(transformation);
        }
        let named = by_column
            .into_iter()
            .filter_map(|((table, field), transformations)| {
                let dataset = &inputs.iter().find(|i| &i.source == table)?.dataset;
                Some(json!({
                    "namespace": dataset.namespace,
                    "name": dataset.name,
                    "field": field,
                    "transformations": transformations,
                }))
            });
        named.collect()
    };
    let fields: Map<String, Value> = (lineage.fields.iter())
        .map(|(name, origins)| (name.clone(), json!({"inputFields": fields_of(origins)})))
        .collect();
    let fields = json!({"fields": fields, "dataset": fields_of(&lineage.dataset)});
    facet("1-2-0/ColumnLineageDatasetFacet", fields)
}

fn assertions(checks: &[AssertionResult]) -> Value {
    let assertions: Vec<Value> = (checks.iter())
        .map(|check| {
            json!({
                "assertion": check.assertion,
                "success": check.passed,
                "actual": check.measured,
                "severity": "error",
            })
        })
        .collect();
    facet(
        "1-1-0/DataQualityAssertionsDatasetFacet",
        json!({"assertions": assertions}),
    )
}
