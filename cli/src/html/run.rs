//! A run as its page shows it: `RunView`, the data (also the API's answer), built from the
//! run's history; and the list of runs. How a slice ended is worded as `show` words it.

use std::collections::HashMap;

use backfill_engine::history::{Attempt, Liveness, RunEnd, RunEntry, RunRecord, StopRequest};
use backfill_engine::pipeline::Pipeline;
use backfill_engine::slice::{Selection, SliceKind, SliceSpec};
use backfill_engine::status::{skew, SKEW_FACTOR};
use backfill_engine::{RebuildOutcome, SliceOutcome};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{legend, style, Style, STYLES};
use crate::printer::{self, human_bytes, human_duration, status_words_after};

/// How a run's page is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shown {
    /// Served, following the run while it goes, with its Cancel button.
    Page,
    /// Only the part that changes, for the served page's script.
    Part,
    /// A file of its own (`backfill report`): nothing loaded, no script, no links.
    Report,
}

/// One run as the page and the API show it.
#[derive(Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub record: RunRecord,
    /// `running`, `stopping`, `done`, `failed`, `cancelled` (by a stop request), `stopped`
    /// (where it ran: Ctrl-C, SIGTERM) or `presumed dead`.
    pub status: &'static str,
    /// The table it writes, when the pipeline is known.
    pub destination: Option<String>,
    /// The project's environment of that table, when the server knows it.
    pub environment: Option<String>,
    pub started: String,
    /// When it ended and after how long.
    pub ended: Option<String>,
    /// Why it has no end: still running, or killed.
    pub unfinished: Option<&'static str>,
    pub counts: Counts,
    /// Each slice's last attempt, in the order the run first tried them.
    pub slices: Vec<SliceView>,
    /// Every selected slice, finished or not, in rows: a day of hours, a month of days,
    /// a combination of keys.
    pub grid: Vec<GridRow>,
    /// Whether the grid's cells say their slice.
    pub wide: bool,
    /// The styles of the slices' classes, for the legend.
    pub legend: Vec<&'static Style>,
    /// Each slice's duration, in the order the run tried them.
    pub chart: Chart,
    /// What to do about failed slices, in spans.
    pub next: Vec<String>,
    pub rebuild: Option<String>,
    /// Whether a rebuild ended as it should (swapped, or nothing to swap).
    pub rebuild_ok: bool,
    /// While it runs: the slots in use and the slices in flight, as its last heartbeat
    /// said.
    pub slots: Option<String>,
    /// How fast it went, from its start to now (or its end).
    pub pace: Pace,
    /// Attempts that failed and were tried again, with why.
    pub retried: Vec<Retried>,
    /// A run of several pipelines: a row of each one's slices, upstream first.
    pub parts: Vec<Part>,
}

/// One pipeline of a run of several: its slices in a row.
#[derive(Serialize)]
pub struct Part {
    pub pipeline: String,
    pub status: &'static str,
    pub summary: String,
    pub cells: Vec<Cell>,
}

#[derive(Serialize)]
pub struct GridRow {
    pub label: String,
    pub cells: Vec<Cell>,
}

#[derive(Clone, Serialize)]
pub struct Cell {
    pub slice: String,
    pub class: &'static str,
    pub title: String,
    /// What a wide cell says under its key: its rows and time, or how it ended.
    pub brief: String,
}

impl Cell {
    /// The place of a cell a combination of keys does not have, in a gap grid.
    fn absent() -> Cell {
        Cell {
            slice: String::new(),
            class: "absent",
            title: String::new(),
            brief: String::new(),
        }
    }
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
    /// The table versions the run committed: `4`, or `4..9`.
    pub versions: Option<String>,
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
    #[serde(skip)]
    duration_ms: u64,
    #[serde(skip)]
    brief: String,
}

