//! Distance-weighted sampling (Wu, Manmatha, Smola, Krähenbühl 2017, "Sampling Matters in
//! Deep Embedding Learning"; PML `DistanceWeightedMiner`): per anchor–positive pair one
//! negative drawn with probability `∝ min(λ, 1/q(d))`, where
//! `q(d) ∝ d^{n−2} (1 − d²/4)^{(n−3)/2}` is the density of distances between uniform points
//! on the unit sphere in `n` dimensions, `d` clamped below at `cutoff` (0.5), negatives with
//! `d ≥ nonzero_loss_cutoff` (1.4) excluded. Assumes unit-norm embeddings.

use crate::matrix::PairMatrix;

use super::Tuples;

/// The paper's lower clamp on `d`.
pub const DEFAULT_CUTOFF: f32 = 0.5;
/// The paper's upper cut: negatives at or beyond this distance are never drawn.
pub const DEFAULT_NONZERO_LOSS_CUTOFF: f32 = 1.4;

/// Euclidean distance on the unit sphere from an oriented value.
fn sphere_distance(m: &PairMatrix<'_>, o: f32) -> f32 {
    use crate::distance::Distance::*;
    match m.distance {
        Cosine | Dot => (2.0 + 2.0 * o).max(0.0).sqrt(),
        Euclidean => o,
        SquaredEuclidean => o.max(0.0).sqrt(),
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small, well-mixed deterministic generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One negative per anchor–positive pair, drawn deterministically from `seed` and the batch.
pub(super) fn distance_weighted(
    m: &PairMatrix<'_>,
    cutoff: f32,
    nonzero_loss_cutoff: f32,
    seed: u64,
) -> Tuples {
    let n_dim = m.dim.max(4) as f64;
    // Mix a few matrix values into the seed so every batch draws differently.
    let mix =
        m.o.iter()
            .step_by((m.o.len() / 16).max(1))
            .fold(seed, |h, v| {
                (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01B3)
            });
    let mut rng = SplitMix64(mix);
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let mut w = Vec::new();
    let mut out = Vec::new();
    for a in 0..m.rows {
        m.split_row(a, &mut pos, &mut neg);
        if pos.is_empty() || neg.is_empty() {
            continue;
        }
        let row = m.row(a);
        // log q(d)^{-1} = (2 − n) ln d − ((n − 3)/2) ln(1 − d²/4); weights relative to the max.
        w.clear();
        let mut max_lw = f64::NEG_INFINITY;
        let logw: Vec<Option<f64>> = neg
            .iter()
            .map(|&j| {
                let d = sphere_distance(m, row[j as usize]);
                if d >= nonzero_loss_cutoff {
                    return None;
                }
                let d = d.max(cutoff) as f64;
                let lw = (2.0 - n_dim) * d.ln()
                    - (n_dim - 3.0) / 2.0 * (1.0 - 0.25 * d * d).max(1e-8).ln();
                max_lw = max_lw.max(lw);
                Some(lw)
            })
            .collect();
        let mut total = 0.0;
        for lw in &logw {
            let x = lw.map_or(0.0, |v| (v - max_lw).exp());
            total += x;
            w.push(x);
        }
        if total <= 0.0 || !total.is_finite() {
            continue;
        }
        for &p in &pos {
            let mut u = rng.next_f64() * total;
            let mut pick = w.len() - 1;
            for (k, &x) in w.iter().enumerate() {
                if x > 0.0 {
                    pick = k;
                    if u < x {
                        break;
                    }
                    u -= x;
                }
            }
            out.push([a as u32, p, neg[pick]]);
        }
    }
    Tuples::Triplets(out)
}
