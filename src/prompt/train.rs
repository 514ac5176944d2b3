//! Training the context vectors with frozen towers (CoOp, Zhou et al. 2022, sec. 3.2):
//!
//! ```text
//! p(y = c | x) = exp(s * cos(f(x), g(t_c))) / sum_j exp(s * cos(f(x), g(t_j)))
//! loss = sum_i w_i * (-log p(y_i | x_i)) / sum_i w_i        (w_i = 1 without --weight-by)
//! ```
//!
//! with `f` the frozen image tower (and head), `g` the frozen text tower (and head) run on the
//! embedded prompt `t_c` of class `c`, and `s = exp(logit_scale)` the model's own scale: CoOp's
//! `F.cross_entropy(logit_scale.exp() * image_features @ text_features.t(), label)`. Any siam
//! metric loss can replace it: image embeddings are the anchors and the class prompts'
//! embeddings the references (labels = class ids), in both directions as `siam train` does.
//!
//! Since both towers are frozen and no augmentation is applied, each image's embedding is
//! computed once; only the text tower runs per step (on the class prompts). Optimiser: AdamW
//! without weight decay on the context vectors (and, with `--prompt-train positional`, on a
//! copy of the text tower's positional embedding that replaces the tower's own) (CoOp uses SGD at lr 0.002 for 50-200 epochs;
//! AdamW reaches the same kind of optimum in far fewer steps, which suits a CPU budget), with
//! siam's warm-up + cosine schedule.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use siam_data::dataset::{Dataset, DatasetKind, ImageSource, OnBadImage, Split};

use super::few_shot::few_shot;
use super::learner::{
    phrase_ids, ClassPosition, ClassPrompts, PromptLearner, PromptSpec, PromptTrain,
};
use super::{LearnedPrompts, PromptCard, PromptError};
use crate::embed::{embed_records, ensemble};
use crate::eval::classification::zero_shot;
use crate::model::encoder::{to_vec, Encoder};
use crate::train::config::LossSettings;
use crate::train::objective::build_objective;
use crate::train::schedule::CosineSchedule;
use crate::train::step::BatchWeights;

/// How to learn the prompts.
#[derive(Debug, Clone)]
pub struct PromptTrainConfig {
    /// `coop:N[:csc]`.
    pub spec: PromptSpec,
    /// Initialise the context from this phrase's word embeddings (N becomes its token count).
    pub init: Option<String>,
    /// Class-token position.
    pub position: ClassPosition,
    /// The context only, or also the text tower's positional embedding.
    pub train: PromptTrain,
    /// K images per class from the training split (all of it when `None`).
    pub shots: Option<usize>,
    /// Seed of the few-shot draw, the context init and the batch order.
    pub seed: u64,
    /// Passes over the (few-shot) training images.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Images per step.
    pub batch_size: usize,
    /// A siam metric loss instead of CoOp's cross-entropy.
    pub loss: Option<LossSettings>,
    /// Per-image loss weights (image file to weight), e.g. pseudo-label confidences.
    pub weights: Option<HashMap<PathBuf, f32>>,
    /// Decoding threads.
    pub threads: usize,
}

/// What a prompt-learning run did.
#[derive(Debug, Clone, Serialize)]
pub struct PromptReport {
    /// Training images used (after the few-shot draw).
    pub train_images: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Loss of the last epoch (mean over its steps).
    pub final_loss: f64,
    /// The split the accuracies were measured on (`val`, else `test`, else none).
    pub eval_split: Option<String>,
    /// Images evaluated.
    pub eval_images: usize,
    /// Zero-shot top-1 accuracy with the dataset's hand-written templates.
    pub templates_top1: Option<f64>,
    /// Top-1 accuracy with the learned prompts.
    pub learned_top1: Option<f64>,
}

/// Weighted cross-entropy of `logits` `[B, C]` against `labels`: `sum_i w_i * nll_i / sum_i w_i`.
pub fn cross_entropy(logits: Tensor<2>, labels: &[usize], weights: &[f32]) -> Tensor<1> {
    let [b, c] = logits.dims();
    let device = logits.device();
    let mut onehot = vec![0f32; b * c];
    for (i, &y) in labels.iter().enumerate() {
        onehot[i * c + y] = weights[i];
    }
    let total: f32 = weights.iter().sum();
    let mask = Tensor::<2>::from_data(TensorData::new(onehot, [b, c]), &device);
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    (logp * mask)
        .sum()
        .neg()
        .div_scalar(total.max(f32::MIN_POSITIVE))
}

