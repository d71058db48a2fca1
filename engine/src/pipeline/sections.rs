//! The pipeline file's sections, validated one by one into the [`Pipeline`]'s parts:
//! every check that can be made without touching storage, each error pointing at the
//! line at fault.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::file::{
    Locator, OneOrMany, RawAssertion, RawDestination, RawNullRate, RawSlices, RawSource,
    RawTransform,
};
use super::{
    is_identifier, read_manifest, Assertion, Destination, Output, SliceSpec, Source, SourceFormat,
    SqlStart, Strategy, Upstreams,
};
use crate::error::Result;
use crate::slice::SliceKind;

/// The pipeline's name: letters, digits, `_` and `-`.
pub(super) fn name(at: &Locator, raw: &Spanned<String>) -> Result<String> {
    let name = raw.get_ref().trim().to_string();
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-".contains(c);
    if name.is_empty() || !name.chars().all(allowed) {
        return Err(at.error(
            raw.span(),
            "`name` must be non-empty and use only letters, digits, `_` and `-`",
        ));
    }
    Ok(name)
}

/// Every `[sources.NAME]` table, at least one.
pub(super) fn sources(
    at: &Locator,
    raw: &Spanned<BTreeMap<String, Spanned<RawSource>>>,
    base: &Path,
    upstreams: Upstreams,
) -> Result<Vec<Source>> {
    if raw.get_ref().is_empty() {
        return Err(at.error(raw.span(), "a pipeline needs at least one source"));
    }
    raw.get_ref()
        .iter()
        .map(|(name, source)| self::source(at, name, source, base, upstreams))
        .collect()
}

/// One source: a name SQL can use, and either a location with its format or another
/// pipeline's output.
fn source(
    at: &Locator,
    name: &str,
    raw: &Spanned<RawSource>,
    base: &Path,
    upstreams: Upstreams,
) -> Result<Source> {
    let span = raw.span();
    let source = raw.get_ref();
    if !is_identifier(name) {
        return Err(at.error(
            span,
            format!("source name `{name}` must be a plain SQL identifier (letters, digits, `_`)"),
        ));
    }
    if name == "slice" {
        return Err(at.error(
            span,
            "`slice` is reserved: assertions read the slice's output under that name",
        ));
    }
    let (url, format, storage_options, upstream) = match (&source.url, &source.pipeline) {
        (Some(url), None) => {
            let format = source_format(at, name, source, span.clone())?;
            let options =
                at.storage_options(&format!("sources.{name}"), source.storage_options.as_ref())?;
            (at.url(url, base)?, format, options, None)
        }
        (None, Some(pipeline)) => {
            let output = upstream_output(at, name, source, pipeline, upstreams)?;
            let upstream = Some(pipeline.get_ref().clone());
            (output.url, SourceFormat::Delta, output.storage_options, upstream)
        }
        _ => {
            return Err(at.error(
                span,
                format!("sources.{name} needs exactly one of `url` (a location) or `pipeline` (another pipeline's output)"),
            ))
        }
    };
    if format == SourceFormat::Delta && !source.partitioning.is_empty() {
        return Err(at.error(
            span,
            format!(
                "sources.{name}.partitioning: a Delta table's partitioning is in its log; remove this key"
            ),
        ));
    }
    Ok(Source {
        name: name.to_string(),
        url,
        format,
        partitioning: source.partitioning.clone(),
        storage_options,
        upstream,
    })
}

/// The format of a source given by its location.
fn source_format(
    at: &Locator,
    name: &str,
    source: &RawSource,
    span: std::ops::Range<usize>,
) -> Result<SourceFormat> {
    let Some(format) = &source.format else {
        return Err(at.error(
            span,
            format!("sources.{name}.format is required: \"parquet\" or \"delta\""),
        ));
    };
    match format.get_ref().as_str() {
        "parquet" => Ok(SourceFormat::Parquet),
        "delta" => Ok(SourceFormat::Delta),
        other => Err(at.error(
            format.span(),
            format!(
                "sources.{name}.format: `{other}` is not supported; use \"parquet\" or \"delta\""
            ),
        )),
    }
}

