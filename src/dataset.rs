//! The data section every command that reads a dataset shares ([`DataConfig`]: `--data`,
//! `--templates`, `--split-seed`, `--on-bad-image`), and the split a model was trained with
//! ([`SplitRecord`], saved in its `siam.json`), so `siam eval` and `siam index` hold out the
//! same images training held out.
//!
//! A dataset whose files carry no split is split by a seeded hash per class
//! (`siam_data::dataset::OpenOptions`): the seed and the val/test fractions decide which
//! images are held out. `siam train` splits with `--split-seed` (default `--seed`) and
//! records it; `eval` and `index` use the recorded split for that dataset unless
//! `--split-seed` says otherwise, and count the evaluated images the model was trained on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use siam_data::dataset::{Dataset, DatasetError, OnBadImage, OpenOptions, Split};
use siam_data::templates::{TemplateError, Templates};

/// Errors opening a command's dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The command needs `--data`.
    #[error("--data: required (a dataset to read)")]
    Missing,
    /// `--data` given several times to a command that reads one dataset.
    #[error("--data is given {0} times; this command reads one dataset")]
    Several(usize),
    /// `--templates` names neither a preset nor a readable template file.
    #[error("--templates {given}: {cause}")]
    Templates {
        /// The value given.
        given: String,
        /// Why it is unusable.
        cause: TemplateError,
    },
    /// The dataset could not be opened.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
}

/// `--data`, `--templates`, `--split-seed`, `--on-bad-image`: how `train`, `eval` and `index`
/// open a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct DataConfig {
    /// A dataset: image folder, captions table (.csv/.tsv/.jsonl), Karpathy split JSON, CIFAR
    /// batches folder, or webdataset .tar shard(s). `siam train` without it trains on the
    /// synthetic demo set; only `siam eval --alphas` takes several (the first is in-domain).
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Prompt templates for label texts: a preset (photo, imagenet7, cifar) or a file with one
    /// template per line, each with {} for the label.
    #[arg(long, default_value = "photo")]
    pub templates: String,
    /// Seed of the train/val/test split of datasets whose files carry none. Default: train
    /// uses --seed; eval and index use the split the model was trained with (recorded in its
    /// siam.json) for that dataset, else 0.
    #[arg(long)]
    pub split_seed: Option<u64>,
    /// What to do with an unreadable image: skip (counted and named) or fail.
    #[arg(long, default_value = "skip")]
    pub on_bad_image: OnBadImage,
}

impl Default for DataConfig {
    fn default() -> Self {
        crate::settings::clap_defaults()
    }
}

/// Which dataset a split belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatasetId {
    /// A dataset on disk, by its canonical path.
    Path {
        /// `--data`, canonicalised.
        path: PathBuf,
    },
    /// The synthetic demo set (`siam train` without `--data`).
    Demo {
        /// Images per label.
        per_class: usize,
        /// Image side in pixels.
        image_size: u32,
    },
}

impl DatasetId {
    /// The identity of the dataset at `path` (its canonical path, else the path as given).
    pub fn of_path(path: &Path) -> Self {
        Self::Path {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        }
    }
}

/// The split a model was trained with: the dataset and the seeded split's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// The dataset.
    pub dataset: DatasetId,
    /// The split seed.
    pub seed: u64,
    /// Fraction of each class held out for validation.
    pub val_fraction: f64,
    /// Fraction of each class held out for the final test.
    pub test_fraction: f64,
}

impl SplitRecord {
    /// Whether `self` and `other` split the same dataset the same way.
    fn same_split(&self, other: &SplitRecord) -> bool {
        self == other
    }
}

/// A dataset opened for evaluating or indexing with a model.
#[derive(Debug)]
pub struct ModelData {
    /// The dataset, split as [`ModelData::split`] says.
    pub dataset: Dataset,
    /// The split used.
    pub split: SplitRecord,
    /// Whether the split is the one the model was trained with, taken from its `siam.json`.
    pub split_from_model: bool,
    /// Image names of the model's training split of this dataset, when the model recorded
    /// one for it.
    trained: Option<HashSet<String>>,
}

impl ModelData {
    /// How many of `records` the model was trained on (`None`: the model recorded no split
    /// for this dataset, so it cannot tell).
    pub fn trained_on(&self, records: &[usize]) -> Option<usize> {
        Some(self.count_in(records, self.trained.as_ref()?))
    }

    /// Whether the model recorded a split of this dataset (so [`ModelData::describe`] and
    /// [`ModelData::trained_on`] have something to say).
    pub fn model_split_known(&self) -> bool {
        self.trained.is_some()
    }

    /// One line saying which split is used and why.
    pub fn describe(&self) -> String {
        let s = &self.split;
        let why = if self.split_from_model {
            "the split the model was trained with, from its siam.json"
        } else if self.trained.is_some() {
            "given by --split-seed, NOT the split the model was trained with"
        } else {
            "the model records no split for this dataset"
        };
        format!(
            "split: seed {}, val {}, test {} ({why}; datasets whose files carry a split keep it)",
            s.seed, s.val_fraction, s.test_fraction
        )
    }
}

impl DataConfig {
    /// The one `--data` (`None` when not given).
    pub fn path(&self) -> Result<Option<&Path>, DataError> {
        match &self.data[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            several => Err(DataError::Several(several.len())),
        }
    }

    fn required(&self) -> Result<&Path, DataError> {
        self.path()?.ok_or(DataError::Missing)
    }

