//! `sharpness --benchmark N`: seconds per Hessian-vector product beside seconds per gradient,
//! at θ1, over the configuration's first scope and evaluation set, and what a cell costs.

use std::time::Instant;

use anyhow::{ensure, Result};
use serde::Serialize;

use super::config::SharpnessConfig;
use super::eigen;
use super::hvp::Hvp;
use super::run;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub scope: String,
    pub params: usize,
    pub examples: usize,
    pub precision: String,
    pub repeats: usize,
    /// One exact gradient of the mean loss over the evaluation set.
    pub seconds_per_gradient: f64,
    /// One central-difference Hessian-vector product (two gradients and the vector work).
    pub seconds_per_hvp: f64,
    pub hvp_over_gradient: f64,
    /// (iterations + probes) products and one gradient: the estimated time of one cell.
    pub estimated_seconds_per_cell: f64,
}

pub fn benchmark(config: &SharpnessConfig, repeats: usize) -> Result<BenchReport> {
    ensure!(repeats >= 1, "--benchmark N: N must be at least 1");
    config.validate()?;
    let loaded = run::load(config)?;
    let (name, scope) = &loaded.scopes[0];
    let objective = loaded.objective_at(1.0)?;
    let mut hvp = Hvp::new(&objective, scope, config.fd_step)?;
    // Warm up (allocator, thread pool), then time.
    objective.gradient(scope, None)?;
    let started = Instant::now();
    for _ in 0..repeats {
        objective.gradient(scope, None)?;
    }
    let gradient = started.elapsed().as_secs_f64() / repeats as f64;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(config.seed);
    let v = eigen::rademacher(hvp.dim(), &mut rng);
    let started = Instant::now();
    for _ in 0..repeats {
        hvp.apply(&v)?;
    }
    let product = started.elapsed().as_secs_f64() / repeats as f64;
    Ok(BenchReport {
        scope: name.clone(),
        params: hvp.dim(),
        examples: objective.examples(),
        precision: config.precision.clone(),
        repeats,
        seconds_per_gradient: gradient,
        seconds_per_hvp: product,
        hvp_over_gradient: product / gradient,
        estimated_seconds_per_cell: gradient + (config.iterations + config.probes) as f64 * product,
    })
}
