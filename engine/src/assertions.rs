//! Checking a slice's output before it is published.
//!
//! Row counts and null rates come from counts the sink gathered while streaming the
//! output. `unique` and custom SQL run as DataFusion queries over the staged files,
//! exposed as the table `slice`, so they spill rather than hold the slice in memory.
//! This module reads staged files; it never commits or deletes anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
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

use crate::error::{Error, Result, ResultExt};
use crate::ledger::AssertionResult;
use crate::pipeline::Assertion;
use crate::sink::Staged;
use crate::template;

/// Runs every assertion on a staged slice; the results say which passed.
/// `ctx` is the slice's own context: `slice` is registered in it here.
pub async fn check(
    ctx: &SessionContext,
    assertions: &[Assertion],
    staged: &Staged,
    schema: &SchemaRef,
    variables: &[(&str, String)],
    origin: &str,
) -> Result<Vec<AssertionResult>> {
    if assertions
        .iter()
        .any(|a| matches!(a, Assertion::Unique(_) | Assertion::Sql(_)))
    {
        let table = staged_table(ctx, schema, staged)
            .await
            .context(|| "reading the staged slice".into())?;
        ctx.register_table("slice", table)
            .context(|| "registering the staged slice".into())?;
    }
    let mut results = Vec::with_capacity(assertions.len());
    for assertion in assertions {
        let (passed, measured) = match assertion {
            Assertion::MinRows(min) => {
                let passed = staged.rows >= *min;
                (
                    passed,
                    format!(
                        "rows = {} {} {min}",
                        staged.rows,
                        if passed { ">=" } else { "<" }
                    ),
                )
            }
            Assertion::MaxNullRate { column, rate } => {
                let index = schema
                    .index_of(column)
                    .map_err(|_| Error::Internal(format!("column {column} vanished")))?;
                let nulls = staged.null_counts[index];
                let measured = if staged.rows == 0 {
                    0.0
                } else {
                    nulls as f64 / staged.rows as f64
                };
                let passed = measured <= *rate;
                let shown = (measured * 10_000.0).round() / 10_000.0;
                (
                    passed,
                    format!(
                        "null rate of {column} = {shown} {} {rate}",
                        if passed { "<=" } else { ">" }
                    ),
                )
            }
            Assertion::Unique(columns) => unique(ctx, columns).await?,
            Assertion::Sql(sql) => {
                let sql = template::render(sql, variables, origin)?;
                custom(ctx, &sql).await?
            }
        };
        results.push(AssertionResult {
            assertion: assertion.describe(),
            passed,
            measured,
        });
    }
    Ok(results)
}

async fn unique(ctx: &SessionContext, columns: &[String]) -> Result<(bool, String)> {
    let keys = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {keys}, count(*) AS backfill_n, count(*) OVER () AS backfill_keys FROM slice \
         GROUP BY {keys} HAVING count(*) > 1 ORDER BY backfill_n DESC LIMIT 1"
    );
    let context = || format!("unique ({})", columns.join(", "));
    let batches = ctx
        .sql(&sql)
        .await
        .context(context)?
        .collect()
        .await
        .context(context)?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok((
            true,
            format!("0 duplicated keys of ({})", columns.join(", ")),
        ));
    };
    let value = |i: usize| {
        ScalarValue::try_from_array(batch.column(i), 0)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let example = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c}={}", value(i)))
        .collect::<Vec<_>>()
        .join(", ");
    let (times, duplicated) = (value(columns.len()), value(columns.len() + 1));
    Ok((
        false,
        format!(
            "{duplicated} duplicated keys of ({}), e.g. {example} appears {times} times",
            columns.join(", ")
        ),
    ))
}

async fn custom(ctx: &SessionContext, sql: &str) -> Result<(bool, String)> {
    let context = || format!("assertion `{sql}`");
    let batches = crate::source::read_only_query(ctx, sql, context)
        .await?
        .collect()
        .await
        .context(context)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let batch = batches.iter().find(|b| b.num_rows() > 0);
    let value = batch.and_then(|b| {
        b.column(0)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .map(|a| (a.is_valid(0), a.value(0)))
    });
    match (rows, batch.map(|b| b.num_columns()), value) {
        (1, Some(1), Some((true, passed))) => Ok((passed, format!("`{sql}` returned {passed}"))),
        (1, Some(1), Some((false, _))) => Ok((false, format!("`{sql}` returned NULL"))),
        _ => Err(Error::config(
            context(),
            format!("must return one row with one boolean column, got {rows} row(s)"),
        )),
    }
}

/// The staged output of a slice as a table: its files, with the partition columns that
/// were written as folders added back as typed constants, in the output's column order.
pub async fn staged_table(
    ctx: &SessionContext,
    schema: &SchemaRef,
    staged: &Staged,
) -> datafusion::error::Result<Arc<dyn TableProvider>> {
    files_table(
        ctx,
        schema,
        &staged.base,
        &staged.partition_columns,
        &staged.adds,
    )
    .await
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
