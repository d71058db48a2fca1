//! The pipeline file: parsing and validating it into a [`Pipeline`].
//!
//! Owns the TOML format, its strictness (unknown keys are errors naming the key and line)
//! and every check that can be made without touching storage. It must not do IO beyond
//! reading the pipeline file and the files it names (SQL file, manifest); resolving
//! sources and planning SQL belong to [`crate::source`] and [`crate::backfill`].

mod file;
mod keys;
mod lineage;
mod sections;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::error::{Error, Result};
pub use crate::slice::SliceSpec;
pub(crate) use file::Locator;
use file::RawPipeline;
pub use keys::{read_manifest, Listed};
pub(crate) use lineage::{settings as lineage_settings, RawLineage};
pub use lineage::{ApiKey, Collector, LineageSettings, DEFAULT_NAMESPACE};

/// A validated pipeline: what to read, how to transform it, where and how to write it.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The pipeline file, for error messages.
    pub file: PathBuf,
    pub sources: Vec<Source>,
    pub slices: SliceSpec,
    /// The transform's SQL template, with `{{ variable }}` placeholders.
    pub sql: String,
    /// Where the SQL came from, for error messages: the pipeline file or `sql_file`.
    pub sql_origin: String,
    /// Where in `sql_origin` the SQL's text starts, to point errors at its lines.
    pub sql_start: SqlStart,
    pub destination: Destination,
    pub assertions: Vec<Assertion>,
    /// Requests in flight at once to each source's object store, across all slices.
    pub max_source_requests: Option<usize>,
    /// Where its OpenLineage events go.
    pub lineage: LineageSettings,
}

impl Pipeline {
    /// Cuts a selection into this pipeline's slices. Pure: no IO.
    pub fn cut(&self, selection: &crate::slice::Selection) -> Result<Vec<crate::slice::Slice>> {
        self.slices.cut(selection)
    }
}

/// Where a SQL text starts in its file: line and column, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlStart {
    pub line: usize,
    pub column: usize,
}

impl SqlStart {
    /// The place in the file of `line` and `column` (from 1) of the SQL text.
    pub fn place(self, line: usize, column: usize) -> (usize, usize) {
        match line {
            1 => (self.line, self.column + column - 1),
            n => (self.line + n - 1, column),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Source {
    /// The SQL table name the source is registered under.
    pub name: String,
    pub url: Url,
    pub format: SourceFormat,
    /// Hive partition columns in folder order, always read as text (Parquet only: a Delta
    /// table's partitioning is in its log).
    pub partitioning: Vec<String>,
    pub storage_options: StorageOptions,
    /// The pipeline whose destination this source reads, when it is another pipeline's
    /// output (`pipeline = "name"`, or a project pipeline's destination by its URL).
    pub upstream: Option<String>,
}

/// How a source's files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Parquet files in hive-partitioned folders.
    Parquet,
    /// A Delta table, read at one version.
    Delta,
}

/// Options for an object store (`aws_region`, `aws_endpoint`, ...), with `${VAR}`
/// references already expanded from the environment. Values may be secrets, so they
/// are never shown: `Debug` prints the keys only, and nothing stores them.
#[derive(Clone, Default, PartialEq)]
pub struct StorageOptions(BTreeMap<String, String>);

impl StorageOptions {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, Clone)]
pub struct Destination {
    pub url: Url,
    pub partition_by: Vec<String>,
    /// Whether every slice column is one of `partition_by`, so that each slice's rows have
    /// partitions of their own: overwrite and slices over several dimensions require it,
    /// and a merge then merges within a slice's partitions rather than across the table.
    pub slices_own_partitions: bool,
    pub strategy: Strategy,
    pub storage_options: StorageOptions,
}

/// How a slice's output is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Replace exactly the slice's partitions.
    Overwrite,
    /// Upsert on business keys: within the slice's partitions when it has its own
    /// (see [`Destination::slices_own_partitions`]), across the table otherwise.
    Merge { keys: Vec<String> },
    /// Add the rows; a slice's earlier rows are replaced, never duplicated.
    Append,
    /// Stage and check every slice of the range, then replace the whole table with
    /// their output in one commit.
    Rebuild,
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Overwrite => "overwrite",
            Strategy::Merge { .. } => "merge",
            Strategy::Append => "append",
            Strategy::Rebuild => "rebuild",
        }
    }
}

