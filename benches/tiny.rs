//! Training-step speed of the tiny CLIP recipe (issue #15) against PyTorch eager, side by side
//! (`benches/python/tiny.py`):
//!
//! the open_clip config `benches/python/tiny_clip.json` (32 px images, 4 x 4 patches, width 128,
//! 4 image layers; text width 128, 2 layers; embedding 64; QuickGELU) from random weights, both
//! towers trainable, a 64 -> 64 linear head on each; a P x K batch (siam's default 6 x 4) of
//! images and the P label texts "a photo of a {}."; the triplet loss (cosine, margin 0.2) on all
//! triplets in both directions; backward, global-norm clipping at 1, AdamW at lr 1e-3.
//!
//! Each siam step does what `siam train` does per step on the training thread: the batch's
//! pixels go from a host buffer into a tensor and its label texts are tokenized, then
//! [`Stepper::step`]. The timed runs alternate siam and PyTorch (`SIAM_BENCH_REPEATS` each, so
//! both see the same load on a shared machine) and report the medians.
//!
//! Backend from `SIAM_TEST_DEVICE` (flex default, `tch` for libtorch). Environment:
//! `SIAM_BENCH_STEPS` (timed steps per run, 20), `SIAM_BENCH_REPEATS` (3), `SIAM_BENCH_P` and
//! `SIAM_BENCH_K` (6 and 4), `SIAM_PYTHON` (python3), `SIAM_BENCH_ONLY=siam` (skip PyTorch,
//! for profiling; `step`: the training steps alone, without the op timings).
//!
//! `cargo bench --bench tiny`

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::nn::LayerNormConfig;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use siam::clip::config::{Activation, ClipConfig};
use siam::clip::layers::{activate, MatmulDtype};
use siam::clip::model::Clip;
use siam::model::encoder::token_tensor;
use siam::model::heads::HeadConfig;
use siam::model::twin::{FreezePolicy, ImageInput, TextInput, TwinTowers};
use siam::train::config::LossSettings;
use siam::train::objective::build_objective;
use siam::train::optim::{build_adamw, split_params, AdamWSettings};
use siam::train::schedule::CosineSchedule;
use siam::train::step::{Objective, Stepper, TrainBatch};
use siam_data::formats::CIFAR10_LABELS;
use siam_data::tokenizer::ClipTokenizer;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Process CPU seconds (user + system, all threads) so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// The model, its optimiser and a fixed batch on the host.
struct Recipe {
    model: Option<TwinTowers>,
    stepper: Stepper,
    objective: Box<dyn Objective>,
    tokenizer: ClipTokenizer,
    pixels: Vec<f32>,
    texts: Vec<String>,
    image_labels: Vec<usize>,
    text_labels: Vec<usize>,
    image_size: usize,
    device: Device,
}

impl Recipe {
    fn new(device: &Device, p: usize, k: usize) -> Self {
        // As `siam train` does before its first step.
        siam::train::memory::keep_freed_memory();
        let cfg = ClipConfig::from_open_clip_json(Path::new("benches/python/tiny_clip.json"))
            .expect("benches/python/tiny_clip.json");
        let siam::clip::config::VisionConfig::Vit(v) = &cfg.vision else {
            panic!("the tiny recipe is a ViT");
        };
        let image_size = v.image_size;
        let model = TwinTowers::new(
            Clip::new(&cfg, device),
            HeadConfig::linear(cfg.embed_dim, cfg.embed_dim),
            device,
        )
        .with_freeze(FreezePolicy::Full, FreezePolicy::Full, false)
        .expect("both towers trainable");
        let stepper = Stepper {
            optim: build_adamw(&AdamWSettings::default(), &split_params(&model)),
            schedule: CosineSchedule {
                base_lr: 1e-3,
                warmup_steps: 0,
                total_steps: 1_000_000,
                min_lr: 0.0,
            },
            max_grad_norm: Some(1.0),
            step: 0,
            epoch: 0,
        };
        let objective = build_objective(&LossSettings {
            loss: Some("triplet".parse().expect("a loss name")),
            miner: Some("all".parse().expect("a miner name")),
            ..LossSettings::default()
        })
        .expect("triplet objective");
        let pixels = Tensor::<1>::random(
            [p * k * 3 * image_size * image_size],
            Distribution::Normal(0.0, 1.0),
            &device.clone().without_autodiff(),
        )
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 pixels");
        Recipe {
            model: Some(model),
            stepper,
            objective,
            tokenizer: ClipTokenizer::builtin().expect("builtin tokenizer"),
            pixels,
            texts: (0..p)
                .map(|i| format!("a photo of a {}.", CIFAR10_LABELS[i % CIFAR10_LABELS.len()]))
                .collect(),
            image_labels: (0..p * k).map(|i| i / k).collect(),
            text_labels: (0..p).collect(),
            image_size,
            device: device.clone(),
        }
    }

