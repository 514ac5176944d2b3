//! The margin triplet loss (Weinberger & Saul 2009; Schroff et al. 2015, FaceNet), as
//! pytorch-metric-learning's `losses/triplet_margin_loss.py` `TripletMarginLoss`.

use burn::tensor::Tensor;

use crate::distance::Distance;
use crate::error::{LossError, Result};
use crate::matrix::PairMatrix;
use crate::miner::{for_each_band_triplet, Tuples};
use crate::reducer::Reducer;

use super::{host_f32, scale, sigmoid, softplus, HostLoss, Tally};

/// The margin triplet loss `ℓ(a, p, n) = [o_ap − o_an + m]₊` in the oriented scale
/// (`d_ap − d_an + m` for a distance, `s_an − s_ap + m` for a similarity).
///
/// * `swap` (Balntas et al. 2016): use `min(o_an, o_pn)` — the negative's distance to
///   whichever of anchor and positive is closer.
/// * `soft_margin`: `softplus(o_ap − o_an + m)` instead of the hinge (Hermans et al. 2017
///   use `m = 0`; PML's `smooth_loss`).
///
/// Configuration and defaults ([`TripletLoss::new`]): margin `m` (siam's default
/// [`TripletLoss::DEFAULT_MARGIN`] = 0.2 in cosine units; PML's is 0.05), no swap, hinge,
/// mean over the triplets with a non-zero loss (PML's `AvgNonZeroReducer`). With anchor
/// weights (see [`crate::Weights`]) each triplet's loss counts `w_a` times, in the sum and in
/// the reducer's count.
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

/// Per-triplet sums and the gradient being built.
struct Acc {
    grad: Vec<f32>,
    grad_refs: Option<Vec<f32>>,
    tally: Tally,
    value: f64,
}

impl TripletLoss {
    /// The margin `siam train --loss triplet` and `"triplet".parse::<LossConfig>()` use:
    /// 0.2 in cosine-similarity units (FaceNet's 0.2 on unit vectors; PML's default is 0.05).
    pub const DEFAULT_MARGIN: f32 = 0.2;

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

    pub(crate) fn validate(&self) -> Result<()> {
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
        let mut acc = Acc {
            grad: vec![0f32; b * r],
            grad_refs: refs_matrix.map(|_| vec![0f32; r * r]),
            tally: Tally::default(),
            value: 0.0,
        };
        let band = match tuples {
            Tuples::All => Some((f32::NEG_INFINITY, f32::INFINITY)),
            Tuples::TripletBand { lo, hi } => Some((*lo, *hi)),
            _ => None,
        };
        match band {
            Some((lo, hi)) if !self.soft_margin && !self.swap => {
                acc.value = self.band_hinge(m, lo, hi, &mut acc.grad, &mut acc.tally);
            }
            _ => self.visit_tuples(m, tuples, band, refs_matrix, &mut acc),
        }
        let stats = acc.tally.stats(m.distance);
        match self
            .reducer
            .weighted_divisor(acc.tally.w_mined, acc.tally.w_active)
        {
            Some(div) => {
                scale(&mut acc.grad, 1.0 / div);
                if let Some(g) = acc.grad_refs.as_mut() {
                    scale(g, 1.0 / div);
                }
                HostLoss {
                    value: acc.value / div,
                    grad: acc.grad,
                    grad_refs: acc.grad_refs,
                    stats,
                }
            }
            None => HostLoss::zero(b * r, stats),
        }
    }

    /// [`Self::host`], with the `R × R` reference matrix computed from `swap_refs` when the
    /// swap needs it (references that are not the anchors); returns that matrix tensor too,
    /// for the gradient in [`HostLoss::grad_refs`].
    pub(crate) fn host_with_swap(
        &self,
        m: &PairMatrix<'_>,
        tuples: &Tuples,
        swap_refs: Option<Tensor<2>>,
    ) -> (HostLoss, Option<Tensor<2>>) {
        let Some(refs) = swap_refs else {
            return (self.host(m, tuples, None), None);
        };
        let rr = self.distance.matrix(refs.clone(), refs);
        let rr_o: Vec<f32> = host_f32(&rr)
            .into_iter()
            .map(|v| self.distance.orient(v))
            .collect();
        (self.host(m, tuples, Some(&rr_o)), Some(rr))
    }