/// Learns prompts for the classes of `ds` with `enc`'s frozen towers. `enc` must live on an
/// autodiff device. `progress(step, total_steps, loss)` is called after every step.
pub fn train_prompts(
    enc: &Encoder,
    ds: &Arc<Dataset>,
    cfg: &PromptTrainConfig,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> std::result::Result<(LearnedPrompts, PromptReport), PromptTrainError> {
    let opt = |s: String| PromptTrainError::Prompt(PromptError::Option(s));
    if ds.kind != DatasetKind::Labels || ds.labels.is_empty() {
        return Err(opt(format!(
            "{}: --prompt learns class prompts and needs a dataset with labels",
            ds.root.display()
        )));
    }
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(opt("--epochs and --batch-size must be at least 1".into()));
    }
    let device = enc.device().clone();
    let ctx_len = enc.card.context_length;
    let classes: Vec<String> = ds.labels.iter().map(|l| l.replace('_', " ")).collect();
    let width = enc.model.clip.text.token_embedding.weight.dims()[1];
    let (learner, n_ctx, prefix) = match &cfg.init {
        Some(phrase) => {
            let n = phrase_ids(&enc.tokenizer, phrase, ctx_len)?.len();
            let groups = if cfg.spec.class_specific {
                classes.len()
            } else {
                1
            };
            let l = PromptLearner::from_phrase(
                &enc.tokenizer,
                &enc.model.clip.text.token_embedding,
                phrase,
                groups,
                ctx_len,
                &device,
            )?;
            (l, n, phrase.clone())
        }
        None => {
            let groups = if cfg.spec.class_specific {
                classes.len()
            } else {
                1
            };
            let n = cfg.spec.n_ctx;
            let l = crate::model::init::seeded(&device, cfg.seed, || {
                PromptLearner::random(groups, n, width, &device)
            });
            (l, n, vec!["X"; n].join(" "))
        }
    };
    let learner = match cfg.train {
        PromptTrain::Context => learner,
        PromptTrain::Positional => {
            learner.with_positional(enc.model.clip.text.positional_embedding.val())
        }
    };
    let prompts = ClassPrompts::new(
        &enc.tokenizer,
        &classes,
        &prefix,
        n_ctx,
        cfg.position,
        ctx_len,
    )?;
    // The training images: the train split, K per class when --shots.
    let train = ds.indices_of(Split::Train);
    let train = match cfg.shots {
        Some(k) => few_shot(&train, |r| ds.records[r].label, k, cfg.seed),
        None => train,
    };
    if train.is_empty() {
        return Err(opt(format!(
            "{}: the training split is empty",
            ds.root.display()
        )));
    }
    let feats = embed_records(
        enc,
        Arc::clone(ds),
        &train,
        64,
        cfg.threads,
        OnBadImage::Skip,
        &mut |_| {},
    )?;
    let d = feats.dim;
    let labels: Vec<usize> = feats
        .kept
        .iter()
        .map(|&i| ds.records[train[i]].label.unwrap_or(0))
        .collect();
    let weights: Vec<f32> = feats
        .kept
        .iter()
        .map(|&i| match (&cfg.weights, &ds.records[train[i]].image) {
            (None, _) => Ok(1.0),
            (Some(w), ImageSource::File(p)) => w.get(p).copied().ok_or_else(|| {
                opt(format!(
                    "--weight-by confidence: no confidence for image {}",
                    p.display()
                ))
            }),
            (Some(_), other) => Err(opt(format!(
                "--weight-by confidence: image {} is not a file of the table",
                other.name()
            ))),
        })
        .collect::<std::result::Result<_, _>>()?;
    let objective = match &cfg.loss {
        Some(s) => Some(build_objective(s).map_err(|e| opt(e.to_string()))?),
        None => None,
    };
    let n = labels.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let schedule = CosineSchedule {
        base_lr: cfg.lr,
        warmup_steps: cfg.warmup.min(total / 2),
        total_steps: total,
        min_lr: 0.0,
    };
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut lp = LearnedPrompts {
        card: PromptCard {
            classes: classes.clone(),
            n_ctx,
            class_specific: cfg.spec.class_specific,
            position: cfg.position,
            prefix,
            init: cfg.init.clone(),
            train: cfg.train,
            training: serde_json::Value::Null,
        },
        learner,
    };
    let class_ids: Vec<usize> = (0..classes.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut step = 0usize;
    let mut final_loss = f64::NAN;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            let mut x = Vec::with_capacity(batch.len() * d);
            for &i in batch {
                x.extend_from_slice(&feats.data[i * d..(i + 1) * d]);
            }
            let img = Tensor::<2>::from_data(TensorData::new(x, [batch.len(), d]), &device);
            let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let w: Vec<f32> = batch.iter().map(|&i| weights[i]).collect();
            let txt = lp.class_tensor(&enc.model, &prompts);
            let loss = match &objective {
                None => {
                    let scale = enc.model.logit_scale().exp().unsqueeze::<2>();
                    cross_entropy(img.matmul(txt.transpose()) * scale, &y, &w)
                }
                Some(o) => {
                    let bw = cfg
                        .weights
                        .is_some()
                        .then(|| BatchWeights::from_images(w.clone(), &y, &class_ids));
                    let params = enc.model.logit_params();
                    o.score(img, &y, txt, &class_ids, bw.as_ref(), params, epoch)
                        .map_err(|e| opt(format!("step {}: {e}", step + 1)))?
                        .loss
                }
            };
            let value = f64::from(to_vec(loss.clone().unsqueeze::<2>())[0]);
            if !value.is_finite() {
                return Err(opt(format!("the loss became {value} at step {}", step + 1)));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &lp.learner);
            lp.learner = optim.step(schedule.lr(step), lp.learner, grads);
            step += 1;
            sum += value;
            progress(step, total, value);
        }
        final_loss = sum / steps_per_epoch as f64;
    }
    // Hand-written templates against learned prompts on held-out images.
    let (split, eval_idx) = [Split::Val, Split::Test]
        .into_iter()
        .map(|s| (s, ds.indices_of(s)))
        .find(|(_, v)| !v.is_empty())
        .map_or((None, Vec::new()), |(s, v)| (Some(s.to_string()), v));
    let mut report = PromptReport {
        train_images: n,
        steps: step,
        final_loss,
        eval_split: split,
        eval_images: 0,
        templates_top1: None,
        learned_top1: None,
    };
    if !eval_idx.is_empty() {
        let e = embed_records(
            enc,
            Arc::clone(ds),
            &eval_idx,
            64,
            cfg.threads,
            OnBadImage::Skip,
            &mut |_| {},
        )?;
        let y: Vec<usize> = e
            .kept
            .iter()
            .map(|&i| ds.records[eval_idx[i]].label.unwrap_or(0))
            .collect();
        let mut hand = Vec::with_capacity(classes.len() * d);
        for c in 0..classes.len() {
            let texts: Vec<&str> = ds.label_texts[c]
                .iter()
                .map(|&t| ds.texts[t].as_str())
                .collect();
            hand.extend(ensemble(enc, &texts)?);
        }
        let learned = to_vec(lp.learner.valid_class_tensor(enc, &prompts, &lp.card));
        report.eval_images = y.len();
        report.templates_top1 = Some(zero_shot(&e.data, &hand, d, &y)?.top1);
        report.learned_top1 = Some(zero_shot(&e.data, &learned, d, &y)?.top1);
    }
    lp.card.training = serde_json::json!({
        "loss": cfg.loss.as_ref().map_or("coop-cross-entropy".to_string(), |l| l.name().to_string()),
        "shots": cfg.shots,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "weighted": cfg.weights.is_some(),
        "report": report,
    });
    lp.learner = lp.learner.valid_learner();
    Ok((lp, report))
}

