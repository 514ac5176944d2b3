//! Invariants of miners and degenerate batches: a miner never returns a positive as a
//! negative or an anchor as its own positive; one label, one item or nothing mined gives a
//! zero loss with a zero (finite) gradient.

mod common;
use common::*;

use siam_losses::{
    ContrastiveLoss, Distance, HardnessSchedule, Loss, Miner, MinerKind, MultiSimilarityLoss,
    PairMatrix, PairwiseLoss, TripletKind, TripletLoss, Tuples,
};

fn all_miners() -> Vec<Miner> {
    let mut v: Vec<Miner> = [
        "all",
        "hard",
        "semihard",
        "max-violation",
        "distance-weighted",
        "multi-similarity",
        "none",
        "all@3",
        "semihard@2",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    for kind in [
        TripletKind::All,
        TripletKind::Hard,
        TripletKind::SemiHard,
        TripletKind::Easy,
    ] {
        v.push(Miner::new(MinerKind::TripletMargin { margin: 0.2, kind }));
    }
    v
}

#[test]
fn miners_respect_labels_and_never_pair_an_anchor_with_itself() {
    let (n, d) = (24, 8);
    let emb = noise(n * d, 7);
    let labels: Vec<usize> = (0..n).map(|i| (i * 7) % 5).collect();
    // Cosine matrix of the batch with itself.
    let norm: Vec<f32> = (0..n)
        .map(|i| {
            emb[i * d..(i + 1) * d]
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
        })
        .collect();
    let mut raw = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            raw[i * n + j] =
                (0..d).map(|k| emb[i * d + k] * emb[j * d + k]).sum::<f32>() / (norm[i] * norm[j]);
        }
    }
    let m = PairMatrix::new(raw, n, n, &labels, &labels, true, Distance::Cosine, d).unwrap();
    for miner in all_miners() {
        let check_t = |a: u32, p: u32, nn: u32| {
            let (a, p, nn) = (a as usize, p as usize, nn as usize);
            assert_ne!(a, p, "{miner}: anchor as its own positive");
            assert_eq!(labels[a], labels[p], "{miner}: positive with another label");
            assert_ne!(
                labels[a], labels[nn],
                "{miner}: positive returned as a negative"
            );
        };
        match miner.mine(&m, 0.2) {
            Tuples::Triplets(ts) => {
                ts.iter().for_each(|t| check_t(t[0], t[1], t[2]));
                if let Some(cap) = miner.per_anchor_cap {
                    for a in 0..n as u32 {
                        assert!(ts.iter().filter(|t| t[0] == a).count() <= cap);
                    }
                }
            }
            Tuples::Pairs { pos, neg } => {
                pos.iter().for_each(|p| {
                    assert!(p[0] != p[1] && labels[p[0] as usize] == labels[p[1] as usize])
                });
                neg.iter()
                    .for_each(|p| assert_ne!(labels[p[0] as usize], labels[p[1] as usize]));
            }
            Tuples::All | Tuples::TripletBand { .. } => {}
        }
    }
}

fn losses() -> Vec<Loss> {
    vec![
        Loss::Contrastive(ContrastiveLoss::new(Distance::Cosine)),
        Loss::Pairwise(PairwiseLoss::new(Distance::Euclidean)),
        Loss::Triplet(TripletLoss::new(Distance::Cosine, 0.2)),
        Loss::Triplet(TripletLoss {
            soft_margin: true,
            swap: true,
            ..TripletLoss::new(Distance::Euclidean, 0.2)
        }),
        Loss::MultiSimilarity(MultiSimilarityLoss::new(Distance::Cosine)),
    ]
}

fn assert_zero(loss: &Loss, x: burn::tensor::Tensor<2>, labels: &[usize], miner: &Miner) {
    let out = loss.forward_self(x.clone(), labels, miner, None).unwrap();
    let v = scalar(out.loss.clone());
    assert_eq!(v, 0.0, "{} / {miner}", loss.name());
    let g = x.grad(&out.loss.backward()).map(vec2).unwrap_or_default();
    assert!(
        g.iter().all(|v| *v == 0.0),
        "{} / {miner}: gradient {g:?}",
        loss.name()
    );
}

#[test]
fn one_label_one_item_or_nothing_mined_gives_zero_without_nan() {
    let dev = dev();
    for loss in losses() {
        let miners: Vec<Miner> = if matches!(loss, Loss::Contrastive(_)) {
            vec![Miner::none()]
        } else {
            all_miners()
        };
        for miner in &miners {
            let x = from_vec(&noise(6 * 4, 3), 6, 4, &dev).require_grad();
            assert_zero(&loss, x, &[2; 6], miner);
            let x = from_vec(&noise(4, 5), 1, 4, &dev).require_grad();
            assert_zero(&loss, x, &[0], miner);
            // Identical embeddings (distance exactly 0) with distinct labels: finite loss and gradient.
            let x = from_vec(&[0.5; 12], 3, 4, &dev).require_grad();
            let out = loss
                .forward_self(x.clone(), &[0, 1, 2], miner, None)
                .unwrap();
            assert!(scalar(out.loss.clone()).is_finite());
            let g = x.grad(&out.loss.backward()).map(vec2).unwrap_or_default();
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{} / {miner}: {g:?}",
                loss.name()
            );
        }
    }
}

