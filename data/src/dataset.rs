//! The one image-text dataset type every format is read into.
//!
//! A [`Dataset`] is a list of [`Record`]s (one per image), a table of texts the records point
//! into, optional class names, and a [`Split`] per record:
//!
//! - **label datasets** ([`DatasetKind::Labels`]: image folders, CIFAR): each record has a
//!   `label`, and its `texts` are its label's prompt texts (label "cat" with the template
//!   `"a photo of a {}."` gives the text "a photo of a cat."), as in zero-shot CLIP.
//! - **caption datasets** ([`DatasetKind::Captions`]: captions tables, Karpathy JSON,
//!   webdataset shards, the synthetic demo set): each record has its own captions, and may
//!   also have a label (a `label` column, the demo set's "red circle").
//!
//! Texts are interned: two records with the same caption share one text index, so
//! text-to-image retrieval can treat every image holding that text as a match
//! ([`Dataset::images_of_text`]).
//!
//! Records point at their pixels through an [`ImageSource`]: a file, a byte range inside a file
//! (a member of a webdataset tar shard), bytes in memory, or an already decoded image (CIFAR,
//! the synthetic set). Nothing is decoded when a dataset is opened; the
//! [`crate::pipeline::Loader`] decodes in parallel.

use crate::formats::{self, Format};
use crate::templates::Templates;
use image::RgbImage;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Errors from opening or building a dataset. Each names the file and, where there is one,
/// the line or record.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The path given to [`Dataset::open`] does not exist.
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    /// The path exists but is none of the formats this crate reads.
    #[error("{path}: unknown dataset format ({why}); expected an image folder (root/<label>/*.jpg), a captions table (.csv, .tsv, .jsonl), a Karpathy split file (dataset_*.json), CIFAR binary batches or webdataset .tar shards")]
    UnknownFormat {
        /// The path.
        path: PathBuf,
        /// What was looked for and not found.
        why: String,
    },
    /// A row, record or header of a file is not what its format requires.
    #[error("{path}:{line}: {msg}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line (text formats) or record number (binary formats; 0 for the whole file).
        line: usize,
        /// What was expected.
        msg: String,
    },
    /// An image path in a table leaves the dataset root (absolute, or `..` above the root).
    #[error("{file}:{line}: image path {entry:?} escapes the dataset root {root}")]
    PathEscapesRoot {
        /// The table that names the path.
        file: PathBuf,
        /// 1-based line or record number.
        line: usize,
        /// The path as written.
        entry: String,
        /// The root it must stay under.
        root: PathBuf,
    },
    /// Image files named by the dataset do not exist and the policy is [`OnBadImage::Fail`].
    #[error("{count} image file(s) named by {file} do not exist, e.g. {}", first.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingFiles {
        /// The table or folder that names them.
        file: PathBuf,
        /// How many are missing.
        count: usize,
        /// The first few.
        first: Vec<PathBuf>,
    },
    /// The dataset (or a split asked for) holds no image.
    #[error("{0}: the dataset holds no image")]
    Empty(PathBuf),
    /// The label mapping file or template file is unusable.
    #[error("{path}: {msg}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Writing the demo set failed.
    #[error("writing {path}: {msg}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        msg: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

impl DatasetError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    /// A [`DatasetError::Malformed`]; control characters in `msg` (bytes of a hostile or
    /// binary file quoted in it: ESC, CR, ...) are escaped, so the message prints as one
    /// harmless line.
    pub(crate) fn malformed(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        let msg: String = msg.into();
        let msg = if msg.chars().any(char::is_control) {
            msg.chars()
                .flat_map(|c| {
                    let esc: Vec<char> = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        vec![c]
                    };
                    esc
                })
                .collect()
        } else {
            msg
        };
        Self::Malformed {
            path: path.into(),
            line,
            msg,
        }
    }
}

/// What to do with an image that cannot be read or decoded (and, at open time, with a file
/// that a table names but that does not exist). CLI: `--on-bad-image skip|fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadImage {
    /// Leave the image out, count it and name it in the run summary.
    #[default]
    Skip,
    /// Stop with an error naming the image.
    Fail,
}

