//! Cross-batch memory over sequences of batches against pytorch-metric-learning 2.9.0.
//!
//! `fixtures/make_xbm_fixtures.py` (committed beside `fixtures/xbm_fixtures.json`) runs PML's
//! own `CrossBatchMemory` ("self" cases: the reduction of siam's memory to PML's, see
//! `siam_losses::xbm`) and siam's cross-modal definition written with PML's losses and miners
//! ("cross" cases). Per batch the loss value and the gradients must agree within 1e-5.

mod common;

use burn::tensor::Tensor;
use serde_json::Value;
use siam_losses::{
    ContrastiveLoss, CrossBatchMemory, Distance, LogitParams, Loss, Miner, MinerKind,
    MultiSimilarityLoss, PairwiseLoss, Positives, Reducer, TripletKind, TripletLoss, XbmConfig,
};

fn fixtures() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/xbm_fixtures.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture file (run make_xbm_fixtures.py)");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["pytorch_metric_learning"], "2.9.0");
    v["cases"].as_array().expect("cases").clone()
}

fn f(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
}

fn matrix(v: &Value) -> (Vec<f32>, usize, usize) {
    let rows = v.as_array().expect("rows");
    let d = rows[0].as_array().unwrap().len();
    let flat = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(f))
        .collect();
    (flat, rows.len(), d)
}

fn labels(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn build(case: &Value) -> (Loss, Miner) {
    let distance: Distance = case["distance"].as_str().unwrap().parse().unwrap();
    let l = &case["loss"];
    let contrastive = |positives| {
        Loss::Contrastive(ContrastiveLoss {
            distance,
            temperature: f(&l["temperature"]),
            positives,
            symmetric: false,
        })
    };
    let loss = match l["kind"].as_str().unwrap() {
        "triplet" => Loss::Triplet(TripletLoss::new(distance, f(&l["margin"]))),
        "pairwise" => Loss::Pairwise(PairwiseLoss {
            distance,
            pos_margin: f(&l["pos_margin"]),
            neg_margin: f(&l["neg_margin"]),
            reducer: Reducer::MeanNonZero,
        }),
        "ntxent" => contrastive(Positives::PerPair),
        "supcon" => contrastive(Positives::MultiPositive),
        "multi-similarity" => Loss::MultiSimilarity(MultiSimilarityLoss {
            distance,
            alpha: f(&l["alpha"]),
            beta: f(&l["beta"]),
            base: f(&l["base"]),
            reducer: Reducer::Mean,
        }),
        other => panic!("unknown loss {other}"),
    };
    let m = &case["miner"];
    let kind = match m["kind"].as_str().unwrap() {
        "none" => MinerKind::None,
        "batch-hard" => MinerKind::BatchHard,
        "triplet-margin" => MinerKind::TripletMargin {
            margin: f(&m["margin"]),
            kind: match m["type"].as_str().unwrap() {
                "all" => TripletKind::All,
                "semihard" => TripletKind::SemiHard,
                t => panic!("{t}"),
            },
        },
        "multi-similarity" => MinerKind::MultiSimilarity {
            epsilon: f(&m["epsilon"]),
        },
        other => panic!("unknown miner {other}"),
    };
    (loss, Miner::new(kind))
}

fn input(v: &Value, dev: &burn::tensor::Device) -> Tensor<2> {
    let (x, n, d) = matrix(v);
    common::from_vec(&x, n, d, dev).require_grad()
}

/// `None` when within tolerance, else a description.
fn compare(what: &str, got: &[f32], want: &[f32]) -> Option<String> {
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (worst > 1e-5).then(|| format!("{what} differs by {worst:.3e}"))
}

fn grad_of(t: &Tensor<2>, grads: &burn::tensor::Gradients, n: usize) -> Vec<f32> {
    t.grad(grads)
        .map(|g| g.into_data().try_into_vec::<f32>().unwrap())
        .unwrap_or(vec![0.0; n])
}

fn run_case(case: &Value, failures: &mut Vec<String>) {
    let dev = common::dev();
    let name = case["name"].as_str().unwrap();
    let (loss, miner) = build(case);
    let size = case["memory_size"].as_u64().unwrap() as usize;
    let mut xbm: CrossBatchMemory = XbmConfig::new(size).init().unwrap();
    let batches = case["batches"].as_array().unwrap();
    assert!(batches.len() >= 5, "{name}: at least 5 batches");
    for (k, b) in batches.iter().enumerate() {
        let lab = labels(&b["labels"]);
        let mut fail = |m: Option<String>| {
            if let Some(m) = m {
                failures.push(format!("{name} batch {k}: {m}"));
            }
        };
        if case["kind"] == "self" {
            let x = input(&b["embeddings"], &dev);
            let out = xbm
                .forward_self(&loss, x.clone(), &lab, &miner, LogitParams::default())
                .unwrap();
            let got = common::scalar(out.loss.clone());
            fail(compare("loss", &[got], &[f(&b["loss"])]));
            let (want, n, d) = matrix(&b["grad"]);
            fail(compare(
                "grad",
                &grad_of(&x, &out.loss.backward(), n * d),
                &want,
            ));
        } else {
            let img = input(&b["images"], &dev);
            let txt = input(&b["texts"], &dev);
            let out = xbm
                .forward(
                    &loss,
                    img.clone(),
                    &lab,
                    txt.clone(),
                    &lab,
                    &miner,
                    LogitParams::default(),
                )
                .unwrap();
            let got = common::scalar(out.loss.clone());
            fail(compare("loss", &[got], &[f(&b["loss"])]));
            let grads = out.loss.backward();
            let (want_i, n, d) = matrix(&b["grad_images"]);
            fail(compare(
                "grad images",
                &grad_of(&img, &grads, n * d),
                &want_i,
            ));
            let (want_t, n, d) = matrix(&b["grad_texts"]);
            fail(compare(
                "grad texts",
                &grad_of(&txt, &grads, n * d),
                &want_t,
            ));
        }
    }
    assert_eq!(xbm.steps(), batches.len());
}

#[test]
fn cross_batch_memory_agrees_with_pytorch_metric_learning() {
    let cases = fixtures();
    assert!(cases.len() >= 8);
    assert!(cases.iter().any(|c| c["kind"] == "self"));
    assert!(cases.iter().any(|c| c["kind"] == "cross"));
    let mut failures = Vec::new();
    for case in &cases {
        run_case(case, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_memory_changes_the_loss() {
    // The second batch's loss sees the first batch's references, so it differs from the
    // memory-less loss of the same batch (a test that the memory is really used).
    let dev = common::dev();
    let loss: Loss = "triplet".parse().unwrap();
    let lab = [0, 0, 1, 1, 2, 2];
    let x = common::from_vec(&common::noise(6 * 4, 3), 6, 4, &dev);
    let y = common::from_vec(&common::noise(6 * 4, 4), 6, 4, &dev);
    let earlier = common::from_vec(&common::noise(6 * 4, 5), 6, 4, &dev);
    let plain = |refs: &Tensor<2>| {
        common::scalar(
            loss.forward(x.clone(), &lab, refs.clone(), &lab, &Miner::none(), None)
                .unwrap()
                .loss,
        )
    };
    let mut xbm = XbmConfig::new(16).init().unwrap();
    let mut run = |refs: &Tensor<2>| {
        common::scalar(
            xbm.forward(
                &loss,
                x.clone(),
                &lab,
                refs.clone(),
                &lab,
                &Miner::none(),
                LogitParams::default(),
            )
            .unwrap()
            .loss,
        )
    };
    assert_eq!(run(&earlier), plain(&earlier));
    assert_ne!(run(&y), plain(&y));
}
