//! Retrieval and classification metrics over frozen embeddings, and the plots that show them.
//!
//! Everything here takes plain row-major `f32` embeddings (`rows x dim`, L2-normalised so a dot
//! product is a cosine similarity) with ids or labels, and returns plain numbers:
//!
//! - [`retrieval`]: image-to-text and text-to-image recall@k, mean and median rank, with
//!   CLIP_benchmark's definition (a query hits at k if any of its positives is in its top k),
//!   computed exactly by blocked matrix products.
//! - [`classification`]: zero-shot top-1/top-5 accuracy, and precision@1, R-precision and MAP@R as
//!   pytorch-metric-learning's `AccuracyCalculator` defines them.
//! - [`linear_probe`]: multinomial logistic regression on frozen features, as in the CLIP paper
//!   (scikit-learn's `LogisticRegression(C, solver="lbfgs")` objective, solved by L-BFGS).
//! - [`plot`]: PNG line charts (recall@k curves, loss curves), written atomically.
//!
//! Ties in similarity are broken deterministically everywhere: a higher score ranks first, and
//! among equal scores the lower index ranks first (the exact ranking primitives are shared with
//! brute-force search in `crate::index`, which this module uses and which never uses it).

pub mod classification;
pub mod linear_probe;
pub mod plot;
pub mod retrieval;

/// Errors from the metric computations: all are caller mistakes in shapes or labels.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A flat embedding buffer whose length is not a multiple of the dimension.
    #[error("{what}: {len} values is not a whole number of rows of dimension {dim}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The dimension expected.
        dim: usize,
    },
    /// The embedding dimension is zero.
    #[error("embedding dimension must be at least 1")]
    ZeroDim,
    /// An input that must not be empty is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// A list of labels or ids whose length does not match the number of embedding rows.
    #[error("{what}: {got} entries for {expected} embedding rows")]
    CountMismatch {
        /// Which input.
        what: &'static str,
        /// Rows in the matching embeddings.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// A label or index outside its valid range.
    #[error("{what}[{index}] = {value} is out of range (must be < {bound})")]
    OutOfRange {
        /// Which input.
        what: &'static str,
        /// Position of the bad entry.
        index: usize,
        /// Its value.
        value: usize,
        /// The exclusive upper bound.
        bound: usize,
    },
    /// An embedding row holding NaN or infinity.
    #[error("{what}: row {row} is not finite")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// The row.
        row: usize,
    },
    /// Logistic regression needs at least two classes among the training labels.
    #[error("linear probe: the training labels hold {classes} class(es); at least 2 are needed")]
    TooFewClasses {
        /// Distinct classes found.
        classes: usize,
    },
    /// A hyper-parameter outside its domain.
    #[error("{what} must be {must}, got {got}")]
    BadParameter {
        /// Which parameter.
        what: &'static str,
        /// The constraint.
        must: &'static str,
        /// The value given.
        got: f64,
    },
    /// Writing a plot failed.
    #[error("plot {path}: {why}")]
    Plot {
        /// The PNG being written.
        path: std::path::PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, EvalError>;

/// Checks a flat `rows x dim` buffer and returns `rows`.
pub(crate) fn rows_of(what: &'static str, data: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(EvalError::ZeroDim);
    }
    if !data.len().is_multiple_of(dim) {
        return Err(EvalError::Shape {
            what,
            len: data.len(),
            dim,
        });
    }
    let rows = data.len() / dim;
    if rows == 0 {
        return Err(EvalError::Empty { what });
    }
    if let Some(row) = data
        .chunks_exact(dim)
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        return Err(EvalError::NonFinite { what, row });
    }
    Ok(rows)
}

/// Checks that `labels` has one entry per row.
pub(crate) fn check_count(what: &'static str, labels: usize, rows: usize) -> Result<()> {
    if labels != rows {
        return Err(EvalError::CountMismatch {
            what,
            expected: rows,
            got: labels,
        });
    }
    Ok(())
}

/// Median as NumPy's `np.median` computes it: the middle value, or the mean of the two middle
/// values for an even count. `None` for an empty slice.
pub(crate) fn median(values: &[usize]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
    })
}
