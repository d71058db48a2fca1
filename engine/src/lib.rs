//! `backfill-engine`: replays a pipeline over history into a Delta table, slice by slice,
//! with every slice checked before it is published and never written twice.
//!
//! The flow: [`pipeline::load`] reads a pipeline file; [`Backfill::open`] resolves its
//! sources and destination; [`Backfill::plan`] cuts a selection into [`slice::Slice`]s
//! and reads each one's state from the Delta log ([`ledger`]); [`Backfill::run`] stages,
//! checks ([`assertions`]) and publishes ([`sink`]) the slices that need it.
//! The engine never prints and never exits: it returns errors classified by [`Fault`]
//! and reports what happens as [`run::RunEvent`]s to an [`run::Observer`].

pub mod assertions;
mod backfill;
pub mod clock;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod column_lineage;
pub mod error;
pub mod estimate;
pub mod fixtures;
pub mod grid;
pub mod history;
pub mod ledger;
pub mod lineage;
pub mod pipeline;
pub mod plan;
pub mod preview;
pub mod project;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod sink;
pub mod slice;
pub mod source;
pub mod states;
pub mod status;
pub mod template;
pub mod upstream;

pub use backfill::{Backfill, OpenOptions, SlicePlan};
pub use datafusion::arrow;
pub use error::{Error, Fault, Result, Setting};
pub use estimate::PlanOptions;
pub use plan::Plan;
pub use retry::RequestRetry;
pub use run::{FinishedSlice, Observer, RunEvent, RunOptions, RunSummary};
pub use slice::{CatchUp, Selection, Through};
pub use states::{RebuildOutcome, Reprocess, SliceOutcome, SliceState};
