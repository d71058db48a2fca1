//! How everything is printed: JSON for machines, aligned tables and one way of writing
//! sizes, durations and times for people. Commands decide what to print; this decides how.

pub mod grid;
pub mod plan;
pub mod status;

use std::collections::HashMap;

use backfill_engine::history::Attempt;
use backfill_engine::slice::{describe_spans, spans};
use backfill_engine::{Fault, RebuildOutcome, SliceOutcome};
use chrono::{DateTime, Utc};
use comfy_table::{CellAlignment, ContentArrangement, Table};
use serde::Serialize;

pub use backfill_engine::estimate::human_bytes;

/// Prints `value` as indented JSON.
pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A borderless table with `header`, whose columns listed in `numbers` are aligned right.
/// Print it with [`print_table`].
pub fn table<const N: usize>(header: [&str; N], numbers: &[usize]) -> Table {
    let mut table = table_of(header.to_vec());
    for (index, column) in table.column_iter_mut().enumerate() {
        if numbers.contains(&index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// A borderless table with `header`, its columns aligned left.
pub fn table_of(header: Vec<&str>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

pub fn print_table(table: &Table) {
    println!("{}", table.trim_fmt());
}

/// `850ms` or `1.25s`.
pub fn human_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.2}s", ms as f64 / 1000.0)
    }
}

/// `1 file`, `2 files`.
pub fn count(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

/// `2024-01-31 07:00:00Z`.
pub fn timestamp(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A run's takeover of `pipeline`'s expired lease from `from`, as `run` and `schedule`
/// tell it.
pub fn lease_taken_over(pipeline: &str, from: &backfill_engine::history::LeaseHolder) -> String {
    format!(
        "took over the lease of {pipeline} from {}: it expired (last renewed {}) without being given up",
        from.describe(),
        timestamp(&from.renewed_at)
    )
}

/// An optional value as a cell: blank when absent.
pub fn or_blank<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// How a slice's status reads for people, wherever it is shown (the run's lines, `show`,
/// the report): its kind, as a word and a CSS class, and what it adds.
pub struct StatusWords {
    /// The report's style for it.
    pub class: &'static str,
    /// `committed`, `FAILED`: a failure shouts.
    pub label: &'static str,
    pub detail: String,
}

pub fn status_words(status: &SliceOutcome) -> StatusWords {
    status_words_after(status, None)
}

/// A slice's status as [`status_words`] words it, once its run's `rebuild` ended: a
/// staged slice was then swapped into the table, or still awaits the swap.
pub fn status_words_after(status: &SliceOutcome, rebuild: Option<&RebuildOutcome>) -> StatusWords {
    let (class, label, detail) = match status {
        SliceOutcome::Committed {
            version,
            rows,
            bytes,
        } => (
            "committed",
            "committed",
            format!("{rows} rows, {}, version {version}", human_bytes(*bytes)),
        ),
        SliceOutcome::CommittedMeanwhile { by_run, version } => (
            "meanwhile",
            "committed",
            format!("meanwhile by run {by_run}, version {version}"),
        ),
        SliceOutcome::Staged {
            rows,
            bytes,
            reused,
        } => (
            "staged",
            "staged",
            format!(
                "{rows} rows, {}, {}",
                human_bytes(*bytes),
                match (reused, rebuild) {
                    (true, Some(RebuildOutcome::Swapped { version, .. })) =>
                        format!("reused from an earlier run, swapped in version {version}"),
                    (false, Some(RebuildOutcome::Swapped { version, .. })) =>
                        format!("swapped in version {version}"),
                    (true, _) => "reused from an earlier run".to_string(),
                    (false, _) => "awaiting the swap".to_string(),
                }
            ),
        ),
        SliceOutcome::Skipped { state } => ("skipped", "skipped", format!("({state})")),
        SliceOutcome::Failed { error, .. } => ("failed", "FAILED", error.clone()),
        SliceOutcome::Abandoned => (
            "abandoned",
            "abandoned",
            "stopped; nothing committed".to_string(),
        ),
        SliceOutcome::Blocked { by } => ("blocked", "BLOCKED", format!("by {}", by.join(", "))),
    };
    StatusWords {
        class,
        label,
        detail,
    }
}

impl std::fmt::Display for StatusWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.label, self.detail)
    }
}

/// How a rebuild's run ended for the table, for people.
pub fn describe_rebuild(rebuild: &RebuildOutcome) -> String {
    match rebuild {
        RebuildOutcome::Swapped {
            version,
            removed_files,
            added_files,
            kept_slices,
        } => format!(
            "swapped in version {version}: {added_files} files added, {removed_files} removed, {kept_slices} done slices kept"
        ),
        RebuildOutcome::Unchanged => "nothing to swap: the table already is this rebuild".into(),
        RebuildOutcome::Waiting { staged, waiting } => {
            // Not spans: the slices waited for need not be consecutive.
            let waiting = match waiting.len() {
                0..=10 => waiting.join(", "),
                n => format!("{} and {} more", waiting[..10].join(", "), n - 10),
            };
            format!(
                "not swapped, the table is unchanged: {staged} slices staged, waiting for {waiting}. The staged slices are kept for the next run: it swaps once the slices waited for pass, or over a range without them"
            )
        }
        RebuildOutcome::Refused { error } => format!("not swapped: {error}"),
    }
}

/// [`not_committed`] for a run's history: each slice's `last` attempt, in run order.
pub fn not_committed_of(last: &[&Attempt]) -> Vec<String> {
    let outcome: HashMap<&str, &SliceOutcome> = (last.iter())
        .map(|attempt| (attempt.slice.as_str(), &attempt.status))
        .collect();
    let keys = last.iter().map(|attempt| attempt.slice.as_str());
    not_committed(keys, |key| outcome[key])
}

/// The slices among `keys` (in run order) that failed, in spans of consecutive slices and
/// grouped by what to do next, then those blocked by failed upstream slices: a line each.
pub fn not_committed<'a>(
    keys: impl Iterator<Item = &'a str> + Clone,
    outcome: impl Fn(&str) -> &'a SliceOutcome,
) -> Vec<String> {
    let mut lines = Vec::new();
    for fault in Fault::ALL {
        let failed = spans(
            keys.clone(),
            |key| matches!(outcome(key), SliceOutcome::Failed { fault: f, .. } if *f == fault),
        );
        if !failed.is_empty() {
            lines.push(format!(
                "failed {}: {}",
                describe_spans(&failed),
                fault.next_step()
            ));
        }
    }
    let blocked = spans(keys, |key| {
        matches!(outcome(key), SliceOutcome::Blocked { .. })
    });
    if !blocked.is_empty() {
        lines.push(format!(
            "blocked {}: they run once the upstream slices they read are committed",
            describe_spans(&blocked)
        ));
    }
    lines
}
