//! `backfill report`: one run as a single, self-contained HTML page.
//!
//! Everything is inline (styles, SVG chart), so the file opens in any browser with no
//! network. It shows the run's summary, a grid of its slices coloured by how they ended,
//! a duration per slice, and every retry and failure. The page is the template
//! `report.html`, rendered by minijinja with HTML auto-escaping (slice keys and errors may
//! hold `<`, `&` or quotes). Presentation only: the run comes from the engine's history.

use backfill_engine::history::{RunEnd, RunHeader, RunRecord};
use backfill_engine::SliceOutcome;
use serde::Serialize;

use crate::printer::{human_duration, status_words};

const TEMPLATE: &str = include_str!("report.html");

/// How each way a slice can end is shown: its CSS class, its legend entry and colour.
/// The grid, the legend and the chart all read this one table, so no status can lack a
/// style or a legend entry.
#[derive(Serialize)]
struct Style {
    class: &'static str,
    label: &'static str,
    colour: &'static str,
}

const STYLES: [Style; 7] = [
    Style {
        class: "committed",
        label: "committed",
        colour: "#2e7d32",
    },
    Style {
        class: "meanwhile",
        label: "committed by another run",
        colour: "#7cb342",
    },
    Style {
        class: "staged",
        label: "staged for the swap",
        colour: "#1565c0",
    },
    Style {
        class: "skipped",
        label: "skipped",
        colour: "#90a4ae",
    },
    Style {
        class: "failed",
        label: "failed",
        colour: "#c62828",
    },
    Style {
        class: "abandoned",
        label: "abandoned",
        colour: "#ef6c00",
    },
    Style {
        class: "blocked",
        label: "blocked by an upstream slice",
        colour: "#8d6e63",
    },
];

/// Everything the template shows.
#[derive(Serialize)]
struct Page<'a> {
    header: &'a RunHeader,
    started: String,
    end: Option<&'a RunEnd>,
    ended: Option<String>,
    styles: &'a [Style],
    chart: Chart<'a>,
    troubled: Vec<&'a SliceEnd<'a>>,
    slices: &'a [SliceEnd<'a>],
}

const TIME: &str = "%Y-%m-%d %H:%M:%S UTC";

/// How a slice ended in the run: its last attempt, and how many attempts it took.
#[derive(Serialize)]
struct SliceEnd<'a> {
    slice: &'a str,
    class: &'static str,
    detail: String,
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

pub fn render(run: &RunRecord) -> anyhow::Result<String> {
    let slices = slice_ends(run);
    let troubled: Vec<&SliceEnd> = slices
        .iter()
        .filter(|s| s.attempts > 1 || s.failed)
        .collect();
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)?;
    let page = Page {
        header: &run.header,
        started: run.header.started_at.format(TIME).to_string(),
        end: run.end.as_ref(),
        ended: run
            .end
            .as_ref()
            .map(|e| e.ended_at.format(TIME).to_string()),
        styles: &STYLES,
        chart: chart(&slices),
        troubled,
        slices: &slices,
    };
    let page = env
        .get_template("report.html")?
        .render(minijinja::value::Serde(&page))?;
    Ok(page + "\n")
}

/// Each slice's last attempt in the run, in the order slices appear.
fn slice_ends(run: &RunRecord) -> Vec<SliceEnd<'_>> {
    let mut ends: Vec<SliceEnd> = Vec::new();
    for attempt in &run.attempts {
        let words = status_words(&attempt.status);
        let end = SliceEnd {
            slice: &attempt.slice,
            class: words.class,
            detail: words.to_string(),
            attempts: attempt.attempt,
            took: human_duration(attempt.duration_ms),
            duration_ms: attempt.duration_ms,
            failed: matches!(attempt.status, SliceOutcome::Failed { .. }),
        };
        match ends.iter_mut().find(|e| e.slice == attempt.slice) {
            Some(earlier) => *earlier = end,
            None => ends.push(end),
        }
    }
    ends
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
