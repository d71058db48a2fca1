//! Cutting a run's selection into [`Slice`]s.
//!
//! This module is pure: no IO, no clock. A slice is the unit of work, of retry and of
//! commit; its key names it in the Delta log, its partition values say which source and
//! destination partitions it owns, and its variables feed the SQL template. A pipeline's
//! slices are the cells of its dimensions ([`SliceSpec`], in `spec.rs`): at most one time
//! dimension (days or hours, cut here) and any number of key dimensions (tenants,
//! regions).

mod spans;
mod spec;

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};

pub use spans::{describe_spans, spans, spans_by, Span};
pub use spec::{unfit_key, Key, KeyDimension, SliceSpec, TimeDimension};

use crate::error::{Error, Result, Setting};

/// The kind of a pipeline's slices: that of its time dimension, or `List` when it has
/// none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceKind {
    /// One calendar day: key `2024-01-31`.
    Daily,
    /// One hour: key `2024-01-31T07`.
    Hourly,
    /// Keys only (region, tenant), from a list or a manifest.
    List,
}

impl SliceKind {
    /// Every kind, as the pipeline file names them.
    pub const ALL: [SliceKind; 3] = [SliceKind::Daily, SliceKind::Hourly, SliceKind::List];

    pub fn name(self) -> &'static str {
        match self {
            SliceKind::Daily => "daily",
            SliceKind::Hourly => "hourly",
            SliceKind::List => "list",
        }
    }

    /// The partition columns a slice of this kind owns when the file names none; `None`
    /// when the file must name them.
    pub fn default_columns(self) -> Option<Vec<String>> {
        match self {
            SliceKind::Daily => Some(vec!["dt".into()]),
            SliceKind::Hourly => Some(vec!["dt".into(), "hr".into()]),
            SliceKind::List => None,
        }
    }

    /// How many partition columns a slice of this kind owns.
    pub fn columns(self) -> usize {
        match self {
            SliceKind::Daily | SliceKind::List => 1,
            SliceKind::Hourly => 2,
        }
    }
}

/// What a run asks for, before it is cut: a range of the time dimension and keys, either
/// or both. Nothing selected means every key of the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// An inclusive range: days (`YYYY-MM-DD`) or hours (`YYYY-MM-DDTHH`).
    pub range: Option<(String, String)>,
    /// Keys as given: slice keys (days, hours, list keys, whole cell keys), or
    /// `dimension=key` choosing keys of one dimension, each key after it choosing more of
    /// the same dimension (`tenant=acme`, `globex`).
    pub keys: Vec<String>,
    /// A range each pipeline ends where its data is complete: set instead of `range`,
    /// which [`SliceSpec::resolve`] then fills in for a pipeline.
    pub catch_up: Option<CatchUp>,
}

/// A catch-up (`--through`): every slice from a start through a bound, and how far back
/// done slices are checked for changed inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// The first slice; `None` for the pipeline's history start (`[slices] start`).
    pub start: Option<String>,
    pub through: Through,
    /// Done slices are checked for changed inputs only within the last `lookback` time
    /// slices through the bound; `None`: all of them. Missing and failed slices run
    /// wherever they are, as the log tells them without reading any source.
    pub lookback: Option<u32>,
}

/// Where a catch-up ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Through {
    /// The last slice complete at this instant (as the run's clock read it), less the
    /// pipeline's `[slices] delay`.
    Now(chrono::DateTime<chrono::Utc>),
    /// The slice of this day or hour (a day is all of its hours).
    At(String),
}

impl Selection {
    /// The inclusive range from `start` to `end`.
    pub fn range(start: impl Into<String>, end: impl Into<String>) -> Selection {
        Selection {
            range: Some((start.into(), end.into())),
            ..Selection::default()
        }
    }

    /// Slices named by their keys; none: every key of the pipeline file.
    pub fn keys(keys: Vec<String>) -> Selection {
        Selection {
            keys,
            ..Selection::default()
        }
    }

