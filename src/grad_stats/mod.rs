//! `sift-lab grad-stats`: gradient quasi-sparsity (paper §3.3, Fig. 3) and the first-batch mask
//! against each batch's own (paper §4.1, Fig. 4), for θ1 (pretrained) and θ0 (from scratch, same
//! seeded head, same batches). The definitions are SPEC.md's "Gradient quasi-sparsity" and
//! "First-batch mask vs per-batch mask".
//!
//! One pass over N training batches. Per batch, for θ1 and then θ0, [`GradientSource::step`]
//! computes the gradient of the chosen tensors on the differentiable training path, and an
//! [`Accumulator`] folds it into running numbers: the top-x% curve (first batch, and mean / min /
//! max over batches), moments, and the mask ratios against the first batch's top-x% mask M_1.
//! Only M_1 (the indices) outlives a batch; N gradients are never held. The histograms (Fig. 3
//! (a)–(c)) and the first-batch curves are on the FIRST batch's gradient, as in the paper; the
//! overlap curves (Fig. 4) span all N batches.
//!
//! A top-x% mask holds SIFT's budget, max(1, ⌊x·n⌋) components (SPEC "SIFT"), so θ1's per-tensor
//! M_1 is the set SIFT's per-tensor selection takes from the same first batch; the top-x% curve
//! uses ⌈x·n⌉ as SPEC defines it (the two differ by at most one component).
//!
//! Units: every chosen tensor on its own; [`ALL`], the concatenation of all chosen tensors (one
//! global top-k); and for the masks [`ALL_PER_TENSOR`], each tensor with its own top-x% mask,
//! pooled (SIFT's default per-tensor selection): r = √(Σ_W ‖g_W[M_W]‖²) / √(Σ_W ‖g_W‖²).
//!
//! Modes of the overlap: `frozen` keeps the weights fixed (pure batch-to-batch variation);
//! `during-training` records each step's gradient before the update of a real fine-tuning run:
//! all tensors trainable (or `trainable`), sift-lab's AdamW (src/optim.rs), constant learning rate, no warmup,
//! no weight decay; θ0 is trained the same way from θ0. (A proper trainer lives elsewhere; this
//! one exists only to see how the masks drift along a run.)

mod figures;
pub mod math;
mod tables;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use crate::data::{Batch, BatchOrder, Dataset, Split, Task};
pub use crate::gradients::{BatchGradients, GradientSource};
use crate::model::{self, Pretrained, WeightMap};
use crate::select::{compact_names, select_tensors};
use crate::{budget, peak_rss, progress};

use math::{MaskRatios, MaskSums, Moments, TopxCurve};

pub use figures::{draw_figures, figures_from_dir, FIG3_STEM, FIG4_STEM, TRAINING_SUFFIX};
pub use tables::{read_summary, write_tables, HIST_FILE, OVERLAP_FILE, STATS_FILE, TOPX_FILE};

/// The two models, in the order every table and figure uses.
pub const MODELS: [&str; 2] = ["pretrained", "scratch"];
/// The unit "all chosen tensors concatenated" (one global top-k).
pub const ALL: &str = "all";
/// The unit "all chosen tensors, each with its own top-k mask, pooled".
pub const ALL_PER_TENSOR: &str = "all/per-tensor";

/// Default `--tensors`: the attention query, key, value and output weights of every layer.
pub const DEFAULT_TENSORS: &str =
    "encoder.layer.*.attention.self.*.weight,encoder.layer.*.attention.output.dense.weight";
pub const DEFAULT_BATCHES: usize = 50;
pub const DEFAULT_BATCH_SIZE: usize = 16;
pub const DEFAULT_BINS: usize = 200;
pub const DEFAULT_TOP_PERCENT: f64 = 1.0;
pub const DEFAULT_LR: f64 = 2e-5;
/// Points per decade of the top-x% grid (0.01 % to 100 %: 81 points).
pub const GRID_PER_DECADE: usize = 20;

/// How the weights behave while the N gradients are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OverlapMode {
    /// Fixed weights: pure batch-to-batch variation.
    Frozen,
    /// Along a real fine-tuning run (AdamW), each gradient taken before its step's update.
    DuringTraining,
}

impl OverlapMode {
    pub fn name(self) -> &'static str {
        match self {
            OverlapMode::Frozen => "frozen",
            OverlapMode::DuringTraining => "during-training",
        }
    }
}

