//! The `siam` binary end to end: `embed` and `classify` against the Python reference outputs
//! stored with the tiny Hugging Face CLIP fixture, `train` -> `index` -> `query` -> `eval` on the
//! synthetic demo set, and bad input (one-line error, non-zero exit, no output file).

mod support;

use std::path::PathBuf;

use support::{fails, ok, siam};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(p: &str) -> String {
    support::fixtures(p).display().to_string()
}

fn read_npy(p: &std::path::Path) -> (Vec<f32>, usize, usize) {
    let a = support::read_npy(p);
    (a.f32(), a.shape[0], a.shape[1])
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

#[test]
fn embed_texts_matches_transformers_end_to_end() {
    // Tokenizer + text tower + projection through the binary, against transformers' outputs.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.npy");
    let texts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip/hf_vit/texts.json")).unwrap())
            .unwrap();
    let mut args = vec!["embed", "--model", "MODEL", "--out", "OUT", "--texts"];
    let model = fixture("clip/hf_vit");
    let out_s = out.display().to_string();
    args[2] = &model;
    args[4] = &out_s;
    let non_empty: Vec<&str> = texts.iter().map(String::as_str).collect();
    args.extend(non_empty.iter().copied());
    ok(&args);
    let (got, rows, dim) = read_npy(&out);
    let (want, wr, wd) = read_npy(&root().join("tests/fixtures/clip/hf_vit/text_embeds.npy"));
    assert_eq!((rows, dim), (wr, wd));
    for r in 0..rows {
        let w = unit(&want[r * dim..(r + 1) * dim]);
        for (a, b) in got[r * dim..(r + 1) * dim].iter().zip(&w) {
            assert!((a - b).abs() < 1e-4, "text {r}: {a} vs {b}");
        }
    }
    let ids: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("t.ids.json")).unwrap())
            .unwrap();
    assert_eq!(ids["ids"].as_array().unwrap().len(), rows);
}

