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
use std::net::ToSocketAddrs;
use std::sync::{Arc, RwLock};

mod codec;
mod guard;
mod key;
mod security;
mod serve;
mod write;

pub use key::{ClusterKey, KEY_VARIABLE};
pub use security::{CertificateFiles, Security};
pub use serve::{serve_executor, serve_scheduler, ExecutorOptions, SchedulerOptions};

use ballista::extension::{SessionConfigExt, SessionContextExt};
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
use codec::LogicalCodec;
use write::{Output, TaskOutcome, WriteSlice, WriteSpec};

/// Ballista's scheduler port when the address names none.
const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// A Ballista cluster to run slices on, known to take this process at its address.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `df://host:port`, as given.
    url: String,
    security: Security,
}

impl Cluster {
    /// The scheduler at `url` (`df://HOST:PORT`), once it answers and takes this process
    /// as a member of its cluster; an error naming the address and the cause if not (no
    /// answer, or a key on one side and not the other, or another key).
    pub async fn connect(url: &str, security: Security) -> Result<Cluster> {
        let refused = |why: String| Error::config("--cluster", format!("{url}: {why}"));
        let parsed = Url::parse(url).map_err(|e| refused(format!("not a URL: {e}")))?;
        match parsed.scheme() {
            "df" => {}
            "df+tls" if security.uses_tls() => {}
            "df+tls" => {
                return Err(refused(
                    "df+tls:// asks for TLS: give the cluster key (BACKFILL_CLUSTER_KEY or \
                     --cluster-key-file) or the cluster's certificate authority (--tls-ca)"
                        .into(),
                ))
            }
            _ => return Err(refused("give the scheduler as df://HOST:PORT".into())),
        }
        let host = parsed.host_str().unwrap_or_default().to_string();
        let port = parsed.port().unwrap_or(DEFAULT_SCHEDULER_PORT);
        let address = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| refused(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| refused(format!("{host} has no address")))?;
        security
            .check_peer(&host, address, &format!("the scheduler at {address}"))
            .await
            .map_err(refused)?;
        Ok(Cluster {
            url: url.into(),
            security,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A session whose queries run on the cluster.
    pub(crate) async fn session(&self, config: SessionConfig) -> Result<SessionContext> {
        // Ballista's defaults for DataFusion first: they are set only on a config that
        // has no Ballista settings yet, and the settings below are Ballista's.
        let mut config = config
            .upgrade_for_ballista()
            .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
            .with_ballista_use_tls(self.security.uses_tls());
        if let Some(endpoint) = self.security.endpoint_override() {
            config = config.with_ballista_override_create_grpc_client_endpoint(endpoint);
        }
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
