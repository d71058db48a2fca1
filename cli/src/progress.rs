//! Live progress of a run: a bar on a terminal (hidden otherwise) and one line per
//! finished slice, fed by the engine's [`Reporter`] calls.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use backfill_engine::run::{Reporter, SliceOutcome};
use backfill_engine::SliceStatus;
use indicatif::{ProgressBar, ProgressStyle};

use crate::printer::{human_bytes, human_duration};

/// Live progress: a bar on a terminal (hidden otherwise) and one line per finished slice.
pub struct Progress {
    bar: ProgressBar,
    json: bool,
    /// Whether slices of several pipelines run: lines then name each slice's pipeline.
    pipelines: bool,
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
    /// Progress of one pipeline's run, or with `pipelines` of a project's.
    pub fn new(json: bool, pipelines: bool) -> Self {
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
            pipelines,
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

    fn slice_started(&self, pipeline: &str, slice: &str) {
        let mut totals = self.totals.lock().expect("not poisoned");
        totals.in_flight.push(self.name(pipeline, slice));
        self.bar.set_message(totals.message());
    }

    fn slice_finished(&self, pipeline: &str, outcome: &SliceOutcome) {
        let name = self.name(pipeline, &outcome.slice);
        {
            let mut totals = self.totals.lock().expect("not poisoned");
            totals.in_flight.retain(|s| *s != name);
            match &outcome.status {
                SliceStatus::Committed { rows, bytes, .. }
                | SliceStatus::Staged { rows, bytes, .. } => {
                    totals.rows += rows;
                    totals.bytes += bytes;
                }
                SliceStatus::Failed { .. }
                | SliceStatus::Abandoned
                | SliceStatus::Blocked { .. } => totals.failed += 1,
                SliceStatus::Skipped { .. } | SliceStatus::CommittedMeanwhile { .. } => {}
            }
            self.bar.set_message(totals.message());
        }
        self.bar.inc(1);
        if self.json {
            return;
        }
        let width = if self.pipelines { 30 } else { 16 };
        let took = human_duration(outcome.duration_ms);
        let line = match &outcome.status {
            SliceStatus::Committed {
                version,
                rows,
                bytes,
            } => {
                format!(
                    "{:<width$} committed {rows:>9} rows {:>10} {took:>8}  version {version}",
                    name,
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
                    "{:<width$} staged    {rows:>9} rows {:>10} {took:>8}  {note}",
                    name,
                    human_bytes(*bytes)
                )
            }
            SliceStatus::Skipped { state } => format!("{:<width$} skipped   ({state})", name),
            SliceStatus::CommittedMeanwhile { by_run, version } => format!(
                "{:<width$} skipped   (committed meanwhile by run {by_run}, version {version})",
                name
            ),
            SliceStatus::Abandoned => format!(
                "{:<width$} abandoned {took:>8}  (stopped; nothing committed)",
                name
            ),
            SliceStatus::Failed { error, .. } => {
                format!("{:<width$} FAILED    {took:>8}  {error}", name)
            }
            SliceStatus::Blocked { by } => {
                format!("{:<width$} BLOCKED   by {}", name, by.join(", "))
            }
        };
        let line = match outcome.attempts {
            0 | 1 => line,
            attempts => format!("{line}  ({attempts} attempts)"),
        };
        self.bar.suspend(|| println!("{line}"));
    }
}

impl Progress {
    /// How lines name a slice: with its pipeline when several run.
    fn name(&self, pipeline: &str, slice: &str) -> String {
        match self.pipelines {
            true => format!("{pipeline} {slice}"),
            false => slice.to_string(),
        }
    }
}
