//! A project: several pipelines run as one chain, in one environment.
//!
//! The project file (`backfill.toml`) lists pipeline files (paths or globs, relative to
//! it) and may declare environments, each a root folder or bucket prefix its
//! destinations live under:
//!
//! ```toml
//! pipelines = ["pipelines/*.toml"]
//!
//! [environments.prod]
//! root = "../warehouse"
//!
//! [environments.staging]
//! root = "../warehouse-staging"
//! ```
//!
//! A pipeline depends on another when a source reads its output: `pipeline = "name"`, or
//! the URL of its destination. In an environment other than `prod`, every destination
//! (and so every such source) moves from under prod's root to the same place under the
//! environment's root, so a staging run never touches a production table.
//!
//! This module owns the file format, the environments and the order of the pipelines
//! (a DAG; a cycle is an error that names it). It does no IO beyond reading the project
//! and pipeline files. Planning and running a project are in `plan.rs` and `run.rs`.

mod diff;
mod plan;
mod promote;
mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::error::{Error, Result};
use crate::pipeline::{self, Locator, Output, Pipeline, SourceFormat};

pub use diff::{Diff, PipelineDiff, SliceDiff};
pub use plan::{PipelinePlan, ProjectPlan};
pub use promote::{Promoted, Promotion};
pub use run::ProjectSummary;

/// The environment destinations are written to unless another is named.
pub const PRODUCTION: &str = "prod";

/// A project's pipelines, resolved in one environment.
#[derive(Debug, Clone)]
pub struct Project {
    pub file: PathBuf,
    pub environment: String,
    /// Upstream before downstream; in the order the file lists them otherwise.
    pub pipelines: Vec<Pipeline>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    pipelines: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    environments: BTreeMap<String, Spanned<RawEnvironment>>,
    /// Where the pipelines' OpenLineage events go, unless one says for itself.
    lineage: Option<Spanned<pipeline::RawLineage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    root: Spanned<String>,
}

/// Whether the TOML file at `path` is a project file (it lists `pipelines`) rather than a
/// pipeline; `false` when it cannot be read or parsed, which loading it then reports.
pub fn is_project_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    toml::from_str::<toml::Table>(&text)
        .is_ok_and(|table| table.contains_key("pipelines") && !table.contains_key("sources"))
}

/// Reads a pipeline file on its own, as [`pipeline::load`] does. A source naming another
/// pipeline is refused with the command that runs it: through the project file beside it
/// (in its folder or up to three folders above) that lists it, if there is one.
pub fn load_pipeline(path: &Path) -> Result<Pipeline> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::in_file(path, format!("cannot read the pipeline file: {e}")))?;
    pipeline::parse_with(&text, path, &|upstream| {
        let project = listing_project(path);
        let project = project
            .as_ref()
            .map(|(file, name)| (file.as_path(), name.as_str()));
        Err(pipeline::needs_project(upstream, project))
    })
}

/// A project's name: the name of the folder its file is in.
fn project_name(path: &Path) -> String {
    let folder = std::fs::canonicalize(path).ok();
    let folder = folder.as_deref().and_then(Path::parent);
    let name = folder
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy());
    name.map_or_else(|| "project".to_string(), |name| name.into_owned())
}

/// A project file near the pipeline file `path` that lists it, and the pipeline's name.
fn listing_project(path: &Path) -> Option<(PathBuf, String)> {
    let pipeline = std::fs::canonicalize(path).ok()?;
    let name = pipeline::output_of(path).ok()?.pipeline;
    let folders = path.parent()?.ancestors().take(4);
    for folder in folders {
        let shown = if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        };
        let Ok(entries) = std::fs::read_dir(shown) else {
            continue;
        };
        let mut candidates: Vec<PathBuf> = entries
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|file| file.extension().is_some_and(|e| e == "toml"))
            .filter(|file| is_project_file(file))
            .collect();
        candidates.sort();
        for project in candidates {
            if lists(&project, &pipeline) {
                return Some((folder.join(project.file_name()?), name));
            }
        }
    }
    None
}

/// Whether the project file `project` lists the pipeline file `pipeline` (canonical).
fn lists(project: &Path, pipeline: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(project) else {
        return false;
    };
    let at = Locator {
        path: project,
        text: &text,
    };
    let Ok(raw) = at.parse::<RawProject>() else {
        return false;
    };
    let base = project.parent().unwrap_or(Path::new("."));
    let files = pipeline_files(&at, &raw.pipelines, base).unwrap_or_default();
    files
        .iter()
        .any(|file| std::fs::canonicalize(file).is_ok_and(|file| file == pipeline))
}

