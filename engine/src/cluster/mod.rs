//! Scale-out on Apache DataFusion Ballista (feature `cluster`): forming a cluster from
//! this binary (a scheduler and executors, reading storage the way runs do) and running
//! slices' transforms on it.
//!
//! A slice that runs on a cluster is planned here as always (its files, fingerprint and
//! state come from the local plan), and only its computing moves: the same SQL, over the
//! same sources offered as tables Ballista can ship (a Delta source as the files its
//! plan here scanned), runs on the executors, which also write its rows into the
//! table's folder ([`write`]), uncommitted. What they wrote comes back as a few rows;
//! the sink checks the slice (its SQL assertions run on the cluster too) and commits it
//! exactly as a local one. This module never commits.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, RwLock};
use std::time::Duration;

mod codec;
mod guard;
mod write;

use ballista::extension::{SessionConfigExt, SessionContextExt};
use ballista_core::config::TaskSchedulingPolicy;
use datafusion::dataframe::DataFrame;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

use crate::backfill::{Backfill, SlicePlan};
use crate::error::{Error, Result};
use crate::pipeline::StorageOptions;
use crate::retry::{RequestRetry, RetryingStore};
use crate::sink::StagedOutput;
use crate::slice::Slice;
use crate::source::{object_store_for, store_root, SourceFile};
use codec::{LogicalCodec, PhysicalCodec};
use write::{Output, TaskOutcome, WriteSlice, WriteSpec};

/// Ballista's scheduler port when the address names none.
const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// How long to wait for the scheduler to answer before a run starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Ballista cluster to run slices on, known to answer at its address.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `df://host:port`, as given.
    url: String,
}

impl Cluster {
    /// The scheduler at `url` (`df://HOST:PORT`), once it answers; an error naming the
    /// address if it does not.
    pub async fn connect(url: &str) -> Result<Cluster> {
        let refused = |why: String| Error::config("--cluster", format!("{url}: {why}"));
        let parsed = Url::parse(url).map_err(|e| refused(format!("not a URL: {e}")))?;
        if parsed.scheme() != "df" {
            return Err(refused("give the scheduler as df://HOST:PORT".into()));
        }
        let host = parsed.host_str().unwrap_or_default().to_string();
        let port = parsed.port().unwrap_or(DEFAULT_SCHEDULER_PORT);
        let address = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| refused(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| refused(format!("{host} has no address")))?;
        let reached =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address));
        match reached.await {
            Ok(Ok(_)) => Ok(Cluster { url: url.into() }),
            Ok(Err(e)) => Err(refused(format!(
                "the scheduler does not answer at {address}: {e}"
            ))),
            Err(_) => Err(refused(format!(
                "the scheduler did not answer at {address} within {CONNECT_TIMEOUT:?}"
            ))),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A session whose queries run on the cluster.
    pub(crate) async fn session(&self, config: SessionConfig) -> Result<SessionContext> {
        let config =
            config.with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(runtime_env()?)
            .build();
        SessionContext::remote_with_state(&self.url, state)
            .await
            .map_err(|e| Error::config("--cluster", format!("{}: {e}", self.url)))
    }
}

/// Where a scheduler listens, and how soon it gives up on a silent executor.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub bind: SocketAddr,
    /// An executor not heard from for this long is lost: every running job is cancelled,
    /// and runs compute those slices again on the executors left. A job with no task
    /// running or waiting to run for this long is cancelled too (`guard.rs`).
    pub executor_timeout: Duration,
    /// Whether jobs are planned by Ballista's adaptive planner rather than its static
    /// one (ARCHITECTURE.md, Known limits: Ballista 55's adaptive planner strands a job
    /// that loses an executor, which the guards cancel first).
    pub adaptive: bool,
}

