//! One optimiser step: embed both sides, mine and score in both directions, back-propagate,
//! clip the global gradient norm, and apply AdamW at the scheduled learning rate.
//!
//! The loss of a batch is the mean of the two directions (the symmetric form of CLIP's loss,
//! open_clip `loss.py` `ClipLoss`):
//!
//! ```text
//! loss = 0.5 * ( L(images -> texts) + L(texts -> images) )
//! ```
//!
//! where `L(a -> r)` mines tuples with anchors `a` and references `r` (pytorch-metric-learning's
//! `ref_emb`) and scores them.
//!
//! Gradient accumulation ([`Stepper::step_accumulated`]) follows open_clip's `accum_freq`
//! (`src/open_clip_train/train.py`): the embeddings of every micro-batch are first computed
//! without gradients; then each micro-batch is embedded again with gradients and its live rows
//! replace its detached rows in the full batch, so every micro-step sees (and mines among) the
//! negatives of the whole accumulated batch. Summing the micro-steps' gradients gives exactly
//! the full batch's gradient, since each row's contribution `dL/de_i * de_i/dtheta` is
//! back-propagated once, in its own micro-step (and the shared logit scale's once, in the first).
//! A cross-batch memory is read by every micro-step as it was at the start of the step and
//! takes the whole batch once, after the last ([`Objective::score_micro`]), so accumulation
//! with `--xbm` is the full batch's step with its memory too.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use siam_losses::LogitParams;

use super::health::LearningStats;
use super::optim::clip_grad_norm;
use super::schedule::CosineSchedule;
use crate::model::twin::{ImageInput, TextInput, TwinTowers};

/// The batch loss of both directions, as an [`Objective`] computes it.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The loss to back-propagate, `[1]`.
    pub loss: Tensor<1>,
    /// Image-anchor loss value.
    pub i2t: f64,
    /// Text-anchor loss value.
    pub t2i: f64,
    /// The loss's tuple statistics (both directions) and the image embeddings' spread.
    pub stats: LearningStats,
}

/// A metric-learning loss with its miner, applied with image anchors against text references
/// and text anchors against image references.
pub trait Objective {
    /// The loss of a batch: image embeddings `img` (`[B, d]`, labels `img_labels`) and text
    /// embeddings `txt` (`[T, d]`). `logits` holds the model's `log(1/temperature)` `[1]` (and
    /// the sigmoid loss's bias); `epoch` (0-based) picks the miner of a hardness schedule;
    /// `weights` (`--weight-by`) weighs each anchor's loss terms.
    #[allow(clippy::too_many_arguments)]
    fn score(
        &self,
        img: Tensor<2>,
        img_labels: &[usize],
        txt: Tensor<2>,
        txt_labels: &[usize],
        weights: Option<&BatchWeights>,
        logits: LogitParams,
        epoch: usize,
    ) -> Result<Scored, ScoreError>;

    /// [`Self::score`] for one micro-step of an accumulated optimiser step: with `commit`
    /// false, an objective with state (a cross-batch memory) scores against its state and
    /// leaves it unchanged; the last micro-step commits. Stateless objectives just score.
    #[allow(clippy::too_many_arguments)]
    fn score_micro(
        &self,
        img: Tensor<2>,
        img_labels: &[usize],
        txt: Tensor<2>,
        txt_labels: &[usize],
        weights: Option<&BatchWeights>,
        logits: LogitParams,
        epoch: usize,
        commit: bool,
    ) -> Result<Scored, ScoreError> {
        let _ = commit;
        self.score(img, img_labels, txt, txt_labels, weights, logits, epoch)
    }

    /// The state a checkpoint must keep besides the model (the cross-batch memories); `None`
    /// for a stateless objective.
    fn state(&self) -> Option<Vec<siam_losses::XbmSnapshot>> {
        None
    }

    /// Puts back what [`Self::state`] gave (on `device`).
    fn restore_state(
        &self,
        state: &[siam_losses::XbmSnapshot],
        device: &burn::tensor::Device,
    ) -> Result<(), ScoreError> {
        let _ = (state, device);
        Ok(())
    }

    /// Whether the loss uses the logit scale (so the scale should train).
    fn uses_logit_scale(&self) -> bool;

    /// The `(log scale, bias)` a loss with a learnable logit bias starts from (the sigmoid
    /// loss: SigLIP's `(ln 10, -10)`); `None` keeps the model's scale and adds no bias.
    fn initial_logits(&self) -> Option<(f32, f32)> {
        None
    }

    /// A short description for the log (`triplet (margin 0.2), miner hard`).
    fn describe(&self) -> String;
}