    /// Every triplet of `tuples`, one at a time (soft margin, swap, or explicit triplets).
    fn visit_tuples(
        &self,
        m: &PairMatrix<'_>,
        tuples: &Tuples,
        band: Option<(f32, f32)>,
        refs_matrix: Option<&[f32]>,
        acc: &mut Acc,
    ) {
        let mut visit = |a: usize, p: usize, n: usize| self.one(m, refs_matrix, acc, a, p, n);
        match tuples {
            Tuples::Triplets(ts) => ts
                .iter()
                .for_each(|x| visit(x[0] as usize, x[1] as usize, x[2] as usize)),
            Tuples::Pairs { pos, neg } => {
                // PML's convert_to_triplets: every positive pair with every negative pair of the same anchor.
                let mut by_anchor: Vec<Vec<u32>> = vec![Vec::new(); m.rows];
                neg.iter().for_each(|x| by_anchor[x[0] as usize].push(x[1]));
                for x in pos {
                    for &n in &by_anchor[x[0] as usize] {
                        visit(x[0] as usize, x[1] as usize, n as usize);
                    }
                }
            }
            Tuples::All | Tuples::TripletBand { .. } => {
                let (lo, hi) = band.expect("a band for All and TripletBand");
                let (mut pos, mut neg) = (Vec::new(), Vec::new());
                for a in 0..m.rows {
                    for_each_band_triplet(m, a, lo, hi, &mut pos, &mut neg, |p, n| {
                        visit(a, p as usize, n as usize)
                    });
                }
            }
        }
    }

