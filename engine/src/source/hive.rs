//! The hive-partitioned Parquet source: a folder of `col=value/` folders of Parquet files,
//! read as one table whose schema is inferred once, from the footers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Statistics;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::{FileFormat, FileMeta};
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::physical_plan::FileSource;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore};

use super::{SourceFile, SourceTable};
use crate::error::{Error, Result, ResultExt};
use crate::pipeline::{Pipeline, Source};
use crate::slice::Slice;

/// A hive-partitioned Parquet source, resolved: its table, and the files left out of its
/// schema with the reason (not valid Parquet, or columns that conflict).
pub struct HiveParquet {
    table: Arc<ListingTable>,
    left_out: HashMap<String, String>,
    /// The files listed to infer the schema, kept for the first [`HiveParquet::list`]
    /// so that opening and planning list the source once.
    listed_at_open: Mutex<Option<Listed>>,
}

/// The non-empty files of a source as listed, and which values of its first partition
/// column they cover: every value, or only those whose folders were listed.
pub(crate) struct Listed {
    pub files: Vec<ObjectMeta>,
    pub covered: Option<Vec<String>>,
}

impl HiveParquet {
    /// Infers `source`'s schema once, from its files. With a `scope`, a source
    /// partitioned like the slices reads only the footers of the scope's partitions.
    pub async fn resolve(
        pipeline: &Pipeline,
        source: &Source,
        ctx: &SessionContext,
        scope: Option<&[Slice]>,
    ) -> Result<Self> {
        let context = || super::source_context(pipeline, source);
        let url = ListingTableUrl::parse(source.url.as_str()).context(context)?;
        let partitions = source
            .partitioning
            .iter()
            .map(|c| (c.clone(), DataType::Utf8))
            .collect();
        let options = ListingOptions::new(Arc::new(ParquetNamingFiles(parquet_format())))
            .with_file_extension(".parquet")
            .with_table_partition_cols(partitions);
        let values = scope.and_then(|slices| first_partition_values(&source.partitioning, slices));
        // The store asks each listing and footer read again while it fails for a passing
        // reason; what still fails here failed for good, or for longer than its budget.
        let failed = |e: DataFusionError| match is_storage_error(&e) {
            true => Error::execution(context(), format!("cannot list or read its files: {e}")),
            false => Error::config(
                context(),
                format!("cannot read a schema from its Parquet files: {e}"),
            ),
        };
        let listed = list_files(&ctx.state(), &options, &url, &source.partitioning, values)
            .await
            .map_err(failed)?;
        let (schema, unreadable) = infer_schema(ctx, &options, &url, &listed.files)
            .await
            .map_err(failed)?;
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
        let mut left_out = HashMap::new();
        for (file, why) in unreadable {
            tracing::warn!(source = %source.name, "left out of the schema: {file}: {why}");
            left_out.insert(file, why);
        }
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        let table = ListingTable::try_new(config).context(context)?;
        Ok(HiveParquet {
            table: Arc::new(table),
            left_out,
            listed_at_open: Mutex::new(Some(listed)),
        })
    }

    /// The partition columns, in folder order.
    pub(crate) fn partitioning(&self) -> Vec<String> {
        let columns = self.table.options().table_partition_cols.iter();
        columns.map(|(name, _)| name.clone()).collect()
    }

    /// The files of the source, listed as DataFusion lists a scan's, and where: the first
    /// time, those listed as it was opened (the scope's partitions, or all), then every
    /// file, listed again.
    pub(crate) async fn list(&self, state: &dyn Session) -> Result<(ListingTableUrl, Listed)> {
        let url = self.table.table_paths()[0].clone();
        let at_open = self.listed_at_open.lock().expect("never poisoned").take();
        if let Some(listed) = at_open {
            return Ok((url, listed));
        }
        let listed = list_files(state, self.table.options(), &url, &[], None).await;
        let listed = listed.context(|| format!("listing the source at {url}"))?;
        Ok((url, listed))
    }
}

