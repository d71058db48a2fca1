//! What a running `backfill schedule` says of itself, next to the history of each pipeline
//! it keeps current (`_backfill/schedules/<pipeline>.json`): its cadence, its next tick and
//! what its last tick did, so that `status` and the run page can show it.

use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::lease::{process_alive, started};
use super::{host, History, PRESUMED_DEAD_AFTER};
use crate::error::Result;

/// A schedule's account of itself, rewritten as it ticks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleBeat {
    /// `every 1h`, `on 5 * * * * (UTC)`.
    pub cadence: String,
    pub host: String,
    pub pid: u32,
    #[serde(default)]
    pub process_start: Option<u64>,
    pub started_at: DateTime<Utc>,
    /// When it ticks next; `None` while a tick runs.
    pub next_tick: Option<DateTime<Utc>>,
    pub last_tick: Option<DateTime<Utc>>,
    /// The run its last tick made, if it made one.
    pub last_run: Option<String>,
    /// What its last tick did: `1 committed, 14 skipped, 0 failed`, or why it made no run.
    pub last_outcome: Option<String>,
    /// When it stopped (Ctrl-C, SIGTERM), if it did.
    pub stopped_at: Option<DateTime<Utc>>,
}

impl ScheduleBeat {
    /// A schedule of this process, starting at `now`.
    pub fn starting(cadence: String, now: DateTime<Utc>) -> ScheduleBeat {
        ScheduleBeat {
            cadence,
            host: host(),
            pid: std::process::id(),
            process_start: started(std::process::id()),
            started_at: now,
            next_tick: None,
            last_tick: None,
            last_run: None,
            last_outcome: None,
            stopped_at: None,
        }
    }

    /// Whether the schedule still runs as of `now`: not stopped, its process alive if on
    /// this machine, and elsewhere not overdue for its next tick by more than a minute. A
    /// tick in progress elsewhere is taken as running: its run tells its own liveness.
    pub fn is_running(&self, now: DateTime<Utc>) -> bool {
        if self.stopped_at.is_some() {
            return false;
        }
        if self.host == host() {
            return process_alive(self.pid, self.process_start);
        }
        let Some(due) = self.next_tick else {
            return true;
        };
        (now - due)
            .to_std()
            .map_or(true, |late| late <= PRESUMED_DEAD_AFTER)
    }
}

impl History {
    /// Rewrites `pipeline`'s schedule beat.
    pub async fn write_schedule(&self, pipeline: &str, beat: &ScheduleBeat) -> Result<()> {
        self.put(&schedule_path(pipeline), beat).await
    }

    /// `pipeline`'s schedule beat, if a schedule ever kept it current.
    pub async fn schedule(&self, pipeline: &str) -> Result<Option<ScheduleBeat>> {
        self.get(&schedule_path(pipeline)).await
    }
}

fn schedule_path(pipeline: &str) -> Path {
    Path::from(format!("_backfill/schedules/{pipeline}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_elsewhere_is_gone_a_minute_after_a_tick_it_missed() {
        let now: DateTime<Utc> = "2024-01-01T12:00:00Z".parse().unwrap();
        let elsewhere = ScheduleBeat {
            host: "another machine".into(),
            next_tick: Some(now - chrono::Duration::seconds(60)),
            ..ScheduleBeat::starting("every 1h".into(), now)
        };
        assert!(elsewhere.is_running(now));
        assert!(!elsewhere.is_running(now + chrono::Duration::seconds(1)));
        let ticking = ScheduleBeat {
            next_tick: None,
            ..elsewhere.clone()
        };
        assert!(ticking.is_running(now + chrono::Duration::hours(2)));
        let stopped = ScheduleBeat {
            stopped_at: Some(now),
            ..ticking
        };
        assert!(!stopped.is_running(now));
        assert!(
            ScheduleBeat::starting("every 1h".into(), now).is_running(now),
            "this process"
        );
    }
}
