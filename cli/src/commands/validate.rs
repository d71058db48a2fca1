//! `backfill validate`: opens the pipeline, or every pipeline of a project (sources
//! resolved, SQL planned), and says what it found.

use backfill_engine::Backfill;
use clap::Args;

use super::Outcome;
use crate::args::{PipelineArgs, ProjectArgs, Target};
use crate::printer::count;

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    project: ProjectArgs,
}

pub async fn execute(args: ValidateArgs) -> anyhow::Result<Outcome> {
    match args.pipeline.target(&args.project, None).await? {
        Target::Pipeline(backfill) => print(&backfill),
        Target::Project(chosen) => {
            // Every pipeline is opened, so that one reading an upstream whose table is not
            // written yet is planned over that upstream's columns.
            let opened = args.pipeline.whole_project()?.validate().await?;
            let chosen = chosen.names();
            let shown = opened
                .iter()
                .filter(|b| chosen.contains(&b.pipeline().name.as_str()));
            for (i, backfill) in shown.enumerate() {
                if i > 0 {
                    println!();
                }
                print(backfill);
            }
        }
    }
    Ok(Outcome::Success)
}

fn print(backfill: &Backfill) {
    let pipeline = backfill.pipeline();
    println!("pipeline {} is valid", pipeline.name);
    for source in &pipeline.sources {
        let upstream = match &source.upstream {
            Some(upstream) => format!(" (pipeline {upstream}'s table)"),
            None => String::new(),
        };
        println!("  source {} at {}{upstream}", source.name, source.url);
    }
    let columns: Vec<String> = backfill
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    println!("  output ({})", columns.join(", "));
    println!(
        "  destination {} ({}, partitioned by {:?})",
        pipeline.destination.url,
        pipeline.destination.strategy.name(),
        pipeline.destination.partition_by
    );
    println!(
        "  {} slices, {}",
        pipeline.slices.describe(),
        count(pipeline.assertions.len(), "assertion")
    );
}
