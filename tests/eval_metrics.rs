//! Parity of siam's metrics with the Python references on the same embeddings
//! (tests/fixtures/eval/make_eval_fixtures.py: CLIP_benchmark's recall@k and accuracy formulas,
//! pytorch-metric-learning 2.9.0's AccuracyCalculator, scikit-learn 1.9.1's LogisticRegression).

mod support;

use std::path::PathBuf;

use serde_json::Value;
use siam::eval::classification::{neighbour_metrics, zero_shot};
use siam::eval::linear_probe::{linear_probe, LinearProbeConfig, LogisticRegression};
use siam::eval::retrieval::{retrieval_report, DirectionReport, Positives};

fn dir() -> PathBuf {
    support::fixtures("eval")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn npy(name: &str) -> (Vec<f32>, usize) {
    let (data, _, cols) = siam::io::read_npy(&dir().join(name)).unwrap();
    (data, cols)
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|x| match x.as_array() {
            Some(row) => row.iter().map(|y| y.as_f64().unwrap()).collect(),
            None => vec![x.as_f64().unwrap()],
        })
        .collect()
}

fn close(got: f64, want: &Value, tol: f64, what: &str) {
    let want = want.as_f64().unwrap();
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, Python says {want}"
    );
}

fn check_direction(got: &DirectionReport, want: &Value, what: &str) {
    // CLIP_benchmark averages in float32, hence the 1e-6.
    close(
        got.recall_at_1,
        &want["recall_at_1"],
        1e-6,
        &format!("{what} R@1"),
    );
    close(
        got.recall_at_5,
        &want["recall_at_5"],
        1e-6,
        &format!("{what} R@5"),
    );
    close(
        got.recall_at_10,
        &want["recall_at_10"],
        1e-6,
        &format!("{what} R@10"),
    );
    close(
        got.mean_rank,
        &want["mean_rank"],
        1e-12,
        &format!("{what} mean rank"),
    );
    close(
        got.median_rank,
        &want["median_rank"],
        1e-12,
        &format!("{what} median rank"),
    );
    assert_eq!(got.ranks, usizes(&want["ranks"]), "{what} ranks");
    assert_eq!(got.queries as u64, want["queries"].as_u64().unwrap());
    assert_eq!(
        got.queries_without_positive as u64,
        want["queries_without_positive"].as_u64().unwrap()
    );
}

#[test]
fn caption_retrieval_matches_clip_benchmark() {
    let e = &expected()["captions"];
    let (images, dim) = npy("captions_images.npy");
    let (texts, _) = npy("captions_texts.npy");
    let t2i = usizes(&e["caption_image"]);
    let r = retrieval_report(
        &images,
        &texts,
        dim,
        Positives::Captions {
            text_to_image: &t2i,
        },
    )
    .unwrap();
    check_direction(&r.image_to_text, &e["image_to_text"], "image->text");
    check_direction(&r.text_to_image, &e["text_to_image"], "text->image");
}

#[test]
fn label_retrieval_matches_clip_benchmark() {
    let e = &expected()["labels"];
    let (images, dim) = npy("labels_images.npy");
    let (texts, _) = npy("labels_texts.npy");
    let (il, tl) = (usizes(&e["image_labels"]), usizes(&e["text_labels"]));
    let r = retrieval_report(
        &images,
        &texts,
        dim,
        Positives::Labels {
            image_labels: &il,
            text_labels: &tl,
        },
    )
    .unwrap();
    check_direction(&r.image_to_text, &e["image_to_text"], "image->text");
    check_direction(&r.text_to_image, &e["text_to_image"], "text->image");
}

#[test]
fn zero_shot_matches_clip_benchmark() {
    let e = &expected()["zeroshot"];
    let (images, dim) = npy("zeroshot_images.npy");
    let (classes, _) = npy("zeroshot_classes.npy");
    let r = zero_shot(&images, &classes, dim, &usizes(&e["labels"])).unwrap();
    close(r.top1, &e["top1"], 1e-12, "top1");
    close(r.top5, &e["top5"], 1e-12, "top5");
    close(
        r.mean_per_class_recall,
        &e["mean_per_class_recall"],
        1e-12,
        "mean per-class recall",
    );
}

