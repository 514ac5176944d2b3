//! A synthetic demo set made in code: coloured shapes on plain backgrounds, each image with a
//! caption ("a small red circle on a gray background") and a label ("red circle").
//!
//! Deterministic for a seed (ChaCha12 via `rand::rngs::StdRng`). The label combines colour and
//! shape, two cues a tiny randomly initialised model can learn in minutes; size, background,
//! position, rotation, colour jitter and pixel noise vary within a label, and the caption names
//! them. Shapes are rasterised with 4 x 4 supersampling (anti-aliased edges). The set feeds
//! `siam train`'s embedded default and the tests; [`write_demo`] writes it to disk, split as
//! `siam train` splits it, as an image
//! folder plus a captions table, the formats a user brings.

use crate::dataset::{
    Dataset, DatasetBuilder, DatasetError, DatasetKind, ImageSource, OpenOptions, Result,
};
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f64::consts::PI;
use std::path::Path;
use std::sync::Arc;

/// Shapes the generator can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A disc.
    Circle,
    /// A square (rotated up to ±15°).
    Square,
    /// An equilateral triangle (rotated up to ±15°).
    Triangle,
    /// A five-pointed star.
    Star,
    /// A plus-shaped cross.
    Cross,
}

impl Shape {
    /// The word used in labels and captions.
    pub fn name(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
            Self::Star => "star",
            Self::Cross => "cross",
        }
    }
}

/// Named colours: (name, RGB).
pub const COLOURS: &[(&str, [u8; 3])] = &[
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 210, 40]),
    ("purple", [150, 60, 190]),
    ("orange", [245, 140, 30]),
];

/// Backgrounds: (name, RGB). Neutral, so they never read as a shape colour.
pub const BACKGROUNDS: &[(&str, [u8; 3])] = &[
    ("white", [240, 240, 240]),
    ("black", [25, 25, 25]),
    ("gray", [128, 128, 128]),
    ("beige", [225, 210, 180]),
];

/// What to generate.
#[derive(Debug, Clone)]
pub struct SyntheticConfig {
    /// Shapes; every (colour, shape) pair is one label.
    pub shapes: Vec<Shape>,
    /// Colour names from [`COLOURS`].
    pub colours: Vec<&'static str>,
    /// Images per label.
    pub n_per_class: usize,
    /// Side of the square images in pixels.
    pub image_size: u32,
    /// Seed of everything random (images and the split).
    pub seed: u64,
}

impl SyntheticConfig {
    /// The demo: red, green, blue, yellow x circle, square, triangle = 12 labels.
    pub fn demo(n_per_class: usize, image_size: u32, seed: u64) -> Self {
        Self {
            shapes: vec![Shape::Circle, Shape::Square, Shape::Triangle],
            colours: vec!["red", "green", "blue", "yellow"],
            n_per_class,
            image_size,
            seed,
        }
    }

    /// The labels in order: "red circle", "red square", …
    pub fn labels(&self) -> Vec<String> {
        self.colours
            .iter()
            .flat_map(|c| self.shapes.iter().map(move |s| format!("{c} {}", s.name())))
            .collect()
    }
}

/// One generated image with its description.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The pixels.
    pub image: RgbImage,
    /// "red circle".
    pub label: String,
    /// "a small red circle on a gray background".
    pub caption: String,
}

/// The demo set ([`SyntheticConfig::demo`]) as a [`Dataset`] of in-memory images with a
/// seeded 80/10/10 train/val/test split per label.
///
/// # Panics
/// If `n_per_class` or `image_size` is 0 (a programmer error).
pub fn demo(n_per_class: usize, image_size: u32, seed: u64) -> Dataset {
    generate(&SyntheticConfig::demo(n_per_class, image_size, seed))
}

/// Generates the set described by `cfg` (see [`demo`]).
///
/// # Panics
/// If `cfg` asks for no image, a zero image size, or an unknown colour name.
pub fn generate(cfg: &SyntheticConfig) -> Dataset {
    assert!(
        cfg.n_per_class > 0
            && cfg.image_size > 0
            && !cfg.shapes.is_empty()
            && !cfg.colours.is_empty(),
        "empty synthetic config"
    );
    let mut b = DatasetBuilder::new("synthetic", "", DatasetKind::Captions);
    for (i, s) in samples(cfg).into_iter().enumerate() {
        let label = b.label(&s.label);
        let text = b.text(&s.caption);
        let name = format!("synthetic/{}/{:04}.png", s.label.replace(' ', "_"), i);
        b.push(
            ImageSource::Rgb(Arc::new(s.image), name.clone()),
            vec![text],
            Some(label),
            None,
            name,
        );
    }
    let opts = OpenOptions {
        seed: cfg.seed,
        ..OpenOptions::default()
    };
    b.finish(Path::new("synthetic"), &opts)
        .expect("a non-empty synthetic set always builds")
}

