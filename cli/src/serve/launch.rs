//! Launching a run from the page: what to run (`Launch`, the form and the API's body), its
//! plan as `plan` shows it, and the confirmed plan started as a `backfill run` of its
//! own, with `--expect-plan`, so that the run itself refuses a plan that changed after
//! it was confirmed. The run is a process of its own group: it goes on when the browser
//! closes or this server stops, and records its history like any other run.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use backfill_engine::estimate::{check_preflight, Budget};
use backfill_engine::project::Project;
use backfill_engine::{Backfill, OpenOptions, PlanOptions, Reprocess, Selection};
use serde::{Deserialize, Serialize};

use super::Refused;
use crate::printer::plan as shown;

/// What to run, as the launch form and `/api/plan` and `/api/launch` take it. Empty
/// fields are not given.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Launch {
    /// A project's environment to run in; the first one served when empty.
    pub env: String,
    /// One of the served pipelines; all of them when empty.
    pub pipeline: String,
    /// An inclusive range of slices, as `--start` and `--end` take it.
    pub start: String,
    pub end: String,
    /// Slice keys, comma-separated, as `--keys` takes them.
    pub keys: String,
    /// States to run, comma-separated, or `all`, as `--reprocess` takes them.
    pub reprocess: String,
    /// Run slices whose sources have no files for them (`--allow-empty`).
    pub allow_empty: bool,
    /// Slices computed at once (`--concurrency`); as `run` chooses when not given.
    #[serde(deserialize_with = "number_or_empty")]
    pub concurrency: Option<u16>,
    /// To launch: the hash of the plan confirmed.
    pub plan: Option<String>,
}

/// What the server serves and launches for: the pipelines in each environment, and the
/// arguments that name them to `backfill run`.
pub struct Served {
    /// The first is the one the forms choose by default.
    pub environments: Vec<Environment>,
    /// The file and the server's `--destination`.
    pub args: Vec<String>,
}

/// The served pipelines as one environment places them.
pub struct Environment {
    /// A project's environment; none for a pipeline file.
    pub name: Option<String>,
    pub pipelines: Vec<backfill_engine::pipeline::Pipeline>,
    /// The whole project there, if the file is one.
    pub project: Option<Project>,
}

impl Served {
    /// The environment `name` (the first one when empty).
    pub(super) fn environment(&self, name: &str) -> Result<&Environment, Refused> {
        let mut served = self.environments.iter();
        let found = match name {
            "" => served.next(),
            name => served.find(|e| e.name.as_deref() == Some(name)),
        };
        found.ok_or_else(|| {
            let names: Vec<&str> = (self.environments.iter())
                .filter_map(|e| e.name.as_deref())
                .collect();
            let message = match names.is_empty() {
                true => "env: a pipeline file has no environments".to_string(),
                false => format!(
                    "env: no environment `{name}` here (there are: {})",
                    names.join(", ")
                ),
            };
            Refused(StatusCode::BAD_REQUEST, message)
        })
    }
}

impl Environment {
    /// The pipelines `pipeline` names (all when empty) and the selection of `start`..`end`
    /// or `keys`, if one is given, as a form or a query gives them.
    pub(super) fn scope(
        &self,
        pipeline: &str,
        start: &str,
        end: &str,
        keys: &str,
    ) -> Result<(Vec<String>, Option<Selection>), Refused> {
        let bad = |message: &str| Refused(StatusCode::BAD_REQUEST, message.to_string());
        let names: Vec<String> = self.pipelines.iter().map(|p| p.name.clone()).collect();
        let pipelines = match pipeline {
            "" => names,
            one if names.iter().any(|n| n == one) => vec![one.to_string()],
            other => {
                let message = format!(
                    "pipeline: no pipeline `{other}` here (there are: {})",
                    names.join(", ")
                );
                return Err(bad(&message));
            }
        };
        let range = match (start.trim(), end.trim()) {
            ("", "") => None,
            (start, end) if !start.is_empty() && !end.is_empty() => {
                Some((start.to_string(), end.to_string()))
            }
            _ => {
                return Err(bad(
                    "start/end: a range needs both its first and its last slice",
                ))
            }
        };
        let selection = Selection {
            range,
            keys: listed(keys),
            catch_up: None,
        };
        Ok((pipelines, Some(selection).filter(|s| !s.is_empty())))
    }
}

