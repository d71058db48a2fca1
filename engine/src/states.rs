//! The vocabulary of slice states, shared by every layer: what the Delta log says of a
//! slice before a run ([`SliceState`]), which states a run takes on ([`Reprocess`]), what
//! became of a slice in a run ([`SliceOutcome`]) and how a rebuild ended for the table
//! ([`RebuildOutcome`]). Plain data, and [`decide`], the pure function from what is known
//! of a slice to its state. No IO.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Fault;
use crate::ledger::{Committed, SwapManifest};

/// Which states of slices a run (re)processes; `plan` shows the same choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reprocess {
    pub missing: bool,
    pub changed: bool,
    pub failed: bool,
    /// Slices that are done, with unchanged inputs (`--force`).
    pub done: bool,
}

impl Default for Reprocess {
    /// Everything that is not done.
    fn default() -> Self {
        Reprocess {
            missing: true,
            changed: true,
            failed: true,
            done: false,
        }
    }
}

impl Reprocess {
    pub const ALL: Reprocess = Reprocess {
        missing: true,
        changed: true,
        failed: true,
        done: true,
    };
    pub const NOTHING: Reprocess = Reprocess {
        missing: false,
        changed: false,
        failed: false,
        done: false,
    };

    /// The states named as `run --reprocess` takes them (`missing`, `changed`, `failed`,
    /// or `all`, done slices too); naming none chooses the default. An unknown name is
    /// the error.
    pub fn of_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Reprocess, String> {
        let mut chosen = Reprocess::NOTHING;
        let mut any = false;
        for name in names {
            any = true;
            match name {
                "missing" => chosen.missing = true,
                "changed" => chosen.changed = true,
                "failed" => chosen.failed = true,
                "all" => return Ok(Reprocess::ALL),
                other => return Err(other.to_string()),
            }
        }
        Ok(if any { chosen } else { Reprocess::default() })
    }

    /// The chosen states, for people: `missing, changed, failed`.
    pub fn names(&self) -> Vec<&'static str> {
        let chosen = [
            (self.missing, "missing"),
            (self.changed, "changed"),
            (self.failed, "failed"),
            (self.done, "done"),
        ];
        chosen
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name)
            .collect()
    }

    pub fn wants(&self, state: &SliceState) -> bool {
        match state {
            SliceState::Missing => self.missing,
            SliceState::Failed { .. } => self.failed,
            SliceState::Changed { .. } => self.changed,
            SliceState::Done { .. } => self.done,
            // Checked output waiting for a rebuild's swap: finishing it costs no compute.
            SliceState::Staged { .. } => true,
        }
    }
}

/// What the Delta log says of a slice, compared with its inputs now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SliceState {
    /// Never committed.
    Missing,
    /// Never committed, and its last recorded attempt failed.
    Failed { run_id: String, error: String },
    /// Committed, and its source files and SQL are the ones recorded.
    Done { committed: Arc<Committed> },
    /// Committed, but its source files or SQL differ from what the commit recorded.
    Changed {
        committed: Arc<Committed>,
        what: Vec<String>,
    },
    /// Computed and checked for a rebuild that has not swapped yet; still valid for the
    /// slice's inputs, so a run reuses it instead of computing it again.
    Staged {
        rows: u64,
        bytes: u64,
        staged_at: chrono::DateTime<chrono::Utc>,
        #[serde(skip)]
        staged: Box<SwapManifest>,
    },
}

