//! A pipeline's dimensions ([`SliceSpec`]) and its slices as their cells: every
//! combination of a time slice and one key of each key dimension, except where a key says
//! it has no data (a tenant onboarded on 2024-03-10 has no cells before that day).
//!
//! A slice's key is its time key or its key alone when the pipeline has one dimension
//! (`2024-01-31`, `acme`), as before dimensions existed; with more, its parts joined by `/`,
//! each key dimension named (`2024-01-31/tenant=acme/region=eu`), with `%` and `/` inside
//! a key written `%25` and `%2F` so that any key reads back.

use chrono::{NaiveDateTime, Timelike};

use super::{Selection, Slice, SliceKind, Through, TimeCell, MAX_CELLS};
use crate::error::{Error, Result, Setting};

/// The time dimension: days or hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeDimension {
    /// `Daily` or `Hourly`.
    pub kind: SliceKind,
    /// Its partition columns: the day's, then for hourly slices the hour's.
    pub columns: Vec<String>,
    /// The first slice of the pipeline's history (`[slices] start`, a day or an hour),
    /// where a catch-up starts unless told otherwise.
    pub start: Option<String>,
    /// How long after a slice ends its data is complete (`[slices] delay`): a catch-up
    /// through now leaves out the slices that ended less than this ago.
    pub delay: std::time::Duration,
}

impl TimeDimension {
    /// The key of the last slice that ended, and whose data is complete, by `now`.
    fn last_complete(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let delay = chrono::Duration::from_std(self.delay).unwrap_or(chrono::Duration::MAX);
        let settled = now.naive_utc() - delay;
        let length = self.kind.length();
        // The slice holding `settled` has not ended: the one before it has.
        let current = match self.kind {
            SliceKind::Hourly => settled.date().and_hms_opt(settled.hour(), 0, 0),
            SliceKind::Daily | SliceKind::List => settled.date().and_hms_opt(0, 0, 0),
        };
        let last = current.expect("a whole hour exists") - length;
        match self.kind {
            SliceKind::Hourly => last.format("%Y-%m-%dT%H").to_string(),
            SliceKind::Daily | SliceKind::List => last.date().to_string(),
        }
    }
}

/// A dimension of keys (tenants, regions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDimension {
    /// The SQL variable holding a slice's key, and the name in `--keys NAME=KEY`.
    pub name: String,
    /// The partition column holding its keys.
    pub column: String,
    /// The keys the pipeline file lists, in order; `None` for a list pipeline whose runs
    /// name its keys.
    pub keys: Option<Vec<Key>>,
}

/// A key of a key dimension, and the time it has data for when it says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub value: String,
    /// The first instant the key has cells at, inclusive.
    pub from: Option<NaiveDateTime>,
    /// The instant its cells end, exclusive.
    pub until: Option<NaiveDateTime>,
}

impl Key {
    /// A key with cells at any time.
    pub fn new(value: impl Into<String>) -> Key {
        Key {
            value: value.into(),
            from: None,
            until: None,
        }
    }

    /// Whether the key has a cell in the time slice of `window`; without a time dimension,
    /// always.
    fn has_cell_in(&self, window: Option<(NaiveDateTime, NaiveDateTime)>) -> bool {
        let Some((start, end)) = window else {
            return true;
        };
        self.from.is_none_or(|from| end > from) && self.until.is_none_or(|until| start < until)
    }
}

/// Why `key` cannot be a partition value, if it cannot: any other text can, escaped in
/// folder names as Hive and Delta write them.
pub fn unfit_key(key: &str) -> Option<&'static str> {
    if key.trim().is_empty() {
        Some("is empty")
    } else if key.chars().any(char::is_control) {
        Some("holds a control character (a newline, a tab)")
    } else if key == "__HIVE_DEFAULT_PARTITION__" {
        Some("is how Hive writes a null partition value")
    } else {
        None
    }
}

/// How a pipeline's slices are cut: at most one time dimension and any number of key
/// dimensions, each owning partition columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceSpec {
    pub time: Option<TimeDimension>,
    /// The key dimensions, in the order a slice's key names them.
    pub keyed: Vec<KeyDimension>,
}