/// Everything a grad-stats run depends on; written into every output file's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradStatsConfig {
    /// Hub id or model directory.
    pub model: String,
    /// GLUE task (the train split is used).
    pub task: Task,
    pub data_dir: PathBuf,
    pub max_len: usize,
    /// Comma-separated glob patterns (`*` = any characters) over the tensor names;
    /// `None` = [`DEFAULT_TENSORS`].
    pub tensors: Option<String>,
    /// The tensor of the histograms (Fig. 3 (a)–(c)); `None` = the middle layer's attention
    /// value weight when chosen, else the first chosen tensor.
    pub figure_tensor: Option<String>,
    /// N: batches for the overlap curves (and the mean top-x% curve).
    pub batches: usize,
    pub batch_size: usize,
    pub bins: usize,
    /// The x of the masks (top x % of |g|), in percent.
    pub top_percent: f64,
    pub overlap_mode: OverlapMode,
    /// Learning rate of the during-training run.
    pub lr: f64,
    /// During-training only: glob patterns of the trainable tensors; `None` = all (full fine-tuning).
    pub trainable: Option<String>,
    /// Seed of θ0, of the task head (shared by θ0 and θ1) and of the batch shuffle.
    pub seed: u64,
    /// Output directory of the tables.
    pub out: PathBuf,
}

/// Where the figures go and whether to show progress; nothing here changes a number.
#[derive(Debug, Clone, Default)]
pub struct GradStatsOptions {
    /// Default: the tables' directory (`config.out`).
    pub figures_dir: Option<PathBuf>,
    pub progress: bool,
}

impl GradStatsConfig {
    /// A config with the defaults of the command line.
    pub fn new(model: &str, task: Task, data_dir: &Path, out: &Path) -> GradStatsConfig {
        GradStatsConfig {
            model: model.to_string(),
            task,
            data_dir: data_dir.to_path_buf(),
            max_len: 128,
            tensors: None,
            figure_tensor: None,
            batches: DEFAULT_BATCHES,
            batch_size: DEFAULT_BATCH_SIZE,
            bins: DEFAULT_BINS,
            top_percent: DEFAULT_TOP_PERCENT,
            overlap_mode: OverlapMode::Frozen,
            lr: DEFAULT_LR,
            trainable: None,
            seed: 0,
            out: out.to_path_buf(),
        }
    }

    /// Rejects settings that cannot give a meaningful answer, before any model is loaded.
    pub fn validate(&self) -> Result<()> {
        if self.batches < 2 {
            bail!(
                "--batches {}: the mask overlap compares the first batch with later ones, so at least 2 batches are needed",
                self.batches
            );
        }
        if self.bins < 2 {
            bail!("--bins {}: a histogram needs at least 2 bins", self.bins);
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if !(self.top_percent > 0.0 && self.top_percent <= 100.0) {
            bail!("--top-percent {}: must be in (0, 100]", self.top_percent);
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr {}: must be a positive number", self.lr);
        }
        Ok(())
    }
}

/// One row of the headline numbers (also printed by the CLI).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Headline {
    pub model: String,
    pub tensor: String,
    /// Top-x% norm ratio ‖g_top‖/‖g‖ on the first batch (x = top_percent); `None` for
    /// "all/per-tensor", which has no curve of its own.
    pub top_norm_ratio_batch1: Option<f64>,
    /// The same, as a share of ‖g‖².
    pub top_sq_share_batch1: Option<f64>,
    /// Top-x% norm ratio averaged over all N batches.
    pub top_norm_ratio_mean: Option<f64>,
    /// Means over batches 2..N (batch 1 is trivially r_first = r_own).
    pub mean_r_first: Option<f64>,
    pub mean_r_own: Option<f64>,
    pub mean_overlap: Option<f64>,
}

/// JSON has no NaN: undefined numbers become `None`.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// What a run did, besides its tables: written as `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradStatsSummary {
    pub config: GradStatsConfig,
    pub model_revision: Option<String>,
    pub tensors: Vec<String>,
    pub figure_tensor: String,
    /// Entries over all chosen tensors.
    pub numel: usize,
    pub train_examples: usize,
    pub batches_done: usize,
    pub interrupted: bool,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    pub headline: Vec<Headline>,
}

