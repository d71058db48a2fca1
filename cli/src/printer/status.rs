//! How the status of a pipeline's slices is told, by `status` in a terminal and by the
//! run page alike: a row per slice, and the notes below the table.

use std::collections::HashSet;

use backfill_engine::history::ScheduleBeat;
use backfill_engine::slice::{describe_spans, spans};
use backfill_engine::status::{SliceLine, Status, SKEW_FACTOR};

use super::{human_bytes, human_duration, or_blank, timestamp};

/// The columns of the status table, and which of them hold numbers.
pub const COLUMNS: [&str; 9] = [
    "slice",
    "state",
    "rows",
    "bytes",
    "computed in",
    "retries",
    "version",
    "run",
    "note",
];

/// One slice's row of the status table, as `status` prints it and the run page shows it.
pub fn row(s: &SliceLine) -> [String; 9] {
    let note = match (&s.last_error, s.skewed) {
        (Some(error), _) => error.clone(),
        (None, true) => format!("skewed: over {SKEW_FACTOR}x the median"),
        (None, false) => String::new(),
    };
    [
        s.slice.clone(),
        s.state.to_string(),
        or_blank(s.rows),
        or_blank(s.bytes.map(human_bytes)),
        or_blank(s.duration_ms.map(human_duration)),
        s.retries.to_string(),
        or_blank(s.version),
        or_blank(s.run_id.clone()),
        note,
    ]
}

/// What the status table adds up to: the counts, and the slices not done in spans.
pub fn notes(status: &Status) -> Vec<String> {
    let median = status
        .median_duration_ms
        .map(|m| format!(", median duration {}", human_duration(m)))
        .unwrap_or_default();
    let skewed = status.slices.iter().filter(|s| s.skewed).count();
    let mut notes = vec![format!(
        "{} done, {} remaining ({} failed, {} missing){median}, {skewed} skewed",
        status.done,
        status.remaining,
        status.failed,
        status.remaining - status.failed
    )];
    notes.extend(status.schedule.as_ref().map(schedule_note));
    if status.grid.is_some() {
        return notes; // the grid names the holes
    }
    let not_done: HashSet<&str> = (status.slices.iter())
        .filter(|s| s.state != "done")
        .map(|s| s.slice.as_str())
        .collect();
    let keys = status.slices.iter().map(|s| s.slice.as_str());
    let not_done = spans(keys, |key| not_done.contains(key));
    if !not_done.is_empty() {
        notes.push(format!("not done: {}", describe_spans(&not_done)));
    }
    notes
}

/// What the schedule keeping the pipeline current is doing, or that it stopped.
fn schedule_note(beat: &ScheduleBeat) -> String {
    let who = format!(
        "backfill schedule {} (pid {} on {})",
        beat.cadence, beat.pid, beat.host
    );
    let last = match (&beat.last_tick, &beat.last_outcome) {
        (Some(tick), Some(outcome)) => {
            let run = beat
                .last_run
                .as_deref()
                .map(|run| format!("run {run}: "))
                .unwrap_or_default();
            format!("last tick at {}: {run}{outcome}", timestamp(tick))
        }
        (Some(tick), None) => format!("ticking since {}", timestamp(tick)),
        (None, _) => "no tick yet".to_string(),
    };
    match (
        beat.stopped_at,
        beat.is_running(chrono::Utc::now()),
        beat.next_tick,
    ) {
        (Some(at), _, _) => format!("{who} stopped at {}; {last}", timestamp(&at)),
        (None, false, _) => format!("{who} is gone (killed, or its machine lost); {last}"),
        (None, true, Some(next)) => format!(
            "kept current by {who}: next tick at {}; {last}",
            timestamp(&next)
        ),
        (None, true, None) => format!("kept current by {who}: {last}"),
    }
}
