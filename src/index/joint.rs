//! [`JointIndex`]: the index folder `siam index` writes, over images and texts of one model.
//!
//! Layout (format version [`FORMAT_VERSION`]):
//! ```text
//! INDEX/
//!   manifest.json   format version, model fingerprint, dim, counts, build parameters
//!   images.json     image ids (paths), one per image row
//!   texts.json      texts: {"text", "image" (caption of that image) or "label" (class)}
//!   images/         VectorIndex: vectors.npy (image embeddings), hnsw.json, graph.hnsw.{graph,data}
//!   texts/          VectorIndex: vectors.npy (text embeddings), hnsw.json, graph.hnsw.{graph,data}
//! ```
//! The folder is written under a temporary name and renamed ([`crate::io::atomic_dir`]).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::vector::check_unit_rows;
use super::{HnswParams, IndexError, Result, VectorIndex};

/// Version of the index folder layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MANIFEST: &str = "manifest.json";
const IMAGE_IDS: &str = "images.json";
const TEXTS: &str = "texts.json";
const IMAGE_DIR: &str = "images";
const TEXT_DIR: &str = "texts";

/// What `manifest.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT_VERSION`] when written by this build).
    pub format_version: u32,
    /// Fingerprint of the model whose embeddings are indexed (chosen by the caller, e.g. a hash
    /// of the weights and config); loading with another fingerprint is an error.
    pub model_fingerprint: String,
    /// Embedding dimension.
    pub dim: usize,
    /// Number of images.
    pub images: usize,
    /// Number of texts.
    pub texts: usize,
    /// HNSW parameters both graphs were built with.
    pub params: HnswParams,
    /// Version of siam that wrote the index.
    pub siam_version: String,
}

/// One indexed text: a label text (prompt) of a class, or a caption of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextEntry {
    /// The text itself.
    pub text: String,
    /// For captions: the index of the image it describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<usize>,
    /// For label texts: the class index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<usize>,
}

/// One query answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Row of the item in the index (image or text index).
    pub id: usize,
    /// The text (for text hits) or the image path (for image hits).
    pub name: String,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// HNSW indexes over the image and text embeddings of one model, with their ids.
#[derive(Debug)]
pub struct JointIndex {
    manifest: Manifest,
    images: VectorIndex,
    texts: VectorIndex,
    image_ids: Vec<String>,
    text_entries: Vec<TextEntry>,
}

fn check_entries(
    images: usize,
    image_ids: &[String],
    texts: usize,
    entries: &[TextEntry],
) -> Result<()> {
    if image_ids.len() != images {
        return Err(IndexError::CountMismatch {
            what: "image ids",
            expected: images,
            got: image_ids.len(),
        });
    }
    if entries.len() != texts {
        return Err(IndexError::CountMismatch {
            what: "texts",
            expected: texts,
            got: entries.len(),
        });
    }
    if let Some((text, image)) = entries
        .iter()
        .enumerate()
        .find_map(|(j, e)| e.image.filter(|&i| i >= images).map(|i| (j, i)))
    {
        return Err(IndexError::BadImageRef {
            text,
            image,
            images,
        });
    }
    Ok(())
}

impl JointIndex {
    /// Builds both graphs. `images` is `image_ids.len() x dim`, `texts` is
    /// `text_entries.len() x dim`, all rows L2-normalised. Either side may be empty.
    pub fn build(
        model_fingerprint: &str,
        dim: usize,
        images: &[f32],
        image_ids: Vec<String>,
        texts: &[f32],
        text_entries: Vec<TextEntry>,
        params: HnswParams,
    ) -> Result<Self> {
        let n_images = check_unit_rows("image embeddings", images, dim)?;
        let n_texts = check_unit_rows("text embeddings", texts, dim)?;
        check_entries(n_images, &image_ids, n_texts, &text_entries)?;
        let image_index = VectorIndex::build(images, dim, params)?;
        let text_index = VectorIndex::build(texts, dim, params)?;
        Self::from_parts(
            model_fingerprint,
            image_index,
            image_ids,
            text_index,
            text_entries,
        )
    }

