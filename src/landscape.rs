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
//! Grid points are numbered row-major over (α, β): point = i_α · n_β + i_β. Shard `I/N`
//! (1-based) computes the points with point mod N = I − 1. Rows are rewritten to Parquet
//! (atomically) after every finished point, so a killed run loses at most the points in flight,
//! and `--resume` computes only the missing points; the values do not depend on which run
//! computed them, so a resumed grid equals an uninterrupted one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use polars::prelude::{Column, DataFrame};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Split, Task};
use crate::model::{self, init, Pretrained, WeightMap};
use crate::{eval, hub, metrics, output, progress, select};

/// Grids larger than this need `--yes` (or a larger `--max-points`).
pub const DEFAULT_MAX_POINTS: usize = 2000;
/// Parquet metadata key of the run configuration (JSON of [`LandscapeConfig`]).
pub const CONFIG_KEY: &str = "landscape_config";
/// Parquet metadata key of the shard a file holds ("I/N"; "1/1" for a whole grid).
pub const SHARD_KEY: &str = "landscape_shard";
/// The file of a whole (or merged) grid inside the output directory.
pub const RESULT_FILE: &str = "landscape.parquet";

// ---------------------------------------------------------------------------------------------
// Grid, shard and direction parameters
// ---------------------------------------------------------------------------------------------

/// `start:stop:count`: `count` evenly spaced values from `start` to `stop`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Range {
    pub start: f64,
    pub stop: f64,
    pub count: usize,
}

impl Range {
    pub fn new(start: f64, stop: f64, count: usize) -> Result<Range> {
        let text = format!("{start}:{stop}:{count}");
        ensure!(
            start.is_finite() && stop.is_finite(),
            "range {text}: start and stop must be finite numbers"
        );
        ensure!(
            count > 0,
            "range {text} is empty: the count (third number) must be at least 1"
        );
        ensure!(
            start <= stop,
            "range {text} is reversed: start {start} is greater than stop {stop} (write {stop}:{start}:{count})"
        );
        ensure!(
            count == 1 || start < stop,
            "range {text} is empty: {count} points between {start} and itself (use {start}:{start}:1 for one point)"
        );
        ensure!(
            count > 1 || start == stop,
            "range {text}: one point cannot span {start} to {stop} (give a count of at least 2, or {start}:{start}:1)"
        );
        Ok(Range { start, stop, count })
    }

    /// Parses `start:stop:count`.
    pub fn parse(text: &str) -> Result<Range> {
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        ensure!(
            parts.len() == 3,
            "range '{text}': expected START:STOP:COUNT, e.g. -0.5:1.5:41"
        );
        let number = |s: &str, what: &str| -> Result<f64> {
            s.parse::<f64>()
                .with_context(|| format!("range '{text}': {what} '{s}' is not a number"))
        };
        let count: usize = parts[2].parse().with_context(|| {
            format!(
                "range '{text}': the count '{}' is not a whole number",
                parts[2]
            )
        })?;
        Range::new(number(parts[0], "start")?, number(parts[1], "stop")?, count)
    }

    /// The values, in increasing order; the last one is `stop` exactly.
    pub fn values(&self) -> Vec<f64> {
        if self.count == 1 {
            return vec![self.start];
        }
        let span = self.stop - self.start;
        let last = (self.count - 1) as f64;
        (0..self.count)
            .map(|i| {
                if i + 1 == self.count {
                    self.stop
                } else {
                    // Multiply before dividing: -0.5 + 2·30/40 is exactly 1.
                    self.start + span * i as f64 / last
                }
            })
            .collect()
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start, self.stop, self.count)
    }
}

impl From<Range> for String {
    fn from(r: Range) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for Range {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Range> {
        Range::parse(&s)
    }
}

/// `I/N`: the I-th (1-based) of N shards of a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

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

    /// Whether grid point `point` belongs to this shard.
    pub fn contains(&self, point: usize) -> bool {
        point % self.count == self.index - 1
    }

