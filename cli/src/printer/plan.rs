//! How a plan is told, by `plan` in a terminal and by the run page's launch form alike:
//! a row per slice, the notes below the table, a project's headings and total.

use backfill_engine::estimate::{Basis, Estimate};
use backfill_engine::ledger::{Committed, OtherWriters};
use backfill_engine::plan::Counts;
use backfill_engine::project::{PipelinePlan, ProjectPlan};
use backfill_engine::sink::rebuild::Replaced;
use backfill_engine::slice::{describe_spans, spans};
use backfill_engine::{Plan, SlicePlan, SliceState};

use super::{count, human_bytes, human_duration, timestamp};

/// A project's pipeline, where it writes and what it runs after.
pub fn heading(pipeline: &PipelinePlan) -> String {
    let reads = match pipeline.upstream.as_slice() {
        [] => String::new(),
        upstream => format!(", after {}", upstream.join(", ")),
    };
    format!(
        "pipeline {} → {}{reads}",
        pipeline.pipeline, pipeline.destination
    )
}

/// What a project's run would compute and read, and about how long it would take.
pub fn total(plan: &ProjectPlan) -> String {
    let total = &plan.total;
    let after = match total.after_upstream {
        0 => String::new(),
        n => format!(
            " ({n} of them after the upstream slices they read, and reading what those write)"
        ),
    };
    let took = match (total.duration_ms, total.unestimated.as_slice()) {
        (Some(ms), []) => format!("; about {}", human_duration(ms)),
        (Some(ms), unknown) => format!(
            "; about {} and what {} take",
            human_duration(ms),
            unknown.join(", ")
        ),
        (None, _) => String::new(),
    };
    format!(
        "environment {}: a run would compute {} slices of {} pipelines{after}, reading {} files, {}{took}",
        plan.environment,
        total.slices,
        plan.pipelines.len(),
        total.files,
        human_bytes(total.bytes)
    )
}

/// The columns of a plan's table, and which of them hold numbers.
pub const COLUMNS: [&str; 7] = ["slice", "state", "run", "files", "bytes", "rows", "detail"];
pub const NUMBERS: [usize; 3] = [3, 4, 5];

/// One slice's row of the plan's table, as `plan` prints it and the run page shows it.
pub fn row(p: &SlicePlan) -> [String; 7] {
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
            timestamp(staged_at)
        ),
    };
    let detail = match (p.empty_sources.as_slice(), p.awaiting_data) {
        ([], _) => detail,
        (empty, true) => format!(
            "no source data yet ({}): a later catch-up runs it {detail}",
            empty.join(", ")
        ),
        (empty, false) => format!("NO SOURCE DATA ({}) {detail}", empty.join(", ")),
    };
    let detail = match p.inputs_checked {
        true => detail,
        false => format!("{detail}; inputs not checked (before the lookback)"),
    };
    let detail = match (&p.problem, &p.unplanned) {
        (_, Some(why)) => format!("NOT PLANNED: {why}; a run plans it again"),
        (Some(problem), None) => format!("CANNOT RUN: {problem} {detail}"),
        (None, None) => detail,
    };
    let (state, detail) = match p.after.as_slice() {
        _ if p.unplanned.is_some() => (p.shown_state(), detail),
        [] => (p.shown_state(), detail),
        [first, rest @ ..] => {
            let more = match rest.len() {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            let now = match detail.is_empty() {
                true => format!("now {}", p.state.name()),
                false => format!("now {}: {detail}", p.state.name()),
            };
            (p.shown_state(), format!("after {first}{more}; {now}"))
        }
    };
    let run = match (&p.state, p.will_run) {
        (SliceState::Staged { .. }, _) => "reuse",
        (_, true) => "yes",
        (_, false) => "no",
    };
    [
        p.slice.key.clone(),
        state.to_string(),
        run.to_string(),
        p.files.len().to_string(),
        human_bytes(p.source_bytes()),
        p.source_rows().map_or("?".to_string(), |r| r.to_string()),
        detail.trim_end().to_string(),
    ]
}

