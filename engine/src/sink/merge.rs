//! `merge`: upsert the slice's rows on business keys.
//!
//! Where each slice has partitions of its own ([`Destination::slices_own_partitions`]), a
//! slice merges only within them, and merging is an overwrite of those partitions with
//! the merged rows. The slice's output is staged in the table, as overwrite stages it, and
//! its commit removes the files there that may hold one of its keys and adds its output
//! and the rows of those files whose keys it does not have. Those rows are found by a
//! streaming anti-join that holds only the output's keys in memory, and files whose key
//! statistics rule out every key of the output are neither read nor removed. Slices go
//! together in one commit, and its predicate names their partitions, so Delta's conflict
//! checker refuses it if another writer touched them since the table was read, as for
//! overwrite; merges of different slices never conflict.
//!
//! Otherwise a slice's keys may match rows anywhere in the table: one delta-rs MERGE per
//! slice, reading the slice's output staged apart, under `_backfill/staging/`, so the
//! transform SQL runs once however often MERGE scans its source. The sink deletes that
//! folder once the slice is settled, committed or not (not before: a merge that lost the
//! race to create the table is tried again from it).
//!
//! [`Destination::slices_own_partitions`]: crate::pipeline::Destination::slices_own_partitions

use datafusion::common::{Column, JoinType};
use datafusion::prelude::{col, Expr, SessionContext};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::protocol::{DeltaOperation, MergePredicate};
use deltalake::{DeltaTable, DeltaTableError};
use futures::StreamExt;

use super::strategy::{
    files_in_partitions, partitions_predicate, replacing, Commits, Publishing, WriteStrategy,
};
use super::{Sink, SliceCommit, StagedOutput};
use crate::slice::Slice;
use crate::source::{files_table, DataFile};

pub(super) struct Merge {
    /// The business keys rows are matched on.
    pub keys: Vec<String>,
    /// Whether each slice merges within partitions of its own, rather than across the
    /// table.
    pub within_partitions: bool,
}

impl WriteStrategy for Merge {
    fn publishing(&self) -> Publishing<'_> {
        Publishing::Commits(self)
    }

    /// Across the table, MERGE reads the slice's output as its source.
    fn stages_apart(&self) -> bool {
        !self.within_partitions
    }

    fn keeps_to_its_partitions(&self) -> bool {
        true
    }

    fn may_change_columns(&self) -> bool {
        false
    }

    /// A merge rewrites rows of other writers too, and a slice's rows that stay are
    /// rewritten by a later merge of its partitions: files carry no slice of their own.
    fn slices_own_their_files(&self) -> bool {
        false
    }

    fn row_keys(&self) -> Option<&[String]> {
        Some(&self.keys)
    }

    /// Within partitions, the rows that stay are read from the files they are in; across
    /// the table, delta-rs's MERGE reads the table.
    fn reads_table_files(&self) -> bool {
        self.within_partitions
    }
}

#[async_trait::async_trait]
impl Commits for Merge {
    /// Across the table, one MERGE per slice: slices may share keys, and the later one
    /// must win.
    fn most_per_commit(&self) -> usize {
        match self.within_partitions {
            true => usize::MAX,
            false => 1,
        }
    }

