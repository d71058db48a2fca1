//! `backfill serve`: the run page and its API over real runs of other processes: a run
//! followed live and cancelled through the API, and the server's refusals.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::support::{long_run_bucket, start_long_run, Case, Watched, LONG_RUN, LONG_RUN_DAYS};

/// An answer: its status code, headers and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Asserts a refusal: its status, and an error that says `says`.
    fn refused(&self, status: u16, says: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let error = self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(says), "{error:?} does not say {says:?}");
    }
}

/// One HTTP/1.1 request to the server at `address`, read to its end.
pub(crate) fn http(address: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(address, method, path, headers, "")
}

/// A POST of `body` as JSON, with the header that says it comes from no other site.
fn post_json(address: &str, path: &str, body: &Value) -> Answer {
    let headers = [("x-backfill", "1"), ("Content-Type", "application/json")];
    request(address, "POST", path, &headers, &body.to_string())
}

fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Starts `backfill serve` for `case`'s pipeline on a free loopback port; the server and
/// its address.
pub(crate) fn serve(case: &Case, token: Option<&str>) -> (Watched, String) {
    let mut command = serve_command(case);
    if let Some(token) = token {
        command.env("BACKFILL_SERVE_TOKEN", token);
    }
    start_server(command)
}

fn serve_command(case: &Case) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    command.args(case.args("serve", &["--bind", "127.0.0.1:0"]));
    command
}

/// Starts a server and waits until it listens: the server and its address.
fn start_server(command: std::process::Command) -> (Watched, String) {
    let mut server = Watched::spawn(command);
    let line = server.line_where(Duration::from_secs(60), |l| l.starts_with("serving on "));
    let address = line
        .trim_start_matches("serving on http://")
        .trim_end_matches('/')
        .to_string();
    (server, address)
}

/// The slices the API says are in the table, sorted.
fn committed_per_api(run: &Value) -> Vec<String> {
    let slices = run["slices"].as_array().unwrap().iter();
    let mut committed: Vec<String> = slices
        .filter(|s| s["class"] == "committed")
        .map(|s| s["slice"].as_str().unwrap().to_string())
        .collect();
    committed.sort();
    committed
}

