//! How a gap grid is told, by `plan` and `status` alike: each key dimension's keys with
//! their cells by state, the time slices in spans that tally the same, and the holes.

use backfill_engine::grid::{Grid, Tally};
use comfy_table::{CellAlignment, Table};

/// The most lines of time spans, and of holes, printed: `--json` has every cell.
const MOST_LINES: usize = 40;

/// A key dimension's table: a row per key, its cells, then a column per state (done
/// first).
pub fn key_table(dimension: &str, keys: &[(String, Tally)]) -> Table {
    let mut states: Vec<&str> = vec!["done"];
    for (_, tally) in keys {
        for (state, _) in &tally.states {
            if !states.contains(&state.as_str()) {
                states.push(state);
            }
        }
    }
    let header = [dimension, "cells"]
        .into_iter()
        .chain(states.iter().copied());
    let mut table = super::table_of(header.collect::<Vec<_>>());
    for (key, tally) in keys {
        let counts = states.iter().map(|state| tally.of(state).to_string());
        let row = [key.clone(), tally.cells.to_string()]
            .into_iter()
            .chain(counts);
        table.add_row(row.collect::<Vec<_>>());
    }
    for column in table.column_iter_mut().skip(1) {
        column.set_cell_alignment(CellAlignment::Right);
    }
    table
}

/// The lines below the key tables: time spans and holes, at most [`MOST_LINES`] each.
pub fn lines(grid: &Grid) -> Vec<String> {
    let mut lines = Vec::new();
    let times = grid
        .by_time
        .iter()
        .map(|(span, tally)| format!("  {span}: {}", tally.describe()));
    if !grid.by_time.is_empty() {
        lines.push("by time:".to_string());
        lines.extend(at_most(times.collect()));
    }
    let holes: Vec<String> = grid.holes.iter().map(|hole| format!("  {hole}")).collect();
    match holes.is_empty() {
        true => lines.push("no holes: every cell is done".to_string()),
        false => {
            lines.push("holes:".to_string());
            lines.extend(at_most(holes));
        }
    }
    lines
}

fn at_most(mut lines: Vec<String>) -> Vec<String> {
    if lines.len() > MOST_LINES {
        let more = lines.len() - MOST_LINES;
        lines.truncate(MOST_LINES);
        lines.push(format!("  … and {more} more (--json lists every cell)"));
    }
    lines
}

/// Prints the grid: a table per key dimension, then its lines.
pub fn print(grid: &Grid) {
    for (dimension, keys) in &grid.by_key {
        super::print_table(&key_table(dimension, keys));
    }
    for line in lines(grid) {
        println!("{line}");
    }
}
