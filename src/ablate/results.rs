//! `results.parquet` of an ablation grid: one row per cell (a cell is one seed), every axis
//! value, the achieved budget, best- and last-epoch dev metrics, wall time, peak RSS, status.
//! The resolved configuration, the shard, the command and the git revision are in the file's
//! metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use super::cells::CellSpec;
use super::config::{method_name, AblateConfig};
use crate::data::Task;
use crate::grid::{self, Shard};
use crate::methods::MethodKind;
use crate::output;
use crate::train::TrainSummary;

pub const FILE_STEM: &str = "results";
pub const FILE_EXT: &str = "parquet";
pub const CONFIG_KEY: &str = "ablate_config";
pub const SHARD_KEY: &str = "ablate_shard";
pub const PROVENANCE_KEY: &str = "ablate_provenance";

/// The metric names a row may carry (best_X and last_X columns), in column order.
pub const METRICS: [&str; 5] = ["accuracy", "f1", "matthews", "pearson", "spearman"];

/// Where the results came from: not part of the configuration (it may differ between shards).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command line that ran the grid.
    pub command: String,
    /// `git describe --always --dirty` of the working tree, where there is one.
    pub git_revision: String,
    /// Cells in the whole grid (a file may hold fewer: a shard, or a grid still running).
    #[serde(default)]
    pub grid_cells: usize,
}

/// One finished cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub cell: CellSpec,
    /// "completed" or "diverged".
    pub status: String,
    pub epochs_completed: usize,
    /// All trainable parameters, the task head included.
    pub trainable_params: usize,
    /// Trainable parameters without the task head: the paper's NUM.
    pub achieved_budget: usize,
    pub primary_metric: String,
    pub best_epoch: Option<usize>,
    pub best: BTreeMap<String, f64>,
    pub best_dev_loss: Option<f64>,
    pub last: BTreeMap<String, f64>,
    pub last_dev_loss: Option<f64>,
    pub wall_seconds: f64,
    pub peak_rss_mib: Option<f64>,
}

impl ResultRow {
    pub fn from_summary(cell: &CellSpec, summary: &TrainSummary, head_params: usize) -> ResultRow {
        ResultRow {
            cell: cell.clone(),
            status: summary.status.clone(),
            epochs_completed: summary.epochs_completed,
            trainable_params: summary.trainable_params,
            achieved_budget: summary.trainable_params.saturating_sub(head_params),
            primary_metric: summary.primary_metric.clone(),
            best_epoch: summary.best_epoch.as_ref().map(|e| e.epoch),
            best: summary
                .best_epoch
                .as_ref()
                .map(|e| e.metrics.clone())
                .unwrap_or_default(),
            best_dev_loss: summary.best_epoch.as_ref().map(|e| e.dev_loss),
            last: summary
                .last_epoch
                .as_ref()
                .map(|e| e.metrics.clone())
                .unwrap_or_default(),
            last_dev_loss: summary.last_epoch.as_ref().map(|e| e.dev_loss),
            wall_seconds: summary.seconds,
            peak_rss_mib: summary.peak_rss_mib,
        }
    }

    /// The best epoch's primary metric, where the cell has one.
    pub fn best_primary(&self) -> Option<f64> {
        self.best.get(&self.primary_metric).copied()
    }
}

impl grid::Cell for ResultRow {
    fn id(&self) -> String {
        grid::Cell::id(&self.cell)
    }
}

impl grid::Outcome for ResultRow {
    /// Timings and memory may differ between runs; nothing else may.
    fn agrees_with(&self, other: &Self) -> bool {
        let strip = |r: &ResultRow| ResultRow {
            wall_seconds: 0.0,
            peak_rss_mib: None,
            ..r.clone()
        };
        strip(self) == strip(other)
    }
    fn describe(&self) -> String {
        format!(
            "{} ({}, best {} {:?})",
            grid::Cell::id(self),
            self.status,
            self.primary_metric,
            self.best_primary()
        )
    }
}

/// The file of a shard in `out`.
pub fn path(out: &Path, shard: Shard) -> PathBuf {
    out.join(shard.file_name(FILE_STEM, FILE_EXT))
}