impl FromStr for OnBadImage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            _ => Err(format!(
                "unknown bad-image policy {s:?}: expected skip or fail"
            )),
        }
    }
}

impl fmt::Display for OnBadImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Skip => "skip",
            Self::Fail => "fail",
        })
    }
}

/// Where a record's pixels come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// An image file (JPEG, PNG, WebP, BMP, GIF), decoded by the loader.
    File(PathBuf),
    /// `len` bytes at `offset` inside `path`: a member of an uncompressed webdataset tar shard.
    /// `name` is the member's name inside the shard (its extension tells the codec).
    FileRange {
        /// The shard.
        path: PathBuf,
        /// Byte offset of the member's data.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// `shard.tar/key.jpg`.
        name: String,
    },
    /// Encoded image bytes held in memory, with a name for messages and codec detection.
    Bytes(Arc<[u8]>, String),
    /// An already decoded image (CIFAR, the synthetic set), with a name for messages.
    Rgb(Arc<RgbImage>, String),
}

impl ImageSource {
    /// A name for messages and the bad-image summary: the path, or the in-memory name.
    pub fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::FileRange { name, .. } | Self::Bytes(_, name) | Self::Rgb(_, name) => {
                name.clone()
            }
        }
    }
}

/// One image with its texts and optional label.
#[derive(Debug, Clone)]
pub struct Record {
    /// The pixels.
    pub image: ImageSource,
    /// Indices into [`Dataset::texts`]: its captions, or its label's prompt texts.
    pub texts: Vec<usize>,
    /// Index into [`Dataset::labels`], if the dataset has classes.
    pub label: Option<usize>,
}

/// Which part of a dataset a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Used for training.
    Train,
    /// Held out for validation during training.
    Val,
    /// Held out for the final evaluation.
    Test,
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" | "restval" => Ok(Self::Train),
            "val" | "valid" | "validation" | "dev" => Ok(Self::Val),
            "test" | "testing" => Ok(Self::Test),
            _ => Err(format!("unknown split {s:?}: expected train, val or test")),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        })
    }
}

/// Whether the records' texts are label prompts or captions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// Every record has a label; its texts are the label's prompt texts.
    Labels,
    /// Every record has its own captions (and maybe a label).
    Captions,
}

/// How to open a dataset. `Default` gives seed 0, 10 % validation, 10 % test (used only where
/// the files do not say), the single template "a photo of a {}." and [`OnBadImage::Skip`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Force a format instead of detecting it from the path.
    pub format: Option<Format>,
    /// Seed of the deterministic split for formats whose files carry none.
    pub seed: u64,
    /// Fraction of each class (or of all images) put in [`Split::Val`] by the seeded split.
    pub val_fraction: f64,
    /// Fraction put in [`Split::Test`] by the seeded split.
    pub test_fraction: f64,
    /// Prompt templates turning a label into its texts.
    pub templates: Templates,
    /// Image folder: a file mapping folder names to label texts (JSON object, or lines
    /// `folder<TAB or space>text`). Default: `labels.json` / `labels.txt` in the root if present,
    /// else the folder name with `_` read as a space.
    pub label_map: Option<PathBuf>,
    /// Karpathy split file: the folder holding the images (default: beside the JSON, or its
    /// `images/`, `Images/`, `Flicker8k_Dataset/`, `Flickr8k_Dataset/`, `flickr30k-images/`).
    pub image_root: Option<PathBuf>,
    /// What to do with image files that a table names but that do not exist.
    pub on_bad_image: OnBadImage,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            format: None,
            seed: 0,
            val_fraction: 0.1,
            test_fraction: 0.1,
            templates: Templates::default(),
            label_map: None,
            image_root: None,
            on_bad_image: OnBadImage::Skip,
        }
    }
}

