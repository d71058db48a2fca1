//! The scheduler's guards over its jobs (`backfill cluster scheduler`).
//!
//! Ballista 55 recovers a job that lost an executor mid-way by re-running the lost
//! tasks and rolling back the stages that read their output, and that recovery is not
//! to be trusted: with its adaptive planner it strands the job (a stage with no task
//! running and none to run, waiting forever), and with its static one a stage can read
//! a re-run task's output besides the original's and count rows twice (ARCHITECTURE.md,
//! Known limits). A slice is idempotent and cheap to compute again, so the guards never
//! let Ballista recover a job:
//! - [`CancelOnLoss`] cancels every running job the moment the scheduler gives an
//!   executor up, before Ballista's recovery starts: their runs see the jobs fail and
//!   retry the slices on the executors left;
//! - [`watch_jobs`] cancels a job that has had no task running or waiting to run for
//!   the executor timeout, whatever stranded it.
//!
//! A job with any task running or waiting is never touched by the second, however long
//! it takes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ballista_core::error::Result;
use ballista_core::serde::protobuf::ExecutorHeartbeat;
use ballista_core::serde::scheduler::{ExecutorData, ExecutorMetadata};
use ballista_core::JobId;
use ballista_scheduler::cluster::{BoundTask, ClusterState, ClusterStateEventStream, ExecutorSlot};
use ballista_scheduler::config::TaskDistributionPolicy;
use ballista_scheduler::scheduler_server::SchedulerServer;
use ballista_scheduler::state::task_manager::JobInfoCache;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

/// The scheduler the guards act on.
pub(super) type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// How often [`watch_jobs`] looks at the jobs.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Ballista's cluster state, which cancels every running job when an executor is
/// removed. Ballista removes an executor from the cluster state first and posts the
/// `ExecutorLost` event that starts its recovery after, so the cancellations, posted to
/// the same event loop before it, are handled first.
pub(super) struct CancelOnLoss {
    inner: Arc<dyn ClusterState>,
    /// Set once the scheduler exists (it is made from this state).
    pub(super) scheduler: Arc<OnceLock<Scheduler>>,
}

impl CancelOnLoss {
    pub(super) fn new(inner: Arc<dyn ClusterState>) -> Self {
        CancelOnLoss {
            inner,
            scheduler: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl ClusterState for CancelOnLoss {
    async fn init(&self) -> Result<()> {
        self.inner.init().await
    }

    async fn bind_schedulable_tasks(
        &self,
        distribution: TaskDistributionPolicy,
        active_jobs: Arc<HashMap<JobId, JobInfoCache>>,
        executors: Option<HashSet<String>>,
    ) -> Result<Vec<BoundTask>> {
        let bind = self
            .inner
            .bind_schedulable_tasks(distribution, active_jobs, executors);
        bind.await
    }

    async fn unbind_tasks(&self, executor_slots: Vec<ExecutorSlot>) -> Result<()> {
        self.inner.unbind_tasks(executor_slots).await
    }

    async fn register_executor(
        &self,
        metadata: ExecutorMetadata,
        spec: ExecutorData,
    ) -> Result<()> {
        self.inner.register_executor(metadata, spec).await
    }

    async fn save_executor_metadata(&self, metadata: ExecutorMetadata) -> Result<()> {
        self.inner.save_executor_metadata(metadata).await
    }

    async fn get_executor_metadata(&self, executor_id: &str) -> Result<ExecutorMetadata> {
        self.inner.get_executor_metadata(executor_id).await
    }

    async fn registered_executor_metadata(&self) -> Vec<ExecutorMetadata> {
        self.inner.registered_executor_metadata().await
    }

    async fn save_executor_heartbeat(&self, heartbeat: ExecutorHeartbeat) -> Result<()> {
        self.inner.save_executor_heartbeat(heartbeat).await
    }

    async fn remove_executor(&self, executor_id: &str) -> Result<()> {
        if let Some(scheduler) = self.scheduler.get() {
            let running = scheduler.state.task_manager.get_running_job_cache();
            for job in running.keys() {
                tracing::warn!(
                    "executor {executor_id} is lost: cancelling job {job}, so that its run computes the slice again"
                );
                if let Err(error) = scheduler.cancel_job(job.clone()).await {
                    tracing::warn!("cancelling job {job}: {error}");
                }
            }
        }
        self.inner.remove_executor(executor_id).await
    }

    fn executor_heartbeats(&self) -> HashMap<String, ExecutorHeartbeat> {
        self.inner.executor_heartbeats()
    }

    fn get_executor_heartbeat(&self, executor_id: &str) -> Option<ExecutorHeartbeat> {
        self.inner.get_executor_heartbeat(executor_id)
    }

    async fn cluster_state_events(&self) -> Result<ClusterStateEventStream> {
        self.inner.cluster_state_events().await
    }
}

/// Watches `scheduler`'s running jobs until the process ends, cancelling one that has
/// had no task running or waiting to run for `stranded_after`.
pub(super) async fn watch_jobs(scheduler: Scheduler, stranded_after: Duration) {
    let mut idle_since = HashMap::new();
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        let running = scheduler.state.task_manager.get_running_job_cache();
        idle_since.retain(|job, _| running.contains_key(job));
        for (job, info) in running.iter() {
            let idle = {
                let graph = info.execution_graph.read().await;
                graph.running_tasks().is_empty()
                    && graph.available_tasks() == 0
                    && !graph.is_successful()
            };
            if !idle {
                idle_since.remove(job);
                continue;
            }
            let since = *idle_since.entry(job.clone()).or_insert_with(Instant::now);
            if since.elapsed() < stranded_after {
                continue;
            }
            tracing::warn!(
                "job {job} has had no task running or waiting to run for {stranded_after:?}: \
                 Ballista lost track of it; cancelling it, so that its run retries the slice"
            );
            if let Err(error) = scheduler.cancel_job(job.clone()).await {
                tracing::warn!("cancelling the stranded job {job}: {error}");
            }
            idle_since.remove(job);
        }
    }
}
