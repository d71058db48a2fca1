//! An object store that asks again, request by request, when the network or a busy server
//! fails a read.
//!
//! Every read the engine makes goes through [`RetryingStore`]: source listings and footers,
//! the Delta log, the run history. A read that meets a reset connection, a response cut
//! short or a server saying it is busy (5xx, 429) is asked again after a wait with
//! exponential backoff and jitter, for as long as the [`RequestRetry`] budget allows; a
//! listing cut short resumes after the last object it gave. Retrying one request rather
//! than a whole phase is what lets a start-up that reads hundreds of objects survive a
//! store that fails one request in five.
//!
//! Writes, deletes and copies pass through untouched: object_store retries its own
//! idempotent requests, and whether a commit that reported an error landed is the sink's
//! question (it reads the log), never this module's. Answers are not faults: "not found",
//! "already exists", "access denied" come back at once.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Future, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// How long a read may keep being asked again, and how long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRetry {
    /// A read that still fails this long after it was first asked fails for good.
    pub budget: Duration,
    /// The wait before the first retry; each retry waits twice as long, up to
    /// `longest_wait`, scaled by a random factor in [0.5, 1).
    pub first_wait: Duration,
    pub longest_wait: Duration,
}

impl Default for RequestRetry {
    /// A minute per read: long enough to ride out a storage hiccup or a throttling
    /// episode, short enough that storage that is down says so.
    fn default() -> Self {
        RequestRetry {
            budget: Duration::from_secs(60),
            first_wait: Duration::from_millis(50),
            longest_wait: Duration::from_secs(4),
        }
    }
}

impl RequestRetry {
    /// Never asks again: every fault reaches the caller as it happened.
    pub fn none() -> Self {
        RequestRetry {
            budget: Duration::ZERO,
            ..RequestRetry::default()
        }
    }

    /// The wait before retry `retry` (1, 2, ...).
    fn wait(&self, retry: u32) -> Duration {
        let doubled = self
            .first_wait
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        doubled
            .min(self.longest_wait)
            .mul_f64(rand::random_range(0.5..1.0))
    }

    /// How long to wait before asking again after `error`, the `retry`-th failure of a
    /// read asked first at `since`; `None` when it should not be asked again.
    fn again(&self, error: &object_store::Error, retry: u32, since: Instant) -> Option<Duration> {
        let wait = self.wait(retry);
        (is_passing(error) && since.elapsed() + wait < self.budget).then_some(wait)
    }

    /// Runs `read` until it succeeds, fails with an answer, or the budget is spent.
    async fn run<T, F: Future<Output = Result<T>>>(
        &self,
        what: &str,
        location: &Path,
        mut read: impl FnMut() -> F,
    ) -> Result<T> {
        let since = Instant::now();
        let mut retry = 0;
        loop {
            match read().await {
                Err(error) => {
                    retry += 1;
                    let Some(wait) = self.again(&error, retry, since) else {
                        return Err(error);
                    };
                    tracing::warn!("{what} {location}: asking again in {wait:?} after: {error}");
                    tokio::time::sleep(wait).await;
                }
                done => return done,
            }
        }
    }
}

/// Whether asking again may succeed: the network failed (a connection refused or reset,
/// a response cut short, a time-out), or the server said it is busy or failing (5xx,
/// 429). The local disk's errors, and every definite answer, are not passing.
pub(crate) fn is_passing(error: &object_store::Error) -> bool {
    let object_store::Error::Generic { store, source } = error else {
        return false;
    };
    if *store == "LocalFileSystem" {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(current) = cause {
        if current.is::<object_store::client::HttpError>() || server_busy(&current.to_string()) {
            return true;
        }
        cause = current.source();
    }
    false
}

/// Whether an HTTP error message says the server failed or was busy, as object_store
/// words a status it has stopped retrying.
fn server_busy(message: &str) -> bool {
    [
        "status code: 5",
        "status code: 429",
        "Server returned error response",
    ]
    .iter()
    .any(|words| message.contains(words))
}

/// `inner`, whose reads are asked again while they fail for a passing reason.
#[derive(Debug)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    retry: RequestRetry,
}