    /// What `siam train` does per step: pixels to a tensor, texts tokenized, the step.
    fn step(&mut self) {
        let (n, s) = (self.image_labels.len(), self.image_size);
        let images = ImageInput::Pixels(Tensor::from_data(
            TensorData::new(self.pixels.clone(), [n, 3, s, s]),
            &self.device,
        ));
        let strs: Vec<&str> = self.texts.iter().map(String::as_str).collect();
        let tb = self.tokenizer.encode_batch(&strs, 77).expect("tokenize");
        let texts = TextInput::Tokens {
            ids: token_tensor(&tb.ids, tb.rows, tb.len, &self.device),
            lengths: tb.lengths,
        };
        let batch = TrainBatch {
            images,
            image_labels: self.image_labels.clone(),
            texts,
            text_labels: self.text_labels.clone(),
            weights: None,
        };
        let model = self.model.take().expect("model between steps");
        let (model, _) = self
            .stepper
            .step(model, batch, self.objective.as_ref())
            .map_err(|(_, e)| e)
            .expect("a finite step");
        self.model = Some(model);
    }

    /// Milliseconds per step and CPU seconds per wall second over `n` steps.
    fn time(&mut self, n: usize) -> (f64, f64) {
        let (t, c) = (Instant::now(), cpu_seconds());
        for _ in 0..n {
            self.step();
        }
        let wall = t.elapsed().as_secs_f64();
        (1000.0 * wall / n as f64, (cpu_seconds() - c) / wall)
    }
}

