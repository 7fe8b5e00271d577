//! `sift-lab landscape`: the loss landscape of paper §3.2 / Fig. 2, and `sift-lab merge`.
//!
//! Every grid point (α, β) gets effective weights
//! - `paper` (the default): θ(α, β) = θ0 + α·δ1 + β·δ2 with δ1 = θ1 − θ0 and δ2 = d ⊙ δ1,
//!   d ~ N(0, 1) drawn per scalar from the seed; α = 0 is θ0, α = 1 is θ1;
//! - `filter-normalized` (Li et al. 2018): θ(α, β) = θ1 + α·d1 + β·d2 with d1, d2 Gaussian and
//!   each filter (row: the weights producing one output unit, or one embedding vector) rescaled
//!   to the norm of the matching row of θ1; 1-D tensors (biases, LayerNorm) get direction 0
//!   (their `ignore='biasbn'`) or, with `filter_1d = weight`, the tensor itself;
//! - `checkpoints`: as `paper` with θ0 → checkpoint A and θ1 → checkpoint B,
//!
//! and is scored with [`crate::eval::evaluate`] (mean loss and the task metric) over one fixed
//! evaluation set. The interpolation is computed as (1 − α)·start + α·end, which equals
//! start + α·(end − start) and makes the end points bit-exact: α = 0 *is* θ0 and α = 1 *is* θ1.
//!
//! The task head (`classifier.*`, and any tensor drawn from the seed) never moves by default: it
//! is θ1's in every point (θ0 shares it). With `--tensors`, tensors outside the pattern keep
//! their value at α = 1 (θ1, or checkpoint B).
//!
//! Grid points are numbered row-major over (α, β): point = i_α · n_β + i_β; a point's
//! [`crate::grid::Cell`] id is that number. Shard `I/N` (1-based) computes the points with
//! point mod N = I − 1 ([`crate::grid::Shard`]). Rows are rewritten to Parquet (atomically)
//! after every finished point, so a killed run loses at most the points in flight, and
//! `--resume` computes only the missing points; the values do not depend on which run computed
//! them, so a resumed grid equals an uninterrupted one.
//!
//! The pieces, one job each: [`config`] (what determines the numbers), [`directions`] (the
//! plane and the weights at a point), [`prepare`] (loading the models and the data), [`rows`]
//! (the Parquet schema), [`compute`] (the evaluation loop and its writer), [`neighbourhood`]
//! (the summary around θ0 and θ1), [`figures`] (the plot structs) and [`bench`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use serde::Serialize;

pub mod bench;
pub mod compute;
pub mod config;
pub mod directions;
pub mod figures;
pub mod neighbourhood;
pub mod prepare;
pub mod rows;
pub mod trajectory;

pub use self::bench::{benchmark, BenchReport};
pub use self::config::{Directions, Filter1d, LandscapeConfig, MarkedPoint, Point, Range};
pub use self::directions::{filter_normalize, gaussian, paper_delta2, prepare_surface, Surface};
pub use self::figures::draw_all;
pub use self::neighbourhood::{neighbourhoods, write_summary, Neighbourhood, NEIGHBOURHOOD};
pub use self::prepare::{prepare, resolve_revision, Prepared};
pub use self::rows::{
    read_file, rows_frame, write_rows, LandscapeFile, Row, CONFIG_KEY, SHARD_KEY,
};
pub use crate::grid::Shard;
use crate::grid::{self, Cell, ShardFile};
use crate::run_lock::RunLock;

/// Grids larger than this need `--yes` (or a larger `--max-points`).
pub const DEFAULT_MAX_POINTS: usize = 2000;
/// The file of a whole (or merged) grid inside the output directory.
pub const RESULT_FILE: &str = "landscape.parquet";
/// Stem and extension of the landscape files: `landscape.parquet`,
/// `landscape.shard-I-of-N.parquet`.
const FILE_STEM: &str = "landscape";
const FILE_EXT: &str = "parquet";

/// The file `shard`'s rows go to inside an output directory.
pub fn file_name(shard: Shard) -> String {
    shard.file_name(FILE_STEM, FILE_EXT)
}

/// Options of one invocation that do not change the numbers.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    pub shard: Shard,
    pub resume: bool,
    /// Accept a grid of more than `max_points` points.
    pub yes: bool,
    pub max_points: usize,
    /// Grid points evaluated at the same time (each forward also uses every kernel thread).
    pub jobs: usize,
    pub progress: bool,
    /// Draw the figures when the grid is complete.
    pub plot: bool,
    /// Where figures go (default: `out`).
    pub figures_dir: Option<PathBuf>,
    /// Training runs to place on the complete 2-D grid ([`trajectory`]).
    pub trajectories: Vec<PathBuf>,
}

