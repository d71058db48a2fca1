//! Run history: what every run did, kept next to the data.
//!
//! Each run writes small JSON objects under the destination's `_backfill/runs/` (a folder
//! Delta readers ignore and vacuum never touches): `<run>/run.json` when it starts,
//! `<run>/attempts/<slice>-<attempt>.json` as each slice attempt ends, and
//! `<run>/end.json` when it ends, and `<run>/lineage/*.jsonl.gz`, its OpenLineage events
//! ([`crate::lineage`]), all immutable; and `<run>/heartbeat.json`, rewritten
//! every few seconds while it runs, so a reader can tell a live run from a killed one.
//! Anyone else may ask a run to stop by creating `<run>/stop.json` (once): the run looks
//! for it every second. Anyone who can read the table can read its history; a crash
//! loses at most the attempts in flight. This module writes nothing but these
//! objects, and never anything a Delta reader sees. Whether a slice is done is never
//! decided here: that is the Delta log's job ([`crate::ledger`]). What the history says
//! of each slice is folded into summaries so that it costs the same after a thousand runs
//! ([`summary`]).

mod lease;
mod schedule;
mod summary;

pub use lease::{Lease, LeaseHolder, Taking};
pub use schedule::ScheduleBeat;

pub use summary::SliceHistory;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ResultExt};
use crate::states::{RebuildOutcome, SliceOutcome};

const RUNS: &str = "_backfill/runs";

/// How a run id starts: the second the run started (`20240611T101500Z`), so ids sort
/// in start order.
pub const RUN_ID_SECOND: &str = "%Y%m%dT%H%M%SZ";

/// What a command may take in place of a run id: the newest run of the pipeline.
pub const LATEST: &str = "latest";

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
    /// Who started it: `user@host`, or what `BACKFILL_STARTED_BY` said (the run page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
}

/// One attempt at one slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub slice: String,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    #[serde(flatten)]
    pub status: SliceOutcome,
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
    /// It was stopped (Ctrl-C, SIGTERM or a stop request) before it started every slice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

/// A request that a run stop starting slices, as a first Ctrl-C does; written by anyone
/// (`backfill cancel`), read by the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    pub requested_at: DateTime<Utc>,
    /// Who asked: user and host, as far as the asking process knows.
    pub by: String,
}

/// A running run's sign of life, rewritten every [`HEARTBEAT_EVERY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub at: DateTime<Utc>,
    /// The host and process running it.
    pub host: String,
    pub pid: u32,
    /// The slots to compute in that were taken, of how many, when it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<SlotsInUse>,
    /// The slices started and not finished when it was written (computing, checking or
    /// waiting for their commit), by pipeline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub in_flight: BTreeMap<String, Vec<String>>,
}

/// Slots to compute in that are taken, of all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotsInUse {
    pub in_use: usize,
    pub of: usize,
}

/// How often a run rewrites its heartbeat.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A run whose heartbeat is older than this, and that has not ended, is presumed dead
/// (killed, or its machine lost).
pub const PRESUMED_DEAD_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// A run as read back: its header, its attempts in order, and its end if it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub header: RunHeader,
    pub end: Option<RunEnd>,
    pub attempts: Vec<Attempt>,
    /// Its last sign of life, if it left one.
    pub heartbeat: Option<Heartbeat>,
    /// Whether someone asked it to stop.
    pub stop: Option<StopRequest>,
}

/// A run as a list of runs shows it: its header, end, heartbeat and stop request, and how
/// many attempts it recorded (counted from their listing, never read), so that listing
/// many runs of many slices stays cheap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEntry {
    #[serde(flatten)]
    pub header: RunHeader,
    pub end: Option<RunEnd>,
    pub heartbeat: Option<Heartbeat>,
    pub stop: Option<StopRequest>,
    pub attempts: usize,
    pub liveness: Liveness,
}

/// Whether a run is still going, as its history tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// It ended (and wrote how).
    Ended,
    /// It has not ended, and its heartbeat is recent.
    Running,
    /// It has not ended, and its heartbeat is stale or missing: it was killed, or lost its
    /// machine, and will never end.
    PresumedDead,
}

