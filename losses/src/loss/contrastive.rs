//! CLIP's symmetric InfoNCE (Radford et al. 2021; open_clip `src/open_clip/loss.py` `ClipLoss`),
//! label-aware as pytorch-metric-learning's `SupConLoss` / `NTXentLoss`.

use crate::distance::Distance;
use crate::error::{LossError, Result};
use crate::matrix::PairMatrix;
use crate::miner::Miner;

use burn::tensor::Tensor;

use super::{attach, scale, sigmoid, softplus, HostLoss, LossOutput, Tally, MAX_LOGIT_SCALE};

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

/// InfoNCE over logits `z_ij = scale · s(a_i, r_j)` (for a distance `s = −d`), with
/// `scale = exp(min(logit_scale, ln 100))` learnable, or `1/temperature` fixed. Label-aware
/// (see [`Positives`]): anchors sharing a label (a label-text tower sees the same text many
/// times) are never pushed apart. Symmetric: the mean of the anchor→reference (rows) and
/// reference→anchor (columns) losses. Rows without a positive or without any negative
/// contribute nothing.
///
/// Configuration and defaults ([`ContrastiveLoss::new`]): τ = [`ContrastiveLoss::DEFAULT_TEMPERATURE`]
/// (0.07, CLIP's initial temperature and PML's), multi-positive, symmetric.
///
/// With anchor weights (see [`crate::Weights`]) a row's loss (multi-positive) or each of its
/// positive pairs' losses (per pair) counts `w_i` times, and each direction divides by the
/// summed weight of what it averages; the reference → anchor half reads the references'
/// weights.
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

/// The softmax rows of one direction, with the diagnostics they feed.
struct Rows<'a> {
    o: &'a [f32],
    b: usize,
    r: usize,
    labels: &'a [usize],
    ref_labels: &'a [usize],
    same_set: bool,
    /// The rows' loss weights (`None`: all 1).
    weights: Option<&'a [f32]>,
}

/// Sums over one direction.
#[derive(Default)]
struct Direction {
    total: f64,
    /// Weight of the rows (multi-positive) or positive pairs (per pair) averaged over: their
    /// count without weights.
    terms: f64,
    rows_counted: usize,
    rows_active: usize,
}

impl ContrastiveLoss {
    /// CLIP's initial temperature (open_clip `init_logit_scale = ln(1/0.07)`), also PML's default.
    pub const DEFAULT_TEMPERATURE: f32 = 0.07;

    /// Cosine, τ = 0.07, multi-positive, symmetric.
    pub fn new(distance: Distance) -> Self {
        Self {
            distance,
            temperature: Self::DEFAULT_TEMPERATURE,
            positives: Positives::MultiPositive,
            symmetric: true,
        }
    }