impl RunOptions {
    pub fn new(out: &Path) -> RunOptions {
        RunOptions {
            out: out.to_path_buf(),
            shard: Shard::WHOLE,
            resume: false,
            yes: false,
            max_points: DEFAULT_MAX_POINTS,
            jobs: 1,
            progress: false,
            plot: true,
            figures_dir: None,
            trajectories: Vec::new(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub file: PathBuf,
    pub shard: String,
    pub grid_points: usize,
    pub shard_points: usize,
    /// Points found on disk when resuming.
    pub already_done: usize,
    pub computed: usize,
    pub complete: bool,
    pub interrupted: bool,
    pub seconds: f64,
    pub figures: Vec<PathBuf>,
    /// Loss around θ0 and θ1 (complete grids only).
    pub neighbourhoods: Vec<Neighbourhood>,
    /// Where `--trajectory` runs lie on the plane.
    pub trajectory: Option<trajectory::TrajectorySummary>,
}

/// Checks a grid against the size limit.
pub fn check_grid_size(config: &LandscapeConfig, options: &RunOptions) -> Result<()> {
    let n = config.num_points();
    if n > options.max_points && !options.yes {
        let shape = match &config.beta {
            Some(b) if config.dims == 2 => format!("{} × {}", config.alpha.count, b.count),
            _ => format!("{}", config.alpha.count),
        };
        bail!(
            "the grid has {n} points ({shape}), more than the limit of {}: each point is one \
             evaluation over {} examples. Pass --yes to run it anyway, or raise --max-points",
            options.max_points,
            config.eval_examples
        );
    }
    Ok(())
}

/// The rows already in `path` when resuming (none for a new file), after checking that the file
/// holds this configuration and shard.
fn existing_rows(path: &Path, config: &LandscapeConfig, options: &RunOptions) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    ensure!(
        options.resume,
        "{} already exists: pass --resume to compute only the missing points, or choose \
         another --out",
        path.display()
    );
    let existing = read_file(path)?;
    grid::check_same_config(path, &existing.config, config)?;
    ensure!(
        existing.shard == options.shard,
        "{} holds shard {}, not {}",
        path.display(),
        existing.shard,
        options.shard
    );
    Ok(existing.rows)
}

/// `sift-lab landscape`: evaluates the (shard of the) grid that is not on disk yet, writing
/// rows as they finish, then draws the figures when the grid is complete.
pub fn run(config: &LandscapeConfig, options: &RunOptions) -> Result<RunReport> {
    let start = Instant::now();
    let mut config = config.clone();
    config.validate()?;
    check_grid_size(&config, options)?;
    ensure!(options.jobs >= 1, "--jobs must be at least 1");
    resolve_revision(&mut config)?;

    // Trajectories: checked before the grid, so a bad run directory costs nothing.
    let trajectory_file = options.out.join(trajectory::TABLE_FILE);
    if !options.trajectories.is_empty() {
        ensure!(
            config.dims == 2 && options.shard.is_whole(),
            "--trajectory draws runs on a whole 2-D landscape: use --dims 2 and no --shard"
        );
        // A run's snapshots are increments from the pretrained θ1; a checkpoints plane is built
        // around other weights, so its points are not θ1 + increment.
        ensure!(
            config.directions != Directions::Checkpoints,
            "--trajectory places runs trained from the pretrained model: use --directions paper, \
             filter-normalized or pca, not checkpoints"
        );
        crate::output::ensure_absent(
            std::slice::from_ref(&trajectory_file),
            "remove it to place the runs again, or choose another --out",
        )?;
        for run in &options.trajectories {
            trajectory::run_summary(run, &config)?;
            crate::trajectory::read_table(run)?;
        }
    }

    // What is left to do of this shard. One writer per shard file (shards of one grid write
    // separate files and never contend), held from before its first read.
    let path = options.out.join(file_name(options.shard));
    let _lock = RunLock::file(&path)?;
    let mut rows = existing_rows(&path, &config, options)?;
    let finished = rows.iter().map(Cell::id).collect();
    let plan = grid::plan(&config.points(), options.shard, &finished);

    // Compute it, writing every finished point.
    let (mut computed, mut interrupted) = (0, false);
    let mut prepared = None;
    if !plan.todo.is_empty() {
        let p = prepare(&config)?;
        let done = compute::compute(&p, &plan.todo, rows, &path, options)?;
        (rows, computed, interrupted) = (done.rows, done.computed, done.interrupted);
        prepared = Some(p);
    }
    let complete = rows.len() == plan.shard_cells.len();
    if !path.exists() {
        // Nothing was computed (e.g. an empty shard): still leave a valid file.
        write_rows(&path, &config, options.shard, &rows)?;
    }

    // A complete grid: the summary and the figures.
    let (mut figures, mut hoods) = (Vec::new(), Vec::new());
    if complete && options.shard.is_whole() {
        hoods = write_summary(&options.out, &config, &rows)?;
        if options.plot {
            let dir = options.figures_dir.clone().unwrap_or(options.out.clone());
            figures = draw_all(&config, &rows, &dir)?;
        }
    }
    let mut placed = None;
    if complete && !options.trajectories.is_empty() {
        let prepared = match prepared {
            Some(p) => p,
            None => prepare(&config)?,
        };
        let trajectory_rows = trajectory::place_runs(&prepared, &options.trajectories)?;
        let summary = trajectory::summarize(&prepared, &trajectory_rows);
        trajectory::write(&options.out, &summary, &trajectory_rows)?;
        if options.plot {
            let dir = options.figures_dir.clone().unwrap_or(options.out.clone());
            figures.extend(trajectory::draw(&config, &rows, &trajectory_rows, &dir)?);
        }
        placed = Some(summary);
    }
    Ok(RunReport {
        file: path,
        shard: options.shard.to_string(),
        grid_points: config.num_points(),
        shard_points: plan.shard_cells.len(),
        already_done: plan.already_done(),
        computed,
        complete,
        interrupted,
        seconds: start.elapsed().as_secs_f64(),
        figures,
        neighbourhoods: hoods,
        trajectory: placed,
    })
}

/// `--plot-only`: redraws the figures of `dir`'s landscape.parquet into `figures_dir` (or dir)
/// and rewrites `dir/summary.json`.
pub fn plot_only(
    dir: &Path,
    figures_dir: Option<&Path>,
) -> Result<(Vec<PathBuf>, Vec<Neighbourhood>)> {
    let path = dir.join(RESULT_FILE);
    ensure!(
        path.is_file(),
        "{} not found: run the landscape first (or `sift-lab merge` its shards)",
        path.display()
    );
    let _lock = RunLock::file(&path)?;
    let file = read_file(&path)?;
    let missing = file.config.num_points() - file.rows.len();
    ensure!(
        missing == 0,
        "{}: {missing} of {} points are missing; finish it with --resume first",
        path.display(),
        file.config.num_points()
    );
    let hoods = write_summary(dir, &file.config, &file.rows)?;
    let figures = draw_all(&file.config, &file.rows, figures_dir.unwrap_or(dir))?;
    Ok((figures, hoods))
}

/// What a merge did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub file: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub points: usize,
    pub grid_points: usize,
    pub figures: Vec<PathBuf>,
    pub neighbourhoods: Vec<Neighbourhood>,
}

/// `sift-lab merge`: joins shard files (given, or found in directories; none given: `out`) into
/// `out/landscape.parquet`. Every file must hold the same configuration and agree on the points
/// they share ([`grid::merge`]); the merged grid must be complete unless `allow_partial`.
pub fn merge(
    inputs: &[PathBuf],
    out: &Path,
    allow_partial: bool,
    plot: bool,
    figures_dir: Option<&Path>,
) -> Result<MergeReport> {
    let inputs: Vec<PathBuf> = if inputs.is_empty() {
        vec![out.to_path_buf()]
    } else {
        inputs.to_vec()
    };
    let paths = grid::input_files(&inputs, FILE_STEM, FILE_EXT)?;
    let path = out.join(RESULT_FILE);
    ensure!(
        !paths.contains(&path),
        "{} is both an input and the output",
        path.display()
    );
    // The merged file is the whole grid's file: the same lock, and never over an earlier one.
    let _lock = RunLock::file(&path)?;
    crate::output::ensure_absent(
        std::slice::from_ref(&path),
        "remove it to merge again, or merge into another --out",
    )?;
    let files: Vec<ShardFile<LandscapeConfig, Row>> = paths
        .iter()
        .map(|p| {
            let f = read_file(p)?;
            Ok(ShardFile {
                path: f.path,
                config: f.config,
                shard: f.shard,
                outcomes: f.rows,
            })
        })
        .collect::<Result<_>>()?;
    let config = files[0].config.clone();
    let merged = grid::merge(&files, &config.points())?;
    if !allow_partial {
        merged.ensure_complete("points")?;
    }
    let complete = merged.missing.is_empty();
    let rows = merged.outcomes;
    write_rows(&path, &config, Shard::WHOLE, &rows)?;
    let neighbourhoods = if complete {
        write_summary(out, &config, &rows)?
    } else {
        Vec::new()
    };
    let figures = if plot && complete {
        draw_all(&config, &rows, figures_dir.unwrap_or(out))?
    } else {
        Vec::new()
    };
    Ok(MergeReport {
        file: path,
        inputs: paths,
        points: rows.len(),
        grid_points: merged.total,
        figures,
        neighbourhoods,
    })
}
