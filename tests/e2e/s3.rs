//! The same scenarios against a real S3-compatible server: `moto` in server mode on
//! loopback, one server per test. `.ci/run` installs it; without it these tests fail with
//! a message saying how to install it, they are never skipped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::faults::{FaultProxy, Faults};
use crate::support::*;

/// Signs every request; moto accepts any key, and no output may ever show this one.
const SECRET: &str = "backfill-test-secret-9f3a1c";
/// Storage options that take the secret from a variable, as a pipeline file spells them.
const OPTIONS: &str = "storage_options = { aws_secret_access_key = \"${BACKFILL_S3_SECRET}\" }";
const ALL: &str = "SELECT * FROM t ORDER BY order_id";

/// A moto S3 server on a free loopback port, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        let binary = moto_server().unwrap_or_else(|| {
            panic!(
                "moto_server was not found. Install it with\n  python3 -m venv ~/.cache/backfill/moto-venv && ~/.cache/backfill/moto-venv/bin/pip install 'moto[server]'\n(as .ci/run does), or set BACKFILL_MOTO_SERVER to its path"
            )
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The standard AWS variables pointing at this server, but for the secret key: the
    /// pipelines' `storage_options` name it.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    fn bucket(&self, name: &str) -> Arc<AmazonS3> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key(SECRET)
            .with_bucket_name(name)
            .build()
            .unwrap();
        Arc::new(store)
    }

    /// Creates a bucket: a bare `PUT /<bucket>`, which moto accepts unsigned.
    fn create_bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        let request = format!(
            "PUT /{name} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// Uploads a local folder tree under `prefix` of `bucket`.
    async fn upload(&self, bucket: &str, local: &Path, prefix: &str) {
        let store = self.bucket(bucket);
        let mut files = Vec::new();
        collect_files(local, &mut files);
        for file in files {
            let relative = file.strip_prefix(local).unwrap().to_str().unwrap();
            let path = object_store::path::Path::from(format!("{prefix}/{relative}"));
            let bytes = std::fs::read(&file).unwrap();
            store.put(&path, PutPayload::from(bytes)).await.unwrap();
        }
    }

    /// Every object of a bucket, as text where it is text.
    async fn contents(&self, bucket: &str) -> String {
        use futures::TryStreamExt;
        let store = self.bucket(bucket);
        let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
        let mut all = String::new();
        for object in objects {
            let bytes = store.get(&object.location).await.unwrap().bytes().await;
            all.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
        }
        all
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("BACKFILL_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = Path::new(&home).join(".cache/backfill/moto-venv/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    let found = Command::new("moto_server").arg("--help").output();
    found.is_ok().then(|| PathBuf::from("moto_server"))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A TCP proxy on loopback in front of `upstream` that holds every chunk of the server's
/// answers for `delay`: slow storage, so that runs started together stay inside the same
/// slices. It forwards until the test process ends.
fn slow_proxy(upstream: &str, delay: Duration) -> String {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let upstream = upstream.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let (Ok(client), Ok(server)) = (client, TcpStream::connect(&upstream)) else {
                continue;
            };
            let (mut from_client, mut to_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_server);
                let _ = to_server.shutdown(Shutdown::Write);
            });
            let (mut from_server, mut to_client) = (server, client);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_server.read(&mut chunk) {
                    std::thread::sleep(delay);
                    if to_client.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
                let _ = to_client.shutdown(Shutdown::Write);
            });
        }
    });
    format!("http://{address}")
}

/// A scratch copy of the fixtures uploaded to a `source` bucket, a `warehouse` bucket for
/// tables, and a pipeline rewritten to read from S3.
struct S3Case {
    moto: Moto,
    scratch: Scratch,
    pipeline: PathBuf,
    table: String,
    /// Everything the commands printed, to look for secrets in.
    printed: std::cell::RefCell<String>,
}

impl S3Case {
    async fn new(pipeline: &str) -> S3Case {
        let moto = Moto::start();
        moto.create_bucket("source");
        moto.create_bucket("warehouse");
        let scratch = Scratch::new();
        moto.upload("source", &scratch.path("buckets/shop"), "shop")
            .await;
        // The secret comes from a variable the pipeline's storage options name.
        let text = std::fs::read_to_string(scratch.path(&format!("pipelines/{pipeline}.toml")))
            .unwrap()
            .replace(
                "url = \"../buckets/shop/orders\"",
                &format!("url = \"s3://source/shop/orders\"\n{OPTIONS}"),
            )
            .replace("[destination]\n", &format!("[destination]\n{OPTIONS}\n"));
        let pipeline = scratch.pipeline(&format!("{pipeline}_s3"), &text);
        S3Case {
            moto,
            scratch,
            pipeline,
            table: "s3://warehouse/tables/t".to_string(),
            printed: Default::default(),
        }
    }

