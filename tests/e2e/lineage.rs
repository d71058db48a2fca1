//! OpenLineage events: every event a real run writes (a retried slice, a failed check, a
//! cancel) validates against the OpenLineage JSON Schema and says what the run did; a
//! collector on loopback receives them, and one that was down gets them from
//! `backfill lineage --send`, without a run counted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_engine::run::{Observer, Phase, RunEvent, Stop};
use backfill_engine::{RunOptions, Selection};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::projects::ProjectCase;
use crate::reads::ManualClock;
use crate::stores::{open_through, TestStore};
use crate::support::{backfill_with, Case, Watched};

const DAYS: [&str; 5] = [
    "2024-01-01",
    "2024-01-02",
    "2024-01-03",
    "2024-01-04",
    "2024-01-05",
];

/// The OpenLineage schemas in `openlineage/`, registered under the URLs events name.
struct Spec {
    registry: jsonschema::Registry<'static>,
}

impl Spec {
    fn new() -> Spec {
        let folder = crate::support::root().join("tests/e2e/openlineage");
        let mut files = vec![folder.join("OpenLineage.json")];
        for entry in std::fs::read_dir(folder.join("facets")).unwrap() {
            files.push(entry.unwrap().path());
        }
        let mut registry = jsonschema::Registry::new();
        for file in files {
            let schema: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            let id = schema["$id"].as_str().unwrap().to_string();
            registry = registry.add(id, schema).unwrap();
        }
        Spec {
            registry: registry.prepare().unwrap(),
        }
    }

