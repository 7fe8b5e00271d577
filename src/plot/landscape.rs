//! Figures of `sift-lab landscape` (paper Fig. 2): the 1-D loss (and task metric) curve with
//! θ0 and θ1 marked ([`LineFigure1d`]), the 2-D heatmap with contour lines ([`HeatmapFigure`],
//! marching squares in [`contour_segments`]) and the 2-D loss surface in 3-D ([`SurfaceFigure`]).
//!
//! The structs hold plain numbers and texts; `landscape::figures` fills them from a grid's rows
//! and decides where θ0 and θ1 are marked, so nothing here knows about the analysis.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{drawing_err, Figure, FONT};

// ---------------------------------------------------------------------------------------------
// Marching squares
// ---------------------------------------------------------------------------------------------

/// A contour segment between two points (x, y).
pub type Segment = ((f64, f64), (f64, f64));

/// Marching squares: the segments of the contour `z = level` of a grid, `z[j][i]` being the
/// value at (`xs[i]`, `ys[j]`). A corner counts as inside when z ≥ level; crossings are placed by
/// linear interpolation along cell edges; a saddle cell (opposite corners inside) is resolved by
/// the mean of its four corners. Cells with a non-finite corner are skipped.
pub fn contour_segments(xs: &[f64], ys: &[f64], z: &[Vec<f64>], level: f64) -> Vec<Segment> {
    let mut segments = Vec::new();
    if xs.len() < 2 || ys.len() < 2 {
        return segments;
    }
    for j in 0..ys.len() - 1 {
        for i in 0..xs.len() - 1 {
            // Corners counter-clockwise from bottom-left.
            let c = [
                (xs[i], ys[j], z[j][i]),
                (xs[i + 1], ys[j], z[j][i + 1]),
                (xs[i + 1], ys[j + 1], z[j + 1][i + 1]),
                (xs[i], ys[j + 1], z[j + 1][i]),
            ];
            if c.iter().any(|p| !p.2.is_finite()) {
                continue;
            }
            let inside: Vec<bool> = c.iter().map(|p| p.2 >= level).collect();
            // Edge k joins corner k and corner k+1 (mod 4): bottom, right, top, left.
            let crossing = |k: usize| -> Option<(f64, f64)> {
                let (a, b) = (c[k], c[(k + 1) % 4]);
                if inside[k] == inside[(k + 1) % 4] {
                    return None;
                }
                let t = (level - a.2) / (b.2 - a.2);
                Some((a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1)))
            };
            let edges: Vec<(usize, (f64, f64))> =
                (0..4).filter_map(|k| crossing(k).map(|p| (k, p))).collect();
            match edges.len() {
                2 => segments.push((edges[0].1, edges[1].1)),
                4 => {
                    let centre = c.iter().map(|p| p.2).sum::<f64>() / 4.0;
                    let p = |k: usize| edges[k].1;
                    if (centre >= level) == inside[0] {
                        // Corners 0 and 2 connect through the centre: cut off corners 1 and 3.
                        segments.push((p(0), p(1)));
                        segments.push((p(2), p(3)));
                    } else {
                        // Cut off corners 0 and 2.
                        segments.push((p(3), p(0)));
                        segments.push((p(1), p(2)));
                    }
                }
                _ => {}
            }
        }
    }
    segments
}

/// `n` contour levels evenly spaced strictly inside (lo, hi).
pub fn contour_levels(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) || n == 0 {
        return Vec::new();
    }
    (1..=n)
        .map(|k| lo + (hi - lo) * k as f64 / (n + 1) as f64)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Texts shared by the figures
// ---------------------------------------------------------------------------------------------

/// A labelled point of the plane (θ0, θ1, checkpoint A/B).
#[derive(Debug, Clone)]
pub struct Marker {
    pub alpha: f64,
    pub beta: f64,
    pub label: String,
}

/// Titles and axis names, so that a figure reads without the paper beside it.
#[derive(Debug, Clone)]
pub struct Texts {
    pub title: String,
    pub subtitle: String,
    pub alpha_label: String,
    pub beta_label: String,
    pub loss_label: String,
    pub metric_label: String,
}

