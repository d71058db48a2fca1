//! Argument groups several commands share, and opening a pipeline with them: settings
//! are layered as the pipeline file, then these overrides, then the engine's validation.

use std::path::PathBuf;
use std::sync::Arc;

use backfill_engine::clock::{Clock, SystemClock};
use backfill_engine::pipeline::{self, location_to_url};
use backfill_engine::project::{self, Project};
use backfill_engine::{Backfill, CatchUp, OpenOptions, Reprocess, Selection, Setting, Through};
use clap::Args;

/// Where slices compute.
#[cfg(feature = "cluster")]
#[derive(Args)]
pub struct ClusterArgs {
    /// Compute the slices' transforms on this Ballista cluster (its scheduler,
    /// df://HOST:PORT) instead of this process, which still checks and commits every
    /// slice; a plan runs its sample slice there.
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
    #[command(flatten)]
    security: SecurityArgs,
}

#[cfg(feature = "cluster")]
impl ClusterArgs {
    /// The cluster, once its scheduler answers and takes this process; an unreachable
    /// one, or one with another key, stops the command before anything is opened or
    /// written.
    pub async fn connect(&self) -> anyhow::Result<Option<backfill_engine::cluster::Cluster>> {
        use backfill_engine::cluster::Cluster;
        Ok(match &self.cluster {
            Some(url) => Some(Cluster::connect(url, self.security.load()?).await?),
            None => None,
        })
    }
}

/// How a cluster's processes take only each other: a shared key, certificates, or both.
#[cfg(feature = "cluster")]
#[derive(Args)]
pub struct SecurityArgs {
    /// A file holding the cluster's key, or set the key itself in BACKFILL_CLUSTER_KEY.
    /// With a key, the cluster's processes (scheduler, executors, runs) connect only to
    /// each other, over TLS, and every one of them needs the same key.
    #[arg(
        long,
        env = "BACKFILL_CLUSTER_KEY_FILE",
        hide_env_values = true,
        value_name = "FILE"
    )]
    cluster_key_file: Option<PathBuf>,
    /// The authority (PEM) that signed the cluster's TLS certificates: servers must hold
    /// one it signed for the host they are reached at, and so must clients unless the
    /// cluster has a key.
    #[arg(
        long,
        env = "BACKFILL_TLS_CA",
        hide_env_values = true,
        value_name = "FILE"
    )]
    tls_ca: Option<PathBuf>,
    /// This process's TLS certificate (PEM), which a scheduler or an executor serves with
    /// and a process presents to the servers it connects to.
    #[arg(
        long,
        env = "BACKFILL_TLS_CERT",
        hide_env_values = true,
        value_name = "FILE"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "BACKFILL_TLS_KEY",
        hide_env_values = true,
        value_name = "FILE"
    )]
    tls_key: Option<PathBuf>,
}

#[cfg(feature = "cluster")]
impl SecurityArgs {
    pub fn load(&self) -> anyhow::Result<backfill_engine::cluster::Security> {
        use backfill_engine::cluster::{CertificateFiles, Security};
        let files = CertificateFiles {
            certificate: self.tls_cert.clone(),
            private_key: self.tls_key.clone(),
            authority: self.tls_ca.clone(),
        };
        Ok(Security::load(self.cluster_key_file.as_deref(), &files)?)
    }
}

/// Which states of slices to run.
#[derive(Args)]
pub struct ChoiceArgs {
    /// The states to run, comma-separated [default: missing,changed,failed].
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "force")]
    reprocess: Vec<State>,
    /// Redo every selected slice, done ones too (still one atomic commit each, no
    /// duplicates); the same as --reprocess all.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum State {
    Missing,
    Changed,
    Failed,
    All,
}

impl ChoiceArgs {
    pub fn reprocess(&self) -> Reprocess {
        if self.force {
            return Reprocess::ALL;
        }
        let names = self.reprocess.iter().map(|state| {
            let value = clap::ValueEnum::to_possible_value(state);
            value
                .expect("every state has a name")
                .get_name()
                .to_string()
        });
        let names: Vec<String> = names.collect();
        Reprocess::of_names(names.iter().map(String::as_str)).expect("clap checked the names")
    }
}

