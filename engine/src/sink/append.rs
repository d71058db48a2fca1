//! `append`: add the slice's rows, never twice.
//!
//! A slice that is already committed with unchanged inputs is skipped before it runs (see
//! the runner). When it does run again (`--force`, or changed inputs), the files it added
//! before, found by their tags, are removed in the same commit that adds the new ones: the
//! slice's rows are replaced, not duplicated, and rows appended by anyone else stay.

use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;

use super::{actions_of_all, is_tagged_with, Sink, SliceCommit, Staged, Writes};
use crate::slice::Slice;

pub(super) struct Append;

#[async_trait::async_trait]
impl Writes for Append {
    /// Appended rows may land in any partition: nothing is replaced there.
    fn keeps_to_its_partitions(&self) -> bool {
        false
    }

    async fn commit(
        &self,
        sink: &Sink,
        table: &mut Option<DeltaTable>,
        pending: &[&SliceCommit<'_>],
        properties: CommitProperties,
    ) -> deltalake::DeltaResult<u64> {
        let all = actions_of_all(sink, table.as_ref(), pending, actions)?;
        sink.commit(table, all, operation(sink), properties).await
    }
}

/// The actions that add the slice's staged files and remove the files it added before.
fn actions(
    sink: &Sink,
    table: Option<&DeltaTable>,
    slice: &Slice,
    staged: &Staged,
) -> deltalake::DeltaResult<Vec<Action>> {
    let mut actions: Vec<Action> = staged.adds.iter().cloned().map(Action::Add).collect();
    if let Some(existing) = table {
        let log_data = existing.snapshot()?.log_data();
        let replaced = log_data
            .iter()
            .filter(|file| is_tagged_with(file, &sink.pipeline, &slice.key));
        actions.extend(replaced.map(|file| Action::Remove(file.remove_action(true))));
    }
    Ok(actions)
}

fn operation(sink: &Sink) -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(sink.partition_by.clone()),
        predicate: None,
    }
}
