//! An object store for tests: the local disk, watched and disturbed on purpose. It
//! records every read, can fail or hang reads, slow them down, and make commits of a
//! Delta log ambiguous: written, then reported as failed, as a client of object storage
//! sees a PUT that landed when the answer is lost.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backfill_engine::{pipeline, Backfill, OpenOptions, RequestRetry};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// A local file system that records the path and size of every read, fails the next
/// `failing_reads` reads with a transient-looking error, drops the connection of the next
/// `dropped_reads` (as the network does, which the engine asks again at once), denies the
/// next `denied_reads`,
/// never answers the next `hanging_reads` reads, makes every `ambiguous_commits`-th
/// commit ambiguous, and can make commits slow.
#[derive(Debug, Default)]
pub struct TestStore {
    inner: LocalFileSystem,
    pub reads: Mutex<Vec<(String, u64)>>,
    pub failing_reads: AtomicUsize,
    /// Reads still to fail as a connection dropped mid-answer.
    pub dropped_reads: AtomicUsize,
    /// Reads of paths holding any of these fail that way every time.
    pub dropped_paths: Mutex<Vec<String>>,
    /// Reads still to be answered "access denied", which no retry changes.
    pub denied_reads: AtomicUsize,
    pub hanging_reads: AtomicUsize,
    /// Reads of paths holding any of these never answer.
    pub hanging_paths: Mutex<Vec<String>>,
    /// How long each read takes, so that concurrent reads overlap measurably.
    pub read_delay: Mutex<Duration>,
    in_flight: AtomicUsize,
    pub most_in_flight: AtomicUsize,
    /// Every n-th commit of a Delta log (0: none) is written and then reported as
    /// failed, alternating between the two ways a client sees that (see [`Ambiguity`]).
    pub ambiguous_commits: AtomicUsize,
    commits: AtomicUsize,
    /// Commits made ambiguous so far.
    pub ambiguous: AtomicUsize,
    /// How long each commit of a Delta log takes before it is written.
    pub commit_delay: Mutex<Duration>,
    /// When set, each commit waits for a permit of this semaphore before it is written:
    /// a test holds commits until it has seen what it waits for.
    pub commit_hold: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

/// How a commit PUT that took effect is reported as failed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ambiguity {
    /// What object_store reports when its retry of a PUT that landed meets HTTP 412.
    VersionTaken,
    /// The connection dropped before the answer arrived.
    ConnectionReset,
}

impl TestStore {
    /// Counts a read in flight for as long as it takes, and the most ever at once.
    async fn in_flight<T>(&self, read: impl std::future::Future<Output = T>) -> T {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = *self.read_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let result = read.await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Hangs this read of `location` forever if hangs are still due, or if its path is one
    /// that hangs.
    async fn maybe_hang(&self, location: &Path) {
        let due = self
            .hanging_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        let paths = self.hanging_paths.lock().unwrap().clone();
        let hangs = paths.iter().any(|p| location.as_ref().contains(p.as_str()));
        if due.is_ok() || hangs {
            std::future::pending::<()>().await;
        }
    }

    /// The error to report after writing `location`, if it is a commit to make ambiguous.
    fn ambiguity(&self, location: &Path, opts: &PutOptions) -> Option<object_store::Error> {
        let every = self.ambiguous_commits.load(Ordering::SeqCst);
        if every == 0
            || !is_commit(location, opts)
            || !(self.commits.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(every)
        {
            return None;
        }
        let fault = match self.ambiguous.fetch_add(1, Ordering::SeqCst) % 2 {
            0 => Ambiguity::VersionTaken,
            _ => Ambiguity::ConnectionReset,
        };
        Some(match fault {
            Ambiguity::VersionTaken => object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "HTTP 412 Precondition Failed on a retried PUT".into(),
            },
            Ambiguity::ConnectionReset => object_store::Error::Generic {
                store: "TestStore",
                source: "error sending request: connection reset by peer".into(),
            },
        })
    }

    /// Fails this read if failures are still due.
    fn maybe_fail(&self, location: &Path) -> Result<()> {
        let dropped = self
            .dropped_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if dropped.is_ok() {
            return Err(connection_reset());
        }
        if let Some(dropped) = self.dropped_path(location) {
            return Err(dropped);
        }
        let due = self
            .failing_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if due.is_ok() {
            return Err(object_store::Error::Generic {
                store: "TestStore",
                source: format!("injected failure reading {location}").into(),
            });
        }
        let denied = self
            .denied_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match denied {
            Ok(_) => Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "injected: access denied".into(),
            }),
            Err(_) => Ok(()),
        }
    }

    /// The error of a request about `location`, if it is on a path always dropped.
    fn dropped_path(&self, location: &Path) -> Option<object_store::Error> {
        let paths = self.dropped_paths.lock().unwrap();
        let dropped = paths.iter().any(|p| location.as_ref().contains(p.as_str()));
        dropped.then(connection_reset)
    }

    fn record(&self, location: &Path, bytes: u64) {
        self.reads
            .lock()
            .unwrap()
            .push((location.to_string(), bytes));
    }

    /// Reads of files whose path contains `part`: (requests, bytes).
    pub fn reads_of(&self, part: &str) -> (usize, u64) {
        let reads = self.reads.lock().unwrap();
        let matching = reads.iter().filter(|(path, _)| path.contains(part));
        matching.fold((0, 0), |(n, total), (_, bytes)| (n + 1, total + bytes))
    }

    pub fn paths_read(&self) -> Vec<String> {
        self.reads
            .lock()
            .unwrap()
            .iter()
            .map(|(path, _)| path.clone())
            .collect()
    }
}