impl SliceState {
    pub fn name(&self) -> &'static str {
        match self {
            SliceState::Missing => "missing",
            SliceState::Failed { .. } => "failed",
            SliceState::Done { .. } => "done",
            SliceState::Changed { .. } => "changed",
            SliceState::Staged { .. } => "staged",
        }
    }

    pub fn committed(&self) -> Option<&Committed> {
        match self {
            SliceState::Missing | SliceState::Failed { .. } | SliceState::Staged { .. } => None,
            SliceState::Done { committed } | SliceState::Changed { committed, .. } => {
                Some(committed)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SliceOutcome {
    /// Published in table version `version`.
    Committed { version: u64, rows: u64, bytes: u64 },
    /// Committed by another run (`by_run`, in table version `version`) after this run
    /// read the log; this run did not commit it again.
    CommittedMeanwhile { by_run: String, version: u64 },
    /// Checked and staged for a rebuild's swap, which has not happened (yet); `reused`
    /// when an earlier run had staged it.
    Staged { rows: u64, bytes: u64, reused: bool },
    /// Not run: its state (`done`, or one not chosen by `Reprocess`).
    Skipped { state: String },
    /// Nothing was committed; `fault` says whose move it is.
    Failed { error: String, fault: Fault },
    /// Left unfinished when the run was stopped; nothing was committed.
    Abandoned,
    /// Not run: upstream slices it reads (`orders_clean 2024-01-05`) failed, were blocked
    /// or never started in this run.
    Blocked { by: Vec<String> },
}

impl SliceOutcome {
    /// Whether the slice is in the table: committed by this run, or by another meanwhile.
    pub fn is_in_the_table(&self) -> bool {
        match self {
            SliceOutcome::Committed { .. } | SliceOutcome::CommittedMeanwhile { .. } => true,
            SliceOutcome::Staged { .. }
            | SliceOutcome::Skipped { .. }
            | SliceOutcome::Failed { .. }
            | SliceOutcome::Abandoned
            | SliceOutcome::Blocked { .. } => false,
        }
    }

    /// The rows and bytes the slice wrote: committed, or staged for a rebuild's swap.
    pub fn written(&self) -> Option<(u64, u64)> {
        match self {
            SliceOutcome::Committed { rows, bytes, .. }
            | SliceOutcome::Staged { rows, bytes, .. } => Some((*rows, *bytes)),
            SliceOutcome::CommittedMeanwhile { .. }
            | SliceOutcome::Skipped { .. }
            | SliceOutcome::Failed { .. }
            | SliceOutcome::Abandoned
            | SliceOutcome::Blocked { .. } => None,
        }
    }

    /// Whether the slice was to run in this run and is not in the table: failed,
    /// abandoned, or blocked by upstream slices.
    pub fn is_not_committed(&self) -> bool {
        match self {
            SliceOutcome::Failed { .. }
            | SliceOutcome::Abandoned
            | SliceOutcome::Blocked { .. } => true,
            SliceOutcome::Committed { .. }
            | SliceOutcome::CommittedMeanwhile { .. }
            | SliceOutcome::Staged { .. }
            | SliceOutcome::Skipped { .. } => false,
        }
    }
}

/// How a rebuild's run ended for the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "swap", rename_all = "snake_case")]
pub enum RebuildOutcome {
    /// One commit replaced the table: the staged slices' files in, every file not of a
    /// kept (done) slice out.
    Swapped {
        version: u64,
        removed_files: u64,
        added_files: u64,
        kept_slices: usize,
    },
    /// Every slice was done and the table held nothing else: nothing to commit.
    Unchanged,
    /// Not every slice is staged or done: nothing was committed. A rerun reuses what is
    /// staged and swaps once the rest passes.
    Waiting { staged: usize, waiting: Vec<String> },
    /// The swap itself failed (another writer committed, say): the table is unchanged
    /// and what was staged is kept for a rerun.
    Refused { error: String },
}

/// Everything that decides a slice's state, gathered by the planner.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The slice's latest commit in the log, if any.
    pub committed: Option<&'a Arc<Committed>>,
    /// The run and error of the slice's last recorded attempt, if it failed.
    pub last_failure: Option<&'a (String, String)>,
    /// The fingerprints of the slice's inputs now.
    pub source_fingerprint: &'a str,
    pub sql_fingerprint: &'a str,
    /// Whether the table has the pipeline's columns and partitioning.
    pub table_fits: bool,
    /// The committed slice's files that are gone from storage.
    pub missing_files: &'a [String],
    /// A rebuild's manifest for the slice, with the staging key its inputs give now.
    pub staged: Option<(&'a SwapManifest, &'a str)>,
    pub reprocess: Reprocess,
}

/// A slice's state: `missing` or `failed` without a commit; `done` when the commit's
/// record matches the inputs now and its files are all there, `changed` (saying what)
/// otherwise; `staged` when a rebuild's manifest for exactly these inputs waits for the
/// swap and is not already the committed record.
pub fn decide(facts: &Facts) -> SliceState {
    let state = match facts.committed {
        None => match facts.last_failure {
            Some((run_id, error)) => SliceState::Failed {
                run_id: run_id.clone(),
                error: error.clone(),
            },
            None => SliceState::Missing,
        },
        Some(committed) => {
            let mut what = Vec::new();
            if committed.record.source_fingerprint != facts.source_fingerprint {
                what.push("source files".to_string());
            }
            if committed.record.sql_fingerprint != facts.sql_fingerprint {
                what.push("SQL".to_string());
            }
            if !facts.table_fits {
                what.push("table schema".to_string());
            }
            if let (true, Some(first)) = (what.is_empty(), facts.missing_files.first()) {
                what.push(format!(
                    "table files ({} missing from storage, such as {first})",
                    facts.missing_files.len()
                ));
            }
            let committed = committed.clone();
            match what.is_empty() {
                true => SliceState::Done { committed },
                false => SliceState::Changed { committed, what },
            }
        }
    };
    match facts.staged {
        // A manifest whose record is the committed one was already swapped in.
        Some((staged, staging_key))
            if (facts.reprocess.done || !matches!(state, SliceState::Done { .. }))
                && state.committed().is_none_or(|c| c.record != staged.record)
                && staged.staging_key == staging_key =>
        {
            SliceState::Staged {
                rows: staged.record.rows,
                bytes: staged.record.bytes,
                staged_at: staged.staged_at,
                staged: Box::new(staged.clone()),
            }
        }
        _ => state,
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every selected slice is done.
    Done,
    /// Some slices failed or were blocked, or a rebuild did not swap: running the same
    /// command again does what is left.
    Incomplete,
    /// Asked to stop before every slice started.
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::SliceRecord;

    fn record(source: &str, sql: &str, run: &str) -> SliceRecord {
        SliceRecord {
            source_fingerprint: source.into(),
            sql_fingerprint: sql.into(),
            ..SliceRecord::example("2024-01-01", run)
        }
    }

    fn committed(source: &str, sql: &str) -> Arc<Committed> {
        Arc::new(Committed {
            record: record(source, sql, "r1"),
            version: Some(3),
            committed_at: None,
        })
    }

    fn staged(key: &str, record: SliceRecord) -> SwapManifest {
        SwapManifest {
            staging_key: key.into(),
            record,
            adds: vec![],
            staged_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    /// The state's name, and what changed for a changed slice.
    fn described(state: &SliceState) -> String {
        match state {
            SliceState::Changed { what, .. } => format!("changed: {}", what.join(", ")),
            other => other.name().to_string(),
        }
    }

    #[test]
    fn the_state_follows_from_the_facts() {
        let done = committed("src", "sql");
        let failure = ("r0".to_string(), "boom".to_string());
        let missing = ["dt=1/a.parquet".to_string()];
        let fresh = staged("key", record("src2", "sql", "r2"));
        let swapped = staged("key", done.record.clone());
        let base = Facts {
            committed: None,
            last_failure: None,
            source_fingerprint: "src",
            sql_fingerprint: "sql",
            table_fits: true,
            missing_files: &[],
            staged: None,
            reprocess: Reprocess::default(),
        };
        let cases: Vec<(&str, Facts, &str)> = vec![
            ("never committed", base, "missing"),
            (
                "last attempt failed",
                Facts {
                    last_failure: Some(&failure),
                    ..base
                },
                "failed",
            ),
            (
                "inputs as recorded",
                Facts {
                    committed: Some(&done),
                    ..base
                },
                "done",
            ),
            (
                "a commit ends a failure",
                Facts {
                    committed: Some(&done),
                    last_failure: Some(&failure),
                    ..base
                },
                "done",
            ),
            (
                "new source files",
                Facts {
                    committed: Some(&done),
                    source_fingerprint: "src2",
                    ..base
                },
                "changed: source files",
            ),
            (
                "new SQL",
                Facts {
                    committed: Some(&done),
                    sql_fingerprint: "sql2",
                    ..base
                },
                "changed: SQL",
            ),
            (
                "both",
                Facts {
                    committed: Some(&done),
                    source_fingerprint: "x",
                    sql_fingerprint: "y",
                    ..base
                },
                "changed: source files, SQL",
            ),
            (
                "the table's columns differ",
                Facts {
                    committed: Some(&done),
                    table_fits: false,
                    ..base
                },
                "changed: table schema",
            ),
            (
                "files gone from storage",
                Facts {
                    committed: Some(&done),
                    missing_files: &missing,
                    ..base
                },
                "changed: table files (1 missing from storage, such as dt=1/a.parquet)",
            ),
            (
                "missing files only named when nothing else changed",
                Facts {
                    committed: Some(&done),
                    missing_files: &missing,
                    sql_fingerprint: "y",
                    ..base
                },
                "changed: SQL",
            ),
            (
                "staged for these inputs",
                Facts {
                    staged: Some((&fresh, "key")),
                    ..base
                },
                "staged",
            ),
            (
                "staged for other inputs",
                Facts {
                    staged: Some((&fresh, "other")),
                    ..base
                },
                "missing",
            ),
            (
                "staged over a failure",
                Facts {
                    staged: Some((&fresh, "key")),
                    last_failure: Some(&failure),
                    ..base
                },
                "staged",
            ),
            (
                "staged while done: kept done",
                Facts {
                    committed: Some(&done),
                    staged: Some((&fresh, "key")),
                    ..base
                },
                "done",
            ),
            (
                "staged while done, forced: reused",
                Facts {
                    committed: Some(&done),
                    staged: Some((&fresh, "key")),
                    reprocess: Reprocess::ALL,
                    ..base
                },
                "staged",
            ),
            (
                "a manifest already swapped in",
                Facts {
                    committed: Some(&done),
                    staged: Some((&swapped, "key")),
                    reprocess: Reprocess::ALL,
                    ..base
                },
                "done",
            ),
        ];
        for (case, facts, expected) in cases {
            assert_eq!(described(&decide(&facts)), expected, "{case}");
        }
    }
}
