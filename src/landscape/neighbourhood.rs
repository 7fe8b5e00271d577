//! How much the loss moves around the marked points (θ0 and θ1, or A and B) of a complete
//! grid, and `summary.json`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::config::LandscapeConfig;
use super::rows::Row;
use crate::output;

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
            "{} ±{} ({} points): loss {} at the point, {:.5}–{:.5} (range {:.5}), mean |step| {}; metric {:.4}–{:.4}",
            self.label,
            self.half_width,
            self.points,
            if self.loss_at.is_finite() {
                format!("{:.5}", self.loss_at)
            } else {
                "n/a (not a grid point)".to_string()
            },
            self.loss_min,
            self.loss_max,
            self.loss_range,
            // No neighbouring pair inside the window (a one-point grid): no step to average.
            if self.mean_abs_step.is_finite() {
                format!("{:.5}", self.mean_abs_step)
            } else {
                "n/a (no neighbouring points)".to_string()
            },
            self.metric_min,
            self.metric_max
        )
    }
}

/// Loss statistics around each marked point (θ0 and θ1, or A and B) of a grid. A marked point
/// with no grid point within `half_width` (a coarse grid) has no statistics and is left out.
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
    config
        .marked_points()
        .into_iter()
        .filter_map(|m| {
            let inside: Vec<&Row> = rows
                .iter()
                .filter(|r| near(r.alpha, m.alpha) && near(r.beta, m.beta))
                .collect();
            if inside.is_empty() {
                return None;
            }
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
            Some(Neighbourhood {
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
            })
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::data::Task;
    use crate::landscape::Range;

    #[test]
    fn neighbourhoods_measure_the_loss_around_theta0_and_theta1() {
        let mut c = LandscapeConfig::new(Task::Rte, Path::new("."), 1);
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
}
