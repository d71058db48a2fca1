//! Sources as SQL tables, and the DataFusion sessions slices run in.
//!
//! Owns resolving each source once per run (schema inference, table provider) and handing
//! every slice a fresh [`SessionContext`] over the same providers and runtime: a slice
//! then sees exactly the source tables plus its own `slice` output, and nothing it
//! registers leaks into another slice. Listings are never cached across slices, so each
//! slice sees its source files as they are when it starts. This module does not write.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::Statistics;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::{FileFormat, FileMeta};
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::physical_plan::FileSource;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::limit::LimitStore;
use object_store::local::LocalFileSystem;
use object_store::{ObjectMeta, ObjectStore};
use sha2::{Digest, Sha256};
use url::Url;

use crate::error::{Error, Result, ResultExt};
use crate::pipeline::{Pipeline, StorageOptions};
use crate::slice::Slice;

/// The resolved sources of a pipeline and the runtime their slices share.
#[derive(Clone)]
pub struct Sources {
    tables: Vec<(String, Arc<ListingTable>)>,
    /// Files left out of the schemas (not valid Parquet, or columns that conflict), with
    /// the reason: a slice that reads one fails, naming it.
    left_out: Arc<HashMap<String, String>>,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
}

/// A file a slice's plan reads, as listed by the object store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub size: u64,
    /// Modification time (RFC 3339) and ETag where the store gives them.
    pub modified: String,
    pub e_tag: Option<String>,
    /// The source it belongs to.
    pub source: String,
    /// Rows, from the file's Parquet footer (read while planning, not from the data).
    pub rows: Option<u64>,
}

/// Object stores to use instead of the defaults, keyed by their root (`file:///`,
/// `s3://bucket/`).
pub type StoreOverrides = Vec<(Url, Arc<dyn ObjectStore>)>;

impl Sources {
    /// Resolves every source of `pipeline`: infers its schema once, from its files. With a
    /// `scope`, a source partitioned like the slices reads only the footers of the scope's
    /// partitions. Files that are not valid Parquet, or whose columns do not fit the
    /// others', are left out of the schema and remembered: only slices that read them fail.
    pub async fn resolve(
        pipeline: &Pipeline,
        stores: &StoreOverrides,
        memory_limit: usize,
        scope: Option<&[Slice]>,
    ) -> Result<Self> {
        let config = session_config();
        let runtime = RuntimeEnvBuilder::new()
            // A cached listing would hide files that arrive while a long backfill runs.
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
            // Shared fairly by the slices in flight; aggregations and sorts past it spill
            // to disk instead of growing with the slice.
            .with_memory_pool(Arc::new(FairSpillPool::new(memory_limit)))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the DataFusion runtime: {e}")))?;
        let mut registered: Vec<Url> = Vec::new();
        for source in &pipeline.sources {
            let root = store_root(&source.url);
            if registered.contains(&root) {
                continue;
            }
            let given = stores.iter().find(|(url, _)| *url == root);
            let store = match given {
                Some((_, store)) => store.clone(),
                None => object_store_for(&source.url, &source.storage_options).map_err(|m| {
                    Error::config(
                        format!("{}: sources.{}", pipeline.file.display(), source.name),
                        m,
                    )
                })?,
            };
            // One limited store per bucket, shared by every slice: the cap holds across
            // the slices in flight.
            let store: Arc<dyn ObjectStore> = match pipeline.max_source_requests {
                Some(max) => Arc::new(LimitStore::new(store, max)),
                None => store,
            };
            runtime.register_object_store(&root, store);
            registered.push(root);
        }
        for (url, store) in stores.iter().filter(|(url, _)| !registered.contains(url)) {
            runtime.register_object_store(url, store.clone());
        }
        let runtime = Arc::new(runtime);
        let ctx = SessionContext::new_with_config_rt(config.clone(), runtime.clone());

        let (mut tables, mut left_out) = (Vec::new(), HashMap::new());
        for source in &pipeline.sources {
            let context = || {
                format!(
                    "{}: source `{}` at {}",
                    pipeline.file.display(),
                    source.name,
                    source.url
                )
            };
            let url = ListingTableUrl::parse(source.url.as_str()).context(context)?;
            let partitions = source
                .partitioning
                .iter()
                .map(|c| (c.clone(), DataType::Utf8))
                .collect();
            let options = ListingOptions::new(Arc::new(SourceFormat(parquet_format())))
                .with_file_extension(".parquet")
                .with_table_partition_cols(partitions);
            let prefixes =
                scope.and_then(|slices| partition_prefixes(&source.partitioning, slices));
            let reading = format!("reading the schema of {url}");
            let (schema, unreadable) =
                crate::retry::patiently(&reading, INFER_TRIES, is_storage_error, || {
                    infer_schema(&ctx, &options, &url, prefixes.as_deref())
                })
                .await
                .map_err(|e| match is_storage_error(&e) {
                    true => {
                        Error::execution(context(), format!("cannot list or read its files: {e}"))
                    }
                    false => Error::config(
                        context(),
                        format!("cannot read a schema from its Parquet files: {e}"),
                    ),
                })?;
            if let Some(clash) = source
                .partitioning
                .iter()
                .find(|c| schema.field_with_name(c).is_ok())
            {
                return Err(Error::config(
                    context(),
                    format!("partition column `{clash}` is also a column inside the Parquet files"),
                ));
            }
            for (file, why) in unreadable {
                tracing::warn!(source = %source.name, "left out of the schema: {file}: {why}");
                left_out.insert(file, why);
            }
            let config = ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(schema);
            let table = ListingTable::try_new(config).context(context)?;
            tables.push((source.name.clone(), Arc::new(table)));
        }
        Ok(Sources {
            tables,
            left_out: Arc::new(left_out),
            config,
            runtime,
        })
    }