/// The samples of `cfg`, label by label (`n_per_class` each).
pub fn samples(cfg: &SyntheticConfig) -> Vec<Sample> {
    let mut out = Vec::with_capacity(cfg.n_per_class * cfg.shapes.len() * cfg.colours.len());
    for (ci, colour) in cfg.colours.iter().enumerate() {
        let rgb = COLOURS
            .iter()
            .find(|(n, _)| n == colour)
            .unwrap_or_else(|| panic!("unknown colour {colour}"))
            .1;
        for (si, &shape) in cfg.shapes.iter().enumerate() {
            for j in 0..cfg.n_per_class {
                // One generator per image: any image can be regenerated alone.
                let key = ((ci as u64) << 48) ^ ((si as u64) << 32) ^ j as u64;
                let mut rng = StdRng::seed_from_u64(crate::dataset::splitmix64(
                    cfg.seed ^ crate::dataset::splitmix64(key),
                ));
                out.push(render(shape, colour, rgb, cfg.image_size, &mut rng));
            }
        }
    }
    out
}

fn render(shape: Shape, colour: &str, rgb: [u8; 3], size: u32, rng: &mut StdRng) -> Sample {
    let large = rng.random_bool(0.5);
    let (bg_name, bg) = BACKGROUNDS[rng.random_range(0..BACKGROUNDS.len())];
    let s = f64::from(size);
    let radius = s * if large {
        rng.random_range(0.30..0.38)
    } else {
        rng.random_range(0.15..0.21)
    };
    let margin = radius * 1.05;
    let cx = rng.random_range(margin..(s - margin).max(margin + 1e-9));
    let cy = rng.random_range(margin..(s - margin).max(margin + 1e-9));
    let angle = match shape {
        Shape::Circle => 0.0,
        _ => rng.random_range(-15.0f64..15.0).to_radians(),
    };
    let jitter =
        |c: u8, rng: &mut StdRng| (i32::from(c) + rng.random_range(-15..=15)).clamp(0, 255) as f64;
    let fg = [
        jitter(rgb[0], rng),
        jitter(rgb[1], rng),
        jitter(rgb[2], rng),
    ];
    let poly = polygon(shape);
    let (sin, cos) = angle.sin_cos();
    const SS: u32 = 4;
    let mut img = RgbImage::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let mut hits = 0u32;
            for sy in 0..SS {
                for sx in 0..SS {
                    let px = f64::from(x) + (f64::from(sx) + 0.5) / f64::from(SS) - cx;
                    let py = f64::from(y) + (f64::from(sy) + 0.5) / f64::from(SS) - cy;
                    // Shape coordinates: unit radius, y up, rotated by -angle.
                    let u = (cos * px + sin * py) / radius;
                    let v = -(-sin * px + cos * py) / radius;
                    if inside(shape, &poly, u, v) {
                        hits += 1;
                    }
                }
            }
            let a = f64::from(hits) / f64::from(SS * SS);
            let noise = f64::from(rng.random_range(-6i32..=6));
            let mut p = [0u8; 3];
            for c in 0..3 {
                p[c] = (a * fg[c] + (1.0 - a) * f64::from(bg[c]) + noise)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
            img.put_pixel(x, y, Rgb(p));
        }
    }
    let size_word = if large { "large" } else { "small" };
    Sample {
        image: img,
        label: format!("{colour} {}", shape.name()),
        caption: format!(
            "a {size_word} {colour} {} on a {bg_name} background",
            shape.name()
        ),
    }
}

/// Vertices (unit radius, y up) of the polygonal shapes.
fn polygon(shape: Shape) -> Vec<(f64, f64)> {
    let ring = |n: usize, r: &dyn Fn(usize) -> f64| -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| {
                let t = PI / 2.0 + 2.0 * PI * i as f64 / n as f64;
                (r(i) * t.cos(), r(i) * t.sin())
            })
            .collect()
    };
    match shape {
        Shape::Triangle => ring(3, &|_| 1.0),
        Shape::Star => ring(10, &|i| if i % 2 == 0 { 1.0 } else { 0.45 }),
        _ => Vec::new(),
    }
}

fn inside(shape: Shape, poly: &[(f64, f64)], u: f64, v: f64) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        Shape::Square => u.abs() <= 0.8 && v.abs() <= 0.8,
        Shape::Cross => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
        Shape::Triangle | Shape::Star => {
            // Even-odd rule.
            let mut inside = false;
            let n = poly.len();
            for i in 0..n {
                let (x1, y1) = poly[i];
                let (x2, y2) = poly[(i + 1) % n];
                if (y1 > v) != (y2 > v) && u < x1 + (v - y1) * (x2 - x1) / (y2 - y1) {
                    inside = !inside;
                }
            }
            inside
        }
    }
}