#[tokio::test]
async fn the_run_page_follows_a_run_of_another_process_and_cancels_it_at_a_slice_boundary() {
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    let (_server, address) = serve(&case, None);
    assert_eq!(
        http(&address, "GET", "/api/runs", &[]).json(),
        Value::Array(vec![])
    );

    let (running, id) = start_long_run(&case);

    // Listed, running, from its history alone.
    let runs = http(&address, "GET", "/api/runs", &[]).json();
    assert_eq!(runs[0]["run_id"], id.as_str(), "{runs:#}");
    assert_eq!(runs[0]["liveness"], "running", "{runs:#}");
    // What the API says is in the table is in the Delta log: a slice's attempt is
    // recorded after its commit.
    let api = format!("/api/runs/orders_clean/{id}");
    let live = http(&address, "GET", &api, &[]).json();
    assert_eq!(live["status"], "running", "{live:#}");
    // Its heartbeat says how many slots it computes in (--concurrency 1).
    assert_eq!(live["heartbeat"]["slots"]["of"], 1, "{live:#}");
    assert!(
        live["pace"]["eta"].is_string(),
        "a running run says how long is left: {live:#}"
    );
    assert!(
        live["pace"]["rows_per_second"].as_u64() > Some(0),
        "{live:#}"
    );
    let said = committed_per_api(&live);
    // The grid holds every selected day, a month a row, finished or not.
    let rows = live["grid"].as_array().unwrap();
    let months: Vec<(&str, usize)> = (rows.iter())
        .map(|r| {
            (
                r["label"].as_str().unwrap(),
                r["cells"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(months, [("2024-01", 31), ("2024-02", 29), ("2024-03", 30)]);
    let cells = rows.iter().flat_map(|r| r["cells"].as_array().unwrap());
    let pending = cells.filter(|c| c["class"] == "pending").count();
    assert!(
        pending > 0 && pending <= LONG_RUN_DAYS as usize - said.len(),
        "{pending}"
    );
    assert!(!said.is_empty());
    let in_log = case.committed_slices();
    assert!(
        said.iter().all(|s| in_log.contains(s)),
        "{said:?} vs {in_log:?}"
    );
    let page = http(&address, "GET", &format!("/runs/orders_clean/{id}"), &[]);
    assert!(page.body.contains("<button id=\"cancel\""), "{}", page.body);

    // Cancel through the API: refused without the header a cross-site form cannot send.
    let cancel = format!("{api}/cancel");
    let forged = http(&address, "POST", &cancel, &[]);
    assert_eq!(forged.status, 403, "{}", forged.body);
    let asked = http(&address, "POST", &cancel, &[("x-backfill", "1")]);
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert_eq!(asked.json()[0]["asked"], "now", "{}", asked.body);
    let (code, printed) = running.end_within(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{printed}");

    // Cancelled, with exactly what is in the table.
    let ended = http(&address, "GET", &api, &[]).json();
    assert_eq!(ended["status"], "cancelled", "{ended:#}");
    assert!(ended["pace"]["eta"].is_null(), "{ended:#}");
    let in_log = case.committed_slices();
    assert_eq!(committed_per_api(&ended), in_log);
    assert_eq!(ended["counts"]["committed"], in_log.len());
    assert!(
        in_log.len() < LONG_RUN_DAYS as usize,
        "the run stopped early"
    );
    let page = http(&address, "GET", &format!("/runs/orders_clean/{id}"), &[]);
    assert!(
        page.body.contains("class=\"status cancelled\""),
        "{}",
        page.body
    );
    let list = http(&address, "GET", "/", &[]);
    assert!(
        list.body.contains(&id) && list.body.contains(">cancelled<"),
        "{}",
        list.body
    );
    // Committed, skipped, failed, not finished.
    let n = |count: usize| format!("<td class=\"n\">{count}</td>");
    let tally = [
        n(in_log.len()),
        n(0),
        n(0),
        n(LONG_RUN_DAYS as usize - in_log.len()),
    ];
    assert!(list.body.contains(&tally.concat()), "{}", list.body);

    // The same command finishes the job.
    case.ok("run", &LONG_RUN, 0);
    assert_eq!(case.committed_slices().len(), LONG_RUN_DAYS as usize);
}

#[test]
fn the_server_needs_its_token_and_refuses_bad_requests_with_a_reason() {
    let case = Case::new("orders_clean");
    case.ok("run", &["--keys", "2024-01-01"], 0);
    // Reachable from other machines only with a token.
    let open = crate::support::backfill(&case.args("serve", &["--bind", "0.0.0.0:0"]));
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert_eq!(open.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("set BACKFILL_SERVE_TOKEN"), "{stderr}");

    let (_server, address) = serve(&case, Some("s3cret"));
    assert_eq!(http(&address, "GET", "/api/runs", &[]).status, 401);
    assert_eq!(
        http(
            &address,
            "GET",
            "/api/runs",
            &[("Authorization", "Bearer nope")]
        )
        .status,
        401
    );
    let bearer = [("Authorization", "Bearer s3cret")];
    let runs = http(&address, "GET", "/api/runs", &bearer);
    assert_eq!(runs.status, 200, "{}", runs.body);
    assert!(!runs.body.contains("s3cret"));
    // A browser's first visit with ?token= keeps it in a cookie.
    let visit = http(&address, "GET", "/?token=s3cret", &[]);
    assert_eq!(visit.status, 200);
    assert!(
        visit
            .head
            .contains("backfill_token=s3cret; HttpOnly; SameSite=Strict"),
        "{}",
        visit.head
    );
    let wrong = http(&address, "GET", "/?token=nope", &bearer);
    assert!(
        !wrong.head.contains("Set-Cookie") && !wrong.head.contains("set-cookie"),
        "a wrong token is never kept: {}",
        wrong.head
    );
    let cookie = [("Cookie", "backfill_token=s3cret")];
    assert_eq!(http(&address, "GET", "/", &cookie).status, 200);

    let bad = http(&address, "GET", "/api/runs/orders_clean/not-a-run", &bearer);
    assert_eq!(
        (bad.status, bad.json()["error"].as_str().unwrap()),
        (
            400,
            "`not-a-run` is not a run id (such as 20240611T101500Z-3f2a1c)"
        )
    );
    let unknown = http(
        &address,
        "GET",
        "/api/runs/nope/20240611T101500Z-3f2a1c",
        &bearer,
    );
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"]
        .as_str()
        .unwrap()
        .contains("no pipeline `nope` here (there are: orders_clean)"));
    let missing = http(
        &address,
        "GET",
        "/api/runs/orders_clean/20240611T101500Z-3f2a1c",
        &bearer,
    );
    assert_eq!(missing.status, 404, "{}", missing.body);
}

/// The run `run_id` in `case`'s history, once it has ended; fails after `limit`.
fn ended_run(case: &Case, run_id: &str, limit: Duration) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let runs = case.json("history", &[], 0);
        let run = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == run_id);
        match run {
            Some(run) if !run["end"].is_null() => return run.clone(),
            _ if std::time::Instant::now() > deadline => {
                panic!("run {run_id} has not ended within {limit:?}: {runs:#}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn a_launch_runs_the_confirmed_plan_only_and_goes_on_when_the_server_is_stopped() {
    use std::os::unix::process::CommandExt;
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    // The server in a process group of its own, as a shell runs it: Ctrl-C in its
    // terminal is a SIGINT to that group.
    let mut command = serve_command(&case);
    command.process_group(0);
    let (server, address) = start_server(command);

    let range = "start=2024-01-01&end=2024-03-30&concurrency=1";
    let plan = http(&address, "GET", &format!("/api/plan?{range}"), &[]).json();
    let first = plan["hash"].as_str().unwrap().to_string();
    assert!(plan["refused"].is_null(), "{plan:#}");
    assert_eq!(plan["plan"]["slices"].as_array().unwrap().len(), 90);
    assert!(
        plan["command"].as_str().unwrap().ends_with(&format!(
            "--start 2024-01-01 --end 2024-03-30 --concurrency 1 --expect-plan {first}"
        )),
        "{plan:#}"
    );
    let page = http(&address, "GET", &format!("/launch?{range}&show=plan"), &[]);
    assert!(
        page.body
            .contains(&format!("<span id=\"hash\">{first}</span>")),
        "{}",
        page.body
    );
    assert!(page.body.contains("Launch this plan"));

    // Another run commits a day meanwhile: the confirmed plan is refused, nothing runs.
    case.ok("run", &["--keys", "2024-01-01"], 0);
    let launch = |hash: &str| {
        let body = serde_json::json!({
            "start": "2024-01-01", "end": "2024-03-30", "concurrency": 1, "plan": hash,
        });
        post_json(&address, "/api/launch", &body)
    };
    let changed = format!("the plan has changed since {first} was confirmed");
    launch(&first).refused(409, &changed);
    assert_eq!(case.json("history", &[], 0).as_array().unwrap().len(), 1);
    let forged = http(
        &address,
        "POST",
        "/api/launch",
        &[("Content-Type", "application/json")],
    );
    assert_eq!(
        forged.status, 403,
        "a POST without the header is refused: {}",
        forged.body
    );
    let unconfirmed = serde_json::json!({"start": "2024-01-01", "end": "2024-03-30"});
    post_json(&address, "/api/launch", &unconfirmed)
        .refused(400, "a launch needs the hash of the plan it confirms");
    let path = "/api/plan?start=2024-01-01&end=2024-03-30&reprocess=everything";
    http(&address, "GET", path, &[]).refused(400, "reprocess: `everything` is not a state to run");

    // The plan as it is now launches, and the answer names the run.
    let plan = http(&address, "GET", &format!("/api/plan?{range}"), &[]).json();
    let now = plan["hash"].as_str().unwrap().to_string();
    assert_ne!(now, first);
    let launched = launch(&now);
    assert_eq!(launched.status, 201, "{}", launched.body);
    let launched = launched.json();
    let run_id = launched["run_id"].as_str().unwrap().to_string();
    assert_eq!(launched["url"], format!("/runs/orders_clean/{run_id}"));
    let runs = http(&address, "GET", "/api/runs", &[]).json();
    let listed = (runs.as_array().unwrap().iter()).find(|r| r["run_id"] == run_id.as_str());
    let by = listed.unwrap_or_else(|| panic!("{runs:#}"))["started_by"]
        .as_str()
        .unwrap();
    assert!(by.ends_with(" through the run page"), "{by}");

    // Ctrl-C where the server runs: the server ends, the launched run goes on.
    let pid = server.pid().to_string();
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(interrupted.success());
    server.end_within(Duration::from_secs(30));
    let history = case.json("history", &[], 0);
    let entry = history
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap();
    assert!(
        entry["end"].is_null(),
        "the run was still going when the server stopped: {entry:#}"
    );
    let ended = ended_run(&case, &run_id, Duration::from_secs(300));
    assert_eq!(ended["end"]["committed"], 89, "{ended:#}");
    assert_eq!(case.committed_slices().len(), 90);
    let log = std::fs::read_to_string(launched["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("\"event\":\"ended\""), "{log}");
}

#[test]
fn the_status_page_and_api_give_what_status_prints() {
    let case = Case::new("orders_clean");
    case.edit_pipeline("rate = 0.05", "rate = 0.01");
    // 2024-01-09 is the noisy day: it fails its check.
    case.ok("run", &["--start", "2024-01-08", "--end", "2024-01-10"], 1);
    let (_server, address) = serve(&case, None);

    let api = http(&address, "GET", "/api/status", &[]).json();
    assert_eq!(api["orders_clean"], case.json("status", &[], 0));
    let range = ["--start", "2024-01-08", "--end", "2024-01-11"];
    let query = "start=2024-01-08&end=2024-01-11";
    let api = http(&address, "GET", &format!("/api/status?{query}"), &[]).json();
    assert_eq!(api["orders_clean"], case.json("status", &range, 0));

    let page = http(&address, "GET", &format!("/status?{query}"), &[]).body;
    assert!(
        page.contains("2 done, 2 remaining (1 failed, 1 missing)")
            && page.contains("not done: 2024-01-09, 2024-01-11"),
        "{page}"
    );
    assert!(
        page.contains("null rate of amount"),
        "the failure's error: {page}"
    );
    let cells: Vec<&str> = (page.split("class=\"cell ").skip(1))
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(cells, ["committed", "failed", "committed", "missing"]);

    http(&address, "GET", "/api/status?start=2024-01-08", &[]).refused(
        400,
        "start/end: a range needs both its first and its last slice",
    );
    let page = http(&address, "GET", "/status?start=2024-01-08&end=soon", &[]);
    assert!(
        page.body.contains("end: `soon` is not a day"),
        "{}",
        page.body
    );
}

#[test]
fn a_project_served_launches_one_pipeline_in_staging_and_shows_its_status_there() {
    let project = crate::projects::ProjectCase::new();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    let file = project.project();
    // Every environment the project declares, production first.
    command.args(["serve", &file, "--bind", "127.0.0.1:0"]);
    let (_server, address) = start_server(command);
    let plan = http(
        &address,
        "GET",
        "/api/plan?start=2024-01-01&end=2024-01-02",
        &[],
    )
    .json();
    assert!(
        plan["command"]
            .as_str()
            .unwrap()
            .contains("--env prod --start"),
        "{plan:#}"
    );
    http(
        &address,
        "GET",
        "/api/plan?env=qa&start=2024-01-01&end=2024-01-02",
        &[],
    )
    .refused(
        400,
        "env: no environment `qa` here (there are: prod, staging)",
    );

    let query = "env=staging&pipeline=orders_clean&start=2024-01-01&end=2024-01-02";
    let plan = http(&address, "GET", &format!("/api/plan?{query}"), &[]).json();
    let hash = plan["hash"].as_str().unwrap();
    assert!(
        plan["command"].as_str().unwrap().contains(&format!(
            "--env staging --pipelines orders_clean --start 2024-01-01 --end 2024-01-02 --expect-plan {hash}"
        )),
        "{plan:#}"
    );
    assert_eq!(plan["plan"]["environment"], "staging");
    let body = serde_json::json!({
        "env": "staging", "pipeline": "orders_clean", "start": "2024-01-01", "end": "2024-01-02",
        "plan": hash,
    });
    let launched = post_json(&address, "/api/launch", &body);
    assert_eq!(launched.status, 201, "{}", launched.body);
    let run_id = launched.json()["run_id"].as_str().unwrap().to_string();

    let status = |pipeline: &str| {
        let path =
            format!("/api/status?env=staging&pipeline={pipeline}&start=2024-01-01&end=2024-01-02");
        http(&address, "GET", &path, &[]).json()[pipeline]["done"].clone()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while status("orders_clean") != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{run_id} did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status("orders_daily"), 0, "only the pipeline chosen ran");
    assert!(project
        .path("warehouse-staging/orders_clean/_delta_log")
        .is_dir());
    assert!(
        !project.path("warehouse/orders_clean").exists(),
        "prod is untouched"
    );
    let runs = http(&address, "GET", "/api/runs", &[]).json();
    assert_eq!(runs[0]["environment"], "staging", "{runs:#}");
    let page = http(
        &address,
        "GET",
        &format!("/runs/orders_clean/{run_id}"),
        &[],
    )
    .body;
    assert!(page.contains("(environment staging)"), "{page}");

    // The whole project: one run, a row of slices per pipeline on its page, and one line
    // in the list.
    let query = "env=staging&start=2024-01-01&end=2024-01-02";
    let plan = http(&address, "GET", &format!("/api/plan?{query}"), &[]).json();
    let body = serde_json::json!({
        "env": "staging", "start": "2024-01-01", "end": "2024-01-02", "plan": plan["hash"],
    });
    let launched = post_json(&address, "/api/launch", &body);
    assert_eq!(launched.status, 201, "{}", launched.body);
    let run_id = launched.json()["run_id"].as_str().unwrap().to_string();
    let api = format!("/api/runs/events_daily/{run_id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let run = loop {
        let run = http(&address, "GET", &api, &[]).json();
        let parts = run["parts"].as_array().map_or(0, Vec::len);
        if parts == 4
            && run["parts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["status"] == "done")
        {
            break run;
        }
        assert!(std::time::Instant::now() < deadline, "{run:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let parts: Vec<(&str, usize)> = (run["parts"].as_array().unwrap().iter())
        .map(|p| {
            (
                p["pipeline"].as_str().unwrap(),
                p["cells"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("orders_clean", 2),
            ("orders_daily", 2),
            ("hourly_events", 48),
            ("events_daily", 2)
        ],
        "upstream first, hourly slices a cell each"
    );
    let page = http(
        &address,
        "GET",
        &format!("/runs/orders_clean/{run_id}"),
        &[],
    )
    .body;
    assert!(page.contains("Pipelines of this run"), "{page}");
    let list = http(&address, "GET", "/", &[]).body;
    assert_eq!(
        list.matches(&format!(">{run_id}</a>")).count(),
        1,
        "one line per run: {list}"
    );
}

#[test]
fn a_launch_of_keys_passes_any_key_as_it_is() {
    let case = Case::new("tenant_signups");
    let (_server, address) = serve(&case, None);
    let plan = http(&address, "GET", "/api/plan?keys=o%27brien,acme", &[]).json();
    let hash = plan["hash"].as_str().unwrap();
    assert!(
        plan["command"]
            .as_str()
            .unwrap()
            .contains(&format!("'--keys=o'\\''brien,acme' --expect-plan {hash}")),
        "the command as a shell takes it: {plan:#}"
    );
    let body = serde_json::json!({"keys": "o'brien,acme", "plan": hash});
    let launched = post_json(&address, "/api/launch", &body);
    assert_eq!(launched.status, 201, "{}", launched.body);
    let run_id = launched.json()["run_id"].as_str().unwrap().to_string();
    let ended = ended_run(&case, &run_id, Duration::from_secs(300));
    assert_eq!(ended["end"]["committed"], 2, "{ended:#}");
    let mut committed = case.committed_slices();
    committed.sort();
    assert_eq!(committed, ["acme", "o'brien"]);
}
