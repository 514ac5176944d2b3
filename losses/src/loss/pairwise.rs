//! The margin contrastive (pair) loss of Hadsell, Chopra & LeCun (2006), as
//! pytorch-metric-learning's `losses/contrastive_loss.py` `ContrastiveLoss`.

use crate::distance::Distance;
use crate::error::{LossError, Result};
use crate::matrix::PairMatrix;
use crate::miner::{for_each_band_triplet, Tuples};
use crate::reducer::Reducer;

use super::{HostLoss, Tally};

/// The margin pair loss with a positive and a negative margin: positives `[d − m₊]₊`,
/// negatives `[m₋ − d]₊` for a distance; for a similarity positives `[m₊ − s]₊`, negatives
/// `[s − m₋]₊`. The positive and negative terms are reduced separately and added. With no
/// negative pair at all (a one-label batch) the loss is zero.
///
/// Configuration and defaults ([`PairwiseLoss::new`]): for a distance PML's `m₊ = 0, m₋ = 1`;
/// for a similarity siam's `m₊ = 0.8, m₋ = 0.3` (PML's docs flip to `1, 0` for cosine, which
/// keeps every pair in the loss forever); mean over the non-zero terms (PML's default). With
/// anchor weights (see [`crate::Weights`]) each pair term counts `w_a` times on its side.
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

/// Sums for one side (positive or negative pairs).
#[derive(Default)]
struct Side {
    tally: Tally,
    value: f64,
}

impl PairwiseLoss {
    /// Default `(m₊, m₋)` for a similarity (cosine, dot): positives above 0.8, negatives below 0.3.
    pub const SIMILARITY_MARGINS: (f32, f32) = (0.8, 0.3);
    /// Default `(m₊, m₋)` for a distance (PML's `ContrastiveLoss` defaults).
    pub const DISTANCE_MARGINS: (f32, f32) = (0.0, 1.0);

    /// [`Self::SIMILARITY_MARGINS`] or [`Self::DISTANCE_MARGINS`], mean over non-zero terms.
    pub fn new(distance: Distance) -> Self {
        let (pos_margin, neg_margin) = if distance.is_similarity() {
            Self::SIMILARITY_MARGINS
        } else {
            Self::DISTANCE_MARGINS
        };
        Self {
            distance,
            pos_margin,
            neg_margin,
            reducer: Reducer::MeanNonZero,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
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
        let (mut ps, mut ns) = (Side::default(), Side::default());
        for_each_pair(m, tuples, |is_pos, a, j| {
            let o = m.at(a, j);
            let w = m.weight(a);
            let (side, l, sign) = if is_pos {
                ps.tally.pos_sum += o as f64;
                ps.tally.pos_n += 1;
                (&mut ps, o - opm, 1.0)
            } else {
                ns.tally.neg_sum += o as f64;
                ns.tally.neg_n += 1;
                (&mut ns, onm - o, -1.0)
            };
            side.tally.mined += 1;
            side.tally.w_mined += w as f64;
            if l > 0.0 {
                side.tally.active += 1;
                side.tally.w_active += w as f64;
                side.value += w as f64 * l as f64;
                grad[a * r + j] += sign * w;
            }
        });
        let (pt, nt) = (ps.tally, ns.tally);
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
        let dp = self.reducer.weighted_divisor(pt.w_mined, pt.w_active);
        let dn = self.reducer.weighted_divisor(nt.w_mined, nt.w_active);
        let (dp, dn) = if self.reducer == Reducer::Sum {
            (dp.map(|_| 1.0), dn.map(|_| 1.0))
        } else {
            (dp, dn)
        };
        let value = dp.map_or(0.0, |d| ps.value / d) + dn.map_or(0.0, |d| ns.value / d);
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
            ..Tally::default()
        };
        HostLoss {
            value,
            grad,
            grad_refs: None,
            stats: t.stats(m.distance),
        }
    }
}

/// Calls `f(is_positive, anchor, reference)` for every pair the tuples name: all positive
/// then all negative pairs of explicit triplets and bands (PML's `convert_to_pairs`).
fn for_each_pair(m: &PairMatrix<'_>, tuples: &Tuples, mut f: impl FnMut(bool, usize, usize)) {
    match tuples {
        Tuples::All => {
            for a in 0..m.rows {
                for j in 0..m.cols {
                    if m.is_pos(a, j) {
                        f(true, a, j);
                    } else if m.is_neg(a, j) {
                        f(false, a, j);
                    }
                }
            }
        }
        Tuples::Pairs { pos, neg } => {
            pos.iter()
                .for_each(|x| f(true, x[0] as usize, x[1] as usize));
            neg.iter()
                .for_each(|x| f(false, x[0] as usize, x[1] as usize));
        }
        Tuples::Triplets(ts) => {
            ts.iter()
                .for_each(|x| f(true, x[0] as usize, x[1] as usize));
            ts.iter()
                .for_each(|x| f(false, x[0] as usize, x[2] as usize));
        }
        Tuples::TripletBand { lo, hi } => {
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            let mut trips = Vec::new();
            for a in 0..m.rows {
                for_each_band_triplet(m, a, *lo, *hi, &mut pos, &mut neg, |p, n| {
                    trips.push((a, p as usize, n as usize))
                });
            }
            trips.iter().for_each(|&(a, p, _)| f(true, a, p));
            trips.iter().for_each(|&(a, _, n)| f(false, a, n));
        }
    }
}