/// Where a source naming another pipeline reads: that pipeline's destination, with its
/// storage options; the source may say nothing else of it.
fn upstream_output(
    at: &Locator,
    name: &str,
    source: &RawSource,
    pipeline: &Spanned<String>,
    upstreams: Upstreams,
) -> Result<Output> {
    if let Some(format) = source.format.as_ref().filter(|f| f.get_ref() != "delta") {
        return Err(at.error(
            format.span(),
            format!("sources.{name}.format: a pipeline's output is a Delta table; remove this key"),
        ));
    }
    if let Some(options) = &source.storage_options {
        return Err(at.error(
            options.span(),
            format!("sources.{name}.storage_options: a pipeline's output is read with its destination's storage options; remove this key"),
        ));
    }
    upstreams(pipeline.get_ref()).map_err(|message| {
        at.error(
            pipeline.span(),
            format!("sources.{name}.pipeline: {message}"),
        )
    })
}

pub(super) fn slice_spec(at: &Locator, raw: Spanned<RawSlices>, base: &Path) -> Result<SliceSpec> {
    let span = raw.span();
    let raw = raw.into_inner();
    let named = raw.kind.get_ref().as_str();
    let Some(kind) = SliceKind::ALL.into_iter().find(|k| k.name() == named) else {
        let kinds: Vec<&str> = SliceKind::ALL.iter().map(|k| k.name()).collect();
        return Err(at.error(
            raw.kind.span(),
            format!("slices.kind: `{named}` is not one of {}", kinds.join(", ")),
        ));
    };
    let columns = match raw.column.map(Spanned::into_inner) {
        Some(OneOrMany::One(column)) => vec![column],
        Some(OneOrMany::Many(columns)) => columns,
        None => kind.default_columns().ok_or_else(|| {
            at.error(
                span.clone(),
                format!("slices.column is required for kind = \"{named}\""),
            )
        })?,
    };
    let wanted = kind.columns();
    if columns.len() != wanted || columns.iter().any(|c| !is_identifier(c)) {
        return Err(at.error(
            span,
            format!(
                "slices.column: {} slices select {wanted} partition column(s) given as plain identifiers, got {columns:?}",
                kind.name()
            ),
        ));
    }
    let keys = match (raw.keys, raw.manifest) {
        (Some(_), Some(manifest)) => {
            return Err(at.error(
                manifest.span(),
                "slices: give `keys` or `manifest`, not both",
            ))
        }
        (Some(keys), None) => Some(checked_keys(
            at,
            keys.span(),
            keys.into_inner(),
            "slices.keys",
        )?),
        (None, Some(manifest)) => {
            let path = base.join(manifest.get_ref());
            Some(read_manifest(&path)?)
        }
        (None, None) => None,
    };
    if keys.is_some() && kind != SliceKind::List {
        return Err(at.error(
            0..0,
            "slices: `keys` and `manifest` are only for kind = \"list\"",
        ));
    }
    Ok(SliceSpec {
        kind,
        columns,
        keys,
    })
}

fn checked_keys(
    at: &Locator,
    span: std::ops::Range<usize>,
    keys: Vec<String>,
    what: &str,
) -> Result<Vec<String>> {
    if keys.is_empty() {
        return Err(at.error(
            span,
            format!("{what} is empty: a list slice needs at least one key"),
        ));
    }
    if let Some(bad) = keys
        .iter()
        .find(|k| k.trim().is_empty() || k.contains(['/', '\n']))
    {
        return Err(at.error(
            span,
            format!("{what}: key {bad:?} is empty or contains `/` or a newline"),
        ));
    }
    Ok(keys)
}

