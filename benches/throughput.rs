//! Real backfills of a generated bucket, one shape per invocation:
//!
//! ```sh
//! cargo bench -p backfill-engine --bench throughput -- rows     [--days 8] [--rows 1000000]
//! cargo bench -p backfill-engine --bench throughput -- distinct [--days 8] [--rows 1000000]
//! cargo bench -p backfill-engine --bench throughput -- merge    [--days 60] [--rows 900]
//! cargo bench -p backfill-engine --bench throughput -- hourly   [--hours 2016] [--rows 40]
//! cargo bench -p backfill-engine --bench throughput -- history  [--hours 10080] [--rows 4]
//! cargo bench -p backfill-engine --bench throughput -- cells    [--days 365] [--tenants 24]
//! cargo bench -p backfill-engine --features cluster --bench throughput -- cluster [--days 8] [--rows 1000000]
//! ```
//!
//! - `rows`: every order of a day, one column rewritten (overwrite by day);
//! - `distinct`: per day and status, `count(*)`, `count(DISTINCT customer_id)`, `sum`, `avg`;
//! - `merge`: the `rows` transform merged on `order_id` by day into a fresh table, then
//!   merged again over it with every slice forced (every row an update), next to the same
//!   two runs with `overwrite`;
//! - `hourly`: `--hours` hourly slices of a few events each, aggregated per customer and
//!   hour (overwrite by day and hour), for the fixed cost of a slice over a long run;
//! - `history`: `plan`, `status` and a rerun with nothing to do, over a table whose log
//!   holds `--hours` committed hourly slices (built once, then kept), for what a long
//!   history costs the commands that read it, next to the floor: listing the source,
//!   loading the Delta log and reading every source file's footer, timed in the same run;
//!   and a catch-up through the last slice with `--lookback 24`, as a scheduled tick;
//! - `cells`: `history` over slices of two dimensions, `--days` × `--tenants` (a cell of
//!   each day and tenant);
//! - `cluster` (feature `cluster`): the `rows` backfill here, then on a Ballista cluster
//!   of one executor and of two, all in this process on loopback (each configuration with
//!   as many task slots as cores): on one machine this measures what the cluster costs, not
//!   what it gains.
//!
//! The bucket is generated once and cached under `target/bench-buckets/`. Each case runs
//! `--repeat` times (default 5) into a fresh table; the median run is reported with its
//! CPU time, its commits (a commit carries several slices when they are ready together),
//! the size of the table it wrote, and the process's peak memory. The time per slice over
//! the first and the last tenth of the median run's slices shows whether cost per slice
//! stays flat. `benches/polars_loop.py` runs the same slices as a Python loop of polars +
//! delta-rs and prints the same figures; run both on the same machine, one after the other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backfill_engine::fixtures::{generate, FixtureSpec};
use backfill_engine::pipeline::Pipeline;
use backfill_engine::run::{Observer, RunEvent};
use backfill_engine::states::{Reprocess, SliceOutcome};
use backfill_engine::{
    pipeline, Backfill, CatchUp, OpenOptions, PlanOptions, RunOptions, Selection, Through,
};
use chrono::NaiveDate;

const OVERWRITE: &str = "strategy = \"overwrite\"";
const MERGE: &str = "strategy = \"merge\"\nmerge_keys = [\"order_id\"]";
const ROWS: &str = "SELECT order_id, customer_id, amount, upper(status) AS status, ordered_at, dt \
                    FROM orders WHERE dt = {{ slice }}";
const DISTINCT: &str =
    "SELECT dt, status, count(*) AS orders, count(DISTINCT customer_id) AS customers, \
                        sum(amount) AS revenue, avg(amount) AS average_amount \
                        FROM orders WHERE dt = {{ slice }} GROUP BY dt, status";
const CELLS: &str = "SELECT dt, tenant, count(*) AS events, sum(units) AS units FROM usage \
                     WHERE dt = {{ start_date }} AND tenant = {{ tenant }} GROUP BY dt, tenant";
