//! The tables' status on the page and in the API: for each served pipeline, the facts
//! `backfill status` prints (done, failed, missing; rows, durations, retries, the last
//! error), as a grid of the slices and a table of those that need a look.

use backfill_engine::slice::SliceSpec;
use backfill_engine::status::{SliceLine, Status};
use backfill_engine::{Backfill, OpenOptions};
use serde::{Deserialize, Serialize};

use super::launch::Served;
use super::Refused;
use crate::html::{self, Cell, GridRow, Style};
use crate::printer::status as shown;

/// Which slices, as the status form and `/api/status` take them; empty fields are not
/// given, and no selection is every slice from the first to the last one committed or
/// attempted, as `status` takes it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct StatusQuery {
    /// A project's environment; the first one served when empty.
    pub env: String,
    /// One of the served pipelines; all of them when empty.
    pub pipeline: String,
    pub start: String,
    pub end: String,
    pub keys: String,
}

/// Each chosen pipeline's status, upstream first.
pub async fn statuses(
    served: &Served,
    query: &StatusQuery,
) -> Result<Vec<(String, Status)>, Refused> {
    let environment = served.environment(&query.env)?;
    let (pipelines, selection) =
        environment.scope(&query.pipeline, &query.start, &query.end, &query.keys)?;
    match &environment.project {
        Some(project) => {
            let chosen = project.clone().select(&pipelines, false)?;
            Ok(chosen.status(selection.as_ref()).await?)
        }
        None => {
            let pipeline = environment.pipelines[0].clone();
            let name = pipeline.name.clone();
            let open = OpenOptions {
                scope: selection.clone(),
                ..OpenOptions::default()
            };
            let backfill = Backfill::open(pipeline, open).await?;
            Ok(vec![(name, backfill.status(selection.as_ref()).await?)])
        }
    }
}

/// One pipeline's part of the status page.
#[derive(Serialize)]
pub struct StatusPart {
    pub pipeline: String,
    pub slices: usize,
    pub notes: Vec<String>,
    pub grid: Vec<GridRow>,
    /// Whether the grid's cells say their slice.
    pub wide: bool,
    pub legend: Vec<&'static Style>,
    /// The slices not done, retried or slow, as `status` prints them.
    pub rows: Vec<[String; 9]>,
}

impl StatusPart {
    pub fn of(pipeline: &str, status: &Status, spec: Option<&SliceSpec>) -> StatusPart {
        let grid = html::rows_of(spec, status.slices.iter().map(cell));
        let wide = html::wide(spec, status.slices.len());
        let needs_a_look = |s: &&SliceLine| s.state != "done" || s.retries > 0 || s.skewed;
        StatusPart {
            pipeline: pipeline.to_string(),
            slices: status.slices.len(),
            notes: shown::notes(status),
            legend: html::legend(grid.iter().flat_map(|r| r.cells.iter().map(|c| c.class))),
            grid,
            wide,
            rows: status
                .slices
                .iter()
                .filter(needs_a_look)
                .map(shown::row)
                .collect(),
        }
    }
}

/// A slice's cell: done in the colour of committed slices.
fn cell(line: &SliceLine) -> Cell {
    let row = shown::row(line);
    let class = match line.state {
        "done" => "committed",
        "failed" => "failed",
        _ => "missing",
    };
    let brief = match line.rows {
        Some(rows) => format!("{rows} rows"),
        None => line.state.to_string(),
    };
    let facts: Vec<String> = (shown::COLUMNS.iter().zip(&row))
        .skip(2)
        .filter(|(_, value)| !value.is_empty())
        .map(|(column, value)| format!("{column} {value}"))
        .collect();
    Cell {
        title: format!("{}: {}; {}", line.slice, line.state, facts.join(", ")),
        slice: line.slice.clone(),
        class,
        brief,
    }
}
