//! The figures of `sift-lab grad-stats`, in the paper's layout:
//! - [`GradientFigure`] (paper Fig. 3): (a) θ1 and θ0 histograms on shared bins, (b) θ1 and
//!   (c) θ0 each on its own range with log counts, (d) the top-x% norm-ratio curves.
//! - [`OverlapFigure`] (paper Fig. 4): r_own(t), r_first(t) and the mask overlap against the
//!   batch t, one panel per model and tensor set.
//!
//! The structs hold plain numbers; `grad_stats::figures_from_dir` fills them from the Parquet
//! tables, so every figure is redrawn from what was written.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{draw_legend, drawing_err, Figure, FONT};

/// θ1 (pretrained) and θ0 (from scratch): the colours every grad-stats figure uses.
pub const MODEL_COLOURS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(230, 110, 0)];
pub const MODEL_LABELS: [&str; 2] = ["θ1 pretrained", "θ0 from scratch"];

/// Counts in equal bins over [lo, hi].
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub lo: f64,
    pub hi: f64,
    pub counts: Vec<u64>,
}

impl Histogram {
    fn edges(&self) -> impl Iterator<Item = (f64, f64, u64)> + '_ {
        let width = (self.hi - self.lo) / self.counts.len().max(1) as f64;
        self.counts.iter().enumerate().map(move |(i, &c)| {
            let x0 = self.lo + i as f64 * width;
            (x0, x0 + width, c)
        })
    }

    fn max_count(&self) -> u64 {
        self.counts.iter().copied().max().unwrap_or(0)
    }
}

/// One top-x% curve.
#[derive(Debug, Clone, PartialEq)]
pub struct TopxLine {
    pub label: String,
    /// 0 = θ1 pretrained, 1 = θ0 from scratch (the colour).
    pub model: usize,
    /// Dashed lines mark the curve over all chosen tensors.
    pub dashed: bool,
    pub x_percent: Vec<f64>,
    pub norm_ratio: Vec<f64>,
}

/// Paper Fig. 3.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientFigure {
    /// Model, task and batch, shown under the title.
    pub subtitle: String,
    /// The tensor of panels (a)–(c).
    pub tensor: String,
    /// [θ1, θ0] on the same bins (±max|g| over both).
    pub shared: [Histogram; 2],
    /// [θ1, θ0], each on ±its own max|g|.
    pub own: [Histogram; 2],
    pub curves: Vec<TopxLine>,
    /// The x marked in panel (d).
    pub top_percent: f64,
}

/// One panel of paper Fig. 4.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlapPanel {
    pub title: String,
    /// 0 = θ1, 1 = θ0.
    pub model: usize,
    pub batch: Vec<f64>,
    pub r_first: Vec<f64>,
    pub r_own: Vec<f64>,
    pub overlap: Vec<f64>,
}

/// Paper Fig. 4: panels in row-major order, two per row (θ1 left, θ0 right).
#[derive(Debug, Clone, PartialEq)]
pub struct OverlapFigure {
    pub subtitle: String,
    pub top_percent: f64,
    pub panels: Vec<OverlapPanel>,
}

/// The mean over t ≥ 2 (batch 1 is trivially r_first = r_own, overlap 1), to 3 decimals.
fn mean_after_first(values: &[f64]) -> String {
    let tail: Vec<f64> = values
        .iter()
        .skip(1)
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if tail.is_empty() {
        "n/a".into()
    } else {
        format!("{:.3}", tail.iter().sum::<f64>() / tail.len() as f64)
    }
}

fn percent_label(p: f64) -> String {
    if p >= 1.0 && p.fract() == 0.0 {
        format!("{p:.0} %")
    } else {
        format!("{p} %")
    }
}

/// Tick labels for gradient values such as 3.2e-5.
fn sci(v: &f64) -> String {
    if *v == 0.0 {
        "0".into()
    } else {
        format!("{v:.1e}")
    }
}

/// Tick labels for log-scale counts: 1, 10, 100, 1000, 1e4 ...
fn count_label(v: &f64) -> String {
    if *v < 1.0 {
        String::new()
    } else if *v < 1e4 {
        format!("{v:.0}")
    } else {
        format!("{v:.0e}")
    }
}

fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
) -> Result<DrawingArea<DB, Shift>>
where
    DB::ErrorType: 'static,
{
    let area = root.titled(title, (FONT, 28)).map_err(drawing_err)?;
    let (w, _) = area.dim_in_pixel();
    area.draw(&Text::new(
        subtitle.to_string(),
        (w as i32 / 2, 0),
        TextStyle::from((FONT, 17).into_font())
            .color(&RGBColor(80, 80, 80))
            .pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(drawing_err)?;
    Ok(area.margin(26, 0, 0, 0))
}

/// Panel (a): both models on the same bins, linear counts.
fn draw_shared<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    hists: &[Histogram; 2],
    tensor: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let max = hists
        .iter()
        .map(Histogram::max_count)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("(a) {tensor}: both on the same bins"), (FONT, 19))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(hists[0].lo..hists[0].hi, 0f64..max * 1.08)
        .map_err(drawing_err)?;
    chart
        .configure_mesh()
        .x_desc("gradient value")
        .y_desc("count")
        .x_labels(6)
        .x_label_formatter(&sci)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(drawing_err)?;
    // Translucent fills (θ0 under θ1), then solid outlines (which carry the legend, θ1 first).
    for m in [1usize, 0] {
        let colour = MODEL_COLOURS[m];
        chart
            .draw_series(hists[m].edges().filter(|e| e.2 > 0).map(|(x0, x1, c)| {
                Rectangle::new([(x0, 0.0), (x1, c as f64)], colour.mix(0.35).filled())
            }))
            .map_err(drawing_err)?;
    }
    for m in [0usize, 1] {
        let colour = MODEL_COLOURS[m];
        let outline: Vec<(f64, f64)> = hists[m]
            .edges()
            .flat_map(|(x0, x1, c)| [(x0, c as f64), (x1, c as f64)])
            .collect();
        chart
            .draw_series(LineSeries::new(outline, colour.stroke_width(2)))
            .map_err(drawing_err)?
            .label(MODEL_LABELS[m])
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], colour.filled()));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 0.85, 15)?;
    Ok(())
}

/// Panels (b) and (c): one model on its own range, log counts.
fn draw_own<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    hist: &Histogram,
    model: usize,
    caption: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let max = hist.max_count().max(1) as f64;
    let floor = 0.7;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 19))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(hist.lo..hist.hi, (floor..max * 2.0).log_scale())
        .map_err(drawing_err)?;
    chart
        .configure_mesh()
        .x_desc("gradient value")
        .y_desc("count (log scale)")
        .x_labels(6)
        .x_label_formatter(&sci)
        .y_label_formatter(&count_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(drawing_err)?;
    let colour = MODEL_COLOURS[model];
    chart
        .draw_series(hist.edges().filter(|e| e.2 > 0).map(|(x0, x1, c)| {
            Rectangle::new([(x0, floor), (x1, c as f64)], colour.mix(0.75).filled())
        }))
        .map_err(drawing_err)?
        .label(format!(
            "{} (max |g| = {})",
            MODEL_LABELS[model],
            sci(&hist.hi)
        ))
        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], colour.filled()));
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 0.85, 15)?;
    Ok(())
}