const HOURLY: &str = "SELECT dt, hr, customer_id, count(*) AS events, \
                      sum(CASE WHEN kind = 'click' THEN 1 ELSE 0 END) AS clicks \
                      FROM events WHERE dt = {{ start_date }} AND hr = {{ hour }} \
                      GROUP BY dt, hr, customer_id";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let case = args
        .iter()
        .find(|a| {
            let cases = [
                "rows", "distinct", "merge", "hourly", "history", "cells", "cluster",
            ];
            cases.contains(&a.as_str())
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!("name a case: rows, distinct, merge, hourly, history, cells or cluster")
        });
    let repeat = option("--repeat", 5) as usize;
    let options = RunOptions {
        concurrency: args
            .iter()
            .position(|a| a == "--concurrency")
            .map(|i| args[i + 1].parse().expect("a number")),
        ..RunOptions::default()
    };
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-buckets");
    let first = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let bench = match case.as_str() {
        "hourly" | "history" => {
            let default_hours = if case == "hourly" { 2016 } else { 10080 };
            let default_rows = if case == "hourly" { 40 } else { 4 };
            let (hours, rows) = (
                option("--hours", default_hours),
                option("--rows", default_rows),
            );
            let days = hours.div_ceil(24) as u32;
            let spec = FixtureSpec {
                event_days: days,
                events_per_hour: rows,
                ..FixtureSpec::orders_only(0, 0)
            };
            let last =
                first.and_hms_opt(0, 0, 0).unwrap() + chrono::Duration::hours(hours as i64 - 1);
            Bench {
                bucket: bucket(&target, &format!("events-{days}x24x{rows}"), &spec),
                source: ("events", "[\"dt\", \"hr\"]"),
                slices: "kind = \"hourly\"".into(),
                sql: HOURLY,
                strategy: OVERWRITE,
                selection: Selection::range(
                    first
                        .and_hms_opt(0, 0, 0)
                        .unwrap()
                        .format("%Y-%m-%dT%H")
                        .to_string(),
                    last.format("%Y-%m-%dT%H").to_string(),
                ),
                slice_count: hours as usize,
            }
        }
        "cells" => {
            let (days, tenants) = (option("--days", 365) as u32, option("--tenants", 24));
            let tenants: Vec<String> = (0..tenants).map(|i| format!("t{i:04}")).collect();
            let spec = FixtureSpec {
                usage_days: days,
                tenants: tenants.clone(),
                regions: vec![],
                usage_onboarding_days: 0,
                ..FixtureSpec::orders_only(0, 0)
            };
            let keys: Vec<String> = tenants.iter().map(|t| format!("{t:?}")).collect();
            let last = first + chrono::Duration::days(i64::from(days) - 1);
            Bench {
                bucket: bucket(&target, &format!("usage-{days}x{}", tenants.len()), &spec),
                source: ("usage", "[\"dt\", \"tenant\"]"),
                slices: format!(
                    "kind = \"daily\"\n[[slices.dimensions]]\nname = \"tenant\"\nkeys = [{}]",
                    keys.join(", ")
                ),
                sql: CELLS,
                strategy: OVERWRITE,
                selection: Selection::range(first.to_string(), last.to_string()),
                slice_count: days as usize * tenants.len(),
            }
        }
        shape => {
            let (default_days, default_rows) = match shape {
                "merge" => (60, 900),
                _ => (8, 1_000_000),
            };
            let (days, rows) = (
                option("--days", default_days) as u32,
                option("--rows", default_rows),
            );
            // A customer orders about four times a day: `count(DISTINCT)` has work to do.
            let spec = FixtureSpec {
                customers: (rows / 4).max(1),
                ..FixtureSpec::orders_only(days, rows)
            };
            let last = first + chrono::Duration::days(i64::from(days) - 1);
            Bench {
                bucket: bucket(&target, &format!("orders-{days}x{rows}"), &spec),
                source: ("orders", "[\"dt\"]"),
                slices: "kind = \"daily\"".into(),
                sql: if shape == "distinct" { DISTINCT } else { ROWS },
                strategy: if shape == "merge" { MERGE } else { OVERWRITE },
                selection: Selection::range(first.to_string(), last.to_string()),
                slice_count: days as usize,
            }
        }
    };
    let source_bytes = dir_bytes(&bench.bucket.join(bench.source.0));
    println!(
        "bucket {} ({:.1} MB of Parquet)",
        bench.bucket.display(),
        mb(source_bytes)
    );
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    if case == "history" || case == "cells" {
        return runtime.block_on(bench.history(&target, repeat));
    }
    if case == "merge" {
        return runtime.block_on(bench.merge_next_to_overwrite(&options, repeat));
    }
    if case == "cluster" {
        #[cfg(feature = "cluster")]
        return cluster::compare(&bench, &runtime, &options, repeat);
        #[cfg(not(feature = "cluster"))]
        panic!("the cluster case needs --features cluster");
    }
    let runs: Vec<Measured> = (0..repeat.max(1))
        .map(|_| runtime.block_on(bench.run_once(&options)))
        .collect();
    print_header();
    bench.print_median(&case, runs);
}