/// One batch as the model sees it.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// The images (pixels, cached hidden states or cached tower outputs).
    pub images: ImageInput,
    /// Label (mining class) of every image.
    pub image_labels: Vec<usize>,
    /// The reference texts.
    pub texts: TextInput,
    /// Label of every text.
    pub text_labels: Vec<usize>,
    /// Loss weights of the images and texts (`--weight-by confidence`); `None`: all 1.
    pub weights: Option<BatchWeights>,
}

/// Per-anchor loss weights of a batch (`--weight-by confidence`; see `siam_losses::Weights`
/// for how a loss applies them). An image anchor weighs its item's weight (its pseudo-label's
/// confidence); a text anchor stands for the batch's images it was drawn for (a label text
/// for every image of that label, a caption for the images it captions) and weighs their
/// mean weight, or 1 when no image of the batch carries it (nothing to down-weight it by).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchWeights {
    /// One weight per image.
    pub images: Vec<f32>,
    /// One weight per text.
    pub texts: Vec<f32>,
}

impl BatchWeights {
    /// The images' weights, and each text's as the mean of the images sharing its label.
    pub fn from_images(images: Vec<f32>, image_labels: &[usize], text_labels: &[usize]) -> Self {
        let texts = text_labels
            .iter()
            .map(|t| {
                let (sum, n) = image_labels
                    .iter()
                    .zip(&images)
                    .filter(|(l, _)| *l == t)
                    .fold((0f64, 0usize), |(s, n), (_, w)| (s + *w as f64, n + 1));
                if n == 0 {
                    1.0
                } else {
                    (sum / n as f64) as f32
                }
            })
            .collect();
        Self { images, texts }
    }

    /// The weights of several micro-batches, in order; `None` unless every one has weights.
    pub fn concat<'a>(parts: impl Iterator<Item = Option<&'a BatchWeights>>) -> Option<Self> {
        let mut out = Self {
            images: Vec::new(),
            texts: Vec::new(),
        };
        for p in parts {
            let p = p?;
            out.images.extend_from_slice(&p.images);
            out.texts.extend_from_slice(&p.texts);
        }
        Some(out)
    }
}

impl TrainBatch {
    /// Anchor-reference comparisons in both directions: `2 * images * texts`.
    pub fn pairs(&self) -> u64 {
        2 * self.image_labels.len() as u64 * self.text_labels.len() as u64
    }
}

/// Errors of a training step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The loss is NaN or infinite; the parameters were not updated.
    #[error("the loss became {value} at step {step}; the update of step {step} was not applied")]
    NonFinite {
        /// 1-based step.
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// The loss refused its inputs (e.g. non-finite embeddings).
    #[error("step {step}: {why}")]
    Loss {
        /// 1-based step.
        step: usize,
        /// The loss's message.
        why: String,
    },
    /// Accumulation got no micro-batch.
    #[error("gradient accumulation needs at least one micro-batch")]
    Empty,
}

/// A loss that refused its inputs (e.g. non-finite embeddings): the loss's message, with the
/// anchors' tower when both directions are scored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ScoreError(pub String);

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean loss of both directions.
    pub loss: f64,
    /// Image-anchor loss.
    pub loss_i2t: f64,
    /// Text-anchor loss.
    pub loss_t2i: f64,
    /// Active fraction, positive and negative similarity, gap and spread (both directions).
    pub stats: LearningStats,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate applied.
    pub lr: f64,
    /// Anchor-reference comparisons.
    pub pairs: u64,
}

/// The optimiser, its schedule and the step counter.
pub struct Stepper {
    /// AdamW with its parameter groups.
    pub optim: ModuleOptimizer,
    /// Learning rate per step.
    pub schedule: CosineSchedule,
    /// Global-norm clipping threshold (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Optimiser steps done.
    pub step: usize,
    /// 0-based epoch (selects the miner of a hardness schedule).
    pub epoch: usize,
}

impl Stepper {
    fn finish(
        &mut self,
        model: TwinTowers,
        mut grads: GradientsParams,
        scored: (f64, f64, LearningStats),
        pairs: u64,
    ) -> (TwinTowers, StepOutcome) {
        let grad_norm = match self.max_grad_norm {
            Some(m) => clip_grad_norm(&mut grads, &model, m),
            None => super::optim::grad_norm(&mut grads, &model),
        };
        let lr = self.schedule.lr(self.step);
        let model = self.optim.step(lr, model, grads);
        self.step += 1;
        let (i2t, t2i, stats) = scored;
        (
            model,
            StepOutcome {
                loss: 0.5 * (i2t + t2i),
                loss_i2t: i2t,
                loss_t2i: t2i,
                stats,
                grad_norm,
                lr,
                pairs,
            },
        )
    }

