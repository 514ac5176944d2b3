//! [`SearchService`]: the model, the index and the thumbnail source, loaded once and shared by
//! every request. Its methods block (decoding, the towers' forward pass, HNSW search); the HTTP
//! layer calls them on tokio's blocking pool.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Serialize;

use super::images::ImageStore;
use super::{Result, ServeError};
use crate::index::Manifest;
use crate::index::{Hit, JointIndex};
use crate::model::encoder::Encoder;

/// Longest query text accepted, in bytes (CLIP reads 77 tokens; this only bounds the work).
pub const MAX_TEXT_BYTES: usize = 4096;

/// What [`SearchService::open`] loads.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The index folder (from `siam index`, or a `siam train` output folder holding `index/`).
    pub index: PathBuf,
    /// The model to embed queries with (default: the one recorded in the index's `manifest.json`).
    pub model: Option<PathBuf>,
    /// `--arch` for a bare checkpoint given as `model`.
    pub arch: Option<String>,
    /// The dataset the index was built from, for thumbnails (default: the image ids as files,
    /// or the synthetic demo set for an index written by `siam train` on it).
    pub data: Option<PathBuf>,
    /// The folder below which a query may name an image file on the server; `None` refuses
    /// every path query.
    pub allow_paths: Option<PathBuf>,
    /// The largest `k` a query may ask for.
    pub max_k: usize,
}

/// One query.
#[derive(Debug, Clone)]
pub enum Query {
    /// A text (answers: images whose embedding is closest, and the closest indexed texts).
    Text(String),
    /// The bytes of an encoded image file.
    ImageBytes(Vec<u8>),
    /// An image file on the server, below `--allow-paths`.
    Path(PathBuf),
}

/// One image answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageHit {
    /// 1 for the best.
    pub rank: usize,
    /// Image row in the index (the thumbnail's id).
    pub id: usize,
    /// The image's id in the index (its path for image files).
    pub name: String,
    /// Cosine similarity to the query.
    pub score: f32,
    /// Where its thumbnail is served.
    pub thumbnail: String,
}

/// One text answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextHit {
    /// 1 for the best.
    pub rank: usize,
    /// Text row in the index.
    pub id: usize,
    /// The label text or caption.
    pub text: String,
    /// Cosine similarity to the query.
    pub score: f32,
    /// For a caption: the image it describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<usize>,
}

/// The answer to a query: the nearest images and texts, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// Up to `k` images (fewer only if the index holds fewer).
    pub images: Vec<ImageHit>,
    /// Up to `k` distinct texts (fewer only if the index holds fewer).
    pub texts: Vec<TextHit>,
}

/// What `GET /api/info` reports.
#[derive(Debug, Clone, Serialize)]
pub struct IndexInfo {
    /// The index folder.
    pub index: String,
    /// The model queries are embedded with.
    pub model: String,
    /// Its fingerprint (equal to the index's).
    pub fingerprint: String,
    /// Joint-space dimension.
    pub dim: usize,
    /// Indexed images.
    pub images: usize,
    /// Indexed texts.
    pub texts: usize,
    /// Images with a thumbnail source.
    pub thumbnails: usize,
    /// HNSW parameters.
    pub hnsw: crate::index::HnswParams,
    /// The largest k answered.
    pub max_k: usize,
    /// Whether queries by server path are allowed.
    pub path_queries: bool,
    /// The model's input side in pixels.
    pub image_size: usize,
    /// siam's version.
    pub siam_version: String,
}

/// The model, index and thumbnails of one server.
#[derive(Debug)]
pub struct SearchService {
    encoder: Encoder,
    index: JointIndex,
    images: ImageStore,
    allow_paths: Option<PathBuf>,
    max_k: usize,
    info: IndexInfo,
}

impl SearchService {
    /// Loads the index folder and its model (checked against the fingerprint the index
    /// recorded) onto `device`, and finds the thumbnail source.
    pub fn open(opts: &OpenOptions, device: &Device) -> Result<Self> {
        let mut dir = opts.index.clone();
        if !dir.join("manifest.json").is_file() && dir.join("index").join("manifest.json").is_file()
        {
            dir = dir.join("index");
        }
        let card_path = dir.join("manifest.json");
        let not_index = |why: String| ServeError::NotAnIndex {
            path: card_path.clone(),
            why,
        };
        let bytes = std::fs::read(&card_path).map_err(|e| not_index(e.to_string()))?;
        let card: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| not_index(e.to_string()))?;
        let (model_path, arch) = match (&opts.model, &card.model) {
            (Some(m), _) => (m.clone(), opts.arch.clone()),
            (None, Some(source)) => (source.path.clone(), source.arch.clone()),
            (None, None) => {
                return Err(not_index(
                    "the index does not name its model; give --model".into(),
                ))
            }
        };
        let fingerprint = crate::fingerprint::model_fingerprint(&model_path, arch.as_deref())
            .map_err(|e| ServeError::Model {
                path: model_path.clone(),
                why: e.to_string(),
            })?;
        let index = JointIndex::load(&dir, Some(&fingerprint))?;
        let encoder = Encoder::load(&model_path, arch.as_deref(), device)?;
        let images = ImageStore::open(index.image_ids(), opts.data.as_deref(), &model_path)?;
        let allow_paths = match &opts.allow_paths {
            Some(p) => Some(std::fs::canonicalize(p).map_err(|e| {
                ServeError::PathRefused(format!("--allow-paths {}: {e}", p.display()))
            })?),
            None => None,
        };
        let m = index.manifest();
        let info = IndexInfo {
            index: dir.display().to_string(),
            model: model_path.display().to_string(),
            fingerprint,
            dim: m.dim,
            images: m.images,
            texts: m.texts,
            thumbnails: images.available(),
            hnsw: m.params,
            max_k: opts.max_k,
            path_queries: allow_paths.is_some(),
            image_size: encoder.image_size(),
            siam_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Ok(Self {
            encoder,
            index,
            images,
            allow_paths,
            max_k: opts.max_k,
            info,
        })
    }

