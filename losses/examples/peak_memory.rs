//! Peak resident memory of one loss + mining forward and backward pass.
//!
//! `cargo run --release -p siam-losses --example peak_memory -- <loss> <miner> [batch] [dim]`
//! e.g. `-- triplet all 4096 512`. Prints the process's peak RSS (`VmHWM` from
//! `/proc/self/status`) after creating the embeddings and after the pass, so the growth
//! attributable to the loss can be compared with `B × B` (4 bytes each) and `B × B × B`.

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use siam_losses::{Loss, Miner};

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let loss: Loss = args
        .first()
        .map(String::as_str)
        .unwrap_or("triplet")
        .parse()
        .expect("loss");
    let miner: Miner = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("all")
        .parse()
        .expect("miner");
    let b: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let d: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(512);
    let dev = siam_losses::test_device().autodiff();
    let x = Tensor::<2>::random([b, d], Distribution::Normal(0.0, 1.0), &dev).require_grad();
    let labels: Vec<usize> = (0..b).map(|i| i / 4).collect();
    let _ = x.clone().sum().into_data();
    let before = vm_hwm_kib();
    let t = Instant::now();
    let out = loss
        .forward_self(x.clone(), &labels, &miner, None)
        .expect("loss");
    let grads = out.loss.backward();
    let g = x.grad(&grads).expect("gradient").into_data();
    let secs = t.elapsed().as_secs_f64();
    let after = vm_hwm_kib();
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "{} + {miner} B={b} d={d}: peak RSS {:.0} MiB (before the pass {:.0} MiB, growth {:.0} MiB); \
         one B×B f32 matrix = {:.0} MiB, B×B×B bytes = {:.0} GiB; {:.2} s; mined {}; grad elems {}",
        loss.name(),
        mib(after),
        mib(before),
        mib(after.saturating_sub(before)),
        (b * b * 4) as f64 / (1 << 20) as f64,
        (b * b * b) as f64 / (1u64 << 30) as f64,
        secs,
        out.stats.mined,
        g.num_elements()
    );
}