    /// The file this shard's rows go to inside the output directory.
    pub fn file_name(&self) -> String {
        if self.is_whole() {
            RESULT_FILE.to_string()
        } else {
            format!("landscape.shard-{}-of-{}.parquet", self.index, self.count)
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Directions {
    /// δ1 = θ1 − θ0, δ2 = d ⊙ δ1, around θ0 (paper §3.2).
    Paper,
    /// Li et al. 2018 filter-normalised Gaussian directions around θ1.
    FilterNormalized,
    /// δ1 = B − A around checkpoint A, δ2 = d ⊙ δ1.
    Checkpoints,
}

impl Directions {
    pub fn parse(text: &str) -> Result<Directions> {
        match text.trim().to_ascii_lowercase().as_str() {
            "paper" => Ok(Directions::Paper),
            "filter-normalized" | "filter-normalised" | "filter" => {
                Ok(Directions::FilterNormalized)
            }
            "checkpoints" => Ok(Directions::Checkpoints),
            _ => bail!(
                "--directions '{text}': valid values are paper, filter-normalized, checkpoints"
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Directions::Paper => "paper",
            Directions::FilterNormalized => "filter-normalized",
            Directions::Checkpoints => "checkpoints",
        }
    }

    /// The α grid when none is given: the paper's [−0.5, 1.5] spans θ0 and θ1 (or A and B);
    /// around θ1 Li et al. look at [−1, 1].
    pub fn default_alpha(self) -> Range {
        match self {
            Directions::FilterNormalized => Range {
                start: -1.0,
                stop: 1.0,
                count: 41,
            },
            _ => Range {
                start: -0.5,
                stop: 1.5,
                count: 41,
            },
        }
    }

    pub fn default_beta(self) -> Range {
        Range {
            start: -1.0,
            stop: 1.0,
            count: 21,
        }
    }
}

/// What filter normalisation does with 1-D tensors (biases, LayerNorm weights and biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filter1d {
    /// Direction 0: the tensor stays at θ1 (Li et al.'s `ignore='biasbn'`, their plots' setting).
    Zero,
    /// Direction = the tensor itself (Li et al.'s code without `biasbn`).
    Weight,
}

impl Filter1d {
    pub fn parse(text: &str) -> Result<Filter1d> {
        match text.trim().to_ascii_lowercase().as_str() {
            "zero" => Ok(Filter1d::Zero),
            "weight" => Ok(Filter1d::Weight),
            _ => bail!("--filter-1d '{text}': valid values are zero, weight"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Everything that determines the numbers of a landscape (and nothing that does not: jobs,
/// shard and output location are [`RunOptions`]). Stored as JSON in the Parquet metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandscapeConfig {
    pub task: String,
    pub model: String,
    /// Hub snapshot of the model (None for a local directory); filled in by [`run`].
    pub model_revision: Option<String>,
    pub directions: Directions,
    pub from_checkpoint: Option<PathBuf>,
    pub to_checkpoint: Option<PathBuf>,
    /// A trained head (pooler + classifier from this checkpoint) instead of the seeded one.
    #[serde(default)]
    pub head_from: Option<PathBuf>,
    pub dims: usize,
    pub alpha: Range,
    /// Only for `dims = 2`.
    pub beta: Option<Range>,
    /// Comma-separated glob patterns (`*`, `?`) of the tensors that move; None: all but the head.
    pub tensors: Option<String>,
    pub filter_1d: Filter1d,
    /// Seed of θ0, of the task head and of the random directions.
    pub seed: u64,
    pub data_dir: PathBuf,
    pub split: String,
    pub eval_examples: usize,
    pub max_len: usize,
    pub batch_size: usize,
}

impl LandscapeConfig {
    /// A configuration with the defaults of the CLI for `task` and `dims`.
    pub fn new(task: &str, data_dir: &Path, dims: usize) -> LandscapeConfig {
        let directions = Directions::Paper;
        LandscapeConfig {
            task: task.to_string(),
            model: hub::DEFAULT_MODEL.to_string(),
            model_revision: None,
            directions,
            from_checkpoint: None,
            to_checkpoint: None,
            head_from: None,
            dims,
            alpha: directions.default_alpha(),
            beta: (dims == 2).then(|| directions.default_beta()),
            tensors: None,
            filter_1d: Filter1d::Zero,
            seed: 0,
            data_dir: data_dir.to_path_buf(),
            split: "train".to_string(),
            eval_examples: 512,
            max_len: 128,
            batch_size: 32,
        }
    }

    pub fn task(&self) -> Result<Task> {
        Task::parse(&self.task).with_context(|| format!("--task {}", self.task))
    }

    pub fn split(&self) -> Result<Split> {
        Split::parse(&self.split).with_context(|| format!("--split {}", self.split))
    }

    /// Checks everything that can be checked without loading the model.
    pub fn validate(&self) -> Result<()> {
        self.task()?;
        self.split()?;
        ensure!(
            self.dims == 1 || self.dims == 2,
            "--dims {}: must be 1 or 2",
            self.dims
        );
        match (self.dims, &self.beta) {
            (2, None) => bail!("--dims 2 needs a β range (--beta START:STOP:COUNT)"),
            (1, Some(_)) => bail!("--beta is for --dims 2; a 1-D landscape varies α only"),
            _ => {}
        }
        ensure!(self.eval_examples > 0, "--eval-examples must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.max_len >= 8, "--max-len must be at least 8");
        match self.directions {
            Directions::Checkpoints => ensure!(
                self.from_checkpoint.is_some() && self.to_checkpoint.is_some(),
                "--directions checkpoints needs --from-checkpoint A and --to-checkpoint B (δ1 = B − A, around A)"
            ),
            _ => ensure!(
                self.from_checkpoint.is_none() && self.to_checkpoint.is_none(),
                "--from-checkpoint / --to-checkpoint only apply to --directions checkpoints"
            ),
        }
        ensure!(
            !(self.head_from.is_some() && self.directions == Directions::Checkpoints),
            "--head-from does not apply to --directions checkpoints (the head is checkpoint B's)"
        );
        if let Some(pattern) = &self.tensors {
            ensure!(
                pattern.split(',').any(|p| !p.trim().is_empty()),
                "--tensors is empty"
            );
        }
        Ok(())
    }

    pub fn alphas(&self) -> Vec<f64> {
        self.alpha.values()
    }

    /// β values; a 1-D grid has the single value 0.
    pub fn betas(&self) -> Vec<f64> {
        match &self.beta {
            Some(b) if self.dims == 2 => b.values(),
            _ => vec![0.0],
        }
    }

    pub fn num_points(&self) -> usize {
        self.alpha.count * self.betas().len()
    }

    /// Every grid point, numbered row-major over (α, β).
    pub fn points(&self) -> Vec<Point> {
        let (alphas, betas) = (self.alphas(), self.betas());
        let mut points = Vec::with_capacity(alphas.len() * betas.len());
        for (ia, &alpha) in alphas.iter().enumerate() {
            for (ib, &beta) in betas.iter().enumerate() {
                points.push(Point {
                    index: ia * betas.len() + ib,
                    alpha_index: ia,
                    beta_index: ib,
                    alpha,
                    beta,
                });
            }
        }
        points
    }

    /// The short model name for titles (`all-MiniLM-L6-v2`).
    pub fn model_short(&self) -> String {
        let m = self.model.trim_end_matches('/');
        m.rsplit('/').next().unwrap_or(m).to_string()
    }

    fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }
}

/// The keys whose values differ between two configurations, with both values.
pub fn config_differences(
    stored: &LandscapeConfig,
    now: &LandscapeConfig,
) -> Result<Vec<(String, String, String)>> {
    let (a, b) = (serde_json::to_value(stored)?, serde_json::to_value(now)?);
    let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let null = serde_json::Value::Null;
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
            (x != y).then(|| (k.clone(), x.to_string(), y.to_string()))
        })
        .collect())
}

/// One grid point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub index: usize,
    pub alpha_index: usize,
    pub beta_index: usize,
    pub alpha: f64,
    pub beta: f64,
}

/// One finished grid point.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub point: usize,
    pub alpha_index: usize,
    pub beta_index: usize,
    pub alpha: f64,
    pub beta: f64,
    pub loss: f64,
    /// The task's primary metric (`metrics::primary_metric`).
    pub metric: f64,
    /// Every metric of the task (e.g. MRPC accuracy and F1).
    pub metrics: BTreeMap<String, f64>,
    pub n_examples: usize,
    /// Wall-clock seconds of this point (weights, classifier, evaluation).
    pub seconds: f64,
}

impl Row {
    /// The row without its timing, for comparing runs.
    pub fn values(&self) -> Row {
        Row {
            seconds: 0.0,
            ..self.clone()
        }
    }
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
}

// ---------------------------------------------------------------------------------------------
// Summary: how much the loss moves around θ0 and θ1
// ---------------------------------------------------------------------------------------------

/// Half-width (in α and β) of the window [`neighbourhoods`] looks at.
pub const NEIGHBOURHOOD: f64 = 0.25;

/// The loss in the square window |α − α_m| ≤ w, |β − β_m| ≤ w around a marked point.
#[derive(Debug, Clone, Serialize)]
pub struct Neighbourhood {
    pub label: String,
    pub alpha: f64,
    pub beta: f64,
    pub half_width: f64,
    pub points: usize,
    /// Loss at the point itself (NaN when it is not on the grid).
    pub loss_at: f64,
    pub loss_min: f64,
    pub loss_max: f64,
    pub loss_range: f64,
    /// Mean |Δ loss| between neighbouring grid points inside the window: how rough it is.
    pub mean_abs_step: f64,
    pub metric_min: f64,
    pub metric_max: f64,
}

impl fmt::Display for Neighbourhood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ±{} ({} points): loss {:.5} at the point, {:.5}–{:.5} (range {:.5}), mean |step| {:.5}; metric {:.4}–{:.4}",
            self.label,
            self.half_width,
            self.points,
            self.loss_at,
            self.loss_min,
            self.loss_max,
            self.loss_range,
            self.mean_abs_step,
            self.metric_min,
            self.metric_max
        )
    }
}

