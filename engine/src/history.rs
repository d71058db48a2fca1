//! Run history: what every run did, kept next to the data.
//!
//! Each run writes small immutable JSON objects under the destination's `_backfill/runs/`
//! (a folder Delta readers ignore and vacuum never touches): `<run>/run.json` when it
//! starts, `<run>/attempts/<slice>-<attempt>.json` as each slice attempt ends, and
//! `<run>/end.json` when it ends. Anyone who can read the table can read its history; a
//! crash loses at most the attempts in flight. This module writes nothing but these
//! objects, and never anything a Delta reader sees. Whether a slice is done is never
//! decided here: that is the Delta log's job ([`crate::ledger`]). What the history says
//! of each slice is folded into summaries so that it costs the same after a thousand runs
//! ([`summary`]).

mod summary;

pub use summary::SliceHistory;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ResultExt};
use crate::states::{RebuildOutcome, SliceStatus};

const RUNS: &str = "_backfill/runs";

/// What a run was asked to do, written when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    pub run_id: String,
    pub pipeline: String,
    /// The selection as given: `2024-01-01..2024-01-31` or the keys.
    pub selection: String,
    pub slices: usize,
    /// The states of slices the run chose to run.
    pub reprocess: Vec<String>,
    pub concurrency: usize,
    pub retries: u32,
    pub started_at: DateTime<Utc>,
    /// For a promotion, the environment its slices were promoted from: it ran no SQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<String>,
    /// The cluster the run's slices computed on (`df://HOST:PORT`), if not this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// One attempt at one slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub slice: String,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    #[serde(flatten)]
    pub status: SliceStatus,
    pub duration_ms: u64,
    pub finished_at: DateTime<Utc>,
}

/// How a run ended, written when it ends; absent if it crashed or is still running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEnd {
    pub ended_at: DateTime<Utc>,
    pub committed: usize,
    pub skipped: usize,
    pub failed: usize,
    /// For a rebuild, what became of the swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildOutcome>,
}

/// A run as read back: its header, its attempts in order, and its end if it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub header: RunHeader,
    pub end: Option<RunEnd>,
    pub attempts: Vec<Attempt>,
}

/// The history of the runs against one destination.
#[derive(Clone)]
pub struct History {
    store: Arc<dyn ObjectStore>,
}

impl History {
    /// The history kept in `store`, the destination table's root.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        History { store }
    }

    pub async fn start(&self, header: &RunHeader) -> Result<()> {
        self.put(&run_path(&header.run_id, "run.json"), header)
            .await
    }

    /// Records an attempt; `index` is the slice's position in the run, which keeps names
    /// unique whatever characters a slice key holds.
    pub async fn attempt(&self, run_id: &str, index: usize, attempt: &Attempt) -> Result<()> {
        let name = format!("attempts/{index:06}-{:03}.json", attempt.attempt);
        self.put(&run_path(run_id, &name), attempt).await
    }

    pub async fn end(&self, run_id: &str, end: &RunEnd) -> Result<()> {
        self.put(&run_path(run_id, "end.json"), end).await
    }

    /// The ids of every run against this destination, in id (start) order.
    async fn run_ids(&self) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&Path::from(RUNS)))
            .await
            .context(|| "listing run history".into())?;
        let folders = listed.common_prefixes.iter();
        let mut ids: Vec<String> = folders
            .filter_map(|folder| folder.filename().map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every run of `pipeline`, oldest first.
    pub async fn runs(&self, pipeline: &str) -> Result<Vec<RunRecord>> {
        let mut runs = Vec::new();
        for run_id in self.run_ids().await? {
            if let Some(run) = self.run(&run_id).await? {
                if run.header.pipeline == pipeline {
                    runs.push(run);
                }
            }
        }
        runs.sort_by_key(|run| run.header.started_at);
        Ok(runs)
    }

    /// One run, or `None` if there is no such run.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let Some(header) = self.get::<RunHeader>(&run_path(run_id, "run.json")).await? else {
            return Ok(None);
        };
        let end = self.get::<RunEnd>(&run_path(run_id, "end.json")).await?;
        let names = self.list(&run_path(run_id, "attempts")).await?;
        let mut attempts = Vec::with_capacity(names.len());
        for name in names {
            attempts.extend(self.get::<Attempt>(&name).await?);
        }
        Ok(Some(RunRecord {
            header,
            end,
            attempts,
        }))
    }

    /// The objects under `prefix`, sorted.
    async fn list(&self, prefix: &Path) -> Result<Vec<Path>> {
        let mut names: Vec<Path> = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .context(|| format!("listing {prefix}"))?;
        names.sort();
        Ok(names)
    }

    async fn put<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).expect("history records serialize");
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .context(|| format!("writing {path}"))?;
        Ok(())
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>> {
        let bytes = match self.store.get(path).await {
            Ok(found) => found.bytes().await.context(|| format!("reading {path}"))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error).context(|| format!("reading {path}")),
        };
        // An object that is not the JSON this version writes stays so however often it
        // is read.
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::lasting(format!("reading {path}"), e))
    }
}

fn run_path(run_id: &str, name: &str) -> Path {
    Path::from(format!("{RUNS}/{run_id}/{name}"))
}