    async fn commit(
        &self,
        sink: &Sink,
        table: &mut Option<DeltaTable>,
        pending: &[&SliceCommit<'_>],
        properties: CommitProperties,
        also_written: &mut Vec<StagedOutput>,
    ) -> deltalake::DeltaResult<u64> {
        if self.within_partitions {
            return self
                .merge_within(sink, table, pending, properties, also_written)
                .await;
        }
        let [one] = pending else {
            let refused = "a merge across the table commits one slice at a time".to_string();
            return Err(DeltaTableError::Generic(refused));
        };
        merge_across(sink, table, one.slice, one.staged, &self.keys, properties).await
    }
}

impl Merge {
    /// Commits `pending` as overwrites of their partitions with the merged rows; the rows
    /// that stay are written as `also_written`.
    async fn merge_within(
        &self,
        sink: &Sink,
        table: &mut Option<DeltaTable>,
        pending: &[&SliceCommit<'_>],
        properties: CommitProperties,
        also_written: &mut Vec<StagedOutput>,
    ) -> deltalake::DeltaResult<u64> {
        let slices: Vec<&Slice> = pending.iter().map(|m| m.slice).collect();
        let in_partitions = files_in_partitions(sink, table.as_ref(), &slices)?;
        // The slices' partitions are apart, so their rows that stay are read side by side.
        let ctx = sink.session();
        let each: Vec<_> = (pending.iter().zip(in_partitions))
            .map(|(member, files)| self.touched_and_staying(sink, &ctx, member, files))
            .collect();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let done: Vec<_> = futures::stream::iter(each).buffered(cores).collect().await;
        let mut replaced = Vec::with_capacity(done.len());
        let mut failed = None;
        for (touched, stay) in done {
            match stay {
                // Written whether or not another slice's failed: deleted with the rest.
                Ok(stay) => also_written.extend(stay),
                Err(error) => failed = failed.or(Some(error)),
            }
            replaced.push(touched);
        }
        if let Some(error) = failed {
            return Err(error);
        }
        let mut actions = replacing(pending, replaced);
        let stay = also_written.iter().flat_map(|s| s.adds.iter().cloned());
        actions.extend(stay.map(Action::Add));
        let operation = self.operation(&slices);
        sink.commit(table, actions, operation, properties).await
    }

    /// The files of `member`'s partitions (`files`) that its commit replaces, and the
    /// rows of theirs that stay.
    async fn touched_and_staying(
        &self,
        sink: &Sink,
        ctx: &SessionContext,
        member: &SliceCommit<'_>,
        files: Vec<LogicalFileView>,
    ) -> (
        Vec<LogicalFileView>,
        deltalake::DeltaResult<Option<StagedOutput>>,
    ) {
        let touched = self.files_touched(member.staged, files);
        let stay = self.rows_that_stay(sink, ctx, member, &touched).await;
        (touched, stay)
    }

    /// The files among `files` (in the slice's partitions) that may hold a row with one of
    /// the keys `staged` has: where a key column is an integer, its range in a file's
    /// statistics must meet the range in the output's. Other columns' statistics may be
    /// truncated, so they rule nothing out.
    fn files_touched(
        &self,
        staged: &StagedOutput,
        files: Vec<LogicalFileView>,
    ) -> Vec<LogicalFileView> {
        if staged.rows == 0 {
            return vec![];
        }
        let output: Vec<KeyRanges> = staged
            .adds
            .iter()
            .map(|add| KeyRanges::of(add.stats.as_deref(), &self.keys))
            .collect();
        let Some(output) = KeyRanges::spanning(&output) else {
            return files;
        };
        files
            .into_iter()
            .filter(|file| KeyRanges::of(file.stats().as_deref(), &self.keys).meets(&output))
            .collect()
    }

    /// Writes the rows of `touched` whose keys the slice's output does not have, as files
    /// in the slice's partitions that no reader sees yet; `None` when no file is touched.
    async fn rows_that_stay(
        &self,
        sink: &Sink,
        ctx: &SessionContext,
        member: &SliceCommit<'_>,
        touched: &[LogicalFileView],
    ) -> deltalake::DeltaResult<Option<StagedOutput>> {
        if touched.is_empty() {
            return Ok(None);
        }
        let existing = touched.iter().map(|file| DataFile {
            path: file.path().into_owned(),
            partition: file.partition_values_map(),
        });
        let existing = files_table(&sink.schema, &sink.url, &sink.partition_by, existing)?;
        let output = ctx.read_table(member.staged.table(&sink.schema)?)?;
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        // The output's keys are the join's build side (with no statistics, the planner
        // keeps the sides as given), and the table's rows stream past them.
        let output_keys = output.select_columns(&keys)?.alias("source")?;
        let matched = self.keys.iter().map(|key| {
            let source = col(Column::new(Some("source"), key));
            source.eq(col(Column::new(Some("target"), key)))
        });
        let stay = output_keys.join_on(
            ctx.read_table(existing)?.alias("target")?,
            JoinType::RightAnti,
            matched.collect::<Vec<Expr>>(),
        )?;
        // Planning takes a core for a while: the slices of a group plan on several.
        let planned = tokio::spawn(stay.execute_stream()).await;
        let stream = planned.map_err(|e| DeltaTableError::Generic(e.to_string()))??;
        let reading = "reading the rows its partitions keep";
        let written = sink.stage_rows(member.slice, stream, reading).await;
        written
            .map(|stay| (stay.rows > 0).then_some(stay))
            .map_err(|error| DeltaTableError::Generic(error.to_string()))
    }

    /// A merge replacing the partitions of `slices`: its predicate names them all.
    fn operation(&self, slices: &[&Slice]) -> DeltaOperation {
        let action = |action_type: &str| MergePredicate {
            action_type: action_type.to_string(),
            predicate: None,
        };
        DeltaOperation::Merge {
            predicate: Some(partitions_predicate(slices)),
            merge_predicate: Some(key_predicate(&self.keys)),
            matched_predicates: vec![action("update")],
            not_matched_predicates: vec![action("insert")],
            not_matched_by_source_predicates: vec![],
        }
    }
}

/// Rows of the target and the source match when each key column is equal.
fn key_predicate(keys: &[String]) -> String {
    let each = keys.iter();
    let each = each.map(|k| format!("target.\"{k}\" = source.\"{k}\""));
    each.collect::<Vec<_>>().join(" AND ")
}

/// The range of each integer key column in a file's statistics (`None` where unknown).
struct KeyRanges(Vec<Option<(i64, i64)>>);

impl KeyRanges {
    /// The ranges in the statistics `stats` (the JSON of an add) of `keys`.
    fn of(stats: Option<&str>, keys: &[String]) -> Self {
        let stats: Option<serde_json::Value> = stats.and_then(|s| serde_json::from_str(s).ok());
        let bound = |which: &str, key: &str| {
            let stats = stats.as_ref()?;
            stats.get(which)?.get(key)?.as_i64()
        };
        let ranges = keys
            .iter()
            .map(|key| Some((bound("minValues", key)?, bound("maxValues", key)?)));
        KeyRanges(ranges.collect())
    }

