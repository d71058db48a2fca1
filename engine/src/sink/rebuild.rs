//! `rebuild`: replace the whole table with the output of a range's slices, in one commit.
//!
//! Each slice's output is staged as uncommitted files in the table's folder (as for
//! overwrite), checked, and then remembered in a manifest under
//! `_backfill/rebuild/<pipeline>/`: the files it wrote and the record it will carry. A
//! manifest is what lets an interrupted rebuild resume without recomputing the slices that
//! already passed. Only when every slice of the range is staged, or done and kept, does
//! [`Sink::swap`] commit: it removes every other file of the table and adds the staged
//! ones, with the new schema if it changed. Readers see the old table until that commit
//! and the new one after it.
//!
//! The swap goes through the sink's one committer, as a commit that must land on the very
//! version the rebuild read: if any other writer committed since, it is refused (Delta's
//! conflict checker would let a full overwrite through on top of a concurrent append,
//! silently dropping it) and the table stays as it was.

use std::collections::{HashMap, HashSet};

use deltalake::kernel::{Action, Add, LogicalFileView, Metadata, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;

use super::commit::{transaction_of, Commit, Unsettled};
use super::strategy::{Publishing, WriteStrategy};
use super::table::check_compatible;
use super::{written_by, Sink};
use crate::error::{Error, Result, ResultExt};
use crate::ledger::{
    CommitRecord, OtherWriters, RebuildRecord, SliceRecord, SwapManifest, SwapRecord,
};

/// What a swap committed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Swapped {
    pub version: u64,
    pub removed_files: u64,
    pub added_files: u64,
}

/// What a swap would do to the table as this sink read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replaced {
    /// The version the swap must land on top of; `None` if there is no table yet.
    pub version: Option<u64>,
    pub files: u64,
    pub bytes: u64,
    /// Whether the swap changes the table's columns or partitioning.
    pub schema_changes: bool,
    /// Who else committed among the table's latest commits: the swap is refused if they
    /// commit after the rebuild read the table, so they are worth pausing.
    pub other_writers: Option<OtherWriters>,
}

/// A rebuild stages its slices in the table's folder like overwrite, and publishes them
/// only all at once, through [`Sink::swap`].
pub(super) struct Rebuild;

impl WriteStrategy for Rebuild {
    fn publishing(&self) -> Publishing<'_> {
        Publishing::Swap
    }

    fn stages_apart(&self) -> bool {
        false
    }

    fn keeps_to_its_partitions(&self) -> bool {
        true
    }

    /// The swap replaces the schema with the table.
    fn may_change_columns(&self) -> bool {
        true
    }

    /// The swap publishes every slice in one commit, and the record of one slice names
    /// no files of its own.
    fn slices_own_their_files(&self) -> bool {
        false
    }

    fn row_keys(&self) -> Option<&[String]> {
        None
    }

    fn reads_table_files(&self) -> bool {
        false
    }
}

impl Sink {
    /// Durably remembers a staged, checked slice. Until this returns, the slice's files
    /// are an invisible leftover; after it, a later run can swap them in.
    pub(crate) async fn remember(&self, staged: &SwapManifest) -> Result<()> {
        let path = self.manifest_path(&staged.record.slice);
        let bytes = serde_json::to_vec(staged).expect("a staged slice serializes");
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .context(|| format!("slice {}: writing {path}", staged.record.slice))?;
        Ok(())
    }

    /// Every staged slice of this pipeline that a swap has not yet consumed, by key.
    pub(crate) async fn staged_slices(&self) -> Result<HashMap<String, SwapManifest>> {
        let folder = StorePath::from_iter(["_backfill", "rebuild", &self.pipeline]);
        let manifests = self.manifests_under(&folder).await?;
        Ok(manifests
            .into_iter()
            .map(|slice| (slice.record.slice.clone(), slice))
            .collect())
    }

    /// Every staged slice of every pipeline writing to the table.
    pub(crate) async fn all_staged_slices(&self) -> Result<Vec<SwapManifest>> {
        self.manifests_under(&StorePath::from_iter(["_backfill", "rebuild"]))
            .await
    }

