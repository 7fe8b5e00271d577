//! The figures of a landscape: fills the plot structs of [`crate::plot::landscape`] from a
//! complete grid's rows. This is where the texts are written and where θ0 and θ1 (or A and B)
//! are marked ([`LandscapeConfig::marked_points`]).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};

use super::config::{Directions, LandscapeConfig};
use super::rows::Row;
use crate::plot::{
    self,
    landscape::{
        contour_levels, z_range, HeatmapFigure, LineFigure1d, Marker, SurfaceFigure, Texts,
    },
};

/// The marked points of `config` as plot markers.
fn markers(config: &LandscapeConfig) -> Vec<Marker> {
    config
        .marked_points()
        .into_iter()
        .map(|m| Marker {
            alpha: m.alpha,
            beta: m.beta,
            label: m.label,
        })
        .collect()
}

fn checkpoint_name(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "?".into())
}

fn texts(config: &LandscapeConfig, n_examples: usize, two_d: bool) -> Texts {
    let task = config.task.name().to_uppercase();
    let what = if two_d {
        "2-D loss surface"
    } else {
        "1-D loss landscape"
    };
    let plane = match (config.directions, two_d) {
        (Directions::Paper, false) => {
            "θ(α) = θ0 + α·(θ1 − θ0); θ0 = random init, θ1 = pretrained".to_string()
        }
        (Directions::Paper, true) => {
            "θ(α, β) = θ0 + α·δ1 + β·δ2; δ1 = θ1 − θ0, δ2 = d ⊙ δ1, d ~ N(0, 1)".to_string()
        }
        (Directions::FilterNormalized, false) => {
            "θ(α) = θ1 + α·d1; d1 Gaussian, filter-normalised to θ1 (Li et al. 2018)".to_string()
        }
        (Directions::FilterNormalized, true) => {
            "θ(α, β) = θ1 + α·d1 + β·d2; d1, d2 Gaussian, filter-normalised to θ1".to_string()
        }
        (Directions::Pca, _) => format!(
            "θ_end + α·d1 + β·d2; d1, d2: top-2 PCA directions of {}'s trajectory",
            checkpoint_name(&config.pca_run)
        ),
        (Directions::Checkpoints, false) => format!(
            "θ(α) = A + α·(B − A); A = {}, B = {}",
            checkpoint_name(&config.from_checkpoint),
            checkpoint_name(&config.to_checkpoint)
        ),
        (Directions::Checkpoints, true) => format!(
            "θ(α, β) = A + α·δ1 + β·d ⊙ δ1; δ1 = B − A; A = {}, B = {}",
            checkpoint_name(&config.from_checkpoint),
            checkpoint_name(&config.to_checkpoint)
        ),
    };
    let moving = match &config.tensors {
        Some(p) => format!("; moving {p}"),
        None => String::new(),
    };
    let head = match &config.head_from {
        Some(dir) => format!("; trained head from {}", dir.display()),
        None => String::new(),
    };
    let alpha_label = match config.directions {
        Directions::Paper => "α   (α = 0: θ0 random init,  α = 1: θ1 pretrained)",
        Directions::FilterNormalized => "α   (step along d1; α = 0: θ1 pretrained)",
        Directions::Checkpoints => "α   (α = 0: checkpoint A,  α = 1: checkpoint B)",
        Directions::Pca => "α   (along the first principal direction; α = 0: end of the run)",
    };
    let beta_label = match config.directions {
        Directions::FilterNormalized => "β   (step along d2)",
        Directions::Pca => "β   (along the second principal direction)",
        _ => "β   (step along δ2)",
    };
    let loss_label = if config.task.is_regression() {
        "mean squared error"
    } else {
        "mean cross-entropy loss"
    };
    let metric_label = crate::metrics::primary_metric(config.task);
    Texts {
        title: format!("{what}: {} on {task}", config.model_short()),
        subtitle: format!(
            "{plane}{moving}{head}; {n_examples} {} examples (max {} tokens), seed {}",
            config.split, config.max_len, config.seed
        ),
        alpha_label: alpha_label.to_string(),
        beta_label: beta_label.to_string(),
        loss_label: loss_label.to_string(),
        metric_label: format!("{metric_label} (orange, dashed)"),
    }
}

/// ln(classes), the cross-entropy of a uniform prediction, for classification tasks.
fn chance_loss(config: &LandscapeConfig) -> Option<(f64, String)> {
    let classes = config.task.num_labels();
    (classes > 1).then(|| {
        (
            (classes as f64).ln(),
            format!("ln {classes} = uniform prediction"),
        )
    })
}

/// The loss grid `z[j][i]` (NaN where a point is missing).
fn values_grid(config: &LandscapeConfig, rows: &[Row], f: impl Fn(&Row) -> f64) -> Vec<Vec<f64>> {
    let (na, nb) = (config.alpha.count, config.betas().len());
    let mut z = vec![vec![f64::NAN; na]; nb];
    for r in rows {
        if r.alpha_index < na && r.beta_index < nb {
            z[r.beta_index][r.alpha_index] = f(r);
        }
    }
    z
}

/// The figures of a landscape, ready to draw.
pub struct Figures {
    /// The loss and metric against α (for a 2-D grid its β = 0 line, when it has one).
    pub line: Option<LineFigure1d>,
    /// 2-D only.
    pub heatmap: Option<HeatmapFigure>,
    /// 2-D only.
    pub surface: Option<SurfaceFigure>,
}

