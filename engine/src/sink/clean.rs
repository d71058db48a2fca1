//! `clean`: deletes what attempts that never committed left in the table's folder.
//!
//! A process killed between staging and committing leaves invisible Parquet files behind
//! (a merge across the table's under `_backfill/staging/`). On a local disk, one killed
//! while writing a file leaves the store's temporary `<name>#<n>` (a half-written Parquet file or commit),
//! which the store hides from its listings. None of them is part of any table version,
//! so no reader sees them, but they cost storage. Deleting them is safe
//! only under three conditions, and a file is deleted only when all hold:
//!
//! - **no retained version references it**: not the current snapshot's files, not any
//!   file added by a commit whose log entry still exists (time travel), not any file a
//!   rebuild's manifest keeps for its swap;
//! - **this pipeline wrote it**: its Parquet footer carries the pipeline's name
//!   ([`PIPELINE_TAG`]), so files of other writers sharing the table, or files written
//!   before tagging existed, are never touched (a temporary has no complete footer, so it
//!   is judged by its name and age alone: no version can reference a name the store
//!   reserves for uploads in progress);
//! - **it is older than the window**: an attempt still running (in this process or
//!   another) may be about to commit a file it just wrote, so only files older than any
//!   attempt can be are candidates. The window defaults to a week, as Delta's VACUUM.
//!
//! Files that a removed (tombstoned) entry still points to are left to VACUUM, which
//! knows the table's retention settings.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Serialize;

use super::{Sink, PIPELINE_TAG};
use crate::error::{Error, Result, ResultExt, Setting};
use crate::source::decoded_path;

/// What a clean-up deletes.
#[derive(Debug, Clone, Copy)]
pub struct CleanOptions {
    /// Leftovers younger than this are kept: an attempt still running may be about to
    /// commit a file it wrote.
    pub older_than: Duration,
    /// The caller asserts that no run of the pipeline is in flight anywhere, which allows
    /// a window under [`SHORTEST_SAFE_WINDOW`].
    pub no_run_in_flight: bool,
    /// Only list what would be deleted.
    pub dry_run: bool,
}

/// The shortest window allowed while a run may be in flight: longer than any attempt's
/// time between writing a file and committing it.
pub const SHORTEST_SAFE_WINDOW: Duration = Duration::from_secs(3600);

impl CleanOptions {
    /// Refuses a window short enough to race a run still in flight.
    pub(crate) fn check(&self) -> Result<()> {
        if self.older_than < SHORTEST_SAFE_WINDOW && !self.no_run_in_flight {
            return Err(Error::setting(
                &[Setting::OlderThan],
                format!("{} could delete files that a run still in flight is about to commit, leaving the table pointing at missing files; use at least 1h, or stop every run of this pipeline and pass {{no_run_in_flight}}", humantime::format_duration(self.older_than)),
            ));
        }
        Ok(())
    }
}

/// What a clean-up deleted, or would delete on a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct Cleaned {
    /// Paths relative to the table, sorted.
    pub deleted: Vec<String>,
    pub bytes: u64,
    /// Leftovers of this pipeline that are younger than the window, kept for now.
    pub too_young: usize,
    pub dry_run: bool,
}

/// A leftover that may be deleted once it is older than the window.
struct Leftover {
    /// Its path relative to the table, as reported.
    relative: String,
    size: u64,
    modified: DateTime<Utc>,
    place: Place,
}

/// Where a leftover is deleted: through the store, or on disk for the local store's
/// upload temporaries, whose names the store refuses to address.
enum Place {
    Store(StorePath),
    Disk(PathBuf),
}