/// Writes `rows` (atomically) with the configuration, shard and provenance in the metadata.
pub fn write(
    path: &Path,
    config: &AblateConfig,
    shard: Shard,
    provenance: &Provenance,
    rows: &[ResultRow],
) -> Result<()> {
    let mut columns = vec![
        output::column_of("cell_id", rows, grid::Cell::id),
        output::column_of("cell_dir", rows, |r| format!("cells/{}", r.cell.dir_name())),
        output::column_of("task", rows, |r| r.cell.task.name().to_string()),
        output::column_of("method", rows, |r| method_name(r.cell.method).to_string()),
        output::column_of("selector", rows, |r| r.cell.selector.name().to_string()),
        output::column_of("modules", rows, |r| r.cell.modules.clone()),
        output::column_of("target_budget", rows, |r| r.cell.budget.map(|b| b as u64)),
        output::column_of("achieved_budget", rows, |r| r.achieved_budget as u64),
        output::column_of("budget_gap", rows, |r| {
            r.cell
                .budget
                .map(|b| (r.achieved_budget as f64 - b as f64) / b as f64)
        }),
        output::column_of("trainable_params", rows, |r| r.trainable_params as u64),
        output::column_of("rate", rows, |r| r.cell.rate),
        output::column_of("lora_rank", rows, |r| r.cell.lora_rank.map(|k| k as u32)),
        output::column_of("lr", rows, |r| r.cell.lr),
        output::column_of("seed", rows, |r| r.cell.seed),
        output::column_of("status", rows, |r| r.status.clone()),
        output::column_of("epochs_completed", rows, |r| r.epochs_completed as u32),
        output::column_of("primary_metric", rows, |r| r.primary_metric.clone()),
        output::column_of("best_epoch", rows, |r| r.best_epoch.map(|e| e as u32)),
        output::column_of("best_metric", rows, |r| r.best_primary()),
        output::column_of("last_metric", rows, |r| {
            r.last.get(&r.primary_metric).copied()
        }),
        output::column_of("best_dev_loss", rows, |r| r.best_dev_loss),
        output::column_of("last_dev_loss", rows, |r| r.last_dev_loss),
    ];
    for name in METRICS {
        for (prefix, pick) in [("best", 0), ("last", 1)] {
            columns.push(Column::new(
                format!("{prefix}_{name}").into(),
                rows.iter()
                    .map(|r| {
                        if pick == 0 {
                            r.best.get(name).copied()
                        } else {
                            r.last.get(name).copied()
                        }
                    })
                    .collect::<Vec<_>>(),
            ));
        }
    }
    columns.push(output::column_of("wall_seconds", rows, |r| r.wall_seconds));
    columns.push(output::column_of("peak_rss_mib", rows, |r| r.peak_rss_mib));
    let mut df = DataFrame::new_infer_height(columns)?;
    // The rows as JSON too: read back exactly (including every field of the cell).
    let rows_json = serde_json::to_string(rows)?;
    output::write_parquet(
        &mut df,
        path,
        &[
            (CONFIG_KEY.into(), serde_json::to_string(config)?),
            (SHARD_KEY.into(), shard.to_string()),
            (PROVENANCE_KEY.into(), serde_json::to_string(provenance)?),
            (ROWS_KEY.into(), rows_json),
        ],
    )
}

const ROWS_KEY: &str = "ablate_rows";

/// A results file read back.
#[derive(Debug, Clone)]
pub struct ResultsFile {
    pub path: PathBuf,
    pub config: AblateConfig,
    pub shard: Shard,
    pub provenance: Provenance,
    pub rows: Vec<ResultRow>,
}

/// Reads a results file (written by [`write`]).
pub fn read(path: &Path) -> Result<ResultsFile> {
    let meta = output::read_metadata(path)?;
    let config: AblateConfig =
        serde_json::from_str(&output::metadata_value(&meta, CONFIG_KEY, path)?)
            .with_context(|| format!("{}: unreadable {CONFIG_KEY}", path.display()))?;
    let shard = Shard::parse(&output::metadata_value(&meta, SHARD_KEY, path)?)?;
    let provenance: Provenance =
        serde_json::from_str(&output::metadata_value(&meta, PROVENANCE_KEY, path)?)
            .unwrap_or_default();
    let rows: Vec<ResultRow> =
        serde_json::from_str(&output::metadata_value(&meta, ROWS_KEY, path)?)
            .with_context(|| format!("{}: unreadable rows", path.display()))?;
    // The table is what users read; it must hold what the metadata says.
    let df = output::read_parquet(path)?;
    let ids = output::column::strings(&df, "cell_id")?;
    let expected: Vec<String> = rows.iter().map(grid::Cell::id).collect();
    if ids != expected {
        bail!(
            "{}: its rows and its metadata disagree; rerun the grid with --resume",
            path.display()
        );
    }
    Ok(ResultsFile {
        path: path.to_path_buf(),
        config,
        shard,
        provenance,
        rows,
    })
}

/// The ids of the cells a file holds.
pub fn finished_ids(rows: &[ResultRow]) -> BTreeSet<String> {
    rows.iter().map(grid::Cell::id).collect()
}

/// Rows in grid order (the order of `cells`); rows of cells not in the grid are dropped.
pub fn in_grid_order(rows: &[ResultRow], cells: &[CellSpec]) -> Vec<ResultRow> {
    let by_id: BTreeMap<String, &ResultRow> = rows.iter().map(|r| (grid::Cell::id(r), r)).collect();
    cells
        .iter()
        .filter_map(|c| by_id.get(&grid::Cell::id(c)).map(|r| (*r).clone()))
        .collect()
}

/// A method's label in tables and figures.
pub fn method_label(method: MethodKind) -> &'static str {
    match method {
        MethodKind::Full => "full",
        MethodKind::Head => "head only",
        MethodKind::Sift => "SIFT",
        MethodKind::Random => "random",
        MethodKind::Lora => "LoRA",
    }
}

/// A task's label in tables and figures.
pub fn task_label(task: Task) -> &'static str {
    match task {
        Task::Cola => "CoLA",
        Task::Sst2 => "SST-2",
        Task::Mrpc => "MRPC",
        Task::Qqp => "QQP",
        Task::Stsb => "STS-B",
        Task::Mnli => "MNLI",
        Task::MnliMismatched => "MNLI-mm",
        Task::Qnli => "QNLI",
        Task::Rte => "RTE",
        Task::Wnli => "WNLI",
    }
}
