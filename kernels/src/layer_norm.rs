//! LayerNorm's backward pass over the last dimension, in one pass per row.
//!
//! Forward (Ba, Kiros & Hinton 2016, "Layer Normalization"): per row of `d` values,
//! `mu = mean(x)`, `r = 1 / sqrt(var(x) + eps)` (biased variance), `xhat = (x - mu) r`,
//! `y = gamma * xhat + beta`. With `g = dL/dy` and `h = g * gamma`:
//!
//! - `dL/dx = r (h - mean(h) - xhat mean(h xhat))`
//! - `dL/dgamma = sum over rows of g xhat`, `dL/dbeta = sum over rows of g`
//!
//! `mu` and `r` are recomputed from `x` (one more read of a row already in cache) instead of
//! being kept from the forward pass. Rows are split into fixed blocks; each block's `dgamma`
//! and `dbeta` partial sums are added in block order, so the result does not depend on the
//! number of threads.

use rayon::prelude::*;

use crate::simd::{dot, sum3, sum_map, vectorised, CHUNK};

/// Writes `dx` (same length as `x`) and returns `(dgamma, dbeta)` (each `gamma.len()` long)
/// for a LayerNorm over rows of `gamma.len()` values.
///
/// # Panics
/// If `x`, `grad` and `dx` differ in length or are not whole rows (a programmer error).
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    eps: f32,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d) && grad.len() == x.len() && dx.len() == x.len(),
        "layer_norm_backward: {} inputs, {} gradients, {} outputs for rows of {d}",
        x.len(),
        grad.len(),
        dx.len()
    );
    let block = (CHUNK / d).max(1) * d;
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(grad.par_chunks(block)))
        .map(|(dx, (x, grad))| {
            let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
            {
                let (dg, db) = (&mut dgamma[..], &mut dbeta[..]);
                vectorised!(|x: &[f32],
                             gamma: &[f32],
                             grad: &[f32],
                             eps: f32,
                             dx: &mut [f32],
                             dg: &mut [f32],
                             db: &mut [f32]| rows(
                    x, gamma, grad, eps, dx, dg, db
                ));
            }
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
    for (pg, pb) in partials {
        for i in 0..d {
            dgamma[i] += pg[i];
            dbeta[i] += pb[i];
        }
    }
    (dgamma, dbeta)
}

#[inline(always)]
fn rows(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    eps: f32,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let d = gamma.len();
    let inv_d = 1.0 / d as f32;
    for ((x, g), dx) in x
        .chunks_exact(d)
        .zip(grad.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let mu = sum_map(x, |v| v) * inv_d;
        let var = sum_map(x, |v| (v - mu) * (v - mu)) * inv_d;
        let r = 1.0 / (var + eps).sqrt();
        // h = g gamma; the sums are over the row, in sixteen lanes (`simd::sum3`).
        let sum_h = dot(g, gamma);
        let sum_hx = r * sum3(g, gamma, x, |g, gamma, x| g * gamma * (x - mu));
        for i in 0..d {
            let xhat = (x[i] - mu) * r;
            dgamma[i] += g[i] * xhat;
            dbeta[i] += g[i];
        }
        let (mean_h, mean_hx) = (sum_h * inv_d, sum_hx * inv_d);
        for i in 0..d {
            let xhat = (x[i] - mu) * r;
            dx[i] = r * (g[i] * gamma[i] - mean_h - xhat * mean_hx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same gradient in f64, straight from the definition by central differences of
    /// `L = sum(w * y)` (so `g = w`).
    #[test]
    fn matches_finite_differences_in_f64() {
        let (rows_n, d) = (300, 8);
        let x: Vec<f32> = (0..rows_n * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let gamma: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.1).collect();
        let w: Vec<f32> = (0..rows_n * d)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        let eps = 1e-5;
        let loss = |x: &[f64], gamma: &[f64]| -> f64 {
            let mut total = 0.0;
            for (row, w) in x.chunks(d).zip(w.chunks(d)) {
                let mu = row.iter().sum::<f64>() / d as f64;
                let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
                let r = 1.0 / (var + eps as f64).sqrt();
                for i in 0..d {
                    total += w[i] as f64 * (gamma[i] * (row[i] - mu) * r + 0.3);
                }
            }
            total
        };
        let mut dx = vec![0f32; x.len()];
        let (dgamma, dbeta) = layer_norm_backward(&x, &gamma, &w, eps, &mut dx);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let g64: Vec<f64> = gamma.iter().map(|&v| v as f64).collect();
        let h = 1e-6;
        for i in [0, 5, 17, 1203, x.len() - 1] {
            let (mut up, mut down) = (x64.clone(), x64.clone());
            up[i] += h;
            down[i] -= h;
            let want = (loss(&up, &g64) - loss(&down, &g64)) / (2.0 * h);
            assert!(
                (dx[i] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                "dx[{i}] {} vs {want}",
                dx[i]
            );
        }
        for i in 0..d {
            let (mut up, mut down) = (g64.clone(), g64.clone());
            up[i] += h;
            down[i] -= h;
            let want = (loss(&x64, &up) - loss(&x64, &down)) / (2.0 * h);
            assert!(
                (dgamma[i] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                "dgamma[{i}]"
            );
            let sum_w: f64 = w.iter().skip(i).step_by(d).map(|&v| v as f64).sum();
            assert!(
                (dbeta[i] as f64 - sum_w).abs() < 1e-4 * (1.0 + sum_w.abs()),
                "dbeta[{i}]"
            );
        }
    }
}
