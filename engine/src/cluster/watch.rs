//! The driver's watch over a job it submitted to the cluster.
//!
//! Ballista's client waits for a job for as long as the scheduler says it runs, and
//! forever for a job the scheduler does not know, which is every job of a scheduler that
//! was started again. So while a slice's job runs, this module asks the scheduler itself
//! how the job is, with a time limit on every question, and gives the job up when the
//! scheduler has not answered for [`SILENT_FOR`] or has not known the job for
//! [`FORGOTTEN_FOR`]: it cancels the job where the scheduler can still hear it, and the
//! slice's attempt fails as a transient fault, to be retried. A job that runs, however
//! long, is the scheduler's to judge (its guard cancels one stranded by Ballista).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{CancelJobParams, GetJobStatusParams};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::protobuf::LogicalPlanNode;
use tonic::transport::Channel;

/// How often the scheduler is asked, and how long one answer may take.
const ASK_EVERY: Duration = Duration::from_secs(1);
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A scheduler that answers nothing for this long is lost.
pub(super) const SILENT_FOR: Duration = Duration::from_secs(30);

/// A job its scheduler does not know for this long, once submitted, was lost with a
/// scheduler that was started again.
pub(super) const FORGOTTEN_FOR: Duration = Duration::from_secs(10);

/// Runs `plan`, a job for the scheduler at `scheduler` (`http://HOST:PORT`), to its
/// results, unless the watch gives it up first; the error says why.
pub(super) async fn collect_watched(
    scheduler: &str,
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
) -> Result<Vec<RecordBatch>, String> {
    let collecting = datafusion::physical_plan::collect(plan.clone(), context);
    tokio::select! {
        results = collecting => results.map_err(|e| e.to_string()),
        given_up = watch(scheduler, &plan) => Err(given_up),
    }
}

/// The id the scheduler gave `plan`'s job, once it has.
fn job_of(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    let exec = plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()?;
    exec.job_id().map(|id| id.to_string())
}

/// Returns only when the job must be given up, saying why.
async fn watch(scheduler: &str, plan: &Arc<dyn ExecutionPlan>) -> String {
    let mut client = None;
    let mut last_answer = Instant::now();
    let mut known_since = Instant::now();
    loop {
        tokio::time::sleep(ASK_EVERY).await;
        let Some(job) = job_of(plan) else {
            // Not submitted yet: Ballista's client times out its own submission.
            (last_answer, known_since) = (Instant::now(), Instant::now());
            continue;
        };
        match ask(scheduler, &mut client, &job).await {
            Ok(true) => (last_answer, known_since) = (Instant::now(), Instant::now()),
            Ok(false) => {
                last_answer = Instant::now();
                if known_since.elapsed() >= FORGOTTEN_FOR {
                    cancel(&mut client, &job).await;
                    return format!("the scheduler at {scheduler} no longer knows job {job} (was it started again?)");
                }
            }
            Err(error) => {
                client = None;
                if last_answer.elapsed() >= SILENT_FOR {
                    return format!(
                        "the scheduler at {scheduler} has not answered for {SILENT_FOR:?} about job {job}: {error}"
                    );
                }
            }
        }
    }
}

/// Whether the scheduler knows `job`, asked within [`ANSWER_WITHIN`].
async fn ask(
    scheduler: &str,
    client: &mut Option<SchedulerGrpcClient<Channel>>,
    job: &str,
) -> Result<bool, String> {
    let asking = async {
        if client.is_none() {
            let connected = SchedulerGrpcClient::connect(scheduler.to_string()).await;
            *client = Some(connected.map_err(|e| e.to_string())?);
        }
        let client = client.as_mut().expect("connected above");
        let params = GetJobStatusParams {
            job_id: job.to_string(),
        };
        let answer = client.get_job_status(params).await;
        let status = answer.map_err(|e| e.message().to_string())?.into_inner();
        Ok(status.status.and_then(|s| s.status).is_some())
    };
    tokio::time::timeout(ANSWER_WITHIN, asking)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ANSWER_WITHIN:?}")))
}

/// Asks the scheduler to cancel `job`, if it hears; a job it forgot is gone anyway.
async fn cancel(client: &mut Option<SchedulerGrpcClient<Channel>>, job: &str) {
    let Some(client) = client.as_mut() else {
        return;
    };
    let params = CancelJobParams {
        job_id: job.to_string(),
    };
    if let Ok(Err(error)) = tokio::time::timeout(ANSWER_WITHIN, client.cancel_job(params)).await {
        tracing::debug!("cancelling job {job}: {error}");
    }
}
