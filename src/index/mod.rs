//! HNSW index over the joint embedding space.
//!
//! - [`VectorIndex`]: one HNSW graph over L2-normalised vectors, built in parallel by hnswlib's
//!   algorithm (`build`), searched by our own search (`flat`) with SIMD dot products ([`dot`]),
//!   saved in hnsw_rs 0.3.5's dump format (`dump`) and reloaded through hnsw_rs; plus exact
//!   brute-force search over the same vectors.
//! - [`JointIndex`]: the folder `siam index` writes: image and text vectors, their HNSW graphs,
//!   the image paths and the texts, the build parameters and the model fingerprint.
//!
//! hnsw_rs's pitfalls are kept inside this module: inputs are validated before hnsw_rs sees them
//! (it calls `process::exit`, prints and panics on bad input or files), distances are clamped at 0
//! for unit vectors whose dot product rounds above 1, dump files are checked against the SHA-256
//! recorded at save time before hnsw_rs reads them, a reloaded graph is copied out of hnsw_rs (so
//! nothing borrows its loader), and an empty index saves and loads.

mod build;
pub mod dataset;
pub mod dot;
mod dump;
mod flat;
mod joint;
pub(crate) mod scores;
mod vector;

pub use joint::{Hit, JointIndex, Manifest, ModelSource, TextEntry, FORMAT_VERSION};
pub use vector::{HnswParams, VectorIndex};

use std::path::PathBuf;

/// Errors building, saving, loading or querying an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A flat vector buffer whose length is not a multiple of the dimension.
    #[error("{what}: {len} values is not a whole number of rows of dimension {dim}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The dimension expected.
        dim: usize,
    },
    /// The vector dimension is zero.
    #[error("vector dimension must be at least 1")]
    ZeroDim,
    /// A vector holding NaN or infinity.
    #[error("{what}: row {row} is not finite")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// The row.
        row: usize,
    },
    /// A vector that is not L2-normalised (cosine scores would be wrong).
    #[error("{what}: row {row} has L2 norm {norm}, expected 1 (normalise embeddings first)")]
    NotUnit {
        /// Which input.
        what: &'static str,
        /// The row.
        row: usize,
        /// Its norm.
        norm: f32,
    },
    /// A query whose dimension differs from the index's.
    #[error("query has dimension {got}, the index holds dimension {expected}")]
    QueryDim {
        /// The index's dimension.
        expected: usize,
        /// The query's.
        got: usize,
    },
    /// `k` is 0 or exceeds the number of indexed items.
    #[error("k = {k} is invalid: it must be between 1 and the {len} items in the index")]
    BadK {
        /// The k asked for.
        k: usize,
        /// Items in the index.
        len: usize,
    },
    /// A build parameter outside its domain.
    #[error("HNSW parameter {what} = {value} is invalid: {must}")]
    BadParams {
        /// The parameter.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The constraint.
        must: &'static str,
    },
    /// Ids, paths or texts whose count does not match the vectors.
    #[error("{what}: {got} entries for {expected} vectors")]
    CountMismatch {
        /// Which list.
        what: &'static str,
        /// Number of vectors.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// A caption's image index outside the image list.
    #[error("text {text} points at image {image}, but there are {images} images")]
    BadImageRef {
        /// Index of the text.
        text: usize,
        /// The image index it gives.
        image: usize,
        /// Number of images.
        images: usize,
    },
    /// The index folder or one of its files does not exist.
    #[error("{path}: missing (not an index folder written by `siam index`?)")]
    Missing {
        /// The missing path.
        path: PathBuf,
    },
    /// A file of the index folder is unreadable, truncated or inconsistent.
    #[error("{path}: corrupt index file ({why})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// An index folder written in another format version.
    #[error("{path}: index format version {found}, this siam reads version {supported}; rebuild the index with `siam index`")]
    FormatVersion {
        /// The manifest.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The index was built with a different model than the one given.
    #[error(
        "{path}: index was built with model {found}, not {expected}; rebuild it with `siam index`"
    )]
    ModelMismatch {
        /// The index folder.
        path: PathBuf,
        /// Fingerprint asked for.
        expected: String,
        /// Fingerprint recorded in the index.
        found: String,
    },
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    /// hnsw_rs reported an error (or panicked) building, dumping or reloading a graph.
    #[error("{path}: HNSW graph: {why}")]
    Hnsw {
        /// The folder involved.
        path: PathBuf,
        /// hnsw_rs's message.
        why: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, IndexError>;