fn print_header() {
    println!(
        "{:<15} {:>7} {:>8} {:>9} {:>9} {:>10} {:>12} {:>12} {:>9} {:>9}",
        "case",
        "slices",
        "commits",
        "wall s",
        "cpu s",
        "ms/slice",
        "first 10%",
        "last 10%",
        "peak MB",
        "table MB"
    );
}

#[derive(Clone)]
struct Bench {
    bucket: PathBuf,
    /// The source's name and its partitioning.
    source: (&'static str, &'static str),
    /// The `[slices]` section's body.
    slices: String,
    sql: &'static str,
    /// The `[destination]` section's strategy lines.
    strategy: &'static str,
    selection: Selection,
    slice_count: usize,
}

/// One run's wall and CPU time, when each slice finished, how many commits it made, and
/// the size of the table it wrote.
struct Measured {
    wall: Duration,
    cpu: Duration,
    finished: Vec<Duration>,
    commits: usize,
    table_bytes: u64,
}

impl Measured {
    /// Milliseconds per slice over the first and the last tenth of the slices to finish.
    fn tenths(&self) -> (f64, f64) {
        let n = self.finished.len();
        let tenth = (n / 10).max(1);
        let per_slice =
            |from: Duration, to: Duration| (to - from).as_secs_f64() * 1000.0 / tenth as f64;
        let first = per_slice(Duration::ZERO, self.finished[tenth - 1]);
        let last = per_slice(self.finished[n - tenth - 1], self.finished[n - 1]);
        (first, last)
    }
}

/// Remembers when each slice finished, from the start of the run, and the table versions
/// slices were committed in (several slices share one when they were committed together).
struct Finishes {
    started: Instant,
    at: Mutex<Vec<Duration>>,
    versions: Mutex<BTreeSet<u64>>,
}

impl Finishes {
    fn new() -> Self {
        Finishes {
            started: Instant::now(),
            at: Mutex::new(Vec::new()),
            versions: Mutex::new(BTreeSet::new()),
        }
    }
}

impl Observer for Finishes {
    fn on(&self, event: &RunEvent) {
        let RunEvent::SliceFinished { outcome, .. } = event else {
            return;
        };
        self.at.lock().unwrap().push(self.started.elapsed());
        if let SliceOutcome::Committed { version, .. } = outcome.status {
            self.versions.lock().unwrap().insert(version);
        }
    }
}

impl Bench {
    /// The median of `runs`, by wall time, on one line.
    fn print_median(&self, case: &str, mut runs: Vec<Measured>) {
        runs.sort_by_key(|run| run.wall);
        let median = &runs[runs.len() / 2];
        let (first_tenth, last_tenth) = median.tenths();
        println!(
            "{case:<15} {:>7} {:>8} {:>9.2} {:>9.2} {:>10.1} {:>12.1} {:>12.1} {:>9.0} {:>9.1}",
            self.slice_count,
            median.commits,
            median.wall.as_secs_f64(),
            median.cpu.as_secs_f64(),
            median.wall.as_secs_f64() * 1000.0 / self.slice_count as f64,
            first_tenth,
            last_tenth,
            peak_memory_mb(),
            mb(median.table_bytes),
        );
    }

    /// Merge backfills next to overwrite backfills of the same slices, taking turns: each
    /// into a fresh table, then again over it with every slice forced.
    async fn merge_next_to_overwrite(&self, options: &RunOptions, repeat: usize) {
        let forced = RunOptions {
            reprocess: Reprocess::ALL,
            ..options.clone()
        };
        let overwrite = Bench {
            strategy: OVERWRITE,
            ..self.clone()
        };
        let mut runs: [Vec<Measured>; 4] = Default::default();
        for _ in 0..repeat.max(1) {
            for (bench, fresh, again) in [(self, 0, 1), (&overwrite, 2, 3)] {
                let destination = tempfile::tempdir().unwrap();
                runs[fresh].push(bench.run_into(destination.path(), options).await);
                runs[again].push(bench.run_into(destination.path(), &forced).await);
            }
        }
        print_header();
        let [merge, merge_again, overwrite_fresh, overwrite_again] = runs;
        self.print_median("merge", merge);
        self.print_median("merge again", merge_again);
        self.print_median("overwrite", overwrite_fresh);
        self.print_median("overwrite again", overwrite_again);
    }