impl RetryingStore {
    /// `inner` behind `retry`; `inner` itself when `retry` never asks again.
    pub fn wrap(inner: Arc<dyn ObjectStore>, retry: RequestRetry) -> Arc<dyn ObjectStore> {
        match retry.budget.is_zero() {
            true => inner,
            false => Arc::new(RetryingStore { inner, retry }),
        }
    }
}

impl std::fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let read = || self.inner.get_opts(location, options.clone());
        self.retry.run("reading", location, read).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let read = || self.inner.get_ranges(location, ranges);
        self.retry.run("reading", location, read).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        Listing::start(self.inner.clone(), self.retry, prefix.cloned(), None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let offset = Some(offset.clone());
        Listing::start(self.inner.clone(), self.retry, prefix.cloned(), offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let location = prefix.cloned().unwrap_or_default();
        let read = || self.inner.list_with_delimiter(prefix);
        self.retry.run("listing", &location, read).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A listing that, cut short by a passing fault, starts again where it stopped: after the
/// last object it gave when the store lists in order (as object stores do), or from the
/// beginning, leaving out what it gave, when it does not (as a local disk does).
struct Listing {
    inner: Arc<dyn ObjectStore>,
    retry: RequestRetry,
    prefix: Option<Path>,
    offset: Option<Path>,
    /// What was given so far, and whether it came in order.
    given: std::collections::HashSet<Path>,
    last: Option<Path>,
    in_order: bool,
    /// The current try: when it started, and how many tries failed before it.
    since: Instant,
    retry_number: u32,
    pages: BoxStream<'static, Result<ObjectMeta>>,
}

impl Listing {
    fn start(
        inner: Arc<dyn ObjectStore>,
        retry: RequestRetry,
        prefix: Option<Path>,
        offset: Option<Path>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let pages = list_from(&inner, prefix.as_ref(), offset.as_ref());
        let listing = Listing {
            inner,
            retry,
            prefix,
            offset,
            given: Default::default(),
            last: None,
            in_order: true,
            since: Instant::now(),
            retry_number: 0,
            pages,
        };
        futures::stream::unfold(listing, |mut listing| async move {
            let next = listing.next().await?;
            Some((next, listing))
        })
        .boxed()
    }

    /// The next object, asking again as long as the listing fails for a passing reason.
    async fn next(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            match self.pages.next().await? {
                Ok(object) if self.given.contains(&object.location) => continue,
                Ok(object) => {
                    self.in_order &= self.last.as_ref().is_none_or(|l| *l < object.location);
                    self.last = Some(object.location.clone());
                    self.given.insert(object.location.clone());
                    (self.since, self.retry_number) = (Instant::now(), 0);
                    return Some(Ok(object));
                }
                Err(error) => {
                    self.retry_number += 1;
                    let wait = self.retry.again(&error, self.retry_number, self.since);
                    let Some(wait) = wait else {
                        return Some(Err(error));
                    };
                    let prefix = self.prefix.clone().unwrap_or_default();
                    tracing::warn!("listing {prefix}: asking again in {wait:?} after: {error}");
                    tokio::time::sleep(wait).await;
                    let resume = match self.in_order {
                        true => self.last.as_ref().or(self.offset.as_ref()),
                        false => self.offset.as_ref(),
                    };
                    self.pages = list_from(&self.inner, self.prefix.as_ref(), resume);
                }
            }
        }
    }
}

fn list_from(
    store: &Arc<dyn ObjectStore>,
    prefix: Option<&Path>,
    offset: Option<&Path>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    match offset {
        Some(offset) => store.list_with_offset(prefix, offset),
        None => store.list(prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::client::{HttpError, HttpErrorKind};
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An in-memory store where only every `pass_every`-th read request succeeds: the
    /// others fail as a connection reset, a listing after giving `page` objects.
    #[derive(Debug)]
    struct Flaky {
        inner: InMemory,
        pass_every: usize,
        page: usize,
        requests: AtomicUsize,
    }

    impl Flaky {
        fn fault(&self) -> Option<object_store::Error> {
            let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            (!n.is_multiple_of(self.pass_every)).then(reset)
        }
    }

    fn reset() -> object_store::Error {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(HttpErrorKind::Interrupted, io)),
        }
    }

    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Flaky")
        }
    }

    #[async_trait]
    impl ObjectStore for Flaky {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            match self.fault() {
                Some(error) => Err(error),
                None => self.inner.get_opts(l, o).await,
            }
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.list_with_offset(prefix, &Path::from(""))
        }
        fn list_with_offset(
            &self,
            prefix: Option<&Path>,
            offset: &Path,
        ) -> BoxStream<'static, Result<ObjectMeta>> {
            let listing = self.inner.list_with_offset(prefix, offset);
            match self.fault() {
                Some(cut) => listing
                    .take(self.page)
                    .chain(futures::stream::iter([Err(cut)]))
                    .boxed(),
                None => listing,
            }
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> Result<()> {
            self.inner.copy_opts(from, to, o).await
        }
    }

    async fn flaky_with(objects: usize) -> Arc<Flaky> {
        let store = Flaky {
            inner: InMemory::new(),
            pass_every: 4,
            page: 3,
            requests: AtomicUsize::new(0),
        };
        for i in 0..objects {
            let path = Path::from(format!("dt=2024-01-01/part-{i:03}.parquet"));
            store.inner.put(&path, format!("{i}").into()).await.unwrap();
        }
        Arc::new(store)
    }

    fn quick() -> RequestRetry {
        RequestRetry {
            budget: Duration::from_secs(10),
            first_wait: Duration::from_millis(1),
            longest_wait: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn a_listing_cut_short_again_and_again_resumes_to_give_every_object_once() {
        let flaky = flaky_with(20).await;
        let store = RetryingStore::wrap(flaky.clone(), quick());
        let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
        let mut names: Vec<String> = listed.iter().map(|o| o.location.to_string()).collect();
        let expected: Vec<String> = (0..20)
            .map(|i| format!("dt=2024-01-01/part-{i:03}.parquet"))
            .collect();
        assert_eq!(names, expected, "in order, each once");
        names.dedup();
        assert_eq!(names.len(), 20);
        assert_eq!(
            flaky.requests.load(Ordering::SeqCst),
            4,
            "cut three times, resumed each time"
        );

        let bare: Result<Vec<ObjectMeta>> = flaky.list(None).try_collect().await;
        assert!(
            bare.is_err(),
            "without retries the same store fails the listing"
        );
    }

    #[tokio::test]
    async fn reads_that_fail_three_requests_in_four_all_succeed() {
        let flaky = flaky_with(6).await;
        let store = RetryingStore::wrap(flaky.clone(), quick());
        for i in 0..6 {
            let path = Path::from(format!("dt=2024-01-01/part-{i:03}.parquet"));
            let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
            assert_eq!(bytes, format!("{i}").as_bytes());
            assert_eq!(store.head(&path).await.unwrap().size, bytes.len() as u64);
        }
    }

    #[tokio::test]
    async fn answers_are_not_asked_again_and_the_budget_ends_a_read_that_keeps_failing() {
        let flaky = Arc::new(Flaky {
            pass_every: usize::MAX,
            ..Arc::into_inner(flaky_with(1).await).unwrap()
        });
        let budget = RequestRetry {
            budget: Duration::from_millis(50),
            ..quick()
        };
        let store = RetryingStore::wrap(flaky.clone(), budget);
        let started = Instant::now();
        let error = store.get(&Path::from("a")).await.unwrap_err();
        assert!(is_passing(&error), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            flaky.requests.load(Ordering::SeqCst) > 3,
            "asked again meanwhile"
        );

        let store = RetryingStore::wrap(Arc::new(InMemory::new()), quick());
        let missing = store.get(&Path::from("missing")).await.unwrap_err();
        assert!(matches!(missing, object_store::Error::NotFound { .. }));
    }

    #[test]
    fn only_network_faults_and_busy_servers_pass() {
        assert!(is_passing(&reset()));
        let busy = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET in 1s - Server returned non-2xx status code: 503 Service Unavailable".into(),
        };
        assert!(is_passing(&busy));
        let bad = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 400 Bad Request".into(),
        };
        assert!(!is_passing(&bad));
        let disk = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(HttpError::new(
                HttpErrorKind::Unknown,
                std::io::Error::other("x"),
            )),
        };
        assert!(!is_passing(&disk));
        let denied = object_store::Error::PermissionDenied {
            path: "a".into(),
            source: "no".into(),
        };
        assert!(!is_passing(&denied));
    }
}
