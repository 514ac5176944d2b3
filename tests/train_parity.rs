//! Training is right, not only running: 20 steps of siam's training step from the same initial
//! weights, on the same batches, with the same loss, miner, optimiser, schedule and clipping as
//! the PyTorch reference (`tests/fixtures/train/make_train_reference.py`: open_clip towers,
//! pytorch-metric-learning `TripletMarginLoss` + `BatchHardMiner` in both directions, torch
//! `AdamW` with a no-decay group, open_clip's `cosine_lr`, `clip_grad_norm_`) give the same loss
//! at every step within 1e-3 relative.
//!
//! Backend from `SIAM_TEST_DEVICE` (flex by default, `tch` for libtorch).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};

use siam::clip::import::load_model;
use siam::model::heads::ProjectionHead;
use siam::model::twin::{FreezePolicy, ImageInput, TextInput, TwinTowers};
use siam::train::config::LossSettings;
use siam::train::objective::build_objective;
use siam::train::optim::{build_adamw, split_params, AdamWSettings};
use siam::train::schedule::CosineSchedule;
use siam::train::step::{Stepper, TrainBatch};
use support::{read_safetensors, RawTensor};

fn fixtures() -> PathBuf {
    support::fixtures("train")
}

/// A torch `nn.Linear` (weight `[out, in]`) as a burn head (weight `[in, out]`).
fn torch_linear(t: &BTreeMap<String, RawTensor>, name: &str, device: &Device) -> ProjectionHead {
    let w = &t[&format!("{name}.weight")];
    let (out_d, in_d) = (w.shape[0], w.shape[1]);
    let w = Tensor::<2>::from_data(TensorData::new(w.f32s(), [out_d, in_d]), device).transpose();
    let b = Tensor::<1>::from_data(
        TensorData::new(t[&format!("{name}.bias")].f32s(), [out_d]),
        device,
    );
    ProjectionHead {
        adapter: None,
        proj: Some(Linear {
            weight: Param::from_tensor(w),
            bias: Some(Param::from_tensor(b)),
        }),
    }
}

#[test]
fn first_20_losses_match_pytorch() {
    let device = siam::device::from_env().autodiff();
    let dir = fixtures();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let expected: Vec<f64> = reference["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let settings = &reference["settings"];

    let arch = dir.join("tiny_open_clip.json");
    let loaded = load_model(
        &dir.join("tiny_init.safetensors"),
        Some(arch.to_str().unwrap()),
        &device,
    )
    .expect("the importer reads the open_clip state dict");
    let heads = read_safetensors(&dir.join("heads_init.safetensors"));
    let model = TwinTowers {
        clip: loaded.clip,
        image_head: torch_linear(&heads, "image_head", &device),
        text_head: torch_linear(&heads, "text_head", &device),
        logit_bias: None,
    }
    .with_freeze(FreezePolicy::Full, FreezePolicy::Full, false)
    .unwrap();

    let batches = read_safetensors(&dir.join("batches.safetensors"));
    let (ishape, images) = (&batches["images"].shape, &batches["images"].bytes);
    let (nb, bs, s) = (ishape[0], ishape[1], ishape[3]);
    let image_labels = batches["image_labels"].i64s();
    let tshape = &batches["text_ids"].shape;
    let (nt, tl) = (tshape[1], tshape[2]);
    let text_ids = batches["text_ids"].i64s();
    let text_lengths = batches["text_lengths"].i64s();
    let text_labels = batches["text_labels"].i64s();
    let mean: Vec<f32> = settings["mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let std: Vec<f32> = settings["std"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let per_image = 3 * s * s;
    let batch = |b: usize| -> TrainBatch {
        // (u8 / 255 - mean) / std in f32, as the reference computes it.
        let px: Vec<f32> = images[b * bs * per_image..(b + 1) * bs * per_image]
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / (s * s)) % 3;
                (v as f32 / 255.0 - mean[c]) / std[c]
            })
            .collect();
        let ids = text_ids[b * nt * tl..(b + 1) * nt * tl].to_vec();
        TrainBatch {
            images: ImageInput::Pixels(Tensor::from_data(
                TensorData::new(px, [bs, 3, s, s]),
                &device,
            )),
            image_labels: image_labels[b * bs..(b + 1) * bs]
                .iter()
                .map(|&l| l as usize)
                .collect(),
            texts: TextInput::Tokens {
                ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [nt, tl]), &device),
                lengths: text_lengths[b * nt..(b + 1) * nt]
                    .iter()
                    .map(|&l| l as usize)
                    .collect(),
            },
            text_labels: text_labels[b * nt..(b + 1) * nt]
                .iter()
                .map(|&l| l as usize)
                .collect(),
        }
    };

    let objective = build_objective(&LossSettings {
        loss: Some("triplet".parse().unwrap()),
        miner: Some("hard".parse().unwrap()),
        margin: Some(settings["margin"].as_f64().unwrap()),
        ..LossSettings::default()
    })
    .unwrap();
    let adamw = AdamWSettings {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: settings["eps"].as_f64().unwrap() as f32,
        weight_decay: settings["weight_decay"].as_f64().unwrap() as f32,
    };
    let split = split_params(&model);
    let steps = settings["steps"].as_u64().unwrap() as usize;
    let mut stepper = Stepper {
        optim: build_adamw(&adamw, &split),
        schedule: CosineSchedule {
            base_lr: settings["base_lr"].as_f64().unwrap(),
            warmup_steps: settings["warmup"].as_u64().unwrap() as usize,
            total_steps: steps,
            min_lr: 0.0,
        },
        max_grad_norm: settings["max_norm"].as_f64(),
        step: 0,
        epoch: 0,
    };
    let ref_lr: Vec<f64> = reference["lr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let ref_norm: Vec<f64> = reference["grad_norm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut model = model;
    let mut worst = 0.0f64;
    for (step, want) in expected.iter().enumerate() {
        let (m, out) = stepper
            .step(model, batch(step % nb), objective.as_ref())
            .map_err(|(_, e)| e)
            .unwrap();
        model = m;
        let rel = (out.loss - want).abs() / want.abs().max(1e-12);
        worst = worst.max(rel);
        eprintln!(
            "step {step:2}: siam {:.6} torch {:.6} (rel {rel:.1e}); grad norm {:.4} vs {:.4}",
            out.loss, want, out.grad_norm, ref_norm[step]
        );
        assert!(
            (out.lr - ref_lr[step]).abs() <= 1e-12 * ref_lr[step].max(1.0),
            "lr at step {step}"
        );
        assert!(
            rel <= 1e-3,
            "step {step}: loss {} vs PyTorch {want} (relative {rel:.2e})",
            out.loss
        );
    }
    eprintln!("worst relative loss difference over {steps} steps: {worst:.2e}");
}