    /// One backfill of the selection into a fresh table, opening included.
    async fn run_once(&self, options: &RunOptions) -> Measured {
        let destination = tempfile::tempdir().unwrap();
        self.run_into(destination.path(), options).await
    }

    /// One backfill of the selection into `destination/table`, opening included.
    async fn run_into(&self, destination: &Path, options: &RunOptions) -> Measured {
        let pipeline = self.pipeline(destination);
        let (cpu_before, started) = (cpu_time(), Instant::now());
        let finishes = Arc::new(Finishes::new());
        let backfill = Arc::new(
            Backfill::open(pipeline, OpenOptions::default())
                .await
                .expect("opens"),
        );
        let summary = backfill
            .run(&self.selection, options, finishes.clone())
            .await
            .expect("runs");
        let (wall, cpu) = (started.elapsed(), cpu_time() - cpu_before);
        assert_eq!(summary.committed(), self.slice_count, "{summary:?}");
        let finished = finishes.at.lock().unwrap().clone();
        let commits = finishes.versions.lock().unwrap().len();
        Measured {
            wall,
            cpu,
            finished,
            commits,
            table_bytes: dir_bytes(destination),
        }
    }

    /// Times `plan`, `status` and a rerun with nothing to do, each from opening the
    /// pipeline, over a table holding every slice of the selection (built on first use).
    async fn history(&self, target: &Path, repeat: usize) {
        let folder = target.join(format!(
            "history-{}-{}",
            self.slice_count,
            self.bucket.file_name().unwrap().to_string_lossy()
        ));
        // As the CLI opens it: for the selection of `plan` and `run`, for none of `status`.
        let open = |scope: Option<Selection>| async {
            let options = OpenOptions {
                scope,
                ..OpenOptions::default()
            };
            let opened = Backfill::open(self.pipeline(&folder), options).await;
            Arc::new(opened.expect("opens"))
        };
        let run_everything = || async {
            let options = RunOptions::default();
            let reporter = Arc::new(Finishes::new());
            let run = open(Some(self.selection.clone()))
                .await
                .run(&self.selection, &options, reporter)
                .await;
            run.expect("runs")
        };
        if !folder.join("done").exists() {
            // A build cut short resumes: the run does only the slices not done yet.
            let (summary, took) = measured(run_everything()).await;
            let done = summary.committed() + summary.skipped();
            assert_eq!(done, self.slice_count, "{summary:?}");
            let took = took.wall.as_secs_f64();
            println!("built {} in {took:.1} s", folder.display());
            std::fs::write(folder.join("done"), "").unwrap();
        }
        println!(
            "{:<9} {:>7} {:>9} {:>9} {:>9}",
            "command", "slices", "wall s", "cpu s", "peak MB"
        );
        // The median run's times, and the most memory any run held.
        let timed = |name: &str, times: Vec<Took>| {
            let mut times = times;
            times.sort_by_key(|took| took.wall);
            let median = times[times.len() / 2];
            let peak = times.iter().map(|took| took.peak_mb).fold(0.0, f64::max);
            println!(
                "{name:<9} {:>7} {:>9.2} {:>9.2} {peak:>9.0}",
                self.slice_count,
                median.wall.as_secs_f64(),
                median.cpu.as_secs_f64()
            );
        };
        let mut floors = Vec::new();
        let mut plans = Vec::new();
        let mut statuses = Vec::new();
        let mut reruns = Vec::new();
        let mut catch_ups = Vec::new();
        // The same slices caught up through their last one, done slices' inputs checked
        // only within the last 24 time slices: what a scheduled tick costs.
        let (start, end) = self.selection.range.clone().expect("a range");
        let catch_up = Selection {
            range: None,
            keys: self.selection.keys.clone(),
            catch_up: Some(CatchUp {
                start: Some(start),
                through: Through::At(end),
                lookback: Some(24),
            }),
        };
        for _ in 0..repeat.max(1) {
            let (files, took) = measured(self.floor(&folder)).await;
            floors.push(took);
            println!("floor: {files} source files listed and their footers read, the log loaded");

            let plan = async {
                open(Some(self.selection.clone()))
                    .await
                    .plan(&self.selection, &PlanOptions::default())
                    .await
            };
            let (plan, took) = measured(plan).await;
            assert!(plan.expect("plans").slices.iter().all(|p| !p.will_run));
            plans.push(took);

            let (status, took) = measured(async { open(None).await.status(None).await }).await;
            assert_eq!(status.expect("status").slices.len(), self.slice_count);
            statuses.push(took);

            let (summary, took) = measured(run_everything()).await;
            assert_eq!(summary.skipped(), self.slice_count, "{summary:?}");
            reruns.push(took);

            let caught_up = async {
                let options = RunOptions::default();
                let reporter = Arc::new(Finishes::new());
                let opened = open(Some(catch_up.clone())).await;
                opened.run(&catch_up, &options, reporter).await
            };
            let (summary, took) = measured(caught_up).await;
            assert_eq!(summary.expect("catches up").skipped(), self.slice_count);
            catch_ups.push(took);
        }
        timed("floor", floors);
        timed("plan", plans);
        timed("status", statuses);
        timed("rerun", reruns);
        timed("catch-up", catch_ups);
    }

