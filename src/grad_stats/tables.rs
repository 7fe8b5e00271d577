//! The tables of grad-stats (tidy long format) and the figures drawn back from them.
//!
//! - `hist.parquet`: model, tensor, range ("shared" = ±max|g| over both models, "own" = ±the
//!   model's own max|g|), bin, lo, hi, count, log10_count (null where count is 0). First batch.
//! - `topx.parquet`: model, tensor, x_percent, k (components in the top x %), norm_ratio and
//!   sq_share on the first batch, norm_ratio_mean / _min / _max and sq_share_mean over the N
//!   batches, batches.
//! - `overlap.parquet`: model, tensor, batch (1-based), loss, r_first, r_own, overlap.
//! - `stats.parquet`: model, tensor, scope ("batch1", or "all_batches" = every entry of every
//!   batch pooled), batches, numel (entries per batch), mean, std, rms, max_abs,
//!   excess_kurtosis, zero_share, l2_norm (batch1: ‖g‖₂; all_batches: mean over batches of ‖g_t‖₂).
//!
//! Tensor names are the model's, plus "all" (all chosen tensors concatenated) and, in
//! overlap.parquet, "all/per-tensor" (per-tensor masks pooled). Every file carries the run's
//! configuration (metadata key "config") and summary ("run") as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataFrame};

use super::math::{self, Moments};
use super::{
    Accumulator, GradStatsSummary, GradStatsTables, OverlapMode, ALL, ALL_PER_TENSOR, MODELS,
};
use crate::plot::grad_stats::{GradientFigure, Histogram, OverlapFigure, OverlapPanel, TopxLine};
use crate::{output, plot};

pub const HIST_FILE: &str = "hist.parquet";
pub const TOPX_FILE: &str = "topx.parquet";
pub const OVERLAP_FILE: &str = "overlap.parquet";
pub const STATS_FILE: &str = "stats.parquet";
pub use crate::output::SUMMARY_FILE;
pub const FIG3_STEM: &str = "fig3_gradients";
/// Fig. 4 of a frozen run; a during-training run appends [`TRAINING_SUFFIX`], so both can share
/// one figures folder (their Fig. 3 is the same: batch 1 comes before any update).
pub const FIG4_STEM: &str = "fig4_mask_overlap";
pub const TRAINING_SUFFIX: &str = "_during_training";

/// One histogram: (model index, unit, range kind, histogram).
pub(crate) type HistRow = (usize, String, &'static str, Histogram);

/// The first batch's histograms of every unit (chosen tensors and "all"), for both models:
/// shared bins over ±max|g| of both, and each model on ±its own max|g|.
pub(crate) fn first_batch_histograms(
    tensors: &[String],
    pretrained: &[Vec<f32>],
    scratch: &[Vec<f32>],
    bins: usize,
) -> Vec<HistRow> {
    let all = [super::concat(pretrained), super::concat(scratch)];
    let mut rows = Vec::new();
    let units = tensors.iter().map(String::as_str).chain([ALL]).enumerate();
    for (u, unit) in units {
        let g: [&[f32]; 2] = if u < tensors.len() {
            [&pretrained[u], &scratch[u]]
        } else {
            [&all[0], &all[1]]
        };
        let max_abs = [Moments::of(g[0]).max_abs, Moments::of(g[1]).max_abs];
        let (lo, hi) = math::symmetric_range(max_abs[0].max(max_abs[1]));
        for m in 0..2 {
            rows.push((
                m,
                unit.to_string(),
                "shared",
                Histogram {
                    lo,
                    hi,
                    counts: math::histogram(g[m], lo, hi, bins),
                },
            ));
        }
        for m in 0..2 {
            let (lo, hi) = math::symmetric_range(max_abs[m]);
            rows.push((
                m,
                unit.to_string(),
                "own",
                Histogram {
                    lo,
                    hi,
                    counts: math::histogram(g[m], lo, hi, bins),
                },
            ));
        }
    }
    rows
}

pub(crate) fn hist_frame(rows: &[HistRow]) -> Result<DataFrame> {
    let (mut model, mut tensor, mut range, mut bin) = (vec![], vec![], vec![], vec![]);
    let (mut lo, mut hi, mut count, mut log10) = (vec![], vec![], vec![], vec![]);
    for (m, unit, kind, h) in rows {
        let width = (h.hi - h.lo) / h.counts.len() as f64;
        for (i, &c) in h.counts.iter().enumerate() {
            model.push(MODELS[*m]);
            tensor.push(unit.as_str());
            range.push(*kind);
            bin.push(i as u32);
            lo.push(h.lo + i as f64 * width);
            hi.push(if i + 1 == h.counts.len() {
                h.hi
            } else {
                h.lo + (i + 1) as f64 * width
            });
            count.push(c);
            log10.push((c > 0).then(|| (c as f64).log10()));
        }
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("model".into(), model),
        Column::new("tensor".into(), tensor),
        Column::new("range".into(), range),
        Column::new("bin".into(), bin),
        Column::new("lo".into(), lo),
        Column::new("hi".into(), hi),
        Column::new("count".into(), count),
        Column::new("log10_count".into(), log10),
    ])?)
}

