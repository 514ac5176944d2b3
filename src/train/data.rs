//! What a training batch and a validation set are made of, for each kind of dataset.
//!
//! - Label datasets (image folders, CIFAR): batches are P labels x K images
//!   ([`siam_data::sampler::ClassBalancedSampler`]); the text references of a batch are its
//!   distinct labels, each as one of its prompt texts; the mining label of an image and of a
//!   text is the class.
//! - Caption datasets: batches are P x K when every record has a label (so each batch holds hard
//!   negatives of the same class), else shuffled. Each image brings one of its captions; the
//!   text references are the batch's distinct captions. The mining label is the caption when
//!   every record has exactly one (identical captions are one positive), else the record.
//!
//! Validation mirrors this: label datasets rank one prompt per class against the images
//! (image-to-text recall@1 is then zero-shot accuracy); caption datasets rank captions.
//!
//! Training draws one of a class's prompts per batch and its validation ranks each class's
//! first prompt, where `siam eval` and `siam index` rank the template ensemble (the
//! re-normalised mean of the class's prompt embeddings, CLIP's prompt ensembling). With one
//! template (`--templates photo`, the default) all three are the same text. With several, the
//! loss sees every prompt across batches (so the model learns them all) and validation scores
//! one fixed prompt, which is cheap per epoch and ranks epochs consistently; `siam eval`
//! reports the ensembled numbers a user of the model gets.

use siam_data::dataset::{Dataset, DatasetKind, Split};
use siam_data::sampler::{ClassBalancedSampler, SamplerError, ShuffledSampler};

/// Which texts a batch pairs with its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextMode {
    /// Distinct label prompts.
    Labels,
    /// Captions keyed by text id (every record has one caption).
    SingleCaption,
    /// Captions keyed by record.
    MultiCaption,
}

impl TextMode {
    /// The mode of a dataset.
    pub fn of(ds: &Dataset) -> Self {
        match ds.kind {
            DatasetKind::Labels => Self::Labels,
            DatasetKind::Captions if ds.records.iter().all(|r| r.texts.len() == 1) => {
                Self::SingleCaption
            }
            DatasetKind::Captions => Self::MultiCaption,
        }
    }
}

/// The batch sampler of a run.
#[derive(Debug, Clone)]
pub enum BatchSampler {
    /// P x K.
    Balanced(ClassBalancedSampler),
    /// Shuffled.
    Shuffled(ShuffledSampler),
}

impl BatchSampler {
    /// Batches of epoch `epoch` (0-based), as positions into the training index list.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        match self {
            Self::Balanced(s) => s.epoch(epoch),
            Self::Shuffled(s) => s.epoch(epoch),
        }
    }

    /// Batches per epoch.
    pub fn epoch_len(&self) -> usize {
        match self {
            Self::Balanced(s) => s.epoch_len(),
            Self::Shuffled(s) => s.epoch_len(),
        }
    }
}

/// One batch's records and texts, as indices.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    /// Dataset record indices of the images.
    pub records: Vec<usize>,
    /// Mining label of every image.
    pub image_labels: Vec<usize>,
    /// Dataset text indices of the references.
    pub texts: Vec<usize>,
    /// Mining label of every text.
    pub text_labels: Vec<usize>,
}

/// `splitmix64`, for per-(seed, epoch, batch, slot) choices.
pub use siam_data::dataset::splitmix64 as mix;

fn pick(seed: u64, epoch: usize, batch: usize, slot: usize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (mix(mix(mix(seed ^ 0x7465_7874) ^ epoch as u64) ^ batch as u64 ^ ((slot as u64) << 32))
        % n as u64) as usize
}

/// The mining label of record `r`'s image, as [`plan_batch`] gives it (its class, its caption,
/// or the record itself), without a batch's choice among several prompts.
pub fn mining_label(ds: &Dataset, mode: TextMode, r: usize) -> usize {
    let rec = &ds.records[r];
    match mode {
        TextMode::Labels => rec.label.expect("label datasets label every record"),
        TextMode::SingleCaption => rec.texts[0],
        TextMode::MultiCaption => r,
    }
}

