//! CLIP tower throughput, siam vs PyTorch 2.9 eager (transformers `CLIPModel`, 2 threads) in the
//! same run, plus the peak memory of loading a ViT-B/32-sized checkpoint.
//!
//! `cargo bench --bench towers` (add `--features tch` for the libtorch column). Random weights
//! in ViT-B/32's real shapes: the image tower on one batch of 224 px images, the text tower on
//! one batch of texts at each length (siam encodes a batch only up to its longest text, so a
//! batch of short label texts costs what its length costs; PyTorch pads to whatever it is given,
//! 77 in CLIP's usual pipeline).
//!
//! Environment: `SIAM_PYTHON` (a Python with torch==2.9.0, transformers, open_clip_torch),
//! `SIAM_BENCH_IMAGE_BATCH` (32), `SIAM_BENCH_TEXT_BATCH` (256), `SIAM_BENCH_LENGTHS` (16,77),
//! `SIAM_BENCH_RUNS` (3, median reported), `SIAM_BENCH_SKIP_MEMORY=1` to skip the memory part.
//!
//! Memory: Python writes a random open_clip ViT-B/32 state dict (fp32, safetensors and pickle)
//! to a temp folder; this binary re-runs itself with `--peak-load FILE` for each, and the child
//! reports its peak resident set (`VmHWM` of `/proc/self/status`) after `load_model`.

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use siam::clip::config::ClipConfig;
use siam::clip::import::load_model;
use siam::clip::model::Clip;
use std::process::Command;
use std::time::Instant;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn proc_status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Child mode: load one checkpoint and report the peak RSS.
fn peak_load(path: &str) {
    let before = proc_status_kb("VmHWM:");
    let t = Instant::now();
    let m = load_model(
        std::path::Path::new(path),
        Some("ViT-B-32-quickgelu"),
        &Device::flex(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "file_bytes": size,
            "peak_kb": proc_status_kb("VmHWM:"),
            "rss_before_kb": before,
            "applied": m.report.applied,
            "secs": secs,
        })
    );
}

struct Row {
    name: String,
    secs: Vec<Option<f64>>,
    items: usize,
}

