//! `backfill serve`: the run page. Every run recorded next to the tables, from whichever
//! process or machine started it, each run's page live as it goes (its JavaScript asks
//! for the page's live part every second), a Cancel button that writes the run's stop
//! request, a launch form that shows a plan and launches it once confirmed
//! (`launch.rs`), the tables' status (`status.rs`); and the same facts as JSON under
//! `/api/`. The pages themselves are `crate::html`'s.
//!
//! Presentation only: runs are read from the engine's history, a cancel is the engine's
//! `request_stop`, exactly as `backfill cancel` does it, and a launch is a `backfill run`
//! process. Nothing here holds state a restart would lose but a cache of the attempts
//! already read.
//!
//! Safety: POSTs must carry the `x-backfill` header, which a cross-site form cannot send
//! and a cross-site script cannot without a CORS permission this server never gives; with
//! a token, every request must carry it. Storage options are never rendered or sent: the
//! pages and answers hold run histories, plans and statuses only.

mod launch;
mod status;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::history::{Attempt, History, RunEntry, RunRecord, StopRequest};
use backfill_engine::pipeline::Pipeline;
use backfill_engine::run::cancel::request_stop;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::html::{self, RunView, Shown};

use launch::Launch;
pub use launch::{Environment, Served};
use status::StatusQuery;

/// The header every POST must carry: proof that it was not sent by another site's form.
pub const REQUEST_HEADER: &str = "x-backfill";
const TOKEN_COOKIE: &str = "backfill_token";

struct App {
    served: Served,
    /// Each served pipeline's run history, by its environment's index and its name.
    histories: HashMap<(usize, String), History>,
    token: Option<String>,
    /// The attempts read so far of each run followed, by pipeline and run id; each run
    /// has its own lock, so pages of different runs never wait on each other's reads.
    followed: std::sync::Mutex<HashMap<RunKey, Arc<Mutex<Followed>>>>,
}

/// The most runs whose attempts the server keeps before it forgets those not being read.
const MOST_FOLLOWED: usize = 64;

/// A run by its pipeline and id (ids are unique whatever the environment).
type RunKey = (String, String);

#[derive(Default)]
struct Followed {
    seen: HashSet<String>,
    attempts: Vec<Attempt>,
}

/// Serves the runs, plans and status of `served` on `bind` until the process ends; prints
/// the address it listens on first.
pub async fn serve(served: Served, bind: SocketAddr, token: Option<String>) -> anyhow::Result<()> {
    let mut histories = HashMap::new();
    for (i, environment) in served.environments.iter().enumerate() {
        for pipeline in &environment.pipelines {
            let history = backfill_engine::sink::history_at(&pipeline.destination)?;
            histories.insert((i, pipeline.name.clone()), history);
        }
    }
    let app = Arc::new(App {
        served,
        histories,
        token,
        followed: Default::default(),
    });
    let router = Router::new()
        .route("/", get(runs_page))
        .route("/runs/{pipeline}/{run}", get(run_page))
        .route("/launch", get(launch_page))
        .route("/status", get(status_page))
        .route("/api/status", get(status_api))
        .route("/api/plan", get(plan_api))
        .route("/api/launch", post(launch_api))
        .route("/api/runs", get(runs_api))
        .route("/api/runs/{pipeline}/{run}", get(run_api))
        .route("/api/runs/{pipeline}/{run}/cancel", post(cancel_api))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("--bind: cannot listen on {bind}: {e}"))?;
    println!("serving on http://{}/", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}

/// A refusal: its status and a message that says what was wrong.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (self.0, Json(Body { error: self.1 })).into_response()
    }
}

