//! Sources as SQL tables, and the DataFusion sessions slices run in.
//!
//! Owns resolving each source once per run (schema inference, table provider) and the
//! DataFusion sessions over those providers and one runtime: every slice's transform is
//! planned in one shared session where nothing is registered but the sources, and
//! whatever registers a table of its own (a slice's checks, a preview) gets a fresh
//! [`SessionContext`], so nothing it registers leaks into another slice. Listings are
//! never cached across slices, so each slice sees its source files as they are when it
//! is planned; only a plan's first look at done slices (see [`Listing`]) uses the files
//! listed as the sources were resolved. This module does not write.
//!
//! A kind of source is a [`SourceTable`] (`hive.rs`: hive-partitioned Parquet;
//! `delta.rs`: a Delta table);
//! `files.rs` reads named data files as a table, `portable.rs` offers the sources to a
//! cluster; `query.rs` plans SQL as read-only queries; `stores.rs` makes the object
//! stores.

mod delta;
mod files;
mod hive;
mod portable;
pub(crate) mod query;
mod reads;
mod stores;

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::limit::LimitStore;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use url::Url;

pub use delta::{DeltaSource, Unwritten};
pub(crate) use files::{beyond_plain_files, decoded_path, files_table, DataFile};
pub use hive::HiveParquet;
pub(crate) use hive::{parquet_format, plain_type};
pub(crate) use query::read_only_query;
pub use reads::{Kept, Listing, Reads};
#[cfg(feature = "cluster")]
pub(crate) use stores::object_store_for;
pub(crate) use stores::store_root;

use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, SourceFormat};
use crate::retry::{RequestRetry, RetryingStore};
use crate::slice::Slice;

/// One kind of source, resolved: what slices query under its name, and which of the
/// files a slice's plan scans are its own (for the slice's fingerprint and estimate).
/// [`HiveParquet`] and [`DeltaSource`] are the kinds today; a new kind implements this and
/// is resolved in [`Sources::resolve`].
pub trait SourceTable: Send + Sync {
    /// The table slices query, registered in every session.
    fn provider(&self) -> Arc<dyn TableProvider>;
    /// Whether `path`, a file some slice's plan scans, is this source's.
    fn owns(&self, path: &object_store::path::Path) -> bool;
    /// How a slice's plan and fingerprint name `path`, one of this source's files: the
    /// path in its bucket unless the source says otherwise.
    fn file_name(&self, path: &object_store::path::Path) -> String {
        path.to_string()
    }
    /// Why `path` was left out of the source's schema, if it was: a slice that reads it
    /// fails, naming it.
    fn left_out(&self, path: &str) -> Option<&str>;
    /// The table as a provider DataFusion's own codecs serialize, for a cluster to read.
    /// With `scanned`, those of this source's files a slice's plan scans, the source may
    /// offer only them: the plan pruned the others by filters every scan applies, so a
    /// scan of them would read no row the slice keeps.
    fn portable(&self, scanned: Option<&[SourceFile]>) -> Result<Arc<dyn TableProvider>>;
}

/// The resolved sources of a pipeline and the runtime their slices share.
#[derive(Clone)]
pub struct Sources {
    tables: Vec<(String, Arc<dyn SourceTable>)>,
    /// The Delta sources among them, which a chained run brings forward as their
    /// upstream commits.
    deltas: Vec<(String, Arc<DeltaSource>)>,
    /// The Parquet sources among them, whose files a plan can list once for every slice.
    parquets: Vec<(String, Arc<HiveParquet>)>,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    /// The session transforms are planned in: the sources, and nothing else, ever.
    planning: SessionContext,
}

/// A file a slice's plan reads, as listed by the object store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub size: u64,
    /// Modification time (RFC 3339) and ETag where the store gives them.
    pub modified: String,
    pub e_tag: Option<String>,
    /// The source it belongs to.
    pub source: String,
    /// Rows, from the file's Parquet footer (read while planning, not from the data).
    pub rows: Option<u64>,
}

/// Object stores to use instead of the defaults, keyed by their root (`file:///`,
/// `s3://bucket/`).
pub type StoreOverrides = Vec<(Url, Arc<dyn ObjectStore>)>;

