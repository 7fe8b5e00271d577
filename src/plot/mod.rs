//! Plotting, in one place. Every figure is a [`Figure`]: it draws onto any plotters backend, and
//! [`save`] writes it as both PNG and SVG. Text uses the DejaVu Sans font shipped in `assets/`,
//! so figures render the same on machines with no system fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

pub mod grad_stats;
pub mod landscape;

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

/// Converts a plotters drawing error into anyhow, for `?` inside [`Figure::draw`].
pub fn drawing_err<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
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
}