impl From<backfill_engine::Error> for Refused {
    fn from(error: backfill_engine::Error) -> Self {
        let status = match error.fault() {
            backfill_engine::Fault::User => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        Refused(status, error.to_string())
    }
}

/// Refuses requests without the token (when there is one) and cross-site POSTs. A
/// browser's first `?token=` is kept in a cookie for the pages it then opens.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let from_query = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .map(str::to_string);
    if let Some(token) = &app.token {
        let headers = request.headers();
        let bearer = header_value(headers, header::AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
        let cookie = header_value(headers, header::COOKIE.as_str()).and_then(|cookies| {
            cookies.split(';').find_map(|c| {
                let (name, value) = c.trim().split_once('=')?;
                (name == TOKEN_COOKIE).then(|| value.to_string())
            })
        });
        let given = [bearer, cookie, from_query.clone()];
        if !given.iter().flatten().any(|g| same_secret(g, token)) {
            let message = "this server needs its token: `Authorization: Bearer TOKEN`, or open a page once with ?token=TOKEN";
            return Refused(StatusCode::UNAUTHORIZED, message.into()).into_response();
        }
    }
    if request.method() == axum::http::Method::POST
        && header_value(request.headers(), REQUEST_HEADER).as_deref() != Some("1")
    {
        let message = format!(
            "a POST must carry the `{REQUEST_HEADER}: 1` header (cross-site requests are refused)"
        );
        return Refused(StatusCode::FORBIDDEN, message).into_response();
    }
    let mut response = next.run(request).await;
    let kept =
        from_query.filter(|given| app.token.as_deref().is_some_and(|t| same_secret(given, t)));
    if let Some(token) = kept {
        let cookie = format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
        if let Ok(value) = cookie.parse() {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    response
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_string)
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    let differ = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (g, e)| acc | (g ^ e));
    differ == 0 && given.len() == expected.len()
}

impl App {
    /// The environments (their indexes) that serve `pipeline`, or why none does.
    fn places_of(&self, pipeline: &str) -> Result<Vec<usize>, Refused> {
        let environments = self.served.environments.iter().enumerate();
        let places: Vec<usize> = environments
            .filter(|(_, e)| e.pipelines.iter().any(|p| p.name == pipeline))
            .map(|(i, _)| i)
            .collect();
        if places.is_empty() {
            let message = format!(
                "no pipeline `{pipeline}` here (there are: {})",
                self.pipeline_names().join(", ")
            );
            return Err(Refused(StatusCode::NOT_FOUND, message));
        }
        Ok(places)
    }

    fn history(&self, environment: usize, pipeline: &str) -> &History {
        let place = (environment, pipeline.to_string());
        self.histories
            .get(&place)
            .expect("every served pipeline has a history")
    }

    fn pipeline(&self, environment: usize, name: &str) -> Option<&Pipeline> {
        let pipelines = &self.served.environments[environment].pipelines;
        pipelines.iter().find(|p| p.name == name)
    }

    fn environment_name(&self, environment: usize) -> Option<String> {
        self.served.environments[environment].name.clone()
    }

    /// The served environments' names, the forms' default first; none for a pipeline.
    fn environment_names(&self) -> Vec<&str> {
        let environments = self.served.environments.iter();
        environments.filter_map(|e| e.name.as_deref()).collect()
    }

    /// The served pipelines' names, upstream first (the same in every environment).
    fn pipeline_names(&self) -> Vec<&str> {
        let pipelines = self.served.environments[0].pipelines.iter();
        pipelines.map(|p| p.name.as_str()).collect()
    }

    /// Every run of every pipeline in every environment, newest first, with the index of
    /// its environment.
    async fn runs(&self) -> Result<Vec<(usize, RunEntry)>, Refused> {
        let now = SystemClock.now();
        let mut listed = Vec::new();
        for (i, environment) in self.served.environments.iter().enumerate() {
            for pipeline in &environment.pipelines {
                let entries = self.history(i, &pipeline.name).entries(&pipeline.name, now);
                listed.extend(entries.await?.into_iter().map(|entry| (i, entry)));
            }
        }
        listed.sort_by_key(|(_, entry)| std::cmp::Reverse(entry.header.started_at));
        Ok(listed)
    }

    /// Where the slices of the run of `entry` stand: from its end once it has ended, else
    /// from the attempts it has recorded (read once each across requests).
    async fn tally(&self, environment: usize, entry: &RunEntry) -> Result<html::Tally, Refused> {
        if let Some(end) = &entry.end {
            return Ok(html::Tally::of_end(entry.header.slices, end));
        }
        let record = self.followed(environment, entry.clone()).await?;
        Ok(html::Tally::of_record(&record))
    }

    /// Run `run` of `pipeline` as a list shows it (its attempts not read), with the index
    /// of the environment whose table has it, or why not.
    async fn entry(&self, pipeline: &str, run: &str) -> Result<(usize, RunEntry), Refused> {
        if !is_run_id(run) {
            let message = format!("`{run}` is not a run id (such as 20240611T101500Z-3f2a1c)");
            return Err(Refused(StatusCode::BAD_REQUEST, message));
        }
        for environment in self.places_of(pipeline)? {
            let history = self.history(environment, pipeline);
            if let Some(entry) = history.entry(run, pipeline, SystemClock.now()).await? {
                return Ok((environment, entry));
            }
        }
        let message = format!("no run `{run}` of {pipeline} in its table's history");
        Err(Refused(StatusCode::NOT_FOUND, message))
    }

