//! A Delta table as a source, read at one version at a time.
//!
//! A slice's plan prunes the table's files by the slice's partition values, so a slice
//! opens only its own partitions' files, as with a hive-partitioned source. Only files
//! the log references at that version are read, never the removed or uncommitted files
//! the table's folder also holds. A committed data file never changes, so a slice's
//! fingerprint (the files its plan scans) changes exactly when the upstream commits new
//! files into the partitions the slice reads.
//!
//! The table is read at the version it had when the pipeline was opened. In a chain of
//! pipelines run together the upstream commits while the downstream runs, so the source
//! can be brought forward ([`DeltaSource::catch_up`]) before a downstream slice plans;
//! an upstream the chain has not written yet reads as an empty table with the columns
//! and partitioning its pipeline will create it with. This module reads; it never
//! writes (the empty stand-in lives in memory).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{EagerSnapshot, StructType};
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStore;
use url::Url;

use super::files::{beyond_plain_files, files_table, DataFile};
use super::{SourceFile, SourceTable};
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, Source};

/// The table a chained upstream pipeline will write, for a downstream opened before it
/// has: its columns as it creates them, and its partition columns.
#[derive(Debug, Clone)]
pub struct Unwritten {
    pub schema: SchemaRef,
    pub partition_by: Vec<String>,
}

/// A Delta source, resolved: the table at one version and its provider.
pub struct DeltaSource {
    live: Arc<LiveTable>,
    /// The table's folder, as the paths its scans name start.
    root: object_store::path::Path,
    url: Url,
    store: Arc<dyn ObjectStore>,
    /// How errors name the source.
    context: String,
    /// The run's sessions, whose runtime must reach the table's files.
    session: SessionContext,
    /// The table as last loaded; `None` while the upstream has not written it.
    loaded: tokio::sync::Mutex<Option<DeltaTable>>,
}

impl DeltaSource {
    /// Loads `source`'s table through `store` (rooted at its bucket or disk) at its latest
    /// version, and makes its files readable in `ctx`'s runtime, which every session of
    /// the run shares. A table not written yet is an error, unless it is `unwritten` by a
    /// pipeline of the same run: then it reads as empty until [`DeltaSource::catch_up`].
    pub async fn resolve(
        pipeline: &Pipeline,
        source: &Source,
        store: Arc<dyn ObjectStore>,
        ctx: &SessionContext,
        unwritten: Option<&Unwritten>,
    ) -> Result<Self> {
        let context = super::source_context(pipeline, source);
        let table = load(&source.url, &store)
            .await
            .map_err(|e| Error::execution(&context, format!("cannot read the table: {e}")))?;
        let provider = match (&table, unwritten) {
            (Some(table), _) => {
                table
                    .update_datafusion_session(&ctx.state())
                    .map_err(|e| Error::execution(&context, e.to_string()))?;
                provider_of(table)
                    .await
                    .map_err(|e| Error::execution(&context, e.to_string()))?
            }
            (None, Some(unwritten)) => stand_in(unwritten, ctx)
                .await
                .map_err(|e| Error::Internal(format!("{context}: {e}")))?,
            (None, None) => {
                return Err(Error::config(
                    context,
                    "is not a Delta table (it has no _delta_log): run the pipeline that writes it first",
                ))
            }
        };
        let root = object_store::path::Path::from_url_path(source.url.path())
            .map_err(|e| Error::config(&context, e.to_string()))?;
        let current = Current {
            provider,
            version: table.as_ref().and_then(DeltaTable::version),
            snapshot: table.as_ref().and_then(eager_snapshot),
        };
        Ok(DeltaSource {
            live: Arc::new(LiveTable {
                schema: current.provider.schema(),
                current: RwLock::new(current),
                written: table.is_some(),
            }),
            root,
            url: source.url.clone(),
            store,
            context,
            session: ctx.clone(),
            loaded: tokio::sync::Mutex::new(table),
        })
    }

    /// Reads the table forward to its latest version if it is older than `version`, so
    /// that slices planned from now on see at least what that version committed.
    pub async fn catch_up(&self, version: u64) -> Result<()> {
        let mut loaded = self.loaded.lock().await;
        let current = loaded.as_ref().and_then(DeltaTable::version);
        if current.is_some_and(|v| v >= version) {
            return Ok(());
        }
        let context = || self.context.clone();
        let table = match loaded.as_mut() {
            Some(table) => {
                table.update_incremental(None).await.map_err(|e| {
                    Error::execution(context(), format!("cannot read the table: {e}"))
                })?;
                table
            }
            None => {
                let table = load(&self.url, &self.store)
                    .await
                    .map_err(|e| Error::execution(context(), format!("cannot read the table: {e}")))?
                    .ok_or_else(|| {
                        Error::Internal(format!("{}: version {version} of the table was committed, yet it has no _delta_log", self.context))
                    })?;
                table
                    .update_datafusion_session(&self.session.state())
                    .map_err(|e| Error::execution(context(), e.to_string()))?;
                loaded.insert(table)
            }
        };
        let provider = provider_of(table)
            .await
            .map_err(|e| Error::execution(context(), e.to_string()))?;
        let same_columns = |a: &SchemaRef, b: &SchemaRef| {
            a.fields().len() == b.fields().len()
                && a.fields()
                    .iter()
                    .zip(b.fields())
                    .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type())
        };
        if !same_columns(&provider.schema(), &self.live.schema) {
            return Err(Error::execution(
                context(),
                "the table's columns changed while this run read it: run again",
            ));
        }
        let mut current = self.live.current.write().expect("not poisoned");
        *current = Current {
            provider,
            version: table.version(),
            snapshot: eager_snapshot(table),
        };
        Ok(())
    }

    /// The version slices read, if the table is written.
    pub fn version(&self) -> Option<u64> {
        self.live.current.read().expect("not poisoned").version
    }
}