pub(super) fn transform(
    at: &Locator,
    raw: Spanned<RawTransform>,
    base: &Path,
) -> Result<(String, String, SqlStart)> {
    let span = raw.span();
    let raw = raw.into_inner();
    match (raw.sql, raw.sql_file) {
        (Some(sql), None) => {
            let start = at.string_start(sql.span());
            Ok((sql.into_inner(), at.path.display().to_string(), start))
        }
        (None, Some(file)) => {
            let path = base.join(file.get_ref());
            let sql = std::fs::read_to_string(&path).map_err(|e| {
                at.error(
                    file.span(),
                    format!("transform.sql_file: cannot read {}: {e}", path.display()),
                )
            })?;
            let start = SqlStart { line: 1, column: 1 };
            Ok((sql, path.display().to_string(), start))
        }
        _ => Err(at.error(span, "transform needs exactly one of `sql` or `sql_file`")),
    }
}

pub(super) fn destination(
    at: &Locator,
    raw: Spanned<RawDestination>,
    base: &Path,
    slices: &SliceSpec,
) -> Result<Destination> {
    let span = raw.span();
    let raw = raw.into_inner();
    let strategy = match (raw.strategy.get_ref().as_str(), raw.merge_keys) {
        ("overwrite", None) => Strategy::Overwrite,
        ("append", None) => Strategy::Append,
        ("rebuild", None) => Strategy::Rebuild,
        ("merge", Some(keys)) if !keys.get_ref().is_empty() => Strategy::Merge {
            keys: keys.into_inner(),
        },
        ("merge", _) => {
            return Err(at.error(
                raw.strategy.span(),
                "destination.merge_keys is required for strategy = \"merge\"",
            ))
        }
        ("overwrite" | "append" | "rebuild", Some(keys)) => {
            return Err(at.error(
                keys.span(),
                "destination.merge_keys is only for strategy = \"merge\"",
            ))
        }
        (other, _) => {
            return Err(at.error(
                raw.strategy.span(),
                format!(
                "destination.strategy: `{other}` is not one of overwrite, merge, append, rebuild"
            ),
            ))
        }
    };
    if strategy == Strategy::Overwrite {
        if let Some(missing) = slices
            .columns
            .iter()
            .find(|c| !raw.partition_by.contains(c))
        {
            return Err(at.error(
                span,
                format!(
                    "strategy = \"overwrite\" replaces the slice's partitions, so destination.partition_by must include the slice column `{missing}`"
                ),
            ));
        }
    }
    Ok(Destination {
        url: at.url(&raw.url, base)?,
        partition_by: raw.partition_by,
        strategy,
        storage_options: at.storage_options("destination", raw.storage_options.as_ref())?,
    })
}

pub(super) fn assertion(at: &Locator, raw: Spanned<RawAssertion>) -> Result<Assertion> {
    let span = raw.span();
    let raw = raw.into_inner();
    let mut found = Vec::new();
    if let Some(n) = raw.min_rows {
        found.push(Assertion::MinRows(n));
    }
    if let Some(RawNullRate { column, rate }) = raw.max_null_rate {
        if !(0.0..=1.0).contains(&rate) {
            return Err(at.error(
                span,
                format!("max_null_rate.rate must be between 0 and 1, got {rate}"),
            ));
        }
        found.push(Assertion::MaxNullRate { column, rate });
    }
    if let Some(columns) = raw.unique {
        if columns.is_empty() {
            return Err(at.error(span, "unique needs at least one column"));
        }
        found.push(Assertion::Unique(columns));
    }
    if let Some(sql) = raw.sql {
        found.push(Assertion::Sql {
            start: at.string_start(sql.span()),
            sql: sql.into_inner(),
        });
    }
    match found.len() {
        1 => Ok(found.pop().expect("one element")),
        0 => Err(at.error(
            span,
            "an assertion needs one of min_rows, max_null_rate, unique, sql",
        )),
        _ => Err(at.error(span, "give each check its own [[assertions]] entry")),
    }
}