/// Which slices: an inclusive range of days or hours, or a catch-up through a bound;
/// keys; or both.
#[derive(Args)]
pub struct SelectionArgs {
    /// First slice, inclusive: YYYY-MM-DD (daily) or YYYY-MM-DDTHH (hourly); with
    /// --through, instead of the pipeline's `[slices] start`.
    #[arg(long)]
    start: Option<String>,
    /// Last slice, inclusive.
    #[arg(long, requires = "start", conflicts_with = "through")]
    end: Option<String>,
    /// Catch up: every slice from the pipeline's `[slices] start` (or --start) through
    /// this day or hour, or through `now`: the last slice complete by now, less the
    /// pipeline's `[slices] delay`. Slices with no source data yet are left for a later
    /// catch-up (unless --allow-empty). `now` is the BACKFILL_NOW variable if set (an
    /// RFC 3339 instant, for tests and replays), else the system clock.
    #[arg(long, value_name = "now|DAY|HOUR")]
    through: Option<String>,
    /// With --through: check done slices for changed inputs (late files, corrected
    /// partitions) only within the last N slices through the bound, so a catch-up's
    /// cost follows N, not the history. Missing and failed slices run wherever they are.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    lookback: Option<u32>,
    /// Slice keys, comma-separated; or keys of one dimension, `--keys tenant=acme,globex`
    /// (repeat it for each dimension; a dimension not named takes all of its keys).
    /// For list slices, defaults to the pipeline's keys.
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
}

impl SelectionArgs {
    pub fn selection(&self) -> anyhow::Result<Selection> {
        if self.start.is_some() && self.end.is_none() && self.through.is_none() {
            let message = "give {end} too, or {through} to catch up from it";
            return Err(backfill_engine::Error::setting(&[Setting::Start], message).into());
        }
        if self.lookback.is_some() && self.through.is_none() {
            let message = "is how far back a catch-up looks: give {through} too";
            return Err(backfill_engine::Error::setting(&[Setting::Lookback], message).into());
        }
        let catch_up = match &self.through {
            Some(through) => Some(CatchUp {
                start: self.start.clone(),
                through: match through.as_str() {
                    "now" => Through::Now(now()?),
                    bound => Through::At(bound.to_string()),
                },
                lookback: self.lookback,
            }),
            None => None,
        };
        Ok(Selection {
            range: self
                .end
                .clone()
                .and_then(|end| Some((self.start.clone()?, end))),
            keys: self.keys.clone(),
            catch_up,
        })
    }

    /// The selection, if one was given at all.
    pub fn given(&self) -> anyhow::Result<Option<Selection>> {
        Ok(Some(self.selection()?).filter(|selection| !selection.is_empty()))
    }
}

/// The instant a catch-up through `now` takes as now: `BACKFILL_NOW`, or the system clock.
pub fn now() -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    match std::env::var("BACKFILL_NOW") {
        Ok(text) => {
            let at = chrono::DateTime::parse_from_rfc3339(&text).map_err(|e| {
                backfill_engine::Error::config(
                    "BACKFILL_NOW",
                    format!(
                        "`{text}` is not an RFC 3339 instant such as 2024-01-11T06:00:00Z: {e}"
                    ),
                )
            })?;
            Ok(at.to_utc())
        }
        Err(_) => Ok(SystemClock.now()),
    }
}

/// The pipeline a command works on, and what this invocation overrides in its file.
#[derive(Args, Clone)]
pub struct PipelineArgs {
    /// The pipeline file (TOML), or a project file listing pipelines: plan, run and status
    /// work on all of them, other commands on the one --pipeline names.
    pipeline: PathBuf,
    /// The Delta table to work on instead of the pipeline's destination.url (a path
    /// relative to the working directory, or a URL).
    #[arg(long, value_name = "PATH_OR_URL")]
    destination: Option<String>,
    /// With a project file: the environment whose tables to work on, as the project
    /// declares it [default: prod].
    #[arg(long, value_name = "NAME")]
    env: Option<String>,
    /// With a project file: the pipeline to work on (for plan, run and status, the same
    /// as --pipelines NAME).
    #[arg(long = "pipeline", value_name = "NAME")]
    member: Option<String>,
}