    /// `backfill <command> <pipeline> <rest> --destination <table>` against the server.
    fn command(&self, command: &str, rest: &[&str]) -> Command {
        self.command_via(&self.moto.endpoint, command, rest)
    }

    /// The same, reaching the server at `endpoint` (a proxy in front of it).
    fn command_via(&self, endpoint: &str, command: &str, rest: &[&str]) -> Command {
        self.command_for(&self.pipeline, Some(&self.table), endpoint, command, rest)
    }

    /// `backfill <command> <pipeline> <rest> [--destination <table>]` against `endpoint`.
    fn command_for(
        &self,
        pipeline: &Path,
        table: Option<&str>,
        endpoint: &str,
        command: &str,
        rest: &[&str],
    ) -> Command {
        let mut args = vec![command, pipeline.to_str().unwrap()];
        args.extend_from_slice(rest);
        if let Some(table) = table {
            args.extend_from_slice(&["--destination", table]);
        }
        let mut backfill = Command::new(env!("CARGO_BIN_EXE_backfill"));
        backfill
            .args(&args)
            .envs(self.moto.env())
            .env("AWS_ENDPOINT_URL", endpoint)
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("BACKFILL_S3_SECRET", SECRET)
            // Debug logs too must never show the secret.
            .env("BACKFILL_LOG", "debug")
            .env("NO_COLOR", "1");
        backfill
    }

    fn backfill(&self, command: &str, rest: &[&str]) -> Output {
        let output = self.command(command, rest).output().unwrap();
        self.printed(&output);
        output
    }

    fn printed(&self, output: &Output) {
        let mut printed = self.printed.borrow_mut();
        printed.push_str(&String::from_utf8_lossy(&output.stdout));
        printed.push_str(&String::from_utf8_lossy(&output.stderr));
    }

