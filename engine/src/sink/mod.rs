//! The sink: the only code that writes to the destination or commits to its Delta log.
//!
//! Publishing a slice is two steps. [`Sink::stage`] streams the slice's output into
//! Parquet files that no reader sees (uncommitted files in the table, or under
//! `_backfill/staging/` for merge) and counts rows and nulls on the way. Then, only if
//! the slice's assertions pass, [`Sink::publish`] makes them visible in one atomic commit
//! that also carries the slice's `txn` and [`SliceRecord`] (and, when other slices were
//! waiting at the same time, theirs: see [`group`]); or [`Sink::discard`] deletes them.
//! Every commit, of one slice, of several, or a rebuild's swap, goes through one
//! committer (`Sink::commit_settled`), which settles a failed commit against the log
//! before anything is deleted; a slice another run committed meanwhile is not committed
//! again (see [`view`]). One file per strategy, each a `Writes`: [`overwrite`],
//! [`append`], [`merge`]; [`rebuild`] stages every slice the same way but publishes them
//! all at once with [`Sink::swap`].
//! [`clean`] deletes what attempts that never committed left behind. This module never
//! deletes a file that a committed version references.

mod append;
pub mod clean;
mod group;
mod merge;
mod missing;
mod overwrite;
pub(crate) mod promote;
pub mod rebuild;
mod staged;
#[cfg(test)]
mod tests;
mod view;
pub(crate) mod writing;

pub use missing::TableFiles;
pub(crate) use staged::data_files;
pub use writing::{Staging, Written};

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::physical_plan::SendableRecordBatchStream;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, LogicalFileView, StructType, Transaction};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, DeltaTableError};
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use tokio::sync::Mutex;
use url::Url;

use crate::error::{Error, Result, ResultExt};
use crate::ledger::{
    app_id, CommitRecord, GroupRecord, OtherWriters, SliceRecord, COMMIT_INFO_KEY,
};
use crate::pipeline::{Destination, Strategy};
use crate::retry::{RequestRetry, RetryingStore};
use crate::slice::Slice;
use view::TableView;

/// The keys naming the pipeline and slice that wrote a file, in its `add.tags` and in its
/// Parquet footer. Tags live in the table state (and its checkpoints), so they outlast the
/// log's commit history; the footer names the writer of a file no commit references.
pub const PIPELINE_TAG: &str = "backfill.pipeline";
pub const SLICE_TAG: &str = "backfill.slice";

/// What a write strategy decides in the sink: where its slices are staged, what they may
/// hold, and what a commit of staged slices does. One file per strategy implements it;
/// [`writes`] picks the one a pipeline names, and nothing else in the sink asks which
/// strategy it is.
#[async_trait::async_trait]
trait Writes: Send + Sync {
    /// Whether a slice is staged apart, under `_backfill/staging/`, as the source of its
    /// commit rather than the files it adds (merge); such files go once it is settled.
    fn stages_apart(&self) -> bool {
        false
    }

    /// Whether a slice's rows must lie in its own partitions, because its commit replaces
    /// or merges exactly those.
    fn keeps_to_its_partitions(&self) -> bool {
        true
    }

    /// The most slices one commit may publish: merge runs one MERGE per slice, and a
    /// rebuild publishes only through its swap.
    fn most_per_commit(&self) -> usize {
        usize::MAX
    }