#[allow(deprecated, unused_mut)]
fn devices() -> Vec<(&'static str, Device)> {
    let mut v = vec![("flex", Device::flex())];
    #[cfg(feature = "tch")]
    v.push(("tch", Device::libtorch()));
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--peak-load") {
        peak_load(&args[i + 1]);
        return;
    }
    let image_batch = env_usize("SIAM_BENCH_IMAGE_BATCH", 32);
    let text_batch = env_usize("SIAM_BENCH_TEXT_BATCH", 256);
    let runs = env_usize("SIAM_BENCH_RUNS", 3);
    let lengths: Vec<usize> = std::env::var("SIAM_BENCH_LENGTHS")
        .unwrap_or_else(|_| "16,77".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIAM_BENCH_LENGTHS: comma-separated integers")
        })
        .collect();
    let python = std::env::var("SIAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python/towers.py");

    // PyTorch first, alone on the machine.
    let lengths_arg = lengths
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(&python)
        .args([script, "--threads", "2", "--runs", &runs.to_string()])
        .args([
            "--image-batch",
            &image_batch.to_string(),
            "--text-batch",
            &text_batch.to_string(),
        ])
        .args(["--lengths", &lengths_arg])
        .output();
    let torch: Option<serde_json::Value> = match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            eprintln!(
                "python reference failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("could not run {python}: {e}");
            None
        }
    };
    let torch_image = torch.as_ref().and_then(|j| j["image_s"].as_f64());
    let torch_text = |l: usize| {
        torch
            .as_ref()
            .and_then(|j| j["text_s"][l.to_string()].as_f64())
    };

    let cfg = ClipConfig::vit_b_32();
    let devs = devices();
    let mut rows = vec![Row {
        name: format!("image tower, batch {image_batch}, 224 px"),
        secs: vec![torch_image],
        items: image_batch,
    }];
    for &l in &lengths {
        rows.push(Row {
            name: format!("text tower, batch {text_batch}, length {l}"),
            secs: vec![torch_text(l)],
            items: text_batch,
        });
    }
    for (name, device) in &devs {
        eprintln!("timing {name} ...");
        let clip = Clip::new(&cfg, device);
        let px = Tensor::<4>::random(
            [image_batch, 3, 224, 224],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        rows[0].secs.push(Some(timed(runs, || {
            let _ = clip.encode_image(px.clone()).into_data();
        })));
        for (i, &l) in lengths.iter().enumerate() {
            let mut ids = vec![0i64; text_batch * l];
            for r in 0..text_batch {
                for c in 0..l {
                    ids[r * l + c] = match c {
                        0 => 49406,
                        c if c == l - 1 => 49407,
                        c => ((r * 7919 + c * 104729) % 49000 + 1) as i64,
                    };
                }
            }
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [text_batch, l]), device);
            let lens = vec![l; text_batch];
            rows[1 + i].secs.push(Some(timed(runs, || {
                let _ = clip.encode_text(ids.clone(), &lens).into_data();
            })));
        }
    }

    let mut header = "| workload | PyTorch 2.9 eager |".to_string();
    let mut sep = "|---|---|".to_string();
    for (name, _) in &devs {
        header.push_str(&format!(" siam {name} | {name} / PyTorch |"));
        sep.push_str("---|---|");
    }
    println!("\n{header}\n{sep}");
    let fmt = |s: Option<f64>, items: usize| match s {
        Some(s) => format!("{s:.2} s ({:.1}/s)", items as f64 / s),
        None => "n/a".into(),
    };
    for r in &rows {
        let mut line = format!("| {} | {} |", r.name, fmt(r.secs[0], r.items));
        for s in &r.secs[1..] {
            let ratio = match (r.secs[0], s) {
                (Some(t), Some(s)) => format!("{:.2}x", t / s),
                _ => "n/a".into(),
            };
            line.push_str(&format!(" {} | {} |", fmt(*s, r.items), ratio));
        }
        println!("{line}");
    }
    println!("\nRatios are throughput siam / PyTorch (higher is better); medians of {runs} runs after a warm-up.");
    if let (Some(t77), Some(s16)) = (
        torch_text(77),
        rows.get(1).and_then(|r| r.secs.get(1).copied().flatten()),
    ) {
        if lengths.first() == Some(&16) {
            println!(
                "Label texts: PyTorch padded to 77 takes {t77:.2} s for {text_batch} texts; siam flex at their real length 16 takes {s16:.2} s ({:.1}x).",
                t77 / s16
            );
        }
    }

    if std::env::var("SIAM_BENCH_SKIP_MEMORY").as_deref() == Ok("1") {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("siam-towers-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let made = Command::new(&python)
        .args([script, "--make-checkpoint", tmp.to_str().unwrap()])
        .output();
    match made {
        Ok(o) if o.status.success() => {
            println!("\n| ViT-B/32 checkpoint (fp32, open_clip layout) | file | peak RSS while loading | peak / file | load time |\n|---|---|---|---|---|");
            let exe = std::env::current_exe().expect("own path");
            for file in ["vit_b_32.safetensors", "vit_b_32.pt"] {
                let p = tmp.join(file);
                let o = Command::new(&exe)
                    .args(["--peak-load", p.to_str().unwrap()])
                    .output()
                    .expect("child");
                let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
                    panic!("child failed: {}", String::from_utf8_lossy(&o.stderr))
                });
                let size = j["file_bytes"].as_f64().unwrap_or(0.0);
                let peak = j["peak_kb"].as_f64().unwrap_or(0.0) * 1024.0;
                println!(
                    "| {file} | {:.0} MB | {:.0} MB | {:.2}x | {:.2} s |",
                    size / 1e6,
                    peak / 1e6,
                    peak / size,
                    j["secs"].as_f64().unwrap_or(0.0)
                );
            }
        }
        Ok(o) => eprintln!(
            "checkpoint generation failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("could not run {python}: {e}"),
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
