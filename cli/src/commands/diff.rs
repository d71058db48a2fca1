//! `backfill diff`: a project's tables in one environment against another's, slice by
//! slice: rows on both sides and how many differ, so a user sees what promoting would
//! change.

use backfill_engine::project::{Diff, PRODUCTION};
use clap::Args;

use super::Outcome;
use crate::args::{ProjectFileArgs, SelectionArgs};
use crate::printer;

#[derive(Args)]
pub struct DiffArgs {
    #[command(flatten)]
    project: ProjectFileArgs,
    /// The environment to compare (staging, say).
    #[arg(long, value_name = "NAME")]
    env: String,
    /// The environment to compare it with.
    #[arg(long, value_name = "NAME", default_value = PRODUCTION)]
    against: String,
    #[command(flatten)]
    selection: SelectionArgs,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
    /// Exit 1 if any slice differs, as `git diff --exit-code` does. Without it, diff
    /// exits 0 whatever it finds: differences are what it reports, not a failure.
    #[arg(long)]
    exit_code: bool,
}

pub async fn execute(args: DiffArgs) -> anyhow::Result<Outcome> {
    let here = args.project.load(&args.env)?;
    let there = args.project.load(&args.against)?;
    let diff = here.diff(&there, &args.selection.selection()?).await?;
    match args.json {
        true => printer::json(&diff)?,
        false => print(&diff),
    }
    let differs = diff.pipelines.iter().flat_map(|p| &p.slices);
    Ok(
        match args.exit_code && differs.into_iter().any(|s| s.differing() > 0) {
            true => Outcome::Differs,
            false => Outcome::Success,
        },
    )
}

fn print(diff: &Diff) {
    let (here, there) = (&diff.environment, &diff.against);
    let headers = [
        format!("{here} rows"),
        format!("{there} rows"),
        format!("only in {here}"),
        format!("only in {there}"),
    ];
    let (mut slices, mut differing, mut rows) = (0, 0, 0);
    for (i, pipeline) in diff.pipelines.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let by = match &pipeline.keys {
            Some(keys) => format!("by key ({})", keys.join(", ")),
            None => "by whole rows".to_string(),
        };
        println!("pipeline {}: rows compared {by}", pipeline.pipeline);
        for (side, columns) in [
            (here, &pipeline.columns_only_here),
            (there, &pipeline.columns_only_there),
        ] {
            if !columns.is_empty() {
                println!(
                    "columns only in {side}: {} (not compared)",
                    columns.join(", ")
                );
            }
        }
        let mut table = printer::table(
            [
                "slice",
                &headers[0],
                &headers[1],
                &headers[2],
                &headers[3],
                "changed",
            ],
            &[1, 2, 3, 4, 5],
        );
        for slice in &pipeline.slices {
            table.add_row([
                slice.slice.clone(),
                slice.rows.to_string(),
                slice.rows_there.to_string(),
                slice.only_here.to_string(),
                slice.only_there.to_string(),
                match pipeline.keys {
                    Some(_) => slice.changed.to_string(),
                    None => String::new(),
                },
            ]);
            slices += 1;
            differing += usize::from(slice.differing() > 0);
            rows += slice.differing();
        }
        printer::print_table(&table);
    }
    println!(
        "\n{differing} of {slices} slices differ between {here} and {there}: promoting them would change {rows} rows"
    );
}