    /// Whether anything was selected at all.
    pub fn is_empty(&self) -> bool {
        self.range.is_none() && self.keys.is_empty() && self.catch_up.is_none()
    }

    /// The selection as a run's history records it: `2024-01-01..2024-01-31`, the keys,
    /// or both (`2024-01-01..2024-01-31 tenant=acme`).
    pub fn describe(&self) -> String {
        let keys = self.keys.join(",");
        let range = self.range.clone().or_else(|| {
            let catch_up = self.catch_up.as_ref()?;
            let through = match &catch_up.through {
                Through::Now(now) => format!("{}", now.format("%Y-%m-%dT%H:%M:%SZ")),
                Through::At(bound) => bound.clone(),
            };
            let start = catch_up.start.clone();
            Some((start.unwrap_or_else(|| "start".to_string()), through))
        });
        match (&range, keys.is_empty()) {
            (Some((start, end)), true) => format!("{start}..{end}"),
            (Some((start, end)), false) => format!("{start}..{end} {keys}"),
            (None, true) => "the pipeline's keys".to_string(),
            (None, false) => keys,
        }
    }

    /// The selection a history's description names, if it names a range
    /// ([`Selection::describe`]), with the keys chosen beside it; keys alone are not read
    /// back, as a key may hold a comma.
    pub fn described(text: &str) -> Option<Selection> {
        let (range, keys) = text.split_once(' ').unwrap_or((text, ""));
        let (start, end) = range.split_once("..")?;
        let bound = |b: &str| {
            !b.is_empty()
                && b.bytes()
                    .all(|c| c.is_ascii_digit() || c == b'-' || c == b'T')
        };
        let keys = keys
            .split(',')
            .filter(|key| !key.is_empty())
            .map(String::from);
        (bound(start) && bound(end)).then(|| Selection {
            range: Some((start.to_string(), end.to_string())),
            keys: keys.collect(),
            catch_up: None,
        })
    }

    /// The dimensions `NAME=KEY` keys choose keys of.
    pub fn dimensions_named(&self) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .filter_map(|key| spec::dimension_named_in(key))
    }

    /// The selection as a pipeline of `spec` takes it, alone or beside pipelines of other
    /// dimensions: a day bounding a range is each of its hours for an hourly pipeline, an
    /// hour the day it falls on for a daily one; a pipeline without a time dimension
    /// takes no range, and keys chosen for a dimension it does not have are not its own.
    /// A catch-up is each pipeline's own, resolved when its slices are cut.
    pub fn for_spec(&self, spec: &SliceSpec) -> Selection {
        let range = match (&self.range, &spec.time) {
            (Some((start, end)), Some(time)) => Some(time.kind.range(start, end)),
            _ => None,
        };
        Selection {
            range,
            keys: spec.own_keys(&self.keys),
            catch_up: spec.time.as_ref().and(self.catch_up.clone()),
        }
    }
}

/// One unit of work: a cell of the pipeline's dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The slice's name in logs, the Delta log and the CLI.
    pub key: String,
    /// Partition column and value (as text, like a hive folder) that the slice owns.
    pub partition: Vec<(String, String)>,
    /// Half-open time window `[start, end)` of a slice with a time dimension, in UTC.
    pub window: Option<(NaiveDateTime, NaiveDateTime)>,
    /// The key of each key dimension: (dimension, key).
    pub keys: Vec<(String, String)>,
}

impl Slice {
    /// The variables the SQL template may use, as text. Timestamps are RFC 3339 in UTC;
    /// `end_date` and `end_ts` are exclusive: the start of the next slice. Each key
    /// dimension is a variable of its name.
    pub fn variables(&self) -> Vec<(&str, String)> {
        let mut vars = vec![("slice", self.key.clone())];
        if let Some((start, end)) = self.window {
            vars.push(("start_date", start.date().to_string()));
            vars.push(("end_date", end.date().to_string()));
            vars.push(("start_ts", start.format("%Y-%m-%dT%H:%M:%SZ").to_string()));
            vars.push(("end_ts", end.format("%Y-%m-%dT%H:%M:%SZ").to_string()));
            if end - start == Duration::hours(1) {
                vars.push(("hour", start.format("%H").to_string()));
            }
        }
        (self.keys.iter()).for_each(|(name, key)| vars.push((name.as_str(), key.clone())));
        vars
    }
}

