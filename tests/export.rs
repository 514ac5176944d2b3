//! `siam export`: trained models (linear heads, with and without biases, on the Hugging Face
//! ViT, open_clip ViT and open_clip ResNet test CLIPs) are exported, and the Python library each
//! format is for must compute siam's embeddings from the export within 1e-4.
//!
//! The Python side is `tests/fixtures/export/check_export.py`. With `SIAM_PYTHON` pointing at a
//! python with torch, transformers and open_clip_torch, the test runs it on today's export;
//! otherwise it compares with the outputs that script wrote, committed under
//! `tests/fixtures/export/<case>_<format>/`, after checking that today's export has exactly the
//! bytes (SHA-256 of the weights) the script loaded. `SIAM_UPDATE_FIXTURES=1` (with
//! `SIAM_PYTHON`) rewrites those outputs. Siam's own importer must also read every export back
//! to the same embeddings.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use sha2::{Digest, Sha256};
use siam::export::{export, ExportFormat};
use siam::model::encoder::{to_vec, Encoder};
use siam::model::folder;
use siam::model::heads::{HeadConfig, HeadKind, ProjectionHead};

const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    support::fixtures("")
}

/// A trained model to export: a fixture CLIP plus linear heads into `joint` dimensions.
struct Case {
    name: &'static str,
    /// Fixture folder with the CLIP and its inputs (pixel_values.npy, input_ids.npy, ...).
    base: &'static str,
    /// The checkpoint inside `base` (`None`: the folder itself).
    weights: Option<&'static str>,
    /// `--arch` inside `base`.
    arch: Option<&'static str>,
    joint: usize,
    image_bias: bool,
    text_bias: bool,
    formats: &'static [ExportFormat],
}

const HF_VIT: Case = Case {
    name: "hf_vit",
    base: "clip/hf_vit",
    weights: None,
    arch: None,
    // The text tower is 4 wide: a bias into 8 joint dimensions could not be folded.
    joint: 8,
    image_bias: true,
    text_bias: false,
    formats: &[ExportFormat::Hf, ExportFormat::OpenClip],
};

const OPEN_CLIP_VIT: Case = Case {
    name: "open_clip_vit",
    base: "clip/open_clip_vit",
    weights: Some("model.safetensors"),
    arch: Some("open_clip_config.json"),
    joint: 4,
    image_bias: true,
    text_bias: true,
    formats: &[ExportFormat::Hf, ExportFormat::OpenClip],
};

const RESNET: Case = Case {
    name: "resnet",
    base: "clip_rn",
    weights: Some("model.safetensors"),
    arch: Some("open_clip_config.json"),
    joint: 4,
    image_bias: true,
    text_bias: true,
    formats: &[ExportFormat::OpenClip],
};

/// A linear head with fixed, exactly representable values: `W[i][j]` from a small integer
/// pattern plus the identity on the diagonal, and a bias or zeros.
fn linear_head(d_in: usize, d_out: usize, salt: usize, bias: bool, d: &Device) -> ProjectionHead {
    let mut head = HeadConfig::linear(d_in, d_out).init(d);
    let lin = head.proj.as_mut().unwrap();
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|k| {
            let (i, j) = (k / d_out, k % d_out);
            ((i * 7 + j * 13 + salt) % 17) as f32 / 16.0 - 0.5 + if i == j { 1.0 } else { 0.0 }
        })
        .collect();
    let b: Vec<f32> = (0..d_out)
        .map(|j| {
            if bias {
                ((j * 5 + salt) % 7) as f32 / 8.0 - 0.375
            } else {
                0.0
            }
        })
        .collect();
    lin.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), d));
    lin.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [d_out]),
        d,
    )));
    head
}

fn load_base(case: &Case, device: &Device) -> Encoder {
    let base = fixtures().join(case.base);
    let model = case.weights.map_or(base.clone(), |w| base.join(w));
    let arch = case.arch.map(|a| base.join(a).display().to_string());
    Encoder::load(&model, arch.as_deref(), device).unwrap()
}

