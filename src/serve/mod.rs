//! `siam serve`: a search server over an index folder, with a JSON API and a web page.
//!
//! The model and the index are loaded once ([`SearchService::open`]) and shared by every
//! request; the embedding work (decoding, preprocessing, the towers' forward pass, the HNSW
//! search) runs on tokio's blocking thread pool, never on the async workers, bounded by a
//! semaphore. The HTTP side ([`api::router`]) is axum on tokio, in the spirit of
//! clip-retrieval's `clip_back` (an index served over HTTP with a front end to search it):
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the search page ([`page`]), self-contained (no CDN), embedded in the binary |
//! | `GET /health` | `{"status": "ok"}` |
//! | `GET /api/info` | the index: model, dimension, counts, HNSW parameters, limits |
//! | `POST /api/search` | JSON `{"text": "...", "k": 5}` or `{"path": "...", "k": 5}` |
//! | `POST /api/search/image?k=5` | the body is an image file (JPEG, PNG, WebP, BMP, GIF) |
//! | `GET /api/images/{id}` | thumbnail of indexed image `id` (JPEG, at most 256 px a side) |
//!
//! Every answer holds the `k` nearest images (with thumbnail URLs) and the `k` nearest texts
//! (label texts or captions) by cosine similarity in the joint space. Thumbnails come from the
//! indexed dataset only, by index id, never from a path the client names; a query by path is
//! allowed only below the folder given with `--allow-paths`. Bad requests (malformed JSON, a
//! body over the size limit, a non-image upload, `k` out of range, an unknown route, too many
//! requests) are answered with a 4xx status and `{"error": "..."}`.

pub mod api;
pub mod images;
pub mod page;
pub mod search;

pub use api::{router, serve, ServeOptions};
pub use search::{Answer, ImageHit, Query, SearchService, TextHit};

use std::path::PathBuf;

/// Errors opening the search service or answering a query.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The index folder lacks `manifest.json` or it could not be read.
    #[error("{path}: not a siam index folder ({why})")]
    NotAnIndex {
        /// The folder or file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The index could not be loaded or searched.
    #[error(transparent)]
    Index(Box<crate::index::IndexError>),
    /// The model could not be loaded or refused an input.
    #[error(transparent)]
    Encoder(Box<crate::model::encoder::EncoderError>),
    /// The dataset named for thumbnails could not be opened.
    #[error(transparent)]
    Dataset(Box<siam_data::dataset::DatasetError>),
    /// The model fingerprint could not be computed.
    #[error("{path}: the model that built this index: {why}")]
    Model {
        /// The model path.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// An uploaded or named image could not be decoded.
    #[error(transparent)]
    Image(Box<siam_data::preprocess::ImageError>),
    /// A query that names no text, image or path, or an empty text.
    #[error("{0}")]
    BadQuery(String),
    /// `k` outside `1..=max_k`.
    #[error("k = {k} is out of range: it must be between 1 and {max}")]
    BadK {
        /// The k asked for.
        k: usize,
        /// The largest k the server answers.
        max: usize,
    },
    /// A path query while `--allow-paths` is not set, or a path outside that folder.
    #[error("{0}")]
    PathRefused(String),
    /// An image id outside the index.
    #[error("image {id} is not in the index (it holds {len} images)")]
    NoSuchImage {
        /// The id asked for.
        id: usize,
        /// Images in the index.
        len: usize,
    },
    /// An indexed image whose file or record is not available for a thumbnail.
    #[error("image {id} ({name}): no thumbnail ({why})")]
    NoThumbnail {
        /// The id.
        id: usize,
        /// Its name in the index.
        name: String,
        /// Why.
        why: String,
    },
}

// The sources are boxed so that `Result<T, ServeError>` stays small (clippy's
// `result_large_err`): the model and dataset errors carry paths and messages.
macro_rules! boxed_from {
    ($($variant:ident: $source:ty),*) => {$(
        impl From<$source> for ServeError {
            fn from(e: $source) -> Self {
                Self::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Index: crate::index::IndexError,
    Encoder: crate::model::encoder::EncoderError,
    Dataset: siam_data::dataset::DatasetError,
    Image: siam_data::preprocess::ImageError
);

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ServeError>;
