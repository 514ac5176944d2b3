//! Per-anchor loss weights ([`siam_losses::Weights`]) against pytorch-metric-learning 2.9.0's
//! per-element losses (its `DoNothingReducer`) weighted by hand, and the weighting's own
//! invariants: unit weights are the unweighted loss exactly, a zero weight removes its anchor.
//!
//! The reference numbers come from `fixtures/make_weighted_fixtures.py`, committed beside
//! `fixtures/weighted_fixtures.json`.

mod common;

use burn::tensor::Tensor;
use serde_json::Value;
use siam_losses::{
    test_device, ContrastiveLoss, CrossBatchMemory, Distance, LogitParams, Loss, Miner, MinerKind,
    MultiSimilarityLoss, PairwiseLoss, Positives, Reducer, SigmoidLoss, TripletKind, TripletLoss,
    Weights, XbmConfig,
};

fn fixtures() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/weighted_fixtures.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture file (run make_weighted_fixtures.py)");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["pytorch_metric_learning"], "2.9.0");
    v["cases"].as_array().expect("cases").clone()
}

fn f(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn matrix(v: &Value) -> (Vec<f32>, usize, usize) {
    let rows = v.as_array().expect("rows");
    let d = rows[0].as_array().unwrap().len();
    let flat = rows.iter().flat_map(floats).collect();
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
    let l = &case["loss"];
    let distance: Distance = l["distance"].as_str().unwrap_or("cosine").parse().unwrap();
    let contrastive = |positives, symmetric| {
        Loss::Contrastive(ContrastiveLoss {
            distance,
            temperature: f(&l["temperature"]),
            positives,
            symmetric,
        })
    };
    let loss = match l["kind"].as_str().unwrap() {
        "triplet" => Loss::Triplet(TripletLoss {
            distance,
            margin: f(&l["margin"]),
            swap: false,
            soft_margin: l["soft"].as_bool().unwrap_or(false),
            reducer: Reducer::MeanNonZero,
        }),
        "pairwise" => Loss::Pairwise(PairwiseLoss {
            distance,
            pos_margin: f(&l["pos_margin"]),
            neg_margin: f(&l["neg_margin"]),
            reducer: Reducer::MeanNonZero,
        }),
        "multi-similarity" => Loss::MultiSimilarity(MultiSimilarityLoss::new(distance)),
        "ntxent" => contrastive(Positives::PerPair, false),
        "supcon" => contrastive(Positives::MultiPositive, false),
        "contrastive-symmetric" => contrastive(Positives::MultiPositive, true),
        "sigmoid" => Loss::Sigmoid(SigmoidLoss {
            distance,
            logit_scale: f(&l["t"]),
            logit_bias: f(&l["b"]),
        }),
        other => panic!("unknown loss {other}"),
    };
    let kind = match case["miner"]["kind"].as_str().unwrap() {
        "none" => MinerKind::None,
        "batch-hard" => MinerKind::BatchHard,
        "semihard" => MinerKind::TripletMargin {
            margin: f(&l["margin"]),
            kind: TripletKind::SemiHard,
        },
        "multi-similarity" => MinerKind::MultiSimilarity { epsilon: 0.1 },
        other => panic!("unknown miner {other}"),
    };
    (loss, Miner::new(kind))
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// Largest difference, relative to the largest reference entry (at least 1e-3).
fn worst(got: &[f32], want: &[f32]) -> f32 {
    let scale = max_abs(want).max(1e-3);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0f32, f32::max)
}

#[test]
fn weighted_losses_agree_with_pml_per_element_losses() {
    let dev = test_device().autodiff();
    let cases = fixtures();
    assert_eq!(cases.len(), 15);
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let (loss, miner) = build(case);
        let (emb, b, d) = matrix(&case["embeddings"]);
        let lab = labels(&case["labels"]);
        let w = floats(&case["weights"]);
        assert_eq!(w[1], 0.0, "{name}: one anchor weighs 0");
        let x = Tensor::<1>::from_floats(emb.as_slice(), &dev)
            .reshape([b, d])
            .require_grad();
        let params = LogitParams::default();
        let (out, y) = if case["ref_embeddings"].is_null() {
            let out = loss
                .forward_self_weighted(x.clone(), &lab, &miner, params, Weights::anchors(&w))
                .unwrap();
            (out, None)
        } else {
            let (re, r, _) = matrix(&case["ref_embeddings"]);
            let rl = labels(&case["ref_labels"]);
            let wr = floats(&case["ref_weights"]);
            let y = Tensor::<1>::from_floats(re.as_slice(), &dev)
                .reshape([r, d])
                .require_grad();
            let out = loss
                .forward_weighted(
                    x.clone(),
                    &lab,
                    y.clone(),
                    &rl,
                    &miner,
                    params,
                    Weights::both(&w, &wr),
                )
                .unwrap();
            (out, Some(y))
        };
        let got = common::scalar(out.loss.clone());
        let want = f(&case["loss_value"]);
        let rel = (got - want).abs() / want.abs().max(1e-3);
        if rel > 1e-5 {
            failures.push(format!(
                "{name}: loss {got} vs reference {want} (rel {rel:.2e})"
            ));
        }
        let grads = out.loss.backward();
        let mut check = |t: &Tensor<2>, key: &str| {
            let (want_g, _, _) = matrix(&case[key]);
            let got_g = t
                .grad(&grads)
                .map(|g| g.into_data().try_into_vec::<f32>().unwrap())
                .unwrap_or(vec![0.0; want_g.len()]);
            let e = worst(&got_g, &want_g);
            if e > 1e-5 {
                failures.push(format!(
                    "{name}: {key} differs by {e:.2e} (relative to its max)"
                ));
            }
        };
        check(&x, "grad_embeddings");
        if let Some(y) = &y {
            check(y, "grad_ref_embeddings");
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

/// Every loss with each miner it takes.
fn every_loss_and_miner() -> Vec<(Loss, Miner)> {
    let cos = Distance::Cosine;
    let mut out = Vec::new();
    let tuple_miners = [
        MinerKind::None,
        MinerKind::BatchHard,
        MinerKind::TripletMargin {
            margin: 0.2,
            kind: TripletKind::SemiHard,
        },
        MinerKind::MultiSimilarity { epsilon: 0.1 },
    ];
    let mut soft = TripletLoss::new(cos, 0.2);
    soft.soft_margin = true;
    for loss in [
        Loss::Triplet(TripletLoss::new(cos, 0.2)),
        Loss::Triplet(soft),
        Loss::Pairwise(PairwiseLoss::new(cos)),
        Loss::MultiSimilarity(MultiSimilarityLoss::new(cos)),
    ] {
        for m in &tuple_miners {
            out.push((loss, Miner::new(m.clone())));
        }
    }
    let mut per_pair = ContrastiveLoss::new(cos);
    per_pair.positives = Positives::PerPair;
    for loss in [
        Loss::Contrastive(ContrastiveLoss::new(cos)),
        Loss::Contrastive(per_pair),
        Loss::Sigmoid(SigmoidLoss::new(cos)),
    ] {
        out.push((loss, Miner::none()));
    }
    out
}

fn batch(n: usize, d: usize, seed: u64) -> Tensor<2> {
    common::from_vec(&common::noise(n * d, seed), n, d, &common::dev()).require_grad()
}

fn grad_of(t: &Tensor<2>, g: &burn::tensor::Gradients) -> Vec<f32> {
    t.grad(g)
        .map(|g| g.into_data().try_into_vec::<f32>().unwrap())
        .unwrap_or_default()
}

#[test]
fn unit_weights_are_the_unweighted_loss_exactly() {
    let (b, r, d) = (12, 9, 8);
    let lab: Vec<usize> = (0..b).map(|i| i % 4).collect();
    let rl: Vec<usize> = (0..r).map(|i| (i * 7) % 4).collect();
    let (ones_a, ones_r) = (vec![1.0f32; b], vec![1.0f32; r]);
    for (loss, miner) in every_loss_and_miner() {
        let what = format!("{} with {}", loss.name(), miner.name());
        let (x, y) = (batch(b, d, 1), batch(r, d, 2));
        let plain = loss
            .forward(x.clone(), &lab, y.clone(), &rl, &miner, None)
            .unwrap();
        let (x2, y2) = (batch(b, d, 1), batch(r, d, 2));
        let ones = loss
            .forward_weighted(
                x2.clone(),
                &lab,
                y2.clone(),
                &rl,
                &miner,
                LogitParams::default(),
                Weights::both(&ones_a, &ones_r),
            )
            .unwrap();
        assert_eq!(
            common::scalar(plain.loss.clone()).to_bits(),
            common::scalar(ones.loss.clone()).to_bits(),
            "{what}: value"
        );
        assert_eq!(plain.stats, ones.stats, "{what}: stats");
        let (g1, g2) = (plain.loss.backward(), ones.loss.backward());
        assert_eq!(
            grad_of(&x, &g1),
            grad_of(&x2, &g2),
            "{what}: anchor gradient"
        );
        assert_eq!(
            grad_of(&y, &g1),
            grad_of(&y2, &g2),
            "{what}: reference gradient"
        );
        // The same through forward_self.
        let s1 = loss
            .forward_self(batch(b, d, 3), &lab, &miner, None)
            .unwrap();
        let s2 = loss
            .forward_self_weighted(
                batch(b, d, 3),
                &lab,
                &miner,
                LogitParams::default(),
                Weights::anchors(&ones_a),
            )
            .unwrap();
        assert_eq!(
            common::scalar(s1.loss).to_bits(),
            common::scalar(s2.loss).to_bits(),
            "{what}: forward_self value"
        );
    }
}

#[test]
fn a_zero_weight_removes_its_anchor() {
    let (b, r, d) = (10, 9, 8);
    let lab: Vec<usize> = (0..b).map(|i| i % 3).collect();
    let rl: Vec<usize> = (0..r).map(|i| (i * 5) % 3).collect();
    let drop = 4;
    let mut w = vec![1.0f32; b];
    w[drop] = 0.0;
    let keep: Vec<usize> = (0..b).filter(|&i| i != drop).collect();
    let lab_kept: Vec<usize> = keep.iter().map(|&i| lab[i]).collect();
    for (loss, miner) in every_loss_and_miner() {
        // The symmetric contrastive loss's reference half has every anchor as a reference.
        let loss = match loss {
            Loss::Contrastive(c) => Loss::Contrastive(ContrastiveLoss {
                symmetric: false,
                ..c
            }),
            other => other,
        };
        let what = format!("{} with {}", loss.name(), miner.name());
        let noise = common::noise(b * d, 7);
        let x = common::from_vec(&noise, b, d, &common::dev()).require_grad();
        let y = batch(r, d, 8);
        let weighted = loss
            .forward_weighted(
                x.clone(),
                &lab,
                y.clone(),
                &rl,
                &miner,
                LogitParams::default(),
                Weights::anchors(&w),
            )
            .unwrap();
        let kept: Vec<f32> = keep
            .iter()
            .flat_map(|&i| noise[i * d..(i + 1) * d].to_vec())
            .collect();
        let xk = common::from_vec(&kept, b - 1, d, &common::dev());
        let without = loss
            .forward(xk, &lab_kept, batch(r, d, 8), &rl, &miner, None)
            .unwrap();
        let (a, e) = (
            common::scalar(weighted.loss.clone()),
            common::scalar(without.loss),
        );
        assert!(
            (a - e).abs() <= 1e-6 * e.abs().max(1.0),
            "{what}: {a} vs {e}"
        );
        let g = grad_of(&x, &weighted.loss.backward());
        assert!(
            g[drop * d..(drop + 1) * d].iter().all(|&v| v == 0.0),
            "{what}: the zero-weight anchor still gets a gradient"
        );
        assert!(g.iter().any(|&v| v != 0.0), "{what}: no gradient at all");
    }
}

#[test]
fn weights_compose_with_the_cross_batch_memory() {
    // A weighted step through the memory is the weighted loss against [refs; memory].
    let (b, d) = (8, 6);
    let lab: Vec<usize> = (0..b).map(|i| i % 3).collect();
    let w: Vec<f32> = (0..b).map(|i| 0.25 * (i % 4) as f32).collect();
    let loss = Loss::Triplet(TripletLoss::new(Distance::Cosine, 0.2));
    let miner = Miner::new(MinerKind::BatchHard);
    let mut xbm: CrossBatchMemory = XbmConfig::new(16).init().unwrap();
    let first = batch(b, d, 11);
    xbm.forward(
        &loss,
        first.clone(),
        &lab,
        first.clone(),
        &lab,
        &miner,
        LogitParams::default(),
    )
    .unwrap();
    let (x, y) = (batch(b, d, 12), batch(b, d, 13));
    let out = xbm
        .forward_weighted(
            &loss,
            x.clone(),
            &lab,
            y.clone(),
            &lab,
            &miner,
            LogitParams::default(),
            Weights::anchors(&w),
        )
        .unwrap();
    let all = Tensor::cat(vec![batch(b, d, 13), first.detach()], 0);
    let all_labels: Vec<usize> = lab.iter().chain(&lab).copied().collect();
    let direct = loss
        .forward_weighted(
            batch(b, d, 12),
            &lab,
            all,
            &all_labels,
            &miner,
            LogitParams::default(),
            Weights::anchors(&w),
        )
        .unwrap();
    assert_eq!(common::scalar(out.loss), common::scalar(direct.loss));
    // Bad weights are errors, not panics.
    let e = xbm
        .forward_weighted(
            &loss,
            x,
            &lab,
            y,
            &lab,
            &miner,
            LogitParams::default(),
            Weights::anchors(&w[..3]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("loss weights"), "{e}");
}
