//! Fig. 3 and Fig. 4 drawn back from the grad-stats tables: the tables are read, turned into
//! the plain figure structs of `plot::grad_stats`, and drawn. Nothing here computes gradients,
//! so a figure can always be redrawn from the Parquet files alone.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::tables::{read_summary, HIST_FILE, OVERLAP_FILE, TOPX_FILE};
use super::{OverlapMode, ALL, ALL_PER_TENSOR, MODELS};
use crate::output::{self, column};
use crate::plot;
use crate::plot::grad_stats::{GradientFigure, Histogram, OverlapFigure, OverlapPanel, TopxLine};

pub const FIG3_STEM: &str = "fig3_gradients";
/// Fig. 4 of a frozen run; a during-training run appends [`TRAINING_SUFFIX`], so both can share
/// one figures folder (their Fig. 3 is the same: batch 1 comes before any update).
pub const FIG4_STEM: &str = "fig4_mask_overlap";
pub const TRAINING_SUFFIX: &str = "_during_training";

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
        column::strings(&hist, "model")?,
        column::strings(&hist, "tensor")?,
        column::strings(&hist, "range")?,
    );
    let (h_bin, h_lo, h_hi, h_count) = (
        column::u32s(&hist, "bin")?,
        column::f64s(&hist, "lo")?,
        column::f64s(&hist, "hi")?,
        column::u64s(&hist, "count")?,
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
        column::strings(&topx, "model")?,
        column::strings(&topx, "tensor")?,
        column::f64s_or_nan(&topx, "x_percent")?,
        column::f64s_or_nan(&topx, "norm_ratio")?,
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
        config.task.name().to_uppercase(),
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
        column::strings(&overlap, "model")?,
        column::strings(&overlap, "tensor")?,
        column::u32s(&overlap, "batch")?,
    );
    let (o_first, o_own, o_overlap) = (
        column::f64s_or_nan(&overlap, "r_first")?,
        column::f64s_or_nan(&overlap, "r_own")?,
        column::f64s_or_nan(&overlap, "overlap")?,
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
