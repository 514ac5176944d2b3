//! Gradients against central finite differences (f64 accumulation on the host keeps the
//! f32 forward smooth enough for h = 1e-3).

mod common;
use common::*;

use burn::tensor::Tensor;
use siam_losses::{
    ContrastiveLoss, Distance, Loss, Miner, MinerKind, MultiSimilarityLoss, PairwiseLoss,
    Positives, TripletLoss,
};

const N: usize = 8;
const R: usize = 10;
const D: usize = 5;

fn labels() -> (Vec<usize>, Vec<usize>) {
    (
        (0..N).map(|i| i % 3).collect(),
        (0..R).map(|i| (i * 2) % 3).collect(),
    )
}

fn value(loss: &Loss, miner: &Miner, a: &[f32], r: &[f32], ls: Option<f32>) -> f64 {
    let dev = siam_losses::test_device();
    let (la, lr) = labels();
    let ls = ls.map(|v| Tensor::<1>::from_floats([v], &dev));
    let out = loss
        .forward(
            from_vec(a, N, D, &dev),
            &la,
            from_vec(r, R, D, &dev),
            &lr,
            miner,
            ls,
        )
        .unwrap();
    scalar(out.loss) as f64
}

fn check(loss: Loss, miner: Miner, with_scale: bool) {
    let dev = dev();
    let (la, lr) = labels();
    let a0: Vec<f32> = noise(N * D, 21).iter().map(|v| v * 0.6).collect();
    let r0: Vec<f32> = noise(R * D, 22).iter().map(|v| v * 0.6).collect();
    let s0 = 2.3f32;
    let a = from_vec(&a0, N, D, &dev).require_grad();
    let r = from_vec(&r0, R, D, &dev).require_grad();
    let ls = with_scale.then(|| Tensor::<1>::from_floats([s0], &dev).require_grad());
    let out = loss
        .forward(a.clone(), &la, r.clone(), &lr, &miner, ls.clone())
        .unwrap();
    assert!(out.stats.mined > 0);
    let grads = out.loss.backward();
    let ga = vec2(a.grad(&grads).unwrap());
    let gr = vec2(r.grad(&grads).unwrap());
    let h = 1e-3f32;
    let scale = ga
        .iter()
        .chain(&gr)
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-3);
    let mut worst = 0f32;
    for k in (0..N * D).step_by(3) {
        let (mut p, mut m) = (a0.clone(), a0.clone());
        p[k] += h;
        m[k] -= h;
        let fd = (value(&loss, &miner, &p, &r0, with_scale.then_some(s0))
            - value(&loss, &miner, &m, &r0, with_scale.then_some(s0)))
            / (2.0 * h as f64);
        worst = worst.max((fd as f32 - ga[k]).abs());
    }
    for k in (0..R * D).step_by(4) {
        let (mut p, mut m) = (r0.clone(), r0.clone());
        p[k] += h;
        m[k] -= h;
        let fd = (value(&loss, &miner, &a0, &p, with_scale.then_some(s0))
            - value(&loss, &miner, &a0, &m, with_scale.then_some(s0)))
            / (2.0 * h as f64);
        worst = worst.max((fd as f32 - gr[k]).abs());
    }
    assert!(
        worst <= 2e-2 * scale,
        "{}: worst |fd − autodiff| {worst} (scale {scale})",
        loss.name()
    );
    if let Some(ls) = ls {
        let g = scalar(ls.grad(&grads).unwrap());
        let fd = (value(&loss, &miner, &a0, &r0, Some(s0 + h))
            - value(&loss, &miner, &a0, &r0, Some(s0 - h)))
            / (2.0 * h as f64);
        assert!(
            (g - fd as f32).abs() <= 2e-2 * g.abs().max(1e-2),
            "logit scale: {g} vs {fd}"
        );
    }
}

#[test]
fn triplet_hinge_batch_all_and_batch_hard() {
    check(
        Loss::Triplet(TripletLoss::new(Distance::Euclidean, 0.3)),
        Miner::none(),
        false,
    );
    check(
        Loss::Triplet(TripletLoss::new(Distance::Cosine, 0.2)),
        Miner::new(MinerKind::BatchHard),
        false,
    );
}

#[test]
fn triplet_soft_margin_with_swap_across_modalities() {
    let l = TripletLoss {
        soft_margin: true,
        swap: true,
        ..TripletLoss::new(Distance::SquaredEuclidean, 0.1)
    };
    check(
        Loss::Triplet(l),
        Miner::new(MinerKind::SemiHard { margin: None }),
        false,
    );
}

#[test]
fn pairwise_and_multi_similarity() {
    let p = PairwiseLoss {
        pos_margin: 0.2,
        neg_margin: 1.0,
        ..PairwiseLoss::new(Distance::Euclidean)
    };
    check(Loss::Pairwise(p), Miner::none(), false);
    check(
        Loss::MultiSimilarity(MultiSimilarityLoss {
            beta: 10.0,
            ..MultiSimilarityLoss::new(Distance::Cosine)
        }),
        Miner::none(),
        false,
    );
    check(
        Loss::MultiSimilarity(MultiSimilarityLoss::new(Distance::Dot)),
        Miner::new(MinerKind::MaxViolation),
        false,
    );
}

#[test]
fn contrastive_with_learnable_logit_scale() {
    check(
        Loss::Contrastive(ContrastiveLoss::new(Distance::Cosine)),
        Miner::none(),
        true,
    );
    let pp = ContrastiveLoss {
        positives: Positives::PerPair,
        temperature: 0.5,
        ..ContrastiveLoss::new(Distance::Euclidean)
    };
    check(Loss::Contrastive(pp), Miner::none(), false);
}
