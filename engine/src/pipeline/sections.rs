//! The pipeline file's sections, validated one by one into the [`Pipeline`]'s parts:
//! every check that can be made without touching storage, each error pointing at the
//! line at fault.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::file::{
    Locator, OneOrMany, RawAssertion, RawDestination, RawDimension, RawKey, RawNullRate, RawSlices,
    RawSource, RawTransform,
};
use super::keys::{self, read_manifest, Listed};
use super::{
    is_identifier, Assertion, Destination, Output, Source, SourceFormat, SqlStart, Strategy,
    Upstreams,
};
use crate::error::{Result, Setting};
use crate::slice::{KeyDimension, SliceKind, SliceSpec, BUILT_IN_VARIABLES};

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
    let mut spec = SliceSpec {
        time: None,
        keyed: vec![],
    };
    // Each key dimension's keys, checked once the time dimension is known.
    let mut listed: Vec<Option<Vec<Listed>>> = Vec::new();
    match &raw.kind {
        Some(named) => {
            let (kind, columns) = kind_and_columns(at, named, raw.column, span.clone())?;
            let keys = listed_keys(at, "slices", raw.keys, raw.manifest, base)?;
            match kind {
                SliceKind::List => {
                    let mut lone = SliceSpec::of_kind(kind, columns, None);
                    spec.keyed.append(&mut lone.keyed);
                    listed.push(keys);
                }
                _ if keys.is_some() => {
                    return Err(at.error(
                        named.span(),
                        "slices: `keys` and `manifest` are only for kind = \"list\"; give other keys a dimension of their own in [[slices.dimensions]]",
                    ))
                }
                _ => spec = SliceSpec::of_kind(kind, columns, None),
            }
        }
        None if raw.dimensions.is_empty() => {
            return Err(at.error(
                span,
                "slices.kind is required: daily, hourly or list (or give key dimensions in [[slices.dimensions]])",
            ))
        }
        None if raw.column.is_some() || raw.keys.is_some() || raw.manifest.is_some() => {
            return Err(at.error(
                span,
                "slices: `column`, `keys` and `manifest` describe the dimension `kind` names; give `kind`, or move them into [[slices.dimensions]]",
            ))
        }
        None => {}
    }
    history(at, raw.start, raw.delay, &mut spec, span.clone())?;
    for raw in raw.dimensions {
        let (dimension, keys) = dimension(at, raw, base, &spec)?;
        spec.keyed.push(dimension);
        listed.push(Some(keys));
    }
    let time = spec.time.as_ref().map(|time| time.kind);
    let several = spec.dimensions() > 1;
    for (dimension, listed) in spec.keyed.iter_mut().zip(listed) {
        if several && listed.is_none() {
            return Err(at.error(
                span.clone(),
                format!("slices: the list dimension `{}` needs its keys (`keys` or `manifest`) beside other dimensions", dimension.name),
            ));
        }
        let checked = listed.map(|listed| keys::checked(listed, &dimension.name, time));
        dimension.keys = checked.transpose()?;
    }
    Ok(spec)
}

/// The time dimension's history start and delay (`[slices] start`, `delay`), which only a
/// time dimension has.
fn history(
    at: &Locator,
    start: Option<Spanned<String>>,
    delay: Option<Spanned<String>>,
    spec: &mut SliceSpec,
    span: std::ops::Range<usize>,
) -> Result<()> {
    let Some(time) = &mut spec.time else {
        return match start.is_some() || delay.is_some() {
            true => Err(at.error(
                span,
                "slices: `start` and `delay` are for days or hours; these slices have none",
            )),
            false => Ok(()),
        };
    };
    if let Some(start) = start {
        let text = start.get_ref();
        time.kind.bounds(text, Setting::Start).map_err(|_| {
            at.error(
                start.span(),
                format!(
                    "slices.start: `{text}` is not a day (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH)"
                ),
            )
        })?;
        time.start = Some(text.clone());
    }
    if let Some(delay) = delay {
        time.delay = humantime::parse_duration(delay.get_ref()).map_err(|e| {
            at.error(
                delay.span(),
                format!(
                    "slices.delay: `{}` is not a duration such as \"2h\" or \"30min\": {e}",
                    delay.get_ref()
                ),
            )
        })?;
    }
    Ok(())
}

