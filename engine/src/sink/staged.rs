//! Staged output as a DataFusion table: what assertions check, what merge reads as its
//! source, and what a rebuild's preview queries. Reading only; nothing here writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{ident, lit, DataFrame, SessionContext};
use deltalake::kernel::Add;
use url::Url;

use super::Staged;

impl Staged {
    /// The staged output of a slice as a table: its files, with the partition columns
    /// that were written as folders added back as typed constants, in the output's
    /// column order.
    pub async fn table(
        &self,
        ctx: &SessionContext,
        schema: &SchemaRef,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        files_table(ctx, schema, &self.base, &self.partition_columns, &self.adds).await
    }
}

/// Data files as a table: `adds` (paths relative to `base`), with the partition columns
/// written as folders added back as typed constants, in the output's column order.
pub(crate) async fn files_table(
    ctx: &SessionContext,
    schema: &SchemaRef,
    base: &Url,
    partition_columns: &[String],
    adds: &[Add],
) -> datafusion::error::Result<Arc<dyn TableProvider>> {
    let file_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let mut groups: BTreeMap<Vec<(String, Option<String>)>, Vec<ListingTableUrl>> = BTreeMap::new();
    for add in adds {
        let mut partition: Vec<_> = add.partition_values.clone().into_iter().collect();
        partition.sort();
        let url = base
            .join(&add.path)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        groups
            .entry(partition)
            .or_default()
            .push(ListingTableUrl::parse(url.as_str())?);
    }
    let mut union: Option<DataFrame> = None;
    for (partition, urls) in groups {
        let options = ListingOptions::new(Arc::new(crate::source::parquet_format()))
            .with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(file_schema.clone());
        let files = ctx.read_table(Arc::new(ListingTable::try_new(config)?))?;
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
        let group = files.select(columns)?;
        union = Some(match union {
            None => group,
            Some(all) => all.union(group)?,
        });
    }
    Ok(match union {
        Some(frame) => frame.into_view(),
        None => Arc::new(EmptyTable::new(schema.clone())),
    })
}
