//! Where a slice's planned transform executes. Today: DataFusion, in this process, on
//! the run's shared runtime. This is the one place a slice's plan is turned into a
//! stream of batches, so a cluster (Ballista) replaces exactly this.

use datafusion::physical_plan::{execute_stream, SendableRecordBatchStream};

use crate::engine::Prepared;
use crate::error::{Result, ResultExt};
use crate::slice::Slice;

/// Starts executing `prepared`, the plan of `slice`, and streams its output.
pub(super) fn execute(slice: &Slice, prepared: &Prepared) -> Result<SendableRecordBatchStream> {
    execute_stream(prepared.plan.clone(), prepared.task_ctx())
        .context(|| format!("slice {}: running the transform", slice.key))
}
