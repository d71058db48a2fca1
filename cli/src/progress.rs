//! Live progress of a run, drawn from the engine's [`RunEvent`]s: a bar on a terminal
//! (hidden otherwise) and one line per finished slice or retry; or every event as a JSON
//! line.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backfill_engine::run::{FinishedSlice, Observer, RunEvent};
use indicatif::{ProgressBar, ProgressStyle};

use crate::printer::{
    count, human_bytes, human_duration, lease_taken_over, status_words, timestamp,
};

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

impl Observer for Progress {
    fn on(&self, event: &RunEvent) {
        match event {
            RunEvent::Started { run_id, slices, .. } => self.started(run_id, *slices),
            RunEvent::SliceStarted { pipeline, slice } => {
                let mut totals = self.totals.lock().expect("not poisoned");
                totals.in_flight.push(self.name(pipeline, slice));
                self.bar.set_message(totals.message());
            }
            RunEvent::Retrying {
                pipeline,
                slice,
                attempt,
                error,
                wait_ms,
            } => self.line(format!(
                "{:<width$} retrying  in {} after attempt {attempt}: {error}",
                self.name(pipeline, slice),
                human_duration(*wait_ms),
                width = self.width()
            )),
            RunEvent::SliceFinished { pipeline, outcome } => self.finished(pipeline, outcome),
            RunEvent::LeaseTakenOver { pipeline, from } => self
                .bar
                .suspend(|| eprintln!("{}", lease_taken_over(pipeline, from))),
            RunEvent::StopRequested { by, requested_at } => self.bar.suspend(|| {
                eprintln!(
                    "stopping: {by} asked at {} (backfill cancel); no new slices start, slices in flight finish",
                    timestamp(requested_at)
                )
            }),
            // `[lineage] console`: each event as it is emitted.
            RunEvent::Lineage { lineage, .. } => self.bar.suspend(|| eprintln!("{lineage}")),
            _ => {}
        }
    }
}

impl Progress {
    fn started(&self, run_id: &str, slices: usize) {
        self.bar.set_length(slices as u64);
        self.line(format!("run {run_id}: {}", count(slices, "slice")));
    }

    fn finished(&self, pipeline: &str, outcome: &FinishedSlice) {
        let name = self.name(pipeline, &outcome.slice);
        {
            let mut totals = self.totals.lock().expect("not poisoned");
            totals.in_flight.retain(|s| *s != name);
            if let Some((rows, bytes)) = outcome.status.written() {
                totals.rows += rows;
                totals.bytes += bytes;
            }
            if outcome.status.is_not_committed() {
                totals.failed += 1;
            }
            self.bar.set_message(totals.message());
        }
        self.bar.inc(1);
        let words = status_words(&outcome.status);
        let took = match outcome.duration_ms {
            0 => String::new(),
            ms => format!("  {}", human_duration(ms)),
        };
        let attempts = match outcome.attempts {
            0 | 1 => String::new(),
            attempts => format!("  ({attempts} attempts)"),
        };
        self.line(format!(
            "{name:<width$} {:<9} {}{took}{attempts}",
            words.label,
            words.detail,
            width = self.width()
        ));
    }

    /// Prints a line above the bar, unless the output is JSON.
    fn line(&self, line: String) {
        if !self.json {
            // A reader that went away does not stop the run.
            self.bar
                .suspend(|| drop(writeln!(std::io::stdout().lock(), "{line}")));
        }
    }

    /// The width of the column naming slices.
    fn width(&self) -> usize {
        if self.pipelines {
            30
        } else {
            16
        }
    }

    /// How lines name a slice: with its pipeline when several run.
    fn name(&self, pipeline: &str, slice: &str) -> String {
        match self.pipelines {
            true => format!("{pipeline} {slice}"),
            false => slice.to_string(),
        }
    }
}

/// Every event of a run as a JSON line on standard output (`run --events`), for a program
/// watching the run.
pub struct JsonLines;

impl Observer for JsonLines {
    fn on(&self, event: &RunEvent) {
        let line = serde_json::to_string(event).expect("an event serializes");
        let mut out = std::io::stdout().lock();
        // A reader that went away cannot be told anything more.
        let _ = writeln!(out, "{line}");
    }
}