impl Project {
    /// Reads the project file at `path` and every pipeline it lists, resolved in
    /// `environment` (`prod` when `None`).
    pub fn load(path: &Path, environment: Option<&str>) -> Result<Project> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::in_file(path, format!("cannot read the project file: {e}")))?;
        let at = Locator { path, text: &text };
        let raw: RawProject = at.parse()?;
        let base = path.parent().unwrap_or(Path::new("."));
        let files = pipeline_files(&at, &raw.pipelines, base)?;
        let outputs = files
            .iter()
            .map(|file| pipeline::output_of(file))
            .collect::<Result<Vec<_>>>()?;
        check_apart(path, &files, &outputs)?;
        let environment = environment.unwrap_or(PRODUCTION).to_string();
        let mut lineage =
            pipeline::lineage_settings(&at, raw.lineage, &|name| std::env::var(name).ok())?;
        // A project's jobs are namespaced by the project, unless it or a pipeline names
        // a namespace.
        (lineage.namespace).get_or_insert_with(|| project_name(path));
        let place = Placement::new(&at, &raw.environments, &environment, base)?;
        let in_environment = |output: &Output| -> Result<Url> { place.destination(output) };
        let mut pipelines = Vec::with_capacity(files.len());
        for file in &files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::in_file(file, format!("cannot read the pipeline file: {e}")))?;
            let upstream = |name: &str| {
                let output = outputs.iter().find(|o| o.pipeline == name).ok_or_else(|| {
                    let names: Vec<&str> = outputs.iter().map(|o| o.pipeline.as_str()).collect();
                    format!(
                        "no pipeline `{name}` in {} (it lists {})",
                        path.display(),
                        names.join(", ")
                    )
                })?;
                Ok(Output {
                    url: in_environment(output).map_err(|e| e.to_string())?,
                    ..output.clone()
                })
            };
            let mut pipeline = pipeline::parse_with(&text, file, &upstream)?;
            for source in &mut pipeline.sources {
                // A Delta source at another pipeline's destination reads that pipeline's
                // output, as `pipeline = "name"` does.
                let read = outputs
                    .iter()
                    .find(|o| source.format == SourceFormat::Delta && o.url == source.url);
                if let (None, Some(output)) = (&source.upstream, read) {
                    source.upstream = Some(output.pipeline.clone());
                    source.url = in_environment(output)?;
                }
            }
            let own = outputs
                .iter()
                .find(|o| o.pipeline == pipeline.name)
                .expect("every listed pipeline has an output");
            pipeline.destination.url = in_environment(own)?;
            if !pipeline.lineage.written {
                pipeline.lineage = lineage.clone();
            }
            (pipeline.lineage.namespace).get_or_insert_with(|| lineage.namespace().to_string());
            pipelines.push(pipeline);
        }
        let pipelines = in_dependency_order(path, pipelines)?;
        Ok(Project {
            file: path.to_path_buf(),
            environment,
            pipelines,
        })
    }

    /// The environments the project file at `path` declares, production first (there
    /// even when undeclared: the pipelines' own destinations).
    pub fn environments(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::in_file(path, format!("cannot read the project file: {e}")))?;
        let raw: RawProject = Locator { path, text: &text }.parse()?;
        let others = raw
            .environments
            .into_keys()
            .filter(|name| name != PRODUCTION);
        Ok(std::iter::once(PRODUCTION.to_string())
            .chain(others)
            .collect())
    }

    /// Keeps only the pipelines `names` (and with `downstream`, every pipeline that reads
    /// one of them, directly or not), in the same order. The others are not run; the
    /// tables of those a kept pipeline reads are read as they are.
    pub fn select(mut self, names: &[String], downstream: bool) -> Result<Project> {
        if names.is_empty() {
            return Ok(self);
        }
        for name in names {
            if !self.pipelines.iter().any(|p| &p.name == name) {
                return Err(Error::config(
                    "--pipelines",
                    format!(
                        "no pipeline `{name}` in {} (it lists {})",
                        self.file.display(),
                        self.names().join(", ")
                    ),
                ));
            }
        }
        let mut kept: Vec<String> = names.to_vec();
        if downstream {
            // Dependency order: every upstream comes before its downstream.
            for pipeline in &self.pipelines {
                if upstreams(pipeline).any(|u| kept.iter().any(|k| k == u)) {
                    kept.push(pipeline.name.clone());
                }
            }
        }
        self.pipelines.retain(|p| kept.contains(&p.name));
        Ok(self)
    }

    /// `pipeline` of the same project in another environment as this project has it.
    pub(crate) fn same(&self, pipeline: &Pipeline) -> &Pipeline {
        let mut pipelines = self.pipelines.iter();
        pipelines
            .find(|p| p.name == pipeline.name)
            .expect("one project's pipelines, in two environments")
    }

    pub fn names(&self) -> Vec<&str> {
        self.pipelines.iter().map(|p| p.name.as_str()).collect()
    }
}

