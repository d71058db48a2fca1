//! Comparing a project's tables in two environments, slice by slice: the rows on each
//! side and how many differ, by merge key where the pipeline has one (rows only here,
//! only there, or changed), by whole rows otherwise. What promoting would change, before
//! it does. Reading only: the queries are planned as read-only SQL.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::catalog::TableProvider;
use datafusion::datasource::empty::EmptyTable;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use super::Project;
use crate::error::{Error, Result, ResultExt};
use crate::pipeline::{Destination, Pipeline};
use crate::slice::{Selection, Slice};

/// The differences between one environment's tables and another's.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub environment: String,
    pub against: String,
    pub pipelines: Vec<PipelineDiff>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineDiff {
    pub pipeline: String,
    /// The merge keys rows are matched by; whole rows are compared without them.
    pub keys: Option<Vec<String>>,
    /// Columns one side has and the other has not; rows compare on the columns both have.
    pub columns_only_here: Vec<String>,
    pub columns_only_there: Vec<String>,
    pub slices: Vec<SliceDiff>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SliceDiff {
    pub slice: String,
    pub rows: u64,
    pub rows_there: u64,
    /// Rows (or keys) here that are not there.
    pub only_here: u64,
    /// Rows (or keys) there that are not here.
    pub only_there: u64,
    /// Keys on both sides whose rows differ; always 0 without keys.
    pub changed: u64,
}

impl SliceDiff {
    /// A slice with no rows on either side.
    fn of(slice: &Slice) -> SliceDiff {
        SliceDiff {
            slice: slice.key.clone(),
            ..SliceDiff::default()
        }
    }

    /// How many rows promoting this slice would change.
    pub fn differing(&self) -> u64 {
        self.only_here + self.only_there + self.changed
    }
}

impl Project {
    /// Compares the slices of `selection` of every pipeline in this environment with the
    /// same pipeline in `other`, the same project in another environment.
    pub async fn diff(&self, other: &Project, selection: &Selection) -> Result<Diff> {
        let mut pipelines = Vec::new();
        for pipeline in &self.pipelines {
            let there = other.same(pipeline);
            let slices = pipeline.cut(&selection.for_spec(&pipeline.slices))?;
            pipelines.push(diff_pipeline(pipeline, &there.destination, &slices).await?);
        }
        Ok(Diff {
            environment: self.environment.clone(),
            against: other.environment.clone(),
            pipelines,
        })
    }
}

async fn diff_pipeline(
    pipeline: &Pipeline,
    there: &Destination,
    slices: &[Slice],
) -> Result<PipelineDiff> {
    let ctx = SessionContext::new();
    let empty = |like: &Arc<dyn TableProvider>| -> Arc<dyn TableProvider> {
        Arc::new(EmptyTable::new(like.schema()))
    };
    let (here, there) = match (
        table(&ctx, &pipeline.destination).await?,
        table(&ctx, there).await?,
    ) {
        (Some(here), Some(there)) => (here, there),
        (Some(here), None) => {
            let there = empty(&here);
            (here, there)
        }
        (None, Some(there)) => (empty(&there), there),
        (None, None) => {
            return Ok(PipelineDiff {
                pipeline: pipeline.name.clone(),
                keys: None,
                columns_only_here: vec![],
                columns_only_there: vec![],
                slices: slices.iter().map(SliceDiff::of).collect(),
            })
        }
    };
    let names = |provider: &Arc<dyn TableProvider>| -> Vec<String> {
        let schema = provider.schema();
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    let (here_columns, there_columns) = (names(&here), names(&there));
    let common: Vec<String> = here_columns
        .iter()
        .filter(|c| there_columns.contains(c))
        .cloned()
        .collect();
    let file = pipeline.file.display().to_string();
    let context = || format!("{file}: diff");
    let slice_columns: Vec<String> = slices
        .first()
        .map(|s| s.partition.iter().map(|(c, _)| c.clone()).collect())
        .unwrap_or_default();
    if let Some(missing) = slice_columns.iter().find(|c| !common.contains(c)) {
        return Err(Error::config(
            context(),
            format!("the tables have no column `{missing}` to tell slices apart by"),
        ));
    }
    ctx.register_table("here", here).context(context)?;
    ctx.register_table("there", there).context(context)?;
    let strategy = crate::sink::strategy::of(&pipeline.destination);
    let keys = strategy.row_keys().map(<[String]>::to_vec);
    let queries = Queries {
        columns: slice_columns,
        slices,
        common: common.clone(),
    };
    let mut diffs: Vec<SliceDiff> = slices.iter().map(SliceDiff::of).collect();
    let counted = [
        (queries.rows("here"), Count::Rows),
        (queries.rows("there"), Count::RowsThere),
        (
            queries.only(keys.as_deref(), "here", "there"),
            Count::OnlyHere,
        ),
        (
            queries.only(keys.as_deref(), "there", "here"),
            Count::OnlyThere,
        ),
    ];
    let changed = keys
        .as_deref()
        .map(|keys| (queries.changed(keys), Count::Changed));
    for (sql, count) in counted.into_iter().chain(changed) {
        let per_slice = counts(&ctx, &sql, slices, context).await?;
        for (diff, n) in diffs.iter_mut().zip(per_slice) {
            *count.of(diff) = n;
        }
    }
    let only = |a: &[String], b: &[String]| a.iter().filter(|c| !b.contains(c)).cloned().collect();
    Ok(PipelineDiff {
        pipeline: pipeline.name.clone(),
        keys,
        columns_only_here: only(&here_columns, &there_columns),
        columns_only_there: only(&there_columns, &here_columns),
        slices: diffs,
    })
}

/// The table at `destination` as DataFusion reads it, if there is one.
async fn table(
    ctx: &SessionContext,
    destination: &Destination,
) -> Result<Option<Arc<dyn TableProvider>>> {
    let Some(table) = crate::sink::existing_table(destination).await? else {
        return Ok(None);
    };
    let context = || format!("destination {}", destination.url);
    table
        .update_datafusion_session(&ctx.state())
        .context(context)?;
    let provider = table.table_provider().await.context(context)?;
    Ok(Some(provider))
}

/// Which count of a slice a query gives.
#[derive(Clone, Copy)]
enum Count {
    Rows,
    RowsThere,
    OnlyHere,
    OnlyThere,
    Changed,
}

impl Count {
    fn of(self, diff: &mut SliceDiff) -> &mut u64 {
        match self {
            Count::Rows => &mut diff.rows,
            Count::RowsThere => &mut diff.rows_there,
            Count::OnlyHere => &mut diff.only_here,
            Count::OnlyThere => &mut diff.only_there,
            Count::Changed => &mut diff.changed,
        }
    }
}

/// The queries of a diff, each counting rows per slice (its slice columns as text,
/// then the count) over the tables `here` and `there`.
struct Queries<'a> {
    /// The columns that tell slices apart.
    columns: Vec<String>,
    slices: &'a [Slice],
    /// The columns both tables have.
    common: Vec<String>,
}

impl Queries<'_> {
    fn group(&self, qualifier: &str) -> (String, String) {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{qualifier}{}", quoted(c)))
            .collect();
        let shown: Vec<String> = columns
            .iter()
            .map(|c| format!("CAST({c} AS VARCHAR)"))
            .collect();
        (shown.join(", "), columns.join(", "))
    }

    fn rows(&self, side: &str) -> String {
        let (shown, grouped) = self.group("");
        format!(
            "SELECT {shown}, count(*) FROM {side} WHERE {} GROUP BY {grouped}",
            self.selected("")
        )
    }

    /// Rows of `side` the `other` side lacks: by key, or as whole rows (with
    /// multiplicity) on the common columns.
    fn only(&self, keys: Option<&[String]>, side: &str, other: &str) -> String {
        let (shown, grouped) = self.group("");
        let Some(keys) = keys else {
            let columns: Vec<String> = self.common.iter().map(|c| quoted(c)).collect();
            let columns = columns.join(", ");
            let selected = self.selected("");
            return format!(
                "SELECT {shown}, count(*) FROM (\
                 SELECT {columns} FROM {side} WHERE {selected} \
                 EXCEPT ALL SELECT {columns} FROM {other} WHERE {selected}) \
                 GROUP BY {grouped}"
            );
        };
        let (shown, grouped) = self.group("x.");
        format!(
            "SELECT {shown}, count(*) FROM {side} x WHERE ({}) AND NOT EXISTS \
             (SELECT 1 FROM {other} y WHERE {}) GROUP BY {grouped}",
            self.selected("x."),
            self.matching(keys)
        )
    }

    /// Keys on both sides whose rows differ in a common column.
    fn changed(&self, keys: &[String]) -> String {
        let (shown, grouped) = self.group("x.");
        let differs: Vec<String> = self
            .common
            .iter()
            .map(|c| format!("(x.{0} IS DISTINCT FROM y.{0})", quoted(c)))
            .collect();
        format!(
            "SELECT {shown}, count(*) FROM here x JOIN there y ON {} \
             WHERE ({}) AND ({}) GROUP BY {grouped}",
            self.matching(keys),
            self.selected("x."),
            differs.join(" OR ")
        )
    }

    /// `x` and `y` have the same keys in the same slice.
    fn matching(&self, keys: &[String]) -> String {
        let columns = keys.iter().chain(self.columns.iter());
        let equal: Vec<String> = columns
            .map(|c| format!("x.{0} = y.{0}", quoted(c)))
            .collect();
        equal.join(" AND ")
    }

    /// The selected slices' rows, on columns qualified by `qualifier`.
    fn selected(&self, qualifier: &str) -> String {
        let slices = self.slices.iter().map(|slice| {
            let equal: Vec<String> = slice
                .partition
                .iter()
                .map(|(c, v)| format!("{qualifier}{} = '{}'", quoted(c), v.replace('\'', "''")))
                .collect();
            format!("({})", equal.join(" AND "))
        });
        slices.collect::<Vec<_>>().join(" OR ")
    }
}

