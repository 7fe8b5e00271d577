//! `sift-lab sharpness`: the curvature behind the paper's Fig. 2, as numbers (SPEC,
//! "Sharpness"). At points θ(α) = (1 − α)·θ0 + α·θ1 of `landscape`'s line (same θ0, seeded head
//! and evaluation set), for each scope (the whole model, each layer or tensor, SIFT's top-k
//! mask, a random mask of the same size, a set of tensors), the top eigenvalues of the Hessian
//! of the mean evaluation loss (Lanczos or power iteration) and its trace (Hutchinson, with a
//! standard error). Hessian-vector products are central differences of sift-lab's exact
//! gradients ([`hvp`]).
//!
//! One cell per (α point, scope); `sharpness.parquet` is rewritten atomically after each cell,
//! and `--resume` computes only the missing ones ([`crate::grid`]).
//!
//! The pieces: [`config`] (what determines the numbers, the cells), [`eigen`] (Lanczos, power
//! iteration, Hutchinson: pure functions of a matrix-vector product), [`hvp`] (the product),
//! [`scopes`] (the parameter sets), [`run`] (the cells), [`rows`] (the Parquet schema),
//! [`figures`], [`bench`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Result};
use serde::Serialize;

pub mod bench;
pub mod config;
pub mod eigen;
pub mod figures;
pub mod hvp;
pub mod rows;
pub mod run;
pub mod scopes;

pub use self::bench::{benchmark, BenchReport};
pub use self::config::{EigenMethod, SharpnessConfig, SCOPE_KINDS};
pub use self::rows::{read_file, Row};
use crate::grid::{self, Cell};
use crate::{landscape, output};

/// The result file inside the output directory.
pub const RESULT_FILE: &str = "sharpness.parquet";

/// Options that do not change the numbers.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    pub progress: bool,
    pub plot: bool,
    pub figures_dir: Option<PathBuf>,
}

impl RunOptions {
    pub fn new(out: &Path) -> RunOptions {
        RunOptions {
            out: out.to_path_buf(),
            resume: false,
            progress: false,
            plot: true,
            figures_dir: None,
        }
    }
}

/// λ_max and the trace of one scope at θ0 (α = 0) and θ1 (α = 1).
#[derive(Debug, Clone, Serialize)]
pub struct EndPoints {
    pub scope: String,
    pub params: usize,
    pub lambda_max_theta0: f64,
    pub lambda_max_theta1: f64,
    /// λ_max(θ1) / λ_max(θ0).
    pub lambda_max_ratio: f64,
    pub trace_theta0: f64,
    pub trace_theta0_se: f64,
    pub trace_theta1: f64,
    pub trace_theta1_se: f64,
    pub trace_ratio: f64,
}

impl std::fmt::Display for EndPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A ratio of traces only means something when both are clearly positive.
        let trace_ratio = if self.trace_theta0 > 2.0 * self.trace_theta0_se
            && self.trace_theta1 > 2.0 * self.trace_theta1_se
        {
            format!("×{:.2}", self.trace_ratio)
        } else {
            "ratio not resolved: a trace within 2 s.e. of 0".to_string()
        };
        write!(
            f,
            "{} ({} params): λ_max θ0 {:.4}, θ1 {:.4} (×{:.2}); trace θ0 {:.3} ± {:.3}, θ1 {:.3} ± {:.3} ({trace_ratio})",
            self.scope,
            self.params,
            self.lambda_max_theta0,
            self.lambda_max_theta1,
            self.lambda_max_ratio,
            self.trace_theta0,
            self.trace_theta0_se,
            self.trace_theta1,
            self.trace_theta1_se,
        )
    }
}

