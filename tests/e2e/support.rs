//! Helpers for the end-to-end tests: run the real `backfill` binary, read Delta tables
//! back, and compute what they should hold straight from the source Parquet.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn bucket() -> PathBuf {
    root().join("fixtures/buckets/shop")
}

/// Runs `backfill` with `args`.
pub fn backfill(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the backfill binary runs")
}

/// Runs `backfill` and returns stdout, failing the test with everything it said if the
/// exit code is not `code`.
pub fn backfill_ok(args: &[&str], code: i32) -> String {
    backfill_with(args, &[], code).0
}

/// Runs `backfill` with the environment variables `envs` set, and returns stdout and
/// stderr, failing the test with both if the exit code is not `code`.
pub fn backfill_with(args: &[&str], envs: &[(&str, &str)], code: i32) -> (String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args)
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("the backfill binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(code),
        "backfill {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// Runs `backfill` and sends it SIGINT as soon as a line of its stdout matches `when`;
/// returns its exit code and everything it printed.
pub fn interrupt_when(args: &[&str], when: impl Fn(&str) -> bool) -> (Option<i32>, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap);
    let mut output: Vec<String> = lines.by_ref().take_while(|line| !when(line)).collect();
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    output.extend(lines);
    (child.wait().unwrap().code(), output.join("\n"))
}

/// The run id a run's first line names: `run <id>: N slices`.
pub fn run_id_of(first_line: &str) -> String {
    let id = first_line
        .strip_prefix("run ")
        .and_then(|rest| rest.split(':').next());
    id.unwrap_or_else(|| panic!("not a run's first line: {first_line}"))
        .to_string()
}

/// A running `backfill` whose output lines are read as they come, so that a test can wait
/// for one, or for the end, with a deadline.
pub struct Watched {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    pub printed: Vec<String>,
}

impl Watched {
    /// Starts `command` with its standard output piped to the test.
    pub fn spawn(mut command: std::process::Command) -> Watched {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if sender.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Watched {
            child,
            lines,
            printed: vec![],
        }
    }

    /// Waits for a line that `wanted` accepts and returns it; fails after `limit`.
    pub fn line_where(
        &mut self,
        limit: std::time::Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no such line within {limit:?}: {}", self.printed.join("\n"));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the process `signal` (`TERM`, `KILL`, …), as `kill -SIGNAL PID` does.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {}", self.pid());
    }

    /// Ends the process (a server, say) and returns everything it printed.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The readers end with the process's output.
        self.printed.extend(self.lines.iter());
        self.printed.join("\n")
    }

    /// Waits for the process to end and returns its exit code and everything it printed;
    /// kills it and fails after `limit`.
    pub fn end_within(mut self, limit: std::time::Duration) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The readers end with the process's output.
                self.printed.extend(self.lines.iter());
                return (status.code(), self.printed.join("\n"));
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not end within {limit:?}: {}", self.printed.join("\n"));
            }
            self.printed.extend(self.lines.try_iter());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Watched {
    /// A process a test leaves behind (a server, say) ends with it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Days of orders a long run reads: enough that at one slice at a time it is still going
/// when a test acts on it (a cancel, a look at the run page).
pub const LONG_RUN_DAYS: u32 = 90;
/// The long run's selection and concurrency.
pub const LONG_RUN: [&str; 6] = [
    "--start",
    "2024-01-01",
    "--end",
    "2024-03-30",
    "--concurrency",
    "1",
];

/// Writes the long run's days of orders into `case`'s bucket.
pub fn long_run_bucket(case: &Case) {
    let spec = backfill_engine::fixtures::FixtureSpec {
        days: LONG_RUN_DAYS,
        ..backfill_engine::fixtures::FixtureSpec::bundled()
    };
    backfill_engine::fixtures::generate(&case.scratch.path("buckets/shop"), &spec).unwrap();
}

/// Starts the long run of `case` in another process and waits until it has committed a
/// slice: the running process and the run's id.
pub fn start_long_run(case: &Case) -> (Watched, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    command.args(case.args("run", &LONG_RUN));
    let mut running = Watched::spawn(command);
    let limit = std::time::Duration::from_secs(120);
    let id = run_id_of(&running.line_where(limit, |l| l.starts_with("run ")));
    running.line_where(limit, |l| l.contains(" committed "));
    (running, id)
}

/// A moment of a run, seen on disk, at which a kill test kills it.
#[derive(Debug, Clone, Copy)]
pub enum Moment {
    /// As soon as the process is started.
    Start,
    /// Once the table's folder holds this many finished Parquet files (staged or
    /// committed, merge's staging included).
    Files(usize),
    /// Once the Delta log holds this many commits.
    Commits(usize),
}

impl Moment {
    fn reached(self, table: &Path) -> bool {
        match self {
            Moment::Start => true,
            Moment::Files(n) => count_files(table, &|name| name.ends_with(".parquet")) >= n,
            Moment::Commits(n) => {
                let is_commit = |name: &str| name.len() == 25 && name.ends_with(".json");
                count_files(&table.join("_delta_log"), &is_commit) >= n
            }
        }
    }
}

fn count_files(folder: &Path, counts: &dyn Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() && entry.file_name() != "_delta_log" => {
                count_files(&entry.path(), counts)
            }
            Ok(kind) if kind.is_file() => entry.file_name().to_str().is_some_and(counts) as usize,
            _ => 0,
        })
        .sum()
}