impl Texts {
    /// The area under the title and the subtitle.
    fn titled<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<DrawingArea<DB, Shift>>
    where
        DB::ErrorType: 'static,
    {
        super::under_titles(root, (&self.title, 26), (&self.subtitle, 15))
    }
}

/// The range of finite values, widened by `pad` of its span (or ±0.5 when flat).
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let d = (lo.abs() * 0.01).max(1e-3);
        return (lo - d, hi + d);
    }
    let p = (hi - lo) * pad;
    (lo - p, hi + p)
}

pub fn color(v: f64, lo: f64, hi: f64) -> RGBColor {
    if !v.is_finite() {
        return RGBColor(200, 200, 200);
    }
    ViridisRGB::get_color_normalized(v.clamp(lo, hi), lo, hi)
}

pub const LOSS_COLOR: RGBColor = RGBColor(31, 119, 180);
pub const METRIC_COLOR: RGBColor = RGBColor(210, 100, 0);

/// An axis title in `color`.
fn desc(color: &'static RGBColor) -> TextStyle<'static> {
    TextStyle::from((FONT, 17).into_font()).color(color)
}

/// A tick label with as many decimals as the axis span needs, and no "-0.0".
fn fmt_tick(v: f64, span: f64) -> String {
    let decimals = (1.0 - span.abs().max(1e-12).log10().floor()).clamp(0.0, 6.0) as usize;
    let text = format!("{v:.decimals$}");
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_string()
    } else {
        text
    }
}

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

// ---------------------------------------------------------------------------------------------
// 1-D
// ---------------------------------------------------------------------------------------------

/// Loss (left axis) and the task metric (right axis) against α, with θ0 / θ1 marked.
pub struct LineFigure1d {
    pub texts: Texts,
    pub alphas: Vec<f64>,
    pub loss: Vec<f64>,
    pub metric: Vec<f64>,
    pub markers: Vec<Marker>,
    /// A horizontal reference loss, e.g. ln(classes): the loss of a uniform prediction.
    pub reference: Option<(f64, String)>,
}

