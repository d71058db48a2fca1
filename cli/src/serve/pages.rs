//! What the run page shows, as data (`RunView`, also the API's answer) and as HTML
//! (minijinja templates with auto-escaping; the page's script is a few lines, inline).

use std::collections::HashMap;

use backfill_engine::history::{Liveness, RunEnd, RunEntry, RunRecord, StopRequest};
use backfill_engine::pipeline::Pipeline;
use backfill_engine::slice::{Selection, SliceKind};
use backfill_engine::SliceOutcome;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::launch::{Launch, PlanView};
use crate::printer::{self, human_bytes, human_duration, status_words_after};
use crate::report::STYLES;

const RUNS: &str = include_str!("runs.html");
const RUN: &str = include_str!("run.html");
const LAUNCH: &str = include_str!("launch.html");

/// One run as the page and the API show it.
#[derive(Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub record: RunRecord,
    /// `running`, `done`, `failed`, `cancelled`, `stopping` or `presumed dead`.
    pub status: &'static str,
    pub counts: Counts,
    /// Each slice's last attempt, in the order the run first tried them.
    pub slices: Vec<SliceView>,
    /// Every selected slice, finished or not, in rows: a day of hours, a month of days.
    pub grid: Vec<GridRow>,
    /// What to do about failed slices, in spans.
    pub next: Vec<String>,
    pub rebuild: Option<String>,
    /// How fast it went, from its start to now (or its end).
    pub pace: Pace,
    /// Attempts that failed and were tried again, with why.
    pub retried: Vec<Retried>,
}

#[derive(Serialize)]
pub struct GridRow {
    pub label: String,
    pub cells: Vec<Cell>,
}

#[derive(Serialize)]
pub struct Cell {
    pub slice: String,
    pub class: &'static str,
    pub title: String,
}

#[derive(Serialize)]
pub struct Pace {
    pub elapsed: String,
    pub rows_per_second: u64,
    pub bytes_per_second: String,
    /// While it runs: the time left at the pace so far.
    pub eta: Option<String>,
}

#[derive(Serialize)]
pub struct Retried {
    pub slice: String,
    pub attempt: u32,
    pub error: String,
}

#[derive(Serialize)]
pub struct Counts {
    pub selected: usize,
    /// Slices whose rows are in the table: committed by this run or meanwhile by another.
    pub committed: usize,
    pub staged: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Selected slices with no outcome yet: in flight, or not started.
    pub remaining: usize,
    pub rows: u64,
    pub bytes: String,
}

#[derive(Serialize)]
pub struct SliceView {
    pub slice: String,
    pub class: &'static str,
    pub detail: String,
    pub attempt: u32,
    pub took: String,
    /// Slower than `status`'s skew factor times the median slice.
    pub slow: bool,
}

