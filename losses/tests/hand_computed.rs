//! Hand-computed values on tiny batches for every loss and miner.
//!
//! The 1-d batch x = [0, 1, 3, 6] with labels [0, 0, 1, 1] under the Euclidean distance has
//! D = [[0,1,3,6],[1,0,2,5],[3,2,0,3],[6,5,3,0]], small enough to mine by hand.

mod common;
use common::*;

use siam_losses::{
    ContrastiveLoss, Distance, Loss, Miner, MinerKind, MultiSimilarityLoss, PairMatrix,
    PairwiseLoss, Positives, Reducer, TripletLoss, Tuples,
};

const X: [f32; 4] = [0.0, 1.0, 3.0, 6.0];
const L: [usize; 4] = [0, 0, 1, 1];

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

fn line_matrix() -> Vec<f32> {
    let mut d = Vec::new();
    for a in X {
        for b in X {
            d.push((a - b).abs());
        }
    }
    d
}

fn pm() -> PairMatrix<'static> {
    PairMatrix::new(line_matrix(), 4, 4, &L, &L, true, Distance::Euclidean, 1).unwrap()
}

fn triplet(margin: f32, reducer: Reducer) -> Loss {
    Loss::Triplet(TripletLoss {
        reducer,
        ..TripletLoss::new(Distance::Euclidean, margin)
    })
}

fn run(loss: Loss, miner: Miner) -> (f32, Vec<f32>, siam_losses::LossStats) {
    let dev = dev();
    let x = from_vec(&X, 4, 1, &dev).require_grad();
    let out = loss.forward_self(x.clone(), &L, &miner, None).unwrap();
    let v = scalar(out.loss.clone());
    let g = x
        .grad(&out.loss.backward())
        .map(vec2)
        .unwrap_or(vec![0.0; 4]);
    (v, g, out.stats)
}

#[test]
fn batch_hard_mines_farthest_positive_and_closest_negative() {
    let t = Miner::new(MinerKind::BatchHard).mine(&pm(), 1.0);
    assert_eq!(
        t,
        Tuples::Triplets(vec![[0, 1, 2], [1, 0, 2], [2, 3, 1], [3, 2, 1]])
    );
    // Only (2,3,1) is active: 3 − 2 + 1 = 2; L = x3 − 2·x2 + x1 + 1.
    let (v, g, s) = run(
        triplet(1.0, Reducer::MeanNonZero),
        Miner::new(MinerKind::BatchHard),
    );
    assert!(close(v, 2.0), "{v}");
    assert_eq!(g, vec![0.0, 1.0, -2.0, 1.0]);
    assert_eq!((s.mined, s.active_fraction), (4, 0.25));
}

#[test]
fn batch_all_averages_over_active_triplets() {
    // Violations: −1, −4, 0, −3, 1, 2, −2, −1 → active {1, 2}.
    let (v, _, s) = run(
        triplet(1.0, Reducer::MeanNonZero),
        Miner::new(MinerKind::All),
    );
    assert!(close(v, 1.5), "{v}");
    assert_eq!(s.mined, 8);
    let (v, _, _) = run(triplet(1.0, Reducer::Mean), Miner::none());
    assert!(close(v, 3.0 / 8.0), "{v}");
    let (v, _, _) = run(triplet(1.0, Reducer::Sum), Miner::none());
    assert!(close(v, 3.0), "{v}");
    // Same numbers through the explicit (soft-margin-capable) path: softplus of each violation.
    let soft = Loss::Triplet(TripletLoss {
        soft_margin: true,
        reducer: Reducer::Mean,
        ..TripletLoss::new(Distance::Euclidean, 1.0)
    });
    let (v, _, _) = run(soft, Miner::none());
    let want: f64 = [-1.0f64, -4.0, 0.0, -3.0, 1.0, 2.0, -2.0, -1.0]
        .iter()
        .map(|x| (1.0 + x.exp()).ln())
        .sum::<f64>()
        / 8.0;
    assert!(close(v, want as f32), "{v} vs {want}");
}