/// What `--keys` chose, read against a pipeline's dimensions.
#[derive(Default)]
struct Chosen {
    /// Days or hours.
    times: Vec<String>,
    /// Whole slices, named by their keys.
    cells: Vec<Slice>,
    /// Keys chosen for each key dimension, if any.
    by_dimension: Vec<Option<Vec<String>>>,
}

impl SliceSpec {
    /// The slices of one dimension: a time dimension of `kind` over `columns` or, for a
    /// list, a key dimension named after its column.
    pub fn of_kind(kind: SliceKind, columns: Vec<String>, keys: Option<Vec<Key>>) -> SliceSpec {
        match kind {
            SliceKind::Daily | SliceKind::Hourly => SliceSpec {
                time: Some(TimeDimension {
                    kind,
                    columns,
                    start: None,
                    delay: std::time::Duration::ZERO,
                }),
                keyed: vec![],
            },
            SliceKind::List => SliceSpec {
                time: None,
                keyed: vec![KeyDimension {
                    name: columns[0].clone(),
                    column: columns[0].clone(),
                    keys,
                }],
            },
        }
    }

    /// The kind of the time dimension, or `List` without one.
    pub fn kind(&self) -> SliceKind {
        self.time.as_ref().map_or(SliceKind::List, |time| time.kind)
    }

    /// Every partition column a slice owns: the time dimension's, then each key
    /// dimension's.
    pub fn columns(&self) -> Vec<String> {
        let time = self.time.iter().flat_map(|time| time.columns.iter());
        let keyed = self.keyed.iter().map(|dimension| &dimension.column);
        time.chain(keyed).cloned().collect()
    }

    pub fn dimensions(&self) -> usize {
        usize::from(self.time.is_some()) + self.keyed.len()
    }

    /// The dimensions for people: `daily`, `list`, `daily × tenant × region`.
    pub fn describe(&self) -> String {
        if self.dimensions() == 1 {
            return self.kind().name().to_string();
        }
        let time = self.time.iter().map(|time| time.kind.name());
        let keyed = self.keyed.iter().map(|dimension| dimension.name.as_str());
        time.chain(keyed).collect::<Vec<_>>().join(" × ")
    }

    /// The selection with its catch-up resolved for these slices: the range from the
    /// catch-up's start (or the history's) through its bound, which for `now` is the last
    /// slice complete by then, less the delay. A selection without one is as it was.
    pub fn resolve(&self, selection: &Selection) -> Result<Selection> {
        let Some(catch_up) = selection
            .catch_up
            .as_ref()
            .filter(|_| selection.range.is_none())
        else {
            return Ok(selection.clone());
        };
        let Some(time) = &self.time else {
            return Err(Error::setting(
                &[Setting::Through],
                format!(
                    "{} slices have no days or hours to catch up on; name their keys in {{keys}}",
                    self.describe()
                ),
            ));
        };
        let start = catch_up.start.clone().or_else(|| time.start.clone());
        let start = start.ok_or_else(|| {
            Error::setting(
                &[Setting::Through],
                "catching up needs a first slice: give {start}, or `start` in the pipeline file's [slices]",
            )
        })?;
        let (first, _) = time.kind.bounds(&start, Setting::Start)?;
        let end = match &catch_up.through {
            Through::Now(now) => time.last_complete(*now),
            Through::At(bound) => bound.clone(),
        };
        let (_, last) = time.kind.bounds(&end, Setting::Through)?;
        if last <= first {
            let through = match &catch_up.through {
                Through::Now(now) => format!(
                    "now ({}), whose last complete slice is {end},",
                    now.format("%Y-%m-%dT%H:%M:%SZ")
                ),
                Through::At(_) => end.clone(),
            };
            return Err(Error::setting(
                &[Setting::Through],
                format!("{{through}} {through} is before the first slice {start}: nothing to catch up on"),
            ));
        }
        Ok(Selection {
            range: Some((start, end)),
            ..selection.clone()
        })
    }

    /// Where a resolved catch-up with a lookback starts checking done slices' inputs: the
    /// start of the last `lookback` time slices of its range.
    pub fn checked_from(&self, selection: &Selection) -> Option<NaiveDateTime> {
        let lookback = selection.catch_up.as_ref()?.lookback?;
        let time = self.time.as_ref()?;
        let (_, end) = selection.range.as_ref()?;
        let (_, last) = time.kind.bounds(end, Setting::Through).ok()?;
        Some(last - time.kind.length() * i32::try_from(lookback).unwrap_or(i32::MAX))
    }