/// Builds the texts and labels of one batch of records.
pub fn plan_batch(
    ds: &Dataset,
    mode: TextMode,
    records: Vec<usize>,
    seed: u64,
    epoch: usize,
    batch: usize,
) -> BatchPlan {
    let mut image_labels = Vec::with_capacity(records.len());
    let mut texts = Vec::new();
    let mut text_labels = Vec::new();
    for (slot, &r) in records.iter().enumerate() {
        let rec = &ds.records[r];
        let (key, text) = match mode {
            TextMode::Labels => {
                let c = rec.label.expect("label datasets label every record");
                let prompts = &ds.label_texts[c];
                (c, prompts[pick(seed, epoch, batch, c, prompts.len())])
            }
            TextMode::SingleCaption => (rec.texts[0], rec.texts[0]),
            TextMode::MultiCaption => {
                let t = rec.texts[pick(seed, epoch, batch, slot, rec.texts.len())];
                (r, t)
            }
        };
        image_labels.push(key);
        if !text_labels.contains(&key) {
            text_labels.push(key);
            texts.push(text);
        }
    }
    BatchPlan {
        records,
        image_labels,
        texts,
        text_labels,
    }
}

/// Errors choosing batches.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The training split cannot make a single valid batch.
    #[error("{0}")]
    Sampler(String),
    /// Triplet-style losses need at least two labels.
    #[error("the training split of {dataset} has {labels} label(s); metric learning needs at least 2 (a batch with one label has no negatives)")]
    OneLabel {
        /// Dataset name.
        dataset: String,
        /// Labels found.
        labels: usize,
    },
}

/// The sampler for the training records `train` of `ds`.
pub fn sampler(
    ds: &Dataset,
    train: &[usize],
    p: usize,
    k: usize,
    batch_size: usize,
    seed: u64,
) -> Result<BatchSampler, PlanError> {
    let labels: Option<Vec<usize>> = train.iter().map(|&i| ds.records[i].label).collect();
    match labels {
        Some(labels) => {
            let mut distinct = labels.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() < 2 {
                return Err(PlanError::OneLabel {
                    dataset: ds.name.clone(),
                    labels: distinct.len(),
                });
            }
            let s = ClassBalancedSampler::new(&labels, p, k, seed).map_err(|e| match e {
                SamplerError::TooFewClasses { classes, p } => PlanError::Sampler(format!(
                    "a batch of P = {p} labels x K = {k} images needs {p} labels, but the training split of {} has {classes}; lower --classes-per-batch",
                    ds.name
                )),
                other => PlanError::Sampler(format!("batch sampler: {other}")),
            })?;
            if s.epoch_len() == 0 {
                return Err(PlanError::Sampler(format!(
                    "the training split of {} ({} images) cannot fill one batch of P = {p} x K = {k}",
                    ds.name,
                    train.len()
                )));
            }
            Ok(BatchSampler::Balanced(s))
        }
        None => {
            if batch_size < 2 {
                return Err(PlanError::Sampler(format!(
                    "--batch-size {batch_size}: a batch needs at least 2 image-text pairs to have negatives"
                )));
            }
            let s = ShuffledSampler::new(train.len(), batch_size, true, seed)
                .map_err(|e| PlanError::Sampler(format!("batch sampler: {e}")))?;
            if s.epoch_len() == 0 {
                return Err(PlanError::Sampler(format!(
                    "the training split of {} has {} images, fewer than one batch of {batch_size}",
                    ds.name,
                    train.len()
                )));
            }
            Ok(BatchSampler::Shuffled(s))
        }
    }
}