/// The variables a slice sets whatever its dimensions, which no dimension may be named.
pub const BUILT_IN_VARIABLES: [&str; 6] = [
    "slice",
    "start_date",
    "end_date",
    "start_ts",
    "end_ts",
    "hour",
];

/// The most slices of the time dimension one selection may cut: a decade of hours. Past
/// it a range is a typo (an end of 9999-12-31), and planning it would hold millions of
/// slices in memory.
pub const MAX_SLICES: i64 = 100_000;

/// The most cells one selection may cut over all dimensions.
pub const MAX_CELLS: usize = 1_000_000;

fn ensure_bounded(count: i64, start: &str, end: &str) -> Result<()> {
    if count > MAX_SLICES {
        return Err(Error::setting(
            &[Setting::Start, Setting::End],
            format!("{start}..{end} is {count} slices, more than the {MAX_SLICES} one run or plan can take; narrow the range"),
        ));
    }
    Ok(())
}

/// A slice of the time dimension alone: a day or an hour.
#[derive(Debug, Clone)]
pub(crate) struct TimeCell {
    pub key: String,
    pub partition: Vec<(String, String)>,
    pub window: (NaiveDateTime, NaiveDateTime),
}

impl SliceKind {
    /// A range as slices of this time kind take it: a day bounding a range is each of its
    /// hours for hourly slices, an hour the day it falls on for daily ones.
    fn range(self, start: &str, end: &str) -> (String, String) {
        let day = |at: &str| at.split_once('T').map_or(at, |(day, _)| day).to_string();
        let hour = |at: &str, hour: &str| match at.contains('T') {
            true => at.to_string(),
            false => format!("{at}T{hour}"),
        };
        match self {
            SliceKind::Hourly => (hour(start, "00"), hour(end, "23")),
            SliceKind::Daily | SliceKind::List => (day(start), day(end)),
        }
    }

    /// The time slices of an inclusive range of days or hours, in order.
    pub(crate) fn cut_range(
        self,
        columns: &[String],
        start: &str,
        end: &str,
    ) -> Result<Vec<TimeCell>> {
        parse_bound(start, Setting::Start)?;
        parse_bound(end, Setting::End)?;
        let (start, end) = &self.range(start, end);
        match self {
            SliceKind::Hourly => {
                let first = parse_hour(start, Setting::Start)?;
                let last = parse_hour(end, Setting::End)?;
                ensure_ordered(first <= last, start, end)?;
                let count = (last - first).num_hours() + 1;
                ensure_bounded(count, start, end)?;
                Ok((0..count)
                    .map(|h| hourly(columns, first + Duration::hours(h)))
                    .collect())
            }
            SliceKind::Daily | SliceKind::List => {
                let first = parse_day(start, Setting::Start)?;
                let last = parse_day(end, Setting::End)?;
                ensure_ordered(first <= last, start, end)?;
                ensure_bounded((last - first).num_days() + 1, start, end)?;
                let days = first.iter_days().take_while(|d| *d <= last);
                Ok(days.map(|d| daily(columns, d)).collect())
            }
        }
    }

    /// The time slice of a key of this kind (`2024-01-31`, `2024-01-31T07`).
    pub(crate) fn cell(self, columns: &[String], key: &str, setting: Setting) -> Result<TimeCell> {
        match self {
            SliceKind::Hourly => Ok(hourly(columns, parse_hour(key, setting)?)),
            SliceKind::Daily | SliceKind::List => Ok(daily(columns, parse_day(key, setting)?)),
        }
    }

