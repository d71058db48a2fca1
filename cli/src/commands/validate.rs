//! `backfill validate`: opens the pipeline (sources resolved, SQL planned) and says what
//! it found.

use clap::Args;

use super::Outcome;
use crate::args::PipelineArgs;

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
}

pub async fn execute(args: ValidateArgs) -> anyhow::Result<Outcome> {
    let backfill = args.pipeline.open(None).await?;
    let pipeline = backfill.pipeline();
    println!("pipeline {} is valid", pipeline.name);
    for source in &pipeline.sources {
        println!("  source {} at {}", source.name, source.url);
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
        "  {} slices, {} assertion(s)",
        pipeline.slices.kind.name(),
        pipeline.assertions.len()
    );
    Ok(Outcome::Success)
}
