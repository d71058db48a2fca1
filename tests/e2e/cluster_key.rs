//! A cluster with a key or certificates: its processes (scheduler, executors, the runs
//! that drive it) take only each other, over TLS. A driver, an executor or any client
//! without the key, or with another, or without a certificate the cluster's authority
//! signed, is refused and logged, and a process that would listen beyond loopback
//! without a key or certificates does not start.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::{ended_within, free_port, LocalCluster, REVENUE_ROWS};
use crate::support::*;

const KEY_VARIABLE: &str = "BACKFILL_CLUSTER_KEY";
const KEY: &str = "every-process-of-this-cluster-has-it";
const OTHER_KEY: &str = "a-key-of-some-other-cluster-entirely";

const DAYS: [&str; 4] = ["--start", "2024-01-01", "--end", "2024-01-04"];

fn keyed_cluster(listen: &'static str) -> LocalCluster {
    LocalCluster::start_listening(&[(KEY_VARIABLE, KEY.to_string())], listen)
}

/// A file holding `key`, under `dir`.
fn key_file(dir: &Path, key: &str) -> PathBuf {
    let file = dir.join(format!("key-{}", key.len()));
    std::fs::write(&file, format!("{key}\n")).unwrap();
    file
}

/// Everything the cluster's processes have logged so far.
fn logs(cluster: &LocalCluster) -> String {
    let logs = std::fs::read_dir(cluster.dir.path()).unwrap();
    let logs = logs.map(|entry| entry.unwrap().path());
    let logs = logs.filter(|path| path.extension().is_some_and(|e| e == "log"));
    logs.map(|log| std::fs::read_to_string(log).unwrap())
        .collect()
}

/// The lines of the cluster's logs that contain `needle`, once `count` of them do (a
/// server logs a refusal as its client sees the connection end, not before).
fn logged(cluster: &LocalCluster, needle: &str, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logs = logs(cluster);
        let lines: Vec<String> = logs
            .lines()
            .filter(|line| line.contains(needle))
            .map(String::from)
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {count} lines with {needle:?} in the logs:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `backfill ARGS` with no key in the environment: its exit code and stderr.
fn keyless(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args)
        .env_remove(KEY_VARIABLE)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code(), stderr)
}

/// `run` of `case` over `DAYS` on the cluster at `url`, with `more` arguments and no
/// key in the environment: its exit code and stderr.
fn run_on(url: &str, case: &Case, more: &[&str]) -> (Option<i32>, String) {
    let args = [&DAYS[..], &["--cluster", url], more].concat();
    keyless(&case.args("run", &args))
}

/// `run_on` with `key` from a file, or none.
fn run_with_key(cluster: &LocalCluster, case: &Case, key: Option<&str>) -> (Option<i32>, String) {
    let file = key.map(|key| key_file(case.scratch.path("").as_path(), key));
    let more = match &file {
        Some(file) => vec!["--cluster-key-file", file.to_str().unwrap()],
        None => vec![],
    };
    run_on(&cluster.scheduler, case, &more)
}