#[test]
fn classify_matches_clip_probabilities() {
    // With template "{}" the labels are the fixture texts, so the probabilities must be the
    // softmax of transformers' logits_per_image (up to our preprocessing's <= 1/255 pixel error).
    let texts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip/hf_vit/texts.json")).unwrap())
            .unwrap();
    let images: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip/hf_vit/images.json")).unwrap())
            .unwrap();
    let labels_file = tempfile::NamedTempFile::new().unwrap();
    // Labels with commas are fine in a file; the empty text cannot be a label, so use the first two.
    std::fs::write(labels_file.path(), format!("{}\n{}\n", texts[0], texts[1])).unwrap();
    let (logits, n_img, n_txt) =
        read_npy(&root().join("tests/fixtures/clip/hf_vit/logits_per_image.npy"));
    let model = fixture("clip/hf_vit");
    let lf = labels_file.path().display().to_string();
    for (i, name) in images.iter().enumerate() {
        let img = fixture(&format!("images/{name}"));
        let out = ok(&[
            "classify",
            &img,
            "--model",
            &model,
            "--labels-file",
            &lf,
            "--template",
            "{}",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let got = v[0]["labels"].as_array().unwrap();
        let row = &logits[i * n_txt..(i + 1) * n_txt];
        let (a, b) = (row[0], row[1]);
        let p0 = 1.0 / (1.0 + (b - a).exp());
        let want = [(texts[0].as_str(), p0), (texts[1].as_str(), 1.0 - p0)];
        for entry in got {
            let label = entry["label"].as_str().unwrap();
            let p = entry["probability"].as_f64().unwrap() as f32;
            let w = want.iter().find(|(l, _)| *l == label).unwrap().1;
            // Pixels match CLIPImageProcessor within 1/255 (not bit-exactly: PIL's fixed-point bicubic),
            // which logit_scale (~20 here) amplifies to a few 1e-3 in probability.
            assert!(
                (p - w).abs() < 5e-3,
                "image {name}, label {label}: {p} vs {w}"
            );
        }
        let probs: Vec<f64> = got
            .iter()
            .map(|e| e["probability"].as_f64().unwrap())
            .collect();
        assert!(
            probs.windows(2).all(|w| w[0] >= w[1]),
            "not sorted: {probs:?}"
        );
        let _ = n_img;
    }
}

#[test]
fn train_index_query_eval_on_the_demo_set() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.display().to_string();
    let out = siam(&[
        "train", "--loss", "triplet", "--epochs", "2", "--out", &run_s,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("RANDOM"),
        "the output must say the weights are random: {err}"
    );
    assert!(run.join("siam.json").is_file() && run.join("model.safetensors").is_file());
    let demo = dir.path().join("demo");
    let demo_s = demo.display().to_string();
    ok(&["demo-data", "--out", &demo_s, "--per-class", "6"]);
    let images = demo.join("images").display().to_string();
    let index = dir.path().join("idx").display().to_string();
    ok(&[
        "index", "--model", &run_s, "--data", &images, "--out", &index,
    ]);
    // demo-data holds out the split `siam train` holds out: a test image of red_circle.
    let red = demo.join("images/test/red_circle");
    let q = std::fs::read_dir(&red)
        .unwrap_or_else(|e| panic!("{}: {e}", red.display()))
        .map(|e| e.unwrap().path())
        .min()
        .unwrap()
        .display()
        .to_string();
    let out = ok(&["query", &q, "--index", &index, "--k", "3", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hits = v[0]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    let exact = ok(&[
        "query",
        "--text",
        "a photo of a red circle.",
        "--index",
        &index,
        "--k",
        "72",
        "--exact",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&exact).unwrap();
    assert_eq!(v[0]["hits"].as_array().unwrap().len(), 72);
    fails(&["query", &q, "--index", &index, "--k", "0"], &["--k"]);
    // A --k larger than the index answers with the whole index (12 label texts).
    let out = ok(&["query", &q, "--index", &index, "--k", "13", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["hits"].as_array().unwrap().len(), 12);
    fails(
        &["query", &q, "--index", "/nonexistent/idx"],
        &["/nonexistent/idx"],
    );
    // An index queried with another model is refused.
    let other = fixture("clip/hf_vit");
    fails(
        &["query", &q, "--index", &index, "--model", &other],
        &["built with model"],
    );
    let json = dir.path().join("eval.json");
    let json_s = json.display().to_string();
    ok(&[
        "eval", "--model", &run_s, "--data", &images, "--split", "all", "--json", &json_s, "--ann",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r1 = v["retrieval"]["image_to_text"]["recall_at_1"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&r1));
    assert!(json.with_extension("png").is_file());
    fails(
        &[
            "eval",
            "--model",
            &run_s,
            "--data",
            &images,
            "--split",
            "validation-x",
        ],
        &[],
    );
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.npy");
    let out_s = out.display().to_string();
    let model = fixture("clip/hf_vit");
    for (img, needle) in [
        ("images/truncated.jpg", "truncated.jpg"),
        ("images/empty.jpg", "empty.jpg"),
        ("images/not_an_image.jpg", "not_an_image.jpg"),
        ("images/does_not_exist.jpg", "does_not_exist.jpg"),
    ] {
        let p = fixture(img);
        fails(
            &["embed", "--model", &model, "--images", &p, "--out", &out_s],
            &[needle],
        );
        assert!(!out.exists(), "{img}: a partial output was left");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{img}: temp files left"
        );
    }
    // A directory where a model file is expected, a missing model, a non-CLIP checkpoint.
    let d = dir.path().display().to_string();
    fails(
        &["embed", "--model", &d, "--texts", "x", "--out", &out_s],
        &[],
    );
    fails(
        &[
            "embed",
            "--model",
            "/nonexistent/model",
            "--texts",
            "x",
            "--out",
            &out_s,
        ],
        &["/nonexistent/model"],
    );
    fails(
        &[
            "classify",
            &fixture("images/cat_like.jpg"),
            "--model",
            &model,
        ],
        &["labels"],
    );
    fails(
        &[
            "embed", "--model", &model, "--texts", "x", "--out", &out_s, "--device", "cuda",
        ],
        &["cuda"],
    );
    assert!(!out.exists());
}

#[test]
fn eval_holds_out_the_images_training_held_out() {
    // A captions table without a split column: its split comes from the seed. The demo set
    // written flat, with 10 images per label (8 train, 1 val, 1 test by the seeded split).
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let demo_s = demo.display().to_string();
    ok(&[
        "demo-data",
        "--out",
        &demo_s,
        "--per-class",
        "10",
        "--seed",
        "5",
    ]);
    let table = std::fs::read_to_string(demo.join("captions.csv")).unwrap();
    let flat: String = table
        .lines()
        .map(|l| format!("{}\n", &l[..l.rfind(',').unwrap()]))
        .collect();
    assert!(flat.starts_with("image,text,label\n"), "{flat}");
    let data = demo.join("flat.csv");
    std::fs::write(&data, flat).unwrap();
    let data_s = data.display().to_string();

    // The bug this guards: a model trained with --seed 1 evaluated on the split of seed 0.
    let open = |seed| {
        let o = siam_data::dataset::OpenOptions {
            seed,
            ..Default::default()
        };
        siam_data::dataset::Dataset::open(&data, &o).unwrap()
    };
    let names = |ds: &siam_data::dataset::Dataset, s| -> std::collections::HashSet<String> {
        ds.indices_of(s)
            .into_iter()
            .map(|r| ds.records[r].image.name())
            .collect()
    };
    use siam_data::dataset::Split;
    let (seed1, seed0) = (open(1), open(0));
    let trained = names(&seed1, Split::Train);
    let other_test = names(&seed0, Split::Test);
    assert!(trained.intersection(&other_test).count() > 0);

    let run = dir.path().join("run");
    let run_s = run.display().to_string();
    ok(&[
        "train",
        "--data",
        &data_s,
        "--seed",
        "1",
        "--epochs",
        "1",
        "--classes-per-batch",
        "4",
        "--out",
        &run_s,
        "--no-index",
        "--quiet",
    ]);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("siam.json")).unwrap()).unwrap();
    assert_eq!(card["split"]["seed"], 1, "{}", card["split"]);

    let json = dir.path().join("eval.json");
    let json_s = json.display().to_string();
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            &run_s,
            "--data",
            &data_s,
            "--json",
            &json_s,
            "--no-linear-probe",
        ];
        args.extend(extra);
        let out = siam(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (v, err)
    };
    // By default: the model's own split, said so, and none of its test images was trained on.
    let (v, err) = eval(&[]);
    assert!(err.contains("split: seed 1"), "{err}");
    assert!(
        err.contains("the split the model was trained with"),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(v["split_record"]["seed"], 1);
    assert_eq!(v["training_images"], 0);
    assert_eq!(v["images"], names(&seed1, Split::Test).len());
    // Asked for another split: the overlap is counted and warned about.
    let (v, err) = eval(&["--split-seed", "0"]);
    let n = v["training_images"].as_u64().unwrap() as usize;
    assert_eq!(n, trained.intersection(&other_test).count());
    assert!(
        err.contains("warning") && err.contains("trained on them"),
        "{err}"
    );
}