impl Figure for LineFigure1d {
    fn size(&self) -> (u32, u32) {
        (1100, 680)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let root = self.texts.titled(root)?;
        let (a0, a1) = (self.alphas[0], *self.alphas.last().unwrap());
        let (a0, a1) = if a1 > a0 {
            (a0, a1)
        } else {
            (a0 - 0.5, a0 + 0.5)
        };
        let reference = self.reference.iter().map(|r| r.0);
        let (lo, hi) = padded_range(self.loss.iter().copied().chain(reference), 0.08);
        let (mlo, mhi) = padded_range(self.metric.iter().copied(), 0.08);
        let (loss_color, metric_color) = (LOSS_COLOR, METRIC_COLOR);
        let loss_desc = format!("{} (blue, solid)", self.texts.loss_label);
        let mut chart = ChartBuilder::on(&root)
            .margin(18)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .right_y_label_area_size(80)
            .build_cartesian_2d(a0..a1, lo..hi)
            .map_err(drawing_err)?
            .set_secondary_coord(a0..a1, mlo..mhi);
        chart
            .configure_mesh()
            .x_desc(&self.texts.alpha_label)
            .x_label_formatter(&|v| fmt_tick(*v, a1 - a0))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(BLACK.mix(0.05))
            .bold_line_style(BLACK.mix(0.12))
            .y_label_formatter(&|v| fmt_tick(*v, hi - lo))
            .draw()
            .map_err(drawing_err)?;
        // The loss axis title in the loss colour (a second pass: one style covers both titles).
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(0)
            .y_desc(&loss_desc)
            .axis_desc_style(desc(&LOSS_COLOR))
            .draw()
            .map_err(drawing_err)?;
        chart
            .configure_secondary_axes()
            .y_desc(&self.texts.metric_label)
            .label_style((FONT, 15))
            .axis_desc_style(desc(&METRIC_COLOR))
            .y_label_formatter(&|v| fmt_tick(*v, mhi - mlo))
            .draw()
            .map_err(drawing_err)?;
        if let Some((value, label)) = &self.reference {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(a0, *value), (a1, *value)],
                    3,
                    4,
                    loss_color.mix(0.7).stroke_width(1),
                ))
                .map_err(drawing_err)?;
            let style = TextStyle::from((FONT, 14).into_font())
                .color(&loss_color)
                .pos(Pos::new(HPos::Left, VPos::Bottom));
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((a0, *value)) + Text::new(label.clone(), (6, -3), style),
                ))
                .map_err(drawing_err)?;
        }
        for m in &self.markers {
            if m.alpha < a0 || m.alpha > a1 {
                continue;
            }
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(m.alpha, lo), (m.alpha, hi)],
                    8,
                    5,
                    BLACK.mix(0.55).stroke_width(2),
                ))
                .map_err(drawing_err)?;
            // Labels inside the plot, on the side of the line that has room.
            let right_half = m.alpha > (a0 + a1) / 2.0;
            let (dx, anchor) = if right_half {
                (-8, Pos::new(HPos::Right, VPos::Top))
            } else {
                (8, Pos::new(HPos::Left, VPos::Top))
            };
            let style = TextStyle::from((FONT, 17).into_font()).pos(anchor);
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((m.alpha, hi)) + Text::new(m.label.clone(), (dx, 8), style),
                ))
                .map_err(drawing_err)?;
        }
        let pts = |ys: &[f64]| -> Vec<(f64, f64)> {
            self.alphas
                .iter()
                .zip(ys)
                .filter(|(_, y)| y.is_finite())
                .map(|(&a, &y)| (a, y))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(pts(&self.loss), loss_color.stroke_width(3)))
            .map_err(drawing_err)?;
        chart
            .draw_series(
                pts(&self.loss)
                    .into_iter()
                    .map(|p| Circle::new(p, 3, loss_color.filled())),
            )
            .map_err(drawing_err)?;
        chart
            .draw_secondary_series(DashedLineSeries::new(
                pts(&self.metric),
                7,
                4,
                metric_color.stroke_width(2),
            ))
            .map_err(drawing_err)?;
        chart
            .draw_secondary_series(
                pts(&self.metric)
                    .into_iter()
                    .map(|p| TriangleMarker::new(p, 4, metric_color.filled())),
            )
            .map_err(drawing_err)?;
        // No legend box (it would hide part of a curve): the axis titles carry the colours.
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// 2-D
// ---------------------------------------------------------------------------------------------

/// The loss over the (α, β) plane as a heatmap with contour lines and a colour bar.
pub struct HeatmapFigure {
    pub texts: Texts,
    pub alphas: Vec<f64>,
    pub betas: Vec<f64>,
    /// `z[j][i]`: loss at (alphas[i], betas[j]).
    pub z: Vec<Vec<f64>>,
    pub levels: Vec<f64>,
    pub markers: Vec<Marker>,
    /// Paths drawn over the map (training trajectories), each in its own colour with a legend.
    pub paths: Vec<PlanePath>,
}

