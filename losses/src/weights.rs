//! Per-anchor loss weights (e.g. pseudo-label confidences), applied through the reducer.
//!
//! # The weighting
//!
//! Every loss is a reduction of per-element losses `ℓ_t` (a triplet, a positive or negative
//! pair, an anchor row), each belonging to one anchor `a(t)`, as pytorch-metric-learning's
//! losses return them under its `DoNothingReducer` (`losses`, `indices`, whose first entry is
//! the anchor). With anchor weights `w_a ≥ 0` each element's loss is multiplied by its
//! anchor's weight and the reducer's count becomes the weight of what it counts:
//!
//! ```text
//! Mean:         L = Σ_t w_a(t) ℓ_t / Σ_t w_a(t)
//! MeanNonZero:  L = Σ_t w_a(t) ℓ_t / Σ_{t: ℓ_t > 0} w_a(t)
//! Sum:          L = Σ_t w_a(t) ℓ_t
//! ```
//!
//! so each anchor's reduced loss is scaled by its weight and normalised by the sum of the
//! weights, and with every weight 1 the counts are the plain counts: the loss, and its
//! gradient, are exactly the unweighted ones. An anchor of weight 0 contributes nothing, to
//! the value, the divisor or the gradient. Per loss:
//!
//! - triplet: per triplet, `MeanNonZero` over triplets (PML `TripletMarginLoss`);
//! - pairwise: per positive and per negative pair, each side reduced on its own and added
//!   (PML `ContrastiveLoss`'s `pos_loss` and `neg_loss`);
//! - multi-similarity: per anchor row, `Mean` over anchors (PML `MultiSimilarityLoss`);
//! - contrastive: per anchor row (multi-positive, PML `SupConLoss`) or per positive pair (PML
//!   `NTXentLoss`), averaged over the rows (pairs) that count; the symmetric form weights the
//!   reference → anchor half by the references' weights ([`Weights::refs`]);
//! - sigmoid: the anchor row's sum over every reference, over `Σ_i w_i` in place of open_clip's
//!   `1/B`.
//!
//! # Pairs whose two sides both carry a weight
//!
//! Only the anchor's weight counts; the reference's does not multiply in. Training scores both
//! directions (images against texts and texts against images), so a pair `(i, j)` is weighted
//! by `w_i` where `i` is the anchor and by `w_j` where `j` is: each item's confidence weighs
//! the terms that place it, once. A product `w_i · w_j` would count an uncertain item twice in
//! each direction (an item with its own caption would weigh `w_i²`), and the weight would no
//! longer belong to one element's anchor, which is what a reducer normalises over. It also
//! lets the weights compose with a [`crate::CrossBatchMemory`], whose references are stored as
//! embeddings and labels only, and with every miner, which picks tuples per anchor and never
//! reads the weights.

use crate::error::{LossError, Result};

/// Weights of the anchors (and, for the symmetric contrastive loss, of the references).
/// `None` means every weight is 1. See the module documentation for the maths.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Weights<'a> {
    /// One weight `≥ 0` per anchor.
    pub anchors: Option<&'a [f32]>,
    /// One weight `≥ 0` per reference, read only where the references are anchors too: the
    /// reference → anchor half of the symmetric contrastive loss. Without it, references
    /// that are the anchors themselves (`forward_self`) take the anchors' weights and every
    /// other reference (a cross-batch memory's) weight 1.
    pub refs: Option<&'a [f32]>,
}

impl<'a> Weights<'a> {
    /// Every weight 1: the unweighted loss.
    pub fn none() -> Self {
        Self::default()
    }

    /// Anchor weights only.
    pub fn anchors(w: &'a [f32]) -> Self {
        Self {
            anchors: Some(w),
            refs: None,
        }
    }

    /// Anchor and reference weights.
    pub fn both(anchors: &'a [f32], refs: &'a [f32]) -> Self {
        Self {
            anchors: Some(anchors),
            refs: Some(refs),
        }
    }

    /// Whether no weight is given.
    pub fn is_none(&self) -> bool {
        self.anchors.is_none() && self.refs.is_none()
    }

    /// Checks one weight per anchor (`b`) and per reference (`r`), each finite and `≥ 0`.
    pub fn check(&self, b: usize, r: usize) -> Result<()> {
        for (side, w, n) in [("anchors", self.anchors, b), ("references", self.refs, r)] {
            let Some(w) = w else { continue };
            if w.len() != n {
                return Err(LossError::WeightCount {
                    side,
                    rows: n,
                    weights: w.len(),
                });
            }
            if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(LossError::BadWeight {
                    side,
                    row: i,
                    value: w[i],
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_values_are_checked() {
        assert!(Weights::none().check(3, 4).is_ok());
        assert!(Weights::anchors(&[1.0, 0.0, 0.5]).check(3, 4).is_ok());
        let e = Weights::anchors(&[1.0, 0.5]).check(3, 4).unwrap_err();
        assert!(matches!(e, LossError::WeightCount { rows: 3, .. }), "{e}");
        let e = Weights::both(&[1.0], &[1.0, -0.5]).check(1, 2).unwrap_err();
        assert!(
            matches!(
                e,
                LossError::BadWeight {
                    side: "references",
                    row: 1,
                    ..
                }
            ),
            "{e}"
        );
        let e = Weights::anchors(&[f32::NAN]).check(1, 1).unwrap_err();
        assert!(matches!(e, LossError::BadWeight { .. }), "{e}");
    }
}