impl RunView {
    /// `record` of a run of `pipeline` (if this server knows it), as of `now`.
    pub fn of(record: &RunRecord, pipeline: Option<&Pipeline>, now: DateTime<Utc>) -> RunView {
        let last = record.last_attempts();
        let count =
            |wanted: fn(&SliceOutcome) -> bool| last.iter().filter(|a| wanted(&a.status)).count();
        let (rows, bytes) = (last.iter().filter_map(|a| a.status.written()))
            .fold((0, 0), |(rows, bytes), (r, b)| (rows + r, bytes + b));
        let counts = Counts {
            selected: record.header.slices,
            committed: count(SliceOutcome::is_in_the_table),
            staged: count(|s| matches!(s, SliceOutcome::Staged { .. })),
            skipped: count(|s| matches!(s, SliceOutcome::Skipped { .. })),
            failed: count(SliceOutcome::is_not_committed),
            remaining: record.header.slices.saturating_sub(last.len()),
            rows,
            bytes: human_bytes(bytes),
        };
        let rebuild = record.end.as_ref().and_then(|end| end.rebuild.as_ref());
        let durations: Vec<Option<u64>> = last.iter().map(|a| Some(a.duration_ms)).collect();
        let (_, slow) = backfill_engine::status::skew(&durations);
        let retried = (record.attempts.iter())
            .filter(|a| !last.iter().any(|l| std::ptr::eq(*l, *a)))
            .filter_map(|a| match &a.status {
                SliceOutcome::Failed { error, .. } => Some(Retried {
                    slice: a.slice.clone(),
                    attempt: a.attempt,
                    error: error.clone(),
                }),
                _ => None,
            })
            .collect();
        let pace = pace(record, (rows, bytes), (last.len(), counts.remaining), now);
        let slices: Vec<SliceView> = (last.iter().zip(slow))
            .map(|(a, slow)| {
                let words = status_words_after(&a.status, rebuild);
                SliceView {
                    slice: a.slice.clone(),
                    class: words.class,
                    detail: words.to_string(),
                    attempt: a.attempt,
                    took: human_duration(a.duration_ms),
                    slow,
                }
            })
            .collect();
        RunView {
            grid: grid(record, pipeline, &slices),
            slices,
            pace,
            retried,
            status: status_of(
                record.liveness(now),
                record.end.as_ref(),
                record.stop.as_ref(),
            ),
            next: printer::not_committed_of(&last),
            rebuild: rebuild.map(printer::describe_rebuild),
            counts,
            record: record.clone(),
        }
    }
}

/// The run's pace from its start to `now` (or its end), and while it runs the time left
/// if the `finished` slices' pace holds for the remaining ones.
/// Every slice the run selected, in rows of a day (hourly slices) or a month (daily ones),
/// coloured by how it ended or `pending`. Without the pipeline, or for keys, the slices
/// the run finished, in one row.
fn grid(record: &RunRecord, pipeline: Option<&Pipeline>, slices: &[SliceView]) -> Vec<GridRow> {
    let finished: HashMap<&str, &SliceView> =
        slices.iter().map(|s| (s.slice.as_str(), s)).collect();
    let range = Selection::described_range(&record.header.selection);
    let kind = pipeline.map(|p| p.slices.kind);
    let selected: Vec<String> = match (range, pipeline, kind) {
        (Some(range), Some(pipeline), Some(SliceKind::Daily | SliceKind::Hourly)) => {
            let cut = pipeline.cut(&range.for_kind(pipeline.slices.kind));
            cut.map(|slices| slices.into_iter().map(|s| s.key).collect())
                .unwrap_or_default()
        }
        _ => vec![],
    };
    let keys: Vec<String> = match selected.is_empty() {
        true => slices.iter().map(|s| s.slice.clone()).collect(),
        false => selected,
    };
    let label = |key: &str| match kind {
        Some(SliceKind::Hourly) => key.get(..10).unwrap_or(key).to_string(),
        Some(SliceKind::Daily) => key.get(..7).unwrap_or(key).to_string(),
        _ => String::new(),
    };
    let mut rows: Vec<GridRow> = Vec::new();
    for key in keys {
        let cell = match finished.get(key.as_str()) {
            Some(view) => Cell {
                class: view.class,
                title: format!("{key}: {} ({})", view.detail, view.took),
                slice: key.clone(),
            },
            None => Cell {
                class: "pending",
                title: format!("{key}: not finished yet"),
                slice: key.clone(),
            },
        };
        let label = label(&key);
        match rows.last_mut() {
            Some(row) if row.label == label => row.cells.push(cell),
            _ => rows.push(GridRow {
                label,
                cells: vec![cell],
            }),
        }
    }
    rows
}

