//! `backfill serve`: the run page and its JSON API, over the run histories of a pipeline
//! or a project's pipelines. See `crate::serve`.

use std::net::SocketAddr;

use clap::Args;

use super::Outcome;
use crate::args::{PipelineArgs, ProjectArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    project: ProjectArgs,
    /// The address to listen on. Anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// A secret every request must carry (`Authorization: Bearer TOKEN`, or once as
    /// `?token=TOKEN` in a browser, which keeps it in a cookie). Read from the
    /// environment, so that it never shows in `ps`.
    #[arg(long, env = "BACKFILL_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn execute(args: ServeArgs) -> anyhow::Result<Outcome> {
    if !args.bind.ip().is_loopback() && args.token.is_none() {
        let message = format!(
            "{} is reachable from other machines: set BACKFILL_SERVE_TOKEN (or --token) so that only those who have it can see and cancel runs, or bind to 127.0.0.1",
            args.bind
        );
        return Err(backfill_engine::Error::config("--bind", message).into());
    }
    let environments = args.pipeline.in_environments(&args.project)?;
    let served = crate::serve::Served {
        environments: (environments.into_iter())
            .map(|(name, pipelines, project)| crate::serve::Environment {
                name,
                pipelines,
                project,
            })
            .collect(),
        args: args.pipeline.as_args(),
    };
    crate::serve::serve(served, args.bind, args.token).await?;
    Ok(Outcome::Success)
}