/// A check on a slice's output, run before anything is published.
#[derive(Debug, Clone, PartialEq)]
pub enum Assertion {
    MinRows(u64),
    MaxNullRate {
        column: String,
        rate: f64,
    },
    Unique(Vec<String>),
    /// A query over the table `slice` returning one boolean: true passes. `start` is
    /// where it starts in the pipeline file.
    Sql {
        sql: String,
        start: SqlStart,
    },
}

impl Assertion {
    /// A short, stable description used in reports and commit metadata.
    pub fn describe(&self) -> String {
        match self {
            Assertion::MinRows(n) => format!("min_rows {n}"),
            Assertion::MaxNullRate { column, rate } => format!("max_null_rate {column} {rate}"),
            Assertion::Unique(columns) => format!("unique ({})", columns.join(", ")),
            Assertion::Sql { sql, .. } => format!("sql {sql}"),
        }
    }
}

/// Reads and validates a pipeline file. Relative paths inside it (sources, destination,
/// `sql_file`, `manifest`) are relative to the file's own folder, so a pipeline works
/// from any working directory.
pub fn load(path: &Path) -> Result<Pipeline> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::in_file(path, format!("cannot read the pipeline file: {e}")))?;
    parse(&text, path)
}

/// Validates pipeline text as if it were read from `path`. A source naming another
/// pipeline (`pipeline = "name"`) is refused: only a project resolves those.
pub fn parse(text: &str, path: &Path) -> Result<Pipeline> {
    parse_with(text, path, &|name| Err(needs_project(name, None)))
}

/// Why a source naming the pipeline `upstream` cannot be read outside a project, and what
/// to do: run through `project` (the project file and this pipeline's name there), if
/// one is known, or through a project file that lists both.
pub fn needs_project(upstream: &str, project: Option<(&Path, &str)>) -> String {
    let how = match project {
        Some((file, name)) => format!(
            "{file}, which lists both (`backfill run {file} --pipeline {name}`; every command takes a project file and --pipeline)",
            file = file.display()
        ),
        None => "a project file that lists both (`--pipeline NAME`), or give the table's `url` and `format = \"delta\"`".to_string(),
    };
    format!("`{upstream}` is another pipeline's output, which only a project file resolves: run this pipeline through {how}")
}

/// Where a source that names another pipeline reads: that pipeline's destination, or why
/// there is none.
pub type Upstreams<'a> = &'a dyn Fn(&str) -> std::result::Result<Output, String>;

/// Where a pipeline writes, as a source naming the pipeline reads it.
#[derive(Debug, Clone)]
pub struct Output {
    pub pipeline: String,
    pub url: Url,
    pub storage_options: StorageOptions,
}

/// Reads only the name and the destination of a pipeline file: what other pipelines of
/// a project need to resolve their sources before this one is parsed in full.
pub fn output_of(path: &Path) -> Result<Output> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
        destination: Spanned<Written>,
    }
    #[derive(Deserialize)]
    struct Written {
        url: Spanned<String>,
        storage_options: Option<Spanned<BTreeMap<String, String>>>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::in_file(path, format!("cannot read the pipeline file: {e}")))?;
    let at = Locator { path, text: &text };
    let named: Named = at.parse()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let written = named.destination.into_inner();
    Ok(Output {
        pipeline: named.name.trim().to_string(),
        url: at.url(&written.url, base)?,
        storage_options: at.storage_options("destination", written.storage_options.as_ref())?,
    })
}