    async fn manifests_under(&self, folder: &StorePath) -> Result<Vec<SwapManifest>> {
        let context = || format!("reading the staged slices under {}{folder}", self.url);
        let paths: Vec<StorePath> = self
            .store
            .list(Some(folder))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .context(context)?;
        let mut staged = Vec::new();
        for path in paths {
            let bytes = match self.store.get(&path).await {
                Ok(found) => found.bytes().await.context(context)?,
                // Consumed by a swap since it was listed.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(error) => return Err(Error::execution(context(), error)),
            };
            // A manifest that does not parse (written by another version, say) is only a
            // missed chance to reuse work: the slice is computed again.
            if let Ok(slice) = serde_json::from_slice::<SwapManifest>(&bytes) {
                staged.push(slice);
            }
        }
        Ok(staged)
    }

    /// Whether every file of a staged slice is still there, with its size.
    pub(crate) async fn still_staged(&self, staged: &SwapManifest) -> Result<bool> {
        for add in &staged.adds {
            let Some(path) = self.store_path(&self.url, &add.path) else {
                return Ok(false);
            };
            match self.store.head(&path).await {
                Ok(meta) if meta.size == add.size as u64 => {}
                Ok(_) | Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(error) => {
                    return Err(Error::execution(
                        format!("slice {}: checking {path}", staged.record.slice),
                        error,
                    ))
                }
            }
        }
        Ok(true)
    }