impl RunView {
    /// `record` of a run of `pipeline` (if it is known), as of `now`.
    pub fn of(record: &RunRecord, pipeline: Option<&Pipeline>, now: DateTime<Utc>) -> RunView {
        let last = record.last_attempts();
        let rebuild = record.end.as_ref().and_then(|end| end.rebuild.as_ref());
        let written = written(&last);
        let counts = counts(record, &last, written);
        let durations: Vec<Option<u64>> = last.iter().map(|a| Some(a.duration_ms)).collect();
        let (median, slow) = skew(&durations);
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
        let pace = pace(record, written, (last.len(), counts.remaining), now);
        let slices: Vec<SliceView> = (last.iter().zip(slow))
            .map(|(a, slow)| {
                let words = status_words_after(&a.status, rebuild);
                let took = human_duration(a.duration_ms);
                let brief = match a.status.written() {
                    Some((rows, _)) => format!("{rows} rows · {took}"),
                    None => format!("{} · {took}", words.label.to_lowercase()),
                };
                SliceView {
                    slice: a.slice.clone(),
                    class: words.class,
                    detail: words.to_string(),
                    attempt: a.attempt,
                    took,
                    slow,
                    duration_ms: a.duration_ms,
                    brief,
                }
            })
            .collect();
        let in_flight = in_flight(record, &last, now);
        let grid = grid(record, pipeline, &slices, &in_flight);
        let cells = grid.iter().map(|row| row.cells.len()).sum();
        RunView {
            wide: wide(pipeline.map(|p| &p.slices), cells),
            legend: legend(grid.iter().flat_map(|r| r.cells.iter().map(|c| c.class))),
            grid,
            chart: chart(&slices, median),
            slices,
            parts: vec![],
            slots: slots(record, &in_flight, now),
            pace,
            retried,
            status: status_of(
                record.liveness(now),
                record.end.as_ref(),
                record.stop.as_ref(),
            ),
            destination: pipeline.map(|p| p.destination.url.to_string()),
            environment: None,
            started: printer::timestamp(&record.header.started_at),
            ended: record.end.as_ref().map(|end| {
                let took = (end.ended_at - record.header.started_at).num_milliseconds();
                let took = human_duration(took.max(0) as u64);
                format!("{}, after {took}", printer::timestamp(&end.ended_at))
            }),
            unfinished: match record.liveness(now) {
                Liveness::Ended => None,
                Liveness::Running => Some("still running: its heartbeat is recent"),
                Liveness::PresumedDead => Some(
                    "killed, or its machine lost (no recent heartbeat): its command finishes the job",
                ),
            },
            next: printer::not_committed_of(&last),
            rebuild: rebuild.map(printer::describe_rebuild),
            rebuild_ok: rebuild.is_none_or(|r| {
                matches!(
                    r,
                    RebuildOutcome::Swapped { .. } | RebuildOutcome::Unchanged
                )
            }),
            counts,
            record: record.clone(),
        }
    }
}

/// The slices of a running run that its last heartbeat says are in flight, and that have
/// not finished an attempt since.
fn in_flight(record: &RunRecord, last: &[&Attempt], now: DateTime<Utc>) -> Vec<String> {
    let Some(beat) = record.heartbeat.as_ref() else {
        return vec![];
    };
    if record.liveness(now) != Liveness::Running {
        return vec![];
    }
    let finished_since: HashMap<&str, bool> = (last.iter())
        .map(|a| (a.slice.as_str(), a.finished_at >= beat.at))
        .collect();
    let listed = beat
        .in_flight
        .get(&record.header.pipeline)
        .into_iter()
        .flatten();
    listed
        .filter(|slice| !finished_since.get(slice.as_str()).copied().unwrap_or(false))
        .cloned()
        .collect()
}

/// `1 of 2 in use 3.00s ago; in flight (computing, or waiting for their commit): 2024-01-05`.
fn slots(record: &RunRecord, in_flight: &[String], now: DateTime<Utc>) -> Option<String> {
    let beat = record.heartbeat.as_ref()?;
    let slots = beat
        .slots
        .filter(|_| record.liveness(now) == Liveness::Running)?;
    let ago = human_duration((now - beat.at).num_milliseconds().max(0) as u64);
    let listed = match in_flight.len() {
        0 => String::new(),
        n if n <= 10 => in_flight.join(", "),
        n => format!("{} and {} more", in_flight[..10].join(", "), n - 10),
    };
    let listed = match listed.is_empty() {
        true => listed,
        false => format!("; in flight (computing, or waiting for their commit): {listed}"),
    };
    Some(format!(
        "{} of {} in use {ago} ago{listed}",
        slots.in_use, slots.of
    ))
}

