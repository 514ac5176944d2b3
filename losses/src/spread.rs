//! The spread of a set of embeddings: how far apart the model puts its inputs, the number that
//! shows a collapse (every input mapped to one point) that a loss value alone can hide.

use burn::tensor::Tensor;

/// `1 − mean pairwise cosine similarity` over the distinct pairs of rows of `embeddings`
/// (`[n, d]`), in `O(n·d)` without the `n × n` matrix: with unit rows `u_i = e_i / ‖e_i‖` and
/// `s = Σ_i u_i`, `Σ_{i≠j} u_i·u_j = ‖s‖² − n`, so
///
/// ```text
/// spread = 1 − (‖s‖² − n) / (n (n − 1))
/// ```
///
/// 0 when every embedding points the same way (collapse); about 1 when they are spread in
/// unrelated directions (their cosines average 0); at most `1 + 1/(n − 1)`. Rows of zero norm
/// count as the zero vector (cosine 0 with every other row). `None` for fewer than two rows.
/// The tensor is detached and read back once (`n·d` floats); the maths runs in f64.
pub fn embedding_spread(embeddings: &Tensor<2>) -> Option<f32> {
    let [n, d] = embeddings.dims();
    if n < 2 || d == 0 {
        return None;
    }
    let host = embeddings
        .clone()
        .detach()
        .into_data()
        .try_into_vec_as::<f32>()
        .ok()?;
    Some(spread_of_rows(&host, n, d))
}

/// [`embedding_spread`] of `n` rows of `d` values, row-major.
///
/// # Panics
/// If `rows.len() != n * d` or `n < 2`.
pub fn spread_of_rows(rows: &[f32], n: usize, d: usize) -> f32 {
    assert_eq!(rows.len(), n * d, "rows hold n * d values");
    assert!(n >= 2, "the spread needs two rows");
    let mut sum = vec![0f64; d];
    let mut units = 0f64;
    for row in rows.chunks_exact(d) {
        let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        if norm > 0.0 {
            units += 1.0;
            sum.iter_mut()
                .zip(row)
                .for_each(|(s, &x)| *s += x as f64 / norm);
        }
    }
    let s2: f64 = sum.iter().map(|s| s * s).sum();
    let n = n as f64;
    (1.0 - (s2 - units) / (n * (n - 1.0))) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// The direct definition: 1 − mean of cos(e_i, e_j) over i ≠ j.
    fn by_pairs(rows: &[Vec<f32>]) -> f32 {
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            if na == 0.0 || nb == 0.0 {
                0.0
            } else {
                dot / (na * nb)
            }
        };
        let (mut total, mut pairs) = (0.0, 0.0);
        for i in 0..rows.len() {
            for j in 0..rows.len() {
                if i != j {
                    total += cos(&rows[i], &rows[j]);
                    pairs += 1.0;
                }
            }
        }
        1.0 - total / pairs
    }

    fn spread(rows: &[Vec<f32>]) -> f32 {
        let flat: Vec<f32> = rows.concat();
        let t = Tensor::<2>::from_data(
            TensorData::new(flat, [rows.len(), rows[0].len()]),
            &crate::test_device(),
        );
        embedding_spread(&t).unwrap()
    }

    #[test]
    fn equal_embeddings_have_no_spread() {
        let rows = vec![vec![0.3, -1.2, 2.0]; 5];
        assert!(spread(&rows).abs() < 1e-6);
        // Scaled copies point the same way: still collapsed.
        let scaled: Vec<Vec<f32>> = (1..5).map(|k| vec![k as f32, 2.0 * k as f32]).collect();
        assert!(spread(&scaled).abs() < 1e-6);
    }

    #[test]
    fn orthogonal_and_opposite_embeddings() {
        // Orthonormal rows: every cosine is 0, spread 1.
        let eye: Vec<Vec<f32>> = (0..4)
            .map(|i| (0..4).map(|j| if i == j { 2.0 } else { 0.0 }).collect())
            .collect();
        assert!((spread(&eye) - 1.0).abs() < 1e-6);
        // Two opposite rows: cosine −1, spread 2 = 1 + 1/(n − 1).
        assert!((spread(&[vec![1.0, 1.0], vec![-1.0, -1.0]]) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn matches_the_pairwise_definition() {
        let rows = vec![
            vec![0.1, 0.9, -0.3],
            vec![0.5, 0.2, 0.2],
            vec![-0.7, 0.1, 0.4],
            vec![0.0, 0.0, 0.0],
            vec![0.3, -0.3, 0.9],
        ];
        assert!((spread(&rows) - by_pairs(&rows)).abs() < 1e-5);
    }

    #[test]
    fn one_row_has_no_spread() {
        let t = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0], [1, 2]),
            &crate::test_device(),
        );
        assert_eq!(embedding_spread(&t), None);
    }
}