#[test]
fn duplicate_embeddings_give_finite_gradients() {
    // A positive pair at Euclidean distance 0 must not produce NaN through sqrt.
    let dev = dev();
    let loss = Loss::Triplet(TripletLoss::new(Distance::Euclidean, 0.5));
    let x = from_vec(&[1.0, 2.0, 1.0, 2.0, 0.0, 1.0], 3, 2, &dev).require_grad();
    let out = loss
        .forward_self(
            x.clone(),
            &[0, 0, 1],
            &Miner::new(MinerKind::BatchHard),
            None,
        )
        .unwrap();
    assert!(scalar(out.loss.clone()).is_finite());
    let g = vec2(x.grad(&out.loss.backward()).unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
}

#[test]
fn hardness_schedule_switches_miners_by_epoch() {
    let s: HardnessSchedule = "semihard:2,hard".parse().unwrap();
    assert_eq!(s.miner_for_epoch(0).name(), "semihard");
    assert_eq!(s.miner_for_epoch(1).name(), "semihard");
    assert_eq!(s.miner_for_epoch(2).name(), "hard");
    assert_eq!(s.miner_for_epoch(100).name(), "hard");
    let s: HardnessSchedule = "all@8:1,semihard:3,hard".parse().unwrap();
    assert_eq!(s.miner_for_epoch(0).per_anchor_cap, Some(8));
    assert_eq!(s.miner_for_epoch(2).name(), "semihard");
    let one: HardnessSchedule = "max-violation".parse().unwrap();
    assert_eq!(one.miner_for_epoch(5).name(), "max-violation");
    for bad in [
        "semihard,hard",
        "hard:x",
        "hard:3,semihard:2,all",
        "bogus",
        "all@0",
    ] {
        assert!(bad.parse::<HardnessSchedule>().is_err(), "{bad}");
    }
}

#[test]
fn distance_weighted_is_deterministic_and_prefers_closer_negatives() {
    let (n, d) = (32, 16);
    let emb = noise(n * d, 11);
    let labels: Vec<usize> = (0..n).map(|i| i % 4).collect();
    let norm: Vec<f32> = (0..n)
        .map(|i| {
            emb[i * d..(i + 1) * d]
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
        })
        .collect();
    let raw: Vec<f32> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            (0..d).map(|t| emb[i * d + t] * emb[j * d + t]).sum::<f32>() / (norm[i] * norm[j])
        })
        .collect();
    let m = PairMatrix::new(raw, n, n, &labels, &labels, true, Distance::Cosine, d).unwrap();
    let miner: Miner = "distance-weighted".parse().unwrap();
    let a = miner.mine(&m, 0.2);
    assert_eq!(a, miner.mine(&m, 0.2));
    let Tuples::Triplets(ts) = a else { panic!() };
    assert_eq!(ts.len(), n * (n / 4 - 1));
    // Sampled negatives are closer on average than a uniform draw (1/q(d) grows as d shrinks in 16-d).
    let mean_sampled: f32 = ts
        .iter()
        .map(|t| m.raw(t[0] as usize, t[2] as usize))
        .sum::<f32>()
        / ts.len() as f32;
    let mut negs = Vec::new();
    for i in 0..n {
        for j in 0..n {
            if labels[i] != labels[j] {
                negs.push(m.raw(i, j));
            }
        }
    }
    let mean_all = negs.iter().sum::<f32>() / negs.len() as f32;
    assert!(
        mean_sampled > mean_all,
        "sampled {mean_sampled} vs all {mean_all}"
    );
}

#[test]
fn implicit_band_paths_match_explicit_triplets() {
    // 2 classes of 20: 19 positives per anchor takes the sorted prefix-sum path; 3 classes
    // of 4 the per-positive scan; a huge cap forces explicit enumeration of the same triplets.
    let dev = dev();
    for (n, classes) in [(40usize, 2usize), (12, 3)] {
        let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let x0 = noise(n * 6, 17);
        for (miner, explicit) in [
            (Miner::none(), "all@1000000".parse::<Miner>().unwrap()),
            (
                Miner::new(MinerKind::TripletMargin {
                    margin: 0.3,
                    kind: TripletKind::SemiHard,
                }),
                Miner::new(MinerKind::TripletMargin {
                    margin: 0.3,
                    kind: TripletKind::SemiHard,
                })
                .with_cap(1_000_000),
            ),
        ] {
            let loss = Loss::Triplet(TripletLoss::new(Distance::Euclidean, 0.4));
            let run = |m: &Miner| {
                let x = from_vec(&x0, n, 6, &dev).require_grad();
                let out = loss.forward_self(x.clone(), &labels, m, None).unwrap();
                let v = scalar(out.loss.clone());
                (v, vec2(x.grad(&out.loss.backward()).unwrap()), out.stats)
            };
            let (v1, g1, s1) = run(&miner);
            let (v2, g2, s2) = run(&explicit);
            assert!((v1 - v2).abs() <= 1e-5 * v2.abs().max(1e-3), "{v1} vs {v2}");
            assert_eq!(s1.mined, s2.mined);
            assert!(
                g1.iter().zip(&g2).all(|(a, b)| (a - b).abs() <= 1e-5),
                "gradients differ"
            );
        }
    }
}
