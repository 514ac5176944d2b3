//! PNG line charts: recall@k curves of one or more models, and generic curves such as training
//! losses.
//!
//! Drawn with `plotters` into an in-memory RGB buffer, encoded as PNG and written atomically
//! ([`crate::io::atomic_write_bytes`]). Text uses DejaVu Sans Mono embedded in the binary
//! (`src/eval/fonts/`, Bitstream Vera licence beside it) through plotters' `ab_glyph` backend, so
//! plots render on a machine without fontconfig or any system font.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use super::retrieval::RetrievalReport;
use super::{EvalError, Result};

const FONT: &str = "sans-serif";
const WIDTH: u32 = 960;
const HEIGHT: u32 = 640;

fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("fonts/DejaVuSansMono.ttf"),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the embedded font could not be parsed".into())
    }
}

/// Draws `series` (name, points) as lines on one chart and writes it to `path` as a PNG.
///
/// Axes span the data (the y axis starts at 0 when all values are non-negative); each series gets
/// a colour from a fixed palette and an entry in the legend. Non-finite points are skipped.
pub fn line_chart(
    series: &[(String, Vec<(f32, f32)>)],
    title: &str,
    x_label: &str,
    y_label: &str,
    path: &Path,
) -> Result<()> {
    let fail = |why: String| EvalError::Plot {
        path: path.to_path_buf(),
        why,
    };
    register_font().map_err(fail)?;
    let points = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    if points().next().is_none() {
        return Err(fail("no finite points to draw".into()));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
    for &(x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if y0 >= 0.0 {
        y0 = 0.0;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| fail(e.to_string());
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..(y1 + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let pts: Vec<(f32, f32)> = pts
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&buf, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
        .map_err(|e| fail(e.to_string()))?;
    // Tagged `Software: siam`, so a later run recognises the chart as its own to replace.
    crate::output::write_file(path, crate::output::OutputKind::Plot, &png)
        .map_err(|e| fail(e.to_string()))
}

use image::ImageEncoder;

/// Recall@k curves (k = 1..=`max_k`) of every named report, both directions, on one chart:
/// e.g. `[("CLIP", &before), ("fine-tuned", &after)]` for `siam eval --compare`.
pub fn recall_curves(
    reports: &[(&str, &RetrievalReport)],
    max_k: usize,
    path: &Path,
) -> Result<()> {
    let mut series = Vec::new();
    for (name, r) in reports {
        for (dir, d) in [
            ("image->text", &r.image_to_text),
            ("text->image", &r.text_to_image),
        ] {
            if d.ranks.is_empty() {
                continue;
            }
            let pts = d
                .recall_curve(max_k)
                .into_iter()
                .map(|(k, v)| (k as f32, v as f32))
                .collect();
            series.push((format!("{name} {dir}"), pts));
        }
    }
    line_chart(&series, "Recall@k", "k", "recall@k", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_writes_a_png_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let s = vec![
            (
                "train".to_string(),
                (0..50)
                    .map(|i| (i as f32, 1.0 / (1.0 + i as f32)))
                    .collect(),
            ),
            (
                "val".to_string(),
                vec![(0.0, 0.9), (49.0, f32::NAN), (25.0, 0.2)],
            ),
        ];
        line_chart(&s, "Loss", "step", "loss", &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        // Not blank: text and lines put non-white pixels down.
        let dark = img
            .pixels()
            .filter(|px| px.0.iter().all(|&c| c < 128))
            .count();
        assert!(dark > 500, "{dark} dark pixels");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(line_chart(&[], "t", "x", "y", &p).is_err());
    }
}