#[test]
fn semi_hard_picks_closest_negative_beyond_positive_else_hardest() {
    // Margin 2.5: anchors 0, 1, 3 have a semi-hard negative; anchor 2 (d_ap = 3) has none
    // farther than 3 strictly, so it falls back to its hardest negative (1, at 2).
    let t = Miner::new(MinerKind::SemiHard { margin: Some(2.5) }).mine(&pm(), 0.0);
    assert_eq!(
        t,
        Tuples::Triplets(vec![[0, 1, 2], [1, 0, 2], [2, 3, 1], [3, 2, 1]])
    );
    // Margin 0.5: anchor 0's only farther negative (3) is outside 1 + 0.5 → hardest (2).
    let t = Miner::new(MinerKind::SemiHard { margin: None }).mine(&pm(), 0.5);
    assert_eq!(
        t,
        Tuples::Triplets(vec![[0, 1, 2], [1, 0, 2], [2, 3, 1], [3, 2, 1]])
    );
}

#[test]
fn max_violation_uses_every_positive_with_the_hardest_negative() {
    // Labels [0,0,0,1]: anchor 0 has positives 1, 2 and the single negative 3.
    let labels = [0usize, 0, 0, 1];
    let m = PairMatrix::new(
        line_matrix(),
        4,
        4,
        &labels,
        &labels,
        true,
        Distance::Euclidean,
        1,
    )
    .unwrap();
    let t = Miner::new(MinerKind::MaxViolation).mine(&m, 0.1);
    assert_eq!(
        t,
        Tuples::Triplets(
            vec![
                [0, 1, 3],
                [0, 2, 3],
                [1, 0, 3],
                [1, 2, 3],
                [2, 0, 3],
                [2, 1, 3],
                [3, 0, 0],
                [3, 1, 0],
                [3, 2, 0]
            ][..6]
                .to_vec()
        )
    );
    let hard = Miner::new(MinerKind::BatchHard).mine(&m, 0.1);
    assert_eq!(
        hard,
        Tuples::Triplets(vec![[0, 2, 3], [1, 2, 3], [2, 0, 3]])
    );
}

#[test]
fn cap_keeps_the_hardest_triplets_per_anchor() {
    let t = Miner::new(MinerKind::All).with_cap(1).mine(&pm(), 1.0);
    // Per anchor the largest o_ap − o_an: (0,1,2)=−2, (1,0,2)=−1, (2,3,1)=1, (3,2,1)=−2.
    assert_eq!(
        t,
        Tuples::Triplets(vec![[0, 1, 2], [1, 0, 2], [2, 3, 1], [3, 2, 1]])
    );
}

#[test]
fn multi_similarity_miner_by_hand() {
    // Anchor 2: positive 3 at 3, negatives at 3 (x0) and 2 (x1). ε = 0.1:
    // positive kept (3 + 0.1 > min neg 2); negatives kept when d − 0.1 < 3: both.
    let t = Miner::new(MinerKind::MultiSimilarity { epsilon: 0.1 }).mine(&pm(), 0.0);
    let Tuples::Pairs { pos, neg } = t else {
        panic!()
    };
    assert!(pos.contains(&[2, 3]) && neg.contains(&[2, 0]) && neg.contains(&[2, 1]));
    // Anchor 0: positive 1 at 1, min negative 3: 1.1 > 3 is false → no positive; negatives
    // with d − 0.1 < 1: none.
    assert!(!pos.iter().any(|p| p[0] == 0) && !neg.iter().any(|p| p[0] == 0));
}

