//! LoRA (`--lora`, `--freeze-image lora:...`, `--freeze-text lora:...`): fresh adapters
//! (`B = 0`) leave the model exactly as it was; only adapters and heads train; the saved model
//! folder holds merged plain weights whose embeddings equal the unmerged model's (from the
//! checkpoint, which keeps the adapters) within 1e-5; an interrupted run resumes to the same
//! weights; bad settings are one-line errors naming the flag.

mod support;

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use siam::clip::config::ClipConfig;
use siam::clip::lora::LoraSpec;
use siam::clip::model::Clip;
use siam::model::heads::HeadConfig;
use siam::model::twin::{FreezePolicy, ImageInput, TextInput, TwinTowers};
use siam::train::{train, TrainConfig};

use support::{demo, Log};

fn spec() -> LoraSpec {
    "r:4,alpha:8,targets:attn,mlp".parse().unwrap()
}

fn cfg(out: &Path) -> TrainConfig {
    let mut c = TrainConfig {
        arch: Some("tiny".into()),
        out: out.to_path_buf(),
        ..TrainConfig::default()
    };
    c.optim.epochs = Some(1);
    c.optim.warmup_steps = 2;
    c.optim.lr = 5e-3;
    c.batch.classes_per_batch = 4;
    c.batch.per_class = 4;
    c.towers.lora = Some(spec());
    c
}

/// Image and text embeddings of fixed random pixels and two token sequences.
fn embeddings(model: &TwinTowers, device: &Device) -> (Vec<f32>, Vec<f32>) {
    let n = 3 * 3 * 64 * 64;
    let px: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let pixels = Tensor::<4>::from_data(TensorData::new(px, [3, 3, 64, 64]), device);
    let ids = [49406i64, 320, 1125, 49407, 49406, 7, 49407, 0];
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [2, 4]), device);
    let img = model.embed_images(ImageInput::Pixels(pixels));
    let txt = model.embed_texts(TextInput::Tokens {
        ids,
        lengths: vec![4, 3],
    });
    (
        img.into_data().try_to_vec::<f32>().unwrap(),
        txt.into_data().try_to_vec::<f32>().unwrap(),
    )
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fresh_adapters_leave_the_model_exactly_as_it_was() {
    let device = siam::device::from_env();
    let c = ClipConfig::tiny();
    // Drawn under siam's initialisation lock: the other tests here train at the same time.
    let base = siam::model::init::seeded(&device, 3, || {
        TwinTowers::new(
            Clip::new(&c, &device),
            HeadConfig::linear(c.embed_dim, 32),
            &device,
        )
    });
    let lora = FreezePolicy::Lora(spec());
    let adapted = base.clone().with_lora(lora, lora, 3, &device).unwrap();
    assert!(adapted.has_lora() && !base.has_lora());
    let (bi, bt) = embeddings(&base, &device);
    let (ai, at) = embeddings(&adapted, &device);
    assert_eq!(bi, ai, "image embeddings changed");
    assert_eq!(bt, at, "text embeddings changed");
}

