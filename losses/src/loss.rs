//! Losses: contrastive (InfoNCE), pairwise margin, triplet margin and multi-similarity.
//!
//! Each loss runs in three steps (see the crate docs): the `B × R` matrix is computed on
//! the autodiff tensors by its [`Distance`]; the host reads it back in f32, the [`Miner`]
//! picks tuples per anchor, and the loss value `L` and `G = ∂L/∂M` (one entry per matrix
//! entry, so memory stays `O(B·R)`) are computed exactly in f64/f32; finally the loss tensor
//! is assembled as `⟨G, M⟩ − stopgrad(⟨G, M⟩) + L`, whose value is `L` and whose gradient
//! with respect to `M` is `G`, so autodiff carries it on to the embeddings (and the logit
//! scale). Half-precision towers are cast to f32 before the matrix.

use std::str::FromStr;

use burn::tensor::{Tensor, TensorData};

use crate::distance::Distance;
use crate::error::{LossError, Result};
use crate::matrix::PairMatrix;
use crate::miner::{for_each_band_triplet, Miner, Tuples};
use crate::reducer::Reducer;

/// `ln 100`: open_clip clamps the learnable logit scale so `exp(scale) ≤ 100`.
pub const MAX_LOGIT_SCALE: f32 = 4.605_170_2;

/// Diagnostics that make collapse visible.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    /// Fraction of mined tuples with a non-zero loss (contrastive: fraction of rows where some
    /// negative still scores at least as high as the lowest-scoring positive).
    pub active_fraction: f32,
    /// Mean distance (or similarity, in the distance's own units) over positive pairs used.
    pub mean_positive: f32,
    /// Mean distance (or similarity) over negative pairs used.
    pub mean_negative: f32,
    /// Number of tuples mined (triplets, pairs, or contrastive positive pairs).
    pub mined: usize,
}

/// A loss tensor of shape `[1]` and its diagnostics.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The reduced loss, shape `[1]`, differentiable.
    pub loss: Tensor<1>,
    /// Diagnostics.
    pub stats: LossStats,
}

/// The loss value and its derivative with respect to every oriented matrix entry.
#[derive(Debug, Clone)]
pub struct HostLoss {
    /// Reduced loss value.
    pub value: f64,
    /// `∂L/∂o` for the `B × R` oriented matrix (for the contrastive loss: `∂L/∂logits`).
    pub grad: Vec<f32>,
    /// `∂L/∂o` for the reference-by-reference matrix (triplet `swap` across modalities only).
    pub grad_refs: Option<Vec<f32>>,
    /// Diagnostics.
    pub stats: LossStats,
}

impl HostLoss {
    fn zero(n: usize, stats: LossStats) -> Self {
        Self {
            value: 0.0,
            grad: vec![0.0; n],
            grad_refs: None,
            stats,
        }
    }
}

/// Running sums for the diagnostics.
#[derive(Default)]
struct Tally {
    mined: usize,
    active: usize,
    pos_sum: f64,
    pos_n: usize,
    neg_sum: f64,
    neg_n: usize,
}

impl Tally {
    fn stats(&self, d: Distance) -> LossStats {
        let mean = |s: f64, n: usize| {
            if n > 0 {
                d.orient((s / n as f64) as f32)
            } else {
                0.0
            }
        };
        LossStats {
            active_fraction: if self.mined > 0 {
                self.active as f32 / self.mined as f32
            } else {
                0.0
            },
            mean_positive: mean(self.pos_sum, self.pos_n),
            mean_negative: mean(self.neg_sum, self.neg_n),
            mined: self.mined,
        }
    }
}

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn scale(grad: &mut [f32], by: f64) {
    grad.iter_mut().for_each(|g| *g = (*g as f64 * by) as f32);
}

/// The margin triplet loss `ℓ(a, p, n) = [o_ap − o_an + m]₊` (Weinberger & Saul 2009; Schroff
/// et al. 2015, FaceNet), in the oriented scale (`d_ap − d_an + m` for a distance,
/// `s_an − s_ap + m` for a similarity), as pytorch-metric-learning's `TripletMarginLoss`.
///
/// * `swap` (Balntas et al. 2016): use `min(o_an, o_pn)` — the negative's distance to
///   whichever of anchor and positive is closer.
/// * `soft_margin`: `softplus(o_ap − o_an + m)` instead of the hinge (Hermans et al. 2017
///   use `m = 0`; PML's `smooth_loss`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripletLoss {
    /// The distance.
    pub distance: Distance,
    /// The margin `m ≥ 0`.
    pub margin: f32,
    /// Distance swap.
    pub swap: bool,
    /// Softplus instead of the hinge.
    pub soft_margin: bool,
    /// Reduction over triplets (PML default: mean over non-zero).
    pub reducer: Reducer,
}

impl TripletLoss {
    /// Margin `m`, no swap, hinge, mean over non-zero triplets.
    pub fn new(distance: Distance, margin: f32) -> Self {
        Self {
            distance,
            margin,
            swap: false,
            soft_margin: false,
            reducer: Reducer::MeanNonZero,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(LossError::BadMargin {
                loss: "triplet",
                what: format!(
                    "margin must be >= 0 (how much farther the negative must be), got {}",
                    self.margin
                ),
                distance: self.distance.name(),
            });
        }
        Ok(())
    }