    /// Opens the dataset at `path` with these options, split by `--split-seed` (default 0).
    pub fn open_path(&self, path: &Path) -> Result<Dataset, DataError> {
        let opts = self.open_options(self.split_seed.unwrap_or(0))?;
        Ok(Dataset::open(path, &opts)?)
    }

    /// The options to open the dataset with, split by `seed`.
    pub fn open_options(&self, seed: u64) -> Result<OpenOptions, DataError> {
        let templates = Templates::from_name_or_file(&self.templates).map_err(|cause| {
            DataError::Templates {
                given: self.templates.clone(),
                cause,
            }
        })?;
        Ok(OpenOptions {
            seed,
            templates,
            on_bad_image: self.on_bad_image,
            ..OpenOptions::default()
        })
    }

    /// Opens `--data` (required) split by `seed`, with the record of that split.
    pub fn open(&self, seed: u64) -> Result<(Dataset, SplitRecord), DataError> {
        let path = self.required()?;
        let opts = self.open_options(seed)?;
        let ds = Dataset::open(path, &opts)?;
        let record = SplitRecord {
            dataset: DatasetId::of_path(path),
            seed,
            val_fraction: opts.val_fraction,
            test_fraction: opts.test_fraction,
        };
        Ok((ds, record))
    }

    /// Opens `--data` for a model that recorded `trained` (its `siam.json`'s split): with the
    /// model's split when it is of this dataset and `--split-seed` is not given, else with
    /// `--split-seed` (default 0). Knows which images the model was trained on whenever it
    /// recorded a split of this dataset.
    pub fn open_for_model(&self, trained: Option<&SplitRecord>) -> Result<ModelData, DataError> {
        let path = self.required()?;
        let id = DatasetId::of_path(path);
        let own = trained.filter(|r| r.dataset == id);
        let (seed, split_from_model) = match (self.split_seed, own) {
            (Some(s), _) => (s, own.is_some_and(|r| r.seed == s)),
            (None, Some(r)) => (r.seed, true),
            (None, None) => (0, false),
        };
        let mut opts = self.open_options(seed)?;
        if let (true, Some(r)) = (split_from_model, own) {
            opts.val_fraction = r.val_fraction;
            opts.test_fraction = r.test_fraction;
        }
        let dataset = Dataset::open(path, &opts)?;
        let split = SplitRecord {
            dataset: id,
            seed,
            val_fraction: opts.val_fraction,
            test_fraction: opts.test_fraction,
        };
        let trained = match own {
            None => None,
            Some(r) if r.same_split(&split) => Some(train_names(&dataset)),
            Some(r) => self.training_images(r)?,
        };
        Ok(ModelData {
            dataset,
            split,
            split_from_model,
            trained,
        })
    }
}

impl DataConfig {
    /// Whether `split` is a split of `--data`.
    pub fn is_split_of(&self, split: &SplitRecord) -> bool {
        matches!(self.path(), Ok(Some(p)) if split.dataset == DatasetId::of_path(p))
    }

    /// Image names of the training split `trained` describes, when it is a split of `--data`
    /// (`None` otherwise, or without `--data`).
    pub fn training_images(
        &self,
        trained: &SplitRecord,
    ) -> Result<Option<HashSet<String>>, DataError> {
        let Some(path) = self.path()? else {
            return Ok(None);
        };
        if trained.dataset != DatasetId::of_path(path) {
            return Ok(None);
        }
        let mut o = self.open_options(trained.seed)?;
        o.val_fraction = trained.val_fraction;
        o.test_fraction = trained.test_fraction;
        Ok(Some(train_names(&Dataset::open(path, &o)?)))
    }
}

impl ModelData {
    /// How many of `records` are in `trained` (image names).
    pub fn count_in(&self, records: &[usize], trained: &HashSet<String>) -> usize {
        records
            .iter()
            .filter(|&&r| trained.contains(&self.dataset.records[r].image.name()))
            .count()
    }
}

/// Image names of the training split.
fn train_names(ds: &Dataset) -> HashSet<String> {
    ds.indices_of(Split::Train)
        .into_iter()
        .map(|r| ds.records[r].image.name())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(dir: &Path) {
        for label in ["a", "b"] {
            let d = dir.join(label);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..20 {
                image::RgbImage::new(4, 4)
                    .save(d.join(format!("{i:02}.png")))
                    .unwrap();
            }
        }
    }

    #[test]
    fn the_models_split_is_used_and_other_seeds_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        folder(dir.path());
        let mut cfg = DataConfig {
            data: vec![dir.path().to_path_buf()],
            ..DataConfig::default()
        };
        let (_, trained) = cfg.open(7).unwrap();
        let own = cfg.open_for_model(Some(&trained)).unwrap();
        assert!(own.split_from_model);
        assert_eq!(own.split, trained);
        let test = own.dataset.indices_of(Split::Test);
        assert!(!test.is_empty());
        assert_eq!(own.trained_on(&test), Some(0));
        let all: Vec<usize> = (0..own.dataset.len()).collect();
        assert_eq!(own.trained_on(&all), Some(32));

        cfg.split_seed = Some(0);
        let other = cfg.open_for_model(Some(&trained)).unwrap();
        assert!(!other.split_from_model);
        assert!(other.describe().contains("NOT"));
        let test = other.dataset.indices_of(Split::Test);
        assert!(
            other.trained_on(&test).unwrap() > 0,
            "seeds 0 and 7 share no test image?"
        );

        let none = cfg.open_for_model(None).unwrap();
        assert_eq!(none.trained_on(&test), None);
    }
}