#[test]
fn adapters_train_and_the_saved_model_is_merged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let device = siam::device::from_env();
    let mut log = Log::default();
    let c = cfg(&out);
    train(&c, &device, Some(demo()), &mut log).unwrap();
    // Per block, r (in + out) for in_proj 64->192, out_proj 64->64, c_fc 64->256, c_proj
    // 256->64: 4 (256 + 128 + 320 + 320) = 4096; 2 blocks in each of 2 towers: 16384. Two
    // linear heads 64->64 with bias: 8320. The triplet loss leaves the logit scale alone.
    assert!(
        log.0.iter().any(|l| l.starts_with("training 24704 of ")),
        "{:?}",
        log.0
    );
    let names = support::weights(&out);
    assert!(
        !names.keys().any(|k| k.contains("lora")),
        "adapters left in the model folder"
    );
    let inner = device.clone();
    let (merged, _) = siam::model::folder::load(&out, &inner).unwrap();
    assert!(!merged.has_lora());
    let lora = FreezePolicy::Lora(spec());
    let shell = merged.clone().with_lora(lora, lora, 0, &inner).unwrap();
    let unmerged = siam::train::checkpoint::load_model(&out.join("checkpoint"), shell).unwrap();
    let b = &unmerged.clip.text.transformer.resblocks[0]
        .attn
        .in_proj_lora;
    let b: Vec<f32> = b
        .as_ref()
        .unwrap()
        .b
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(b.iter().any(|v| v.abs() > 1e-4), "B did not train");
    let (mi, mt) = embeddings(&merged, &inner);
    let (ui, ut) = embeddings(&unmerged, &inner);
    assert!(max_diff(&mi, &ui) < 1e-5, "images {}", max_diff(&mi, &ui));
    assert!(max_diff(&mt, &ut) < 1e-5, "texts {}", max_diff(&mt, &ut));
    // The towers themselves did not move: after one step (a run stopped by --max-steps) the
    // base weights are those at the end of the epoch.
    let early = dir.path().join("early");
    let mut c1 = cfg(&early);
    c1.max_steps = Some(1);
    train(&c1, &device, Some(demo()), &mut Log::default()).unwrap();
    let shell = merged.clone().with_lora(lora, lora, 0, &inner).unwrap();
    let first = siam::train::checkpoint::load_model(&early.join("checkpoint"), shell).unwrap();
    let w = |m: &TwinTowers| -> Vec<f32> {
        let b = &m.clip.text.transformer.resblocks[1];
        b.mlp
            .c_fc
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (f, u) = (w(&first), w(&unmerged));
    assert_eq!(f, u, "a frozen tower weight changed");
}

#[test]
fn interrupted_lora_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let device = siam::device::from_env();
    let full = dir.path().join("full");
    let mut c = cfg(&full);
    c.optim.epochs = Some(2);
    // The per-tower flags in place of --lora.
    c.towers.lora = None;
    c.towers.freeze_text = FreezePolicy::Lora(spec());
    c.towers.freeze_image = FreezePolicy::Lora(spec());
    train(&c, &device, Some(demo()), &mut Log::default()).unwrap();

    let cut = dir.path().join("cut");
    let mut k = c.clone();
    k.out = cut.clone();
    k.max_steps = Some(3);
    train(&k, &device, Some(demo()), &mut Log::default()).unwrap();
    k.max_steps = None;
    k.resume = true;
    train(&k, &device, Some(demo()), &mut Log::default()).unwrap();
    assert_eq!(support::step_losses(&full), support::step_losses(&cut));
    assert!(
        support::weights(&full) == support::weights(&cut),
        "resumed weights differ"
    );
}

#[test]
fn bad_lora_settings_name_their_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out_s = out.display().to_string();
    for (flag, value, says) in [
        ("--lora", "r:0", "rank"),
        ("--lora", "r:4,targets:attn,conv", "target"),
        ("--lora", "alpha:0", "alpha"),
        ("--freeze-text", "lora:r:0", "rank"),
        ("--freeze-image", "lora:targets:qkv", "target"),
    ] {
        let opt = format!("{flag}={value}");
        let args = ["train", "--out", &out_s, "--no-index", &opt];
        support::fails(&args, &[flag, says]);
        assert!(!out.exists());
    }
    // A ResNet image tower has no transformer blocks to adapt: refused before anything is
    // read for a preset, and when the model is built for an architecture file.
    let args = [
        "train",
        "--arch",
        "RN50",
        "--out",
        &out_s,
        "--no-index",
        "--lora",
        "r:2",
    ];
    support::fails(&args, &["--lora", "ResNet"]);
    let rn = support::fixtures("clip_rn").join("open_clip_config.json");
    let rn = rn.display().to_string();
    let args = [
        "train",
        "--arch",
        &rn,
        "--out",
        &out_s,
        "--no-index",
        "--freeze-image",
        "lora",
    ];
    let run = support::siam(&args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("--freeze-image lora") && last.contains("ResNet"),
        "{err}"
    );
    assert!(!err.contains("panicked") && !out.exists(), "{err}");
}
