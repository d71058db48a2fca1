//! Column lineage: which source columns each output column of a transform derives from,
//! and which shape the whole output (filters, joins, grouping, sorting), read off the
//! transform's logical plan. Pure; a plan with a node it does not know has none, rather
//! than a wrong one.

use std::collections::BTreeSet;

use datafusion::common::DFSchema;
use datafusion::logical_expr::{Distinct, Expr, JoinType, LogicalPlan};

/// How a column depends on a source column: directly (its value comes from it) or
/// indirectly (the source column decides which rows there are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dependence {
    Identity,
    Transformation,
    Aggregation,
    Filter,
    Join,
    GroupBy,
    Sort,
    Window,
}

impl Dependence {
    /// OpenLineage's words for it: `DIRECT` or `INDIRECT`, and the subtype.
    pub fn words(self) -> (&'static str, &'static str) {
        match self {
            Dependence::Identity => ("DIRECT", "IDENTITY"),
            Dependence::Transformation => ("DIRECT", "TRANSFORMATION"),
            Dependence::Aggregation => ("DIRECT", "AGGREGATION"),
            Dependence::Filter => ("INDIRECT", "FILTER"),
            Dependence::Join => ("INDIRECT", "JOIN"),
            Dependence::GroupBy => ("INDIRECT", "GROUP_BY"),
            Dependence::Sort => ("INDIRECT", "SORT"),
            Dependence::Window => ("INDIRECT", "WINDOW"),
        }
    }
}

/// A source column as the SQL names it: its table and its name.
pub type SourceColumn = (String, String);

/// The source columns something depends on, and how.
pub type Origins = BTreeSet<(SourceColumn, Dependence)>;

/// A transform's column lineage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnLineage {
    /// Each output column, by name, with the source columns it derives from.
    pub fields: Vec<(String, Origins)>,
    /// The source columns that shape the whole output.
    pub dataset: Origins,
}

impl ColumnLineage {
    /// The lineage of `plan`'s output, if every node of it is one this reads.
    pub fn of(plan: &LogicalPlan) -> Option<ColumnLineage> {
        let mut walk = Walk::default();
        let fields = walk.origins(plan)?;
        let names = plan.schema().fields().iter().map(|f| f.name().clone());
        Some(ColumnLineage {
            fields: names.zip(fields).collect(),
            dataset: walk.dataset,
        })
    }
}

#[derive(Default)]
struct Walk {
    dataset: Origins,
}

impl Walk {
    /// The origins of each of `plan`'s output columns, in order.
    fn origins(&mut self, plan: &LogicalPlan) -> Option<Vec<Origins>> {
        let origins = match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table().to_string();
                let fields = scan.projected_schema.fields().iter();
                let column = |name: &String| ((table.clone(), name.clone()), Dependence::Identity);
                fields.map(|f| Origins::from([column(f.name())])).collect()
            }
            LogicalPlan::Projection(projection) => {
                let input = self.origins(&projection.input)?;
                let schema = projection.input.schema();
                let each = projection.expr.iter();
                each.map(|e| derived(e, schema, &input, Dependence::Transformation))
                    .collect::<Option<_>>()?
            }
            LogicalPlan::Aggregate(aggregate) => {
                let input = self.origins(&aggregate.input)?;
                let schema = aggregate.input.schema();
                let mut fields = Vec::new();
                for group in &aggregate.group_expr {
                    self.shaped_by(group, schema, &input, Dependence::GroupBy)?;
                    fields.push(derived(group, schema, &input, Dependence::Transformation)?);
                }
                for aggregated in &aggregate.aggr_expr {
                    fields.push(derived(
                        aggregated,
                        schema,
                        &input,
                        Dependence::Aggregation,
                    )?);
                }
                fields
            }
            LogicalPlan::Filter(filter) => {
                let input = self.origins(&filter.input)?;
                let schema = filter.input.schema();
                self.shaped_by(&filter.predicate, schema, &input, Dependence::Filter)?;
                input
            }
            LogicalPlan::Join(join) => {
                let left = self.origins(&join.left)?;
                let right = self.origins(&join.right)?;
                for (l, r) in &join.on {
                    self.shaped_by(l, join.left.schema(), &left, Dependence::Join)?;
                    self.shaped_by(r, join.right.schema(), &right, Dependence::Join)?;
                }
                let both: Vec<Origins> = left.iter().chain(&right).cloned().collect();
                if let Some(filter) = &join.filter {
                    let schema = join.left.schema().join(join.right.schema()).ok()?;
                    self.shaped_by(filter, &schema, &both, Dependence::Join)?;
                }
                match join.join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti => left,
                    JoinType::RightSemi | JoinType::RightAnti => right,
                    JoinType::LeftMark => left.into_iter().chain([Origins::new()]).collect(),
                    _ => both,
                }
            }
            LogicalPlan::Sort(sort) => {
                let input = self.origins(&sort.input)?;
                for by in &sort.expr {
                    self.shaped_by(&by.expr, sort.input.schema(), &input, Dependence::Sort)?;
                }
                input
            }
            LogicalPlan::Window(window) => {
                let mut input = self.origins(&window.input)?;
                let schema = window.input.schema();
                for expr in &window.window_expr {
                    self.shaped_by(expr, schema, &input, Dependence::Window)?;
                    let computed = derived(expr, schema, &input, Dependence::Transformation)?;
                    input.push(computed);
                }
                input
            }
            LogicalPlan::Union(union) => {
                let mut merged = vec![Origins::new(); plan.schema().fields().len()];
                for input in &union.inputs {
                    let origins = self.origins(input)?;
                    (origins.len() == merged.len()).then_some(())?;
                    merged
                        .iter_mut()
                        .zip(origins)
                        .for_each(|(m, o)| m.extend(o));
                }
                merged
            }
            LogicalPlan::SubqueryAlias(alias) => self.origins(&alias.input)?,
            LogicalPlan::Limit(limit) => self.origins(&limit.input)?,
            LogicalPlan::Repartition(repartition) => self.origins(&repartition.input)?,
            LogicalPlan::Distinct(Distinct::All(input)) => self.origins(input)?,
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                vec![Origins::new(); plan.schema().fields().len()]
            }
            _ => return None,
        };
        (origins.len() == plan.schema().fields().len()).then_some(origins)
    }

    /// Records that `expr`'s source columns shape the whole output, as `how`.
    fn shaped_by(
        &mut self,
        expr: &Expr,
        schema: &DFSchema,
        input: &[Origins],
        how: Dependence,
    ) -> Option<()> {
        for column in expr.column_refs() {
            let at = schema.index_of_column(column).ok()?;
            let sources = input
                .get(at)?
                .iter()
                .map(|(source, _)| (source.clone(), how));
            self.dataset.extend(sources);
        }
        Some(())
    }
}

