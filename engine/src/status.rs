//! The status of a pipeline's slices: what is done, what remains, what is slow.
//!
//! Combines the Delta log (which slices are done, their rows and durations) with the run
//! history (retries, the last error of slices that are not done). Reads only; decides
//! nothing.

use serde::Serialize;

use crate::backfill::{Backfill, Recorded};
use crate::error::Result;
use crate::grid::Grid;
use crate::history::ScheduleBeat;
use crate::slice::Selection;

/// A committed slice is flagged as skewed when it took longer than this many times the
/// median duration of the committed slices.
pub const SKEW_FACTOR: f64 = 3.0;

/// One slice's line in the status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceLine {
    pub slice: String,
    /// `done`, `failed` (not done, and its last attempt failed) or `missing`.
    pub state: &'static str,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    /// How long the committed attempt took to compute and check the slice's output, as
    /// its commit records it (not its wait for the commit).
    pub duration_ms: Option<u64>,
    /// Slower than [`SKEW_FACTOR`] times the median: a hot or skewed slice.
    pub skewed: bool,
    /// Attempts beyond the first, over every recorded run.
    pub retries: u32,
    pub last_error: Option<String>,
    pub version: Option<u64>,
    pub run_id: Option<String>,
}

/// The status of a selection (or of every committed slice).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub slices: Vec<SliceLine>,
    pub done: usize,
    /// Slices not done: failed ones, and missing ones.
    pub remaining: usize,
    pub failed: usize,
    pub median_duration_ms: Option<u64>,
    /// For slices over several dimensions, their states by dimension and their holes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<Grid>,
    /// The `backfill schedule` that keeps the pipeline current, if one ever did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleBeat>,
}

impl Backfill {
    /// The status of the selected slices. With no selection, of every slice from the
    /// first to the last one committed or attempted (for list slices, the pipeline's keys
    /// and every key seen), so that failed and missing slices among them show.
    pub async fn status(&self, selection: Option<&Selection>) -> Result<Status> {
        let recorded = self.recorded(crate::ledger::Summaries::ReadOnly).await?;
        let keys: Vec<String> = match selection {
            Some(selection) => self.slices(selection)?.into_iter().map(|s| s.key).collect(),
            None => self.seen(&recorded),
        };
        let mut slices: Vec<SliceLine> = keys.iter().map(|key| line(key, &recorded)).collect();
        let durations: Vec<Option<u64>> = slices.iter().map(|s| s.duration_ms).collect();
        let (median, skewed) = skew(&durations);
        for (slice, skewed) in slices.iter_mut().zip(skewed) {
            slice.skewed = skewed;
        }
        let count = |state| slices.iter().filter(|s| s.state == state).count();
        let (done, failed) = (count("done"), count("failed"));
        let states = slices.iter().map(|s| (s.slice.as_str(), s.state));
        let grid = Grid::of(&self.pipeline().slices, states);
        let schedule = self.history().schedule(&self.pipeline.name).await?;
        Ok(Status {
            schedule,
            remaining: slices.len() - done,
            failed,
            done,
            slices,
            median_duration_ms: median,
            grid,
        })
    }

    /// Every slice from the first to the last one committed or attempted, gaps included;
    /// past the most slices a selection may cut, only those.
    fn seen(&self, recorded: &Recorded) -> Vec<String> {
        let committed = recorded.ledger.committed().into_iter();
        let committed = committed.map(|c| c.record.slice.clone());
        let mut seen: Vec<String> = committed
            .chain(recorded.last_failures.keys().cloned())
            .collect();
        seen.sort();
        seen.dedup();
        let spanning = self.pipeline.slices.spanning(&seen);
        match spanning.map(|selection| self.slices(&selection)) {
            Some(Ok(slices)) => slices.into_iter().map(|s| s.key).collect(),
            Some(Err(_)) | None => seen,
        }
    }
}

fn line(key: &str, recorded: &Recorded) -> SliceLine {
    let committed = recorded.ledger.get(key);
    let failure = recorded
        .last_failures
        .get(key)
        .filter(|_| committed.is_none());
    SliceLine {
        slice: key.to_string(),
        state: match (committed, failure) {
            (Some(_), _) => "done",
            (None, Some(_)) => "failed",
            (None, None) => "missing",
        },
        rows: committed.map(|c| c.record.rows),
        bytes: committed.map(|c| c.record.bytes),
        duration_ms: committed.map(|c| c.record.duration_ms),
        skewed: false,
        retries: recorded.retries.get(key).copied().unwrap_or(0),
        last_error: failure.map(|(_, error)| error.clone()),
        version: committed.and_then(|c| c.version),
        run_id: committed.map(|c| c.record.committed_by().to_string()),
    }
}

/// The median of the known durations, and for each slice whether it took longer than
/// [`SKEW_FACTOR`] times that median.
pub fn skew(durations: &[Option<u64>]) -> (Option<u64>, Vec<bool>) {
    let mut known: Vec<u64> = durations.iter().flatten().copied().collect();
    if known.is_empty() {
        return (None, vec![false; durations.len()]);
    }
    known.sort_unstable();
    let median = known[known.len() / 2];
    let limit = median as f64 * SKEW_FACTOR;
    let flags = durations
        .iter()
        .map(|d| d.is_some_and(|d| d as f64 > limit))
        .collect();
    (Some(median), flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_slower_than_three_medians_are_skewed() {
        let (median, flags) = skew(&[Some(100), Some(110), None, Some(90), Some(301), Some(300)]);
        assert_eq!(median, Some(110));
        assert_eq!(flags, [false, false, false, false, false, false]);
        let (median, flags) = skew(&[Some(100), Some(100), Some(100), Some(400), None]);
        assert_eq!(median, Some(100));
        assert_eq!(flags, [false, false, false, true, false]);
        assert_eq!(skew(&[None, None]), (None, vec![false, false]));
    }
}