fn quoted(column: &str) -> String {
    format!("\"{}\"", column.replace('"', "\"\""))
}

/// The counts `sql` gives, one per slice of `slices` (0 for a slice it does not name).
async fn counts(
    ctx: &SessionContext,
    sql: &str,
    slices: &[Slice],
    context: impl Fn() -> String + Copy,
) -> Result<Vec<u64>> {
    let frame = crate::source::read_only_query(ctx.state(), sql, context).await?;
    let batches = frame.collect().await.context(context)?;
    let mut by_values: HashMap<Vec<String>, u64> = HashMap::new();
    for batch in &batches {
        let width = batch.num_columns() - 1;
        let count = batch.column(width).as_primitive::<Int64Type>();
        let texts = (0..width)
            .map(|i| cast(batch.column(i), &DataType::Utf8))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("{}: {e}", context())))?;
        for row in 0..batch.num_rows() {
            let values = texts
                .iter()
                .map(|text| match text.is_valid(row) {
                    true => text.as_string::<i32>().value(row).to_string(),
                    false => String::new(),
                })
                .collect();
            by_values.insert(values, count.value(row) as u64);
        }
    }
    Ok(slices
        .iter()
        .map(|slice| {
            let values: Vec<String> = slice.partition.iter().map(|(_, v)| v.clone()).collect();
            by_values.get(&values).copied().unwrap_or(0)
        })
        .collect())
}
