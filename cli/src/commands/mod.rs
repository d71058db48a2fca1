//! One file per command: its arguments, the engine calls it makes, and how it prints
//! what they return.

pub mod cancel;
pub mod clean;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod diff;
pub mod fixtures;
pub mod history;
pub mod lineage;
pub mod plan;
pub mod promote;
pub mod rebuild_preview;
pub mod report;
pub mod run;
pub mod schedule;
pub mod serve;
pub mod show;
pub mod status;
pub mod validate;

/// How a command ended, for the exit code.
pub enum Outcome {
    Success,
    SlicesFailed,
    /// `diff --exit-code` found slices that differ: 1, as `git diff --exit-code`.
    Differs,
    /// Stopped by Ctrl-C: 130, as shells report a command ended by SIGINT.
    Interrupted,
}
