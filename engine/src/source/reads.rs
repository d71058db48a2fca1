//! What a slice's plan reads of each Parquet source, as plain data its commit records
//! ([`Reads`]): for each scan of a source, the partition values its filters keep. A later
//! plan finds a done slice's files again in one [`Listing`] of the sources, the way
//! DataFusion would prune them, without planning the slice's SQL: planning costs about a
//! millisecond a slice, which over hundreds of thousands of slices is minutes.
//!
//! Only what DataFusion prunes by exactly is recorded: equalities and `IN` lists (or
//! equalities joined by `OR`) on partition columns. A plan with any other partition filter, or a scan of anything but a
//! Parquet source, records nothing, and its slices are planned in full.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::SourceFile;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::helpers::parse_partitions_for_path;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};

/// The partition values one scan keeps: each constrained column's allowed values; no
/// column, every file.
pub type Kept = BTreeMap<String, Vec<String>>;

/// What a slice reads: each source's scans, by source name.
pub type Reads = BTreeMap<String, Vec<Kept>>;

/// The reads of an optimized plan, if every scan is of a Parquet source (`partitioning`
/// gives its partition columns) and keeps partitions by equalities and `IN` lists alone.
pub(crate) fn reads_of(
    plan: &LogicalPlan,
    partitioning: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Option<Reads> {
    let mut reads = Reads::new();
    let mut recordable = true;
    let visited = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let source = scan.table_name.table();
            let kept = partitioning(source).and_then(|columns| kept_by(&scan.filters, &columns));
            match kept {
                Some(kept) => reads.entry(source.to_string()).or_default().push(kept),
                None => recordable = false,
            }
        }
        Ok(match recordable {
            true => TreeNodeRecursion::Continue,
            false => TreeNodeRecursion::Stop,
        })
    });
    (visited.is_ok() && recordable).then_some(reads)
}

/// The partition values `filters` keep, if every filter on partition columns alone is
/// an equality or an `IN` list of text. Filters on other columns prune nothing from the
/// file list.
fn kept_by(filters: &[Expr], columns: &[String]) -> Option<Kept> {
    let mut kept = Kept::new();
    for filter in filters.iter().flat_map(|f| split_conjunction(f)) {
        let referenced = filter.column_refs();
        if !referenced.iter().all(|c| columns.contains(&c.name)) {
            continue;
        }
        let (column, values) = allowed(filter)?;
        match kept.get_mut(&column) {
            Some(existing) => existing.retain(|value| values.contains(value)),
            None => {
                kept.insert(column, values);
            }
        }
    }
    Some(kept)
}