/// An image-text dataset: records, the texts they point into, class names, and a split per
/// record. See the module documentation.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// A short name (the file or folder name).
    pub name: String,
    /// The root image paths are resolved against.
    pub root: PathBuf,
    /// What the records' texts are.
    pub kind: DatasetKind,
    /// All distinct texts (captions and label prompts).
    pub texts: Vec<String>,
    /// Class names (empty if the dataset has no classes).
    pub labels: Vec<String>,
    /// For each class, the indices of its prompt texts in [`Dataset::texts`].
    pub label_texts: Vec<Vec<usize>>,
    /// One record per image.
    pub records: Vec<Record>,
    /// The split of each record (same length as `records`).
    pub splits: Vec<Split>,
    /// Files the dataset names that did not exist when it was opened (left out of `records`).
    pub missing: Vec<PathBuf>,
}

impl Dataset {
    /// Opens a dataset, detecting its format from `path` unless `opts.format` says:
    /// a folder of label folders is an image folder; `.csv`/`.tsv`/`.jsonl` a captions table;
    /// `dataset_*.json` (or any JSON with `images[].sentences`) a Karpathy split file; a folder
    /// with `data_batch_1.bin`, `test_batch.bin` or `train.bin` CIFAR; a `.tar` or a folder of
    /// `.tar` files webdataset shards.
    ///
    /// # Errors
    /// [`DatasetError`] naming the file and line for unreadable or malformed input, an empty
    /// dataset, paths escaping the root, and (with [`OnBadImage::Fail`]) missing image files.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Dataset> {
        if !path.exists() {
            return Err(DatasetError::NotFound(path.to_path_buf()));
        }
        let format = match opts.format {
            Some(f) => f,
            None => formats::detect(path)?,
        };
        formats::open(format, path, opts)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records of one split, as a dataset of its own (texts and labels are kept whole, so
    /// text and label indices stay valid).
    pub fn split(&self, s: Split) -> Dataset {
        self.subset(&self.indices_of(s))
    }

    /// Record indices of one split, ascending.
    pub fn indices_of(&self, s: Split) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.splits[i] == s).collect()
    }

    /// The records at `indices`, in that order, as a dataset of their own.
    ///
    /// # Panics
    /// If an index is out of range (a programmer error).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            name: self.name.clone(),
            root: self.root.clone(),
            kind: self.kind,
            texts: self.texts.clone(),
            labels: self.labels.clone(),
            label_texts: self.label_texts.clone(),
            records: indices.iter().map(|&i| self.records[i].clone()).collect(),
            splits: indices.iter().map(|&i| self.splits[i]).collect(),
            missing: self.missing.clone(),
        }
    }

    /// One line counting and naming (the first five of) the image files the dataset's files
    /// list but that did not exist, which were left out; `None` when none was.
    pub fn missing_summary(&self) -> Option<String> {
        if self.missing.is_empty() {
            return None;
        }
        let shown: Vec<String> = self
            .missing
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        Some(format!(
            "skipped {} record(s) naming missing image files{}: {}",
            self.missing.len(),
            if self.missing.len() > 5 {
                ", first 5"
            } else {
                ""
            },
            shown.join(", ")
        ))
    }

    /// The label of every record, or `None` if some record has none.
    pub fn record_labels(&self) -> Option<Vec<usize>> {
        self.records.iter().map(|r| r.label).collect()
    }

    /// For each text, the records holding it (the ground truth of text-to-image retrieval).
    pub fn images_of_text(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.texts.len()];
        for (i, r) in self.records.iter().enumerate() {
            for &t in &r.texts {
                out[t].push(i);
            }
        }
        out
    }

    /// Counts of records per split: (train, val, test).
    pub fn split_counts(&self) -> (usize, usize, usize) {
        let c = |s| self.splits.iter().filter(|&&x| x == s).count();
        (c(Split::Train), c(Split::Val), c(Split::Test))
    }
}

/// Builds a [`Dataset`] from records as a parser finds them: interns texts and labels, assigns
/// the seeded split where the file gives none, and expands labels into prompt texts.
#[derive(Debug)]
pub(crate) struct DatasetBuilder {
    name: String,
    root: PathBuf,
    kind: DatasetKind,
    texts: Vec<String>,
    text_ids: HashMap<String, usize>,
    labels: Vec<String>,
    label_ids: HashMap<String, usize>,
    records: Vec<Record>,
    splits: Vec<Option<Split>>,
    keys: Vec<String>,
    missing: Vec<PathBuf>,
}