    /// One step on one batch. On a non-finite loss the model is returned unchanged with
    /// [`StepError::NonFinite`].
    // The model travels back with the error so the caller keeps its last good weights.
    #[allow(clippy::result_large_err)]
    pub fn step(
        &mut self,
        model: TwinTowers,
        batch: TrainBatch,
        objective: &dyn Objective,
    ) -> Result<(TwinTowers, StepOutcome), (TwinTowers, StepError)> {
        let pairs = batch.pairs();
        let n = self.step + 1;
        let img = model.embed_images(batch.images);
        let txt = model.embed_texts(batch.texts);
        let scored = objective.score(
            img,
            &batch.image_labels,
            txt,
            &batch.text_labels,
            batch.weights.as_ref(),
            model.logit_params(),
            self.epoch,
        );
        let s = match finite_score(scored, n) {
            Ok(s) => s,
            Err(e) => return Err((model, e)),
        };
        let grads = GradientsParams::from_grads(s.loss.backward(), &model);
        Ok(self.finish(model, grads, (s.i2t, s.t2i, s.stats), pairs))
    }

    /// One step over several micro-batches that together form one batch, keeping the negatives
    /// of the whole batch (see the module documentation).
    #[allow(clippy::result_large_err)]
    pub fn step_accumulated(
        &mut self,
        model: TwinTowers,
        micro: Vec<TrainBatch>,
        objective: &dyn Objective,
    ) -> Result<(TwinTowers, StepOutcome), (TwinTowers, StepError)> {
        if micro.is_empty() {
            return Err((model, StepError::Empty));
        }
        if micro.len() == 1 {
            let b = micro.into_iter().next().expect("one micro-batch");
            return self.step(model, b, objective);
        }
        let n = self.step + 1;
        let img_labels: Vec<usize> = micro.iter().flat_map(|b| b.image_labels.clone()).collect();
        let txt_labels: Vec<usize> = micro.iter().flat_map(|b| b.text_labels.clone()).collect();
        let weights = BatchWeights::concat(micro.iter().map(|b| b.weights.as_ref()));
        let pairs = 2 * img_labels.len() as u64 * txt_labels.len() as u64;
        // Pass 1: every micro-batch's embeddings without a graph.
        let frozen = model.valid();
        let mut img_fixed = Vec::with_capacity(micro.len());
        let mut txt_fixed = Vec::with_capacity(micro.len());
        for b in &micro {
            img_fixed.push(frozen.embed_images(b.images.clone()).autodiff());
            txt_fixed.push(frozen.embed_texts(b.texts.clone()).autodiff());
        }
        drop(frozen);
        // Pass 2: each micro-batch live, the others fixed.
        let mut acc = GradientsAccumulator::<TwinTowers>::new();
        let mut first: Option<(f64, f64, LearningStats)> = None;
        let last = micro.len() - 1;
        for (j, b) in micro.into_iter().enumerate() {
            let live_img = model.embed_images(b.images);
            let live_txt = model.embed_texts(b.texts);
            let mut imgs = img_fixed.clone();
            imgs[j] = live_img;
            let mut txts = txt_fixed.clone();
            txts[j] = live_txt;
            // The logit scale is shared by every micro-step: live in the first only, so its
            // gradient is counted once (open_clip passes it live to every micro-step and so
            // multiplies its gradient by accum_freq).
            let logits = if j == 0 {
                model.logit_params()
            } else {
                let live = model.logit_params();
                LogitParams {
                    scale: live.scale.map(|t| t.detach()),
                    bias: live.bias.map(|t| t.detach()),
                }
            };
            // Every micro-step meets the same cross-batch memory; the last one enqueues
            // the whole batch once.
            let scored = objective.score_micro(
                Tensor::cat(imgs, 0),
                &img_labels,
                Tensor::cat(txts, 0),
                &txt_labels,
                weights.as_ref(),
                logits,
                self.epoch,
                j == last,
            );
            let s = match finite_score(scored, n) {
                Ok(s) => s,
                Err(e) => return Err((model, e)),
            };
            first.get_or_insert((s.i2t, s.t2i, s.stats));
            let grads = GradientsParams::from_grads(s.loss.backward(), &model);
            acc.accumulate(&model, grads);
        }
        let grads = acc.grads();
        Ok(self.finish(
            model,
            grads,
            first.expect("at least two micro-batches"),
            pairs,
        ))
    }
}

/// A batch's score as step `step` takes it: the objective's error, or a non-finite loss
/// (`0.5 * (i2t + t2i)`), becomes the step's error.
fn finite_score(scored: Result<Scored, ScoreError>, step: usize) -> Result<Scored, StepError> {
    let s = scored.map_err(|why| StepError::Loss { step, why: why.0 })?;
    let value = 0.5 * (s.i2t + s.t2i);
    if !value.is_finite() {
        return Err(StepError::NonFinite { step, value });
    }
    Ok(s)
}
