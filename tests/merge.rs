//! `siam merge` and `siam eval --alphas` (WiSE-FT) end to end: the endpoints reproduce the
//! input models' weights and embeddings bit for bit, alpha 0.5 is their mean, models of another
//! shape are refused with a one-line error naming the tensor or field, and the curve's alpha-0
//! point is the zero-shot model's own zero-shot accuracy.

mod support;

use std::path::Path;

use burn::tensor::Device;
use siam::clip::config::ClipConfig;
use siam::clip::model::Clip;
use siam::merge::named_tensors;
use siam::model::encoder::{clip_card, Encoder};
use siam::model::folder::{self, InitialWeights};
use siam::model::heads::HeadConfig;
use siam::model::twin::TwinTowers;
use support::{ok, siam};

/// A random tiny model folder with linear heads into `joint` dimensions.
fn save_model(dir: &Path, seed: u64, joint: usize) {
    let d = Device::flex();
    let cfg = ClipConfig::tiny();
    let head = HeadConfig::linear(cfg.embed_dim, joint);
    let model =
        siam::model::init::seeded(&d, seed, || TwinTowers::new(Clip::new(&cfg, &d), head, &d));
    let mut card = clip_card(
        &cfg,
        InitialWeights::Random {
            arch: "tiny".into(),
            seed,
        },
        None,
    );
    card.image_head = head;
    card.text_head = head;
    card.joint_dim = joint;
    folder::save(dir, &model, &card, None).unwrap();
}

fn embeddings(model: &Path, texts: &[&str], pixels: &[f32]) -> (Vec<u32>, Vec<u32>) {
    let enc = Encoder::load(model, None, &Device::flex()).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    (
        bits(enc.embed_texts(texts).unwrap()),
        bits(enc.embed_pixels(pixels).unwrap()),
    )
}

#[test]
fn merge_endpoints_mean_and_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (zs, ft, other) = (
        dir.path().join("zs"),
        dir.path().join("ft"),
        dir.path().join("other"),
    );
    save_model(&zs, 1, 16);
    save_model(&ft, 2, 16);
    save_model(&other, 3, 8);
    let s = |p: &Path| p.display().to_string();
    let texts = ["a red circle", "a blue square"];
    let size = ClipConfig::tiny().image_size();
    let pixels: Vec<f32> = (0..2 * 3 * size * size)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    for (alpha, want) in [("0", &zs), ("1", &ft)] {
        let out = dir.path().join(format!("m{alpha}"));
        ok(&[
            "merge",
            "--alpha",
            alpha,
            &s(&zs),
            &s(&ft),
            "--out",
            &s(&out),
        ]);
        let d = Device::flex();
        let bits = |p: &Path| -> Vec<(String, Vec<u32>)> {
            named_tensors(&folder::load(p, &d).unwrap().0)
                .into_iter()
                .map(|(n, t)| {
                    let v = t.try_to_vec::<f32>().unwrap();
                    (n, v.into_iter().map(f32::to_bits).collect())
                })
                .collect()
        };
        let (got, exp) = (bits(&out), bits(want));
        assert_eq!(got.len(), exp.len());
        for (g, e) in got.iter().zip(&exp) {
            assert!(
                g == e,
                "alpha {alpha}: tensor {} differs from the input",
                g.0
            );
        }
        assert_eq!(
            embeddings(&out, &texts, &pixels),
            embeddings(want, &texts, &pixels)
        );
    }
    let half = dir.path().join("half");
    ok(&[
        "merge",
        "--alpha",
        "0.5",
        &s(&zs),
        &s(&ft),
        "--out",
        &s(&half),
    ]);
    let d = Device::flex();
    let load = |p: &Path| folder::load(p, &d).unwrap().0;
    let (a, b, m) = (load(&zs), load(&ft), load(&half));
    let val = |t: &TwinTowers| {
        t.clip
            .text
            .positional_embedding
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    for ((x, y), h) in val(&a).iter().zip(val(&b)).zip(val(&m)) {
        assert!((h - 0.5 * (x + y)).abs() < 1e-7, "{h} vs {x}, {y}");
    }
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(half.join("siam.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["merge"]["alpha"], 0.5);
    // Another head size: one line naming the tensor, and no output folder.
    let bad = dir.path().join("bad");
    let out = siam(&[
        "merge",
        "--alpha",
        "0.5",
        &s(&zs),
        &s(&other),
        "--out",
        &s(&bad),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("joint_dim") || err.contains("image_head"),
        "{err}"
    );
    assert!(!bad.exists());
    let out = siam(&[
        "merge",
        "--alpha",
        "1.5",
        &s(&zs),
        &s(&ft),
        "--out",
        &s(&bad),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--alpha 1.5"));
}

#[test]
fn alpha_curve_starts_at_the_zero_shot_model() {
    let dir = tempfile::tempdir().unwrap();
    let (zs, ft) = (dir.path().join("zs"), dir.path().join("ft"));
    save_model(&zs, 1, 16);
    save_model(&ft, 2, 16);
    let demo = dir.path().join("demo");
    let s = |p: &Path| p.display().to_string();
    ok(&["demo-data", "--out", &s(&demo), "--per-class", "3"]);
    let images = s(&demo.join("images"));
    let json = dir.path().join("curve.json");
    let table = ok(&[
        "eval",
        "--alphas",
        "0,0.5,1",
        "--model",
        &s(&zs),
        "--model",
        &s(&ft),
        "--data",
        &images,
        "--data",
        &images,
        "--split",
        "all",
        "--json",
        &s(&json),
    ]);
    assert!(table.contains("in-domain"), "{table}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let sets = v["datasets"].as_array().unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(sets[0]["top1"].as_array().unwrap().len(), 3);
    assert!(json.with_extension("png").is_file());
    let single = dir.path().join("zs.json");
    ok(&[
        "eval",
        "--model",
        &s(&zs),
        "--data",
        &images,
        "--split",
        "all",
        "--no-linear-probe",
        "--json",
        &s(&single),
    ]);
    let z: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&single).unwrap()).unwrap();
    assert_eq!(sets[0]["top1"][0], z["zero_shot"]["top1"]);
    // One model only: a one-line error.
    let out = siam(&[
        "eval",
        "--alphas",
        "0,1",
        "--model",
        &s(&zs),
        "--data",
        &images,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model twice"));
}