impl Sink {
    /// Deletes this pipeline's leftovers older than `older_than` (as of `now`); with
    /// `dry_run`, only lists them.
    pub(crate) async fn clean(
        &self,
        older_than: Duration,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Cleaned> {
        let context = || format!("cleaning up {}", self.url);
        let cutoff = now
            - chrono::Duration::from_std(older_than)
                .map_err(|e| Error::setting(&[Setting::OlderThan], e.to_string()))?;
        let referenced = self.referenced_files().await?;
        let objects: Vec<ObjectMeta> =
            self.store.list(None).try_collect().await.context(context)?;
        let mut cleaned = Cleaned {
            deleted: vec![],
            bytes: 0,
            too_young: 0,
            dry_run,
        };
        let mut leftovers = Vec::new();
        for object in objects {
            if self.is_leftover(&object, &referenced).await? {
                leftovers.push(Leftover {
                    relative: object.location.to_string(),
                    size: object.size,
                    modified: object.last_modified,
                    place: Place::Store(object.location),
                });
            }
        }
        leftovers.extend(self.local_temporaries().context(context)?);
        let (mut in_store, mut on_disk) = (Vec::new(), Vec::new());
        for leftover in leftovers {
            if leftover.modified > cutoff {
                cleaned.too_young += 1;
                continue;
            }
            cleaned.bytes += leftover.size;
            cleaned.deleted.push(leftover.relative);
            match leftover.place {
                Place::Store(path) => in_store.push(path),
                Place::Disk(path) => on_disk.push(path),
            }
        }
        cleaned.deleted.sort();
        if !dry_run {
            let paths = futures::stream::iter(in_store.into_iter().map(Ok));
            self.store
                .delete_stream(Box::pin(paths))
                .try_collect::<Vec<_>>()
                .await
                .context(context)?;
            for path in on_disk {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).context(context);
                    }
                    _ => {}
                }
            }
            self.remove_empty_staging_folders();
        }
        Ok(cleaned)
    }

    /// The local store's upload temporaries under the table's folder (none for object
    /// stores, whose unfinished uploads are never visible): a Parquet file's or a
    /// commit's `<name>#<n>`. The store's own listing hides them, so the disk is walked.
    fn local_temporaries(&self) -> std::io::Result<Vec<Leftover>> {
        let Ok(root) = self.url.to_file_path() else {
            return Ok(vec![]);
        };
        let mut found = Vec::new();
        let mut folders = vec![root.clone()];
        while let Some(folder) = folders.pop() {
            let entries = match std::fs::read_dir(&folder) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let meta = entry.metadata()?;
                let path = entry.path();
                if meta.is_dir() {
                    folders.push(path);
                } else if entry.file_name().to_str().is_some_and(is_upload_temporary) {
                    let relative = path.strip_prefix(&root).unwrap_or(&path);
                    found.push(Leftover {
                        relative: relative.to_string_lossy().replace('\\', "/"),
                        size: meta.len(),
                        modified: meta.modified()?.into(),
                        place: Place::Disk(path),
                    });
                }
            }
        }
        Ok(found)
    }

    /// Whether `object` is something an attempt of this pipeline left and no version
    /// references (its age aside).
    async fn is_leftover(
        &self,
        object: &ObjectMeta,
        referenced: &HashSet<StorePath>,
    ) -> Result<bool> {
        let parts: Vec<String> = object
            .location
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        let name = parts.last().map(String::as_str).unwrap_or_default();
        match parts.first().map(String::as_str) {
            Some("_delta_log") => Ok(false),
            Some("_backfill") if parts.get(1).map(String::as_str) != Some("staging") => Ok(false),
            _ if referenced.contains(&object.location) || !name.ends_with(".parquet") => Ok(false),
            _ => Ok(self.written_by_this_pipeline(object).await),
        }
    }

    /// Whether a Parquet file's footer names this pipeline as its writer. A footer that
    /// cannot be read names nobody: such a file is left alone.
    async fn written_by_this_pipeline(&self, object: &ObjectMeta) -> bool {
        let footer = DFParquetMetadata::new(self.store.as_ref(), object);
        let Ok(footer) = footer.fetch_metadata().await else {
            return false;
        };
        let metadata = footer.file_metadata().key_value_metadata();
        metadata.is_some_and(|pairs| {
            pairs.iter().any(|kv| {
                kv.key == PIPELINE_TAG && kv.value.as_deref() == Some(self.pipeline.as_str())
            })
        })
    }

    /// Every file a retained version of the table can read, and every file a rebuild's
    /// manifest keeps for its swap.
    async fn referenced_files(&self) -> Result<HashSet<StorePath>> {
        let context = || format!("reading the Delta log of {}", self.url);
        let mut referenced = HashSet::new();
        if let Some(table) = self.reload().await? {
            let snapshot = table.snapshot().context(context)?;
            referenced.extend(snapshot.log_data().iter().map(|f| f.object_store_path()));
        }
        let log = StorePath::from("_delta_log");
        let entries: Vec<ObjectMeta> = self
            .store
            .list(Some(&log))
            .try_filter(|meta| {
                std::future::ready(is_commit_entry(meta.location.filename().unwrap_or("")))
            })
            .try_collect()
            .await
            .context(context)?;
        for entry in entries {
            let bytes = match self.store.get(&entry.location).await {
                Ok(found) => found.bytes().await.context(context)?,
                // Cleaned up by log retention since it was listed.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(error) => return Err(Error::execution(context(), error)),
            };
            referenced.extend(added_paths(&bytes));
        }
        for staged in self.all_staged_slices().await? {
            referenced.extend(
                staged
                    .adds
                    .iter()
                    .filter_map(|add| self.store_path(&self.url, &add.path)),
            );
        }
        Ok(referenced)
    }

    /// A local disk keeps the folders that merges across a table staged into; object stores have none.
    fn remove_empty_staging_folders(&self) {
        let Ok(table) = self.url.to_file_path() else {
            return;
        };
        let Ok(folders) = std::fs::read_dir(table.join("_backfill/staging")) else {
            return;
        };
        for folder in folders.flatten() {
            // Fails, harmlessly, while the folder still holds files.
            let _ = std::fs::remove_dir(folder.path());
        }
    }
}