    /// Value and gradient on the host. `refs_matrix` is the oriented `R × R` matrix, needed
    /// only for `swap` when the references are not the anchors.
    pub fn host(
        &self,
        m: &PairMatrix<'_>,
        tuples: &Tuples,
        refs_matrix: Option<&[f32]>,
    ) -> HostLoss {
        let (b, r) = (m.rows, m.cols);
        let mut grad = vec![0f32; b * r];
        let mut grad_refs = refs_matrix.map(|_| vec![0f32; r * r]);
        let mut t = Tally::default();
        let mut value = 0f64;
        let band = match tuples {
            Tuples::All => Some((f32::NEG_INFINITY, f32::INFINITY)),
            Tuples::TripletBand { lo, hi } => Some((*lo, *hi)),
            _ => None,
        };
        if let (Some((lo, hi)), false, false) = (band, self.soft_margin, self.swap) {
            value = self.band_hinge(m, lo, hi, &mut grad, &mut t);
        } else {
            let margin = self.margin as f64;
            let mut visit = |a: usize, p: usize, n: usize| {
                let ap = m.at(a, p);
                let an = m.at(a, n);
                let mut an_eff = an;
                let mut via_pn = None;
                if self.swap {
                    let pn = match refs_matrix {
                        Some(rr) => rr[p * r + n],
                        None => m.at(p, n),
                    };
                    if pn < an {
                        an_eff = pn;
                        via_pn = Some(pn);
                    }
                }
                let v = (ap - an_eff) as f64 + margin;
                let (l, dl) = if self.soft_margin {
                    (softplus(v), sigmoid(v))
                } else if v > 0.0 {
                    (v, 1.0)
                } else {
                    (0.0, 0.0)
                };
                t.mined += 1;
                t.pos_sum += ap as f64;
                t.pos_n += 1;
                t.neg_sum += an as f64;
                t.neg_n += 1;
                if l > 0.0 {
                    t.active += 1;
                    value += l;
                    grad[a * r + p] += dl as f32;
                    match (via_pn, grad_refs.as_mut()) {
                        (None, _) => grad[a * r + n] -= dl as f32,
                        (Some(_), Some(gr)) => gr[p * r + n] -= dl as f32,
                        (Some(_), None) => grad[p * r + n] -= dl as f32,
                    }
                }
            };
            match tuples {
                Tuples::Triplets(ts) => ts
                    .iter()
                    .for_each(|x| visit(x[0] as usize, x[1] as usize, x[2] as usize)),
                Tuples::Pairs { pos, neg } => {
                    // PML's convert_to_triplets: every positive pair with every negative pair of the same anchor.
                    let mut by_anchor: Vec<Vec<u32>> = vec![Vec::new(); b];
                    neg.iter().for_each(|x| by_anchor[x[0] as usize].push(x[1]));
                    for x in pos {
                        for &n in &by_anchor[x[0] as usize] {
                            visit(x[0] as usize, x[1] as usize, n as usize);
                        }
                    }
                }
                Tuples::All | Tuples::TripletBand { .. } => {
                    let (lo, hi) = band.expect("band");
                    let (mut pos, mut neg) = (Vec::new(), Vec::new());
                    for a in 0..b {
                        for_each_band_triplet(m, a, lo, hi, &mut pos, &mut neg, |p, n| {
                            visit(a, p as usize, n as usize)
                        });
                    }
                }
            }
        }
        let stats = t.stats(m.distance);
        match self.reducer.divisor(t.mined, t.active) {
            Some(div) => {
                scale(&mut grad, 1.0 / div);
                if let Some(g) = grad_refs.as_mut() {
                    scale(g, 1.0 / div);
                }
                HostLoss {
                    value: value / div,
                    grad,
                    grad_refs,
                    stats,
                }
            }
            None => HostLoss::zero(b * r, stats),
        }
    }