impl SourceTable for DeltaSource {
    fn provider(&self) -> Arc<dyn TableProvider> {
        self.live.clone()
    }

    fn owns(&self, path: &object_store::path::Path) -> bool {
        path.prefix_matches(&self.root)
    }

    /// Within the table: the same table's files in another environment (promoted copies,
    /// named the same) are the same files.
    fn file_name(&self, path: &object_store::path::Path) -> String {
        let within = path.prefix_match(&self.root).map(|parts| parts.collect());
        within.map_or_else(
            || path.to_string(),
            |within: object_store::path::Path| within.to_string(),
        )
    }

    fn left_out(&self, _path: &str) -> Option<&str> {
        // The log says which files make the table: none is ever left out.
        None
    }

    /// The log's files, read as plain Parquet: only those a slice's plan scans, or all
    /// of them at the version slices read now. A table whose files need more than
    /// that to read (deletion vectors, column mapping) is refused.
    fn portable(&self, scanned: Option<&[SourceFile]>) -> Result<Arc<dyn TableProvider>> {
        let current = self.live.current.read().expect("not poisoned");
        let Some(snapshot) = &current.snapshot else {
            // Not written yet: it reads as empty.
            return files_table(&self.live.schema, &self.url, &[], [])
                .map_err(|e| Error::Internal(format!("{}: {e}", self.context)));
        };
        let beyond_plain_files = beyond_plain_files(snapshot.protocol());
        if !beyond_plain_files.is_empty() {
            return Err(Error::config(
                &self.context,
                format!(
                    "the table uses {}, which a cluster does not read yet: run without --cluster",
                    beyond_plain_files.join(", ")
                ),
            ));
        }
        let wanted: Option<HashSet<&str>> =
            scanned.map(|files| files.iter().map(|f| f.path.as_str()).collect());
        let mut files = Vec::new();
        for file in snapshot.log_data().iter() {
            let path = file.object_store_path();
            if wanted.as_ref().is_some_and(|w| !w.contains(path.as_ref())) {
                continue;
            }
            files.push(DataFile {
                path: file.path().into_owned(),
                partition: file.partition_values_map(),
            });
        }
        if let Some(wanted) = &wanted {
            if files.len() < wanted.len() {
                // The table moved on between the slice's planning and now, and removed a
                // file the slice read: planning it again reads the new version.
                return Err(Error::execution(
                    &self.context,
                    format!(
                        "the table changed while a slice was planned on version {}: run it again",
                        snapshot.version()
                    ),
                ));
            }
        }
        let partition_columns = snapshot.metadata().partition_columns();
        files_table(&self.live.schema, &self.url, partition_columns, files)
            .map_err(|e| Error::Internal(format!("{}: {e}", self.context)))
    }
}

/// The log of `table` as loaded.
fn eager_snapshot(table: &DeltaTable) -> Option<EagerSnapshot> {
    Some(table.snapshot().ok()?.snapshot().clone())
}

/// The table at `url` at its latest version, or `None` if it has no log yet.
async fn load(
    url: &Url,
    store: &Arc<dyn ObjectStore>,
) -> std::result::Result<Option<DeltaTable>, DeltaTableError> {
    let mut table = deltalake::DeltaTableBuilder::from_url(url.clone())?
        .with_storage_backend(store.clone(), url.clone())
        .build()?;
    if !table.log_store().is_delta_table_location().await? {
        return Ok(None);
    }
    table.load().await?;
    Ok(Some(table))
}

/// delta-rs's provider over the table's in-memory file list at its loaded version.
async fn provider_of(
    table: &DeltaTable,
) -> std::result::Result<Arc<dyn TableProvider>, DeltaTableError> {
    let snapshot = table.snapshot()?.snapshot().clone();
    let provider = table.table_provider().with_eager_snapshot(snapshot).await;
    provider.map_err(|e| DeltaTableError::Generic(e.to_string()))
}

/// An empty table, in memory, created as the upstream pipeline will create its
/// destination: delta-rs's provider over it has exactly the columns (and answers about
/// filters) the real table's provider will have.
async fn stand_in(
    unwritten: &Unwritten,
    ctx: &SessionContext,
) -> std::result::Result<Arc<dyn TableProvider>, DeltaTableError> {
    let url = Url::parse("memory:///unwritten/").expect("a valid URL");
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let schema: StructType = unwritten.schema.as_ref().try_into_kernel()?;
    let table = deltalake::DeltaTableBuilder::from_url(url.clone())?
        .with_storage_backend(store, url)
        .build()?
        .create()
        .with_columns(schema.fields().cloned())
        .with_partition_columns(unwritten.partition_by.clone())
        .await?;
    table.update_datafusion_session(&ctx.state())?;
    provider_of(&table).await
}

/// The provider registered for a Delta source: whichever version of the table the source
/// last read, with the columns it had when the source was resolved.
#[derive(Debug)]
struct LiveTable {
    schema: SchemaRef,
    current: RwLock<Current>,
    /// Whether the table existed when the source was resolved.
    written: bool,
}

#[derive(Debug)]
struct Current {
    provider: Arc<dyn TableProvider>,
    version: Option<u64>,
    /// The log at that version: which files make the table, and their partitions.
    snapshot: Option<EagerSnapshot>,
}

impl LiveTable {
    fn provider(&self) -> Arc<dyn TableProvider> {
        self.current.read().expect("not poisoned").provider.clone()
    }
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        if !self.written {
            // Planned over the stand-in, a plan may run over the real table once the
            // upstream writes it: keep every filter above the scan as well.
            return Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()]);
        }
        self.provider().supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.provider()
            .scan(state, projection, filters, limit)
            .await
    }
}