impl RunRecord {
    /// Each slice's last attempt in the run, in the order the run first tried them.
    pub fn last_attempts(&self) -> Vec<&Attempt> {
        let mut last: Vec<&Attempt> = Vec::new();
        let mut at: std::collections::HashMap<&str, usize> = Default::default();
        for attempt in &self.attempts {
            match at.get(attempt.slice.as_str()) {
                Some(&i) => last[i] = attempt,
                None => {
                    at.insert(&attempt.slice, last.len());
                    last.push(attempt);
                }
            }
        }
        last
    }

    /// Whether the run is still going as of `now`.
    pub fn liveness(&self, now: DateTime<Utc>) -> Liveness {
        Liveness::of(
            self.end.is_some(),
            &self.header,
            self.heartbeat.as_ref(),
            now,
        )
    }
}

impl Liveness {
    /// Whether a run that started as `header` says, and has `ended` or not, is still going
    /// as of `now`: judged by its last heartbeat, or its start if it left none.
    fn of(
        ended: bool,
        header: &RunHeader,
        heartbeat: Option<&Heartbeat>,
        now: DateTime<Utc>,
    ) -> Liveness {
        if ended {
            return Liveness::Ended;
        }
        let since = heartbeat.map_or(header.started_at, |h| h.at);
        match (now - since).to_std() {
            Ok(age) if age > PRESUMED_DEAD_AFTER => Liveness::PresumedDead,
            _ => Liveness::Running,
        }
    }
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

    /// Records at once the slices a run skips without trying them (done, or in a state
    /// not chosen), in one object rather than one each: a rerun of a long history skips
    /// thousands. Its name says how many it holds, for [`RunEntry::attempts`].
    pub async fn skipped(&self, run_id: &str, skipped: &[Attempt]) -> Result<()> {
        let name = format!("attempts/{SKIPPED}{:06}.json", skipped.len());
        self.put(&run_path(run_id, &name), &skipped).await
    }

    /// The attempts an attempts object holds: one, or a batch of skipped slices.
    async fn attempts_in(&self, name: &Path) -> Result<Vec<Attempt>> {
        match name
            .filename()
            .is_some_and(|file| file.starts_with(SKIPPED))
        {
            true => Ok(self.get::<Vec<Attempt>>(name).await?.unwrap_or_default()),
            false => Ok(self.get::<Attempt>(name).await?.into_iter().collect()),
        }
    }

    pub async fn end(&self, run_id: &str, end: &RunEnd) -> Result<()> {
        self.put(&run_path(run_id, "end.json"), end).await
    }

    /// Rewrites the run's heartbeat.
    pub async fn beat(&self, run_id: &str, heartbeat: &Heartbeat) -> Result<()> {
        self.put(&run_path(run_id, "heartbeat.json"), heartbeat)
            .await
    }