    pub(crate) fn validate(&self, miner: &Miner) -> Result<()> {
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

    /// The loss attached to the logits `z = scale · s` built from the `B × R` matrix `mat`:
    /// with a learnable `(log scale, scale)` the gradient also reaches the log scale
    /// (clamped at `ln 100` as open_clip does), otherwise `scale = 1/τ`.
    pub(crate) fn output(
        &self,
        mat: Tensor<2>,
        pm: &PairMatrix<'_>,
        logit_scale: Option<(Tensor<1>, f32)>,
    ) -> LossOutput {
        let c = logit_scale
            .as_ref()
            .map_or(1.0 / self.temperature, |(_, v)| *v);
        let host = self.host(pm, c);
        // z = scale · s, with s = M for a similarity and −M for a distance.
        let sim = if pm.distance.is_similarity() {
            mat
        } else {
            -mat
        };
        let logits = match logit_scale {
            Some((ls, _)) => sim * ls.clamp_max(MAX_LOGIT_SCALE).exp().reshape([1, 1]),
            None => sim * c,
        };
        LossOutput {
            loss: attach(host.value, logits, host.grad),
            stats: host.stats,
        }
    }

    /// Value and `∂L/∂z` (z = logits = `−scale · o`) on the host.
    pub fn host(&self, m: &PairMatrix<'_>, logit_scale: f32) -> HostLoss {
        let (b, r) = (m.rows, m.cols);
        let c = logit_scale as f64;
        let mut t = Tally::default();
        let mut grad = vec![0f32; b * r];
        let rows = Rows {
            o: &m.o,
            b,
            r,
            labels: m.labels,
            ref_labels: m.ref_labels,
            same_set: m.same_set,
            weights: m.weights,
        };
        let fwd = self.direction(&rows, c, &mut grad, &mut t);
        let mut value = if fwd.terms > 0.0 {
            fwd.total / fwd.terms
        } else {
            0.0
        };
        if fwd.terms > 0.0 {
            scale(&mut grad, 1.0 / fwd.terms);
        }
        let (mut counted, mut active) = (fwd.rows_counted, fwd.rows_active);
        if self.symmetric {
            let ot = transpose(&m.o, b, r);
            let mut gt = vec![0f32; b * r];
            let cols = Rows {
                o: &ot,
                b: r,
                r: b,
                labels: m.ref_labels,
                ref_labels: m.labels,
                same_set: m.same_set,
                weights: m.ref_weights,
            };
            let bwd = self.direction(&cols, c, &mut gt, &mut Tally::default());
            counted += bwd.rows_counted;
            active += bwd.rows_active;
            let wc = if bwd.terms > 0.0 {
                1.0 / bwd.terms
            } else {
                0.0
            };
            let halves = if fwd.terms > 0.0 && bwd.terms > 0.0 {
                0.5
            } else {
                1.0
            };
            value = halves * (value + bwd.total * wc);
            for i in 0..b {
                for j in 0..r {
                    let g = &mut grad[i * r + j];
                    *g = (halves * (*g as f64 + gt[j * b + i] as f64 * wc)) as f32;
                }
            }
        }
        let mut stats = t.stats(m.distance);
        stats.active_fraction = if counted > 0 {
            active as f32 / counted as f32
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

    /// One direction: rows are anchors. Adds `∂(Σ row losses)/∂z` into `grad`.
    fn direction(&self, rows: &Rows<'_>, c: f64, grad: &mut [f32], t: &mut Tally) -> Direction {
        let (b, r) = (rows.b, rows.r);
        let mut out = Direction::default();
        let mut z = vec![0f64; r];
        let mut is_pos = vec![false; r];
        for i in 0..b {
            let row = &rows.o[i * r..(i + 1) * r];
            let w = rows.weights.map_or(1.0, |w| w[i]) as f64;
            let (mut np, mut nn) = (0usize, 0usize);
            let (mut min_pos, mut max_neg) = (f64::INFINITY, f64::NEG_INFINITY);
            let mut max_all = f64::NEG_INFINITY;
            for j in 0..r {
                z[j] = -c * row[j] as f64;
                is_pos[j] = rows.labels[i] == rows.ref_labels[j];
                if rows.same_set && i == j {
                    continue;
                }
                max_all = max_all.max(z[j]);
                if is_pos[j] {
                    np += 1;
                    min_pos = min_pos.min(z[j]);
                    t.pos_sum += row[j] as f64;
                    t.pos_n += 1;
                } else {
                    nn += 1;
                    max_neg = max_neg.max(z[j]);
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
                    out.terms += w * np as f64;
                }
                continue;
            }
            out.rows_counted += 1;
            if max_neg >= min_pos {
                out.rows_active += 1;
            }
            let skip = rows.same_set.then_some(i);
            let g = &mut grad[i * r..(i + 1) * r];
            let (loss, terms) = match self.positives {
                Positives::MultiPositive => (multi_positive_row(&z, &is_pos, skip, max_all, g), 1),
                Positives::PerPair => per_pair_row(&z, &is_pos, skip, max_neg, g),
            };
            if w != 1.0 {
                g.iter_mut().for_each(|x| *x = (*x as f64 * w) as f32);
            }
            out.total += w * loss;
            out.terms += w * terms as f64;
        }
        out
    }
}

/// `ℓ = lse_j z_j − mean_{p} z_p` over every reference but `skip`; adds
/// `softmax_j − 1/|P|·[j ∈ P]` into `g`.
fn multi_positive_row(
    z: &[f64],
    is_pos: &[bool],
    skip: Option<usize>,
    max_all: f64,
    g: &mut [f32],
) -> f64 {
    let (mut sum, mut pos_z, mut np) = (0f64, 0f64, 0usize);
    for j in (0..z.len()).filter(|&j| Some(j) != skip) {
        sum += (z[j] - max_all).exp();
        if is_pos[j] {
            pos_z += z[j];
            np += 1;
        }
    }
    let lse = max_all + sum.ln();
    for j in (0..z.len()).filter(|&j| Some(j) != skip) {
        let mut gj = (z[j] - lse).exp();
        if is_pos[j] {
            gj -= 1.0 / np as f64;
        }
        g[j] += gj as f32;
    }
    lse - pos_z / np as f64
}

/// `Σ_p softplus(lse_n z_n − z_p)` over the positives but `skip`; adds its gradient into `g`.
/// Returns (sum, number of positive pairs).
fn per_pair_row(
    z: &[f64],
    is_pos: &[bool],
    skip: Option<usize>,
    max_neg: f64,
    g: &mut [f32],
) -> (f64, usize) {
    let sn: f64 = (0..z.len())
        .filter(|&j| !is_pos[j])
        .map(|j| (z[j] - max_neg).exp())
        .sum();
    let lse_n = max_neg + sn.ln();
    let (mut total, mut terms, mut q_sum) = (0f64, 0usize, 0f64);
    for j in (0..z.len()).filter(|&j| is_pos[j] && Some(j) != skip) {
        let x = lse_n - z[j];
        total += softplus(x);
        terms += 1;
        let q = sigmoid(x);
        q_sum += q;
        g[j] -= q as f32;
    }
    for j in (0..z.len()).filter(|&j| !is_pos[j]) {
        g[j] += (q_sum * (z[j] - lse_n).exp()) as f32;
    }
    (total, terms)
}

/// The `R × B` transpose of a row-major `B × R` matrix.
fn transpose(o: &[f32], b: usize, r: usize) -> Vec<f32> {
    let mut ot = vec![0f32; b * r];
    for i in 0..b {
        for j in 0..r {
            ot[j * b + i] = o[i * r + j];
        }
    }
    ot
}