/// A connection dropped mid-answer, as the network fails a request.
fn connection_reset() -> object_store::Error {
    let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
    object_store::Error::Generic {
        store: "TestStore",
        source: Box::new(HttpError::new(HttpErrorKind::Interrupted, reset)),
    }
}

/// Whether writing `location` with `opts` commits a version of a Delta log.
fn is_commit(location: &Path, opts: &PutOptions) -> bool {
    let in_log = location.parts().any(|part| part.as_ref() == "_delta_log");
    in_log && opts.mode == PutMode::Create
}

impl std::fmt::Display for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for TestStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if is_commit(location, &opts) {
            let delay = *self.commit_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            let hold = self.commit_hold.lock().unwrap().clone();
            if let Some(hold) = hold {
                hold.acquire().await.expect("never closed").forget();
            }
        }
        let ambiguity = self.ambiguity(location, &opts);
        let written = self.inner.put_opts(location, payload, opts).await?;
        match ambiguity {
            Some(error) => Err(error),
            None => Ok(written),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.maybe_fail(location)?;
        self.maybe_hang(location).await;
        let result = self
            .in_flight(self.inner.get_opts(location, options))
            .await?;
        self.record(location, result.range.end - result.range.start);
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.maybe_fail(location)?;
        self.maybe_hang(location).await;
        let result = self
            .in_flight(self.inner.get_ranges(location, ranges))
            .await?;
        self.record(location, result.iter().map(|b| b.len() as u64).sum());
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.dropped_path(&prefix.cloned().unwrap_or_default()) {
            Some(dropped) => futures::stream::iter([Err(dropped)]).boxed(),
            None => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        if let Some(dropped) = self.dropped_path(&prefix.cloned().unwrap_or_default()) {
            return Err(dropped);
        }
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Opens `pipeline` writing to `table`, with every source read going through `store`.
pub async fn open_over(
    store: Arc<TestStore>,
    pipeline: &std::path::Path,
    table: &std::path::Path,
) -> backfill_engine::Result<Backfill> {
    open_over_with(store, pipeline, table, RequestRetry::default()).await
}

/// The same, asking reads again as `request_retry` says.
pub async fn open_over_with(
    store: Arc<TestStore>,
    pipeline: &std::path::Path,
    table: &std::path::Path,
    request_retry: RequestRetry,
) -> backfill_engine::Result<Backfill> {
    let mut pipeline = pipeline::load(pipeline)?;
    pipeline.destination.url = url::Url::from_directory_path(table).unwrap();
    let stores = vec![(
        url::Url::parse("file:///").unwrap(),
        store as Arc<dyn ObjectStore>,
    )];
    let options = OpenOptions {
        stores,
        request_retry,
        ..OpenOptions::default()
    };
    Backfill::open(pipeline, options).await
}

/// Opens `pipeline` writing to `table`, with every source read and every destination
/// read and write (its log, its history) going through `store`.
pub async fn open_through(
    store: Arc<TestStore>,
    pipeline: &std::path::Path,
    table: &std::path::Path,
) -> Arc<Backfill> {
    let mut pipeline = pipeline::load(pipeline).unwrap();
    pipeline.destination.url = url::Url::from_directory_path(table).unwrap();
    let open = OpenOptions {
        stores: vec![(url::Url::parse("file:///").unwrap(), store.clone())],
        destination_store: Some(store),
        ..OpenOptions::default()
    };
    Arc::new(Backfill::open(pipeline, open).await.unwrap())
}