/// Loss statistics around each marked point (θ0 and θ1, or A and B) of a grid.
pub fn neighbourhoods(
    config: &LandscapeConfig,
    rows: &[Row],
    half_width: f64,
) -> Vec<Neighbourhood> {
    let near = |a: f64, b: f64| a >= b - half_width - 1e-9 && a <= b + half_width + 1e-9;
    let by_index: BTreeMap<(usize, usize), &Row> = rows
        .iter()
        .map(|r| ((r.alpha_index, r.beta_index), r))
        .collect();
    crate::plot::landscape::markers(config)
        .into_iter()
        .map(|m| {
            let inside: Vec<&Row> = rows
                .iter()
                .filter(|r| near(r.alpha, m.alpha) && near(r.beta, m.beta))
                .collect();
            let fold = |f: &dyn Fn(&Row) -> f64| {
                inside
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
                        (lo.min(f(r)), hi.max(f(r)))
                    })
            };
            let (loss_min, loss_max) = fold(&|r| r.loss);
            let (metric_min, metric_max) = fold(&|r| r.metric);
            let mut steps = Vec::new();
            for r in &inside {
                for key in [
                    (r.alpha_index + 1, r.beta_index),
                    (r.alpha_index, r.beta_index + 1),
                ] {
                    if let Some(n) = by_index.get(&key) {
                        if near(n.alpha, m.alpha) && near(n.beta, m.beta) {
                            steps.push((n.loss - r.loss).abs());
                        }
                    }
                }
            }
            let loss_at = rows
                .iter()
                .find(|r| r.alpha == m.alpha && r.beta == m.beta)
                .map_or(f64::NAN, |r| r.loss);
            Neighbourhood {
                label: m.label,
                alpha: m.alpha,
                beta: m.beta,
                half_width,
                points: inside.len(),
                loss_at,
                loss_min,
                loss_max,
                loss_range: loss_max - loss_min,
                mean_abs_step: if steps.is_empty() {
                    f64::NAN
                } else {
                    steps.iter().sum::<f64>() / steps.len() as f64
                },
                metric_min,
                metric_max,
            }
        })
        .collect()
}

/// Writes `dir/summary.json`: the configuration, the loss range over the grid and around θ0
/// and θ1 ([`neighbourhoods`]).
pub fn write_summary(
    dir: &Path,
    config: &LandscapeConfig,
    rows: &[Row],
) -> Result<Vec<Neighbourhood>> {
    let hoods = neighbourhoods(config, rows, NEIGHBOURHOOD);
    let (lo, hi) = rows
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r.loss), hi.max(r.loss))
        });
    let json = serde_json::json!({
        "config": config,
        "points": rows.len(),
        "loss_min": lo,
        "loss_max": hi,
        "neighbourhoods": hoods,
    });
    output::write_json(&dir.join(output::SUMMARY_FILE), &json)?;
    Ok(hoods)
}

// ---------------------------------------------------------------------------------------------
// Directions: pure pieces
// ---------------------------------------------------------------------------------------------

/// δ2 = d ⊙ δ1 (paper §3.2): one Gaussian factor per scalar.
pub fn paper_delta2(delta1: &Tensor, d: &Tensor) -> Result<Tensor> {
    ensure!(
        delta1.dims() == d.dims(),
        "δ1 has shape {:?} but d has {:?}",
        delta1.dims(),
        d.dims()
    );
    Ok((delta1 * d)?)
}