    /// What the server holds.
    pub fn info(&self) -> &IndexInfo {
        &self.info
    }

    /// The largest `k` answered.
    pub fn max_k(&self) -> usize {
        self.max_k
    }

    /// Checks `k` against `1..=max_k`.
    pub fn check_k(&self, k: usize) -> Result<()> {
        if k == 0 || k > self.max_k {
            return Err(ServeError::BadK { k, max: self.max_k });
        }
        Ok(())
    }

    /// Embeds a query into the joint space (a unit vector).
    pub fn embed(&self, query: &Query) -> Result<Vec<f32>> {
        let pre = self.encoder.preprocessor();
        let pixels = match query {
            Query::Text(t) => {
                let t = t.trim();
                if t.is_empty() {
                    return Err(ServeError::BadQuery("the query text is empty".into()));
                }
                if t.len() > MAX_TEXT_BYTES {
                    return Err(ServeError::BadQuery(format!(
                        "the query text has {} bytes, more than the {MAX_TEXT_BYTES} accepted",
                        t.len()
                    )));
                }
                return Ok(self.encoder.embed_texts(&[t])?);
            }
            Query::ImageBytes(bytes) => pre.load_bytes(bytes, "uploaded image")?,
            Query::Path(p) => pre.load(&self.allowed_path(p)?)?,
        };
        Ok(self.encoder.embed_pixels(&pixels)?)
    }

    /// Answers a query with its `k` nearest images and texts, through the HNSW graphs (or by
    /// brute force when `exact`).
    pub fn search(&self, query: &Query, k: usize, exact: bool) -> Result<Answer> {
        self.check_k(k)?;
        let q = self.embed(query)?;
        Ok(self.search_embedding(&q, k, exact)?)
    }

    /// The `k` nearest images and texts of a unit vector of the joint space.
    pub fn search_embedding(
        &self,
        q: &[f32],
        k: usize,
        exact: bool,
    ) -> crate::index::Result<Answer> {
        let m = self.index.manifest();
        // JointIndex names its searches after the usual query direction; either takes any
        // joint-space vector: `query_by_text_embedding` searches the images,
        // `query_by_image_embedding` the texts.
        let images: Vec<Hit> = if m.images == 0 {
            Vec::new()
        } else {
            self.index
                .query_by_text_embedding(q, k.min(m.images), exact)?
        };
        let texts: Vec<Hit> = if m.texts == 0 {
            Vec::new()
        } else {
            self.index
                .query_by_image_embedding(q, k.min(m.texts), exact)?
        };
        let entries = self.index.text_entries();
        Ok(Answer {
            images: images
                .into_iter()
                .enumerate()
                .map(|(r, h)| ImageHit {
                    rank: r + 1,
                    id: h.id,
                    thumbnail: format!("/api/images/{}", h.id),
                    name: h.name,
                    score: h.score,
                })
                .collect(),
            texts: texts
                .into_iter()
                .enumerate()
                .map(|(r, h)| TextHit {
                    rank: r + 1,
                    id: h.id,
                    image: entries[h.id].image,
                    text: h.name,
                    score: h.score,
                })
                .collect(),
        })
    }

    /// A JPEG thumbnail (at most [`super::images::THUMBNAIL_SIDE`] pixels a side) of indexed
    /// image `id`.
    pub fn thumbnail(&self, id: usize) -> Result<Vec<u8>> {
        self.images.thumbnail(id)
    }

    /// `path` resolved (symbolic links included) if it lies below `--allow-paths`.
    fn allowed_path(&self, path: &Path) -> Result<PathBuf> {
        let Some(root) = &self.allow_paths else {
            return Err(ServeError::PathRefused(
                "queries by server path are off; start the server with --allow-paths DIR".into(),
            ));
        };
        let real = std::fs::canonicalize(path)
            .map_err(|e| ServeError::PathRefused(format!("{}: {e}", path.display())))?;
        if !real.starts_with(root) {
            return Err(ServeError::PathRefused(format!(
                "{}: outside the folder allowed by --allow-paths ({})",
                path.display(),
                root.display()
            )));
        }
        Ok(real)
    }
}
