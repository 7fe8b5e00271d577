//! Grids of independent cells, split into shards, resumed and merged: the machinery behind
//! `sift-lab landscape --shard/--resume` + `sift-lab merge`, and meant for any other grid
//! (e.g. a grid of training runs for `sift-lab ablate`).
//!
//! A grid is a list of cells in a fixed order; cell `i` is its position in that list. Each cell
//! has a stable [`Cell::id`] (a landscape point: its point number; a training run: e.g.
//! `"method=sift,rate=0.01,seed=1"`): the key by which finished results are found again on disk.
//! The numbers of a cell must depend on the configuration only, never on which run or shard
//! computed it, so a resumed or merged grid equals an uninterrupted one.
//!
//! How an analysis uses it:
//!
//! ```ignore
//! let shard = grid::Shard::parse("2/8")?;               // --shard I/N, 1-based
//! let path = out.join(shard.file_name("ablate", "parquet")); // ablate.shard-2-of-8.parquet
//! // On --resume: refuse a file written with another configuration, then skip what it holds.
//! grid::check_same_config(&path, &stored_config, &config)?;
//! let finished: BTreeSet<String> = stored_results.iter().map(|r| r.id()).collect();
//! let plan = grid::plan(&cells, shard, &finished);      // plan.todo: still to compute
//! for cell in &plan.todo { /* compute, append, rewrite the shard file atomically */ }
//! // `merge`: read every shard file into a ShardFile, then
//! let merged = grid::merge(&files, &cells)?;            // same config, no contradiction
//! merged.ensure_complete("runs")?;                      // unless --allow-partial
//! ```
//!
//! Results implement [`Outcome`]: how two results of the same cell are compared (timings
//! excluded) and described in an error message.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::output;

/// One cell of a grid.
pub trait Cell {
    /// The cell's stable identity: equal across runs, shards and processes.
    fn id(&self) -> String;
}

/// The stored result of one cell.
pub trait Outcome: Cell + Clone {
    /// Whether `self` and `other` (the same cell, from two files) hold the same values.
    /// Leave out what may differ between runs, such as timings.
    fn agrees_with(&self, other: &Self) -> bool;
    /// A short description for error messages (default: the id).
    fn describe(&self) -> String {
        self.id()
    }
}

/// `I/N`: the I-th (1-based) of N shards of a grid. Cell `i` belongs to shard `i mod N + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// Parses `I/N` (the value of `--shard`).
    pub fn parse(text: &str) -> Result<Shard> {
        let (i, n) = text
            .split_once('/')
            .with_context(|| format!("--shard '{text}': expected I/N, e.g. 3/8"))?;
        let index: usize = i
            .trim()
            .parse()
            .with_context(|| format!("--shard '{text}': '{i}' is not a whole number"))?;
        let count: usize = n
            .trim()
            .parse()
            .with_context(|| format!("--shard '{text}': '{n}' is not a whole number"))?;
        ensure!(count >= 1, "--shard '{text}': N must be at least 1");
        ensure!(
            (1..=count).contains(&index),
            "--shard '{text}': I must lie between 1 and N = {count} (shards are numbered from 1, as SLURM_ARRAY_TASK_ID with --array=1-{count})"
        );
        Ok(Shard { index, count })
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// Whether the cell at position `index` of the grid belongs to this shard.
    pub fn contains(&self, index: usize) -> bool {
        index % self.count == self.index - 1
    }

    /// The file of this shard: `STEM.EXT` for a whole grid, `STEM.shard-I-of-N.EXT` otherwise.
    pub fn file_name(&self, stem: &str, ext: &str) -> String {
        if self.is_whole() {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}.shard-{}-of-{}.{ext}", self.index, self.count)
        }
    }

    /// The cells of this shard, in grid order.
    pub fn cells<C: Clone>(&self, cells: &[C]) -> Vec<C> {
        cells
            .iter()
            .enumerate()
            .filter(|(i, _)| self.contains(*i))
            .map(|(_, c)| c.clone())
            .collect()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The cells still to compute: those of `cells` whose id is not in `finished`, in order.
pub fn remaining<C: Cell + Clone>(cells: &[C], finished: &BTreeSet<String>) -> Vec<C> {
    cells
        .iter()
        .filter(|c| !finished.contains(&c.id()))
        .cloned()
        .collect()
}

/// What one shard of a grid has to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<C> {
    /// Every cell of the shard, in grid order.
    pub shard_cells: Vec<C>,
    /// The shard's cells not finished yet.
    pub todo: Vec<C>,
}

