//! A Delta table as a source, read at the version it had when the pipeline was opened.
//!
//! A slice's plan prunes the table's files by the slice's partition values, so a slice
//! opens only its own partitions' files, as with a hive-partitioned source. Only files
//! the log references at that version are read, never the removed or uncommitted files
//! the table's folder also holds. A committed data file never changes, so a slice's
//! fingerprint (the files its plan scans) changes exactly when the upstream commits new
//! files into the partitions the slice reads. This module reads; it never writes.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTableError;
use object_store::ObjectStore;

use super::SourceTable;
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, Source};

/// A Delta source, resolved: the table at one version and its provider.
pub struct DeltaSource {
    provider: Arc<dyn TableProvider>,
    /// The table's folder, as the paths its scans name start.
    root: object_store::path::Path,
}

impl DeltaSource {
    /// Loads `source`'s table through `store` (rooted at its bucket or disk) at its latest
    /// version, and makes its files readable in `ctx`'s runtime, which every session of
    /// the run shares.
    pub async fn resolve(
        pipeline: &Pipeline,
        source: &Source,
        store: Arc<dyn ObjectStore>,
        ctx: &SessionContext,
    ) -> Result<Self> {
        let context = || super::source_context(pipeline, source);
        let opened = async {
            let mut table = deltalake::DeltaTableBuilder::from_url(source.url.clone())?
                .with_storage_backend(store, source.url.clone())
                .build()?;
            if !table.log_store().is_delta_table_location().await? {
                return Ok(None);
            }
            table.load().await?;
            Ok::<_, DeltaTableError>(Some(table))
        };
        let table = opened
            .await
            .map_err(|e| Error::execution(context(), format!("cannot read the table: {e}")))?
            .ok_or_else(|| {
                Error::config(
                    context(),
                    "is not a Delta table (it has no _delta_log): run the pipeline that writes it first",
                )
            })?;
        let internal = |e: &dyn std::fmt::Display| Error::execution(context(), e.to_string());
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| internal(&e))?;
        let snapshot = table
            .snapshot()
            .map_err(|e| internal(&e))?
            .snapshot()
            .clone();
        let provider = table
            .table_provider()
            .with_eager_snapshot(snapshot)
            .await
            .map_err(|e| internal(&e))?;
        let root = object_store::path::Path::from_url_path(source.url.path())
            .map_err(|e| Error::config(context(), e.to_string()))?;
        Ok(DeltaSource { provider, root })
    }
}

impl SourceTable for DeltaSource {
    fn provider(&self) -> Arc<dyn TableProvider> {
        self.provider.clone()
    }

    fn owns(&self, path: &object_store::path::Path) -> bool {
        path.prefix_matches(&self.root)
    }

    fn left_out(&self, _path: &str) -> Option<&str> {
        // The log says which files make the table: none is ever left out.
        None
    }
}