#[test]
fn neighbour_metrics_match_pytorch_metric_learning() {
    let e = &expected()["neighbours"];
    let (emb, dim) = npy("neighbours.npy");
    let r = neighbour_metrics(&emb, dim, &usizes(&e["labels"])).unwrap();
    assert_eq!(r.queries as u64, e["queries"].as_u64().unwrap());
    close(r.precision_at_1, &e["precision_at_1"], 1e-9, "precision@1");
    close(r.r_precision, &e["r_precision"], 1e-9, "R-precision");
    close(r.map_at_r, &e["map_at_r"], 1e-9, "MAP@R");
}

fn probe_case(name: &str) {
    let e = &expected()[name];
    let (train, dim) = npy(&format!("{name}_train.npy"));
    let (test, _) = npy(&format!("{name}_test.npy"));
    let (ytr, yte) = (usizes(&e["train_labels"]), usizes(&e["test_labels"]));
    let c = e["c"].as_f64().unwrap();
    let config = LinearProbeConfig {
        c,
        ..Default::default()
    };
    let report = linear_probe(&train, &ytr, &test, &yte, dim, &config).unwrap();
    close(
        report.accuracy,
        &e["accuracy"],
        1e-12,
        &format!("{name} accuracy"),
    );
    assert!(report.converged);

    // At a tight tolerance both solvers reach the unique optimum: compare the model itself.
    let tight = LinearProbeConfig {
        c,
        max_iter: 10_000,
        tol: 1e-10,
    };
    let model = LogisticRegression::fit(&train, dim, &ytr, &tight).unwrap();
    assert_eq!(model.classes, usizes(&e["classes"]));
    let (coef, intercept) = (f64s(&e["coef"]), f64s(&e["intercept"]));
    assert_eq!(model.coef.len(), coef.len());
    for (i, (a, b)) in model.coef.iter().zip(&coef).enumerate() {
        assert!((a - b).abs() < 1e-6, "{name} coef[{i}]: {a} vs sklearn {b}");
    }
    // Softmax intercepts are unpenalised, so only their differences are determined: centre them.
    let centre = |v: &[f64]| {
        let m = if v.len() > 1 {
            v.iter().sum::<f64>() / v.len() as f64
        } else {
            0.0
        };
        v.iter().map(|x| x - m).collect::<Vec<_>>()
    };
    for (i, (a, b)) in centre(&model.intercept)
        .iter()
        .zip(centre(&intercept))
        .enumerate()
    {
        assert!(
            (a - b).abs() < 1e-6,
            "{name} intercept[{i}]: {a} vs sklearn {b}"
        );
    }
    let proba = model.predict_proba(&test).unwrap();
    for (i, (a, b)) in proba.iter().zip(f64s(&e["test_proba"])).enumerate() {
        assert!(
            (a - b).abs() < 1e-7,
            "{name} proba[{i}]: {a} vs sklearn {b}"
        );
    }
    let pred = model.predict(&test).unwrap();
    let acc = pred.iter().zip(&yte).filter(|(p, y)| p == y).count() as f64 / yte.len() as f64;
    close(
        acc,
        &e["tight_accuracy"],
        1e-12,
        &format!("{name} tight accuracy"),
    );
}

#[test]
fn multiclass_linear_probe_matches_sklearn() {
    probe_case("probe_multiclass");
}

#[test]
fn binary_linear_probe_matches_sklearn() {
    probe_case("probe_binary");
}

#[test]
fn recall_curves_png_of_two_reports() {
    let e = &expected()["captions"];
    let (images, dim) = npy("captions_images.npy");
    let (texts, _) = npy("captions_texts.npy");
    let t2i = usizes(&e["caption_image"]);
    let a = retrieval_report(
        &images,
        &texts,
        dim,
        Positives::Captions {
            text_to_image: &t2i,
        },
    )
    .unwrap();
    // A second "model": the same texts against shuffled captions, to get a different curve.
    let shuffled: Vec<usize> = t2i.iter().map(|&i| (i * 7 + 3) % 40).collect();
    let b = retrieval_report(
        &images,
        &texts,
        dim,
        Positives::Captions {
            text_to_image: &shuffled,
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // SIAM_TEST_PLOT_DIR keeps the PNG for a look.
    let out = std::env::var_os("SIAM_TEST_PLOT_DIR")
        .map(PathBuf::from)
        .unwrap_or(tmp.path().to_path_buf());
    let path = out.join("recall_curves.png");
    siam::eval::plot::recall_curves(&[("before", &a), ("after", &b)], 50, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}
