//! Finishing a pipeline's run once its slices are over: outcomes in run order, abandoned
//! slices settled against the log, a rebuild's swap, the gates of slices still pending,
//! the ledger summarized, and the summary sent (the history's end).

use super::{FinishedSlice, Publishing, Run, RunEvent, RunSummary};
use crate::error::Result;
use crate::ledger::{Ledger, Summaries};
use crate::states::SliceOutcome;

impl Run {
    /// The summary of this pipeline's run, whose slices `keys` (in run order) finished
    /// with `finished`, each with its index; a slice never started has no outcome.
    pub(super) async fn finish(
        &self,
        keys: &[String],
        finished: Vec<(usize, Option<FinishedSlice>)>,
    ) -> Result<RunSummary> {
        // Slices finish in any order; the summary lists them in run order.
        let mut in_run_order: Vec<Option<FinishedSlice>> = keys.iter().map(|_| None).collect();
        for (index, outcome) in finished {
            in_run_order[index] = outcome;
        }
        let not_started: Vec<String> = keys
            .iter()
            .zip(&in_run_order)
            .filter(|(_, outcome)| outcome.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        let mut outcomes: Vec<FinishedSlice> = in_run_order.into_iter().flatten().collect();
        if outcomes.iter().any(|o| o.status == SliceOutcome::Abandoned) {
            self.settle_abandoned(&mut outcomes).await?;
        }
        let settled = |slice: &str| {
            let outcome = outcomes.iter().find(|o| o.slice == slice);
            outcome.map_or(SliceOutcome::Abandoned, |o| o.status.clone())
        };
        for event in self.lineage.close_open(self.options.clock.now(), settled) {
            self.lineage_emitted(Some(event));
        }
        let rebuild = match self.backfill.sink.strategy().publishing() {
            Publishing::Swap => {
                let staged = std::mem::take(&mut *self.staged.lock().expect("not poisoned"));
                Some(
                    self.finish_rebuild(&mut outcomes, &not_started, staged)
                        .await,
                )
            }
            Publishing::Commits(_) => None,
        };
        if let Some(gates) = &self.gates {
            // What downstream slices still wait for: a rebuild's slices, visible from its
            // swap on, and slices that never started.
            gates.settle_rest(self.pipeline(), keys, rebuild.as_ref());
        }
        let summary = RunSummary {
            run_id: self.run_id.clone(),
            pipeline: self.pipeline().to_string(),
            stopped: self.options.stop.is_stopping() && !not_started.is_empty(),
            not_started,
            outcomes,
            rebuild,
        };
        if summary.committed() > 0 || summary.rebuild.is_some() {
            self.summarize_ledger().await;
        }
        self.send(RunEvent::PipelineEnded {
            summary: summary.clone(),
        })
        .await?;
        // The run's lineage is written (and its collector given a bounded time) before
        // the run says it ended.
        self.lineage.finish().await;
        Ok(summary)
    }

    /// Reads the ledger afresh, saving a summary of it if the commits since the last one
    /// are many, so that the next `plan` reads only what commits after this run. Best
    /// effort: the run's work is done either way.
    async fn summarize_ledger(&self) {
        let backfill = &self.backfill;
        let read = async {
            let table = backfill.sink.reload().await?;
            Ledger::read(table.as_ref(), &backfill.pipeline.name, Summaries::Save).await
        };
        if let Err(error) = read.await {
            tracing::warn!("could not summarize the Delta log after the run: {error}");
        }
    }

    /// An abandoned slice may have committed just before it was dropped: the Delta log,
    /// read afresh, says which did, so the summary tells exactly what is in the table.
    async fn settle_abandoned(&self, outcomes: &mut [FinishedSlice]) -> Result<()> {
        let backfill = &self.backfill;
        let table = backfill.sink.reload().await?;
        let ledger =
            Ledger::read(table.as_ref(), &backfill.pipeline.name, Summaries::ReadOnly).await?;
        for outcome in outcomes
            .iter_mut()
            .filter(|o| o.status == SliceOutcome::Abandoned)
        {
            if let Some(committed) = ledger
                .get(&outcome.slice)
                .filter(|c| c.record.run_id == self.run_id)
            {
                let record = &committed.record;
                outcome.status = SliceOutcome::Committed {
                    version: committed.version.unwrap_or_default(),
                    rows: record.rows,
                    bytes: record.bytes,
                };
            }
        }
        Ok(())
    }
}