    /// Commits `pending` on top of `table` (creating the table if there is none) with
    /// `properties`, which carry each slice's `txn` and the record; returns the version.
    async fn commit(
        &self,
        sink: &Sink,
        table: &mut Option<DeltaTable>,
        pending: &[&SliceCommit<'_>],
        properties: CommitProperties,
    ) -> deltalake::DeltaResult<u64>;
}

/// The actions of a commit publishing every slice of `pending`, in order: each one's
/// staged files added, and the files it `replaces` (one list per slice) removed.
fn replacing(pending: &[&SliceCommit<'_>], replaces: Vec<Vec<LogicalFileView>>) -> Vec<Action> {
    let mut all = Vec::new();
    for (member, replaced) in pending.iter().zip(replaces) {
        all.extend(member.staged.adds.iter().cloned().map(Action::Add));
        all.extend(
            replaced
                .iter()
                .map(|file| Action::Remove(file.remove_action(true))),
        );
    }
    all
}

/// The active files of `table` that belong to each slice, one list per slice: a file
/// belongs to the slices whose `wanted` key is the file's `key_of` (a slice without a key
/// has no file). One pass over the file list, whatever the number of slices: a commit of
/// a group would otherwise cost the table's size times the group's.
fn files_of_each<K: std::hash::Hash + Eq>(
    table: Option<&DeltaTable>,
    wanted: Vec<Option<K>>,
    key_of: impl Fn(&LogicalFileView) -> Option<K>,
) -> deltalake::DeltaResult<Vec<Vec<LogicalFileView>>> {
    let mut found = vec![Vec::new(); wanted.len()];
    let Some(table) = table else {
        return Ok(found);
    };
    let mut slices_of: HashMap<K, Vec<usize>> = HashMap::new();
    for (index, key) in wanted.into_iter().enumerate() {
        if let Some(key) = key {
            slices_of.entry(key).or_default().push(index);
        }
    }
    for file in table.snapshot()?.log_data().iter() {
        let Some(indices) = key_of(&file).and_then(|key| slices_of.get(&key)) else {
            continue;
        };
        for &index in indices {
            found[index].push(file.clone());
        }
    }
    Ok(found)
}

/// The [`Writes`] of a strategy.
fn writes(strategy: &Strategy) -> Box<dyn Writes> {
    match strategy {
        Strategy::Overwrite => Box::new(overwrite::Overwrite),
        Strategy::Append => Box::new(append::Append),
        Strategy::Merge { keys } => Box::new(merge::Merge { keys: keys.clone() }),
        Strategy::Rebuild => Box::new(rebuild::Rebuild),
    }
}

/// The destination table of a run.
pub struct Sink {
    pipeline: String,
    url: Url,
    partition_by: Vec<String>,
    writes: Box<dyn Writes>,
    schema: SchemaRef,
    store: Arc<dyn ObjectStore>,
    /// The store at the root of the table's bucket (or disk), for DataFusion to read
    /// staged files through.
    root_store: Arc<dyn ObjectStore>,
    storage_options: HashMap<String, String>,
    /// The store at the root of the table's bucket (or disk) that delta-rs reaches the
    /// table through: the one given, or the one its URL names, asking reads again while
    /// they fail for a passing reason.
    reach: Arc<dyn ObjectStore>,
    /// The table as last seen (`None` until it exists), and the slice commits seen since
    /// the sink opened. Held while committing, so the commits of one run are serialized
    /// while their slices compute in parallel.
    view: Mutex<TableView>,
    /// Checked slices waiting to be committed together (see [`group`]).
    line: std::sync::Mutex<group::Line>,
}

/// A slice that is in the table after [`Sink::publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub version: u64,
    pub by: Committer,
}

/// Who committed a published slice.
#[derive(Debug, Clone, PartialEq)]
pub enum Committer {
    /// This attempt, as asked.
    ThisAttempt,
    /// An earlier attempt of this run whose commit failed ambiguously but landed.
    EarlierAttempt,
    /// Another run, after this one read the log: this one did not commit it again.
    OtherRun { run_id: String },
}

/// One slice's share of a commit: its staged output and the record it carries.
pub struct SliceCommit<'a> {
    pub slice: &'a Slice,
    pub staged: &'a Staged,
    pub record: &'a SliceRecord,
}

