//! The sink: the only code that writes to the destination or commits to its Delta log.
//!
//! Publishing a slice is two steps. [`Sink::stage`] streams the slice's output into
//! Parquet files that no reader sees (uncommitted files in the table, or under
//! `_backfill/staging/` for a merge across the table) and counts rows and nulls on the
//! way. Then, only if the slice's assertions pass, [`Sink::publish`] makes them visible
//! in one atomic commit that also carries the slice's `txn` and [`SliceRecord`] (and,
//! when other slices were waiting at the same time, theirs: see [`group`]); or
//! [`Sink::discard`] deletes them.
//! Every commit, of one slice, of several, or a rebuild's swap, goes through one
//! committer ([`commit`]), which settles a failed commit against the log before anything
//! is deleted; a slice another run committed meanwhile is not committed again (see
//! [`view`]). What differs between strategies is answered by one type per strategy
//! ([`strategy`]): [`overwrite`], [`append`] and [`merge`] commit slices as they are
//! checked; [`rebuild`] stages every slice the same way but publishes them all at once
//! with [`Sink::swap`]. [`table`] opens and checks the destination. [`clean`] deletes what
//! attempts that never committed left behind. This module never deletes a file that a
//! committed version references.

mod append;
pub mod clean;
mod commit;
mod group;
mod merge;
mod missing;
mod overwrite;
pub(crate) mod promote;
pub mod rebuild;
mod staged;
pub(crate) mod strategy;
mod table;
#[cfg(test)]
mod tests;
mod view;
pub(crate) mod writing;

pub use group::CommitStep;
pub use missing::TableFiles;
pub(crate) use staged::data_files;
pub(crate) use table::existing_table;
pub use table::history_at;
pub use writing::{WriteTarget, Written};

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::kernel::{Add, LogicalFileView};
use deltalake::DeltaTable;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use tokio::sync::Mutex;
use url::Url;

use crate::error::{Error, Result, ResultExt};
use crate::ledger::SliceRecord;
use crate::pipeline::Destination;
use crate::retry::RequestRetry;
use crate::slice::Slice;
use strategy::WriteStrategy;
use table::{check_compatible, load_table, reach, refuse_files_beyond_plain, refuse_foreign_files};
use view::TableView;

/// The keys naming the pipeline and slice that wrote a file, in its `add.tags` and in its
/// Parquet footer. Tags live in the table state (and its checkpoints), so they outlast the
/// log's commit history; the footer names the writer of a file no commit references.
pub const PIPELINE_TAG: &str = "backfill.pipeline";
pub const SLICE_TAG: &str = "backfill.slice";

/// The pipeline and slice that wrote an active file, from its tags.
fn written_by(file: &LogicalFileView) -> (Option<String>, Option<String>) {
    // The view exposes tags only through the (deprecated) conversion to an `Add`.
    #[allow(deprecated)]
    let tags = file.add_action().tags.unwrap_or_default();
    let tag = |key: &str| tags.get(key).cloned().flatten();
    (tag(PIPELINE_TAG), tag(SLICE_TAG))
}

/// The destination table of a run.
pub struct Sink {
    pipeline: String,
    url: Url,
    partition_by: Vec<String>,
    /// See [`Destination::slices_own_partitions`].
    slices_own_partitions: bool,
    strategy: Box<dyn WriteStrategy>,
    schema: SchemaRef,
    store: Arc<dyn ObjectStore>,
    /// The store at the root of the table's bucket (or disk), for DataFusion to read
    /// staged files through.
    root_store: Arc<dyn ObjectStore>,
    storage_options: HashMap<String, String>,
    /// The store at the root of the table's bucket (or disk) that delta-rs reaches the
    /// table through: the one given, or the one its URL names, asking reads again while
    /// they fail for a passing reason.
    reach: Arc<dyn ObjectStore>,
    /// The table as last seen (`None` until it exists), and the slice commits seen since
    /// the sink opened. Held while committing, so the commits of one run are serialized
    /// while their slices compute in parallel.
    view: Mutex<TableView>,
    /// Checked slices waiting to be committed together (see [`group`]).
    line: std::sync::Mutex<group::Line>,
    /// The table's data files, listed since it was opened, for the first plan to find
    /// done slices' files in.
    data_files_at_open: std::sync::Mutex<Option<missing::DataFilesListing>>,
    /// The runtime of the sink's own queries (a merge's rows that stay): the run's, with
    /// its memory pool, once [`Sink::share_runtime`] gave it.
    runtime: std::sync::OnceLock<Arc<RuntimeEnv>>,
}

/// A destination reached, with its table loaded if it exists ([`Sink::load`]).
pub struct Loaded {
    storage_options: HashMap<String, String>,
    reach: Arc<dyn ObjectStore>,
    table: DeltaTable,
    exists: bool,
    data_files: Option<missing::DataFilesListing>,
}

