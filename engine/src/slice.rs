//! Cutting a run's range or key list into [`Slice`]s.
//!
//! This module is pure: no IO, no clock. A slice is the unit of work, of retry and of
//! commit; its key names it in the Delta log, its partition values say which source and
//! destination partitions it owns, and its variables feed the SQL template.

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};

use crate::error::{Error, Result, Setting};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceKind {
    /// One calendar day: key `2024-01-31`.
    Daily,
    /// One hour: key `2024-01-31T07`.
    Hourly,
    /// One custom key (region, tenant), from a list or a manifest.
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

    /// A selection of one slice of this kind, for planning SQL that reads no data: the
    /// first of `keys` for a list.
    pub fn sample(self, keys: Option<&[String]>) -> Selection {
        let range = |at: &str| Selection::Range {
            start: at.into(),
            end: at.into(),
        };
        match self {
            SliceKind::Daily => range("2000-01-01"),
            SliceKind::Hourly => range("2000-01-01T00"),
            SliceKind::List => {
                let first = keys.and_then(|keys| keys.first());
                Selection::Keys(vec![first.map_or("sample".into(), String::clone)])
            }
        }
    }

    /// Every slice from the first to the last of the `seen` keys (sorted, each once), gaps
    /// included; for list slices, the keys of the pipeline file and then any other key
    /// seen. `None` when there is nothing to span.
    pub fn spanning(self, seen: &[String], file_keys: Option<&[String]>) -> Option<Selection> {
        match self {
            SliceKind::Daily | SliceKind::Hourly => Some(Selection::Range {
                start: seen.first()?.clone(),
                end: seen.last()?.clone(),
            }),
            SliceKind::List => {
                let mut keys = file_keys.unwrap_or_default().to_vec();
                let listed: std::collections::HashSet<&String> = keys.iter().collect();
                let others: Vec<String> = (seen.iter())
                    .filter(|key| !listed.contains(key))
                    .cloned()
                    .collect();
                keys.extend(others);
                (!keys.is_empty()).then_some(Selection::Keys(keys))
            }
        }
    }
}

/// What a run asks for, before it is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// An inclusive range: `YYYY-MM-DD` for daily, `YYYY-MM-DDTHH` for hourly.
    Range { start: String, end: String },
    /// Explicit keys (any kind); for list slices, the keys of the pipeline file if empty.
    Keys(Vec<String>),
}

impl Selection {
    /// The selection as a run's history records it: `2024-01-01..2024-01-31`, or the keys.
    pub fn describe(&self) -> String {
        match self {
            Selection::Range { start, end } => format!("{start}..{end}"),
            Selection::Keys(keys) if keys.is_empty() => "the pipeline's keys".to_string(),
            Selection::Keys(keys) => keys.join(","),
        }
    }

    /// The range a history's description names, if it names one ([`Selection::describe`]
    /// of a range); keys are not read back, as a key may hold a comma.
    pub fn described_range(text: &str) -> Option<Selection> {
        let (start, end) = text.split_once("..")?;
        let bound = |b: &str| {
            !b.is_empty()
                && b.bytes()
                    .all(|c| c.is_ascii_digit() || c == b'-' || c == b'T')
        };
        (bound(start) && bound(end)).then(|| Selection::Range {
            start: start.to_string(),
            end: end.to_string(),
        })
    }

    /// The selection as a pipeline cutting slices of `kind` takes it, alone or beside
    /// pipelines of other kinds: a day bounding a range is each of its hours for an hourly
    /// pipeline, an hour the day it falls on for a daily one, and a list pipeline takes
    /// the keys of its file instead of a range.
    pub fn for_kind(&self, kind: SliceKind) -> Selection {
        let Selection::Range { start, end } = self else {
            return self.clone();
        };
        let day = |at: &str| at.split_once('T').map_or(at, |(day, _)| day).to_string();
        match kind {
            SliceKind::Daily => Selection::Range {
                start: day(start),
                end: day(end),
            },
            SliceKind::Hourly => {
                let hour = |at: &str, hour: &str| match at.contains('T') {
                    true => at.to_string(),
                    false => format!("{at}T{hour}"),
                };
                Selection::Range {
                    start: hour(start, "00"),
                    end: hour(end, "23"),
                }
            }
            SliceKind::List => Selection::Keys(vec![]),
        }
    }
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The slice's name in logs, the Delta log and the CLI.
    pub key: String,
    /// Partition column and value (as text, like a hive folder) that the slice owns.
    pub partition: Vec<(String, String)>,
    /// Half-open time window `[start, end)` of daily and hourly slices, in UTC.
    pub window: Option<(NaiveDateTime, NaiveDateTime)>,
}

impl Slice {
    /// The variables the SQL template may use, as text. Timestamps are RFC 3339 in UTC;
    /// `end_date` and `end_ts` are exclusive: the start of the next slice.
    pub fn variables(&self) -> Vec<(&'static str, String)> {
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
        vars
    }
}

