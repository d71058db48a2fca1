//! Presentation: tables and lines for people, JSON for machines, a progress bar on a
//! terminal. Everything here formats what the engine returned; nothing decides.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use backfill_engine::arrow::array::RecordBatch;
use backfill_engine::arrow::util::pretty::pretty_format_batches;
use backfill_engine::estimate::{human_bytes, Basis, Estimate};
use backfill_engine::history::RunRecord;
use backfill_engine::preview::RebuildPreview;
use backfill_engine::run::{Reporter, SliceOutcome};
use backfill_engine::sink::clean::Cleaned;
use backfill_engine::sink::rebuild::Replaced;
use backfill_engine::status::Status;
use backfill_engine::{Backfill, Plan, RunSummary, SliceState};
use backfill_engine::{RebuildOutcome, SliceStatus};
use indicatif::{ProgressBar, ProgressStyle};

pub fn cleaned(cleaned: &Cleaned, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(cleaned)?);
        return Ok(());
    }
    for path in &cleaned.deleted {
        println!(
            "{} {path}",
            if cleaned.dry_run {
                "would delete"
            } else {
                "deleted"
            }
        );
    }
    println!(
        "{} {} leftover file(s), {}; {} younger one(s) kept",
        if cleaned.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        cleaned.deleted.len(),
        human_bytes(cleaned.bytes),
        cleaned.too_young
    );
    Ok(())
}

pub fn validated(backfill: &Backfill) {
    let pipeline = backfill.pipeline();
    println!("pipeline {} is valid", pipeline.name);
    for source in &pipeline.sources {
        println!("  source {} at {}", source.name, source.url);
    }
    let columns: Vec<String> = backfill
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    println!("  output ({})", columns.join(", "));
    println!(
        "  destination {} ({}, partitioned by {:?})",
        pipeline.destination.url,
        pipeline.destination.strategy.name(),
        pipeline.destination.partition_by
    );
    println!(
        "  {} slices, {} assertion(s)",
        pipeline.slices.kind.name(),
        pipeline.assertions.len()
    );
}

pub fn plan(plan: &Plan, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    let (planned, estimate) = (&plan.slices, &plan.estimate);
    println!(
        "{:<16} {:<8} {:<5} {:>5} {:>10} {:>9}  detail",
        "slice", "state", "run", "files", "bytes", "rows"
    );
    for p in planned {
        let detail = match &p.state {
            SliceState::Missing => String::new(),
            SliceState::Failed { run_id, error } => format!("run {run_id}: {error}"),
            SliceState::Done { committed } => committed_detail(committed),
            SliceState::Changed { committed, what } => format!(
                "{} changed; {}",
                what.join(" and "),
                committed_detail(committed)
            ),
            SliceState::Staged {
                rows, staged_at, ..
            } => format!(
                "{rows} rows staged {} for the rebuild",
                staged_at.format("%Y-%m-%d %H:%M:%SZ")
            ),
        };
        let detail = match p.empty_sources.as_slice() {
            [] => detail,
            empty => format!("NO SOURCE DATA ({}) {detail}", empty.join(", ")),
        };
        let detail = match &p.problem {
            Some(problem) => format!("CANNOT RUN: {problem} {detail}"),
            None => detail,
        };
        let line = format!(
            "{:<16} {:<8} {:<5} {:>5} {:>10} {:>9}  {detail}",
            p.slice.key,
            p.state.name(),
            match (&p.state, p.will_run) {
                (SliceState::Staged { .. }, _) => "reuse",
                (_, true) => "yes",
                (_, false) => "no",
            },
            p.files.len(),
            human_bytes(p.source_bytes()),
            p.source_rows().map_or("?".to_string(), |r| r.to_string())
        );
        println!("{}", line.trim_end());
    }
    let count = |name: &str| planned.iter().filter(|p| p.state.name() == name).count();
    let staged = match count("staged") {
        0 => String::new(),
        n => format!(", {n} staged"),
    };
    println!(
        "{} slices: {} done, {} missing, {} changed, {} failed{staged}; a run would run {}",
        planned.len(),
        count("done"),
        count("missing"),
        count("changed"),
        count("failed"),
        planned.iter().filter(|p| p.will_run).count() - count("staged")
    );
    if estimate.slices > 0 {
        println!("a run would read {}", describe_estimate(estimate));
    }
    let empty = planned
        .iter()
        .filter(|p| p.will_run && !p.empty_sources.is_empty())
        .count();
    if empty > 0 {
        println!(
            "{empty} slices to run have no source data: run refuses to start unless --allow-empty"
        );
    }
    if let Some(swap) = &plan.rebuild {
        println!("rebuild: {}", describe_swap(swap));
    }
    Ok(())
}