impl RunView {
    /// The run's row among the pipelines of a run of several.
    pub fn part(&self) -> Part {
        let counts = &self.counts;
        Part {
            pipeline: self.record.header.pipeline.clone(),
            status: self.status,
            summary: format!(
                "{} committed, {} failed, {} not finished",
                counts.committed, counts.failed, counts.remaining
            ),
            cells: (self.grid.iter())
                .flat_map(|row| &row.cells)
                .filter(|cell| !cell.slice.is_empty())
                .cloned()
                .collect(),
        }
    }
}

/// The rows and bytes the slices' last attempts wrote.
fn written(last: &[&Attempt]) -> (u64, u64) {
    (last.iter().filter_map(|a| a.status.written()))
        .fold((0, 0), |(rows, bytes), (r, b)| (rows + r, bytes + b))
}

/// `written` is what the `last` attempts wrote.
fn counts(record: &RunRecord, last: &[&Attempt], (rows, bytes): (u64, u64)) -> Counts {
    let count =
        |wanted: fn(&SliceOutcome) -> bool| last.iter().filter(|a| wanted(&a.status)).count();
    let mut versions: Vec<u64> = (last.iter())
        .filter_map(|a| match a.status {
            SliceOutcome::Committed { version, .. } => Some(version),
            _ => None,
        })
        .collect();
    if let Some(RebuildOutcome::Swapped { version, .. }) =
        record.end.as_ref().and_then(|end| end.rebuild.as_ref())
    {
        versions.push(*version);
    }
    let versions = match (versions.iter().min(), versions.iter().max()) {
        (Some(first), Some(last)) if first == last => Some(first.to_string()),
        (Some(first), Some(last)) => Some(format!("{first}..{last}")),
        _ => None,
    };
    Counts {
        selected: record.header.slices,
        committed: count(SliceOutcome::is_in_the_table),
        staged: count(|s| matches!(s, SliceOutcome::Staged { .. })),
        skipped: count(|s| matches!(s, SliceOutcome::Skipped { .. })),
        failed: count(SliceOutcome::is_not_committed),
        remaining: record.header.slices.saturating_sub(last.len()),
        rows,
        bytes: human_bytes(bytes),
        versions,
    }
}

/// Every slice the run selected, in rows of a day (hourly slices) or a month (daily ones),
/// coloured by how it ended or `pending`. Without the pipeline, or for keys named one by
/// one, the slices the run finished, in one row.
fn grid(
    record: &RunRecord,
    pipeline: Option<&Pipeline>,
    slices: &[SliceView],
    in_flight: &[String],
) -> Vec<GridRow> {
    let finished: HashMap<&str, &SliceView> =
        slices.iter().map(|s| (s.slice.as_str(), s)).collect();
    // A range (with the keys chosen beside it), or the pipeline's own keys, is read back
    // from the history; keys named one by one are not (a key may hold a comma).
    let every_key = Selection::default();
    let selection = Selection::described(&record.header.selection)
        .or_else(|| (record.header.selection == every_key.describe()).then_some(every_key));
    let selected: Vec<String> = match (selection, pipeline) {
        (Some(selection), Some(pipeline)) => {
            let cut = pipeline.cut(&selection.for_spec(&pipeline.slices));
            cut.map(|slices| slices.into_iter().map(|s| s.key).collect())
                .unwrap_or_default()
        }
        _ => vec![],
    };
    let keys: Vec<String> = match selected.is_empty() {
        true => slices.iter().map(|s| s.slice.clone()).collect(),
        false => selected,
    };
    let cells = keys
        .into_iter()
        .map(|key| match finished.get(key.as_str()) {
            _ if in_flight.contains(&key) => Cell {
                class: "in-flight",
                title: format!("{key}: in flight"),
                brief: "in flight".into(),
                slice: key,
            },
            Some(view) => Cell {
                class: view.class,
                title: format!("{key}: {} ({})", view.detail, view.took),
                brief: view.brief.clone(),
                slice: key,
            },
            None => Cell {
                class: "pending",
                title: format!("{key}: not finished yet"),
                brief: "not finished".into(),
                slice: key,
            },
        });
    rows_of(pipeline.map(|p| &p.slices), cells)
}

