//! SigLIP's pairwise sigmoid loss (Zhai, Mustafa, Kolesnikov, Beyer 2023, "Sigmoid Loss for
//! Language Image Pre-Training"; open_clip `src/open_clip/loss.py` `SigLipLoss`), label-aware.

use burn::tensor::Tensor;

use crate::distance::Distance;
use crate::error::{LossError, Result};
use crate::matrix::PairMatrix;
use crate::miner::Miner;

use super::{attach, sigmoid, softplus, HostLoss, LossOutput, Tally, MAX_LOGIT_SCALE};

/// Logits `ℓ_ij = exp(t') · s(a_i, r_j) + b` with a learnable log scale `t'` and bias `b`,
/// targets `z_ij = +1` when anchor `i` and reference `j` share a label and `−1` otherwise,
/// and `L = −(1/B) Σ_i Σ_j log σ(z_ij · ℓ_ij)` over the `B` anchors (open_clip divides by the
/// number of images). With all labels distinct `z` is `2·I − 1`, exactly open_clip's
/// `SigLipLoss` on one device; label-aware, pairs of the same label (a label text seen by many
/// images) are positives rather than negatives. Every pair counts, so the loss is symmetric in
/// its two sides up to the `1/B` normalisation: it is called once for both directions. When
/// the references are the anchors themselves, `j = i` is left out. `exp(t')` is clamped at
/// 100 (`t' ≤ ln 100`) as open_clip's trainer clamps the parameter.
///
/// Configuration and defaults ([`SigmoidLoss::new`]): SigLIP's initial `t' = ln 10`
/// ([`SigmoidLoss::DEFAULT_LOGIT_SCALE`]) and `b = −10` ([`SigmoidLoss::DEFAULT_LOGIT_BIAS`]),
/// used as fixed values when no learnable ones are passed. With anchor weights (see
/// [`crate::Weights`]) anchor `i`'s row counts `w_i` times and the `1/B` becomes `1/Σ_i w_i`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SigmoidLoss {
    /// The similarity (cosine; open_clip's features are unit vectors, so their dot product).
    pub distance: Distance,
    /// `t'`, the log of the logit scale, used when none is passed.
    pub logit_scale: f32,
    /// `b`, the logit bias, used when none is passed.
    pub logit_bias: f32,
}

impl SigmoidLoss {
    /// SigLIP's initial log scale: `t' = ln 10`.
    pub const DEFAULT_LOGIT_SCALE: f32 = std::f32::consts::LN_10;
    /// SigLIP's initial bias: `b = −10`.
    pub const DEFAULT_LOGIT_BIAS: f32 = -10.0;

    /// `t' = ln 10`, `b = −10`.
    pub fn new(distance: Distance) -> Self {
        Self {
            distance,
            logit_scale: Self::DEFAULT_LOGIT_SCALE,
            logit_bias: Self::DEFAULT_LOGIT_BIAS,
        }
    }

    pub(crate) fn validate(&self, miner: &Miner) -> Result<()> {
        for (what, value) in [
            ("sigmoid logit scale", self.logit_scale),
            ("sigmoid logit bias", self.logit_bias),
        ] {
            if !value.is_finite() {
                return Err(LossError::NotFinite { what, value });
            }
        }
        if !miner.is_all() {
            return Err(LossError::UnsupportedMiner {
                loss: "sigmoid",
                miner: miner.name(),
                why: "the sigmoid loss scores every pair; use `none` or `all`",
            });
        }
        Ok(())
    }

    /// Value and `∂L/∂ℓ` on the host, for the scale `exp(t')` and bias `b`.
    pub fn host(&self, m: &PairMatrix<'_>, scale: f32, bias: f32) -> HostLoss {
        let (b, r) = (m.rows, m.cols);
        let (c, bias) = (scale as f64, bias as f64);
        let mut grad = vec![0f32; b * r];
        let mut t = Tally::default();
        let mut value = 0f64;
        let mut w_rows = 0f64;
        for i in 0..b {
            let row = m.row(i);
            let w = m.weight(i) as f64;
            w_rows += w;
            for j in 0..r {
                if m.same_set && i == j {
                    continue;
                }
                let s = m.distance.orient(row[j]) as f64;
                let z = if m.labels[i] == m.ref_labels[j] {
                    t.pos_sum += row[j] as f64;
                    t.pos_n += 1;
                    1.0
                } else {
                    t.neg_sum += row[j] as f64;
                    t.neg_n += 1;
                    -1.0
                };
                let x = z * (c * s + bias);
                // −log σ(x) = softplus(−x); d/dℓ = −z σ(−x).
                let l = softplus(-x);
                value += w * l;
                grad[i * r + j] = (w * (-z * sigmoid(-x))) as f32;
                t.mined += 1;
                if l > std::f64::consts::LN_2 {
                    // The pair is on the wrong side of the decision boundary.
                    t.active += 1;
                }
            }
        }
        // `Σ_i w_i` is `B` without weights; all-zero weights leave nothing to average.
        let inv = if w_rows > 0.0 { 1.0 / w_rows } else { 0.0 };
        grad.iter_mut().for_each(|g| *g = (*g as f64 * inv) as f32);
        HostLoss {
            value: value * inv,
            grad,
            grad_refs: None,
            stats: t.stats(m.distance),
        }
    }

    /// The loss attached to the logits built from the `B × R` matrix `mat`, with learnable
    /// `(t', exp(t'))` and `(b, b)` when given (the gradient then reaches them) or the
    /// configured values.
    pub(crate) fn output(
        &self,
        mat: Tensor<2>,
        pm: &PairMatrix<'_>,
        logit_scale: Option<(Tensor<1>, f32)>,
        logit_bias: Option<(Tensor<1>, f32)>,
    ) -> LossOutput {
        let scale = logit_scale
            .as_ref()
            .map_or(self.logit_scale.min(MAX_LOGIT_SCALE).exp(), |(_, v)| *v);
        let bias = logit_bias.as_ref().map_or(self.logit_bias, |(_, v)| *v);
        let host = self.host(pm, scale, bias);
        let sim = if pm.distance.is_similarity() {
            mat
        } else {
            -mat
        };
        let scaled = match logit_scale {
            Some((ls, _)) => sim * ls.clamp_max(MAX_LOGIT_SCALE).exp().reshape([1, 1]),
            None => sim * scale,
        };
        let logits = match logit_bias {
            Some((lb, _)) => scaled + lb.reshape([1, 1]),
            None => scaled.add_scalar(bias),
        };
        LossOutput {
            loss: attach(host.value, logits, host.grad),
            stats: host.stats,
        }
    }
}
