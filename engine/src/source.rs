//! Sources as SQL tables, and the DataFusion sessions slices run in.
//!
//! Owns resolving each source once per run (schema inference, table provider) and handing
//! every slice a fresh [`SessionContext`] over the same providers and runtime: a slice
//! then sees exactly the source tables plus its own `slice` output, and nothing it
//! registers leaks into another slice. Listings are never cached across slices, so each
//! slice sees its source files as they are when it starts. This module does not write.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
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

/// The resolved sources of a pipeline and the runtime their slices share.
#[derive(Clone)]
pub struct Sources {
    tables: Vec<(String, Arc<ListingTable>)>,
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
    /// Resolves every source of `pipeline`: infers its schema once, from its files.
    pub async fn resolve(
        pipeline: &Pipeline,
        stores: &StoreOverrides,
        memory_limit: usize,
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

        let mut tables = Vec::new();
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
            let options = ListingOptions::new(Arc::new(parquet_format()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(partitions);
            let schema = infer_schema_patiently(&ctx, &options, &url)
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
            let config = ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(schema);
            let table = ListingTable::try_new(config).context(context)?;
            tables.push((source.name.clone(), Arc::new(table)));
        }
        Ok(Sources {
            tables,
            config,
            runtime,
        })
    }

    pub fn runtime(&self) -> &RuntimeEnv {
        &self.runtime
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

async fn infer_schema_patiently(
    ctx: &SessionContext,
    options: &ListingOptions,
    url: &ListingTableUrl,
) -> datafusion::error::Result<SchemaRef> {
    let mut tries = 0;
    loop {
        tries += 1;
        match infer_schema(ctx, options, url).await {
            Err(error) if tries < INFER_TRIES && is_storage_error(&error) => {
                tracing::warn!("reading the schema of {url} again: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(250 << tries)).await;
            }
            result => return result,
        }
    }
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

/// Infers a source's schema from the footers of all its files. Writers spell the same
/// column differently (polars writes strings as `LargeUtf8`, DataFusion as `Utf8View`,
/// Spark as `Utf8`), and DataFusion refuses to merge those, so each file's schema is
/// reduced to the plain types first; reading casts every file to the merged schema.
async fn infer_schema(
    ctx: &SessionContext,
    options: &ListingOptions,
    url: &ListingTableUrl,
) -> datafusion::error::Result<SchemaRef> {
    let state = ctx.state();
    let store = state.runtime_env().object_store(url)?;
    let mut files: Vec<ObjectMeta> = url
        .list_all_files(&state, store.as_ref(), &options.file_extension)
        .await?
        .try_filter(|meta| std::future::ready(meta.size > 0))
        .try_collect()
        .await?;
    if files.is_empty() {
        return Err(datafusion::error::DataFusionError::Plan(format!(
            "no {} files at {url}",
            options.file_extension
        )));
    }
    // Merging adds columns in the order it meets them: sorted files give a stable order.
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let concurrency = state.config_options().execution.meta_fetch_concurrency;
    let schemas: Vec<SchemaRef> = futures::stream::iter(files)
        .map(|file| {
            let (state, store) = (&state, &store);
            async move { options.format.infer_schema(state, store, &[file]).await }
        })
        .buffered(concurrency.get())
        .try_collect()
        .await?;
    let plain = schemas.iter().map(|schema| {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(plain_type(f.data_type())))
            .collect();
        Schema::new(fields)
    });
    Ok(Arc::new(Schema::try_merge(plain)?))
}

/// The plain spelling of a string or binary type: `Utf8` or `Binary`.
pub(crate) fn plain_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
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
