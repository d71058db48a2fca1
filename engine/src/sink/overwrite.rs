//! `overwrite`: replace exactly the slice's partitions (replaceWhere semantics).
//!
//! The commit removes every file in the slice's partitions and adds the staged ones (for
//! every slice of the commit, when several go together). Its predicate names those
//! partitions, so Delta's conflict checker refuses the commit if
//! another writer added files there since the table was read, while commits of other
//! slices (other partitions) go through.

use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;

use super::strategy::{
    files_in_partitions, partitions_predicate, replacing, Commits, Publishing, WriteStrategy,
};
use super::{Sink, SliceCommit, StagedOutput};
use crate::slice::Slice;

pub(super) struct Overwrite;

impl WriteStrategy for Overwrite {
    fn publishing(&self) -> Publishing<'_> {
        Publishing::Commits(self)
    }

    fn stages_apart(&self) -> bool {
        false
    }

    fn keeps_to_its_partitions(&self) -> bool {
        true
    }

    fn may_change_columns(&self) -> bool {
        false
    }

    fn slices_own_their_files(&self) -> bool {
        true
    }

    fn row_keys(&self) -> Option<&[String]> {
        None
    }

    fn reads_table_files(&self) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl Commits for Overwrite {
    fn most_per_commit(&self) -> usize {
        usize::MAX
    }

    async fn commit(
        &self,
        sink: &Sink,
        table: &mut Option<DeltaTable>,
        pending: &[&SliceCommit<'_>],
        properties: CommitProperties,
        _also_written: &mut Vec<StagedOutput>,
    ) -> deltalake::DeltaResult<u64> {
        let slices: Vec<&Slice> = pending.iter().map(|m| m.slice).collect();
        let replaced = files_in_partitions(sink, table.as_ref(), &slices)?;
        let all = replacing(pending, replaced);
        let operation = operation(sink, &slices);
        sink.commit(table, all, operation, properties).await
    }
}

/// A commit replacing the partitions of `slices`: its predicate names them all.
fn operation(sink: &Sink, slices: &[&Slice]) -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: Some(sink.partition_by.clone()),
        predicate: Some(partitions_predicate(slices)),
    }
}