impl Sources {
    /// Resolves every source of `pipeline`: infers its schema once, from its files. With a
    /// `scope`, a source partitioned like the slices reads only the footers of the scope's
    /// partitions. Files that are not valid Parquet, or whose columns do not fit the
    /// others', are left out of the schema and remembered: only slices that read them fail.
    /// A Delta source named in `unwritten` may not be written yet (its pipeline runs in the
    /// same chain): it reads as an empty table until it is.
    pub async fn resolve(
        pipeline: &Pipeline,
        stores: &StoreOverrides,
        retry: RequestRetry,
        memory_limit: usize,
        scope: Option<&[Slice]>,
        unwritten: &[(String, Unwritten)],
    ) -> Result<Self> {
        let config = session_config();
        let runtime = RuntimeEnvBuilder::new()
            // A cached listing would hide files that arrive while a long backfill runs.
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
            // Shared fairly by the slices in flight; aggregations and sorts past it spill
            // to disk instead of growing with the slice.
            .with_memory_pool(Arc::new(FairSpillPool::new(memory_limit)))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the DataFusion runtime: {e}")))?;
        let mut registered: Vec<Url> = Vec::new();
        for source in &pipeline.sources {
            let root = store_root(&source.url);
            if registered.contains(&root) {
                continue;
            }
            let given = stores.iter().find(|(url, _)| *url == root);
            let store = match given {
                Some((_, store)) => store.clone(),
                None => {
                    stores::object_store_for(&source.url, &source.storage_options).map_err(|m| {
                        Error::config(
                            format!("{}: sources.{}", pipeline.file.display(), source.name),
                            m,
                        )
                    })?
                }
            };
            // One limited store per bucket, shared by every slice: the cap holds across
            // the slices in flight. A read waiting to be asked again holds no slot.
            let store: Arc<dyn ObjectStore> = match pipeline.max_source_requests {
                Some(max) => Arc::new(LimitStore::new(store, max)),
                None => store,
            };
            runtime.register_object_store(&root, RetryingStore::wrap(store, retry));
            registered.push(root);
        }
        for (url, store) in stores.iter().filter(|(url, _)| !registered.contains(url)) {
            runtime.register_object_store(url, RetryingStore::wrap(store.clone(), retry));
        }
        let runtime = Arc::new(runtime);
        let ctx = SessionContext::new_with_config_rt(config.clone(), runtime.clone());

        let mut tables: Vec<(String, Arc<dyn SourceTable>)> = Vec::new();
        let mut deltas = Vec::new();
        let mut parquets = Vec::new();
        for source in &pipeline.sources {
            let table: Arc<dyn SourceTable> = match source.format {
                SourceFormat::Parquet => {
                    let parquet = HiveParquet::resolve(pipeline, source, &ctx, scope).await?;
                    let parquet = Arc::new(parquet);
                    parquets.push((source.name.clone(), parquet.clone()));
                    parquet
                }
                SourceFormat::Delta => {
                    let root = store_root(&source.url);
                    let store = runtime
                        .object_store(
                            datafusion::execution::object_store::ObjectStoreUrl::parse(
                                root.as_str(),
                            )
                            .expect("a store root is a valid object store URL"),
                        )
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    let unwritten = unwritten
                        .iter()
                        .find(|(name, _)| *name == source.name)
                        .map(|(_, table)| table);
                    let delta = Arc::new(
                        DeltaSource::resolve(pipeline, source, store, &ctx, unwritten).await?,
                    );
                    deltas.push((source.name.clone(), delta.clone()));
                    delta
                }
            };
            tables.push((source.name.clone(), table));
        }
        register(&ctx, &tables)?;
        Ok(Sources {
            tables,
            deltas,
            parquets,
            config,
            runtime,
            planning: ctx,
        })
    }

    /// What the optimized `plan` of a slice reads, if it can be found again in a
    /// [`Listing`]: every scan of a Parquet source, keeping partitions by equalities.
    pub(crate) fn reads_of(&self, plan: &datafusion::logical_expr::LogicalPlan) -> Option<Reads> {
        let partitioning = |name: &str| {
            let (_, parquet) = self.parquets.iter().find(|(source, _)| source == name)?;
            Some(parquet.partitioning())
        };
        reads::reads_of(plan, &partitioning)
    }

    /// The files of the Parquet sources, one listing each: the first time, those listed
    /// as they were resolved.
    pub(crate) async fn listing(&self) -> Result<Listing> {
        let mut listing = Listing::default();
        for (name, parquet) in &self.parquets {
            let state = self.planning.state();
            let (url, listed) = parquet.list(&state).await?;
            listing.add(name, &url, &parquet.partitioning(), listed);
        }
        Ok(listing)
    }

    /// The configuration every session of the run starts from.
    pub fn session_config(&self) -> SessionConfig {
        self.config.clone()
    }

