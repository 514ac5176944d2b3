//! Distances and similarities between anchor and reference embeddings.
//!
//! Mirrors pytorch-metric-learning's `distances/` (`CosineSimilarity`,
//! `DotProductSimilarity`, `LpDistance(normalize_embeddings=False, p=2, power=1|2)`):
//! each distance knows whether it is a similarity (`is_inverted` there), so that
//! margins and "harder" mean the right thing either way.
//!
//! Inside the crate every miner and loss works on *oriented* values
//! `o = d` for a distance and `o = -s` for a similarity, so that "smaller is
//! closer" always holds; absolute thresholds (pair margins, the multi-similarity
//! base) are oriented the same way, relative margins (triplet margin, epsilon) are not.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Tensor};

use crate::error::LossError;

/// Above this many matrix entries the anchor-by-reference matrix is built in row
/// blocks of at most this many entries, so the temporaries of one block (norms,
/// products, square roots) stay bounded.
pub const BLOCK_ELEMENTS: usize = 1 << 22;

/// Squared distances at or below this are treated as exact zeros (with zero
/// gradient), which keeps `sqrt` from producing an infinite derivative.
const SQRT_EPS: f32 = 1e-12;

/// How two embeddings are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distance {
    /// Cosine similarity `s(a, b) = a·b / (‖a‖ ‖b‖)` (rows are L2-normalised with
    /// `max(‖x‖, 1e-12)` as in `torch.nn.functional.normalize`). A similarity.
    Cosine,
    /// Dot product `s(a, b) = a·b`. A similarity.
    Dot,
    /// Euclidean distance `d(a, b) = ‖a − b‖₂`, from `‖a‖² + ‖b‖² − 2a·b` (one matmul),
    /// clamped at 0. A distance.
    Euclidean,
    /// Squared Euclidean distance `‖a − b‖₂²`. A distance.
    SquaredEuclidean,
}

impl Distance {
    /// True for similarities (larger = closer): cosine and dot product.
    pub fn is_similarity(&self) -> bool {
        matches!(self, Distance::Cosine | Distance::Dot)
    }

    /// The name used on the command line and in errors.
    pub fn name(&self) -> &'static str {
        match self {
            Distance::Cosine => "cosine",
            Distance::Dot => "dot",
            Distance::Euclidean => "euclidean",
            Distance::SquaredEuclidean => "squared-euclidean",
        }
    }

    /// Maps a raw value (distance or similarity) to the oriented scale where
    /// smaller is closer: `x` for a distance, `-x` for a similarity.
    #[inline]
    pub fn orient(&self, x: f32) -> f32 {
        if self.is_similarity() {
            -x
        } else {
            x
        }
    }

    /// The anchor-by-reference matrix `M[i, j] = dist(anchors[i], refs[j])`, shape `[B, R]`, in f32.
    ///
    /// One matmul; inputs in half precision are cast to f32 first. When `B·R` exceeds
    /// [`BLOCK_ELEMENTS`] the rows are computed in blocks and concatenated, so the
    /// temporaries never exceed one block. Gradients flow to both inputs.
    ///
    /// # Panics
    /// If the two inputs have different widths (callers in this crate check first and
    /// return [`LossError::DimensionMismatch`]).
    pub fn matrix(&self, anchors: Tensor<2>, refs: Tensor<2>) -> Tensor<2> {
        let anchors = to_f32(anchors);
        let refs = to_f32(refs);
        let [b, _] = anchors.dims();
        let [r, _] = refs.dims();
        let refs = self.prepare(refs);
        let refs_t = refs.clone().transpose();
        let refs_sq = self.squared_norms(&refs).map(|n| n.reshape([1, r]));
        let rows_per_block = (BLOCK_ELEMENTS / r.max(1)).max(1);
        if b <= rows_per_block {
            return self.block(self.prepare(anchors), refs_t, refs_sq);
        }
        let mut blocks = Vec::with_capacity(b.div_ceil(rows_per_block));
        let mut start = 0;
        while start < b {
            let len = rows_per_block.min(b - start);
            let rows = self.prepare(anchors.clone().narrow(0, start, len));
            blocks.push(self.block(rows, refs_t.clone(), refs_sq.clone()));
            start += len;
        }
        Tensor::cat(blocks, 0)
    }

    /// Row-normalises for cosine; identity otherwise.
    fn prepare(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Distance::Cosine => {
                let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
                x / norm
            }
            _ => x,
        }
    }

    fn squared_norms(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        match self {
            Distance::Euclidean | Distance::SquaredEuclidean => Some(x.clone().square().sum_dim(1)),
            _ => None,
        }
    }

    fn block(&self, rows: Tensor<2>, refs_t: Tensor<2>, refs_sq: Option<Tensor<2>>) -> Tensor<2> {
        let rows_sq = self.squared_norms(&rows);
        let dot = rows.matmul(refs_t);
        match (self, rows_sq, refs_sq) {
            (Distance::Cosine | Distance::Dot, _, _) => dot,
            (Distance::SquaredEuclidean, Some(a), Some(b)) => (a + b - dot * 2.0).clamp_min(0.0),
            (Distance::Euclidean, Some(a), Some(b)) => {
                let sq = a + b - dot * 2.0;
                let tiny = sq.clone().lower_equal_elem(SQRT_EPS);
                sq.clamp_min(SQRT_EPS).sqrt().mask_fill(tiny, 0.0)
            }
            _ => unreachable!("squared norms exist exactly for the Euclidean distances"),
        }
    }
}