    /// Hinge over an implicit band: per anchor the negatives are sorted once; for each positive
    /// the band and its active part are contiguous ranges found by binary search, their sums
    /// come from prefix sums, and each negative's gradient from a difference array.
    /// `O(R log R)` per anchor, no triplet is ever enumerated.
    fn band_hinge(
        &self,
        m: &PairMatrix<'_>,
        lo: f32,
        hi: f32,
        grad: &mut [f32],
        t: &mut Tally,
    ) -> f64 {
        let r = m.cols;
        let margin = self.margin;
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let (mut vals, mut prefix, mut diff) = (Vec::new(), Vec::new(), Vec::new());
        let mut value = 0f64;
        for a in 0..m.rows {
            m.split_row(a, &mut pos, &mut neg);
            if pos.is_empty() || neg.is_empty() {
                continue;
            }
            let row = m.row(a);
            if pos.len() <= 16 {
                // Few positives (P·K sampling): scanning the negatives once per positive is
                // cheaper than sorting them.
                for &p in &pos {
                    let ap = row[p as usize];
                    let (mut mined, mut k) = (0usize, 0usize);
                    let (mut an_sum, mut act_sum) = (0f64, 0f64);
                    for &n in &neg {
                        let v = row[n as usize];
                        let tm = v - ap;
                        if tm > lo && tm <= hi {
                            mined += 1;
                            an_sum += v as f64;
                            if (ap - v) + margin > 0.0 {
                                k += 1;
                                act_sum += v as f64;
                                grad[a * r + n as usize] -= 1.0;
                            }
                        }
                    }
                    t.mined += mined;
                    t.pos_sum += ap as f64 * mined as f64;
                    t.pos_n += mined;
                    t.neg_sum += an_sum;
                    t.neg_n += mined;
                    if k > 0 {
                        t.active += k;
                        value += k as f64 * (ap as f64 + margin as f64) - act_sum;
                        grad[a * r + p as usize] += k as f32;
                    }
                }
                continue;
            }
            neg.sort_unstable_by(|&x, &y| row[x as usize].total_cmp(&row[y as usize]));
            vals.clear();
            vals.extend(neg.iter().map(|&j| row[j as usize]));
            prefix.clear();
            prefix.push(0f64);
            let mut acc = 0f64;
            for &v in &vals {
                acc += v as f64;
                prefix.push(acc);
            }
            diff.clear();
            diff.resize(vals.len() + 1, 0i64);
            for &p in &pos {
                let ap = row[p as usize];
                let s = vals.partition_point(|&v| {
                    (v - ap).partial_cmp(&lo) != Some(std::cmp::Ordering::Greater)
                });
                let e = vals.partition_point(|&v| v - ap <= hi).max(s);
                if e == s {
                    continue;
                }
                t.mined += e - s;
                t.pos_sum += ap as f64 * (e - s) as f64;
                t.pos_n += e - s;
                t.neg_sum += prefix[e] - prefix[s];
                t.neg_n += e - s;
                let act = s + vals[s..e].partition_point(|&v| (ap - v) + margin > 0.0);
                let k = act - s;
                if k > 0 {
                    t.active += k;
                    value += k as f64 * (ap as f64 + margin as f64) - (prefix[act] - prefix[s]);
                    grad[a * r + p as usize] += k as f32;
                    diff[s] -= 1;
                    diff[act] += 1;
                }
            }
            let mut run = 0i64;
            for (idx, &n) in neg.iter().enumerate() {
                run += diff[idx];
                grad[a * r + n as usize] += run as f32;
            }
        }
        value
    }
}

/// The margin contrastive (pair) loss of Hadsell, Chopra & LeCun (2006), with a positive and
/// a negative margin as in pytorch-metric-learning's `ContrastiveLoss`:
/// positives `[d − m₊]₊`, negatives `[m₋ − d]₊` for a distance; for a similarity
/// positives `[m₊ − s]₊`, negatives `[s − m₋]₊`. The positive and negative terms are reduced
/// separately and added. With no negative pair at all (a one-label batch) the loss is zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairwiseLoss {
    /// The distance.
    pub distance: Distance,
    /// Positive margin `m₊` (distance: pull positives inside it; similarity: above it).
    pub pos_margin: f32,
    /// Negative margin `m₋` (distance: push negatives beyond it; similarity: below it).
    pub neg_margin: f32,
    /// Reduction, applied to positive and negative terms separately (PML default: mean over non-zero).
    pub reducer: Reducer,
}