/// Cells in rows of a day (hourly slices) or a month (daily ones); one row for keys; over
/// several dimensions, the gap grid: a row per combination of keys (`acme × eu`), a
/// column per time slice, blank where the combination has no cell.
pub fn rows_of(spec: Option<&SliceSpec>, cells: impl Iterator<Item = Cell>) -> Vec<GridRow> {
    let Some(spec) = spec.filter(|spec| spec.dimensions() > 1) else {
        let label = |key: &str| match spec.map(SliceSpec::kind) {
            Some(SliceKind::Hourly) => key.get(..10).unwrap_or(key).to_string(),
            Some(SliceKind::Daily) => key.get(..7).unwrap_or(key).to_string(),
            _ => String::new(),
        };
        let mut rows: Vec<GridRow> = Vec::new();
        for cell in cells {
            let label = label(&cell.slice);
            match rows.last_mut() {
                Some(row) if row.label == label => row.cells.push(cell),
                _ => rows.push(GridRow {
                    label,
                    cells: vec![cell],
                }),
            }
        }
        return rows;
    };
    let mut times: indexmap::IndexSet<String> = indexmap::IndexSet::new();
    let mut rows: indexmap::IndexMap<String, HashMap<String, Cell>> = indexmap::IndexMap::new();
    for cell in cells {
        let (time, keys) = spec.parts_of(&cell.slice);
        let time = time.unwrap_or_default().to_string();
        times.insert(time.clone());
        rows.entry(keys.join(" × ")).or_default().insert(time, cell);
    }
    let row = |(label, mut cells): (String, HashMap<String, Cell>)| GridRow {
        label,
        cells: (times.iter())
            .map(|time| cells.remove(time).unwrap_or_else(Cell::absent))
            .collect(),
    };
    rows.into_iter().map(row).collect()
}

/// Whether a grid of `cells` cells says each cell's slice: a few cells of one dimension.
/// Over several dimensions, rows are labelled by their keys instead.
pub fn wide(spec: Option<&SliceSpec>, cells: usize) -> bool {
    cells <= 60 && spec.is_none_or(|spec| spec.dimensions() < 2)
}

/// The duration chart: a column per slice in the order the run tried them (past
/// `MOST_BARS` slices, a column per run of neighbours, as tall as the slowest of them),
/// with the line above which a slice is slow.
#[derive(Serialize)]
pub struct Chart {
    pub width: usize,
    pub height: usize,
    pub bars: Vec<Bar>,
    /// Where the line of slow slices is drawn, if it is within the chart.
    pub slow_at: Option<f64>,
    pub slowest: String,
    pub slow_label: String,
}

#[derive(Serialize)]
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub colour: &'static str,
    pub title: String,
}

const MOST_BARS: usize = 400;
const CHART_WIDTH: usize = 800;
const CHART_HEIGHT: usize = 120;