/// Builds the figures of a complete landscape from its rows.
pub fn figures(config: &LandscapeConfig, rows: &[Row]) -> Result<Figures> {
    ensure!(!rows.is_empty(), "no rows to plot");
    let n_examples = rows[0].n_examples;
    let alphas = config.alphas();
    let betas = config.betas();
    let loss = values_grid(config, rows, |r| r.loss);
    let metric = values_grid(config, rows, |r| r.metric);
    let markers = markers(config);
    let line = betas.iter().position(|&b| b == 0.0).map(|j| {
        let mut texts = texts(config, n_examples, false);
        if config.dims == 2 {
            texts.title = format!("{} (β = 0 line of the 2-D grid)", texts.title);
        }
        LineFigure1d {
            texts,
            alphas: alphas.clone(),
            loss: loss[j].clone(),
            metric: metric[j].clone(),
            markers: markers.clone(),
            reference: chance_loss(config),
        }
    });
    let (mut heatmap, mut surface) = (None, None);
    if config.dims == 2 {
        let t = texts(config, n_examples, true);
        let (lo, hi) = z_range(&loss);
        heatmap = Some(HeatmapFigure {
            texts: Texts {
                subtitle: format!("{}; white lines: 10 loss contours", t.subtitle),
                ..t.clone()
            },
            alphas: alphas.clone(),
            betas: betas.clone(),
            z: loss.clone(),
            levels: contour_levels(lo, hi, 10),
            markers: markers.clone(),
            paths: Vec::new(),
        });
        surface = Some(SurfaceFigure {
            texts: t,
            alphas,
            betas,
            z: loss,
            markers,
        });
    }
    Ok(Figures {
        line,
        heatmap,
        surface,
    })
}

/// Writes every figure of a complete landscape into `dir`: `landscape_1d` (for a 2-D grid, its
/// β = 0 line when the grid has one), and for 2-D `landscape_2d_heatmap` and
/// `landscape_2d_surface`; PNG and SVG each.
pub fn draw_all(config: &LandscapeConfig, rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    let figures = figures(config, rows)?;
    let mut written = Vec::new();
    if let Some(fig) = &figures.line {
        written.extend(plot::save(fig, &dir.join("landscape_1d"))?);
    }
    if let Some(fig) = &figures.heatmap {
        written.extend(plot::save(fig, &dir.join("landscape_2d_heatmap"))?);
    }
    if let Some(fig) = &figures.surface {
        written.extend(plot::save(fig, &dir.join("landscape_2d_surface"))?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::data::Task;
    use crate::landscape::Range;

    fn rows(config: &LandscapeConfig) -> Vec<Row> {
        config
            .points()
            .iter()
            .map(|p| Row {
                point: p.index,
                alpha_index: p.alpha_index,
                beta_index: p.beta_index,
                alpha: p.alpha,
                beta: p.beta,
                loss: p.index as f64,
                metric: 0.5,
                metrics: BTreeMap::new(),
                n_examples: 8,
                seconds: 0.0,
            })
            .collect()
    }

    #[test]
    fn paper_directions_mark_theta0_at_zero_and_theta1_at_one() {
        let mut c = LandscapeConfig::new(Task::Rte, Path::new("."), 2);
        c.alpha = Range::parse("-0.5:1.5:5").unwrap();
        c.beta = Some(Range::parse("-1:1:3").unwrap());
        let f = figures(&c, &rows(&c)).unwrap();
        let line = f.line.unwrap();
        let marks: Vec<(f64, &str)> = line
            .markers
            .iter()
            .map(|m| (m.alpha, m.label.as_str()))
            .collect();
        assert_eq!(marks, vec![(0.0, "θ0 (random)"), (1.0, "θ1 (pretrained)")]);
        // The β = 0 line (j = 1) of the row-major grid: points 1, 4, 7, 10, 13.
        assert_eq!(line.loss, vec![1.0, 4.0, 7.0, 10.0, 13.0]);
        assert_eq!(line.reference.as_ref().unwrap().0, 2f64.ln());
        assert!(line.texts.title.contains("RTE") && line.texts.title.contains("β = 0 line"));
        let heat = f.heatmap.unwrap();
        // z[j][i] = loss at (alphas[i], betas[j]) = point i·3 + j.
        assert_eq!(heat.z[2][1], 5.0);
        assert_eq!(heat.levels.len(), 10);
        assert_eq!(f.surface.unwrap().markers.len(), 2);
    }

    #[test]
    fn filter_normalized_marks_theta1_at_the_origin() {
        let mut c = LandscapeConfig::new(Task::Rte, Path::new("."), 1);
        c.directions = Directions::FilterNormalized;
        c.alpha = Range::parse("-1:1:3").unwrap();
        let f = figures(&c, &rows(&c)).unwrap();
        let line = f.line.unwrap();
        assert_eq!(line.markers.len(), 1);
        assert_eq!((line.markers[0].alpha, line.markers[0].beta), (0.0, 0.0));
        assert_eq!(line.markers[0].label, "θ1 (pretrained)");
        assert!(f.heatmap.is_none() && f.surface.is_none());
    }
}