/// Writes the demo set to `dir` as `images/<split>/<label with _>/<nnnn>.png` plus
/// `captions.csv` (columns `image,text,label,split`, image paths relative to `dir`), each file
/// written to a temporary name and renamed. The split of every image is the one [`demo`] gives
/// it for the same arguments, so the images a `siam train` on the demo set held out (for the
/// same seed and size) land in `val/` and `test/`, apart from `train/`. Returns the number of
/// images written. Both `Dataset::open(dir/captions.csv)` and `Dataset::open(dir/images)` read
/// it back with these splits.
///
/// # Errors
/// [`DatasetError::Write`] naming the file that could not be written.
pub fn write_demo(dir: &Path, n_per_class: usize, image_size: u32, seed: u64) -> Result<usize> {
    let ds = demo(n_per_class, image_size, seed);
    let werr = |p: &Path, e: &dyn std::fmt::Display| DatasetError::Write {
        path: p.to_path_buf(),
        msg: e.to_string(),
    };
    let mut csv = String::from("image,text,label,split\n");
    let mut count = vec![0usize; ds.labels.len()];
    for (r, split) in ds.records.iter().zip(&ds.splits) {
        let (ImageSource::Rgb(image, _), Some(li)) = (&r.image, r.label) else {
            unreachable!("the demo set's images are labelled and in memory");
        };
        let label = &ds.labels[li];
        let caption = &ds.texts[r.texts[0]];
        let rel = format!(
            "images/{split}/{}/{:04}.png",
            label.replace(' ', "_"),
            count[li]
        );
        count[li] += 1;
        let path = dir.join(&rel);
        let parent = path.parent().expect("has a parent");
        std::fs::create_dir_all(parent).map_err(|e| werr(parent, &e))?;
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| werr(&path, &e))?;
        write_atomic(&path, &png)?;
        csv.push_str(&format!(
            "{},{},{},{split}\n",
            csv_field(&rel),
            csv_field(caption),
            csv_field(label)
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| werr(dir, &e))?;
    write_atomic(&dir.join("captions.csv"), csv.as_bytes())?;
    Ok(count.iter().sum())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(|e| DatasetError::Write {
        path: tmp.clone(),
        msg: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| DatasetError::Write {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_deterministic_and_labelled() {
        let a = demo(3, 32, 5);
        let b = demo(3, 32, 5);
        assert_eq!(a.len(), 36);
        assert_eq!(a.labels.len(), 12);
        assert_eq!(a.texts, b.texts);
        for (ra, rb) in a.records.iter().zip(&b.records) {
            match (&ra.image, &rb.image) {
                (ImageSource::Rgb(x, _), ImageSource::Rgb(y, _)) => {
                    assert_eq!(x.as_raw(), y.as_raw())
                }
                _ => panic!("synthetic images are in memory"),
            }
        }
        let c = demo(3, 32, 6);
        assert_ne!(a.texts, c.texts, "another seed gives other captions");
        let cap = &a.texts[a.records[0].texts[0]];
        assert!(
            cap.starts_with("a small red circle on a ")
                || cap.starts_with("a large red circle on a "),
            "{cap}"
        );
        assert_eq!(a.labels[a.records[0].label.unwrap()], "red circle");
    }

    #[test]
    fn shape_colour_is_where_the_shape_is() {
        let cfg = SyntheticConfig {
            shapes: vec![Shape::Circle],
            colours: vec!["blue"],
            n_per_class: 4,
            image_size: 48,
            seed: 1,
        };
        for s in samples(&cfg) {
            // The most blue pixel is the shape's blue, not a neutral background.
            let best = s
                .image
                .pixels()
                .max_by_key(|p| i32::from(p[2]) - i32::from(p[0]))
                .unwrap();
            assert!(best[2] > 150 && best[0] < 100, "{best:?}");
        }
    }

    #[test]
    fn polygons_contain_their_centre_and_not_far_points() {
        for shape in [
            Shape::Circle,
            Shape::Square,
            Shape::Triangle,
            Shape::Star,
            Shape::Cross,
        ] {
            let poly = polygon(shape);
            assert!(inside(shape, &poly, 0.0, 0.0), "{shape:?}");
            assert!(!inside(shape, &poly, 1.1, 1.1), "{shape:?}");
        }
        // The cross has no corner; the square has.
        assert!(inside(Shape::Square, &[], 0.7, 0.7));
        assert!(!inside(Shape::Cross, &[], 0.7, 0.7));
    }
}
