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
}

/// One HTTP/1.1 request to the server at `address`, read to its end.
pub(crate) fn http(address: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
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
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    command.args(case.args("serve", &["--bind", "127.0.0.1:0"]));
    if let Some(token) = token {
        command.env("BACKFILL_SERVE_TOKEN", token);
    }
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
