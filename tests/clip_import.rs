//! Weight import: what is reported, and the errors bad input gets (a BERT checkpoint, a
//! TorchScript archive, an architecture that does not fit, a truncated file, a folder without a
//! model, a siam model folder round trip). Fixtures from `tests/fixtures/make_clip_fixtures.py` and `make_resnet_fixtures.py`.

mod support;

use burn::tensor::{Distribution, Int, Tensor, TensorData, Tolerance};
use siam::clip::config::ClipConfig;
use siam::clip::import::{load_model, ImportError, Layout};
use siam::clip::model::Clip;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    support::fixtures("")
}

fn open_clip_vit() -> PathBuf {
    fixtures().join("clip/open_clip_vit")
}

/// Writes a safetensors file of f32 tensors filled with zeros.
fn write_safetensors(path: &Path, tensors: &[(&str, &[usize])]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product::<usize>() * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(vec![0u8; offset]);
    std::fs::write(path, bytes).unwrap();
}

/// An open_clip config like the fixture's, with one vision setting changed.
fn arch_with(dir: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(open_clip_vit().join("open_clip_config.json")).unwrap(),
    )
    .unwrap();
    cfg["vision_cfg"][key] = value;
    let p = dir.join(format!("arch_{key}.json"));
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn load_err(path: &Path, arch: Option<&Path>) -> ImportError {
    let device = siam::device::from_env();
    let arch = arch.map(|a| a.to_str().unwrap().to_string());
    match load_model(path, arch.as_deref(), &device) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e,
    }
}

#[test]
fn report_counts_every_tensor() {
    let device = siam::device::from_env();
    let dir = open_clip_vit();
    let arch = dir.join("open_clip_config.json");
    let m = load_model(&dir.join("model.pt"), Some(arch.to_str().unwrap()), &device).unwrap();
    // Every file tensor is used: 62 in open_clip's state dict, our fused layout has as many.
    assert_eq!(m.report.file_tensors, 62);
    assert_eq!(m.report.applied, 62);
    assert!(m.report.ignored.is_empty());
    assert_eq!(m.tokenizer_path, None);
    assert_eq!(m.config.image_size(), 32);
    assert_eq!(m.config.context_length(), 77);
}

#[test]
fn bert_checkpoint_is_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bert = tmp.path().join("bert.safetensors");
    write_safetensors(
        &bert,
        &[
            ("bert.embeddings.word_embeddings.weight", &[30, 8]),
            ("bert.encoder.layer.0.attention.self.query.weight", &[8, 8]),
            ("cls.predictions.bias", &[30]),
        ],
    );
    for arch in [None, Some(Path::new("ViT-B-32"))] {
        let e = load_err(&bert, arch);
        let msg = e.to_string();
        assert!(matches!(e, ImportError::NotClip { .. }), "{msg}");
        assert!(
            msg.contains("bert.safetensors") && msg.contains("not a CLIP checkpoint"),
            "{msg}"
        );
        assert!(
            msg.contains("bert.embeddings.word_embeddings.weight"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    // A BERT folder in the Hugging Face layout is refused by its config.
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"model_type": "bert", "hidden_size": 8}"#,
    )
    .unwrap();
    std::fs::rename(&bert, tmp.path().join("model.safetensors")).unwrap();
    let msg = load_err(tmp.path(), None).to_string();
    assert!(
        msg.contains("config.json") && msg.contains("\"bert\""),
        "{msg}"
    );
}

#[test]
fn torchscript_archive_says_how_to_convert() {
    let ts = fixtures().join("clip/torchscript_tiny.pt");
    let e = load_err(&ts, Some(Path::new("ViT-B-32-quickgelu")));
    let msg = e.to_string();
    assert!(matches!(e, ImportError::TorchScript { .. }), "{msg}");
    assert!(
        msg.contains("torchscript_tiny.pt") && msg.contains("TorchScript"),
        "{msg}"
    );
    assert!(
        msg.contains("jit=False") && msg.contains("state_dict()"),
        "{msg}"
    );
}

