//! Sharpness figures: λ_max and the Hessian trace against α (θ0 and θ1 marked), and per-layer
//! bars at θ0 and θ1. Values spanning decades are drawn on a log axis (when all are positive).

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{draw_legend, drawing_err, under_titles, Figure, FONT, TAB10 as PALETTE};

/// One curve: a scope's values along α, with an optional ± error bar.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub alphas: Vec<f64>,
    pub values: Vec<f64>,
    pub errors: Option<Vec<f64>>,
}

/// One quantity (λ_max or the trace) for every scope.
#[derive(Debug, Clone)]
pub struct Panel {
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Two or more panels side by side, α on every x axis, with vertical marks (θ0, θ1).
pub struct AlphaFigure {
    pub title: String,
    pub subtitle: String,
    pub panels: Vec<Panel>,
    pub markers: Vec<(f64, String)>,
}

/// Grouped bars: per group (a layer), one bar per series (θ0, θ1), one panel per quantity.
pub struct BarsFigure {
    pub title: String,
    pub subtitle: String,
    pub groups: Vec<String>,
    /// Per panel: its y label and (series label, one value per group).
    pub panels: Vec<(String, Vec<(String, Vec<f64>)>)>,
}

/// The y transform of a panel: log10 when every value is positive, else the value itself.
fn axis(values: impl Iterator<Item = f64> + Clone) -> (bool, f64, f64) {
    let finite: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    let log = !finite.is_empty() && finite.iter().all(|&v| v > 0.0);
    let t: Vec<f64> = finite
        .iter()
        .map(|&v| if log { v.log10() } else { v })
        .collect();
    let (lo, hi) = t
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (false, 0.0, 1.0);
    }
    let pad = if hi - lo < 1e-12 {
        0.5
    } else {
        (hi - lo) * 0.1
    };
    (log, lo - pad, hi + pad)
}

fn tick(v: f64, log: bool) -> String {
    let x = if log { 10f64.powf(v) } else { v };
    let a = x.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        format!("{x:.1e}")
    } else if a >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

impl Figure for AlphaFigure {
    fn size(&self) -> (u32, u32) {
        (600 * self.panels.len() as u32, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let area = under_titles(root, (&self.title, 24), (&self.subtitle, 14))?;
        let cells = area.split_evenly((1, self.panels.len()));
        for (panel, cell) in self.panels.iter().zip(&cells) {
            let alphas = panel.series.iter().flat_map(|s| s.alphas.iter().copied());
            let (a0, a1) = alphas.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), a| {
                (l.min(a), h.max(a))
            });
            let (a0, a1) = if a1 > a0 {
                (a0 - 0.05, a1 + 0.05)
            } else {
                (a0 - 0.5, a0 + 0.5)
            };
            let all = panel.series.iter().flat_map(|s| {
                s.values.iter().enumerate().flat_map(move |(i, &v)| {
                    let e = s.errors.as_ref().map_or(0.0, |e| e[i]);
                    [v - e, v + e]
                })
            });
            let (log, lo, hi) = axis(all);
            let y = |v: f64| if log { v.log10() } else { v };
            let mut chart = ChartBuilder::on(cell)
                .margin(14)
                .x_label_area_size(50)
                .y_label_area_size(80)
                .build_cartesian_2d(a0..a1, lo..hi)
                .map_err(drawing_err)?;
            let y_desc = if log {
                format!("{} (log scale)", panel.y_label)
            } else {
                panel.y_label.clone()
            };
            chart
                .configure_mesh()
                .x_desc("α  (θ = (1 − α)·θ0 + α·θ1)")
                .y_desc(y_desc)
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .light_line_style(BLACK.mix(0.05))
                .bold_line_style(BLACK.mix(0.12))
                .y_label_formatter(&|v| tick(*v, log))
                .draw()
                .map_err(drawing_err)?;
            for (a, label) in &self.markers {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(*a, lo), (*a, hi)],
                        8,
                        5,
                        BLACK.mix(0.5).stroke_width(2),
                    ))
                    .map_err(drawing_err)?;
                // Labels inside the plot, on the side of the line that has room.
                let (dx, h) = if *a > (a0 + a1) / 2.0 {
                    (-6, HPos::Right)
                } else {
                    (6, HPos::Left)
                };
                let style = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(h, VPos::Top));
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at((*a, hi)) + Text::new(label.clone(), (dx, 6), style),
                    ))
                    .map_err(drawing_err)?;
            }
            for (i, s) in panel.series.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let pts: Vec<(f64, f64)> = s
                    .alphas
                    .iter()
                    .zip(&s.values)
                    .filter(|(_, v)| v.is_finite() && (!log || **v > 0.0))
                    .map(|(&a, &v)| (a, y(v)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
                    .map_err(drawing_err)?
                    .label(s.label.clone())
                    .legend(move |(x, yy)| {
                        PathElement::new(vec![(x, yy), (x + 20, yy)], color.stroke_width(3))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(drawing_err)?;
                if let Some(errors) = &s.errors {
                    let bars =
                        s.alphas
                            .iter()
                            .zip(&s.values)
                            .zip(errors)
                            .filter_map(|((&a, &v), &e)| {
                                let (l, h) = (v - e, v + e);
                                (e.is_finite() && (!log || l > 0.0)).then(|| {
                                    ErrorBar::new_vertical(
                                        a,
                                        y(l),
                                        y(v),
                                        y(h),
                                        color.stroke_width(2),
                                        8,
                                    )
                                })
                            });
                    chart.draw_series(bars).map_err(drawing_err)?;
                }
            }
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 0.85, 14)?;
        }
        Ok(())
    }
}

