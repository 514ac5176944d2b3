//! `--dtype bf16` really computes in bf16: the towers' multiplies round to bf16 (so outputs
//! move, by about bf16's 2^-8 relative precision, and are not bit-equal to f32), while
//! parameters, gradients and the loss stay f32 and a training step's loss stays within a few
//! percent of the f32 one. A ResNet image tower stays f32 and the notice says so.
//!
//! Backend from `SIAM_TEST_DEVICE` (flex by default, `tch` for libtorch).

use burn::module::Module;
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};

use siam::clip::config::{ClipConfig, ResNetVisionConfig, VisionConfig};
use siam::clip::layers::MatmulDtype;
use siam::clip::model::Clip;
use siam::model::heads::HeadConfig;
use siam::model::twin::{ImageInput, TextInput, TwinTowers};
use siam::train::config::LossSettings;
use siam::train::objective::build_objective;
use siam::train::optim::{build_adamw, split_params, AdamWSettings};
use siam::train::schedule::CosineSchedule;
use siam::train::setup::bf16_notice;
use siam::train::step::{Stepper, TrainBatch};

fn twin(cfg: &ClipConfig, device: &Device) -> TwinTowers {
    let head = HeadConfig::linear(cfg.embed_dim, 16);
    // Every parameter drawn at once, under siam's initialisation lock, so that two calls build
    // the same weights whatever else runs.
    siam::model::init::seeded(device, 7, || {
        TwinTowers::new(Clip::new(cfg, device), head, device)
    })
}

fn pixels(n: usize, side: usize, device: &Device) -> Tensor<4> {
    let _lock = siam::model::init::lock_seeded(device, 11);
    Tensor::random([n, 3, side, side], Distribution::Normal(0.0, 1.0), device)
}

fn tokens(device: &Device) -> (Tensor<2, Int>, Vec<usize>) {
    let ids = vec![
        49406i64, 320, 1125, 49407, //
        49406, 7, 49407, 0, //
        49406, 530, 88, 49407, //
        49406, 49407, 0, 0,
    ];
    (
        Tensor::from_data(TensorData::new(ids, [4, 4]), device),
        vec![4, 3, 4, 2],
    )
}

/// `||a - b|| / ||a||`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn values(t: Tensor<2>) -> Vec<f32> {
    assert_eq!(t.dtype(), DType::F32, "tower outputs must come back as f32");
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn backend_multiplies_bf16() {
    let device = siam::device::from_env();
    assert!(MatmulDtype::bf16_supported(&device), "{device:?}");
    assert!(MatmulDtype::bf16_supported(&device.clone().autodiff()));
}

#[test]
fn bf16_towers_are_close_to_f32_but_not_equal() {
    let device = siam::device::from_env();
    let cfg = ClipConfig::tiny();
    let mut clip = Clip::new(&cfg, &device);
    let px = pixels(4, 64, &device);
    let (ids, lengths) = tokens(&device);
    let img32 = values(clip.encode_image(px.clone()));
    let txt32 = values(clip.encode_text(ids.clone(), &lengths));
    clip.set_matmul_dtype(MatmulDtype::Bf16);
    let img16 = values(clip.encode_image(px));
    let txt16 = values(clip.encode_text(ids, &lengths));
    for (what, a, b) in [("image", &img32, &img16), ("text", &txt32, &txt16)] {
        let e = rel_err(a, b);
        eprintln!("{what} tower: bf16 vs f32 relative error {e:.2e}");
        assert!(
            e > 1e-5,
            "{what}: bf16 output equals f32 ({e:.1e}): bf16 did not run"
        );
        assert!(e < 3e-2, "{what}: bf16 output too far from f32 ({e:.1e})");
    }
}

#[test]
fn bf16_training_step_matches_f32_loss_and_keeps_f32_parameters() {
    let device = siam::device::from_env().autodiff();
    let cfg = ClipConfig::tiny();
    let objective = build_objective(&LossSettings {
        loss: Some("contrastive".parse().unwrap()),
        ..LossSettings::default()
    })
    .unwrap();
    // One model and one batch, cloned: tests run in parallel and share the device's generator.
    let base = twin(&cfg, &device);
    let px = pixels(4, 64, &device);
    let batch = || {
        let (ids, lengths) = tokens(&device);
        TrainBatch {
            images: ImageInput::Pixels(px.clone()),
            image_labels: vec![0, 1, 2, 3],
            texts: TextInput::Tokens { ids, lengths },
            text_labels: vec![0, 1, 2, 3],
            weights: None,
        }
    };
    let mut losses = vec![];
    for dtype in [MatmulDtype::F32, MatmulDtype::Bf16] {
        let mut model = base.clone();
        model.clip.set_matmul_dtype(dtype);
        let split = split_params(&model);
        let mut stepper = Stepper {
            optim: build_adamw(&AdamWSettings::default(), &split),
            schedule: CosineSchedule {
                base_lr: 1e-4,
                warmup_steps: 0,
                total_steps: 2,
                min_lr: 0.0,
            },
            max_grad_norm: Some(1.0),
            step: 0,
            epoch: 0,
        };
        let mut run = vec![];
        for _ in 0..2 {
            let (m, out) = stepper
                .step(model, batch(), objective.as_ref())
                .map_err(|(_, e)| e)
                .unwrap();
            model = m;
            assert!(out.grad_norm.is_finite() && out.grad_norm > 0.0);
            run.push(out.loss);
        }
        // Master weights stay f32 after the optimiser's updates.
        let mut dtypes = DtypeCollector::default();
        model.visit(&mut dtypes);
        assert!(dtypes.0 > 0);
        assert!(
            dtypes.1.is_empty(),
            "{dtype:?}: non-f32 parameters {:?}",
            dtypes.1
        );
        losses.push(run);
    }
    for (step, (a, b)) in losses[0].iter().zip(&losses[1]).enumerate() {
        let rel = (a - b).abs() / a.abs();
        eprintln!("step {step}: f32 loss {a:.6}, bf16 loss {b:.6} (relative {rel:.1e})");
        assert!(rel < 3e-2, "step {step}: bf16 loss {b} vs f32 {a}");
    }
    assert_ne!(
        losses[0], losses[1],
        "bf16 losses equal f32: bf16 did not run"
    );
}

/// Counts float parameters and lists any that are not f32.
#[derive(Default)]
struct DtypeCollector(usize, Vec<DType>);

impl burn::module::ModuleVisitor for DtypeCollector {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        self.0 += 1;
        let d = param.val().dtype();
        if d != DType::F32 {
            self.1.push(d);
        }
    }
}

#[test]
fn notice_names_what_runs_in_bf16() {
    let device = siam::device::from_env().autodiff();
    let vit = twin(&ClipConfig::tiny(), &device);
    let n = bf16_notice(&vit, &device).unwrap();
    eprintln!("{n} [{device:?}]");
    assert!(n.contains("matmuls of both towers in bf16"), "{n}");
    assert!(n.contains("stay f32"), "{n}");
    let flex = format!("{device:?}").contains("Flex(");
    assert_eq!(n.contains("flex rounds to bf16"), flex, "{n}");

    let mut cfg = ClipConfig::tiny();
    cfg.vision = VisionConfig::ResNet(ResNetVisionConfig {
        image_size: 32,
        layers: [1, 1, 1, 1],
        width: 8,
        heads: 2,
    });
    let rn = twin(&cfg, &device);
    let n = bf16_notice(&rn, &device).unwrap();
    eprintln!("{n}");
    assert!(n.contains("ResNet image tower stays f32"), "{n}");
}
