//! Training: [`TrainConfig`] and the run that follows it, as phases ([`trainer`]: setup or
//! resume, cache attachment, epochs, validation and keeping the best, finish). The model it
//! trains lives in [`crate::model`], its data section in [`crate::dataset`].
//!
//! - [`step`]: one optimiser step, with open_clip-style gradient accumulation;
//! - [`optim`], [`schedule`]: AdamW with a no-decay group, global-norm clipping, warm-up + cosine;
//! - [`memory`]: glibc's allocator thresholds raised, so a step reuses the last step's buffers;
//! - [`checkpoint`], [`metrics`]: resumable checkpoints and the per-step JSONL log;
//! - [`mining`]: hard negatives mined from the HNSW index of the training images;
//! - [`cache`]: locked towers' features and `last:N` towers' frozen-prefix hidden states on
//!   disk, memory-mapped;
//! - [`config`]: [`TrainConfig`], whose sections are `siam train`'s flags;
//! - [`data`]: what a batch and a validation set are made of;
//! - [`setup`], [`inputs`], [`report`]: the model a run starts from, what the towers read
//!   (pixels or caches), and what the run reports;
//! - [`trainer`]: the run as phases ([`trainer::train`]).

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod fused_adamw;
pub mod health;
pub mod inputs;
pub mod memory;
pub mod metrics;
pub mod mining;
pub mod objective;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod setup;
pub mod step;
pub mod trainer;

pub use config::TrainConfig;
pub use report::{Event, Observer, TrainReport};
pub use trainer::train;

use std::path::PathBuf;

/// Errors of a training run. Each names the file, the option or the step involved.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An option or combination of options that cannot work (names the option).
    #[error("{0}")]
    Config(String),
    /// The dataset given by `--data` (or its templates) could not be opened.
    #[error(transparent)]
    Data(#[from] crate::dataset::DataError),
    /// `--weight-by confidence` could not read a weight for every training image.
    #[error(transparent)]
    Weights(#[from] crate::pseudo_label::PseudoLabelError),
    /// The dataset has no training image.
    #[error("{0}: the training split is empty")]
    EmptyTrainSplit(String),
    /// Images could not be read (training, validation and the caches need every image).
    #[error("{what}: image(s) could not be read: {images}")]
    Unreadable {
        /// The job: "training", "validation", "feature cache", "prefix cache".
        what: String,
        /// Each image with the reason.
        images: String,
    },
    /// The image loader ended before the epoch's last batch.
    #[error("the image loader stopped before the epoch's last batch")]
    LoaderEnded,
    /// The dataset could not be opened.
    #[error(transparent)]
    Dataset(#[from] siam_data::dataset::DatasetError),
    /// The batch sampler cannot serve this data.
    #[error(transparent)]
    Plan(#[from] data::PlanError),
    /// An image could not be loaded.
    #[error(transparent)]
    Pipeline(#[from] siam_data::pipeline::PipelineError),
    /// A text could not be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] siam_data::tokenizer::TokenizerError),
    /// The architecture could not be resolved.
    #[error(transparent)]
    Arch(#[from] crate::clip::config::ConfigError),
    /// The starting checkpoint could not be imported (boxed: the largest error by far, and
    /// every fallible function of training returns this enum).
    #[error(transparent)]
    Import(Box<crate::clip::import::ImportError>),
    /// A model folder could not be read or written.
    #[error(transparent)]
    Folder(#[from] crate::model::folder::FolderError),
    /// A checkpoint could not be read or written, or belongs to another run.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The metrics log could not be written.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The freeze policy does not fit the model.
    #[error(transparent)]
    Freeze(#[from] crate::model::twin::TwinError),
    /// Mining hard negatives from the index failed.
    #[error("--mine-index: {0}")]
    Mining(#[from] crate::index::IndexError),
    /// Validation metrics or plots failed.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// A cache file is unusable.
    #[error("feature cache {0}: {1}")]
    Cache(PathBuf, String),
    /// A folder could not be created.
    #[error("{0}: {1}")]
    Io(PathBuf, String),
    /// A training step failed (NaN loss, ...); names the last good checkpoint.
    #[error("{cause}; {}", match last_checkpoint { Some(p) => format!("the last good checkpoint is {} (resume with --resume)", p.display()), None => "no checkpoint was written yet".to_string() })]
    Step {
        /// What went wrong.
        cause: step::StepError,
        /// The last checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
    },
}

impl From<crate::clip::import::ImportError> for TrainError {
    fn from(e: crate::clip::import::ImportError) -> Self {
        Self::Import(Box::new(e))
    }
}