/// `column = 'value'`, `column IN ('a', 'b')` or equalities of one column joined by `OR`
/// (as DataFusion rewrites a short `IN`), as the column and its allowed values.
fn allowed(filter: &Expr) -> Option<(String, Vec<String>)> {
    let text = |expr: &Expr| match expr {
        Expr::Literal(value, _) => value.try_as_str().flatten().map(str::to_string),
        _ => None,
    };
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(column), value) | (value, Expr::Column(column)) => {
                Some((column.name.clone(), vec![text(value)?]))
            }
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let (column, mut values) = allowed(left)?;
            let (other, more) = allowed(right)?;
            values.extend(more);
            (column == other).then_some((column, values))
        }
        Expr::InList(list) if !list.negated => match list.expr.as_ref() {
            Expr::Column(column) => {
                let values = list.list.iter().map(text).collect::<Option<Vec<_>>>()?;
                Some((column.name.clone(), values))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Every file of the Parquet sources, as one plan lists them, with their partition values.
#[derive(Default)]
pub struct Listing {
    sources: HashMap<String, Listed>,
}

/// One source's files with their partition values, and per partition column which files
/// hold each value.
struct Listed {
    files: Vec<(SourceFile, Vec<String>)>,
    by_value: Vec<HashMap<String, Vec<usize>>>,
    columns: Vec<String>,
    /// The values of the first partition column whose folders were listed; `None`: all.
    covered: Option<HashSet<String>>,
}

impl Listing {
    /// Adds the files of `source`, `listed` at `url` (DataFusion's own listing rules) and
    /// partitioned by `columns`.
    pub(crate) fn add(
        &mut self,
        source: &str,
        url: &ListingTableUrl,
        columns: &[String],
        listed: super::hive::Listed,
    ) {
        let mut files = Vec::with_capacity(listed.files.len());
        let mut by_value: Vec<HashMap<String, Vec<usize>>> = vec![HashMap::new(); columns.len()];
        // As DataFusion's pruning does: files outside the partition folders are not the
        // table's (nor are empty files, which `listed` holds none of).
        for meta in listed.files {
            let names = columns.iter().map(String::as_str);
            let Some(values) = parse_partitions_for_path(url, &meta.location, names) else {
                continue;
            };
            let values: Vec<String> = values.into_iter().map(|v| v.into_owned()).collect();
            for (index, value) in by_value.iter_mut().zip(&values) {
                index.entry(value.clone()).or_default().push(files.len());
            }
            let file = SourceFile {
                path: meta.location.to_string(),
                size: meta.size,
                modified: meta.last_modified.to_rfc3339(),
                e_tag: meta.e_tag.clone(),
                source: source.to_string(),
                rows: None,
            };
            files.push((file, values));
        }
        let columns = columns.to_vec();
        let listed = Listed {
            files,
            by_value,
            columns,
            covered: listed.covered.map(HashSet::from_iter),
        };
        self.sources.insert(source.to_string(), listed);
    }

    /// The files `reads` reads, sorted as a plan's scanned files are; `None` if a source
    /// it names was not listed.
    pub(crate) fn files(&self, reads: &Reads) -> Option<Vec<SourceFile>> {
        let mut files = Vec::new();
        for (source, scans) in reads {
            let listed = self.sources.get(source)?;
            for kept in scans {
                files.extend(
                    listed
                        .kept(kept)?
                        .map(|index| listed.files[index].0.clone()),
                );
            }
        }
        files.sort();
        files.dedup();
        Some(files)
    }
}

impl Listed {
    /// The files whose partition values `kept` keeps; `None` if it names a column the
    /// source is not partitioned by, or may keep files in folders that were not listed.
    fn kept<'a>(&'a self, kept: &'a Kept) -> Option<Box<dyn Iterator<Item = usize> + 'a>> {
        let position = |column: &str| self.columns.iter().position(|c| c == column);
        let constraints: Vec<(usize, &Vec<String>)> = (kept.iter())
            .map(|(column, values)| Some((position(column)?, values)))
            .collect::<Option<_>>()?;
        if let Some(covered) = &self.covered {
            let first = constraints.iter().find(|(column, _)| *column == 0);
            let (_, values) = first?;
            if !values.iter().all(|value| covered.contains(value)) {
                return None;
            }
        }
        let Some(&(first, values)) = constraints.first() else {
            return Some(Box::new(0..self.files.len()));
        };
        let candidates = values.iter().flat_map(move |value| {
            self.by_value[first]
                .get(value)
                .into_iter()
                .flatten()
                .copied()
        });
        let keeps = move |index: &usize| {
            let held = &self.files[*index].1;
            (constraints.iter()).all(|(column, values)| values.contains(&held[*column]))
        };
        Some(Box::new(candidates.filter(keeps)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::slice::Selection;
    use crate::source::{fingerprint_files, read_only_query, Sources};

    /// The bundled fixtures' usage (by day, tenant and region) and customers (one file),
    /// resolved for the slices of `scope`, if given.
    async fn sources(scope: Option<Selection>) -> Sources {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/buckets/shop");
        let text = format!(
            "name = \"reads\"\n\
             [sources.usage]\nurl = \"{usage}\"\nformat = \"parquet\"\npartitioning = [\"dt\", \"tenant\", \"region\"]\n\
             [sources.customers]\nurl = \"{customers}\"\nformat = \"parquet\"\n\
             [slices]\nkind = \"daily\"\n[transform]\nsql = \"SELECT 1\"\n\
             [destination]\nurl = \"/tmp/unused\"\npartition_by = [\"dt\"]\nstrategy = \"overwrite\"\n",
            usage = root.join("usage").display(),
            customers = root.join("customers").display(),
        );
        let pipeline = crate::pipeline::parse(&text, Path::new("/p/reads.toml")).unwrap();
        let retry = crate::retry::RequestRetry::default();
        let slices = scope.map(|selection| pipeline.cut(&selection).unwrap());
        Sources::resolve(&pipeline, &vec![], retry, 1 << 30, slices.as_deref(), &[])
            .await
            .unwrap()
    }

    /// What the plan of `sql` reads, if it can be recorded.
    async fn reads(sources: &Sources, sql: &str) -> Option<Reads> {
        let state = sources.planning_state(1);
        let frame = read_only_query(state, sql, || "test".into()).await.unwrap();
        let (state, logical) = frame.into_parts();
        sources.reads_of(&state.optimize(&logical).unwrap())
    }

    /// What the listing finds for `sql`'s recorded reads, and what DataFusion's plan of it
    /// scans: `None` when nothing is recorded.
    async fn both(sources: &Sources, listing: &Listing, sql: &str) -> Option<(String, String)> {
        let reads = reads(sources, sql).await?;
        let state = sources.planning_state(1);
        let frame = read_only_query(state, sql, || "test".into()).await.unwrap();
        let (state, logical) = frame.into_parts();
        let physical = state.create_physical_plan(&logical).await.unwrap();
        let scanned = fingerprint_files(&sources.scanned_files(&physical));
        let listed = fingerprint_files(&listing.files(&reads).unwrap());
        Some((listed, scanned))
    }

    #[tokio::test]
    async fn recorded_reads_find_exactly_the_files_datafusion_scans() {
        let sources = sources(None).await;
        let listing = sources.listing().await.unwrap();
        for sql in [
            "SELECT * FROM usage WHERE dt = '2024-01-05' AND tenant = 'acme'",
            "SELECT * FROM usage WHERE dt = '2024-01-05' AND tenant = 'o''brien'",
            "SELECT * FROM usage WHERE tenant IN ('globex', 'acme') AND region = 'eu' AND units > 3",
            "SELECT count(*) FROM usage u JOIN customers c ON u.user_id = c.customer_id WHERE u.dt = '2024-01-03'",
            "SELECT * FROM usage WHERE dt = '2024-01-01' UNION ALL SELECT * FROM usage WHERE dt = '2024-01-02'",
            "SELECT * FROM usage",
        ] {
            let (listed, scanned) = both(&sources, &listing, sql).await.expect(sql);
            assert_eq!(listed, scanned, "{sql}");
        }
        for unrecorded in [
            "SELECT * FROM usage WHERE dt >= '2024-01-04'",
            "SELECT * FROM usage WHERE dt = '2024-01-04' OR tenant = 'acme'",
            "SELECT * FROM usage WHERE upper(tenant) = 'ACME'",
        ] {
            assert_eq!(
                both(&sources, &listing, unrecorded).await,
                None,
                "{unrecorded}"
            );
        }
    }

    #[tokio::test]
    async fn a_listing_of_the_scope_finds_no_reads_outside_it() {
        let scope = Selection::range("2024-01-04", "2024-01-05");
        let sources = sources(Some(scope)).await;
        let listing = sources.listing().await.unwrap();
        let inside = "SELECT * FROM usage WHERE dt = '2024-01-05' AND tenant = 'acme'";
        let (listed, scanned) = both(&sources, &listing, inside).await.unwrap();
        assert_eq!(listed, scanned);
        for outside in [
            "SELECT * FROM usage WHERE dt = '2024-01-03' AND tenant = 'acme'",
            "SELECT * FROM usage WHERE dt IN ('2024-01-03', '2024-01-04')",
            "SELECT * FROM usage WHERE tenant = 'acme'",
        ] {
            let reads = reads(&sources, outside).await.expect(outside);
            assert_eq!(listing.files(&reads), None, "{outside}");
        }
        // Listed again, the source is listed whole.
        let listing = sources.listing().await.unwrap();
        let outside = "SELECT * FROM usage WHERE tenant = 'acme'";
        let (listed, scanned) = both(&sources, &listing, outside).await.unwrap();
        assert_eq!(listed, scanned);
    }
}