/// The pipelines whose output `pipeline` reads.
pub fn upstreams(pipeline: &Pipeline) -> impl Iterator<Item = &str> {
    pipeline
        .sources
        .iter()
        .filter_map(|source| source.upstream.as_deref())
}

/// The files the project lists, each once, in the order listed (a glob's matches sorted),
/// the project file itself left out.
fn pipeline_files(
    at: &Locator,
    listed: &Spanned<Vec<Spanned<String>>>,
    base: &Path,
) -> Result<Vec<PathBuf>> {
    if listed.get_ref().is_empty() {
        return Err(at.error(listed.span(), "`pipelines` lists no pipeline file"));
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in listed.get_ref() {
        let pattern = base.join(entry.get_ref());
        let invalid = |message: String| at.error(entry.span(), message);
        let matches = glob::glob(&pattern.to_string_lossy())
            .map_err(|e| invalid(format!("`{}` is not a valid glob: {e}", entry.get_ref())))?;
        let mut found: Vec<PathBuf> = matches
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| invalid(format!("`{}`: {e}", entry.get_ref())))?;
        if found.is_empty() {
            return Err(invalid(format!("`{}` matches no file", entry.get_ref())));
        }
        found.sort();
        let project = std::path::absolute(at.path).unwrap_or(at.path.to_path_buf());
        for file in found {
            let file = std::path::absolute(&file).unwrap_or(file);
            // A glob beside the project file matches it too: it is no pipeline.
            if file != project && !files.contains(&file) {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// Refuses two pipelines with one name, or writing one table: their records and
/// commits would mix.
fn check_apart(project: &Path, files: &[PathBuf], outputs: &[Output]) -> Result<()> {
    for (i, output) in outputs.iter().enumerate() {
        for (j, other) in outputs.iter().enumerate().take(i) {
            let clash = if other.pipeline == output.pipeline {
                format!("two pipelines are named `{}`", output.pipeline)
            } else if other.url == output.url {
                format!(
                    "pipelines `{}` and `{}` both write {}",
                    other.pipeline, output.pipeline, output.url
                )
            } else {
                continue;
            };
            return Err(Error::config(
                project.display().to_string(),
                format!(
                    "{clash} ({} and {})",
                    files[j].display(),
                    files[i].display()
                ),
            ));
        }
    }
    Ok(())
}

/// Where destinations go in the chosen environment.
struct Placement {
    /// Prod's root and the chosen environment's, when it is not prod.
    moved: Option<(Url, Url)>,
    /// Prod's root, if declared: every destination must be under it.
    production: Option<Url>,
    file: String,
}

impl Placement {
    fn new(
        at: &Locator,
        declared: &BTreeMap<String, Spanned<RawEnvironment>>,
        environment: &str,
        base: &Path,
    ) -> Result<Placement> {
        let file = at.path.display().to_string();
        let root = |name: &str| -> Result<Option<Url>> {
            match declared.get(name) {
                Some(env) => at.url(&env.get_ref().root, base).map(Some),
                None => Ok(None),
            }
        };
        let production = root(PRODUCTION)?;
        if environment == PRODUCTION {
            return Ok(Placement {
                moved: None,
                production,
                file,
            });
        }
        let Some(chosen) = root(environment)? else {
            let names: Vec<&str> = declared.keys().map(String::as_str).collect();
            return Err(Error::config(
                "--env",
                format!(
                    "{file} declares no environment `{environment}` (it declares {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        };
        let Some(production) = production else {
            return Err(Error::config(
                &file,
                format!("environments.{environment} needs environments.{PRODUCTION}.root too: the folder production's destinations are under, which {environment}'s root takes the place of"),
            ));
        };
        let (a, b) = (production.as_str(), chosen.as_str());
        if a.starts_with(b) || b.starts_with(a) {
            return Err(Error::config(
                &file,
                format!("environments.{environment}.root {chosen} overlaps production's root {production}: an environment's tables must live apart from production's"),
            ));
        }
        Ok(Placement {
            moved: Some((production.clone(), chosen)),
            production: Some(production),
            file,
        })
    }

    /// Where `output` is written in the environment.
    fn destination(&self, output: &Output) -> Result<Url> {
        let outside = |root: &Url| {
            Error::config(
                &self.file,
                format!(
                    "pipeline `{}` writes {}, outside environments.{PRODUCTION}.root {root}: every destination must be under it",
                    output.pipeline, output.url
                ),
            )
        };
        if let Some(production) = &self.production {
            if !output.url.as_str().starts_with(production.as_str()) {
                return Err(outside(production));
            }
        }
        match &self.moved {
            None => Ok(output.url.clone()),
            Some((production, chosen)) => {
                let within = &output.url.as_str()[production.as_str().len()..];
                chosen
                    .join(within)
                    .map_err(|e| Error::config(&self.file, format!("{}: {e}", output.pipeline)))
            }
        }
    }
}

/// The pipelines ordered so that each comes after those it reads, or an error naming a
/// cycle.
fn in_dependency_order(project: &Path, pipelines: Vec<Pipeline>) -> Result<Vec<Pipeline>> {
    let mut graph = petgraph::Graph::<usize, ()>::new();
    let nodes: Vec<_> = (0..pipelines.len()).map(|i| graph.add_node(i)).collect();
    for (i, pipeline) in pipelines.iter().enumerate() {
        for upstream in upstreams(pipeline) {
            if let Some(j) = pipelines.iter().position(|p| p.name == upstream) {
                graph.add_edge(nodes[j], nodes[i], ());
            }
        }
    }
    for component in petgraph::algo::tarjan_scc(&graph) {
        let looped = component.len() > 1 || graph.contains_edge(component[0], component[0]);
        if looped {
            let name = |node: petgraph::graph::NodeIndex| pipelines[graph[node]].name.as_str();
            let cycle: Vec<&str> = cycle_through(&graph, &component)
                .into_iter()
                .map(name)
                .collect();
            return Err(Error::config(
                project.display().to_string(),
                format!(
                    "pipelines {} read each other's output in a cycle: no order runs each after what it reads",
                    cycle.join(" → ")
                ),
            ));
        }
    }
    // Kahn's order, taking the first ready pipeline in listing order each time.
    let mut placed = vec![false; pipelines.len()];
    let mut order = Vec::with_capacity(pipelines.len());
    while order.len() < pipelines.len() {
        let next = (0..pipelines.len())
            .find(|&i| {
                !placed[i]
                    && graph
                        .neighbors_directed(nodes[i], petgraph::Direction::Incoming)
                        .all(|n| placed[graph[n]])
            })
            .expect("an acyclic graph always has a ready node");
        placed[next] = true;
        order.push(next);
    }
    let mut pipelines: Vec<Option<Pipeline>> = pipelines.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .map(|i| pipelines[i].take().expect("each placed once"))
        .collect())
}

/// A cycle within a strongly connected `component`, from its first pipeline (in listing
/// order) back to it: the shortest way round, found breadth first.
fn cycle_through(
    graph: &petgraph::Graph<usize, ()>,
    component: &[petgraph::graph::NodeIndex],
) -> Vec<petgraph::graph::NodeIndex> {
    let start = *component
        .iter()
        .min_by_key(|n| graph[**n])
        .expect("a component has a node");
    let mut came_from = std::collections::HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.neighbors(node) {
            if next == start {
                let mut back = vec![];
                let mut at = node;
                while at != start {
                    back.push(at);
                    at = came_from[&at];
                }
                let mut path = vec![start];
                path.extend(back.into_iter().rev());
                path.push(start);
                return path;
            }
            if component.contains(&next) && next != start && !came_from.contains_key(&next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    unreachable!("a strongly connected component with an edge has a cycle through each node")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipeline file named `name` that reads `source` (a `url = ...` or
    /// `pipeline = ...` line) and writes `destination`.
    fn pipeline(name: &str, source: &str, destination: &str) -> String {
        format!(
            "name = \"{name}\"\n[sources.input]\n{source}\n[slices]\nkind = \"daily\"\n\
             [transform]\nsql = \"SELECT * FROM input\"\n\
             [destination]\nurl = \"{destination}\"\npartition_by = [\"dt\"]\nstrategy = \"overwrite\"\n"
        )
    }

    /// A project folder with `project` as its file and `pipelines` (name, text) beside it.
    fn project(project: &str, pipelines: &[(&str, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backfill.toml"), project).unwrap();
        for (name, text) in pipelines {
            std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
        }
        dir
    }

    fn chain() -> Vec<(&'static str, String)> {
        vec![
            // Listed (and globbed) downstream first: the order is the DAG's.
            (
                "aggregate",
                pipeline("aggregate", "pipeline = \"clean\"", "tables/aggregate"),
            ),
            (
                "clean",
                pipeline(
                    "clean",
                    "url = \"raw\"\nformat = \"parquet\"",
                    "tables/clean",
                ),
            ),
        ]
    }

    const ENVIRONMENTS: &str = "[environments.prod]\nroot = \"tables\"\n\
        [environments.staging]\nroot = \"s3://bucket/staging\"\n";

    #[test]
    fn pipelines_run_after_what_they_read_and_environments_move_every_destination() {
        // The glob matches the project file too, which is left out.
        let dir = project(
            &format!("pipelines = [\"*.toml\"]\n{ENVIRONMENTS}"),
            &chain(),
        );
        let file = dir.path().join("backfill.toml");
        let prod = Project::load(&file, None).unwrap();
        assert_eq!(prod.names(), ["clean", "aggregate"]);
        let tables = Url::from_directory_path(dir.path().join("tables")).unwrap();
        let source = &prod.pipelines[1].sources[0];
        assert_eq!(source.upstream.as_deref(), Some("clean"));
        assert_eq!(source.url, tables.join("clean/").unwrap());

        let staging = Project::load(&file, Some("staging")).unwrap();
        let (clean, aggregate) = (&staging.pipelines[0], &staging.pipelines[1]);
        assert_eq!(clean.destination.url.as_str(), "s3://bucket/staging/clean/");
        assert_eq!(
            aggregate.destination.url.as_str(),
            "s3://bucket/staging/aggregate/"
        );
        assert_eq!(
            aggregate.sources[0].url.as_str(),
            "s3://bucket/staging/clean/"
        );
        assert_eq!(
            clean.sources[0].url,
            Url::from_directory_path(dir.path().join("raw")).unwrap(),
            "raw sources stay where they are"
        );

        let narrowed = staging.select(&["clean".into()], true).unwrap();
        assert_eq!(narrowed.names(), ["clean", "aggregate"]);
        let prod = Project::load(&file, None).unwrap();
        assert_eq!(
            prod.select(&["aggregate".into()], false).unwrap().names(),
            ["aggregate"]
        );
    }

    #[test]
    fn a_project_refuses_what_would_mix_tables() {
        let load = |project_text: &str, pipelines: &[(&str, String)]| {
            let dir = project(project_text, pipelines);
            Project::load(&dir.path().join("backfill.toml"), Some("staging"))
                .unwrap_err()
                .to_string()
        };
        let listed = "pipelines = [\"aggregate.toml\", \"clean.toml\"]\n";
        let error = load(listed, &chain());
        assert!(
            error.contains("declares no environment `staging` (it declares none)"),
            "{error}"
        );

        let outside = [
            chain()[0].clone(),
            (
                "clean",
                pipeline(
                    "clean",
                    "url = \"raw\"\nformat = \"parquet\"",
                    "elsewhere/clean",
                ),
            ),
        ];
        let error = load(&format!("{listed}{ENVIRONMENTS}"), &outside);
        assert!(
            error.contains("pipeline `clean` writes")
                && error.contains("outside environments.prod.root"),
            "{error}"
        );

        let inside = ENVIRONMENTS.replace("s3://bucket/staging", "tables/staging");
        let error = load(&format!("{listed}{inside}"), &chain());
        assert!(error.contains("overlaps production's root"), "{error}");

        let twice = [
            chain()[0].clone(),
            (
                "clean",
                pipeline(
                    "aggregate",
                    "url = \"raw\"\nformat = \"parquet\"",
                    "tables/x",
                ),
            ),
        ];
        let error = load(listed, &twice);
        assert!(
            error.contains("two pipelines are named `aggregate`"),
            "{error}"
        );

        let unmatched = load("pipelines = [\"nothing*.toml\"]\n", &chain());
        assert!(
            unmatched.contains("`nothing*.toml` matches no file"),
            "{unmatched}"
        );
    }
}
