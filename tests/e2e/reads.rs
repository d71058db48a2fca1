//! What a slice reads, counted at the object store: the engine runs over a store that
//! wraps the local file system and records every read.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use backfill_engine::{pipeline, Backfill, OpenOptions, RunOptions, Selection, SliceStatus};
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::support::Scratch;

/// A local file system that records the path and size of every read.
#[derive(Debug, Default)]
struct CountingStore {
    inner: LocalFileSystem,
    reads: Mutex<Vec<(String, u64)>>,
}

impl CountingStore {
    fn record(&self, location: &Path, bytes: u64) {
        self.reads
            .lock()
            .unwrap()
            .push((location.to_string(), bytes));
    }

    /// Reads of files whose path contains `part`: (requests, bytes).
    fn reads_of(&self, part: &str) -> (usize, u64) {
        let reads = self.reads.lock().unwrap();
        let matching = reads.iter().filter(|(path, _)| path.contains(part));
        matching.fold((0, 0), |(n, total), (_, bytes)| (n + 1, total + bytes))
    }

    fn paths_read(&self) -> Vec<String> {
        self.reads
            .lock()
            .unwrap()
            .iter()
            .map(|(path, _)| path.clone())
            .collect()
    }
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
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
        let result = self.inner.get_opts(location, options).await?;
        self.record(location, result.range.end - result.range.start);
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let result = self.inner.get_ranges(location, ranges).await?;
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
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Runs `pipeline` for `day` with every source read going through a new counting store.
async fn run_counting(
    pipeline: &std::path::Path,
    table: &std::path::Path,
    day: &str,
) -> Arc<CountingStore> {
    let store = Arc::new(CountingStore::default());
    let mut pipeline = pipeline::load(pipeline).unwrap();
    pipeline.destination.url = url::Url::from_directory_path(table).unwrap();
    let stores = vec![(
        url::Url::parse("file:///").unwrap(),
        store.clone() as Arc<dyn ObjectStore>,
    )];
    let backfill = Arc::new(
        Backfill::open(
            pipeline,
            OpenOptions {
                stores,
                ..OpenOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    store.reads.lock().unwrap().clear(); // count the slice, not the schema inference
    let summary = backfill
        .run(
            &Selection::Keys(vec![day.into()]),
            &RunOptions::default(),
            Arc::new(backfill_engine::run::Silent),
        )
        .await
        .unwrap();
    assert!(
        matches!(summary.outcomes[0].status, SliceStatus::Committed { .. }),
        "{summary:?}"
    );
    store
}

#[tokio::test]
async fn slice_opens_only_its_own_partition_files() {
    let scratch = Scratch::new();
    let store = run_counting(
        &scratch.path("pipelines/orders_clean.toml"),
        &scratch.path("warehouse/t"),
        "2024-01-03",
    )
    .await;
    let bucket = scratch.path("buckets/shop").display().to_string();
    let source_reads: Vec<String> = store
        .paths_read()
        .into_iter()
        .filter(|p| p.contains(bucket.trim_start_matches('/')))
        .collect();
    assert!(!source_reads.is_empty(), "the slice must read its source");
    assert!(
        source_reads
            .iter()
            .all(|p| p.contains("/orders/dt=2024-01-03/")),
        "files of other days were opened: {source_reads:#?}"
    );
}

#[tokio::test]
async fn merge_reads_the_slice_sources_once_like_overwrite() {
    let scratch = Scratch::new();
    let merge = scratch.path("pipelines/orders_merge.toml");
    // The same SQL published by overwrite: the source is scanned exactly once there.
    let text = std::fs::read_to_string(&merge).unwrap().replace(
        "strategy = \"merge\"\nmerge_keys = [\"order_id\"]",
        "strategy = \"overwrite\"",
    );
    let overwrite = scratch.pipeline("orders_overwrite", &text);
    let day = "/orders/dt=2024-01-04/";

    let merged = run_counting(&merge, &scratch.path("warehouse/m"), "2024-01-04").await;
    let overwritten = run_counting(&overwrite, &scratch.path("warehouse/o"), "2024-01-04").await;
    let (requests, bytes) = merged.reads_of(day);
    assert!(bytes > 0);
    assert_eq!(
        (requests, bytes),
        overwritten.reads_of(day),
        "merge must not run the slice's SQL twice"
    );
}
