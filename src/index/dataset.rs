//! Indexing a dataset with a model: which records ([`Subset`]), which texts
//! ([`dataset_texts`]: one prompt-ensembled embedding per class, or every caption), and the
//! index folder itself ([`build_index`]), a [`JointIndex`] whose manifest names the model
//! that built it. `siam index`, `siam train` (its `<out>/index`) and `siam eval` use these.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use siam_data::dataset::{Dataset, DatasetKind, OnBadImage, Split};

use super::{HnswParams, IndexError, JointIndex, ModelSource, TextEntry, VectorIndex};
use crate::embed::{embed_records, embed_texts, ensemble, EmbedError, ImageEmbeddings};
use crate::model::Encoder;
use crate::progress::Progress;

/// Errors indexing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetIndexError {
    /// The dataset has no record in the split asked for.
    #[error("{name}: the dataset has no {split} split (train {train}, val {val}, test {test} images); use --split all, or a split it has")]
    EmptySplit {
        /// The dataset's name (its root when it has none).
        name: String,
        /// The split asked for.
        split: Split,
        /// Training images.
        train: usize,
        /// Validation images.
        val: usize,
        /// Test images.
        test: usize,
    },
    /// The model's files could not be read to fingerprint them.
    #[error("{path}: reading the model to fingerprint it: {cause}")]
    Fingerprint {
        /// The model.
        path: std::path::PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Embedding images or texts failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// Building or writing the index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The model folder's learned prompts could not be used.
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
}

/// Which records of a dataset a command works on: all of them, or one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    /// Every record.
    All,
    /// The records of one split.
    Only(Split),
}

/// A `--split` value that is neither `all` nor a split name.
#[derive(Debug, thiserror::Error)]
#[error("unknown split {0:?}: expected all, train, val or test")]
pub struct UnknownSubset(String);

impl FromStr for Subset {
    type Err = UnknownSubset;
    fn from_str(s: &str) -> Result<Self, UnknownSubset> {
        if s.trim().eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        s.parse::<Split>()
            .map(Self::Only)
            .map_err(|_| UnknownSubset(s.to_string()))
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Only(s) => s.fmt(f),
        }
    }
}

impl Subset {
    /// The records of `ds` in this subset; an error if a split is empty.
    pub fn records(self, ds: &Dataset) -> Result<Vec<usize>, DatasetIndexError> {
        let split = match self {
            Self::All => return Ok((0..ds.len()).collect()),
            Self::Only(s) => s,
        };
        let idx = ds.indices_of(split);
        if idx.is_empty() {
            let (train, val, test) = ds.split_counts();
            // The dataset's own name (a table's root is its folder, empty in the working folder).
            let name = if ds.name.is_empty() {
                ds.root.display().to_string()
            } else {
                ds.name.clone()
            };
            return Err(DatasetIndexError::EmptySplit {
                name,
                split,
                train,
                val,
                test,
            });
        }
        Ok(idx)
    }
}

/// One embedding per class of a label dataset from its prompt texts (the dataset's templates),
/// ensembled and re-normalised (CLIP's prompt ensembling); row-major `classes x d`.
pub fn template_class_texts(enc: &Encoder, ds: &Dataset) -> Result<Vec<f32>, EmbedError> {
    let mut out = Vec::with_capacity(ds.labels.len() * enc.dim());
    for c in 0..ds.labels.len() {
        let prompts: Vec<&str> = ds.label_texts[c]
            .iter()
            .map(|&t| ds.texts[t].as_str())
            .collect();
        out.extend(ensemble(enc, &prompts)?);
    }
    Ok(out)
}

/// The texts ranked against a dataset's images, embedded with `enc`. Label datasets: one
/// ensembled embedding per class (the re-normalised mean of its prompt-text embeddings, CLIP's
/// prompt ensembling), or the model folder's learned prompts when it has them for every
/// class. Caption datasets: one per caption of the `records` (whose position in
/// `records` is the caption's [`TextEntry::image`]).
pub fn dataset_texts(
    enc: &Encoder,
    ds: &Dataset,
    records: &[usize],
    progress: &dyn Progress,
) -> Result<(Vec<f32>, Vec<TextEntry>), DatasetIndexError> {
    match ds.kind {
        DatasetKind::Labels => {
            let entries = (0..ds.labels.len())
                .map(|c| TextEntry {
                    text: ds.labels[c].clone(),
                    image: None,
                    label: Some(c),
                })
                .collect();
            // A model folder's learned prompts (siam train --prompt) replace the templates.
            if let Some(v) = crate::prompt::learned_class_embeddings(enc, &ds.labels)? {
                return Ok((v, entries));
            }
            Ok((template_class_texts(enc, ds)?, entries))
        }
        DatasetKind::Captions => {
            let mut entries = Vec::new();
            for (pos, &r) in records.iter().enumerate() {
                for &t in &ds.records[r].texts {
                    entries.push(TextEntry {
                        text: ds.texts[t].clone(),
                        image: Some(pos),
                        label: None,
                    });
                }
            }
            let texts: Vec<&str> = entries.iter().map(|e| e.text.as_str()).collect();
            progress.start("captions", texts.len());
            let out = embed_texts(enc, &texts, 256, &mut |n| progress.set(n))?;
            progress.finish();
            Ok((out, entries))
        }
    }
}