    /// Deletes the manifests of swapped slices, so their files are never added twice.
    /// Best effort: a manifest left behind matches no slice that is done.
    pub(crate) async fn forget<'a>(&self, slices: impl Iterator<Item = &'a str>) {
        let paths: Vec<_> = slices.map(|s| Ok(self.manifest_path(s))).collect();
        let deleted: Vec<_> = self
            .store
            .delete_stream(futures::stream::iter(paths).boxed())
            .collect()
            .await;
        for result in deleted {
            if let Err(error) = result {
                if !matches!(error, object_store::Error::NotFound { .. }) {
                    tracing::warn!("could not delete a staged slice's manifest: {error}");
                }
            }
        }
    }

    /// Whether the table, if there is one, has the pipeline's columns and partitioning.
    pub(crate) async fn fits_table(&self) -> bool {
        let view = self.view.lock().await;
        view.table.as_ref().is_none_or(|existing| {
            check_compatible(existing, &self.schema, &self.partition_by).is_ok()
        })
    }

    /// The active files this pipeline wrote for the `kept` slices, as their adds.
    pub(crate) async fn files_of(&self, kept: &HashSet<&str>) -> Result<Vec<Add>> {
        let view = self.view.lock().await;
        let Some(existing) = view.table.as_ref() else {
            return Ok(vec![]);
        };
        let snapshot = existing.snapshot().context(|| self.url.to_string())?;
        let files = snapshot.log_data();
        let kept_files = files.iter().filter(|file| self.is_kept(file, kept));
        // The view exposes a file's tags and stats only through its (deprecated) `Add`.
        #[allow(deprecated)]
        Ok(kept_files.map(|file| file.add_action()).collect())
    }

    /// What a swap keeping the files of `kept` slices would replace.
    pub(crate) async fn replaced(&self, kept: &HashSet<&str>) -> Result<Replaced> {
        let view = self.view.lock().await;
        let Some(existing) = view.table.as_ref() else {
            return Ok(Replaced {
                version: None,
                files: 0,
                bytes: 0,
                schema_changes: false,
                other_writers: None,
            });
        };
        let snapshot = existing.snapshot().context(|| self.url.to_string())?;
        let (mut files, mut bytes) = (0, 0);
        for file in snapshot.log_data().iter() {
            if !self.is_kept(&file, kept) {
                files += 1;
                bytes += file.size() as u64;
            }
        }
        Ok(Replaced {
            version: existing.version(),
            files,
            bytes,
            schema_changes: check_compatible(existing, &self.schema, &self.partition_by).is_err(),
            other_writers: OtherWriters::of(
                existing,
                &self.pipeline,
                crate::ledger::RECENT_COMMITS,
            )
            .await?,
        })
    }

    /// Replaces the table with the staged slices plus the files of the `kept` ones, in
    /// one commit that must land on the version this sink read: the committer refuses it
    /// if that is not the latest version any more, and settles an ambiguous failure like
    /// any commit's.
    pub(crate) async fn swap(
        &self,
        run_id: &str,
        staged: &[SwapManifest],
        kept: &[SliceRecord],
    ) -> Result<Swapped> {
        let mut view = self.view.lock().await;
        let context = || format!("rebuild of {}", self.url);
        let kept_keys: HashSet<&str> = kept.iter().map(|r| r.slice.as_str()).collect();
        let mut actions: Vec<Action> = Vec::new();
        let mut metadata = None;
        if let Some(existing) = view.table.as_ref() {
            let snapshot = existing.snapshot().context(context)?;
            for file in snapshot.log_data().iter() {
                if !self.is_kept(&file, &kept_keys) {
                    actions.push(Action::Remove(file.remove_action(true)));
                }
            }
            if check_compatible(existing, &self.schema, &self.partition_by).is_err() {
                let replaced = self.replaced_metadata(snapshot.metadata());
                metadata = Some(Action::Metadata(replaced.context(context)?));
            }
        }
        let removed_files = actions.len() as u64;
        let adds = staged.iter().flat_map(|s| s.adds.iter().cloned());
        actions.extend(adds.map(Action::Add));
        let added_files = actions.len() as u64 - removed_files;
        actions.extend(metadata);
        let rebuild = RebuildRecord {
            pipeline: self.pipeline.clone(),
            run_id: run_id.to_string(),
            replaced_version: view.version(),
            removed_files,
            added_files,
        };
        let staged_records = staged.iter().map(|s| &s.record);
        let commit = Commit {
            context: context(),
            // Only the staged slices are committed anew; the kept ones keep their `txn`.
            transactions: staged_records.clone().map(transaction_of).collect(),
            record: CommitRecord::Swap(SwapRecord {
                rebuild,
                slices: staged_records.chain(kept).cloned().collect(),
            }),
            on_version_read: true,
        };
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: Some(self.partition_by.clone()),
            predicate: None,
        };
        let committed = self
            .commit_settled(&mut view, commit, async |table, properties| {
                self.commit(table, actions, operation, properties).await
            })
            .await;
        match committed {
            Ok(version) => Ok(Swapped {
                version,
                removed_files,
                added_files,
            }),
            // The staged slices stay either way, for a rerun to swap in.
            Err(Unsettled::NotCommitted(error) | Unsettled::Unknown(error)) => Err(error),
        }
    }

    fn is_kept(&self, file: &LogicalFileView, kept: &HashSet<&str>) -> bool {
        let (pipeline, slice) = written_by(file);
        pipeline.as_deref() == Some(self.pipeline.as_str())
            && slice.is_some_and(|slice| kept.contains(slice.as_str()))
    }

    /// The table's metadata with the pipeline's columns and partitioning, keeping the
    /// table's id, name and configuration.
    fn replaced_metadata(&self, current: &Metadata) -> deltalake::DeltaResult<Metadata> {
        use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
        let schema: StructType = self.schema.as_ref().try_into_kernel()?;
        let value = serde_json::json!({
            "id": current.id(),
            "name": current.name(),
            "description": current.description(),
            "format": { "provider": "parquet", "options": {} },
            "schemaString": serde_json::to_string(&schema)?,
            "partitionColumns": self.partition_by,
            "configuration": current.configuration(),
            "createdTime": current.created_time(),
        });
        Ok(serde_json::from_value(value)?)
    }

    fn manifest_path(&self, slice: &str) -> StorePath {
        StorePath::from_iter([
            "_backfill",
            "rebuild",
            &self.pipeline,
            &format!("{slice}.json"),
        ])
    }
}