#[test]
fn pairwise_margins_by_hand() {
    // Positive pairs d = 1,1,3,3 → [d − 0.5]₊ all active, mean 1.5; negative pairs
    // d = 3,6,2,5,3,2,6,5 → [2.5 − d]₊ = 0.5 twice, mean over non-zero 0.5.
    let loss = Loss::Pairwise(PairwiseLoss {
        pos_margin: 0.5,
        neg_margin: 2.5,
        ..PairwiseLoss::new(Distance::Euclidean)
    });
    let (v, _, s) = run(loss, Miner::none());
    assert!(close(v, 2.0), "{v}");
    assert_eq!(s.mined, 12);
    assert!(
        close(s.mean_positive, 2.0) && close(s.mean_negative, 4.0),
        "{s:?}"
    );
}

#[test]
fn multi_similarity_loss_by_hand() {
    let dev = dev();
    let a = tensor(&[&[1.0, 0.0]], &dev);
    let r = tensor(&[&[1.0, 0.0], &[0.0, 1.0]], &dev);
    let loss = Loss::MultiSimilarity(MultiSimilarityLoss::new(Distance::Cosine));
    let out = loss
        .forward(a, &[0], r, &[0, 1], &Miner::none(), None)
        .unwrap();
    let want = 0.5 * (1.0 + (-1.0f64).exp()).ln() + 0.02 * (1.0 + (-25.0f64).exp()).ln();
    assert!(close(scalar(out.loss), want as f32));
}

#[test]
fn clip_infonce_by_hand_and_label_awareness() {
    let dev = dev();
    let img = tensor(&[&[1.0, 0.0], &[0.0, 1.0]], &dev);
    let h = std::f32::consts::FRAC_1_SQRT_2;
    let txt = tensor(&[&[1.0, 0.0], &[h, h]], &dev);
    let loss = Loss::Contrastive(ContrastiveLoss {
        temperature: 1.0,
        ..ContrastiveLoss::new(Distance::Cosine)
    });
    let out = loss
        .forward(
            img.clone(),
            &[0, 1],
            txt.clone(),
            &[0, 1],
            &Miner::none(),
            None,
        )
        .unwrap();
    let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
    let s = h as f64;
    let rows = ((lse(1.0, s) - 1.0) + (lse(0.0, s) - s)) / 2.0;
    let cols = ((lse(1.0, 0.0) - 1.0) + (lse(s, s) - s)) / 2.0;
    assert!(close(scalar(out.loss), ((rows + cols) / 2.0) as f32));
    // Multi-positive and per-pair agree when labels are distinct.
    let pp = Loss::Contrastive(ContrastiveLoss {
        temperature: 1.0,
        positives: Positives::PerPair,
        ..ContrastiveLoss::new(Distance::Cosine)
    });
    let out2 = pp
        .forward(
            img.clone(),
            &[0, 1],
            txt.clone(),
            &[0, 1],
            &Miner::none(),
            None,
        )
        .unwrap();
    assert!(close(scalar(out2.loss), ((rows + cols) / 2.0) as f32));
    // Learnable scale: ln(1) = 0 gives the same as temperature 1.
    let ls = burn::tensor::Tensor::<1>::from_floats([0.0], &dev);
    let out3 = ContrastiveLoss::new(Distance::Cosine);
    let out3 = Loss::Contrastive(out3)
        .forward(
            img.clone(),
            &[0, 1],
            txt.clone(),
            &[0, 1],
            &Miner::none(),
            Some(ls),
        )
        .unwrap();
    assert!(close(scalar(out3.loss), ((rows + cols) / 2.0) as f32));
    // Two images of the same label against one text of that label and one of another: the
    // second image's positive is text 0, so neither image is pushed away from it.
    let out4 = loss
        .forward(img, &[0, 0], txt, &[0, 1], &Miner::none(), None)
        .unwrap();
    let rows4 = ((lse(1.0, s) - 1.0) + (lse(0.0, s) - 0.0)) / 2.0;
    // Column 0's anchors are both positives (nothing to contrast: no term) and column 1 has no
    // positive, so only the image→text direction counts.
    assert!(close(scalar(out4.loss), rows4 as f32), "{rows4}");
    assert_eq!(out4.stats.mined, 2);
}