/// What validation ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPlan {
    /// Dataset record indices of the images.
    pub records: Vec<usize>,
    /// Dataset text indices of the texts.
    pub texts: Vec<usize>,
    /// Key of every image; image `i` and text `j` match when keys are equal
    /// (`None`: use `text_to_image`).
    pub image_keys: Option<Vec<usize>>,
    /// Key of every text.
    pub text_keys: Vec<usize>,
    /// For multi-caption datasets: the image (position in `records`) of every text.
    pub text_to_image: Option<Vec<usize>>,
}

/// The validation plan for the records of `split` (empty plan if the split is empty).
pub fn eval_plan(ds: &Dataset, split: Split, mode: TextMode) -> EvalPlan {
    let records = ds.indices_of(split);
    match mode {
        TextMode::Labels => {
            let mut classes: Vec<usize> = records
                .iter()
                .filter_map(|&r| ds.records[r].label)
                .collect();
            classes.sort_unstable();
            classes.dedup();
            EvalPlan {
                image_keys: Some(
                    records
                        .iter()
                        .map(|&r| ds.records[r].label.unwrap_or(usize::MAX))
                        .collect(),
                ),
                texts: classes.iter().map(|&c| ds.label_texts[c][0]).collect(),
                text_keys: classes,
                text_to_image: None,
                records,
            }
        }
        TextMode::SingleCaption => {
            let keys: Vec<usize> = records.iter().map(|&r| ds.records[r].texts[0]).collect();
            let mut texts = keys.clone();
            texts.sort_unstable();
            texts.dedup();
            EvalPlan {
                image_keys: Some(keys),
                text_keys: texts.clone(),
                texts,
                text_to_image: None,
                records,
            }
        }
        TextMode::MultiCaption => {
            let mut texts = Vec::new();
            let mut owner = Vec::new();
            for (i, &r) in records.iter().enumerate() {
                for &t in &ds.records[r].texts {
                    texts.push(t);
                    owner.push(i);
                }
            }
            EvalPlan {
                image_keys: None,
                text_keys: owner.clone(),
                texts,
                text_to_image: Some(owner),
                records,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_batches_pair_each_image_with_its_caption() {
        let ds = siam_data::synthetic::demo(6, 16, 3);
        assert_eq!(TextMode::of(&ds), TextMode::SingleCaption);
        let plan = plan_batch(&ds, TextMode::SingleCaption, vec![0, 1, 2, 7], 0, 0, 0);
        for (i, &r) in plan.records.iter().enumerate() {
            let key = plan.image_labels[i];
            assert_eq!(key, ds.records[r].texts[0]);
            let j = plan.text_labels.iter().position(|&k| k == key).unwrap();
            assert_eq!(plan.texts[j], key);
        }
        // Distinct references only.
        let mut t = plan.texts.clone();
        t.dedup();
        assert_eq!(t.len(), plan.texts.len());
    }

    #[test]
    fn one_label_is_refused_with_a_message() {
        let ds = siam_data::synthetic::demo(6, 16, 3);
        let one: Vec<usize> = (0..ds.len())
            .filter(|&i| ds.records[i].label == Some(0))
            .collect();
        let err = sampler(&ds, &one, 2, 2, 8, 0).unwrap_err();
        assert!(err.to_string().contains("at least 2"), "{err}");
        let all: Vec<usize> = (0..ds.len()).collect();
        let err = sampler(&ds, &all, 50, 2, 8, 0).unwrap_err();
        assert!(err.to_string().contains("--classes-per-batch"), "{err}");
    }

    #[test]
    fn caption_eval_plan_groups_identical_captions() {
        let ds = siam_data::synthetic::demo(10, 16, 3);
        let plan = eval_plan(&ds, Split::Val, TextMode::SingleCaption);
        assert!(!plan.records.is_empty());
        let keys = plan.image_keys.as_ref().unwrap();
        for k in keys {
            assert!(plan.text_keys.contains(k));
        }
    }
}