    fn json(&self, command: &str, rest: &[&str], code: i32) -> serde_json::Value {
        let output = self.backfill(command, &[rest, &["--json"]].concat());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{stdout}\n{stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    async fn stored(&self, sql: &str) -> Vec<String> {
        self.stored_at(&self.table, sql).await
    }

    /// Rows of `sql` over the Delta table at `table` on the server, registered as `t`.
    async fn stored_at(&self, table: &str, sql: &str) -> Vec<String> {
        let options = [
            ("AWS_ENDPOINT_URL", self.moto.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let url = url::Url::parse(table).unwrap();
        let table = deltalake::open_table_with_storage_options(url, options)
            .await
            .unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        rows(&ctx, sql).await
    }

    /// The slice of every record in the log of the table at `table` on the server.
    async fn committed_slices(&self, table: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let url = url::Url::parse(table).unwrap();
        let store = self.moto.bucket(url.host_str().unwrap());
        let log = object_store::path::Path::from(format!("{}/_delta_log", url.path()));
        let mut objects: Vec<_> = store.list(Some(&log)).try_collect().await.unwrap();
        objects.retain(|o| o.location.as_ref().ends_with(".json"));
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let mut entries = Vec::new();
        for object in objects {
            let bytes = store.get(&object.location).await.unwrap().bytes().await;
            let text = String::from_utf8(bytes.unwrap().to_vec()).unwrap();
            let actions = text.lines().map(|l| serde_json::from_str(l).unwrap());
            entries.push(serde_json::Value::Array(actions.collect()));
        }
        slices_committed_in(&entries)
    }

    async fn expected(&self, sql: &str) -> Vec<String> {
        query_sources(&self.scratch.path("buckets/shop"), sql).await
    }

    /// No command printed the secret, and nothing in the table's bucket holds it.
    async fn assert_secret_never_shown(&self) {
        assert!(
            !self.printed.borrow().contains(SECRET),
            "a command printed the secret"
        );
        assert!(!self.printed.borrow().is_empty());
        let stored = self.moto.contents("warehouse").await;
        assert!(stored.contains("\"backfill\""), "the log was read");
        assert!(
            !stored.contains(SECRET),
            "the secret was written next to the table"
        );
    }
}

/// What `orders_clean` should leave for the days up to `last`, from the sources.
async fn expected_clean(case: &S3Case, last: &str) -> Vec<String> {
    case.expected(&format!(
        "SELECT order_id, customer_id, amount, upper(status) AS status, ordered_at, dt
         FROM orders WHERE dt <= '{last}' ORDER BY order_id"
    ))
    .await
}

#[tokio::test]
async fn s3_overwrite_with_concurrent_commits_matches_the_local_run() {
    let case = S3Case::new("orders_clean").await;
    let range = ["--start", "2024-01-01", "--end", "2024-01-06"];
    let plan = case.json("plan", &range, 0);
    assert_eq!(plan["estimate"]["files"], 6);
    let estimated_bytes = plan["estimate"]["bytes"].as_u64().unwrap();
    let over_budget = case.backfill("run", &[&range[..], &["--max-slices", "5"]].concat());
    assert_eq!(over_budget.status.code(), Some(2));

    let run = case.json("run", &[&range[..], &["--concurrency", "6"]].concat(), 0);
    assert_eq!(statuses(&run), ["committed"; 6], "{run:#}");
    assert_eq!(
        case.stored(ALL).await,
        expected_clean(&case, "2024-01-06").await
    );

    let plan = case.json("plan", &[&range[..], &["--force"]].concat(), 0);
    let read: u64 = plan["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["state"]["committed"]["record"]["source_bytes"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        read, estimated_bytes,
        "the run read exactly the estimated bytes"
    );

    // Done is read back from the log on S3: the same command does nothing.
    let rerun = case.json("run", &range, 0);
    assert_eq!(statuses(&rerun), ["skipped"; 6]);
    let history = case.json("history", &[], 0);
    assert_eq!(history.as_array().unwrap().len(), 2);

    // Pre-flight on S3: days past the data are refused before anything runs.
    let beyond = case.backfill("run", &["--start", "2024-01-14", "--end", "2024-01-16"]);
    let stderr = String::from_utf8_lossy(&beyond.stderr);
    assert_eq!(beyond.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("have no source data: 2024-01-15, 2024-01-16 (orders)"),
        "{stderr}"
    );

    // The run page reads the runs, plans and status on S3, and never shows the storage
    // options' secret.
    let mut server = Watched::spawn(case.command("serve", &["--bind", "127.0.0.1:0"]));
    let line = server.line_where(Duration::from_secs(60), |l| l.starts_with("serving on "));
    let address = line
        .trim_start_matches("serving on http://")
        .trim_end_matches('/');
    let runs = crate::serve::http(address, "GET", "/api/runs", &[]);
    assert_eq!(runs.status, 200, "{}", runs.body);
    let listed: serde_json::Value = serde_json::from_str(&runs.body).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed:#}");
    let id = listed[0]["run_id"].as_str().unwrap();
    for path in [
        "/".to_string(),
        format!("/api/runs/orders_clean/{id}"),
        format!("/runs/orders_clean/{id}"),
        "/api/plan?start=2024-01-01&end=2024-01-14".to_string(),
        "/launch?start=2024-01-01&end=2024-01-14&show=plan".to_string(),
        "/api/status".to_string(),
        "/status".to_string(),
    ] {
        let answer = crate::serve::http(address, "GET", &path, &[]);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        case.printed.borrow_mut().push_str(&answer.body);
    }
    // Its own output (debug logs included) too.
    case.printed.borrow_mut().push_str(&server.stop());

    case.assert_secret_never_shown().await;
}

/// Storage that fails a fifth of all requests, from the first listing of start-up to the
/// last commit (a reset after the request took effect, a 500 after it took effect, a 503
/// before it is forwarded): `plan`, `run` and the rerun all exit 0, and every table is
/// exactly the one healthy storage gives, each slice committed once.
#[tokio::test]
async fn s3_a_fifth_of_requests_reset_or_failing_leaves_every_run_exact() {
    let case = S3Case::new("orders_clean").await;
    let range = ["--start", "2024-01-01", "--end", "2024-01-14"];
    let days: Vec<String> = (1..=14).map(|d| format!("2024-01-{d:02}")).collect();
    let expected = expected_clean(&case, "2024-01-14").await;
    for seed in [1, 2, 3] {
        let proxy = FaultProxy::start(&case.moto.endpoint, Faults::evenly(0.2, seed));
        let table = format!("s3://warehouse/faults/{seed}");
        let through_proxy = |command: &str| {
            let rest = [&range[..], &["--json"]].concat();
            let mut command = case.command_for(
                &case.pipeline,
                Some(&table),
                &proxy.endpoint,
                command,
                &rest,
            );
            let output = command.output().unwrap();
            case.printed(&output);
            let (stdout, stderr) = (
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            assert_eq!(
                output.status.code(),
                Some(0),
                "seed {seed}: {stdout}\n{tail}"
            );
            serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
        };
        let plan = through_proxy("plan");
        assert_eq!(
            plan_states(&plan["slices"]),
            vec!["missing"; 14],
            "seed {seed}"
        );
        let run = through_proxy("run");
        assert_eq!(
            statuses(&run),
            vec!["committed"; 14],
            "seed {seed}: {run:#}"
        );
        let rerun = through_proxy("run");
        assert_eq!(statuses(&rerun), vec!["skipped"; 14], "seed {seed}");

        let (requests, resets, errors, busy) = proxy.seen();
        assert!(
            resets > 0 && errors > 0 && busy > 0,
            "seed {seed}: {requests} requests, {resets} resets, {errors} 500s, {busy} 503s"
        );
        assert_eq!(case.stored_at(&table, ALL).await, expected, "seed {seed}");
        assert_eq!(case.committed_slices(&table).await, days, "seed {seed}");
    }
    case.assert_secret_never_shown().await;
}

#[tokio::test]
async fn s3_two_processes_committing_at_once_both_land() {
    let case = S3Case::new("orders_clean").await;
    // Two runs race to create the table and then to commit their slices: conditional
    // puts on S3 let exactly one writer have each version, and the other retries on top.
    let spawn = |start: &str, end: &str| {
        let mut command = case.command("run", &["--start", start, "--end", end]);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().unwrap()
    };
    let (first, second) = (
        spawn("2024-01-01", "2024-01-04"),
        spawn("2024-01-05", "2024-01-08"),
    );
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        case.printed(&output);
        let printed = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{printed}");
        assert!(printed.contains("4 committed"), "{printed}");
    }
    assert_eq!(
        case.stored(ALL).await,
        expected_clean(&case, "2024-01-08").await
    );
    case.assert_secret_never_shown().await;
}

/// The same command started twice as real processes without the pipeline's lease, over
/// storage slow enough that both read the log before either commits and then race on
/// every slice: each slice is committed by one process, and the other says `committed
/// meanwhile`, for every strategy that commits slice by slice.
#[tokio::test]
async fn s3_the_same_command_started_twice_without_the_lease_commits_each_slice_once() {
    for (pipeline, stored, expected) in [
        ("orders_clean", "SELECT order_id, dt FROM t ORDER BY order_id", "SELECT order_id, dt FROM orders WHERE dt <= '2024-01-02' ORDER BY order_id"),
        ("orders_append", "SELECT order_id FROM t ORDER BY order_id", "SELECT order_id FROM orders WHERE status = 'shipped' AND dt <= '2024-01-02' ORDER BY order_id"),
        ("orders_merge", "SELECT order_id, amount, dt FROM t ORDER BY order_id", "SELECT order_id, amount, dt FROM orders WHERE dt <= '2024-01-02' ORDER BY order_id"),
    ] {
        let case = S3Case::new(pipeline).await;
        let slow = slow_proxy(&case.moto.endpoint, Duration::from_millis(40));
        let range = ["--start", "2024-01-01", "--end", "2024-01-02", "--concurrency", "1", "--json", "--no-lease"];
        let spawn = || {
            let mut command = case.command_via(&slow, "run", &range);
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            command.spawn().unwrap()
        };
        let children = [spawn(), spawn()];
        let mut runs = Vec::new();
        for child in children {
            let output = child.wait_with_output().unwrap();
            case.printed(&output);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(0), "{pipeline}: {stdout}\n{stderr}");
            runs.push(serde_json::from_str::<serde_json::Value>(&stdout).unwrap());
        }
        let (first, second) = (statuses(&runs[0]), statuses(&runs[1]));
        for (a, b) in first.iter().zip(&second) {
            let mut pair = [a.as_str(), b.as_str()];
            pair.sort();
            assert_eq!(pair, ["committed", "committed_meanwhile"], "{pipeline}: {first:?} {second:?}");
        }
        assert_eq!(case.stored(stored).await, case.expected(expected).await, "{pipeline}");
        case.assert_secret_never_shown().await;
    }
}

#[tokio::test]
async fn s3_merge_upserts_without_duplicates() {
    let case = S3Case::new("orders_merge").await;
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    case.json("run", &range, 0);
    let forced = case.json("run", &[&range[..], &["--force"]].concat(), 0);
    assert_eq!(statuses(&forced), ["committed"; 3]);
    let stored = case
        .stored("SELECT order_id, customer_id, amount, status, dt FROM t ORDER BY order_id")
        .await;
    let expected = case
        .expected(
            "SELECT order_id, customer_id, amount, status, dt FROM orders
             WHERE dt <= '2024-01-03' ORDER BY order_id",
        )
        .await;
    assert_eq!(stored, expected, "upserted twice, stored once");
    let staging = case.moto.bucket("warehouse");
    let leftovers = {
        use futures::TryStreamExt;
        let prefix = object_store::path::Path::from("tables/t/_backfill/staging");
        staging
            .list(Some(&prefix))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    };
    assert!(
        leftovers.is_empty(),
        "merge staging is cleaned up: {leftovers:?}"
    );
    case.assert_secret_never_shown().await;
}

#[tokio::test]
async fn s3_rebuild_waits_for_a_failed_slice_then_resumes_and_swaps_once() {
    let case = S3Case::new("orders_rebuild").await;
    let range = ["--start", "2024-01-07", "--end", "2024-01-10"];
    // 2024-01-09's null rate fails the rebuild's check: nothing is swapped.
    let run = case.json("run", &range, 1);
    assert_eq!(statuses(&run), ["staged", "staged", "failed", "staged"]);
    assert_eq!(run["rebuild"]["swap"], "waiting");

    // Fix that day's data in the bucket; the rerun computes only it, then swaps.
    let day = case.scratch.path("buckets/shop/orders/dt=2024-01-09");
    rewrite_parquet(&day, "SELECT * FROM day WHERE amount IS NOT NULL").await;
    let store = case.moto.bucket("source");
    store
        .delete(&"shop/orders/dt=2024-01-09/part-00000.parquet".into())
        .await
        .unwrap();
    case.moto
        .upload("source", &day, "shop/orders/dt=2024-01-09")
        .await;
    let run = case.json("run", &range, 0);
    assert_eq!(run["rebuild"]["swap"], "swapped", "{run:#}");
    assert_eq!(run["rebuild"]["version"], 0, "one swap created the table");
    let shown = case.json("show", &[run["run_id"].as_str().unwrap()], 0);
    let reused = shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reused"] == true)
        .count();
    assert_eq!(reused, 3);
    let expected = case
        .expected(
            "SELECT order_id, customer_id, amount, CAST(round(amount * 100) AS BIGINT) AS amount_cents,
                    upper(status) AS status, ordered_at, dt
             FROM orders WHERE dt BETWEEN '2024-01-07' AND '2024-01-10' ORDER BY order_id",
        )
        .await;
    assert_eq!(case.stored(ALL).await, expected);
    case.assert_secret_never_shown().await;
}

#[tokio::test]
async fn s3_a_chain_runs_in_staging_and_is_promoted_to_production_on_s3() {
    let case = S3Case::new("orders_clean").await;
    let clean = std::fs::read_to_string(&case.pipeline).unwrap().replace(
        "../../warehouse/orders_clean",
        "s3://warehouse/prod/orders_clean",
    );
    case.scratch.pipeline("orders_clean_s3", &clean);
    // orders_daily names orders_clean: it reads its table wherever the environment puts
    // it, with its storage options.
    let daily = std::fs::read_to_string(case.scratch.path("pipelines/orders_daily.toml"))
        .unwrap()
        .replace(
            "url = \"../../warehouse/orders_clean\"\nformat = \"delta\"",
            "pipeline = \"orders_clean\"",
        )
        .replace(
            "../../warehouse/orders_daily",
            "s3://warehouse/prod/orders_daily",
        )
        .replace("[destination]\n", &format!("[destination]\n{OPTIONS}\n"));
    case.scratch.pipeline("orders_daily_s3", &daily);
    let project = case.scratch.path("backfill.toml");
    std::fs::write(
        &project,
        "pipelines = [\"pipelines/orders_clean_s3.toml\", \"pipelines/orders_daily_s3.toml\"]\n\
         [environments.prod]\nroot = \"s3://warehouse/prod\"\n\
         [environments.staging]\nroot = \"s3://warehouse/staging\"\n",
    )
    .unwrap();
    let range = ["--start", "2024-01-01", "--end", "2024-01-03"];
    let command = |command: &str, env: &str| {
        let place = if command == "promote" {
            "--from"
        } else {
            "--env"
        };
        let rest = [&range[..], &[place, env, "--json"]].concat();
        let endpoint = &case.moto.endpoint;
        let output = case
            .command_for(&project, None, endpoint, command, &rest)
            .output()
            .unwrap();
        case.printed(&output);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let committed = |summary: &serde_json::Value| -> Vec<usize> {
        let runs = summary["runs"].as_array().unwrap();
        runs.iter()
            .map(|run| statuses(run).iter().filter(|s| *s == "committed").count())
            .collect()
    };
    let aggregate = "SELECT dt, status, count(*) AS orders, \
        count(DISTINCT customer_id) AS customers, round(sum(amount), 2) AS revenue \
        FROM t GROUP BY dt, status ORDER BY dt, status";
    let stored = "SELECT dt, status, orders, customers, round(revenue, 2) AS revenue \
        FROM t ORDER BY dt, status";

    assert_eq!(committed(&command("run", "staging")), [3, 3]);
    assert_eq!(
        case.stored_at("s3://warehouse/staging/orders_daily", stored)
            .await,
        case.stored_at("s3://warehouse/staging/orders_clean", aggregate)
            .await
    );
    let production = command("plan", "prod");
    for pipeline in production["pipelines"].as_array().unwrap() {
        assert_eq!(
            plan_states(&pipeline["slices"]),
            ["missing"; 3],
            "{production}"
        );
    }

    // Promoted, not recomputed: the files are copied within the bucket, and production
    // then has every slice done.
    let promoted = command("promote", "staging");
    for pipeline in promoted["pipelines"].as_array().unwrap() {
        let slices = pipeline["slices"].as_array().unwrap();
        assert!(
            slices.iter().all(|s| s["promotion"] == "committed"),
            "{promoted}"
        );
    }
    assert_eq!(
        case.stored_at("s3://warehouse/prod/orders_daily", stored)
            .await,
        case.stored_at("s3://warehouse/staging/orders_daily", stored)
            .await
    );
    assert_eq!(
        case.stored_at("s3://warehouse/prod/orders_daily", stored)
            .await,
        case.stored_at("s3://warehouse/prod/orders_clean", aggregate)
            .await
    );
    assert_eq!(committed(&command("run", "prod")), [0, 0]);
    case.assert_secret_never_shown().await;
}

#[cfg(feature = "cluster")]
#[tokio::test]
async fn s3_slices_computed_on_a_cluster_read_and_write_s3_and_a_delta_source_there() {
    let case = S3Case::new("orders_clean").await;
    // The executors reach the server with credentials of their own, from their
    // environment, as they would in a deployment.
    let mut env = case.moto.env();
    env.push(("AWS_SECRET_ACCESS_KEY", SECRET.to_string()));
    let cluster = crate::cluster::LocalCluster::start_with(&env);
    let range = ["--start", "2024-01-01", "--end", "2024-01-04"];
    let on_cluster = [&range[..], &["--cluster", &cluster.scheduler]].concat();
    let run = case.json("run", &on_cluster, 0);
    assert_eq!(statuses(&run), ["committed"; 4], "{run:#}");
    assert_eq!(
        case.stored(ALL).await,
        expected_clean(&case, "2024-01-04").await
    );

    // A pipeline reading that table as a Delta source, on the cluster too.
    let daily = std::fs::read_to_string(case.scratch.path("pipelines/orders_daily.toml"))
        .unwrap()
        .replace(
            "url = \"../../warehouse/orders_clean\"",
            &format!("url = \"{}\"\n{OPTIONS}", case.table),
        )
        .replace("[destination]\n", &format!("[destination]\n{OPTIONS}\n"));
    let daily = case.scratch.pipeline("orders_daily_s3", &daily);
    let aggregates = "s3://warehouse/tables/daily";
    let endpoint = &case.moto.endpoint;
    let output = case
        .command_for(&daily, Some(aggregates), endpoint, "run", &on_cluster)
        .output()
        .unwrap();
    case.printed(&output);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let aggregate = "SELECT dt, status, count(*) AS orders, \
        count(DISTINCT customer_id) AS customers, round(sum(amount), 2) AS revenue \
        FROM t GROUP BY dt, status ORDER BY dt, status";
    let stored = "SELECT dt, status, orders, customers, round(revenue, 2) AS revenue \
        FROM t ORDER BY dt, status";
    assert_eq!(
        case.stored_at(aggregates, stored).await,
        case.stored(aggregate).await
    );
    case.assert_secret_never_shown().await;
}

/// `backfill cancel` from another process stops a run on S3 within seconds, as a first
/// Ctrl-C does, and the same command finishes the job.
#[tokio::test]
async fn s3_cancel_from_another_process_stops_the_run_and_the_same_command_finishes() {
    let case = S3Case::new("orders_clean").await;
    // Slow storage keeps the run going while the cancel is written and noticed.
    let slow = slow_proxy(&case.moto.endpoint, Duration::from_millis(40));
    let range = [
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-14",
        "--concurrency",
        "1",
    ];
    let mut running = Watched::spawn(case.command_via(&slow, "run", &range));
    let first = running.line_where(Duration::from_secs(120), |l| l.starts_with("run "));
    let id = run_id_of(&first);
    running.line_where(Duration::from_secs(120), |l| l.contains(" committed "));
    let cancel = case.backfill("cancel", &[&id]);
    let said = String::from_utf8_lossy(&cancel.stdout);
    assert_eq!(cancel.status.code(), Some(0), "{said}");
    assert!(said.contains("asked to stop"), "{said}");

    let (code, printed) = running.end_within(Duration::from_secs(120));
    case.printed.borrow_mut().push_str(&printed);
    assert_eq!(code, Some(130), "{printed}");
    assert!(
        printed.contains("stopped. committed: 2024-01-01"),
        "{printed}"
    );
    assert!(printed.contains("not started: "), "{printed}");
    let committed = case.committed_slices(&case.table).await;
    assert!((1..14).contains(&committed.len()), "{committed:?}");

    case.json("run", &range, 0);
    assert_eq!(
        case.stored(
            "SELECT order_id, customer_id, amount, status, ordered_at, dt FROM t ORDER BY order_id"
        )
        .await,
        expected_clean(&case, "2024-01-14").await
    );
    let days: Vec<String> = (1..=14).map(|d| format!("2024-01-{d:02}")).collect();
    assert_eq!(
        case.committed_slices(&case.table).await,
        days,
        "each slice committed once"
    );
    case.assert_secret_never_shown().await;
}

/// The lease relies on S3's create-only-if-absent (`If-None-Match: *`): of runs taking a
/// pipeline's lease at the same instant, exactly one gets it, and the others are told who.
#[tokio::test]
async fn s3_of_runs_taking_a_pipelines_lease_at_once_exactly_one_gets_it() {
    use backfill_engine::history::{History, Taking};
    let moto = Moto::start();
    moto.create_bucket("warehouse");
    let history = History::new(moto.bucket("warehouse"));
    let now = chrono::Utc::now();
    let runs: Vec<String> = (0..8).map(|i| format!("run-{i}")).collect();
    let takes = runs
        .iter()
        .map(|run| history.take_lease("orders_clean", run, now));
    let taken = futures::future::join_all(takes).await;
    let mut holders = Vec::new();
    let mut leases = Vec::new();
    for taking in taken {
        match taking.unwrap() {
            Taking::Taken(lease, None) => leases.push(lease),
            Taking::Taken(_, Some(expired)) => panic!("nothing had expired: {expired:?}"),
            Taking::Held(by) => holders.push(by.run_id),
        }
    }
    assert_eq!(leases.len(), 1, "exactly one takes it");
    assert_eq!(holders.len(), 7);
    assert!(
        holders.windows(2).all(|w| w[0] == w[1]),
        "all name the one holder: {holders:?}"
    );
    leases.pop().unwrap().release().await.unwrap();
    let next = history
        .take_lease("orders_clean", "run-8", now)
        .await
        .unwrap();
    assert!(
        matches!(next, Taking::Taken(_, None)),
        "released: taken at once"
    );
}
