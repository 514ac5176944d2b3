//! siam: adapt CLIP to your own images and label texts, the metric-learning way.
//!
//! The library, layer by layer (each uses only the ones above it):
//!
//! - [`device`], [`io`], [`output`], [`console`], [`fingerprint`], [`progress`], [`settings`]:
//!   devices, file reading and writing, output folders and their locks, terminal output, model
//!   fingerprints, progress reports, option sections' defaults; [`hub`]: Hugging Face names;
//! - [`clip`]: the CLIP towers, architectures as data, and weight import;
//! - [`dataset`]: the data section every command shares and the split a model records;
//! - [`model`]: [`model::twin::TwinTowers`] (towers + projection heads), the model folder
//!   `siam train` writes, and [`model::Encoder`], inference on any model siam loads;
//! - [`embed`]: batches of images and texts through an `Encoder`, zero-shot labels and
//!   templates;
//! - [`index`]: the HNSW index, exact ranking, and indexing a dataset with a model;
//! - [`eval`]: retrieval, zero-shot, MAP@R and linear-probe metrics, plots;
//! - [`train`]: the training configuration and the `Trainer`'s phases;
//! - [`prompt`], [`pseudo_label`], [`merge`], [`export`]: prompt learning (CoOp),
//!   pseudo-labels, weight-space merging (WiSE-FT) and its accuracy curve, export to
//!   transformers/open_clip folders; [`serve`]: the HTTP search service over an index.
//!
//! The `siam` binary (`src/main.rs` and `src/cli/`, not part of this library) parses
//! arguments into these modules' configurations and calls them.

pub mod clip;
pub mod console;
pub mod dataset;
pub mod device;
pub mod embed;
pub mod eval;
pub mod export;
pub mod fingerprint;
pub mod hub;
pub mod index;
pub mod io;
pub mod merge;
pub mod model;
pub mod output;
pub mod progress;
pub mod prompt;
pub mod pseudo_label;
pub mod serve;
pub mod settings;
pub mod train;

/// The `FromStr` error of siam's option enums (heads, freeze policies, dtypes), shared with
/// siam-data's (splits, bad-image policy, formats).
pub use siam_data::dataset::UnknownName;
