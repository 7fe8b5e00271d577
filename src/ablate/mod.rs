//! `sift-lab ablate`: the paper's ablation grids (Table 2, Table 4, Fig. 6) as grids of
//! ordinary `sift-lab train` runs.
//!
//! - `config`: the analyses/*.toml format, presets and errors naming file, line and key.
//! - `cells`: the grid's cells (stable ids, seed outermost) and their budget matching.
//! - `results`: results.parquet, one row per cell.
//! - `table`: table.md and the Fig. 6 figure from the results.
//!
//! Each cell trains into `DIR/cells/<cell>/` (metrics.parquet, summary.json, as `train` writes
//! them), so it can be inspected or rerun alone. `DIR/results.parquet` (a shard:
//! `results.shard-I-of-N.parquet`) is rewritten atomically after every cell; `--resume` skips
//! the cells it holds, and a cell killed mid-training continues from its last epoch. A cell
//! that diverges is recorded with `status = "diverged"` and the grid goes on.

pub mod cells;
pub mod config;
pub mod results;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde::Serialize;

pub use self::cells::{CellSpec, Grid};
pub use self::config::{AblateConfig, Item};
pub use self::results::{ResultRow, ResultsFile};
use crate::grid::{self, Cell, Shard, ShardFile};
use crate::model::weights::is_head;
use crate::train::{self, TrainOptions, TrainSummary};
use crate::{output, plot, progress};

/// Where and how a grid runs: nothing here changes its numbers.
#[derive(Debug, Clone)]
pub struct AblateOptions {
    pub out: PathBuf,
    pub shard: Shard,
    pub resume: bool,
    /// Draw table.md (and the figure) when the grid is complete.
    pub draw: bool,
    /// The command line, stored with the results.
    pub command: String,
}

