//! Agreement with pytorch-metric-learning 2.9.0 on the same embeddings and labels.
//!
//! The reference numbers (loss values and gradients with respect to the embeddings) come from
//! `fixtures/make_pml_fixtures.py`, committed beside `fixtures/pml_fixtures.json`.

use burn::tensor::Tensor;
use serde_json::Value;
use siam_losses::{
    test_device, ContrastiveLoss, Distance, Loss, Miner, MinerKind, MultiSimilarityLoss,
    PairwiseLoss, Positives, Reducer, TripletKind, TripletLoss,
};

fn fixtures() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pml_fixtures.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture file (run make_pml_fixtures.py)");
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
    let loss = match l["kind"].as_str().unwrap() {
        "triplet" => Loss::Triplet(TripletLoss {
            distance,
            margin: f(&l["margin"]),
            swap: l["swap"].as_bool().unwrap_or(false),
            soft_margin: l["soft"].as_bool().unwrap_or(false),
            reducer: Reducer::MeanNonZero,
        }),
        "pairwise" => Loss::Pairwise(PairwiseLoss {
            distance,
            pos_margin: f(&l["pos_margin"]),
            neg_margin: f(&l["neg_margin"]),
            reducer: Reducer::MeanNonZero,
        }),
        "ntxent" => Loss::Contrastive(ContrastiveLoss {
            distance,
            temperature: f(&l["temperature"]),
            positives: Positives::PerPair,
            symmetric: false,
        }),
        "supcon" => Loss::Contrastive(ContrastiveLoss {
            distance,
            temperature: f(&l["temperature"]),
            positives: Positives::MultiPositive,
            symmetric: false,
        }),
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
                "hard" => TripletKind::Hard,
                "semihard" => TripletKind::SemiHard,
                "easy" => TripletKind::Easy,
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

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

#[test]
fn agrees_with_pytorch_metric_learning() {
    let dev = test_device().autodiff();
    let cases = fixtures();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let (loss, miner) = build(case);
        let (emb, b, d) = matrix(&case["embeddings"]);
        let lab = labels(&case["labels"]);
        let x = Tensor::<1>::from_floats(emb.as_slice(), &dev)
            .reshape([b, d])
            .require_grad();
        let cross = !case["ref_embeddings"].is_null();
        let (out, y) = if cross {
            let (re, r, _) = matrix(&case["ref_embeddings"]);
            let rl = labels(&case["ref_labels"]);
            let y = Tensor::<1>::from_floats(re.as_slice(), &dev)
                .reshape([r, d])
                .require_grad();
            (
                loss.forward(x.clone(), &lab, y.clone(), &rl, &miner, None)
                    .unwrap(),
                Some(y),
            )
        } else {
            (
                loss.forward_self(x.clone(), &lab, &miner, None).unwrap(),
                None,
            )
        };
        let got = out.loss.clone().into_data().try_into_vec::<f32>().unwrap()[0];
        let want = f(&case["loss_value"]);
        let rel = (got - want).abs() / want.abs().max(1e-6);
        if rel > 1e-5 {
            failures.push(format!("{name}: loss {got} vs PML {want} (rel {rel:.2e})"));
            continue;
        }
        let grads = out.loss.backward();
        let mut check_grad = |t: &Tensor<2>, key: &str| {
            let (want_g, _, _) = matrix(&case[key]);
            let got_g = t
                .grad(&grads)
                .map(|g| g.into_data().try_into_vec::<f32>().unwrap())
                .unwrap_or(vec![0.0; want_g.len()]);
            let tol = 1e-4 * max_abs(&want_g).max(1e-3);
            let worst = got_g
                .iter()
                .zip(&want_g)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            if worst > tol {
                failures.push(format!(
                    "{name}: {key} differs by {worst:.3e} (tol {tol:.3e})"
                ));
            }
        };
        check_grad(&x, "grad_embeddings");
        if let Some(y) = &y {
            check_grad(y, "grad_ref_embeddings");
        }
        if let Some(mined) = case["mined"].as_u64() {
            // Triplet miners report triplets; pair miners positive + negative pairs.
            let ours = out.stats.mined;
            let pml_kind = case["miner"]["kind"].as_str().unwrap();
            if matches!(loss, Loss::Triplet(_))
                && pml_kind != "multi-similarity"
                && ours != mined as usize
            {
                failures.push(format!("{name}: mined {ours} vs PML {mined}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