/// Writes the case's trained model folder (what `siam train --head linear` leaves) into `dir`.
fn trained_folder(case: &Case, image_kind: HeadKind, dir: &Path) -> PathBuf {
    let d = Device::flex();
    let enc = load_base(case, &d);
    let e = enc.card.clip.embed_dim;
    let mut card = enc.card.clone();
    let mut model = enc.model;
    card.image_head = HeadConfig::linear(e, case.joint);
    card.text_head = HeadConfig::linear(e, case.joint);
    card.joint_dim = case.joint;
    model.image_head = linear_head(e, case.joint, 1, case.image_bias, &d);
    model.text_head = linear_head(e, case.joint, 4, case.text_bias, &d);
    if image_kind == HeadKind::Adapter {
        card.image_head.kind = HeadKind::Adapter;
        model.image_head = card.image_head.init(&d);
    }
    let out = dir.join(format!("{}-trained", case.name));
    folder::save(&out, &model, &card, None).unwrap();
    out
}

/// A `.npy` array (support's reader): `(values as f64, shape)`.
fn npy(path: &Path) -> (Vec<f64>, Vec<usize>) {
    let a = support::read_npy(path);
    (a.values, a.shape)
}

/// Normalised image and text embeddings of a model on the base fixture's inputs.
fn siam_embeddings(model: &Path, base: &Path) -> (Vec<f32>, Vec<f32>) {
    let device = siam::device::from_env();
    let enc = Encoder::load(model, None, &device)
        .unwrap_or_else(|e| panic!("loading {}: {e}", model.display()));
    let (px, _) = npy(&base.join("pixel_values.npy"));
    let px: Vec<f32> = px.iter().map(|&v| v as f32).collect();
    let img = enc.embed_pixels(&px).unwrap();
    let (ids, shape) = npy(&base.join("input_ids.npy"));
    let (lengths, _) = npy(&base.join("input_lengths.npy"));
    let lengths: Vec<usize> = lengths.iter().map(|&l| l as usize).collect();
    let (rows, ctx) = (shape[0], shape[1]);
    let len = *lengths.iter().max().unwrap();
    let trimmed: Vec<i64> = (0..rows)
        .flat_map(|r| ids[r * ctx..r * ctx + len].iter().map(|&v| v as i64))
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(trimmed, [rows, len]), &device);
    let txt = to_vec(enc.encode_texts(ids, &lengths));
    (img, txt)
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn weights_file(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Hf => "model.safetensors",
        ExportFormat::OpenClip => "open_clip_model.safetensors",
    }
}

fn python() -> Option<String> {
    std::env::var("SIAM_PYTHON").ok().filter(|p| !p.is_empty())
}

