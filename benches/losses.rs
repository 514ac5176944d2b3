//! Loss + mining, forward and backward, siam-losses vs pytorch-metric-learning (torch CPU,
//! 2 threads) in the same run. `cargo bench --bench losses`; set `SIAM_PYTHON` to a Python
//! with torch==2.9.0 and pytorch-metric-learning==2.9.0, `SIAM_BENCH_SIZES` (default
//! `256,1024,4096`) and `SIAM_BENCH_DIM` (default 512) to change the sizes.
//!
//! Embeddings are N(0, 1), labels `i / 4` (P·K batches, K = 4), cosine similarity; every
//! timing covers mining, the loss, the backward pass and reading the gradient.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use siam_losses::{
    ContrastiveLoss, Distance, Loss, Miner, MinerKind, MultiSimilarityLoss, PairwiseLoss,
    Positives, TripletKind, TripletLoss,
};

fn configs() -> Vec<(&'static str, Loss, Miner)> {
    let cos = Distance::Cosine;
    let triplet = Loss::Triplet(TripletLoss::new(cos, 0.2));
    vec![
        (
            "triplet + batch-hard",
            triplet,
            Miner::new(MinerKind::BatchHard),
        ),
        (
            "triplet + semihard miner",
            triplet,
            Miner::new(MinerKind::TripletMargin {
                margin: 0.2,
                kind: TripletKind::SemiHard,
            }),
        ),
        ("triplet batch-all", triplet, Miner::none()),
        (
            "pairwise contrastive",
            Loss::Pairwise(PairwiseLoss {
                pos_margin: 1.0,
                neg_margin: 0.0,
                ..PairwiseLoss::new(cos)
            }),
            Miner::none(),
        ),
        (
            "NT-Xent",
            Loss::Contrastive(ContrastiveLoss {
                positives: Positives::PerPair,
                symmetric: false,
                ..ContrastiveLoss::new(cos)
            }),
            Miner::none(),
        ),
        (
            "multi-similarity + miner",
            Loss::MultiSimilarity(MultiSimilarityLoss::new(cos)),
            Miner::new(MinerKind::MultiSimilarity { epsilon: 0.1 }),
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SIAM_BENCH_SIZES")
        .unwrap_or_else(|_| "256,1024,4096".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIAM_BENCH_SIZES: comma-separated integers")
        })
        .collect();
    let dim: usize = std::env::var("SIAM_BENCH_DIM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let dev = burn::tensor::Device::flex().autodiff();

    let mut ours: HashMap<(String, usize), f64> = HashMap::new();
    for &b in &sizes {
        let labels: Vec<usize> = (0..b).map(|i| i / 4).collect();
        for (name, loss, miner) in configs() {
            let reps = if b >= 4096 { 3 } else { 5 };
            let mut times = Vec::new();
            for it in 0..=reps {
                let x = Tensor::<2>::random([b, dim], Distribution::Normal(0.0, 1.0), &dev)
                    .require_grad();
                let _ = x.clone().sum().into_data();
                let t0 = Instant::now();
                let out = loss
                    .forward_self(x.clone(), &labels, &miner, None)
                    .expect("loss");
                let grads = out.loss.backward();
                let _ = x.grad(&grads).expect("gradient").sum().into_data();
                if it > 0 {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            let ms = median(times);
            eprintln!("siam-losses {name} B={b}: {ms:.1} ms");
            ours.insert((name.to_string(), b), ms);
        }
    }

    let python = std::env::var("SIAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let size_arg = sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let reference = Command::new(&python)
        .args(["benches/python/losses.py", &size_arg, &dim.to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let mut theirs: HashMap<(String, usize), Result<f64, String>> = HashMap::new();
    match reference {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let key = (
                    v["config"].as_str().unwrap_or("").to_string(),
                    v["batch"].as_u64().unwrap_or(0) as usize,
                );
                let val = match v["ms"].as_f64() {
                    Some(ms) => Ok(ms),
                    None => Err(v["skipped"].as_str().unwrap_or("skipped").to_string()),
                };
                theirs.insert(key, val);
            }
            if !out.status.success() {
                eprintln!(
                    "reference exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Err(e) => eprintln!("could not run {python}: {e}"),
    }

    println!("\nLoss + mining, forward + backward, d = {dim}, cosine, labels i/4 (flex backend vs PML on torch CPU, 2 threads)\n");
    println!("| config | batch | siam-losses (ms) | pytorch-metric-learning (ms) | PML / siam |");
    println!("|---|---:|---:|---:|---:|");
    for &b in &sizes {
        for (name, _, _) in configs() {
            let o = ours[&(name.to_string(), b)];
            let (t, ratio) = match theirs.get(&(name.to_string(), b)) {
                Some(Ok(t)) => (format!("{t:.1}"), format!("{:.2}x", t / o)),
                Some(Err(why)) => (format!("not run: {why}"), "-".into()),
                None => ("no result".into(), "-".into()),
            };
            println!("| {name} | {b} | {o:.1} | {t} | {ratio} |");
        }
    }
}
