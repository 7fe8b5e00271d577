//! Computing the cells of a run: at each α point of the θ0 → θ1 line, for each scope, the top
//! Hessian eigenvalues and Hutchinson's trace; each finished cell rewrites the Parquet file.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::DType;

use super::config::{EigenMethod, SharpnessCell, SharpnessConfig};
use super::eigen;
use super::hvp::{Hvp, Objective, Scope};
use super::rows::{write_rows, Row};
use super::scopes;
use crate::data::{Batch, BatchOrder};
use crate::landscape::{self, Prepared};
use crate::progress;

/// The model, the evaluation set, the line and the scopes of a configuration.
pub struct Loaded {
    pub prepared: Prepared,
    pub batches: Vec<Batch>,
    pub scopes: Vec<(String, Scope)>,
    pub dtype: DType,
}

/// Loads θ1 and θ0 (the landscape's), the evaluation set, and resolves the scopes.
pub fn load(config: &SharpnessConfig) -> Result<Loaded> {
    let prepared = landscape::prepare(&config.landscape())?;
    let batches: Vec<Batch> = prepared
        .dataset
        .batches(config.batch_size, BatchOrder::Sequential, &prepared.device)
        .collect::<candle_core::Result<_>>()?;
    let dtype = if config.precision == "f32" {
        DType::F32
    } else {
        DType::F64
    };
    let moving: Vec<String> = prepared
        .surface
        .moving_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let shapes: BTreeMap<String, Vec<usize>> = prepared
        .theta1
        .weights
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let theta1_gradient = |scope: &Scope| -> Result<Vec<f64>> {
        let weights = prepared.surface.weights_at(1.0, 0.0)?;
        let objective = Objective::new(
            &prepared.theta1.config,
            prepared.theta1.num_labels,
            &weights,
            dtype,
            batches.clone(),
        )?;
        scopes::gradient_at(&objective, scope)
    };
    let scopes = scopes::resolve(
        config,
        &moving,
        &shapes,
        &prepared.theta1.config,
        theta1_gradient,
    )?;
    Ok(Loaded {
        prepared,
        batches,
        scopes,
        dtype,
    })
}

impl Loaded {
    /// The mean evaluation loss as a function of the weights at α on the line.
    pub fn objective_at(&self, alpha: f64) -> Result<Objective> {
        let weights = self.prepared.surface.weights_at(alpha, 0.0)?;
        Objective::new(
            &self.prepared.theta1.config,
            self.prepared.theta1.num_labels,
            &weights,
            self.dtype,
            self.batches.clone(),
        )
    }

    pub fn scope(&self, name: &str) -> Result<&Scope> {
        self.scopes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .with_context(|| format!("no scope {name}"))
    }

    pub fn scope_names(&self) -> Vec<String> {
        self.scopes.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// A seed for `purpose` in scope `scope`: the same at every α (common random numbers make the
/// curves along α comparable), different between scopes.
fn seed_of(seed: u64, purpose: &str, scope: &str) -> u64 {
    format!("{purpose}/{scope}")
        .bytes()
        .fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}

/// One cell: the loss and gradient norm, the top eigenvalues and the trace of the Hessian of
/// `objective` over `scope`.
pub fn measure(
    config: &SharpnessConfig,
    objective: &Objective,
    cell: &SharpnessCell,
    scope: &Scope,
) -> Result<Row> {
    let start = Instant::now();
    let at = objective.gradient(scope, None)?;
    let grad_norm = at.values.iter().map(|g| g * g).sum::<f64>().sqrt();
    let mut hvp = Hvp::new(objective, scope, config.fd_step)?;
    let n = hvp.dim();
    let eigen_seed = seed_of(config.seed, "eigen", &cell.scope);
    let top = match config.method {
        EigenMethod::Lanczos => {
            eigen::lanczos(n, config.iterations, config.top_k, eigen_seed, |v| {
                hvp.apply(v)
            })?
        }
        EigenMethod::Power => {
            eigen::power_iteration(n, config.iterations, eigen_seed, |v| hvp.apply(v))?
        }
    };
    let probe_seed = seed_of(config.seed, "probes", &cell.scope);
    let trace = eigen::hutchinson(n, config.probes, probe_seed, |v| hvp.apply(v))?;
    Ok(Row {
        alpha_index: cell.alpha_index,
        alpha: cell.alpha,
        scope: cell.scope.clone(),
        params: n,
        loss: at.loss,
        grad_norm,
        eigenvalues: top.values,
        residuals: top.residuals,
        trace: trace.trace,
        trace_se: trace.std_error,
        probes: config.probes,
        hvps: hvp.products,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// What [`compute`] leaves.
pub struct Computed {
    pub rows: Vec<Row>,
    pub computed: usize,
    pub interrupted: bool,
}

/// Computes `todo` (α-major, one objective per α), appending each finished row to `rows` and
/// rewriting `path` after each.
pub fn compute(
    config: &SharpnessConfig,
    loaded: &Loaded,
    todo: &[SharpnessCell],
    mut rows: Vec<Row>,
    path: &Path,
    show_progress: bool,
) -> Result<Computed> {
    progress::interrupted(); // installs the Ctrl-C handler
    let bar = if show_progress {
        progress::bar(todo.len() as u64, "cells")
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message(format!("sharpness {}", config.task));
    let log_lines = show_progress && !std::io::stderr().is_terminal();
    let (started, total) = (Instant::now(), todo.len());
    let order = loaded.scope_names();
    let mut computed = 0;
    let mut current: Option<(usize, Objective)> = None;
    for cell in todo {
        if progress::interrupted() {
            break;
        }
        if current.as_ref().map(|(i, _)| *i) != Some(cell.alpha_index) {
            current = Some((cell.alpha_index, loaded.objective_at(cell.alpha)?));
        }
        let objective = &current.as_ref().unwrap().1;
        let row = measure(config, objective, cell, loaded.scope(&cell.scope)?)?;
        if log_lines {
            let per = started.elapsed().as_secs_f64() / (computed + 1) as f64;
            eprintln!(
                "[{}/{total}] α = {:.3} {}: λ_max {:.5} (residual {:.2e}), trace {:.4} ± {:.4} ({:.1} s; ETA {:.0} min)",
                computed + 1,
                row.alpha,
                row.scope,
                row.eigenvalues[0],
                row.residuals[0],
                row.trace,
                row.trace_se,
                row.seconds,
                per * (total - computed - 1) as f64 / 60.0
            );
        }
        rows.push(row);
        computed += 1;
        write_rows(path, config, &rows, &order)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Computed {
        rows,
        computed,
        interrupted: progress::interrupted(),
    })
}