    /// The run `run` of `pipeline` as its page shows it; for a run of several pipelines,
    /// with a row of each one's slices, upstream first.
    async fn view(&self, pipeline: &str, run: &str) -> Result<RunView, Refused> {
        let (environment, entry) = self.entry(pipeline, run).await?;
        let record = self.followed(environment, entry).await?;
        let served = self.pipeline(environment, pipeline);
        let mut view = RunView::of(&record, served, SystemClock.now());
        view.environment = self.environment_name(environment);
        let others = self.parts_besides(environment, pipeline, run).await?;
        if !others.is_empty() {
            let pipelines = &self.served.environments[environment].pipelines;
            let order = |name: &str| pipelines.iter().position(|p| p.name == name);
            let mut parts: Vec<html::Part> = others.iter().map(RunView::part).collect();
            parts.push(view.part());
            parts.sort_by_key(|part| order(&part.pipeline));
            view.parts = parts;
        }
        Ok(view)
    }

    /// The other pipelines' parts of the run `run` of `pipeline`, when it ran a project's
    /// pipelines together, as they are now.
    async fn parts_besides(
        &self,
        environment: usize,
        pipeline: &str,
        run: &str,
    ) -> Result<Vec<RunView>, Refused> {
        let mut parts = Vec::new();
        let pipelines = &self.served.environments[environment].pipelines;
        for other in pipelines.iter().filter(|p| p.name != pipeline) {
            let history = self.history(environment, &other.name);
            let now = SystemClock.now();
            if let Some(entry) = history.entry(run, &other.name, now).await? {
                let record = self.followed(environment, entry).await?;
                parts.push(RunView::of(&record, Some(other), now));
            }
        }
        Ok(parts)
    }

