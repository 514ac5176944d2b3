//! Parity of siam's ModifiedResNet image tower with open_clip.
//!
//! The fixtures in tests/fixtures/clip_rn/ come from tests/fixtures/make_resnet_fixtures.py: a tiny
//! open_clip RN CLIP (random weights, randomised BatchNorm statistics, eval mode), its state dict
//! as .safetensors and .pt in OpenAI's mixed precision (conv/linear fp16, BatchNorm and positional
//! embedding fp32, so the f16 -> f32 cast is exercised), three normalised images and open_clip's
//! `encode_image` outputs computed in fp32 from the fp16-rounded weights.
//! Backend: `SIAM_TEST_DEVICE` (see `siam::device::from_env`).

mod support;

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use siam::clip::resnet::{load_open_clip_resnet, ModifiedResNetConfig, ResnetImportError};

fn fixtures() -> PathBuf {
    support::fixtures("clip_rn")
}

/// A float32 `.npy` file as (shape, values).
fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = support::read_npy(path);
    (a.shape.clone(), a.f32())
}

/// The tower of tests/fixtures/clip_rn/open_clip_config.json: embed_dim 16, vision layers
/// [2,2,1,1], width 4, image 64, heads = 4 * 32 / head_width 32.
fn tiny_config() -> ModifiedResNetConfig {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("open_clip_config.json")).unwrap(),
    )
    .unwrap();
    let v = &json["vision_cfg"];
    let layers: Vec<usize> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let width = v["width"].as_u64().unwrap() as usize;
    ModifiedResNetConfig::new(
        [layers[0], layers[1], layers[2], layers[3]],
        width,
        json["embed_dim"].as_u64().unwrap() as usize,
        width * 32 / v["head_width"].as_u64().unwrap() as usize,
        v["image_size"].as_u64().unwrap() as usize,
    )
}

fn check_parity(file: &str) {
    let device = siam::device::from_env();
    let model = tiny_config().init(&device);
    let (model, report) = load_open_clip_resnet(model, &fixtures().join(file), "visual.")
        .unwrap_or_else(|e| panic!("{e}"));
    // The BatchNorms' num_batches_tracked counters are the only leftovers.
    assert!(
        report
            .unused
            .iter()
            .all(|k| k.ends_with("num_batches_tracked")),
        "{:?}",
        report.unused
    );
    assert!(report.missing.is_empty());

    let (shape, pixels) = read_npy_f32(&fixtures().join("pixel_values.npy"));
    let images = Tensor::<4>::from_data(
        TensorData::new(pixels, [shape[0], shape[1], shape[2], shape[3]]),
        &device,
    );
    let (eshape, expected) = read_npy_f32(&fixtures().join("image_embeds.npy"));
    let out = model.forward(images);
    assert_eq!(out.dims(), [eshape[0], eshape[1]]);
    let got = out
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let max_diff = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff <= 1e-4,
        "{file}: max |burn - open_clip| = {max_diff:e}\n got {:?}\nwant {:?}",
        &got[..8],
        &expected[..8]
    );
}

#[test]
fn image_embeds_match_open_clip_from_safetensors() {
    check_parity("model.safetensors");
}

#[test]
fn image_embeds_match_open_clip_from_pytorch_pickle() {
    check_parity("model.pt");
}

#[test]
fn every_tower_tensor_is_loaded() {
    let device = siam::device::from_env();
    let model = tiny_config().init(&device);
    let (_, report) =
        load_open_clip_resnet(model, &fixtures().join("model.safetensors"), "visual.").unwrap();
    // Per BatchNorm 4 tensors are loaded (gamma, beta, running mean and variance) and one
    // counter is left unused. [2,2,1,1] has 6 blocks, 4 of them with a projection shortcut
    // (layer1.0 changes channels, layer2..4.0 stride 2): BNs = 3 stem + 3*6 + 4 = 25.
    // Convs = 3 + 3*6 + 4 = 25. Attention pool: positional embedding + 4 Linear (w, b) = 9.
    let bns = 25;
    assert_eq!(
        report.applied.len(),
        4 * bns + 25 + 9,
        "{:?}",
        report.applied
    );
    assert_eq!(report.unused.len(), bns);
}

#[test]
fn a_wrong_config_is_an_error_naming_the_file() {
    let device = siam::device::from_env();
    let mut cfg = tiny_config();
    cfg.width = 8;
    let err = load_open_clip_resnet(
        cfg.init(&device),
        &fixtures().join("model.safetensors"),
        "visual.",
    )
    .unwrap_err();
    assert!(matches!(err, ResnetImportError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    let mut cfg = tiny_config();
    cfg.layers = [2, 2, 2, 1];
    let err = load_open_clip_resnet(cfg.init(&device), &fixtures().join("model.pt"), "visual.")
        .unwrap_err();
    assert!(matches!(err, ResnetImportError::Missing { .. }), "{err}");

    let mut cfg = tiny_config();
    cfg.layers = [2, 1, 1, 1];
    let err = load_open_clip_resnet(cfg.init(&device), &fixtures().join("model.pt"), "visual.")
        .unwrap_err();
    assert!(matches!(err, ResnetImportError::Unused { .. }), "{err}");

    let err = load_open_clip_resnet(
        tiny_config().init(&device),
        &fixtures().join("model.pt"),
        "vision.",
    )
    .unwrap_err();
    assert!(
        matches!(err, ResnetImportError::NoTensorsUnderPrefix { .. }),
        "{err}"
    );
    let err = load_open_clip_resnet(
        tiny_config().init(&device),
        &fixtures().join("open_clip_config.json"),
        "visual.",
    )
    .unwrap_err();
    assert!(
        matches!(err, ResnetImportError::UnknownFormat { .. }),
        "{err}"
    );
}