/// Cuts a selection into slices, in order, refusing anything malformed before work starts.
/// `file_keys` are the list keys given in the pipeline file, used when no keys are selected.
/// The most slices one selection may cut: a decade of hours. Past it a range is a typo
/// (an end of 9999-12-31), and planning it would hold millions of slices in memory.
pub const MAX_SLICES: i64 = 100_000;

fn ensure_bounded(count: i64, start: &str, end: &str) -> Result<()> {
    if count > MAX_SLICES {
        return Err(Error::setting(
            &[Setting::Start, Setting::End],
            format!("{start}..{end} is {count} slices, more than the {MAX_SLICES} one run or plan can take; narrow the range"),
        ));
    }
    Ok(())
}

pub fn cut(
    kind: SliceKind,
    columns: &[String],
    selection: &Selection,
    file_keys: Option<&[String]>,
) -> Result<Vec<Slice>> {
    // A range means the same alone as in a project; keys name slices exactly.
    let selection = &match (kind, selection) {
        (SliceKind::Daily | SliceKind::Hourly, Selection::Range { start, end }) => {
            parse_bound(start, Setting::Start)?;
            parse_bound(end, Setting::End)?;
            selection.for_kind(kind)
        }
        _ => selection.clone(),
    };
    match (kind, selection) {
        (SliceKind::Daily, Selection::Range { start, end }) => {
            let first = parse_day(start, Setting::Start)?;
            let last = parse_day(end, Setting::End)?;
            ensure_ordered(first <= last, start, end)?;
            ensure_bounded((last - first).num_days() + 1, start, end)?;
            Ok(first.iter_days().take_while(|d| *d <= last).map(|d| daily(columns, d)).collect())
        }
        (SliceKind::Hourly, Selection::Range { start, end }) => {
            let first = parse_hour(start, Setting::Start)?;
            let last = parse_hour(end, Setting::End)?;
            ensure_ordered(first <= last, start, end)?;
            let count = (last - first).num_hours() + 1;
            ensure_bounded(count, start, end)?;
            Ok((0..count).map(|h| hourly(columns, first + Duration::hours(h))).collect())
        }
        (SliceKind::List, Selection::Range { .. }) => Err(Error::setting(
            &[Setting::Start, Setting::End],
            "list slices take keys ({keys}, or `keys`/`manifest` in the pipeline file), not a range",
        )),
        (_, Selection::Keys(keys)) => {
            let keys: Vec<String> = match (keys.is_empty(), file_keys) {
                (false, _) => keys.clone(),
                (true, Some(file_keys)) => file_keys.to_vec(),
                (true, None) => {
                    return Err(Error::setting(
                        &[Setting::Keys],
                        format!("no slices selected: give {{start}} and {{end}}{}", if kind == SliceKind::List { ", {keys}, or keys in the pipeline file" } else { " or {keys}" }),
                    ))
                }
            };
            let mut slices: Vec<Slice> = Vec::with_capacity(keys.len());
            for key in &keys {
                let slice = match kind {
                    SliceKind::Daily => daily(columns, parse_day(key, Setting::Keys)?),
                    SliceKind::Hourly => hourly(columns, parse_hour(key, Setting::Keys)?),
                    SliceKind::List => list(columns, key)?,
                };
                if slices.iter().any(|s| s.key == slice.key) {
                    return Err(Error::setting(&[Setting::Keys], format!("key {key:?} is given twice")));
                }
                slices.push(slice);
            }
            // Time slices run in time order whatever order their keys were given in;
            // list slices keep the order of their list.
            if kind != SliceKind::List {
                slices.sort_by_key(|slice| slice.window);
            }
            Ok(slices)
        }
    }
}

fn daily(columns: &[String], day: NaiveDate) -> Slice {
    let start = day.and_time(NaiveTime::MIN);
    Slice {
        key: day.to_string(),
        partition: vec![(columns[0].clone(), day.to_string())],
        window: Some((start, start + Duration::days(1))),
    }
}

fn hourly(columns: &[String], start: NaiveDateTime) -> Slice {
    Slice {
        key: start.format("%Y-%m-%dT%H").to_string(),
        partition: vec![
            (columns[0].clone(), start.date().to_string()),
            (columns[1].clone(), start.format("%H").to_string()),
        ],
        window: Some((start, start + Duration::hours(1))),
    }
}

fn list(columns: &[String], key: &str) -> Result<Slice> {
    if key.trim().is_empty() || key.contains(['/', '\n']) {
        return Err(Error::setting(
            &[Setting::Keys],
            format!("key {key:?} is empty or contains `/` or a newline"),
        ));
    }
    Ok(Slice {
        key: key.to_string(),
        partition: vec![(columns[0].clone(), key.to_string())],
        window: None,
    })
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

/// Consecutive slices named at once: `2024-01-03..2024-01-14 (12 slices)`, so that a
/// list of hundreds of slices reads as a few spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub first: String,
    pub last: String,
    pub slices: usize,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.slices {
            1 => write!(f, "{}", self.first),
            2 => write!(f, "{}, {}", self.first, self.last),
            n => write!(f, "{}..{} ({n} slices)", self.first, self.last),
        }
    }
}

