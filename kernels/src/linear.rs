//! A linear layer `y = x W + b` and its backward, as a few matrix products split over threads.
//!
//! `x` is `[n, d_in]`, `W` `[d_in, d_out]` (burn's `Linear` layout), `b` `[d_out]`, all
//! row-major. Backward, given `dY`: `dx = dY W^T`, `dW = x^T dY`, `db = sum_rows dY`.
//!
//! Composed from tensor ops, the bias is a separate broadcast pass and the transposes are
//! copies, and a `[1560, 128] x [128, 512]` product (the tiny recipe's MLP) gains little from a
//! second thread. Here the bias is the product's starting value, the transposes are strides,
//! and each product is split into fixed blocks of output rows over rayon's threads (fixed, so
//! results do not depend on the number of threads).

use rayon::prelude::*;

use crate::simd::vectorised;
use crate::strided::{product, Mat};

/// Rows of `y` (and of `dx`) per task: a `128 x 128 x 512` block is ~8 M multiply-adds, far
/// above rayon's cost of a task; 1,560 rows give 13 tasks.
const ROWS: usize = 128;
/// Rows of `dW` per task (each a product over all `n` rows of `x`).
const WEIGHT_ROWS: usize = 32;

/// The shape of one linear layer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows `n` of `x`.
    pub rows: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
}

/// `y` `[n, d_out]` = `x W + b`.
///
/// # Panics
/// If a slice length does not match `shape` (a programmer error).
pub fn linear_forward(x: &[f32], w: &[f32], b: &[f32], s: LinearShape, y: &mut [f32]) {
    let LinearShape { rows, d_in, d_out } = s;
    assert!(
        x.len() == rows * d_in && w.len() == d_in * d_out && b.len() == d_out,
        "linear: input lengths"
    );
    assert_eq!(y.len(), rows * d_out, "linear: output length");
    if rows == 0 || d_out == 0 {
        return;
    }
    y.par_chunks_mut(ROWS * d_out)
        .zip(x.par_chunks(ROWS * d_in.max(1)))
        .for_each(|(y, x)| {
            let n = y.len() / d_out;
            for row in y.chunks_exact_mut(d_out) {
                row.copy_from_slice(b);
            }
            // SAFETY: y is n x d_out, x n x d_in, w d_in x d_out, all row-major and in bounds.
            unsafe {
                product(
                    Mat::rows(y.as_mut_ptr(), d_out),
                    Mat::rows(x.as_ptr(), d_in),
                    Mat::rows(w.as_ptr(), d_out),
                    [n, d_out, d_in],
                    true,
                    1.0,
                );
            }
        });
}

/// The gradients of [`linear_forward`] given `dy` `[n, d_out]`: `dx` `[n, d_in]` and `dw`
/// `[d_in, d_out]` where asked for, and `db` `[d_out]` (each fully written).
///
/// # Panics
/// If a slice length does not match `shape` (a programmer error).
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    s: LinearShape,
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
    db: &mut [f32],
) {
    let LinearShape { rows, d_in, d_out } = s;
    assert!(
        x.len() == rows * d_in && w.len() == d_in * d_out && dy.len() == rows * d_out,
        "linear backward: input lengths"
    );
    assert_eq!(db.len(), d_out, "linear backward: bias gradient length");
    if let Some(dx) = dx {
        assert_eq!(dx.len(), x.len(), "linear backward: dx length");
        if d_in > 0 {
            dx.par_chunks_mut(ROWS * d_in)
                .zip(dy.par_chunks(ROWS * d_out.max(1)))
                .for_each(|(dx, dy)| {
                    let n = dx.len() / d_in;
                    // SAFETY: dx is n x d_in, dy n x d_out, W^T (d_out x d_in) a strided view
                    // of w.
                    unsafe {
                        product(
                            Mat::rows(dx.as_mut_ptr(), d_in),
                            Mat::rows(dy.as_ptr(), d_out),
                            Mat::rows(w.as_ptr(), d_out).t(),
                            [n, d_in, d_out],
                            false,
                            1.0,
                        );
                    }
                });
        }
    }
    if let Some(dw) = dw {
        assert_eq!(dw.len(), w.len(), "linear backward: dw length");
        if d_out > 0 {
            dw.par_chunks_mut(WEIGHT_ROWS * d_out)
                .enumerate()
                .for_each(|(block, dw)| {
                    let first = block * WEIGHT_ROWS;
                    let m = dw.len() / d_out;
                    // SAFETY: dw's block is m x d_out; x^T's rows first .. first + m are
                    // columns of x (a strided view), dy is n x d_out.
                    unsafe {
                        product(
                            Mat::rows(dw.as_mut_ptr(), d_out),
                            Mat::rows(x.as_ptr().add(first), d_in).t(),
                            Mat::rows(dy.as_ptr(), d_out),
                            [m, d_out, rows],
                            false,
                            1.0,
                        );
                    }
                });
        }
    }
    db.fill(0.0);
    if d_out > 0 {
        vectorised!(|dy: &[f32], db: &mut [f32]| column_sums(dy, db));
    }
}