/// The origins of the column `expr` computes from `input` (the origins of `schema`'s
/// columns): a column passed through keeps its dependence; anything computed from
/// columns depends on them at least as `how`.
fn derived(expr: &Expr, schema: &DFSchema, input: &[Origins], how: Dependence) -> Option<Origins> {
    let passed = matches!(expr.clone().unalias(), Expr::Column(_));
    let mut origins = Origins::new();
    for column in expr.column_refs() {
        let at = schema.index_of_column(column).ok()?;
        for (source, was) in input.get(at)? {
            let now = if passed { *was } else { (*was).max(how) };
            origins.insert((source.clone(), now));
        }
    }
    Some(origins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::empty::EmptyTable;
    use datafusion::prelude::SessionContext;
    use std::sync::Arc;

    async fn lineage(sql: &str) -> ColumnLineage {
        let ctx = SessionContext::new();
        let table = |fields: &[(&str, DataType)]| {
            let fields: Vec<Field> = fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect();
            Arc::new(EmptyTable::new(Arc::new(Schema::new(fields))))
        };
        let orders = [
            ("order_id", DataType::Int64),
            ("customer_id", DataType::Int64),
            ("amount", DataType::Float64),
            ("dt", DataType::Utf8),
        ];
        ctx.register_table("orders", table(&orders)).unwrap();
        let customers = [("customer_id", DataType::Int64), ("region", DataType::Utf8)];
        ctx.register_table("customers", table(&customers)).unwrap();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        ColumnLineage::of(&plan).expect("every node is read")
    }

    fn col(table: &str, name: &str, how: Dependence) -> (SourceColumn, Dependence) {
        ((table.to_string(), name.to_string()), how)
    }

    #[tokio::test]
    async fn columns_passed_computed_and_aggregated_name_their_sources() {
        let lineage = lineage(
            "SELECT o.dt, c.region, sum(o.amount * 2) AS revenue, count(DISTINCT o.customer_id) AS buyers
             FROM orders o JOIN customers c ON o.customer_id = c.customer_id
             WHERE o.amount > 0
             GROUP BY o.dt, c.region",
        )
        .await;
        let field = |name: &str| {
            let found = lineage.fields.iter().find(|(n, _)| n == name);
            found
                .unwrap_or_else(|| panic!("no {name}: {lineage:?}"))
                .1
                .clone()
        };
        use Dependence::*;
        assert_eq!(field("dt"), Origins::from([col("orders", "dt", Identity)]));
        assert_eq!(
            field("region"),
            Origins::from([col("customers", "region", Identity)])
        );
        assert_eq!(
            field("revenue"),
            Origins::from([col("orders", "amount", Aggregation)])
        );
        assert_eq!(
            field("buyers"),
            Origins::from([col("orders", "customer_id", Aggregation)])
        );
        let expected = Origins::from([
            col("orders", "customer_id", Join),
            col("customers", "customer_id", Join),
            col("orders", "amount", Filter),
            col("orders", "dt", GroupBy),
            col("customers", "region", GroupBy),
        ]);
        assert_eq!(lineage.dataset, expected);
    }

    #[tokio::test]
    async fn a_union_merges_both_sides_and_a_function_transforms() {
        let lineage = lineage(
            "SELECT upper(dt) AS day, order_id FROM orders UNION ALL SELECT region, customer_id FROM customers",
        )
        .await;
        use Dependence::*;
        let day = Origins::from([
            col("orders", "dt", Transformation),
            col("customers", "region", Identity),
        ]);
        assert_eq!(lineage.fields[0], ("day".to_string(), day));
        assert_eq!(lineage.fields[1].1.len(), 2);
    }
}
