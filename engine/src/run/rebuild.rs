//! Finishing a rebuild: once every selected slice is staged or done, the swap.

use std::collections::HashMap;

use super::{FinishedSlice, Run, RunEvent};
use crate::ledger::SwapManifest;
use crate::states::{RebuildOutcome, SliceOutcome};

impl Run {
    /// Swaps a rebuild's staged slices in if every selected slice is staged or done, and
    /// turns the staged outcomes into committed ones if it did.
    pub(super) async fn finish_rebuild(
        &self,
        outcomes: &mut [FinishedSlice],
        not_started: &[String],
        mut staged: HashMap<String, SwapManifest>,
    ) -> RebuildOutcome {
        let (mut ready, mut kept, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for outcome in outcomes.iter() {
            let done = self.recorded.ledger.get(&outcome.slice);
            match (&outcome.status, staged.remove(&outcome.slice), done) {
                (SliceOutcome::Staged { .. }, Some(slice), _) => ready.push(slice),
                // Only a done slice's files fit the new table; a changed one that was
                // not chosen (say, with new columns) must be recomputed first.
                (SliceOutcome::Skipped { state }, _, Some(done)) if state == "done" => {
                    kept.push(done.record.clone())
                }
                _ => waiting.push(outcome.slice.clone()),
            }
        }
        waiting.extend(not_started.iter().cloned());
        if !waiting.is_empty() {
            return RebuildOutcome::Waiting {
                staged: ready.len(),
                waiting,
            };
        }
        let swapped = async {
            if ready.is_empty() {
                let kept_keys = kept.iter().map(|r| r.slice.as_str()).collect();
                let replaced = self.backfill.sink.replaced(&kept_keys).await?;
                if replaced.files == 0 && !replaced.schema_changes {
                    return Ok(None);
                }
            }
            self.backfill
                .sink
                .swap(&self.run_id, &ready, &kept)
                .await
                .map(Some)
        }
        .await;
        let outcome = match swapped {
            Err(error) => {
                return RebuildOutcome::Refused {
                    error: error.to_string(),
                }
            }
            Ok(None) => RebuildOutcome::Unchanged,
            Ok(Some(swapped)) => {
                let slices = ready.iter().map(|s| &s.record).chain(&kept);
                self.tell(RunEvent::Committed {
                    pipeline: self.pipeline().to_string(),
                    version: swapped.version,
                    slices: slices.map(|r| r.slice.clone()).collect(),
                });
                for outcome in outcomes.iter_mut() {
                    if let SliceOutcome::Staged { rows, bytes, .. } = outcome.status {
                        outcome.status = SliceOutcome::Committed {
                            version: swapped.version,
                            rows,
                            bytes,
                        };
                    }
                }
                RebuildOutcome::Swapped {
                    version: swapped.version,
                    removed_files: swapped.removed_files,
                    added_files: swapped.added_files,
                    kept_slices: kept.len(),
                }
            }
        };
        // The swapped manifests, and any left by a crash right after an earlier swap.
        let forgotten = ready.iter().map(|s| &s.record).chain(&kept);
        self.backfill
            .sink
            .forget(forgotten.map(|r| r.slice.as_str()))
            .await;
        outcome
    }
}