    /// Asks the run to stop, unless someone asked already: returns whether this request
    /// is the one it will read.
    pub async fn request_stop(&self, run_id: &str, request: &StopRequest) -> Result<bool> {
        let path = run_path(run_id, "stop.json");
        let bytes = serde_json::to_vec_pretty(request).expect("a stop request serializes");
        let created = self
            .store
            .put_opts(&path, PutPayload::from(bytes), PutMode::Create.into())
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(error) => Err(error).context(|| format!("writing {path}")),
        }
    }

    /// Writes the `index`-th batch of run `run_id`'s OpenLineage events (JSON lines),
    /// gzipped: events repeat each other, and a year of hourly slices writes 17,520.
    pub async fn lineage_batch(&self, run_id: &str, index: usize, lines: &str) -> Result<()> {
        use std::io::Write;
        let path = run_path(run_id, &format!("lineage/{index:06}.jsonl.gz"));
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zipped = gzip
            .write_all(lines.as_bytes())
            .and_then(|()| gzip.finish());
        let zipped = zipped.expect("gzip into memory");
        self.store
            .put(&path, PutPayload::from(zipped))
            .await
            .context(|| format!("writing {path}"))?;
        Ok(())
    }

    /// Run `run_id`'s OpenLineage events as it wrote them, one JSON text each, in order;
    /// `None` if there is no such run.
    pub async fn lineage(&self, run_id: &str) -> Result<Option<Vec<String>>> {
        if self
            .get::<RunHeader>(&run_path(run_id, "run.json"))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let mut events = Vec::new();
        for name in self.list(&run_path(run_id, "lineage")).await? {
            let read = self.store.get(&name).await;
            let bytes = read.context(|| format!("reading {name}"))?;
            let bytes = bytes.bytes().await.context(|| format!("reading {name}"))?;
            let mut text = String::new();
            let unzipped = std::io::Read::read_to_string(
                &mut flate2::read::GzDecoder::new(bytes.as_ref()),
                &mut text,
            );
            unzipped.map_err(|e| Error::lasting(format!("reading {name}"), e))?;
            events.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
        }
        Ok(Some(events))
    }

    /// Whether run `run_id` is still going as of `now`, from its header, end and
    /// heartbeat alone (not its attempts); `None` if there is no such run.
    pub async fn liveness(&self, run_id: &str, now: DateTime<Utc>) -> Result<Option<Liveness>> {
        let Some(header) = self.get::<RunHeader>(&run_path(run_id, "run.json")).await? else {
            return Ok(None);
        };
        let end = self.get::<RunEnd>(&run_path(run_id, "end.json")).await?;
        let heartbeat: Option<Heartbeat> = self.get(&run_path(run_id, "heartbeat.json")).await?;
        Ok(Some(Liveness::of(
            end.is_some(),
            &header,
            heartbeat.as_ref(),
            now,
        )))
    }

    /// The request that the run stop, if anyone made one.
    pub async fn stop_request(&self, run_id: &str) -> Result<Option<StopRequest>> {
        self.get(&run_path(run_id, "stop.json")).await
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

    /// The run `run` names for `pipeline`: its own id, or for [`LATEST`] the newest run of
    /// the pipeline; `None` if there is none.
    pub async fn resolve(&self, run: &str, pipeline: &str) -> Result<Option<String>> {
        if run != LATEST {
            return Ok(Some(run.to_string()));
        }
        // Ids start with the second the run started: newest last, so the search ends with
        // the first second that has a run of the pipeline. Runs started within that second
        // are told apart by their headers' start times.
        let mut newest: Option<(DateTime<Utc>, String)> = None;
        for run_id in self.run_ids().await?.into_iter().rev() {
            let second = |id: &str| id.split('-').next().unwrap_or_default().to_string();
            if newest
                .as_ref()
                .is_some_and(|(_, n)| second(n) != second(&run_id))
            {
                break;
            }
            let header: Option<RunHeader> = self.get(&run_path(&run_id, "run.json")).await?;
            let Some(header) = header.filter(|h| h.pipeline == pipeline) else {
                continue;
            };
            if newest
                .as_ref()
                .is_none_or(|(at, _)| header.started_at > *at)
            {
                newest = Some((header.started_at, run_id));
            }
        }
        Ok(newest.map(|(_, run_id)| run_id))
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

    /// Every run of `pipeline`, newest first, as a list of runs shows them, as of `now`.
    pub async fn entries(&self, pipeline: &str, now: DateTime<Utc>) -> Result<Vec<RunEntry>> {
        let mut entries = Vec::new();
        for run_id in self.run_ids().await? {
            entries.extend(self.entry(&run_id, pipeline, now).await?);
        }
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.header.started_at));
        Ok(entries)
    }

    /// Run `run_id` of `pipeline` as a list of runs shows it, as of `now`; `None` if there
    /// is no such run of that pipeline (only its header is read then).
    pub async fn entry(
        &self,
        run_id: &str,
        pipeline: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<RunEntry>> {
        let path = |name| run_path(run_id, name);
        let header = self.get::<RunHeader>(&path("run.json")).await?;
        let Some(header) = header.filter(|h| h.pipeline == pipeline) else {
            return Ok(None);
        };
        let end: Option<RunEnd> = self.get(&path("end.json")).await?;
        let heartbeat: Option<Heartbeat> = self.get(&path("heartbeat.json")).await?;
        let liveness = Liveness::of(end.is_some(), &header, heartbeat.as_ref(), now);
        Ok(Some(RunEntry {
            attempts: (self.list(&path("attempts")).await?.iter())
                .map(attempts_named)
                .sum(),
            stop: self.stop_request(run_id).await?,
            header,
            end,
            heartbeat,
            liveness,
        }))
    }

    /// The attempts of run `run_id` whose objects are not in `seen`, in order; adds them to
    /// `seen`. A page that follows a run reads each attempt once.
    pub async fn new_attempts(
        &self,
        run_id: &str,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<Vec<Attempt>> {
        let mut attempts = Vec::new();
        for name in self.list(&run_path(run_id, "attempts")).await? {
            if seen.insert(name.to_string()) {
                attempts.extend(self.attempts_in(&name).await?);
            }
        }
        Ok(attempts)
    }

    /// One run, or `None` if there is no such run.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let Some(mut run) = self.run_attempts(run_id).await? else {
            return Ok(None);
        };
        run.heartbeat = self.get(&run_path(run_id, "heartbeat.json")).await?;
        run.stop = self.stop_request(run_id).await?;
        Ok(Some(run))
    }

    /// One run's header, end and attempts, its heartbeat and stop request left unread:
    /// what folding its attempts into a summary needs, on the path of every `plan`.
    pub(crate) async fn run_attempts(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let Some(header) = self.get::<RunHeader>(&run_path(run_id, "run.json")).await? else {
            return Ok(None);
        };
        let end = self.get::<RunEnd>(&run_path(run_id, "end.json")).await?;
        let names = self.list(&run_path(run_id, "attempts")).await?;
        let mut attempts = Vec::with_capacity(names.len());
        for name in names {
            attempts.extend(self.attempts_in(&name).await?);
        }
        Ok(Some(RunRecord {
            header,
            end,
            attempts,
            heartbeat: None,
            stop: None,
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

/// How the name of a batch of skipped attempts starts: `000000-000-skipped-008760.json`,
/// listed before every attempt (`000000-001.json`), as a run decides them first.
const SKIPPED: &str = "000000-000-skipped-";

/// How many attempts the object `name` holds, from its name alone.
fn attempts_named(name: &Path) -> usize {
    let file = name.filename().unwrap_or_default();
    let batch = file
        .strip_prefix(SKIPPED)
        .and_then(|n| n.strip_suffix(".json"));
    batch.map_or(1, |count| count.parse().unwrap_or(0))
}

fn run_path(run_id: &str, name: &str) -> Path {
    Path::from(format!("{RUNS}/{run_id}/{name}"))
}

/// Who starts a run or asks one to stop: `BACKFILL_STARTED_BY` if it is set (a launcher
/// such as the run page says whom it launches for), else `user@host` as the environment
/// names them.
pub fn who() -> String {
    if let Some(said) = std::env::var("BACKFILL_STARTED_BY")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return said;
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "someone".to_string());
    format!("{user}@{}", host())
}

/// This machine's name, as far as the environment says.
pub fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(end: bool, heartbeat: Option<&str>) -> RunRecord {
        let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
        RunRecord {
            header: RunHeader {
                run_id: "r".into(),
                pipeline: "p".into(),
                selection: "2024-01-01..2024-01-02".into(),
                slices: 2,
                reprocess: vec![],
                concurrency: 1,
                retries: 0,
                started_at: at("2024-06-01T00:00:00Z"),
                promoted_from: None,
                cluster: None,
                started_by: None,
            },
            end: end.then(|| RunEnd {
                ended_at: at("2024-06-01T00:10:00Z"),
                committed: 2,
                skipped: 0,
                failed: 0,
                rebuild: None,
                stopped: false,
            }),
            attempts: vec![],
            heartbeat: heartbeat.map(|t| Heartbeat {
                at: at(t),
                host: "h".into(),
                pid: 1,
                slots: None,
                in_flight: Default::default(),
            }),
            stop: None,
        }
    }

    #[tokio::test]
    async fn skipped_slices_are_one_object_read_back_first_and_counted_from_its_name() {
        let history = History::new(Arc::new(object_store::memory::InMemory::new()));
        let run = record(true, None);
        history.start(&run.header).await.unwrap();
        let at = run.header.started_at;
        let attempt = |slice: &str, status: SliceOutcome| Attempt {
            slice: slice.into(),
            attempt: 1,
            status,
            duration_ms: 0,
            finished_at: at,
        };
        let skipped = SliceOutcome::Skipped {
            state: "done".into(),
        };
        let batch = [attempt("b", skipped.clone()), attempt("c", skipped)];
        history.skipped("r", &batch).await.unwrap();
        let failed = SliceOutcome::Failed {
            error: "boom".into(),
            fault: crate::error::Fault::Data,
        };
        history
            .attempt("r", 0, &attempt("a", failed))
            .await
            .unwrap();
        history.end("r", run.end.as_ref().unwrap()).await.unwrap();

        let read = history.run_attempts("r").await.unwrap().unwrap();
        let slices: Vec<&str> = read.attempts.iter().map(|a| a.slice.as_str()).collect();
        assert_eq!(slices, ["b", "c", "a"]);
        let entry = history.entry("r", "p", at).await.unwrap().unwrap();
        assert_eq!(entry.attempts, 3);
    }

    #[tokio::test]
    async fn latest_is_the_pipelines_newest_run_even_within_one_second() {
        let folder = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(folder.path());
        let history = History::new(Arc::new(store.unwrap()));
        let start = |id: &str, pipeline: &str, at: &str| {
            let mut header = record(false, None).header;
            (header.run_id, header.pipeline) = (id.into(), pipeline.into());
            header.started_at = at.parse().unwrap();
            header
        };
        // Same second: the later start has the smaller random suffix.
        for header in [
            start("20240601T000000Z-aaaaaa", "p", "2024-06-01T00:00:00.900Z"),
            start("20240601T000000Z-ffffff", "p", "2024-06-01T00:00:00.100Z"),
            start("20240601T000001Z-bbbbbb", "other", "2024-06-01T00:00:01Z"),
            start("20240531T235959Z-cccccc", "q", "2024-05-31T23:59:59Z"),
        ] {
            history.start(&header).await.unwrap();
        }
        let latest = |pipeline| history.resolve(LATEST, pipeline);
        assert_eq!(
            latest("p").await.unwrap().unwrap(),
            "20240601T000000Z-aaaaaa"
        );
        assert_eq!(
            latest("q").await.unwrap().unwrap(),
            "20240531T235959Z-cccccc"
        );
        assert_eq!(latest("none").await.unwrap(), None);
        let named = history.resolve("20240601T000000Z-ffffff", "p").await;
        assert_eq!(named.unwrap().unwrap(), "20240601T000000Z-ffffff");
    }

    #[test]
    fn a_run_without_an_end_is_presumed_dead_once_its_heartbeat_is_stale() {
        let now = "2024-06-01T01:00:00Z".parse().unwrap();
        assert_eq!(record(true, None).liveness(now), Liveness::Ended);
        let recent = record(false, Some("2024-06-01T00:59:30Z"));
        assert_eq!(recent.liveness(now), Liveness::Running);
        let stale = record(false, Some("2024-06-01T00:58:00Z"));
        assert_eq!(stale.liveness(now), Liveness::PresumedDead);
        // No heartbeat at all: judged from its start.
        assert_eq!(record(false, None).liveness(now), Liveness::PresumedDead);
        let started = "2024-06-01T00:00:30Z".parse().unwrap();
        assert_eq!(record(false, None).liveness(started), Liveness::Running);
    }
}
