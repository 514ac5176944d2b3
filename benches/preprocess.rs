//! Images per second of siam-data's parallel decode + CLIP preprocessing (224, eval) against
//! PIL + torchvision through a PyTorch DataLoader, on the same Flickr-sized JPEGs.
//!
//! Run: `cargo bench --bench preprocess` (env: `SIAM_PYTHON` = a python with torch==2.9.0,
//! torchvision==0.24.0, pillow; `BENCH_IMAGES` = number of images, default 200;
//! `BENCH_THREADS` = threads / workers, default 2). It writes 500x375 JPEGs (quality 90,
//! photo-like: smooth gradients, blurred blobs and sensor-like noise; deterministic) into a
//! temporary folder, times the best of 3 passes on each side after one warm-up pass, prints a
//! markdown table and writes it to `benches/results/preprocess.md`.

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use siam_data::dataset::{Dataset, OpenOptions};
use siam_data::pipeline::{Loader, LoaderOptions};
use siam_data::preprocess::Preprocessor;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const W: u32 = 500;
const H: u32 = 375;
const SIZE: u32 = 224;
const BATCH: usize = 32;
const REPEATS: usize = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A photo-like image: a sky-to-ground gradient, a few soft coloured blobs, fine texture.
fn photo(rng: &mut StdRng) -> RgbImage {
    let top: [f32; 3] = [
        rng.random_range(80.0..200.0),
        rng.random_range(100.0..220.0),
        rng.random_range(150.0..255.0),
    ];
    let bottom: [f32; 3] = [
        rng.random_range(30.0..140.0),
        rng.random_range(40.0..140.0),
        rng.random_range(10.0..90.0),
    ];
    let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..rng.random_range(3..8))
        .map(|_| {
            (
                rng.random_range(0.0..W as f32),
                rng.random_range(0.0..H as f32),
                rng.random_range(20.0..120.0),
                [
                    rng.random_range(0.0..255.0),
                    rng.random_range(0.0..255.0),
                    rng.random_range(0.0..255.0),
                ],
            )
        })
        .collect();
    let (fx, fy) = (
        rng.random_range(0.02..0.2f32),
        rng.random_range(0.02..0.2f32),
    );
    RgbImage::from_fn(W, H, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let t = yf / H as f32;
        let mut p = [0f32; 3];
        for c in 0..3 {
            p[c] = top[c] * (1.0 - t) + bottom[c] * t;
        }
        for (bx, by, r, col) in &blobs {
            let d2 = ((xf - bx).powi(2) + (yf - by).powi(2)) / (r * r);
            let a = (-d2).exp();
            for c in 0..3 {
                p[c] = p[c] * (1.0 - a) + col[c] * a;
            }
        }
        let texture = 12.0 * ((xf * fx).sin() * (yf * fy).cos());
        let noise: f32 = rng.random_range(-18.0..18.0);
        Rgb([0, 1, 2].map(|c| (p[c] + texture + noise).clamp(0.0, 255.0) as u8))
    })
}

fn write_images(dir: &Path, n: usize) {
    let folder = dir.join("photos");
    std::fs::create_dir_all(&folder).expect("create bench folder");
    let mut rng = StdRng::seed_from_u64(2024);
    for i in 0..n {
        let img = photo(&mut rng);
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&img)
            .expect("encode JPEG");
        std::fs::write(folder.join(format!("{i:04}.jpg")), bytes).expect("write JPEG");
    }
}

fn rust_rate(dir: &Path, threads: usize) -> (f64, usize) {
    let ds = Arc::new(Dataset::open(dir, &OpenOptions::default()).expect("open bench folder"));
    let pre = Preprocessor::clip(SIZE);
    let batches: Vec<Vec<usize>> = (0..ds.len())
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[usize]>::to_vec)
        .collect();
    let pass = || {
        let opts = LoaderOptions {
            threads,
            prefetch: 2 * threads,
            ..LoaderOptions::default()
        };
        let mut n = 0;
        for b in Loader::new(ds.clone(), pre.clone(), batches.clone(), opts) {
            let b = b.expect("bench images decode");
            assert!(b.skipped.is_empty());
            n += b.len();
        }
        n
    };
    let n = pass();
    let best = (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(pass(), n);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (n as f64 / best, n)
}

fn python_rate(dir: &Path, threads: usize) -> Result<(f64, String), String> {
    let py = std::env::var("SIAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/preprocess.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg(dir)
        .args([
            "--size",
            &SIZE.to_string(),
            "--batch",
            &BATCH.to_string(),
            "--workers",
            &threads.to_string(),
            "--repeats",
            &REPEATS.to_string(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .map_err(|e| format!("cannot run {py}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{py} {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().ok_or("no output")?;
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("bad output {line:?}: {e}"))?;
    let rate = v["images_per_s"].as_f64().ok_or("no images_per_s")?;
    let versions = format!(
        "torch {}, Pillow {}",
        v["torch"].as_str().unwrap_or("?"),
        v["pillow"].as_str().unwrap_or("?")
    );
    Ok((rate, versions))
}

fn main() {
    let n = env_usize("BENCH_IMAGES", 200);
    let threads = env_usize("BENCH_THREADS", 2);
    let tmp = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    write_images(tmp.path(), n);
    let bytes: u64 = std::fs::read_dir(tmp.path().join("photos"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    eprintln!(
        "wrote {n} JPEGs {W}x{H} q90 ({:.0} KB each) in {:.1}s",
        bytes as f64 / n as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );

    let (rust1, _) = rust_rate(tmp.path(), 1);
    let (rust, count) = rust_rate(tmp.path(), threads);
    let py = python_rate(tmp.path(), threads);

    let mut md = String::new();
    md.push_str(&format!(
        "# Preprocessing throughput\n\n{count} JPEGs, {W}x{H}, quality 90 (~{:.0} KB each), decoded and CLIP-preprocessed \
         (shortest side to {SIZE} bicubic, center crop, normalise) into batches of {BATCH}; best of {REPEATS} passes after a warm-up pass, \
         files in the page cache.\n\n",
        bytes as f64 / n as f64 / 1024.0
    ));
    md.push_str("| pipeline | workers | images/s | ratio vs PyTorch |\n|---|---:|---:|---:|\n");
    match &py {
        Ok((p, versions)) => {
            md.push_str(&format!(
                "| siam-data Loader | {threads} | {rust:.1} | {:.2}x |\n",
                rust / p
            ));
            md.push_str(&format!(
                "| siam-data Loader | 1 | {rust1:.1} | {:.2}x |\n",
                rust1 / p
            ));
            md.push_str(&format!("| PyTorch DataLoader + PIL + torchvision ({versions}) | {threads} | {p:.1} | 1.00x |\n"));
        }
        Err(e) => {
            md.push_str(&format!("| siam-data Loader | {threads} | {rust:.1} | n/a |\n| siam-data Loader | 1 | {rust1:.1} | n/a |\n"));
            md.push_str(&format!(
                "\nPython reference not run: {}\n",
                e.lines().next().unwrap_or("")
            ));
        }
    }
    md.push_str(&format!(
        "\nMachine: {} logical CPUs, load average at the end {} (other processes share the CPUs: numbers are noisy, compare ratios). Command: `SIAM_PYTHON=/work/pyenv/bin/python cargo bench --bench preprocess`.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().map(str::to_string)).unwrap_or_else(|| "unknown".into())
    ));
    println!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/preprocess.md");
    if let Err(e) = std::fs::write(&out, &md) {
        eprintln!("could not write {}: {e}", out.display());
    }
}
