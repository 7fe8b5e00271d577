//! The figures of a run, as plain figure structs of [`crate::plot::sharpness`]:
//! `sharpness_alpha` (λ_max and trace against α for the whole-model and subspace scopes) and,
//! with a `per-layer` scope, `sharpness_layers` (λ_max and trace per layer at θ0 and θ1).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::config::SharpnessConfig;
use super::rows::Row;
use crate::plot::sharpness::{AlphaFigure, BarsFigure, Panel, Series};
use crate::plot::{self};

fn subtitle(config: &SharpnessConfig) -> String {
    format!(
        "{} {}, first {} examples (max {} tokens), seed {}; {} {} steps, {} Rademacher probes, central differences h = {:e} ({})",
        config.task.name().to_uppercase(),
        config.split,
        config.eval_examples,
        config.max_len,
        config.seed,
        match config.method {
            super::EigenMethod::Lanczos => "Lanczos",
            super::EigenMethod::Power => "power iteration",
        },
        config.iterations,
        config.probes,
        config.fd_step,
        config.precision
    )
}

/// Writes the figures of a complete run into `dir`.
pub fn draw_all(config: &SharpnessConfig, rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut scopes: Vec<&str> = Vec::new();
    for r in rows {
        if !scopes.contains(&r.scope.as_str()) {
            scopes.push(&r.scope);
        }
    }
    let line_scopes: Vec<&str> = scopes
        .iter()
        .copied()
        .filter(|s| !s.starts_with("layer:") && !s.starts_with("tensor:"))
        .collect();
    let line_scopes = if line_scopes.is_empty() {
        scopes.clone()
    } else {
        line_scopes
    };
    let series = |value: &dyn Fn(&Row) -> f64, error: Option<&dyn Fn(&Row) -> f64>| {
        line_scopes
            .iter()
            .map(|s| {
                let mut mine: Vec<&Row> = rows.iter().filter(|r| r.scope == *s).collect();
                mine.sort_by(|a, b| a.alpha.total_cmp(&b.alpha));
                Series {
                    label: format!("{s} ({} params)", mine[0].params),
                    alphas: mine.iter().map(|r| r.alpha).collect(),
                    values: mine.iter().map(|r| value(r)).collect(),
                    errors: error.map(|e| mine.iter().map(|r| e(r)).collect()),
                }
            })
            .collect::<Vec<_>>()
    };
    let title = format!(
        "Hessian of the mean loss along θ0 → θ1: {} on {}",
        config.model_short(),
        config.task.name().to_uppercase()
    );
    let figure = AlphaFigure {
        title: title.clone(),
        subtitle: subtitle(config),
        panels: vec![
            Panel {
                y_label: "λ_max".into(),
                series: series(&|r| r.eigenvalues[0], None),
            },
            Panel {
                y_label: "trace (Hutchinson, ± 1 s.e.)".into(),
                series: series(&|r| r.trace, Some(&|r| r.trace_se)),
            },
        ],
        markers: vec![(0.0, "θ0".into()), (1.0, "θ1".into())],
    };
    files.extend(plot::save(&figure, &dir.join("sharpness_alpha"))?);

    // Per-layer bars at θ0 and θ1 (when both end points are on the grid).
    let layers: Vec<&str> = scopes
        .iter()
        .copied()
        .filter(|s| s.starts_with("layer:"))
        .collect();
    let has = |a: f64| rows.iter().any(|r| r.alpha == a);
    if !layers.is_empty() && has(0.0) && has(1.0) {
        let value = |a: f64, l: &str, f: &dyn Fn(&Row) -> f64| {
            rows.iter()
                .find(|r| r.alpha == a && r.scope == l)
                .map_or(f64::NAN, f)
        };
        let panel = |label: &str, f: &dyn Fn(&Row) -> f64| {
            (
                label.to_string(),
                vec![
                    (
                        "θ0 (random init)".to_string(),
                        layers.iter().map(|l| value(0.0, l, f)).collect(),
                    ),
                    (
                        "θ1 (pretrained)".to_string(),
                        layers.iter().map(|l| value(1.0, l, f)).collect(),
                    ),
                ],
            )
        };
        let bars = BarsFigure {
            title: format!(
                "Per-layer Hessian at θ0 and θ1: {} on {}",
                config.model_short(),
                config.task.name().to_uppercase()
            ),
            subtitle: subtitle(config),
            groups: layers
                .iter()
                .map(|l| l.trim_start_matches("layer:").to_string())
                .collect(),
            panels: vec![
                panel("λ_max", &|r| r.eigenvalues[0]),
                panel("trace", &|r| r.trace),
            ],
        };
        files.extend(plot::save(&bars, &dir.join("sharpness_layers"))?);
    }
    Ok(files)
}