    /// What any plan of the table must read: the source's listing, the Delta log (with
    /// its file list) and every source file's footer, read 16 at a time. Returns how many
    /// source files there are.
    async fn floor(&self, folder: &Path) -> usize {
        use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
        use futures::{StreamExt, TryStreamExt};
        use object_store::ObjectStore;
        let source = self.bucket.join(self.source.0);
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&source).unwrap());
        let files: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await.unwrap();
        let table = folder.join("table");
        let url = deltalake::ensure_table_uri(table.to_str().unwrap()).unwrap();
        let table = deltalake::open_table(url).await.expect("the table opens");
        assert!(table.version().is_some());
        let parquet = files
            .iter()
            .filter(|f| f.location.as_ref().ends_with(".parquet"));
        let footers = futures::stream::iter(parquet)
            .map(|file| {
                let store = store.clone();
                async move {
                    DFParquetMetadata::new(store.as_ref(), file)
                        .fetch_metadata()
                        .await
                }
            })
            .buffer_unordered(16);
        let read: Vec<_> = footers.try_collect().await.expect("every footer reads");
        assert_eq!(read.len(), files.len());
        files.len()
    }

    /// The pipeline of this bench, writing to `folder/table`.
    fn pipeline(&self, folder: &Path) -> Pipeline {
        let (source, partitioning) = self.source;
        let text = format!(
            "name = \"bench\"\n[sources.{source}]\nurl = \"{}\"\nformat = \"parquet\"\npartitioning = {partitioning}\n\
             [slices]\n{}\n[transform]\nsql = \"{}\"\n\
             [destination]\nurl = \"{}\"\npartition_by = {partitioning}\n{}\n",
            self.bucket.join(source).display(),
            self.slices,
            self.sql,
            folder.join("table").display(),
            self.strategy,
        );
        pipeline::parse(&text, &folder.join("bench.toml")).expect("a valid pipeline")
    }
}

/// What `work` returns, with the wall and CPU time it took and the most memory the
/// process held meanwhile.
async fn measured<T>(work: impl std::future::Future<Output = T>) -> (T, Took) {
    reset_peak_memory();
    let (cpu, started) = (cpu_time(), Instant::now());
    let done = work.await;
    let took = Took {
        wall: started.elapsed(),
        cpu: cpu_time() - cpu,
        peak_mb: peak_memory_mb(),
    };
    (done, took)
}

#[derive(Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: Duration,
    peak_mb: f64,
}

/// Starts a new measure of peak memory from what the process holds now, once what earlier
/// work freed is handed back to the system: the floor's footers are not a command's.
fn reset_peak_memory() {
    // SAFETY: malloc_trim only releases free memory of glibc's heaps.
    unsafe { libc::malloc_trim(0) };
    std::fs::write("/proc/self/clear_refs", "5").expect("Linux resets the peak");
}