/// `written` is the rows and bytes its slices wrote.
fn pace(
    record: &RunRecord,
    written: (u64, u64),
    (finished, remaining): (usize, usize),
    now: DateTime<Utc>,
) -> Pace {
    let until = record.end.as_ref().map_or(now, |end| end.ended_at);
    let elapsed_ms = (until - record.header.started_at).num_milliseconds().max(1) as u64;
    let (rows, bytes) = written;
    let eta = (record.end.is_none() && finished > 0)
        .then(|| human_duration(elapsed_ms / finished as u64 * remaining as u64));
    Pace {
        elapsed: human_duration(elapsed_ms),
        rows_per_second: rows * 1000 / elapsed_ms,
        bytes_per_second: format!("{}/s", human_bytes(bytes * 1000 / elapsed_ms)),
        eta,
    }
}

/// How a run stands: still going (or asked to stop), or how it ended. A stop request is
/// only written while a run is alive, so an ended run that has one was cancelled.
fn status_of(liveness: Liveness, end: Option<&RunEnd>, stop: Option<&StopRequest>) -> &'static str {
    match (liveness, end, stop) {
        (Liveness::Running, _, None) => "running",
        (Liveness::Running, _, Some(_)) => "stopping",
        (Liveness::PresumedDead, _, _) => "presumed dead",
        (Liveness::Ended, _, Some(_)) => "cancelled",
        (Liveness::Ended, Some(end), None) if end.failed > 0 => "failed",
        (Liveness::Ended, _, None) => "done",
    }
}

#[derive(Serialize)]
struct RunsPage<'a> {
    runs: Vec<RunLine<'a>>,
}

#[derive(Serialize)]
struct RunLine<'a> {
    run: &'a RunEntry,
    started: String,
    status: &'static str,
}

pub fn runs(runs: &[RunEntry]) -> anyhow::Result<String> {
    let lines = runs
        .iter()
        .map(|run| {
            let status = status_of(run.liveness, run.end.as_ref(), run.stop.as_ref());
            RunLine {
                run,
                started: printer::timestamp(&run.header.started_at),
                status,
            }
        })
        .collect();
    render(RUNS, &RunsPage { runs: lines })
}

#[derive(Serialize)]
struct RunPage<'a> {
    view: &'a RunView,
    started: String,
    styles: &'a [crate::report::Style],
    /// Only the part that changes, for the page's script.
    live: bool,
    ended: bool,
}

pub fn run(view: &RunView, live: bool) -> anyhow::Result<String> {
    let page = RunPage {
        view,
        started: printer::timestamp(&view.record.header.started_at),
        styles: &STYLES,
        live,
        ended: view.record.end.is_some(),
    };
    render(RUN, &page)
}

/// The launch form, and once it is filled in, its plan.
#[derive(Serialize)]
pub struct LaunchPage<'a> {
    pub pipelines: Vec<&'a str>,
    /// A project's environment.
    pub environment: Option<&'a str>,
    pub form: &'a Launch,
    pub plan: Option<&'a PlanView>,
    /// Why the form's launch cannot be planned.
    pub error: Option<String>,
    /// The plan confirmed before, when a launch was refused because it changed.
    pub changed: Option<String>,
}

pub fn launch(page: &LaunchPage) -> anyhow::Result<String> {
    render(LAUNCH, page)
}

fn render(template: &str, page: &impl Serialize) -> anyhow::Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_template("page.html", template)?;
    let html = env
        .get_template("page.html")?
        .render(minijinja::value::Serde(page))?;
    Ok(html)
}

#[cfg(test)]
mod tests {
    use backfill_engine::history::{Attempt, RunHeader};
    use backfill_engine::{Fault, SliceOutcome};
    use chrono::{Duration, TimeZone, Utc};

    use super::*;

    fn attempt(slice: &str, attempt: u32, status: SliceOutcome, duration_ms: u64) -> Attempt {
        Attempt {
            slice: slice.into(),
            attempt,
            status,
            duration_ms,
            finished_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        }
    }

    fn committed(rows: u64) -> SliceOutcome {
        SliceOutcome::Committed {
            version: 0,
            rows,
            bytes: rows * 10,
        }
    }

