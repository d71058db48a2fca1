//! `backfill fixtures`: writes a deterministic fixture bucket.

use std::path::PathBuf;

use anyhow::Context;
use backfill_engine::fixtures::{generate, FixtureSpec};
use clap::Args;

use super::Outcome;

#[derive(Args)]
pub struct FixturesArgs {
    /// The bucket's root folder.
    out: PathBuf,
    /// Days of orders (from 2024-01-01).
    #[arg(long)]
    days: Option<u32>,
    /// Orders per day.
    #[arg(long)]
    orders_per_day: Option<u64>,
    /// Days of hourly events (from 2024-01-01).
    #[arg(long)]
    event_days: Option<u32>,
}

pub async fn execute(args: FixturesArgs) -> anyhow::Result<Outcome> {
    let mut spec = FixtureSpec::bundled();
    spec.days = args.days.unwrap_or(spec.days);
    spec.orders_per_day = args.orders_per_day.unwrap_or(spec.orders_per_day);
    spec.event_days = args.event_days.unwrap_or(spec.event_days);
    generate(&args.out, &spec)
        .with_context(|| format!("writing fixtures to {}", args.out.display()))?;
    println!(
        "wrote fixture bucket {} ({} days of {} orders, {} days of hourly events)",
        args.out.display(),
        spec.days,
        spec.orders_per_day,
        spec.event_days
    );
    Ok(Outcome::Success)
}
