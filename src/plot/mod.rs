//! Plotting, in one place. Every figure is a [`Figure`]: it draws onto any plotters backend, and
//! [`save`] writes it as both PNG and SVG. Text uses the DejaVu Sans font shipped in `assets/`,
//! so figures render the same on machines with no system fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

pub mod budget;
pub mod grad_stats;
pub mod landscape;
pub mod sharpness;

/// The font family name figures use.
pub const FONT: &str = "sans-serif";

static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the shipped font under [`FONT`] (once per process).
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            // Only fails on an unparsable font, which include_bytes! rules out.
            let _ = plotters::style::register_font(FONT, style, FONT_BYTES);
        }
    });
}

/// Line colours for series in order (matplotlib's tab10).
pub const TAB10: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A figure that can draw itself on any backend.
pub trait Figure {
    /// Pixel size of the PNG (and the SVG's nominal size).
    fn size(&self) -> (u32, u32) {
        (900, 600)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `figure` to `stem.png` and `stem.svg`, returning both paths.
pub fn save(figure: &impl Figure, stem: &Path) -> Result<Vec<PathBuf>> {
    register_fonts();
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    {
        let root = BitMapBackend::new(&png, figure.size()).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow!("{}: {e}", png.display()))?;
        figure.draw(&root)?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, figure.size()).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow!("{}: {e}", svg.display()))?;
        figure.draw(&root)?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
    }
    Ok(vec![png, svg])
}

/// The area under a title and a subtitle (two stacked plotters titles), with their font sizes.
pub fn under_titles<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    (title, title_size): (&str, u32),
    (subtitle, subtitle_size): (&str, u32),
) -> Result<DrawingArea<DB, Shift>>
where
    DB::ErrorType: 'static,
{
    let area = root
        .titled(title, (FONT, title_size))
        .map_err(drawing_err)?;
    area.titled(subtitle, (FONT, subtitle_size))
        .map_err(drawing_err)
}

/// The series legend every figure draws: a white box with a grey border in a corner.
pub fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    background_alpha: f64,
    font_size: u32,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(background_alpha))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, font_size))
        .draw()
        .map_err(drawing_err)?;
    Ok(())
}

/// Converts a plotters drawing error into anyhow, for `?` inside [`Figure::draw`].
pub fn drawing_err<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// Reading back what a figure drew: the elements of the SVGs plotters writes (one element per
/// line, attributes in double quotes), for tests that check a figure's content.
pub mod svg {
    use std::collections::BTreeMap;

    /// One SVG element: its attributes and, for `<text>`, its text.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Element {
        pub attrs: BTreeMap<String, String>,
        pub text: String,
    }

    impl Element {
        pub fn attr(&self, name: &str) -> &str {
            self.attrs.get(name).map_or("", String::as_str)
        }

        /// A numeric attribute (NaN when absent or not a number).
        pub fn num(&self, name: &str) -> f64 {
            self.attr(name).parse().unwrap_or(f64::NAN)
        }

        /// The `points` of a polyline or polygon.
        pub fn points(&self) -> Vec<(f64, f64)> {
            self.attr("points")
                .split_whitespace()
                .filter_map(|p| {
                    let (x, y) = p.split_once(',')?;
                    Some((x.parse().ok()?, y.parse().ok()?))
                })
                .collect()
        }
    }

    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    }

    /// Every `<tag ...>` element of `svg`, in drawing order.
    pub fn elements(svg: &str, tag: &str) -> Vec<Element> {
        let open = format!("<{tag} ");
        let mut found = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find(&open) {
            let after = &rest[start + open.len()..];
            let Some(end) = after.find('>') else { break };
            let head = &after[..end];
            let mut attrs = BTreeMap::new();
            let mut h = head;
            while let Some(eq) = h.find("=\"") {
                let key = h[..eq].trim().to_string();
                let value_start = eq + 2;
                let Some(len) = h[value_start..].find('"') else {
                    break;
                };
                attrs.insert(key, unescape(&h[value_start..value_start + len]));
                h = &h[value_start + len + 1..];
            }
            let body = &after[end + 1..];
            let text = if head.ends_with('/') {
                String::new()
            } else {
                let close = format!("</{tag}>");
                body.find(&close)
                    .map_or(String::new(), |e| unescape(body[..e].trim()))
            };
            found.push(Element { attrs, text });
            rest = body;
        }
        found
    }
}

/// Draws `figure` into an SVG string (for tests and previews).
pub fn to_svg(figure: &impl Figure) -> Result<String> {
    register_fonts();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_err)?;
        figure.draw(&root)?;
        root.present().map_err(drawing_err)?;
    }
    Ok(out)
}

/// Draws `figure` into an RGB pixel buffer (row-major, 3 bytes a pixel), as the PNG holds it.
pub fn to_rgb(figure: &impl Figure) -> Result<Vec<u8>> {
    register_fonts();
    let (w, h) = figure.size();
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_err)?;
        figure.draw(&root)?;
        root.present().map_err(drawing_err)?;
    }
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text must render with the shipped font alone: a caption on a white canvas darkens pixels.
    #[test]
    fn shipped_font_renders_text() {
        register_fonts();
        let (w, h) = (200u32, 60u32);
        let mut buffer = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
            root.draw(&Text::new(
                "θ1 loss",
                (10, 10),
                (FONT, 30).into_font().color(&BLACK),
            ))
            .unwrap();
            root.present().unwrap();
        }
        let dark = buffer.chunks(3).filter(|p| p[0] < 128).count();
        assert!(
            dark > 100,
            "only {dark} dark pixels: the font did not render"
        );
    }

    #[test]
    fn svg_elements_read_back_attributes_and_text() {
        let svg = "<svg width=\"10\">\n<polyline fill=\"none\" points=\"1,2 3,4 \"/>\n<text x=\"5\" y=\"6\">\nθ0 &amp; θ1\n</text>\n</svg>\n";
        let lines = svg::elements(svg, "polyline");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].points(), vec![(1.0, 2.0), (3.0, 4.0)]);
        let texts = svg::elements(svg, "text");
        assert_eq!(
            (texts[0].num("x"), texts[0].text.as_str()),
            (5.0, "θ0 & θ1")
        );
        assert!(svg::elements(svg, "rect").is_empty());
    }
}