impl AblateOptions {
    pub fn new(out: &Path) -> AblateOptions {
        AblateOptions {
            out: out.to_path_buf(),
            shard: Shard::WHOLE,
            resume: false,
            draw: true,
            command: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AblateReport {
    pub file: PathBuf,
    pub grid_cells: usize,
    pub shard_cells: usize,
    pub already_done: usize,
    pub computed: usize,
    pub diverged: usize,
    pub interrupted: bool,
    pub notes: Vec<String>,
    /// table.md and figures, when the grid was complete.
    pub drawn: Vec<PathBuf>,
}

/// `git describe --always --dirty` of the current directory, or "unknown".
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Task-head parameters of a cell's model (to leave them out of the budget).
fn head_params(cell: &CellSpec, model: &str) -> Result<usize> {
    let (_, shapes) = cells::model_shapes(model, cell.task)?;
    Ok(shapes
        .iter()
        .filter(|(n, _)| is_head(n))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum())
}

/// Runs (or resumes) the cells of `options.shard`.
pub fn run(config: &AblateConfig, options: &AblateOptions) -> Result<AblateReport> {
    let grid = cells::expand(config)?;
    for note in &grid.notes {
        eprintln!("note: {note}");
    }
    ensure!(
        !grid.cells.is_empty(),
        "{}: the grid has no cells",
        config.source
    );
    let out = options.out.as_path();
    let path = results::path(out, options.shard);
    let mut rows: Vec<ResultRow> = Vec::new();
    let mut provenance = results::Provenance {
        command: options.command.clone(),
        git_revision: git_revision(),
        grid_cells: grid.cells.len(),
    };
    if path.exists() {
        ensure!(
            options.resume,
            "{} already holds results: pass --resume to continue the grid, or choose another --out",
            path.display()
        );
        let stored = results::read(&path)?;
        grid::check_same_config(&path, &stored.config, config)?;
        rows = stored.rows;
        // The command that started the grid, and every revision that computed part of it.
        if !stored.provenance.command.is_empty() {
            provenance.command = stored.provenance.command;
        }
        let stored_revisions = stored.provenance.git_revision;
        if !stored_revisions
            .split(", ")
            .any(|r| r == provenance.git_revision)
        {
            provenance.git_revision = format!("{stored_revisions}, {}", provenance.git_revision);
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let plan = grid::plan(&grid.cells, options.shard, &results::finished_ids(&rows));
    let data_dir = cells::default_data_dir().or_else(|e| {
        if config.train.data_dir.is_some() {
            Ok(PathBuf::new())
        } else {
            Err(e)
        }
    })?;
    results::write(&path, config, options.shard, &provenance, &rows)?;

    let bar = progress::grid_bar(plan.shard_cells.len() as u64, "cells");
    bar.set_position(plan.already_done() as u64);
    let started = Instant::now();
    // Cells trained now, and finished cells read back from their own folders (a grid whose
    // results file was lost, or a shard reusing another's cells).
    let (mut computed, mut read_back, mut interrupted) = (0usize, 0usize, false);
    for cell in &plan.todo {
        bar.set_message(format!(
            "{} (trains {} without the head)",
            cell.id(),
            cell.achieved
        ));
        let train_config = cell.train_config(config, &data_dir);
        let row = match run_cell(cell, &train_config, out, options.resume)? {
            CellOutcome::Trained(row) => {
                computed += 1;
                row
            }
            CellOutcome::ReadBack(row) => {
                read_back += 1;
                row
            }
            CellOutcome::Interrupted => {
                interrupted = true;
                break;
            }
        };
        if row.status == "diverged" {
            bar.println(format!(
                "{}: diverged (recorded; the grid goes on)",
                cell.id()
            ));
        }
        rows.push(row);
        rows = results::in_grid_order(&rows, &grid.cells);
        results::write(&path, config, options.shard, &provenance, &rows)?;
        bar.inc(1);
        if bar.is_hidden() {
            let per_cell = started.elapsed().as_secs_f64() / computed.max(1) as f64;
            eprintln!(
                "cell {}/{} done: {} (achieved budget {}, {}; {:.0} s a cell, ETA {:.0} s)",
                bar.position(),
                plan.shard_cells.len(),
                cell.id(),
                rows.iter()
                    .find(|r| r.id() == cell.id())
                    .map_or(0, |r| r.achieved_budget),
                rows.iter()
                    .find(|r| r.id() == cell.id())
                    .map_or("", |r| r.status.as_str()),
                per_cell,
                per_cell * (plan.todo.len() - computed - read_back) as f64
            );
        }
        if progress::interrupted() {
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    let shard_rows = rows.len();
    let mut drawn = Vec::new();
    if options.shard.is_whole() && shard_rows == grid.cells.len() && options.draw {
        drawn = draw(config, &rows, grid.cells.len(), out)?;
    }
    Ok(AblateReport {
        file: path,
        grid_cells: grid.cells.len(),
        shard_cells: plan.shard_cells.len(),
        already_done: plan.already_done() + read_back,
        computed,
        diverged: rows.iter().filter(|r| r.status == "diverged").count(),
        interrupted,
        notes: grid.notes,
        drawn,
    })
}

/// What became of one cell of the grid.
enum CellOutcome {
    Trained(ResultRow),
    /// A finished run with the same configuration was already in the cell's folder.
    ReadBack(ResultRow),
    /// Ctrl-C.
    Interrupted,
}

/// Trains one cell into `out/cells/<cell>/`, or reads it back when a finished run with the same
/// configuration is already there; with `resume`, continues a cell from its checkpoint or
/// restarts one killed before it had any.
fn run_cell(
    cell: &CellSpec,
    train_config: &train::TrainConfig,
    out: &Path,
    resume: bool,
) -> Result<CellOutcome> {
    let dir = out.join("cells").join(cell.dir_name());
    let head = head_params(cell, &train_config.model)?;
    let summary_path = train::summary_path(&dir);
    let summary = read_summary(&summary_path)?;
    let finished = |s: &TrainSummary| s.status == "completed" || s.status == "diverged";
    if let Some(s) = &summary {
        if s.config == *train_config && finished(s) {
            return Ok(CellOutcome::ReadBack(ResultRow::from_summary(
                cell, s, head,
            )));
        }
    }
    let mut options = TrainOptions::new(&dir);
    options.resume = dir.join("state").join("checkpoint.json").exists();
    if resume && !options.resume && dir.exists() && !summary.as_ref().is_some_and(finished) {
        // A cell killed before its first checkpoint left partial files (metrics.parquet, an
        // interrupted summary) and nothing to continue from: it holds no result, so it starts
        // again. Without --resume the grid is refused before any cell runs.
        eprintln!(
            "{}: unfinished and without a checkpoint; training it again",
            cell.id()
        );
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("clearing the unfinished cell {}", dir.display()))?;
    }
    match train::run(train_config, &options) {
        Ok(report) if report.summary.status == "interrupted" => Ok(CellOutcome::Interrupted),
        Ok(report) => Ok(CellOutcome::Trained(ResultRow::from_summary(
            cell,
            &report.summary,
            head,
        ))),
        Err(e) => match read_summary(&summary_path)? {
            // train::run reports divergence as an error after writing its summary.
            Some(s) if s.status == "diverged" && s.config == *train_config => Ok(
                CellOutcome::Trained(ResultRow::from_summary(cell, &s, head)),
            ),
            _ => Err(e.context(format!(
                "cell {} ({}) failed; the finished cells are saved, rerun with --resume",
                cell.id(),
                dir.display()
            ))),
        },
    }
}

fn read_summary(path: &Path) -> Result<Option<TrainSummary>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)?;
    Ok(serde_json::from_str(&text).ok())
}

/// The file names `draw` writes in a grid's directory.
pub const TABLE_FILE: &str = "table.md";
pub const FIG6_STEM: &str = "fig6_budget";

/// Writes `table.md` (and for Fig. 6 the budget figure) of the `rows` of a grid of `grid_cells`
/// cells into `dir` (a grid still running gives a partial table, and says so).
pub fn draw(
    config: &AblateConfig,
    rows: &[ResultRow],
    grid_cells: usize,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let table_path = dir.join(TABLE_FILE);
    let mut text = table::markdown(config, rows);
    if grid_cells > rows.len() {
        text = text.replacen(
            "\n\n",
            &format!(
                "\n\n**Partial: {} of the grid's {grid_cells} cells are done** (rerun with `--resume` to finish).\n\n",
                rows.len()
            ),
            1,
        );
    }
    output::write_atomic(&table_path, text.as_bytes())?;
    let mut paths = vec![table_path];
    if config.item == Item::Fig6 {
        for &task in &config.axes.tasks {
            let figure = table::budget_figure(config, rows, task);
            let stem = if config.axes.tasks.len() == 1 {
                FIG6_STEM.to_string()
            } else {
                format!("{FIG6_STEM}_{}", task.name())
            };
            paths.extend(plot::save(&figure, &dir.join(stem))?);
        }
    }
    Ok(paths)
}

/// Redraws table.md and the figure of `dir/results.parquet` into `figures_dir`.
pub fn redraw(dir: &Path, figures_dir: &Path) -> Result<Vec<PathBuf>> {
    let path = results::path(dir, Shard::WHOLE);
    ensure!(
        path.is_file(),
        "{} not found: run the grid (or merge its shards) first",
        path.display()
    );
    let file = results::read(&path)?;
    draw(
        &file.config,
        &file.rows,
        file.provenance.grid_cells,
        figures_dir,
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub file: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub cells: usize,
    pub grid_cells: usize,
    pub drawn: Vec<PathBuf>,
}

/// Joins shard files (`results.shard-I-of-N.parquet`, given or found in directories; none
/// given: `out`) into `out/results.parquet`, and draws the table when the grid is complete.
pub fn merge(inputs: &[PathBuf], out: &Path, allow_partial: bool) -> Result<MergeReport> {
    let inputs: Vec<PathBuf> = if inputs.is_empty() {
        vec![out.to_path_buf()]
    } else {
        inputs.to_vec()
    };
    let paths = grid::input_files(&inputs, results::FILE_STEM, results::FILE_EXT)?;
    let path = results::path(out, Shard::WHOLE);
    ensure!(
        !paths.contains(&path),
        "{} is both an input and the output",
        path.display()
    );
    let files: Vec<ResultsFile> = paths
        .iter()
        .map(|p| results::read(p))
        .collect::<Result<_>>()?;
    let shard_files: Vec<ShardFile<AblateConfig, ResultRow>> = files
        .iter()
        .map(|f| ShardFile {
            path: f.path.clone(),
            config: f.config.clone(),
            shard: f.shard,
            outcomes: f.rows.clone(),
        })
        .collect();
    let config = files[0].config.clone();
    let grid = cells::expand(&config)?;
    let merged = grid::merge(&shard_files, &grid.cells)?;
    if !allow_partial {
        merged.ensure_complete("cells")?;
    }
    let mut provenance = files[0].provenance.clone();
    let revisions: std::collections::BTreeSet<&str> = files
        .iter()
        .map(|f| f.provenance.git_revision.as_str())
        .collect();
    provenance.git_revision = revisions.into_iter().collect::<Vec<_>>().join(", ");
    provenance.grid_cells = merged.total;
    results::write(&path, &config, Shard::WHOLE, &provenance, &merged.outcomes)?;
    let drawn = if merged.missing.is_empty() {
        draw(&config, &merged.outcomes, merged.total, out)?
    } else {
        Vec::new()
    };
    Ok(MergeReport {
        file: path,
        inputs: paths,
        cells: merged.outcomes.len(),
        grid_cells: merged.total,
        drawn,
    })
}

/// Whether `dir` holds ablate shard files (for `sift-lab merge`).
pub fn has_shards(dir: &Path) -> bool {
    dir.is_dir()
        && grid::shard_files(dir, results::FILE_STEM, results::FILE_EXT)
            .is_ok_and(|f| !f.is_empty())
}
