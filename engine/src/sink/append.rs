//! `append`: add the slice's rows, never twice.
//!
//! A slice that is already committed with unchanged inputs is skipped before it runs (see
//! the runner). When it does run again (`--force`, or changed inputs), the files it added
//! before, found by their tags, are removed in the same commit that adds the new ones: the
//! slice's rows are replaced, not duplicated, and rows appended by anyone else stay.

use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;

use super::{is_tagged_with, Sink, Staged};
use crate::slice::Slice;

/// The actions that add the slice's staged files and remove the files it added before.
pub(super) fn actions(
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

pub(super) fn operation(sink: &Sink) -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(sink.partition_by.clone()),
        predicate: None,
    }
}