/// A launch's plan, as the page shows it and `/api/plan` answers.
#[derive(Serialize)]
pub struct PlanView {
    pub hash: String,
    /// Each pipeline's part, upstream first.
    pub pipelines: Vec<PipelinePart>,
    /// The whole run, for a project.
    pub total: Option<String>,
    /// Why a run of this plan would be refused before any slice starts, as it would say.
    pub refused: Option<String>,
    /// The command a launch runs.
    pub command: String,
    /// The plan as `plan --json` gives it.
    pub plan: serde_json::Value,
}

#[derive(Serialize)]
pub struct PipelinePart {
    pub heading: Option<String>,
    pub columns: [&'static str; 7],
    pub rows: Vec<[String; 7]>,
    pub notes: Vec<String>,
}

/// A launched run: where its page is, and where its output goes.
#[derive(Serialize)]
pub struct Launched {
    pub run_id: String,
    pub url: String,
    pub log: String,
}

/// A launch's settings, checked.
struct Chosen {
    pipelines: Vec<String>,
    selection: Selection,
    reprocess: Reprocess,
}

impl Launch {
    fn chosen(&self, environment: &Environment) -> Result<Chosen, Refused> {
        let bad = |message: String| Refused(StatusCode::BAD_REQUEST, message);
        let (pipelines, selection) =
            environment.scope(&self.pipeline, &self.start, &self.end, &self.keys)?;
        // No selection is every key of list slices; a range-cut pipeline says it needs one.
        let selection = selection.unwrap_or_default();
        if self.concurrency == Some(0) {
            return Err(bad("concurrency: at least 1 slice at a time".into()));
        }
        let names = listed(&self.reprocess);
        let reprocess = Reprocess::of_names(names.iter().map(String::as_str)).map_err(|name| {
            bad(format!(
                "reprocess: `{name}` is not a state to run (missing, changed, failed, or all)"
            ))
        })?;
        Ok(Chosen {
            pipelines,
            selection,
            reprocess,
        })
    }

    /// The `backfill run` arguments of this launch, after the served file's.
    fn run_args(
        &self,
        (served, environment): (&Served, &Environment),
        chosen: &Chosen,
        hash: &str,
    ) -> Vec<String> {
        let mut args = vec!["run".to_string()];
        args.extend(served.args.iter().cloned());
        if let Some(name) = &environment.name {
            args.extend(["--env".into(), name.clone()]);
        }
        let whole = (environment.project.as_ref()).map_or(0, |p| p.pipelines.len());
        if chosen.pipelines.len() < whole {
            args.extend(["--pipelines".into(), chosen.pipelines.join(",")]);
        }
        if let Some((start, end)) = &chosen.selection.range {
            args.extend(["--start".into(), start.clone(), "--end".into(), end.clone()])
        }
        // Keys may be any text, even one that starts with `-`: one argument with the
        // flag, so that it is never read as another flag.
        if !chosen.selection.keys.is_empty() {
            args.push(format!("--keys={}", chosen.selection.keys.join(",")));
        }
        if chosen.reprocess != Reprocess::default() {
            let names = chosen.reprocess.names();
            let named = if chosen.reprocess == Reprocess::ALL {
                "all".into()
            } else {
                names.join(",")
            };
            args.extend(["--reprocess".into(), named]);
        }
        if self.allow_empty {
            args.push("--allow-empty".into());
        }
        if let Some(concurrency) = self.concurrency {
            args.extend(["--concurrency".into(), concurrency.to_string()]);
        }
        args.extend(["--expect-plan".into(), hash.to_string()]);
        args
    }
}

/// A number, as JSON gives it or as a form's text (empty for none).
fn number_or_empty<'de, D: serde::Deserializer<'de>>(given: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u16),
        Text(String),
    }
    match Option::<Given>::deserialize(given)? {
        None => Ok(None),
        Some(Given::Number(n)) => Ok(Some(n)),
        Some(Given::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(Given::Text(text)) => {
            text.trim().parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!("`{text}` is not a number of slices"))
            })
        }
    }
}