pub(crate) fn topx_frame(accumulators: &[Accumulator; 2]) -> Result<DataFrame> {
    let (mut model, mut tensor, mut x, mut k) = (vec![], vec![], vec![], vec![]);
    let (mut ratio, mut share, mut mean, mut min, mut max, mut share_mean, mut batches) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (m, acc) in accumulators.iter().enumerate() {
        let n = acc.batches as f64;
        for (u, unit) in acc.units.iter().enumerate() {
            let Some(first) = acc.first.get(u) else {
                continue;
            };
            for (j, &xp) in acc.grid.iter().enumerate() {
                model.push(MODELS[m]);
                tensor.push(unit.as_str());
                x.push(xp);
                k.push(math::top_count(first.moments.count as usize, xp) as u64);
                ratio.push(first.curve.norm_ratio[j]);
                share.push(first.curve.sq_share[j]);
                mean.push(acc.ratio_sum[u][j] / n);
                min.push(acc.ratio_min[u][j]);
                max.push(acc.ratio_max[u][j]);
                share_mean.push(acc.sq_share_sum[u][j] / n);
                batches.push(acc.batches as u32);
            }
        }
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("model".into(), model),
        Column::new("tensor".into(), tensor),
        Column::new("x_percent".into(), x),
        Column::new("k".into(), k),
        Column::new("norm_ratio".into(), ratio),
        Column::new("sq_share".into(), share),
        Column::new("norm_ratio_mean".into(), mean),
        Column::new("norm_ratio_min".into(), min),
        Column::new("norm_ratio_max".into(), max),
        Column::new("sq_share_mean".into(), share_mean),
        Column::new("batches".into(), batches),
    ])?)
}

pub(crate) fn overlap_frame(accumulators: &[Accumulator; 2]) -> Result<DataFrame> {
    let (mut model, mut tensor, mut batch, mut loss) = (vec![], vec![], vec![], vec![]);
    let (mut r_first, mut r_own, mut overlap) = (vec![], vec![], vec![]);
    for (m, acc) in accumulators.iter().enumerate() {
        for row in &acc.overlap {
            model.push(MODELS[m]);
            tensor.push(row.tensor.as_str());
            batch.push(row.batch);
            loss.push(row.loss);
            r_first.push(row.ratios.r_first);
            r_own.push(row.ratios.r_own);
            overlap.push(row.ratios.overlap);
        }
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("model".into(), model),
        Column::new("tensor".into(), tensor),
        Column::new("batch".into(), batch),
        Column::new("loss".into(), loss),
        Column::new("r_first".into(), r_first),
        Column::new("r_own".into(), r_own),
        Column::new("overlap".into(), overlap),
    ])?)
}

pub(crate) fn stats_frame(accumulators: &[Accumulator; 2]) -> Result<DataFrame> {
    let mut model = vec![];
    let mut tensor = vec![];
    let mut scope = vec![];
    let mut batches = vec![];
    let mut numel = vec![];
    let mut cols: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (m, acc) in accumulators.iter().enumerate() {
        for (u, unit) in acc.units.iter().enumerate() {
            let Some(first) = acc.first.get(u) else {
                continue;
            };
            let n = acc.batches as f64;
            for (kind, mo, count, norm) in [
                ("batch1", &first.moments, 1u32, first.moments.l2_norm()),
                (
                    "all_batches",
                    &acc.moments[u],
                    acc.batches as u32,
                    acc.norm_sum[u] / n,
                ),
            ] {
                model.push(MODELS[m]);
                tensor.push(unit.as_str());
                scope.push(kind);
                batches.push(count);
                numel.push(first.moments.count);
                for (name, value) in [
                    ("mean", mo.mean()),
                    ("std", mo.std()),
                    ("rms", mo.rms()),
                    ("max_abs", mo.max_abs),
                    ("excess_kurtosis", mo.excess_kurtosis()),
                    ("zero_share", mo.zero_share()),
                    ("l2_norm", norm),
                ] {
                    cols.entry(name).or_default().push(value);
                }
            }
        }
    }
    let mut columns = vec![
        Column::new("model".into(), model),
        Column::new("tensor".into(), tensor),
        Column::new("scope".into(), scope),
        Column::new("batches".into(), batches),
        Column::new("numel".into(), numel),
    ];
    for name in [
        "mean",
        "std",
        "rms",
        "max_abs",
        "excess_kurtosis",
        "zero_share",
        "l2_norm",
    ] {
        columns.push(Column::new(
            name.into(),
            cols.remove(name).unwrap_or_default(),
        ));
    }
    Ok(DataFrame::new_infer_height(columns)?)
}