/// Validates pipeline text as if it were read from `path`, resolving sources that name
/// another pipeline through `upstreams`.
pub fn parse_with(text: &str, path: &Path, upstreams: Upstreams) -> Result<Pipeline> {
    let at = Locator { path, text };
    let raw: RawPipeline = at.parse()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let name = sections::name(&at, &raw.name)?;
    let sources = sections::sources(&at, &raw.sources, base, upstreams)?;
    let slices = sections::slice_spec(&at, raw.slices, base)?;
    let (sql, sql_origin, sql_start) = sections::transform(&at, raw.transform, base)?;
    let destination = sections::destination(&at, raw.destination, base, &slices)?;
    let assertions = raw
        .assertions
        .into_iter()
        .map(|assertion| sections::assertion(&at, assertion))
        .collect::<Result<_>>()?;
    if let Some(zero) = raw
        .max_source_requests
        .as_ref()
        .filter(|n| *n.get_ref() == 0)
    {
        return Err(at.error(zero.span(), "max_source_requests must be at least 1"));
    }
    Ok(Pipeline {
        name,
        file: path.to_path_buf(),
        sources,
        slices,
        sql,
        sql_origin,
        sql_start,
        destination,
        assertions,
        max_source_requests: raw.max_source_requests.map(Spanned::into_inner),
        lineage: lineage::settings(&at, raw.lineage, &|name| std::env::var(name).ok())?,
    })
}

pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Turns a location as written in a pipeline file or on the command line into a URL:
/// URLs pass through, paths are made absolute against `base`.
pub fn location_to_url(location: &str, base: &Path) -> std::result::Result<Url, String> {
    if location.contains("://") {
        let mut url =
            Url::parse(location).map_err(|e| format!("`{location}` is not a valid URL: {e}"))?;
        if url.scheme() != "file" && url.host_str().unwrap_or("").is_empty() {
            return Err(format!("`{location}` names no bucket"));
        }
        // A location is a folder: paths inside it are joined onto it.
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        return Ok(url);
    }
    let absolute =
        std::path::absolute(base.join(location)).map_err(|e| format!("`{location}`: {e}"))?;
    // Resolve `..` by hand: the location may not exist yet, so it cannot be canonicalized.
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    Url::from_directory_path(&normal).map_err(|()| format!("`{location}` is not a usable path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
name = "daily_revenue"

[sources.orders]
url = "buckets/shop/orders"
format = "parquet"
partitioning = ["dt"]

[slices]
kind = "daily"
column = "dt"

[transform]
sql = "SELECT * FROM orders WHERE dt = {{ slice }}"

[destination]
url = "warehouse/daily_revenue"
partition_by = ["dt"]
strategy = "overwrite"

[[assertions]]
min_rows = 1

[[assertions]]
max_null_rate = { column = "amount", rate = 0.01 }
"#;

    fn parse_at(text: &str) -> Result<Pipeline> {
        parse(text, Path::new("/p/pipeline.toml"))
    }

    #[test]
    fn valid_pipeline_resolves_paths_against_the_file() {
        let p = parse_at(VALID).unwrap();
        assert_eq!(p.name, "daily_revenue");
        assert_eq!(p.sources[0].url.as_str(), "file:///p/buckets/shop/orders/");
        assert_eq!(
            p.destination.url.as_str(),
            "file:///p/warehouse/daily_revenue/"
        );
        assert_eq!(p.destination.strategy, Strategy::Overwrite);
        assert_eq!(
            p.assertions,
            vec![
                Assertion::MinRows(1),
                Assertion::MaxNullRate {
                    column: "amount".into(),
                    rate: 0.01
                }
            ]
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = VALID.replace(
            "partitioning = [\"dt\"]",
            "partitioning = [\"dt\"]\npartitions = 3",
        );
        let error = parse_at(&text).unwrap_err().to_string();
        assert!(error.starts_with("/p/pipeline.toml:8:"), "{error}");
        assert!(error.contains("unknown field `partitions`"), "{error}");
    }

    #[test]
    fn merge_without_keys_is_refused_at_its_line() {
        let text = VALID.replace("strategy = \"overwrite\"", "strategy = \"merge\"");
        let error = parse_at(&text).unwrap_err().to_string();
        assert_eq!(
            error,
            "/p/pipeline.toml:19: destination.merge_keys is required for strategy = \"merge\""
        );
    }

    #[test]
    fn overwrite_needs_the_slice_column_as_partition() {
        let text = VALID.replace("partition_by = [\"dt\"]", "partition_by = []");
        let error = parse_at(&text).unwrap_err().to_string();
        assert!(
            error.contains("must include the slice column `dt`"),
            "{error}"
        );
    }

    #[test]
    fn source_named_slice_is_refused() {
        let text = VALID.replace("[sources.orders]", "[sources.slice]");
        let error = parse_at(&text).unwrap_err().to_string();
        assert!(error.starts_with("/p/pipeline.toml:4:"), "{error}");
        assert!(error.contains("`slice` is reserved"), "{error}");
    }

    #[test]
    fn assertion_with_two_checks_is_refused() {
        let text = VALID.replace("min_rows = 1", "min_rows = 1\nunique = [\"a\"]");
        let error = parse_at(&text).unwrap_err().to_string();
        assert!(error.contains("own [[assertions]] entry"), "{error}");
    }

    #[test]
    fn manifest_ignores_comments_and_blank_lines_and_refuses_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, "# regions\neu\n\n  o'brien  \n").unwrap();
        let keys = read_manifest(&path).unwrap();
        let keys: Vec<(&str, &str)> = (keys.iter())
            .map(|key| (key.value.as_str(), key.at.rsplit('/').next().unwrap()))
            .collect();
        assert_eq!(keys, [("eu", "keys.txt:2"), ("o'brien", "keys.txt:4")]);
        std::fs::write(&path, "# nothing\n\n").unwrap();
        let error = read_manifest(&path).unwrap_err().to_string();
        assert!(error.ends_with("the manifest lists no keys"), "{error}");
    }

    /// VALID with its slices over days × tenants × regions, `dimensions` replacing the
    /// tenant dimension's entry.
    fn with_dimensions(tenants: &str) -> String {
        let slices = format!(
            "column = \"dt\"\n\n[[slices.dimensions]]\n{tenants}\n\n[[slices.dimensions]]\nname = \"region\"\nkeys = [\"eu\", \"us\"]\n"
        );
        (VALID.replace("column = \"dt\"\n", &slices)).replace(
            "partition_by = [\"dt\"]",
            "partition_by = [\"dt\", \"tenant_id\", \"region\"]",
        )
    }

    #[test]
    fn dimensions_take_keys_inline_or_from_a_manifest_with_their_start_and_end() {
        let text = with_dimensions(
            "name = \"tenant\"\ncolumn = \"tenant_id\"\nkeys = [\"acme\", { key = \"new\", start = \"2024-03-10\", end = \"2024-03-11T05\" }]",
        );
        let spec = parse_at(&text).unwrap().slices;
        assert_eq!(spec.describe(), "daily × tenant × region");
        assert_eq!(spec.columns(), ["dt", "tenant_id", "region"]);
        let new = &spec.keyed[0].keys.as_ref().unwrap()[1];
        assert_eq!(new.from.unwrap().to_string(), "2024-03-10 00:00:00");
        assert_eq!(
            new.until.unwrap().to_string(),
            "2024-03-12 00:00:00",
            "an hour bounds a daily key by its day"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tenants.csv"),
            "key,start\nacme,\n\"o'brien, ltd\",2024-03-10\n",
        )
        .unwrap();
        let text = with_dimensions(
            "name = \"tenant\"\ncolumn = \"tenant_id\"\nmanifest = \"tenants.csv\"",
        );
        let spec = parse(&text, &dir.path().join("p.toml")).unwrap().slices;
        let keys = spec.keyed[0].keys.as_ref().unwrap();
        assert_eq!((keys[0].value.as_str(), keys[0].from), ("acme", None));
        assert_eq!(keys[1].value, "o'brien, ltd");
        assert_eq!(keys[1].from.unwrap().to_string(), "2024-03-10 00:00:00");
    }

    #[test]
    fn bad_dimensions_are_refused_at_the_line_at_fault() {
        let refused = |tenants: &str| parse_at(&with_dimensions(tenants)).unwrap_err().to_string();
        assert_eq!(
            refused("name = \"region\"\nkeys = [\"x\"]"),
            "/p/pipeline.toml:18: slices.dimensions: `region` is named twice"
        );
        assert_eq!(
            refused("name = \"hour\"\nkeys = [\"x\"]"),
            "/p/pipeline.toml:14: slices.dimensions: `hour` is a variable every slice sets; name the dimension otherwise"
        );
        assert_eq!(
            refused("name = \"tenant\"\ncolumn = \"dt\"\nkeys = [\"x\"]"),
            "/p/pipeline.toml:15: slices.dimensions: tenant.column `dt` is another dimension's column"
        );
        assert_eq!(
            refused("name = \"tenant\"\ncolumn = \"tenant_id\""),
            "/p/pipeline.toml:13: slices.dimensions: tenant needs its keys: `keys` or `manifest`"
        );
        assert_eq!(
            refused("name = \"tenant\"\ncolumn = \"tenant_id\"\nkeys = [\"a\",\n  \"a\"]"),
            "/p/pipeline.toml:17: tenant: key \"a\" is listed twice (first at /p/pipeline.toml:16)"
        );
        assert_eq!(
            refused("name = \"tenant\"\ncolumn = \"tenant_id\"\nkeys = [{ key = \"a\", start = \"2024-03-10\", end = \"2024-03-09\" }]"),
            "/p/pipeline.toml:16: tenant: key \"a\" starts (2024-03-10) after it ends (2024-03-09)"
        );
        assert_eq!(
            refused("name = \"tenant\"\ncolumn = \"tenant_id\"\nkeys = [{ key = \"a\", start = \"March\" }]"),
            "/p/pipeline.toml:16: tenant: key \"a\": `March` is not a day (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH)"
        );
        assert_eq!(
            refused("name = \"tenant\"\ncolumn = \"tenant_id\"\nkeys = [\"\"]"),
            "/p/pipeline.toml:16: tenant: key \"\" is empty, so it cannot be a partition value"
        );
        let unpartitioned = with_dimensions("name = \"tenant\"\nkeys = [\"a\"]")
            .replace("strategy = \"overwrite\"", "strategy = \"append\"");
        let error = parse_at(&unpartitioned).unwrap_err().to_string();
        assert!(
            error.ends_with("destination.partition_by must include the slice column `tenant`"),
            "{error}"
        );
    }

    #[test]
    fn a_manifest_that_cannot_list_keys_is_refused_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |manifest: &str| {
            std::fs::write(dir.path().join("tenants.csv"), manifest).unwrap();
            let text = with_dimensions(
                "name = \"tenant\"\ncolumn = \"tenant_id\"\nmanifest = \"tenants.csv\"",
            );
            let error = parse(&text, &dir.path().join("p.toml"))
                .unwrap_err()
                .to_string();
            error.rsplit('/').next().unwrap().to_string()
        };
        assert_eq!(
            refused("key,start\n"),
            "tenants.csv: the manifest lists no keys"
        );
        assert_eq!(
            refused("key,since\na,2024-01-01\n"),
            "tenants.csv:1: column `since`: a manifest's columns are key, start and end"
        );
        assert_eq!(
            refused("tenant\na\n"),
            "tenants.csv:1: column `tenant`: a manifest's columns are key, start and end"
        );
        assert_eq!(refused("key,end\na,2024-01-01\nb,2024-02-30\n"), "tenants.csv:3: tenant: key \"b\": `2024-02-30` is not a day (YYYY-MM-DD) or an hour (YYYY-MM-DDTHH)");
    }

    #[test]
    fn storage_options_expand_the_environment_and_never_show_values() {
        std::env::set_var("BACKFILL_TEST_SECRET", "s3cr3t");
        let text = VALID.replace(
            "partitioning = [\"dt\"]",
            "partitioning = [\"dt\"]\nstorage_options = { aws_region = \"eu-west-1\", aws_secret_access_key = \"${BACKFILL_TEST_SECRET}\" }",
        );
        let p = parse_at(&text).unwrap();
        let options: Vec<_> = p.sources[0].storage_options.iter().collect();
        assert_eq!(
            options[1],
            (&"aws_secret_access_key".to_string(), &"s3cr3t".to_string())
        );
        let shown = format!("{p:?}");
        assert!(
            shown.contains("aws_secret_access_key") && !shown.contains("s3cr3t"),
            "{shown}"
        );

        let unset = text.replace("BACKFILL_TEST_SECRET", "BACKFILL_TEST_UNSET");
        let error = parse_at(&unset).unwrap_err().to_string();
        assert!(
            error.ends_with("sources.orders.storage_options.aws_secret_access_key: environment variable `BACKFILL_TEST_UNSET` is not set"),
            "{error}"
        );
    }
}