/// A labelled path of (α, β) points over a heatmap; its first point is drawn hollow.
#[derive(Debug, Clone)]
pub struct PlanePath {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Cell edges around grid values: midpoints, and half a step beyond the ends.
fn cell_edges(values: &[f64]) -> Vec<f64> {
    if values.len() == 1 {
        return vec![values[0] - 0.5, values[0] + 0.5];
    }
    let n = values.len();
    let mut edges = Vec::with_capacity(n + 1);
    edges.push(values[0] - (values[1] - values[0]) / 2.0);
    for w in values.windows(2) {
        edges.push((w[0] + w[1]) / 2.0);
    }
    edges.push(values[n - 1] + (values[n - 1] - values[n - 2]) / 2.0);
    edges
}

pub fn z_range(z: &[Vec<f64>]) -> (f64, f64) {
    let (lo, hi) = z
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 {
        (lo - 1e-3, hi + 1e-3)
    } else {
        (lo, hi)
    }
}

impl Figure for HeatmapFigure {
    fn size(&self) -> (u32, u32) {
        (1100, 760)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let root = self.texts.titled(root)?;
        let (w, _) = root.dim_in_pixel();
        let (main, bar) = root.split_horizontally(w.saturating_sub(150));
        let (xe, ye) = (cell_edges(&self.alphas), cell_edges(&self.betas));
        let (x0, x1) = (xe[0], *xe.last().unwrap());
        let (y0, y1) = (ye[0], *ye.last().unwrap());
        let (lo, hi) = z_range(&self.z);
        let mut chart = ChartBuilder::on(&main)
            .margin(18)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(drawing_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(&self.texts.alpha_label)
            .y_desc(&self.texts.beta_label)
            .x_label_formatter(&|v| fmt_tick(*v, x1 - x0))
            .y_label_formatter(&|v| fmt_tick(*v, y1 - y0))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(drawing_err)?;
        let mut cells = Vec::new();
        for (j, row) in self.z.iter().enumerate() {
            for (i, &v) in row.iter().enumerate() {
                cells.push(Rectangle::new(
                    [(xe[i], ye[j]), (xe[i + 1], ye[j + 1])],
                    color(v, lo, hi).filled(),
                ));
            }
        }
        chart.draw_series(cells).map_err(drawing_err)?;
        for &level in &self.levels {
            let segments = contour_segments(&self.alphas, &self.betas, &self.z, level);
            chart
                .draw_series(
                    segments.into_iter().map(|(p, q)| {
                        PathElement::new(vec![p, q], WHITE.mix(0.85).stroke_width(1))
                    }),
                )
                .map_err(drawing_err)?;
        }
        for m in &self.markers {
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((m.alpha, m.beta))
                        + Circle::new((0, 0), 7, RED.filled())
                        + Circle::new((0, 0), 7, WHITE.stroke_width(2))
                        + Text::new(
                            m.label.clone(),
                            (11, -21),
                            (FONT, 17).into_font().color(&BLACK),
                        )
                        + Text::new(
                            m.label.clone(),
                            (10, -22),
                            (FONT, 17).into_font().color(&WHITE),
                        ),
                ))
                .map_err(drawing_err)?;
        }

        for (k, path) in self.paths.iter().enumerate() {
            let colour = super::TAB10[k % super::TAB10.len()];
            chart
                .draw_series(std::iter::once(PathElement::new(
                    path.points.clone(),
                    colour.stroke_width(3),
                )))
                .map_err(drawing_err)?
                .label(path.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
            chart
                .draw_series(path.points.iter().enumerate().map(|(i, &p)| {
                    let style = if i == 0 {
                        WHITE.filled()
                    } else {
                        colour.filled()
                    };
                    EmptyElement::at(p)
                        + Circle::new((0, 0), 4, style)
                        + Circle::new((0, 0), 4, colour.stroke_width(1))
                }))
                .map_err(drawing_err)?;
        }
        if !self.paths.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 15))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(drawing_err)?;
        }

        // Colour bar, aligned with the plot area, contour levels marked.
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(18)
            .margin_bottom(18)
            .margin_right(10)
            .x_label_area_size(60)
            .y_label_area_size(75)
            .build_cartesian_2d(0.0..1.0, lo..hi)
            .map_err(drawing_err)?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc(&self.texts.loss_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .y_label_formatter(&|v| fmt_value(*v))
            .draw()
            .map_err(drawing_err)?;
        let steps = 256;
        cb.draw_series((0..steps).map(|k| {
            let a = lo + (hi - lo) * k as f64 / steps as f64;
            let b = lo + (hi - lo) * (k + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], color((a + b) / 2.0, lo, hi).filled())
        }))
        .map_err(drawing_err)?;
        cb.draw_series(
            self.levels.iter().map(|&l| {
                PathElement::new(vec![(0.0, l), (1.0, l)], WHITE.mix(0.85).stroke_width(1))
            }),
        )
        .map_err(drawing_err)?;
        Ok(())
    }
}

