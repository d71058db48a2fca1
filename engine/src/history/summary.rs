//! What the history says about each slice (its last failure, its retries), answered
//! without reading every attempt ever made.
//!
//! The answer is a fold over attempts that does not depend on their order: per slice,
//! the latest decisive attempt by `finished_at` (a failure, or a commit or stage, which
//! ends one) and a count of retries. Folds of ended runs are saved as summaries under
//! `_backfill/summaries/<pipeline>/`, each naming the runs it covers, so a reader fetches
//! the newest summary, lists the run folders, and reads only the runs it does not cover:
//! those ended since, those still in flight, and those that crashed. Whoever reads an
//! ended run that the summary lacks may save a new summary, so the next reader does not:
//! runs do, while read-only commands leave the destination as they found it. Summaries
//! are a cache: losing one, or two writers racing, only means more reading.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::{Attempt, History, RunRecord};
use crate::error::Result;
use crate::ledger::Summaries;
use crate::states::SliceOutcome;

const SUMMARIES: &str = "_backfill/summaries";

/// What the history says about each slice of one pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceHistory {
    /// The runs folded in: ended runs of the pipeline, and ended runs of other pipelines
    /// that share the destination (folded as nothing).
    covered: BTreeSet<String>,
    slices: BTreeMap<String, SliceFacts>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct SliceFacts {
    /// The latest attempt that ended the slice one way or the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<Decisive>,
    retries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Decisive {
    finished_at: DateTime<Utc>,
    run_id: String,
    /// The error if the attempt failed; `None` if it committed or staged the slice.
    error: Option<String>,
}

impl SliceHistory {
    /// The run and error of the slice's last attempt, if that attempt failed (a skipped
    /// or abandoned attempt says nothing new).
    pub fn last_failure(&self, slice: &str) -> Option<(&str, &str)> {
        let last = self.slices.get(slice)?.last.as_ref()?;
        Some((&last.run_id, last.error.as_deref()?))
    }

    /// Every slice whose last decisive attempt failed, with its run and error.
    pub fn last_failures(&self) -> HashMap<String, (String, String)> {
        let failures = self.slices.keys().filter_map(|slice| {
            let (run, error) = self.last_failure(slice)?;
            Some((slice.clone(), (run.to_string(), error.to_string())))
        });
        failures.collect()
    }

    /// Attempts after the first, over all runs, per slice.
    pub fn retries(&self) -> HashMap<String, u32> {
        let counted = self.slices.iter().filter(|(_, facts)| facts.retries > 0);
        counted
            .map(|(slice, facts)| (slice.clone(), facts.retries))
            .collect()
    }

    /// Folds in one attempt of run `run_id`.
    pub(crate) fn fold_attempt(&mut self, run_id: &str, attempt: &Attempt) {
        if attempt.attempt > 1 {
            let facts = self.slices.entry(attempt.slice.clone()).or_default();
            facts.retries += 1;
        }
        let error = match &attempt.status {
            SliceOutcome::Failed { error, .. } => Some(error.clone()),
            SliceOutcome::Committed { .. }
            | SliceOutcome::CommittedMeanwhile { .. }
            | SliceOutcome::Staged { .. } => None,
            // Adds no facts: a rerun skipping thousands of done slices leaves the
            // summary as it was.
            SliceOutcome::Skipped { .. }
            | SliceOutcome::Abandoned
            | SliceOutcome::Blocked { .. } => return,
        };
        let facts = self.slices.entry(attempt.slice.clone()).or_default();
        if facts
            .last
            .as_ref()
            .is_some_and(|last| last.finished_at > attempt.finished_at)
        {
            return;
        }
        facts.last = Some(Decisive {
            finished_at: attempt.finished_at,
            run_id: run_id.to_string(),
            error,
        });
    }

    /// Folds in `other`, the facts of runs this one does not cover.
    fn merge(&mut self, other: &SliceHistory) {
        for (slice, theirs) in &other.slices {
            let facts = self.slices.entry(slice.clone()).or_default();
            facts.retries += theirs.retries;
            let later = |last: &Decisive| {
                (facts.last.as_ref()).is_none_or(|ours| ours.finished_at <= last.finished_at)
            };
            if let Some(last) = theirs.last.as_ref().filter(|last| later(last)) {
                facts.last = Some(last.clone());
            }
        }
        self.covered.extend(other.covered.iter().cloned());
    }

    fn fold_run(&mut self, pipeline: &str, run: &RunRecord) {
        if run.header.pipeline == pipeline {
            for attempt in &run.attempts {
                self.fold_attempt(&run.header.run_id, attempt);
            }
        }
    }
}

impl History {
    /// What the history says about each slice of `pipeline`: the newest summary, plus
    /// the runs it does not cover. With [`Summaries::Save`], saves a new summary if ended
    /// runs were read.
    pub async fn slices(&self, pipeline: &str, summaries: Summaries) -> Result<SliceHistory> {
        let folder = summary_folder(pipeline);
        let (mut saved, newest) = self.newest_summary(&folder).await?;
        let covered_before = saved.covered.len();
        let mut unfinished = Vec::new();
        for run_id in self.run_ids().await? {
            if saved.covered.contains(&run_id) {
                continue;
            }
            let Some(run) = self.run_attempts(&run_id).await? else {
                continue;
            };
            match run.end {
                Some(_) => {
                    saved.fold_run(pipeline, &run);
                    saved.covered.insert(run_id);
                }
                None => unfinished.push(run),
            }
        }
        if summaries == Summaries::Save && saved.covered.len() > covered_before {
            // Best effort: failing to save only means the next reader reads more.
            let path = folder.join(format!("{:012}.json", saved.covered.len()));
            match self.put(&path, &saved).await {
                Ok(()) => {
                    if let Some(older) = newest {
                        let _ = self.store.delete(&older).await;
                    }
                }
                Err(error) => tracing::warn!("could not save the history summary: {error}"),
            }
        }
        // Runs in flight (or crashed) count now, but are saved only once they have ended.
        let mut answer = saved;
        for run in &unfinished {
            answer.fold_run(pipeline, run);
        }
        Ok(answer)
    }

    /// Saves a summary covering run `run_id` of `pipeline`, which has just ended, with
    /// `folded`, the facts of its own attempts: the next reader does not read them.
    pub(crate) async fn remember_ended(
        &self,
        pipeline: &str,
        run_id: &str,
        mut folded: SliceHistory,
    ) -> Result<()> {
        let folder = summary_folder(pipeline);
        let (mut saved, newest) = self.newest_summary(&folder).await?;
        if saved.covered.contains(run_id) {
            return Ok(());
        }
        folded.covered.insert(run_id.to_string());
        saved.merge(&folded);
        let path = folder.join(format!("{:012}.json", saved.covered.len()));
        self.put(&path, &saved).await?;
        if let Some(older) = newest.filter(|older| *older != path) {
            let _ = self.store.delete(&older).await;
        }
        Ok(())
    }

    /// The summary covering the most runs (by its name), and its path; an empty one if
    /// there is none (or it was replaced while being read).
    async fn newest_summary(&self, folder: &Path) -> Result<(SliceHistory, Option<Path>)> {
        let listed = self.list(folder).await?;
        let newest = listed
            .into_iter()
            .filter_map(|path| {
                let covers: usize = path.filename()?.strip_suffix(".json")?.parse().ok()?;
                Some((covers, path))
            })
            .max();
        let Some((_, path)) = newest else {
            return Ok((SliceHistory::default(), None));
        };
        let summary = self.get::<SliceHistory>(&path).await?.unwrap_or_default();
        Ok((summary, Some(path)))
    }
}

fn summary_folder(pipeline: &str) -> Path {
    Path::from(SUMMARIES).join(pipeline)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use object_store::memory::InMemory;
    use object_store::ObjectStore;

    use super::*;
    use crate::history::{RunEnd, RunHeader};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, minute, 0).unwrap()
    }

    fn attempt(slice: &str, attempt: u32, failed: bool, minute: u32) -> Attempt {
        let status = match failed {
            true => SliceOutcome::Failed {
                error: format!("boom at {minute}"),
                fault: crate::error::Fault::Environment,
            },
            false => SliceOutcome::Committed {
                version: 1,
                rows: 1,
                bytes: 1,
            },
        };
        Attempt {
            slice: slice.into(),
            attempt,
            status,
            duration_ms: 1,
            finished_at: at(minute),
        }
    }

    async fn record(history: &History, run_id: &str, attempts: &[Attempt], ended: bool) {
        let header = RunHeader {
            run_id: run_id.into(),
            pipeline: "p".into(),
            selection: "keys".into(),
            slices: attempts.len(),
            reprocess: vec![],
            concurrency: 1,
            retries: 2,
            started_at: at(0),
            promoted_from: None,
            cluster: None,
            started_by: None,
        };
        history.start(&header).await.unwrap();
        for (index, attempt) in attempts.iter().enumerate() {
            history.attempt(run_id, index, attempt).await.unwrap();
        }
        if ended {
            let end = RunEnd {
                ended_at: at(59),
                committed: 0,
                skipped: 0,
                failed: 0,
                rebuild: None,
                stopped: false,
            };
            history.end(run_id, &end).await.unwrap();
        }
    }

    /// Deletes every attempt object of `run_id`: a reader that still needed them would
    /// now answer differently.
    async fn forget_attempts(store: &Arc<InMemory>, run_id: &str) {
        let prefix = Path::from(format!("_backfill/runs/{run_id}/attempts"));
        for path in store.list_paths(&prefix).await {
            store.delete(&path).await.unwrap();
        }
    }

    #[tokio::test]
    async fn ended_runs_are_read_once_and_then_answered_from_the_summary() {
        let store = Arc::new(InMemory::new());
        let history = History::new(store.clone());
        record(
            &history,
            "r1",
            &[attempt("a", 1, true, 1), attempt("b", 1, true, 2)],
            true,
        )
        .await;
        record(
            &history,
            "r2",
            &[attempt("a", 1, false, 10), attempt("b", 2, true, 11)],
            true,
        )
        .await;
        let first = history.slices("p", Summaries::Save).await.unwrap();
        assert_eq!(first.last_failure("a"), None, "a commit ends a failure");
        assert_eq!(first.last_failure("b"), Some(("r2", "boom at 11")));
        assert_eq!(first.retries(), HashMap::from([("b".to_string(), 1)]));

        forget_attempts(&store, "r1").await;
        forget_attempts(&store, "r2").await;
        assert_eq!(
            history.slices("p", Summaries::Save).await.unwrap(),
            first,
            "answered from the summary"
        );

        // A run in flight is read every time and saved only once it has ended.
        record(&history, "r3", &[attempt("a", 1, true, 20)], false).await;
        let answer = history.slices("p", Summaries::Save).await.unwrap();
        assert_eq!(answer.last_failure("a"), Some(("r3", "boom at 20")));
        let saved = store.list_paths(&summary_folder("p")).await;
        assert_eq!(saved, vec![summary_folder("p").join("000000000002.json")]);
    }

    #[tokio::test]
    async fn a_run_that_saves_its_own_facts_as_it_ends_is_never_read_again() {
        let store = Arc::new(InMemory::new());
        let history = History::new(store.clone());
        record(&history, "r1", &[attempt("a", 1, true, 1)], true).await;
        history.slices("p", Summaries::Save).await.unwrap();
        let attempts = [attempt("a", 2, false, 10), attempt("b", 1, true, 11)];
        record(&history, "r2", &attempts, true).await;
        let mut folded = SliceHistory::default();
        attempts.iter().for_each(|a| folded.fold_attempt("r2", a));
        history.remember_ended("p", "r2", folded).await.unwrap();

        forget_attempts(&store, "r1").await;
        forget_attempts(&store, "r2").await;
        let answer = history.slices("p", Summaries::ReadOnly).await.unwrap();
        assert_eq!(
            answer.last_failure("a"),
            None,
            "r2 committed a after r1 failed it"
        );
        assert_eq!(answer.last_failure("b"), Some(("r2", "boom at 11")));
        assert_eq!(answer.retries(), HashMap::from([("a".to_string(), 1)]));
        let saved = store.list_paths(&summary_folder("p")).await;
        assert_eq!(saved, vec![summary_folder("p").join("000000000002.json")]);
    }

    #[tokio::test]
    async fn read_only_readers_save_nothing() {
        let store = Arc::new(InMemory::new());
        let history = History::new(store.clone());
        record(&history, "r1", &[attempt("a", 1, true, 1)], true).await;
        let answer = history.slices("p", Summaries::ReadOnly).await.unwrap();
        assert_eq!(answer.last_failure("a"), Some(("r1", "boom at 1")));
        assert_eq!(store.list_paths(&summary_folder("p")).await, vec![]);
    }

    #[tokio::test]
    async fn the_latest_attempt_wins_whatever_order_the_runs_are_read_in() {
        let store = Arc::new(InMemory::new());
        let history = History::new(store.clone());
        // r1 started first but failed slice a after r2 had committed it.
        record(&history, "r1", &[attempt("a", 1, true, 30)], true).await;
        record(&history, "r2", &[attempt("a", 1, false, 5)], true).await;
        let answer = history.slices("p", Summaries::Save).await.unwrap();
        assert_eq!(answer.last_failure("a"), Some(("r1", "boom at 30")));
        let other = history.slices("q", Summaries::Save).await.unwrap();
        assert_eq!(
            other.last_failures(),
            HashMap::new(),
            "another pipeline's runs"
        );
    }

    trait ListPaths {
        async fn list_paths(&self, prefix: &Path) -> Vec<Path>;
    }

    impl ListPaths for InMemory {
        async fn list_paths(&self, prefix: &Path) -> Vec<Path> {
            use futures::TryStreamExt;
            let listed = self.list(Some(prefix)).map_ok(|meta| meta.location);
            let mut paths: Vec<Path> = listed.try_collect().await.unwrap();
            paths.sort();
            paths
        }
    }
}