    /// Adds triplet `(a, p, n)`'s loss and gradient.
    fn one(
        &self,
        m: &PairMatrix<'_>,
        refs_matrix: Option<&[f32]>,
        acc: &mut Acc,
        a: usize,
        p: usize,
        n: usize,
    ) {
        let r = m.cols;
        let ap = m.at(a, p);
        let an = m.at(a, n);
        let mut an_eff = an;
        let mut via_pn = false;
        if self.swap {
            let pn = match refs_matrix {
                Some(rr) => rr[p * r + n],
                None => m.at(p, n),
            };
            if pn < an {
                an_eff = pn;
                via_pn = true;
            }
        }
        let v = (ap - an_eff) as f64 + self.margin as f64;
        let (l, dl) = if self.soft_margin {
            (softplus(v), sigmoid(v))
        } else if v > 0.0 {
            (v, 1.0)
        } else {
            (0.0, 0.0)
        };
        let w = m.weight(a) as f64;
        let t = &mut acc.tally;
        t.mined += 1;
        t.w_mined += w;
        t.pos_sum += ap as f64;
        t.pos_n += 1;
        t.neg_sum += an as f64;
        t.neg_n += 1;
        if l > 0.0 {
            t.active += 1;
            t.w_active += w;
            acc.value += w * l;
            let dl = (w * dl) as f32;
            acc.grad[a * r + p] += dl;
            match (via_pn, acc.grad_refs.as_mut()) {
                (false, _) => acc.grad[a * r + n] -= dl,
                (true, Some(gr)) => gr[p * r + n] -= dl,
                (true, None) => acc.grad[p * r + n] -= dl,
            }
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
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let mut scratch = BandScratch::default();
        let mut value = 0f64;
        for a in 0..m.rows {
            m.split_row(a, &mut pos, &mut neg);
            if pos.is_empty() || neg.is_empty() {
                continue;
            }
            value += if pos.len() <= 16 {
                // Few positives (P·K sampling): scanning the negatives once per positive is
                // cheaper than sorting them.
                self.band_scan(m, a, lo, hi, &pos, &neg, grad, t)
            } else {
                self.band_sorted(m, a, lo, hi, &pos, &mut neg, &mut scratch, grad, t)
            };
        }
        value
    }

    /// One anchor of [`Self::band_hinge`] by a linear scan per positive.
    #[allow(clippy::too_many_arguments)]
    fn band_scan(
        &self,
        m: &PairMatrix<'_>,
        a: usize,
        lo: f32,
        hi: f32,
        pos: &[u32],
        neg: &[u32],
        grad: &mut [f32],
        t: &mut Tally,
    ) -> f64 {
        let (r, margin, row) = (m.cols, self.margin, m.row(a));
        let w = m.weight(a);
        let mut value = 0f64;
        for &p in pos {
            let ap = row[p as usize];
            let (mut mined, mut k) = (0usize, 0usize);
            let (mut an_sum, mut act_sum) = (0f64, 0f64);
            for &n in neg {
                let v = row[n as usize];
                let tm = v - ap;
                if tm > lo && tm <= hi {
                    mined += 1;
                    an_sum += v as f64;
                    if (ap - v) + margin > 0.0 {
                        k += 1;
                        act_sum += v as f64;
                        grad[a * r + n as usize] -= w;
                    }
                }
            }
            t.mined += mined;
            t.w_mined += w as f64 * mined as f64;
            t.pos_sum += ap as f64 * mined as f64;
            t.pos_n += mined;
            t.neg_sum += an_sum;
            t.neg_n += mined;
            if k > 0 {
                t.active += k;
                t.w_active += w as f64 * k as f64;
                value += w as f64 * (k as f64 * (ap as f64 + margin as f64) - act_sum);
                grad[a * r + p as usize] += k as f32 * w;
            }
        }
        value
    }

    /// One anchor of [`Self::band_hinge`] from sorted negatives, prefix sums and a
    /// difference array.
    #[allow(clippy::too_many_arguments)]
    fn band_sorted(
        &self,
        m: &PairMatrix<'_>,
        a: usize,
        lo: f32,
        hi: f32,
        pos: &[u32],
        neg: &mut [u32],
        s: &mut BandScratch,
        grad: &mut [f32],
        t: &mut Tally,
    ) -> f64 {
        let (r, margin, row) = (m.cols, self.margin, m.row(a));
        let w = m.weight(a);
        neg.sort_unstable_by(|&x, &y| row[x as usize].total_cmp(&row[y as usize]));
        s.vals.clear();
        s.vals.extend(neg.iter().map(|&j| row[j as usize]));
        s.prefix.clear();
        s.prefix.push(0f64);
        let mut acc = 0f64;
        for &v in &s.vals {
            acc += v as f64;
            s.prefix.push(acc);
        }
        s.diff.clear();
        s.diff.resize(s.vals.len() + 1, 0i64);
        let (vals, prefix) = (&s.vals, &s.prefix);
        let mut value = 0f64;
        for &p in pos {
            let ap = row[p as usize];
            let lo_end = vals.partition_point(|&v| {
                (v - ap).partial_cmp(&lo) != Some(std::cmp::Ordering::Greater)
            });
            let hi_end = vals.partition_point(|&v| v - ap <= hi).max(lo_end);
            if hi_end == lo_end {
                continue;
            }
            let n = hi_end - lo_end;
            t.mined += n;
            t.w_mined += w as f64 * n as f64;
            t.pos_sum += ap as f64 * n as f64;
            t.pos_n += n;
            t.neg_sum += prefix[hi_end] - prefix[lo_end];
            t.neg_n += n;
            let act = lo_end + vals[lo_end..hi_end].partition_point(|&v| (ap - v) + margin > 0.0);
            let k = act - lo_end;
            if k > 0 {
                t.active += k;
                t.w_active += w as f64 * k as f64;
                value += w as f64
                    * (k as f64 * (ap as f64 + margin as f64) - (prefix[act] - prefix[lo_end]));
                grad[a * r + p as usize] += k as f32 * w;
                s.diff[lo_end] -= 1;
                s.diff[act] += 1;
            }
        }
        let mut run = 0i64;
        for (idx, &n) in neg.iter().enumerate() {
            run += s.diff[idx];
            grad[a * r + n as usize] += run as f32 * w;
        }
        value
    }
}

/// Buffers reused across anchors by [`TripletLoss::band_sorted`].
#[derive(Default)]
struct BandScratch {
    vals: Vec<f32>,
    prefix: Vec<f64>,
    diff: Vec<i64>,
}