fn describe_estimate(estimate: &Estimate) -> String {
    let rows = estimate
        .rows
        .map_or(String::new(), |rows| format!(", {rows} rows"));
    let read = format!(
        "{} files, {}{rows}",
        estimate.files,
        human_bytes(estimate.bytes)
    );
    let (Some(basis), Some(ms)) = (&estimate.basis, estimate.duration_ms) else {
        return read;
    };
    let rate = human_bytes(basis.bytes_per_second() as u64);
    let from = match basis {
        Basis::History { slices, .. } => format!("this pipeline's {slices} committed slices"),
        Basis::Sample { slice, .. } => format!("a sample run of slice {slice}"),
    };
    format!(
        "{read}; about {} with {} slices at a time (at {rate}/s, from {from})",
        human_duration(ms),
        estimate.concurrency
    )
}

/// What a rebuild's swap would replace, for people.
fn describe_swap(swap: &Replaced) -> String {
    let Some(version) = swap.version else {
        return "no table yet; the swap creates it".to_string();
    };
    let schema = if swap.schema_changes {
        "; the table's columns or partitioning change"
    } else {
        ""
    };
    format!(
        "the swap replaces {} files ({}) of table version {version}{schema}",
        swap.files,
        human_bytes(swap.bytes)
    )
}

fn committed_detail(committed: &backfill_engine::ledger::Committed) -> String {
    let when = committed
        .committed_at
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default();
    format!(
        "committed {when}, {} rows, run {}",
        committed.record.rows, committed.record.run_id
    )
}

pub fn summary(summary: &RunSummary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        let meanwhile = match summary.count(|s| matches!(s, SliceStatus::CommittedMeanwhile { .. }))
        {
            0 => String::new(),
            n => format!(", {n} committed meanwhile by other runs"),
        };
        println!(
            "run {}: {} slices, {} committed, {} skipped, {} failed{meanwhile}",
            summary.run_id,
            match summary.not_started.len() {
                0 => summary.outcomes.len().to_string(),
                n => format!(
                    "{} of {}",
                    summary.outcomes.len(),
                    summary.outcomes.len() + n
                ),
            },
            summary.committed(),
            summary.skipped(),
            summary.failed()
        );
        if let Some(rebuild) = &summary.rebuild {
            println!("rebuild: {}", describe_rebuild(rebuild));
        }
        if summary.stopped {
            // After a stop, say exactly what is in the table and what is not.
            let keys = |matches: fn(&SliceStatus) -> bool| {
                let keys: Vec<&str> = summary
                    .outcomes
                    .iter()
                    .filter(|o| matches(&o.status))
                    .map(|o| o.slice.as_str())
                    .collect();
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            };
            println!(
                "stopped. committed: {}",
                keys(|s| matches!(
                    s,
                    SliceStatus::Committed { .. } | SliceStatus::CommittedMeanwhile { .. }
                ))
            );
            if summary.rebuild.is_some() {
                println!(
                    "staged for the rebuild's swap: {}",
                    keys(|s| matches!(s, SliceStatus::Staged { .. }))
                );
            }
            println!(
                "not committed: {}",
                keys(|s| matches!(s, SliceStatus::Failed { .. } | SliceStatus::Abandoned))
            );
            println!("not started: {}", summary.not_started.join(", "));
        }
    }
    Ok(())
}

fn describe_rebuild(rebuild: &RebuildOutcome) -> String {
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
        RebuildOutcome::Waiting { staged, waiting } => format!(
            "not swapped, the table is unchanged: {staged} slices staged, waiting for {}. Run again to finish: staged slices are reused",
            waiting.join(", ")
        ),
        RebuildOutcome::Refused { error } => format!("not swapped: {error}"),
    }
}

pub fn preview(preview: &RebuildPreview, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&preview.slices)?);
        return Ok(());
    }
    println!("{:<16} {:<8} {:>9}", "slice", "state", "rows");
    for slice in &preview.slices {
        let rows = slice.rows.map_or("-".to_string(), |r| r.to_string());
        println!("{:<16} {:<8} {rows:>9}", slice.slice, slice.state);
    }
    let absent: Vec<&str> = preview
        .slices
        .iter()
        .filter(|s| s.rows.is_none())
        .map(|s| s.slice.as_str())
        .collect();
    let total: u64 = preview.slices.iter().filter_map(|s| s.rows).sum();
    println!(
        "{} of {} slices in `staged` ({total} rows); {}",
        preview.slices.len() - absent.len(),
        preview.slices.len(),
        if absent.is_empty() {
            "a run would swap it in".to_string()
        } else {
            format!("still to stage: {}", absent.join(", "))
        }
    );
    println!("query it with --sql, e.g. --sql \"SELECT count(*) FROM staged\"");
    Ok(())
}