/// The kind `[slices]` names, and the partition columns it owns.
fn kind_and_columns(
    at: &Locator,
    named: &Spanned<String>,
    column: Option<Spanned<OneOrMany>>,
    span: std::ops::Range<usize>,
) -> Result<(SliceKind, Vec<String>)> {
    let name = named.get_ref().as_str();
    let Some(kind) = SliceKind::ALL.into_iter().find(|k| k.name() == name) else {
        let kinds: Vec<&str> = SliceKind::ALL.iter().map(|k| k.name()).collect();
        return Err(at.error(
            named.span(),
            format!("slices.kind: `{name}` is not one of {}", kinds.join(", ")),
        ));
    };
    let columns = match column.map(Spanned::into_inner) {
        Some(OneOrMany::One(column)) => vec![column],
        Some(OneOrMany::Many(columns)) => columns,
        None => kind.default_columns().ok_or_else(|| {
            at.error(
                span.clone(),
                format!("slices.column is required for kind = \"{name}\""),
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
    Ok((kind, columns))
}

/// A key dimension of `[[slices.dimensions]]`, beside those of `spec` so far, and its
/// keys as listed.
fn dimension(
    at: &Locator,
    raw: Spanned<RawDimension>,
    base: &Path,
    spec: &SliceSpec,
) -> Result<(KeyDimension, Vec<Listed>)> {
    let span = raw.span();
    let raw = raw.into_inner();
    let name = raw.name.get_ref().clone();
    let refuse = |span: std::ops::Range<usize>, message: String| {
        Err(at.error(span, format!("slices.dimensions: {message}")))
    };
    if !is_identifier(&name) {
        return refuse(
            raw.name.span(),
            format!("name `{name}` must be a plain identifier, as SQL variables are"),
        );
    }
    if BUILT_IN_VARIABLES.contains(&name.as_str()) {
        return refuse(
            raw.name.span(),
            format!("`{name}` is a variable every slice sets; name the dimension otherwise"),
        );
    }
    if spec.keyed.iter().any(|dimension| dimension.name == name) {
        return refuse(raw.name.span(), format!("`{name}` is named twice"));
    }
    let column = raw.column.as_ref().map_or(&name, Spanned::get_ref).clone();
    let column_span = raw.column.as_ref().map_or(raw.name.span(), Spanned::span);
    if !is_identifier(&column) {
        return refuse(
            column_span,
            format!("{name}.column `{column}` must be a plain identifier"),
        );
    }
    if spec.columns().contains(&column) {
        return refuse(
            column_span,
            format!("{name}.column `{column}` is another dimension's column"),
        );
    }
    let what = format!("slices.dimensions.{name}");
    let Some(keys) = listed_keys(at, &what, raw.keys, raw.manifest, base)? else {
        return refuse(span, format!("{name} needs its keys: `keys` or `manifest`"));
    };
    let dimension = KeyDimension {
        name,
        column,
        keys: None,
    };
    Ok((dimension, keys))
}

/// The keys listed inline or in a manifest, if any.
fn listed_keys(
    at: &Locator,
    what: &str,
    keys: Option<Spanned<Vec<Spanned<RawKey>>>>,
    manifest: Option<Spanned<String>>,
    base: &Path,
) -> Result<Option<Vec<Listed>>> {
    match (keys, manifest) {
        (Some(_), Some(manifest)) => Err(at.error(
            manifest.span(),
            format!("{what}: give `keys` or `manifest`, not both"),
        )),
        (Some(keys), None) if keys.get_ref().is_empty() => Err(at.error(
            keys.span(),
            format!("{what}.keys is empty: a list of keys needs at least one"),
        )),
        (Some(keys), None) => Ok(Some(keys::inline(at, keys.into_inner()))),
        (None, Some(manifest)) => Ok(Some(read_manifest(&base.join(manifest.get_ref()))?)),
        (None, None) => Ok(None),
    }
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
    let columns = slices.columns();
    let missing = columns.iter().find(|c| !raw.partition_by.contains(c));
    match (missing, &strategy) {
        (Some(missing), Strategy::Overwrite) => {
            return Err(at.error(
                span,
                format!(
                    "strategy = \"overwrite\" replaces the slice's partitions, so destination.partition_by must include the slice column `{missing}`"
                ),
            ))
        }
        (Some(missing), Strategy::Merge { .. } | Strategy::Append) if slices.dimensions() > 1 => {
            return Err(at.error(
                span,
                format!(
                    "a slice over several dimensions owns its partitions, so destination.partition_by must include the slice column `{missing}`"
                ),
            ))
        }
        _ => {}
    }
    Ok(Destination {
        url: at.url(&raw.url, base)?,
        slices_own_partitions: missing.is_none(),
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
