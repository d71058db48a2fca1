//! A pipeline's lease: one run at a time per pipeline, kept next to its history.
//!
//! A lease is a generation, `_backfill/leases/<pipeline>/<generation>.json`, created only
//! if absent, so of two runs started at once exactly one takes it. The newest generation
//! is the lease: held while its holder renews it, until released (deleted) or expired (not
//! renewed for [`PRESUMED_DEAD_AFTER`], or its process gone from this machine). Taking
//! over an expired lease creates the next generation. The lease saves runs from doing the same
//! work twice; it does not keep the table right, which needs no lease: each slice commits
//! once whatever runs at once, as the Delta log decides.
//!
//! Renewals are real time whatever the run's clock, as other processes judge them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{History, HEARTBEAT_EVERY, PRESUMED_DEAD_AFTER};
use crate::error::{store_error_is_transient, Error, Result, ResultExt};

/// Where a pipeline's leases are kept, next to the run history.
const LEASES: &str = "_backfill/leases";

/// Creates of a lease whose answer was lost, looked into before the run gives up.
const UNANSWERED_CREATES: u32 = 5;

/// Who holds a lease, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    /// When its process started (Linux: clock ticks since boot), so that another process
    /// given the same pid later is not taken for it.
    #[serde(default)]
    pub process_start: Option<u64>,
    pub since: DateTime<Utc>,
    /// When the holder last said it still holds it.
    pub renewed_at: DateTime<Utc>,
}

impl LeaseHolder {
    /// Whether the lease still holds as of `now`: renewed lately, and its process alive
    /// if it ran on this machine.
    pub fn holds(&self, now: DateTime<Utc>, here: &str) -> bool {
        let renewed = (now - self.renewed_at)
            .to_std()
            .map_or(true, |age| age <= PRESUMED_DEAD_AFTER);
        renewed && (self.host != here || process_alive(self.pid, self.process_start))
    }

    /// `run 20240101T000000Z-abc123 (pid 42 on host-a, since 2024-01-01 00:00:00Z)`.
    pub fn describe(&self) -> String {
        format!(
            "run {} (pid {} on {}, since {})",
            self.run_id,
            self.pid,
            self.host,
            self.since.format("%Y-%m-%d %H:%M:%SZ")
        )
    }
}

/// A lease this process holds: renewed until released or dropped (then it expires).
pub struct Lease {
    history: History,
    path: Path,
    renewing: DropGuard,
    /// Held while a renewal is written, so none lands after the lease is released.
    writing: Arc<tokio::sync::Mutex<()>>,
}

/// What taking a lease found.
pub enum Taking {
    /// Taken; over this expired holder's, if there was one.
    Taken(Lease, Option<LeaseHolder>),
    /// Another run holds it.
    Held(LeaseHolder),
}

