//! Lineage: OpenLineage events for every run and every attempt at a slice, so a catalog
//! (Marquez, DataHub, OpenMetadata) can say which run rewrote which slice of a table,
//! from which inputs, with which SQL, and whether its checks passed.
//!
//! `event.rs` holds the event's shape (OpenLineage 2-0-2 and its facets), `emit.rs`
//! which event says what (built from what the run did, its ids and times from the run's
//! history), `outlets.rs` where they go (the log next to the run's history, a collector
//! over HTTP, the console), in the background, and `collector.rs` the HTTP transport.
//! Nothing here decides what a run does, and a collector's failure never fails a run:
//! at worst an event waits in the log for `backfill lineage --send`.

mod collector;
mod emit;
mod event;
mod outlets;

pub use collector::send;
pub use emit::{AttemptFacts, Lineage};