#[tokio::test]
async fn a_keyed_cluster_listening_on_every_address_computes_the_table_a_local_run_does() {
    let cluster = keyed_cluster("0.0.0.0");
    let local = Case::new("daily_revenue");
    local.ok("run", &DAYS, 0);
    let remote = Case::new("daily_revenue");
    // `df+tls://` asks for TLS, which the key gives.
    let file = key_file(remote.scratch.path("").as_path(), KEY);
    let url = cluster.scheduler.replace("df://", "df+tls://");
    let (code, stderr) = run_on(
        &url,
        &remote,
        &["--cluster-key-file", file.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let rows = local.stored(REVENUE_ROWS).await;
    assert!(rows.len() > 4, "{rows:?}");
    assert_eq!(remote.stored(REVENUE_ROWS).await, rows);
    let logs = logs(&cluster);
    assert!(!logs.contains(KEY), "a process printed the key:\n{logs}");
    assert!(!stderr.contains(KEY), "the run printed the key:\n{stderr}");
}

#[test]
fn drivers_without_the_key_or_with_another_are_refused_before_anything_is_written() {
    let cluster = keyed_cluster("127.0.0.1");
    let scheduler = cluster.scheduler.trim_start_matches("df://").to_string();
    for (key, cause) in [
        (
            None,
            "requires the cluster key (it serves TLS to members only), and this process has none",
        ),
        (
            Some(OTHER_KEY),
            "holds another cluster key than this process",
        ),
    ] {
        let case = Case::new("daily_revenue");
        let (code, stderr) = run_with_key(&cluster, &case, key);
        assert_eq!(code, Some(2), "{stderr}");
        let expected = format!(
            "error: --cluster: {}: the scheduler at {scheduler} {cause}",
            cluster.scheduler
        );
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(!case.table.exists(), "nothing was written");
    }
    let refusal = "scheduler: refused a connection from 127.0.0.1:";
    assert_eq!(logged(&cluster, refusal, 2).len(), 2);
    let logs = logs(&cluster);
    assert!(!logs.contains(OTHER_KEY) && !logs.contains(KEY), "{logs}");
}

/// What the server on `port` answers a client in the clear that opens an HTTP/2
/// connection, as Ballista's clients without a key do: the bytes it sent before it
/// closed the connection, or within 10 s.
fn answer_in_the_clear(port: u16) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The connection preface, then an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn clients_in_the_clear_are_refused_by_the_scheduler_and_the_executors() {
    let cluster = keyed_cluster("127.0.0.1");
    let scheduler: u16 = cluster
        .scheduler
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let executor = cluster.flight_ports[0];
    for port in [scheduler, executor] {
        let answer = answer_in_the_clear(port);
        // An HTTP/2 server's first frame is its SETTINGS (type 4, fourth byte); a TLS
        // server refusing the connection sends at most an alert record (type 21).
        assert!(
            answer.is_empty() || answer[0] == 21,
            "port {port} answered a client without the key: {answer:?}"
        );
    }
    for server in ["scheduler", "executor"] {
        let refused = format!("{server}: refused a connection from 127.0.0.1:");
        let line = &logged(&cluster, &refused, 1)[0];
        assert!(
            line.ends_with("it does not speak TLS: it has no cluster key"),
            "{line}"
        );
    }
}

/// `cluster executor` working for `cluster`'s scheduler with `key` or none: its exit
/// code and stderr, once it ends (it must, within 30 s).
fn executor_with(cluster: &LocalCluster, key: Option<&str>) -> (Option<i32>, String) {
    let scheduler = cluster.scheduler.trim_start_matches("df://").to_string();
    let (port, grpc_port) = (free_port().to_string(), free_port().to_string());
    let mut command = Command::new(env!("CARGO_BIN_EXE_backfill"));
    command
        .args(["cluster", "executor", "--scheduler", &scheduler])
        .args(["--port", &port, "--grpc-port", &grpc_port])
        .env_remove(KEY_VARIABLE)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(key) = key {
        command.env(KEY_VARIABLE, key);
    }
    let mut executor = command.spawn().unwrap();
    let status = ended_within(&mut executor, Duration::from_secs(30), "the executor");
    let mut stderr = String::new();
    executor
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn an_executor_with_another_key_or_none_cannot_join() {
    let cluster = keyed_cluster("127.0.0.1");
    let scheduler = cluster.scheduler.trim_start_matches("df://").to_string();
    for (key, cause) in [
        (
            Some(OTHER_KEY),
            "holds another cluster key than this process",
        ),
        (None, "requires the cluster key"),
    ] {
        let (code, stderr) = executor_with(&cluster, key);
        assert_eq!(code, Some(2), "{stderr}");
        let expected = format!("error: --scheduler: the scheduler at {scheduler} {cause}");
        assert!(stderr.contains(&expected), "{stderr}");
    }
}

#[test]
fn a_driver_with_a_key_is_refused_by_a_cluster_without_one() {
    let cluster = LocalCluster::start_with(&[]);
    let case = Case::new("daily_revenue");
    let (code, stderr) = run_with_key(&cluster, &case, Some(KEY));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("has no cluster key (it serves without TLS), but this process has one"),
        "{stderr}"
    );
    assert!(!case.table.exists(), "nothing was written");
}

#[test]
fn listening_beyond_loopback_without_a_key_is_refused() {
    let port = free_port().to_string();
    let bind = format!("0.0.0.0:{port}");
    for args in [
        vec!["cluster", "scheduler", "--bind", &bind],
        vec![
            "cluster",
            "executor",
            "--scheduler",
            "127.0.0.1:1",
            "--bind",
            "0.0.0.0",
        ],
    ] {
        let (code, stderr) = keyless(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "error: --bind: refusing to listen on 0.0.0.0 without a cluster key: anyone \
                 who reaches it could run SQL on this cluster with its storage credentials"
            ),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_short_key_is_refused_naming_where_it_came_from() {
    let scratch = Scratch::new();
    let file = key_file(scratch.path("").as_path(), "short");
    let (code, stderr) = keyless(&[
        "cluster",
        "scheduler",
        "--cluster-key-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    let expected = format!(
        "error: {}: the cluster key has 5 characters; it needs at least 16",
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("short"), "{stderr}");
}

/// A certificate authority, and one certificate it signed for 127.0.0.1 and localhost,
/// which every process of a test cluster serves and connects with: the files of the
/// authority, the certificate and its private key, under `dir`.
fn certificates(dir: &Path) -> [PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer};
    let authority_key = rcgen::KeyPair::generate().unwrap();
    let mut authority = CertificateParams::default();
    authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let authority_pem = authority.self_signed(&authority_key).unwrap().pem();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut member = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    member.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = Issuer::new(authority, authority_key);
    let certificate = member.signed_by(&key, &issuer).unwrap();
    let files = [
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    ];
    std::fs::write(&files[0], authority_pem).unwrap();
    std::fs::write(&files[1], certificate.pem()).unwrap();
    std::fs::write(&files[2], key.serialize_pem()).unwrap();
    files
}

#[tokio::test]
async fn a_cluster_with_certificate_files_computes_the_table_and_takes_only_clients_they_prove() {
    let scratch = Scratch::new();
    let [ca, cert, key] = certificates(&scratch.path(""));
    let [ca, cert, key] = [&ca, &cert, &key].map(|file| file.to_str().unwrap().to_string());
    let env = [
        ("BACKFILL_TLS_CA", ca.clone()),
        ("BACKFILL_TLS_CERT", cert.clone()),
        ("BACKFILL_TLS_KEY", key.clone()),
    ];
    let cluster = LocalCluster::start_listening(&env, "0.0.0.0");
    let url = cluster.scheduler.replace("df://", "df+tls://");

    let local = Case::new("daily_revenue");
    local.ok("run", &DAYS, 0);
    let remote = Case::new("daily_revenue");
    let all = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let (code, stderr) = run_on(&url, &remote, &all);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        remote.stored(REVENUE_ROWS).await,
        local.stored(REVENUE_ROWS).await
    );

    let scheduler = cluster.scheduler.trim_start_matches("df://");
    for (more, cause) in [
        (
            &all[..2],
            "takes only clients with a certificate its authority signed, and this process \
             has none: give --tls-cert and --tls-key",
        ),
        (
            &[][..],
            "requires the cluster key (it serves TLS to members only), and this process has \
             none",
        ),
    ] {
        let case = Case::new("daily_revenue");
        let (code, stderr) = run_on(&cluster.scheduler, &case, more);
        assert_eq!(code, Some(2), "{stderr}");
        let expected = format!("the scheduler at {scheduler} {cause}");
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(!case.table.exists(), "nothing was written");
    }
    let case = Case::new("daily_revenue");
    let (code, stderr) = run_on(&url, &case, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("df+tls:// asks for TLS"), "{stderr}");
    let refusal = "scheduler: refused a connection from 127.0.0.1:";
    let refusals = logged(&cluster, refusal, 2);
    assert!(
        refusals[0]
            .ends_with("it presented no certificate: it is not one of the cluster's processes"),
        "{refusals:?}"
    );
}

#[test]
fn certificate_files_that_cannot_serve_are_refused_naming_the_flag() {
    let scratch = Scratch::new();
    let [ca, cert, key] = certificates(&scratch.path(""));
    let [ca, cert, key] = [&ca, &cert, &key].map(|file| file.to_str().unwrap().to_string());
    let missing = scratch.path("missing.pem").to_str().unwrap().to_string();
    for (flags, expected) in [
        (
            vec!["--tls-cert", &cert, "--tls-key", &key],
            "error: --tls-ca: --tls-cert needs the authority that signed the cluster's \
             certificates",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-ca", &ca],
            "error: --tls-key: --tls-cert needs its private key",
        ),
        (
            vec!["--tls-ca", &missing],
            &format!("error: --tls-ca: cannot read {missing}"),
        ),
        (
            vec!["--tls-ca", &key],
            &format!("error: --tls-ca: {key}: no PEM certificate in it"),
        ),
        (
            vec!["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &ca],
            &format!("error: --tls-key: {ca}: no PEM private key in it"),
        ),
    ] {
        let args = [
            &["cluster", "scheduler", "--bind", "127.0.0.1:1"][..],
            &flags,
        ]
        .concat();
        let (code, stderr) = keyless(&args);
        assert_eq!(code, Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}

#[tokio::test]
async fn with_a_key_and_certificate_files_servers_show_the_files_and_the_key_proves_clients() {
    let scratch = Scratch::new();
    let [ca, cert, key] = certificates(&scratch.path(""));
    let [ca, cert, key] = [&ca, &cert, &key].map(|file| file.to_str().unwrap().to_string());
    let env = [
        (KEY_VARIABLE, KEY.to_string()),
        ("BACKFILL_TLS_CA", ca.clone()),
        ("BACKFILL_TLS_CERT", cert),
        ("BACKFILL_TLS_KEY", key),
    ];
    let cluster = LocalCluster::start_listening(&env, "127.0.0.1");
    let case = Case::new("daily_revenue");
    let file = key_file(case.scratch.path("").as_path(), KEY);
    let file = file.to_str().unwrap();
    // The key alone does not vouch for servers that show certificates of their own.
    let (code, stderr) = run_on(&cluster.scheduler, &case, &["--cluster-key-file", file]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "or serves a certificate of its own (--tls-cert) whose authority this process is \
             not given (--tls-ca)"
        ),
        "{stderr}"
    );
    assert!(!case.table.exists(), "nothing was written");
    // With their authority, a client proving the key (and no certificate) is taken.
    let with_ca = ["--cluster-key-file", file, "--tls-ca", &ca];
    let (code, stderr) = run_on(&cluster.scheduler, &case, &with_ca);
    assert_eq!(code, Some(0), "{stderr}");
    let local = Case::new("daily_revenue");
    local.ok("run", &DAYS, 0);
    assert_eq!(
        case.stored(REVENUE_ROWS).await,
        local.stored(REVENUE_ROWS).await
    );
}
