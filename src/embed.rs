//! Embedding many images or texts with an [`Encoder`], in batches, with decoding running ahead
//! of the model on worker threads. The callers (`siam embed`, `classify`, `index`, `eval`) get
//! L2-normalised rows and the list of images that could not be read. [`ZeroShotClasses`] reads
//! zero-shot candidate labels and prompt templates (`siam classify`, `siam pseudo-label`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use siam_data::dataset::{Dataset, DatasetKind, ImageSource, OnBadImage, Record, Split};
use siam_data::pipeline::{BadImageSummary, Loader, LoaderOptions, PipelineError};

use crate::model::encoder::{Encoder, EncoderError};

/// File extensions read as images when a folder is given.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// Errors while embedding.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// An image path or folder that does not exist.
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    /// A folder that holds no image file.
    #[error("{0}: no image files (.jpg, .jpeg, .png, .webp, .bmp, .gif) in this folder")]
    EmptyFolder(PathBuf),
    /// A folder could not be listed.
    #[error("{path}: {cause}")]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// An image could not be read (with the fail policy).
    #[error(transparent)]
    Image(#[from] PipelineError),
    /// The model refused the input.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// The model folder's learned prompts could not be used.
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
    /// Every image was unreadable.
    #[error("none of the {count} image(s) could be read: {first}")]
    NothingRead {
        /// Images given.
        count: usize,
        /// The first unreadable ones with their causes.
        first: String,
    },
}

/// Embedded images: rows for the images that could be read, in input order.
#[derive(Debug, Clone, Default)]
pub struct ImageEmbeddings {
    /// Index (into the input list) of each row.
    pub kept: Vec<usize>,
    /// Row-major `kept.len() x dim`, unit rows.
    pub data: Vec<f32>,
    /// Embedding size.
    pub dim: usize,
    /// Images left out (skip policy).
    pub skipped: BadImageSummary,
}

