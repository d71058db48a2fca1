//! Where a slice's planned transform executes: DataFusion in this process, on the run's
//! shared runtime, or (feature `cluster`) the run's Ballista cluster. This is the one
//! place a slice's transform is turned into a stream of batches.

use datafusion::physical_plan::{execute_stream, SendableRecordBatchStream};

use super::Run;
use crate::engine::Prepared;
use crate::error::{Result, ResultExt};
use crate::slice::Slice;

impl Run {
    /// Starts executing `slice`'s transform, planned here as `prepared`, and streams its
    /// output: on the run's cluster if it has one, here otherwise.
    pub(super) async fn execute(
        &self,
        slice: &Slice,
        prepared: &Prepared,
    ) -> Result<SendableRecordBatchStream> {
        #[cfg(feature = "cluster")]
        if let Some(remote) = &self.remote {
            return self.backfill.execute_remote(remote, slice).await;
        }
        execute_stream(prepared.plan.clone(), prepared.task_ctx())
            .context(|| format!("slice {}: running the transform", slice.key))
    }
}