/// The θ0 / θ1 comparison of every scope whose α = 0 and α = 1 cells exist.
pub fn end_points(rows: &[Row]) -> Vec<EndPoints> {
    let mut scopes: Vec<&str> = Vec::new();
    for r in rows {
        if !scopes.contains(&r.scope.as_str()) {
            scopes.push(&r.scope);
        }
    }
    scopes
        .into_iter()
        .filter_map(|s| {
            let at = |a: f64| rows.iter().find(|r| r.scope == s && r.alpha == a);
            let (t0, t1) = (at(0.0)?, at(1.0)?);
            Some(EndPoints {
                scope: s.to_string(),
                params: t1.params,
                lambda_max_theta0: t0.eigenvalues[0],
                lambda_max_theta1: t1.eigenvalues[0],
                lambda_max_ratio: t1.eigenvalues[0] / t0.eigenvalues[0],
                trace_theta0: t0.trace,
                trace_theta0_se: t0.trace_se,
                trace_theta1: t1.trace,
                trace_theta1_se: t1.trace_se,
                trace_ratio: t1.trace / t0.trace,
            })
        })
        .collect()
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub file: PathBuf,
    pub cells: usize,
    pub already_done: usize,
    pub computed: usize,
    pub complete: bool,
    pub interrupted: bool,
    pub seconds: f64,
    pub figures: Vec<PathBuf>,
    pub end_points: Vec<EndPoints>,
}

/// Writes `dir/summary.json`: the configuration, the scopes, the θ0 / θ1 comparison and the
/// run's time.
fn write_summary(
    dir: &Path,
    config: &SharpnessConfig,
    rows: &[Row],
    seconds: Option<f64>,
) -> Result<Vec<EndPoints>> {
    let ends = end_points(rows);
    let cell_seconds: f64 = rows.iter().map(|r| r.seconds).sum();
    let json = serde_json::json!({
        "config": config,
        "cells": rows.len(),
        "cell_seconds_total": cell_seconds,
        "run_seconds": seconds,
        "end_points": ends,
    });
    output::write_json(&dir.join(output::SUMMARY_FILE), &json)?;
    Ok(ends)
}

/// `sift-lab sharpness`: computes the cells not on disk yet, then the summary and figures.
pub fn run(config: &SharpnessConfig, options: &RunOptions) -> Result<RunReport> {
    let start = Instant::now();
    let mut config = config.clone();
    config.validate()?;
    let mut lc = config.landscape();
    landscape::resolve_revision(&mut lc)?;
    config.model_revision = lc.model_revision;

    let path = options.out.join(RESULT_FILE);
    let mut rows = Vec::new();
    if path.exists() {
        ensure!(
            options.resume,
            "{} already exists: pass --resume to compute only the missing cells, or choose another --out",
            path.display()
        );
        let (stored, stored_rows) = read_file(&path)?;
        grid::check_same_config(&path, &stored, &config)?;
        rows = stored_rows;
    }
    std::fs::create_dir_all(&options.out)?;
    let loaded = run::load(&config)?;
    let cells = config::cells(&config.alpha.values(), &loaded.scope_names());
    let finished: BTreeSet<String> = rows.iter().map(Cell::id).collect();
    let plan = grid::plan(&cells, grid::Shard::WHOLE, &finished);
    let already_done = plan.already_done();
    let (mut computed, mut interrupted) = (0, false);
    if !plan.todo.is_empty() {
        let done = run::compute(&config, &loaded, &plan.todo, rows, &path, options.progress)?;
        (rows, computed, interrupted) = (done.rows, done.computed, done.interrupted);
    }
    let complete = rows.len() == cells.len();
    let (mut figures, mut ends) = (Vec::new(), Vec::new());
    if complete {
        let seconds = (already_done == 0).then(|| start.elapsed().as_secs_f64());
        ends = write_summary(&options.out, &config, &rows, seconds)?;
        if options.plot {
            let dir = options.figures_dir.clone().unwrap_or(options.out.clone());
            figures = figures::draw_all(&config, &rows, &dir)?;
        }
    }
    Ok(RunReport {
        file: path,
        cells: cells.len(),
        already_done,
        computed,
        complete,
        interrupted,
        seconds: start.elapsed().as_secs_f64(),
        figures,
        end_points: ends,
    })
}

/// `--plot-only`: redraws the figures of `dir/sharpness.parquet`.
pub fn plot_only(dir: &Path, figures_dir: Option<&Path>) -> Result<(Vec<PathBuf>, Vec<EndPoints>)> {
    let path = dir.join(RESULT_FILE);
    ensure!(
        path.is_file(),
        "{} not found: run `sift-lab sharpness` first",
        path.display()
    );
    let (config, rows) = read_file(&path)?;
    let figures = figures::draw_all(&config, &rows, figures_dir.unwrap_or(dir))?;
    Ok((figures, end_points(&rows)))
}