    /// Cuts a selection into slices, in order (time first, then each key dimension in
    /// the order of its keys), refusing anything malformed before work starts.
    pub fn cut(&self, selection: &Selection) -> Result<Vec<Slice>> {
        let selection = &self.resolve(selection)?;
        let chosen = self.choose(&selection.keys)?;
        if !chosen.cells.is_empty() {
            let chose_more = selection.range.is_some()
                || !chosen.times.is_empty()
                || chosen.by_dimension.iter().any(Option::is_some);
            if chose_more {
                return Err(Error::setting(
                    &[Setting::Keys],
                    "give whole slice keys or a selection per dimension, not both",
                ));
            }
            let mut cells = chosen.cells;
            cells.sort_by_key(|slice| slice.window);
            return Ok(cells);
        }
        let times = self.times(selection.range.as_ref(), chosen.times, &chosen.by_dimension)?;
        let keys = self.keys_chosen(chosen.by_dimension)?;
        let cells = times.len() * keys.iter().map(Vec::len).product::<usize>();
        if cells > MAX_CELLS {
            return Err(Error::setting(
                &[Setting::Start, Setting::End, Setting::Keys],
                format!("the selection is {cells} slices, more than the {MAX_CELLS} one run or plan can take; narrow it"),
            ));
        }
        let mut slices = Vec::with_capacity(cells);
        for time in &times {
            self.cells_at(time.as_ref(), &keys, &mut slices);
        }
        Ok(slices)
    }

    /// A slice to plan the SQL with when validating: any will do, as planning reads no
    /// data. Its keys are each dimension's first.
    pub fn sample(&self) -> Slice {
        let time = self.time.as_ref().map(|time| {
            let key = match time.kind {
                SliceKind::Hourly => "2000-01-01T00",
                SliceKind::Daily | SliceKind::List => "2000-01-01",
            };
            (time.kind.cell(&time.columns, key, Setting::Keys)).expect("a valid time key")
        });
        let keys: Vec<Key> = (self.keyed.iter())
            .map(|dimension| {
                let first = dimension.keys.as_ref().and_then(|keys| keys.first());
                first.cloned().unwrap_or_else(|| Key::new("sample"))
            })
            .collect();
        self.cell(time.as_ref(), &keys.iter().collect::<Vec<_>>())
    }

    /// Every slice from the first to the last time of the `seen` keys (sorted, each once),
    /// gaps included, over every key; for a list pipeline, the keys of the pipeline file
    /// and then any other key seen. `None` when there is nothing to span.
    pub fn spanning(&self, seen: &[String]) -> Option<Selection> {
        match (&self.time, self.keyed.as_slice()) {
            (Some(_), _) => {
                let times = seen.iter().filter_map(|key| self.time_of(key));
                let (first, last) = (times.clone().min()?, times.max()?);
                Some(Selection::range(first, last))
            }
            (None, [lone]) => {
                let listed = lone.keys.iter().flatten().map(|key| key.value.clone());
                let mut keys: Vec<String> = listed.collect();
                let known: std::collections::HashSet<String> = keys.iter().cloned().collect();
                keys.extend(seen.iter().filter(|key| !known.contains(*key)).cloned());
                (!keys.is_empty()).then(|| Selection::keys(keys))
            }
            (None, _) => Some(Selection::default()),
        }
    }