#[test]
fn architecture_mismatches_list_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = open_clip_vit().join("model.safetensors");

    // One vision block more than the file has: its tensors are missing.
    let e = load_err(&weights, Some(&arch_with(tmp.path(), "layers", 3.into())));
    let ImportError::KeyMismatch {
        missing,
        unexpected,
        mis_shaped,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(missing.len(), 12, "{e}");
    assert!(
        missing.contains(&"visual.transformer.resblocks.2.attn.in_proj_weight".to_string()),
        "{e}"
    );
    assert!(unexpected.is_empty() && mis_shaped.is_empty(), "{e}");
    assert!(
        e.to_string()
            .contains("12 missing: visual.transformer.resblocks.2."),
        "{e}"
    );

    // One fewer: the file's last block is unexpected.
    let e = load_err(&weights, Some(&arch_with(tmp.path(), "layers", 1.into())));
    let ImportError::KeyMismatch {
        missing,
        unexpected,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert!(missing.is_empty(), "{e}");
    assert_eq!(unexpected.len(), 12, "{e}");
    assert!(
        unexpected
            .iter()
            .all(|k| k.starts_with("visual.transformer.resblocks.1.")),
        "{e}"
    );

    // Another patch size: the patch embedding and position table are mis-shaped.
    let e = load_err(
        &weights,
        Some(&arch_with(tmp.path(), "patch_size", 16.into())),
    );
    let ImportError::KeyMismatch { mis_shaped, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(mis_shaped.len(), 2, "{e}");
    assert!(
        mis_shaped.iter().any(|m| m
            .starts_with("visual.conv1.weight: file [32, 3, 8, 8], model expects [32, 3, 16, 16]")),
        "{e}"
    );
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // A ViT checkpoint under a ResNet architecture: everything visual differs.
    let e = load_err(
        &weights,
        Some(&fixtures().join("clip_rn/open_clip_config.json")),
    );
    assert!(matches!(e, ImportError::KeyMismatch { .. }), "{e}");
}

#[test]
fn bad_files_and_folders() {
    let tmp = tempfile::tempdir().unwrap();
    // A bare file without --arch.
    let e = load_err(&open_clip_vit().join("model.pt"), None);
    assert!(
        matches!(e, ImportError::NoArch { .. }) && e.to_string().contains("--arch"),
        "{e}"
    );
    // A truncated safetensors file.
    let bytes = std::fs::read(open_clip_vit().join("model.safetensors")).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&cut, Some(Path::new("ViT-B-32")));
    assert!(e.to_string().contains("cut.safetensors"), "{e}");
    assert!(matches!(e, ImportError::Corrupt { .. }), "{e}");
    // Text is not a checkpoint.
    let txt = tmp.path().join("notes.bin");
    std::fs::write(&txt, "hello world, not weights").unwrap();
    let e = load_err(&txt, Some(Path::new("ViT-B-32")));
    assert!(matches!(e, ImportError::UnknownFormat { .. }), "{e}");
    // An empty folder.
    let e = load_err(tmp.path(), None);
    assert!(matches!(e, ImportError::NotAModelFolder { .. }), "{e}");
    // A missing arch file is named.
    let e = load_err(
        &open_clip_vit().join("model.pt"),
        Some(Path::new("/nonexistent/arch.json")),
    );
    assert!(e.to_string().contains("/nonexistent/arch.json"), "{e}");
}

/// A model loaded from open_clip's layout, saved as a siam model folder (the one format siam
/// writes), loads back identically (ResNet image tower: the enum variant must not leak into the
/// keys, and the BatchNorm statistics travel too).
#[test]
fn siam_folder_round_trip_of_an_imported_resnet() {
    use siam::model::encoder::clip_card;
    use siam::model::folder::{self, InitialWeights};
    let device = siam::device::from_env();
    let dir = fixtures().join("clip_rn");
    let weights = dir.join("model.safetensors");
    let arch = dir.join("open_clip_config.json");
    let m = load_model(&weights, Some(arch.to_str().unwrap()), &device).unwrap();
    assert_eq!(m.report.layout, Layout::OpenClip);
    let card = clip_card(
        &m.config,
        InitialWeights::Checkpoint {
            path: weights.display().to_string(),
        },
        None,
    );
    let mut model = card.init(&device);
    model.clip = m.clip;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    std::fs::create_dir_all(&out).unwrap();
    folder::save(&out, &model, &card, None).unwrap();
    assert!(out.join("siam.json").is_file() && out.join("model.safetensors").is_file());
    let (back, back_card) = folder::load(&out, &device).unwrap();
    assert_eq!(back_card.clip, m.config);
    let px = Tensor::<4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(vec![49406i64, 320, 49407], [1, 3]), &device);
    let (a, _) = model.clip.forward(px.clone(), ids.clone(), &[3]);
    let (b, _) = back.clip.forward(px, ids, &[3]);
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-6));
}

/// Random init is usable as is (the lead's demo) and has the preset's parameter count:
/// open_clip reports 151,277,313 parameters for ViT-B-32 (`open_clip.create_model('ViT-B-32')`).
#[test]
fn vit_b_32_random_init_has_open_clips_parameter_count() {
    use burn::module::Module;
    let device = siam::device::from_env();
    let clip = Clip::new(&ClipConfig::vit_b_32(), &device);
    assert_eq!(clip.num_params(), 151_277_313);
}