fn chart(slices: &[SliceView], median: Option<u64>) -> Chart {
    let slowest = slices
        .iter()
        .map(|s| s.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let per_bar = slices.len().div_ceil(MOST_BARS).max(1);
    let groups: Vec<&[SliceView]> = slices.chunks(per_bar).collect();
    let width = CHART_WIDTH as f64 / groups.len().max(1) as f64;
    let scale = |ms: u64| ms as f64 / slowest as f64 * CHART_HEIGHT as f64;
    let bars = (groups.iter().enumerate())
        .map(|(i, group)| {
            let top = group
                .iter()
                .max_by_key(|s| s.duration_ms)
                .expect("not empty");
            let failed = group.iter().find(|s| s.class == "failed");
            let height = scale(top.duration_ms).max(1.0);
            let (first, last) = (&group[0].slice, &group[group.len() - 1].slice);
            let title = match group.len() {
                1 => format!("{first}: {}", top.took),
                n => format!("{first}..{last} ({n} slices): up to {}", top.took),
            };
            Bar {
                x: i as f64 * width,
                y: CHART_HEIGHT as f64 - height,
                width: (width - 1.0).max(1.0),
                height,
                colour: style(failed.unwrap_or(top).class).colour,
                title,
            }
        })
        .collect();
    let slow_ms = median.map(|m| (m as f64 * SKEW_FACTOR) as u64);
    Chart {
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
        bars,
        slow_at: slow_ms
            .filter(|ms| *ms <= slowest)
            .map(|ms| CHART_HEIGHT as f64 - scale(ms)),
        slowest: human_duration(slowest),
        slow_label: slow_ms.map_or(String::new(), |ms| {
            format!(
                "slow: over {SKEW_FACTOR}× the median, {}",
                human_duration(ms)
            )
        }),
    }
}

/// The run's pace from its start to `now` (or its end), and while it runs the time left
/// if the `finished` slices' pace holds for the remaining ones. `written` is the rows and
/// bytes its slices wrote.
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
/// only written while a run is alive, so an ended run that has one was cancelled; one
/// stopped without it was stopped where it ran (Ctrl-C, SIGTERM).
pub fn status_of(
    liveness: Liveness,
    end: Option<&RunEnd>,
    stop: Option<&StopRequest>,
) -> &'static str {
    match (liveness, end, stop) {
        (Liveness::Running, _, None) => "running",
        (Liveness::Running, _, Some(_)) => "stopping",
        (Liveness::PresumedDead, _, _) => "presumed dead",
        (Liveness::Ended, _, Some(_)) => "cancelled",
        (Liveness::Ended, Some(end), None) if end.stopped => "stopped",
        (Liveness::Ended, Some(end), None) if end.failed > 0 => "failed",
        (Liveness::Ended, _, None) => "done",
    }
}

#[derive(Serialize)]
struct RunsPage<'a> {
    runs: Vec<RunLine<'a>>,
}

/// A run in the list: its pipelines' parts (one, or a project's several) added up.
#[derive(Serialize)]
struct RunLine<'a> {
    /// The first part listed, for what every part shares: id, selection, start, host.
    run: &'a RunEntry,
    environment: Option<&'a str>,
    pipelines: Vec<&'a str>,
    started: String,
    status: &'static str,
    slices: usize,
    tally: Tally,
    attempts: usize,
}

/// Where a run's slices stand: ended committed (in the table), skipped or failed, or not
/// finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub committed: usize,
    pub skipped: usize,
    pub failed: usize,
    pub remaining: usize,
}

impl Tally {
    /// An ended run's, from its end: what it never started is remaining.
    pub fn of_end(slices: usize, end: &RunEnd) -> Tally {
        let finished = end.committed + end.skipped + end.failed;
        Tally {
            committed: end.committed,
            skipped: end.skipped,
            failed: end.failed,
            remaining: slices.saturating_sub(finished),
        }
    }

    /// A run's that has not ended, from the attempts it has recorded: its counts alone,
    /// without the rest of its page (grid, chart).
    pub fn of_record(record: &RunRecord) -> Tally {
        let last = record.last_attempts();
        counts(record, &last, written(&last)).tally()
    }

    fn add(self, other: Tally) -> Tally {
        Tally {
            committed: self.committed + other.committed,
            skipped: self.skipped + other.skipped,
            failed: self.failed + other.failed,
            remaining: self.remaining + other.remaining,
        }
    }
}

impl Counts {
    pub fn tally(&self) -> Tally {
        Tally {
            committed: self.committed,
            skipped: self.skipped,
            failed: self.failed,
            remaining: self.remaining,
        }
    }
}

/// How a run of several parts stands, from the most pressing of its parts' words.
const STATUS_ORDER: [&str; 7] = [
    "running",
    "stopping",
    "presumed dead",
    "cancelled",
    "stopped",
    "failed",
    "done",
];