/// Panel (d): the top-x% curves on a log x axis.
fn draw_topx<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    curves: &[TopxLine],
    top_percent: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let x_min = curves
        .iter()
        .flat_map(|c| c.x_percent.iter().copied())
        .fold(f64::INFINITY, f64::min)
        .min(0.01);
    let mut chart = ChartBuilder::on(area)
        .caption("(d) share of ‖g‖₂ held by the top x % of |g|", (FONT, 19))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d((x_min..100f64).log_scale(), 0f64..1.02)
        .map_err(drawing_err)?;
    chart
        .configure_mesh()
        .x_desc("top x % of components (log scale)")
        .y_desc("‖g_top‖₂ / ‖g‖₂")
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(BLACK.mix(0.03))
        .draw()
        .map_err(drawing_err)?;
    // The marked x (1 % by default).
    chart
        .draw_series(DashedLineSeries::new(
            [(top_percent, 0.0), (top_percent, 1.02)],
            6,
            5,
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(drawing_err)?;
    for curve in curves {
        let colour = MODEL_COLOURS[curve.model];
        let points: Vec<(f64, f64)> = curve
            .x_percent
            .iter()
            .zip(&curve.norm_ratio)
            .filter(|(_, y)| y.is_finite())
            .map(|(&x, &y)| (x, y))
            .collect();
        let dashed = curve.dashed;
        let series = if dashed {
            chart.draw_series(DashedLineSeries::new(points, 10, 6, colour.stroke_width(3)))
        } else {
            chart.draw_series(LineSeries::new(points, colour.stroke_width(3)))
        };
        series
            .map_err(drawing_err)?
            .label(curve.label.clone())
            .legend(move |(x, y)| {
                if dashed {
                    PathElement::new(vec![(x, y), (x + 8, y)], colour.stroke_width(3))
                } else {
                    PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(3))
                }
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 0.9, 14)?;
    Ok(())
}

impl Figure for GradientFigure {
    fn size(&self) -> (u32, u32) {
        (1500, 1100)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let area = titled(
            root,
            "Gradient quasi-sparsity: pretrained θ1 vs from-scratch θ0 (SIFT paper Fig. 3)",
            &self.subtitle,
        )?;
        let panels = area.split_evenly((2, 2));
        draw_shared(&panels[0], &self.shared, &self.tensor)?;
        draw_own(
            &panels[1],
            &self.own[0],
            0,
            "(b) θ1 pretrained on its own range",
        )?;
        draw_own(
            &panels[2],
            &self.own[1],
            1,
            "(c) θ0 from scratch on its own range",
        )?;
        draw_topx(&panels[3], &self.curves, self.top_percent)?;
        Ok(())
    }
}

impl Figure for OverlapFigure {
    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(2).max(1) as u32;
        (1500, 150 + 470 * rows)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let p = percent_label(self.top_percent);
        let area = titled(
            root,
            &format!("First-batch top-{p} mask vs each batch's own (SIFT paper Fig. 4)"),
            &self.subtitle,
        )?;
        let rows = self.panels.len().div_ceil(2).max(1);
        let areas = area.split_evenly((rows, 2));
        for (panel, area) in self.panels.iter().zip(&areas) {
            let x_max = panel.batch.iter().copied().fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FONT, 19))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(70)
                .build_cartesian_2d(1f64..x_max, 0f64..1.02)
                .map_err(drawing_err)?;
            chart
                .configure_mesh()
                .x_desc("batch t")
                .y_desc("‖g_t[M]‖₂ / ‖g_t‖₂")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.1}"))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .light_line_style(BLACK.mix(0.03))
                .draw()
                .map_err(drawing_err)?;
            let colour = MODEL_COLOURS[panel.model];
            let series = |ys: &[f64]| -> Vec<(f64, f64)> {
                panel
                    .batch
                    .iter()
                    .zip(ys)
                    .filter(|(_, y)| y.is_finite())
                    .map(|(&x, &y)| (x, y))
                    .collect()
            };
            chart
                .draw_series(LineSeries::new(
                    series(&panel.r_own),
                    colour.stroke_width(3),
                ))
                .map_err(drawing_err)?
                .label(format!(
                    "r_own: batch t's own top {p} (mean t≥2: {})",
                    mean_after_first(&panel.r_own)
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(3))
                });
            let red = RGBColor(200, 30, 30);
            chart
                .draw_series(LineSeries::new(series(&panel.r_first), red.stroke_width(3)))
                .map_err(drawing_err)?
                .label(format!(
                    "r_first: batch 1's top {p} (mean t≥2: {})",
                    mean_after_first(&panel.r_first)
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], red.stroke_width(3))
                });
            let grey = RGBColor(110, 110, 110);
            chart
                .draw_series(DashedLineSeries::new(
                    series(&panel.overlap),
                    8,
                    5,
                    grey.stroke_width(2),
                ))
                .map_err(drawing_err)?
                .label(format!(
                    "overlap |M_1 ∩ M_t| / |M_t| (mean t≥2: {})",
                    mean_after_first(&panel.overlap)
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], grey.stroke_width(2))
                });
            draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 0.9, 14)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(lo: f64, hi: f64, counts: Vec<u64>) -> Histogram {
        Histogram { lo, hi, counts }
    }

    /// Both figures draw on a bitmap without error, including empty bins and NaN ratios.
    #[test]
    fn figures_draw_on_a_bitmap() {
        super::super::register_fonts();
        let curve = |model, dashed| TopxLine {
            label: format!("model {model}"),
            model,
            dashed,
            x_percent: vec![0.01, 0.1, 1.0, 10.0, 100.0],
            norm_ratio: vec![0.1, 0.3, f64::NAN, 0.9, 1.0],
        };
        let fig3 = GradientFigure {
            subtitle: "test".into(),
            tensor: "t".into(),
            shared: [
                hist(-1.0, 1.0, vec![0, 5, 100, 3]),
                hist(-1.0, 1.0, vec![0, 0, 50, 0]),
            ],
            own: [
                hist(-1.0, 1.0, vec![1, 5, 100, 3]),
                hist(-1e-3, 1e-3, vec![0, 0, 0, 0]),
            ],
            curves: vec![curve(0, false), curve(1, true)],
            top_percent: 1.0,
        };
        let panel = |model| OverlapPanel {
            title: "p".into(),
            model,
            batch: vec![1.0, 2.0, 3.0],
            r_first: vec![0.5, 0.4, 0.3],
            r_own: vec![0.5, 0.5, 0.6],
            overlap: vec![1.0, 0.2, f64::NAN],
        };
        let fig4 = OverlapFigure {
            subtitle: "test".into(),
            top_percent: 1.0,
            panels: vec![panel(0), panel(1)],
        };
        let mut buffer = vec![255u8; 1500 * 1100 * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, fig3.size()).into_drawing_area();
            fig3.draw(&root).unwrap();
            root.present().unwrap();
        }
        let (w, h) = fig4.size();
        let mut buffer = vec![255u8; (w * h * 3) as usize];
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        fig4.draw(&root).unwrap();
        root.present().unwrap();
    }
}