impl Loaded {
    /// Starts listing the table's data files in the background, for a plan to look for
    /// done slices' files in (see [`Sink::missing_files`]).
    pub(crate) fn list_data_files(mut self) -> Self {
        if self.exists {
            self.data_files = Some(missing::list_data_files(self.table.object_store()));
        }
        self
    }
}

/// A slice that is in the table after [`Sink::publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub version: u64,
    pub by: Committer,
}

/// Who committed a published slice.
#[derive(Debug, Clone, PartialEq)]
pub enum Committer {
    /// This attempt, as asked.
    ThisAttempt,
    /// An earlier attempt of this run whose commit failed ambiguously but landed.
    EarlierAttempt,
    /// Another run, after this one read the log: this one did not commit it again.
    OtherRun { run_id: String },
}

/// One slice's share of a commit: its staged output and the record it carries.
pub struct SliceCommit<'a> {
    pub slice: &'a Slice,
    pub staged: &'a StagedOutput,
    pub record: &'a SliceRecord,
}

/// A slice's output, written but not visible to any reader.
#[derive(Clone)]
pub struct StagedOutput {
    pub adds: Vec<Add>,
    /// The folder the paths of `adds` are relative to.
    pub base: Url,
    /// Partition columns written as folders (and so absent from the files).
    pub partition_columns: Vec<String>,
    pub rows: u64,
    pub bytes: u64,
    /// Null count of each output column, in schema order.
    pub null_counts: Vec<u64>,
}

impl Sink {
    /// Reaches the destination and loads its table if there is one: the part of opening a
    /// sink that needs no pipeline output, so that it can run while the sources resolve.
    /// `store`, if given, is used to reach the destination instead of the one its URL
    /// names (tests inject faults this way); either way its reads are retried by `retry`.
    pub async fn load(
        destination: &Destination,
        store: Option<Arc<dyn ObjectStore>>,
        retry: RequestRetry,
    ) -> Result<Loaded> {
        let url = destination.url.clone();
        let context = || format!("destination {url}");
        if let Ok(path) = url.to_file_path() {
            // Without the trailing slash of a folder URL, so that a file is seen as one.
            let path: std::path::PathBuf = path.iter().collect();
            if path.is_file() {
                return Err(Error::config(
                    context(),
                    "is a file, not a folder for a table",
                ));
            }
        }
        let storage_options = table::storage_options(destination);
        let reach = reach(&url, &storage_options, store, retry).context(context)?;
        let (table, exists) = load_table(&url, &storage_options, &reach).await?;
        if !exists {
            refuse_foreign_files(&table, &url).await?;
        }
        Ok(Loaded {
            storage_options,
            reach,
            table,
            exists,
            data_files: None,
        })
    }

    /// Opens the loaded destination for a pipeline's output `schema`, checking that an
    /// existing table fits it.
    pub fn open(
        pipeline: &str,
        destination: &Destination,
        schema: SchemaRef,
        loaded: Loaded,
    ) -> Result<Self> {
        let url = destination.url.clone();
        let Loaded {
            storage_options,
            reach,
            table,
            exists,
            data_files,
        } = loaded;
        let strategy = strategy::of(destination);
        if exists && !strategy.may_change_columns() {
            check_compatible(&table, &schema, &destination.partition_by)
                .map_err(|m| Error::config(format!("destination {url}"), m))?;
        }
        if exists && strategy.reads_table_files() {
            refuse_files_beyond_plain(&table)
                .map_err(|m| Error::config(format!("destination {url}"), m))?;
        }
        Ok(Sink {
            pipeline: pipeline.to_string(),
            store: table.object_store(),
            root_store: table.log_store().root_object_store(None),
            storage_options,
            reach,
            url,
            partition_by: destination.partition_by.clone(),
            slices_own_partitions: destination.slices_own_partitions,
            strategy,
            schema,
            view: Mutex::new(TableView::new(pipeline, exists.then_some(table))),
            line: Default::default(),
            data_files_at_open: std::sync::Mutex::new(data_files),
            runtime: Default::default(),
        })
    }

    /// Where the table is.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The object store rooted at the destination table.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Reads the table afresh from storage, for when this sink's view may be behind.
    pub async fn reload(&self) -> Result<Option<DeltaTable>> {
        let (table, exists) = load_table(&self.url, &self.storage_options, &self.reach).await?;
        Ok(exists.then_some(table))
    }

    /// Moves this sink's view of the table to its latest version if others committed
    /// since it was read, as a run does once it holds its pipeline's lease: it decides
    /// from the log as the run before it left it. Costs one listing of the log when
    /// nothing moved.
    pub(crate) async fn read_latest(&self) -> Result<()> {
        let mut view = self.view.lock().await;
        if let Some(table) = &view.table {
            let latest = table.get_latest_version().await;
            let latest = latest.context(|| format!("reading the Delta log of {}", self.url))?;
            if Some(latest) == view.version() {
                return Ok(());
            }
        }
        let latest = self.reload().await?;
        if latest.as_ref().map(|t| t.version()) != view.table.as_ref().map(|t| t.version()) {
            view.table = latest;
            // Listed before those commits, the listing would miss their files.
            *self.data_files_at_open.lock().expect("not poisoned") = None;
        }
        Ok(())
    }