/// The list of runs, newest first, a line per run however many pipelines it ran; each
/// part with where its slices stand.
pub fn runs(entries: &[(Option<String>, RunEntry, Tally)]) -> anyhow::Result<String> {
    let mut lines: Vec<RunLine> = Vec::new();
    for (environment, entry, tally) in entries {
        let status = status_of(entry.liveness, entry.end.as_ref(), entry.stop.as_ref());
        let same = (lines.iter_mut()).find(|l| l.run.header.run_id == entry.header.run_id);
        let Some(line) = same else {
            lines.push(RunLine {
                run: entry,
                environment: environment.as_deref(),
                pipelines: vec![&entry.header.pipeline],
                started: printer::timestamp(&entry.header.started_at),
                status,
                slices: entry.header.slices,
                tally: *tally,
                attempts: entry.attempts,
            });
            continue;
        };
        line.pipelines.push(&entry.header.pipeline);
        line.slices += entry.header.slices;
        line.attempts += entry.attempts;
        line.tally = line.tally.add(*tally);
        let rank = |status| STATUS_ORDER.iter().position(|s| *s == status);
        if rank(status) < rank(line.status) {
            line.status = status;
        }
    }
    super::render("runs.html", &RunsPage { runs: lines })
}

#[derive(Serialize)]
struct RunPage<'a> {
    view: &'a RunView,
    styles: &'a [Style],
    shown: Shown,
}

impl RunView {
    /// The run's page, as `shown`.
    pub fn page(&self, shown: Shown) -> anyhow::Result<String> {
        let page = RunPage {
            view: self,
            styles: &STYLES,
            shown,
        };
        super::render("run.html", &page)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use backfill_engine::history::{Attempt, Heartbeat, RunHeader, SlotsInUse};
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

    fn header(selection: &str, slices: usize, started: DateTime<Utc>) -> RunHeader {
        RunHeader {
            run_id: "20231114T221320Z-abcdef".into(),
            pipeline: "p".into(),
            selection: selection.into(),
            slices,
            reprocess: vec![],
            concurrency: 1,
            retries: 2,
            started_at: started,
            promoted_from: None,
            cluster: None,
            started_by: None,
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
            header: header("d1..d8", 8, started),
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
        // The chart: a column per slice, the slow one reaching the top, its line at 3×
        // the median (100 ms) of the slowest's 1 s.
        let heights: Vec<f64> = view.chart.bars.iter().map(|b| b.height).collect();
        assert_eq!(heights, [12.0, 12.0, 12.0, 120.0]);
        assert_eq!(view.chart.slow_at, Some(120.0 - 36.0));
        let html = view.page(Shown::Part).unwrap();
        assert!(html.contains("about 4.00s left") && html.contains("connection reset"));
    }

    #[test]
    fn a_running_runs_heartbeat_gives_its_slots_and_the_slices_in_flight() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/pipelines/orders_clean.toml"
        );
        let pipeline = backfill_engine::pipeline::load(std::path::Path::new(file)).unwrap();
        let started = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let beat_at = started + Duration::seconds(2);
        let day = |d: u32| format!("2024-01-0{d}");
        let mut record = RunRecord {
            header: RunHeader {
                pipeline: pipeline.name.clone(),
                ..header("2024-01-01..2024-01-04", 4, started)
            },
            end: None,
            attempts: vec![attempt(&day(1), 1, committed(1), 10)],
            heartbeat: Some(Heartbeat {
                at: beat_at,
                host: "h".into(),
                pid: 1,
                slots: Some(SlotsInUse { in_use: 2, of: 2 }),
                in_flight: BTreeMap::from([(pipeline.name.clone(), vec![day(2), day(3)])]),
            }),
            stop: None,
        };
        // The third day finished after the heartbeat was written: no longer in flight.
        record.attempts.push(Attempt {
            finished_at: beat_at + Duration::seconds(1),
            ..attempt(&day(3), 1, committed(1), 10)
        });
        let now = beat_at + Duration::seconds(3);
        let view = RunView::of(&record, Some(&pipeline), now);
        assert_eq!(
            view.slots.as_deref(),
            Some("2 of 2 in use 3.00s ago; in flight (computing, or waiting for their commit): 2024-01-02")
        );
        let cells: Vec<&str> = (view.grid.iter().flat_map(|r| &r.cells))
            .map(|c| c.class)
            .collect();
        assert_eq!(cells, ["committed", "in-flight", "committed", "pending"]);
        record.end = Some(RunEnd {
            ended_at: beat_at + Duration::seconds(4),
            committed: 3,
            skipped: 0,
            failed: 0,
            rebuild: None,
            stopped: false,
        });
        let ended = RunView::of(&record, Some(&pipeline), now + Duration::seconds(2));
        assert_eq!(ended.slots, None, "an ended run has no slots in use");
    }

