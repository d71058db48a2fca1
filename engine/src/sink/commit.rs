//! The committer: the one place that commits to the table.
//!
//! [`Sink::publish_together`] commits one or several checked slices in one commit, each
//! with its `txn` and record, leaving out slices another run committed meanwhile; every
//! commit, a rebuild's swap included, goes through `Sink::commit_settled`, which settles a
//! failed commit by whether a version since carries its record, before any staged file
//! is deleted.

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::protocol::DeltaOperation;
use deltalake::DeltaTable;

use super::strategy::{Commits, Publishing};
use super::table::table_builder;
use super::view::TableView;
use super::{Committer, Published, Sink, SliceCommit};
use crate::error::{Error, Result};
use crate::ledger::{
    app_id, CommitRecord, GroupRecord, OtherWriters, SliceRecord, COMMIT_INFO_KEY,
};

impl Sink {
    /// The commit of this sink's strategy; an internal error for a strategy that
    /// publishes only by its swap.
    pub(super) fn commits(&self) -> Result<&dyn Commits> {
        match self.strategy.publishing() {
            Publishing::Commits(commits) => Ok(commits),
            Publishing::Swap => Err(Error::Internal(format!(
                "{}: this strategy publishes its slices only by its swap",
                self.url
            ))),
        }
    }