/// An environment's name (a project's), its chosen pipelines and the whole project there.
pub type Placed = (Option<String>, Vec<pipeline::Pipeline>, Option<Project>);

/// What `plan`, `run` and `status` take a project file with: which of its pipelines.
#[derive(Args)]
pub struct ProjectArgs {
    /// With a project file: only these pipelines (comma-separated); the tables of the
    /// pipelines they read are read as they are.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pipelines: Vec<String>,
    /// With --pipelines: every pipeline downstream of them too.
    #[arg(long)]
    downstream: bool,
}

/// A project file and which of its pipelines, for the commands that take only a
/// project: `diff` and `promote`.
#[derive(Args)]
pub struct ProjectFileArgs {
    /// The project file (TOML) listing the pipelines and their environments.
    project: PathBuf,
    /// Only these pipelines (comma-separated).
    #[arg(long, alias = "pipeline", value_delimiter = ',', value_name = "NAMES")]
    pipelines: Vec<String>,
    /// With --pipelines: every pipeline downstream of them too.
    #[arg(long, requires = "pipelines")]
    downstream: bool,
}

impl ProjectFileArgs {
    /// The project's chosen pipelines in `environment`.
    pub fn load(&self, environment: &str) -> anyhow::Result<Project> {
        if !project::is_project_file(&self.project) {
            return Err(backfill_engine::Error::config(
                self.project.display().to_string(),
                "is not a project file (a file that lists `pipelines`)",
            )
            .into());
        }
        let loaded = Project::load(&self.project, Some(environment))?;
        Ok(loaded.select(&self.pipelines, self.downstream)?)
    }
}

/// What a command works on: one pipeline, or a project's pipelines.
pub enum Target {
    Pipeline(Arc<Backfill>),
    Project(Project),
}

impl PipelineArgs {
    /// The pipeline, or the project the file is, narrowed and placed by `project`;
    /// `scope` is the selection the command works on, if it has one.
    pub async fn target(
        &self,
        project: &ProjectArgs,
        scope: Option<Selection>,
    ) -> anyhow::Result<Target> {
        if !project::is_project_file(&self.pipeline) {
            self.only_for_a_project(!project.pipelines.is_empty(), "--pipelines")?;
            return Ok(Target::Pipeline(self.open(scope).await?));
        }
        if self.destination.is_some() {
            let message = "a project places each pipeline's destination (see its environments)";
            return Err(backfill_engine::Error::config("--destination", message).into());
        }
        let loaded = Project::load(&self.pipeline, self.env.as_deref())?;
        self.member_of(&loaded)?;
        // --pipeline NAME is --pipelines NAME here.
        let chosen = [&project.pipelines[..], self.member.as_slice()].concat();
        Ok(Target::Project(loaded.select(&chosen, project.downstream)?))
    }

    /// The pipeline, or the project's pipelines narrowed by `project`, as files and their
    /// environment place them; nothing is opened.
    pub fn pipelines(&self, project: &ProjectArgs) -> anyhow::Result<Vec<pipeline::Pipeline>> {
        let is_project = project::is_project_file(&self.pipeline);
        if is_project && self.member.is_none() {
            let loaded = Project::load(&self.pipeline, self.env.as_deref())?;
            return Ok(loaded
                .select(&project.pipelines, project.downstream)?
                .pipelines);
        }
        if !is_project {
            self.only_for_a_project(!project.pipelines.is_empty(), "--pipelines")?;
        }
        Ok(vec![self.load()?])
    }

