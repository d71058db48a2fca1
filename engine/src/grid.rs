//! The gap grid of a pipeline with several dimensions: its cells summarized by dimension
//! (per tenant, how many cells are done, missing, changed or failed; per day, how many
//! of its cells are done), and the holes named briefly (`acme: 2024-03-10..2024-03-14
//! (5 slices) missing`). Pure: it reads slice keys and their states, nothing else.

use indexmap::IndexMap;
use serde::Serialize;

use crate::slice::{spans_by, SliceSpec, Span};

/// The state of a complete cell: the one a hole is not in.
const DONE: &str = "done";

/// How many cells are in each state, the states in the order first met. In JSON:
/// `{"cells": 4, "done": 3, "missing": 1}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub cells: usize,
    pub states: Vec<(String, usize)>,
}

impl Tally {
    fn add(&mut self, state: &str) {
        self.cells += 1;
        match self.states.iter_mut().find(|(s, _)| s == state) {
            Some((_, n)) => *n += 1,
            None => self.states.push((state.to_string(), 1)),
        }
    }

    /// The cells in `state`.
    pub fn of(&self, state: &str) -> usize {
        let found = self.states.iter().find(|(s, _)| s == state);
        found.map_or(0, |(_, n)| *n)
    }

    /// `3 of 4 done, 1 missing`.
    pub fn describe(&self) -> String {
        let mut words = vec![format!("{} of {} done", self.of(DONE), self.cells)];
        let others = self.states.iter().filter(|(state, _)| state != DONE);
        words.extend(others.map(|(state, n)| format!("{n} {state}")));
        words.join(", ")
    }
}

impl Serialize for Tally {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let states = self.states.iter().map(|(state, n)| (state.as_str(), *n));
        serializer.collect_map([("cells", self.cells)].into_iter().chain(states))
    }
}

/// The cells of one combination of keys (`acme × eu`) in one state other than done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hole {
    pub keys: String,
    pub state: String,
    /// Spans of its time slices; empty without a time dimension (the cell itself).
    #[serde(serialize_with = "spans_as_text")]
    pub spans: Vec<Span>,
}

impl std::fmt::Display for Hole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spans = crate::slice::describe_spans(&self.spans);
        match spans.is_empty() {
            true => write!(f, "{}: {}", self.keys, self.state),
            false => write!(f, "{}: {spans} {}", self.keys, self.state),
        }
    }
}

fn spans_as_text<S: serde::Serializer>(spans: &[Span], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(spans.iter().map(Span::to_string))
}

/// A pipeline's cells by dimension, and their holes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grid {
    /// For each key dimension, by name: each of its keys, in the order cut, and its
    /// cells' tally. In JSON: `{"tenant": {"acme": {"cells": 5, "done": 5}}}`.
    #[serde(serialize_with = "by_key_as_maps")]
    pub by_key: Vec<(String, Vec<(String, Tally)>)>,
    /// The time slices in spans of consecutive ones whose cells tally the same.
    #[serde(serialize_with = "time_as_text")]
    pub by_time: Vec<(Span, Tally)>,
    /// Each combination of keys's cells not done, in spans by state.
    pub holes: Vec<Hole>,
}

fn by_key_as_maps<S: serde::Serializer>(
    by_key: &[(String, Vec<(String, Tally)>)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    struct Keys<'a>(&'a [(String, Tally)]);
    impl Serialize for Keys<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(key, tally)| (key, tally)))
        }
    }
    serializer.collect_map(
        by_key
            .iter()
            .map(|(dimension, keys)| (dimension, Keys(keys))),
    )
}

/// In JSON: `[{"first": "2024-01-01", "last": "2024-01-02", "slices": 2, "tally": …}]`.
fn time_as_text<S: serde::Serializer>(
    by_time: &[(Span, Tally)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Times<'a> {
        first: &'a str,
        last: &'a str,
        slices: usize,
        tally: &'a Tally,
    }
    let times = by_time.iter().map(|(span, tally)| Times {
        first: &span.first,
        last: &span.last,
        slices: span.slices,
        tally,
    });
    serializer.collect_seq(times)
}

impl Grid {
    /// The grid of `cells`, slice keys of `spec` with their states, in the order cut.
    /// `None` for a pipeline of one dimension: its slices are their own summary.
    pub fn of<'a>(
        spec: &SliceSpec,
        cells: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<Grid> {
        if spec.dimensions() < 2 {
            return None;
        }
        let mut by_key: Vec<IndexMap<String, Tally>> = vec![IndexMap::new(); spec.keyed.len()];
        let mut by_time: IndexMap<&str, Tally> = IndexMap::new();
        // Each combination of keys's time slices, and their states.
        let mut combinations: IndexMap<String, Vec<(&str, &str)>> = IndexMap::new();
        for (key, state) in cells {
            let (time, keys) = spec.parts_of(key);
            for (tallies, key) in by_key.iter_mut().zip(&keys) {
                tallies.entry(key.clone()).or_default().add(state);
            }
            if let Some(time) = time {
                by_time.entry(time).or_default().add(state);
            }
            let cells = combinations.entry(keys.join(" × ")).or_default();
            cells.push((time.unwrap_or_default(), state));
        }
        Some(Grid {
            by_key: (spec.keyed.iter().zip(by_key))
                .map(|(dimension, tallies)| (dimension.name.clone(), tallies.into_iter().collect()))
                .collect(),
            by_time: runs_of_equal(by_time),
            holes: combinations
                .iter()
                .flat_map(|(keys, cells)| holes(keys, cells))
                .collect(),
        })
    }
}