/// One PyTorch run of `benches/python/tiny.py` (its JSON output).
fn pytorch(p: usize, k: usize, steps: usize) -> serde_json::Value {
    let python = std::env::var("SIAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["benches/python/tiny.py"])
        .args([p, k, steps].map(|v| v.to_string()))
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("running the PyTorch reference");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "benches/python/tiny.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Microseconds for one forward + backward of a LayerNorm on `[rows, 128]`, of QuickGELU on
/// `[rows, 512]` (the image tower's activations) and of the MLP's two linears (128 -> 512 ->
/// 128): the per-op cost as the towers run them (siam's fused LayerNorm, QuickGELU and linear).
fn op_chains(device: &Device, rows: usize, reps: usize) -> (f64, f64, f64) {
    let ln = LayerNormConfig::new(128).init(device);
    let x = Tensor::<2>::random([rows, 128], Distribution::Normal(0.0, 1.0), device).require_grad();
    let h = Tensor::<2>::random([rows, 512], Distribution::Normal(0.0, 1.0), device).require_grad();
    let time = |f: &dyn Fn()| {
        for _ in 0..5 {
            f();
        }
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        1e6 * t.elapsed().as_secs_f64() / reps as f64
    };
    let ln_us = time(&|| {
        let _ = siam::clip::fused::layer_norm(&ln, x.clone(), 1e-5)
            .sum()
            .backward();
    });
    let gelu_us = time(&|| {
        let _ = activate(h.clone(), Activation::QuickGelu).sum().backward();
    });
    let fc = burn::nn::LinearConfig::new(128, 512).init(device);
    let proj = burn::nn::LinearConfig::new(512, 128).init(device);
    let mlp_us = time(&|| {
        let f32 = MatmulDtype::F32;
        let _ = f32
            .linear(&proj, f32.linear(&fc, x.clone()))
            .sum()
            .backward();
    });
    (ln_us, gelu_us, mlp_us)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let steps = env_usize("SIAM_BENCH_STEPS", 20);
    let repeats = env_usize("SIAM_BENCH_REPEATS", 3).max(1);
    let (p, k) = (env_usize("SIAM_BENCH_P", 6), env_usize("SIAM_BENCH_K", 4));
    let only = std::env::var("SIAM_BENCH_ONLY").unwrap_or_default();
    let only_siam = only == "siam" || only == "step";
    let device = siam::device::from_env().autodiff();
    let backend = std::env::var("SIAM_TEST_DEVICE").unwrap_or_else(|_| "flex".into());
    let mut recipe = Recipe::new(&device, p, k);
    for _ in 0..3 {
        recipe.step();
    }
    let (mut ours, mut ours_cpu, mut py) = (vec![], vec![], vec![]);
    for r in 0..repeats {
        let (ms, cpu) = recipe.time(steps);
        eprintln!(
            "siam {backend} run {}: {ms:.1} ms/step, {cpu:.2} cores busy",
            r + 1
        );
        ours.push(ms);
        ours_cpu.push(cpu);
        if !only_siam {
            let v = pytorch(p, k, steps);
            eprintln!("pytorch run {}: {v}", r + 1);
            py.push(v);
        }
    }
    let b = (p * k) as f64;
    let ms = median(ours);
    println!(
        "tiny recipe, batch {p} x {k} = {} images + {p} label texts, {steps} steps x {repeats} runs (medians)",
        p * k
    );
    println!(
        "siam {backend}: {ms:.1} ms/step, {:.1} images/s, {:.2} cores busy",
        1000.0 * b / ms,
        median(ours_cpu)
    );
    if only == "step" {
        return;
    }
    let (ln_us, gelu_us, mlp_us) = op_chains(&device, p * k * 65, 200);
    println!(
        "siam {backend} ops: LayerNorm fwd+bwd {ln_us:.0} us, QuickGELU fwd+bwd {gelu_us:.0} us, MLP linears fwd+bwd {mlp_us:.0} us"
    );
    if py.is_empty() {
        return;
    }
    let col = |a: &str, b: &str| median(py.iter().map(|v| v[a][b].as_f64().unwrap()).collect());
    let text_len = py[0]["text_len"].as_u64().unwrap_or(0);
    for (what, key) in [
        ("open_clip, texts padded to 77".to_string(), "padded"),
        (
            format!("texts trimmed to {text_len} tokens as siam"),
            "trimmed",
        ),
    ] {
        let theirs = col(key, "ms");
        println!(
            "PyTorch eager ({what}): {theirs:.1} ms/step, {:.1} images/s, {:.2} cores busy; siam {backend} / PyTorch {:.2}x",
            1000.0 * b / theirs,
            col(key, "cpu"),
            theirs / ms
        );
    }
    let (pl, pg, pm) = (
        col("ops_us", "layer_norm"),
        col("ops_us", "quick_gelu"),
        col("ops_us", "mlp_linears"),
    );
    println!(
        "PyTorch ops: LayerNorm fwd+bwd {pl:.0} us ({:.2}x siam), QuickGELU fwd+bwd {pg:.0} us ({:.2}x siam), MLP linears fwd+bwd {pm:.0} us ({:.2}x siam)",
        pl / ln_us,
        pg / gelu_us,
        pm / mlp_us
    );
}
