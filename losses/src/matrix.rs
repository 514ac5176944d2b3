//! The anchor-by-reference matrix as host data, in the oriented scale miners and losses share.

use crate::distance::Distance;
use crate::error::{LossError, Result};

/// A `B × R` matrix read back from the device, with the labels of both sides.
///
/// `o[i·R + j]` is the *oriented* value (`d` for a distance, `−s` for a similarity):
/// smaller is always closer. When `same_set` is true the references are the anchors
/// themselves and the diagonal is neither a positive nor a negative.
#[derive(Debug, Clone)]
pub struct PairMatrix<'a> {
    /// Oriented values, row-major `B × R`.
    pub o: Vec<f32>,
    /// Number of anchors `B`.
    pub rows: usize,
    /// Number of references `R`.
    pub cols: usize,
    /// Anchor labels, length `B`.
    pub labels: &'a [usize],
    /// Reference labels, length `R`.
    pub ref_labels: &'a [usize],
    /// References are the anchors (exclude `i == j`).
    pub same_set: bool,
    /// The distance the values came from.
    pub distance: Distance,
    /// Embedding width (used by distance-weighted sampling).
    pub dim: usize,
    /// Anchor loss weights, length `B` (`None`: all 1; see [`crate::Weights`]).
    pub weights: Option<&'a [f32]>,
    /// Reference loss weights, length `R`, for losses whose references are anchors too.
    pub ref_weights: Option<&'a [f32]>,
}

impl<'a> PairMatrix<'a> {
    /// Builds the oriented matrix from raw values (as returned by [`Distance::matrix`]),
    /// checking that every entry is finite.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw: Vec<f32>,
        rows: usize,
        cols: usize,
        labels: &'a [usize],
        ref_labels: &'a [usize],
        same_set: bool,
        distance: Distance,
        dim: usize,
    ) -> Result<Self> {
        assert_eq!(raw.len(), rows * cols, "matrix size");
        if let Some(k) = raw.iter().position(|v| !v.is_finite()) {
            let (i, j) = (k / cols, k % cols);
            let row_bad = raw[i * cols..(i + 1) * cols].iter().all(|v| !v.is_finite());
            let col_bad = (0..rows).all(|r| !raw[r * cols + j].is_finite());
            return Err(if row_bad || !col_bad {
                LossError::NonFinite {
                    side: "anchor",
                    row: i,
                }
            } else if same_set {
                LossError::NonFinite {
                    side: "anchor",
                    row: j,
                }
            } else {
                LossError::NonFinite {
                    side: "reference",
                    row: j,
                }
            });
        }
        let o = if distance.is_similarity() {
            raw.into_iter().map(|v| -v).collect()
        } else {
            raw
        };
        Ok(Self {
            o,
            rows,
            cols,
            labels,
            ref_labels,
            same_set,
            distance,
            dim,
            weights: None,
            ref_weights: None,
        })
    }

    /// The same matrix with anchor and reference loss weights (checked by the caller).
    pub fn with_weights(
        mut self,
        weights: Option<&'a [f32]>,
        ref_weights: Option<&'a [f32]>,
    ) -> Self {
        self.weights = weights;
        self.ref_weights = ref_weights;
        self
    }

    /// Anchor `i`'s loss weight (1 without weights).
    #[inline]
    pub fn weight(&self, i: usize) -> f32 {
        self.weights.map_or(1.0, |w| w[i])
    }

    /// Row `i` of the oriented matrix.
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.o[i * self.cols..(i + 1) * self.cols]
    }

    /// Oriented value at `(i, j)`.
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.o[i * self.cols + j]
    }

    /// Raw value (distance or similarity) at `(i, j)`.
    #[inline]
    pub fn raw(&self, i: usize, j: usize) -> f32 {
        self.distance.orient(self.at(i, j))
    }

    /// Reference `j` shares anchor `i`'s label (and is not the anchor itself).
    #[inline]
    pub fn is_pos(&self, i: usize, j: usize) -> bool {
        self.labels[i] == self.ref_labels[j] && !(self.same_set && i == j)
    }

    /// Reference `j` has a different label from anchor `i`.
    #[inline]
    pub fn is_neg(&self, i: usize, j: usize) -> bool {
        self.labels[i] != self.ref_labels[j]
    }

    /// Positive and negative reference indices of anchor `i`.
    pub fn split_row(&self, i: usize, pos: &mut Vec<u32>, neg: &mut Vec<u32>) {
        pos.clear();
        neg.clear();
        let li = self.labels[i];
        for (j, &lj) in self.ref_labels.iter().enumerate() {
            if lj != li {
                neg.push(j as u32);
            } else if !(self.same_set && i == j) {
                pos.push(j as u32);
            }
        }
    }
}
