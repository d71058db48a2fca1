//! `backfill plan`: the selected slices, each one's state and whether `run` would run it,
//! with what a run would read and how long it would take.

use backfill_engine::project::ProjectPlan;
use backfill_engine::{Plan, PlanOptions};
use clap::Args;

use super::Outcome;
use crate::args::{ChoiceArgs, PipelineArgs, ProjectArgs, SelectionArgs, Target};
use crate::printer;
use crate::printer::plan::{heading, notes, row, total, COLUMNS, NUMBERS};

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    selection: SelectionArgs,
    #[command(flatten)]
    choice: ChoiceArgs,
    /// The slices computed at once the duration estimate assumes, as `run --concurrency`
    /// [default: as `run` chooses].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[cfg(feature = "cluster")]
    #[command(flatten)]
    cluster: crate::args::ClusterArgs,
}

pub async fn execute(args: PlanArgs) -> anyhow::Result<Outcome> {
    let options = PlanOptions {
        reprocess: args.choice.reprocess(),
        concurrency: args.concurrency.map(usize::from),
        #[cfg(feature = "cluster")]
        cluster: args.cluster.connect().await?,
    };
    let selection = args.selection.selection()?;
    let target = args.pipeline.target(&args.project, Some(selection.clone()));
    match target.await? {
        Target::Pipeline(backfill) => {
            let plan = backfill.plan(&selection, &options).await?;
            match args.json {
                true => printer::json(&plan)?,
                false => {
                    print(&plan);
                    print_hash(&plan.hash);
                }
            }
        }
        Target::Project(project) => {
            let plan = project.plan(&selection, &options).await?;
            match args.json {
                true => printer::json(&plan)?,
                false => {
                    print_project(&plan);
                    print_hash(&plan.hash);
                }
            }
        }
    }
    Ok(Outcome::Success)
}

/// How to run exactly this plan.
fn print_hash(hash: &str) {
    println!("plan {hash}: `run` with the same arguments and --expect-plan {hash} runs exactly this plan, or refuses if it has changed");
}

/// Each pipeline's plan under a heading, upstream first, then what the run would run.
fn print_project(plan: &ProjectPlan) {
    for (i, pipeline) in plan.pipelines.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{}", heading(pipeline));
        print(&pipeline.plan);
    }
    println!("\n{}", total(plan));
}

fn print(plan: &Plan) {
    match &plan.grid {
        Some(grid) => printer::grid::print(grid),
        None => {
            let mut table = printer::table(COLUMNS, &NUMBERS);
            for row in plan.slices.iter().map(row) {
                table.add_row(row);
            }
            printer::print_table(&table);
        }
    }
    for line in notes(plan) {
        println!("{line}");
    }
}