/// Li et al. 2018 filter normalisation of a random direction `d` against weights `w`: every
/// filter (row along dimension 0, i.e. the weights of one output unit or one embedding vector)
/// is rescaled to the norm of the same row of `w`: d_i ← d_i · ‖w_i‖ / (‖d_i‖ + 1e-10).
/// 1-D tensors (biases, LayerNorm) get 0 or `w` itself, per `one_d`.
pub fn filter_normalize(d: &Tensor, w: &Tensor, one_d: Filter1d) -> Result<Tensor> {
    ensure!(
        d.dims() == w.dims(),
        "direction has shape {:?} but the weight has {:?}",
        d.dims(),
        w.dims()
    );
    if d.rank() <= 1 {
        return Ok(match one_d {
            Filter1d::Zero => d.zeros_like()?,
            Filter1d::Weight => w.clone(),
        });
    }
    let rows = d.dim(0)?;
    let d2 = d.reshape((rows, ()))?;
    let w2 = w.reshape((rows, ()))?;
    let d_norm = d2.sqr()?.sum_keepdim(1)?.sqrt()?;
    let w_norm = w2.sqr()?.sum_keepdim(1)?.sqrt()?;
    let scale = w_norm.broadcast_div(&(d_norm + 1e-10)?)?;
    Ok(d2.broadcast_mul(&scale)?.reshape(d.shape())?)
}

/// A standard-normal tensor from the stream of (`seed`, `purpose`, `name`): independent of
/// θ0's draws and of every other tensor's.
pub fn gaussian(
    purpose: &str,
    name: &str,
    shape: &[usize],
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    Ok(init::draw(
        &format!("landscape/{purpose}/{name}"),
        shape,
        init::Init::Normal {
            std: 1.0,
            zero_row: None,
        },
        seed,
        device,
    )?)
}

// ---------------------------------------------------------------------------------------------
// Directions over a model
// ---------------------------------------------------------------------------------------------

/// How one moving tensor depends on α.
enum Along {
    /// (1 − α)·start + α·end.
    Interpolate { start: Tensor, end: Tensor },
    /// origin + α·d1.
    Offset { origin: Tensor, d1: Tensor },
}

struct Moving {
    name: String,
    along: Along,
    /// The β direction (2-D only).
    d2: Option<Tensor>,
}

/// The plane (or line) of a landscape: builds the weights of any (α, β).
pub struct Surface {
    /// The value of every tensor that does not move (and, for moving ones, a placeholder).
    fixed: WeightMap,
    moving: Vec<Moving>,
}

impl Surface {
    /// Names of the tensors that move, in architecture order.
    pub fn moving_names(&self) -> Vec<&str> {
        self.moving.iter().map(|m| m.name.as_str()).collect()
    }

    /// The effective weights at (α, β). Tensors that do not move are shared, not copied.
    pub fn weights_at(&self, alpha: f64, beta: f64) -> Result<WeightMap> {
        let mut weights = self.fixed.clone();
        for m in &self.moving {
            let t = match &m.along {
                Along::Interpolate { start, end } => {
                    if alpha == 0.0 {
                        start.clone()
                    } else if alpha == 1.0 {
                        end.clone()
                    } else {
                        (start.affine(1.0 - alpha, 0.0)? + end.affine(alpha, 0.0)?)?
                    }
                }
                Along::Offset { origin, d1 } => {
                    if alpha == 0.0 {
                        origin.clone()
                    } else {
                        (origin + d1.affine(alpha, 0.0)?)?
                    }
                }
            };
            let t = match &m.d2 {
                Some(d2) if beta != 0.0 => (t + d2.affine(beta, 0.0)?)?,
                _ => t,
            };
            weights.insert(m.name.clone(), t);
        }
        Ok(weights)
    }
}

/// Whether `name` is part of the task head for `pretrained` (fixed by default).
fn is_head(pretrained: &Pretrained, name: &str) -> bool {
    pretrained.seeded_head.contains(name) || name.starts_with("classifier")
}

/// Builds the directions of `config` for `theta1` (and, for `checkpoints`, the start model).
/// `start` is A for `checkpoints`, unused otherwise.
pub fn prepare_surface(
    config: &LandscapeConfig,
    theta1: &Pretrained,
    start: Option<&Pretrained>,
) -> Result<Surface> {
    let device = theta1.device();
    let names: Vec<String> = model::weights::expected_shapes(&theta1.config, theta1.num_labels)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let candidates: Vec<String> = match config.directions {
        Directions::Checkpoints => {
            let a = start.context("checkpoints directions need the start checkpoint")?;
            // Tensors drawn from the seed in both are identical: nothing to move.
            names
                .iter()
                .filter(|n| !(a.seeded_head.contains(*n) && theta1.seeded_head.contains(*n)))
                .cloned()
                .collect()
        }
        _ => names
            .iter()
            .filter(|n| !is_head(theta1, n))
            .cloned()
            .collect(),
    };
    let selected = match config.tensors.as_deref() {
        Some(patterns) => select::select_tensors(&candidates, patterns, "--tensors")?,
        None => candidates,
    };
    let theta0 = match config.directions {
        Directions::Paper => Some(theta1.theta0(config.seed)?),
        _ => None,
    };
    let two_d = config.dims == 2;
    let mut moving = Vec::with_capacity(selected.len());
    for name in selected {
        let end = theta1.weights[&name].clone();
        let (along, d2) = match config.directions {
            Directions::Paper | Directions::Checkpoints => {
                let begin = match &theta0 {
                    Some(t0) => t0[&name].clone(),
                    None => start.unwrap().weights[&name].clone(),
                };
                ensure!(
                    begin.dims() == end.dims(),
                    "tensor {name}: shape {:?} at the start but {:?} at the end",
                    begin.dims(),
                    end.dims()
                );
                let d2 = if two_d {
                    let delta1 = (&end - &begin)?;
                    let d = gaussian("d", &name, end.dims(), config.seed, &device)?;
                    Some(paper_delta2(&delta1, &d)?)
                } else {
                    None
                };
                (Along::Interpolate { start: begin, end }, d2)
            }
            Directions::FilterNormalized => {
                let d1 = filter_normalize(
                    &gaussian("filter1", &name, end.dims(), config.seed, &device)?,
                    &end,
                    config.filter_1d,
                )?;
                let d2 = if two_d {
                    Some(filter_normalize(
                        &gaussian("filter2", &name, end.dims(), config.seed, &device)?,
                        &end,
                        config.filter_1d,
                    )?)
                } else {
                    None
                };
                (Along::Offset { origin: end, d1 }, d2)
            }
        };
        moving.push(Moving { name, along, d2 });
    }
    Ok(Surface {
        fixed: theta1.weights.clone(),
        moving,
    })
}

