//! The scheduler's guard over its jobs (`backfill cluster scheduler`).
//!
//! Ballista 55 can strand a job: after an executor is lost it may refuse the status of a
//! task it has already counted as done, and the stage then has no task running and none
//! to run, but never completes (ARCHITECTURE.md, Known limits). The job would wait
//! forever, and so would the run that submitted it. The guard cancels a job that has had
//! no task running or waiting to run for `stranded_after`; the run sees the job fail and
//! retries the slice. A job with any task running or waiting is never touched, however
//! long it takes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

/// How often the guard looks at the jobs.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Watches `scheduler`'s running jobs until the process ends.
pub(super) async fn watch_jobs(
    scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    stranded_after: Duration,
) {
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
