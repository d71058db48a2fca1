//! Which files of a done slice are gone from storage.
//!
//! A table whose current version points at a missing file fails every reader. A done slice
//! is skipped by a run, so before it is called done its files are looked for, in one
//! listing of the table's data folders made for every slice of a plan (a listing per slice
//! would be a request per slice). [`TableFiles`] indexes the table's files by slice once
//! per plan, so looking up a slice costs no pass over the whole table.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::common::ScalarValue;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::ObjectStore;

use super::{written_by, Sink};
use crate::error::{Result, ResultExt};
use crate::slice::Slice;

/// The current table's files, by the slice whose tags they carry and by the values of the
/// slice columns that are partition columns.
#[derive(Debug, Default)]
pub struct TableFiles {
    by_slice: HashMap<String, Vec<StorePath>>,
    by_partition: HashMap<Vec<Option<ScalarValue>>, Vec<StorePath>>,
    /// The slice columns that partition the table, in the order of `by_partition`'s keys;
    /// empty unless every slice column does.
    columns: Vec<String>,
    /// For each of `columns`, the typed value of each spelling of its values the files
    /// hold: parsing a value costs far more than looking it up, once a slice.
    typed: Vec<HashMap<String, Option<ScalarValue>>>,
    /// The data files in storage, listed when a slice is first looked up.
    present: tokio::sync::OnceCell<HashSet<StorePath>>,
}

impl Sink {
    /// Indexes the files of the table as this sink sees it, for slices cut on
    /// `slice_columns`.
    pub(crate) async fn table_files(&self, slice_columns: &[String]) -> Result<TableFiles> {
        let Some(table) = self.table().await else {
            return Ok(TableFiles::default());
        };
        let columns = match slice_columns.iter().all(|c| self.partition_by.contains(c)) {
            true => slice_columns.to_vec(),
            false => vec![],
        };
        let mut files = TableFiles {
            typed: vec![HashMap::new(); columns.len()],
            columns,
            ..TableFiles::default()
        };
        let snapshot = table.snapshot().context(|| self.url.to_string())?;
        for file in snapshot.log_data().iter() {
            let path = file.object_store_path();
            if let (Some(pipeline), Some(slice)) = written_by(&file) {
                if pipeline == self.pipeline {
                    files.by_slice.entry(slice).or_default().push(path.clone());
                }
            }
            if !files.columns.is_empty() {
                let values = file.partition_values_map();
                let key = (files.columns.iter().zip(&mut files.typed))
                    .map(|(c, typed)| {
                        let text = values.get(c).cloned().flatten()?;
                        let value = typed.entry(text);
                        value.or_insert_with_key(|t| self.typed(c, Some(t))).clone()
                    })
                    .collect();
                files.by_partition.entry(key).or_default().push(path);
            }
        }
        Ok(files)
    }

    /// The files of `slice` in `files` that are gone from storage, as paths relative to
    /// the table: those its tags name, and those in its partitions (merge's own files
    /// carry no tags).
    pub(crate) async fn missing_files(
        &self,
        files: &TableFiles,
        slice: &Slice,
    ) -> Result<Vec<String>> {
        let context = || format!("slice {}: listing its files in {}", slice.key, self.url);
        let key: Option<Vec<Option<ScalarValue>>> = (!files.columns.is_empty()).then(|| {
            (files.columns.iter().zip(&files.typed))
                .map(|(c, typed)| {
                    let (_, text) = slice.partition.iter().find(|(column, _)| column == c)?;
                    match typed.get(text) {
                        Some(value) => value.clone(),
                        None => self.typed(c, Some(text)),
                    }
                })
                .collect()
        });
        let tagged = files.by_slice.get(&slice.key).into_iter().flatten();
        // A value that does not parse as its column's type names no partition.
        let key = key.filter(|k| k.iter().all(Option::is_some));
        let in_partitions = key
            .and_then(|k| files.by_partition.get(&k))
            .into_iter()
            .flatten();
        let present = files.present.get_or_try_init(|| self.present_files()).await;
        let present = present.context(context)?;
        let mut missing: Vec<String> = (tagged.chain(in_partitions))
            .filter(|path| !present.contains(*path))
            .map(|path| path.to_string())
            .collect();
        missing.sort();
        missing.dedup();
        Ok(missing)
    }

    /// The table's data files in storage: the first time, those listed since the table
    /// loaded for a plan (see [`super::Loaded::list_data_files`]), then listed again.
    async fn present_files(&self) -> object_store::Result<HashSet<StorePath>> {
        let at_open = self
            .data_files_at_open
            .lock()
            .expect("never poisoned")
            .take();
        match at_open {
            Some(listing) => listing.await,
            None => data_files(self.store.clone()).await,
        }
    }

    /// A partition value by its typed meaning, so that `7` and `07` are one integer.
    pub(super) fn typed(&self, column: &str, text: Option<&str>) -> Option<ScalarValue> {
        let data_type = self.schema.field_with_name(column).ok()?.data_type();
        ScalarValue::try_from_string(text?.to_string(), data_type).ok()
    }
}

/// A listing of a table's data files made in the background; dropped, it stops.
pub(super) type DataFilesListing =
    futures::future::RemoteHandle<object_store::Result<HashSet<StorePath>>>;

/// Starts listing the data files of the table in `store`.
pub(super) fn list_data_files(store: Arc<dyn ObjectStore>) -> DataFilesListing {
    let (listing, handle) = data_files(store).remote_handle();
    tokio::spawn(listing);
    handle
}

/// Every file in the table's folder but its log and the history (`_delta_log/`,
/// `_backfill/`): one listing of each top folder, 16 at a time.
async fn data_files(store: Arc<dyn ObjectStore>) -> object_store::Result<HashSet<StorePath>> {
    let top = store.list_with_delimiter(None).await?;
    let mut present: HashSet<StorePath> = top.objects.into_iter().map(|o| o.location).collect();
    let data = top.common_prefixes.into_iter().filter(|prefix| {
        !prefix
            .parts()
            .next()
            .is_some_and(|part| part.as_ref().starts_with('_'))
    });
    let listings = futures::stream::iter(data)
        .map(|prefix| {
            let store = &store;
            async move { store.list(Some(&prefix)).try_collect::<Vec<_>>().await }
        })
        .buffer_unordered(16);
    let listed: Vec<Vec<object_store::ObjectMeta>> = listings.try_collect().await?;
    present.extend(listed.into_iter().flatten().map(|o| o.location));
    Ok(present)
}