    pub fn runtime(&self) -> &RuntimeEnv {
        &self.runtime
    }

    /// The first of `files` that was left out of the schema, and why.
    pub fn left_out<'a>(&'a self, files: &'a [SourceFile]) -> Option<(&'a str, &'a str)> {
        files.iter().find_map(|file| {
            let why = self.left_out.get(&file.path)?;
            Some((file.path.as_str(), why.as_str()))
        })
    }

    /// Whether `name` is one of the pipeline's sources.
    pub fn has(&self, name: &str) -> bool {
        self.tables.iter().any(|(source, _)| source == name)
    }

    /// A fresh context for one slice (or one validation), with every source registered.
    pub fn context(&self) -> Result<SessionContext> {
        let ctx = SessionContext::new_with_config_rt(self.config.clone(), self.runtime.clone());
        for (name, table) in &self.tables {
            ctx.register_table(name.as_str(), table.clone())
                .map_err(|e| Error::Internal(format!("cannot register source `{name}`: {e}")))?;
        }
        Ok(ctx)
    }
}

/// Plans `sql` as exactly one read-only query: `SELECT`, `WITH ... SELECT` or `VALUES`.
///
/// DataFusion's `sql` executes whatever it is given: `COPY ... TO` and `INSERT INTO` a
/// listing table write files, `CREATE EXTERNAL TABLE` reads any path, DDL changes the
/// session. Anything but a query is refused before it is planned, naming `location`
/// (the file, or the option, the SQL came from); planning then disallows DDL, DML and
/// statements as well, in case a query ever smuggles one in.
pub(crate) async fn read_only_query(
    ctx: &SessionContext,
    sql: &str,
    location: impl Fn() -> String,
) -> Result<DataFrame> {
    use datafusion::sql::parser::{DFParser, Statement};
    use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
    let statements = DFParser::parse_sql(sql).context(&location)?;
    let allowed = "a single read-only query (SELECT, WITH ... SELECT or VALUES)";
    match statements.len() {
        1 => {}
        0 => {
            return Err(Error::config(
                location(),
                format!("holds no SQL; it must be {allowed}"),
            ))
        }
        n => {
            return Err(Error::config(
                location(),
                format!("holds {n} SQL statements; it must be {allowed}"),
            ))
        }
    }
    if !matches!(&statements[0], Statement::Statement(s) if matches!(**s, SqlStatement::Query(_))) {
        let text = statements[0].to_string();
        let kind: String = text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        return Err(Error::config(
            location(),
            format!("`{kind} ...` is not allowed: the SQL must be {allowed}, which cannot write or read outside the declared sources"),
        ));
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options).await.context(location)
}

fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(false);
    // Delta stores strings as Utf8; Utf8View would have to be cast back on every batch.
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    config
}

/// The root of the object store holding `url`: `s3://bucket/`, or `file:///`.
pub(crate) fn store_root(url: &Url) -> Url {
    let root = format!("{}://{}/", url.scheme(), url.host_str().unwrap_or(""));
    Url::parse(&root).expect("a scheme and a host make a URL")
}

/// The object store for a source at `url`: the local disk, or S3 configured from the
/// standard `AWS_*` environment variables and then the source's `storage_options`.
/// Errors name options by key only: their values may be secrets.
fn object_store_for(
    url: &Url,
    options: &StorageOptions,
) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    match url.scheme() {
        "file" => Ok(Arc::new(LocalFileSystem::new())),
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
            for (key, value) in options.iter() {
                let parsed: AmazonS3ConfigKey = key
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| format!("storage_options.{key} is not an S3 option"))?;
                builder = builder.with_config(parsed, value);
            }
            let store = builder
                .build()
                .map_err(|e| format!("cannot configure S3 for {url}: {e}"))?;
            Ok(Arc::new(store))
        }
        other => Err(format!(
            "`{other}://` sources are not supported; use a local path, file:// or s3://"
        )),
    }
}