/// Serves a Ballista scheduler until the process ends.
pub async fn serve_scheduler(options: SchedulerOptions) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service};
    use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
    let adaptive = options.adaptive;
    let config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        external_host: options.bind.ip().to_string(),
        executor_timeout_seconds: options.executor_timeout.as_secs().max(2),
        expire_dead_executor_interval_seconds: (options.executor_timeout.as_secs() / 6).max(1),
        no_executors_grace_period_seconds: options.executor_timeout.as_secs().max(2),
        override_session_builder: Some(Arc::new(move |config: SessionConfig| {
            let runtime = runtime_env()
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            let config = config.with_ballista_adaptive_query_planner(adaptive);
            Ok(SessionStateBuilder::new()
                .with_default_features()
                .with_config(config)
                .with_runtime_env(runtime)
                .with_query_planner(Arc::new(write::SchedulerPlanner))
                .build())
        })),
        // Executors ask for work as they have room (as Spark's do). Were the scheduler to
        // push tasks, it would count each executor's free slots itself, and Ballista 55
        // never gives back the slot of a task whose stage was rolled back when another
        // executor died: an executor with one slot then gets no task again, and the job
        // waits forever.
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..SchedulerConfig::default()
    };
    let failed = |e: ballista_core::error::BallistaError| {
        Error::execution(format!("scheduler at {}", options.bind), e.to_string())
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(failed)?;
    let on_loss = Arc::new(guard::CancelOnLoss::new(cluster.cluster_state()));
    let scheduler_of_state = on_loss.scheduler.clone();
    let cluster = BallistaCluster::new(on_loss, cluster.job_state());
    let config = Arc::new(config);
    config.validate().map_err(failed)?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config)
        .await
        .map_err(failed)?;
    let _ = scheduler_of_state.set(scheduler.clone());
    tokio::spawn(guard::watch_jobs(
        scheduler.clone(),
        options.executor_timeout,
    ));
    start_grpc_service(options.bind, scheduler)
        .await
        .map_err(failed)
}

/// An executor: the scheduler it works for, where it serves its results, and what it
/// may use.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler: (String, u16),
    /// The host it listens on and advertises; its Arrow Flight port, and its gRPC port.
    pub host: String,
    pub port: u16,
    pub grpc_port: u16,
    /// Tasks it runs at once.
    pub tasks: usize,
    /// Where it keeps shuffle data.
    pub work_dir: Option<String>,
    /// How often it tells the scheduler it is alive: well within the scheduler's
    /// executor timeout.
    pub heartbeat: Duration,
}

/// Serves a Ballista executor until the process ends.
pub async fn serve_executor(options: ExecutorOptions) -> Result<()> {
    use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
    let config = ExecutorProcessConfig {
        bind_host: options.host.clone(),
        external_host: Some(options.host.clone()),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.0.clone(),
        scheduler_port: options.scheduler.1,
        vcores: options.tasks.max(1),
        work_dir: options.work_dir.clone(),
        executor_heartbeat_interval_seconds: options.heartbeat.as_secs().max(1),
        // As the scheduler expects (see `serve_scheduler`).
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_runtime_producer: Some(Arc::new(|_config: &SessionConfig| {
            runtime_env().map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        })),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config)).await.map_err(|e| {
        let (host, port) = &options.scheduler;
        Error::execution(
            format!("executor of the scheduler at {host}:{port}"),
            e.to_string(),
        )
    })
}

/// A runtime whose object stores are made as a run makes them: the local disk, or S3
/// from the standard `AWS_*` variables, their reads asked again while they fail for a
/// passing reason.
fn runtime_env() -> Result<Arc<RuntimeEnv>> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(Stores::default()))
        .build()
        .map_err(|e| Error::Internal(format!("cannot build the DataFusion runtime: {e}")))?;
    Ok(Arc::new(runtime))
}

/// Object stores by their root, made on first use.
#[derive(Debug, Default)]
struct Stores {
    made: RwLock<HashMap<Url, Arc<dyn ObjectStore>>>,
}

impl ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut made = self.made.write().expect("not poisoned");
        made.insert(store_root(url), store)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let root = store_root(url);
        if let Some(store) = self.made.read().expect("not poisoned").get(&root) {
            return Ok(store.clone());
        }
        let store = object_store_for(&root, &StorageOptions::default())
            .map_err(datafusion::error::DataFusionError::Configuration)?;
        let store = RetryingStore::wrap(store, RequestRetry::default());
        let mut made = self.made.write().expect("not poisoned");
        Ok(made.entry(root).or_insert(store).clone())
    }
}

