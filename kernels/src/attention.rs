//! Multi-head self-attention straight from the fused Q/K/V projection, forward and backward.
//!
//! `qkv` is `[B, L, 3D]` as `nn.MultiheadAttention`'s `in_proj` produces it (columns `[q | k |
//! v]`, head `h` of each at columns `h dh .. (h + 1) dh`, `D = H dh`), and the output is
//! `[B, L, D]` with the heads side by side, ready for `out_proj`. Per batch item and head
//! (Vaswani et al. 2017):
//!
//! - `S = s Q K^T` with `s = dh^-1/2`; `P = softmax(S)` row-wise, keys `j > i` masked when causal;
//!   `O = P V`.
//! - Backward, given `dO`: `dV = P^T dO`, `dP = dO V^T`, `dS = P (dP - rowsum(P dP))`
//!   (softmax's Jacobian), `dQ = s dS K`, `dK = s dS^T Q`.
//!
//! The backward recomputes `P` (one `L x L x dh` product and a softmax, as FlashAttention does)
//! instead of keeping it from the forward pass. Composed from tensor ops the same work is a head
//! split that copies, a transposed copy of `K`, two batched products, five softmax passes each
//! allocating `[B, H, L, L]`, a head merge that copies, and under autodiff the backward of each,
//! where the split alone zero-fills three `[B, L, 3D]` buffers. Here the products read `Q`, `K`,
//! `V` and `dO` in place through strides (the `gemm` crate), the softmax is one vectorised pass
//! per row, and batch items run in parallel.

use rayon::prelude::*;

use crate::exp::exp;
use crate::simd::{dot, max, sum_map, vectorised};
use crate::strided::{product, Mat, View};

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch items `B`.
    pub batch: usize,
    /// Sequence length `L`.
    pub len: usize,
    /// Heads `H`.
    pub heads: usize,
    /// Width per head `dh`; the model width is `D = H dh`.
    pub head_dim: usize,
    /// Whether query `i` sees only keys `j <= i`.
    pub causal: bool,
}

impl AttentionShape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }

    /// Keys row `i` attends to.
    fn keys(&self, i: usize) -> usize {
        if self.causal {
            i + 1
        } else {
            self.len
        }
    }
}

/// `out` `[B, L, D]` = attention over `qkv` `[B, L, 3D]`.
///
/// # Panics
/// If the slice lengths do not match `shape` (a programmer error).
pub fn attention_forward(qkv: &[f32], shape: AttentionShape, out: &mut [f32]) {
    let (l, d) = (shape.len, shape.width());
    assert_eq!(qkv.len(), shape.batch * l * 3 * d, "attention: qkv length");
    assert_eq!(out.len(), shape.batch * l * d, "attention: output length");
    if l == 0 || d == 0 {
        return;
    }
    out.par_chunks_mut(l * d)
        .zip(qkv.par_chunks(l * 3 * d))
        .for_each(|(out, qkv)| {
            let mut p = vec![0f32; l * l];
            for h in 0..shape.heads {
                let heads = Heads::new(qkv, shape, h);
                heads.probabilities(&mut p);
                // O = P V, written into the head's columns of `out`.
                // SAFETY: `out` holds L rows of D and columns h dh .. (h + 1) dh < D; P is L x L;
                // V's rows are within `qkv` (checked by `Heads::new`).
                unsafe {
                    product(
                        Mat::rows(out.as_mut_ptr().add(h * shape.head_dim), d),
                        Mat::rows(p.as_ptr(), l),
                        heads.v,
                        [l, shape.head_dim, l],
                        false,
                        1.0,
                    );
                }
            }
        });
}