    /// A slice key's time key, if the pipeline has a time dimension, and its key of each
    /// key dimension.
    pub fn parts_of<'k>(&self, key: &'k str) -> (Option<&'k str>, Vec<String>) {
        if self.dimensions() == 1 {
            return match self.time {
                Some(_) => (Some(key), vec![]),
                None => (None, vec![key.to_string()]),
            };
        }
        let mut parts = key.split('/');
        let time = self.time.as_ref().and_then(|_| parts.next());
        let keys = parts.map(|part| {
            let value = part.split_once('=').map_or(part, |(_, value)| value);
            unescape(value).unwrap_or_else(|| value.to_string())
        });
        (time, keys.collect())
    }

    /// The time key of a slice's key, if the pipeline has a time dimension.
    pub fn time_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        self.time.as_ref()?;
        key.split('/').next()
    }

    /// The keys of a selection that are this pipeline's: those choosing keys of a
    /// dimension it does not have are left out.
    pub(super) fn own_keys(&self, keys: &[String]) -> Vec<String> {
        let mut own = true;
        let mut kept = Vec::new();
        for key in keys {
            if let Some(name) = dimension_named_in(key) {
                own = self.keyed.iter().any(|dimension| dimension.name == name);
            }
            if own {
                kept.push(key.clone());
            }
        }
        kept
    }

    /// Reads `--keys` against the dimensions: `NAME=KEY` chooses keys of dimension NAME,
    /// and each key after it more of the same; otherwise a key is a day or an hour, a key
    /// of a list pipeline, or a whole slice key.
    fn choose(&self, keys: &[String]) -> Result<Chosen> {
        let mut chosen = Chosen {
            by_dimension: vec![None; self.keyed.len()],
            ..Chosen::default()
        };
        let lone_list = self.time.is_none() && self.keyed.len() == 1;
        let mut current = lone_list.then_some(0);
        for key in keys {
            // A whole slice key holds a `/`; so may a key chosen for a dimension.
            let whole = self.dimensions() > 1 && key.contains('/');
            if let Some(slice) = whole.then(|| self.slice_of(key).ok()).flatten() {
                chosen.cells.push(slice);
                continue;
            }
            let named = dimension_named_in(key).map(|name| {
                let index = self.keyed.iter().position(|d| d.name == name);
                (name, index)
            });
            let key = match named {
                Some((_, Some(index))) => {
                    current = Some(index);
                    &key[self.keyed[index].name.len() + 1..]
                }
                Some((name, None)) if !lone_list && !whole => {
                    return Err(Error::setting(
                        &[Setting::Keys],
                        format!(
                            "`{key}`: these slices have no dimension `{name}`; they are {}",
                            self.describe()
                        ),
                    ));
                }
                _ => key,
            };
            match current {
                Some(index) => {
                    let dimension = chosen.by_dimension[index].get_or_insert_default();
                    dimension.push(key.to_string());
                }
                None if self.keyed.is_empty() || self.is_time(key) => {
                    chosen.times.push(key.to_string())
                }
                None if whole || key.contains('=') => chosen.cells.push(self.slice_of(key)?),
                None => {
                    let dimension = self.keyed.first().map_or("NAME", |d| d.name.as_str());
                    return Err(Error::setting(
                        &[Setting::Keys],
                        format!(
                            "`{key}`: name the dimension it is a key of, as `{dimension}={key}`"
                        ),
                    ));
                }
            }
        }
        Ok(chosen)
    }

    /// Whether `key` is a day or an hour of the time dimension.
    fn is_time(&self, key: &str) -> bool {
        let cell = |time: &TimeDimension| time.kind.cell(&time.columns, key, Setting::Keys);
        self.time.as_ref().is_some_and(|time| cell(time).is_ok())
    }

    /// The time slices of a range or of days or hours named, or the one cell of no time
    /// without a time dimension.
    fn times(
        &self,
        range: Option<&(String, String)>,
        keys: Vec<String>,
        by_dimension: &[Option<Vec<String>>],
    ) -> Result<Vec<Option<TimeCell>>> {
        let Some(time) = &self.time else {
            if range.is_some() {
                return Err(Error::setting(
                    &[Setting::Start, Setting::End],
                    "list slices take keys ({keys}, or `keys`/`manifest` in the pipeline file), not a range",
                ));
            }
            return Ok(vec![None]);
        };
        match (range, keys.is_empty()) {
            (Some((start, end)), true) => {
                let cells = time.kind.cut_range(&time.columns, start, end)?;
                Ok(cells.into_iter().map(Some).collect())
            }
            (Some(_), false) => Err(Error::setting(
                &[Setting::Start, Setting::End, Setting::Keys],
                "give a range ({start} and {end}) or times in {keys}, not both",
            )),
            (None, false) => {
                let mut cells: Vec<TimeCell> = Vec::with_capacity(keys.len());
                for key in &keys {
                    let cell = time.kind.cell(&time.columns, key, Setting::Keys)?;
                    if cells.iter().any(|c| c.key == cell.key) {
                        return Err(given_twice(key));
                    }
                    cells.push(cell);
                }
                // Time slices run in time order whatever order their keys were given in.
                cells.sort_by_key(|cell| cell.window);
                Ok(cells.into_iter().map(Some).collect())
            }
            (None, true) => {
                let chosen = (self.keyed.iter().zip(by_dimension))
                    .filter(|(_, chosen)| chosen.is_some())
                    .map(|(dimension, _)| dimension.name.as_str());
                let chosen: Vec<&str> = chosen.collect();
                Err(match chosen.is_empty() {
                    true => Error::setting(
                        &[Setting::Keys],
                        "no slices selected: give {start} and {end} or {keys}",
                    ),
                    false => Error::setting(
                        &[Setting::Start, Setting::End, Setting::Keys],
                        format!("which days or hours of {}? give {{start}} and {{end}}, or times in {{keys}}", chosen.join(" and ")),
                    ),
                })
            }
        }
    }

    /// The keys of each key dimension a selection takes: those chosen, or all of them.
    fn keys_chosen(&self, by_dimension: Vec<Option<Vec<String>>>) -> Result<Vec<Vec<Key>>> {
        let dimensions = self.keyed.iter().zip(by_dimension);
        (dimensions.map(|(dimension, chosen)| match (chosen, &dimension.keys) {
            (None, Some(keys)) => Ok(keys.clone()),
            (None, None) => Err(Error::setting(
                &[Setting::Keys],
                "no slices selected: give {keys}, or keys in the pipeline file",
            )),
            (Some(chosen), _) => {
                let mut keys: Vec<Key> = Vec::with_capacity(chosen.len());
                for value in chosen {
                    if keys.iter().any(|key| key.value == value) {
                        return Err(given_twice(&value));
                    }
                    keys.push(self.key_of(dimension, &value)?);
                }
                Ok(keys)
            }
        }))
        .collect()
    }

    /// The key `value` of `dimension`: one the pipeline file lists, or for a list pipeline
    /// any key that can be a partition value.
    fn key_of(&self, dimension: &KeyDimension, value: &str) -> Result<Key> {
        let listed = dimension.keys.iter().flatten();
        if let Some(key) = listed.clone().find(|key| key.value == value) {
            return Ok(key.clone());
        }
        if let Some(why) = unfit_key(value) {
            return Err(Error::setting(
                &[Setting::Keys],
                format!("key {value:?} {why}, so it cannot be a partition value"),
            ));
        }
        if dimension.keys.is_none() || self.dimensions() == 1 {
            return Ok(Key::new(value));
        }
        let known: Vec<String> = listed
            .take(5)
            .map(|key| format!("{:?}", key.value))
            .collect();
        let more = match dimension.keys.as_ref().map_or(0, Vec::len) > known.len() {
            true => ", …",
            false => "",
        };
        Err(Error::setting(
            &[Setting::Keys],
            format!(
                "{} has no key {value:?}; its keys are {}{more}",
                dimension.name,
                known.join(", ")
            ),
        ))
    }

    /// The slice a whole key names (`2024-01-31/tenant=acme`).
    fn slice_of(&self, key: &str) -> Result<Slice> {
        let unknown = || {
            Error::setting(
                &[Setting::Keys],
                format!(
                    "`{key}` is not a slice of this pipeline ({}): name one as `{}`, or choose keys of a dimension as `{}=KEY`",
                    self.describe(),
                    self.sample().key,
                    self.keyed.first().map_or("NAME", |d| d.name.as_str()),
                ),
            )
        };
        let mut parts = key.split('/');
        let time = match &self.time {
            Some(time) => {
                let part = parts.next().ok_or_else(unknown)?;
                Some(
                    time.kind
                        .cell(&time.columns, part, Setting::Keys)
                        .map_err(|_| unknown())?,
                )
            }
            None => None,
        };
        let mut keys = Vec::with_capacity(self.keyed.len());
        for dimension in &self.keyed {
            let part = parts.next().and_then(|part| part.split_once('='));
            let (_, value) = part
                .filter(|(name, _)| *name == dimension.name)
                .ok_or_else(unknown)?;
            let value = unescape(value).ok_or_else(unknown)?;
            keys.push(self.key_of(dimension, &value)?);
        }
        if parts.next().is_some() {
            return Err(unknown());
        }
        let window = time.as_ref().map(|time| time.window);
        if let Some(outside) = keys.iter().find(|k| !k.has_cell_in(window)) {
            return Err(Error::setting(
                &[Setting::Keys],
                format!(
                    "`{key}` is not a slice: {:?} has no data then",
                    outside.value
                ),
            ));
        }
        Ok(self.cell(time.as_ref(), &keys.iter().collect::<Vec<_>>()))
    }

    /// Adds the cells of one time slice (or of no time) to `slices`: every combination of
    /// the keys that have data then.
    fn cells_at(&self, time: Option<&TimeCell>, keys: &[Vec<Key>], slices: &mut Vec<Slice>) {
        let window = time.map(|time| time.window);
        let open: Vec<Vec<&Key>> = (keys.iter())
            .map(|keys| keys.iter().filter(|key| key.has_cell_in(window)).collect())
            .collect();
        if open.iter().any(Vec::is_empty) {
            return;
        }
        // An odometer over the dimensions, the last turning fastest.
        let mut at = vec![0; open.len()];
        loop {
            let picked: Vec<&Key> = at.iter().zip(&open).map(|(i, keys)| keys[*i]).collect();
            slices.push(self.cell(time, &picked));
            let mut dimension = open.len();
            loop {
                if dimension == 0 {
                    return;
                }
                dimension -= 1;
                at[dimension] += 1;
                if at[dimension] < open[dimension].len() {
                    break;
                }
                at[dimension] = 0;
            }
        }
    }

    /// The slice of a time slice (or none) and one key of each key dimension.
    fn cell(&self, time: Option<&TimeCell>, keys: &[&Key]) -> Slice {
        let mut partition = time.map_or_else(Vec::new, |time| time.partition.clone());
        let mut parts: Vec<String> = time.iter().map(|time| time.key.clone()).collect();
        let mut named = Vec::with_capacity(keys.len());
        for (dimension, key) in self.keyed.iter().zip(keys) {
            partition.push((dimension.column.clone(), key.value.clone()));
            named.push((dimension.name.clone(), key.value.clone()));
            parts.push(match self.dimensions() {
                1 => key.value.clone(),
                _ => format!("{}={}", dimension.name, escape(&key.value)),
            });
        }
        Slice {
            key: parts.join("/"),
            partition,
            window: time.map(|time| time.window),
            keys: named,
        }
    }
}