impl GradStatsSummary {
    /// The headline numbers as a small text table (what the CLI prints).
    pub fn render(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "grad-stats {} on {} train: {} batches of {} ({}), {} tensors / {} entries, top {} %\n",
            c.model,
            c.task,
            self.batches_done,
            c.batch_size,
            c.overlap_mode.name(),
            self.tensors.len(),
            self.numel,
            c.top_percent
        );
        out.push_str(&format!(
            "{:<11} {:<46} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "model", "tensor", "top@b1", "sq@b1", "top mean", "r_first", "r_own", "overlap"
        ));
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        for h in &self.headline {
            out.push_str(&format!(
                "{:<11} {:<46} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                h.model,
                h.tensor,
                f(h.top_norm_ratio_batch1),
                f(h.top_sq_share_batch1),
                f(h.top_norm_ratio_mean),
                f(h.mean_r_first),
                f(h.mean_r_own),
                f(h.mean_overlap)
            ));
        }
        out.push_str(&format!(
            "(top@b1: ‖g_top‖/‖g‖ on batch 1; sq: its square; r_*, overlap: means over batches 2..N)\n{:.1} s, peak RSS {} MiB{}",
            self.seconds,
            self.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0}")),
            if self.interrupted { ", INTERRUPTED (partial results)" } else { "" }
        ));
        out
    }
}

/// What a run returns: its tables (tidy, long format; see `tables.rs` for the columns) and
/// its summary.
pub struct GradStatsReport {
    pub hist: DataFrame,
    pub topx: DataFrame,
    pub overlap: DataFrame,
    pub stats: DataFrame,
    pub summary: GradStatsSummary,
}

/// The default tensor of the histograms: the middle layer's attention value weight.
pub fn default_figure_tensor(num_layers: usize) -> String {
    format!(
        "encoder.layer.{}.attention.self.value.weight",
        num_layers / 2
    )
}

/// The training batches grad-stats visits: full batches of a seeded shuffle, epoch after epoch
/// (each epoch its own permutation; the short last batch of an epoch is skipped so that every
/// gradient averages the same number of examples). Endless: take N.
pub fn batch_stream<'a>(
    dataset: &'a Dataset,
    batch_size: usize,
    seed: u64,
    device: &'a Device,
) -> impl Iterator<Item = Result<Batch>> + 'a {
    (0u64..)
        .flat_map(move |epoch| {
            dataset.batches(batch_size, BatchOrder::Shuffled { seed, epoch }, device)
        })
        .filter(move |b| b.as_ref().map_or(true, |b| b.len() == batch_size))
        .map(|b| b.map_err(anyhow::Error::from))
}

/// The first-batch numbers of one unit.
struct FirstBatch {
    curve: TopxCurve,
    moments: Moments,
    /// M_1: ascending indices of the top-x% of |g| on the first batch.
    mask: Vec<u32>,
}

/// One row of the overlap table.
#[derive(Debug, Clone)]
pub(crate) struct OverlapRow {
    pub tensor: String,
    /// 1-based.
    pub batch: u32,
    pub loss: f64,
    pub ratios: MaskRatios,
}

/// Running numbers of one model over the batches. Units are the chosen tensors, then [`ALL`].
struct Accumulator {
    units: Vec<String>,
    grid: Vec<f64>,
    top_percent: f64,
    first: Vec<FirstBatch>,
    /// Pooled over all batches.
    moments: Vec<Moments>,
    norm_sum: Vec<f64>,
    ratio_sum: Vec<Vec<f64>>,
    ratio_min: Vec<Vec<f64>>,
    ratio_max: Vec<Vec<f64>>,
    sq_share_sum: Vec<Vec<f64>>,
    batches: usize,
    overlap: Vec<OverlapRow>,
}

impl Accumulator {
    fn new(chosen: &[String], grid: &[f64], top_percent: f64) -> Accumulator {
        let mut units = chosen.to_vec();
        units.push(ALL.to_string());
        let per_unit = |v: f64| vec![vec![v; grid.len()]; units.len()];
        Accumulator {
            grid: grid.to_vec(),
            top_percent,
            first: Vec::new(),
            moments: vec![Moments::default(); units.len()],
            norm_sum: vec![0.0; units.len()],
            ratio_sum: per_unit(0.0),
            ratio_min: per_unit(f64::INFINITY),
            ratio_max: per_unit(f64::NEG_INFINITY),
            sq_share_sum: per_unit(0.0),
            batches: 0,
            overlap: Vec::new(),
            units,
        }
    }

