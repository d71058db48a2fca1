//! What a backfill will cost, before it runs, and the checks that refuse to launch it.
//!
//! Files and bytes come from the listings a plan already made, rows from the Parquet
//! footers planning already read: no data is read for them. The duration is estimated
//! from the throughput of this pipeline's slices recorded in the Delta log or, with none
//! recorded, from running the transform of one slice (a sample, labelled as such). The
//! pre-flight checks use the same figures: a slice whose sources have no files, or a
//! backfill over its budget, stops a run before anything starts. Nothing here writes.

use std::collections::HashMap;
use std::time::Instant;

use datafusion::physical_plan::execute_stream;
use serde::Serialize;

use crate::backfill::{Backfill, SlicePlan};
use crate::error::{Error, Result, ResultExt, Setting};
use crate::ledger::Ledger;
use crate::states::{Reprocess, SliceState};

/// The cost of running the slices a plan would run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Slices a run would compute (staged ones are reused, not computed).
    pub slices: usize,
    pub files: u64,
    pub bytes: u64,
    /// Rows in the files read, from their footers; `None` if a footer did not say.
    pub rows: Option<u64>,
    /// The throughput the duration is estimated from; `None` with nothing to measure.
    pub basis: Option<Basis>,
    /// The whole run's estimated duration with `concurrency` slices at a time.
    pub duration_ms: Option<u64>,
    pub concurrency: usize,
}

/// What a plan assumes of the run it plans.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Which slices the run would run, as `RunOptions::reprocess`.
    pub reprocess: Reprocess,
    /// The slices computed at once the estimate assumes; as the run would choose if
    /// `None`.
    pub concurrency: Option<usize>,
    /// The cluster the run would compute on: a sample slice runs there.
    #[cfg(feature = "cluster")]
    pub cluster: Option<crate::cluster::Cluster>,
}

/// Where an estimate's throughput comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Basis {
    /// This pipeline's committed slices, as the Delta log records them.
    History {
        slices: usize,
        bytes_per_second: f64,
    },
    /// One slice's transform, run now without writing anything: here, or on the
    /// `cluster` the run would compute on.
    Sample {
        slice: String,
        bytes_per_second: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster: Option<String>,
    },
}

impl Basis {
    pub fn bytes_per_second(&self) -> f64 {
        match self {
            Basis::History {
                bytes_per_second, ..
            }
            | Basis::Sample {
                bytes_per_second, ..
            } => *bytes_per_second,
        }
    }
}

impl Estimate {
    /// The cost of the slices of `planned` a run would compute, at `basis`'s throughput
    /// with `concurrency` slices at a time.
    pub fn of(planned: &[SlicePlan], basis: Option<Basis>, concurrency: usize) -> Estimate {
        let to_run: Vec<&SlicePlan> = computed(planned).collect();
        let mut estimate = Estimate {
            slices: to_run.len(),
            files: to_run.iter().map(|p| p.files.len() as u64).sum(),
            bytes: to_run.iter().map(|p| p.source_bytes()).sum(),
            rows: to_run.iter().map(|p| p.source_rows()).sum(),
            basis,
            duration_ms: None,
            concurrency: concurrency.max(1),
        };
        let slice_ms: Option<u64> = to_run
            .iter()
            .map(|p| estimate.slice_ms(p.source_bytes()))
            .sum();
        let parallel = estimate.concurrency.min(to_run.len()).max(1) as u64;
        estimate.duration_ms = slice_ms.map(|ms| ms.div_ceil(parallel));
        estimate
    }

    /// The estimated duration of a slice reading `bytes`.
    pub fn slice_ms(&self, bytes: u64) -> Option<u64> {
        let rate = self.basis.as_ref()?.bytes_per_second();
        Some((bytes as f64 / rate * 1000.0).ceil() as u64)
    }
}

/// Limits a run must stay within, or refuse to start.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// Run slices whose sources have no files instead of refusing.
    pub allow_empty: bool,
    pub max_bytes: Option<u64>,
    pub max_slices: Option<usize>,
}

/// A slice to compute that reads at most this much is small: it spends its time waiting on
/// storage (listings, footers, its commit) more than on a core.
const SMALL_SLICE_BYTES: u64 = 8 << 20;

/// Slices computed at once per core when the slices are small.
const SMALL_SLICES_PER_CORE: usize = 8;