    /// The start of the first slice of a bound (a day or an hour) and the end of the last:
    /// a day is all of its hours.
    pub(crate) fn bounds(
        self,
        text: &str,
        setting: Setting,
    ) -> Result<(NaiveDateTime, NaiveDateTime)> {
        parse_bound(text, setting)?;
        let (first, last) = self.range(text, text);
        Ok((
            self.window(&first, setting)?.0,
            self.window(&last, setting)?.1,
        ))
    }

    /// How long one time slice of this kind is.
    pub(crate) fn length(self) -> Duration {
        match self {
            SliceKind::Hourly => Duration::hours(1),
            SliceKind::Daily | SliceKind::List => Duration::days(1),
        }
    }

    fn window(self, key: &str, setting: Setting) -> Result<(NaiveDateTime, NaiveDateTime)> {
        Ok(match self {
            SliceKind::Hourly => {
                let start = parse_hour(key, setting)?;
                (start, start + Duration::hours(1))
            }
            SliceKind::Daily | SliceKind::List => {
                let start = parse_day(key, setting)?.and_time(NaiveTime::MIN);
                (start, start + Duration::days(1))
            }
        })
    }
}

fn daily(columns: &[String], day: NaiveDate) -> TimeCell {
    let start = day.and_time(NaiveTime::MIN);
    TimeCell {
        key: day.to_string(),
        partition: vec![(columns[0].clone(), day.to_string())],
        window: (start, start + Duration::days(1)),
    }
}

fn hourly(columns: &[String], start: NaiveDateTime) -> TimeCell {
    TimeCell {
        key: start.format("%Y-%m-%dT%H").to_string(),
        partition: vec![
            (columns[0].clone(), start.date().to_string()),
            (columns[1].clone(), start.format("%H").to_string()),
        ],
        window: (start, start + Duration::hours(1)),
    }
}

fn parse_day(text: &str, setting: Setting) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|d| d.format("%Y-%m-%d").to_string() == text)
        .ok_or_else(|| {
            Error::setting(
                &[setting],
                format!("`{text}` is not a day of the form YYYY-MM-DD"),
            )
        })
}

/// A range's bound: a day or an hour, whatever the kind of slices.
fn parse_bound(text: &str, setting: Setting) -> Result<()> {
    let parsed = match text.contains('T') {
        true => parse_hour(text, setting).map(drop),
        false => parse_day(text, setting).map(drop),
    };
    parsed.map_err(|_| {
        Error::setting(
            &[setting],
            format!(
                "`{text}` is not a day (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH, e.g. 2024-01-31T07)"
            ),
        )
    })
}

fn parse_hour(text: &str, setting: Setting) -> Result<NaiveDateTime> {
    let bad = || {
        Error::setting(
            &[setting],
            format!("`{text}` is not an hour of the form YYYY-MM-DDTHH (e.g. 2024-01-31T07)"),
        )
    };
    let (day, hour) = text.split_once('T').ok_or_else(bad)?;
    let day = parse_day(day, setting).map_err(|_| bad())?;
    let hour: u32 = (hour.len() == 2)
        .then(|| hour.parse().ok())
        .flatten()
        .ok_or_else(bad)?;
    let time = NaiveTime::from_hms_opt(hour, 0, 0).ok_or_else(bad)?;
    Ok(day.and_time(time))
}