impl SourceTable for HiveParquet {
    fn provider(&self) -> Arc<dyn TableProvider> {
        Arc::new(HiveListing(self.table.clone()))
    }

    fn owns(&self, path: &object_store::path::Path) -> bool {
        let mut folders = self.table.table_paths().iter();
        folders.any(|url| path.prefix_matches(url.prefix()))
    }

    fn left_out(&self, path: &str) -> Option<&str> {
        self.left_out.get(path).map(String::as_str)
    }

    /// The same files, schema and partitions with DataFusion's own Parquet format, which
    /// a cluster can ship (errors then do not name the file).
    fn portable(&self, _scanned: Option<&[SourceFile]>) -> Result<Arc<dyn TableProvider>> {
        let options = self.table.options();
        let partitions: Vec<&str> = options
            .table_partition_cols
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let schema = self.table.schema();
        let fields = schema
            .fields()
            .iter()
            .filter(|f| !partitions.contains(&f.name().as_str()));
        let file_schema = Arc::new(Schema::new(fields.cloned().collect::<Vec<_>>()));
        let portable = ListingOptions::new(Arc::new(parquet_format()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(options.table_partition_cols.clone());
        let config = ListingTableConfig::new_with_multi_paths(self.table.table_paths().clone())
            .with_listing_options(portable)
            .with_schema(file_schema);
        let table = ListingTable::try_new(config)
            .map_err(|e| Error::Internal(format!("a portable copy of a Parquet source: {e}")))?;
        Ok(Arc::new(table))
    }
}

/// A listing table whose scans find the folders of values with any characters. Asked for
/// one value of a partition column, DataFusion lists only the folder `column=value/`,
/// spelled as it escapes values, and so misses the folder of a value spelled otherwise:
/// as Hive escapes it (`tenant=o%27brien` for `o'brien`), or as the local file system's
/// store names it (`x|y`). A scan for a value of anything but letters, digits, `-`, `_`
/// and `.` asks for `column IN (value)` instead: the same rows, found among every folder.
#[derive(Debug)]
struct HiveListing(Arc<ListingTable>);

#[async_trait::async_trait]
impl TableProvider for HiveListing {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        self.0.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let partitions = &self.0.options().table_partition_cols;
        let filters = (filters.iter())
            .map(|filter| any_spelling(filter.clone(), partitions))
            .collect::<DfResult<Vec<_>>>()?;
        self.0.scan(state, projection, &filters, limit).await
    }
}

/// `filter` with each `column = 'value'` on a partition column whose value a folder may
/// spell otherwise asked as `column IN ('value')`, which DataFusion lists no folder for.
fn any_spelling(filter: Expr, partitions: &[(String, DataType)]) -> DfResult<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let rewritten = filter.transform_up(|expr| {
        let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = &expr
        else {
            return Ok(Transformed::no(expr));
        };
        let ((Expr::Column(column), Expr::Literal(value, _))
        | (Expr::Literal(value, _), Expr::Column(column))) = (left.as_ref(), right.as_ref())
        else {
            return Ok(Transformed::no(expr));
        };
        let partition = partitions.iter().any(|(name, _)| *name == column.name);
        let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        let escaped = value
            .try_as_str()
            .flatten()
            .is_some_and(|v| !v.chars().all(plain));
        if !(partition && escaped) {
            return Ok(Transformed::no(expr));
        }
        let literal = Expr::Literal(value.clone(), None);
        Ok(Transformed::yes(
            Expr::Column(column.clone()).in_list(vec![literal], false),
        ))
    })?;
    Ok(rewritten.data)
}

