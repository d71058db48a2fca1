//! `overwrite`: replace exactly the slice's partitions (replaceWhere semantics).
//!
//! The commit removes every file in the slice's partitions and adds the staged ones. Its
//! predicate names those partitions, so Delta's conflict checker refuses the commit if
//! another writer added files there since the table was read, while commits of other
//! slices (other partitions) go through.

use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;

use super::{files_in_partitions, partition_predicate, Sink, Staged};
use crate::slice::Slice;

pub(super) async fn publish(
    sink: &Sink,
    table: &mut Option<DeltaTable>,
    slice: &Slice,
    staged: &Staged,
    properties: CommitProperties,
) -> deltalake::DeltaResult<u64> {
    let mut actions: Vec<Action> = staged.adds.iter().cloned().map(Action::Add).collect();
    if let Some(existing) = table.as_ref() {
        let replaced = files_in_partitions(sink, existing, slice)?;
        actions.extend(
            replaced
                .iter()
                .map(|file| Action::Remove(file.remove_action(true))),
        );
    }
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: Some(sink.partition_by.clone()),
        predicate: Some(partition_predicate(slice, "")),
    };
    sink.commit(table, actions, operation, properties).await
}
