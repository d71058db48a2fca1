//! `backfill cluster`: one binary forms an Apache DataFusion Ballista cluster, a
//! scheduler and executors reading storage the way runs do (the local disk, S3 from the
//! `AWS_*` variables), so no custom Ballista image is needed. With a cluster key, its
//! processes take only each other; without one, they listen on loopback only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use backfill_engine::cluster::{self, ExecutorOptions, SchedulerOptions};
use clap::{Args, Subcommand};

use super::Outcome;
use crate::args::SecurityArgs;

#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Serve a scheduler: `run --cluster df://HOST:PORT` submits slices to it.
    Scheduler {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// An executor silent this long is lost: its work is done again elsewhere.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        executor_timeout: std::time::Duration,
        /// Plan jobs with Ballista's adaptive planner. Ballista 55's can strand a job when
        /// an executor dies mid-job; such a job is cancelled after --executor-timeout and
        /// its slice retried.
        #[arg(long)]
        adaptive: bool,
        #[command(flatten)]
        security: SecurityArgs,
    },
    /// Serve an executor that runs the tasks a scheduler gives it.
    Executor {
        /// The scheduler's address, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        scheduler: String,
        /// The host to advertise to the scheduler and clients.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The address to listen on [default: --host's].
        #[arg(long, value_name = "IP")]
        bind: Option<IpAddr>,
        /// The port results are fetched from (Arrow Flight).
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// The port the scheduler reaches the executor on (gRPC).
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks run at once [default: one per core].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        tasks: Option<u16>,
        /// Where to keep intermediate data [default: a temporary folder].
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// How often to tell the scheduler it is alive (within its --executor-timeout).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        heartbeat: std::time::Duration,
        #[command(flatten)]
        security: SecurityArgs,
    },
}

pub async fn execute(args: ClusterArgs) -> anyhow::Result<Outcome> {
    match args.role {
        Role::Scheduler {
            bind,
            executor_timeout,
            adaptive,
            security,
        } => {
            let options = SchedulerOptions {
                bind,
                executor_timeout,
                adaptive,
                security: security.load()?,
            };
            eprintln!("scheduler listening on {bind}: run --cluster df://{bind}");
            cluster::serve_scheduler(options).await?;
        }
        Role::Executor {
            scheduler,
            host,
            bind,
            port,
            grpc_port,
            tasks,
            work_dir,
            heartbeat,
            security,
        } => {
            let (scheduler_host, scheduler_port) = scheduler
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?)))
                .ok_or_else(|| {
                    backfill_engine::Error::config(
                        "--scheduler",
                        format!("`{scheduler}` is not HOST:PORT"),
                    )
                })?;
            let bind = match bind {
                Some(bind) => bind,
                None => host.parse().map_err(|_| {
                    backfill_engine::Error::config(
                        "--host",
                        format!("`{host}` is not an IP address: give --bind IP to listen on"),
                    )
                })?,
            };
            let security = security.load()?;
            eprintln!("executor {host}:{port} working for the scheduler at {scheduler}");
            let tasks =
                tasks.map_or_else(backfill_engine::estimate::default_concurrency, usize::from);
            cluster::serve_executor(ExecutorOptions {
                scheduler: (scheduler_host, scheduler_port),
                bind,
                host,
                port,
                grpc_port,
                tasks,
                work_dir: work_dir.map(|dir| dir.display().to_string()),
                heartbeat,
                security,
            })
            .await?;
        }
    }
    Ok(Outcome::Success)
}
