//! Karpathy split files (`dataset_flickr8k.json`, `dataset_flickr30k.json`,
//! `dataset_coco.json`), from Karpathy & Fei-Fei 2015, "Deep Visual-Semantic Alignments for
//! Generating Image Descriptions", used by most image-text retrieval papers:
//! `{"images": [{"filepath"?, "filename", "split": "train|val|test|restval",
//! "sentences": [{"raw", "tokens"}]}], "dataset"}`. `restval` counts as train, as in
//! VSE++ (Faghri et al. 2018). Captions are the `raw` sentences (or the tokens
//! joined by spaces where `raw` is absent).

use super::resolve_under;
use crate::dataset::{
    Dataset, DatasetBuilder, DatasetError, DatasetKind, ImageSource, OpenOptions, Result, Split,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

#[derive(Deserialize)]
struct KarpathyImage {
    #[serde(default)]
    filepath: Option<String>,
    filename: String,
    split: String,
    sentences: Vec<KarpathySentence>,
}

#[derive(Deserialize)]
struct KarpathySentence {
    #[serde(default)]
    raw: Option<String>,
    #[serde(default)]
    tokens: Vec<String>,
}

/// Folders beside the JSON where the published archives unpack their images.
const IMAGE_DIRS: &[&str] = &[
    "",
    "images",
    "Images",
    "Flicker8k_Dataset",
    "Flickr8k_Dataset",
    "flickr30k-images",
    "flickr30k_images",
];

fn relative(img: &KarpathyImage) -> String {
    match img.filepath.as_deref().filter(|s| !s.is_empty()) {
        Some(dir) => format!("{dir}/{}", img.filename),
        None => img.filename.clone(),
    }
}

pub(super) fn open(path: &Path, opts: &OpenOptions) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    let file: KarpathyFile = serde_json::from_slice(&bytes).map_err(|e| {
        DatasetError::malformed(path, e.line(), format!("not a Karpathy split file ({{\"images\": [{{\"filename\", \"split\", \"sentences\": [{{\"raw\"}}]}}]}}): {e}"))
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let root: PathBuf = match &opts.image_root {
        Some(r) => r.clone(),
        None => file
            .images
            .first()
            .and_then(|first| {
                let rel = relative(first);
                IMAGE_DIRS.iter().map(|d| dir.join(d)).find(|r| {
                    resolve_under(r, &rel, path, 1)
                        .map(|p| p.is_file())
                        .unwrap_or(false)
                })
            })
            .unwrap_or(dir),
    };
    let mut b = DatasetBuilder::new(super::dataset_name(path), &root, DatasetKind::Captions);
    for (i, img) in file.images.iter().enumerate() {
        let n = i + 1;
        let rel = relative(img);
        let at =
            |msg: String| DatasetError::malformed(path, n, format!("image #{n} ({rel}): {msg}"));
        let split: Split = img
            .split
            .parse()
            .map_err(|e: crate::dataset::UnknownName| at(e.to_string()))?;
        let file_path = resolve_under(&root, &rel, path, n)?;
        if img.sentences.is_empty() {
            return Err(at("no sentences".into()));
        }
        let mut raw = Vec::with_capacity(img.sentences.len());
        for s in &img.sentences {
            let t = match &s.raw {
                Some(r) => r.trim().to_string(),
                None => s.tokens.join(" "),
            };
            if t.is_empty() {
                return Err(at("an empty sentence".into()));
            }
            raw.push(t);
        }
        if !file_path.is_file() {
            b.add_missing(file_path);
            continue;
        }
        let mut texts = Vec::with_capacity(raw.len());
        for t in &raw {
            let id = b.text(t);
            if !texts.contains(&id) {
                texts.push(id);
            }
        }
        b.push(ImageSource::File(file_path), texts, None, Some(split), rel);
    }
    b.finish(path, opts)
}
