//! `backfill promote`: publishes a project's slices from one environment (staging) into
//! another (prod) without running any SQL: their files are copied and committed with the
//! records they were committed with.

use backfill_engine::clock::SystemClock;
use backfill_engine::project::{Promoted, Promotion, PRODUCTION};
use clap::Args;

use super::Outcome;
use crate::args::{ProjectFileArgs, SelectionArgs};
use crate::printer::{self, human_bytes};

#[derive(Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    project: ProjectFileArgs,
    /// The environment whose done slices to publish.
    #[arg(long, value_name = "NAME")]
    from: String,
    /// The environment to publish them into.
    #[arg(long, value_name = "NAME", default_value = PRODUCTION)]
    to: String,
    #[command(flatten)]
    selection: SelectionArgs,
    /// Print what was promoted as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: PromoteArgs) -> anyhow::Result<Outcome> {
    if args.from == args.to {
        let message = format!("--from and --to are both `{}`", args.to);
        return Err(backfill_engine::Error::config("--to", message).into());
    }
    let from = args.project.load(&args.from)?;
    let to = args.project.load(&args.to)?;
    let promotion = from
        .promote(&to, &args.selection.selection()?, &SystemClock)
        .await?;
    match args.json {
        true => printer::json(&promotion)?,
        false => print(&promotion),
    }
    Ok(Outcome::Success)
}

fn print(promotion: &Promotion) {
    let (mut promoted, mut already) = (0, 0);
    for pipeline in &promotion.pipelines {
        println!("pipeline {} → {}", pipeline.pipeline, pipeline.destination);
        if let Some(others) = &pipeline.other_writers {
            println!(
                "other writers: {}",
                crate::printer::plan::describe_other_writers(others)
            );
        }
        let mut table = printer::table(["slice", "promotion"], &[]);
        for slice in &pipeline.slices {
            let what = match &slice.outcome {
                Promoted::Committed {
                    version,
                    files,
                    rows,
                    bytes,
                } => {
                    promoted += 1;
                    format!(
                        "promoted {rows} rows in {} ({}), version {version}",
                        printer::count(*files, "file"),
                        human_bytes(*bytes)
                    )
                }
                Promoted::Already { version } => {
                    already += 1;
                    match version {
                        Some(version) => format!("promoted already, in version {version}"),
                        None => "promoted already".to_string(),
                    }
                }
                Promoted::CommittedMeanwhile { by_run, version } => {
                    format!("committed meanwhile by run {by_run}, version {version}: left as it is")
                }
            };
            table.add_row([slice.slice.clone(), what]);
        }
        printer::print_table(&table);
    }
    println!(
        "promotion run {}: promoted {promoted} slices from {} to {}, {already} promoted already; no SQL ran",
        promotion.run_id, promotion.from, promotion.to
    );
}