    /// The run's runtime: its object stores and its memory pool.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// The first of `files` that was left out of the schema, and why.
    pub fn left_out<'a>(&'a self, files: &'a [SourceFile]) -> Option<(&'a str, &'a str)> {
        files.iter().find_map(|file| {
            let why = self
                .tables
                .iter()
                .find_map(|(_, t)| t.left_out(&file.path))?;
            Some((file.path.as_str(), why))
        })
    }

    /// Brings the Delta source `name` forward to the table's latest version, if it reads
    /// one older than `version`.
    pub async fn catch_up(&self, name: &str, version: u64) -> Result<()> {
        match self.deltas.iter().find(|(source, _)| source == name) {
            Some((_, delta)) => delta.catch_up(version).await,
            None => Ok(()),
        }
    }

    /// The version each Delta source that has been written reads now.
    pub fn delta_versions(&self) -> Vec<(String, u64)> {
        (self.deltas.iter())
            .filter_map(|(name, delta)| Some((name.clone(), delta.version()?)))
            .collect()
    }

    /// Makes `ctx`'s default schema the pipeline's sources as tables a cluster can
    /// read: for a slice's transform, what its plan here `scanned`; otherwise each source
    /// as slices read it now. A source becomes such a table only when a query names it.
    pub fn register_portable(
        &self,
        ctx: &SessionContext,
        scanned: Option<Vec<SourceFile>>,
    ) -> Result<()> {
        portable::register(ctx, self.tables.clone(), scanned)
    }

    /// Whether a cluster can read every source as slices read it now: the error names
    /// the first it cannot.
    pub fn check_portable(&self) -> Result<()> {
        for (_, table) in &self.tables {
            table.portable(None)?;
        }
        Ok(())
    }

    /// Whether `name` is one of the pipeline's sources.
    pub fn has(&self, name: &str) -> bool {
        self.tables.iter().any(|(source, _)| source == name)
    }

    /// A session to plan a slice's transform in, whose plans split into `partitions`
    /// streams. Every slice plans in a copy of the same session, which costs far less
    /// than building one: with thousands of small slices, that cost adds up.
    pub fn planning_state(&self, partitions: usize) -> SessionState {
        let mut state = self.planning.state();
        state.config_mut().options_mut().execution.target_partitions = partitions.max(1);
        state
    }

    /// A fresh context, with every source registered, for work that registers tables of
    /// its own (a slice's checks, a validation, a preview); its plans split into
    /// `partitions` streams.
    pub fn context(&self, partitions: usize) -> Result<SessionContext> {
        let config = self
            .config
            .clone()
            .with_target_partitions(partitions.max(1));
        let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        register(&ctx, &self.tables)?;
        Ok(ctx)
    }
}

/// How errors about `source` of `pipeline` name it: the file, the source and its location.
fn source_context(pipeline: &Pipeline, source: &crate::pipeline::Source) -> String {
    format!(
        "{}: source `{}` at {}",
        pipeline.file.display(),
        source.name,
        source.url
    )
}

/// Registers each source in `ctx` under its name.
fn register(ctx: &SessionContext, tables: &[(String, Arc<dyn SourceTable>)]) -> Result<()> {
    for (name, table) in tables {
        ctx.register_table(name.as_str(), table.provider())
            .map_err(|e| Error::Internal(format!("cannot register source `{name}`: {e}")))?;
    }
    Ok(())
}

fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(false);
    // Readers that follow the session (a Delta table's provider, in a preview) read
    // strings as views. Sources and staged slices carry their own format, which reads
    // them plain (see `parquet_format`).
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = true;
    // Planning errors then say where in the SQL they are.
    config.options_mut().sql_parser.collect_spans = true;
    config
}

impl Sources {
    /// The files a physical plan scans, sorted: what a slice actually reads after pruning.
    pub fn scanned_files(&self, plan: &Arc<dyn ExecutionPlan>) -> Vec<SourceFile> {
        let mut files = Vec::new();
        plan.apply(|node| {
            if let Some(exec) = node.downcast_ref::<DataSourceExec>() {
                if let Some(scan) = exec.data_source().downcast_ref::<FileScanConfig>() {
                    for file in scan.file_groups.iter().flat_map(|group| group.files()) {
                        let meta = &file.object_meta;
                        let rows = file.statistics.as_ref();
                        let source = self.source_of(&meta.location);
                        let path = match &source {
                            Some((_, table)) => table.file_name(&meta.location),
                            None => meta.location.to_string(),
                        };
                        files.push(SourceFile {
                            path,
                            size: meta.size,
                            modified: meta.last_modified.to_rfc3339(),
                            e_tag: meta.e_tag.clone(),
                            source: source.map(|(name, _)| name.clone()).unwrap_or_default(),
                            rows: rows.and_then(|s| s.num_rows.get_value().map(|n| *n as u64)),
                        });
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .expect("the visitor never fails");
        files.sort();
        files.dedup();
        files
    }

    /// The source whose folder holds `path`.
    fn source_of(
        &self,
        path: &object_store::path::Path,
    ) -> Option<&(String, Arc<dyn SourceTable>)> {
        self.tables.iter().find(|(_, table)| table.owns(path))
    }
}

/// A stable fingerprint of a list of source files.
pub fn fingerprint_files(files: &[SourceFile]) -> String {
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.path.as_bytes());
        hash.update([0]);
        hash.update(file.size.to_le_bytes());
        hash.update(file.modified.as_bytes());
        hash.update([0]);
        hash.update(file.e_tag.as_deref().unwrap_or("").as_bytes());
        hash.update([0]);
    }
    hex(&hash.finalize())
}

/// A stable fingerprint of a text, such as the SQL template.
pub fn fingerprint_text(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// 128 bits of a SHA-256 digest, as hex: plenty to tell inputs apart, short to read.
fn hex(digest: &[u8]) -> String {
    hex::encode(&digest[..16])
}
