//! Paper Fig. 6: a task metric against the number of trainable parameters (log x), one line per
//! method with a band over seeds, and methods without a budget axis (head-only) as flat bands.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{drawing_err, Figure, FONT};

/// One method's line: x ascending, the mean and the band's ends at each x.
#[derive(Debug, Clone, PartialEq)]
pub struct BandLine {
    pub label: String,
    pub x: Vec<f64>,
    pub mean: Vec<f64>,
    pub lo: Vec<f64>,
    pub hi: Vec<f64>,
}

/// A method drawn across the whole x range (its value does not depend on the budget).
#[derive(Debug, Clone, PartialEq)]
pub struct FlatBand {
    pub label: String,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetFigure {
    pub title: String,
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<BandLine>,
    pub flats: Vec<FlatBand>,
}

/// Line colours, in the order methods appear.
pub use super::TAB10 as COLOURS;

impl BudgetFigure {
    /// The x range: a decade-aligned span around every point.
    fn x_range(&self) -> (f64, f64) {
        let xs: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.x.iter().copied())
            .filter(|x| *x > 0.0)
            .collect();
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return (1e2, 1e7);
        }
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf((hi.log10() + 1e-9).ceil()).max(10.0 * lo),
        )
    }

    fn y_range(&self) -> (f64, f64) {
        let ys: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.lo.iter().chain(&l.hi).copied())
            .chain(self.flats.iter().flat_map(|f| [f.lo, f.hi]))
            .filter(|y| y.is_finite())
            .collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return (0.0, 100.0);
        }
        let pad = ((hi - lo) * 0.1).max(1.0);
        ((lo - pad).max(0.0), (hi + pad).min(100.0))
    }
}

impl Figure for BudgetFigure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let area = root.titled(&self.title, (FONT, 26)).map_err(drawing_err)?;
        let (x0, x1) = self.x_range();
        let (y0, y1) = self.y_range();
        let mut chart = ChartBuilder::on(&area)
            .caption(&self.subtitle, (FONT, 15))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(drawing_err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&|v| {
                if *v >= 1e6 {
                    format!("{}M", v / 1e6)
                } else if *v >= 1e3 {
                    format!("{}K", v / 1e3)
                } else {
                    format!("{v}")
                }
            })
            .y_label_formatter(&|v| {
                if y1 - y0 < 10.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                }
            })
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(BLACK.mix(0.04))
            .draw()
            .map_err(drawing_err)?;
        for (i, flat) in self.flats.iter().enumerate() {
            let colour = COLOURS[(self.lines.len() + i) % COLOURS.len()];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, flat.lo), (x1, flat.hi)],
                    colour.mix(0.15).filled(),
                )))
                .map_err(drawing_err)?;
            chart
                .draw_series(DashedLineSeries::new(
                    [(x0, flat.mean), (x1, flat.mean)],
                    10,
                    6,
                    colour.stroke_width(3),
                ))
                .map_err(drawing_err)?
                .label(flat.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], colour.stroke_width(3))
                });
        }
        for (i, line) in self.lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            // The band: the upper ends left to right, then the lower ends back.
            let mut band: Vec<(f64, f64)> = line
                .x
                .iter()
                .copied()
                .zip(line.hi.iter().copied())
                .collect();
            band.extend(line.x.iter().copied().zip(line.lo.iter().copied()).rev());
            if line.x.len() >= 2 {
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        band,
                        colour.mix(0.18).filled(),
                    )))
                    .map_err(drawing_err)?;
            }
            let points: Vec<(f64, f64)> = line
                .x
                .iter()
                .copied()
                .zip(line.mean.iter().copied())
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(3)))
                .map_err(drawing_err)?
                .label(line.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(3))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 5, colour.filled())))
                .map_err(drawing_err)?;
            // Error bars carry the band where a line has a single point.
            chart
                .draw_series(line.x.iter().enumerate().map(|(j, &x)| {
                    PathElement::new(
                        vec![(x, line.lo[j]), (x, line.hi[j])],
                        colour.stroke_width(2),
                    )
                }))
                .map_err(drawing_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 15))
            .draw()
            .map_err(drawing_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{svg, to_svg};

    #[test]
    fn lines_go_through_their_means_on_a_log_axis() {
        let fig = BudgetFigure {
            title: "t".into(),
            subtitle: "s".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            lines: vec![BandLine {
                label: "SIFT".into(),
                x: vec![1e3, 1e4, 1e5],
                mean: vec![60.0, 65.0, 70.0],
                lo: vec![59.0, 64.0, 69.0],
                hi: vec![61.0, 66.0, 71.0],
            }],
            flats: vec![FlatBand {
                label: "head only".into(),
                mean: 62.0,
                lo: 61.0,
                hi: 63.0,
            }],
        };
        let text = to_svg(&fig).unwrap();
        // The mean line: three vertices, equally spaced in x (one decade apart on a log axis),
        // and equally spaced in y (5 points apart).
        let line = svg::elements(&text, "polyline")
            .into_iter()
            .find(|p| p.points().len() == 3)
            .expect("the mean line");
        let p = line.points();
        assert!(
            ((p[1].0 - p[0].0) - (p[2].0 - p[1].0)).abs() <= 1.0,
            "{p:?}"
        );
        assert!(
            ((p[1].1 - p[0].1) - (p[2].1 - p[1].1)).abs() <= 1.0,
            "{p:?}"
        );
        assert!(p[0].1 > p[2].1, "higher values are drawn higher: {p:?}");
        let labels: Vec<String> = svg::elements(&text, "text")
            .into_iter()
            .map(|t| t.text)
            .collect();
        assert!(labels.contains(&"SIFT".to_string()) && labels.contains(&"head only".to_string()));
        assert!(
            labels.iter().any(|l| l == "1K") && labels.iter().any(|l| l == "100K"),
            "{labels:?}"
        );
    }
}