/// The number of cores: slices computed at once for slices that are not small.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Slices computed at once for a run that was not told: one per `cores`, or
/// [`SMALL_SLICES_PER_CORE`] per core when nine in ten slices to compute are small
/// ([`SMALL_SLICE_BYTES`]). Small slices hold little memory and wait on storage more than
/// on a core; big ones keep a core busy each.
pub fn chosen_concurrency(planned: &[SlicePlan], cores: usize) -> usize {
    let mut bytes: Vec<u64> = computed(planned).map(SlicePlan::source_bytes).collect();
    bytes.sort_unstable();
    let ninth_tenth = bytes.get(bytes.len() * 9 / 10).copied().unwrap_or(u64::MAX);
    match ninth_tenth <= SMALL_SLICE_BYTES {
        true => cores * SMALL_SLICES_PER_CORE,
        false => cores,
    }
    .max(1)
}

/// The slices a run would compute: chosen, and not merely reused from a staged rebuild.
fn computed(planned: &[SlicePlan]) -> impl Iterator<Item = &SlicePlan> {
    planned
        .iter()
        .filter(|p| p.will_run && !matches!(p.state, SliceState::Staged { .. }))
}

impl Backfill {
    /// Estimates running the slices of `planned` that a run would compute, from the
    /// throughput of the slices in `ledger` or else of a sample slice.
    pub(crate) async fn estimate(
        &self,
        planned: &[SlicePlan],
        ledger: &Ledger,
        concurrency: usize,
        options: &PlanOptions,
    ) -> Result<Estimate> {
        let to_run: Vec<&SlicePlan> = computed(planned).collect();
        let basis = match history_basis([ledger]) {
            Some(basis) => Some(basis),
            None => match to_run.iter().find(|p| p.source_bytes() > 0) {
                Some(sample) => Some(sample_basis(self, sample, options).await?),
                None => None,
            },
        };
        Ok(Estimate::of(planned, basis, concurrency))
    }
}

/// Bytes per second over the committed slices of `ledgers`, if any read something.
pub(crate) fn history_basis<'a>(ledgers: impl IntoIterator<Item = &'a Ledger>) -> Option<Basis> {
    let records: Vec<_> = ledgers
        .into_iter()
        .flat_map(|ledger| ledger.committed())
        .map(|c| &c.record)
        .collect();
    let bytes: u64 = records.iter().map(|r| r.source_bytes).sum();
    let millis: u64 = records.iter().map(|r| r.duration_ms).sum();
    (bytes > 0 && millis > 0).then(|| Basis::History {
        slices: records.len(),
        bytes_per_second: bytes as f64 * 1000.0 / millis as f64,
    })
}

/// Refuses a run that would compute a slice without source data (unless allowed) or
/// go over its budget. Nothing has run when this fails.
pub fn check_preflight(planned: &[SlicePlan], budget: &Budget) -> Result<()> {
    let to_run: Vec<&SlicePlan> = computed(planned).collect();
    let unplanned: Vec<String> = to_run
        .iter()
        .filter_map(|p| Some(format!("{} ({})", p.slice.key, p.unplanned.as_ref()?)))
        .collect();
    // A slice not planned is checked for source data when it runs; its bytes, though,
    // must be known before anything runs.
    if budget.max_bytes.is_some() && !unplanned.is_empty() {
        return Err(Error::execution(
            "pre-flight",
            format!(
                "cannot tell whether the run stays within its byte budget: {} of {} slices to run could not be planned: {}; nothing ran",
                unplanned.len(),
                to_run.len(),
                list_some(&unplanned)
            ),
        ));
    }
    let empty: HashMap<&str, String> = to_run
        .iter()
        .filter(|p| !p.empty_sources.is_empty())
        .map(|p| (p.slice.key.as_str(), p.empty_sources.join(", ")))
        .collect();
    if !empty.is_empty() && !budget.allow_empty {
        return Err(Error::setting(
            &[Setting::AllowEmpty],
            format!(
                "{} of {} slices to run have no source data: {}; nothing ran. Check the range and the sources' paths, or set {{allow_empty}} to run them anyway",
                empty.len(),
                to_run.len(),
                list_some(&by_sources(&to_run, &empty))
            ),
        ));
    }
    if let Some(max) = budget.max_slices.filter(|max| to_run.len() > *max) {
        return Err(Error::setting(
            &[Setting::MaxSlices],
            format!(
                "the backfill would run {} slices, {} over {{max_slices}} {max}; nothing ran",
                to_run.len(),
                to_run.len() - max
            ),
        ));
    }
    let bytes: u64 = to_run.iter().map(|p| p.source_bytes()).sum();
    if let Some(max) = budget.max_bytes.filter(|max| bytes > *max) {
        return Err(Error::setting(
            &[Setting::MaxBytes],
            format!(
                "the backfill would read {} from {} slices, {} over {{max_bytes}} {}; nothing ran",
                human_bytes(bytes),
                to_run.len(),
                human_bytes(bytes - max),
                human_bytes(max)
            ),
        ));
    }
    Ok(())
}