/// The Python library's embeddings of an export: freshly computed with `SIAM_PYTHON`, else the
/// committed ones (after checking they were computed from these very bytes).
fn python_embeddings(
    case: &Case,
    format: ExportFormat,
    export_dir: &Path,
    scratch: &Path,
) -> (Vec<f64>, Vec<f64>) {
    let committed = fixtures()
        .join("export")
        .join(format!("{}_{format}", case.name));
    let out = match python() {
        Some(py) => {
            let out = if std::env::var("SIAM_UPDATE_FIXTURES").is_ok_and(|v| v == "1") {
                committed.clone()
            } else {
                scratch.join(format!("py-{}-{format}", case.name))
            };
            let flag = match format {
                ExportFormat::Hf => "--hf",
                ExportFormat::OpenClip => "--open-clip",
            };
            let script = fixtures().join("export/check_export.py");
            let o = Command::new(&py)
                .arg(&script)
                .arg(flag)
                .arg(export_dir)
                .arg("--inputs")
                .arg(fixtures().join(case.base))
                .arg("--out")
                .arg(&out)
                .output()
                .expect("running SIAM_PYTHON");
            assert!(
                o.status.success(),
                "{} {} failed:\n{}",
                py,
                script.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            out
        }
        None => {
            let reference: serde_json::Value = serde_json::from_slice(
                &std::fs::read(committed.join("reference.json")).unwrap_or_else(|e| {
                    panic!("{}: {e}", committed.join("reference.json").display())
                }),
            )
            .unwrap();
            let sha = sha256_hex(&export_dir.join(weights_file(format)));
            assert_eq!(
                reference["weights_sha256"].as_str(),
                Some(sha.as_str()),
                "{}: the export's bytes changed since the Python reference was computed; rerun with SIAM_PYTHON=... SIAM_UPDATE_FIXTURES=1",
                committed.display()
            );
            committed
        }
    };
    (
        npy(&out.join("image_embeds.npy")).0,
        npy(&out.join("text_embeds.npy")).0,
    )
}

fn check_case(case: &Case) {
    let tmp = tempfile::tempdir().unwrap();
    let trained = trained_folder(case, HeadKind::Linear, tmp.path());
    let base = fixtures().join(case.base);
    let (img, txt) = siam_embeddings(&trained, &base);
    let device = Device::flex();
    let enc = Encoder::load(&trained, None, &device).unwrap();
    for &format in case.formats {
        let out = tmp.path().join(format!("{}-{format}", case.name));
        let report = export(&enc, format, &out, &trained.display().to_string())
            .unwrap_or_else(|e| panic!("{} {format}: {e}", case.name));
        assert_eq!(report.embed_dim, case.joint);
        assert!(out.join(siam::export::MARKER).is_file());

        // siam's own importer reads the export back (identity heads, the folded projections).
        let (img2, txt2) = siam_embeddings(&out, &base);
        let as64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let d_img = max_abs_diff(&img2, &as64(&img));
        let d_txt = max_abs_diff(&txt2, &as64(&txt));
        eprintln!(
            "{} {format}: siam re-import max |diff| image {d_img:.1e}, text {d_txt:.1e}",
            case.name
        );
        assert!(d_img <= 1e-5 && d_txt <= 1e-5, "re-import differs");

        let (py_img, py_txt) = python_embeddings(case, format, &out, tmp.path());
        let d_img = max_abs_diff(&img, &py_img);
        let d_txt = max_abs_diff(&txt, &py_txt);
        eprintln!(
            "{} {format}: Python max |diff| image {d_img:.1e}, text {d_txt:.1e} ({})",
            case.name,
            if python().is_some() {
                "fresh"
            } else {
                "committed"
            }
        );
        assert!(
            d_img <= TOL,
            "{} {format}: image embeddings differ by {d_img}",
            case.name
        );
        assert!(
            d_txt <= TOL,
            "{} {format}: text embeddings differ by {d_txt}",
            case.name
        );
    }
}

#[test]
fn hf_vit_with_linear_heads_matches_transformers_and_open_clip() {
    check_case(&HF_VIT);
}

#[test]
fn open_clip_vit_with_biased_heads_matches_transformers_and_open_clip() {
    check_case(&OPEN_CLIP_VIT);
}

#[test]
fn resnet_with_biased_heads_matches_open_clip() {
    check_case(&RESNET);
}

#[test]
fn refusals_name_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Device::flex();
    // A text bias into 8 dimensions from a 4-wide text tower cannot be folded.
    let unfoldable = Case {
        text_bias: true,
        ..HF_VIT
    };
    let trained = trained_folder(&unfoldable, HeadKind::Linear, tmp.path());
    let enc = Encoder::load(&trained, None, &d).unwrap();
    let out = tmp.path().join("x");
    let e = export(&enc, ExportFormat::Hf, &out, "m")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("text head's bias") && e.contains("only 4 of the 8"),
        "{e}"
    );
    assert!(!out.exists(), "nothing is written on a refusal");

    // A ResNet has no Hugging Face CLIPModel counterpart.
    let rn = trained_folder(&RESNET, HeadKind::Linear, tmp.path());
    let enc = Encoder::load(&rn, None, &d).unwrap();
    let e = export(&enc, ExportFormat::Hf, &out, "rn")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no ResNet image tower") && e.contains("--format open_clip"),
        "{e}"
    );

    // A folder siam did not write is never replaced; a previous export is.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let e = export(&enc, ExportFormat::OpenClip, &out, "rn")
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not an export folder written by siam"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    let again = tmp.path().join("again");
    export(&enc, ExportFormat::OpenClip, &again, "rn").unwrap();
    export(&enc, ExportFormat::OpenClip, &again, "rn").unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.contains(".old."))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
}

#[test]
fn the_binary_exports_and_refuses_adapters_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let siam = env!("CARGO_BIN_EXE_siam");
    let trained = trained_folder(&OPEN_CLIP_VIT, HeadKind::Linear, tmp.path());
    let out = tmp.path().join("eyes-hf");
    let o = Command::new(siam)
        .args(["export"])
        .arg(&trained)
        .args(["--format", "hf", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("folded into visual.proj"), "{stderr}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    let adapter = trained_folder(&OPEN_CLIP_VIT, HeadKind::Adapter, tmp.path());
    let out = tmp.path().join("adapter-hf");
    let o = Command::new(siam)
        .args(["export"])
        .arg(&adapter)
        .args(["--format", "open_clip", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("image head is a CLIP-Adapter") && stderr.contains("--head adapter"),
        "{stderr}"
    );
    assert!(!out.exists());
}
