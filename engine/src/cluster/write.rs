//! Executors write a slice's output themselves: the plan node that asks for it, and the
//! operator that does it.
//!
//! The driver wraps a slice's transform in a [`WriteSlice`] node. The scheduler plans it
//! ([`SchedulerPlanner`]) as a [`WriteSliceExec`] on top of the transform, so each task
//! of the final stage streams its share of the rows into Parquet files in the table's
//! folder (uncommitted, invisible) with the sink's own writer ([`writing::write`]), and
//! returns one row: what it wrote, as [`TaskOutcome`] JSON. Only these small rows travel
//! back to the driver, which assembles them into the slice's staged output and commits.
//! A plan's sample asks for [`Output::Nowhere`]: the rows are encoded as Parquet and
//! dropped. Nothing here commits.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::sink::{writing, WriteTarget, Written};
use crate::source::store_root;

/// What executors write, and the rows' schema as the table stores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WriteSpec {
    pub output: Output,
    pub schema: Schema,
}

/// Where a slice's rows go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub(super) enum Output {
    /// Into files in the table's folder, as `staging` says.
    Files(WriteTarget),
    /// Encoded as Parquet into nowhere: a plan's sample, which writes nothing.
    Nowhere { slice: String },
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Output::Files(staging) => write!(f, "slice={} base={}", staging.slice, staging.base),
            Output::Nowhere { slice } => write!(f, "slice={slice} into nowhere"),
        }
    }
}

/// What one task did with its share of a slice's rows.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum TaskOutcome {
    Written(Written),
    /// Encoded its rows into nowhere.
    Encoded,
    /// The rows broke a rule of the slice that is the transform's fault (a row outside
    /// the slice's partition): nothing of this task's is left, and the attempt fails as
    /// it would here, without a retry that cannot help.
    Refused {
        location: String,
        message: String,
    },
}

/// The one column of a write's output: a task's outcome, as JSON.
static OUTCOMES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![Field::new(
        "outcome",
        DataType::Utf8,
        false,
    )]))
});
static OUTCOMES_DF: LazyLock<DFSchemaRef> = LazyLock::new(|| {
    Arc::new(DFSchema::try_from(OUTCOMES.as_ref().clone()).expect("a plain schema"))
});

/// The logical node: write `input`'s rows as `spec` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WriteSlice {
    pub input: LogicalPlan,
    pub spec: WriteSpec,
}

impl Hash for WriteSlice {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.spec.output.hash(state);
    }
}

impl PartialOrd for WriteSlice {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.spec.output.partial_cmp(&other.spec.output) {
            Some(Ordering::Equal) => self.input.partial_cmp(&other.input),
            order => order,
        }
    }
}

impl UserDefinedLogicalNodeCore for WriteSlice {
    fn name(&self) -> &str {
        "WriteSlice"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &OUTCOMES_DF
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WriteSlice: {}", self.spec.output)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        Ok(WriteSlice {
            input: inputs.swap_remove(0),
            spec: self.spec.clone(),
        })
    }
}

/// Writes each partition of `input` as a task of its own.
#[derive(Debug, Clone)]
pub(super) struct WriteSliceExec {
    pub input: Arc<dyn ExecutionPlan>,
    pub spec: WriteSpec,
    properties: Arc<PlanProperties>,
}

impl WriteSliceExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> Self {
        let partitions = input.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(OUTCOMES.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        WriteSliceExec {
            input,
            spec,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for WriteSliceExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WriteSliceExec: {}", self.spec.output)
    }
}

impl ExecutionPlan for WriteSliceExec {
    fn name(&self) -> &str {
        "WriteSliceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(WriteSliceExec::new(
            children.swap_remove(0),
            self.spec.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let rows = self.input.execute(partition, context.clone())?;
        let staging = match &self.spec.output {
            Output::Files(staging) => staging.clone(),
            Output::Nowhere { .. } => {
                let encoded = async move {
                    writing::encode_into_nowhere(rows).await?;
                    outcome_batch(&TaskOutcome::Encoded)
                };
                return Ok(Box::pin(RecordBatchStreamAdapter::new(
                    OUTCOMES.clone(),
                    futures::stream::once(encoded),
                )));
            }
        };
        let root = ObjectStoreUrl::parse(store_root(&staging.base).as_str())?;
        let root = context.runtime_env().object_store(&root)?;
        let schema = Arc::new(self.spec.schema.clone());
        let written = async move {
            // No storage options: an executor reaches storage with its own environment.
            let written = writing::write(
                &staging,
                &schema,
                &HashMap::new(),
                root.as_ref(),
                rows,
                writing::TRANSFORM,
            )
            .await;
            let outcome = match written {
                Ok(written) => {
                    tracing::info!(
                        "slice {}: wrote {} rows in {} under {}",
                        staging.slice,
                        written.rows,
                        match written.adds.len() {
                            1 => "1 file".to_string(),
                            n => format!("{n} files"),
                        },
                        staging.base
                    );
                    TaskOutcome::Written(written)
                }
                Err(Error::Config { location, message }) => {
                    TaskOutcome::Refused { location, message }
                }
                Err(error) => return Err(DataFusionError::External(Box::new(error))),
            };
            outcome_batch(&outcome)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            OUTCOMES.clone(),
            futures::stream::once(written),
        )))
    }
}

/// A task's one row of output.
fn outcome_batch(outcome: &TaskOutcome) -> DfResult<RecordBatch> {
    let json =
        serde_json::to_string(outcome).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let column = StringArray::from(vec![json]);
    Ok(RecordBatch::try_new(
        OUTCOMES.clone(),
        vec![Arc::new(column)],
    )?)
}

/// The scheduler's planner: DataFusion's, which also knows [`WriteSlice`].
#[derive(Debug)]
pub(super) struct SchedulerPlanner;

#[async_trait::async_trait]
impl QueryPlanner for SchedulerPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PlansWrites)])
            .create_physical_plan(plan, session)
            .await
    }
}

struct PlansWrites;

#[async_trait::async_trait]
impl ExtensionPlanner for PlansWrites {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(write) = node.as_any().downcast_ref::<WriteSlice>() else {
            return Ok(None);
        };
        let input = physical_inputs[0].clone();
        Ok(Some(Arc::new(WriteSliceExec::new(
            input,
            write.spec.clone(),
        ))))
    }
}

/// The outcomes of a write's tasks, from its output.
pub(super) fn outcomes(batches: &[RecordBatch]) -> Result<Vec<TaskOutcome>, String> {
    let mut all = Vec::new();
    for batch in batches {
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or("a write's outcome is not text")?;
        for json in column.iter().flatten() {
            all.push(serde_json::from_str(json).map_err(|e| format!("a write's outcome: {e}"))?);
        }
    }
    Ok(all)
}