/// Runs a slice's transform to the end and encodes its output as Parquet into nowhere,
/// where the run would compute it, and measures the throughput: the work of a slice but
/// for storage and the commit.
async fn sample_basis(
    backfill: &Backfill,
    sample: &SlicePlan,
    options: &PlanOptions,
) -> Result<Basis> {
    let started = Instant::now();
    let cluster = sample_where_the_run_computes(backfill, sample, options).await?;
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    Ok(Basis::Sample {
        slice: sample.slice.key.clone(),
        bytes_per_second: sample.source_bytes() as f64 / seconds,
        cluster,
    })
}

/// Runs `sample` on the run's cluster, whose address it returns, or here.
#[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
async fn sample_where_the_run_computes(
    backfill: &Backfill,
    sample: &SlicePlan,
    options: &PlanOptions,
) -> Result<Option<String>> {
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &options.cluster {
        backfill.sample_remote(cluster, sample).await?;
        return Ok(Some(cluster.url().to_string()));
    }
    sample_here(backfill, sample).await?;
    Ok(None)
}

/// Runs `sample`'s transform here, its output encoded as Parquet into nowhere.
async fn sample_here(backfill: &Backfill, sample: &SlicePlan) -> Result<()> {
    let context = || format!("slice {}: sampling the transform", sample.slice.key);
    // On one core, as a slice in flight has: the estimate spreads slices over concurrency.
    let prepared = backfill.plan_transform(&sample.slice, 1).await?.prepared;
    let stream = execute_stream(prepared.plan.clone(), prepared.task_ctx()).context(context)?;
    crate::sink::writing::encode_into_nowhere(stream)
        .await
        .context(context)
}

/// The slices `empty` names (by key: the sources with no data for them), in spans of
/// consecutive slices of `to_run` that lack the same sources: `2024-01-15..2024-01-31 (17
/// slices) (orders)`.
fn by_sources(to_run: &[&SlicePlan], empty: &HashMap<&str, String>) -> Vec<String> {
    let keys = to_run.iter().map(|p| p.slice.key.as_str());
    (crate::slice::spans_by(keys, |key| empty.get(key)).into_iter())
        .flat_map(|(lacking, spans)| {
            spans
                .into_iter()
                .map(move |span| format!("{span} ({lacking})"))
        })
        .collect()
}

/// The first few items of a list, and how many more there are.
fn list_some(items: &[String]) -> String {
    const SHOWN: usize = 10;
    match items.len() {
        n if n <= SHOWN => items.join(", "),
        n => format!("{} and {} more", items[..SHOWN].join(", "), n - SHOWN),
    }
}