impl Figure for BarsFigure {
    fn size(&self) -> (u32, u32) {
        (600 * self.panels.len() as u32, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let area = under_titles(root, (&self.title, 24), (&self.subtitle, 14))?;
        let cells = area.split_evenly((1, self.panels.len()));
        let groups = self.groups.len();
        for ((y_label, series), cell) in self.panels.iter().zip(&cells) {
            let (log, lo, hi) = axis(series.iter().flat_map(|(_, v)| v.iter().copied()));
            // Bars start at the axis floor on a log scale, at 0 otherwise.
            let (lo, base) = if log { (lo, lo) } else { (lo.min(0.0), 0.0) };
            let y = |v: f64| if log { v.log10() } else { v };
            let mut chart = ChartBuilder::on(cell)
                .margin(14)
                .x_label_area_size(60)
                .y_label_area_size(80)
                .build_cartesian_2d(-0.5..groups as f64 - 0.5, lo..hi)
                .map_err(drawing_err)?;
            let names = self.groups.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(groups.max(1))
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                        names[i as usize].clone()
                    } else {
                        String::new()
                    }
                })
                .x_desc("layer")
                .y_desc(if log {
                    format!("{y_label} (log scale)")
                } else {
                    y_label.clone()
                })
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .y_label_formatter(&|v| tick(*v, log))
                .draw()
                .map_err(drawing_err)?;
            let width = 0.8 / series.len().max(1) as f64;
            for (s, (label, values)) in series.iter().enumerate() {
                let color = PALETTE[s % PALETTE.len()];
                let bars = values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(move |(g, &v)| {
                        let x0 = g as f64 - 0.4 + s as f64 * width;
                        Rectangle::new([(x0, base), (x0 + width * 0.95, y(v))], color.filled())
                    });
                chart
                    .draw_series(bars)
                    .map_err(drawing_err)?
                    .label(label.clone())
                    .legend(move |(x, yy)| {
                        Rectangle::new([(x, yy - 6), (x + 14, yy + 6)], color.filled())
                    });
            }
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 0.85, 14)?;
        }
        Ok(())
    }
}