/// One cell of the 3-D surface: nearness (for drawing order), corners (α, loss, β), mean loss.
type Quad = (f64, Vec<(f64, f64, f64)>, f64);

/// The loss surface over (α, β) in 3-D, coloured like the heatmap.
pub struct SurfaceFigure {
    pub texts: Texts,
    pub alphas: Vec<f64>,
    pub betas: Vec<f64>,
    pub z: Vec<Vec<f64>>,
    pub markers: Vec<Marker>,
}

impl Figure for SurfaceFigure {
    fn size(&self) -> (u32, u32) {
        (1100, 820)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let root = self.texts.titled(root)?;
        let (a0, a1) = (self.alphas[0], *self.alphas.last().unwrap());
        let (b0, b1) = (self.betas[0], *self.betas.last().unwrap());
        let (lo, hi) = z_range(&self.z);
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .build_cartesian_3d(a0..a1, lo..hi, b0..b1)
            .map_err(drawing_err)?;
        chart.with_projection(|mut p| {
            p.yaw = 0.65;
            p.pitch = 0.45;
            p.scale = 0.78;
            p.into_matrix()
        });
        chart
            .configure_axes()
            .label_style((FONT, 13))
            .light_grid_style(BLACK.mix(0.08))
            .max_light_lines(3)
            .x_formatter(&|v| fmt_tick(*v, a1 - a0))
            .z_formatter(&|v| fmt_tick(*v, b1 - b0))
            .y_formatter(&|v| fmt_value(*v))
            .draw()
            .map_err(drawing_err)?;
        // Quads drawn back to front (painter's algorithm) in the projected view.
        let value = |i: usize, j: usize| self.z[j][i];
        let mut quads: Vec<Quad> = Vec::new();
        for j in 0..self.betas.len().saturating_sub(1) {
            for i in 0..self.alphas.len().saturating_sub(1) {
                let corners = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)];
                if corners.iter().any(|&(i, j)| !value(i, j).is_finite()) {
                    continue;
                }
                let pts: Vec<(f64, f64, f64)> = corners
                    .iter()
                    .map(|&(i, j)| (self.alphas[i], value(i, j), self.betas[j]))
                    .collect();
                let mean = corners.iter().map(|&(i, j)| value(i, j)).sum::<f64>() / 4.0;
                // Nearness: with this view the far corner is (lowest α, lowest β).
                let depth = (self.alphas[i] - a0) / (a1 - a0).max(1e-12)
                    + (self.betas[j] - b0) / (b1 - b0).max(1e-12);
                quads.push((depth, pts, mean));
            }
        }
        quads.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Each quad filled, then outlined (a wire mesh that shows the shape).
        for (_, pts, mean) in quads {
            let mut outline = pts.clone();
            outline.push(pts[0]);
            chart
                .draw_series([
                    Polygon::new(pts, color(mean, lo, hi).filled()).into_dyn(),
                    PathElement::new(outline, BLACK.mix(0.35).stroke_width(1)).into_dyn(),
                ])
                .map_err(drawing_err)?;
        }
        let axis_font = (FONT, 20).into_font();
        chart
            .draw_series(
                [
                    ("α", ((a0 + a1) / 2.0, lo, b1), (-45, 25)),
                    ("β", (a1, lo, (b0 + b1) / 2.0), (35, 15)),
                    ("loss", (a0, hi, b1), (-20, -30)),
                ]
                .map(|(label, at, offset)| {
                    EmptyElement::at(at) + Text::new(label.to_string(), offset, axis_font.clone())
                }),
            )
            .map_err(drawing_err)?;
        for m in &self.markers {
            let Some(i) = self.alphas.iter().position(|&a| a == m.alpha) else {
                continue;
            };
            let Some(j) = self.betas.iter().position(|&b| b == m.beta) else {
                continue;
            };
            let v = value(i, j);
            if !v.is_finite() {
                continue;
            }
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((m.alpha, v, m.beta))
                        + Circle::new((0, 0), 6, RED.filled())
                        + Text::new(m.label.clone(), (9, -20), (FONT, 17).into_font()),
                ))
                .map_err(drawing_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalise(mut s: Vec<Segment>) -> Vec<Segment> {
        let key = |p: (f64, f64)| {
            (p.0 * 1e9).round() as i64 * 1_000_000_000_000 + (p.1 * 1e9).round() as i64
        };
        for seg in s.iter_mut() {
            if key(seg.0) > key(seg.1) {
                *seg = (seg.1, seg.0);
            }
        }
        s.sort_by_key(|seg| (key(seg.0), key(seg.1)));
        s
    }

    fn close(a: &[Segment], b: &[Segment]) -> bool {
        let (a, b) = (normalise(a.to_vec()), normalise(b.to_vec()));
        a.len() == b.len()
            && a.iter().zip(&b).all(|(p, q)| {
                (p.0 .0 - q.0 .0).abs() < 1e-12
                    && (p.0 .1 - q.0 .1).abs() < 1e-12
                    && (p.1 .0 - q.1 .0).abs() < 1e-12
                    && (p.1 .1 - q.1 .1).abs() < 1e-12
            })
    }

    /// A peak of 2 in the middle of a 3×3 grid of zeros: the level-1 contour is the diamond
    /// through the midpoints between the centre and its four neighbours.
    #[test]
    fn marching_squares_peak_gives_a_diamond() {
        let xs = [0.0, 1.0, 2.0];
        let ys = [0.0, 1.0, 2.0];
        let z = vec![
            vec![0.0, 0.0, 0.0],
            vec![0.0, 2.0, 0.0],
            vec![0.0, 0.0, 0.0],
        ];
        let got = contour_segments(&xs, &ys, &z, 1.0);
        let want = vec![
            ((1.0, 0.5), (0.5, 1.0)),
            ((1.5, 1.0), (1.0, 0.5)),
            ((1.0, 1.5), (1.5, 1.0)),
            ((0.5, 1.0), (1.0, 1.5)),
        ];
        assert!(close(&got, &want), "{got:?}");
    }

    /// z = x on a 2×2 cell with uneven spacing: the level 0.25 contour is the vertical line at
    /// x = 0.25 · 4 = 1 (z runs 0 → 1 over x 0 → 4).
    #[test]
    fn marching_squares_interpolates_linearly() {
        let xs = [0.0, 4.0];
        let ys = [0.0, 1.0];
        let z = vec![vec![0.0, 1.0], vec![0.0, 1.0]];
        let got = contour_segments(&xs, &ys, &z, 0.25);
        assert!(close(&got, &[((1.0, 0.0), (1.0, 1.0))]), "{got:?}");
        assert!(contour_segments(&xs, &ys, &z, 2.0).is_empty());
    }

    /// Saddle: corners (0,0) and (1,1) high. The centre (mean 0.5 ≥ 0.5) is inside, so the high
    /// corners connect and the contour cuts off the two low corners.
    #[test]
    fn marching_squares_resolves_saddles_by_the_centre() {
        let xs = [0.0, 1.0];
        let ys = [0.0, 1.0];
        let z = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let got = contour_segments(&xs, &ys, &z, 0.5);
        let want = [((0.5, 0.0), (1.0, 0.5)), ((0.5, 1.0), (0.0, 0.5))];
        assert!(close(&got, &want), "{got:?}");
        // Level 0.6: the centre (0.5) is outside, so the high corners are cut off instead.
        let got = contour_segments(&xs, &ys, &z, 0.6);
        let want = [((0.0, 0.4), (0.4, 0.0)), ((1.0, 0.6), (0.6, 1.0))];
        assert!(close(&got, &want), "{got:?}");
    }

    #[test]
    fn tick_labels_fit_the_span_and_never_read_minus_zero() {
        assert_eq!(fmt_tick(-1e-17, 2.0), "0.0");
        assert_eq!(fmt_tick(-0.5, 2.0), "-0.5");
        assert_eq!(fmt_tick(0.25, 0.5), "0.25");
        assert_eq!(fmt_tick(20.0, 40.0), "20");
    }

    #[test]
    fn levels_lie_strictly_inside() {
        assert_eq!(contour_levels(0.0, 1.0, 3), vec![0.25, 0.5, 0.75]);
        assert!(contour_levels(1.0, 1.0, 3).is_empty());
    }

    use crate::plot::{svg, to_rgb, to_svg};

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    fn texts() -> Texts {
        Texts {
            title: "1-D loss landscape: test".into(),
            subtitle: "sub".into(),
            alpha_label: "α".into(),
            beta_label: "β".into(),
            loss_label: "loss".into(),
            metric_label: "accuracy".into(),
        }
    }

    fn marker(alpha: f64, beta: f64, label: &str) -> Marker {
        Marker {
            alpha,
            beta,
            label: label.into(),
        }
    }

    /// The loss curve has one vertex per grid point, in α order, lowest loss lowest on the
    /// canvas; θ0 and θ1 are labelled beside their dashed lines at α = 0 and α = 1.
    #[test]
    fn line_figure_draws_one_vertex_per_point_and_labels_the_marks_at_their_alpha() {
        let fig = LineFigure1d {
            texts: texts(),
            alphas: vec![-0.5, 0.0, 0.5, 1.0, 1.5],
            loss: vec![0.9, 0.7, 0.4, 0.6, 0.8],
            metric: vec![0.5, 0.55, 0.6, 0.65, 0.6],
            markers: vec![
                marker(0.0, 0.0, "θ0 (random)"),
                marker(1.0, 0.0, "θ1 (pretrained)"),
            ],
            reference: Some((2f64.ln(), "ln 2 = uniform prediction".into())),
        };
        let svg = to_svg(&fig).unwrap();
        let loss_lines: Vec<svg::Element> = svg::elements(&svg, "polyline")
            .into_iter()
            .filter(|e| e.attr("stroke") == hex(LOSS_COLOR) && e.attr("stroke-width") == "3")
            .collect();
        assert_eq!(loss_lines.len(), 1);
        let pts = loss_lines[0].points();
        assert_eq!(pts.len(), 5);
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0), "{pts:?}");
        // Evenly spaced α: evenly spaced x (to the pixel).
        let step = pts[1].0 - pts[0].0;
        assert!(
            pts.windows(2)
                .all(|w| (w[1].0 - w[0].0 - step).abs() <= 1.0),
            "{pts:?}"
        );
        // Loss 0.4 (α = 0.5) is the lowest point: the largest y on the canvas.
        let lowest = pts
            .iter()
            .cloned()
            .fold(pts[0], |a, b| if b.1 > a.1 { b } else { a });
        assert_eq!(lowest, pts[2]);
        let dots = svg::elements(&svg, "circle")
            .into_iter()
            .filter(|e| e.attr("fill") == hex(LOSS_COLOR) && e.attr("r") == "3")
            .count();
        assert_eq!(dots, 5);
        // The metric's triangles, one per point.
        let triangles = svg::elements(&svg, "polygon")
            .into_iter()
            .filter(|e| e.attr("fill") == hex(METRIC_COLOR))
            .count();
        assert_eq!(triangles, 5);
        let text = |label: &str| {
            let found: Vec<svg::Element> = svg::elements(&svg, "text")
                .into_iter()
                .filter(|e| e.text == label)
                .collect();
            assert_eq!(found.len(), 1, "{label}: {found:?}");
            found[0].clone()
        };
        // θ0 sits right of its line at α = 0 (left half), θ1 left of its line at α = 1.
        let (t0, t1) = (text("θ0 (random)"), text("θ1 (pretrained)"));
        assert_eq!(
            (t0.num("x"), t0.attr("text-anchor")),
            (pts[1].0 + 8.0, "start")
        );
        assert_eq!(
            (t1.num("x"), t1.attr("text-anchor")),
            (pts[3].0 - 8.0, "end")
        );
        text("ln 2 = uniform prediction");
        text("1-D loss landscape: test");
    }

    /// The cells of a 3 × 2 heatmap, bottom row first, carry the viridis colour of their loss,
    /// in the SVG and in the PNG's pixels; the marker is a red dot at its (α, β).
    #[test]
    fn heatmap_colours_each_cell_by_its_value_and_dots_the_marker() {
        let fig = HeatmapFigure {
            texts: texts(),
            alphas: vec![0.0, 0.5, 1.0],
            betas: vec![-1.0, 1.0],
            z: vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]],
            levels: Vec::new(),
            markers: vec![marker(1.0, 1.0, "θ1")],
            paths: Vec::new(),
        };
        let (w, _) = fig.size();
        let svg = to_svg(&fig).unwrap();
        let mut cells: Vec<svg::Element> = svg::elements(&svg, "rect")
            .into_iter()
            .filter(|e| e.attr("fill") != "#FFFFFF" && e.attr("fill") != "none")
            .filter(|e| e.num("x") + e.num("width") <= (w - 150) as f64)
            .collect();
        assert_eq!(cells.len(), 6, "{cells:?}");
        // Bottom row (β = −1) first, left to right.
        cells.sort_by(|a, b| {
            b.num("y")
                .total_cmp(&a.num("y"))
                .then(a.num("x").total_cmp(&b.num("x")))
        });
        let rgb = to_rgb(&fig).unwrap();
        let pixel = |x: f64, y: f64| {
            let k = 3 * (y as usize * w as usize + x as usize);
            RGBColor(rgb[k], rgb[k + 1], rgb[k + 2])
        };
        for (k, cell) in cells.iter().enumerate() {
            let (i, j) = (k % 3, k / 3);
            let want = color(fig.z[j][i], 1.0, 6.0);
            assert_eq!(cell.attr("fill"), hex(want), "cell α {i}, β {j}");
            // A quarter into the cell: away from the marker at the top-right centre.
            let (x, y) = (
                cell.num("x") + cell.num("width") / 4.0,
                cell.num("y") + cell.num("height") / 4.0,
            );
            assert_eq!(pixel(x, y), want, "pixel of cell α {i}, β {j}");
        }
        let dots: Vec<svg::Element> = svg::elements(&svg, "circle")
            .into_iter()
            .filter(|e| e.attr("fill") == hex(RED))
            .collect();
        assert_eq!(dots.len(), 1);
        let top_right = &cells[5];
        let centre = (
            top_right.num("x") + top_right.num("width") / 2.0,
            top_right.num("y") + top_right.num("height") / 2.0,
        );
        assert!(
            (dots[0].num("cx") - centre.0).abs() <= 1.0
                && (dots[0].num("cy") - centre.1).abs() <= 1.0
        );
        assert_eq!(pixel(dots[0].num("cx"), dots[0].num("cy")), RED);
    }

    /// A 3 × 3 surface is 4 coloured quads, each with the colour of its mean loss.
    #[test]
    fn surface_draws_one_quad_per_grid_cell() {
        let z = vec![
            vec![0.0, 1.0, 2.0],
            vec![1.0, 2.0, 3.0],
            vec![2.0, 3.0, 4.0],
        ];
        let fig = SurfaceFigure {
            texts: texts(),
            alphas: vec![0.0, 0.5, 1.0],
            betas: vec![-1.0, 0.0, 1.0],
            z,
            markers: vec![marker(0.0, 0.0, "θ1 (pretrained)")],
        };
        let svg = to_svg(&fig).unwrap();
        // (The three axis panels are translucent black polygons.)
        let mut fills: Vec<String> = svg::elements(&svg, "polygon")
            .into_iter()
            .filter(|e| e.attr("opacity") == "1")
            .map(|e| e.attr("fill").to_string())
            .collect();
        fills.sort();
        // Quad means: 1, 2, 2, 3 over the range 0–4.
        let mut want: Vec<String> = [1.0, 2.0, 2.0, 3.0]
            .iter()
            .map(|&m| hex(color(m, 0.0, 4.0)))
            .collect();
        want.sort();
        assert_eq!(fills, want);
        assert!(svg::elements(&svg, "text")
            .iter()
            .any(|e| e.text == "θ1 (pretrained)"));
    }
}
