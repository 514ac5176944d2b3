//! QuickGELU, `x * sigmoid(1.702 x)` (OpenAI CLIP `clip/model.py`, `QuickGELU`), and its
//! derivative `s + 1.702 x s (1 - s)` with `s = sigmoid(1.702 x)`.

use rayon::prelude::*;

use crate::exp::sigmoid;
use crate::simd::{vectorised, CHUNK};

/// The `1.702` of QuickGELU.
pub const QUICK_GELU_ALPHA: f32 = 1.702;

/// `out[i] = x[i] * sigmoid(1.702 x[i])`.
///
/// # Panics
/// If the slices differ in length (a programmer error).
pub fn quick_gelu(x: &[f32], out: &mut [f32]) {
    assert_eq!(
        x.len(),
        out.len(),
        "quick_gelu: input and output lengths differ"
    );
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| vectorised!(|x: &[f32], out: &mut [f32]| forward(x, out)));
}

/// `out[i] = grad[i] * d/dx QuickGELU(x[i])`.
///
/// # Panics
/// If the slices differ in length (a programmer error).
pub fn quick_gelu_backward(x: &[f32], grad: &[f32], out: &mut [f32]) {
    assert!(
        x.len() == out.len() && grad.len() == out.len(),
        "quick_gelu_backward: input, gradient and output lengths differ"
    );
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(out, (x, grad))| {
            vectorised!(|x: &[f32], grad: &[f32], out: &mut [f32]| backward(x, grad, out))
        });
}

#[inline(always)]
fn forward(x: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = x * sigmoid(QUICK_GELU_ALPHA * x);
    }
}

#[inline(always)]
fn backward(x: &[f32], grad: &[f32], out: &mut [f32]) {
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(grad) {
        let s = sigmoid(QUICK_GELU_ALPHA * x);
        *o = g * (s + QUICK_GELU_ALPHA * x * s * (1.0 - s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_hand(x: f64) -> (f64, f64) {
        let s = 1.0 / (1.0 + (-1.702 * x).exp());
        (x * s, s + 1.702 * x * s * (1.0 - s))
    }

    #[test]
    fn forward_and_backward_match_the_formula_in_f64() {
        // Longer than one chunk, with a ragged tail, so both threads and the tail run.
        let n = 2 * CHUNK + 37;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 24.0).collect();
        let grad: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let (mut y, mut dx) = (vec![0f32; n], vec![0f32; n]);
        quick_gelu(&x, &mut y);
        quick_gelu_backward(&x, &grad, &mut dx);
        for i in 0..n {
            let (fy, fd) = by_hand(x[i] as f64);
            assert!(
                (y[i] as f64 - fy).abs() <= 1e-6 * (1.0 + fy.abs()),
                "y[{i}]"
            );
            let want = grad[i] as f64 * fd;
            assert!(
                (dx[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "dx[{i}]"
            );
        }
    }
}