/// Embeds the images `records` of `ds` with `enc`, reporting to `progress` as stage `stage`.
#[allow(clippy::too_many_arguments)]
pub fn embed_dataset_images(
    enc: &Encoder,
    ds: &Arc<Dataset>,
    records: &[usize],
    batch_size: usize,
    threads: usize,
    on_bad_image: OnBadImage,
    stage: &str,
    progress: &dyn Progress,
) -> Result<ImageEmbeddings, EmbedError> {
    progress.start(stage, records.len());
    let out = embed_records(
        enc,
        Arc::clone(ds),
        records,
        batch_size,
        threads,
        on_bad_image,
        &mut |n| progress.set(n),
    );
    progress.finish();
    out
}

/// How [`build_index`] embeds and builds.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// HNSW parameters of both graphs.
    pub params: HnswParams,
    /// Images per embedding batch.
    pub batch_size: usize,
    /// Decoding threads.
    pub threads: usize,
}

/// What [`build_index`] indexed.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// Images in the index.
    pub images: usize,
    /// Texts in the index.
    pub texts: usize,
    /// Images skipped as unreadable (count and the first few, named).
    pub skipped: siam_data::pipeline::BadImageSummary,
}

/// Embeds `records` of `ds` and their texts with `enc` (loaded from `model_path`, with `arch`)
/// and writes the index folder `out` (a [`JointIndex`], written under a temporary name and
/// renamed). Unreadable images are skipped and counted.
#[allow(clippy::too_many_arguments)]
pub fn build_index(
    enc: &Encoder,
    model_path: &Path,
    arch: Option<&str>,
    ds: Arc<Dataset>,
    records: &[usize],
    out: &Path,
    opts: BuildOptions,
    progress: &dyn Progress,
) -> Result<Indexed, DatasetIndexError> {
    let fingerprint = crate::fingerprint::model_fingerprint(model_path, arch).map_err(|cause| {
        DatasetIndexError::Fingerprint {
            path: model_path.to_path_buf(),
            cause,
        }
    })?;
    let images = embed_dataset_images(
        enc,
        &ds,
        records,
        opts.batch_size,
        opts.threads,
        OnBadImage::Skip,
        "images",
        progress,
    )?;
    let kept: Vec<usize> = images.kept.iter().map(|&i| records[i]).collect();
    let image_ids: Vec<String> = kept.iter().map(|&r| ds.records[r].image.name()).collect();
    let (texts, entries) = dataset_texts(enc, &ds, &kept, progress)?;
    let graph = |vectors: &[f32], stage: &str| {
        progress.start(stage, vectors.len() / enc.dim().max(1));
        let built = VectorIndex::build_with_progress(vectors, enc.dim(), opts.params, &|k| {
            progress.inc(k as usize)
        });
        progress.finish();
        built
    };
    let image_graph = graph(&images.data, "image graph")?;
    let text_graph = graph(&texts, "text graph")?;
    let index = JointIndex::from_parts(&fingerprint, image_graph, image_ids, text_graph, entries)?
        .with_model_source(ModelSource {
            path: std::fs::canonicalize(model_path).unwrap_or_else(|_| model_path.to_path_buf()),
            arch: arch.map(String::from),
        });
    index.save(out)?;
    Ok(Indexed {
        images: index.manifest().images,
        texts: index.manifest().texts,
        skipped: images.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_and_name_the_bad_value() {
        assert_eq!("all".parse::<Subset>().unwrap(), Subset::All);
        assert_eq!(
            "validation".parse::<Subset>().unwrap(),
            Subset::Only(Split::Val)
        );
        let e = "validation-x".parse::<Subset>().unwrap_err().to_string();
        assert!(e.contains("validation-x") && e.contains("all"), "{e}");
    }

    #[test]
    fn an_empty_split_is_an_error_naming_the_counts() {
        let full = siam_data::synthetic::demo(10, 16, 0);
        let ds = full.subset(&full.indices_of(Split::Train));
        let e = Subset::Only(Split::Val)
            .records(&ds)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no val split") && e.contains("val 0"), "{e}");
        assert_eq!(Subset::All.records(&ds).unwrap().len(), ds.len());
        let val = full.indices_of(Split::Val);
        assert_eq!(Subset::Only(Split::Val).records(&full).unwrap(), val);
    }
}
