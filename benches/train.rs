//! Training-step speed against PyTorch, in the same run (`benches/python/train.py`):
//!
//! 1. a ViT-B/32-sized step, batch 32 (8 labels x 4 images, 8 label texts), both towers
//!    trainable: forward, triplet loss on batch-hard triplets in both directions, backward,
//!    global-norm clipping, AdamW;
//! 2. the same with both towers locked (towers run forward only, heads train);
//! 3. heads only from cached tower features (what `siam train` does for locked towers).
//!
//! Backend from `SIAM_TEST_DEVICE` (flex default, `tch` for libtorch).
//! `cargo bench --bench train` (set `SIAM_BENCH_STEPS` to change the number of timed steps;
//! `SIAM_BENCH_ONLY=heads` times only the cached-heads row and skips PyTorch, for profiling).

use std::process::Command;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use siam::clip::config::ClipConfig;
use siam::clip::model::Clip;
use siam::model::heads::HeadConfig;
use siam::model::twin::{FreezePolicy, ImageInput, TextInput, TwinTowers};
use siam::train::config::LossSettings;
use siam::train::objective::build_objective;
use siam::train::optim::{build_adamw, split_params, AdamWSettings};
use siam::train::schedule::CosineSchedule;
use siam::train::step::{Objective, Stepper, TrainBatch};

const BATCH: usize = 32;
const TEXT_LEN: usize = 16;

fn towers(device: &Device, policy: FreezePolicy) -> TwinTowers {
    let cfg = ClipConfig::vit_b_32();
    TwinTowers::new(
        Clip::new(&cfg, device),
        HeadConfig::linear(512, 512),
        device,
    )
    .with_freeze(policy, policy, false)
    .unwrap()
}

fn stepper(m: &TwinTowers, lr: f64) -> Stepper {
    Stepper {
        optim: build_adamw(&AdamWSettings::default(), &split_params(m)),
        schedule: CosineSchedule {
            base_lr: lr,
            warmup_steps: 0,
            total_steps: 1_000_000,
            min_lr: 0.0,
        },
        max_grad_norm: Some(1.0),
        step: 0,
        epoch: 0,
    }
}

struct Inputs {
    pixels: Tensor<4>,
    ids: Tensor<2, Int>,
    lengths: Vec<usize>,
    image_labels: Vec<usize>,
    text_labels: Vec<usize>,
}

/// What the feature cache would serve: both towers' outputs for the batch, computed once.
fn tower_features(model: &TwinTowers, x: &Inputs) -> (Tensor<2>, Tensor<2>) {
    let v = model.valid();
    (
        v.clip
            .encode_image(x.pixels.clone().without_autodiff())
            .autodiff(),
        v.clip
            .encode_text(x.ids.clone().without_autodiff(), &x.lengths)
            .autodiff(),
    )
}

fn inputs(device: &Device) -> Inputs {
    let p = BATCH / 4;
    let mut ids = Vec::with_capacity(p * TEXT_LEN);
    for i in 0..p {
        ids.push(49406i64);
        ids.extend((1..TEXT_LEN - 1).map(|j| ((i * 7919 + j * 104729) % 49000 + 1) as i64));
        ids.push(49407);
    }
    Inputs {
        pixels: Tensor::random([BATCH, 3, 224, 224], Distribution::Normal(0.0, 1.0), device),
        ids: Tensor::from_data(TensorData::new(ids, [p, TEXT_LEN]), device),
        lengths: vec![TEXT_LEN; p],
        image_labels: (0..BATCH).map(|i| i / 4).collect(),
        text_labels: (0..p).collect(),
    }
}

fn time_steps(n: usize, mut step: impl FnMut()) -> f64 {
    step();
    let t = Instant::now();
    for _ in 0..n {
        step();
    }
    1000.0 * t.elapsed().as_secs_f64() / n as f64
}

fn run_steps(
    model: TwinTowers,
    batch: impl Fn() -> TrainBatch,
    n: usize,
    lr: f64,
    obj: &dyn Objective,
) -> f64 {
    let mut st = stepper(&model, lr);
    let mut model = Some(model);
    time_steps(n, || {
        let (m, _) = st
            .step(model.take().unwrap(), batch(), obj)
            .map_err(|(_, e)| e)
            .unwrap();
        model = Some(m);
    })
}

fn main() {
    let steps: usize = std::env::var("SIAM_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let head_steps = 200;
    let device = siam::device::from_env().autodiff();
    let obj = build_objective(&LossSettings {
        miner: Some("hard".parse().unwrap()),
        ..LossSettings::default()
    })
    .unwrap();
    let x = inputs(&device);
    let batch = |images: ImageInput, texts: TextInput| TrainBatch {
        images,
        image_labels: x.image_labels.clone(),
        texts,
        text_labels: x.text_labels.clone(),
    };
    let tokens = || TextInput::Tokens {
        ids: x.ids.clone(),
        lengths: x.lengths.clone(),
    };

    if std::env::var("SIAM_BENCH_ONLY").as_deref() == Ok("heads") {
        let model = towers(&device, FreezePolicy::Locked);
        let (fi, ft) = tower_features(&model, &x);
        let feats = || {
            batch(
                ImageInput::Features(fi.clone()),
                TextInput::Features(ft.clone()),
            )
        };
        let ms = run_steps(model, feats, 10 * head_steps, 1e-3, obj.as_ref());
        println!("heads only, cached features: {ms:.3} ms/step");
        return;
    }
    eprintln!("siam: full step ...");
    let full = run_steps(
        towers(&device, FreezePolicy::Full),
        || batch(ImageInput::Pixels(x.pixels.clone()), tokens()),
        steps,
        1e-5,
        obj.as_ref(),
    );
    eprintln!("siam: locked towers ...");
    let locked_model = towers(&device, FreezePolicy::Locked);
    let (fi, ft) = tower_features(&locked_model, &x);
    let locked = run_steps(
        locked_model.clone(),
        || batch(ImageInput::Pixels(x.pixels.clone()), tokens()),
        steps,
        1e-3,
        obj.as_ref(),
    );
    eprintln!("siam: heads from cached features ...");
    let cached = run_steps(
        locked_model,
        || {
            batch(
                ImageInput::Features(fi.clone()),
                TextInput::Features(ft.clone()),
            )
        },
        head_steps,
        1e-3,
        obj.as_ref(),
    );

    eprintln!("pytorch: the same three ...");
    let python = std::env::var("SIAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "benches/python/train.py",
            &BATCH.to_string(),
            &TEXT_LEN.to_string(),
            &steps.to_string(),
            &head_steps.to_string(),
        ])
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("running the PyTorch reference");
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "benches/python/train.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let backend = std::env::var("SIAM_TEST_DEVICE").unwrap_or_else(|_| "flex".into());
    println!("| training step (batch {BATCH}, ViT-B/32 towers) | siam {backend} ms/step | PyTorch ms/step | siam speed vs PyTorch |");
    println!("|---|---|---|---|");
    for (name, ours, key) in [
        ("both towers trainable", full, "full"),
        ("towers locked (forward only)", locked, "locked"),
        ("heads only, cached features", cached, "heads_cached"),
    ] {
        let theirs = py[key].as_f64().unwrap();
        println!(
            "| {name} | {ours:.1} | {theirs:.1} | {:.2}x |",
            theirs / ours
        );
    }
}