impl PairwiseLoss {
    /// PML's defaults for a distance (`m₊ = 0, m₋ = 1`); for a similarity `m₊ = 1, m₋ = 0`.
    pub fn new(distance: Distance) -> Self {
        let (pos_margin, neg_margin) = if distance.is_similarity() {
            (1.0, 0.0)
        } else {
            (0.0, 1.0)
        };
        Self {
            distance,
            pos_margin,
            neg_margin,
            reducer: Reducer::MeanNonZero,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| {
            Err(LossError::BadMargin {
                loss: "pairwise",
                what,
                distance: self.distance.name(),
            })
        };
        if !(self.pos_margin.is_finite() && self.neg_margin.is_finite()) {
            return bad("margins must be finite".into());
        }
        if self.distance.is_similarity() {
            if self.pos_margin <= self.neg_margin {
                return bad(format!(
                    "for a similarity pos_margin ({}) must exceed neg_margin ({})",
                    self.pos_margin, self.neg_margin
                ));
            }
        } else if self.pos_margin < 0.0 || self.neg_margin <= self.pos_margin {
            return bad(format!(
                "for a distance 0 <= pos_margin ({}) < neg_margin ({}) is required",
                self.pos_margin, self.neg_margin
            ));
        }
        Ok(())
    }

    /// Value and gradient on the host.
    pub fn host(&self, m: &PairMatrix<'_>, tuples: &Tuples) -> HostLoss {
        let (b, r) = (m.rows, m.cols);
        let opm = m.distance.orient(self.pos_margin);
        let onm = m.distance.orient(self.neg_margin);
        // Signed counts of active terms per entry; an entry is either positive or negative.
        let mut grad = vec![0f32; b * r];
        let (mut pv, mut nv) = (0f64, 0f64);
        let (mut pt, mut nt) = (Tally::default(), Tally::default());
        let mut visit = |is_pos: bool, a: usize, j: usize| {
            let o = m.at(a, j);
            if is_pos {
                pt.mined += 1;
                pt.pos_sum += o as f64;
                pt.pos_n += 1;
                let l = o - opm;
                if l > 0.0 {
                    pt.active += 1;
                    pv += l as f64;
                    grad[a * r + j] += 1.0;
                }
            } else {
                nt.mined += 1;
                nt.neg_sum += o as f64;
                nt.neg_n += 1;
                let l = onm - o;
                if l > 0.0 {
                    nt.active += 1;
                    nv += l as f64;
                    grad[a * r + j] -= 1.0;
                }
            }
        };
        match tuples {
            Tuples::All => {
                for a in 0..b {
                    for j in 0..r {
                        if m.is_pos(a, j) {
                            visit(true, a, j);
                        } else if m.is_neg(a, j) {
                            visit(false, a, j);
                        }
                    }
                }
            }
            Tuples::Pairs { pos, neg } => {
                pos.iter()
                    .for_each(|x| visit(true, x[0] as usize, x[1] as usize));
                neg.iter()
                    .for_each(|x| visit(false, x[0] as usize, x[1] as usize));
            }
            Tuples::Triplets(ts) => {
                ts.iter()
                    .for_each(|x| visit(true, x[0] as usize, x[1] as usize));
                ts.iter()
                    .for_each(|x| visit(false, x[0] as usize, x[2] as usize));
            }
            Tuples::TripletBand { lo, hi } => {
                let (mut pos, mut neg) = (Vec::new(), Vec::new());
                let mut trips = Vec::new();
                for a in 0..b {
                    for_each_band_triplet(m, a, *lo, *hi, &mut pos, &mut neg, |p, n| {
                        trips.push((a, p as usize, n as usize))
                    });
                }
                trips.iter().for_each(|&(a, p, _)| visit(true, a, p));
                trips.iter().for_each(|&(a, _, n)| visit(false, a, n));
            }
        }
        if nt.mined == 0 {
            // No negative pair: nothing to contrast against, and pulling positives together alone
            // is the collapse direction, so the loss is zero (a one-label batch).
            let t = Tally {
                mined: pt.mined,
                pos_sum: pt.pos_sum,
                pos_n: pt.pos_n,
                ..Tally::default()
            };
            return HostLoss::zero(b * r, t.stats(m.distance));
        }
        let dp = self.reducer.divisor(pt.mined, pt.active);
        let dn = self.reducer.divisor(nt.mined, nt.active);
        let (dp, dn) = if self.reducer == Reducer::Sum {
            (dp.map(|_| 1.0), dn.map(|_| 1.0))
        } else {
            (dp, dn)
        };
        let value = dp.map_or(0.0, |d| pv / d) + dn.map_or(0.0, |d| nv / d);
        for g in grad.iter_mut() {
            if *g > 0.0 {
                *g = dp.map_or(0.0, |d| (*g as f64 / d) as f32);
            } else if *g < 0.0 {
                *g = dn.map_or(0.0, |d| (*g as f64 / d) as f32);
            }
        }
        let t = Tally {
            mined: pt.mined + nt.mined,
            active: pt.active + nt.active,
            pos_sum: pt.pos_sum,
            pos_n: pt.pos_n,
            neg_sum: nt.neg_sum,
            neg_n: nt.neg_n,
        };
        HostLoss {
            value,
            grad,
            grad_refs: None,
            stats: t.stats(m.distance),
        }
    }
}

/// Multi-similarity loss (Wang, Han, Huang, Dong, Scott 2019, "Multi-Similarity Loss with
/// General Pair Weighting", CVPR; PML `MultiSimilarityLoss`), per anchor `i`:
/// `(1/α) log(1 + Σ_{p} e^{−α(s_ip − λ)}) + (1/β) log(1 + Σ_{n} e^{β(s_in − λ)})`
/// over the mined positive and negative pairs (for a distance `s − λ` becomes `λ − d`),
/// averaged over all anchors by default (PML's `MeanReducer`). With no negative pair at all
/// (a one-label batch) the loss is zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiSimilarityLoss {
    /// The distance (the paper uses cosine similarity).
    pub distance: Distance,
    /// α, the positive weight (2).
    pub alpha: f32,
    /// β, the negative weight (50).
    pub beta: f32,
    /// λ, the base (0.5).
    pub base: f32,
    /// Reduction over anchors.
    pub reducer: Reducer,
}

impl MultiSimilarityLoss {
    /// The paper's and PML's defaults: α = 2, β = 50, λ = 0.5, mean over anchors.
    pub fn new(distance: Distance) -> Self {
        Self {
            distance,
            alpha: 2.0,
            beta: 50.0,
            base: 0.5,
            reducer: Reducer::Mean,
        }
    }

    fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("multi-similarity alpha", self.alpha),
            ("multi-similarity beta", self.beta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(LossError::NonPositive { what, value: v });
            }
        }
        if !self.base.is_finite() {
            return Err(LossError::BadMargin {
                loss: "multi-similarity",
                what: "base must be finite".into(),
                distance: self.distance.name(),
            });
        }
        Ok(())
    }

    /// Value and gradient on the host.
    pub fn host(&self, m: &PairMatrix<'_>, tuples: &Tuples) -> HostLoss {
        let (b, r) = (m.rows, m.cols);
        // 1 = positive, 2 = negative, 0 = unused.
        let mut mask = vec![0u8; b * r];
        match tuples {
            Tuples::All => {
                for a in 0..b {
                    for j in 0..r {
                        mask[a * r + j] = if m.is_pos(a, j) {
                            1
                        } else if m.is_neg(a, j) {
                            2
                        } else {
                            0
                        };
                    }
                }
            }
            Tuples::Pairs { pos, neg } => {
                pos.iter()
                    .for_each(|x| mask[x[0] as usize * r + x[1] as usize] = 1);
                neg.iter()
                    .for_each(|x| mask[x[0] as usize * r + x[1] as usize] = 2);
            }
            Tuples::Triplets(ts) => ts.iter().for_each(|x| {
                mask[x[0] as usize * r + x[1] as usize] = 1;
                mask[x[0] as usize * r + x[2] as usize] = 2;
            }),
            Tuples::TripletBand { lo, hi } => {
                let (mut pos, mut neg) = (Vec::new(), Vec::new());
                for a in 0..b {
                    for_each_band_triplet(m, a, *lo, *hi, &mut pos, &mut neg, |p, n| {
                        mask[a * r + p as usize] = 1;
                        mask[a * r + n as usize] = 2;
                    });
                }
            }
        }
        let ob = m.distance.orient(self.base) as f64;
        let (alpha, beta) = (self.alpha as f64, self.beta as f64);
        let mut grad = vec![0f32; b * r];
        let mut t = Tally::default();
        let mut value = 0f64;
        let mut nonzero_rows = 0usize;
        let mut xs: Vec<(usize, f64)> = Vec::new();
        // (1/w) log(1 + Σ e^{x}) and its softmax weights (each weight is ∂/∂o up to sign).
        let lse1 = |xs: &[(usize, f64)]| -> (f64, f64) {
            let mx = xs.iter().fold(0f64, |acc, &(_, x)| acc.max(x));
            let s = (-mx).exp() + xs.iter().map(|&(_, x)| (x - mx).exp()).sum::<f64>();
            (mx + s.ln(), mx)
        };
        for a in 0..b {
            let row = m.row(a);
            let mut row_loss = 0f64;
            for kind in [1u8, 2u8] {
                xs.clear();
                for j in 0..r {
                    if mask[a * r + j] == kind {
                        let o = row[j] as f64;
                        xs.push((
                            j,
                            if kind == 1 {
                                alpha * (o - ob)
                            } else {
                                beta * (ob - o)
                            },
                        ));
                        if kind == 1 {
                            t.pos_sum += o;
                            t.pos_n += 1;
                        } else {
                            t.neg_sum += o;
                            t.neg_n += 1;
                        }
                    }
                }
                if xs.is_empty() {
                    continue;
                }
                let (lse, _) = lse1(&xs);
                let w = if kind == 1 { alpha } else { beta };
                row_loss += lse / w;
                for &(j, x) in &xs {
                    let p = (x - lse).exp();
                    grad[a * r + j] += if kind == 1 { p as f32 } else { -(p as f32) };
                }
            }
            if row_loss > 0.0 {
                nonzero_rows += 1;
            }
            value += row_loss;
        }
        t.mined = t.pos_n + t.neg_n;
        let mut stats = t.stats(m.distance);
        stats.active_fraction = if b > 0 {
            nonzero_rows as f32 / b as f32
        } else {
            0.0
        };
        // Without any negative pair there is nothing to contrast (a one-label batch): zero.
        match self.reducer.divisor(b, nonzero_rows) {
            Some(div) if t.neg_n > 0 => {
                scale(&mut grad, 1.0 / div);
                HostLoss {
                    value: value / div,
                    grad,
                    grad_refs: None,
                    stats,
                }
            }
            _ => HostLoss::zero(b * r, stats),
        }
    }
}

/// Which references count as positives in the contrastive loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positives {
    /// Label-aware multi-positive InfoNCE (Khosla et al. 2020, SupCon, "L_out"; PML
    /// `SupConLoss`): the target distribution is uniform over every reference that shares the
    /// anchor's label, `ℓ_i = −(1/|P(i)|) Σ_{p∈P(i)} log softmax_j(z_ij)[p]`. With all labels
    /// distinct this is exactly CLIP's InfoNCE.
    MultiPositive,
    /// NT-Xent per positive pair (Chen et al. 2020, SimCLR; PML `NTXentLoss`):
    /// `ℓ_ip = −log(e^{z_ip} / (e^{z_ip} + Σ_{n∈N(i)} e^{z_in}))`, averaged over positive pairs:
    /// other positives are neither in the numerator nor pushed away.
    PerPair,
}

/// CLIP's symmetric InfoNCE (Radford et al. 2021; open_clip `loss.py` `ClipLoss`) over logits
/// `z_ij = scale · s(a_i, r_j)` (for a distance `s = −d`), with `scale = exp(min(logit_scale,
/// ln 100))` learnable, or `1/temperature` fixed. Label-aware (see [`Positives`]): anchors
/// sharing a label (a label-text tower sees the same text many times) are never pushed apart.
/// Symmetric: the mean of the anchor→reference (rows) and reference→anchor (columns) losses.
/// Rows without a positive or without any negative contribute nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContrastiveLoss {
    /// The similarity (cosine for CLIP).
    pub distance: Distance,
    /// Temperature τ used when no learnable logit scale is passed (0.07 as CLIP's init / PML).
    pub temperature: f32,
    /// Positive handling.
    pub positives: Positives,
    /// Average both directions (CLIP) or only anchors → references (PML `NTXentLoss(ref_emb=…)`).
    pub symmetric: bool,
}

