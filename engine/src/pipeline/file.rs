//! The pipeline file's shape as written ([`RawPipeline`] and its parts, strict: unknown
//! keys are errors), and [`Locator`], which points errors at a line of a pipeline or
//! project file and expands `${VAR}` in storage options. No validation beyond the shape
//! happens here: that is [`super::sections`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::{location_to_url, SqlStart, StorageOptions};
use crate::error::{Error, Result};
use crate::template::place_of;

/// The file's shape. Spans are kept where validation needs to point at a line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) name: Spanned<String>,
    pub(super) sources: Spanned<BTreeMap<String, Spanned<RawSource>>>,
    pub(super) slices: Spanned<RawSlices>,
    pub(super) transform: Spanned<RawTransform>,
    pub(super) destination: Spanned<RawDestination>,
    #[serde(default)]
    pub(super) assertions: Vec<Spanned<RawAssertion>>,
    pub(super) max_source_requests: Option<Spanned<usize>>,
    pub(super) lineage: Option<Spanned<super::lineage::RawLineage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) url: Option<Spanned<String>>,
    pub(super) pipeline: Option<Spanned<String>>,
    pub(super) format: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) partitioning: Vec<String>,
    pub(super) storage_options: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlices {
    pub(super) kind: Option<Spanned<String>>,
    pub(super) column: Option<Spanned<OneOrMany>>,
    pub(super) keys: Option<Spanned<Vec<Spanned<RawKey>>>>,
    pub(super) manifest: Option<Spanned<String>>,
    pub(super) start: Option<Spanned<String>>,
    pub(super) delay: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) dimensions: Vec<Spanned<RawDimension>>,
}

/// A key dimension beside the slices' kind: `[[slices.dimensions]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDimension {
    pub(super) name: Spanned<String>,
    pub(super) column: Option<Spanned<String>>,
    pub(super) keys: Option<Spanned<Vec<Spanned<RawKey>>>>,
    pub(super) manifest: Option<Spanned<String>>,
}

/// A key as listed: `"acme"`, or `{ key = "acme", start = "2024-03-10" }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawKey {
    Plain(String),
    Bounded(RawBoundedKey),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBoundedKey {
    pub(super) key: String,
    pub(super) start: Option<String>,
    pub(super) end: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransform {
    pub(super) sql: Option<Spanned<String>>,
    pub(super) sql_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub(super) url: Spanned<String>,
    #[serde(default)]
    pub(super) partition_by: Vec<String>,
    pub(super) strategy: Spanned<String>,
    pub(super) merge_keys: Option<Spanned<Vec<String>>>,
    pub(super) storage_options: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAssertion {
    pub(super) min_rows: Option<u64>,
    pub(super) max_null_rate: Option<RawNullRate>,
    pub(super) unique: Option<Vec<String>>,
    pub(super) sql: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNullRate {
    pub(super) column: String,
    pub(super) rate: f64,
}

/// Points errors at a line of a pipeline or project file.
pub(crate) struct Locator<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

impl Locator<'_> {
    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> Error {
        Error::config(self.location(span), message)
    }

    /// The file and line of `span`: `pipelines/x.toml:12`.
    pub(crate) fn location(&self, span: Range<usize>) -> String {
        let (line, _) = place_of(self.text, span.start);
        format!("{}:{line}", self.path.display())
    }

    /// Where the text of the string value at `span` starts: its line and column (both
    /// from 1). A multi-line string's first newline is not part of its text.
    pub(crate) fn string_start(&self, span: Range<usize>) -> SqlStart {
        let (line, column) = place_of(self.text, span.start);
        let token = &self.text[span.start.min(self.text.len())..];
        let quotes = match token.starts_with("\"\"\"") || token.starts_with("'''") {
            true => 3,
            false => 1,
        };
        let after = &token[quotes.min(token.len())..];
        match after.starts_with('\n') || after.starts_with("\r\n") {
            true => SqlStart {
                line: line + 1,
                column: 1,
            },
            false => SqlStart {
                line,
                column: column + quotes,
            },
        }
    }

    /// The file's text as `T`, or an error at the line at fault.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(self.text).map_err(|e| {
            let message = e.message().to_string();
            match e.span() {
                Some(span) => self.error(span, message),
                None => Error::in_file(self.path, message),
            }
        })
    }

    pub(crate) fn url(&self, location: &Spanned<String>, base: &Path) -> Result<Url> {
        location_to_url(location.get_ref(), base)
            .map_err(|message| self.error(location.span(), message))
    }

    /// Expands `${VAR}` in each value. Errors name the key and the variable, never a value.
    pub(crate) fn storage_options(
        &self,
        table: &str,
        raw: Option<&Spanned<BTreeMap<String, String>>>,
    ) -> Result<StorageOptions> {
        let Some(raw) = raw else {
            return Ok(StorageOptions::default());
        };
        let mut options = BTreeMap::new();
        for (key, value) in raw.get_ref() {
            let expanded = expand_env(value).map_err(|variable| {
                self.error(
                    raw.span(),
                    format!("{table}.storage_options.{key}: environment variable `{variable}` is not set"),
                )
            })?;
            options.insert(key.clone(), expanded);
        }
        Ok(StorageOptions(options))
    }
}

/// Replaces every `${NAME}` in `value` with the environment variable `NAME`, or returns
/// the name of the first one that is not set.
fn expand_env(value: &str) -> std::result::Result<String, String> {
    let mut expanded = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let Some(length) = rest[start + 2..].find('}') else {
            break;
        };
        let name = &rest[start + 2..start + 2 + length];
        expanded.push_str(&rest[..start]);
        expanded.push_str(&std::env::var(name).map_err(|_| name.to_string())?);
        rest = &rest[start + 3 + length..];
    }
    expanded.push_str(rest);
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_env_leaves_text_without_references_alone() {
        std::env::set_var("BACKFILL_TEST_REGION", "eu");
        assert_eq!(expand_env("plain $HOME {x}").unwrap(), "plain $HOME {x}");
        assert_eq!(expand_env("a-${BACKFILL_TEST_REGION}-b").unwrap(), "a-eu-b");
        assert_eq!(
            expand_env("${BACKFILL_TEST_NOPE}").unwrap_err(),
            "BACKFILL_TEST_NOPE"
        );
    }
}
