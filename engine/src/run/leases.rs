//! A run's leases: each pipeline it runs is leased to it before its pre-flight, so one
//! run at a time does a pipeline's work ([`crate::history::Lease`]), and given up at its
//! end. Waiting for a held lease has a deadline; nothing waits forever.

use std::time::{Duration, Instant};

use super::{Member, Observer, RunEvent, RunOptions};
use crate::error::{Error, Result};
use crate::history::{Lease, Taking};

/// What a run does when another run holds a pipeline's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWait {
    /// Refuses at once: [`Error::Busy`].
    Refuse,
    /// Waits this long at most for the lease, then refuses.
    Wait(Duration),
    /// Runs without taking the lease. Still safe: each slice commits once whatever runs
    /// at once; two runs may only compute the same slices twice.
    Ignore,
}

/// How often a run waiting for a lease looks at it again.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Takes the lease of every member's pipeline, in the members' order, for run `run_id`;
/// a takeover of an expired lease is told. On refusal, those taken are given back.
pub(super) async fn take(
    members: &[Member],
    run_id: &str,
    options: &RunOptions,
    observer: &dyn Observer,
) -> Result<Vec<Lease>> {
    let deadline = match options.lease {
        LeaseWait::Ignore => return Ok(vec![]),
        LeaseWait::Refuse => Instant::now(),
        LeaseWait::Wait(limit) => Instant::now() + limit,
    };
    let mut taken = Vec::with_capacity(members.len());
    for member in members {
        match take_one(member, run_id, deadline, options, observer).await {
            Ok(lease) => taken.push(lease),
            Err(error) => {
                release(taken).await;
                return Err(error);
            }
        }
    }
    Ok(taken)
}

async fn take_one(
    member: &Member,
    run_id: &str,
    deadline: Instant,
    options: &RunOptions,
    observer: &dyn Observer,
) -> Result<Lease> {
    let pipeline = &member.backfill.pipeline.name;
    let history = member.backfill.history();
    loop {
        // Leases are judged in real time by every process, whatever the run's clock.
        match history
            .take_lease(pipeline, run_id, chrono::Utc::now())
            .await?
        {
            Taking::Taken(lease, expired) => {
                if let Some(from) = expired {
                    observer.on(&RunEvent::LeaseTakenOver {
                        pipeline: pipeline.clone(),
                        from,
                    });
                }
                return Ok(lease);
            }
            // Asked to stop while waiting (Ctrl-C): nothing ran.
            Taking::Held(holder) if Instant::now() >= deadline || options.stop.is_stopping() => {
                return Err(Error::lease_held(pipeline, &holder));
            }
            Taking::Held(_) => tokio::time::sleep(LOOK_EVERY).await,
        }
    }
}

/// Gives `leases` up; one that cannot be written expires by itself.
pub(super) async fn release(leases: Vec<Lease>) {
    for lease in leases {
        if let Err(error) = lease.release().await {
            tracing::warn!("could not give a lease up (it expires by itself): {error}");
        }
    }
}