fn ensure_ordered(ordered: bool, start: &str, end: &str) -> Result<()> {
    if ordered {
        Ok(())
    } else {
        Err(Error::setting(
            &[Setting::Start, Setting::End],
            format!("the range is reversed: {{start}} {start} is after {{end}} {end}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn range(start: &str, end: &str) -> Selection {
        Selection::range(start, end)
    }

    fn cut(
        kind: SliceKind,
        columns: &[String],
        selection: &Selection,
        file_keys: Option<&[String]>,
    ) -> Result<Vec<Slice>> {
        let keys = file_keys.map(|keys| keys.iter().map(Key::new).collect());
        SliceSpec::of_kind(kind, columns.to_vec(), keys).cut(selection)
    }

    #[test]
    fn a_range_of_days_or_hours_is_taken_by_each_kind_of_slices() {
        let of = |kind| SliceSpec::of_kind(kind, cols(&["dt", "hr"]), None);
        let days = range("2024-01-01", "2024-01-02");
        assert_eq!(days.for_spec(&of(SliceKind::Daily)), days);
        assert_eq!(
            days.for_spec(&of(SliceKind::Hourly)),
            range("2024-01-01T00", "2024-01-02T23")
        );
        assert_eq!(days.for_spec(&of(SliceKind::List)), Selection::default());
        let hours = range("2024-01-01T22", "2024-01-02T03");
        assert_eq!(hours.for_spec(&of(SliceKind::Hourly)), hours);
        assert_eq!(hours.for_spec(&of(SliceKind::Daily)), days);
        let keys = Selection::keys(vec!["eu".into()]);
        assert_eq!(keys.for_spec(&of(SliceKind::Daily)), keys);
    }

    #[test]
    fn a_range_reads_back_from_its_description_with_keys_beside_it_and_keys_alone_do_not() {
        let days = range("2024-01-01", "2024-03-30");
        assert_eq!(Selection::described(&days.describe()), Some(days.clone()));
        let keys = Selection::keys(vec!["a,b".into(), "c".into()]);
        assert_eq!(Selection::described(&keys.describe()), None);
        assert_eq!(Selection::described("the pipeline's keys"), None);
        let chosen = Selection {
            keys: vec!["tenant=acme".into(), "globex".into()],
            ..days
        };
        assert_eq!(Selection::described(&chosen.describe()), Some(chosen));
    }

    #[test]
    fn a_range_to_the_year_9999_is_refused_before_any_slice_is_made() {
        let daily = cut(
            SliceKind::Daily,
            &cols(&["dt"]),
            &range("2013-01-01", "9999-12-31"),
            None,
        );
        let message = daily.unwrap_err().to_string();
        assert!(message.contains("2917191 slices"), "{message}");
        let hourly = range("2000-01-01T00", "2020-01-01T00");
        let hourly = cut(SliceKind::Hourly, &cols(&["dt", "hr"]), &hourly, None);
        let message = hourly.unwrap_err().to_string();
        assert!(message.contains("175321 slices"), "{message}");
        let decade = range("2010-01-01T00", "2019-12-31T23");
        assert_eq!(
            cut(SliceKind::Hourly, &cols(&["dt", "hr"]), &decade, None)
                .unwrap()
                .len(),
            87648
        );
    }

    #[test]
    fn daily_range_is_inclusive_and_crosses_months() {
        let slices = cut(
            SliceKind::Daily,
            &cols(&["dt"]),
            &range("2024-02-28", "2024-03-01"),
            None,
        )
        .unwrap();
        let keys: Vec<_> = slices.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["2024-02-28", "2024-02-29", "2024-03-01"]);
        assert_eq!(
            slices[0].partition,
            vec![("dt".to_string(), "2024-02-28".to_string())]
        );
    }

    #[test]
    fn hourly_slices_keep_zero_padded_hours_as_text() {
        let slices = cut(
            SliceKind::Hourly,
            &cols(&["dt", "hr"]),
            &range("2024-01-01T22", "2024-01-02T01"),
            None,
        )
        .unwrap();
        let keys: Vec<_> = slices.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "2024-01-01T22",
                "2024-01-01T23",
                "2024-01-02T00",
                "2024-01-02T01"
            ]
        );
        assert_eq!(slices[2].partition[1], ("hr".to_string(), "00".to_string()));
        let vars = slices[3].variables();
        assert!(vars.contains(&("hour", "01".to_string())));
        assert!(vars.contains(&("end_ts", "2024-01-02T02:00:00Z".to_string())));
    }

    #[test]
    fn daily_variables_are_half_open() {
        let slice = &cut(
            SliceKind::Daily,
            &cols(&["dt"]),
            &range("2024-12-31", "2024-12-31"),
            None,
        )
        .unwrap()[0];
        let vars = slice.variables();
        assert!(vars.contains(&("start_date", "2024-12-31".to_string())));
        assert!(vars.contains(&("end_date", "2025-01-01".to_string())));
        assert!(!vars.iter().any(|(name, _)| *name == "hour"));
    }

    #[test]
    fn malformed_and_reversed_ranges_are_refused() {
        let daily = |s: &str, e: &str| {
            cut(SliceKind::Daily, &cols(&["dt"]), &range(s, e), None)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            daily("2024-1-05", "2024-01-06"),
            "start: `2024-1-05` is not a day (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH, e.g. 2024-01-31T07)"
        );
        assert_eq!(
            daily("2024-01-05", "2024-02-30"),
            "end: `2024-02-30` is not a day (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH, e.g. 2024-01-31T07)"
        );
        assert!(daily("2024-01-05T24", "2024-01-06").contains("`2024-01-05T24`"));
        assert_eq!(
            daily("2024-01-06", "2024-01-05"),
            "start/end: the range is reversed: start 2024-01-06 is after end 2024-01-05"
        );
        let hourly = cut(
            SliceKind::Hourly,
            &cols(&["dt", "hr"]),
            &range("2024-01-01T24", "2024-01-02T00"),
            None,
        );
        let message = hourly.unwrap_err().to_string();
        assert!(message.contains("2024-01-01T24"), "{message}");
    }

    /// Regression: an hourly pipeline alone refused the days a project's range gives it.
    #[test]
    fn a_range_means_the_same_hours_or_days_alone_as_in_a_project() {
        let hours = |s: &str, e: &str| {
            let slices = cut(SliceKind::Hourly, &cols(&["dt", "hr"]), &range(s, e), None);
            let keys: Vec<String> = slices.unwrap().into_iter().map(|s| s.key).collect();
            (keys.len(), keys[0].clone(), keys[keys.len() - 1].clone())
        };
        let whole_days = ("2024-01-01T00".to_string(), "2024-01-02T23".to_string());
        assert_eq!(
            hours("2024-01-01", "2024-01-02"),
            (48, whole_days.0.clone(), whole_days.1.clone())
        );
        assert_eq!(hours("2024-01-01T22", "2024-01-02").0, 26);
        let days = cut(
            SliceKind::Daily,
            &cols(&["dt"]),
            &range("2024-01-01T22", "2024-01-02T03"),
            None,
        );
        assert_eq!(days.unwrap().len(), 2);
    }

    #[test]
    fn time_keys_are_cut_in_time_order() {
        let keys = Selection::keys(cols(&["2024-01-03", "2024-01-01", "2024-01-02"]));
        let slices = cut(SliceKind::Daily, &cols(&["dt"]), &keys, None).unwrap();
        let keys: Vec<_> = slices.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["2024-01-01", "2024-01-02", "2024-01-03"]);
    }

    #[test]
    fn list_slices_come_from_keys_or_the_file() {
        let file_keys = cols(&["eu", "o'brien"]);
        let slices = cut(
            SliceKind::List,
            &cols(&["tenant"]),
            &Selection::keys(vec![]),
            Some(&file_keys),
        )
        .unwrap();
        assert_eq!(
            slices[1].partition,
            vec![("tenant".to_string(), "o'brien".to_string())]
        );
        assert_eq!(
            slices[1].variables(),
            vec![
                ("slice", "o'brien".to_string()),
                ("tenant", "o'brien".to_string())
            ]
        );
        let error = cut(
            SliceKind::List,
            &cols(&["tenant"]),
            &range("a", "b"),
            Some(&file_keys),
        )
        .unwrap_err();
        assert!(error.to_string().contains("list slices take keys"));
        let error = cut(
            SliceKind::List,
            &cols(&["tenant"]),
            &Selection::keys(cols(&["eu", "eu"])),
            None,
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "keys: key \"eu\" is given twice");
    }
}
