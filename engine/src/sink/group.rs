//! Group commits: slices that finish checking while a commit is in flight wait for it, and
//! then go together in the next one.
//!
//! [`Sink::publish`] puts a checked slice in the line and takes the table's view, the lock
//! every commit holds. Whoever holds it takes the slices waiting in line, its own and
//! others', up to a bound, and commits them as one group through the committer; the others
//! find their outcome when they get the view, or wait for it. So a run commits once per
//! group instead of once per slice, and nothing waits that would not have waited anyway.
//!
//! A slice whose task is dropped while it waits (stopped, out of time) leaves the line, so
//! it is never committed behind its task's back; and one slice is never twice in a group.

use std::collections::HashSet;
use std::sync::Mutex as SyncMutex;

use tokio::sync::{oneshot, MutexGuard};

use super::view::TableView;
use super::{Committer, Published, Sink, SliceCommit, StagedOutput};
use crate::error::{Error, Result};
use crate::ledger::SliceRecord;
use crate::slice::Slice;

/// The most slices one commit publishes: a commit's size stays small next to its data.
const MOST_SLICES_PER_GROUP: usize = 128;

/// The most bytes of staged output one commit publishes (a group has at least one slice,
/// whatever its size): a group that fails is computed again, slice by slice.
const MOST_BYTES_PER_GROUP: u64 = 1 << 30;

/// What a slice's publisher learns of a commit it makes, for its run's events: the slices
/// it is committing, then the version that carries those of them no one else committed.
pub enum CommitStep<'a> {
    Committing { slices: &'a [String] },
    Committed { version: u64, slices: &'a [String] },
}

/// The slices waiting to be committed, in the order they arrived.
#[derive(Default)]
pub(super) struct Line {
    next_id: u64,
    waiting: Vec<Waiting>,
}

/// A checked slice waiting for a commit, and where its outcome goes.
struct Waiting {
    id: u64,
    slice: Slice,
    staged: StagedOutput,
    record: SliceRecord,
    outcome: oneshot::Sender<Result<Published>>,
}

impl Line {
    /// How many slices are waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    fn join(&mut self, waiting: impl FnOnce(u64) -> Waiting) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push(waiting(id));
        id
    }

    /// Takes the next group, in order of arrival: at most `most` slices and
    /// [`MOST_BYTES_PER_GROUP`] bytes, and no slice twice (a later attempt of a slice
    /// already in the group waits for the next one).
    fn next_group(&mut self, most: usize) -> Vec<Waiting> {
        let most = most.clamp(1, MOST_SLICES_PER_GROUP);
        let (mut group, mut keys, mut bytes) = (Vec::new(), HashSet::new(), 0);
        let mut index = 0;
        while index < self.waiting.len() && group.len() < most {
            let candidate = &self.waiting[index];
            let too_big =
                !group.is_empty() && bytes + candidate.staged.bytes > MOST_BYTES_PER_GROUP;
            if too_big {
                break;
            }
            if keys.insert(candidate.slice.key.clone()) {
                bytes += candidate.staged.bytes;
                group.push(self.waiting.remove(index));
            } else {
                index += 1;
            }
        }
        group
    }
}

/// Takes a slice out of the line when its task stops waiting, unless it was taken already.
struct LeavesLine<'a> {
    line: &'a SyncMutex<Line>,
    id: u64,
}

impl Drop for LeavesLine<'_> {
    fn drop(&mut self) {
        let mut line = self.line.lock().expect("not poisoned");
        line.waiting.retain(|waiting| waiting.id != self.id);
    }
}

impl Sink {
    /// Publishes a staged slice in one atomic commit carrying its `txn` and `record`,
    /// unless the slice was committed since the run read the log. The commit may carry
    /// other slices that were waiting at the same time (`most_per_commit` at most, if
    /// given), each with its own `txn` and record: the slice is in the table completely,
    /// or not at all, either way.
    pub async fn publish(
        &self,
        slice: &Slice,
        staged: &StagedOutput,
        record: &SliceRecord,
        most_per_commit: Option<usize>,
        watch: &(dyn Fn(CommitStep<'_>) + Sync),
    ) -> Result<Published> {
        let (sender, mut outcome) = oneshot::channel();
        let id = self.line.lock().expect("not poisoned").join(|id| Waiting {
            id,
            slice: slice.clone(),
            staged: staged.clone(),
            record: record.clone(),
            outcome: sender,
        });
        let _leaves = LeavesLine {
            line: &self.line,
            id,
        };
        let interrupted = || {
            Error::execution(
                format!("slice {}: committing to {}", slice.key, self.url),
                "the commit carrying this slice was interrupted, so whether it landed is unknown; the log is read again before the slice is retried",
            )
        };
        loop {
            // The outcome may come from another holder of the view before the view is free.
            let view = tokio::select! {
                biased;
                published = &mut outcome => return published.unwrap_or_else(|_| Err(interrupted())),
                view = self.view.lock() => view,
            };
            let most = self
                .commits()?
                .most_per_commit()
                .min(most_per_commit.unwrap_or(usize::MAX));
            let group = self.line.lock().expect("not poisoned").next_group(most);
            if group.is_empty() {
                // Another holder of the view took this slice and is settling its commit.
                drop(view);
                return outcome.await.unwrap_or_else(|_| Err(interrupted()));
            }
            self.commit_group(view, group, watch).await;
        }
    }

    /// Commits `group` in one commit while holding the view, settles its staged files,
    /// and sends each slice its outcome.
    async fn commit_group(
        &self,
        view: MutexGuard<'_, TableView>,
        group: Vec<Waiting>,
        watch: &(dyn Fn(CommitStep<'_>) + Sync),
    ) {
        let keys: Vec<String> = group.iter().map(|w| w.slice.key.clone()).collect();
        watch(CommitStep::Committing { slices: &keys });
        let members: Vec<SliceCommit> = group
            .iter()
            .map(|waiting| SliceCommit {
                slice: &waiting.slice,
                staged: &waiting.staged,
                record: &waiting.record,
            })
            .collect();
        let settled = self.publish_holding(view, &members).await;
        drop(members);
        match settled {
            Ok(published) => {
                let ours: Vec<String> = keys
                    .into_iter()
                    .zip(&published)
                    .filter(|(_, p)| p.by == Committer::ThisAttempt)
                    .map(|(key, _)| key)
                    .collect();
                if let Some(version) = published.iter().find(|p| p.by == Committer::ThisAttempt) {
                    watch(CommitStep::Committed {
                        version: version.version,
                        slices: &ours,
                    });
                }
                for (waiting, published) in group.into_iter().zip(published) {
                    // The receiver is gone only if its task stopped: nothing to tell.
                    let _ = waiting.outcome.send(Ok(published));
                }
            }
            Err(error) => {
                for waiting in group {
                    let _ = waiting.outcome.send(Err(error.duplicate()));
                }
            }
        }
    }
}
