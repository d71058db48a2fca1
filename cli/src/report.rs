//! `backfill report`: one run as a single, self-contained HTML page.
//!
//! Everything is inline (styles, SVG chart), so the file opens in any browser with no
//! network. It shows the run's summary, a grid of its slices coloured by how they ended,
//! a duration per slice, and every retry and failure. Presentation only: the run comes
//! from the engine's history.

use std::fmt::Write;

use backfill_engine::history::RunRecord;
use backfill_engine::SliceStatus;

/// How a slice ended in the run: its last attempt, and how many attempts it took.
struct SliceEnd<'a> {
    slice: &'a str,
    status: &'a SliceStatus,
    attempts: u32,
    duration_ms: u64,
}

pub fn render(run: &RunRecord) -> String {
    let slices = slice_ends(run);
    let header = &run.header;
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>backfill run {id}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 1.6em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 4px; }}
.cell {{ width: 92px; padding: 4px; border-radius: 4px; font-size: 11px; color: #fff; }}
.committed {{ background: #2e7d32; }} .skipped {{ background: #90a4ae; }}
.failed {{ background: #c62828; }} .abandoned {{ background: #ef6c00; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; text-align: left; border-bottom: 1px solid #ddd; }}
.legend span {{ display: inline-block; padding: 2px 8px; margin-right: 6px; border-radius: 3px; color: #fff; }}
</style></head><body>
<h1>Run {id} of {pipeline}</h1>
<p>Selection {selection} ({count} slices), started {started}, reprocess {reprocess}, concurrency {concurrency}, retries {retries}.</p>
"#,
        id = escape(&header.run_id),
        pipeline = escape(&header.pipeline),
        selection = escape(&header.selection),
        count = header.slices,
        started = header.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        reprocess = escape(&header.reprocess.join(", ")),
        concurrency = header.concurrency,
        retries = header.retries,
    );
    let _ = match &run.end {
        Some(end) => writeln!(
            html,
            "<p><b>{} committed, {} skipped, {} failed</b>, ended {}.</p>",
            end.committed,
            end.skipped,
            end.failed,
            end.ended_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        None => writeln!(
            html,
            "<p><b>The run did not finish</b> (still running, or interrupted).</p>"
        ),
    };

    html.push_str("<h2>Slices</h2>\n<p class=\"legend\"><span class=\"committed\">committed</span><span class=\"skipped\">skipped</span><span class=\"failed\">failed</span><span class=\"abandoned\">abandoned</span></p>\n<div class=\"grid\">\n");
    for end in &slices {
        let (class, detail) = describe(end.status);
        let _ = writeln!(
            html,
            "<div class=\"cell {class}\" title=\"{}\">{}<br>{}</div>",
            escape(&detail),
            escape(end.slice),
            human_ms(end.duration_ms)
        );
    }
    html.push_str("</div>\n<h2>Duration per slice</h2>\n");
    html.push_str(&duration_chart(&slices));

    let troubled: Vec<_> = slices
        .iter()
        .filter(|s| s.attempts > 1 || matches!(s.status, SliceStatus::Failed { .. }))
        .collect();
    html.push_str("<h2>Retries and failures</h2>\n");
    if troubled.is_empty() {
        html.push_str("<p>None: every slice ended on its first attempt.</p>\n");
    } else {
        html.push_str("<table><tr><th>slice</th><th>attempts</th><th>outcome</th></tr>\n");
        for end in troubled {
            let (_, detail) = describe(end.status);
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(end.slice),
                end.attempts,
                escape(&detail)
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("</body></html>\n");
    html
}

/// Each slice's last attempt in the run, in the order slices appear.
fn slice_ends(run: &RunRecord) -> Vec<SliceEnd<'_>> {
    let mut ends: Vec<SliceEnd> = Vec::new();
    for attempt in &run.attempts {
        match ends.iter_mut().find(|e| e.slice == attempt.slice) {
            Some(end) => {
                end.status = &attempt.status;
                end.attempts = attempt.attempt;
                end.duration_ms = attempt.duration_ms;
            }
            None => ends.push(SliceEnd {
                slice: &attempt.slice,
                status: &attempt.status,
                attempts: attempt.attempt,
                duration_ms: attempt.duration_ms,
            }),
        }
    }
    ends
}

fn describe(status: &SliceStatus) -> (&'static str, String) {
    match status {
        SliceStatus::Committed { version, rows, .. } => (
            "committed",
            format!("committed {rows} rows in version {version}"),
        ),
        SliceStatus::Staged { rows, .. } => (
            "staged",
            format!("staged {rows} rows for the rebuild's swap"),
        ),
        SliceStatus::Skipped { state } => ("skipped", format!("skipped ({state})")),
        SliceStatus::CommittedMeanwhile { by_run, version } => (
            "skipped",
            format!("committed meanwhile by run {by_run} in version {version}"),
        ),
        SliceStatus::Failed { error, .. } => ("failed", error.clone()),
        SliceStatus::Abandoned => (
            "abandoned",
            "abandoned when the run was stopped".to_string(),
        ),
    }
}

/// A horizontal bar per slice, scaled to the slowest one, as inline SVG.
fn duration_chart(slices: &[SliceEnd]) -> String {
    const ROW: usize = 16;
    const LABEL: usize = 150;
    const WIDTH: usize = 500;
    let slowest = slices
        .iter()
        .map(|s| s.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-size=\"11\">\n",
        LABEL + WIDTH + 80,
        slices.len() * ROW + 4
    );
    for (i, end) in slices.iter().enumerate() {
        let (class, _) = describe(end.status);
        let y = i * ROW;
        let width = (end.duration_ms as f64 / slowest as f64 * WIDTH as f64)
            .round()
            .max(1.0);
        let colour = match class {
            "committed" => "#2e7d32",
            "skipped" => "#90a4ae",
            "failed" => "#c62828",
            _ => "#ef6c00",
        };
        let _ = writeln!(
            svg,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{LABEL}\" y=\"{}\" width=\"{width}\" height=\"{}\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            y + 12,
            escape(end.slice),
            y + 2,
            ROW - 4,
            LABEL as f64 + width + 6.0,
            y + 12,
            human_ms(end.duration_ms)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// Escapes text for HTML: slice keys and errors may hold `<`, `&` or quotes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