/// `dqkv` `[B, L, 3D]` = the gradient of [`attention_forward`]'s output with respect to `qkv`,
/// given `grad` `[B, L, D]`. Every element of `dqkv` is written.
///
/// # Panics
/// If the slice lengths do not match `shape` (a programmer error).
pub fn attention_backward(qkv: &[f32], grad: &[f32], shape: AttentionShape, dqkv: &mut [f32]) {
    let (l, d, dh) = (shape.len, shape.width(), shape.head_dim);
    assert_eq!(qkv.len(), shape.batch * l * 3 * d, "attention: qkv length");
    assert_eq!(
        grad.len(),
        shape.batch * l * d,
        "attention: gradient length"
    );
    assert_eq!(dqkv.len(), qkv.len(), "attention: dqkv length");
    if l == 0 || d == 0 {
        return;
    }
    let scale = shape.scale();
    dqkv.par_chunks_mut(l * 3 * d)
        .zip(qkv.par_chunks(l * 3 * d).zip(grad.par_chunks(l * d)))
        .for_each(|(dqkv, (qkv, grad))| {
            let mut p = vec![0f32; l * l];
            let mut dp = vec![0f32; l * l];
            let base = dqkv.as_mut_ptr();
            for h in 0..shape.heads {
                let heads = Heads::new(qkv, shape, h);
                heads.probabilities(&mut p);
                let p_mat = Mat::rows(p.as_ptr(), l);
                // SAFETY: every destination is a column block h dh .. (h + 1) dh of one third of
                // `dqkv` (L rows of 3D), every source a block of `qkv` or `grad` of the same
                // shape (lengths asserted above), or an L x L scratch matrix.
                unsafe {
                    let d_o = Mat::rows(grad.as_ptr().add(h * dh), d);
                    // dV = P^T dO
                    product(
                        Mat::rows(base.add(2 * d + h * dh), 3 * d),
                        p_mat.t(),
                        d_o,
                        [l, dh, l],
                        false,
                        1.0,
                    );
                    // dP = dO V^T
                    product(
                        Mat::rows(dp.as_mut_ptr(), l),
                        d_o,
                        heads.v.t(),
                        [l, l, dh],
                        false,
                        1.0,
                    );
                }
                {
                    let (p, dp) = (p.as_slice(), dp.as_mut_slice());
                    vectorised!(|p: &[f32], dp: &mut [f32], l: usize, scale: f32| {
                        softmax_backward(p, dp, l, scale)
                    });
                }
                let ds = Mat::rows(dp.as_ptr(), l);
                // SAFETY: as above.
                unsafe {
                    // dQ = s dS K, dK = s dS^T Q (the scale is already in dS).
                    product(
                        Mat::rows(base.add(h * dh), 3 * d),
                        ds,
                        heads.k,
                        [l, dh, l],
                        false,
                        1.0,
                    );
                    product(
                        Mat::rows(base.add(d + h * dh), 3 * d),
                        ds.t(),
                        heads.q,
                        [l, dh, l],
                        false,
                        1.0,
                    );
                }
            }
        });
}

/// One head's `Q`, `K` and `V` of one batch item, read in place from its `[L, 3D]` rows.
struct Heads {
    q: View,
    k: View,
    v: View,
    shape: AttentionShape,
}

impl Heads {
    fn new(qkv: &[f32], shape: AttentionShape, h: usize) -> Self {
        let d = shape.width();
        assert!(h < shape.heads && qkv.len() == shape.len * 3 * d);
        let at = |part: usize| Mat::rows(qkv[part * d + h * shape.head_dim..].as_ptr(), 3 * d);
        Self {
            q: at(0),
            k: at(1),
            v: at(2),
            shape,
        }
    }

    /// `p` (L x L, row-major) = softmax(s Q K^T), zero where masked.
    fn probabilities(&self, p: &mut [f32]) {
        let (l, dh) = (self.shape.len, self.shape.head_dim);
        // SAFETY: `p` is L x L; Q and K are L x dh blocks of `qkv` (checked in `new`).
        unsafe {
            product(
                Mat::rows(p.as_mut_ptr(), l),
                self.q,
                self.k.t(),
                [l, l, dh],
                false,
                self.shape.scale(),
            );
        }
        let shape = self.shape;
        vectorised!(|p: &mut [f32], shape: AttentionShape| softmax_rows(p, shape));
    }
}