/// The values of a source's first partition column whose folders (`dt=2024-01-01/`) hold
/// the slices' rows, or `None` when that column is not the slices'.
fn first_partition_values(partitioning: &[String], slices: &[Slice]) -> Option<Vec<String>> {
    let first = partitioning.first()?;
    let mut values = slices
        .iter()
        .map(|slice| {
            let (_, value) = slice.partition.iter().find(|(column, _)| column == first)?;
            Some(value.clone())
        })
        .collect::<Option<Vec<_>>>()?;
    values.sort();
    values.dedup();
    Some(values)
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

/// The non-empty files of a source: those in the folders of `values` of its first
/// partition column if given, listed 16 folders at a time (all of them if those hold
/// none), else all.
async fn list_files(
    state: &dyn Session,
    options: &ListingOptions,
    url: &ListingTableUrl,
    partitioning: &[String],
    values: Option<Vec<String>>,
) -> datafusion::error::Result<Listed> {
    let store = state.runtime_env().object_store(url)?;
    let list = |url: ListingTableUrl| {
        let store = &store;
        async move {
            url.list_all_files(state, store.as_ref(), &options.file_extension)
                .await?
                .try_filter(|meta| std::future::ready(meta.size > 0))
                .try_collect::<Vec<ObjectMeta>>()
                .await
        }
    };
    if let (Some(values), Some(first)) = (values, partitioning.first()) {
        let folder = |value: &String| {
            let folder = url.get_url().join(&format!("{first}={value}/"));
            let folder = folder.map_err(|e| DataFusionError::Plan(format!("{url}{value}: {e}")));
            ListingTableUrl::parse(folder?.as_str())
        };
        let folders: Vec<ListingTableUrl> = values.iter().map(folder).collect::<DfResult<_>>()?;
        let listed: Vec<Vec<ObjectMeta>> = futures::stream::iter(folders)
            .map(list)
            .buffered(16)
            .try_collect()
            .await?;
        let files: Vec<ObjectMeta> = listed.into_iter().flatten().collect();
        if !files.is_empty() {
            let covered = Some(values);
            return Ok(Listed { files, covered });
        }
    }
    let files = list(url.clone()).await?;
    Ok(Listed {
        files,
        covered: None,
    })
}

/// Infers a source's schema from the footers of `files`. Writers spell the same column
/// differently (polars writes strings as `LargeUtf8`, DataFusion as `Utf8View`, Spark as
/// `Utf8`), and DataFusion refuses to merge those, so each file's schema is reduced to the
/// plain types first; reading casts every file to the merged schema. The columns most
/// files agree on come first, then the others' are added in order, newest first (by
/// path); a file whose footer cannot be read, or whose columns conflict, is returned with
/// the reason.
///
/// Footers read here are not cached: a slice that runs reads its own files' footers again
/// when it plans, and keeps them for its scan. Caching every footer of every source would
/// cost `plan`, `status` and a rerun of done slices, which plan no SQL, a quarter of their
/// time and memory for nothing.
async fn infer_schema(
    ctx: &SessionContext,
    options: &ListingOptions,
    url: &ListingTableUrl,
    files: &[ObjectMeta],
) -> datafusion::error::Result<(SchemaRef, Vec<(String, String)>)> {
    let state = uncached(&ctx.state())?;
    let store = state.runtime_env().object_store(url)?;
    if files.is_empty() {
        return Err(datafusion::error::DataFusionError::Plan(format!(
            "no {} files at {url}",
            options.file_extension
        )));
    }
    let mut files = files.to_vec();
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

/// `state`, reading through the same stores without caching footers.
fn uncached(state: &SessionState) -> DfResult<SessionState> {
    let caches = CacheManagerConfig::default()
        .with_list_files_cache_limit(0)
        .with_metadata_cache_limit(0);
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(state.runtime_env().object_store_registry.clone())
        .with_cache_manager(caches)
        .build()?;
    Ok(SessionStateBuilder::new_from_existing(state.clone())
        .with_runtime_env(Arc::new(runtime))
        .build())
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
struct ParquetNamingFiles(ParquetFormat);

fn naming(file: &ObjectMeta, error: DataFusionError) -> DataFusionError {
    error.context(format!("source file {}", file.location))
}

#[async_trait::async_trait]
impl FileFormat for ParquetNamingFiles {
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
