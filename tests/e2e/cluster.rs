//! Slices run on a Ballista cluster formed by the binary itself: a scheduler and two
//! executors, separate processes on loopback. The tables must equal local runs'.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// `daily_revenue`'s table as compared: sums of cents rounded to cents, as the order of a
/// float sum's terms differs between a cluster's tasks and a local run.
pub(crate) const REVENUE_ROWS: &str = "SELECT dt, region, orders, priced_orders, round(revenue, 2) AS revenue FROM t ORDER BY dt, region";

/// A scheduler and two executors of `backfill cluster`, stopped when dropped.
pub(crate) struct LocalCluster {
    processes: Vec<Child>,
    /// Where runs submit to: `df://127.0.0.1:PORT`.
    pub(crate) scheduler: String,
    /// Each executor's work folder, where the tasks it ran leave their output.
    work_dirs: Vec<PathBuf>,
    /// Each executor's Arrow Flight port.
    pub(crate) flight_ports: Vec<u16>,
    /// What every process has besides this one's environment.
    env: Vec<(String, String)>,
    /// Whether the scheduler plans with Ballista's adaptive planner.
    adaptive: bool,
    /// The address its processes listen on; they are reached through loopback.
    listen: &'static str,
    /// Holds each process's log.
    pub(crate) dir: tempfile::TempDir,
}

/// A port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl LocalCluster {
    fn start() -> LocalCluster {
        LocalCluster::start_with(&[])
    }

    /// A cluster whose processes have `env` besides this one's: how storage is reached.
    pub(crate) fn start_with(env: &[(&str, String)]) -> LocalCluster {
        LocalCluster::start_sized(env, 1, false)
    }

    /// A cluster whose processes have `env` besides this one's and listen on `listen`.
    pub(crate) fn start_listening(env: &[(&str, String)], listen: &'static str) -> LocalCluster {
        LocalCluster::start_on(env, 1, false, listen)
    }

    /// A cluster whose executors run `tasks` tasks at once each, and whose scheduler
    /// plans `adaptive`ly or not.
    fn start_sized(env: &[(&str, String)], tasks: usize, adaptive: bool) -> LocalCluster {
        LocalCluster::start_on(env, tasks, adaptive, "127.0.0.1")
    }

    fn start_on(
        env: &[(&str, String)],
        tasks: usize,
        adaptive: bool,
        listen: &'static str,
    ) -> LocalCluster {
        let port = free_port();
        let mut cluster = LocalCluster {
            processes: vec![],
            scheduler: format!("df://127.0.0.1:{port}"),
            work_dirs: vec![],
            flight_ports: vec![],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            adaptive,
            listen,
            dir: tempfile::tempdir().unwrap(),
        };
        let scheduler = cluster.spawn_scheduler("scheduler.log");
        cluster.processes.push(scheduler);
        let bind = format!("127.0.0.1:{port}");
        for executor in 0..2 {
            let work = cluster.dir.path().join(format!("executor-{executor}"));
            std::fs::create_dir_all(&work).unwrap();
            let (flight, grpc) = (free_port(), free_port());
            let (flight_port, grpc_port, tasks) =
                (flight.to_string(), grpc.to_string(), tasks.to_string());
            let args = [
                "cluster",
                "executor",
                "--scheduler",
                &bind,
                "--bind",
                listen,
                "--port",
                &flight_port,
                "--grpc-port",
                &grpc_port,
                "--tasks",
                &tasks,
                "--work-dir",
                work.to_str().unwrap(),
                "--heartbeat",
                "1s",
            ];
            let process = cluster.spawn(&args, &format!("executor-{executor}.log"));
            cluster.processes.push(process);
            wait_for_port(flight);
            cluster.work_dirs.push(work);
            cluster.flight_ports.push(flight);
        }
        cluster
    }

    /// `backfill ARGS` with the cluster's environment, its stderr into the log `log`.
    pub(crate) fn spawn(&self, args: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_backfill"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// A scheduler at the cluster's address, once it listens.
    fn spawn_scheduler(&self, log: &str) -> Child {
        let port = self.scheduler.rsplit(':').next().unwrap();
        let bind = format!("{}:{port}", self.listen);
        let mut args = vec![
            "cluster",
            "scheduler",
            "--bind",
            &bind,
            "--executor-timeout",
            "6s",
        ];
        if self.adaptive {
            args.push("--adaptive");
        }
        let scheduler = self.spawn(&args, log);
        wait_for_port(bind.rsplit(':').next().unwrap().parse().unwrap());
        scheduler
    }

    /// The jobs whose output each executor's work folder holds.
    fn jobs_per_executor(&self) -> Vec<std::collections::BTreeSet<String>> {
        let jobs = |dir: &PathBuf| {
            let entries = std::fs::read_dir(dir).into_iter().flatten();
            let names = entries.map(|e| e.unwrap().file_name().into_string().unwrap());
            names.collect()
        };
        self.work_dirs.iter().map(jobs).collect()
    }
}