    /// The ranges covering all of `files`; `None` when nothing is known of any key.
    fn spanning(files: &[KeyRanges]) -> Option<Self> {
        let columns = files.first()?.0.len();
        let spanning = (0..columns).map(|column| {
            let each = files.iter().map(|file| file.0[column]);
            each.reduce(|a, b| Some((a?.0.min(b?.0), a?.1.max(b?.1))))
                .flatten()
        });
        let spanning = KeyRanges(spanning.collect());
        spanning.0.iter().any(Option::is_some).then_some(spanning)
    }

    /// Whether a row could be in both: no known key column's ranges are apart.
    fn meets(&self, other: &KeyRanges) -> bool {
        self.0.iter().zip(&other.0).all(|pair| match pair {
            (Some((low, high)), Some((other_low, other_high))) => {
                low <= other_high && other_low <= high
            }
            _ => true,
        })
    }
}

async fn merge_across(
    sink: &Sink,
    table: &mut Option<DeltaTable>,
    slice: &Slice,
    staged: &StagedOutput,
    keys: &[String],
    properties: CommitProperties,
) -> deltalake::DeltaResult<u64> {
    if table.is_none() {
        // MERGE needs a target. An empty table is created only now, after the first
        // slice passed its checks, so a run that fails everything leaves no table. If
        // another writer creates it first, this fails and the sink merges into theirs.
        sink.create(table, vec![], CommitProperties::default())
            .await?;
    }
    let existing = table.take().expect("created above");
    let ctx = sink.session();
    let source = ctx
        .read_table(staged.table(&sink.schema)?)
        .map_err(DeltaTableError::from)?;
    let columns: Vec<String> = sink
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let (merged, _metrics) = existing
        .merge(source, key_predicate(keys))
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(properties)
        // The files MERGE writes name the pipeline too: a merge killed before its commit
        // leaves files that `clean` can recognise.
        .with_writer_properties(super::writing::writer_properties(
            &sink.pipeline,
            &slice.key,
        ))
        .when_matched_update(|update| {
            columns.iter().fold(update, |u, c| {
                u.update(format!("\"{c}\""), format!("source.\"{c}\""))
            })
        })?
        .when_not_matched_insert(|insert| {
            columns.iter().fold(insert, |i, c| {
                i.set(format!("\"{c}\""), format!("source.\"{c}\""))
            })
        })?
        .await?;
    let version = merged.version().unwrap_or_default();
    *table = Some(merged);
    Ok(version)
}