impl DatasetBuilder {
    pub(crate) fn new(
        name: impl Into<String>,
        root: impl Into<PathBuf>,
        kind: DatasetKind,
    ) -> Self {
        Self {
            name: name.into(),
            root: root.into(),
            kind,
            texts: Vec::new(),
            text_ids: HashMap::new(),
            labels: Vec::new(),
            label_ids: HashMap::new(),
            records: Vec::new(),
            splits: Vec::new(),
            keys: Vec::new(),
            missing: Vec::new(),
        }
    }

    /// Index of `text`, adding it if new.
    pub(crate) fn text(&mut self, text: &str) -> usize {
        if let Some(&i) = self.text_ids.get(text) {
            return i;
        }
        self.texts.push(text.to_string());
        self.text_ids.insert(text.to_string(), self.texts.len() - 1);
        self.texts.len() - 1
    }

    /// Index of the class named `label`, adding it if new.
    pub(crate) fn label(&mut self, label: &str) -> usize {
        if let Some(&i) = self.label_ids.get(label) {
            return i;
        }
        self.labels.push(label.to_string());
        self.label_ids
            .insert(label.to_string(), self.labels.len() - 1);
        self.labels.len() - 1
    }

    /// Adds a record. `key` identifies it for the seeded split (its relative path).
    pub(crate) fn push(
        &mut self,
        image: ImageSource,
        texts: Vec<usize>,
        label: Option<usize>,
        split: Option<Split>,
        key: String,
    ) {
        self.records.push(Record {
            image,
            texts,
            label,
        });
        self.splits.push(split);
        self.keys.push(key);
    }

    /// Number of records so far.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Mutable access to the last record (to add captions to it).
    pub(crate) fn record_mut(&mut self, i: usize) -> &mut Record {
        &mut self.records[i]
    }

    pub(crate) fn add_missing(&mut self, p: PathBuf) {
        self.missing.push(p);
    }

    /// Finishes the dataset: checks missing files against the policy, assigns seeded splits,
    /// expands label prompts, and refuses an empty result. `file` names the source in errors.
    pub(crate) fn finish(mut self, file: &Path, opts: &OpenOptions) -> Result<Dataset> {
        if !self.missing.is_empty() && opts.on_bad_image == OnBadImage::Fail {
            return Err(DatasetError::MissingFiles {
                file: file.to_path_buf(),
                count: self.missing.len(),
                first: self.missing.iter().take(5).cloned().collect(),
            });
        }
        if self.records.is_empty() {
            return Err(DatasetError::Empty(file.to_path_buf()));
        }
        let splits = assign_splits(&self.splits, &self.keys, &self.records, opts);
        let mut label_texts = Vec::with_capacity(self.labels.len());
        for l in 0..self.labels.len() {
            let prompts = opts.templates.apply(&self.labels[l]);
            let ids: Vec<usize> = prompts.iter().map(|p| self.text(p)).collect();
            label_texts.push(ids);
        }
        if self.kind == DatasetKind::Labels {
            for r in &mut self.records {
                if let Some(l) = r.label {
                    r.texts = label_texts[l].clone();
                }
            }
        }
        Ok(Dataset {
            name: self.name,
            root: self.root,
            kind: self.kind,
            texts: self.texts,
            labels: self.labels,
            label_texts,
            records: self.records,
            splits,
            missing: self.missing,
        })
    }
}