/// Expands command-line image arguments: files as given, folders walked recursively for image
/// files (sorted, so runs are reproducible).
pub fn expand_image_args(args: &[PathBuf]) -> Result<Vec<PathBuf>, EmbedError> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let before = out.len();
            walk(a, &mut out)?;
            if out.len() == before {
                return Err(EmbedError::EmptyFolder(a.clone()));
            }
        } else if a.exists() {
            out.push(a.clone());
        } else {
            return Err(EmbedError::NotFound(a.clone()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), EmbedError> {
    let rd = std::fs::read_dir(dir).map_err(|cause| EmbedError::ReadDir {
        path: dir.to_path_buf(),
        cause,
    })?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// A dataset of plain image files (no texts), so the data pipeline can decode them.
pub fn files_dataset(paths: &[PathBuf]) -> Dataset {
    Dataset {
        name: "images".into(),
        root: PathBuf::from("."),
        kind: DatasetKind::Captions,
        texts: Vec::new(),
        labels: Vec::new(),
        label_texts: Vec::new(),
        records: paths
            .iter()
            .map(|p| Record {
                image: ImageSource::File(p.clone()),
                texts: Vec::new(),
                label: None,
            })
            .collect(),
        splits: vec![Split::Test; paths.len()],
        missing: Vec::new(),
    }
}

/// Embeds the records `indices` of `ds` in batches of `batch`, decoding on `threads` workers.
/// `progress` is called with the number of images done after each batch.
pub fn embed_records(
    enc: &Encoder,
    ds: Arc<Dataset>,
    indices: &[usize],
    batch: usize,
    threads: usize,
    on_bad_image: OnBadImage,
    progress: &mut dyn FnMut(usize),
) -> Result<ImageEmbeddings, EmbedError> {
    let batch = batch.max(1);
    let batches: Vec<Vec<usize>> = indices.chunks(batch).map(<[usize]>::to_vec).collect();
    let position: std::collections::HashMap<usize, usize> =
        indices.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let loader = Loader::new(
        ds,
        enc.preprocessor(),
        batches,
        LoaderOptions {
            threads: threads.max(1),
            on_bad_image,
            ..LoaderOptions::default()
        },
    );
    let mut out = ImageEmbeddings {
        dim: enc.dim(),
        ..Default::default()
    };
    let mut done = 0;
    let mut loader = loader;
    for b in loader.by_ref() {
        let b = b?;
        done += b.len() + b.skipped.len();
        if !b.is_empty() {
            out.data.extend(enc.embed_pixels(&b.pixels)?);
            out.kept.extend(b.indices.iter().map(|r| position[r]));
        }
        progress(done);
    }
    out.skipped = loader.summary().clone();
    if out.kept.is_empty() && !indices.is_empty() {
        return Err(EmbedError::NothingRead {
            count: indices.len(),
            first: out
                .skipped
                .first
                .iter()
                .map(|(_, why)| why.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(out)
}

/// Embeds image files (see [`embed_records`]).
pub fn embed_image_files(
    enc: &Encoder,
    paths: &[PathBuf],
    batch: usize,
    threads: usize,
    on_bad_image: OnBadImage,
    progress: &mut dyn FnMut(usize),
) -> Result<ImageEmbeddings, EmbedError> {
    let ds = Arc::new(files_dataset(paths));
    let idx: Vec<usize> = (0..paths.len()).collect();
    embed_records(enc, ds, &idx, batch, threads, on_bad_image, progress)
}

/// Embeds texts in batches of `batch`; `progress` gets the number done.
pub fn embed_texts(
    enc: &Encoder,
    texts: &[&str],
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f32>, EmbedError> {
    let mut out = Vec::with_capacity(texts.len() * enc.dim());
    let mut done = 0;
    for chunk in texts.chunks(batch.max(1)) {
        out.extend(enc.embed_texts(chunk)?);
        done += chunk.len();
        progress(done);
    }
    Ok(out)
}

/// One class embedding from its prompt texts: the normalised prompt embeddings averaged and
/// re-normalised (CLIP's prompt ensembling, Radford et al. 2021, §3.1.4).
pub fn ensemble(enc: &Encoder, prompts: &[&str]) -> Result<Vec<f32>, EmbedError> {
    let d = enc.dim();
    let mut mean = vec![0f32; d];
    for row in enc.embed_texts(prompts)?.chunks(d) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    normalize(&mut mean);
    Ok(mean)
}

/// CLIP's prompt template, used when none is given.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// Errors reading zero-shot candidate labels and templates.
#[derive(Debug, thiserror::Error)]
pub enum ClassesError {
    /// A labels file could not be read.
    #[error("{path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// A labels file without a non-blank line.
    #[error("{0}: no text lines")]
    EmptyFile(PathBuf),
    /// No label was given at all.
    #[error("no labels: give --labels a,b,c or --labels-file FILE")]
    NoLabels,
    /// A template without the `{}` the label goes into.
    #[error("template {0:?} has no {{}} for the label")]
    Template(String),
}

/// The trimmed, non-blank lines of a text file; a file without any is an error.
pub fn read_lines(path: &Path) -> Result<Vec<String>, ClassesError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ClassesError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(ClassesError::EmptyFile(path.to_path_buf()));
    }
    Ok(lines)
}

/// Candidate labels and their prompt templates for zero-shot classification (`siam classify`,
/// `siam pseudo-label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroShotClasses {
    /// The labels, in order.
    pub labels: Vec<String>,
    /// The templates (`{}` is the label), ensembled per label.
    pub templates: Vec<String>,
}

impl ZeroShotClasses {
    /// `labels` (trimmed, blank ones dropped) followed by the lines of `labels_file`, with
    /// `templates` (each must hold `{}`; none: [`DEFAULT_TEMPLATE`]).
    pub fn new(
        labels: &[String],
        labels_file: Option<&Path>,
        templates: &[String],
    ) -> Result<Self, ClassesError> {
        let mut all: Vec<String> = labels
            .iter()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(f) = labels_file {
            all.extend(read_lines(f)?);
        }
        if all.is_empty() {
            return Err(ClassesError::NoLabels);
        }
        if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
            return Err(ClassesError::Template(t.clone()));
        }
        let templates = if templates.is_empty() {
            vec![DEFAULT_TEMPLATE.to_string()]
        } else {
            templates.to_vec()
        };
        Ok(Self {
            labels: all,
            templates,
        })
    }

    /// One embedding per label, row-major `labels x dim` ([`class_embeddings`]: the model's
    /// learned prompts when it has them for every label, else the templates ensembled).
    pub fn embed(&self, enc: &Encoder) -> Result<Vec<f32>, EmbedError> {
        class_embeddings(enc, &self.labels, &self.templates)
    }
}

/// Zero-shot class embeddings: each label through every template (`{}` is the label; no
/// templates means the bare label), ensembled with [`ensemble`]; row-major `labels x dim`.
/// A model folder with learned prompts (`siam train --prompt`) for every label uses those
/// instead of the templates.
pub fn class_embeddings(
    enc: &Encoder,
    labels: &[String],
    templates: &[String],
) -> Result<Vec<f32>, EmbedError> {
    if let Some(v) = crate::prompt::learned_class_embeddings(enc, labels)? {
        return Ok(v);
    }
    template_class_embeddings(enc, labels, templates)
}

/// [`class_embeddings`] from the templates only, learned prompts or not.
pub fn template_class_embeddings(
    enc: &Encoder,
    labels: &[String],
    templates: &[String],
) -> Result<Vec<f32>, EmbedError> {
    let mut out = Vec::with_capacity(labels.len() * enc.dim());
    for label in labels {
        let prompts: Vec<String> = if templates.is_empty() {
            vec![label.clone()]
        } else {
            templates.iter().map(|t| t.replace("{}", label)).collect()
        };
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        out.extend(ensemble(enc, &refs)?);
    }
    Ok(out)
}

/// Scales `v` to unit length (left as is if it is zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Softmax of `scale * cosine` over classes for one image: CLIP's zero-shot probabilities.
pub fn class_probabilities(image: &[f32], classes: &[f32], scale: f32) -> Vec<f32> {
    let d = image.len();
    let logits: Vec<f32> = classes
        .chunks(d)
        .map(|c| scale * c.iter().zip(image).map(|(a, b)| a * b).sum::<f32>())
        .collect();
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_a_softmax_of_scaled_cosines() {
        // Two classes, cosines 1 and 0, scale ln(1+e)... hand value: softmax([s, 0]).
        let p = class_probabilities(&[1.0, 0.0], &[1.0, 0.0, 0.0, 1.0], 2.0);
        let want0 = 2f32.exp() / (2f32.exp() + 1.0);
        assert!((p[0] - want0).abs() < 1e-6 && (p[0] + p[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn folder_arguments_expand_sorted_and_empty_folder_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.png"), b"x").unwrap();
        std::fs::write(d.path().join("a.JPG"), b"x").unwrap();
        std::fs::write(d.path().join("notes.txt"), b"x").unwrap();
        let got = expand_image_args(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(got, vec![d.path().join("a.JPG"), d.path().join("b.png")]);
        let e = tempfile::tempdir().unwrap();
        assert!(matches!(
            expand_image_args(&[e.path().to_path_buf()]),
            Err(EmbedError::EmptyFolder(_))
        ));
        assert!(matches!(
            expand_image_args(&[d.path().join("nope.jpg")]),
            Err(EmbedError::NotFound(_))
        ));
    }
}