impl History {
    /// Takes `pipeline`'s lease for run `run_id` as of `now`, unless another run holds it.
    pub async fn take_lease(
        &self,
        pipeline: &str,
        run_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Taking> {
        let here = super::host();
        let mut unanswered = 0;
        loop {
            let newest = self.newest_lease(pipeline).await?;
            let (generation, expired) = match newest {
                // Ours: a request asked again created it, and was then told it existed.
                Some((generation, holder)) if holder.run_id == run_id => {
                    let path = lease_path(pipeline, generation);
                    return Ok(Taking::Taken(
                        Lease::renewing(self.clone(), path, holder),
                        None,
                    ));
                }
                Some((_, holder)) if holder.holds(now, &here) => return Ok(Taking::Held(holder)),
                Some((generation, holder)) => (generation + 1, Some(holder)),
                None => (1, None),
            };
            let holder = LeaseHolder {
                run_id: run_id.to_string(),
                host: here.clone(),
                pid: std::process::id(),
                process_start: started(std::process::id()),
                since: now,
                renewed_at: now,
            };
            let path = lease_path(pipeline, generation);
            let bytes = serde_json::to_vec_pretty(&holder).expect("a lease serializes");
            let created = self
                .store
                .put_opts(&path, PutPayload::from(bytes), PutMode::Create.into())
                .await;
            match created {
                Ok(_) => {}
                // Another run took this generation first: look again at who holds it.
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                // The create may have landed with its answer lost (a connection reset
                // after the request): look again at who holds the lease, ours included.
                Err(error)
                    if store_error_is_transient(&error) && unanswered < UNANSWERED_CREATES =>
                {
                    unanswered += 1;
                    tokio::time::sleep(Duration::from_millis(100) * unanswered).await;
                    continue;
                }
                Err(error) => return Err(error).context(|| format!("writing {path}")),
            }
            self.forget_lease_before(pipeline, generation).await;
            let lease = Lease::renewing(self.clone(), path, holder);
            return Ok(Taking::Taken(lease, expired));
        }
    }

    /// The newest generation of `pipeline`'s lease and its holder, if any.
    async fn newest_lease(&self, pipeline: &str) -> Result<Option<(u64, LeaseHolder)>> {
        let folder = Path::from(format!("{LEASES}/{pipeline}"));
        let names = self.list(&folder).await?;
        let newest = names.iter().filter_map(|name| {
            let file = name.filename()?.strip_suffix(".json")?;
            Some((file.parse::<u64>().ok()?, name))
        });
        let Some((generation, name)) = newest.max_by_key(|(generation, _)| *generation) else {
            return Ok(None);
        };
        // Deleted meanwhile by the run that took the next generation: look again.
        match self.get::<LeaseHolder>(name).await? {
            Some(holder) => Ok(Some((generation, holder))),
            None => Box::pin(self.newest_lease(pipeline)).await,
        }
    }

    /// Deletes the generation before `generation`, the expired lease taken over: only
    /// the newest counts. Best effort.
    async fn forget_lease_before(&self, pipeline: &str, generation: u64) {
        if generation > 1 {
            let path = lease_path(pipeline, generation - 1);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => tracing::debug!("could not delete {path}: {error}"),
            }
        }
    }
}

impl Lease {
    /// Starts renewing `holder`'s lease at `path` every heartbeat.
    fn renewing(history: History, path: Path, mut holder: LeaseHolder) -> Lease {
        let stop = CancellationToken::new();
        let writing = Arc::new(tokio::sync::Mutex::new(()));
        let (until, write) = (stop.clone(), writing.clone());
        let (store, at) = (history.clone(), path.clone());
        tokio::spawn(async move {
            let mut beats = tokio::time::interval(HEARTBEAT_EVERY);
            beats.tick().await;
            loop {
                tokio::select! {
                    _ = until.cancelled() => return,
                    _ = beats.tick() => {}
                }
                let _writing = write.lock().await;
                if until.is_cancelled() {
                    return;
                }
                holder.renewed_at = Utc::now();
                if let Err(error) = store.put(&at, &holder).await {
                    tracing::warn!("could not renew the lease {at}: {error}");
                }
            }
        });
        Lease {
            history,
            path,
            renewing: stop.drop_guard(),
            writing,
        }
    }

    /// Gives the lease up (deletes it), so the next run takes it at once and a run that
    /// ended leaves nothing of it behind. Asked a few times: a lease left behind holds
    /// until it expires.
    pub async fn release(self) -> Result<()> {
        drop(self.renewing);
        let _writing = self.writing.lock().await;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.history.store.delete(&self.path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(_) if wait < Duration::from_secs(2) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(error) => return Err(error).context(|| format!("deleting {}", self.path)),
            }
        }
    }
}

/// A pipeline's name is letters, digits, `_` and `-`: a folder's name as it is.
fn lease_path(pipeline: &str, generation: u64) -> Path {
    Path::from(format!("{LEASES}/{pipeline}/{generation:020}.json"))
}