impl Backfill {
    /// A new session on `cluster` where the pipeline's sources are registered: as a
    /// slice's plan here `scanned` them, or as slices read them now.
    pub(crate) async fn remote_session(
        &self,
        cluster: &Cluster,
        scanned: Option<Vec<SourceFile>>,
    ) -> Result<SessionContext> {
        let ctx = cluster.session(self.sources.session_config()).await?;
        self.sources.register_portable(&ctx, scanned)?;
        Ok(ctx)
    }

    /// Computes `slice` on `cluster`, reading the source files its plan here `scanned`;
    /// the executors write its output into files no reader sees, as
    /// [`crate::sink::Sink::stage`] does here.
    pub(crate) async fn stage_remote(
        &self,
        cluster: &Cluster,
        slice: &Slice,
        scanned: &[SourceFile],
    ) -> Result<StagedOutput> {
        let context = || format!("slice {}: running the transform on the cluster", slice.key);
        let target = self.sink.write_target(slice)?;
        let output = Output::Files(target.clone());
        // A task that wrote files before the job failed leaves them behind, uncommitted
        // and tagged with the slice in their footers, for `clean`.
        let outcomes = self.compute_remote(cluster, slice, scanned, output, context);
        let mut parts = Vec::new();
        let mut refused = None;
        for outcome in outcomes.await? {
            match outcome {
                TaskOutcome::Written(written) => parts.push(written),
                TaskOutcome::Refused { location, message } => {
                    refused.get_or_insert(Error::config(location, message));
                }
                TaskOutcome::Encoded => {
                    return Err(Error::Internal(format!(
                        "{}: no file was written",
                        context()
                    )))
                }
            }
        }
        let staged = self.sink.staged(&target, parts);
        if let Some(refused) = refused {
            self.sink.discard(&staged).await;
            return Err(refused);
        }
        Ok(staged)
    }

    /// Runs `sample`'s transform on `cluster` to the end, its executors encoding the rows
    /// as Parquet into nowhere: a slice's work on the cluster but for storage and the
    /// commit.
    pub(crate) async fn sample_remote(&self, cluster: &Cluster, sample: &SlicePlan) -> Result<()> {
        let slice = &sample.slice;
        let context = || format!("slice {}: sampling the transform on the cluster", slice.key);
        let output = Output::Nowhere {
            slice: slice.key.clone(),
        };
        let outcomes = self.compute_remote(cluster, slice, &sample.files, output, context);
        outcomes.await.map(|_| ())
    }

    /// Runs `slice`'s transform on `cluster`, over the source files its plan here
    /// `scanned`, into `output`; what each task did.
    async fn compute_remote(
        &self,
        cluster: &Cluster,
        slice: &Slice,
        scanned: &[SourceFile],
        output: Output,
        context: impl Fn() -> String + Copy,
    ) -> Result<Vec<TaskOutcome>> {
        let ctx = self.remote_session(cluster, Some(scanned.to_vec())).await?;
        let (_, frame) = self.transform_frame(ctx.state(), slice, context).await?;
        let (state, input) = frame.into_parts();
        let spec = WriteSpec {
            output,
            schema: self.schema.as_ref().clone(),
        };
        let write = LogicalPlan::Extension(Extension {
            node: Arc::new(WriteSlice { input, spec }),
        });
        // Failures on the cluster may pass: a job cancelled when an executor was lost, a
        // scheduler that died or stopped answering (Ballista's client sees the connection
        // break, or times out). The attempt is retried.
        let results = DataFrame::new(state, write)
            .collect()
            .await
            .map_err(|e| Error::execution(context(), format!("on {}: {e}", cluster.url)))?;
        write::outcomes(&results).map_err(|e| Error::Internal(format!("{}: {e}", context())))
    }
}
