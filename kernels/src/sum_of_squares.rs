//! `sum_i x_i^2` over a gradient, for global-norm clipping.

use rayon::prelude::*;

use crate::simd::{sum_map, vectorised, CHUNK};

/// `sum_i x_i^2`: sixteen-lane partial sums per chunk of [`CHUNK`] elements on rayon's threads,
/// the chunks' sums added in order in f64 (the same value whatever the number of threads).
pub fn sum_of_squares(x: &[f32]) -> f64 {
    if x.len() < 2 * CHUNK {
        return chunk(x);
    }
    let parts: Vec<f64> = x.par_chunks(CHUNK).map(chunk).collect();
    parts.iter().sum()
}

/// One chunk's sum, compiled for the CPU's vector extension.
fn chunk(x: &[f32]) -> f64 {
    let mut total = 0f32;
    let s = &mut total;
    vectorised!(|x: &[f32], s: &mut f32| *s = sum_map(x, |v| v * v));
    total as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values;

    #[test]
    fn matches_f64_below_and_above_the_parallel_size() {
        for n in [0, 17, 5 * CHUNK + 3] {
            let x = test_values(n, 9);
            let want: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            let got = sum_of_squares(&x);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "n = {n}: {got} vs {want}"
            );
        }
    }
}
