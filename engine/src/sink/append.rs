//! `append`: add the slice's rows, never twice.
//!
//! A slice that is already committed with unchanged inputs is skipped before it runs (see
//! the runner). When it does run again (`--force`, or changed inputs), the files it added
//! before, found by their tags, are removed in the same commit that adds the new ones: the
//! slice's rows are replaced, not duplicated, and rows appended by anyone else stay.

use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;

use super::strategy::{files_of_each, replacing, Commits, Publishing, WriteStrategy};
use super::{written_by, Sink, SliceCommit, StagedOutput};

pub(super) struct Append;

impl WriteStrategy for Append {
    fn publishing(&self) -> Publishing<'_> {
        Publishing::Commits(self)
    }

    fn stages_apart(&self) -> bool {
        false
    }

    /// Appended rows may land in any partition: nothing is replaced there.
    fn keeps_to_its_partitions(&self) -> bool {
        false
    }

    fn may_change_columns(&self) -> bool {
        false
    }

    /// A slice's files carry its tags, and a rerun replaces exactly them.
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
impl Commits for Append {
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
        // Each slice replaces the files it added before, found by their tags.
        let keys = pending.iter().map(|m| Some(m.slice.key.clone())).collect();
        let replaced = files_of_each(table.as_ref(), keys, |file| match written_by(file) {
            (Some(pipeline), slice) if pipeline == sink.pipeline => slice,
            _ => None,
        })?;
        let all = replacing(pending, replaced);
        sink.commit(table, all, operation(sink), properties).await
    }
}

fn operation(sink: &Sink) -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(sink.partition_by.clone()),
        predicate: None,
    }
}
