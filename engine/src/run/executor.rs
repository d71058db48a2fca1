//! Where a slice computes: DataFusion in this process, on the run's shared runtime, or
//! (feature `cluster`) the run's Ballista cluster. This is the one place that decides;
//! the slice's output is staged, and its SQL assertions query it, where it computed.

use datafusion::physical_plan::execute_stream;
use datafusion::prelude::SessionContext;

use super::Run;
use crate::backfill::{Prepared, SlicePlan};
use crate::error::{Result, ResultExt};
use crate::sink::StagedOutput;

impl Run {
    /// Computes `planned`'s slice, planned here as `prepared`, and stages its output: on
    /// the run's cluster if it has one, here otherwise.
    pub(super) async fn stage(
        &self,
        planned: &SlicePlan,
        prepared: &Prepared,
    ) -> Result<StagedOutput> {
        let slice = &planned.slice;
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.options.cluster {
            let backfill = &self.backfill;
            return backfill.stage_remote(cluster, slice, &planned.files).await;
        }
        let stream = execute_stream(prepared.plan.clone(), prepared.task_ctx())
            .context(|| format!("slice {}: running the transform", slice.key))?;
        self.backfill.sink.stage(slice, stream).await
    }

    /// A session for queries over a staged slice, where it computed, with the
    /// pipeline's sources registered.
    pub(super) async fn session(&self) -> Result<SessionContext> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.options.cluster {
            return self.backfill.remote_session(cluster, None).await;
        }
        self.backfill
            .sources
            .context(self.options.partitions_per_slice())
    }
}