    /// Lets the run's sessions read the destination's files (staged output, for
    /// assertions), and runs the sink's own queries in the run's runtime, within its
    /// memory.
    pub fn share_runtime(&self, runtime: Arc<RuntimeEnv>) {
        self.register_store(&runtime);
        let _ = self.runtime.set(runtime);
    }

    /// A session for the sink's own queries, which reads the destination's files. Its
    /// queries name files they read in full, so planning them reads no footers for
    /// statistics (half of a small merge's planning time).
    fn session(&self) -> SessionContext {
        let runtime = self.runtime.get().cloned().unwrap_or_default();
        self.register_store(&runtime);
        let config = SessionConfig::new().with_collect_statistics(false);
        SessionContext::new_with_config_rt(config, runtime)
    }

    /// Lets DataFusion sessions of `runtime` read the destination's files (staged output,
    /// for assertions and merges), unless a store for that bucket is registered already.
    pub fn register_store(&self, runtime: &RuntimeEnv) {
        let root = crate::source::store_root(&self.url);
        let key = datafusion::execution::object_store::ObjectStoreUrl::parse(root.as_str())
            .expect("a store root is a valid object store URL");
        if runtime.object_store(&key).is_err() {
            runtime.register_object_store(&root, self.root_store.clone());
        }
    }

    /// The strategy this sink writes with.
    pub(crate) fn strategy(&self) -> &dyn WriteStrategy {
        self.strategy.as_ref()
    }

    /// The table as it is now, or `None` if nothing was ever committed.
    pub async fn table(&self) -> Option<DeltaTable> {
        self.view.lock().await.table.clone()
    }

    /// Where and how `slice`'s output is written: into the table, or into a folder of its
    /// own when the strategy stages apart; kept to the slice's partition when the strategy
    /// replaces or merges it. An error names the slice if its partition values do not fit
    /// the output's columns.
    pub fn write_target(&self, slice: &Slice) -> Result<WriteTarget> {
        let (base, partition_columns) = match self.strategy.stages_apart() {
            true => (
                self.url
                    .join(&format!("_backfill/staging/{}/", uuid::Uuid::new_v4()))
                    .expect("a valid path"),
                vec![],
            ),
            false => (self.url.clone(), self.partition_by.clone()),
        };
        let owned = self.strategy.keeps_to_its_partitions() && self.slices_own_partitions;
        let partition = match owned {
            true => slice.partition.clone(),
            false => vec![],
        };
        let target = WriteTarget {
            pipeline: self.pipeline.clone(),
            slice: slice.key.clone(),
            base,
            partition_columns,
            partition,
        };
        writing::PartitionGuard::new(&self.schema, &target)?;
        Ok(target)
    }

    /// Streams a slice's output into files no reader sees. Rows outside the slice's
    /// partitions are refused where the strategy replaces or merges those partitions.
    /// On error, whatever was written is deleted.
    pub async fn stage(
        &self,
        slice: &Slice,
        stream: SendableRecordBatchStream,
    ) -> Result<StagedOutput> {
        self.stage_rows(slice, stream, writing::TRANSFORM).await
    }

    /// [`Sink::stage`] for rows that `stream` computes as `computing` says.
    async fn stage_rows(
        &self,
        slice: &Slice,
        stream: SendableRecordBatchStream,
        computing: &str,
    ) -> Result<StagedOutput> {
        let target = self.write_target(slice)?;
        let written = writing::write(
            &target,
            &self.schema,
            &self.storage_options,
            self.root_store.as_ref(),
            stream,
            computing,
        )
        .await?;
        Ok(self.staged(&target, vec![written]))
    }

    /// The slice staged by the writers that wrote `parts`, following `staging`.
    pub fn staged(&self, target: &WriteTarget, parts: Vec<Written>) -> StagedOutput {
        target.staged(parts, self.schema.fields().len())
    }

    /// Deletes staged files; deleting them twice is harmless. Best effort: they are
    /// invisible to readers either way.
    pub async fn discard(&self, staged: &StagedOutput) {
        writing::delete(self.root_store.as_ref(), &staged.base, &staged.adds).await;
    }

    /// Resolves a path written by the delta writer (percent-encoded, relative to `base`)
    /// to a path in the table's object store.
    fn store_path(&self, base: &Url, relative: &str) -> Option<StorePath> {
        let absolute = base.join(relative).ok()?;
        let within = absolute.path().strip_prefix(self.url.path())?;
        StorePath::from_url_path(within).ok()
    }
}