/// `db[j] += sum_i dy[i][j]`, row by row so the inner loop vectorises.
#[inline(always)]
fn column_sums(dy: &[f32], db: &mut [f32]) {
    for row in dy.chunks_exact(db.len()) {
        for (s, &g) in db.iter_mut().zip(row) {
            *s += g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values as values;

    fn shapes() -> [LinearShape; 3] {
        [
            LinearShape {
                rows: 5,
                d_in: 3,
                d_out: 4,
            },
            // More than one block of rows and of weight rows, ragged at the end.
            LinearShape {
                rows: 300,
                d_in: 70,
                d_out: 9,
            },
            LinearShape {
                rows: 1,
                d_in: 1,
                d_out: 1,
            },
        ]
    }

    #[test]
    fn forward_and_backward_match_the_formulas_in_f64() {
        for (n, s) in shapes().into_iter().enumerate() {
            let LinearShape { rows, d_in, d_out } = s;
            let x = values(rows * d_in, 3 * n as u64 + 1);
            let w = values(d_in * d_out, 3 * n as u64 + 2);
            let b = values(d_out, 3 * n as u64 + 3);
            let dy = values(rows * d_out, 3 * n as u64 + 4);
            let mut y = vec![f32::NAN; rows * d_out];
            linear_forward(&x, &w, &b, s, &mut y);
            let (mut dx, mut dw, mut db) = (
                vec![f32::NAN; x.len()],
                vec![f32::NAN; w.len()],
                vec![f32::NAN; d_out],
            );
            linear_backward(&x, &w, &dy, s, Some(&mut dx), Some(&mut dw), &mut db);
            let close = |got: f32, want: f64, what: &str| {
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "{s:?} {what}: {got} vs {want}"
                );
            };
            for i in 0..rows {
                for j in 0..d_out {
                    let want = b[j] as f64
                        + (0..d_in)
                            .map(|k| x[i * d_in + k] as f64 * w[k * d_out + j] as f64)
                            .sum::<f64>();
                    close(y[i * d_out + j], want, "y");
                }
                for k in 0..d_in {
                    let want: f64 = (0..d_out)
                        .map(|j| dy[i * d_out + j] as f64 * w[k * d_out + j] as f64)
                        .sum();
                    close(dx[i * d_in + k], want, "dx");
                }
            }
            for k in 0..d_in {
                for j in 0..d_out {
                    let want: f64 = (0..rows)
                        .map(|i| x[i * d_in + k] as f64 * dy[i * d_out + j] as f64)
                        .sum();
                    close(dw[k * d_out + j], want, "dw");
                }
            }
            for j in 0..d_out {
                let want: f64 = (0..rows).map(|i| dy[i * d_out + j] as f64).sum();
                close(db[j], want, "db");
            }
        }
    }
}