    /// The run of `entry`, with every attempt recorded so far: only those not read
    /// before are read.
    async fn followed(&self, environment: usize, entry: RunEntry) -> Result<RunRecord, Refused> {
        let key = (entry.header.pipeline.clone(), entry.header.run_id.clone());
        let history = self.history(environment, &key.0);
        let followed = {
            let mut runs = self.followed.lock().expect("not poisoned");
            if runs.len() >= MOST_FOLLOWED && !runs.contains_key(&key) {
                // Forget the runs no request is reading: one asked for again is read
                // again from its history.
                runs.retain(|_, run| Arc::strong_count(run) > 1);
            }
            runs.entry(key.clone()).or_default().clone()
        };
        let mut followed = followed.lock().await;
        let new = history.new_attempts(&key.1, &mut followed.seen).await?;
        followed.attempts.extend(new);
        Ok(RunRecord {
            header: entry.header,
            end: entry.end,
            attempts: followed.attempts.clone(),
            heartbeat: entry.heartbeat,
            stop: entry.stop,
        })
    }
}

/// `20240611T101500Z-3f2a1c`: what `run` names its runs.
fn is_run_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 23
        && bytes[8] == b'T'
        && bytes[15] == b'Z'
        && bytes[16] == b'-'
        && text[..8].bytes().all(|b| b.is_ascii_digit())
        && text[9..15].bytes().all(|b| b.is_ascii_digit())
        && text[17..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A run of a pipeline as the API lists it: where its table is, and its entry.
#[derive(Serialize)]
struct Listed {
    /// A project's environment; none for a pipeline file.
    environment: Option<String>,
    #[serde(flatten)]
    entry: RunEntry,
}

async fn runs_api(State(app): State<Arc<App>>) -> Result<Json<Vec<Listed>>, Refused> {
    let runs = app.runs().await?.into_iter();
    let listed = runs.map(|(environment, entry)| Listed {
        environment: app.environment_name(environment),
        entry,
    });
    Ok(Json(listed.collect()))
}

async fn run_api(
    State(app): State<Arc<App>>,
    Path((pipeline, run)): Path<(String, String)>,
) -> Result<Json<RunView>, Refused> {
    Ok(Json(app.view(&pipeline, &run).await?))
}

async fn cancel_api(
    State(app): State<Arc<App>>,
    Path((pipeline, run)): Path<(String, String)>,
) -> Result<Response, Refused> {
    let (environment, _) = app.entry(&pipeline, &run).await?;
    let chosen: Vec<Pipeline> = app
        .pipeline(environment, &pipeline)
        .cloned()
        .into_iter()
        .collect();
    let request = StopRequest {
        requested_at: SystemClock.now(),
        by: format!("the run page on {}", backfill_engine::run::host()),
    };
    let asked = request_stop(&chosen, &run, &request).await?;
    Ok(Json(asked).into_response())
}

async fn runs_page(State(app): State<Arc<App>>) -> Result<Html<String>, Refused> {
    let mut lines = Vec::new();
    for (environment, entry) in app.runs().await? {
        let tally = app.tally(environment, &entry).await?;
        lines.push((app.environment_name(environment), entry, tally));
    }
    html::runs(&lines).map(Html).map_err(internal)
}

#[derive(serde::Deserialize)]
struct PageQuery {
    /// `live`: only the part of the page that changes, for its script to swap in.
    part: Option<String>,
}

async fn run_page(
    State(app): State<Arc<App>>,
    Path((pipeline, run)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> Result<Html<String>, Refused> {
    let view = app.view(&pipeline, &run).await?;
    let shown = match query.part.as_deref() {
        Some("live") => Shown::Part,
        _ => Shown::Page,
    };
    view.page(shown).map(Html).map_err(internal)
}

async fn plan_api(
    State(app): State<Arc<App>>,
    Query(form): Query<Launch>,
) -> Result<Json<launch::PlanView>, Refused> {
    Ok(Json(launch::plan(&app.served, &form).await?))
}

async fn launch_api(
    State(app): State<Arc<App>>,
    Json(form): Json<Launch>,
) -> Result<(StatusCode, Json<launch::Launched>), Refused> {
    let launched = launch::launch(&app.served, &form).await?;
    Ok((StatusCode::CREATED, Json(launched)))
}

/// What the launch page is asked for besides the launch itself.
#[derive(serde::Deserialize)]
struct Asked {
    /// `plan`: show the plan of the form's launch (the form's button).
    show: Option<String>,
    /// The plan a launch was refused for, because it had changed.
    changed: Option<String>,
}

/// The launch form; once it names slices, their plan and a button that launches it.
async fn launch_page(
    State(app): State<Arc<App>>,
    Query(form): Query<Launch>,
    Query(Asked { show, changed }): Query<Asked>,
) -> Result<Html<String>, Refused> {
    let (plan, error) = match show.is_some() || changed.is_some() {
        true => match launch::plan(&app.served, &form).await {
            Ok(plan) => (Some(plan), None),
            Err(Refused(_, message)) => (None, Some(message)),
        },
        false => (None, None),
    };
    let page = LaunchPage {
        pipelines: app.pipeline_names(),
        environments: app.environment_names(),
        form: &form,
        plan: plan.as_ref(),
        error,
        changed,
    };
    html::render("launch.html", &page)
        .map(Html)
        .map_err(internal)
}

/// The launch form, and once it is filled in, its plan.
#[derive(Serialize)]
struct LaunchPage<'a> {
    pipelines: Vec<&'a str>,
    /// A project's environments served.
    environments: Vec<&'a str>,
    form: &'a Launch,
    plan: Option<&'a launch::PlanView>,
    /// Why the form's launch cannot be planned.
    error: Option<String>,
    /// The plan confirmed before, when a launch was refused because it changed.
    changed: Option<String>,
}

async fn status_api(
    State(app): State<Arc<App>>,
    Query(query): Query<StatusQuery>,
) -> Result<Json<serde_json::Map<String, serde_json::Value>>, Refused> {
    let statuses = status::statuses(&app.served, &query).await?;
    let by_pipeline = statuses.into_iter().map(|(name, status)| {
        let status = serde_json::to_value(status).map_err(internal)?;
        Ok((name, status))
    });
    Ok(Json(by_pipeline.collect::<Result<_, Refused>>()?))
}

/// The status page: the form, and each pipeline's status for what it asks.
#[derive(Serialize)]
struct StatusPage<'a> {
    /// A project's environments served.
    environments: Vec<&'a str>,
    form: &'a StatusQuery,
    pipelines: Vec<status::StatusPart>,
    columns: [&'static str; 9],
    styles: &'static [html::Style],
    error: Option<String>,
}

async fn status_page(
    State(app): State<Arc<App>>,
    Query(query): Query<StatusQuery>,
) -> Result<Html<String>, Refused> {
    let (pipelines, error) = match status::statuses(&app.served, &query).await {
        Ok(statuses) => {
            let parts = statuses.iter().map(|(name, status)| {
                let spec = app.pipeline(0, name).map(|p| &p.slices);
                status::StatusPart::of(name, status, spec)
            });
            (parts.collect(), None)
        }
        Err(Refused(_, message)) => (vec![], Some(message)),
    };
    let page = StatusPage {
        environments: app.environment_names(),
        form: &query,
        pipelines,
        columns: crate::printer::status::COLUMNS,
        styles: &html::STYLES,
        error,
    };
    html::render("status.html", &page)
        .map(Html)
        .map_err(internal)
}

fn internal(error: impl std::fmt::Display) -> Refused {
    Refused(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
}