impl ContrastiveLoss {
    /// Cosine, τ = 0.07, multi-positive, symmetric.
    pub fn new(distance: Distance) -> Self {
        Self {
            distance,
            temperature: 0.07,
            positives: Positives::MultiPositive,
            symmetric: true,
        }
    }

    fn validate(&self, miner: &Miner) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(LossError::NonPositive {
                what: "temperature",
                value: self.temperature,
            });
        }
        if !miner.is_all() {
            return Err(LossError::UnsupportedMiner {
                loss: "contrastive",
                miner: miner.name(),
                why: "InfoNCE already weighs every negative by its softmax; use `none` or `all`",
            });
        }
        Ok(())
    }

    /// Value and `∂L/∂z` (z = logits = `−scale · o`) on the host.
    pub fn host(&self, m: &PairMatrix<'_>, logit_scale: f32) -> HostLoss {
        let (b, r) = (m.rows, m.cols);
        let c = logit_scale as f64;
        let mut t = Tally::default();
        let mut rows_counted = 0usize;
        let mut rows_active = 0usize;
        let mut grad = vec![0f32; b * r];
        let (v_rows, n_rows) = self.direction(
            &m.o,
            b,
            r,
            m.labels,
            m.ref_labels,
            m.same_set,
            c,
            &mut grad,
            &mut t,
            &mut rows_counted,
            &mut rows_active,
        );
        let mut value = if n_rows > 0 {
            v_rows / n_rows as f64
        } else {
            0.0
        };
        if n_rows > 0 {
            scale(&mut grad, 1.0 / n_rows as f64);
        }
        if self.symmetric {
            let mut ot = vec![0f32; b * r];
            for i in 0..b {
                for j in 0..r {
                    ot[j * b + i] = m.o[i * r + j];
                }
            }
            let mut gt = vec![0f32; b * r];
            let mut skip = Tally::default();
            let (v_cols, n_cols) = self.direction(
                &ot,
                r,
                b,
                m.ref_labels,
                m.labels,
                m.same_set,
                c,
                &mut gt,
                &mut skip,
                &mut rows_counted,
                &mut rows_active,
            );
            let wc = if n_cols > 0 { 1.0 / n_cols as f64 } else { 0.0 };
            let halves = if n_rows > 0 && n_cols > 0 { 0.5 } else { 1.0 };
            value = halves * (value + v_cols * wc);
            for i in 0..b {
                for j in 0..r {
                    let g = &mut grad[i * r + j];
                    *g = (halves * (*g as f64 + gt[j * b + i] as f64 * wc)) as f32;
                }
            }
        }
        let mut stats = t.stats(m.distance);
        stats.active_fraction = if rows_counted > 0 {
            rows_active as f32 / rows_counted as f32
        } else {
            0.0
        };
        HostLoss {
            value,
            grad,
            grad_refs: None,
            stats,
        }
    }

    /// One direction: rows are anchors. Adds `∂(Σ row losses)/∂z` into `grad` and returns
    /// (sum of losses, number of terms averaged: rows or positive pairs).
    #[allow(clippy::too_many_arguments)]
    fn direction(
        &self,
        o: &[f32],
        b: usize,
        r: usize,
        labels: &[usize],
        ref_labels: &[usize],
        same_set: bool,
        c: f64,
        grad: &mut [f32],
        t: &mut Tally,
        rows_counted: &mut usize,
        rows_active: &mut usize,
    ) -> (f64, usize) {
        let mut total = 0f64;
        let mut terms = 0usize;
        let mut z = vec![0f64; r];
        for i in 0..b {
            let row = &o[i * r..(i + 1) * r];
            let (mut np, mut nn) = (0usize, 0usize);
            let (mut min_pos, mut max_neg) = (f64::INFINITY, f64::NEG_INFINITY);
            let mut max_all = f64::NEG_INFINITY;
            let mut max_neg_z = f64::NEG_INFINITY;
            for j in 0..r {
                z[j] = -c * row[j] as f64;
                if same_set && i == j {
                    continue;
                }
                max_all = max_all.max(z[j]);
                if labels[i] == ref_labels[j] {
                    np += 1;
                    min_pos = min_pos.min(z[j]);
                    t.pos_sum += row[j] as f64;
                    t.pos_n += 1;
                } else {
                    nn += 1;
                    max_neg = max_neg.max(z[j]);
                    max_neg_z = max_neg_z.max(z[j]);
                    t.neg_sum += row[j] as f64;
                    t.neg_n += 1;
                }
            }
            if np == 0 {
                continue;
            }
            t.mined += np;
            if nn == 0 {
                // Nothing to contrast against: zero loss, zero gradient (PerPair still counts its pairs, as PML does).
                if self.positives == Positives::PerPair {
                    terms += np;
                }
                continue;
            }
            *rows_counted += 1;
            if max_neg >= min_pos {
                *rows_active += 1;
            }
            let g = &mut grad[i * r..(i + 1) * r];
            match self.positives {
                Positives::MultiPositive => {
                    let mut sum = 0f64;
                    let mut pos_z = 0f64;
                    for j in 0..r {
                        if same_set && i == j {
                            continue;
                        }
                        sum += (z[j] - max_all).exp();
                        if labels[i] == ref_labels[j] {
                            pos_z += z[j];
                        }
                    }
                    let lse = max_all + sum.ln();
                    total += lse - pos_z / np as f64;
                    terms += 1;
                    for j in 0..r {
                        if same_set && i == j {
                            continue;
                        }
                        let mut gj = (z[j] - lse).exp();
                        if labels[i] == ref_labels[j] {
                            gj -= 1.0 / np as f64;
                        }
                        g[j] += gj as f32;
                    }
                }
                Positives::PerPair => {
                    let mut sn = 0f64;
                    for j in 0..r {
                        if labels[i] != ref_labels[j] {
                            sn += (z[j] - max_neg_z).exp();
                        }
                    }
                    let lse_n = max_neg_z + sn.ln();
                    let mut q_sum = 0f64;
                    for j in 0..r {
                        if (same_set && i == j) || labels[i] != ref_labels[j] {
                            continue;
                        }
                        let x = lse_n - z[j];
                        total += softplus(x);
                        terms += 1;
                        let q = sigmoid(x);
                        q_sum += q;
                        g[j] -= q as f32;
                    }
                    for j in 0..r {
                        if labels[i] != ref_labels[j] {
                            g[j] += (q_sum * (z[j] - lse_n).exp()) as f32;
                        }
                    }
                }
            }
        }
        (total, terms)
    }
}