// ---------------------------------------------------------------------------------------------
// Loading and evaluating
// ---------------------------------------------------------------------------------------------

/// The model, the evaluation set and the directions of a configuration.
pub struct Prepared {
    pub config: LandscapeConfig,
    /// θ1 (or checkpoint B): its config, head and tokenizer serve every point.
    pub theta1: Pretrained,
    pub dataset: Dataset,
    pub surface: Surface,
    pub device: Device,
}

/// Replaces θ1's head (pooler + classifier) by the trained one in checkpoint `dir`. θ0 shares
/// every head tensor θ1 does not have pretrained (so the classifier stays fixed over the grid).
fn use_trained_head(
    theta1: &mut Pretrained,
    dir: &Path,
    config: &LandscapeConfig,
    device: &Device,
) -> Result<()> {
    let trained = model::load_pretrained(
        &config.model,
        Some(dir),
        theta1.num_labels,
        config.seed,
        device,
    )
    .with_context(|| format!("--head-from {}", dir.display()))?;
    for name in crate::select::head_names(&theta1.config, theta1.num_labels)? {
        ensure!(
            !trained.seeded_head.contains(&name),
            "--head-from {}: the checkpoint has no trained {name}; give the --export-hf directory \
             of a `sift-lab train` run on this task",
            dir.display()
        );
        theta1
            .weights
            .insert(name.clone(), trained.weights[&name].clone());
    }
    Ok(())
}

/// Resolves the model revision into `config` (so a changed snapshot is a changed config).
pub fn resolve_revision(config: &mut LandscapeConfig) -> Result<()> {
    config.model_revision = hub::resolve(&config.model)?.revision;
    Ok(())
}

/// Loads the model(s) and the evaluation set and builds the directions.
pub fn prepare(config: &LandscapeConfig) -> Result<Prepared> {
    config.validate()?;
    let task = config.task()?;
    let device = Device::Cpu;
    let num_labels = task.num_labels();
    let (theta1, start) = match config.directions {
        Directions::Checkpoints => {
            let a = model::load_pretrained(
                &config.model,
                config.from_checkpoint.as_deref(),
                num_labels,
                config.seed,
                &device,
            )
            .context("--from-checkpoint")?;
            let b = model::load_pretrained(
                &config.model,
                config.to_checkpoint.as_deref(),
                num_labels,
                config.seed,
                &device,
            )
            .context("--to-checkpoint")?;
            ensure!(
                a.config.hidden_size == b.config.hidden_size
                    && a.config.num_hidden_layers == b.config.num_hidden_layers,
                "--from-checkpoint and --to-checkpoint are different architectures"
            );
            (b, Some(a))
        }
        _ => {
            let mut theta1 =
                model::load_pretrained(&config.model, None, num_labels, config.seed, &device)?;
            if let Some(dir) = &config.head_from {
                use_trained_head(&mut theta1, dir, config, &device)?;
            }
            (theta1, None)
        }
    };
    let surface = prepare_surface(config, &theta1, start.as_ref())?;
    let dataset = Dataset::load(
        &config.data_dir,
        task,
        config.split()?,
        &theta1.tokenizer,
        config.max_len,
        Some(config.eval_examples),
    )?;
    ensure!(
        !dataset.is_empty(),
        "{} {}: no examples",
        task.name(),
        config.split
    );
    Ok(Prepared {
        config: config.clone(),
        theta1,
        dataset,
        surface,
        device,
    })
}