/// Times schema inference is tried when storage fails: listings and footer reads at
/// start-up meet the same passing faults (resets, 5xx) as a slice's reads.
const INFER_TRIES: u32 = 3;

/// The folders (`dt=2024-01-01/`) of a source partitioned like the slices that hold the
/// slices' rows, or `None` when the source's first partition column is not the slices'.
fn partition_prefixes(partitioning: &[String], slices: &[Slice]) -> Option<Vec<String>> {
    let first = partitioning.first()?;
    let mut prefixes = slices
        .iter()
        .map(|slice| {
            let (_, value) = slice.partition.iter().find(|(column, _)| column == first)?;
            Some(format!("{first}={value}/"))
        })
        .collect::<Option<Vec<_>>>()?;
    prefixes.sort();
    prefixes.dedup();
    Some(prefixes)
}

/// Whether an error came from the object store rather than from what it returned.
fn is_storage_error(error: &datafusion::error::DataFusionError) -> bool {
    use datafusion::error::DataFusionError as E;
    match error.find_root() {
        E::ObjectStore(_) | E::IoError(_) => true,
        E::ParquetError(parquet) => matches!(
            parquet.as_ref(),
            datafusion::parquet::errors::ParquetError::External(_)
        ),
        _ => false,
    }
}

/// Infers a source's schema from the footers of its files: those under `prefixes` if
/// given (all of them if those hold none), else all. Writers spell the same column
/// differently (polars writes strings as `LargeUtf8`, DataFusion as `Utf8View`, Spark as
/// `Utf8`), and DataFusion refuses to merge those, so each file's schema is reduced to the
/// plain types first; reading casts every file to the merged schema. The columns most
/// files agree on come first, then the others' are added in order, newest first (by
/// path); a file whose footer cannot be read, or whose columns conflict, is returned with
/// the reason.
async fn infer_schema(
    ctx: &SessionContext,
    options: &ListingOptions,
    url: &ListingTableUrl,
    prefixes: Option<&[String]>,
) -> datafusion::error::Result<(SchemaRef, Vec<(String, String)>)> {
    let state = ctx.state();
    let store = state.runtime_env().object_store(url)?;
    let list = |url: ListingTableUrl| {
        let (state, store) = (&state, &store);
        async move {
            url.list_all_files(state, store.as_ref(), &options.file_extension)
                .await?
                .try_filter(|meta| std::future::ready(meta.size > 0))
                .try_collect::<Vec<ObjectMeta>>()
                .await
        }
    };
    let mut files = Vec::new();
    for prefix in prefixes.unwrap_or_default() {
        let folder = url
            .get_url()
            .join(prefix)
            .map_err(|e| datafusion::error::DataFusionError::Plan(format!("{url}{prefix}: {e}")))?;
        files.extend(list(ListingTableUrl::parse(folder.as_str())?).await?);
    }
    if files.is_empty() {
        files = list(url.clone()).await?;
    }
    if files.is_empty() {
        return Err(datafusion::error::DataFusionError::Plan(format!(
            "no {} files at {url}",
            options.file_extension
        )));
    }
    files.sort_by(|a, b| b.location.cmp(&a.location));
    let concurrency = state.config_options().execution.meta_fetch_concurrency;
    let schemas: Vec<(ObjectMeta, datafusion::error::Result<SchemaRef>)> =
        futures::stream::iter(files)
            .map(|file| {
                let (state, store) = (&state, &store);
                async move {
                    let schema = options
                        .format
                        .infer_schema(state, store, std::slice::from_ref(&file))
                        .await;
                    (file, schema)
                }
            })
            .buffered(concurrency.get())
            .collect()
            .await;
    let mut unreadable: Vec<(String, String)> = vec![];
    let mut readable: Vec<(ObjectMeta, Schema)> = vec![];
    for (file, schema) in schemas {
        match schema {
            Ok(schema) => readable.push((file, plain_schema(&schema))),
            // Storage failing is not the file's fault: the whole inference is retried.
            Err(error) if is_storage_error(&error) => return Err(error),
            Err(error) => {
                unreadable.push((file.location.to_string(), error.find_root().to_string()))
            }
        }
    }
    // The columns most files agree on (the newest such file's, on a tie) come first, so
    // one odd file, even the newest, cannot change the schema of all the others.
    let mut agreeing: Vec<(&Schema, usize)> = vec![];
    for (_, schema) in &readable {
        match agreeing.iter_mut().find(|(seen, _)| *seen == schema) {
            Some((_, count)) => *count += 1,
            None => agreeing.push((schema, 1)),
        }
    }
    let most = agreeing.iter().map(|(_, count)| *count).max().unwrap_or(0);
    let Some(&(base, _)) = agreeing.iter().find(|(_, count)| *count == most) else {
        let (file, why) = &unreadable[0];
        return Err(datafusion::error::DataFusionError::Plan(format!(
            "none of its {} files can be read, such as {file}: {why}",
            unreadable.len()
        )));
    };
    let mut merged = base.clone();
    for (file, schema) in &readable {
        match Schema::try_merge([merged.clone(), schema.clone()]) {
            Ok(wider) => merged = wider,
            Err(error) => {
                let why = format!("its columns do not fit the other files': {error}");
                unreadable.push((file.location.to_string(), why));
            }
        }
    }
    Ok((Arc::new(merged), unreadable))
}