    /// Assembles an index from graphs built separately (for example with
    /// [`VectorIndex::build_with_progress`]); both must share dimension and parameters.
    pub fn from_parts(
        model_fingerprint: &str,
        image_index: VectorIndex,
        image_ids: Vec<String>,
        text_index: VectorIndex,
        text_entries: Vec<TextEntry>,
    ) -> Result<Self> {
        let (dim, params) = (image_index.dim(), *image_index.params());
        if text_index.dim() != dim {
            return Err(IndexError::QueryDim {
                expected: dim,
                got: text_index.dim(),
            });
        }
        if *text_index.params() != params {
            return Err(IndexError::BadParams {
                what: "text index parameters",
                value: text_index.params().m,
                must: "must equal the image index's",
            });
        }
        let (n_images, n_texts) = (image_index.len(), text_index.len());
        check_entries(n_images, &image_ids, n_texts, &text_entries)?;
        Ok(JointIndex {
            manifest: Manifest {
                format_version: FORMAT_VERSION,
                model_fingerprint: model_fingerprint.to_string(),
                dim,
                images: n_images,
                texts: n_texts,
                params,
                siam_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            images: image_index,
            texts: text_index,
            image_ids,
            text_entries,
        })
    }

    /// Writes the index folder atomically (see the module docs for its layout), replacing an
    /// older folder at `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::io::atomic_dir(dir, crate::output::OutputKind::JointIndex, |tmp| {
            let write = || -> Result<()> {
                for (sub, index) in [(IMAGE_DIR, &self.images), (TEXT_DIR, &self.texts)] {
                    let d = tmp.join(sub);
                    fs::create_dir_all(&d).map_err(|source| crate::io::IoError::Os {
                        path: d.clone(),
                        source,
                    })?;
                    index.write_into(&d)?;
                }
                crate::io::atomic_write_bytes(&tmp.join(IMAGE_IDS), &to_json(&self.image_ids))?;
                crate::io::atomic_write_bytes(&tmp.join(TEXTS), &to_json(&self.text_entries))?;
                // The manifest goes last: a folder without one is never mistaken for an index.
                crate::io::atomic_write_bytes(&tmp.join(MANIFEST), &to_json(&self.manifest))?;
                Ok(())
            };
            write().map_err(Into::into)
        })
        .map_err(|e| match e.downcast::<IndexError>() {
            Ok(e) => *e,
            Err(e) => IndexError::Hnsw {
                path: dir.to_path_buf(),
                why: e.to_string(),
            },
        })
    }

    /// Loads an index folder. With `expected_fingerprint`, an index built by another model is an
    /// error ([`IndexError::ModelMismatch`]); so is a missing folder or file, a truncated or
    /// altered file, or another format version.
    pub fn load(dir: &Path, expected_fingerprint: Option<&str>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(IndexError::Missing {
                path: dir.to_path_buf(),
            });
        }
        let manifest_path = dir.join(MANIFEST);
        let value: serde_json::Value = read_json(&manifest_path)?;
        let corrupt = |why: String| IndexError::Corrupt {
            path: manifest_path.clone(),
            why,
        };
        let version = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| corrupt("no format_version".into()))?;
        if version != u64::from(FORMAT_VERSION) {
            return Err(IndexError::FormatVersion {
                path: manifest_path.clone(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        if let Some(expected) = expected_fingerprint {
            if expected != manifest.model_fingerprint {
                return Err(IndexError::ModelMismatch {
                    path: dir.to_path_buf(),
                    expected: expected.to_string(),
                    found: manifest.model_fingerprint,
                });
            }
        }
        let images = VectorIndex::load(&dir.join(IMAGE_DIR))?;
        let texts = VectorIndex::load(&dir.join(TEXT_DIR))?;
        for (what, index, count) in [
            ("images", &images, manifest.images),
            ("texts", &texts, manifest.texts),
        ] {
            if index.len() != count || index.dim() != manifest.dim {
                return Err(corrupt(format!(
                    "{what}: manifest says {count} x {}, the index holds {} x {}",
                    manifest.dim,
                    index.len(),
                    index.dim()
                )));
            }
        }
        let image_ids: Vec<String> = read_json(&dir.join(IMAGE_IDS))?;
        let text_entries: Vec<TextEntry> = read_json(&dir.join(TEXTS))?;
        check_entries(manifest.images, &image_ids, manifest.texts, &text_entries).map_err(|e| {
            IndexError::Corrupt {
                path: dir.to_path_buf(),
                why: e.to_string(),
            }
        })?;
        Ok(JointIndex {
            manifest,
            images,
            texts,
            image_ids,
            text_entries,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The image graph and embeddings.
    pub fn images(&self) -> &VectorIndex {
        &self.images
    }

    /// The text graph and embeddings.
    pub fn texts(&self) -> &VectorIndex {
        &self.texts
    }

    /// Image ids (paths), by image row.
    pub fn image_ids(&self) -> &[String] {
        &self.image_ids
    }

    /// Texts, by text row.
    pub fn text_entries(&self) -> &[TextEntry] {
        &self.text_entries
    }

    /// The `k` texts most similar to an image embedding (a unit vector), best first; through
    /// the HNSW graph with the manifest's `ef_search`, or by brute force when `exact`.
    /// A text held by several entries (the same caption for several images) is answered once,
    /// at its best score, so fewer than `k` hits come back only when fewer distinct texts exist.
    /// `k = 0` or `k` above the number of texts is an error.
    pub fn query_by_image_embedding(
        &self,
        query: &[f32],
        k: usize,
        exact: bool,
    ) -> Result<Vec<Hit>> {
        let n = self.texts.len();
        let mut want = k;
        loop {
            let hits = search(&self.texts, query, want, exact)?;
            let mut seen = std::collections::HashSet::new();
            let distinct: Vec<Hit> = hits
                .into_iter()
                .filter(|&(id, _)| seen.insert(self.text_entries[id].text.as_str()))
                .take(k)
                .map(|(id, score)| Hit {
                    id,
                    name: self.text_entries[id].text.clone(),
                    score,
                })
                .collect();
            if distinct.len() >= k || want >= n {
                return Ok(distinct);
            }
            want = (want * 4).min(n);
        }
    }

    /// The `k` images most similar to a text embedding, as [`Self::query_by_image_embedding`].
    pub fn query_by_text_embedding(
        &self,
        query: &[f32],
        k: usize,
        exact: bool,
    ) -> Result<Vec<Hit>> {
        let hits = search(&self.images, query, k, exact)?;
        Ok(hits
            .into_iter()
            .map(|(id, score)| Hit {
                id,
                name: self.image_ids[id].clone(),
                score,
            })
            .collect())
    }
}

fn search(index: &VectorIndex, query: &[f32], k: usize, exact: bool) -> Result<Vec<(usize, f32)>> {
    if exact {
        index.search_exact(query, k)
    } else {
        index.search(query, k, index.params().ef_search)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    if !path.is_file() {
        return Err(IndexError::Missing {
            path: path.to_path_buf(),
        });
    }
    let bytes = fs::read(path).map_err(|source| crate::io::IoError::Os {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| IndexError::Corrupt {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Pretty JSON of the plain data the index writes (serialising it cannot fail).
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("plain data serialises to JSON")
}