impl LocalCluster {
    /// The rows each executor's log says its tasks wrote under `table`.
    fn rows_written_under(&self, table: &Path) -> Vec<u64> {
        let table = table.to_str().unwrap();
        (0..self.work_dirs.len())
            .map(|executor| {
                let log = self.dir.path().join(format!("executor-{executor}.log"));
                let log = std::fs::read_to_string(log).unwrap();
                log.lines()
                    .filter(|line| line.contains(table))
                    .filter_map(|line| {
                        let rows = line.split(": wrote ").nth(1)?.split(' ').next()?;
                        rows.parse::<u64>().ok()
                    })
                    .sum()
            })
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// How many rows the table at `table` holds.
async fn rows_in(table: &Path) -> u64 {
    let counted = query_table(table, "SELECT count(*) AS n FROM t").await;
    let count = counted[3].trim_matches(|c| c == '|' || c == ' ');
    count.parse().unwrap()
}

/// Runs `pipeline` over `range` locally and on `cluster`, each into a fresh table, and
/// returns both tables' rows under `sql`.
pub(crate) async fn local_and_on_cluster(
    cluster: &LocalCluster,
    pipeline: &str,
    range: &[&str],
    sql: &str,
) -> (Vec<String>, Vec<String>, Case) {
    let local = Case::new(pipeline);
    local.ok("run", range, 0);
    let remote = Case::new(pipeline);
    let on_cluster = [
        range,
        &["--cluster", &cluster.scheduler, "--concurrency", "2"],
    ]
    .concat();
    remote.ok("run", &on_cluster, 0);
    (local.stored(sql).await, remote.stored(sql).await, remote)
}

#[tokio::test]
async fn overwrite_merge_and_rebuild_on_a_cluster_equal_local_runs() {
    let cluster = LocalCluster::start();
    let days = ["--start", "2024-01-01", "--end", "2024-01-06"];
    for (pipeline, sql) in [
        ("daily_revenue", REVENUE_ROWS),
        ("orders_merge", "SELECT * FROM t ORDER BY order_id"),
        ("orders_rebuild", "SELECT * FROM t ORDER BY 1, 2, 3"),
    ] {
        let (local, remote, case) = local_and_on_cluster(&cluster, pipeline, &days, sql).await;
        assert!(!local.is_empty());
        assert_eq!(remote, local, "{pipeline} on the cluster");
        let history = case.json("history", &[], 0);
        assert_eq!(history[0]["cluster"], cluster.scheduler, "{history}");
        // The executors wrote every row themselves; none streamed back to be written here.
        let written: u64 = cluster.rows_written_under(&case.table).iter().sum();
        assert_eq!(
            written,
            rows_in(&case.table).await,
            "{pipeline}: rows the executors wrote"
        );
    }
    let jobs = cluster.jobs_per_executor();
    assert!(
        jobs.iter().all(|jobs| !jobs.is_empty()),
        "both executors ran slices' tasks: {jobs:?}"
    );
}

#[test]
fn an_unreachable_scheduler_stops_the_run_before_anything_is_written() {
    let case = Case::new("daily_revenue");
    let port = free_port();
    let address = format!("df://127.0.0.1:{port}");
    let out = backfill(&case.args("run", &["--keys", "2024-01-01", "--cluster", &address]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--cluster: {address}: the scheduler at 127.0.0.1:{port} does not answer"
        )),
        "{stderr}"
    );
    assert!(!Path::new(&case.table).exists(), "nothing was written");
    let out = backfill(&case.args("plan", &["--keys", "2024-01-01", "--cluster", &address]));
    assert_eq!(out.status.code(), Some(2), "plan as run");
}

#[tokio::test]
async fn an_executor_killed_mid_run_leaves_the_table_a_clean_run_gives() {
    let days = ["--start", "2024-01-01", "--end", "2024-01-14"];
    let all = "SELECT * FROM t ORDER BY order_id";
    let clean = Case::new("orders_clean");
    clean.ok("run", &days, 0);
    let expected = clean.stored(all).await;

    let mut cluster = LocalCluster::start();
    let case = Case::new("orders_clean");
    let on_cluster = [
        &days[..],
        &["--cluster", &cluster.scheduler, "--concurrency", "2"],
        &["--max-slices-per-commit", "1"],
    ]
    .concat();
    let mut run = Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(case.args("run", &on_cluster))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once the first slice is in the table, one executor dies without a word.
    let first = case.table.join("_delta_log/00000000000000000000.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !first.exists() {
        assert!(Instant::now() < deadline, "no slice was committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // How far the run got by then depends on the machine's speed, so nothing is asserted
    // on it: whatever the moment, the outcome must be exact. The kill sweep below places
    // kills at chosen moments.
    cluster.processes[1].kill().unwrap();
    // A job the scheduler loses would leave the run waiting forever: fail instead.
    let finished = ended_within(
        &mut run,
        Duration::from_secs(300),
        "the run after the executor's death",
    );
    // The run finishes on the executor left (the jobs running when it was lost are
    // cancelled and their slices computed again), or a slice fails; the same command
    // then finishes the job.
    if !finished.success() {
        let rerun = [&on_cluster[..], &["--retries", "2"]].concat();
        case.ok("run", &rerun, 0);
    }
    assert_eq!(case.stored(all).await, expected);
    let committed = case.committed_slices();
    let mut once = committed.clone();
    once.dedup();
    assert_eq!(committed, once, "no slice was committed twice");
    assert_eq!(committed.len(), 14);
}

#[tokio::test]
async fn rows_outside_the_slice_partition_on_a_cluster_commit_nothing_and_leave_no_files() {
    let cluster = LocalCluster::start();
    let case = crate::reaching_past_its_partition();
    let args = ["--keys", "2024-01-13", "--cluster", &cluster.scheduler];
    let run = case.json("run", &args, 1);
    crate::refused_outside_its_partition(&case, &run["outcomes"][0], "2024-01-13");
}

#[tokio::test]
async fn a_slice_failing_an_assertion_the_cluster_checks_commits_nothing_and_leaves_no_files() {
    let cluster = LocalCluster::start();
    let case = Case::new("orders_clean");
    case.edit_pipeline(
        "SELECT count(*) = 0 FROM slice WHERE amount < 0",
        "SELECT count(*) = 0 FROM slice WHERE amount > 0",
    );
    let args = ["--keys", "2024-01-13", "--cluster", &cluster.scheduler];
    let run = case.json("run", &args, 1);
    let outcome = &run["outcomes"][0];
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["fault"], "data", "{outcome}");
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains("`SELECT count(*) = 0 FROM slice WHERE amount > 0` returned false"),
        "{error}"
    );
    assert!(!case.table.join("_delta_log").exists());
    assert_eq!(case.data_files(), Vec::<String>::new());
    let written: u64 = cluster.rows_written_under(&case.table).iter().sum();
    assert!(
        written > 0,
        "the executors wrote the slice before it was checked"
    );
}

/// A chain whose downstream reads its upstream's Delta table, run slice by slice on the
/// cluster: the downstream's first slices plan before the upstream table exists, and a
/// downstream slice reads the files the upstream's log holds, never the replaced file
/// still in its folder.
#[tokio::test]
async fn a_chain_reading_a_delta_table_runs_on_a_cluster_and_equals_its_sql_over_the_raw_files() {
    use crate::projects::{
        committed, orders_daily_from_raw, ProjectCase, DAYS, ORDERS_DAILY_STORED,
    };
    let cluster = LocalCluster::start();
    let case = ProjectCase::new();
    let on_cluster = [
        &DAYS[..],
        &["--pipelines", "orders_clean", "--downstream"],
        &["--cluster", &cluster.scheduler, "--concurrency", "2"],
    ]
    .concat();
    let runs = case.run(&on_cluster, 0);
    assert_eq!(committed(&runs["orders_daily"]).len(), 3);
    let raw = case.path("fixtures/buckets/shop");
    let daily = case.table("orders_daily");
    let expected = query_sources(&raw, &orders_daily_from_raw("2024-01-03")).await;
    assert_eq!(query_table(&daily, ORDERS_DAILY_STORED).await, expected);
    let written: u64 = cluster.rows_written_under(&daily).iter().sum();
    assert_eq!(
        written,
        rows_in(&daily).await,
        "the executors wrote every row"
    );

    // One raw day rewritten: the upstream replaces its file for that day (the old one
    // stays in its folder), and the downstream day that reads it runs again.
    let day = case.path("fixtures/buckets/shop/orders/dt=2024-01-02");
    rewrite_parquet(&day, "SELECT * FROM day WHERE order_id % 3 <> 0").await;
    let runs = case.run(&on_cluster, 0);
    assert_eq!(committed(&runs["orders_clean"]), ["2024-01-02"]);
    assert_eq!(committed(&runs["orders_daily"]), ["2024-01-02"]);
    let clean_files = std::fs::read_dir(case.table("orders_clean").join("dt=2024-01-02"));
    assert_eq!(
        clean_files.unwrap().count(),
        2,
        "the replaced file is still there"
    );
    assert_eq!(
        query_table(&daily, ORDERS_DAILY_STORED).await,
        query_sources(&raw, &orders_daily_from_raw("2024-01-03")).await
    );
}

/// A Delta source whose files need more than Parquet to read (here deletion vectors) is
/// refused before anything runs, naming the source and what it uses.
#[test]
fn a_delta_source_with_deletion_vectors_is_refused_on_a_cluster_before_anything_runs() {
    let cluster = LocalCluster::start();
    let upstream = Case::new("orders_clean");
    upstream.ok("run", &["--keys", "2024-01-01"], 0);
    let upgrade = [
        r#"{"commitInfo":{"timestamp":1704067200000,"operation":"UPGRADE PROTOCOL"}}"#,
        r#"{"protocol":{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["deletionVectors"],"writerFeatures":["deletionVectors"]}}"#,
    ];
    let next = upstream.table.join("_delta_log/00000000000000000001.json");
    std::fs::write(next, upgrade.join("\n") + "\n").unwrap();

    let pipeline = crate::delta_sources::downstream_pipeline(&upstream);
    let pipeline = pipeline.to_str().unwrap();
    let args = ["run", pipeline, "--keys", "2024-01-01"];
    let out = backfill(&[&args[..], &["--cluster", &cluster.scheduler]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("source `orders`")
            && stderr.contains("the table uses deletionVectors, which a cluster does not read yet"),
        "{stderr}"
    );
    let written = upstream.scratch.files_under("warehouse/orders_daily");
    assert!(written.is_empty(), "nothing was written: {written:?}");
    // Here, where delta-rs reads deletion vectors, the same run goes ahead.
    backfill_ok(&args, 0);
}

/// With no history to estimate from, `plan --cluster` runs its sample slice on the
/// cluster, says so, and writes nothing.
#[tokio::test]
async fn plan_with_a_cluster_samples_a_slice_there_and_writes_nothing() {
    let cluster = LocalCluster::start();
    let case = Case::new("daily_revenue");
    let args = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-03",
        "--cluster",
        &cluster.scheduler,
    ];
    let plan = case.json("plan", &args, 0);
    let basis = &plan["estimate"]["basis"];
    assert_eq!(basis["from"], "sample", "{plan}");
    assert_eq!(basis["cluster"], cluster.scheduler, "{plan}");
    let jobs: std::collections::BTreeSet<String> =
        cluster.jobs_per_executor().into_iter().flatten().collect();
    assert_eq!(
        jobs.len(),
        1,
        "the sample ran on the cluster, as one job: {jobs:?}"
    );
    let text = case.ok("plan", &args, 0);
    let sampled = format!(
        "from a sample run of slice 2024-01-01 on {})",
        cluster.scheduler
    );
    assert!(text.contains(&sampled), "{text}");
    let written = case.data_files();
    assert!(written.is_empty(), "a plan writes nothing: {written:?}");
    // Here, the sample runs here.
    let here = case.json("plan", &args[..4], 0);
    assert_eq!(here["estimate"]["basis"].get("cluster"), None, "{here}");
}

/// When a process of the cluster dies, as seen from outside the run.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// A task has left output in an executor's work folder, and nothing is committed.
    BeforeTheFirstCommit,
    /// The table's log has this many commits.
    AfterCommits(usize),
}