/// Writes the four tables and `summary.json` into `dir`; returns the paths.
pub fn write_tables(tables: &mut GradStatsTables, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let metadata = vec![
        (
            "config".to_string(),
            serde_json::to_string(&tables.summary.config)?,
        ),
        ("run".to_string(), serde_json::to_string(&tables.summary)?),
    ];
    let mut paths = Vec::new();
    for (df, file) in [
        (&mut tables.hist, HIST_FILE),
        (&mut tables.topx, TOPX_FILE),
        (&mut tables.overlap, OVERLAP_FILE),
        (&mut tables.stats, STATS_FILE),
    ] {
        let path = dir.join(file);
        output::write_parquet(df, &path, &metadata)?;
        paths.push(path);
    }
    let summary = dir.join(SUMMARY_FILE);
    output::write_json(&summary, &tables.summary)?;
    paths.push(summary);
    Ok(paths)
}

/// The run summary stored in a table's metadata.
pub fn read_summary(path: &Path) -> Result<GradStatsSummary> {
    let metadata = output::read_metadata(path)?;
    let run = metadata
        .iter()
        .find(|(k, _)| k == "run")
        .with_context(|| format!("{}: no grad-stats run metadata", path.display()))?;
    serde_json::from_str(&run.1)
        .with_context(|| format!("{}: unreadable grad-stats run metadata", path.display()))
}

