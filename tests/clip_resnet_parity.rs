//! Parity of siam's ModifiedResNet image tower with open_clip, loaded through siam's one
//! importer (`siam::clip::import::load_model`, the path every command takes).
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
use siam::clip::import::{load_model, ImportError, LoadedModel};

fn fixtures() -> PathBuf {
    support::fixtures("clip_rn")
}

/// tests/fixtures/clip_rn/open_clip_config.json with `vision_cfg.<key>` set to `value`, written
/// into `dir`.
fn config_with(dir: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("open_clip_config.json")).unwrap(),
    )
    .unwrap();
    json["vision_cfg"][key] = value;
    let p = dir.join(format!("rn_{key}.json"));
    std::fs::write(&p, json.to_string()).unwrap();
    p
}

fn load(file: &str, arch: &Path) -> Result<LoadedModel, ImportError> {
    let device = siam::device::from_env();
    load_model(
        &fixtures().join(file),
        Some(arch.to_str().unwrap()),
        &device,
    )
}

fn check_parity(file: &str) {
    let device = siam::device::from_env();
    let m = load(file, &fixtures().join("open_clip_config.json")).unwrap_or_else(|e| panic!("{e}"));
    let pixels = support::read_npy(&fixtures().join("pixel_values.npy"));
    let s = &pixels.shape;
    let images = Tensor::<4>::from_data(
        TensorData::new(pixels.f32(), [s[0], s[1], s[2], s[3]]),
        &device,
    );
    let expected = support::read_npy(&fixtures().join("image_embeds.npy"));
    let out = m.clip.encode_image(images);
    assert_eq!(out.dims(), [expected.shape[0], expected.shape[1]]);
    let got = out
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let want = expected.f32();
    let max_diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff <= 1e-4,
        "{file}: max |burn - open_clip| = {max_diff:e}\n got {:?}\nwant {:?}",
        &got[..8],
        &want[..8]
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
    let m = load(
        "model.safetensors",
        &fixtures().join("open_clip_config.json"),
    )
    .unwrap();
    // Per BatchNorm 4 tensors are loaded (gamma, beta, running mean and variance) and one
    // counter is left unused. [2,2,1,1] has 6 blocks, 4 of them with a projection shortcut
    // (layer1.0 changes channels, layer2..4.0 stride 2): BNs = 3 stem + 3*6 + 4 = 25.
    let bns = 25;
    assert_eq!(m.report.ignored.len(), bns, "{:?}", m.report.ignored);
    assert!(m
        .report
        .ignored
        .iter()
        .all(|k| k.starts_with("visual.") && k.ends_with("num_batches_tracked")));
    assert_eq!(m.report.applied + bns, m.report.file_tensors);
}

#[test]
fn a_wrong_config_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mismatch = |file: &str, arch: PathBuf| -> (Vec<String>, Vec<String>, Vec<String>) {
        match load(file, &arch) {
            Err(e @ ImportError::KeyMismatch { .. }) => {
                assert!(e.to_string().contains(file), "{e}");
                let ImportError::KeyMismatch {
                    missing,
                    unexpected,
                    mis_shaped,
                    ..
                } = e
                else {
                    unreachable!()
                };
                (missing, unexpected, mis_shaped)
            }
            Err(e) => panic!("{file}: {e}"),
            Ok(_) => panic!("{file} loaded under {}", arch.display()),
        }
    };
    // Twice the width: every visual tensor has the wrong shape.
    let (_, _, mis_shaped) = mismatch(
        "model.safetensors",
        config_with(tmp.path(), "width", 8.into()),
    );
    assert!(!mis_shaped.is_empty());
    // A block more in layer3: its tensors are missing.
    let more = config_with(tmp.path(), "layers", serde_json::json!([2, 2, 2, 1]));
    let (missing, unexpected, _) = mismatch("model.pt", more);
    assert!(!missing.is_empty() && unexpected.is_empty(), "{missing:?}");
    assert!(
        missing.iter().all(|k| k.contains("layer3.1.")),
        "{missing:?}"
    );
    // A block fewer in layer2: the file's are unexpected.
    let fewer = config_with(tmp.path(), "layers", serde_json::json!([2, 1, 1, 1]));
    let (missing, unexpected, _) = mismatch("model.pt", fewer);
    assert!(
        missing.is_empty() && !unexpected.is_empty(),
        "{unexpected:?}"
    );
    assert!(
        unexpected.iter().all(|k| k.contains("layer2.1.")),
        "{unexpected:?}"
    );
    // A file that is not a checkpoint.
    let e = load(
        "open_clip_config.json",
        &fixtures().join("open_clip_config.json"),
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::UnknownFormat { .. }), "{e}");
}
