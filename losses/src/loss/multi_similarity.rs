//! The multi-similarity loss (Wang, Han, Huang, Dong, Scott 2019, "Multi-Similarity Loss with
//! General Pair Weighting", CVPR), as pytorch-metric-learning's
//! `losses/multi_similarity_loss.py` `MultiSimilarityLoss`.

use crate::distance::Distance;
use crate::error::{LossError, Result};
use crate::matrix::PairMatrix;
use crate::miner::{for_each_band_triplet, Tuples};
use crate::reducer::Reducer;

use super::{scale, HostLoss, Tally};

/// Per anchor `i`:
/// `(1/α) log(1 + Σ_{p} e^{−α(s_ip − λ)}) + (1/β) log(1 + Σ_{n} e^{β(s_in − λ)})`
/// over the mined positive and negative pairs (for a distance `s − λ` becomes `λ − d`),
/// averaged over all anchors by default (PML's `MeanReducer`). With no negative pair at all
/// (a one-label batch) the loss is zero.
///
/// Configuration and defaults ([`MultiSimilarityLoss::new`]): the paper's and PML's
/// α = 2, β = 50, λ = 0.5, mean over anchors. With anchor weights (see [`crate::Weights`])
/// the mean is `Σ_i w_i ℓ_i / Σ_i w_i`.
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

/// Which pairs of the `B × R` matrix a mask marks.
const UNUSED: u8 = 0;
const POSITIVE: u8 = 1;
const NEGATIVE: u8 = 2;

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

    pub(crate) fn validate(&self) -> Result<()> {
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
        let mask = pair_mask(m, tuples);
        let mut grad = vec![0f32; b * r];
        let mut t = Tally::default();
        let mut value = 0f64;
        let mut nonzero_rows = 0usize;
        let (mut w_rows, mut w_nonzero) = (0f64, 0f64);
        let mut xs: Vec<(usize, f64)> = Vec::new();
        for a in 0..b {
            let mut row_loss = 0f64;
            for kind in [POSITIVE, NEGATIVE] {
                let g = &mut grad[a * r..(a + 1) * r];
                row_loss +=
                    self.row_side(m, a, &mask[a * r..(a + 1) * r], kind, &mut xs, g, &mut t);
            }
            let w = m.weight(a);
            if w != 1.0 {
                grad[a * r..(a + 1) * r].iter_mut().for_each(|g| *g *= w);
            }
            w_rows += w as f64;
            if row_loss > 0.0 {
                nonzero_rows += 1;
                w_nonzero += w as f64;
            }
            value += w as f64 * row_loss;
        }
        t.mined = t.pos_n + t.neg_n;
        let mut stats = t.stats(m.distance);
        stats.active_fraction = if b > 0 {
            nonzero_rows as f32 / b as f32
        } else {
            0.0
        };
        // Without any negative pair there is nothing to contrast (a one-label batch): zero.
        match self.reducer.weighted_divisor(w_rows, w_nonzero) {
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

    /// One side (positives or negatives) of anchor `a`: `(1/w) log(1 + Σ e^{x_j})` with
    /// `x = α(o − λ)` or `β(λ − o)`, and its gradient `±softmax` (each weight is `∂/∂o` up
    /// to sign) added into the row's `g`.
    #[allow(clippy::too_many_arguments)]
    fn row_side(
        &self,
        m: &PairMatrix<'_>,
        a: usize,
        mask: &[u8],
        kind: u8,
        xs: &mut Vec<(usize, f64)>,
        g: &mut [f32],
        t: &mut Tally,
    ) -> f64 {
        let ob = m.distance.orient(self.base) as f64;
        let (alpha, beta) = (self.alpha as f64, self.beta as f64);
        xs.clear();
        for (j, &o) in m.row(a).iter().enumerate() {
            if mask[j] != kind {
                continue;
            }
            let o = o as f64;
            if kind == POSITIVE {
                xs.push((j, alpha * (o - ob)));
                t.pos_sum += o;
                t.pos_n += 1;
            } else {
                xs.push((j, beta * (ob - o)));
                t.neg_sum += o;
                t.neg_n += 1;
            }
        }
        if xs.is_empty() {
            return 0.0;
        }
        // log(1 + Σ e^x) = mx + log(e^{−mx} + Σ e^{x − mx}), mx = max(0, max x).
        let mx = xs.iter().fold(0f64, |acc, &(_, x)| acc.max(x));
        let s = (-mx).exp() + xs.iter().map(|&(_, x)| (x - mx).exp()).sum::<f64>();
        let lse = mx + s.ln();
        for &(j, x) in xs.iter() {
            let p = (x - lse).exp() as f32;
            g[j] += if kind == POSITIVE { p } else { -p };
        }
        lse / if kind == POSITIVE { alpha } else { beta }
    }
}

/// Marks every mined pair of the `B × R` matrix as positive, negative or unused.
fn pair_mask(m: &PairMatrix<'_>, tuples: &Tuples) -> Vec<u8> {
    let (b, r) = (m.rows, m.cols);
    let mut mask = vec![UNUSED; b * r];
    match tuples {
        Tuples::All => {
            for a in 0..b {
                for j in 0..r {
                    mask[a * r + j] = if m.is_pos(a, j) {
                        POSITIVE
                    } else if m.is_neg(a, j) {
                        NEGATIVE
                    } else {
                        UNUSED
                    };
                }
            }
        }
        Tuples::Pairs { pos, neg } => {
            pos.iter()
                .for_each(|x| mask[x[0] as usize * r + x[1] as usize] = POSITIVE);
            neg.iter()
                .for_each(|x| mask[x[0] as usize * r + x[1] as usize] = NEGATIVE);
        }
        Tuples::Triplets(ts) => ts.iter().for_each(|x| {
            mask[x[0] as usize * r + x[1] as usize] = POSITIVE;
            mask[x[0] as usize * r + x[2] as usize] = NEGATIVE;
        }),
        Tuples::TripletBand { lo, hi } => {
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            for a in 0..b {
                for_each_band_triplet(m, a, *lo, *hi, &mut pos, &mut neg, |p, n| {
                    mask[a * r + p as usize] = POSITIVE;
                    mask[a * r + n as usize] = NEGATIVE;
                });
            }
        }
    }
    mask
}