    /// Folds one batch's gradients (chosen-tensor order) into the running numbers.
    fn add(&mut self, gradients: &BatchGradients) {
        let all = concat(&gradients.grads);
        let vectors: Vec<&[f32]> = gradients
            .grads
            .iter()
            .map(Vec::as_slice)
            .chain([all.as_slice()])
            .collect();
        let is_first = self.first.is_empty();
        let batch = self.batches as u32 + 1;
        let mut per_tensor = MaskSums::default();
        for (u, g) in vectors.iter().enumerate() {
            let curve = math::topx_curve(g, &self.grid);
            let own = budget::top_k_indices(g, budget::budget(self.top_percent / 100.0, g.len()));
            let moments = Moments::of(g);
            if is_first {
                self.first.push(FirstBatch {
                    curve: curve.clone(),
                    moments,
                    mask: own.clone(),
                });
            }
            let sums = MaskSums::of(g, &self.first[u].mask, &own);
            if u < gradients.grads.len() {
                per_tensor.add(&sums);
            }
            self.overlap.push(OverlapRow {
                tensor: self.units[u].clone(),
                batch,
                loss: gradients.loss,
                ratios: sums.ratios(),
            });
            self.moments[u].merge(&moments);
            self.norm_sum[u] += moments.l2_norm();
            for (j, (&r, &s)) in curve.norm_ratio.iter().zip(&curve.sq_share).enumerate() {
                self.ratio_sum[u][j] += r;
                self.ratio_min[u][j] = self.ratio_min[u][j].min(r);
                self.ratio_max[u][j] = self.ratio_max[u][j].max(r);
                self.sq_share_sum[u][j] += s;
            }
        }
        self.overlap.push(OverlapRow {
            tensor: ALL_PER_TENSOR.to_string(),
            batch,
            loss: gradients.loss,
            ratios: per_tensor.ratios(),
        });
        self.batches += 1;
    }

    /// Means over batches 2..N of the overlap rows of `tensor`.
    fn mean_ratios(&self, tensor: &str) -> MaskRatios {
        let rows: Vec<&MaskRatios> = self
            .overlap
            .iter()
            .filter(|r| r.tensor == tensor && r.batch > 1)
            .map(|r| &r.ratios)
            .collect();
        // Undefined ratios (an all-zero gradient) are left out.
        let mean = |f: fn(&MaskRatios) -> f64| {
            let values: Vec<f64> = rows
                .iter()
                .map(|r| f(r))
                .filter(|v| v.is_finite())
                .collect();
            values.iter().sum::<f64>() / values.len() as f64
        };
        MaskRatios {
            r_first: mean(|r| r.r_first),
            r_own: mean(|r| r.r_own),
            overlap: mean(|r| r.overlap),
        }
    }

    fn headline(&self, model: &str, tensor: &str) -> Headline {
        let mean = self.mean_ratios(tensor);
        // ALL_PER_TENSOR has no curve of its own: its curve numbers are None.
        let (r1, s1, rm) = match self.units.iter().position(|u| u == tensor) {
            Some(u) => {
                let j = self.grid_index(self.top_percent);
                let curve = &self.first[u].curve;
                match j {
                    Some(j) => (
                        curve.norm_ratio[j],
                        curve.sq_share[j],
                        self.ratio_sum[u][j] / self.batches as f64,
                    ),
                    None => (f64::NAN, f64::NAN, f64::NAN),
                }
            }
            None => (f64::NAN, f64::NAN, f64::NAN),
        };
        Headline {
            model: model.to_string(),
            tensor: tensor.to_string(),
            top_norm_ratio_batch1: finite(r1),
            top_sq_share_batch1: finite(s1),
            top_norm_ratio_mean: finite(rm),
            mean_r_first: finite(mean.r_first),
            mean_r_own: finite(mean.r_own),
            mean_overlap: finite(mean.overlap),
        }
    }

    fn grid_index(&self, x: f64) -> Option<usize> {
        self.grid
            .iter()
            .position(|&g| (g - x).abs() <= 1e-9 * x.max(1e-12))
    }
}

fn concat(grads: &[Vec<f32>]) -> Vec<f32> {
    let mut all = Vec::with_capacity(grads.iter().map(Vec::len).sum());
    for g in grads {
        all.extend_from_slice(g);
    }
    all
}