/// Row-wise softmax of the L x L scores in place, keys beyond [`AttentionShape::keys`] zeroed.
#[inline(always)]
fn softmax_rows(p: &mut [f32], shape: AttentionShape) {
    for (i, row) in p.chunks_exact_mut(shape.len).enumerate() {
        let (seen, hidden) = row.split_at_mut(shape.keys(i));
        let top = max(seen);
        for x in seen.iter_mut() {
            *x = exp(*x - top);
        }
        let r = 1.0 / sum_map(seen, |x| x);
        seen.iter_mut().for_each(|x| *x *= r);
        hidden.fill(0.0);
    }
}

/// `dp <- s P (dP - rowsum(P dP))`, softmax's backward with the score scale folded in.
#[inline(always)]
fn softmax_backward(p: &[f32], dp: &mut [f32], l: usize, scale: f32) {
    for (p, dp) in p.chunks_exact(l).zip(dp.chunks_exact_mut(l)) {
        let pg = dot(p, dp);
        for (g, &p) in dp.iter_mut().zip(p) {
            *g = scale * p * (*g - pg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values as values;

    /// Attention in f64 by the textbook formula, one output element at a time.
    fn by_hand(qkv: &[f32], s: AttentionShape) -> Vec<f64> {
        let (l, d, dh) = (s.len, s.width(), s.head_dim);
        let at = |b: usize, i: usize, part: usize, h: usize, e: usize| {
            qkv[(b * l + i) * 3 * d + part * d + h * dh + e] as f64
        };
        let mut out = vec![0f64; s.batch * l * d];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..l {
                    let scores: Vec<f64> = (0..s.keys(i))
                        .map(|j| {
                            (0..dh)
                                .map(|e| at(b, i, 0, h, e) * at(b, j, 1, h, e))
                                .sum::<f64>()
                                / (dh as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let total: f64 = w.iter().sum();
                    for e in 0..dh {
                        out[(b * l + i) * d + h * dh + e] = w
                            .iter()
                            .enumerate()
                            .map(|(j, w)| w / total * at(b, j, 2, h, e))
                            .sum();
                    }
                }
            }
        }
        out
    }

    const SHAPES: [AttentionShape; 3] = [
        AttentionShape {
            batch: 3,
            len: 7,
            heads: 2,
            head_dim: 4,
            causal: false,
        },
        AttentionShape {
            batch: 2,
            len: 9,
            heads: 3,
            head_dim: 5,
            causal: true,
        },
        AttentionShape {
            batch: 1,
            len: 1,
            heads: 1,
            head_dim: 2,
            causal: true,
        },
    ];

    #[test]
    fn forward_matches_the_formula_in_f64() {
        for (n, s) in SHAPES.into_iter().enumerate() {
            let qkv = values(s.batch * s.len * 3 * s.width(), n as u64 + 1);
            let mut out = vec![f32::NAN; s.batch * s.len * s.width()];
            attention_forward(&qkv, s, &mut out);
            for (got, want) in out.iter().zip(by_hand(&qkv, s)) {
                assert!((*got as f64 - want).abs() < 1e-5, "{s:?}: {got} vs {want}");
            }
        }
    }

    /// `dL/dqkv` for `L = sum(out * weights)` against central differences of the f64 formula.
    #[test]
    fn backward_matches_finite_differences() {
        for (n, s) in SHAPES.into_iter().enumerate() {
            let qkv = values(s.batch * s.len * 3 * s.width(), n as u64 + 11);
            let weights = values(s.batch * s.len * s.width(), n as u64 + 21);
            let mut dqkv = vec![f32::NAN; qkv.len()];
            attention_backward(&qkv, &weights, s, &mut dqkv);
            let loss = |qkv: &[f32]| -> f64 {
                by_hand(qkv, s)
                    .iter()
                    .zip(&weights)
                    .map(|(o, w)| o * *w as f64)
                    .sum()
            };
            for i in 0..qkv.len() {
                let h = 1e-3f32;
                let (mut up, mut down) = (qkv.clone(), qkv.clone());
                up[i] += h;
                down[i] -= h;
                let want = (loss(&up) - loss(&down)) / (2.0 * h as f64);
                assert!(
                    (dqkv[i] as f64 - want).abs() < 2e-3,
                    "{s:?} element {i}: {} vs {want}",
                    dqkv[i]
                );
            }
        }
    }
}