/// A comma-separated list, without empty items.
fn listed(text: &str) -> Vec<String> {
    let items = text.split(',').map(str::trim).filter(|s| !s.is_empty());
    items.map(str::to_string).collect()
}

/// The plan of `launch`, as `plan` makes it, with the refusal a run of it would meet.
pub async fn plan(served: &Served, launch: &Launch) -> Result<PlanView, Refused> {
    let environment = served.environment(&launch.env)?;
    let chosen = launch.chosen(environment)?;
    plan_chosen(launch, (served, environment), &chosen).await
}

/// The plan of `launch`, its settings checked as `chosen`, in `environment`.
async fn plan_chosen(
    launch: &Launch,
    (served, environment): (&Served, &Environment),
    chosen: &Chosen,
) -> Result<PlanView, Refused> {
    let options = PlanOptions {
        reprocess: chosen.reprocess,
        concurrency: launch.concurrency.map(usize::from),
        #[cfg(feature = "cluster")]
        cluster: None,
    };
    let selection = &chosen.selection;
    let (hash, pipelines, total, planned, plan) = match &environment.project {
        Some(project) => {
            let chosen_project = project.clone().select(&chosen.pipelines, false)?;
            let plan = chosen_project.plan(selection, &options).await?;
            let parts = (plan.pipelines.iter())
                .map(|p| part(Some(shown::heading(p)), &p.plan))
                .collect();
            let planned = plan.pipelines.iter().flat_map(|p| p.plan.slices.clone());
            let json = serde_json::to_value(&plan).map_err(super::internal)?;
            (
                plan.hash.clone(),
                parts,
                Some(shown::total(&plan)),
                planned.collect::<Vec<_>>(),
                json,
            )
        }
        None => {
            let pipeline = environment.pipelines[0].clone();
            let open = OpenOptions {
                scope: Some(selection.clone()),
                ..OpenOptions::default()
            };
            let backfill = std::sync::Arc::new(Backfill::open(pipeline, open).await?);
            let plan = backfill.plan(selection, &options).await?;
            let json = serde_json::to_value(&plan).map_err(super::internal)?;
            (
                plan.hash.clone(),
                vec![part(None, &plan)],
                None,
                plan.slices.clone(),
                json,
            )
        }
    };
    let budget = Budget {
        allow_empty: launch.allow_empty,
        ..Budget::default()
    };
    let refused = check_preflight(&planned, &budget)
        .err()
        .map(|e| e.worded(&|s| s.name().replace('_', " ")));
    let command = std::iter::once("backfill".to_string())
        .chain(launch.run_args((served, environment), chosen, &hash))
        .map(|arg| quoted(&arg))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(PlanView {
        hash,
        pipelines,
        total,
        refused,
        command,
        plan,
    })
}

fn part(heading: Option<String>, plan: &backfill_engine::Plan) -> PipelinePart {
    PipelinePart {
        heading,
        columns: shown::COLUMNS,
        rows: plan.slices.iter().map(shown::row).collect(),
        notes: shown::notes(plan),
    }
}

/// An argument as a shell would need it written.
fn quoted(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=,@+".contains(c);
    match !arg.is_empty() && arg.chars().all(plain) {
        true => arg.to_string(),
        false => format!("'{}'", arg.replace('\'', r"'\''")),
    }
}

/// How long a launched run may take to plan and write its history's header before the
/// launch answers that it has not started (it goes on regardless).
const START_WITHIN: Duration = Duration::from_secs(300);