pub fn batches(batches: &[RecordBatch]) -> anyhow::Result<()> {
    println!("{}", pretty_format_batches(batches)?);
    Ok(())
}

pub fn status(status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:>8} {:>10} {:>9} {:>7} {:>7}  {:<24} note",
        "slice", "state", "rows", "bytes", "duration", "retries", "version", "run"
    );
    let or_blank = |value: Option<String>| value.unwrap_or_default();
    for s in &status.slices {
        let note = match (&s.last_error, s.skewed) {
            (Some(error), _) => error.clone(),
            (None, true) => format!(
                "skewed: over {}x the median",
                backfill_engine::status::SKEW_FACTOR
            ),
            (None, false) => String::new(),
        };
        let line = format!(
            "{:<16} {:<8} {:>8} {:>10} {:>9} {:>7} {:>7}  {:<24} {note}",
            s.slice,
            s.state,
            or_blank(s.rows.map(|r| r.to_string())),
            or_blank(s.bytes.map(human_bytes)),
            or_blank(s.duration_ms.map(human_duration)),
            s.retries,
            or_blank(s.version.map(|v| v.to_string())),
            or_blank(s.run_id.clone()),
        );
        println!("{}", line.trim_end());
    }
    let durations: Vec<Option<u64>> = status.slices.iter().map(|s| s.duration_ms).collect();
    if durations.iter().flatten().count() > 1 {
        println!("durations in slice order: {}", sparkline(&durations));
    }
    let median = status
        .median_duration_ms
        .map(|m| format!(", median duration {}", human_duration(m)))
        .unwrap_or_default();
    let skewed = status.slices.iter().filter(|s| s.skewed).count();
    println!(
        "{} done, {} remaining{median}, {skewed} skewed",
        status.done, status.remaining
    );
    Ok(())
}

/// Durations as a line of bars, blank where a slice has none: the trend at a glance.
fn sparkline(durations: &[Option<u64>]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = durations
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    durations
        .iter()
        .map(|d| match d {
            Some(d) => BARS[((*d as f64 / max as f64) * (BARS.len() - 1) as f64).round() as usize],
            None => ' ',
        })
        .collect()
}

pub fn history(runs: &[RunRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(runs)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<21} {:>6} {:>9} {:>7} {:>6}  selection",
        "run", "started", "slices", "committed", "skipped", "failed"
    );
    for run in runs {
        let started = run.header.started_at.format("%Y-%m-%d %H:%M:%SZ");
        let counts = match &run.end {
            Some(end) => format!("{:>9} {:>7} {:>6}", end.committed, end.skipped, end.failed),
            None => format!("{:>24}", "(did not finish)"),
        };
        println!(
            "{:<24} {started:<21} {:>6} {counts}  {}",
            run.header.run_id, run.header.slices, run.header.selection
        );
    }
    println!("{} runs", runs.len());
    Ok(())
}

pub fn show(run: &RunRecord, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(run)?);
        return Ok(());
    }
    let header = &run.header;
    println!(
        "run {} of {}: {} ({} slices)",
        header.run_id, header.pipeline, header.selection, header.slices
    );
    println!(
        "  started {}, reprocess {}, concurrency {}, retries {}",
        header.started_at.format("%Y-%m-%d %H:%M:%SZ"),
        header.reprocess.join(","),
        header.concurrency,
        header.retries
    );
    match &run.end {
        Some(end) => println!(
            "  ended {}: {} committed, {} skipped, {} failed",
            end.ended_at.format("%Y-%m-%d %H:%M:%SZ"),
            end.committed,
            end.skipped,
            end.failed
        ),
        None => println!("  did not finish (still running, or interrupted)"),
    }
    for attempt in &run.attempts {
        let took = human_duration(attempt.duration_ms);
        let what = match &attempt.status {
            SliceStatus::Committed { version, rows, .. } => {
                format!("committed {rows} rows, version {version}")
            }
            SliceStatus::Staged { rows, reused, .. } => {
                format!(
                    "staged {rows} rows{}",
                    if *reused { " (reused)" } else { "" }
                )
            }
            SliceStatus::CommittedMeanwhile { by_run, version } => {
                format!("committed meanwhile by run {by_run}, version {version}")
            }
            SliceStatus::Skipped { state } => format!("skipped ({state})"),
            SliceStatus::Failed { error, .. } => format!("FAILED {error}"),
            SliceStatus::Abandoned => "abandoned".to_string(),
        };
        println!(
            "  {:<16} attempt {} {took:>8}  {what}",
            attempt.slice, attempt.attempt
        );
    }
    Ok(())
}