/// A size for people, in binary units: `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::ledger::{SliceRecord, SwapManifest};
    use crate::slice::Slice;
    use crate::source::SourceFile;

    /// A slice's plan reading files of `sizes` bytes (with `rows` rows each, if known).
    fn planned(key: &str, state: SliceState, will_run: bool, sizes: &[u64]) -> SlicePlan {
        let files = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| SourceFile {
                path: format!("{key}/{i}.parquet"),
                size: *size,
                modified: String::new(),
                e_tag: None,
                source: "orders".into(),
                rows: Some(size / 10),
            })
            .collect();
        SlicePlan {
            slice: Slice {
                key: key.into(),
                partition: vec![("dt".into(), key.into())],
                window: None,
                keys: vec![],
            },
            source_reads: None,
            inputs_checked: true,
            awaiting_data: false,
            sql: "SELECT 1".into(),
            files,
            empty_sources: if sizes.is_empty() {
                vec!["orders".into()]
            } else {
                vec![]
            },
            source_fingerprint: String::new(),
            state,
            will_run,
            problem: None,
            unplanned: None,
            estimated_ms: None,
            reads: vec![],
            after: vec![],
        }
    }

    fn staged() -> SliceState {
        let record = SliceRecord::example("s", "r1");
        SliceState::Staged {
            rows: record.rows,
            bytes: record.bytes,
            staged_at: chrono::DateTime::UNIX_EPOCH,
            staged: Box::new(SwapManifest {
                staging_key: "k".into(),
                record,
                adds: vec![],
                staged_at: chrono::DateTime::UNIX_EPOCH,
            }),
        }
    }

    fn plans() -> Vec<SlicePlan> {
        vec![
            planned("a", SliceState::Missing, true, &[1000, 1000]),
            planned("b", SliceState::Missing, false, &[500]),
            planned("c", staged(), true, &[4000]),
            planned("d", SliceState::Missing, true, &[1000]),
        ]
    }

    #[test]
    fn small_slices_run_more_at_once_unless_more_than_one_in_ten_to_compute_is_big() {
        let big = SMALL_SLICE_BYTES + 1;
        let small = |n: usize| -> Vec<SlicePlan> {
            let to_compute =
                (0..n).map(|i| planned(&format!("s{i}"), SliceState::Missing, true, &[1000]));
            to_compute.collect()
        };
        assert_eq!(chosen_concurrency(&small(20), 2), 16);
        let mut one_big_in_twenty = small(19);
        one_big_in_twenty.push(planned("big", SliceState::Missing, true, &[big]));
        assert_eq!(chosen_concurrency(&one_big_in_twenty, 2), 16);
        let mut three_in_twenty = small(17);
        for key in ["x", "y", "z"] {
            three_in_twenty.push(planned(
                key,
                SliceState::Missing,
                true,
                &[big / 2, big / 2 + 1],
            ));
        }
        assert_eq!(chosen_concurrency(&three_in_twenty, 2), 2);
        // Only the slices a run computes count: not skipped ones, not reused staged ones.
        let mut skipped_big = small(5);
        skipped_big.push(planned("b", SliceState::Missing, false, &[big]));
        skipped_big.push(planned("c", staged(), true, &[big]));
        assert_eq!(chosen_concurrency(&skipped_big, 2), 16);
        assert_eq!(chosen_concurrency(&[], 2), 2, "nothing to compute");
    }

    #[test]
    fn an_estimate_counts_the_slices_a_run_computes_and_spreads_them_over_concurrency() {
        let basis = Basis::Sample {
            slice: "a".into(),
            bytes_per_second: 1000.0,
            cluster: None,
        };
        let estimate = Estimate::of(&plans(), Some(basis.clone()), 2);
        // Not b (not chosen), not c (staged: reused, not computed).
        assert_eq!(
            (
                estimate.slices,
                estimate.files,
                estimate.bytes,
                estimate.rows
            ),
            (2, 3, 3000, Some(300))
        );
        assert_eq!(estimate.duration_ms, Some(1500), "3 s of work, 2 at a time");
        let one_at_a_time = Estimate::of(&plans(), Some(basis), 1);
        assert_eq!(one_at_a_time.duration_ms, Some(3000));
        let unmeasured = Estimate::of(&plans(), None, 2);
        assert_eq!(unmeasured.duration_ms, None);

        let mut unknown_rows = plans();
        unknown_rows[0].files[0].rows = None;
        assert_eq!(Estimate::of(&unknown_rows, None, 2).rows, None);
    }

    fn refused_setting(planned: &[SlicePlan], budget: &Budget) -> (Vec<Setting>, String) {
        match check_preflight(planned, budget) {
            Err(Error::Setting { settings, message }) => (settings, message),
            other => panic!("expected a refused setting, got {other:?}"),
        }
    }

    #[test]
    fn preflight_refuses_empty_sources_and_budgets_naming_the_setting() {
        assert!(check_preflight(&plans(), &Budget::default()).is_ok());

        let mut with_empty = plans();
        with_empty.push(planned("e", SliceState::Missing, true, &[]));
        let (settings, message) = refused_setting(&with_empty, &Budget::default());
        assert_eq!(settings, [Setting::AllowEmpty]);
        assert!(
            message.starts_with("1 of 3 slices to run have no source data: e (orders)"),
            "{message}"
        );
        // Consecutive slices lacking the same sources read as one span.
        let mut many = plans();
        for key in ["e1", "e2", "e3"] {
            many.push(planned(key, SliceState::Missing, true, &[]));
        }
        let (_, message) = refused_setting(&many, &Budget::default());
        assert!(
            message.starts_with(
                "3 of 5 slices to run have no source data: e1..e3 (3 slices) (orders)"
            ),
            "{message}"
        );
        let allowed = Budget {
            allow_empty: true,
            ..Budget::default()
        };
        assert!(check_preflight(&with_empty, &allowed).is_ok());

        let few = Budget {
            max_slices: Some(1),
            ..Budget::default()
        };
        let (settings, message) = refused_setting(&plans(), &few);
        assert_eq!(settings, [Setting::MaxSlices]);
        assert!(
            message.contains("would run 2 slices, 1 over {max_slices} 1"),
            "{message}"
        );

        let small = Budget {
            max_bytes: Some(2999),
            ..Budget::default()
        };
        let (settings, message) = refused_setting(&plans(), &small);
        assert_eq!(settings, [Setting::MaxBytes]);
        assert!(
            message.contains("would read 2.9 KiB from 2 slices, 1 B over"),
            "{message}"
        );
        let enough = Budget {
            max_bytes: Some(3000),
            max_slices: Some(2),
            ..Budget::default()
        };
        assert!(
            check_preflight(&plans(), &enough).is_ok(),
            "the limits are inclusive"
        );
    }
}
