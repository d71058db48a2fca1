//! What the run page shows, as data (`RunView`, also the API's answer) and as HTML
//! (minijinja templates with auto-escaping; the page's script is a few lines, inline).

use std::collections::HashMap;

use backfill_engine::history::{Liveness, RunEnd, RunEntry, RunRecord, StopRequest};
use backfill_engine::SliceOutcome;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::printer::{self, human_bytes, human_duration, status_words_after};
use crate::report::STYLES;

const RUNS: &str = include_str!("runs.html");
const RUN: &str = include_str!("run.html");

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
    /// What to do about failed slices, in spans.
    pub next: Vec<String>,
    pub rebuild: Option<String>,
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
}

impl RunView {
    pub fn of(record: &RunRecord, now: DateTime<Utc>) -> RunView {
        let last = record.last_attempts();
        let count =
            |wanted: fn(&SliceOutcome) -> bool| last.iter().filter(|a| wanted(&a.status)).count();
        let (mut rows, mut bytes) = (0, 0);
        for attempt in &last {
            if let SliceOutcome::Committed {
                rows: r, bytes: b, ..
            }
            | SliceOutcome::Staged {
                rows: r, bytes: b, ..
            } = attempt.status
            {
                (rows, bytes) = (rows + r, bytes + b);
            }
        }
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
        let outcomes: HashMap<&str, &SliceOutcome> = (last.iter())
            .map(|a| (a.slice.as_str(), &a.status))
            .collect();
        let keys = last.iter().map(|a| a.slice.as_str());
        let rebuild = record.end.as_ref().and_then(|end| end.rebuild.as_ref());
        RunView {
            status: status_of(
                record.liveness(now),
                record.end.as_ref(),
                record.stop.as_ref(),
            ),
            next: printer::not_committed(keys, |key| outcomes[key]),
            rebuild: rebuild.map(printer::describe_rebuild),
            slices: last
                .iter()
                .map(|a| {
                    let words = status_words_after(&a.status, rebuild);
                    SliceView {
                        slice: a.slice.clone(),
                        class: words.class,
                        detail: words.to_string(),
                        attempt: a.attempt,
                        took: human_duration(a.duration_ms),
                    }
                })
                .collect(),
            counts,
            record: record.clone(),
        }
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

fn render(template: &str, page: &impl Serialize) -> anyhow::Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_template("page.html", template)?;
    let html = env
        .get_template("page.html")?
        .render(minijinja::value::Serde(page))?;
    Ok(html)
}