/// The spans of the slices `chosen` picks among `keys`, which are in the order they were
/// cut: slices are consecutive when no slice of `keys` lies between them.
pub fn spans<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    chosen: impl Fn(&str) -> bool,
) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut open = false;
    for key in keys {
        if !chosen(key) {
            open = false;
            continue;
        }
        match spans.last_mut() {
            Some(span) if open => {
                span.last = key.to_string();
                span.slices += 1;
            }
            _ => spans.push(Span {
                first: key.to_string(),
                last: key.to_string(),
                slices: 1,
            }),
        }
        open = true;
    }
    spans
}

/// The spans of `keys` (in the order they were cut) grouped by the label `label` gives
/// each of them (`None`: not in any group), the labels in the order they first appear:
/// the slices refused for each reason, say.
pub fn spans_by<'a, L: PartialEq>(
    keys: impl Iterator<Item = &'a str> + Clone,
    label: impl Fn(&str) -> Option<L>,
) -> Vec<(L, Vec<Span>)> {
    let mut labels: Vec<L> = Vec::new();
    for key in keys.clone() {
        match label(key) {
            Some(found) if !labels.contains(&found) => labels.push(found),
            _ => {}
        }
    }
    labels
        .into_iter()
        .map(|group| {
            let spans = spans(keys.clone(), |key| label(key).as_ref() == Some(&group));
            (group, spans)
        })
        .collect()
}

/// Spans for people: `2024-01-01..2024-01-05 (5 slices), 2024-01-09`.
pub fn describe_spans(spans: &[Span]) -> String {
    let words: Vec<String> = spans.iter().map(Span::to_string).collect();
    words.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn range(start: &str, end: &str) -> Selection {
        Selection::Range {
            start: start.into(),
            end: end.into(),
        }
    }

    #[test]
    fn spans_join_consecutive_chosen_slices_and_break_at_any_other() {
        let keys = ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"];
        let chosen = |k: &str| ["d1", "d2", "d3", "d5", "d7", "d8"].contains(&k);
        let spans = spans(keys, chosen);
        assert_eq!(describe_spans(&spans), "d1..d3 (3 slices), d5, d7, d8");
        assert_eq!(spans.iter().map(|s| s.slices).sum::<usize>(), 6);
        assert!(super::spans(keys, |_| false).is_empty());
    }

    #[test]
    fn spans_by_group_in_the_order_groups_first_appear() {
        let keys = ["d1", "d2", "d3", "d4", "d5"];
        let label = |k: &str| match k {
            "d1" | "d2" | "d5" => Some("late"),
            "d3" => Some("empty"),
            _ => None,
        };
        let grouped: Vec<(&str, String)> = (spans_by(keys.into_iter(), label).into_iter())
            .map(|(group, spans)| (group, describe_spans(&spans)))
            .collect();
        assert_eq!(
            grouped,
            [
                ("late", "d1, d2, d5".to_string()),
                ("empty", "d3".to_string())
            ]
        );
    }

    #[test]
    fn a_range_of_days_or_hours_is_taken_by_each_kind_of_slices() {
        let days = range("2024-01-01", "2024-01-02");
        assert_eq!(days.for_kind(SliceKind::Daily), days);
        assert_eq!(
            days.for_kind(SliceKind::Hourly),
            range("2024-01-01T00", "2024-01-02T23")
        );
        assert_eq!(days.for_kind(SliceKind::List), Selection::Keys(vec![]));
        let hours = range("2024-01-01T22", "2024-01-02T03");
        assert_eq!(hours.for_kind(SliceKind::Hourly), hours);
        assert_eq!(hours.for_kind(SliceKind::Daily), days);
        let keys = Selection::Keys(vec!["eu".into()]);
        assert_eq!(keys.for_kind(SliceKind::Daily), keys);
    }

    #[test]
    fn a_range_reads_back_from_its_description_and_keys_do_not() {
        let days = range("2024-01-01", "2024-03-30");
        assert_eq!(Selection::described_range(&days.describe()), Some(days));
        let keys = Selection::Keys(vec!["a,b".into(), "c".into()]);
        assert_eq!(Selection::described_range(&keys.describe()), None);
        assert_eq!(Selection::described_range("the pipeline's keys"), None);
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
        let keys = Selection::Keys(cols(&["2024-01-03", "2024-01-01", "2024-01-02"]));
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
            &Selection::Keys(vec![]),
            Some(&file_keys),
        )
        .unwrap();
        assert_eq!(
            slices[1].partition,
            vec![("tenant".to_string(), "o'brien".to_string())]
        );
        assert_eq!(
            slices[1].variables(),
            vec![("slice", "o'brien".to_string())]
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
            &Selection::Keys(cols(&["eu", "eu"])),
            None,
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "keys: key \"eu\" is given twice");
    }
}