    /// Fails the test unless `instance` is valid as the schema `url` names.
    fn check(&self, url: &str, instance: &Value) {
        let validator = jsonschema::options()
            .offline()
            .should_validate_formats(true)
            .with_registry(&self.registry)
            .build(&serde_json::json!({ "$ref": url }))
            .unwrap_or_else(|e| panic!("no schema {url}: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{url}: {errors:#?}\n{instance:#}");
    }

    /// Fails the test unless `event` is a valid run event and each of its facets is valid
    /// as its `_schemaURL` says.
    fn check_event(&self, event: &Value) {
        self.check(event["schemaURL"].as_str().unwrap(), event);
        let datasets = (event["inputs"].as_array().into_iter().flatten())
            .chain(event["outputs"].as_array().into_iter().flatten());
        let mut facets = vec![&event["run"]["facets"], &event["job"]["facets"]];
        for dataset in datasets {
            facets.extend([
                &dataset["facets"],
                &dataset["inputFacets"],
                &dataset["outputFacets"],
            ]);
        }
        for facet in facets
            .into_iter()
            .filter_map(Value::as_object)
            .flat_map(|f| f.values())
        {
            self.check(facet["_schemaURL"].as_str().unwrap(), facet);
        }
    }
}

/// Fails the first read of `2024-01-01`'s first computation (so it is retried), makes
/// `2024-01-04`'s reads hang once it computes, and then, once the first two days are
/// committed, asks the run to stop, abandoning `2024-01-04`.
struct Faults {
    store: Arc<TestStore>,
    stop: Stop,
    computing: Mutex<BTreeSet<String>>,
    committed: Mutex<BTreeSet<String>>,
}

impl Observer for Faults {
    fn on(&self, event: &RunEvent) {
        match event {
            RunEvent::Phase {
                slice,
                phase: Phase::Computing,
                ..
            } => {
                let first = self.computing.lock().unwrap().insert(slice.clone());
                if slice == DAYS[0] && first {
                    self.store.failing_reads.store(1, Ordering::SeqCst);
                }
                if slice == DAYS[3] {
                    let hanging = format!("dt={}", DAYS[3]);
                    self.store.hanging_paths.lock().unwrap().push(hanging);
                }
            }
            RunEvent::Committed { slices, .. } => {
                self.committed
                    .lock()
                    .unwrap()
                    .extend(slices.iter().cloned());
            }
            _ => return,
        }
        let committed = self.committed.lock().unwrap();
        let computing = self.computing.lock().unwrap();
        if committed.contains(DAYS[0]) && committed.contains(DAYS[1]) && computing.contains(DAYS[3])
        {
            self.stop.abandon_in_flight();
        }
    }
}

/// The events of `run` of the case's pipeline, as `backfill lineage` prints them.
fn lineage_of(case: &Case, run: &str) -> Vec<Value> {
    let printed = case.ok("lineage", &[run], 0);
    printed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn facet<'a>(event: &'a Value, pointer: &str) -> &'a Value {
    event
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {event:#}"))
}

#[tokio::test]
async fn every_event_of_a_run_with_a_retry_a_failed_check_and_a_cancel_follows_the_spec_and_the_log(
) {
    let case = Case::new("orders_clean");
    case.edit_pipeline(
        "WHERE amount < 0\"",
        "WHERE amount < 0 OR dt = '2024-01-03'\"",
    );
    let store = Arc::new(TestStore::default());
    let backfill = open_through(store.clone(), &case.pipeline, &case.table).await;
    let options = RunOptions {
        concurrency: Some(1),
        retries: 2,
        clock: ManualClock::new(),
        ..RunOptions::default()
    };
    let faults = Arc::new(Faults {
        store,
        stop: options.stop.clone(),
        computing: Mutex::default(),
        committed: Mutex::default(),
    });
    let selection = Selection::keys(DAYS.iter().map(|d| d.to_string()).collect());
    let running = backfill.clone().run(&selection, &options, faults);
    let summary = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .expect("the run ends within two minutes")
        .unwrap();
    assert!(summary.stopped, "{summary:#?}");

    let events = lineage_of(&case, &summary.run_id);
    let spec = Spec::new();
    events.iter().for_each(|event| spec.check_event(event));

    // The parent run: started first, aborted last (the run was cancelled), and every
    // slice's run names it as its parent.
    let (first, last) = (&events[0], &events[events.len() - 1]);
    let parent = first["run"]["runId"].as_str().unwrap();
    assert_eq!(first["eventType"], "START");
    assert_eq!(first["job"]["name"], "orders_clean.backfill");
    assert_eq!(
        (last["eventType"].as_str(), last["run"]["runId"].as_str()),
        (Some("ABORT"), Some(parent))
    );
    let nominal = facet(first, "/run/facets/nominalTime");
    assert_eq!(nominal["nominalStartTime"], "2024-01-01T00:00:00.000Z");
    assert_eq!(nominal["nominalEndTime"], "2024-01-06T00:00:00.000Z");

    // Each attempt is one run of the pipeline's job: a START and one end, in that order.
    let mut runs: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for event in &events[1..events.len() - 1] {
        assert_eq!(event["job"]["name"], "orders_clean");
        assert_eq!(event["job"]["namespace"], "backfill");
        assert_eq!(facet(event, "/run/facets/parent/run/runId"), parent);
        assert_eq!(
            facet(event, "/run/facets/parent/job/name"),
            "orders_clean.backfill"
        );
        runs.entry(event["run"]["runId"].as_str().unwrap().to_string())
            .or_default()
            .push(event);
    }
    let mut ends: Vec<(String, String)> = Vec::new();
    for (id, pair) in &runs {
        let types: Vec<&str> = pair
            .iter()
            .map(|e| e["eventType"].as_str().unwrap())
            .collect();
        assert_eq!((types.len(), types[0]), (2, "START"), "run {id}: {types:?}");
        let start = facet(pair[0], "/run/facets/nominalTime/nominalStartTime");
        assert_eq!(
            start,
            facet(pair[1], "/run/facets/nominalTime/nominalStartTime")
        );
        let day = &start.as_str().unwrap()[..10];
        let next = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
            .unwrap()
            .succ_opt()
            .unwrap();
        assert_eq!(
            facet(pair[1], "/run/facets/nominalTime/nominalEndTime"),
            &format!("{next}T00:00:00.000Z")
        );
        ends.push((day.to_string(), types[1].to_string()));
    }
    ends.sort();
    let expected = [
        (DAYS[0], "COMPLETE"),
        (DAYS[0], "FAIL"),
        (DAYS[1], "COMPLETE"),
        (DAYS[2], "FAIL"),
        (DAYS[3], "ABORT"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(d, t)| (d.to_string(), t.to_string()))
        .collect();
    assert_eq!(ends, expected, "the fifth day never started");

    // A completed slice names the version that committed it, as the Delta log says, and
    // what it wrote and read.
    let version_of = |day: &str| -> String {
        let entries = case.commit_entries();
        let version = entries.iter().position(|commit| {
            crate::support::slices_committed_in(std::slice::from_ref(commit)) == [day]
        });
        version
            .unwrap_or_else(|| panic!("no commit of {day}"))
            .to_string()
    };
    let completed = |day: &str| -> &Value {
        let ended = runs.values().map(|pair| pair[1]);
        let mut found = ended.filter(|e| {
            e["eventType"] == "COMPLETE"
                && e["run"]["facets"]["nominalTime"]["nominalStartTime"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(day))
        });
        found.next().unwrap()
    };
    for day in [DAYS[0], DAYS[1]] {
        let event = completed(day);
        let output = &event["outputs"][0];
        assert!(output["name"]
            .as_str()
            .unwrap()
            .ends_with("warehouse/orders_clean"));
        assert_eq!(
            facet(output, "/facets/version/datasetVersion"),
            &version_of(day)
        );
        let rows = crate::support::query_table(
            &case.table,
            &format!("SELECT count(*) AS n FROM t WHERE dt = '{day}'"),
        )
        .await;
        assert!(
            rows.iter().any(|line| line
                .contains(&facet(output, "/outputFacets/outputStatistics/rowCount").to_string())),
            "{rows:?}"
        );
        let checks = facet(output, "/facets/dataQualityAssertions/assertions")
            .as_array()
            .unwrap();
        assert_eq!(checks.len(), 4);
        assert!(checks.iter().all(|c| c["success"] == true));
        let input = &event["inputs"][0];
        assert!(input["name"]
            .as_str()
            .unwrap()
            .ends_with("buckets/shop/orders"));
        let files = facet(input, "/inputFacets/inputStatistics/fileCount")
            .as_u64()
            .unwrap();
        assert!(files >= 1, "{input:#}");
        let sql = facet(event, "/job/facets/sql/query").as_str().unwrap();
        assert!(sql.contains(&format!("dt = '{day}'")), "{sql}");
    }

    // Column lineage, from the transform's plan: a column copied, one computed, and the
    // columns its filter reads.
    let columns = facet(completed(DAYS[1]), "/outputs/0/facets/columnLineage");
    let input_of = |field: &str| -> (String, String) {
        let inputs = facet(columns, &format!("/fields/{field}/inputFields"));
        let [input] = inputs.as_array().unwrap().as_slice() else {
            panic!("{field}: {inputs:#}")
        };
        let transformation = &input["transformations"][0];
        assert!(input["name"]
            .as_str()
            .unwrap()
            .ends_with("buckets/shop/orders"));
        let field = input["field"].as_str().unwrap();
        (
            field.to_string(),
            transformation["subtype"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(input_of("order_id"), ("order_id".into(), "IDENTITY".into()));
    assert_eq!(
        input_of("status"),
        ("status".into(), "TRANSFORMATION".into())
    );
    let filtered: BTreeSet<&str> = (columns["dataset"].as_array().unwrap().iter())
        .filter(|input| input["transformations"][0]["subtype"] == "FILTER")
        .map(|input| input["field"].as_str().unwrap())
        .collect();
    assert_eq!(filtered, BTreeSet::from(["dt", "ordered_at"]));

    // The failed check: its error, and which assertion failed.
    let failed = runs
        .values()
        .map(|pair| pair[1])
        .find(|e| {
            e["eventType"] == "FAIL"
                && e["run"]["facets"]["nominalTime"]["nominalStartTime"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(DAYS[2]))
        })
        .unwrap();
    let message = facet(failed, "/run/facets/errorMessage/message")
        .as_str()
        .unwrap();
    assert!(message.contains(DAYS[2]), "{message}");
    let checks = facet(failed, "/outputs/0/facets/dataQualityAssertions/assertions");
    let failing: Vec<&Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["success"] == false)
        .collect();
    assert_eq!(failing.len(), 1, "{checks:#}");
    assert!(failed["outputs"][0]["facets"].get("version").is_none());
}

/// Each event a collector received, with the authorization it came with.
type Received = Arc<Mutex<Vec<(Value, Option<String>)>>>;

/// A collector on loopback: takes every POST, keeping its body and its authorization.
struct Collector {
    url: String,
    received: Received,
}

impl Collector {
    fn start() -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received: Received = Arc::default();
        let kept = received.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    let kept = kept.clone();
                    tokio::spawn(async move {
                        let service =
                            hyper::service::service_fn(move |request| take(request, kept.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Collector { url, received }
    }

    fn events(&self) -> Vec<Value> {
        let received = self.received.lock().unwrap();
        received.iter().map(|(event, _)| event.clone()).collect()
    }
}

async fn take(
    request: Request<Incoming>,
    kept: Received,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap().to_string());
    let path = request.uri().path().to_string();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(path, "/api/v1/lineage");
    let event: Value = serde_json::from_slice(&body).unwrap();
    kept.lock().unwrap().push((event, authorization));
    Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
}

/// Waits until `collector` holds `count` events, failing after a deadline.
fn wait_for(collector: &Collector, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = collector.events();
        if events.len() >= count {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} events arrived: {events:#?}",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The run of each event and its type, with its time: what a collector makes of them.
fn transitions(events: &[Value]) -> BTreeSet<(String, String, String)> {
    let field = |event: &Value, pointer: &str| {
        event
            .pointer(pointer)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    (events.iter())
        .map(|e| {
            (
                field(e, "/run/runId"),
                field(e, "/eventType"),
                field(e, "/eventTime"),
            )
        })
        .collect()
}

#[test]
fn a_collector_receives_every_event_and_one_that_was_down_gets_them_from_lineage_send() {
    let collector = Collector::start();
    let case = Case::new("orders_clean");
    case.edit_pipeline(
        "[slices]",
        &format!(
            "[lineage]\nurl = \"{}\"\napi_key_env = \"COLLECTOR_KEY\"\n\n[slices]",
            collector.url
        ),
    );
    let key = [("COLLECTOR_KEY", "k-5e3c7e7")];
    let run = case.args("run", &["--start", DAYS[0], "--end", DAYS[1]]);
    let (stdout, stderr) = backfill_with(&run, &key, 0);
    assert!(!format!("{stdout}{stderr}").contains(key[0].1));

    // The collector got every event the log keeps, in order, each with the key.
    let logged = lineage_of(&case, "latest");
    assert_eq!(
        logged.len(),
        6,
        "a parent and two slices, each a START and an end"
    );
    assert_eq!(wait_for(&collector, 6), logged);
    let received = collector.received.lock().unwrap().clone();
    assert!(received
        .iter()
        .all(|(_, auth)| auth.as_deref() == Some("Bearer k-5e3c7e7")));

    // With the collector down (OPENLINEAGE_URL overrides the file), the run succeeds and
    // its events wait in the log.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", down.local_addr().unwrap());
    drop(down);
    let rerun = case.args("run", &["--start", DAYS[0], "--end", DAYS[1], "--force"]);
    let mut envs = vec![key[0], ("OPENLINEAGE_URL", nowhere.as_str())];
    let (_, stderr) = backfill_with(&rerun, &envs, 0);
    assert!(stderr.contains("were not delivered"), "{stderr}");
    assert_eq!(
        collector.events().len(),
        6,
        "nothing reached the first collector"
    );

    // `lineage --send` delivers them later; sending again adds no run and no transition.
    envs[1] = ("OPENLINEAGE_URL", collector.url.as_str());
    let send = case.args("lineage", &["latest", "--send"]);
    let (_, said) = backfill_with(&send, &envs, 0);
    assert!(said.contains("sent 6 events"), "{said}");
    let logged = lineage_of(&case, "latest");
    let after_send = wait_for(&collector, 12);
    assert_eq!(after_send[6..], logged[..]);
    backfill_with(&send, &envs, 0);
    let after_again = wait_for(&collector, 18);
    assert_eq!(transitions(&after_again), transitions(&after_send));
    let runs = |events: &[Value]| -> BTreeSet<String> {
        events
            .iter()
            .map(|e| e["run"]["runId"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        runs(&after_again).len(),
        6,
        "two runs, each a parent and two slices"
    );

    // Without its key, `--send` names the variable that should hold it; without a
    // collector, it says how to name one.
    let (_, unkeyed) = backfill_with(&send, &envs[1..], 2);
    assert!(unkeyed.contains("`COLLECTOR_KEY` is not set"), "{unkeyed}");
    let console = [key[0], ("OPENLINEAGE__TRANSPORT__TYPE", "console")];
    let (_, nowhere) = backfill_with(&send, &console, 2);
    assert!(nowhere.contains("OPENLINEAGE_URL"), "{nowhere}");

    // OPENLINEAGE_DISABLED turns every event off: none sent, none logged.
    let off = [key[0], ("OPENLINEAGE_DISABLED", "true")];
    backfill_with(&rerun, &off, 0);
    let (printed, said) = backfill_with(&case.args("lineage", &["latest"]), &key, 0);
    assert!(
        printed.is_empty() && said.contains("wrote no lineage events"),
        "{said}"
    );
    assert_eq!(collector.events().len(), 18);
}

#[test]
fn a_project_namespaces_its_jobs_and_its_lineage_section_is_each_pipelines_unless_it_has_one() {
    let project = ProjectCase::new();
    let file = project.project();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n[lineage]\nconsole = true\n")).unwrap();
    let daily = project.path("fixtures/pipelines/orders_daily.toml");
    let text = std::fs::read_to_string(&daily).unwrap();
    let own = text.replacen(
        "[slices]",
        "[lineage]\nnamespace = \"daily\"\n\n[slices]",
        1,
    );
    std::fs::write(&daily, own).unwrap();

    let run = [
        "run",
        file.as_str(),
        "--pipelines",
        "orders_clean,orders_daily",
        "--start",
        DAYS[0],
        "--end",
        DAYS[0],
    ];
    let (_, stderr) = backfill_with(&run, &[], 0);
    let lineage = |pipeline: &str| -> Vec<Value> {
        let printed = project.ok("lineage", &["--pipeline", pipeline, "latest"], 0);
        printed
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (clean, daily) = (lineage("orders_clean"), lineage("orders_daily"));
    assert_eq!(
        (clean.len(), daily.len()),
        (4, 4),
        "a parent and one slice each"
    );
    // The project's folder names its jobs; a pipeline's own section names its own.
    assert!(
        clean.iter().all(|e| e["job"]["namespace"] == "fixtures"),
        "{clean:#?}"
    );
    assert!(
        daily.iter().all(|e| e["job"]["namespace"] == "daily"),
        "{daily:#?}"
    );
    // orders_daily read orders_clean's table at the version that committed the day, and
    // names it as orders_clean's events name their output.
    let (read, written) = (&daily[2]["inputs"][0], &clean[2]["outputs"][0]);
    assert_eq!(daily[2]["eventType"], "COMPLETE");
    assert_eq!(
        (&read["namespace"], &read["name"]),
        (&written["namespace"], &written["name"])
    );
    assert_eq!(facet(read, "/facets/version/datasetVersion"), "0");
    assert_eq!(facet(written, "/facets/version/datasetVersion"), "0");

    // The project's console transport is orders_clean's, not orders_daily's.
    let told: Vec<Value> = (stderr.lines())
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("eventType").is_some())
        .collect();
    assert_eq!(told, clean, "{stderr}");
}

#[test]
fn a_collector_that_never_answers_leaves_the_run_to_end_with_its_events_in_the_log() {
    // It takes connections and never answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || silent.incoming().take(64).collect::<Vec<_>>());
    let case = Case::new("orders_clean");
    let section = format!("[lineage]\nurl = \"{url}\"\ntimeout = \"1s\"\n\n[slices]");
    case.edit_pipeline("[slices]", &section);
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    run.args(case.args("run", &["--start", DAYS[0], "--end", DAYS[2]]));
    let (code, printed) = Watched::spawn(run).end_within(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("were not delivered"), "{printed}");
    assert_eq!(
        lineage_of(&case, "latest").len(),
        8,
        "a parent and three slices"
    );
    drop(held);
}