/// A slice's output, written but not visible to any reader.
#[derive(Clone)]
pub struct Staged {
    pub adds: Vec<Add>,
    /// The folder the paths of `adds` are relative to.
    pub base: Url,
    /// Partition columns written as folders (and so absent from the files).
    pub partition_columns: Vec<String>,
    pub rows: u64,
    pub bytes: u64,
    /// Null count of each output column, in schema order.
    pub null_counts: Vec<u64>,
}

impl Sink {
    /// Opens the destination, checking that an existing table fits the pipeline's output.
    /// `store`, if given, is used to reach the destination instead of the one its URL
    /// names (tests inject faults this way); either way its reads are retried by `retry`.
    pub async fn open(
        pipeline: &str,
        destination: &Destination,
        schema: SchemaRef,
        store: Option<Arc<dyn ObjectStore>>,
        retry: RequestRetry,
    ) -> Result<Self> {
        let url = destination.url.clone();
        let context = || format!("destination {url}");
        if let Ok(path) = url.to_file_path() {
            // Without the trailing slash of a folder URL, so that a file is seen as one.
            let path: std::path::PathBuf = path.iter().collect();
            if path.is_file() {
                return Err(Error::config(
                    context(),
                    "is a file, not a folder for a table",
                ));
            }
            // delta-rs refuses a local table location that does not exist yet.
            std::fs::create_dir_all(&path).context(context)?;
        }
        let storage_options: HashMap<String, String> = destination
            .storage_options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let reach = reach(&url, &storage_options, store, retry).context(context)?;
        let (table, exists) = load_table(&url, &storage_options, &reach).await?;
        if !exists {
            refuse_foreign_files(&table, &url).await?;
        }
        // A rebuild may change the table's columns: its swap replaces the schema too.
        if exists && destination.strategy != Strategy::Rebuild {
            check_compatible(&table, &schema, &destination.partition_by)
                .map_err(|m| Error::config(context(), m))?;
        }
        Ok(Sink {
            pipeline: pipeline.to_string(),
            store: table.object_store(),
            root_store: table.log_store().root_object_store(None),
            storage_options,
            reach,
            url,
            partition_by: destination.partition_by.clone(),
            writes: writes(&destination.strategy),
            schema,
            view: Mutex::new(TableView::new(pipeline, exists.then_some(table))),
            line: Default::default(),
        })
    }

    /// Where the table is.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The object store rooted at the destination table.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Reads the table afresh from storage, for when this sink's view may be behind.
    pub async fn reload(&self) -> Result<Option<DeltaTable>> {
        let (table, exists) = load_table(&self.url, &self.storage_options, &self.reach).await?;
        Ok(exists.then_some(table))
    }

    /// Lets DataFusion sessions of `runtime` read the destination's files (staged output,
    /// for assertions and merges), unless a store for that bucket is registered already.
    pub fn register_store(&self, runtime: &datafusion::execution::runtime_env::RuntimeEnv) {
        let root = crate::source::store_root(&self.url);
        let key = datafusion::execution::object_store::ObjectStoreUrl::parse(root.as_str())
            .expect("a store root is a valid object store URL");
        if runtime.object_store(&key).is_err() {
            runtime.register_object_store(&root, self.root_store.clone());
        }
    }

    /// The table as it is now, or `None` if nothing was ever committed.
    pub async fn table(&self) -> Option<DeltaTable> {
        self.view.lock().await.table.clone()
    }

    /// Where and how `slice`'s output is written: into the table, or into a folder of its
    /// own when the strategy stages apart; kept to the slice's partition when the strategy
    /// replaces or merges it. An error names the slice if its partition values do not fit
    /// the output's columns.
    pub fn staging(&self, slice: &Slice) -> Result<Staging> {
        let (base, partition_columns) = match self.writes.stages_apart() {
            true => (
                self.url
                    .join(&format!("_backfill/staging/{}/", uuid::Uuid::new_v4()))
                    .expect("a valid path"),
                vec![],
            ),
            false => (self.url.clone(), self.partition_by.clone()),
        };
        let owned = slice
            .partition
            .iter()
            .all(|(column, _)| self.partition_by.contains(column));
        let partition = match self.writes.keeps_to_its_partitions() && owned {
            true => slice.partition.clone(),
            false => vec![],
        };
        let staging = Staging {
            pipeline: self.pipeline.clone(),
            slice: slice.key.clone(),
            base,
            partition_columns,
            partition,
        };
        writing::PartitionGuard::new(&self.schema, &staging)?;
        Ok(staging)
    }