fn strings(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(df
        .column(name)?
        .str()?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

fn floats(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    Ok(df
        .column(name)?
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

fn u32s(df: &DataFrame, name: &str) -> Result<Vec<u32>> {
    Ok(df
        .column(name)?
        .u32()?
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect())
}

fn u64s(df: &DataFrame, name: &str) -> Result<Vec<u64>> {
    Ok(df
        .column(name)?
        .u64()?
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect())
}

/// `encoder.layer.3.attention.self.value.weight` → `layer 3 attention.self.value.weight`.
fn short_name(tensor: &str) -> String {
    match tensor.strip_prefix("encoder.layer.") {
        Some(rest) => match rest.split_once('.') {
            Some((layer, tail)) => format!("layer {layer} {tail}"),
            None => tensor.to_string(),
        },
        None => tensor.to_string(),
    }
}

fn model_short(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

fn percent(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0} %")
    } else {
        format!("{p} %")
    }
}

/// Rebuilds both figures from the Parquet tables in `dir`.
pub fn figures_from_dir(dir: &Path) -> Result<(GradientFigure, OverlapFigure)> {
    let hist_path = dir.join(HIST_FILE);
    if !hist_path.is_file() {
        bail!(
            "{}: no {HIST_FILE} here; run `sift-lab grad-stats ... --out {}` first",
            dir.display(),
            dir.display()
        );
    }
    let summary = read_summary(&hist_path)?;
    let config = &summary.config;
    let figure_tensor = summary.figure_tensor.as_str();
    let top = config.top_percent;

    // Fig. 3 (a)–(c).
    let hist = output::read_parquet(&hist_path)?;
    let (h_model, h_tensor, h_range) = (
        strings(&hist, "model")?,
        strings(&hist, "tensor")?,
        strings(&hist, "range")?,
    );
    let (h_bin, h_lo, h_hi, h_count) = (
        u32s(&hist, "bin")?,
        floats(&hist, "lo")?,
        floats(&hist, "hi")?,
        u64s(&hist, "count")?,
    );
    let histogram = |model: &str, range: &str| -> Result<Histogram> {
        let mut rows: Vec<usize> = (0..h_model.len())
            .filter(|&i| h_model[i] == model && h_tensor[i] == figure_tensor && h_range[i] == range)
            .collect();
        if rows.is_empty() {
            bail!(
                "{}: no {range} histogram of {figure_tensor} for {model}",
                hist_path.display()
            );
        }
        rows.sort_by_key(|&i| h_bin[i]);
        Ok(Histogram {
            lo: h_lo[rows[0]],
            hi: h_hi[*rows.last().unwrap()],
            counts: rows.iter().map(|&i| h_count[i]).collect(),
        })
    };
    let shared = [
        histogram(MODELS[0], "shared")?,
        histogram(MODELS[1], "shared")?,
    ];
    let own = [histogram(MODELS[0], "own")?, histogram(MODELS[1], "own")?];

    // Fig. 3 (d).
    let topx = output::read_parquet(&dir.join(TOPX_FILE))?;
    let (t_model, t_tensor, t_x, t_ratio) = (
        strings(&topx, "model")?,
        strings(&topx, "tensor")?,
        floats(&topx, "x_percent")?,
        floats(&topx, "norm_ratio")?,
    );
    let n_tensors = summary.tensors.len();
    let mut curves = Vec::new();
    for (m, model_label) in ["θ1", "θ0"].iter().enumerate() {
        for (unit, dashed) in [(figure_tensor, false), (ALL, true)] {
            let rows: Vec<usize> = (0..t_model.len())
                .filter(|&i| t_model[i] == MODELS[m] && t_tensor[i] == unit)
                .collect();
            let x: Vec<f64> = rows.iter().map(|&i| t_x[i]).collect();
            let y: Vec<f64> = rows.iter().map(|&i| t_ratio[i]).collect();
            let at_top = x
                .iter()
                .position(|&v| (v - top).abs() <= 1e-9 * top)
                .map(|j| y[j]);
            let what = if unit == ALL {
                format!("all {n_tensors} chosen tensors")
            } else {
                short_name(unit)
            };
            curves.push(TopxLine {
                label: format!(
                    "{model_label}, {what}: top {} → {}",
                    percent(top),
                    at_top.map_or("n/a".into(), |v| format!("{v:.3}"))
                ),
                model: m,
                dashed,
                x_percent: x,
                norm_ratio: y,
            });
        }
    }
    let data = format!(
        "{} · {} train · seed {}",
        model_short(&config.model),
        config.task.to_uppercase(),
        config.seed
    );
    let gradient = GradientFigure {
        subtitle: format!(
            "{data} · gradient ∂L/∂W on the first batch ({} examples, max_len {}) · {} bins · (d) dashed: all {n_tensors} chosen tensors pooled",
            config.batch_size, config.max_len, config.bins
        ),
        tensor: short_name(figure_tensor),
        shared,
        own,
        curves,
        top_percent: top,
    };

    // Fig. 4.
    let overlap = output::read_parquet(&dir.join(OVERLAP_FILE))?;
    let (o_model, o_tensor, o_batch) = (
        strings(&overlap, "model")?,
        strings(&overlap, "tensor")?,
        u32s(&overlap, "batch")?,
    );
    let (o_first, o_own, o_overlap) = (
        floats(&overlap, "r_first")?,
        floats(&overlap, "r_own")?,
        floats(&overlap, "overlap")?,
    );
    let mut panels = Vec::new();
    for (unit, what) in [
        (figure_tensor, short_name(figure_tensor)),
        (
            ALL_PER_TENSOR,
            format!("all {n_tensors} chosen tensors (per-tensor masks)"),
        ),
    ] {
        for (m, model_label) in ["θ1 pretrained", "θ0 from scratch"].iter().enumerate() {
            let mut rows: Vec<usize> = (0..o_model.len())
                .filter(|&i| o_model[i] == MODELS[m] && o_tensor[i] == unit)
                .collect();
            rows.sort_by_key(|&i| o_batch[i]);
            let pick = |v: &[f64]| rows.iter().map(|&i| v[i]).collect::<Vec<f64>>();
            panels.push(OverlapPanel {
                title: format!("{model_label} · {what}"),
                model: m,
                batch: rows.iter().map(|&i| o_batch[i] as f64).collect(),
                r_first: pick(&o_first),
                r_own: pick(&o_own),
                overlap: pick(&o_overlap),
            });
        }
    }
    let weights = match config.overlap_mode {
        OverlapMode::Frozen => "weights frozen (batch-to-batch variation only)".to_string(),
        OverlapMode::DuringTraining => format!(
            "gradients along a fine-tuning run (AdamW, lr {:e}, {})",
            config.lr,
            if config.trainable.is_none() {
                "all tensors trainable".to_string()
            } else {
                format!("trainable: {}", config.trainable.as_deref().unwrap_or(""))
            }
        ),
    };
    let mask_figure = OverlapFigure {
        subtitle: format!(
            "{data} · {} batches of {} · {weights}",
            summary.batches_done, config.batch_size
        ),
        top_percent: top,
        panels,
    };
    Ok((gradient, mask_figure))
}

/// Redraws Fig. 3 and Fig. 4 from the tables in `dir` into `figures_dir` (PNG + SVG each).
pub fn draw_figures(dir: &Path, figures_dir: &Path) -> Result<Vec<PathBuf>> {
    let (gradient, mask_overlap) = figures_from_dir(dir)?;
    let summary = read_summary(&dir.join(HIST_FILE))?;
    let fig4 = match summary.config.overlap_mode {
        OverlapMode::Frozen => FIG4_STEM.to_string(),
        OverlapMode::DuringTraining => format!("{FIG4_STEM}{TRAINING_SUFFIX}"),
    };
    let mut paths = plot::save(&gradient, &figures_dir.join(FIG3_STEM))?;
    paths.extend(plot::save(&mask_overlap, &figures_dir.join(fig4))?);
    Ok(paths)
}
