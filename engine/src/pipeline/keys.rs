//! The keys of a key dimension as the pipeline file lists them, inline or in a manifest,
//! checked into [`Key`]s: each one can be a partition value, is listed once, and starts no
//! later than it ends. Errors name the file and line of the key at fault.

use std::path::Path;

use toml::Spanned;

use super::file::{Locator, RawKey};
use crate::error::{Error, Result, Setting};
use crate::slice::{unfit_key, Key, SliceKind};

/// A key as listed, with where it was listed.
#[derive(Debug, PartialEq)]
pub struct Listed {
    pub value: String,
    /// The first day or hour with data, inclusive.
    pub start: Option<String>,
    /// The last day or hour with data, inclusive.
    pub end: Option<String>,
    /// `file:line`.
    pub at: String,
}

/// Keys listed inline in the pipeline file.
pub(super) fn inline(at: &Locator, keys: Vec<Spanned<RawKey>>) -> Vec<Listed> {
    let listed = keys.into_iter().map(|key| {
        let place = at.location(key.span());
        match key.into_inner() {
            RawKey::Plain(value) => Listed {
                value,
                start: None,
                end: None,
                at: place,
            },
            RawKey::Bounded(bounded) => Listed {
                value: bounded.key,
                start: bounded.start,
                end: bounded.end,
                at: place,
            },
        }
    });
    listed.collect()
}

/// Reads a manifest of keys. A `.csv` manifest has a header row naming `key` and, if
/// keys have data only part of the time, `start` and `end` (inclusive days or hours, each
/// optional); any other manifest is one key per line. Either way blank lines and lines
/// starting with `#` are ignored and surrounding whitespace is trimmed.
pub fn read_manifest(path: &Path) -> Result<Vec<Listed>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::in_file(path, format!("cannot read the manifest: {e}")))?;
    let at = |line: usize| format!("{}:{line}", path.display());
    let listed = match path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        true => read_csv(path, &text)?,
        false => (text.lines().enumerate())
            .map(|(number, line)| (number, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
            .map(|(number, line)| Listed {
                value: line.to_string(),
                start: None,
                end: None,
                at: at(number + 1),
            })
            .collect(),
    };
    if listed.is_empty() {
        return Err(Error::in_file(path, "the manifest lists no keys"));
    }
    Ok(listed)
}

fn read_csv(path: &Path, text: &str) -> Result<Vec<Listed>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let bad =
        |line: u64, message: String| Error::config(format!("{}:{line}", path.display()), message);
    let header = reader
        .headers()
        .map_err(|e| bad(1, format!("cannot read the header: {e}")))?
        .clone();
    if let Some(other) = header.iter().find(|c| !["key", "start", "end"].contains(c)) {
        return Err(bad(
            1,
            format!("column `{other}`: a manifest's columns are key, start and end"),
        ));
    }
    let column = |name: &str| header.iter().position(|c| c == name);
    let key = column("key").ok_or_else(|| bad(1, "the header names no `key` column".into()))?;
    let (start, end) = (column("start"), column("end"));
    let mut listed = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad(line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |index: Option<usize>| {
            let value = index.and_then(|i| record.get(i)).unwrap_or("");
            (!value.is_empty()).then(|| value.to_string())
        };
        listed.push(Listed {
            value: field(Some(key)).unwrap_or_default(),
            start: field(start),
            end: field(end),
            at: format!("{}:{line}", path.display()),
        });
    }
    Ok(listed)
}

/// Checks listed keys of dimension `dimension` into keys; `time` is the pipeline's time
/// dimension, which a key's start and end are days or hours of.
pub(super) fn checked(
    listed: Vec<Listed>,
    dimension: &str,
    time: Option<SliceKind>,
) -> Result<Vec<Key>> {
    let mut keys: Vec<Key> = Vec::with_capacity(listed.len());
    let mut first_at: std::collections::HashMap<String, String> = Default::default();
    for entry in listed {
        let error = |message: String| Error::config(&entry.at, format!("{dimension}: {message}"));
        let value = &entry.value;
        if let Some(why) = unfit_key(value) {
            return Err(error(format!(
                "key {value:?} {why}, so it cannot be a partition value"
            )));
        }
        if let Some(first) = first_at.get(value) {
            return Err(error(format!(
                "key {value:?} is listed twice (first at {first})"
            )));
        }
        let mut key = Key::new(value.clone());
        if entry.start.is_some() || entry.end.is_some() {
            let Some(time) = time else {
                return Err(error(format!(
                    "key {value:?} has a start or an end, but these slices have no time dimension"
                )));
            };
            let bound = |text: Option<&str>, setting| {
                let bounds = text.map(|text| {
                    time.bounds(text, setting).map_err(|_| {
                        error(format!("key {value:?}: `{text}` is not a day (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH)"))
                    })
                });
                bounds.transpose()
            };
            key.from = bound(entry.start.as_deref(), Setting::Start)?.map(|(from, _)| from);
            key.until = bound(entry.end.as_deref(), Setting::End)?.map(|(_, until)| until);
            if let (Some(from), Some(until)) = (key.from, key.until) {
                if from >= until {
                    return Err(error(format!(
                        "key {value:?} starts ({}) after it ends ({})",
                        entry.start.as_deref().unwrap_or_default(),
                        entry.end.as_deref().unwrap_or_default()
                    )));
                }
            }
        }
        first_at.insert(value.clone(), entry.at.clone());
        keys.push(key);
    }
    Ok(keys)
}
