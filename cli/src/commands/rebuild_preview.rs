//! `backfill rebuild-preview`: the table a rebuild would swap in, queried before the swap.

use backfill_engine::arrow::util::pretty::pretty_format_batches;
use backfill_engine::preview::RebuildPreview;
use clap::Args;

use super::Outcome;
use crate::args::{PipelineArgs, SelectionArgs};
use crate::printer;

#[derive(Args)]
pub struct RebuildPreviewArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    selection: SelectionArgs,
    /// A query over `staged` and `current`, e.g.
    /// "SELECT count(*) FROM staged EXCEPT SELECT count(*) FROM current".
    #[arg(long)]
    sql: Option<String>,
    /// Print the slices as JSON (ignored with --sql).
    #[arg(long)]
    json: bool,
}

pub async fn execute(args: RebuildPreviewArgs) -> anyhow::Result<Outcome> {
    let selection = args.selection.selection()?;
    let backfill = args.pipeline.open(Some(selection.clone())).await?;
    let preview = backfill.rebuild_preview(&selection).await?;
    match (&args.sql, args.json) {
        (Some(sql), _) => println!("{}", pretty_format_batches(&preview.query(sql).await?)?),
        (None, true) => printer::json(&preview.slices)?,
        (None, false) => print(&preview),
    }
    Ok(Outcome::Success)
}

fn print(preview: &RebuildPreview) {
    let mut table = printer::table(["slice", "state", "rows"], &[2]);
    for slice in &preview.slices {
        let rows = slice.rows.map_or("-".to_string(), |r| r.to_string());
        table.add_row([slice.slice.clone(), slice.state.clone(), rows]);
    }
    printer::print_table(&table);
    let absent: Vec<&str> = preview
        .slices
        .iter()
        .filter(|s| s.rows.is_none())
        .map(|s| s.slice.as_str())
        .collect();
    let total: u64 = preview.slices.iter().filter_map(|s| s.rows).sum();
    println!(
        "{} of {} slices in `staged` ({total} rows); {}",
        preview.slices.len() - absent.len(),
        preview.slices.len(),
        if absent.is_empty() {
            "a run would swap it in".to_string()
        } else {
            format!("still to stage: {}", absent.join(", "))
        }
    );
    println!("query it with --sql, e.g. --sql \"SELECT count(*) FROM staged\"");
}
