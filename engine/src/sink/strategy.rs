//! Write strategies: everything that differs between overwrite, append, merge and rebuild.
//!
//! One type per strategy, in a file of its own ([`super::overwrite`], [`super::append`],
//! [`super::merge`], [`super::rebuild`]), implements [`WriteStrategy`]. None of its
//! methods has a default, so the compiler asks a new strategy every question the rest of
//! the code has, and [`of`] is the one place that maps the pipeline file's [`Strategy`]
//! to its type: no other code matches on or compares a `Strategy` (a test enforces it).
//! Below them, the helpers the strategies' commits share.

use std::collections::HashMap;

use datafusion::common::ScalarValue;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::DeltaTable;

use super::{append, merge, overwrite, rebuild, Sink, SliceCommit, StagedOutput};
use crate::pipeline::{Destination, Strategy};
use crate::slice::Slice;

/// What a write strategy answers for itself.
pub(crate) trait WriteStrategy: Send + Sync {
    /// How a checked slice reaches the table.
    fn publishing(&self) -> Publishing<'_>;

    /// Whether a slice is staged apart, under `_backfill/staging/`, as the source of its
    /// commit rather than the files it adds (a merge across the table); such files go
    /// once it is settled.
    fn stages_apart(&self) -> bool;

    /// Whether a slice's rows must lie in its own partitions, because its commit replaces
    /// or merges exactly those.
    fn keeps_to_its_partitions(&self) -> bool;

    /// Whether a run may change an existing table's columns and partitioning: only one
    /// that replaces the whole table may.
    fn may_change_columns(&self) -> bool;

    /// Whether each of the table's files holds the rows of one slice, named in its tags,
    /// so that a slice can be copied to another environment as its own files (promote).
    fn slices_own_their_files(&self) -> bool;

    /// The columns that identify a row, if the strategy has them (merge's keys): the
    /// output must have them, and a diff compares rows by them.
    fn row_keys(&self) -> Option<&[String]>;

    /// Whether its commits read rows of the table's own data files as plain Parquet (a
    /// merge's rows that stay), which a table with deletion vectors or column mapping
    /// does not allow.
    fn reads_table_files(&self) -> bool;
}

/// How a strategy publishes a checked slice.
pub(crate) enum Publishing<'a> {
    /// Committed as soon as it is checked, together with the slices waiting at the same
    /// time (see [`super::group`]), by the strategy's commit.
    Commits(&'a dyn Commits),
    /// Remembered until every slice of the run is staged, then published all at once by
    /// [`Sink::swap`], which replaces the whole table.
    Swap,
}

/// The commit of a strategy that publishes slices as they are checked.
#[async_trait::async_trait]
pub(crate) trait Commits: Send + Sync {
    /// The most slices one commit may publish.
    fn most_per_commit(&self) -> usize;

