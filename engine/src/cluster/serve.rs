//! The cluster's servers: a scheduler, and an executor's Arrow Flight service, each
//! listening with the process's [`Security`]: in the clear on loopback without a key or
//! certificates, or else over TLS taking only the cluster's members, with each refusal
//! logged.
//!
//! Ballista's own scheduler server serves in the clear only, so the scheduler's gRPC
//! service is served here; an executor is Ballista's, with its Flight service and every
//! client it opens configured from here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista::extension::SessionConfigExt;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::error::BallistaError;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::utils::{create_grpc_server, GrpcServerConfig};
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::shutdown::Shutdown;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::server::Router;

use super::codec::{LogicalCodec, PhysicalCodec};
use super::security::{Acceptor, Security};
use super::{guard, runtime_env, write};
use crate::error::{Error, Result};

/// The largest gRPC message either server takes or sends, as Ballista's defaults.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

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
    pub security: Security,
}

/// Serves a Ballista scheduler until the process ends.
pub async fn serve_scheduler(options: SchedulerOptions) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    use ballista_scheduler::scheduler_process::create_scheduler;
    use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
    options.security.check_bind("--bind", options.bind.ip())?;
    let acceptor = options.security.acceptor()?;
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
        override_create_grpc_client_endpoint: options.security.endpoint_override(),
        use_tls: options.security.uses_tls(),
        ..SchedulerConfig::default()
    };
    let failed = |e: BallistaError| {
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
    let service = SchedulerGrpcServer::new(scheduler)
        .max_encoding_message_size(MAX_MESSAGE)
        .max_decoding_message_size(MAX_MESSAGE);
    let listener = TcpListener::bind(options.bind)
        .await
        .map_err(|e| Error::config("--bind", format!("cannot listen on {}: {e}", options.bind)))?;
    let server = create_grpc_server(&GrpcServerConfig::default()).add_service(service);
    let served = serve(
        server,
        listener,
        acceptor,
        "scheduler",
        std::future::pending(),
    );
    served
        .await
        .map_err(|e| failed(BallistaError::TonicError(e)))
}

/// An executor: the scheduler it works for, where it serves its results, and what it
/// may use.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler: (String, u16),
    /// The address it listens on.
    pub bind: IpAddr,
    /// The host it advertises to the scheduler and to clients.
    pub host: String,
    /// Its Arrow Flight port, and its gRPC port.
    pub port: u16,
    pub grpc_port: u16,
    /// Tasks it runs at once.
    pub tasks: usize,
    /// Where it keeps shuffle data.
    pub work_dir: Option<String>,
    /// How often it tells the scheduler it is alive: well within the scheduler's
    /// executor timeout.
    pub heartbeat: Duration,
    pub security: Security,
}

/// Serves a Ballista executor until the process ends.
pub async fn serve_executor(options: ExecutorOptions) -> Result<()> {
    use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
    let security = &options.security;
    security.check_bind("--bind", options.bind)?;
    let (scheduler_host, scheduler_port) = &options.scheduler;
    let scheduler = format!("{scheduler_host}:{scheduler_port}");
    let address = tokio::net::lookup_host(&scheduler)
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| Error::config("--scheduler", format!("cannot resolve {scheduler}")))?;
    // Before registering: a scheduler with another key, or none, refuses every call, and
    // Ballista would only say it could not connect.
    until_listening(address).await;
    security
        .check_peer(
            scheduler_host,
            address,
            &format!("the scheduler at {scheduler}"),
        )
        .await
        .map_err(|why| Error::config("--scheduler", why))?;
    let override_endpoint = security.endpoint_override();
    let tls = security.uses_tls();
    let for_tasks = override_endpoint.clone();
    let acceptor = security.acceptor()?;
    let config = ExecutorProcessConfig {
        bind_host: options.bind.to_string(),
        external_host: Some(options.host.clone()),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: scheduler_host.clone(),
        scheduler_port: *scheduler_port,
        vcores: options.tasks.max(1),
        work_dir: options.work_dir.clone(),
        executor_heartbeat_interval_seconds: options.heartbeat.as_secs().max(1),
        // As the scheduler expects (see `serve_scheduler`).
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_runtime_producer: Some(Arc::new(|_config: &SessionConfig| {
            runtime_env().map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        })),
        // Tasks reading another executor's shuffle output connect as this process does.
        override_config_producer: Some(Arc::new(move || {
            let config = SessionConfig::new_with_ballista().with_ballista_use_tls(tls);
            match &for_tasks {
                Some(endpoint) => {
                    config.with_ballista_override_create_grpc_client_endpoint(endpoint.clone())
                }
                None => config,
            }
        })),
        override_create_grpc_client_endpoint: override_endpoint,
        override_arrow_flight_service: Some(Arc::new(move |work_dir, address, shutdown, _| {
            tokio::spawn(serve_flight(work_dir, address, shutdown, acceptor.clone()))
        })),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config)).await.map_err(|e| {
        Error::execution(
            format!("executor of the scheduler at {scheduler}"),
            e.to_string(),
        )
    })
}

/// How long an executor waits for its scheduler to listen: they may start in any order.
const SCHEDULER_WAIT: Duration = Duration::from_secs(30);

/// Once something listens at `address`, or after `SCHEDULER_WAIT`.
async fn until_listening(address: SocketAddr) {
    let deadline = tokio::time::Instant::now() + SCHEDULER_WAIT;
    while TcpStream::connect(address).await.is_err() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An executor's Arrow Flight service, which serves its tasks' output to the driver and
/// to other executors, until `shutdown`.
async fn serve_flight(
    work_dir: String,
    address: SocketAddr,
    mut shutdown: Shutdown,
    acceptor: Option<Acceptor>,
) -> std::result::Result<(), BallistaError> {
    let service = FlightServiceServer::new(BallistaFlightService::new(work_dir))
        .max_encoding_message_size(MAX_MESSAGE)
        .max_decoding_message_size(MAX_MESSAGE);
    let listener = TcpListener::bind(address).await?;
    let server = create_grpc_server(&GrpcServerConfig::default()).add_service(service);
    let stop = async move { shutdown.recv().await };
    let served = serve(server, listener, acceptor, "executor", stop);
    served.await.map_err(BallistaError::TonicError)
}

/// Serves `router` on `listener` until `stop`: in the clear, or to the members
/// `acceptor` takes.
async fn serve(
    router: Router,
    listener: TcpListener,
    acceptor: Option<Acceptor>,
    server: &'static str,
    stop: impl std::future::Future<Output = ()>,
) -> std::result::Result<(), tonic::transport::Error> {
    match acceptor {
        Some(acceptor) => {
            let members = members(listener, acceptor, server);
            router.serve_with_incoming_shutdown(members, stop).await
        }
        None => {
            let incoming = TcpListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
    }
}

/// The connections `listener` accepts whose TLS handshake `acceptor` completes: those of
/// the cluster's members. Every other is logged, with why, and dropped.
fn members(
    listener: TcpListener,
    acceptor: Acceptor,
    server: &'static str,
) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (accepted, members) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        // Until the server stops taking connections.
        while !accepted.is_closed() {
            let (tcp, peer) = match listener.accept().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!("{server}: cannot accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            // Each handshake on its own task: a slow peer holds up no other.
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(member) => {
                        let _ = accepted.send(Ok(member)).await;
                    }
                    Err(Some(why)) => {
                        tracing::warn!("{server}: refused a connection from {peer}: {why}")
                    }
                    Err(None) => tracing::debug!("{server}: {peer} closed before a handshake"),
                }
            });
        }
    });
    ReceiverStream::new(members)
}