/// A loss with its parameters: the single entry point for training loops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Symmetric, label-aware InfoNCE.
    Contrastive(ContrastiveLoss),
    /// Margin contrastive loss on pairs.
    Pairwise(PairwiseLoss),
    /// Margin triplet loss.
    Triplet(TripletLoss),
    /// Multi-similarity loss.
    MultiSimilarity(MultiSimilarityLoss),
}

impl Loss {
    /// The loss's distance.
    pub fn distance(&self) -> Distance {
        match self {
            Loss::Contrastive(l) => l.distance,
            Loss::Pairwise(l) => l.distance,
            Loss::Triplet(l) => l.distance,
            Loss::MultiSimilarity(l) => l.distance,
        }
    }

    /// The loss's name.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::Contrastive(_) => "contrastive",
            Loss::Pairwise(_) => "pairwise",
            Loss::Triplet(_) => "triplet",
            Loss::MultiSimilarity(_) => "multi-similarity",
        }
    }

    /// Anchors (e.g. images) against references (e.g. texts), each with labels; a reference
    /// sharing the anchor's label is a positive, any other a negative. For the triplet,
    /// pairwise and multi-similarity losses call it twice (image→text and text→image) and add;
    /// the contrastive loss is already symmetric. `logit_scale` (log of the scale, shape `[1]`)
    /// is used only by the contrastive loss; without it the loss uses `1/temperature`.
    pub fn forward(
        &self,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Tensor<2>,
        ref_labels: &[usize],
        miner: &Miner,
        logit_scale: Option<Tensor<1>>,
    ) -> Result<LossOutput> {
        self.run(
            anchors,
            anchor_labels,
            Some((refs, ref_labels)),
            miner,
            logit_scale,
        )
    }

    /// One set of embeddings against itself (unimodal metric learning, PML's default call):
    /// an embedding is never its own positive.
    pub fn forward_self(
        &self,
        embeddings: Tensor<2>,
        labels: &[usize],
        miner: &Miner,
        logit_scale: Option<Tensor<1>>,
    ) -> Result<LossOutput> {
        self.run(embeddings, labels, None, miner, logit_scale)
    }

    fn run(
        &self,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Option<(Tensor<2>, &[usize])>,
        miner: &Miner,
        logit_scale: Option<Tensor<1>>,
    ) -> Result<LossOutput> {
        match self {
            Loss::Contrastive(l) => l.validate(miner)?,
            Loss::Pairwise(l) => l.validate()?,
            Loss::Triplet(l) => l.validate()?,
            Loss::MultiSimilarity(l) => l.validate()?,
        }
        let [b, d] = anchors.dims();
        if b != anchor_labels.len() {
            return Err(LossError::LabelCount {
                side: "anchors",
                embeddings: b,
                labels: anchor_labels.len(),
            });
        }
        let same_set = refs.is_none();
        let (refs, ref_labels) = match refs {
            Some((t, l)) => {
                let [r, dr] = t.dims();
                if r != l.len() {
                    return Err(LossError::LabelCount {
                        side: "references",
                        embeddings: r,
                        labels: l.len(),
                    });
                }
                if dr != d {
                    return Err(LossError::DimensionMismatch {
                        anchors: d,
                        references: dr,
                    });
                }
                (t, l)
            }
            None => (anchors.clone(), anchor_labels),
        };
        let r = ref_labels.len();
        let distance = self.distance();
        let device = anchors.device();
        if b == 0 || r == 0 {
            return Ok(LossOutput {
                loss: Tensor::zeros([1], &device),
                stats: LossStats::default(),
            });
        }
        let scale_value = match &logit_scale {
            Some(ls) if matches!(self, Loss::Contrastive(_)) => {
                let v: Vec<f32> =
                    ls.clone()
                        .into_data()
                        .try_into_vec_as::<f32>()
                        .map_err(|_| LossError::NonPositive {
                            what: "logit scale",
                            value: f32::NAN,
                        })?;
                let v = v.first().copied().unwrap_or(f32::NAN);
                if !v.is_finite() {
                    return Err(LossError::NonPositive {
                        what: "exp(logit scale)",
                        value: v,
                    });
                }
                Some(v.min(MAX_LOGIT_SCALE).exp())
            }
            _ => None,
        };
        let refs_for_swap = match self {
            Loss::Triplet(t) if t.swap && !same_set => Some(refs.clone()),
            _ => None,
        };
        let mat = distance.matrix(anchors, refs);
        let raw = mat
            .clone()
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 matrix");
        let pm = PairMatrix::new(raw, b, r, anchor_labels, ref_labels, same_set, distance, d)?;
        let sign = if distance.is_similarity() { -1.0 } else { 1.0 };
        let (host, target, rr) = match self {
            Loss::Contrastive(l) => {
                let c = scale_value.unwrap_or(1.0 / l.temperature);
                let host = l.host(&pm, c);
                // z = scale · s, with s = M for a similarity and −M for a distance.
                let sim = if distance.is_similarity() { mat } else { -mat };
                let logits = match (&logit_scale, scale_value) {
                    (Some(ls), Some(_)) => {
                        sim * ls.clone().clamp_max(MAX_LOGIT_SCALE).exp().reshape([1, 1])
                    }
                    _ => sim * c,
                };
                (host, logits, None)
            }
            other => {
                let margin = match other {
                    Loss::Triplet(t) => t.margin,
                    Loss::Pairwise(p) => (p.neg_margin - p.pos_margin).abs(),
                    _ => 0.1,
                };
                let tuples = miner.mine(&pm, margin);
                let (mut host, rr) = match other {
                    Loss::Triplet(t) => match refs_for_swap {
                        Some(refs) => {
                            let rr_t = distance.matrix(refs.clone(), refs);
                            let rr_raw = rr_t
                                .clone()
                                .into_data()
                                .try_into_vec_as::<f32>()
                                .expect("f32 matrix");
                            let rr_o: Vec<f32> =
                                rr_raw.iter().map(|&v| distance.orient(v)).collect();
                            (t.host(&pm, &tuples, Some(&rr_o)), Some(rr_t))
                        }
                        None => (t.host(&pm, &tuples, None), None),
                    },
                    Loss::Pairwise(p) => (p.host(&pm, &tuples), None),
                    Loss::MultiSimilarity(s) => (s.host(&pm, &tuples), None),
                    Loss::Contrastive(_) => unreachable!(),
                };
                // ∂L/∂o → ∂L/∂M.
                if sign < 0.0 {
                    host.grad.iter_mut().for_each(|g| *g = -*g);
                    if let Some(g) = host.grad_refs.as_mut() {
                        g.iter_mut().for_each(|x| *x = -*x);
                    }
                }
                (host, mat, rr)
            }
        };
        let mut loss = attach(host.value, target, host.grad);
        if let (Some(rr), Some(g)) = (rr, host.grad_refs) {
            loss = loss + attach(0.0, rr, g);
        }
        Ok(LossOutput {
            loss,
            stats: host.stats,
        })
    }
}

