//! Which slices of an upstream pipeline a downstream slice reads, when a chain of
//! pipelines runs together.
//!
//! A downstream slice's plan scans the upstream's table with filters (`dt = '2024-01-03'`,
//! a week's range, or none at all). Evaluated over the upstream slices' partition values,
//! those filters say which upstream slices could hold rows the downstream slice reads: it
//! waits for exactly those. Only filters on the upstream's slice columns are used, so
//! the answer errs on the side of waiting: a filter this cannot evaluate excludes no
//! slice. Pure: no IO.

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, TableReference};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::create_physical_expr;
use serde::Serialize;
use std::collections::BTreeSet;

use crate::slice::Slice;

/// A source of a downstream pipeline that reads the table of an upstream pipeline of the
/// same run, and the upstream's slices in that run.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The downstream's name for the source.
    pub source: String,
    pub pipeline: String,
    /// The upstream's slices this run selects, in its run order.
    pub slices: Vec<Slice>,
    /// The table as the upstream creates it, should it not be written yet.
    pub unwritten: crate::source::Unwritten,
    /// The upstream slices' partition values as rows of its table (other columns null),
    /// made once: every downstream slice's filters are evaluated over them.
    pub(crate) rows: std::sync::OnceLock<Option<RecordBatch>>,
}

/// One slice of an upstream pipeline: `orders_clean 2024-01-05`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamSlice {
    pub pipeline: String,
    pub slice: String,
}

impl std::fmt::Display for UpstreamSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.pipeline, self.slice)
    }
}

impl Serialize for UpstreamSlice {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The upstream slices a slice's optimized plan reads: for every scan of an upstream's
/// table, the upstream slices its filters could match.
pub(crate) fn slices_read(plan: &LogicalPlan, upstreams: &[Upstream]) -> Vec<UpstreamSlice> {
    let mut read = BTreeSet::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let table = scan.table_name.table();
            if let Some(upstream) = upstreams.iter().find(|u| u.source == table) {
                let schema = scan.source.schema();
                for slice in matching(upstream, &schema, &scan.table_name, &scan.filters) {
                    read.insert(UpstreamSlice {
                        pipeline: upstream.pipeline.clone(),
                        slice: slice.key.clone(),
                    });
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("the visitor never fails");
    read.into_iter().collect()
}

/// The slices of `upstream` whose partition values pass every filter on the slice
/// columns; all of them when the filters say nothing about those columns.
fn matching<'a>(
    upstream: &'a Upstream,
    schema: &SchemaRef,
    table: &TableReference,
    filters: &[Expr],
) -> Vec<&'a Slice> {
    let all = || upstream.slices.iter().collect();
    let Some(first) = upstream.slices.first() else {
        return vec![];
    };
    let columns: Vec<&str> = first.partition.iter().map(|(c, _)| c.as_str()).collect();
    let usable: Vec<&Expr> = filters
        .iter()
        .filter(|filter| {
            let refs = filter.column_refs();
            !refs.is_empty() && refs.iter().all(|c| columns.contains(&c.name.as_str()))
        })
        .collect();
    if usable.is_empty() {
        return all();
    }
    let rows = upstream
        .rows
        .get_or_init(|| partition_rows(&upstream.slices, schema));
    let Some(rows) = rows.as_ref().filter(|rows| rows.schema() == *schema) else {
        return all();
    };
    match passing(rows, table, &usable) {
        Some(mask) => upstream
            .slices
            .iter()
            .zip(mask)
            .filter(|(_, passes)| *passes)
            .map(|(slice, _)| slice)
            .collect(),
        None => all(),
    }
}

/// One row per slice with its partition values, every other column null; `None` if a
/// value does not convert to its column's type.
fn partition_rows(slices: &[Slice], schema: &SchemaRef) -> Option<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let values: Option<Vec<&str>> = slices
            .iter()
            .map(|s| {
                let value = s.partition.iter().find(|(c, _)| c == field.name());
                value.map(|(_, v)| v.as_str())
            })
            .collect();
        columns.push(match values {
            Some(values) => cast(&StringArray::from(values), field.data_type()).ok()?,
            None => new_null_array(field.data_type(), slices.len()),
        });
    }
    RecordBatch::try_new(schema.clone(), columns).ok()
}

/// For each row of `rows` (a slice's partition values, nothing known of the other
/// columns), whether it passes every filter; `None` if the filters cannot be evaluated so.
fn passing(rows: &RecordBatch, table: &TableReference, filters: &[&Expr]) -> Option<Vec<bool>> {
    let described = DFSchema::try_from_qualified_schema(table.clone(), &rows.schema()).ok()?;
    let mut passes = vec![true; rows.num_rows()];
    for filter in filters {
        let expr = create_physical_expr(
            filter,
            &described,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .ok()?;
        let evaluated = expr.evaluate(rows).ok()?.into_array(rows.num_rows()).ok()?;
        let mask = evaluated.as_any().downcast_ref::<BooleanArray>()?;
        for (row, pass) in passes.iter_mut().enumerate() {
            // Unknown is not a no: a slice is excluded only when the filter says false.
            *pass &= mask.is_null(row) || mask.value(row);
        }
    }
    Some(passes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::{Selection, SliceKind, SliceSpec};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::{col, lit};
    use std::sync::Arc;

    fn hours() -> Upstream {
        let selection = Selection::range("2024-01-01T22", "2024-01-02T01");
        let columns = vec!["dt".to_string(), "hr".to_string()];
        let spec = SliceSpec::of_kind(SliceKind::Hourly, columns, None);
        Upstream {
            source: "events".into(),
            pipeline: "hourly".into(),
            slices: spec.cut(&selection).unwrap(),
            unwritten: crate::source::Unwritten {
                schema: schema(),
                partition_by: vec!["dt".into(), "hr".into()],
            },
            rows: Default::default(),
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Int64, true),
            Field::new("dt", DataType::Utf8, true),
            Field::new("hr", DataType::Utf8, true),
        ]))
    }

    fn keys(filters: &[Expr]) -> Vec<String> {
        let upstream = hours();
        let table = TableReference::bare("events");
        matching(&upstream, &schema(), &table, filters)
            .into_iter()
            .map(|s| s.key.clone())
            .collect()
    }

    #[test]
    fn a_daily_filter_reads_every_hour_of_its_day() {
        let day = col("dt").eq(lit("2024-01-02"));
        assert_eq!(keys(&[day]), vec!["2024-01-02T00", "2024-01-02T01"]);
    }

    #[test]
    fn a_range_reads_every_slice_in_it() {
        let range = col("dt")
            .gt_eq(lit("2024-01-01"))
            .and(col("hr").gt(lit("22")));
        assert_eq!(keys(&[range]), vec!["2024-01-01T23"]);
    }

    #[test]
    fn filters_on_other_columns_or_none_wait_for_every_slice() {
        let all = vec![
            "2024-01-01T22",
            "2024-01-01T23",
            "2024-01-02T00",
            "2024-01-02T01",
        ];
        assert_eq!(keys(&[]), all);
        assert_eq!(keys(&[col("customer_id").is_not_null()]), all);
        // A filter mixing a slice column with another column cannot exclude a slice.
        let mixed = col("dt")
            .eq(lit("2024-01-02"))
            .or(col("customer_id").eq(lit(7)));
        assert_eq!(keys(&[mixed]), all);
    }
}