    #[test]
    fn a_running_runs_view_has_its_pace_time_left_retries_and_slow_slices() {
        let started = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let reset = SliceOutcome::Failed {
            error: "connection reset".into(),
            fault: Fault::Environment,
        };
        let record = RunRecord {
            header: RunHeader {
                run_id: "20231114T221320Z-abcdef".into(),
                pipeline: "p".into(),
                selection: "d1..d8".into(),
                slices: 8,
                reprocess: vec![],
                concurrency: 1,
                retries: 2,
                started_at: started,
                promoted_from: None,
                cluster: None,
            },
            end: None,
            attempts: vec![
                attempt("d1", 1, committed(100), 100),
                attempt("d2", 1, reset, 100),
                attempt("d3", 1, committed(100), 100),
                attempt("d2", 2, committed(100), 100),
                attempt("d4", 1, committed(100), 1000),
            ],
            heartbeat: None,
            stop: None,
        };
        // Four slices finished in 4 s: the other four take about as long.
        let view = RunView::of(&record, None, started + Duration::seconds(4));
        assert_eq!(view.counts.committed, 4);
        assert_eq!(view.counts.remaining, 4);
        assert_eq!(view.pace.rows_per_second, 100);
        assert_eq!(view.pace.eta.as_deref(), Some("4.00s"));
        let retried: Vec<(&str, u32, &str)> = (view.retried.iter())
            .map(|r| (r.slice.as_str(), r.attempt, r.error.as_str()))
            .collect();
        assert_eq!(retried, [("d2", 1, "connection reset")]);
        let slow: Vec<&str> = (view.slices.iter())
            .filter(|s| s.slow)
            .map(|s| s.slice.as_str())
            .collect();
        assert_eq!(slow, ["d4"]);
        let html = run(&view, true).unwrap();
        assert!(html.contains("about 4.00s left") && html.contains("connection reset"));
    }
}

#[cfg(test)]
mod scale {
    use backfill_engine::history::{Attempt, RunHeader};
    use backfill_engine::slice::SliceKind;
    use chrono::{Duration, TimeZone, Utc};

    use super::*;

    /// A year of hourly slices, every one committed: the page holds a row per day and
    /// renders at once. The time it takes is reported, not asserted (shared machines).
    #[test]
    fn a_run_of_a_year_of_hours_renders_a_row_per_day() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/pipelines/hourly_events.toml"
        );
        let pipeline = backfill_engine::pipeline::load(std::path::Path::new(file)).unwrap();
        assert_eq!(pipeline.slices.kind, SliceKind::Hourly);
        let selection = Selection::Range {
            start: "2023-01-01T00".into(),
            end: "2023-12-31T23".into(),
        };
        let started = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let attempts: Vec<Attempt> = (pipeline.cut(&selection).unwrap().into_iter())
            .map(|slice| Attempt {
                slice: slice.key,
                attempt: 1,
                status: SliceOutcome::Committed {
                    version: 1,
                    rows: 40,
                    bytes: 2_000,
                },
                duration_ms: 3,
                finished_at: started,
            })
            .collect();
        assert_eq!(attempts.len(), 8_760);
        let record = RunRecord {
            header: RunHeader {
                run_id: "20231114T221320Z-abcdef".into(),
                pipeline: pipeline.name.clone(),
                selection: selection.describe(),
                slices: attempts.len(),
                reprocess: vec![],
                concurrency: 16,
                retries: 2,
                started_at: started,
                promoted_from: None,
                cluster: None,
            },
            end: None,
            attempts,
            heartbeat: None,
            stop: None,
        };
        let timer = std::time::Instant::now();
        let view = RunView::of(&record, Some(&pipeline), started + Duration::seconds(30));
        let html = run(&view, false).unwrap();
        eprintln!(
            "a year of hourly slices: view and page in {:?}, {} KiB of HTML",
            timer.elapsed(),
            html.len() / 1024
        );
        assert_eq!(view.grid.len(), 365);
        assert!(view.grid.iter().all(|row| row.cells.len() == 24));
        assert_eq!(html.matches("class=\"row\"").count(), 365);
    }
}
