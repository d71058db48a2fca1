//! How everything is printed: JSON for machines, aligned tables and one way of writing
//! sizes, durations and times for people. Commands decide what to print; this decides how.

use backfill_engine::SliceOutcome;
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
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if numbers.contains(&index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
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
                match reused {
                    true => "reused from an earlier run",
                    false => "awaiting the swap",
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