/// A file's schema with plain string and binary types.
fn plain_schema(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(plain_type(f.data_type())))
        .collect();
    Schema::new(fields)
}

/// The plain spelling of a string or binary type: `Utf8` or `Binary`.
pub(crate) fn plain_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}

/// Parquet, with the file named in every error about one: DataFusion reports a corrupt
/// footer met while planning without saying whose it is.
#[derive(Debug)]
struct SourceFormat(ParquetFormat);

fn naming(file: &ObjectMeta, error: DataFusionError) -> DataFusionError {
    error.context(format!("source file {}", file.location))
}

#[async_trait::async_trait]
impl FileFormat for SourceFormat {
    fn get_ext(&self) -> String {
        self.0.get_ext()
    }

    fn get_ext_with_compression(&self, compression: &FileCompressionType) -> DfResult<String> {
        self.0.get_ext_with_compression(compression)
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        self.0.compression_type()
    }

    async fn infer_schema(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> DfResult<SchemaRef> {
        let schema = self.0.infer_schema(state, store, objects).await;
        match objects {
            [file] => schema.map_err(|e| naming(file, e)),
            _ => schema,
        }
    }

    async fn infer_stats(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> DfResult<Statistics> {
        let stats = self.0.infer_stats(state, store, table_schema, object).await;
        stats.map_err(|e| naming(object, e))
    }

    async fn infer_stats_and_ordering(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> DfResult<FileMeta> {
        let meta = self
            .0
            .infer_stats_and_ordering(state, store, table_schema, object);
        meta.await.map_err(|e| naming(object, e))
    }

    async fn create_physical_plan(
        &self,
        state: &dyn Session,
        conf: FileScanConfig,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.0.create_physical_plan(state, conf).await
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        self.0.file_source(table_schema)
    }
}

/// How every Parquet file is read. A listing's format carries its own options rather
/// than the session's, so view types are turned off here too.
pub(crate) fn parquet_format() -> ParquetFormat {
    ParquetFormat::default().with_force_view_types(false)
}

impl Sources {
    /// The files a physical plan scans, sorted: what a slice actually reads after pruning.
    pub fn scanned_files(&self, plan: &Arc<dyn ExecutionPlan>) -> Vec<SourceFile> {
        let mut files = Vec::new();
        plan.apply(|node| {
            if let Some(exec) = node.downcast_ref::<DataSourceExec>() {
                if let Some(scan) = exec.data_source().downcast_ref::<FileScanConfig>() {
                    for file in scan.file_groups.iter().flat_map(|group| group.files()) {
                        let meta = &file.object_meta;
                        let rows = file.statistics.as_ref();
                        files.push(SourceFile {
                            path: meta.location.to_string(),
                            size: meta.size,
                            modified: meta.last_modified.to_rfc3339(),
                            e_tag: meta.e_tag.clone(),
                            source: self.source_of(&meta.location).unwrap_or_default(),
                            rows: rows.and_then(|s| s.num_rows.get_value().map(|n| *n as u64)),
                        });
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .expect("the visitor never fails");
        files.sort();
        files.dedup();
        files
    }

    /// The source whose folder holds `path`.
    fn source_of(&self, path: &object_store::path::Path) -> Option<String> {
        self.tables.iter().find_map(|(name, table)| {
            let mut folders = table.table_paths().iter();
            folders
                .any(|url| path.prefix_matches(url.prefix()))
                .then(|| name.clone())
        })
    }
}

/// A stable fingerprint of a list of source files.
pub fn fingerprint_files(files: &[SourceFile]) -> String {
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.path.as_bytes());
        hash.update([0]);
        hash.update(file.size.to_le_bytes());
        hash.update(file.modified.as_bytes());
        hash.update([0]);
        hash.update(file.e_tag.as_deref().unwrap_or("").as_bytes());
        hash.update([0]);
    }
    hex(&hash.finalize())
}

/// A stable fingerprint of a text, such as the SQL template.
pub fn fingerprint_text(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// 128 bits of a SHA-256 digest, as hex: plenty to tell inputs apart, short to read.
fn hex(digest: &[u8]) -> String {
    hex::encode(&digest[..16])
}