/// Live progress: a bar on a terminal (hidden otherwise) and one line per finished slice.
pub struct Progress {
    bar: ProgressBar,
    json: bool,
    totals: Mutex<Totals>,
}

/// What the bar's message shows: work done so far and the slices in flight.
struct Totals {
    started: Instant,
    failed: u64,
    rows: u64,
    bytes: u64,
    in_flight: Vec<String>,
}

impl Totals {
    fn message(&self) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let in_flight = match self.in_flight.len() {
            0 => String::new(),
            1..=3 => format!(", in flight: {}", self.in_flight.join(" ")),
            n => format!(
                ", in flight: {} and {} more",
                self.in_flight[..3].join(" "),
                n - 3
            ),
        };
        format!(
            "{} failed, {} rows, {} ({:.0} rows/s){in_flight}",
            self.failed,
            self.rows,
            human_bytes(self.bytes),
            self.rows as f64 / seconds
        )
    }
}

impl Progress {
    pub fn new(json: bool) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} slices, ETA {eta}: {msg}",
            )
            .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let totals = Totals {
            started: Instant::now(),
            failed: 0,
            rows: 0,
            bytes: 0,
            in_flight: vec![],
        };
        Progress {
            bar,
            json,
            totals: Mutex::new(totals),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Reporter for Progress {
    fn run_started(&self, run_id: &str, slices: usize) {
        self.bar.set_length(slices as u64);
        if !self.json {
            self.bar
                .suspend(|| println!("run {run_id}: {slices} slices"));
        }
    }

    fn slice_started(&self, slice: &str) {
        let mut totals = self.totals.lock().expect("not poisoned");
        totals.in_flight.push(slice.to_string());
        self.bar.set_message(totals.message());
    }

    fn slice_finished(&self, outcome: &SliceOutcome) {
        {
            let mut totals = self.totals.lock().expect("not poisoned");
            totals.in_flight.retain(|s| *s != outcome.slice);
            match &outcome.status {
                SliceStatus::Committed { rows, bytes, .. }
                | SliceStatus::Staged { rows, bytes, .. } => {
                    totals.rows += rows;
                    totals.bytes += bytes;
                }
                SliceStatus::Failed { .. } | SliceStatus::Abandoned => totals.failed += 1,
                SliceStatus::Skipped { .. } | SliceStatus::CommittedMeanwhile { .. } => {}
            }
            self.bar.set_message(totals.message());
        }
        self.bar.inc(1);
        if self.json {
            return;
        }
        let took = human_duration(outcome.duration_ms);
        let line = match &outcome.status {
            SliceStatus::Committed {
                version,
                rows,
                bytes,
            } => {
                format!(
                    "{:<16} committed {rows:>9} rows {:>10} {took:>8}  version {version}",
                    outcome.slice,
                    human_bytes(*bytes)
                )
            }
            SliceStatus::Staged {
                rows,
                bytes,
                reused,
            } => {
                let note = if *reused {
                    "reused from an earlier run"
                } else {
                    "awaiting the swap"
                };
                format!(
                    "{:<16} staged    {rows:>9} rows {:>10} {took:>8}  {note}",
                    outcome.slice,
                    human_bytes(*bytes)
                )
            }
            SliceStatus::Skipped { state } => format!("{:<16} skipped   ({state})", outcome.slice),
            SliceStatus::CommittedMeanwhile { by_run, version } => format!(
                "{:<16} skipped   (committed meanwhile by run {by_run}, version {version})",
                outcome.slice
            ),
            SliceStatus::Abandoned => format!(
                "{:<16} abandoned {took:>8}  (stopped; nothing committed)",
                outcome.slice
            ),
            SliceStatus::Failed { error, .. } => {
                format!("{:<16} FAILED    {took:>8}  {error}", outcome.slice)
            }
        };
        let line = match outcome.attempts {
            1 => line,
            attempts => format!("{line}  ({attempts} attempts)"),
        };
        self.bar.suspend(|| println!("{line}"));
    }
}

pub(crate) fn human_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.2}s", ms as f64 / 1000.0)
    }
}