/// The top-x grid: [`GRID_PER_DECADE`] points per decade, plus `top_percent` when off-grid.
fn grid_with(top_percent: f64) -> Vec<f64> {
    let mut grid = math::log_grid_percent(GRID_PER_DECADE);
    if !grid
        .iter()
        .any(|&g| (g - top_percent).abs() <= 1e-9 * top_percent)
    {
        grid.push(top_percent);
        grid.sort_by(|a, b| a.total_cmp(b));
    }
    grid
}

/// The model, its tensor choice and the data, resolved from a config (shared by [`run`] and
/// the tests, so both see the same tensors and batches).
pub struct Setup {
    pub pretrained: Pretrained,
    pub task: Task,
    pub dataset: Dataset,
    /// Chosen tensor names, in the model's tensor order.
    pub tensors: Vec<String>,
    pub figure_tensor: String,
    /// During-training only: the tensors AdamW updates.
    pub trainable: Vec<String>,
}

impl Setup {
    pub fn load(config: &GradStatsConfig) -> Result<Setup> {
        config.validate()?;
        let task = config.task;
        let device = Device::Cpu;
        let pretrained =
            model::load_pretrained(&config.model, None, task.num_labels(), config.seed, &device)?;
        pretrained.check_max_len(config.max_len)?;
        let available: Vec<String> =
            model::weights::expected_shapes(&pretrained.config, pretrained.num_labels)?
                .into_iter()
                .map(|(name, _)| name)
                .collect();
        let tensors = select_tensors(
            &available,
            config.tensors.as_deref().unwrap_or(DEFAULT_TENSORS),
            "--tensors",
        )?;
        let total: usize = tensors
            .iter()
            .map(|n| pretrained.weights[n].elem_count())
            .sum();
        ensure!(
            total <= u32::MAX as usize,
            "--tensors selects {total} entries; at most {} are supported",
            u32::MAX
        );
        let figure_tensor = match &config.figure_tensor {
            Some(name) => {
                if !tensors.contains(name) {
                    bail!(
                        "--figure-tensor {name} is not among the chosen tensors (--tensors); chosen:\n{}",
                        compact_names(&tensors)
                    );
                }
                name.clone()
            }
            None => {
                let default = default_figure_tensor(pretrained.config.num_hidden_layers);
                if tensors.contains(&default) {
                    default
                } else {
                    tensors[0].clone()
                }
            }
        };
        let trainable = match config.overlap_mode {
            OverlapMode::Frozen => Vec::new(),
            OverlapMode::DuringTraining => select_tensors(
                &available,
                config.trainable.as_deref().unwrap_or("*"),
                "--trainable",
            )?,
        };
        let dataset = Dataset::load(
            &config.data_dir,
            task,
            Split::Train,
            &pretrained.tokenizer,
            config.max_len,
            None,
        )?;
        if dataset.len() < config.batch_size {
            bail!(
                "--batch-size {} is larger than the {} train split ({} examples)",
                config.batch_size,
                task.name(),
                dataset.len()
            );
        }
        Ok(Setup {
            pretrained,
            task,
            dataset,
            tensors,
            figure_tensor,
            trainable,
        })
    }

    /// θ1 and θ0 (seeded from `seed`, sharing θ1's seeded head), in [`MODELS`] order.
    pub fn weights(&self, seed: u64) -> Result<[WeightMap; 2]> {
        Ok([
            self.pretrained.weights.clone(),
            self.pretrained.theta0(seed)?,
        ])
    }

    /// A gradient source for `weights` as the config's mode asks.
    pub fn source(&self, config: &GradStatsConfig, weights: &WeightMap) -> Result<GradientSource> {
        match config.overlap_mode {
            OverlapMode::Frozen => GradientSource::frozen(&self.pretrained, weights, &self.tensors),
            OverlapMode::DuringTraining => GradientSource::training(
                &self.pretrained,
                weights,
                &self.tensors,
                &self.trainable,
                config.lr,
            ),
        }
    }
}

