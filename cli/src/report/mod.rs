//! `backfill report`: one run as a single, self-contained HTML page.
//!
//! Everything is inline (styles, SVG chart), so the file opens in any browser with no
//! network. It shows the run's summary (where it wrote, rows, bytes, table versions, wall
//! time, how a rebuild ended and what to do about failures), a grid of its slices
//! coloured by how they ended with their rows, a duration per slice, and every retry and
//! failure. The page is the template
//! `report.html`, rendered by minijinja with HTML auto-escaping (slice keys and errors may
//! hold `<`, `&` or quotes). Presentation only: the run comes from the engine's history.

use backfill_engine::history::{Liveness, RunEnd, RunHeader, RunRecord};
use backfill_engine::SliceOutcome;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::printer::{self, human_bytes, human_duration, status_words_after};

const TEMPLATE: &str = include_str!("report.html");

/// How each way a slice can end is shown: its CSS class, its legend entry and colour.
/// The grid, the legend and the chart all read this one table, so no status can lack a
/// style or a legend entry.
#[derive(Serialize)]
pub(crate) struct Style {
    class: &'static str,
    label: &'static str,
    colour: &'static str,
}

pub(crate) const STYLES: [Style; 8] = [
    Style {
        class: "committed",
        label: "committed",
        colour: "#2e7d32",
    },
    Style {
        class: "meanwhile",
        label: "committed by another run",
        colour: "#33691e",
    },
    Style {
        class: "staged",
        label: "staged for the swap",
        colour: "#1565c0",
    },
    Style {
        class: "skipped",
        label: "skipped",
        colour: "#546e7a",
    },
    Style {
        class: "failed",
        label: "failed",
        colour: "#c62828",
    },
    Style {
        class: "abandoned",
        label: "abandoned",
        colour: "#b34700",
    },
    Style {
        class: "blocked",
        label: "blocked by an upstream slice",
        colour: "#8d6e63",
    },
    // Only on the run page: a slice of a run that has not finished it yet.
    Style {
        class: "pending",
        label: "not finished yet",
        colour: "#b0bec5",
    },
];

/// Everything the template shows.
#[derive(Serialize)]
struct Page<'a> {
    header: &'a RunHeader,
    destination: &'a str,
    started: String,
    end: Option<&'a RunEnd>,
    ended: Option<String>,
    /// Why there is no end: still running, or killed.
    unfinished: Option<&'static str>,
    facts: Facts,
    /// How a rebuild ended for the table.
    rebuild: Option<String>,
    /// The failed slices, in spans, with what to do next.
    next: Vec<String>,
    /// Every style, for the CSS; the legend shows those of this run's slices.
    styles: &'a [Style],
    legend: Vec<&'a Style>,
    chart: Chart<'a>,
    troubled: Vec<&'a SliceEnd<'a>>,
    slices: &'a [SliceEnd<'a>],
}

/// The run's totals.
#[derive(Serialize)]
struct Facts {
    rows: u64,
    bytes: String,
    /// The table versions the run committed: `4`, or `4..9`.
    versions: Option<String>,
    wall: Option<String>,
}

const TIME: &str = "%Y-%m-%d %H:%M:%S UTC";

/// How a slice ended in the run: its last attempt, and how many attempts it took.
#[derive(Serialize)]
struct SliceEnd<'a> {
    slice: &'a str,
    class: &'static str,
    detail: String,
    /// What the grid's cell says under the slice's key: its rows, or its outcome.
    brief: String,
    attempts: u32,
    took: String,
    #[serde(skip)]
    duration_ms: u64,
    #[serde(skip)]
    failed: bool,
}

/// The duration chart: a horizontal bar per slice, scaled to the slowest one.
#[derive(Serialize)]
struct Chart<'a> {
    label: usize,
    row: usize,
    width: usize,
    height: usize,
    bars: Vec<Bar<'a>>,
}

#[derive(Serialize)]
struct Bar<'a> {
    slice: &'a str,
    y: usize,
    width: f64,
    colour: &'static str,
    took: &'a str,
}

