//! Opening the destination: loading its log, reaching it through a store whose reads are
//! retried, refusing a folder of foreign files, and checking that an existing table fits
//! the pipeline's output.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::StructType;
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStore;
use url::Url;

use crate::error::{Error, Result, ResultExt};
use crate::history::History;
use crate::pipeline::Destination;
use crate::retry::{RequestRetry, RetryingStore};

/// The table at `destination` at its latest version, if there is one.
pub(crate) async fn existing_table(destination: &Destination) -> Result<Option<DeltaTable>> {
    let (options, reach) = reach_destination(destination)?;
    let (table, exists) = load_table(&destination.url, &options, &reach).await?;
    Ok(exists.then_some(table))
}

/// The run history next to the table at `destination`, whether the table exists or not;
/// nothing is read.
pub fn history_at(destination: &Destination) -> Result<History> {
    let (options, reach) = reach_destination(destination)?;
    let url = &destination.url;
    let context = || format!("destination {url}");
    let table = table_builder(url, &options, &reach)
        .context(context)?
        .build()
        .context(context)?;
    Ok(History::new(table.object_store()))
}

/// The storage options of `destination`, and the root store that reaches it with reads
/// asked again as by default.
fn reach_destination(
    destination: &Destination,
) -> Result<(HashMap<String, String>, Arc<dyn ObjectStore>)> {
    let options = storage_options(destination);
    let url = &destination.url;
    let reach = reach(url, &options, None, RequestRetry::default())
        .context(|| format!("destination {url}"))?;
    Ok((options, reach))
}

/// A destination's storage options as delta-rs takes them.
pub(super) fn storage_options(destination: &Destination) -> HashMap<String, String> {
    let options = destination.storage_options.iter();
    options.map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The table at `url`, loaded if it exists, and whether it does. A table that does not
/// exist yet still gives the object store the sink writes through.
pub(super) async fn load_table(
    url: &Url,
    storage_options: &HashMap<String, String>,
    reach: &Arc<dyn ObjectStore>,
) -> Result<(DeltaTable, bool)> {
    let context = || format!("destination {url}");
    let mut table = table_builder(url, storage_options, reach)
        .context(context)?
        .build()
        .context(context)?;
    let exists = table
        .log_store()
        .is_delta_table_location()
        .await
        .context(context)?;
    if exists {
        table.load().await.context(context)?;
    }
    Ok((table, exists))
}

/// Refuses a location that holds files but no Delta table: making a table around them
/// would let a later VACUUM delete them. A folder with `_backfill/` or `_delta_log/` was
/// started by a backfill (history, or files of attempts that never committed) and is fine.
pub(super) async fn refuse_foreign_files(table: &DeltaTable, url: &Url) -> Result<()> {
    let listed = table
        .object_store()
        .list_with_delimiter(None)
        .await
        .context(|| format!("destination {url}: listing it"))?;
    let folders: Vec<String> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    if folders
        .iter()
        .any(|f| *f == "_backfill" || *f == "_delta_log")
    {
        return Ok(());
    }
    let example = listed
        .objects
        .first()
        .map(|o| o.location.to_string())
        .or_else(|| folders.first().map(|f| format!("{f}/")));
    match example {
        None => Ok(()),
        Some(example) => Err(Error::config(
            format!("destination {url}"),
            format!("holds files (such as `{example}`) but no Delta table; backfill writes only to an empty folder or a Delta table, since a table made around other files could later delete them"),
        )),
    }
}

/// The root store to reach the table at `url` through: `given`, or the one delta-rs
/// would make for the URL and its options, with its reads retried by `retry`.
pub(super) fn reach(
    url: &Url,
    storage_options: &HashMap<String, String>,
    given: Option<Arc<dyn ObjectStore>>,
    retry: RequestRetry,
) -> deltalake::DeltaResult<Arc<dyn ObjectStore>> {
    let root = match given {
        Some(store) => store,
        None => {
            let scheme = Url::parse(&format!("{}://", url.scheme()))
                .map_err(|_| DeltaTableError::InvalidTableLocation(url.to_string()))?;
            let factories = deltalake::logstore::object_store_factories();
            let factory = factories
                .get(&scheme)
                .ok_or_else(|| DeltaTableError::InvalidTableLocation(url.to_string()))?;
            let config = deltalake::logstore::StorageConfig::parse_options(storage_options)?;
            factory.value().parse_url_opts(url, &config)?.0
        }
    };
    Ok(RetryingStore::wrap(root, retry))
}

/// A builder for the table at `url`, reached through the root store `reach`.
pub(super) fn table_builder(
    url: &Url,
    storage_options: &HashMap<String, String>,
    reach: &Arc<dyn ObjectStore>,
) -> deltalake::DeltaResult<deltalake::DeltaTableBuilder> {
    Ok(deltalake::DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(storage_options.clone())
        .with_storage_backend(reach.clone(), url.clone()))
}

/// Checks that an existing table has the columns, types and partitioning the pipeline writes.
pub(super) fn check_compatible(
    table: &DeltaTable,
    schema: &SchemaRef,
    partition_by: &[String],
) -> std::result::Result<(), String> {
    let snapshot = table.snapshot().map_err(|e| e.to_string())?;
    let metadata = snapshot.metadata();
    if metadata.partition_columns() != partition_by {
        return Err(format!(
            "the table is partitioned by {:?} but the pipeline's destination.partition_by is {:?}",
            metadata.partition_columns(),
            partition_by
        ));
    }
    let expected =
        TryIntoKernel::<StructType>::try_into_kernel(schema.as_ref()).map_err(|e| e.to_string())?;
    let actual = snapshot.schema();
    let describe = |s: &StructType| {
        s.fields()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
    };
    let (expected, actual) = (describe(&expected), describe(actual.as_ref()));
    if expected != actual {
        return Err(format!(
            "the table's columns ({}) differ from the transform's output ({}); write to a new destination or rebuild",
            actual.join(", "),
            expected.join(", ")
        ));
    }
    Ok(())
}

/// Refuses a table whose data files need more than plain Parquet to read (deletion
/// vectors, column mapping), for a strategy that reads them so.
pub(super) fn refuse_files_beyond_plain(table: &DeltaTable) -> std::result::Result<(), String> {
    let snapshot = table.snapshot().map_err(|e| e.to_string())?;
    let beyond = crate::source::beyond_plain_files(snapshot.protocol());
    if beyond.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the table uses {}, but a merge reads the rows its slices' partitions keep as plain Parquet files; rewrite the table without them (for deletion vectors, REORG TABLE ... APPLY (PURGE) and disable them), or write with strategy = \"overwrite\"",
        beyond.join(", ")
    ))
}