/// What the plan's table adds up to: the counts, what a run would read and take, and a
/// rebuild's swap.
pub fn notes(plan: &Plan) -> Vec<String> {
    let (planned, estimate) = (&plan.slices, &plan.estimate);
    let mut notes = Vec::new();
    let counts = Counts::of(planned);
    let pending = match counts.pending_upstream {
        0 => String::new(),
        n => format!(", {n} pending upstream slices"),
    };
    let staged = match counts.staged {
        0 => String::new(),
        n => format!(", {n} staged"),
    };
    notes.push(format!(
        "{}: {} done, {} missing, {} changed, {} failed{staged}{pending}; a run would run {}",
        count(planned.len(), "slice"),
        counts.done,
        counts.missing,
        counts.changed,
        counts.failed,
        counts.to_compute
    ));
    if estimate.slices > 0 {
        notes.push(format!("a run would read {}", describe_estimate(estimate)));
    }
    let empty = planned
        .iter()
        .filter(|p| p.will_run && !p.empty_sources.is_empty())
        .count();
    if empty > 0 {
        notes.push(format!(
            "{empty} slices to run have no source data: run refuses to start unless --allow-empty"
        ));
    }
    let keys = planned.iter().map(|p| p.slice.key.as_str());
    let waiting: std::collections::HashSet<&str> = (planned.iter())
        .filter(|p| p.awaiting_data)
        .map(|p| p.slice.key.as_str())
        .collect();
    let awaiting = spans(keys, |key| waiting.contains(key));
    if !awaiting.is_empty() {
        notes.push(format!(
            "no source data yet, left for a later catch-up (or --allow-empty): {}",
            describe_spans(&awaiting)
        ));
    }
    let unchecked = planned.iter().filter(|p| !p.inputs_checked).count();
    if unchecked > 0 {
        notes.push(format!(
            "{} before the lookback: done as the log says, their inputs not checked",
            count(unchecked, "slice")
        ));
    }
    if let Some(swap) = &plan.rebuild {
        notes.push(format!("rebuild: {}", describe_swap(swap)));
        if let Some(others) = &swap.other_writers {
            notes.push(format!("other writers: {}", describe_other_writers(others)));
        }
    }
    notes
}

fn describe_estimate(estimate: &Estimate) -> String {
    let rows = estimate
        .rows
        .map_or(String::new(), |rows| format!(", {rows} rows"));
    let read = format!(
        "{}, {}{rows}",
        count(estimate.files as usize, "file"),
        human_bytes(estimate.bytes)
    );
    let (Some(basis), Some(ms)) = (&estimate.basis, estimate.duration_ms) else {
        return read;
    };
    let rate = human_bytes(basis.bytes_per_second() as u64);
    let from = match basis {
        Basis::History { slices, .. } => format!("this pipeline's {slices} committed slices"),
        Basis::Sample { slice, cluster, .. } => match cluster {
            None => format!("a sample run of slice {slice}"),
            Some(cluster) => format!("a sample run of slice {slice} on {cluster}"),
        },
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
        "the swap replaces {} ({}) of table version {version}{schema}",
        count(swap.files as usize, "file"),
        human_bytes(swap.bytes)
    )
}

/// Who else commits to a table a rebuild swaps or a promotion writes, and why it matters.
pub fn describe_other_writers(others: &OtherWriters) -> String {
    let newest = others.latest_at.as_ref().map_or(String::new(), |at| {
        format!(", the newest at {}", timestamp(at))
    });
    format!(
        "{} of the table's last {} commits were made by {}{newest}. Pause them: a rebuild's swap is refused if one commits after the rebuild read the table, and what they commit to a promoted slice's partitions is replaced",
        others.commits,
        others.of_latest,
        others.writers.join(", ")
    )
}

fn committed_detail(committed: &Committed) -> String {
    let when = committed
        .committed_at
        .as_ref()
        .map(timestamp)
        .unwrap_or_default();
    let record = &committed.record;
    let promoted = match &record.promoted_from {
        Some(from) => format!(
            " (promoted from {from}, where run {} computed it)",
            record.run_id
        ),
        None => String::new(),
    };
    format!(
        "committed {when}, {} rows, run {}{promoted}",
        record.rows,
        record.committed_by()
    )
}