    /// Streams a slice's output into files no reader sees. Rows outside the slice's
    /// partitions are refused where the strategy replaces or merges those partitions.
    /// On error, whatever was written is deleted.
    pub async fn stage(&self, slice: &Slice, stream: SendableRecordBatchStream) -> Result<Staged> {
        let staging = self.staging(slice)?;
        let written = writing::write(
            &staging,
            &self.schema,
            &self.storage_options,
            self.root_store.as_ref(),
            stream,
        )
        .await?;
        Ok(self.staged(&staging, vec![written]))
    }

    /// The slice staged by the writers that wrote `parts`, following `staging`.
    pub fn staged(&self, staging: &Staging, parts: Vec<Written>) -> Staged {
        staging.staged(parts, self.schema.fields().len())
    }

    /// Deletes staged files; deleting them twice is harmless. Best effort: they are
    /// invisible to readers either way.
    pub async fn discard(&self, staged: &Staged) {
        writing::delete(self.root_store.as_ref(), &staged.base, &staged.adds).await;
    }

    /// Publishes staged slices together, in one atomic commit that carries each slice's
    /// `txn` and record (for one slice, exactly as [`Sink::publish`]). A slice committed
    /// since the run read the log is left out of the commit. Merge publishes one slice at
    /// a time. Returns each slice's outcome, in order.
    ///
    /// The staged files are deleted only when the log says no commit references them;
    /// when a failed commit's outcome cannot be known, they are kept (invisible, for
    /// clean-up) and the error says so.
    pub async fn publish_together(&self, group: &[SliceCommit<'_>]) -> Result<Vec<Published>> {
        self.publish_holding(self.view.lock().await, group).await
    }

    /// [`Sink::publish_together`] for a caller that holds the view already; the view is
    /// let go before the staged files are settled.
    async fn publish_holding(
        &self,
        mut view: tokio::sync::MutexGuard<'_, TableView>,
        group: &[SliceCommit<'_>],
    ) -> Result<Vec<Published>> {
        let published = self.publish_locked(&mut view, group).await;
        drop(view);
        let staged_apart = self.writes.stages_apart();
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
        if group.len() > self.writes.most_per_commit() {
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
            let committed = self
                .commit_settled(view, commit, async |table, properties| {
                    self.writes.commit(self, table, &pending, properties).await
                })
                .await;
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
    async fn commit_settled(
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
    async fn afresh(&self, committed: Option<DeltaTable>, version: u64) -> Option<DeltaTable> {
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
    async fn reload_patiently(&self) -> Result<Option<DeltaTable>> {
        let reading = format!("reading the log of {}", self.url);
        crate::retry::patiently(&reading, RELOAD_TRIES, Error::is_transient, || {
            self.reload()
        })
        .await
    }

    /// Commits `actions` on top of `table`, or creates the table with them if it does
    /// not exist yet, so that the first slice and the table appear in one commit.
    async fn commit(
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
    async fn create(
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

    /// Resolves a path written by the delta writer (percent-encoded, relative to `base`)
    /// to a path in the table's object store.
    fn store_path(&self, base: &Url, relative: &str) -> Option<StorePath> {
        let absolute = base.join(relative).ok()?;
        let within = absolute.path().strip_prefix(self.url.path())?;
        StorePath::from_url_path(within).ok()
    }
}

/// How often a failed commit reads the log again before giving up on knowing its outcome.
const RELOAD_TRIES: u32 = 4;

/// The sink reads its table afresh after each commit whose version is a multiple of this
/// (see [`Sink::afresh`]).
const READ_AFRESH_EVERY: u64 = 100;

/// One commit as [`Sink::commit_settled`] makes and settles it.
struct Commit {
    /// Names the commit in errors.
    context: String,
    record: CommitRecord,
    transactions: Vec<Transaction>,
    /// Whether the commit must land on the very version it was built on. A rebuild's swap
    /// must: Delta's conflict checker would let a full overwrite through on top of a
    /// concurrent append, silently dropping it. Otherwise the checker may rebase the
    /// commit onto versions committed meanwhile, when they touch nothing it replaces.
    on_version_read: bool,
}

/// The `txn` that marks a slice's commit, so Delta readers and writers can tell it is in.
fn transaction_of(record: &SliceRecord) -> Transaction {
    Transaction::new(app_id(&record.pipeline, &record.slice), record.txn_version)
}

/// Why a slice was not published.
enum Unsettled {
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

/// The table at `destination` at its latest version, if there is one.
pub(crate) async fn existing_table(destination: &Destination) -> Result<Option<DeltaTable>> {
    let options = destination
        .storage_options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let url = &destination.url;
    let reach = reach(url, &options, None, RequestRetry::default())
        .context(|| format!("destination {url}"))?;
    let (table, exists) = load_table(url, &options, &reach).await?;
    Ok(exists.then_some(table))
}

/// The table at `url`, loaded if it exists, and whether it does. A table that does not
/// exist yet still gives the object store the sink writes through.
async fn load_table(
    url: &Url,
    storage_options: &HashMap<String, String>,
    reach: &Arc<dyn ObjectStore>,
) -> Result<(DeltaTable, bool)> {
    let context = || format!("destination {url}");
    let mut table = table_builder(url, storage_options, reach)
        .context(context)?
        .build()
        .context(context)?;
    let exists = table
        .log_store()
        .is_delta_table_location()
        .await
        .context(context)?;
    if exists {
        table.load().await.context(context)?;
    }
    Ok((table, exists))
}

/// Refuses a location that holds files but no Delta table: making a table around them
/// would let a later VACUUM delete them. A folder with `_backfill/` or `_delta_log/` was
/// started by a backfill (history, or files of attempts that never committed) and is fine.
async fn refuse_foreign_files(table: &DeltaTable, url: &Url) -> Result<()> {
    let listed = table
        .object_store()
        .list_with_delimiter(None)
        .await
        .context(|| format!("destination {url}: listing it"))?;
    let folders: Vec<String> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    if folders
        .iter()
        .any(|f| *f == "_backfill" || *f == "_delta_log")
    {
        return Ok(());
    }
    let example = listed
        .objects
        .first()
        .map(|o| o.location.to_string())
        .or_else(|| folders.first().map(|f| format!("{f}/")));
    match example {
        None => Ok(()),
        Some(example) => Err(Error::config(
            format!("destination {url}"),
            format!("holds files (such as `{example}`) but no Delta table; backfill writes only to an empty folder or a Delta table, since a table made around other files could later delete them"),
        )),
    }
}

/// The root store to reach the table at `url` through: `given`, or the one delta-rs
/// would make for the URL and its options, with its reads retried by `retry`.
fn reach(
    url: &Url,
    storage_options: &HashMap<String, String>,
    given: Option<Arc<dyn ObjectStore>>,
    retry: RequestRetry,
) -> deltalake::DeltaResult<Arc<dyn ObjectStore>> {
    let root = match given {
        Some(store) => store,
        None => {
            let scheme = Url::parse(&format!("{}://", url.scheme()))
                .map_err(|_| DeltaTableError::InvalidTableLocation(url.to_string()))?;
            let factories = deltalake::logstore::object_store_factories();
            let factory = factories
                .get(&scheme)
                .ok_or_else(|| DeltaTableError::InvalidTableLocation(url.to_string()))?;
            let config = deltalake::logstore::StorageConfig::parse_options(storage_options)?;
            factory.value().parse_url_opts(url, &config)?.0
        }
    };
    Ok(RetryingStore::wrap(root, retry))
}

/// A builder for the table at `url`, reached through the root store `reach`.
fn table_builder(
    url: &Url,
    storage_options: &HashMap<String, String>,
    reach: &Arc<dyn ObjectStore>,
) -> deltalake::DeltaResult<deltalake::DeltaTableBuilder> {
    Ok(deltalake::DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(storage_options.clone())
        .with_storage_backend(reach.clone(), url.clone()))
}

/// Checks that an existing table has the columns, types and partitioning the pipeline writes.
fn check_compatible(
    table: &DeltaTable,
    schema: &SchemaRef,
    partition_by: &[String],
) -> std::result::Result<(), String> {
    let snapshot = table.snapshot().map_err(|e| e.to_string())?;
    let metadata = snapshot.metadata();
    if metadata.partition_columns() != partition_by {
        return Err(format!(
            "the table is partitioned by {:?} but the pipeline's destination.partition_by is {:?}",
            metadata.partition_columns(),
            partition_by
        ));
    }
    let expected =
        TryIntoKernel::<StructType>::try_into_kernel(schema.as_ref()).map_err(|e| e.to_string())?;
    let actual = snapshot.schema();
    let describe = |s: &StructType| {
        s.fields()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
    };
    let (expected, actual) = (describe(&expected), describe(actual.as_ref()));
    if expected != actual {
        return Err(format!(
            "the table's columns ({}) differ from the transform's output ({}); write to a new destination or rebuild",
            actual.join(", "),
            expected.join(", ")
        ));
    }
    Ok(())
}

/// A SQL predicate selecting the slice's partitions, for the conflict checker and merge.
fn partition_predicate(slice: &Slice, qualifier: &str) -> String {
    slice
        .partition
        .iter()
        .map(|(column, value)| format!("{qualifier}\"{column}\" = '{}'", value.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The pipeline and slice that wrote an active file, from its tags.
fn written_by(file: &LogicalFileView) -> (Option<String>, Option<String>) {
    // The view exposes tags only through the (deprecated) conversion to an `Add`.
    #[allow(deprecated)]
    let tags = file.add_action().tags.unwrap_or_default();
    let tag = |key: &str| tags.get(key).cloned().flatten();
    (tag(PIPELINE_TAG), tag(SLICE_TAG))
}

/// The active files of `table` that lie in each slice's partitions, one list per slice.
///
/// This filters the snapshot's file list in memory: delta-rs's partition filters run a
/// kernel scan over the whole log on every call, which made each commit slower than the
/// last. Values compare by their typed meaning, so `7` and `07` match for an integer. The
/// slices of a pipeline all have the same partition columns.
fn files_in_partitions(
    sink: &Sink,
    table: Option<&DeltaTable>,
    slices: &[&Slice],
) -> deltalake::DeltaResult<Vec<Vec<LogicalFileView>>> {
    let Some(first) = slices.first() else {
        return Ok(vec![]);
    };
    let columns: Vec<&str> = first.partition.iter().map(|(c, _)| c.as_str()).collect();
    let wanted = slices
        .iter()
        .map(|slice| {
            let values = slice.partition.iter();
            values.map(|(c, v)| sink.typed(c, Some(v))).collect()
        })
        .collect();
    files_of_each(table, wanted, |file| {
        let stored = file.partition_values_map();
        let values = columns.iter();
        values
            .map(|c| sink.typed(c, stored.get(*c).and_then(|v| v.as_deref())))
            .collect::<Option<Vec<ScalarValue>>>()
    })
}
