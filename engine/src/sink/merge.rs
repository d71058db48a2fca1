//! `merge`: upsert the slice's rows on business keys, within the slice's partitions.
//!
//! The slice's output was staged under `_backfill/staging/` and checked; the MERGE reads
//! it from there, so the transform SQL runs once, however often MERGE scans its source.
//! The join predicate includes the slice's partitions so the target is pruned to them.
//! The sink deletes the staged folder once the slice is settled, committed or not (not
//! before: a merge that lost the race to create the table is tried again from it).

use datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::DeltaTable;

use super::strategy::{partition_predicate, Commits, Publishing, WriteStrategy};
use super::{Sink, SliceCommit, StagedOutput};
use crate::slice::Slice;

pub(super) struct Merge {
    /// The business keys rows are matched on.
    pub keys: Vec<String>,
}

impl WriteStrategy for Merge {
    fn publishing(&self) -> Publishing<'_> {
        Publishing::Commits(self)
    }

    fn stages_apart(&self) -> bool {
        true
    }

    fn keeps_to_its_partitions(&self) -> bool {
        true
    }

    fn may_change_columns(&self) -> bool {
        false
    }

    /// MERGE rewrites the files it touches, and they carry no slice of their own.
    fn slices_own_their_files(&self) -> bool {
        false
    }

    fn row_keys(&self) -> Option<&[String]> {
        Some(&self.keys)
    }
}

#[async_trait::async_trait]
impl Commits for Merge {
    /// One MERGE per slice.
    fn most_per_commit(&self) -> usize {
        1
    }

    async fn commit(
        &self,
        sink: &Sink,
        table: &mut Option<DeltaTable>,
        pending: &[&SliceCommit<'_>],
        properties: CommitProperties,
    ) -> deltalake::DeltaResult<u64> {
        let [one] = pending else {
            let refused = "merge commits one slice at a time".to_string();
            return Err(deltalake::DeltaTableError::Generic(refused));
        };
        publish(sink, table, one.slice, one.staged, &self.keys, properties).await
    }
}

async fn publish(
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
    let ctx = SessionContext::new();
    sink.register_store(ctx.runtime_env().as_ref());
    let source = ctx
        .read_table(staged.table(&sink.schema)?)
        .map_err(deltalake::DeltaTableError::from)?;
    let mut predicate: Vec<String> = keys
        .iter()
        .map(|k| format!("target.\"{k}\" = source.\"{k}\""))
        .collect();
    if slice
        .partition
        .iter()
        .all(|(column, _)| sink.partition_by.contains(column))
    {
        predicate.push(partition_predicate(slice, "target."));
    }
    let columns: Vec<String> = sink
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let (merged, _metrics) = existing
        .merge(source, predicate.join(" AND "))
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
