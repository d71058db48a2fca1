//! [`Backfill`]: a pipeline opened against its sources and destination.
//!
//! Opening resolves the sources, plans the transform once to learn its output schema,
//! and checks the pipeline against that schema and the destination table; every later
//! step reuses this work. [`Backfill::plan`] says, for each slice, what the Delta log
//! knows of it. Running is in [`crate::run`].

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{Expr, SessionContext};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result, ResultExt};
use crate::ledger::{Committed, Ledger};
use crate::pipeline::{Assertion, Pipeline};
use crate::sink::Sink;
use crate::slice::{self, Selection, Slice};
use crate::source::{self, SourceFile, Sources, StoreOverrides};
use crate::template;

/// A pipeline, opened: sources resolved, SQL planned, destination checked.
pub struct Backfill {
    pub(crate) pipeline: Pipeline,
    pub(crate) sources: Sources,
    pub(crate) schema: SchemaRef,
    pub(crate) sink: Sink,
    pub(crate) sql_fingerprint: String,
}

/// Options for opening a pipeline that are not in its file.
pub struct OpenOptions {
    /// Object stores to use instead of the defaults (tests count requests this way).
    pub stores: StoreOverrides,
    /// Memory for query execution across all slices in flight, in bytes.
    pub memory_limit: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            stores: vec![],
            memory_limit: 4 << 30,
        }
    }
}

/// A slice with its plan: the SQL as rendered, the files it reads, and its state.
pub struct PlannedSlice {
    pub slice: Slice,
    pub sql: String,
    pub files: Vec<SourceFile>,
    pub source_fingerprint: String,
    pub state: SliceState,
    pub(crate) ctx: SessionContext,
    pub(crate) plan: Arc<dyn ExecutionPlan>,
}

/// What the Delta log says of a slice, compared with its inputs now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SliceState {
    /// Never committed.
    Missing,
    /// Committed, and its source files and SQL are the ones recorded.
    Done { committed: Box<Committed> },
    /// Committed, but its source files or SQL differ from what the commit recorded.
    Changed {
        committed: Box<Committed>,
        what: Vec<String>,
    },
}

impl SliceState {
    pub fn name(&self) -> &'static str {
        match self {
            SliceState::Missing => "missing",
            SliceState::Done { .. } => "done",
            SliceState::Changed { .. } => "changed",
        }
    }

    pub fn committed(&self) -> Option<&Committed> {
        match self {
            SliceState::Missing => None,
            SliceState::Done { committed } | SliceState::Changed { committed, .. } => {
                Some(committed)
            }
        }
    }
}

