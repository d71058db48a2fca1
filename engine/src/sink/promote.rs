//! Promoting: a slice's files copied from the table another environment holds of the
//! same pipeline into this one, as staged output that [`Sink::publish`] then commits
//! with the slice's record. No SQL runs. Copies keep their names (unique per write), so
//! copying again after a crash rewrites the same files, which no version references
//! until the commit. Only this module copies between tables.

use std::sync::Arc;

use deltalake::kernel::Add;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{written_by, Sink, StagedOutput};
use crate::error::{Error, Result, ResultExt};
use crate::ledger::SliceRecord;

/// Files copied at once.
const COPIES_IN_FLIGHT: usize = 8;

impl Sink {
    /// The active files each slice of `keys` wrote to this table, found by their tags.
    pub(crate) async fn files_of_slices(&self, keys: &[String]) -> Result<Vec<Vec<Add>>> {
        let table = self.table().await;
        let wanted = keys.iter().map(|key| Some(key.clone())).collect();
        let found =
            super::strategy::files_of_each(table.as_ref(), wanted, |file| match written_by(file) {
                (Some(pipeline), slice) if pipeline == self.pipeline => slice,
                _ => None,
            })
            .context(|| format!("reading the files of {}", self.url))?;
        // The view exposes a file's whole action only through the (deprecated) conversion.
        #[allow(deprecated)]
        let adds = found
            .into_iter()
            .map(|files| files.iter().map(|file| file.add_action()).collect())
            .collect();
        Ok(adds)
    }

    /// Copies `adds`, files of `from`'s table, into this table's folder under the same
    /// names (server-side when both tables are in one bucket), as the staged output of
    /// the slice `record` describes.
    pub(crate) async fn copy_in(
        &self,
        from: &Sink,
        adds: Vec<Add>,
        record: &SliceRecord,
    ) -> Result<StagedOutput> {
        let same_bucket =
            crate::source::store_root(&from.url) == crate::source::store_root(&self.url);
        let copies = adds.iter().map(|add| {
            let (source, target) = (
                full_path(&from.url, &add.path),
                full_path(&self.url, &add.path),
            );
            let (from_store, to_store) = (from.root_store.clone(), self.root_store.clone());
            async move {
                let (source, target) = (source?, target?);
                let context = || format!("slice {}: copying {source} to {target}", record.slice);
                copy(&from_store, &to_store, &source, &target, same_bucket)
                    .await
                    .context(context)
            }
        });
        futures::stream::iter(copies)
            .buffer_unordered(COPIES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(StagedOutput {
            bytes: adds.iter().map(|add| add.size.max(0) as u64).sum(),
            adds,
            base: self.url.clone(),
            partition_columns: self.partition_by.clone(),
            rows: record.rows,
            null_counts: vec![],
        })
    }
}

/// The path in its bucket (or disk) of a file a table's log names relative to `table`.
fn full_path(table: &url::Url, relative: &str) -> Result<StorePath> {
    let absolute = table
        .join(relative)
        .map_err(|e| Error::Internal(format!("{relative} in {table}: {e}")))?;
    StorePath::from_url_path(absolute.path())
        .map_err(|e| Error::Internal(format!("{relative} in {table}: {e}")))
}

async fn copy(
    from: &Arc<dyn ObjectStore>,
    to: &Arc<dyn ObjectStore>,
    source: &StorePath,
    target: &StorePath,
    same_bucket: bool,
) -> object_store::Result<()> {
    if same_bucket {
        return to.copy(source, target).await;
    }
    let bytes = from.get(source).await?.bytes().await?;
    to.put(target, bytes.into()).await.map(|_| ())
}
