//! The sources as a session on a cluster sees them: each one, when a query names it, as
//! the table its kind offers a cluster ([`SourceTable::portable`]).
//!
//! Built on demand, a source costs a session nothing unless the session's queries read
//! it: a Delta source read whole lists every file of its version, which most of a
//! slice's checks never need. This module only reads.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

use super::{SourceFile, SourceTable};

/// The default schema of a session on a cluster: the pipeline's sources, and whatever
/// the session registers itself (a slice's staged output, say).
struct PortableSources {
    sources: Vec<(String, Arc<dyn SourceTable>)>,
    /// The files a slice's plan scanned, when the session computes that slice.
    scanned: Option<Vec<SourceFile>>,
    registered: MemorySchemaProvider,
}

/// Makes `ctx`'s default schema `sources`, each read as a plan that `scanned` them (or
/// whole, without).
pub(super) fn register(
    ctx: &SessionContext,
    sources: Vec<(String, Arc<dyn SourceTable>)>,
    scanned: Option<Vec<SourceFile>>,
) -> crate::error::Result<()> {
    let state = ctx.state();
    let names = &state.config().options().catalog;
    let catalog = ctx.catalog(&names.default_catalog).ok_or_else(|| {
        crate::error::Error::Internal(format!("no catalog `{}`", names.default_catalog))
    })?;
    let schema = PortableSources {
        sources,
        scanned,
        registered: MemorySchemaProvider::new(),
    };
    catalog
        .register_schema(&names.default_schema, Arc::new(schema))
        .map_err(|e| crate::error::Error::Internal(format!("cannot register the sources: {e}")))?;
    Ok(())
}

impl std::fmt::Debug for PortableSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sources.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("PortableSources")
            .field("sources", &names)
            .field("registered", &self.registered.table_names())
            .finish()
    }
}

#[async_trait]
impl SchemaProvider for PortableSources {
    fn table_names(&self) -> Vec<String> {
        let sources = self.sources.iter().map(|(name, _)| name.clone());
        sources.chain(self.registered.table_names()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.registered.table(name).await? {
            return Ok(Some(table));
        }
        let Some((name, source)) = self.sources.iter().find(|(source, _)| source == name) else {
            return Ok(None);
        };
        let own: Option<Vec<SourceFile>> = self.scanned.as_ref().map(|files| {
            let own = files.iter().filter(|file| file.source == *name);
            own.cloned().collect()
        });
        // Our error travels inside DataFusion's and keeps its class (see `ResultExt`).
        let table = source.portable(own.as_deref());
        table
            .map(Some)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        self.registered.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.registered.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.registered.table_exist(name) || self.sources.iter().any(|(source, _)| source == name)
    }
}
