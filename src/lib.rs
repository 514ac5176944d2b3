//! siam: adapt CLIP to your own images and label texts, the metric-learning way.
//!
//! The crate holds the CLIP towers and their weight import ([`clip`]), the feature cache and
//! training loop ([`train`]), the HNSW index ([`index`]) and the retrieval metrics ([`eval`]).
//! The `siam` binary only parses arguments and calls into these modules.

pub mod cli;
pub mod clip;
pub mod console;
pub mod device;
pub mod embed;
pub mod eval;
pub mod export;
pub mod fingerprint;
pub mod hub;
pub mod index;
pub mod io;
pub mod merge;
pub mod output;
pub mod prompt;
pub mod pseudo_label;
pub mod train;
