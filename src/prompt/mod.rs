//! Prompt learning, CoOp style (Zhou et al., IJCV 2022): learnable context vectors in the class
//! prompts, trained with frozen towers; the learned prompts are saved in the model folder and
//! replace hand-written templates wherever siam builds class embeddings (`classify`, `eval`,
//! `index`, `query`, `pseudo-label`).
//!
//! - [`learner`]: `coop:N[:csc]`, the context vectors and how they are spliced into the prompts;
//! - [`few_shot`]: K images per class, seeded (CoOp's 1/2/4/8/16-shot protocol);
//! - [`train`]: the training loop (CoOp's cross-entropy, or any siam metric loss);
//! - this module: the learned prompts on disk and the class embeddings they give.
//!
//! ```text
//! <model>/prompts.json          PromptCard: classes, N, csc, position, init, training record
//! <model>/prompts.safetensors   the context vectors (PromptLearner), and the learned
//!                               positional embedding with `--prompt-train positional`
//! ```

pub mod few_shot;
pub mod learner;
pub mod train;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::encoder::{to_vec, Encoder};
use crate::model::twin::TextInput;
use learner::{ClassPosition, ClassPrompts, PromptLearner};

/// The card's file name.
pub const PROMPT_CARD: &str = "prompts.json";
/// The context vectors' file name.
pub const PROMPT_WEIGHTS: &str = "prompts.safetensors";

/// Errors of prompt learning.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// An option that cannot work.
    #[error("{0}")]
    Option(String),
    /// A text could not be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] siam_data::tokenizer::TokenizerError),
    /// Learned prompts on disk that cannot be read.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, PromptError>;

/// `prompts.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptCard {
    /// The class names the prompts were learned for, in class order.
    pub classes: Vec<String>,
    /// Context vectors per prompt.
    pub n_ctx: usize,
    /// One context per class.
    pub class_specific: bool,
    /// Class-token position.
    pub position: ClassPosition,
    /// The text the context replaces in the tokenized prompt (`X X X X` or the init phrase).
    pub prefix: String,
    /// The init phrase, if any.
    pub init: Option<String>,
    /// What was trained: the context only, or also the positional embedding (then saved in
    /// `prompts.safetensors` and used in place of the tower's when embedding the prompts).
    #[serde(default)]
    pub train: learner::PromptTrain,
    /// The training record (loss, shots, seed, accuracies), free-form.
    #[serde(default)]
    pub training: serde_json::Value,
}

/// Learned prompts ready to embed.
#[derive(Debug, Clone)]
pub struct LearnedPrompts {
    /// What was learned.
    pub card: PromptCard,
    /// The context vectors.
    pub learner: PromptLearner,
}

impl LearnedPrompts {
    /// The tokenized class prompts of the card, with `enc`'s tokenizer.
    pub fn class_prompts(&self, enc: &Encoder) -> Result<ClassPrompts> {
        ClassPrompts::new(
            &enc.tokenizer,
            &self.card.classes,
            &self.card.prefix,
            self.card.n_ctx,
            self.card.position,
            enc.card.context_length,
        )
    }

    /// Normalised joint class embeddings `[classes, d]` as a tensor (differentiable in the
    /// context vectors when they require gradients).
    pub fn class_tensor(
        &self,
        model: &crate::model::twin::TwinTowers,
        prompts: &ClassPrompts,
    ) -> Tensor<2> {
        let x = prompts.embed(self.learner.ctx.val(), &model.clip.text.token_embedding);
        let text = &model.clip.text;
        let feats = match &self.learner.positional {
            Some(p) => text.forward_embedded_at(x, &prompts.lengths, p.val()),
            None => text.forward_embedded(x, &prompts.lengths),
        };
        model.embed_texts(TextInput::Features(feats))
    }

    /// Normalised class embeddings, row-major `classes x d`, in the card's class order.
    pub fn class_embeddings(&self, enc: &Encoder) -> Result<Vec<f32>> {
        let prompts = self.class_prompts(enc)?;
        let learner = self.learner.clone().to_device(enc.device());
        let on_device = Self {
            card: self.card.clone(),
            learner,
        };
        Ok(to_vec(on_device.class_tensor(&enc.model, &prompts)))
    }

