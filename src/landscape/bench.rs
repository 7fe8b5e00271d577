//! `sift-lab landscape --benchmark N`: seconds per grid point against a plain forward pass of
//! θ1 over the same evaluation set.

use std::time::Instant;

use anyhow::{ensure, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::config::{LandscapeConfig, Point};
use super::prepare::prepare;
use crate::bench::median;
use crate::data::Task;
use crate::eval;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub task: Task,
    pub n_examples: usize,
    pub kernel_threads: usize,
    pub points: usize,
    /// Median seconds of one plain `eval::evaluate` of θ1 over the evaluation set.
    pub plain_eval_s: f64,
    /// Median seconds of building the weights of one point.
    pub build_weights_s: f64,
    /// Median seconds per grid point, one at a time (weights + classifier + evaluation).
    pub point_s: f64,
    /// point_s / plain_eval_s (target ≤ 1.1).
    pub ratio: f64,
    pub points_per_minute_sequential: f64,
    /// With `jobs` points evaluated at once (None when jobs = 1).
    pub jobs: usize,
    pub points_per_minute_parallel: Option<f64>,
}

/// Seconds per grid point against one plain forward pass over the same evaluation set.
/// Points are spread over the grid, away from the end points (whose weights cost nothing).
pub fn benchmark(config: &LandscapeConfig, points: usize, jobs: usize) -> Result<BenchReport> {
    let prepared = prepare(config)?;
    let points = points.max(1);
    let grid: Vec<Point> = config
        .points()
        .into_iter()
        .filter(|p| p.alpha != 0.0 && p.alpha != 1.0 && (config.dims == 1 || p.beta != 0.0))
        .collect();
    ensure!(!grid.is_empty(), "the grid has no interior point to time");
    let chosen: Vec<Point> = (0..points)
        .map(|k| grid[(k * grid.len() / points + grid.len() / (2 * points)) % grid.len()])
        .collect();
    let classifier = prepared.theta1.build(&prepared.theta1.weights)?;
    // Warm-up (page-in, allocator).
    eval::evaluate(
        &classifier,
        &prepared.dataset,
        config.batch_size,
        &prepared.device,
        false,
    )?;
    let mut plain = Vec::new();
    let mut point_s = Vec::new();
    let mut build_s = Vec::new();
    for p in &chosen {
        let t = Instant::now();
        eval::evaluate(
            &classifier,
            &prepared.dataset,
            config.batch_size,
            &prepared.device,
            false,
        )?;
        plain.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let w = prepared.surface.weights_at(p.alpha, p.beta)?;
        build_s.push(t.elapsed().as_secs_f64());
        drop(w);
        point_s.push(prepared.evaluate(p)?.seconds);
    }
    let plain_eval_s = median(plain);
    let point_med = median(point_s);
    let parallel = if jobs > 1 {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?;
        let t = Instant::now();
        pool.install(|| {
            chosen
                .par_iter()
                .map(|p| prepared.evaluate(p))
                .collect::<Result<Vec<_>>>()
        })?;
        Some(60.0 * chosen.len() as f64 / t.elapsed().as_secs_f64())
    } else {
        None
    };
    Ok(BenchReport {
        task: config.task,
        n_examples: prepared.dataset.len(),
        kernel_threads: candle_core::utils::get_num_threads(),
        points: chosen.len(),
        plain_eval_s,
        build_weights_s: median(build_s),
        point_s: point_med,
        ratio: point_med / plain_eval_s,
        points_per_minute_sequential: 60.0 / point_med,
        jobs,
        points_per_minute_parallel: parallel,
    })
}
