//! What determines the numbers of a sharpness run ([`SharpnessConfig`], stored in every
//! `sharpness.parquet`), the kinds of scope it measures, and its cells (α point × scope).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use crate::data::{Split, Task};
use crate::grid::Cell;
use crate::hub;
use crate::landscape::{LandscapeConfig, Range};

/// How the top eigenvalues are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EigenMethod {
    /// Lanczos with full reorthogonalisation: the algebraically largest eigenvalues (top-k).
    Lanczos,
    /// Power iteration: the eigenvalue of largest magnitude (top-1 only).
    Power,
}

/// The kinds of parameter set a Hessian is taken over (`--scopes`, comma-separated).
pub const SCOPE_KINDS: &str = "all (every tensor the landscape moves), per-layer (embeddings, each encoder layer, pooler), per-tensor (each tensor), sift (SIFT's top-k mask of |∇L| at θ1), random (a seeded mask of the same size), tensors (--scope-tensors GLOBS)";

/// Everything that determines the numbers (jobs, output and progress are not here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharpnessConfig {
    pub task: Task,
    pub model: String,
    /// Hub snapshot of the model (None for a local directory); filled in by `run`.
    pub model_revision: Option<String>,
    /// The α points of the θ0 → θ1 line (α = 0 is θ0, α = 1 is θ1), as `landscape`'s grid.
    pub alpha: Range,
    /// Scope kinds, in order (see [`SCOPE_KINDS`]).
    pub scopes: Vec<String>,
    /// Globs of the `tensors` scope.
    pub scope_tensors: Option<String>,
    /// `--modules` of the sift and random masks.
    pub mask_modules: String,
    /// The masks' rate: k = max(1, ⌊rate·numel⌋) per tensor (SIFT's budget).
    pub mask_rate: f64,
    pub method: EigenMethod,
    /// Lanczos steps, or power iterations: one Hessian-vector product each.
    pub iterations: usize,
    /// Eigenvalues reported (Lanczos).
    pub top_k: usize,
    /// Hutchinson's Rademacher probes (at least 2, for a standard error).
    pub probes: usize,
    /// Central-difference step h along the unit direction.
    pub fd_step: f64,
    /// f64 (default) or f32.
    pub precision: String,
    /// Seed of θ0, of the head, of the random mask, of Lanczos' start and of the probes.
    pub seed: u64,
    pub data_dir: PathBuf,
    pub split: Split,
    pub eval_examples: usize,
    pub max_len: usize,
    pub batch_size: usize,
}

impl SharpnessConfig {
    /// The CLI's defaults for `task`.
    pub fn new(task: Task, data_dir: &Path) -> SharpnessConfig {
        SharpnessConfig {
            task,
            model: hub::DEFAULT_MODEL.to_string(),
            model_revision: None,
            alpha: Range {
                start: 0.0,
                stop: 1.0,
                count: 3,
            },
            scopes: vec!["all".into()],
            scope_tensors: None,
            mask_modules: "q,k,v,o".into(),
            mask_rate: 0.01,
            method: EigenMethod::Lanczos,
            iterations: 10,
            top_k: 1,
            probes: 10,
            fd_step: 1e-3,
            precision: "f64".into(),
            seed: 0,
            data_dir: data_dir.to_path_buf(),
            split: Split::Train,
            eval_examples: 128,
            max_len: 128,
            batch_size: 32,
        }
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.scopes.is_empty(),
            "--scopes is empty; use {SCOPE_KINDS}"
        );
        for s in &self.scopes {
            match s.as_str() {
                "all" | "per-layer" | "per-tensor" | "sift" | "random" => {}
                "tensors" => ensure!(
                    self.scope_tensors.is_some(),
                    "--scopes tensors needs --scope-tensors GLOBS (e.g. 'encoder.layer.*.attention.*')"
                ),
                other => bail!("--scopes: unknown scope {other:?}; use {SCOPE_KINDS}"),
            }
        }
        ensure!(
            self.mask_rate > 0.0 && self.mask_rate <= 1.0,
            "--mask-rate {} must be in (0, 1]",
            self.mask_rate
        );
        ensure!(self.iterations >= 1, "--iterations must be at least 1");
        ensure!(self.top_k >= 1, "--top-k must be at least 1");
        ensure!(
            self.probes >= 2,
            "--probes {}: Hutchinson's standard error needs at least 2 probes",
            self.probes
        );
        ensure!(
            self.top_k <= self.iterations,
            "--top-k {} needs at least as many --iterations (Lanczos steps), not {}",
            self.top_k,
            self.iterations
        );
        ensure!(
            self.method == EigenMethod::Lanczos || self.top_k == 1,
            "--method power finds one eigenvalue: use --method lanczos for --top-k {}",
            self.top_k
        );
        ensure!(
            self.fd_step.is_finite() && self.fd_step > 0.0,
            "--fd-step must be a positive number"
        );
        ensure!(
            self.precision == "f64" || self.precision == "f32",
            "--precision {}: use f64 or f32",
            self.precision
        );
        ensure!(self.eval_examples > 0, "--eval-examples must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.max_len >= 8, "--max-len must be at least 8");
        Ok(())
    }

    /// The landscape whose θ0, θ1, seeded head, line and evaluation set these are.
    pub fn landscape(&self) -> LandscapeConfig {
        let mut c = LandscapeConfig::new(self.task, &self.data_dir, 1);
        c.model = self.model.clone();
        c.model_revision = self.model_revision.clone();
        c.alpha = self.alpha;
        c.seed = self.seed;
        c.split = self.split;
        c.eval_examples = self.eval_examples;
        c.max_len = self.max_len;
        c.batch_size = self.batch_size;
        c
    }

    pub fn model_short(&self) -> String {
        let m = self.model.trim_end_matches('/');
        m.rsplit('/').next().unwrap_or(m).to_string()
    }
}

/// One cell of a run: an α point and a named scope (`all`, `layer:3`, `tensor:NAME`, `sift`,
/// `random`, `tensors`).
#[derive(Debug, Clone, PartialEq)]
pub struct SharpnessCell {
    pub alpha_index: usize,
    pub alpha: f64,
    pub scope: String,
}

impl Cell for SharpnessCell {
    fn id(&self) -> String {
        cell_id(self.alpha_index, &self.scope)
    }
}

pub fn cell_id(alpha_index: usize, scope: &str) -> String {
    format!("alpha_index={alpha_index},scope={scope}")
}

/// The cells of `alphas` × `scopes`, α-major.
pub fn cells(alphas: &[f64], scopes: &[String]) -> Vec<SharpnessCell> {
    alphas
        .iter()
        .enumerate()
        .flat_map(|(i, &alpha)| {
            scopes.iter().map(move |s| SharpnessCell {
                alpha_index: i,
                alpha,
                scope: s.clone(),
            })
        })
        .collect()
}

/// The group of a tensor for `per-layer`: `embeddings`, `0`, `1`, …, `pooler`.
pub fn layer_of(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("encoder.layer.") {
        return rest.split('.').next().unwrap_or(rest).to_string();
    }
    name.split('.').next().unwrap_or(name).to_string()
}