/// Runs the analysis: computes the tables ([`compute`]), writes them and `summary.json` into
/// `config.out`, and draws Fig. 3 and Fig. 4 into `figures_dir` (default: `config.out`).
/// Returns the report and the files written.
pub fn run(
    config: &GradStatsConfig,
    options: &GradStatsOptions,
) -> Result<(GradStatsReport, Vec<PathBuf>)> {
    config.validate()?;
    // One writer for OUT, and never over an earlier run's tables: checked before any work.
    let _lock = crate::run_lock::RunLock::dir(&config.out)?;
    let tables: Vec<PathBuf> = [
        HIST_FILE,
        TOPX_FILE,
        OVERLAP_FILE,
        STATS_FILE,
        crate::output::SUMMARY_FILE,
    ]
    .iter()
    .map(|f| config.out.join(f))
    .collect();
    crate::output::ensure_absent(
        &tables,
        "choose another --out (or redraw its figures with --plot-only)",
    )?;
    let mut report = compute(config, options.progress)?;
    let mut files = write_tables(&mut report, &config.out)?;
    let figures_dir = options.figures_dir.as_deref().unwrap_or(&config.out);
    files.extend(draw_figures(&config.out, figures_dir)?);
    Ok((report, files))
}

/// Computes the tables of a run; writes nothing.
/// Ctrl-C stops after the current batch and returns what is complete (at least one batch).
pub fn compute(config: &GradStatsConfig, progress: bool) -> Result<GradStatsReport> {
    let start = Instant::now();
    let setup = Setup::load(config)?;
    let device = Device::Cpu;
    let weights = setup.weights(config.seed)?;
    let mut sources = [
        setup.source(config, &weights[0])?,
        setup.source(config, &weights[1])?,
    ];
    drop(weights);
    let grid = grid_with(config.top_percent);
    let mut accumulators = [
        Accumulator::new(&setup.tensors, &grid, config.top_percent),
        Accumulator::new(&setup.tensors, &grid, config.top_percent),
    ];
    let bar = progress::bar(config.batches as u64, "batches");
    if !progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_message(format!(
        "grad-stats {} ({})",
        config.task,
        config.overlap_mode.name()
    ));
    let mut histograms = Vec::new();
    let mut interrupted = progress::interrupted(); // installs the Ctrl-C handler
    let batches = batch_stream(&setup.dataset, config.batch_size, config.seed, &device);
    for (t, batch) in batches.take(config.batches).enumerate() {
        if t > 0 && (interrupted || progress::interrupted()) {
            interrupted = true;
            break;
        }
        let batch = batch?;
        let mut first_gradients = Vec::new();
        for (m, (source, acc)) in sources.iter_mut().zip(&mut accumulators).enumerate() {
            let gradients = source
                .step(&batch)
                .with_context(|| format!("{} model, batch {}", MODELS[m], t + 1))?;
            acc.add(&gradients);
            if t == 0 {
                first_gradients.push(gradients.grads);
            }
        }
        if t == 0 {
            // Fig. 3 (a)–(c): the first batch's gradients of both models, then dropped.
            histograms = tables::first_batch_histograms(
                &setup.tensors,
                &first_gradients[0],
                &first_gradients[1],
                config.bins,
            );
        }
        bar.inc(1);
    }
    bar.finish();
    let batches_done = accumulators[0].batches;

    let mut headline = Vec::new();
    for (m, acc) in accumulators.iter().enumerate() {
        for tensor in [setup.figure_tensor.as_str(), ALL, ALL_PER_TENSOR] {
            headline.push(acc.headline(MODELS[m], tensor));
        }
    }
    let summary = GradStatsSummary {
        config: config.clone(),
        model_revision: setup.pretrained.files.revision.clone(),
        numel: setup
            .tensors
            .iter()
            .map(|n| setup.pretrained.weights[n].elem_count())
            .sum(),
        tensors: setup.tensors.clone(),
        figure_tensor: setup.figure_tensor.clone(),
        train_examples: setup.dataset.len(),
        batches_done,
        interrupted,
        seconds: start.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss::peak_rss_mib(),
        headline,
    };
    Ok(GradStatsReport {
        hist: tables::hist_frame(&histograms)?,
        topx: tables::topx_frame(&accumulators)?,
        overlap: tables::overlap_frame(&accumulators)?,
        stats: tables::stats_frame(&accumulators)?,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        let mut names = vec!["embeddings.word_embeddings.weight".to_string()];
        for l in 0..3 {
            for t in [
                "attention.self.query.weight",
                "attention.self.value.weight",
                "attention.output.dense.weight",
                "attention.output.LayerNorm.weight",
            ] {
                names.push(format!("encoder.layer.{l}.{t}"));
            }
        }
        names.push("classifier.weight".into());
        names
    }

    #[test]
    fn default_selection_is_the_attention_projection_weights_in_model_order() {
        let chosen = select_tensors(&names(), DEFAULT_TENSORS, "--tensors").unwrap();
        assert_eq!(chosen.len(), 9);
        assert_eq!(chosen[0], "encoder.layer.0.attention.self.query.weight");
        assert_eq!(chosen[2], "encoder.layer.0.attention.output.dense.weight");
        assert!(chosen.iter().all(|n| !n.contains("LayerNorm")));
    }

    #[test]
    fn a_pattern_matching_nothing_lists_the_names_compactly() {
        let err = select_tensors(
            &names(),
            "encoder.layer.*.attention.self.value.weight, decoder.*",
            "--tensors",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'decoder.*' matches no tensor"), "{err}");
        assert!(
            err.contains("encoder.layer.{L}.attention.self.value.weight, ")
                && err.contains("classifier.weight (L = 0..2)"),
            "{err}"
        );
        assert!(select_tensors(&names(), " , ", "--tensors").is_err());
    }

    #[test]
    fn bad_settings_are_refused_before_loading_anything() {
        let mut c = GradStatsConfig::new("m", Task::Mrpc, Path::new("."), Path::new("out"));
        assert!(c.validate().is_ok());
        c.batches = 1;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least 2 batches"));
        c.batches = 2;
        c.bins = 1;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least 2 bins"));
        c.bins = 2;
        c.top_percent = 0.0;
        assert!(c.validate().is_err());
        c.top_percent = 1.0;
        c.lr = 0.0;
        assert!(c.validate().unwrap_err().to_string().contains("--lr"));
    }

    /// The accumulator on constructed gradients: two tensors, three batches, the mask rows
    /// against hand-computed values (top 50 %: k = 2 of 4 entries per tensor, 4 of 8 overall).
    #[test]
    fn accumulator_records_first_batch_mask_ratios() {
        let names = vec!["a".to_string(), "b".to_string()];
        let grid = grid_with(50.0);
        let mut acc = Accumulator::new(&names, &grid, 50.0);
        let batch = |a: [f32; 4], b: [f32; 4]| BatchGradients {
            loss: 0.5,
            grads: vec![a.to_vec(), b.to_vec()],
        };
        acc.add(&batch([4.0, 3.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0]));
        acc.add(&batch([0.0, 3.0, 4.0, 0.0], [1.0, 0.0, 2.0, 0.0]));
        acc.add(&batch([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]));
        let row = |tensor: &str, batch: u32| {
            acc.overlap
                .iter()
                .find(|r| r.tensor == tensor && r.batch == batch)
                .unwrap()
                .ratios
        };
        // Batch 2, tensor a: M_1 = {0, 1}, M_2 = {1, 2}; ‖g‖² = 25.
        let r = row("a", 2);
        assert!((r.r_first - (9.0f64 / 25.0).sqrt()).abs() < 1e-12);
        assert_eq!(r.r_own, 1.0);
        assert_eq!(r.overlap, 0.5);
        // Global unit at batch 2: g = [0,3,4,0,1,0,2,0]; M_1 = top 4 of batch 1 = {0,1,6,7};
        // M_2 = {1,2,4,6}. ‖g‖² = 30, ‖g[M_1]‖² = 9 + 4 = 13, ‖g[M_2]‖² = 30.
        let r = row(ALL, 2);
        assert!((r.r_first - (13.0f64 / 30.0).sqrt()).abs() < 1e-12);
        assert_eq!(r.r_own, 1.0);
        assert_eq!(r.overlap, 0.5);
        // Per-tensor masks pooled at batch 2: a keeps 9 of 25, b (M_1 = {2, 3}) keeps 4 of 5.
        let r = row(ALL_PER_TENSOR, 2);
        assert!((r.r_first - (13.0f64 / 30.0).sqrt()).abs() < 1e-12);
        // Batch 3, tensor b is all zero: ratios undefined, and the means skip nothing else.
        assert!(row("b", 3).r_first.is_nan());
        let h = acc.headline("pretrained", "a");
        // Tensor a, batch 3: ties broken by index, M_3 = {0, 1} = M_1: both √(2/4).
        let expect = ((9.0f64 / 25.0).sqrt() + 0.5f64.sqrt()) / 2.0;
        assert!((h.mean_r_first.unwrap() - expect).abs() < 1e-12);
        assert_eq!(h.top_norm_ratio_batch1, Some(1.0));
        assert_eq!(acc.batches, 3);
    }
}
