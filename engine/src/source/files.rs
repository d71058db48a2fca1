//! Named data files as a DataFusion table: the files exactly, never a listing of their
//! folder, so files no version references (uncommitted attempts, removed files) are
//! never read.
//!
//! What a slice staged is read this way (its checks, merge, a rebuild's preview), and so
//! is a Delta source on a cluster. The table is built only from DataFusion's own Parquet
//! listing tables, projections, unions and values, so Ballista ships it as it is. This
//! module reads; it never writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{cast, LogicalPlan, LogicalPlanBuilder, Union};
use datafusion::prelude::{ident, lit};
use delta_kernel::table_features::TableFeature;
use deltalake::kernel::Protocol;
use url::Url;

/// A data file of a table: its path relative to the table's folder, percent-decoded, and
/// its partition values as the Delta log writes them (`None` for a null).
pub(crate) struct DataFile {
    pub(crate) path: String,
    pub(crate) partition: HashMap<String, Option<String>>,
}

/// `files` of the table at `base` as one table of `schema`: the partition columns, which
/// the files hold as folders, are added back as typed constants, in `schema`'s column
/// order.
pub(crate) fn files_table(
    schema: &SchemaRef,
    base: &Url,
    partition_columns: &[String],
    files: impl IntoIterator<Item = DataFile>,
) -> Result<Arc<dyn TableProvider>> {
    let file_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let mut groups: BTreeMap<Vec<(String, Option<String>)>, Vec<ListingTableUrl>> = BTreeMap::new();
    for file in files {
        let mut partition: Vec<_> = file.partition.into_iter().collect();
        partition.sort();
        groups
            .entry(partition)
            .or_default()
            .push(ListingTableUrl::parse(
                file_url(base, &file.path)?.as_str(),
            )?);
    }
    let mut parts = Vec::with_capacity(groups.len());
    for (partition, urls) in groups {
        let options =
            ListingOptions::new(Arc::new(super::parquet_format())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(file_schema.clone());
        let files = provider_as_source(Arc::new(ListingTable::try_new(config)?));
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let value = partition
                .iter()
                .find(|(c, _)| c == field.name())
                .map(|(_, v)| v);
            columns.push(match value {
                None => ident(field.name()),
                Some(Some(text)) => lit(ScalarValue::try_from_string(
                    text.clone(),
                    field.data_type(),
                )?)
                .alias(field.name()),
                Some(None) => lit(ScalarValue::try_from(field.data_type())?).alias(field.name()),
            });
        }
        let part = LogicalPlanBuilder::scan("files", files, None)?
            .project(columns)?
            .build()?;
        parts.push(Arc::new(part));
    }
    let plan = match parts.len() {
        0 => no_rows(schema)?,
        1 => parts.pop().expect("one part").as_ref().clone(),
        _ => LogicalPlan::Union(Union::try_new(parts)?),
    };
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// A table of `schema` with no rows, as a plan a cluster can ship (an empty in-memory
/// table is not one): one row of typed nulls, filtered out.
fn no_rows(schema: &SchemaRef) -> Result<LogicalPlan> {
    let nulls = schema
        .fields()
        .iter()
        .map(|field| {
            let null = ScalarValue::try_from(field.data_type())?;
            Ok(cast(lit(null), field.data_type().clone()).alias(field.name()))
        })
        .collect::<Result<Vec<_>>>()?;
    LogicalPlanBuilder::empty(true)
        .project(nulls)?
        .filter(lit(false))?
        .build()
}

/// The URL of the file at `path` (percent-decoded, relative to `base`).
fn file_url(base: &Url, path: &str) -> Result<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| DataFusionError::Internal(format!("{base} cannot hold files")))?
        .pop_if_empty()
        .extend(path.split('/'));
    Ok(url)
}

/// A path as the Delta log writes it, percent-decoded as delta-rs reads it.
pub(crate) fn decoded_path(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// Reader features that change nothing in how a data file is read.
const READ_AS_PLAIN_FILES: [TableFeature; 3] = [
    TableFeature::TimestampWithoutTimezone,
    TableFeature::V2Checkpoint,
    TableFeature::VacuumProtocolCheck,
];

/// What a Delta table's `protocol` needs beyond reading its data files as plain Parquet
/// (deletion vectors, column mapping), by name: empty when [`files_table`] reads them
/// right.
pub(crate) fn beyond_plain_files(protocol: &Protocol) -> Vec<String> {
    match protocol.min_reader_version() {
        1 => vec![],
        3 => protocol
            .reader_features()
            .unwrap_or_default()
            .iter()
            .filter(|feature| !READ_AS_PLAIN_FILES.contains(feature))
            .map(ToString::to_string)
            .collect(),
        version => vec![format!("reader version {version}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_url_encodes_what_its_decoded_path_holds() {
        let base = Url::parse("s3://bucket/table/").unwrap();
        let url = file_url(&base, "name=O'Brien & co/part 1.parquet").unwrap();
        assert_eq!(
            url.as_str(),
            "s3://bucket/table/name=O'Brien%20&%20co/part%201.parquet"
        );
        let without_slash = Url::parse("file:///data/table").unwrap();
        let url = file_url(&without_slash, "dt=2024-01-01/a%b.parquet").unwrap();
        assert_eq!(
            url.as_str(),
            "file:///data/table/dt=2024-01-01/a%25b.parquet"
        );
        assert_eq!(
            decoded_path("dt=O%27Brien/a%2525.parquet"),
            "dt=O'Brien/a%25.parquet"
        );
    }
}
