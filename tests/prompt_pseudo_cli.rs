//! `siam pseudo-label` and `siam train --prompt` end to end on the demo set with the tiny
//! open_clip fixture: the threshold and per-class cap hold in the written table, the accuracy
//! report and plots appear when the images have true labels, the table goes back into
//! `siam train` (weights and prompts), and learned prompts change what `classify` and `eval` say.

mod support;

use std::path::Path;

use support::{ok, siam};

const LABELS: &str = "blue circle,blue square,blue triangle,green circle,green square,\
green triangle,red circle,red square,red triangle,yellow circle,yellow square,yellow triangle";

fn fixture() -> (String, String) {
    let d = support::fixtures("clip/open_clip_vit");
    (
        d.join("model.safetensors").display().to_string(),
        d.join("open_clip_config.json").display().to_string(),
    )
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn pseudo_labels_threshold_cap_report_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    ok(&["demo-data", "--out", &s(&demo), "--per-class", "6"]);
    let (model, arch) = fixture();
    let table = demo.join("pseudo.csv");
    let stdout = ok(&[
        "pseudo-label",
        "--model",
        &model,
        "--arch",
        &arch,
        "--data",
        &s(&demo.join("images")),
        "--labels",
        LABELS,
        "--out",
        &s(&table),
        "--top-k",
        "3",
        "--min-confidence",
        "0.05",
        "--per-class",
        "3",
    ]);
    assert!(stdout.contains("coverage"), "{stdout}");
    let text = std::fs::read_to_string(&table).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert!(!rows.is_empty());
    let mut per_label = std::collections::HashMap::new();
    for r in &rows {
        let conf: f32 = r[2].parse().unwrap();
        assert!(conf >= 0.05, "{conf}");
        assert!(demo.join(r[0]).is_file(), "{}", r[0]);
        assert_eq!(r[3].split('|').count(), 2, "two alternatives in {:?}", r[3]);
        *per_label.entry(r[1]).or_insert(0) += 1;
    }
    assert!(per_label.values().all(|&n| n <= 3), "{per_label:?}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("pseudo.metrics.json")).unwrap())
            .unwrap();
    assert_eq!(report["images"], 72);
    assert_eq!(report["kept"].as_u64().unwrap() as usize, rows.len());
    assert!(report["top_k"].as_f64().unwrap() >= report["top1"].as_f64().unwrap());
    assert!(demo.join("pseudo.coverage.png").is_file());
    assert!(demo.join("pseudo.reliability.png").is_file());
    // A threshold nothing passes keeps nothing; the cap bounds each label.
    let none = demo.join("none.csv");
    ok(&[
        "pseudo-label",
        "--model",
        &model,
        "--arch",
        &arch,
        "--data",
        &s(&demo.join("images")),
        "--labels",
        LABELS,
        "--out",
        &s(&none),
        "--min-confidence",
        "1",
    ]);
    assert_eq!(std::fs::read_to_string(&none).unwrap().lines().count(), 1);
    // The table goes back into siam train: prompt learning weighted by confidence ...
    let run = dir.path().join("run");
    ok(&[
        "train",
        "--prompt",
        "coop:2",
        "--model",
        &model,
        "--arch",
        &arch,
        "--data",
        &s(&table),
        "--weight-by",
        "confidence",
        "--epochs",
        "1",
        "--out",
        &s(&run),
        "-q",
    ]);
    assert!(run.join("prompts.json").is_file());
    // ... and ordinary training reads it as a label table.
    let plain = dir.path().join("plain");
    let out = siam(&[
        "train",
        "--arch",
        "tiny",
        "--data",
        &s(&table),
        "--epochs",
        "1",
        "--classes-per-batch",
        "2",
        "--per-class",
        "1",
        "--out",
        &s(&plain),
        "--no-index",
        "-q",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{} images", rows.len())), "{err}");
    // Weighting needs --prompt; a bad option is one line.
    let out = siam(&["train", "--data", &s(&table), "--weight-by", "confidence"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--weight-by"));
}

#[test]
fn prompt_learning_is_saved_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    ok(&["demo-data", "--out", &s(&demo), "--per-class", "10"]);
    let images = s(&demo.join("images"));
    let (model, arch) = fixture();
    let run = dir.path().join("run");
    let stdout = ok(&[
        "train",
        "--prompt",
        "coop:4:csc",
        "--prompt-position",
        "middle",
        "--model",
        &model,
        "--arch",
        &arch,
        "--data",
        &images,
        "--shots",
        "2",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--out",
        &s(&run),
        "-q",
    ]);
    assert!(stdout.contains("learned prompts"), "{stdout}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("prompts.json")).unwrap()).unwrap();
    assert_eq!(card["n_ctx"], 4);
    assert_eq!(card["class_specific"], true);
    assert_eq!(card["training"]["shots"], 2);
    assert_eq!(card["training"]["report"]["train_images"], 24);
    // demo-data puts each image in the split `siam train` gives it: the first red circle.
    let img = ["train", "val", "test"]
        .iter()
        .map(|split| demo.join("images").join(split).join("red_circle/0000.png"))
        .find(|p| p.is_file())
        .expect("red_circle/0000.png in one split folder");
    let img = s(&img);
    let learned = ok(&[
        "classify",
        &img,
        "--model",
        &s(&run),
        "--labels",
        LABELS,
        "--json",
    ]);
    let hand = ok(&[
        "classify", &img, "--model", &model, "--arch", &arch, "--labels", LABELS, "--json",
    ]);
    assert_ne!(learned, hand, "classify must use the learned prompts");
    let eval = ok(&[
        "eval",
        "--model",
        &s(&run),
        "--data",
        &images,
        "--no-linear-probe",
    ]);
    assert!(
        eval.contains("(templates)") && eval.contains("(learned)"),
        "{eval}"
    );
    // A metric loss instead of the cross-entropy, and a phrase init.
    let run2 = dir.path().join("run2");
    ok(&[
        "train",
        "--prompt",
        "coop:4",
        "--prompt-init",
        "a photo of a",
        "--loss",
        "triplet",
        "--model",
        &model,
        "--arch",
        &arch,
        "--data",
        &images,
        "--shots",
        "1",
        "--epochs",
        "1",
        "--out",
        &s(&run2),
        "-q",
    ]);
    let out = siam(&[
        "train", "--prompt", "coop:x", "--model", &model, "--data", &images,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--prompt") && err.trim_end().lines().count() == 1,
        "{err}"
    );
}