    /// For each of `labels`, its class in the card (names compared case-insensitively, `_` as
    /// a space); `None` unless every label was learned.
    pub fn classes_of(&self, labels: &[String]) -> Option<Vec<usize>> {
        let norm = |s: &str| s.trim().to_lowercase().replace('_', " ");
        labels
            .iter()
            .map(|l| self.card.classes.iter().position(|c| norm(c) == norm(l)))
            .collect()
    }

    /// Writes `prompts.safetensors` then `prompts.json` into `dir` (each to a temporary name,
    /// then renamed).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let fail = |path: PathBuf, why: String| PromptError::File { path, why };
        let wpath = dir.join(PROMPT_WEIGHTS);
        let mut store = SafetensorsStore::from_bytes(None);
        self.learner
            .save_into(&mut store)
            .map_err(|e| fail(wpath.clone(), e.to_string()))?;
        let bytes = store
            .get_bytes()
            .map_err(|e| fail(wpath.clone(), e.to_string()))?;
        crate::io::atomic_write_bytes(&wpath, &bytes)
            .map_err(|e| fail(wpath.clone(), e.to_string()))?;
        let cpath = dir.join(PROMPT_CARD);
        let json = serde_json::to_vec_pretty(&self.card)
            .map_err(|e| fail(cpath.clone(), e.to_string()))?;
        crate::io::atomic_write_bytes(&cpath, &json).map_err(|e| fail(cpath, e.to_string()))
    }

    /// Reads learned prompts from a model folder; `Ok(None)` when it has none. `context` is
    /// the text tower's context length (the rows of a learned positional embedding).
    pub fn load(dir: &Path, width: usize, context: usize, device: &Device) -> Result<Option<Self>> {
        let cpath = dir.join(PROMPT_CARD);
        if !cpath.is_file() {
            return Ok(None);
        }
        let fail = |path: &Path, why: String| PromptError::File {
            path: path.to_path_buf(),
            why,
        };
        let bytes = std::fs::read(&cpath).map_err(|e| fail(&cpath, e.to_string()))?;
        let card: PromptCard =
            serde_json::from_slice(&bytes).map_err(|e| fail(&cpath, e.to_string()))?;
        let groups = if card.class_specific {
            card.classes.len()
        } else {
            1
        };
        let mut learner = PromptLearner::random(groups, card.n_ctx, width, device);
        if card.train == learner::PromptTrain::Positional {
            learner = learner.with_positional(Tensor::zeros([context, width], device));
        }
        let wpath = dir.join(PROMPT_WEIGHTS);
        let mut store = SafetensorsStore::from_file(&wpath);
        let r = learner
            .load_from(&mut store)
            .map_err(|e| fail(&wpath, e.to_string()))?;
        if !r.missing.is_empty() || !r.errors.is_empty() {
            return Err(fail(
                &wpath,
                format!(
                    "expected ctx [{groups}, {}, {width}]{} (missing {:?}, errors {:?})",
                    card.n_ctx,
                    match learner.positional {
                        Some(_) => format!(" and positional [{context}, {width}]"),
                        None => String::new(),
                    },
                    r.missing.iter().map(|m| &m.0).collect::<Vec<_>>(),
                    r.errors
                ),
            ));
        }
        Ok(Some(Self { card, learner }))
    }

    /// The learned prompts of an encoder's model folder, if any.
    pub fn of_encoder(enc: &Encoder) -> Result<Option<Self>> {
        if enc.source.as_os_str().is_empty() || !enc.source.is_dir() {
            return Ok(None);
        }
        Self::load(
            &enc.source,
            enc.model.clip.text.token_embedding.weight.dims()[1],
            enc.model.clip.text.context_length(),
            enc.device(),
        )
    }
}

/// Class embeddings for `labels`: from the model folder's learned prompts when every label was
/// learned, else `None` (callers then use hand-written templates).
pub fn learned_class_embeddings(enc: &Encoder, labels: &[String]) -> Result<Option<Vec<f32>>> {
    let Some(lp) = LearnedPrompts::of_encoder(enc)? else {
        return Ok(None);
    };
    let Some(map) = lp.classes_of(labels) else {
        return Ok(None);
    };
    let all = lp.class_embeddings(enc)?;
    let d = enc.dim();
    let mut out = Vec::with_capacity(labels.len() * d);
    for c in map {
        out.extend_from_slice(&all[c * d..(c + 1) * d]);
    }
    Ok(Some(out))
}
