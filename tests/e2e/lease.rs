//! One run at a time per pipeline: the pipeline's lease, taken by exactly one of two runs
//! started together, waited for with `--wait`, taken over once its holder is killed, and
//! a scheduled tick skipped while it is held.

use std::time::Duration;

use crate::support::*;

/// `backfill run` of the long run, started in another process.
fn spawn(case: &Case, more: &[&str]) -> Watched {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    command.args(case.args("run", &[&LONG_RUN[..], more].concat()));
    Watched::spawn(command)
}

/// Starts the long run and kills it with SIGKILL once it has committed a slice: it can
/// neither give its lease up nor stop renewing it gracefully. The run's id.
fn killed_long_run(case: &Case) -> String {
    let (killed, id) = start_long_run(case);
    killed.signal("KILL");
    killed.end_within(Duration::from_secs(30));
    id
}

/// `backfill schedule` of the long run's days, ticking `every`, in another process.
fn start_schedule(case: &Case, every: &str) -> Watched {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    command
        .args(case.args("schedule", &["--every", every, "--start", "2024-01-01"]))
        .env("BACKFILL_NOW", "2024-03-31T01:00:00Z");
    Watched::spawn(command)
}

#[tokio::test]
async fn of_two_runs_started_together_one_runs_and_the_other_names_it_and_exits_75() {
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    let (first, second) = (spawn(&case, &[]), spawn(&case, &[]));
    let limit = Duration::from_secs(300);
    let (first, second) = (first.end_within(limit), second.end_within(limit));
    let (ran, refused) = match first.0 {
        Some(0) => (first, second),
        _ => (second, first),
    };
    assert_eq!(ran.0, Some(0), "{}", ran.1);
    assert_eq!(refused.0, Some(75), "{}", refused.1);
    let run_id = run_id_of(ran.1.lines().find(|l| l.starts_with("run ")).unwrap());
    let named = format!("orders_clean is being run by run {run_id} (pid ");
    assert!(refused.1.contains(&named), "{}", refused.1);
    assert!(
        refused.1.contains("which holds its lease; nothing ran"),
        "{}",
        refused.1
    );
    let days = LONG_RUN_DAYS as usize;
    assert_eq!(case.committed_slices().len(), days, "each day once");
    let history = case.json("history", &[], 0);
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "the refused run left no history"
    );
}

#[tokio::test]
async fn a_run_told_to_wait_runs_once_the_holder_ends() {
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    let (holder, _) = start_long_run(&case);
    let waiting = spawn(&case, &["--wait", "5m"]);
    let (code, printed) = holder.end_within(Duration::from_secs(300));
    assert_eq!(code, Some(0), "{printed}");
    let (code, printed) = waiting.end_within(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{printed}");
    let days = LONG_RUN_DAYS as usize;
    assert!(printed.contains(&format!("{days} skipped")), "{printed}");
    assert_eq!(case.committed_slices().len(), days);
}

#[tokio::test]
async fn the_lease_of_a_killed_run_is_taken_over_by_the_next_run_which_finishes_the_job() {
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    let id = killed_long_run(&case);

    let (code, printed) = spawn(&case, &[]).end_within(Duration::from_secs(300));
    assert_eq!(code, Some(0), "{printed}");
    let taken = format!("took over the lease of orders_clean from run {id} (pid ");
    assert!(printed.contains(&taken), "{printed}");
    assert!(printed.contains("it expired"), "{printed}");
    assert_eq!(case.committed_slices().len(), LONG_RUN_DAYS as usize);
}

#[tokio::test]
async fn a_schedule_skips_its_tick_while_another_run_holds_the_lease() {
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    let (holder, id) = start_long_run(&case);
    let mut schedule = start_schedule(&case, "1s");
    let limit = Duration::from_secs(120);
    let tick = schedule.line_where(limit, |l| l.starts_with("tick "));
    let skipped = format!("skipped: orders_clean is being run by run {id} (pid ");
    assert!(tick.contains(&skipped), "{tick}");
    schedule.line_where(limit, |l| l.starts_with("next tick at "));
    schedule.signal("TERM");
    let (code, printed) = schedule.end_within(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{printed}");
    let (code, printed) = holder.end_within(Duration::from_secs(300));
    assert_eq!(code, Some(0), "the holder went on: {printed}");
    assert_eq!(case.committed_slices().len(), LONG_RUN_DAYS as usize);
}

#[tokio::test]
async fn a_schedule_takes_over_the_lease_of_a_killed_run_and_says_so() {
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    let id = killed_long_run(&case);

    let mut schedule = start_schedule(&case, "1h");
    let limit = Duration::from_secs(300);
    let taken = format!("took over the lease of orders_clean from run {id} (pid ");
    schedule.line_where(limit, |l| l.contains(&taken));
    schedule.line_where(limit, |l| l.starts_with("next tick at "));
    schedule.signal("TERM");
    let (code, printed) = schedule.end_within(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(case.committed_slices().len(), LONG_RUN_DAYS as usize);
}