/// The dimension a `NAME=KEY` item of `--keys` names, if it is one.
pub(super) fn dimension_named_in(key: &str) -> Option<&str> {
    let (name, _) = key.split_once('=')?;
    let identifier =
        !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    identifier.then_some(name)
}

fn given_twice(key: &str) -> Error {
    Error::setting(&[Setting::Keys], format!("key {key:?} is given twice"))
}

/// A key as a part of a slice's key: `%` and `/` escaped, so the parts split apart.
fn escape(key: &str) -> String {
    key.replace('%', "%25").replace('/', "%2F")
}

fn unescape(part: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .ok()?;
    Some(decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn day(text: &str) -> NaiveDateTime {
        let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap();
        day.and_hms_opt(0, 0, 0).unwrap()
    }

    fn dimension(name: &str, keys: Vec<Key>) -> KeyDimension {
        KeyDimension {
            name: name.into(),
            column: format!("{name}_id"),
            keys: Some(keys),
        }
    }

    /// Days × tenants × regions; `late` starts on 2024-01-02, `gone` ends on 2024-01-01.
    fn spec() -> SliceSpec {
        let late = Key {
            from: Some(day("2024-01-02")),
            ..Key::new("late")
        };
        let gone = Key {
            until: Some(day("2024-01-02")),
            ..Key::new("gone")
        };
        let mut day_spec = SliceSpec::of_kind(SliceKind::Daily, vec!["dt".into()], None);
        day_spec.keyed = vec![
            dimension("tenant", vec![Key::new("acme"), late, gone]),
            dimension("region", vec![Key::new("eu"), Key::new("a/b %")]),
        ];
        day_spec
    }

    fn keys(slices: &[Slice]) -> Vec<&str> {
        slices.iter().map(|slice| slice.key.as_str()).collect()
    }

    fn selection(range: Option<(&str, &str)>, keys: &[&str]) -> Selection {
        Selection {
            range: range.map(|(start, end)| (start.to_string(), end.to_string())),
            keys: keys.iter().map(|key| key.to_string()).collect(),
            catch_up: None,
        }
    }

    #[test]
    fn cells_are_every_combination_in_time_order_but_where_a_key_has_no_data() {
        let slices = spec()
            .cut(&Selection::range("2024-01-01", "2024-01-02"))
            .unwrap();
        assert_eq!(
            keys(&slices),
            [
                "2024-01-01/tenant=acme/region=eu",
                "2024-01-01/tenant=acme/region=a%2Fb %25",
                "2024-01-01/tenant=gone/region=eu",
                "2024-01-01/tenant=gone/region=a%2Fb %25",
                "2024-01-02/tenant=acme/region=eu",
                "2024-01-02/tenant=acme/region=a%2Fb %25",
                "2024-01-02/tenant=late/region=eu",
                "2024-01-02/tenant=late/region=a%2Fb %25",
            ]
        );
        let cell = &slices[1];
        assert_eq!(
            cell.partition,
            [
                ("dt", "2024-01-01"),
                ("tenant_id", "acme"),
                ("region_id", "a/b %")
            ]
            .map(|(c, v)| (c.to_string(), v.to_string()))
        );
        let variables = cell.variables();
        assert!(
            variables.contains(&("tenant", "acme".into())),
            "{variables:?}"
        );
        assert!(
            variables.contains(&("region", "a/b %".into())),
            "{variables:?}"
        );
        assert!(
            variables.contains(&("start_date", "2024-01-01".into())),
            "{variables:?}"
        );
    }

    #[test]
    fn keys_chosen_per_dimension_leave_the_others_whole() {
        let spec = spec();
        let chosen = |keys: &[&str]| {
            let slices = spec.cut(&selection(Some(("2024-01-01", "2024-01-03")), keys));
            slices.map(|slices| slices.into_iter().map(|s| s.key).collect::<Vec<_>>())
        };
        assert_eq!(
            chosen(&["tenant=late", "region=eu"]).unwrap(),
            [
                "2024-01-02/tenant=late/region=eu",
                "2024-01-03/tenant=late/region=eu"
            ]
        );
        // A key after a dimension's first is another of the same dimension.
        assert_eq!(
            chosen(&["tenant=acme", "gone", "region=a/b %"])
                .unwrap()
                .len(),
            4
        );
        let refused = |keys: &[&str]| chosen(keys).unwrap_err().to_string();
        assert_eq!(
            refused(&["regoin=eu"]),
            "keys: `regoin=eu`: these slices have no dimension `regoin`; they are daily × tenant × region"
        );
        assert_eq!(
            refused(&["tenant=acmee"]),
            "keys: tenant has no key \"acmee\"; its keys are \"acme\", \"late\", \"gone\""
        );
        assert_eq!(
            refused(&["acme"]),
            "keys: `acme`: name the dimension it is a key of, as `tenant=acme`"
        );
        assert_eq!(
            refused(&["tenant=acme", "acme"]),
            "keys: key \"acme\" is given twice"
        );
        assert!(refused(&["2024-01-01"]).contains("not both"));
        let undated = spec.cut(&selection(None, &["tenant=acme"])).unwrap_err();
        assert_eq!(
            undated.to_string(),
            "start/end/keys: which days or hours of tenant? give start and end, or times in keys"
        );
    }

    #[test]
    fn a_whole_slice_key_reads_back_and_names_one_cell() {
        let spec = spec();
        let all = spec
            .cut(&Selection::range("2024-01-01", "2024-01-02"))
            .unwrap();
        let named: Vec<String> = all.iter().rev().map(|slice| slice.key.clone()).collect();
        let read = spec.cut(&Selection::keys(named)).unwrap();
        assert_eq!(keys(&read).len(), all.len());
        assert!(read.iter().all(|slice| all.contains(slice)));
        assert_eq!(
            read[0].window, all[0].window,
            "time order, whatever order given"
        );
        let refused = |key: &str| {
            spec.cut(&Selection::keys(vec![key.into()]))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("2024-01-01/tenant=late/region=eu"),
            "keys: `2024-01-01/tenant=late/region=eu` is not a slice: \"late\" has no data then"
        );
        assert!(refused("2024-01-01/region=eu/tenant=acme").contains("is not a slice of this pipeline (daily × tenant × region): name one as `2000-01-01/tenant=acme/region=eu`"));
    }

    #[test]
    fn a_selection_leaves_a_pipeline_the_keys_of_dimensions_it_does_not_have() {
        let daily = SliceSpec::of_kind(SliceKind::Daily, vec!["dt".into()], None);
        let chosen = selection(
            Some(("2024-01-01", "2024-01-02")),
            &["tenant=acme", "gone", "region=eu"],
        );
        assert_eq!(
            chosen.for_spec(&daily),
            Selection::range("2024-01-01", "2024-01-02")
        );
        let mut tenants = daily.clone();
        tenants.keyed = vec![dimension("tenant", vec![Key::new("acme")])];
        assert_eq!(chosen.for_spec(&tenants).keys, ["tenant=acme", "gone"]);
        assert_eq!(chosen.for_spec(&spec()), chosen);
    }

    fn catch_up(through: Through, lookback: Option<u32>) -> Selection {
        Selection {
            catch_up: Some(crate::slice::CatchUp {
                start: None,
                through,
                lookback,
            }),
            ..Selection::default()
        }
    }

    fn now(at: &str) -> Through {
        Through::Now(at.parse().unwrap())
    }

    #[test]
    fn a_catch_up_through_now_ends_at_the_last_slice_complete_before_the_delay() {
        let mut hourly =
            SliceSpec::of_kind(SliceKind::Hourly, vec!["dt".into(), "hr".into()], None);
        let time = hourly.time.as_mut().unwrap();
        time.start = Some("2024-01-10".into());
        time.delay = std::time::Duration::from_secs(90 * 60);
        let range = |through| hourly.resolve(&catch_up(through, None)).unwrap().range;
        let hours = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        // 12:29 less 90 minutes is 10:59: the hour of 10 has not ended, that of 09 has.
        assert_eq!(
            range(now("2024-01-11T12:29:00Z")),
            hours("2024-01-10", "2024-01-11T09")
        );
        assert_eq!(
            range(now("2024-01-11T12:30:00Z")),
            hours("2024-01-10", "2024-01-11T10")
        );
        assert_eq!(
            range(Through::At("2024-01-12".into())),
            hours("2024-01-10", "2024-01-12")
        );
        let cut = hourly
            .cut(&catch_up(now("2024-01-11T12:30:00Z"), None))
            .unwrap();
        assert_eq!(cut.len(), 24 + 11);

        let resolved = hourly
            .resolve(&catch_up(now("2024-01-11T12:30:00Z"), Some(3)))
            .unwrap();
        let from = hourly.checked_from(&resolved).unwrap();
        assert_eq!(
            from.to_string(),
            "2024-01-11 08:00:00",
            "hours 08, 09 and 10"
        );

        let early = hourly.resolve(&catch_up(now("2024-01-10T01:00:00Z"), None));
        assert_eq!(
            early.unwrap_err().to_string(),
            "through: through now (2024-01-10T01:00:00Z), whose last complete slice is 2024-01-09T22, is before the first slice 2024-01-10: nothing to catch up on"
        );
        let list = SliceSpec::of_kind(SliceKind::List, vec!["tenant".into()], None);
        let refused = list.resolve(&catch_up(now("2024-01-10T01:00:00Z"), None));
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("list slices have no days or hours to catch up on"));
    }

    #[test]
    fn the_slices_seen_span_their_times_over_every_key() {
        let seen = [
            "2024-01-02/tenant=acme/region=eu",
            "2024-01-05/tenant=late/region=eu",
        ];
        let seen = seen.map(String::from);
        let spanning = spec().spanning(&seen).unwrap();
        assert_eq!(spanning, Selection::range("2024-01-02", "2024-01-05"));
        assert_eq!(spec().cut(&spanning).unwrap().len(), 4 * 2 * 2);
    }
}
