//! The tables of grad-stats (tidy long format), written and read back. The figures drawn from
//! them are in `figures.rs`.
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

use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame};

use super::math::{self, Moments};
use super::{Accumulator, GradStatsReport, GradStatsSummary, ALL, MODELS};
use crate::output;
use crate::plot::grad_stats::Histogram;

pub const HIST_FILE: &str = "hist.parquet";
pub const TOPX_FILE: &str = "topx.parquet";
pub const OVERLAP_FILE: &str = "overlap.parquet";
pub const STATS_FILE: &str = "stats.parquet";
pub use crate::output::SUMMARY_FILE;

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
pub fn write_tables(tables: &mut GradStatsReport, dir: &Path) -> Result<Vec<PathBuf>> {
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
