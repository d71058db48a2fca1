//! Checking a slice's output before it is published.
//!
//! Row counts and null rates come from counts the sink gathered while streaming the
//! output. `unique` and custom SQL run as DataFusion queries over the staged files,
//! exposed as the table `slice`, so they spill rather than hold the slice in memory.
//! This module reads staged files; it never commits or deletes anything.

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result, ResultExt};
use crate::ledger::AssertionResult;
use crate::pipeline::Assertion;
use crate::sink::StagedOutput;
use crate::template;

/// Runs every assertion on a staged slice; the results say which passed. Assertions
/// that query the slice run in a session of their own, made by `session` (here, or on
/// the cluster the slice computed on), where the staged slice is the table `slice`.
pub async fn check(
    session: impl AsyncFnOnce() -> Result<SessionContext>,
    assertions: &[Assertion],
    staged: &StagedOutput,
    schema: &SchemaRef,
    variables: &[(&str, String)],
    origin: &str,
) -> Result<Vec<AssertionResult>> {
    let queried = assertions
        .iter()
        .any(|a| matches!(a, Assertion::Unique(_) | Assertion::Sql { .. }));
    // Only assertions that query the slice pay for a session.
    let ctx = match queried {
        true => {
            let ctx = session().await?;
            let table = staged
                .table(schema)
                .context(|| "reading the staged slice".into())?;
            ctx.register_table("slice", table)
                .context(|| "registering the staged slice".into())?;
            Some(ctx)
        }
        false => None,
    };
    let ctx = || {
        ctx.as_ref()
            .expect("a session for assertions that query the slice")
    };
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
            Assertion::Unique(columns) => unique(ctx(), columns).await?,
            Assertion::Sql { sql, .. } => {
                let sql = template::render(sql, variables, origin)?;
                custom(ctx(), &sql).await?
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
    let batches = crate::source::read_only_query(ctx.state(), sql, context)
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