impl Backfill {
    /// Opens a pipeline: resolves its sources, plans its SQL for a sample slice, and
    /// checks the output against the assertions and the destination.
    pub async fn open(pipeline: Pipeline, options: OpenOptions) -> Result<Self> {
        let sources = Sources::resolve(&pipeline, &options.stores, options.memory_limit).await?;
        let sample = sample_slice(&pipeline);
        let sql = template::render(&pipeline.sql, &sample.variables(), &pipeline.sql_origin)?;
        let ctx = sources.context()?;
        let frame = ctx
            .sql(&sql)
            .await
            .context(|| format!("{}: transform", pipeline.sql_origin))?;
        let schema = output_schema(frame.schema().as_arrow())
            .map_err(|m| Error::config(&pipeline.sql_origin, m))?;
        check_columns(&pipeline, &schema)?;
        check_assertion_sql(&pipeline, &ctx, &schema, &sample).await?;
        let sink = Sink::open(&pipeline.name, &pipeline.destination, schema.clone()).await?;
        let sql_fingerprint = source::fingerprint_text(&pipeline.sql);
        Ok(Backfill {
            pipeline,
            sources,
            schema,
            sink,
            sql_fingerprint,
        })
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The transform's output columns, as the destination stores them.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Cuts a selection into slices. Pure: no IO.
    pub fn slices(&self, selection: &Selection) -> Result<Vec<Slice>> {
        let spec = &self.pipeline.slices;
        slice::cut(spec.kind, &spec.columns, selection, spec.keys.as_deref())
    }

    /// The run history kept next to the destination table.
    pub fn history(&self) -> crate::history::History {
        crate::history::History::new(self.sink.store())
    }

    /// What the destination's Delta log records for this pipeline.
    pub async fn ledger(&self) -> Result<Ledger> {
        Ledger::read(self.sink.table().await.as_ref(), &self.pipeline.name).await
    }

    /// Plans every slice of a selection and tells its state, `concurrency` at a time.
    pub async fn plan(
        &self,
        selection: &Selection,
        concurrency: usize,
    ) -> Result<Vec<PlannedSlice>> {
        let slices = self.slices(selection)?;
        let ledger = self.ledger().await?;
        futures::stream::iter(slices)
            .map(|slice| self.plan_slice(slice, &ledger))
            .buffered(concurrency.max(1))
            .try_collect()
            .await
    }

    /// Renders and plans one slice's SQL; the physical plan names the files it reads.
    pub(crate) async fn plan_slice(&self, slice: Slice, ledger: &Ledger) -> Result<PlannedSlice> {
        let sql = template::render(
            &self.pipeline.sql,
            &slice.variables(),
            &self.pipeline.sql_origin,
        )?;
        let ctx = self.sources.context()?;
        let context = || format!("slice {}: planning the transform", slice.key);
        let frame = ctx.sql(&sql).await.context(context)?;
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
        let plan = frame.create_physical_plan().await.context(context)?;
        let files = source::scanned_files(&plan);
        let source_fingerprint = source::fingerprint_files(&files);
        let state = match ledger.get(&slice.key) {
            None => SliceState::Missing,
            Some(committed) => {
                let mut what = Vec::new();
                if committed.record.source_fingerprint != source_fingerprint {
                    what.push("source files".to_string());
                }
                if committed.record.sql_fingerprint != self.sql_fingerprint {
                    what.push("SQL".to_string());
                }
                let committed = Box::new(committed.clone());
                if what.is_empty() {
                    SliceState::Done { committed }
                } else {
                    SliceState::Changed { committed, what }
                }
            }
        };
        Ok(PlannedSlice {
            slice,
            sql,
            files,
            source_fingerprint,
            state,
            ctx,
            plan,
        })
    }
}

/// A slice to plan the SQL with when validating: any will do, as planning reads no data.
fn sample_slice(pipeline: &Pipeline) -> Slice {
    let spec = &pipeline.slices;
    let selection = match (spec.kind, &spec.keys) {
        (slice::SliceKind::Daily, _) => Selection::Range {
            start: "2000-01-01".into(),
            end: "2000-01-01".into(),
        },
        (slice::SliceKind::Hourly, _) => Selection::Range {
            start: "2000-01-01T00".into(),
            end: "2000-01-01T00".into(),
        },
        (slice::SliceKind::List, Some(keys)) => Selection::Keys(vec![keys[0].clone()]),
        (slice::SliceKind::List, None) => Selection::Keys(vec!["sample".into()]),
    };
    slice::cut(spec.kind, &spec.columns, &selection, None).expect("the sample selection is valid")
        [0]
    .clone()
}

/// The schema the destination stores for a transform's output: types that Delta readers
/// of protocol 1/2 understand. Timestamps without a time zone would silently upgrade the
/// table's protocol, so they are stored as UTC microseconds.
fn output_schema(schema: &Schema) -> std::result::Result<SchemaRef, String> {
    fn storable(name: &str, data_type: &DataType) -> std::result::Result<DataType, String> {
        Ok(match data_type {
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
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
        let Assertion::Sql(sql) = assertion else {
            continue;
        };
        let rendered = template::render(sql, &sample.variables(), &file)?;
        let context = || format!("{file}: assertion `{sql}`");
        let frame = ctx.sql(&rendered).await.context(context)?;
        let fields = frame.schema().fields();
        if fields.len() != 1 || fields[0].data_type() != &DataType::Boolean {
            return Err(Error::config(context(), "must return one boolean column"));
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
    if let crate::pipeline::Strategy::Merge { keys } = &pipeline.destination.strategy {
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
            Assertion::MinRows(_) | Assertion::Sql(_) => vec![],
        };
        for column in columns {
            schema
                .index_of(column)
                .map_err(|_| missing(column, &format!("assertion `{}`", assertion.describe())))?;
        }
    }
    Ok(())
}