impl Prepared {
    /// Loss and metrics at one point, with the evaluation loop of `sift-lab eval`.
    pub fn evaluate(&self, point: &Point) -> Result<Row> {
        let start = Instant::now();
        let weights = self.surface.weights_at(point.alpha, point.beta)?;
        let classifier = self.theta1.build(&weights)?;
        let (scores, _) = eval::evaluate(
            &classifier,
            &self.dataset,
            self.config.batch_size,
            &self.device,
            false,
        )?;
        let primary = metrics::primary_metric(self.dataset.task);
        Ok(Row {
            point: point.index,
            alpha_index: point.alpha_index,
            beta_index: point.beta_index,
            alpha: point.alpha,
            beta: point.beta,
            loss: scores.mean_loss,
            metric: scores.metrics.get(primary).copied().unwrap_or(f64::NAN),
            metrics: scores.metrics,
            n_examples: scores.n_examples,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Parquet
// ---------------------------------------------------------------------------------------------

const FIXED_COLUMNS: [&str; 13] = [
    "point",
    "alpha_index",
    "beta_index",
    "task",
    "model",
    "directions",
    "alpha",
    "beta",
    "loss",
    "metric_name",
    "metric",
    "n_examples",
    "seconds",
];

/// The rows as a table, sorted by point; one extra column per task metric.
pub fn rows_frame(config: &LandscapeConfig, rows: &[Row]) -> Result<DataFrame> {
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| r.point);
    let n = rows.len();
    let metric_name = config
        .task()
        .map(metrics::primary_metric)
        .unwrap_or("metric");
    let u32s = |f: &dyn Fn(&Row) -> usize| rows.iter().map(|r| f(r) as u32).collect::<Vec<u32>>();
    let f64s = |f: &dyn Fn(&Row) -> f64| rows.iter().map(|r| f(r)).collect::<Vec<f64>>();
    let strs = |s: &str| vec![s.to_string(); n];
    let mut columns = vec![
        Column::new("point".into(), u32s(&|r| r.point)),
        Column::new("alpha_index".into(), u32s(&|r| r.alpha_index)),
        Column::new("beta_index".into(), u32s(&|r| r.beta_index)),
        Column::new("task".into(), strs(&config.task)),
        Column::new("model".into(), strs(&config.model)),
        Column::new("directions".into(), strs(config.directions.name())),
        Column::new("alpha".into(), f64s(&|r| r.alpha)),
        Column::new("beta".into(), f64s(&|r| r.beta)),
        Column::new("loss".into(), f64s(&|r| r.loss)),
        Column::new("metric_name".into(), strs(metric_name)),
        Column::new("metric".into(), f64s(&|r| r.metric)),
        Column::new("n_examples".into(), u32s(&|r| r.n_examples)),
        Column::new("seconds".into(), f64s(&|r| r.seconds)),
    ];
    let metric_names: BTreeSet<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
    for name in metric_names {
        if FIXED_COLUMNS.contains(&name.as_str()) {
            continue;
        }
        columns.push(Column::new(
            name.as_str().into(),
            f64s(&|r| r.metrics.get(name).copied().unwrap_or(f64::NAN)),
        ));
    }
    Ok(DataFrame::new_infer_height(columns)?)
}

/// Writes `rows` to `path` with the configuration and shard in the metadata.
pub fn write_rows(path: &Path, config: &LandscapeConfig, shard: Shard, rows: &[Row]) -> Result<()> {
    let mut df = rows_frame(config, rows)?;
    let metadata = vec![
        (CONFIG_KEY.to_string(), config.to_json()?),
        (SHARD_KEY.to_string(), shard.to_string()),
        (
            "landscape_grid_points".to_string(),
            config.num_points().to_string(),
        ),
    ];
    output::write_parquet(&mut df, path, &metadata)
}

/// A landscape file: its configuration, shard and rows.
#[derive(Debug, Clone)]
pub struct LandscapeFile {
    pub path: PathBuf,
    pub config: LandscapeConfig,
    pub shard: Shard,
    pub rows: Vec<Row>,
}

/// Reads a file written by [`write_rows`].
pub fn read_file(path: &Path) -> Result<LandscapeFile> {
    let metadata = output::read_metadata(path)?;
    let get = |key: &str| metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let config: LandscapeConfig = serde_json::from_str(get(CONFIG_KEY).with_context(|| {
        format!(
            "{}: not a landscape file (no {CONFIG_KEY} in its metadata)",
            path.display()
        )
    })?)
    .with_context(|| format!("{}: reading its {CONFIG_KEY}", path.display()))?;
    let shard = match get(SHARD_KEY) {
        Some(s) => Shard::parse(s)?,
        None => Shard::WHOLE,
    };
    let df = output::read_parquet(path)?;
    let u32s = |name: &str| -> Result<Vec<usize>> {
        Ok(df
            .column(name)?
            .u32()?
            .into_no_null_iter()
            .map(|x| x as usize)
            .collect())
    };
    let f64s = |name: &str| -> Result<Vec<f64>> {
        Ok(df.column(name)?.f64()?.into_no_null_iter().collect())
    };
    let (point, ia, ib, n) = (
        u32s("point")?,
        u32s("alpha_index")?,
        u32s("beta_index")?,
        u32s("n_examples")?,
    );
    let (alpha, beta, loss, metric, seconds) = (
        f64s("alpha")?,
        f64s("beta")?,
        f64s("loss")?,
        f64s("metric")?,
        f64s("seconds")?,
    );
    let extra: Vec<(String, Vec<f64>)> = df
        .get_column_names()
        .into_iter()
        .filter(|c| !FIXED_COLUMNS.contains(&c.as_str()))
        .map(|c| Ok((c.to_string(), f64s(c.as_str())?)))
        .collect::<Result<_>>()?;
    let rows = (0..df.height())
        .map(|i| Row {
            point: point[i],
            alpha_index: ia[i],
            beta_index: ib[i],
            alpha: alpha[i],
            beta: beta[i],
            loss: loss[i],
            metric: metric[i],
            metrics: extra.iter().map(|(k, v)| (k.clone(), v[i])).collect(),
            n_examples: n[i],
            seconds: seconds[i],
        })
        .collect();
    Ok(LandscapeFile {
        path: path.to_path_buf(),
        config,
        shard,
        rows,
    })
}

// ---------------------------------------------------------------------------------------------
// Running a grid
// ---------------------------------------------------------------------------------------------

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

/// Refuses to continue into a file whose stored configuration differs from `config`.
fn check_same_config(
    path: &Path,
    stored: &LandscapeConfig,
    config: &LandscapeConfig,
) -> Result<()> {
    let diffs = config_differences(stored, config)?;
    if !diffs.is_empty() {
        let list: Vec<String> = diffs
            .iter()
            .map(|(k, a, b)| format!("{k} (stored {a}, now {b})"))
            .collect();
        bail!(
            "{} was written with a different configuration; differing keys: {}. Use another --out, \
             or rerun with the stored settings",
            path.display(),
            list.join("; ")
        );
    }
    Ok(())
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

    let path = options.out.join(options.shard.file_name());
    let mut rows: Vec<Row> = Vec::new();
    if path.exists() {
        if !options.resume {
            bail!(
                "{} already exists: pass --resume to compute only the missing points, or choose \
                 another --out",
                path.display()
            );
        }
        let existing = read_file(&path)?;
        check_same_config(&path, &existing.config, &config)?;
        ensure!(
            existing.shard == options.shard,
            "{} holds shard {}, not {}",
            path.display(),
            existing.shard,
            options.shard
        );
        rows = existing.rows;
    }
    let done: BTreeSet<usize> = rows.iter().map(|r| r.point).collect();
    let shard_points: Vec<Point> = config
        .points()
        .into_iter()
        .filter(|p| options.shard.contains(p.index))
        .collect();
    let todo: Vec<Point> = shard_points
        .iter()
        .filter(|p| !done.contains(&p.index))
        .copied()
        .collect();
    let already_done = shard_points.len() - todo.len();

    let mut interrupted = false;
    let mut computed = 0;
    if !todo.is_empty() {
        let prepared = prepare(&config)?;
        std::fs::create_dir_all(&options.out)
            .with_context(|| format!("creating {}", options.out.display()))?;
        progress::interrupted(); // installs the Ctrl-C handler
        let bar = if options.progress {
            progress::bar(todo.len() as u64, "points")
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_message(format!(
            "landscape {} {}-D{}",
            config.task,
            config.dims,
            if options.shard.is_whole() {
                String::new()
            } else {
                format!(" shard {}", options.shard)
            }
        ));
        // One writer thread (outside any rayon pool) owns the rows and rewrites the file after
        // every finished point. Workers never hold a lock across rayon work: a rayon thread
        // waiting inside a lock can steal the next grid point and deadlock on that lock.
        let shard = options.shard;
        let (path_ref, config_ref, bar_ref) = (&path, &config, &bar);
        // Without a terminal (a batch job's log) the bar is hidden: print one line per point.
        let log_lines = options.progress && !std::io::stderr().is_terminal();
        let (total, started) = (todo.len(), Instant::now());
        let metric_name = metrics::primary_metric(config.task()?);
        let (result, written) = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<Row>();
            let writer = scope.spawn(move || -> Result<(Vec<Row>, usize)> {
                let mut rows = rows;
                let mut n = 0;
                for row in rx {
                    rows.push(row);
                    n += 1;
                    write_rows(path_ref, config_ref, shard, &rows)?;
                    bar_ref.inc(1);
                    if log_lines {
                        let r = rows.last().unwrap();
                        let per = started.elapsed().as_secs_f64() / n as f64;
                        eprintln!(
                            "[{n}/{total}] point {} α = {:.4} β = {:.4}: loss {:.5}, {metric_name} {:.4} \
                             ({:.1} s; ETA {:.0} min)",
                            r.point,
                            r.alpha,
                            r.beta,
                            r.loss,
                            r.metric,
                            r.seconds,
                            per * (total - n) as f64 / 60.0
                        );
                    }
                }
                Ok((rows, n))
            });
            let result = {
                let tx = tx;
                let work = |point: &Point| -> Result<()> {
                    if progress::interrupted() {
                        return Ok(());
                    }
                    let row = prepared.evaluate(point)?;
                    tx.send(row).map_err(|_| {
                        anyhow::anyhow!("the writer of {} stopped", path_ref.display())
                    })
                };
                if options.jobs == 1 {
                    todo.iter().try_for_each(work)
                } else {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(options.jobs)
                        .build()
                        .map_err(anyhow::Error::from)
                        .and_then(|pool| pool.install(|| todo.par_iter().try_for_each(work)))
                }
            }; // the sender drops here, so the writer finishes
            let written = writer.join().expect("the writer thread panicked");
            (result, written)
        });
        bar.finish_and_clear();
        let (all, n) = written?;
        result?;
        rows = all;
        computed = n;
        interrupted = progress::interrupted();
    }
    let complete = rows.len() == shard_points.len();
    if !path.exists() {
        // Nothing was computed (e.g. an empty shard): still leave a valid file.
        write_rows(&path, &config, options.shard, &rows)?;
    }
    let mut figures = Vec::new();
    let mut hoods = Vec::new();
    if complete && options.shard.is_whole() {
        hoods = write_summary(&options.out, &config, &rows)?;
        if options.plot {
            let dir = options.figures_dir.clone().unwrap_or(options.out.clone());
            figures = crate::plot::landscape::draw_all(&config, &rows, &dir)?;
        }
    }
    Ok(RunReport {
        file: path,
        shard: options.shard.to_string(),
        grid_points: config.num_points(),
        shard_points: shard_points.len(),
        already_done,
        computed,
        complete,
        interrupted,
        seconds: start.elapsed().as_secs_f64(),
        figures,
        neighbourhoods: hoods,
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
    let file = read_file(&path)?;
    let missing = file.config.num_points() - file.rows.len();
    ensure!(
        missing == 0,
        "{}: {missing} of {} points are missing; finish it with --resume first",
        path.display(),
        file.config.num_points()
    );
    let hoods = write_summary(dir, &file.config, &file.rows)?;
    let figures =
        crate::plot::landscape::draw_all(&file.config, &file.rows, figures_dir.unwrap_or(dir))?;
    Ok((figures, hoods))
}

// ---------------------------------------------------------------------------------------------
// Merge
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub file: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub points: usize,
    pub grid_points: usize,
    pub figures: Vec<PathBuf>,
    pub neighbourhoods: Vec<Neighbourhood>,
}

/// The shard files in a directory (landscape.shard-*.parquet), sorted.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("landscape.shard-") && n.ends_with(".parquet"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `sift-lab merge`: joins shard files (given, or found in directories) into
/// `out/landscape.parquet`. Every file must hold the same configuration; the merged grid must
/// be complete unless `allow_partial`.
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
    let mut files = Vec::new();
    for input in &inputs {
        if input.is_dir() {
            let found = shard_files(input)?;
            ensure!(
                !found.is_empty(),
                "{}: no landscape.shard-*.parquet files",
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
    let files: Vec<LandscapeFile> = files.iter().map(|p| read_file(p)).collect::<Result<_>>()?;
    let first = &files[0];
    for f in &files[1..] {
        let diffs = config_differences(&first.config, &f.config)?;
        ensure!(
            diffs.is_empty(),
            "{} and {} hold different landscapes; differing keys: {}",
            first.path.display(),
            f.path.display(),
            diffs
                .iter()
                .map(|d| d.0.clone())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let config = first.config.clone();
    let mut by_point: BTreeMap<usize, Row> = BTreeMap::new();
    for f in &files {
        for row in &f.rows {
            if let Some(prev) = by_point.get(&row.point) {
                ensure!(
                    prev.values() == row.values(),
                    "point {} (α = {}, β = {}) differs between the inputs ({} has loss {}, another \
                     file {})",
                    row.point,
                    row.alpha,
                    row.beta,
                    f.path.display(),
                    row.loss,
                    prev.loss
                );
            } else {
                by_point.insert(row.point, row.clone());
            }
        }
    }
    let total = config.num_points();
    let missing: Vec<usize> = (0..total).filter(|p| !by_point.contains_key(p)).collect();
    if !missing.is_empty() && !allow_partial {
        let shards: BTreeSet<String> = files.iter().map(|f| f.shard.to_string()).collect();
        let show: Vec<String> = missing.iter().take(10).map(|p| p.to_string()).collect();
        bail!(
            "the merged grid misses {} of {total} points (e.g. points {}{}); inputs hold shards {}. \
             Run the missing shards (or finish them with --resume), or pass --allow-partial",
            missing.len(),
            show.join(", "),
            if missing.len() > 10 { ", ..." } else { "" },
            shards.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let rows: Vec<Row> = by_point.into_values().collect();
    let path = out.join(RESULT_FILE);
    let inputs_canon: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    ensure!(
        !inputs_canon.contains(&path),
        "{} is both an input and the output",
        path.display()
    );
    write_rows(&path, &config, Shard::WHOLE, &rows)?;
    let neighbourhoods = if missing.is_empty() {
        write_summary(out, &config, &rows)?
    } else {
        Vec::new()
    };
    let figures = if plot && missing.is_empty() {
        crate::plot::landscape::draw_all(&config, &rows, figures_dir.unwrap_or(out))?
    } else {
        Vec::new()
    };
    Ok(MergeReport {
        file: path,
        inputs: inputs_canon,
        points: rows.len(),
        grid_points: total,
        figures,
        neighbourhoods,
    })
}

// ---------------------------------------------------------------------------------------------
// Benchmark
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub task: String,
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

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
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
        task: config.task.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_include_both_ends() {
        let r = Range::parse("-0.5:1.5:41").unwrap();
        let v = r.values();
        assert_eq!(v.len(), 41);
        assert_eq!(v[0], -0.5);
        assert_eq!(v[10], 0.0);
        assert_eq!(v[30], 1.0);
        assert_eq!(v[40], 1.5);
        let r = Range::parse("-0.5:1.5:21").unwrap();
        assert_eq!(r.values()[5], 0.0);
        assert_eq!(r.values()[15], 1.0);
        assert_eq!(Range::parse("0:0:1").unwrap().values(), vec![0.0]);
        assert_eq!(r.to_string(), "-0.5:1.5:21");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"-0.5:1.5:21\"");
        assert_eq!(serde_json::from_str::<Range>(&json).unwrap(), r);
    }

    #[test]
    fn bad_ranges_are_refused_with_a_reason() {
        let err = |s: &str| format!("{:#}", Range::parse(s).unwrap_err());
        assert!(err("1:0:5").contains("reversed"), "{}", err("1:0:5"));
        assert!(err("0:1:0").contains("empty"));
        assert!(err("1:1:5").contains("empty"));
        assert!(err("0:1").contains("START:STOP:COUNT"));
        assert!(err("a:1:3").contains("not a number"));
        assert!(err("0:1:1").contains("one point"));
        assert!(err("0:inf:3").contains("finite"));
    }

    #[test]
    fn shards_partition_the_grid() {
        assert!(format!("{:#}", Shard::parse("3/2").unwrap_err()).contains("between 1 and N = 2"));
        assert!(Shard::parse("0/2").is_err());
        assert!(Shard::parse("1/0").is_err());
        assert!(Shard::parse("2").is_err());
        let shards: Vec<Shard> = (1..=3)
            .map(|i| Shard::parse(&format!("{i}/3")).unwrap())
            .collect();
        for point in 0..20 {
            assert_eq!(shards.iter().filter(|s| s.contains(point)).count(), 1);
        }
        assert!(shards[0].contains(0) && shards[1].contains(1) && shards[0].contains(3));
    }

    #[test]
    fn grid_points_are_row_major() {
        let mut c = LandscapeConfig::new("rte", Path::new("."), 2);
        c.alpha = Range::parse("0:1:3").unwrap();
        c.beta = Some(Range::parse("-1:1:2").unwrap());
        let p = c.points();
        assert_eq!(p.len(), 6);
        assert_eq!((p[3].index, p[3].alpha, p[3].beta), (3, 0.5, 1.0));
        assert_eq!((p[3].alpha_index, p[3].beta_index), (1, 1));
        let mut c1 = LandscapeConfig::new("rte", Path::new("."), 1);
        c1.alpha = Range::parse("0:1:3").unwrap();
        assert!(c1.points().iter().all(|p| p.beta == 0.0));
    }

    #[test]
    fn neighbourhoods_measure_the_loss_around_theta0_and_theta1() {
        let mut c = LandscapeConfig::new("rte", Path::new("."), 1);
        c.alpha = Range::parse("-0.5:1.5:9").unwrap(); // step 0.25
        let losses = [0.7, 0.6, 0.5, 0.6, 0.7, 1.0, 2.0, 1.0, 3.0];
        let rows: Vec<Row> = c
            .points()
            .iter()
            .map(|p| Row {
                point: p.index,
                alpha_index: p.alpha_index,
                beta_index: p.beta_index,
                alpha: p.alpha,
                beta: p.beta,
                loss: losses[p.index],
                metric: 0.5,
                metrics: BTreeMap::new(),
                n_examples: 8,
                seconds: 0.0,
            })
            .collect();
        let hoods = neighbourhoods(&c, &rows, 0.25);
        assert_eq!(hoods.len(), 2);
        // θ0 at α = 0 (index 2): α = -0.25, 0, 0.25 → 0.6, 0.5, 0.6.
        let t0 = &hoods[0];
        assert_eq!((t0.points, t0.loss_at), (3, 0.5));
        assert!((t0.loss_range - 0.1).abs() < 1e-12);
        assert!((t0.mean_abs_step - 0.1).abs() < 1e-12);
        // θ1 at α = 1 (index 6): 1.0, 2.0, 1.0 → range 1, mean |step| 1.
        let t1 = &hoods[1];
        assert_eq!((t1.points, t1.loss_at, t1.loss_range), (3, 2.0, 1.0));
        assert!((t1.mean_abs_step - 1.0).abs() < 1e-12);
    }

    #[test]
    fn config_differences_name_the_keys() {
        let a = LandscapeConfig::new("rte", Path::new("."), 1);
        let mut b = a.clone();
        b.eval_examples = 64;
        b.alpha = Range::parse("0:1:5").unwrap();
        let keys: Vec<String> = config_differences(&a, &b)
            .unwrap()
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(keys, vec!["alpha".to_string(), "eval_examples".to_string()]);
    }
}