    /// Refuses the project-only flags with a pipeline file.
    fn only_for_a_project(&self, pipelines: bool, flag: &str) -> backfill_engine::Result<()> {
        let given = [
            (self.env.is_some(), "--env"),
            (self.member.is_some(), "--pipeline"),
            (pipelines, flag),
        ];
        match given.iter().find(|(given, _)| *given) {
            Some((_, flag)) => Err(backfill_engine::Error::config(
                *flag,
                format!(
                    "{flag} is for a project file; {} is a pipeline file",
                    self.pipeline.display()
                ),
            )),
            None => Ok(()),
        }
    }

    /// The file and `--destination`, as arguments to another `backfill` command (a run
    /// launched from the run page, which names the environment itself).
    pub fn as_args(&self) -> Vec<String> {
        let mut args = vec![self.pipeline.display().to_string()];
        if let Some(destination) = &self.destination {
            args.extend(["--destination".to_string(), destination.clone()]);
        }
        args
    }

    /// The pipelines `pipelines` gives, in each environment: for a project file, the one
    /// --env names or every one it declares, with the whole project there; for a pipeline
    /// file, the pipeline alone, in no environment.
    pub fn in_environments(&self, project: &ProjectArgs) -> anyhow::Result<Vec<Placed>> {
        if !project::is_project_file(&self.pipeline) {
            let pipelines = self.pipelines(project)?;
            return Ok(vec![(None, pipelines, None)]);
        }
        let names = match &self.env {
            Some(env) => vec![env.clone()],
            None => Project::environments(&self.pipeline)?,
        };
        let place = |env: String| -> anyhow::Result<Placed> {
            let there = PipelineArgs {
                env: Some(env.clone()),
                ..self.clone()
            };
            let pipelines = there.pipelines(project)?;
            Ok((Some(env), pipelines, Some(there.whole_project()?)))
        };
        names.into_iter().map(place).collect()
    }

    /// Every pipeline of the project file, in its environment, whatever is selected.
    pub fn whole_project(&self) -> backfill_engine::Result<Project> {
        Project::load(&self.pipeline, self.env.as_deref())
    }

    /// Refuses a --pipeline that names no pipeline of `project`, under that flag.
    fn member_of(&self, project: &Project) -> backfill_engine::Result<()> {
        match &self.member {
            Some(name) if !project.names().contains(&name.as_str()) => {
                Err(backfill_engine::Error::config(
                    "--pipeline",
                    format!(
                        "no pipeline `{name}` in {} (it lists {})",
                        self.pipeline.display(),
                        project.names().join(", ")
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The pipeline file, or the pipeline --pipeline names in the project file, as its
    /// environment places it; then this invocation's overrides.
    fn load(&self) -> backfill_engine::Result<pipeline::Pipeline> {
        let mut pipeline = if project::is_project_file(&self.pipeline) {
            let project = Project::load(&self.pipeline, self.env.as_deref())?;
            let names = project.names().join(", ");
            let Some(name) = &self.member else {
                return Err(backfill_engine::Error::config(
                    self.pipeline.display().to_string(),
                    format!("is a project file: name the pipeline to work on with --pipeline (one of {names})"),
                ));
            };
            self.member_of(&project)?;
            let chosen = project.pipelines.into_iter().find(|p| &p.name == name);
            chosen.expect("the member is one of the project's pipelines")
        } else {
            self.only_for_a_project(false, "")?;
            project::load_pipeline(&self.pipeline)?
        };
        if let Some(destination) = &self.destination {
            let cwd = std::env::current_dir().unwrap_or_default();
            pipeline.destination.url = location_to_url(destination, &cwd)
                .map_err(|m| backfill_engine::Error::config("--destination", m))?;
        }
        Ok(pipeline)
    }

    /// Opens the pipeline; `scope` is the selection the command works on, if it has one.
    pub async fn open(&self, scope: Option<Selection>) -> anyhow::Result<Arc<Backfill>> {
        let options = OpenOptions {
            scope,
            ..OpenOptions::default()
        };
        Ok(Arc::new(Backfill::open(self.load()?, options).await?))
    }
}