/// The bucket `name`, generated from `spec` on first use.
fn bucket(target: &Path, name: &str, spec: &FixtureSpec) -> PathBuf {
    let root = target.join(name);
    if !root.join("done").exists() {
        generate(&root, spec).expect("the bucket is written");
        std::fs::write(root.join("done"), "").unwrap();
    }
    root
}

/// CPU time (user and system) this process has used so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the
    // 12th and 13th, in clock ticks of 1/100 s on Linux.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 10)
}

/// The process's peak resident memory, in MB.
fn peak_memory_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    kb / 1000.0
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.path().is_dir() {
                    true => dir_bytes(&e.path()),
                    false => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

/// The `cluster` case: the same backfill here and on in-process Ballista clusters.
#[cfg(feature = "cluster")]
mod cluster {
    use std::time::Duration;

    use backfill_engine::cluster::{
        serve_executor, serve_scheduler, Cluster, ClusterKey, ExecutorOptions, SchedulerOptions,
        Security,
    };
    use backfill_engine::RunOptions;

    use super::{Bench, Measured};

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("an address").port()
    }

    /// A scheduler and `executors` executors serving on `runtime`, sharing `slots` task
    /// slots between them, all connecting with `security`.
    fn start(
        runtime: &tokio::runtime::Runtime,
        executors: usize,
        slots: usize,
        security: Security,
    ) -> Cluster {
        let port = free_port();
        let bind = format!("127.0.0.1:{port}").parse().expect("an address");
        let executor_timeout = Duration::from_secs(30);
        runtime.spawn(serve_scheduler(SchedulerOptions {
            bind,
            executor_timeout,
            adaptive: false,
            security: security.clone(),
        }));
        for _ in 0..executors {
            runtime.spawn(serve_executor(ExecutorOptions {
                scheduler: ("127.0.0.1".into(), port),
                bind: [127, 0, 0, 1].into(),
                host: "127.0.0.1".into(),
                port: free_port(),
                grpc_port: free_port(),
                tasks: (slots / executors).max(1),
                work_dir: None,
                heartbeat: Duration::from_secs(5),
                security: security.clone(),
            }));
        }
        let url = format!("df://127.0.0.1:{port}");
        runtime.block_on(async {
            for _ in 0..100 {
                if let Ok(cluster) = Cluster::connect(&url, security.clone()).await {
                    // Executors register on their first heartbeat, right after they start.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return cluster;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the scheduler at {url} never answered")
        })
    }

    pub(super) fn compare(
        bench: &Bench,
        runtime: &tokio::runtime::Runtime,
        options: &RunOptions,
        repeat: usize,
    ) {
        let slots = backfill_engine::estimate::default_concurrency();
        let open = Security::open;
        // The same cluster with a key: every connection TLS, both ends proving the key.
        let key = ClusterKey::new("a benchmark's cluster key".into(), "the bench".into())
            .expect("long enough");
        let keyed = || Security::new(Some(&key), &Default::default()).expect("certificates");
        let places = [
            ("local".to_string(), None),
            (
                format!("1 executor x {slots} tasks"),
                Some(start(runtime, 1, slots, open())),
            ),
            (
                format!("2 executors x {} tasks", (slots / 2).max(1)),
                Some(start(runtime, 2, slots, open())),
            ),
            (
                format!("2 executors x {} tasks, key", (slots / 2).max(1)),
                Some(start(runtime, 2, slots, keyed())),
            ),
        ];
        println!(
            "{:<24} {:>7} {:>9} {:>9} {:>10} {:>12}",
            "where", "slices", "wall s", "cpu s", "ms/slice", "table MB"
        );
        for (place, cluster) in places {
            let options = RunOptions {
                cluster,
                ..options.clone()
            };
            let mut runs: Vec<Measured> = (0..repeat.max(1))
                .map(|_| runtime.block_on(bench.run_once(&options)))
                .collect();
            runs.sort_by_key(|run| run.wall);
            let median = &runs[runs.len() / 2];
            println!(
                "{place:<24} {:>7} {:>9.2} {:>9.2} {:>10.1} {:>12.1}",
                bench.slice_count,
                median.wall.as_secs_f64(),
                median.cpu.as_secs_f64(),
                median.wall.as_secs_f64() * 1000.0 / bench.slice_count as f64,
                super::mb(median.table_bytes),
            );
        }
    }
}
