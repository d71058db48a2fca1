//! Which files of a done slice are gone from storage.
//!
//! A table whose current version points at a missing file fails every reader. A done slice
//! is skipped by a run, so before it is called done its files are looked for: one listing
//! per folder they are in. [`TableFiles`] indexes the table's files by slice once per
//! plan, so looking up a slice costs no pass over the whole table.

use std::collections::{HashMap, HashSet};

use datafusion::common::ScalarValue;
use object_store::path::Path as StorePath;

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
                let key = files
                    .columns
                    .iter()
                    .map(|c| self.typed(c, values.get(c).cloned().flatten().as_deref()))
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
            files
                .columns
                .iter()
                .map(|c| {
                    let value = slice.partition.iter().find(|(column, _)| column == c);
                    self.typed(c, value.map(|(_, v)| v.as_str()))
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
        let mut by_folder: HashMap<Option<StorePath>, HashSet<&StorePath>> = HashMap::new();
        for path in tagged.chain(in_partitions) {
            let parts: Vec<_> = path.parts().collect();
            let folder = (parts.len() > 1)
                .then(|| StorePath::from_iter(parts[..parts.len() - 1].iter().cloned()));
            by_folder.entry(folder).or_default().insert(path);
        }
        let mut missing = Vec::new();
        for (folder, paths) in by_folder {
            let listed = self
                .store
                .list_with_delimiter(folder.as_ref())
                .await
                .context(context)?;
            let present: HashSet<&StorePath> = listed.objects.iter().map(|o| &o.location).collect();
            missing.extend(
                paths
                    .into_iter()
                    .filter(|p| !present.contains(p))
                    .map(|p| p.to_string()),
            );
        }
        missing.sort();
        Ok(missing)
    }

    /// A partition value by its typed meaning, so that `7` and `07` are one integer.
    pub(super) fn typed(&self, column: &str, text: Option<&str>) -> Option<ScalarValue> {
        let data_type = self.schema.field_with_name(column).ok()?.data_type();
        ScalarValue::try_from_string(text?.to_string(), data_type).ok()
    }
}