impl<C> Plan<C> {
    /// Cells of the shard that were already finished.
    pub fn already_done(&self) -> usize {
        self.shard_cells.len() - self.todo.len()
    }
}

/// The cells of `shard` and, of those, the ones whose id is not in `finished`.
pub fn plan<C: Cell + Clone>(cells: &[C], shard: Shard, finished: &BTreeSet<String>) -> Plan<C> {
    let shard_cells = shard.cells(cells);
    let todo = remaining(&shard_cells, finished);
    Plan { shard_cells, todo }
}

/// Refuses to continue into `path` when its stored configuration differs from `now`, naming
/// every differing key with both values.
pub fn check_same_config<T: Serialize>(path: &Path, stored: &T, now: &T) -> Result<()> {
    let diffs = output::config_differences(stored, now)?;
    if !diffs.is_empty() {
        bail!(
            "{} was written with a different configuration; differing keys: {}. Use another \
             --out, or rerun with the stored settings",
            path.display(),
            output::describe_differences(&diffs)
        );
    }
    Ok(())
}

/// The shard files `STEM.shard-*.EXT` of a directory, sorted.
pub fn shard_files(dir: &Path, stem: &str, ext: &str) -> Result<Vec<PathBuf>> {
    let (prefix, suffix) = (format!("{stem}.shard-"), format!(".{ext}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The files named by `inputs`: a file as it is, a directory as its shard files
/// ([`shard_files`]; an error when it has none).
pub fn input_files(inputs: &[PathBuf], stem: &str, ext: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let found = shard_files(input, stem, ext)?;
            ensure!(
                !found.is_empty(),
                "{}: no {stem}.shard-*.{ext} files",
                input.display()
            );
            files.extend(found);
        } else {
            ensure!(
                input.is_file(),
                "{}: no such file or directory",
                input.display()
            );
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// One shard file as read back: its configuration, shard and results.
#[derive(Debug, Clone)]
pub struct ShardFile<Cfg, R> {
    pub path: PathBuf,
    pub config: Cfg,
    pub shard: Shard,
    pub outcomes: Vec<R>,
}

/// The join of shard files.
#[derive(Debug, Clone)]
pub struct Merged<Cfg, R> {
    pub config: Cfg,
    /// One result per cell found, in grid order.
    pub outcomes: Vec<R>,
    /// Ids of the grid's cells no file holds, in grid order.
    pub missing: Vec<String>,
    /// Cells in the grid.
    pub total: usize,
    /// The shards the files hold, sorted, without repeats.
    pub shards: Vec<Shard>,
}

impl<Cfg, R> Merged<Cfg, R> {
    /// An error listing (up to ten of) the missing cells, unless there are none. `noun` names
    /// the cells in the plural ("points", "runs").
    pub fn ensure_complete(&self, noun: &str) -> Result<()> {
        if self.missing.is_empty() {
            return Ok(());
        }
        let show: Vec<&str> = self.missing.iter().take(10).map(String::as_str).collect();
        let shards: Vec<String> = self.shards.iter().map(Shard::to_string).collect();
        bail!(
            "the merged grid misses {} of {} {noun} (e.g. {noun} {}{}); inputs hold shards {}. \
             Run the missing shards (or finish them with --resume), or pass --allow-partial",
            self.missing.len(),
            self.total,
            show.join(", "),
            if self.missing.len() > 10 { ", ..." } else { "" },
            shards.join(", ")
        );
    }
}

/// Joins `files` over the grid `cells`. Every file must hold the configuration of the first
/// (an error names the differing keys and both files); a cell held by several files must have
/// agreeing results there (an error names the cell and both files); a result whose id is not
/// a cell of the grid is an error. Missing cells are listed in [`Merged::missing`].
pub fn merge<Cfg, C, R>(files: &[ShardFile<Cfg, R>], cells: &[C]) -> Result<Merged<Cfg, R>>
where
    Cfg: Serialize + Clone,
    C: Cell,
    R: Outcome,
{
    let first = files.first().context("nothing to merge: no input files")?;
    for f in &files[1..] {
        let diffs = output::config_differences(&first.config, &f.config)?;
        ensure!(
            diffs.is_empty(),
            "{} and {} hold different configurations; differing keys: {}",
            first.path.display(),
            f.path.display(),
            diffs
                .iter()
                .map(|d| format!(
                    "{} ({} in the first, {} in the second)",
                    d.key, d.stored, d.now
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let ids: Vec<String> = cells.iter().map(Cell::id).collect();
    let known: BTreeSet<&String> = ids.iter().collect();
    // id → (result, the file it came from)
    let mut found: BTreeMap<String, (&R, &Path)> = BTreeMap::new();
    for f in files {
        for r in &f.outcomes {
            let id = r.id();
            ensure!(
                known.contains(&id),
                "{} holds {}, which is not a cell of the grid",
                f.path.display(),
                r.describe()
            );
            match found.get(&id) {
                Some((prev, prev_path)) => ensure!(
                    prev.agrees_with(r),
                    "cell {id} differs between the inputs: {} has {}, {} has {}",
                    prev_path.display(),
                    prev.describe(),
                    f.path.display(),
                    r.describe()
                ),
                None => {
                    found.insert(id, (r, &f.path));
                }
            }
        }
    }
    let mut outcomes = Vec::with_capacity(found.len());
    let mut missing = Vec::new();
    for id in ids {
        match found.get(&id) {
            Some((r, _)) => outcomes.push((*r).clone()),
            None => missing.push(id),
        }
    }
    let shards: BTreeSet<Shard> = files.iter().map(|f| f.shard).collect();
    Ok(Merged {
        config: first.config.clone(),
        outcomes,
        missing,
        total: cells.len(),
        shards: shards.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Run(usize);

    impl Cell for Run {
        fn id(&self) -> String {
            format!("run{}", self.0)
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Res {
        cell: usize,
        value: f64,
        seconds: f64,
    }

    impl Cell for Res {
        fn id(&self) -> String {
            format!("run{}", self.cell)
        }
    }

    impl Outcome for Res {
        fn agrees_with(&self, other: &Self) -> bool {
            self.value == other.value
        }
        fn describe(&self) -> String {
            format!("{} = {}", self.id(), self.value)
        }
    }

    #[derive(Debug, Clone, Serialize)]
    struct Cfg {
        lr: f64,
        seed: u64,
    }

    fn res(cell: usize, value: f64) -> Res {
        Res {
            cell,
            value,
            seconds: cell as f64,
        }
    }

    fn file(name: &str, shard: &str, cfg: Cfg, outcomes: Vec<Res>) -> ShardFile<Cfg, Res> {
        ShardFile {
            path: PathBuf::from(name),
            config: cfg,
            shard: Shard::parse(shard).unwrap(),
            outcomes,
        }
    }

    fn cfg() -> Cfg {
        Cfg { lr: 0.1, seed: 1 }
    }

    fn grid(n: usize) -> Vec<Run> {
        (0..n).map(Run).collect()
    }

    #[test]
    fn three_shards_partition_ten_cells_exactly() {
        let cells = grid(10);
        let parts: Vec<Vec<usize>> = (1..=3)
            .map(|i| {
                let s = Shard::parse(&format!("{i}/3")).unwrap();
                s.cells(&cells).into_iter().map(|r| r.0).collect()
            })
            .collect();
        assert_eq!(parts[0], vec![0, 3, 6, 9]);
        assert_eq!(parts[1], vec![1, 4, 7]);
        assert_eq!(parts[2], vec![2, 5, 8]);
        // Disjoint and covering: each cell in exactly one shard.
        let mut all: Vec<usize> = parts.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(Shard::WHOLE.cells(&cells), cells);
    }

    #[test]
    fn shards_parse_with_errors_naming_the_flag() {
        assert_eq!(
            Shard::parse(" 2 / 8 ").unwrap(),
            Shard { index: 2, count: 8 }
        );
        let err = |s: &str| format!("{:#}", Shard::parse(s).unwrap_err());
        assert!(err("3/2").contains("--shard '3/2'") && err("3/2").contains("between 1 and N = 2"));
        assert!(err("0/2").contains("between 1 and N = 2"));
        assert!(err("1/0").contains("N must be at least 1"));
        assert!(err("2").contains("expected I/N"));
        assert!(err("a/2").contains("'a' is not a whole number"));
        assert_eq!(Shard::parse("3/8").unwrap().to_string(), "3/8");
    }

    #[test]
    fn file_names_carry_the_shard() {
        let s = Shard::parse("2/5").unwrap();
        assert_eq!(
            s.file_name("landscape", "parquet"),
            "landscape.shard-2-of-5.parquet"
        );
        assert_eq!(
            Shard::WHOLE.file_name("landscape", "parquet"),
            "landscape.parquet"
        );
    }

    #[test]
    fn resume_skips_exactly_the_finished_ids() {
        let cells = grid(6);
        let finished: BTreeSet<String> = ["run1", "run4", "run9"].map(String::from).into();
        let todo: Vec<usize> = remaining(&cells, &finished)
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(todo, vec![0, 2, 3, 5]);
        // Within shard 2/2 (cells 1, 3, 5): 1 is done.
        let p = plan(&cells, Shard::parse("2/2").unwrap(), &finished);
        assert_eq!(p.shard_cells, vec![Run(1), Run(3), Run(5)]);
        assert_eq!(p.todo, vec![Run(3), Run(5)]);
        assert_eq!(p.already_done(), 1);
        assert!(remaining(&cells, &BTreeSet::new()).len() == 6);
    }

    #[test]
    fn merge_joins_shards_in_grid_order_and_accepts_agreeing_duplicates() {
        let cells = grid(4);
        let a = file("a", "1/2", cfg(), vec![res(2, 0.5), res(0, 0.25)]);
        // run2 again, with another timing but the same value: fine.
        let mut dup = res(2, 0.5);
        dup.seconds = 99.0;
        let b = file("b", "2/2", cfg(), vec![res(1, 1.0), res(3, 2.0), dup]);
        let m = merge(&[a, b], &cells).unwrap();
        let got: Vec<(usize, f64)> = m.outcomes.iter().map(|r| (r.cell, r.value)).collect();
        assert_eq!(got, vec![(0, 0.25), (1, 1.0), (2, 0.5), (3, 2.0)]);
        assert!(m.missing.is_empty());
        m.ensure_complete("runs").unwrap();
        assert_eq!(m.shards.len(), 2);
    }

    #[test]
    fn merge_refuses_a_contradiction_naming_the_cell_and_both_files() {
        let cells = grid(2);
        let a = file(
            "shard-a.parquet",
            "1/1",
            cfg(),
            vec![res(0, 0.5), res(1, 1.0)],
        );
        let b = file("shard-b.parquet", "1/1", cfg(), vec![res(1, 1.5)]);
        let err = format!("{:#}", merge(&[a, b], &cells).unwrap_err());
        assert!(
            err.contains("run1")
                && err.contains("shard-a.parquet has run1 = 1")
                && err.contains("shard-b.parquet has run1 = 1.5"),
            "{err}"
        );
    }

    #[test]
    fn merge_refuses_a_config_mismatch_naming_the_keys_and_files() {
        let cells = grid(2);
        let a = file("a.parquet", "1/2", cfg(), vec![res(0, 0.5)]);
        let b = file(
            "b.parquet",
            "2/2",
            Cfg { lr: 0.2, seed: 1 },
            vec![res(1, 1.0)],
        );
        let err = format!("{:#}", merge(&[a, b], &cells).unwrap_err());
        assert!(
            err.contains("a.parquet") && err.contains("b.parquet") && err.contains("lr (0.1"),
            "{err}"
        );
        assert!(!err.contains("seed"), "{err}");
    }

    #[test]
    fn merge_lists_missing_cells_and_refuses_foreign_ones() {
        let cells = grid(5);
        let a = file(
            "a",
            "1/2",
            cfg(),
            vec![res(0, 0.0), res(2, 0.0), res(4, 0.0)],
        );
        let m = merge(&[a], &cells).unwrap();
        assert_eq!(m.missing, vec!["run1", "run3"]);
        let err = format!("{:#}", m.ensure_complete("runs").unwrap_err());
        assert!(
            err.contains("misses 2 of 5 runs (e.g. runs run1, run3)") && err.contains("shards 1/2"),
            "{err}"
        );
        let b = file("b", "1/1", cfg(), vec![res(7, 0.0)]);
        let err = format!("{:#}", merge(&[b], &cells).unwrap_err());
        assert!(err.contains("run7") && err.contains("not a cell"), "{err}");
        assert!(merge::<Cfg, Run, Res>(&[], &cells).is_err());
    }

    #[test]
    fn a_changed_config_is_refused_on_resume() {
        let path = Path::new("out/x.parquet");
        check_same_config(path, &cfg(), &cfg()).unwrap();
        let err = check_same_config(path, &cfg(), &Cfg { lr: 0.1, seed: 2 }).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("out/x.parquet") && err.contains("seed: was 1, now 2"),
            "{err}"
        );
    }
}