    /// Commits `pending` on top of `table` (creating the table if there is none) with
    /// `properties`, which carry each slice's `txn` and the record; returns the version.
    /// Files the commit writes besides the slices' staged output (a merge's rows that
    /// stay) go in `also_written`, for the committer to delete if the commit does not
    /// land.
    async fn commit(
        &self,
        sink: &Sink,
        table: &mut Option<DeltaTable>,
        pending: &[&SliceCommit<'_>],
        properties: CommitProperties,
        also_written: &mut Vec<StagedOutput>,
    ) -> deltalake::DeltaResult<u64>;
}

/// The type of the strategy a destination names: the one registration of a strategy.
pub(crate) fn of(destination: &Destination) -> Box<dyn WriteStrategy> {
    match &destination.strategy {
        Strategy::Overwrite => Box::new(overwrite::Overwrite),
        Strategy::Append => Box::new(append::Append),
        Strategy::Merge { keys } => Box::new(merge::Merge {
            keys: keys.clone(),
            within_partitions: destination.slices_own_partitions,
        }),
        Strategy::Rebuild => Box::new(rebuild::Rebuild),
    }
}

/// The actions of a commit publishing every slice of `pending`, in order: each one's
/// staged files added, and the files it `replaces` (one list per slice) removed.
pub(super) fn replacing(
    pending: &[&SliceCommit<'_>],
    replaces: Vec<Vec<LogicalFileView>>,
) -> Vec<Action> {
    let mut all = Vec::new();
    for (member, replaced) in pending.iter().zip(replaces) {
        all.extend(member.staged.adds.iter().cloned().map(Action::Add));
        all.extend(
            replaced
                .iter()
                .map(|file| Action::Remove(file.remove_action(true))),
        );
    }
    all
}

/// The active files of `table` that belong to each slice, one list per slice: a file
/// belongs to the slices whose `wanted` key is the file's `key_of` (a slice without a key
/// has no file). One pass over the file list, whatever the number of slices: a commit of
/// a group would otherwise cost the table's size times the group's.
pub(super) fn files_of_each<K: std::hash::Hash + Eq>(
    table: Option<&DeltaTable>,
    wanted: Vec<Option<K>>,
    key_of: impl Fn(&LogicalFileView) -> Option<K>,
) -> deltalake::DeltaResult<Vec<Vec<LogicalFileView>>> {
    let mut found = vec![Vec::new(); wanted.len()];
    let Some(table) = table else {
        return Ok(found);
    };
    let mut slices_of: HashMap<K, Vec<usize>> = HashMap::new();
    for (index, key) in wanted.into_iter().enumerate() {
        if let Some(key) = key {
            slices_of.entry(key).or_default().push(index);
        }
    }
    for file in table.snapshot()?.log_data().iter() {
        let Some(indices) = key_of(&file).and_then(|key| slices_of.get(&key)) else {
            continue;
        };
        for &index in indices {
            found[index].push(file.clone());
        }
    }
    Ok(found)
}

/// The active files of `table` that lie in each slice's partitions, one list per slice.
///
/// This filters the snapshot's file list in memory: delta-rs's partition filters run a
/// kernel scan over the whole log on every call, which made each commit slower than the
/// last. Values compare by their typed meaning, so `7` and `07` match for an integer. The
/// slices of a pipeline all have the same partition columns.
pub(super) fn files_in_partitions(
    sink: &Sink,
    table: Option<&DeltaTable>,
    slices: &[&Slice],
) -> deltalake::DeltaResult<Vec<Vec<LogicalFileView>>> {
    let Some(first) = slices.first() else {
        return Ok(vec![]);
    };
    let columns: Vec<&str> = first.partition.iter().map(|(c, _)| c.as_str()).collect();
    let wanted = slices
        .iter()
        .map(|slice| {
            let values = slice.partition.iter();
            values.map(|(c, v)| sink.typed(c, Some(v))).collect()
        })
        .collect();
    files_of_each(table, wanted, |file| {
        let stored = file.partition_values_map();
        let values = columns.iter();
        values
            .map(|c| sink.typed(c, stored.get(*c).and_then(|v| v.as_deref())))
            .collect::<Option<Vec<ScalarValue>>>()
    })
}

/// A SQL predicate selecting the partitions of `slices`, for the conflict checker of a
/// commit that replaces them.
pub(super) fn partitions_predicate(slices: &[&Slice]) -> String {
    let each = slices.iter().map(|slice| {
        let columns = slice.partition.iter();
        let equal = columns
            .map(|(column, value)| format!("\"{column}\" = '{}'", value.replace('\'', "''")));
        format!("({})", equal.collect::<Vec<_>>().join(" AND "))
    });
    each.collect::<Vec<_>>().join(" OR ")
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`, as paths relative to the workspace.
    fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// The pipeline format parses a `Strategy`, this module maps it to its type, and tests
    /// build pipelines with one; any other code that asks which strategy it is would take
    /// a branch a new strategy silently falls into.
    #[test]
    fn no_code_outside_the_strategies_asks_which_strategy_it_is() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut files = Vec::new();
        for crate_src in ["engine/src", "cli/src"] {
            sources(&workspace.join(crate_src), &mut files);
        }
        // The pipeline format defines, names and parses strategies, with the file's own
        // cross-field rules (overwrite's partitions).
        let allowed = ["engine/src/pipeline/", "engine/src/sink/strategy.rs"];
        let asks = regex::Regex::new(
            r"Strategy::|strategy\s*[!=]=|match\s+[\w.&]*strategy\s*\{|matches!\([\w.&]*strategy\b",
        )
        .unwrap();
        let mut found = Vec::new();
        for file in &files {
            let relative = file.strip_prefix(workspace).unwrap().to_string_lossy();
            let is_allowed = allowed.iter().any(|a| relative.starts_with(a));
            if is_allowed || relative.ends_with("/tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(file).unwrap();
            for (number, line) in text.lines().enumerate() {
                if asks.is_match(line) && !line.trim_start().starts_with("//") {
                    found.push(format!("{relative}:{}: {}", number + 1, line.trim()));
                }
            }
        }
        assert!(files.len() > 20, "read the sources: {files:?}");
        assert_eq!(found, Vec::<String>::new(), "ask the WriteStrategy instead");
    }

    /// A method with a default would let a new strategy compile without answering it.
    #[test]
    fn every_question_of_a_write_strategy_must_be_answered() {
        let text = include_str!("strategy.rs");
        let start = text.find("pub(crate) trait WriteStrategy").unwrap();
        let body = &text[start..start + text[start..].find("\n}").unwrap()];
        let methods: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("fn "))
            .collect();
        assert!(methods.len() >= 6, "{methods:?}");
        for method in methods {
            assert!(method.ends_with(';'), "`{method}` has a default");
        }
    }
}