    #[test]
    fn a_run_of_the_pipelines_own_keys_shows_those_not_finished_yet() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/pipelines/tenant_signups.toml"
        );
        let pipeline = backfill_engine::pipeline::load(std::path::Path::new(file)).unwrap();
        let started = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let every_key = Selection::default().describe();
        let record = RunRecord {
            header: RunHeader {
                pipeline: pipeline.name.clone(),
                ..header(&every_key, 3, started)
            },
            end: None,
            attempts: vec![attempt("globex", 1, committed(3), 10)],
            heartbeat: None,
            stop: None,
        };
        let view = RunView::of(&record, Some(&pipeline), started + Duration::seconds(1));
        let cells: Vec<(&str, &str)> = (view.grid.iter().flat_map(|r| &r.cells))
            .map(|c| (c.slice.as_str(), c.class))
            .collect();
        assert_eq!(
            cells,
            [
                ("acme", "pending"),
                ("globex", "committed"),
                ("o'brien", "pending")
            ]
        );
    }

    #[test]
    fn an_ended_run_was_stopped_where_it_ran_cancelled_by_a_request_failed_or_done() {
        let end = |failed, stopped| RunEnd {
            ended_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            committed: 1,
            skipped: 0,
            failed,
            rebuild: None,
            stopped,
        };
        let request = StopRequest {
            requested_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            by: "someone".into(),
        };
        let ended = |end: &RunEnd, stop| status_of(Liveness::Ended, Some(end), stop);
        assert_eq!(ended(&end(0, true), Some(&request)), "cancelled");
        assert_eq!(ended(&end(1, true), None), "stopped");
        assert_eq!(ended(&end(1, false), None), "failed");
        assert_eq!(ended(&end(0, false), None), "done");
    }

    #[test]
    fn a_report_loads_nothing_and_has_no_script_nor_links() {
        let started = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let record = RunRecord {
            header: header("d1..d2", 2, started),
            end: None,
            attempts: vec![attempt("d1", 1, committed(5), 10)],
            heartbeat: None,
            stop: None,
        };
        let view = RunView::of(&record, None, started + Duration::seconds(1));
        let served = view.page(Shown::Page).unwrap();
        assert!(served.contains("<script") && served.contains("id=\"cancel\""));
        let report = view.page(Shown::Report).unwrap();
        for external in [
            "<script", "<link", "src=", "href=", "@import", "url(", "<button",
        ] {
            assert!(!report.contains(external), "{external} in the report");
        }
    }
}

#[cfg(test)]
mod scale {
    use backfill_engine::history::{Attempt, RunHeader};
    use backfill_engine::slice::SliceKind;
    use chrono::{Duration, TimeZone, Utc};

    use super::*;

    /// A year of hourly slices, every one committed: the page holds a row per day and a
    /// chart of at most `MOST_BARS` columns, and renders at once. The time it takes is
    /// reported, not asserted (shared machines).
    #[test]
    fn a_run_of_a_year_of_hours_renders_a_row_per_day() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/pipelines/hourly_events.toml"
        );
        let pipeline = backfill_engine::pipeline::load(std::path::Path::new(file)).unwrap();
        assert_eq!(pipeline.slices.kind(), SliceKind::Hourly);
        let selection = Selection::range("2023-01-01T00", "2023-12-31T23");
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
                started_by: None,
            },
            end: None,
            attempts,
            heartbeat: None,
            stop: None,
        };
        let timer = std::time::Instant::now();
        let view = RunView::of(&record, Some(&pipeline), started + Duration::seconds(30));
        let html = view.page(Shown::Page).unwrap();
        eprintln!(
            "a year of hourly slices: view and page in {:?}, {} KiB of HTML",
            timer.elapsed(),
            html.len() / 1024
        );
        assert_eq!(view.grid.len(), 365);
        assert!(view.grid.iter().all(|row| row.cells.len() == 24));
        assert_eq!(html.matches("class=\"row\"").count(), 365);
        assert!(view.chart.bars.len() <= MOST_BARS);
    }
}