/// `00000000000000000042.json`: a commit of the Delta log.
fn is_commit_entry(name: &str) -> bool {
    name.strip_suffix(".json")
        .is_some_and(|version| version.len() == 20 && version.bytes().all(|b| b.is_ascii_digit()))
}

/// `00000000000000000042.json#1` or `part-….parquet#1`: the local store's temporary for
/// a commit or a data file being written.
fn is_upload_temporary(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(file, n)| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && (is_commit_entry(file) || file.ends_with(".parquet"))
    })
}

/// The paths of the files a commit entry adds, as the store names them.
fn added_paths(entry: &[u8]) -> Vec<StorePath> {
    entry
        .split(|byte| *byte == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter_map(|action| action.get("add")?.get("path")?.as_str().map(str::to_string))
        .map(|raw| {
            // As delta-rs reads them: percent-decoded, then as a store path.
            let decoded = decoded_path(&raw);
            StorePath::parse(&decoded).unwrap_or_else(|_| StorePath::from(decoded.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_under_an_hour_is_refused_unless_no_run_is_in_flight() {
        let options = |minutes: u64, no_run_in_flight| CleanOptions {
            older_than: Duration::from_secs(minutes * 60),
            no_run_in_flight,
            dry_run: false,
        };
        let refused = options(10, false).check().unwrap_err();
        assert_eq!(refused.fault(), crate::error::Fault::User);
        assert!(
            refused.to_string().contains("pass no_run_in_flight"),
            "{refused}"
        );
        assert!(options(10, true).check().is_ok());
        assert!(options(60, false).check().is_ok());
    }

    #[test]
    fn only_commit_entries_and_upload_temporaries_are_recognised() {
        assert!(is_commit_entry("00000000000000000042.json"));
        assert!(!is_commit_entry("00000000000000000042.checkpoint.parquet"));
        assert!(!is_commit_entry("_last_checkpoint"));
        assert!(is_upload_temporary("00000000000000000042.json#1"));
        assert!(is_upload_temporary("part-00000-1f.snappy.parquet#12"));
        assert!(!is_upload_temporary("00000000000000000042.json"));
        assert!(!is_upload_temporary("part-00000-1f.snappy.parquet#"));
        assert!(!is_upload_temporary("part-00000-1f.snappy.parquet#v2"));
        assert!(!is_upload_temporary("notes.json#1"));
    }

    #[test]
    fn added_paths_are_decoded_as_delta_rs_reads_them() {
        let entry = br#"{"commitInfo":{}}
{"add":{"path":"tenant=o%27brien/part-1.parquet","size":1}}
{"remove":{"path":"dt=2024-01-01/part-0.parquet"}}"#;
        let paths = added_paths(entry);
        assert_eq!(
            paths,
            vec![StorePath::from("tenant=o'brien/part-1.parquet")]
        );
    }
}