/// Which process dies.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Executor,
    /// The scheduler, started again at once at the same address or, if not, only after
    /// the run has ended.
    Scheduler {
        back_at_once: bool,
    },
}

/// How long a run may take to end after a kill, and the same command after it to finish.
const AFTER_A_KILL: Duration = Duration::from_secs(180);

fn commits_in(table: &Path) -> usize {
    let log = std::fs::read_dir(table.join("_delta_log"))
        .into_iter()
        .flatten();
    let names = log.filter_map(|e| e.ok()?.file_name().into_string().ok());
    names.filter(|n| n.ends_with(".json")).count()
}

/// Waits for `child` to end, killing it and failing after `limit`.
pub(crate) fn ended_within(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One case of the kill sweep: who dies when, on executors of how many task slots, with
/// the scheduler planning adaptively or not.
#[derive(Debug, Clone, Copy)]
struct KillCase {
    moment: Moment,
    victim: Victim,
    tasks: usize,
    adaptive: bool,
}

/// Orders a day in the sweep's bucket: small slices, so that a run keeps many in flight
/// (eight per core), some of their stages on the executor that dies.
const SWEEP_ORDERS_PER_DAY: &str = "40000";

/// `case`'s bucket replaced by two weeks of `SWEEP_ORDERS_PER_DAY` orders a day (the
/// generator is deterministic: every case gets the same bucket).
fn with_sweep_bucket(case: &Case) {
    let bucket = case.scratch.path("buckets/shop");
    std::fs::remove_dir_all(&bucket).unwrap();
    let bucket = bucket.to_str().unwrap();
    let orders = ["--days", "14", "--orders-per-day", SWEEP_ORDERS_PER_DAY];
    backfill_ok(&[&["fixtures", bucket][..], &orders].concat(), 0);
}

/// `daily_revenue` (a join and an aggregation: jobs of several stages) over two weeks on
/// a fresh cluster, with a process killed with SIGKILL as `kill` says. The run must end
/// within a bound, and it (or the same command after it) must leave `expected`, each
/// slice committed once. Returns how long the run took to end after the kill, and
/// whether the same command was needed.
async fn kill_during_a_run(expected: &[String], kill: KillCase) -> (Duration, bool) {
    let what = format!("{kill:?}");
    let mut cluster = LocalCluster::start_sized(&[], kill.tasks, kill.adaptive);
    let case = Case::new("daily_revenue");
    with_sweep_bucket(&case);
    let args = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-14",
        "--cluster",
        &cluster.scheduler,
        "--max-slices-per-commit",
        "1",
    ];
    let run = || {
        let log = |name: &str| std::fs::File::create(case.scratch.path(name)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_backfill"))
            .args(case.args("run", &args))
            .stdout(log("run.out"))
            .stderr(log("run.err"))
            .spawn()
            .unwrap()
    };
    let mut first = run();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reached = match kill.moment {
            Moment::BeforeTheFirstCommit => {
                let working = cluster.jobs_per_executor().iter().any(|j| !j.is_empty());
                working && commits_in(&case.table) == 0
            }
            Moment::AfterCommits(n) => commits_in(&case.table) >= n,
        };
        if reached {
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "{what}: the run ended first"
        );
        assert!(Instant::now() < deadline, "{what}: the moment never came");
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = Instant::now();
    match kill.victim {
        Victim::Executor => cluster.processes[2].kill().unwrap(),
        Victim::Scheduler { back_at_once } => {
            cluster.processes[0].kill().unwrap();
            cluster.processes[0].wait().unwrap();
            if back_at_once {
                cluster.processes[0] = cluster.spawn_scheduler("scheduler-again.log");
            }
        }
    }
    let ended = ended_within(&mut first, AFTER_A_KILL, &format!("{what}: the run"));
    let took = killed.elapsed();
    if let Victim::Scheduler {
        back_at_once: false,
    } = kill.victim
    {
        cluster.processes[0] = cluster.spawn_scheduler("scheduler-again.log");
    }
    let again = !ended.success();
    if again {
        let mut second = run();
        let ended = ended_within(
            &mut second,
            AFTER_A_KILL,
            &format!("{what}: the same command"),
        );
        let err = std::fs::read_to_string(case.scratch.path("run.err")).unwrap();
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        assert!(
            ended.success(),
            "{what}: the same command failed: {tail:#?}"
        );
    }
    assert_eq!(case.stored(REVENUE_ROWS).await, expected, "{what}");
    let days: Vec<String> = (1..=14).map(|d| format!("2024-01-{d:02}")).collect();
    assert_eq!(
        case.committed_slices(),
        days,
        "{what}: each slice committed once"
    );
    (took, again)
}

/// Executors and the scheduler killed at observed moments of a run on a cluster: each
/// run ends within a bound (none waits forever) and it, or the same command after it,
/// leaves the table a clean run gives. Ballista's own recovery of such jobs hangs with
/// its adaptive planner (the adaptive case) and can count rows twice with its static one;
/// the scheduler cancels them first. `BACKFILL_KILL_SWEEP=N` adds more moments, repeats
/// every case N times and prints what it saw (the larger sweep, run by hand).
#[tokio::test]
async fn a_cluster_losing_an_executor_or_its_scheduler_at_any_moment_never_hangs_a_run() {
    let clean = Case::new("daily_revenue");
    with_sweep_bucket(&clean);
    clean.ok("run", &["--start", "2024-01-01", "--end", "2024-01-14"], 0);
    let expected = clean.stored(REVENUE_ROWS).await;
    let kill = |moment, victim, tasks, adaptive| KillCase {
        moment,
        victim,
        tasks,
        adaptive,
    };
    let executor = Victim::Executor;
    let scheduler = |back_at_once| Victim::Scheduler { back_at_once };
    let cases = [
        kill(Moment::BeforeTheFirstCommit, executor, 1, false),
        kill(Moment::AfterCommits(2), executor, 1, true),
        kill(Moment::AfterCommits(6), executor, 2, false),
        kill(Moment::AfterCommits(11), executor, 1, false),
        kill(Moment::AfterCommits(3), scheduler(true), 1, false),
        kill(Moment::AfterCommits(5), scheduler(false), 2, false),
    ];
    let repeats: usize = std::env::var("BACKFILL_KILL_SWEEP")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    // By hand, more moments too.
    let more = [
        kill(Moment::AfterCommits(1), executor, 1, false),
        kill(Moment::AfterCommits(4), executor, 2, true),
        kill(Moment::AfterCommits(9), executor, 2, false),
        kill(Moment::AfterCommits(13), executor, 2, false),
        kill(Moment::BeforeTheFirstCommit, scheduler(true), 1, false),
        kill(Moment::AfterCommits(10), scheduler(false), 1, false),
    ];
    let cases = match repeats {
        1 => cases.to_vec(),
        _ => [cases, more].concat(),
    };
    for _ in 0..repeats {
        for &case in &cases {
            let (took, again) = kill_during_a_run(&expected, case).await;
            if repeats > 1 {
                eprintln!(
                    "sweep: {case:?}: ended {took:?} after the kill, same command needed: {again}"
                );
            }
        }
    }
}
