//! AdamW's update in one pass over parameter, gradient and both moments, in place.
//!
//! Per element, at step `t` (Loshchilov & Hutter 2019, "Decoupled Weight Decay
//! Regularization", as burn's `AdamW` and PyTorch's compute it):
//!
//! ```text
//! m <- b1 m + (1 - b1) g              v <- b2 v + (1 - b2) g^2
//! p <- p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! ```

use rayon::prelude::*;

use crate::simd::{vectorised, CHUNK};

/// The scalars of one AdamW step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay `b1`.
    pub beta_1: f32,
    /// Second-moment decay `b2`.
    pub beta_2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// Decoupled weight decay `wd`.
    pub weight_decay: f32,
    /// The step number `t`, from 1.
    pub time: usize,
}

/// Updates `params`, `first` and `second` in place from `grads`. Element-wise in fixed-size
/// chunks over rayon's threads, so the result does not depend on the number of threads.
///
/// # Panics
/// If the four slices differ in length (a programmer error).
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    first: &mut [f32],
    second: &mut [f32],
    step: AdamWStep,
) {
    let n = params.len();
    assert!(
        grads.len() == n && first.len() == n && second.len() == n,
        "adamw_update: parameter, gradient and moments differ in length"
    );
    let k = Scalars::new(step);
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(
            first
                .par_chunks_mut(CHUNK)
                .zip(second.par_chunks_mut(CHUNK)),
        )
        .for_each(|((p, g), (m, v))| {
            vectorised!(
                |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Scalars| {
                    update(p, g, m, v, k)
                }
            )
        });
}

/// The step's constants, folded once.
#[derive(Clone, Copy)]
struct Scalars {
    b1: f32,
    b2: f32,
    bc1: f32,
    bc2: f32,
    decay: f32,
    lr: f32,
    eps: f32,
}

impl Scalars {
    fn new(s: AdamWStep) -> Self {
        let t = s.time as i32;
        Self {
            b1: s.beta_1,
            b2: s.beta_2,
            bc1: 1.0 - s.beta_1.powi(t),
            bc2: 1.0 - s.beta_2.powi(t),
            decay: (1.0 - s.lr as f64 * s.weight_decay as f64) as f32,
            lr: s.lr,
            eps: s.epsilon,
        }
    }
}

#[inline(always)]
fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Scalars) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mi = k.b1 * *m + (1.0 - k.b1) * g;
        let vi = k.b2 * *v + (1.0 - k.b2) * (g * g);
        *m = mi;
        *v = vi;
        *p = *p * k.decay - k.lr * ((mi / k.bc1) / ((vi / k.bc2).sqrt() + k.eps));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_match_the_formula_in_f64() {
        let n = 3 * CHUNK + 5;
        let mut p: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let g: Vec<f32> = (0..n).map(|i| (i % 11) as f32 * 0.05 - 0.25).collect();
        let (mut p64, mut m64, mut v64): (Vec<f64>, Vec<f64>, Vec<f64>) = (
            p.iter().map(|&x| x as f64).collect(),
            vec![0.0; n],
            vec![0.0; n],
        );
        for time in 1..=2 {
            let s = AdamWStep {
                lr: 1e-2,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: 0.1,
                time,
            };
            adamw_update(&mut p, &g, &mut m, &mut v, s);
            for i in 0..n {
                let gi = g[i] as f64;
                m64[i] = 0.9 * m64[i] + 0.1 * gi;
                v64[i] = 0.999 * v64[i] + 0.001 * gi * gi;
                let mh = m64[i] / (1.0 - 0.9f64.powi(time as i32));
                let vh = v64[i] / (1.0 - 0.999f64.powi(time as i32));
                p64[i] = p64[i] * (1.0 - 1e-3) - 1e-2 * mh / (vh.sqrt() + 1e-8);
            }
        }
        for i in 0..n {
            assert!(
                (p[i] as f64 - p64[i]).abs() < 1e-5,
                "p[{i}] {} vs {}",
                p[i],
                p64[i]
            );
        }
    }
}