/// Runs `backfill` and kills it with SIGKILL, so that no cleanup of any kind runs, as soon
/// as `moment` is seen in `table`'s folder. Panics if the run ends before that moment:
/// the kill would have tested nothing.
pub fn kill_at(args: &[&str], table: &Path, moment: Moment) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !moment.reached(table) {
        if let Some(status) = child.try_wait().unwrap() {
            // It may have got there and ended since the check above.
            assert!(
                moment.reached(table),
                "the run ended ({status}) before {moment:?}"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{moment:?} never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The run may have ended just after the moment; killing it then is harmless.
    let _ = child.kill();
    child.wait().unwrap();
}

/// The `status` of each slice of a `run --json`.
pub fn statuses(run: &serde_json::Value) -> Vec<String> {
    run["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap().to_string())
        .collect()
}

/// The state of each slice of `plan --json`'s slices.
pub fn plan_states(plan: &serde_json::Value) -> Vec<String> {
    let slices = plan.as_array().unwrap().iter();
    slices
        .map(|p| p["state"]["state"].as_str().unwrap().to_string())
        .collect()
}

pub fn json(args: &[&str], code: i32) -> serde_json::Value {
    let stdout = backfill_ok(args, code);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

pub async fn open(table: &Path) -> DeltaTable {
    let url = deltalake::ensure_table_uri(table.to_str().unwrap()).unwrap();
    deltalake::open_table(url).await.unwrap()
}

pub async fn version(table: &Path) -> u64 {
    open(table).await.version().unwrap()
}

/// Runs `sql` over the Delta table registered as `t`, and returns it as printed rows.
pub async fn query_table(table: &Path, sql: &str) -> Vec<String> {
    let table = open(table).await;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    rows(&ctx, sql).await
}

/// Runs `sql` over the fixture sources `orders`, `customers`, `events`, `signups` and `usage`,
/// registered with plain DataFusion, independently of the engine.
pub async fn query_sources(bucket: &Path, sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    for (name, partitions) in [
        ("orders", vec!["dt"]),
        ("customers", vec![]),
        ("events", vec!["dt", "hr"]),
        ("signups", vec!["tenant"]),
        ("usage", vec!["dt", "tenant", "region"]),
    ] {
        let url = ListingTableUrl::parse(format!("{}/{name}/", bucket.display())).unwrap();
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                partitions
                    .iter()
                    .map(|c| (c.to_string(), DataType::Utf8))
                    .collect(),
            );
        let schema = options.infer_schema(&ctx.state(), &url).await.unwrap();
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        ctx.register_table(name, Arc::new(ListingTable::try_new(config).unwrap()))
            .unwrap();
    }
    rows(&ctx, sql).await
}

pub async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let text = pretty_format_batches(&batches).unwrap().to_string();
    text.lines().map(str::to_string).collect()
}

/// Replaces the Parquet files of `folder` by one file holding `sql` over them (as `day`).
pub async fn rewrite_parquet(folder: &std::path::Path, sql: &str) {
    use datafusion::dataframe::DataFrameWriteOptions;
    // Plain Utf8, like the fixture files: not the view types DataFusion reads by default.
    let config = datafusion::prelude::SessionConfig::new().set_bool(
        "datafusion.execution.parquet.schema_force_view_types",
        false,
    );
    let ctx = datafusion::prelude::SessionContext::new_with_config(config);
    let options = datafusion::prelude::ParquetReadOptions::default();
    ctx.register_parquet("day", folder.to_str().unwrap(), options)
        .await
        .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    for entry in std::fs::read_dir(folder).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let written = ctx.read_batches(batches).unwrap();
    let file = folder.join("part-00000.parquet");
    written
        .write_parquet(
            file.to_str().unwrap(),
            DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .unwrap();
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A scratch folder holding a copy of the fixture bucket and the pipelines, so a test
/// can change sources and pipelines without touching the repository.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&bucket(), &dir.path().join("buckets/shop"));
        copy_tree(
            &root().join("fixtures/pipelines"),
            &dir.path().join("pipelines"),
        );
        Scratch { dir }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a pipeline file next to the copied ones and returns its path.
    pub fn pipeline(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(&format!("pipelines/{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Files in a folder tree, relative to it, sorted.
    pub fn files_under(&self, relative: &str) -> Vec<String> {
        let mut files = Vec::new();
        walk(&self.path(relative), &self.path(relative), &mut files);
        files.sort();
        files
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(base, &path, out);
        } else {
            out.push(path.strip_prefix(base).unwrap().display().to_string());
        }
    }
}

/// One test's setup: a scratch copy, one of its pipelines, and a fresh destination table.
pub struct Case {
    pub scratch: Scratch,
    pub pipeline: PathBuf,
    pub table: PathBuf,
}

impl Case {
    /// Uses `pipelines/<pipeline>.toml` of the scratch copy, writing to `warehouse/<pipeline>`.
    pub fn new(pipeline: &str) -> Self {
        let scratch = Scratch::new();
        let (pipeline, table) = (
            scratch.path(&format!("pipelines/{pipeline}.toml")),
            scratch.path(&format!("warehouse/{pipeline}")),
        );
        Case {
            scratch,
            pipeline,
            table,
        }
    }

    /// Replaces `from` with `to` in the pipeline file, which must contain it.
    pub fn edit_pipeline(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.pipeline).unwrap();
        assert!(
            text.contains(from),
            "{from:?} is not in {}",
            self.pipeline.display()
        );
        std::fs::write(&self.pipeline, text.replace(from, to)).unwrap();
    }

    /// `backfill <command> <pipeline> <rest> --destination <table>`.
    pub fn args<'a>(&'a self, command: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![command, self.pipeline.to_str().unwrap()];
        args.extend_from_slice(rest);
        args.extend_from_slice(&["--destination", self.table.to_str().unwrap()]);
        args
    }

    /// Runs a command and returns stdout, asserting the exit code.
    pub fn ok(&self, command: &str, rest: &[&str], code: i32) -> String {
        backfill_ok(&self.args(command, rest), code)
    }

    /// Runs a command with `--json` and parses stdout, asserting the exit code.
    pub fn json(&self, command: &str, rest: &[&str], code: i32) -> serde_json::Value {
        json(&self.args(command, &[rest, &["--json"]].concat()), code)
    }

    /// The slices of `plan --json`.
    pub fn plan(&self, rest: &[&str], code: i32) -> serde_json::Value {
        self.json("plan", rest, code)["slices"].clone()
    }

    /// Rows of `sql` over the destination table, registered as `t`.
    pub async fn stored(&self, sql: &str) -> Vec<String> {
        query_table(&self.table, sql).await
    }

    /// Rows of `sql` over the scratch copy's sources, computed without the engine.
    pub async fn expected(&self, sql: &str) -> Vec<String> {
        query_sources(&self.scratch.path("buckets/shop"), sql).await
    }

    /// Files in the destination folder other than the run history.
    pub fn data_files(&self) -> Vec<String> {
        let relative = self.table.strip_prefix(self.scratch.dir.path()).unwrap();
        let mut files = self.scratch.files_under(relative.to_str().unwrap());
        files.retain(|file| {
            ![
                "_backfill/runs/",
                "_backfill/summaries/",
                "_backfill/ledger/",
            ]
            .iter()
            .any(|history| file.starts_with(history))
        });
        files
    }

    pub async fn version(&self) -> u64 {
        version(&self.table).await
    }

    /// The HTML report of the newest run in the history, and that run's id.
    pub fn report_of_last_run(&self) -> (String, String) {
        let run = self.json("history", &[], 0)[0]["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        let page = self.scratch.path("report.html");
        self.ok("report", &[&run, "-o", page.to_str().unwrap()], 0);
        (std::fs::read_to_string(&page).unwrap(), run)
    }

    /// Every commit entry of the table's log, oldest first, as arrays of actions.
    pub fn commit_entries(&self) -> Vec<serde_json::Value> {
        let log = self.table.join("_delta_log");
        let mut names: Vec<_> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(log.join(name)).unwrap();
                let actions = text.lines().map(|l| serde_json::from_str(l).unwrap());
                serde_json::Value::Array(actions.collect())
            })
            .collect()
    }

    /// The data files the table's latest version holds, by the slice partition folder
    /// they lie in (`dt=2024-01-01/tenant=acme`, the first `depth` folders of each path).
    pub fn files_by_partition(
        &self,
        depth: usize,
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut active = std::collections::BTreeSet::new();
        for commit in self.commit_entries() {
            for action in commit.as_array().unwrap() {
                if let Some(path) = action.pointer("/add/path").and_then(|p| p.as_str()) {
                    active.insert(path.to_string());
                }
                if let Some(path) = action.pointer("/remove/path").and_then(|p| p.as_str()) {
                    active.remove(path);
                }
            }
        }
        let mut by_partition = std::collections::BTreeMap::<String, Vec<String>>::new();
        for path in active {
            let folders: Vec<&str> = path.split('/').take(depth).collect();
            by_partition
                .entry(folders.join("/"))
                .or_default()
                .push(path);
        }
        by_partition
    }

    /// The slice of every record the log's commits carry (a swap carries several),
    /// sorted: a slice committed twice is there twice.
    pub fn committed_slices(&self) -> Vec<String> {
        slices_committed_in(&self.commit_entries())
    }
}

/// The slice of every record the commit entries of a log carry (a swap or a group carries
/// several), sorted: a slice committed twice is there twice.
pub fn slices_committed_in(entries: &[serde_json::Value]) -> Vec<String> {
    let mut slices = Vec::new();
    for commit in entries {
        for action in commit.as_array().unwrap() {
            let Some(record) = action.pointer("/commitInfo/backfill") else {
                continue;
            };
            let records = match record.get("slices") {
                Some(several) => several.as_array().unwrap().clone(),
                None => vec![record.clone()],
            };
            slices.extend(
                records
                    .iter()
                    .map(|r| r["slice"].as_str().unwrap().to_string()),
            );
        }
    }
    slices.sort();
    slices
}