/// Launches `launch` if its plan is still the one confirmed: a `backfill run` of its own
/// that checks the plan again before any slice starts. Answers once the run has written
/// its history's header, with its id; a run that refuses to start answers with why.
pub async fn launch(served: &Served, launch: &Launch) -> Result<Launched, Refused> {
    let environment = served.environment(&launch.env)?;
    let chosen = launch.chosen(environment)?;
    let Some(confirmed) = launch.plan.clone() else {
        let message = "plan: a launch needs the hash of the plan it confirms (from /api/plan)";
        return Err(Refused(StatusCode::BAD_REQUEST, message.into()));
    };
    let now = plan_chosen(launch, (served, environment), &chosen).await?;
    if now.hash != confirmed {
        return Err(changed(&confirmed, &now.hash));
    }
    if let Some(refused) = now.refused {
        return Err(Refused(StatusCode::BAD_REQUEST, refused));
    }
    let args = launch.run_args((served, environment), &chosen, &confirmed);
    let log = log_file().map_err(super::internal)?;
    let child = start(&args, &log).map_err(super::internal)?;
    let started = tokio::task::spawn_blocking(move || started(child, &log, START_WITHIN));
    started.await.map_err(super::internal)?
}

fn changed(confirmed: &str, now: &str) -> Refused {
    Refused(
        StatusCode::CONFLICT,
        format!("the plan has changed since {confirmed} was confirmed (another run committed, or a source or the SQL changed): it is now {now}; nothing was launched. Look at the new plan and confirm it"),
    )
}

/// A new file for a launched run's output, in the system's temporary folder.
fn log_file() -> std::io::Result<PathBuf> {
    let folder = std::env::temp_dir().join("backfill-launches");
    std::fs::create_dir_all(&folder)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    Ok(folder.join(format!("launch-{stamp}-{}.log", std::process::id())))
}

/// Starts `backfill` with `args` in a process group of its own (so that a Ctrl-C or the
/// end of this server does not reach it), its events and errors going to `log`.
fn start(args: &[String], log: &PathBuf) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log)?;
    Command::new(std::env::current_exe()?)
        .args(args)
        .arg("--events")
        .env("NO_COLOR", "1")
        .env(
            "BACKFILL_STARTED_BY",
            format!("{} through the run page", backfill_engine::run::who()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
}

/// Waits until the run's history has its header (its first `pipeline_started` event) or
/// the run ends before, up to `limit`; the run is then left to go on, and waited for by a
/// thread of its own so that it does not linger as a zombie.
fn started(mut child: Child, log: &PathBuf, limit: Duration) -> Result<Launched, Refused> {
    let deadline = Instant::now() + limit;
    loop {
        let output = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(run_id) = started_run(&output) {
            std::thread::spawn(move || child.wait());
            let pipeline = started_pipeline(&output).unwrap_or_default();
            let kept = log.with_file_name(format!("{run_id}.log"));
            let log = match std::fs::rename(log, &kept) {
                Ok(()) => kept,
                Err(_) => log.clone(),
            };
            return Ok(Launched {
                url: format!("/runs/{pipeline}/{run_id}"),
                run_id,
                log: log.display().to_string(),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said: Vec<&str> = output.lines().filter(|l| !l.starts_with('{')).collect();
            let said = said.join("\n");
            let said = said.trim().trim_start_matches("error: ");
            let status = match status.code() {
                Some(2) if said.contains("--expect-plan") => StatusCode::CONFLICT,
                Some(2) => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            return Err(Refused(status, format!("the run did not start: {said}")));
        }
        if Instant::now() > deadline {
            std::thread::spawn(move || child.wait());
            let message = format!(
                "the run has not started within {}s; it goes on, its output is in {}",
                limit.as_secs(),
                log.display()
            );
            return Err(Refused(StatusCode::GATEWAY_TIMEOUT, message));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The run id of the first `pipeline_started` event in a run's `--events` output.
fn started_run(output: &str) -> Option<String> {
    started_header(output)?["run_id"]
        .as_str()
        .map(str::to_string)
}

fn started_pipeline(output: &str) -> Option<String> {
    started_header(output)?["pipeline"]
        .as_str()
        .map(str::to_string)
}

fn started_header(output: &str) -> Option<serde_json::Value> {
    output.lines().find_map(|line| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        (event["event"] == "pipeline_started").then(|| event["header"].clone())
    })
}