    /// Publishes staged slices together, in one atomic commit that carries each slice's
    /// `txn` and record (for one slice, exactly as [`Sink::publish`]). A slice committed
    /// since the run read the log is left out of the commit. A strategy may publish fewer
    /// at a time (a merge across the table, one). Returns each slice's outcome, in order.
    ///
    /// The staged files are deleted only when the log says no commit references them;
    /// when a failed commit's outcome cannot be known, they are kept (invisible, for
    /// clean-up) and the error says so.
    pub async fn publish_together(&self, group: &[SliceCommit<'_>]) -> Result<Vec<Published>> {
        self.publish_holding(self.view.lock().await, group).await
    }

    /// [`Sink::publish_together`] for a caller that holds the view already; the view is
    /// let go before the staged files are settled.
    pub(super) async fn publish_holding(
        &self,
        mut view: tokio::sync::MutexGuard<'_, TableView>,
        group: &[SliceCommit<'_>],
    ) -> Result<Vec<Published>> {
        let published = self.publish_locked(&mut view, group).await;
        drop(view);
        let staged_apart = self.strategy.stages_apart();
        let (kept, result): (Vec<bool>, _) = match published {
            Ok(published) => (
                published
                    .iter()
                    .map(|p| p.by == Committer::ThisAttempt)
                    .collect(),
                Ok(published),
            ),
            Err(Unsettled::NotCommitted(error)) => (vec![false; group.len()], Err(error)),
            Err(Unsettled::Unknown(error)) => (vec![true; group.len()], Err(error)),
        };
        for (member, kept) in group.iter().zip(kept) {
            // Files staged apart are only the commit's source, never part of the table.
            if !kept || staged_apart {
                self.discard(member.staged).await;
            }
            if staged_apart {
                if let Ok(folder) = member.staged.base.to_file_path() {
                    // Object stores have no folders, but a local disk keeps the emptied one.
                    let _ = std::fs::remove_dir(folder);
                }
            }
        }
        result
    }

    async fn publish_locked(
        &self,
        view: &mut TableView,
        group: &[SliceCommit<'_>],
    ) -> std::result::Result<Vec<Published>, Unsettled> {
        let keys: Vec<&str> = group.iter().map(|m| m.slice.key.as_str()).collect();
        let context = format!("slice {}: committing to {}", keys.join(", "), self.url);
        let commits = self.commits().map_err(Unsettled::NotCommitted)?;
        if group.len() > commits.most_per_commit() {
            return Err(Unsettled::NotCommitted(Error::Internal(format!(
                "{context}: {} slices in one commit, more than this strategy commits at once",
                group.len()
            ))));
        }
        let mut settled: Vec<Option<Published>> = vec![None; group.len()];
        // A second pass only when the first lost the race to create the table, or to
        // settle slices another run committed meanwhile.
        let mut pass = 0;
        loop {
            for (member, settled) in group.iter().zip(settled.iter_mut()) {
                if settled.is_none() {
                    *settled = committed_since(view, member.record);
                }
            }
            let pending: Vec<&SliceCommit> = group
                .iter()
                .zip(&settled)
                .filter(|(_, settled)| settled.is_none())
                .map(|(member, _)| member)
                .collect();
            if pending.is_empty() {
                return Ok(settled.into_iter().flatten().collect());
            }
            let had_table = view.table.is_some();
            let records: Vec<SliceRecord> = pending.iter().map(|m| m.record.clone()).collect();
            let commit = Commit {
                context: context.clone(),
                transactions: records.iter().map(transaction_of).collect(),
                record: match records.as_slice() {
                    [one] => CommitRecord::Slice(one.clone()),
                    _ => CommitRecord::Group(GroupRecord { slices: records }),
                },
                on_version_read: false,
            };
            let mut also_written = Vec::new();
            let committed = self
                .commit_settled(view, commit, async |table, properties| {
                    let written = &mut also_written;
                    commits
                        .commit(self, table, &pending, properties, written)
                        .await
                })
                .await;
            if let Err(Unsettled::NotCommitted(_)) = &committed {
                for written in &also_written {
                    self.discard(written).await;
                }
            }
            match committed {
                Ok(version) => {
                    let published = Published {
                        version,
                        by: Committer::ThisAttempt,
                    };
                    for settled in settled.iter_mut().filter(|s| s.is_none()) {
                        *settled = Some(published.clone());
                    }
                    return Ok(settled.into_iter().flatten().collect());
                }
                Err(Unsettled::NotCommitted(error)) => {
                    // Another run may have committed some of these slices meanwhile (its
                    // commit conflicts with this one), or created the table first: the
                    // next pass leaves out what it committed and commits the rest on top.
                    // Each pass that does not commit leaves out at least one slice.
                    let taken_some = pending
                        .iter()
                        .any(|member| committed_since(view, member.record).is_some());
                    let lost_creation_race = pass == 0 && !had_table && view.table.is_some();
                    if !taken_some && !lost_creation_race {
                        return Err(Unsettled::NotCommitted(error));
                    }
                }
                Err(unknown) => return Err(unknown),
            }
            pass += 1;
        }
    }

    /// The one place that commits to the table. `make` commits on a copy of the view's
    /// table (creating the table if there is none) with properties carrying `commit`'s
    /// `txn`s and record, and returns the version.
    ///
    /// A failed commit may still have landed: a PUT can take effect while the client sees
    /// an error, and object_store's retry then finds the version taken (by this very
    /// commit). So after a failure the log is read again, and the commit landed exactly
    /// when a version since carries its record. When the log cannot be read either, the
    /// outcome is unknown.
    pub(super) async fn commit_settled(
        &self,
        view: &mut TableView,
        commit: Commit,
        make: impl AsyncFnOnce(&mut Option<DeltaTable>, CommitProperties) -> deltalake::DeltaResult<u64>,
    ) -> std::result::Result<u64, Unsettled> {
        // Expired-log cleanup lists the whole log after every commit, and would delete the
        // history that slice records are read from in the middle of a backfill: it is
        // table maintenance, left to the table's owner.
        let mut properties = CommitProperties::default()
            .with_cleanup_expired_logs(Some(false))
            .with_application_transactions(commit.transactions)
            .with_metadata([(
                COMMIT_INFO_KEY.to_string(),
                serde_json::to_value(&commit.record).expect("a record serializes"),
            )]);
        if commit.on_version_read {
            properties = properties.with_max_retries(0);
        }
        // The commit is made on a copy, so the view still knows the version it read when
        // the commit is done or has failed.
        let mut table = view.table.clone();
        let read = view.version();
        let failure = match make(&mut table, properties).await {
            Ok(version) => {
                if version.is_multiple_of(READ_AFRESH_EVERY) {
                    table = self.afresh(table, version).await;
                }
                if let Err(error) = view.step_to(table, Some(version)).await {
                    // The commit landed. The view stays at the version it had, so the next
                    // commit is checked against everything after it.
                    tracing::warn!("{error}");
                }
                return Ok(version);
            }
            Err(failure) => failure,
        };
        let context = commit.context;
        tracing::warn!(
            "{context}: the commit failed; reading the log to see whether it landed: {failure}"
        );
        let stepped_over = async {
            let latest = self.reload_patiently().await?;
            view.step_to(latest, None).await
        };
        let stepped_over = match stepped_over.await {
            Ok(stepped_over) => stepped_over,
            Err(error) => {
                return Err(Unsettled::Unknown(Error::execution(
                    context,
                    format!("the commit failed ({failure}) and the log could not be read to tell whether it landed ({error}); the staged files are kept"),
                )))
            }
        };
        if let Some((version, _)) = stepped_over.iter().find(|(_, r)| *r == commit.record) {
            tracing::warn!("{context}: the commit reported an error but landed as version {version}: {failure}");
            return Ok(*version);
        }
        if commit.on_version_read && view.version() != read {
            // The versions after the one read: all of them when there was no table.
            let first_unread = read.map_or(0, |r| r + 1);
            let since = view.version().map_or(0, |now| now + 1 - first_unread);
            let who = match view.table.as_ref() {
                Some(table) => OtherWriters::of(table, &self.pipeline, since).await,
                None => Ok(None),
            };
            // Naming them is best effort: the refusal stands either way.
            let who = match who {
                Ok(Some(others)) => format!(
                    ": {} {} since, by {}",
                    others.commits,
                    if others.commits == 1 {
                        "commit"
                    } else {
                        "commits"
                    },
                    others.writers.join(", ")
                ),
                Ok(None) | Err(_) => String::new(),
            };
            let read = read.map_or("none".to_string(), |v| v.to_string());
            return Err(Unsettled::NotCommitted(Error::execution(
                context,
                format!("another writer committed to the table after it was read (version {read}){who}, so this commit was refused and the table is unchanged; pause other writers and run again"),
            )));
        }
        Err(Unsettled::NotCommitted(Error::execution(context, failure)))
    }

    /// The table read afresh from storage, if it can be read at `version` or later, or else
    /// `committed`, the table as a commit at `version` left it.
    ///
    /// delta-rs keeps the list of a table's files as one batch per commit since it was
    /// loaded and replays every batch on the next commit, so each commit of a long run
    /// would cost more than the last. A table read afresh starts from the latest
    /// checkpoint (delta-rs writes one every 100 versions by default): a compact list.
    pub(super) async fn afresh(
        &self,
        committed: Option<DeltaTable>,
        version: u64,
    ) -> Option<DeltaTable> {
        match self.reload().await {
            Ok(Some(fresh)) if fresh.version() >= Some(version) => Some(fresh),
            Ok(_) => committed,
            Err(error) => {
                tracing::debug!(
                    "reading {} afresh after version {version}: {error}",
                    self.url
                );
                committed
            }
        }
    }

    /// Reads the table again, trying a few times: it decides whether staged files may be
    /// deleted, so a passing storage fault should not leave that unknown.
    pub(super) async fn reload_patiently(&self) -> Result<Option<DeltaTable>> {
        let reading = format!("reading the log of {}", self.url);
        crate::retry::patiently(&reading, RELOAD_TRIES, Error::is_transient, || {
            self.reload()
        })
        .await
    }

    /// Commits `actions` on top of `table`, or creates the table with them if it does
    /// not exist yet, so that the first slice and the table appear in one commit.
    pub(super) async fn commit(
        &self,
        table: &mut Option<DeltaTable>,
        actions: Vec<Action>,
        operation: DeltaOperation,
        properties: CommitProperties,
    ) -> deltalake::DeltaResult<u64> {
        let Some(existing) = table.as_mut() else {
            return self.create(table, actions, properties).await;
        };
        let committed = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(existing.snapshot()?), existing.log_store(), operation)
            .await?;
        // The commit returns the new snapshot: no need to read the log again.
        existing.state = Some(committed.snapshot());
        Ok(committed.version())
    }

    /// Creates the table with `actions` in its first commit.
    pub(super) async fn create(
        &self,
        table: &mut Option<DeltaTable>,
        actions: Vec<Action>,
        properties: CommitProperties,
    ) -> deltalake::DeltaResult<u64> {
        let schema: StructType = self.schema.as_ref().try_into_kernel()?;
        let created = table_builder(&self.url, &self.storage_options, &self.reach)?
            .build()?
            .create()
            .with_columns(schema.fields().cloned())
            .with_partition_columns(self.partition_by.clone())
            .with_actions(actions)
            // If another writer creates the table first, delta-rs would retry this create
            // as the next version, metadata and all, on top of theirs: fail instead.
            .with_commit_properties(properties.with_max_retries(0))
            .await?;
        let version = created.version().unwrap_or(0);
        *table = Some(created);
        Ok(version)
    }
}

/// How often a failed commit reads the log again before giving up on knowing its outcome.
const RELOAD_TRIES: u32 = 4;

/// The sink reads its table afresh after each commit whose version is a multiple of this
/// (see [`Sink::afresh`]).
const READ_AFRESH_EVERY: u64 = 100;

/// One commit as [`Sink::commit_settled`] makes and settles it.
pub(super) struct Commit {
    /// Names the commit in errors.
    pub(super) context: String,
    pub(super) record: CommitRecord,
    pub(super) transactions: Vec<Transaction>,
    /// Whether the commit must land on the very version it was built on. A rebuild's swap
    /// must: Delta's conflict checker would let a full overwrite through on top of a
    /// concurrent append, silently dropping it. Otherwise the checker may rebase the
    /// commit onto versions committed meanwhile, when they touch nothing it replaces.
    pub(super) on_version_read: bool,
}

/// The `txn` that marks a slice's commit, so Delta readers and writers can tell it is in.
pub(super) fn transaction_of(record: &SliceRecord) -> Transaction {
    Transaction::new(app_id(&record.pipeline, &record.slice), record.txn_version)
}

/// Why a slice was not published.
pub(super) enum Unsettled {
    /// No commit references its staged files: they can go.
    NotCommitted(Error),
    /// Whether its commit landed is unknown: its files must stay.
    Unknown(Error),
}

/// Who committed the attempt's slice since the run read the log, if anyone did.
fn committed_since(view: &TableView, record: &SliceRecord) -> Option<Published> {
    let sighting = view.sighting(&record.slice)?;
    let by = if sighting.is_attempt(record) {
        Committer::ThisAttempt
    } else if sighting.run_id == record.run_id {
        Committer::EarlierAttempt
    } else {
        Committer::OtherRun {
            run_id: sighting.run_id.clone(),
        }
    };
    Some(Published {
        version: sighting.version,
        by,
    })
}