/// Whether process `pid` of this machine is running, and is the one that started at
/// `start` when that is known.
pub(super) fn process_alive(pid: u32, start: Option<u64>) -> bool {
    if let Some((start, now)) = start.zip(started(pid)) {
        return start == now;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 sends nothing; it asks whether the process exists.
        let answer = unsafe { libc::kill(pid, 0) };
        answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// When process `pid` started, in clock ticks since boot, where Linux's `/proc` says.
pub(super) fn started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name, which may hold spaces and parentheses: the state is the
    // third field, the start time the twenty-second.
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(19)?.parse().ok()
}

impl Error {
    /// The error of a run refused because `holder` holds its pipeline's lease.
    pub fn lease_held(pipeline: &str, holder: &LeaseHolder) -> Error {
        Error::Busy {
            message: format!(
                "{pipeline} is being run by {}, which holds its lease; nothing ran",
                holder.describe()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        History::new(Arc::new(object_store::memory::InMemory::new()))
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    async fn holder_of(history: &History) -> LeaseHolder {
        history.newest_lease("p").await.unwrap().unwrap().1
    }

    #[tokio::test]
    async fn one_of_two_runs_takes_the_lease_and_the_other_is_told_who_holds_it() {
        let history = history();
        let now = at("2024-01-01T00:00:00Z");
        let (first, second) = tokio::join!(
            history.take_lease("p", "run-a", now),
            history.take_lease("p", "run-b", now)
        );
        let (lease, held) = match (first.unwrap(), second.unwrap()) {
            (Taking::Taken(lease, None), Taking::Held(by)) => (lease, by),
            (Taking::Held(by), Taking::Taken(lease, None)) => (lease, by),
            _ => panic!("exactly one takes it"),
        };
        assert_eq!(holder_of(&history).await, held);
        // A request asked again finds its own lease: the run holds it.
        let again = history.take_lease("p", &held.run_id, now).await.unwrap();
        assert!(matches!(again, Taking::Taken(_, None)));

        lease.release().await.unwrap();
        assert!(history.newest_lease("p").await.unwrap().is_none());
        let next = history.take_lease("p", "run-c", now).await.unwrap();
        assert!(
            matches!(next, Taking::Taken(_, None)),
            "released: taken at once"
        );
    }

    #[tokio::test]
    async fn a_lease_not_renewed_for_a_minute_or_whose_process_is_gone_is_taken_over() {
        let history = history();
        let now = at("2024-01-01T00:00:00Z");
        let Taking::Taken(_kept, _) = history.take_lease("p", "run-a", now).await.unwrap() else {
            panic!("free");
        };
        let mut holder = holder_of(&history).await;
        assert!(holder.holds(now + chrono::Duration::seconds(60), "elsewhere"));
        assert!(!holder.holds(now + chrono::Duration::seconds(61), "elsewhere"));
        // On this machine, a process that has ended holds nothing, nor does another one
        // given its pid.
        assert!(
            holder.holds(now, &super::super::host()),
            "this process holds it"
        );
        holder.process_start = holder.process_start.map(|start| start + 1);
        assert!(!holder.holds(now, &super::super::host()));

        let later = now + chrono::Duration::seconds(61);
        match history.take_lease("p", "run-b", later).await.unwrap() {
            Taking::Taken(_, Some(from)) => assert_eq!(from.run_id, "run-a"),
            _ => panic!("an expired lease is taken over, and its holder named"),
        }
        assert_eq!(holder_of(&history).await.run_id, "run-b");
        let names = history.list(&Path::from(LEASES)).await.unwrap();
        assert_eq!(
            names,
            [lease_path("p", 2)],
            "the expired generation is gone"
        );
    }

    /// Storage that writes every create and then loses its answer, as a reset connection
    /// does after the request took effect.
    #[derive(Debug, Default)]
    struct LosesCreates(object_store::memory::InMemory);

    impl std::fmt::Display for LosesCreates {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "LosesCreates")
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for LosesCreates {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            options: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            let create = matches!(options.mode, PutMode::Create);
            let put = self.0.put_opts(location, payload, options).await?;
            match create {
                true => Err(object_store::Error::Generic {
                    store: "S3",
                    source: "connection reset after the request was sent".into(),
                }),
                false => Ok(put),
            }
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            options: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, options).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_lease_created_whose_answer_was_lost_is_found_held_by_its_run() {
        let history = History::new(Arc::new(LosesCreates::default()));
        let now = at("2024-01-01T00:00:00Z");
        let taken = history.take_lease("p", "run-a", now).await.unwrap();
        assert!(matches!(taken, Taking::Taken(_, None)));
        assert_eq!(holder_of(&history).await.run_id, "run-a");
    }
}
