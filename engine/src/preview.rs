//! Reading a rebuild before its swap: the table as the swap would make it, next to the
//! table as it is.
//!
//! [`Backfill::rebuild_preview`] registers two tables in one DataFusion session:
//! `staged`, the staged slices' files plus the files of the done slices the swap keeps,
//! and `current`, the destination as readers see it now. A user queries them to compare
//! before anything is swapped. This module reads only; it never writes or commits.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::backfill::Backfill;
use crate::error::{Error, Result, ResultExt};
use crate::sink::strategy::Publishing;
use crate::slice::Selection;
use crate::states::{Reprocess, SliceState};

/// A rebuild as staged so far, ready to be queried.
pub struct RebuildPreview {
    /// Every selected slice with its state (`staged`, `done`, or what it still lacks)
    /// and the rows it holds in the staged table.
    pub slices: Vec<PreviewSlice>,
    /// Session with the tables `staged` and `current`.
    pub ctx: SessionContext,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviewSlice {
    pub slice: String,
    pub state: String,
    /// Rows of this slice in the staged table; `None` if it is not there.
    pub rows: Option<u64>,
}

impl RebuildPreview {
    /// Whether every selected slice is in the staged table, so that a run would swap.
    pub fn complete(&self) -> bool {
        self.slices.iter().all(|s| s.rows.is_some())
    }

    /// Runs `sql` over the tables `staged` and `current`.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let context = || format!("preview query `{sql}`");
        let frame = crate::source::read_only_query(self.ctx.state(), sql, context).await?;
        frame.collect().await.context(context)
    }
}

impl Backfill {
    /// The table a rebuild of `selection` would swap in, from what is staged and done.
    pub async fn rebuild_preview(
        self: &Arc<Self>,
        selection: &Selection,
    ) -> Result<RebuildPreview> {
        match self.sink.strategy().publishing() {
            Publishing::Swap => {}
            Publishing::Commits(_) => {
                return Err(Error::config(
                    self.pipeline.file.display().to_string(),
                    "a rebuild preview is for pipelines with destination.strategy = \"rebuild\"",
                ))
            }
        }
        let planned = self.slice_plans(selection, Reprocess::default(), 1).await?;
        let mut slices = Vec::with_capacity(planned.len());
        let mut staged_adds = Vec::new();
        let mut kept = HashSet::new();
        for p in &planned {
            let rows = match &p.state {
                SliceState::Staged { staged, rows, .. } => {
                    staged_adds.extend(staged.adds.iter().cloned());
                    Some(*rows)
                }
                SliceState::Done { committed } => {
                    kept.insert(p.slice.key.as_str());
                    Some(committed.record.rows)
                }
                _ => None,
            };
            slices.push(PreviewSlice {
                slice: p.slice.key.clone(),
                state: p.state.name().to_string(),
                rows,
            });
        }
        staged_adds.extend(self.sink.files_of(&kept).await?);
        let ctx = SessionContext::new();
        self.sink.register_store(ctx.runtime_env().as_ref());
        let internal = |e: datafusion::error::DataFusionError| Error::Internal(e.to_string());
        let destination = &self.pipeline.destination;
        let table = crate::source::files_table(
            &self.schema,
            &destination.url,
            &destination.partition_by,
            crate::sink::data_files(&staged_adds),
        )
        .map_err(internal)?;
        ctx.register_table("staged", table).map_err(internal)?;
        if let Some(current) = self.sink.table().await {
            current
                .update_datafusion_session(&ctx.state())
                .context(|| "reading the destination table".into())?;
            let provider = current
                .table_provider()
                .await
                .context(|| "reading the destination table".into())?;
            ctx.register_table("current", provider).map_err(internal)?;
        }
        Ok(RebuildPreview { slices, ctx })
    }
}