/// The seeded split: within each class (or among all records if unlabelled), records without a
/// split from the file are ordered by a hash of (seed, key) and the first
/// `round(n * test_fraction)` go to test, the next `round(n * val_fraction)` to val, the rest to
/// train. The hash of the key (not the record's position) decides, so adding files to a folder
/// moves few others between splits; stratifying keeps every class in every split when it has
/// enough images.
fn assign_splits(
    given: &[Option<Split>],
    keys: &[String],
    records: &[Record],
    opts: &OpenOptions,
) -> Vec<Split> {
    let mut groups: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
    for (i, s) in given.iter().enumerate() {
        if s.is_none() {
            groups.entry(records[i].label).or_default().push(i);
        }
    }
    let mut out: Vec<Split> = given.iter().map(|s| s.unwrap_or(Split::Train)).collect();
    for (_, mut idx) in groups {
        idx.sort_by_key(|&i| (split_hash(opts.seed, &keys[i]), i));
        let n = idx.len() as f64;
        let n_test = (n * opts.test_fraction.clamp(0.0, 1.0)).round() as usize;
        let n_val = ((n * opts.val_fraction.clamp(0.0, 1.0)).round() as usize)
            .min(idx.len() - n_test.min(idx.len()));
        for (j, &i) in idx.iter().enumerate() {
            out[i] = if j < n_test {
                Split::Test
            } else if j < n_test + n_val {
                Split::Val
            } else {
                Split::Train
            };
        }
    }
    out
}

/// FNV-1a of the key, mixed with the seed by SplitMix64's finaliser: stable across platforms
/// and Rust versions (unlike `std`'s `DefaultHasher`).
pub(crate) fn split_hash(seed: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h ^ splitmix64(seed))
}

/// SplitMix64 (Steele, Lea, Flood 2014), used to derive independent seeds.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder_with(n_per: usize, labels: &[&str]) -> DatasetBuilder {
        let mut b = DatasetBuilder::new("t", "/r", DatasetKind::Labels);
        for l in labels {
            let li = b.label(l);
            for i in 0..n_per {
                b.push(
                    ImageSource::File(format!("/r/{l}/{i}.jpg").into()),
                    vec![],
                    Some(li),
                    None,
                    format!("{l}/{i}.jpg"),
                );
            }
        }
        b
    }

    #[test]
    fn seeded_split_is_stratified_and_deterministic() {
        let opts = OpenOptions::default();
        let a = builder_with(20, &["cat", "dog"])
            .finish(Path::new("x"), &opts)
            .unwrap();
        let b = builder_with(20, &["cat", "dog"])
            .finish(Path::new("x"), &opts)
            .unwrap();
        assert_eq!(a.splits, b.splits);
        assert_eq!(a.split_counts(), (32, 4, 4));
        for l in 0..2 {
            let test = (0..a.len())
                .filter(|&i| a.records[i].label == Some(l) && a.splits[i] == Split::Test)
                .count();
            assert_eq!(test, 2);
        }
        let other = OpenOptions {
            seed: 7,
            ..OpenOptions::default()
        };
        let c = builder_with(20, &["cat", "dog"])
            .finish(Path::new("x"), &other)
            .unwrap();
        assert_ne!(a.splits, c.splits);
    }

    #[test]
    fn label_records_get_prompt_texts() {
        let d = builder_with(2, &["cat"])
            .finish(Path::new("x"), &OpenOptions::default())
            .unwrap();
        assert_eq!(d.texts, vec!["a photo of a cat.".to_string()]);
        assert_eq!(d.records[1].texts, vec![0]);
        assert_eq!(d.label_texts, vec![vec![0]]);
    }

    #[test]
    fn empty_is_an_error_and_missing_fails_by_policy() {
        let b = DatasetBuilder::new("t", "/r", DatasetKind::Captions);
        assert!(matches!(
            b.finish(Path::new("x"), &OpenOptions::default()),
            Err(DatasetError::Empty(_))
        ));
        let mut b = builder_with(1, &["a"]);
        b.add_missing("/r/a/gone.jpg".into());
        let fail = OpenOptions {
            on_bad_image: OnBadImage::Fail,
            ..OpenOptions::default()
        };
        let e = b.finish(Path::new("x"), &fail).unwrap_err();
        assert!(e.to_string().contains("gone.jpg"), "{e}");
    }

    #[test]
    fn subset_keeps_text_indices() {
        let d = builder_with(3, &["a", "b"])
            .finish(Path::new("x"), &OpenOptions::default())
            .unwrap();
        let s = d.subset(&[4, 0]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.texts[s.records[0].texts[0]], "a photo of a b.");
        assert_eq!(s.record_labels(), Some(vec![1, 0]));
    }
}