/// Consecutive time slices whose tallies are equal, as spans.
fn runs_of_equal(by_time: IndexMap<&str, Tally>) -> Vec<(Span, Tally)> {
    let mut runs: Vec<(Span, Tally)> = Vec::new();
    for (time, tally) in by_time {
        match runs.last_mut() {
            Some((span, last)) if *last == tally => {
                span.last = time.to_string();
                span.slices += 1;
            }
            _ => runs.push((
                Span {
                    first: time.to_string(),
                    last: time.to_string(),
                    slices: 1,
                },
                tally,
            )),
        }
    }
    runs
}

/// The holes of one combination of keys: its cells not done, in spans by state.
fn holes(keys: &str, cells: &[(&str, &str)]) -> Vec<Hole> {
    let state_of: std::collections::HashMap<&str, &str> = cells.iter().copied().collect();
    let times = cells.iter().map(|(time, _)| *time);
    let label = |time: &str| state_of.get(time).copied().filter(|state| *state != DONE);
    let by_state = spans_by(times, label);
    let timeless = cells.iter().all(|(time, _)| time.is_empty());
    (by_state.into_iter())
        .map(|(state, spans)| Hole {
            keys: keys.to_string(),
            state: state.to_string(),
            spans: if timeless { vec![] } else { spans },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::{Key, KeyDimension, Selection, SliceKind};

    fn spec(time: bool) -> SliceSpec {
        let mut spec = SliceSpec::of_kind(SliceKind::Daily, vec!["dt".into()], None);
        if !time {
            spec.time = None;
        }
        let dimension = |name: &str, keys: &[&str]| KeyDimension {
            name: name.into(),
            column: name.into(),
            keys: Some(keys.iter().map(|k| Key::new(*k)).collect()),
        };
        spec.keyed = vec![
            dimension("tenant", &["acme", "a/b"]),
            dimension("region", &["eu"]),
        ];
        spec
    }

    #[test]
    fn cells_tally_by_key_and_by_day_and_holes_span_the_days_of_each_combination() {
        let spec = spec(true);
        let slices = spec
            .cut(&Selection::range("2024-01-01", "2024-01-05"))
            .unwrap();
        // a/b is missing on days 2 to 4, and failed on day 5; acme is done.
        let states: Vec<(&str, &str)> = (slices.iter())
            .map(|slice| {
                let state = match (slice.key.contains("a%2Fb"), &slice.key[..10]) {
                    (false, _) | (true, "2024-01-01") => "done",
                    (true, "2024-01-05") => "failed",
                    (true, _) => "missing",
                };
                (slice.key.as_str(), state)
            })
            .collect();
        let grid = Grid::of(&spec, states).unwrap();
        let tenants: Vec<(&str, String)> = (grid.by_key[0].1.iter())
            .map(|(key, tally)| (key.as_str(), tally.describe()))
            .collect();
        assert_eq!(
            tenants,
            [
                ("acme", "5 of 5 done".to_string()),
                ("a/b", "1 of 5 done, 3 missing, 1 failed".to_string())
            ]
        );
        let days: Vec<String> = (grid.by_time.iter())
            .map(|(span, tally)| format!("{span}: {}", tally.describe()))
            .collect();
        assert_eq!(
            days,
            [
                "2024-01-01: 2 of 2 done",
                "2024-01-02..2024-01-04 (3 slices): 1 of 2 done, 1 missing",
                "2024-01-05: 1 of 2 done, 1 failed"
            ]
        );
        let holes: Vec<String> = grid.holes.iter().map(Hole::to_string).collect();
        assert_eq!(
            holes,
            [
                "a/b × eu: 2024-01-02..2024-01-04 (3 slices) missing",
                "a/b × eu: 2024-01-05 failed"
            ]
        );
    }

    #[test]
    fn cells_without_time_are_holes_of_their_own_and_one_dimension_has_no_grid() {
        let spec = spec(false);
        let slices = spec.cut(&Selection::default()).unwrap();
        let states = slices.iter().map(|s| (s.key.as_str(), "missing"));
        let holes: Vec<String> = Grid::of(&spec, states)
            .unwrap()
            .holes
            .iter()
            .map(Hole::to_string)
            .collect();
        assert_eq!(holes, ["acme × eu: missing", "a/b × eu: missing"]);
        let daily = SliceSpec::of_kind(SliceKind::Daily, vec!["dt".into()], None);
        assert_eq!(Grid::of(&daily, [("2024-01-01", "done")]), None);
    }
}