/// The page of `run`, which wrote to `destination`, as of `now`.
pub fn render(run: &RunRecord, destination: &str, now: DateTime<Utc>) -> anyhow::Result<String> {
    let rebuild = run.end.as_ref().and_then(|end| end.rebuild.as_ref());
    let slices = slice_ends(run);
    let troubled: Vec<&SliceEnd> = slices
        .iter()
        .filter(|s| s.attempts > 1 || s.failed)
        .collect();
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)?;
    let page = Page {
        header: &run.header,
        destination,
        started: run.header.started_at.format(TIME).to_string(),
        end: run.end.as_ref(),
        ended: run
            .end
            .as_ref()
            .map(|e| e.ended_at.format(TIME).to_string()),
        unfinished: match run.liveness(now) {
            Liveness::Ended => None,
            Liveness::Running => Some("still running: its heartbeat is recent"),
            Liveness::PresumedDead => Some(
                "killed, or its machine lost (no recent heartbeat): its command finishes the job",
            ),
        },
        facts: facts(run),
        rebuild: rebuild.map(printer::describe_rebuild),
        next: printer::not_committed_of(&run.last_attempts()),
        styles: &STYLES,
        legend: STYLES
            .iter()
            .filter(|style| slices.iter().any(|s| s.class == style.class))
            .collect(),
        chart: chart(&slices),
        troubled,
        slices: &slices,
    };
    let page = env
        .get_template("report.html")?
        .render(minijinja::value::Serde(&page))?;
    Ok(page + "\n")
}

/// Rows and bytes the run wrote (committed, or staged for a swap), the versions it
/// committed and how long it took.
fn facts(run: &RunRecord) -> Facts {
    let last = run.last_attempts();
    let (rows, bytes) = (last.iter().filter_map(|a| a.status.written()))
        .fold((0, 0), |(rows, bytes), (r, b)| (rows + r, bytes + b));
    let mut versions: Vec<u64> = (last.iter())
        .filter_map(|a| match a.status {
            SliceOutcome::Committed { version, .. } => Some(version),
            _ => None,
        })
        .collect();
    if let Some(backfill_engine::RebuildOutcome::Swapped { version, .. }) =
        run.end.as_ref().and_then(|end| end.rebuild.as_ref())
    {
        versions.push(*version);
    }
    let versions = match (versions.iter().min(), versions.iter().max()) {
        (Some(first), Some(last)) if first == last => Some(first.to_string()),
        (Some(first), Some(last)) => Some(format!("{first}..{last}")),
        _ => None,
    };
    let wall = run.end.as_ref().map(|end| {
        let took = (end.ended_at - run.header.started_at).num_milliseconds();
        human_duration(took.max(0) as u64)
    });
    Facts {
        rows,
        bytes: human_bytes(bytes),
        versions,
        wall,
    }
}

/// Each slice's last attempt in the run, in the order slices appear.
fn slice_ends(run: &RunRecord) -> Vec<SliceEnd<'_>> {
    let rebuild = run.end.as_ref().and_then(|end| end.rebuild.as_ref());
    let attempts = run.last_attempts().into_iter();
    attempts
        .map(|attempt| {
            let words = status_words_after(&attempt.status, rebuild);
            let brief = match attempt.status.written() {
                Some((rows, _)) => format!("{rows} rows"),
                None => words.label.to_lowercase(),
            };
            SliceEnd {
                slice: &attempt.slice,
                class: words.class,
                detail: words.to_string(),
                brief,
                attempts: attempt.attempt,
                took: human_duration(attempt.duration_ms),
                duration_ms: attempt.duration_ms,
                failed: matches!(attempt.status, SliceOutcome::Failed { .. }),
            }
        })
        .collect()
}

fn chart<'a>(slices: &'a [SliceEnd]) -> Chart<'a> {
    const ROW: usize = 16;
    const LABEL: usize = 150;
    const WIDTH: usize = 500;
    let slowest = slices
        .iter()
        .map(|s| s.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let bars = slices
        .iter()
        .enumerate()
        .map(|(i, end)| Bar {
            slice: end.slice,
            y: i * ROW,
            width: (end.duration_ms as f64 / slowest as f64 * WIDTH as f64)
                .round()
                .max(1.0),
            colour: style(end.class).colour,
            took: &end.took,
        })
        .collect();
    Chart {
        label: LABEL,
        row: ROW,
        width: LABEL + WIDTH + 80,
        height: slices.len() * ROW + 4,
        bars,
    }
}

fn style(class: &str) -> &'static Style {
    STYLES
        .iter()
        .find(|s| s.class == class)
        .expect("every class describe() gives has a style")
}