impl PromptLearner {
    fn valid_class_tensor(
        &self,
        enc: &Encoder,
        prompts: &ClassPrompts,
        card: &PromptCard,
    ) -> Tensor<2> {
        let lp = LearnedPrompts {
            card: card.clone(),
            learner: self.clone().no_grad(),
        };
        lp.class_tensor(&enc.model, prompts).detach()
    }

    fn valid_learner(self) -> Self {
        self.no_grad()
    }
}

/// Errors of [`train_prompts`].
#[derive(Debug, thiserror::Error)]
pub enum PromptTrainError {
    /// A prompt option or file problem.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// Images could not be embedded (boxed: the largest error by far).
    #[error(transparent)]
    Embed(Box<crate::embed::EmbedError>),
    /// The accuracy could not be measured.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
}

impl From<crate::embed::EmbedError> for PromptTrainError {
    fn from(e: crate::embed::EmbedError) -> Self {
        Self::Embed(Box::new(e))
    }
}

impl From<siam_data::tokenizer::TokenizerError> for PromptTrainError {
    fn from(e: siam_data::tokenizer::TokenizerError) -> Self {
        Self::Prompt(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn weighted_cross_entropy_by_hand() {
        let d = Device::flex();
        let logits =
            Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 1.0], [2, 2]), &d);
        let l1 = -(2f32.exp() / (2f32.exp() + 1.0)).ln();
        let l2 = -(1f32.exp() / (1f32.exp() + 1.0)).ln();
        let v = to_vec(cross_entropy(logits.clone(), &[0, 1], &[1.0, 1.0]).unsqueeze::<2>())[0];
        assert!((v - 0.5 * (l1 + l2)).abs() < 1e-6);
        let v = to_vec(cross_entropy(logits.clone(), &[0, 1], &[3.0, 1.0]).unsqueeze::<2>())[0];
        assert!((v - (3.0 * l1 + l2) / 4.0).abs() < 1e-6);
        // Weight 0 drops an item.
        let v = to_vec(cross_entropy(logits, &[0, 1], &[0.0, 2.0]).unsqueeze::<2>())[0];
        assert!((v - l2).abs() < 1e-6);
    }
}