/// `⟨G, M⟩ − stopgrad(⟨G, M⟩) + value`: forward value `value`, gradient `G` with respect to `M`.
fn attach(value: f64, target: Tensor<2>, grad: Vec<f32>) -> Tensor<1> {
    let dims = target.dims();
    let g = Tensor::<2>::from_data(TensorData::new(grad, dims), &target.device());
    let s = (target * g).sum();
    (s.clone() - s.detach()).add_scalar(value as f32)
}

impl FromStr for Loss {
    type Err = LossError;

    /// `contrastive | pairwise | triplet | multi-similarity`, all on cosine similarity with
    /// their defaults (contrastive τ = 0.07 multi-positive symmetric; pairwise m₊ = 1, m₋ = 0;
    /// triplet m = 0.1; multi-similarity α = 2, β = 50, λ = 0.5). Adjust the fields afterwards.
    fn from_str(s: &str) -> Result<Self> {
        let d = Distance::Cosine;
        match s.trim().to_ascii_lowercase().as_str() {
            "contrastive" | "infonce" | "clip" => Ok(Loss::Contrastive(ContrastiveLoss::new(d))),
            "pairwise" => Ok(Loss::Pairwise(PairwiseLoss::new(d))),
            "triplet" => Ok(Loss::Triplet(TripletLoss::new(d, 0.1))),
            "multi-similarity" | "ms" => Ok(Loss::MultiSimilarity(MultiSimilarityLoss::new(d))),
            _ => Err(LossError::Parse {
                what: "loss",
                input: s.into(),
                why: "expected contrastive | pairwise | triplet | multi-similarity".into(),
            }),
        }
    }
}