/// Casts half-precision (or any non-f32 float) tensors to f32 so distances, softmax and
/// mining never run in 16 bits.
pub(crate) fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    }
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Distance {
    type Err = LossError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cosine" | "cos" => Ok(Distance::Cosine),
            "dot" | "dot-product" => Ok(Distance::Dot),
            "euclidean" | "l2" => Ok(Distance::Euclidean),
            "squared-euclidean" | "sq-euclidean" | "l2sq" => Ok(Distance::SquaredEuclidean),
            _ => Err(LossError::Parse {
                what: "distance",
                input: s.to_string(),
                why: "expected cosine | dot | euclidean | squared-euclidean".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device;

    fn t(rows: &[&[f32]]) -> Tensor<2> {
        let d = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::<1>::from_floats(flat.as_slice(), &test_device()).reshape([rows.len(), d])
    }

    fn vals(x: Tensor<2>) -> Vec<f32> {
        x.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn hand_computed_matrices() {
        let a = t(&[&[3.0, 4.0], &[1.0, 0.0]]);
        let b = t(&[&[0.0, 0.0], &[3.0, 0.0], &[0.0, 2.0]]);
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-5);
        let e = vals(Distance::Euclidean.matrix(a.clone(), b.clone()));
        assert!(
            close(&e, &[5.0, 4.0, 13f32.sqrt(), 1.0, 2.0, 5f32.sqrt()]),
            "{e:?}"
        );
        let sq = vals(Distance::SquaredEuclidean.matrix(a.clone(), b.clone()));
        assert!(close(&sq, &[25.0, 16.0, 13.0, 1.0, 4.0, 5.0]), "{sq:?}");
        let dot = vals(Distance::Dot.matrix(a.clone(), b.clone()));
        assert!(close(&dot, &[0.0, 9.0, 8.0, 0.0, 3.0, 0.0]), "{dot:?}");
        let cos = vals(Distance::Cosine.matrix(a, b));
        assert!(close(&cos, &[0.0, 0.6, 0.8, 0.0, 1.0, 0.0]), "{cos:?}");
    }

    #[test]
    fn blocked_matrix_equals_single_matmul() {
        // 3000 x 1500 exceeds BLOCK_ELEMENTS, so this takes the row-block path.
        let dev = test_device();
        let (b, r, d) = (3000, 1500, 4);
        let a: Vec<f32> = (0..b * d)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        let c: Vec<f32> = (0..r * d)
            .map(|i| ((i * 53 % 97) as f32) / 40.0 - 1.2)
            .collect();
        let at = Tensor::<1>::from_floats(a.as_slice(), &dev).reshape([b, d]);
        let ct = Tensor::<1>::from_floats(c.as_slice(), &dev).reshape([r, d]);
        for dist in [Distance::Cosine, Distance::Euclidean] {
            let m = vals(dist.matrix(at.clone(), ct.clone()));
            for &(i, j) in &[(0, 0), (1234, 17), (2999, 1499), (2048, 700)] {
                let (x, y) = (&a[i * d..(i + 1) * d], &c[j * d..(j + 1) * d]);
                let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
                let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt();
                let ny = y.iter().map(|v| v * v).sum::<f32>().sqrt();
                let want = match dist {
                    Distance::Cosine => dot / (nx * ny),
                    _ => x
                        .iter()
                        .zip(y)
                        .map(|(p, q)| (p - q) * (p - q))
                        .sum::<f32>()
                        .sqrt(),
                };
                assert!(
                    (m[i * r + j] - want).abs() < 1e-4,
                    "{dist} ({i},{j}): {} vs {want}",
                    m[i * r + j]
                );
            }
        }
    }

    #[test]
    fn parses_names() {
        assert_eq!("cosine".parse::<Distance>().unwrap(), Distance::Cosine);
        assert_eq!(
            "squared-euclidean".parse::<Distance>().unwrap(),
            Distance::SquaredEuclidean
        );
        assert!("manhattan".parse::<Distance>().is_err());
        assert!(Distance::Dot.is_similarity() && !Distance::Euclidean.is_similarity());
    }
}
