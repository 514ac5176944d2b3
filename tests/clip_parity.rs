//! Parity of siam's CLIP with the Python reference: tiny random CLIPs built and saved by
//! `tests/fixtures/make_clip_fixtures.py` (Hugging Face ViT, open_clip ViT in fp16 `.pt` and
//! `.safetensors`) and `tests/fixtures/make_resnet_fixtures.py` (open_clip ModifiedResNet), with
//! the embeddings and logits PyTorch computed for committed images and strings.
//!
//! Tokens and pixels come from the fixture files. Texts are encoded only up to the batch's
//! longest length while the reference ran at the padded 77: equality proves that trimming under
//! the causal mask changes nothing. Backend: `SIAM_TEST_DEVICE` (flex by default, `tch`).

mod support;

use burn::tensor::{Int, Tensor, TensorData};
use siam::clip::import::{load_model, Layout, LoadedModel};
use std::path::{Path, PathBuf};

const TOL_EMBED: f32 = 1e-4;
/// Logits are cosines times exp(logit_scale) = 20, so 1e-4 on unit vectors is 2e-3 here.
const TOL_LOGITS: f32 = 2e-3;

fn fixtures() -> PathBuf {
    support::fixtures("")
}

/// A `.npy` array as `(values as f64, shape)`.
fn npy(path: &Path) -> (Vec<f64>, Vec<usize>) {
    let a = support::read_npy(path);
    (a.values, a.shape)
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs() as f32)
        .fold(0.0, f32::max)
}

/// Row `r` of a `[rows, ctx]` id matrix, cut to its first `len` ids.
fn ids_row(ids: &[f64], r: usize, ctx: usize, len: usize) -> Vec<i64> {
    ids[r * ctx..r * ctx + len]
        .iter()
        .map(|&v| v as i64)
        .collect()
}

fn vec_f32(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Runs the model on the fixture's inputs; `trim` encodes texts only to the longest length.
fn check(dir: &Path, model: &LoadedModel, trim: bool) {
    let device = siam::device::from_env();
    let (px, px_shape) = npy(&dir.join("pixel_values.npy"));
    let (ids_all, ids_shape) = npy(&dir.join("input_ids.npy"));
    let (lengths, _) = npy(&dir.join("input_lengths.npy"));
    let lengths: Vec<usize> = lengths.iter().map(|&l| l as usize).collect();
    let (want_img, _) = npy(&dir.join("image_embeds.npy"));
    let (want_txt, _) = npy(&dir.join("text_embeds.npy"));
    let (want_logits, _) = npy(&dir.join("logits_per_image.npy"));

    let pixels = Tensor::<4>::from_data(
        TensorData::new(
            px.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            [px_shape[0], px_shape[1], px_shape[2], px_shape[3]],
        ),
        &device,
    );
    let (rows, ctx) = (ids_shape[0], ids_shape[1]);
    let len = if trim {
        *lengths.iter().max().unwrap()
    } else {
        ctx
    };
    let mut trimmed = Vec::with_capacity(rows * len);
    for r in 0..rows {
        trimmed.extend(ids_row(&ids_all, r, ctx, len));
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(trimmed, [rows, len]), &device);
    let clip = &model.clip;

    // The texts shorter than the context, alone: encoded to their own longest length only.
    let short: Vec<usize> = (0..rows).filter(|&r| lengths[r] < ctx).collect();
    if trim && !short.is_empty() {
        let short_len = short.iter().map(|&r| lengths[r]).max().unwrap();
        assert!(short_len < ctx);
        let mut short_ids = Vec::new();
        let mut want = Vec::new();
        let e = want_txt.len() / rows;
        for &r in &short {
            short_ids.extend(ids_row(&ids_all, r, ctx, short_len));
            want.extend_from_slice(&want_txt[r * e..(r + 1) * e]);
        }
        let short_lengths: Vec<usize> = short.iter().map(|&r| lengths[r]).collect();
        let t = Tensor::<2, Int>::from_data(
            TensorData::new(short_ids, [short.len(), short_len]),
            &device,
        );
        let d = max_abs_diff(&vec_f32(clip.encode_text(t, &short_lengths)), &want);
        eprintln!(
            "  {} short texts at length {short_len} (reference at {ctx}): max |diff| {d:.2e}",
            short.len()
        );
        assert!(d <= TOL_EMBED, "trimmed short texts differ by {d}");
    }

    let img = vec_f32(clip.encode_image(pixels.clone()));
    let txt = vec_f32(clip.encode_text(ids.clone(), &lengths));
    let (per_image, per_text) = clip.forward(pixels, ids, &lengths);
    let d_img = max_abs_diff(&img, &want_img);
    let d_txt = max_abs_diff(&txt, &want_txt);
    let d_logits = max_abs_diff(&vec_f32(per_image.clone()), &want_logits);
    let d_sym = max_abs_diff(
        &vec_f32(per_text),
        &vec_f32(per_image.transpose())
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>(),
    );
    eprintln!(
        "{} ({:?}, text length {len}): max |diff| image {d_img:.2e}, text {d_txt:.2e}, logits {d_logits:.2e}",
        model.report.weights.display(),
        model.report.layout,
    );
    assert!(d_img <= TOL_EMBED, "image embeddings differ by {d_img}");
    assert!(d_txt <= TOL_EMBED, "text embeddings differ by {d_txt}");
    assert!(d_logits <= TOL_LOGITS, "logits differ by {d_logits}");
    assert_eq!(d_sym, 0.0, "logits_per_text is not the transpose");
}

fn load(path: &Path, arch: Option<&Path>) -> LoadedModel {
    let device = siam::device::from_env();
    let arch = arch.map(|a| a.to_str().unwrap().to_string());
    load_model(path, arch.as_deref(), &device)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

#[test]
fn hugging_face_vit_matches_transformers() {
    let dir = fixtures().join("clip/hf_vit");
    let m = load(&dir, None);
    assert_eq!(m.report.layout, Layout::HuggingFace);
    // 2 towers x 2 blocks x 12 tensors (q/k/v fused into 2) + 7 vision + 5 text + logit_scale.
    assert_eq!(m.report.applied, 2 * 2 * 12 + 8 + 5 + 1);
    check(&dir, &m, true);
    check(&dir, &m, false);
}

#[test]
fn open_clip_vit_fp16_pickle_matches_open_clip() {
    let dir = fixtures().join("clip/open_clip_vit");
    let m = load(
        &dir.join("model.pt"),
        Some(&dir.join("open_clip_config.json")),
    );
    assert_eq!(m.report.layout, Layout::OpenClip);
    assert_eq!(m.report.converted_from, vec!["F16".to_string()]);
    check(&dir, &m, true);
    check(&dir, &m, false);
}

#[test]
fn open_clip_vit_fp16_safetensors_matches_open_clip() {
    let dir = fixtures().join("clip/open_clip_vit");
    let m = load(
        &dir.join("model.safetensors"),
        Some(&dir.join("open_clip_config.json")),
    );
    check(&dir, &m, true);
}

#[test]
fn open_clip_resnet_matches_open_clip() {
    let dir = fixtures().join("clip_rn");
    for file in ["model.safetensors", "model.pt"] {
        let m = load(&dir.join(file), Some(&dir.join("open_clip_config.json")));
        assert_eq!(m.report.layout, Layout::OpenClip);
        // BatchNorm step counters are the only tensors left unused.
        assert!(m
            .report
            .ignored
            .iter()
            .all(|k| k.ends_with("num_batches_tracked")));
        assert!(!m.report.ignored.is_empty());
        check(&dir, &m, true);
    }
}
