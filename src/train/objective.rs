//! The training objective: a `siam_losses` loss and miner (or a miner schedule), applied in
//! both directions, optionally with a cross-batch memory per direction.
//!
//! - triplet, pairwise, multi-similarity: `0.5 * (L(img -> txt) + L(txt -> img))`, each
//!   direction mined on its own `B x R` matrix (pytorch-metric-learning's `ref_emb` call);
//! - contrastive: `siam_losses`' symmetric InfoNCE is already the mean of both directions, so
//!   it is called once with image anchors and text references; sigmoid (SigLIP) scores every
//!   pair, so it too is called once;
//! - with `--xbm SIZE` every direction has its own [`CrossBatchMemory`] of the last SIZE
//!   references (texts for image anchors, images for text anchors), appended to the batch's
//!   own after `--xbm-start` steps and filled after each loss; the contrastive loss then runs
//!   one-directionally in each direction (the same loss as the symmetric one without memory).
//!   With `--accum`, every micro-step reads the memories as they were at the step's start and
//!   the step's whole batch is enqueued once; checkpoints save the memories (`xbm.bin`), so a
//!   resumed run continues with them;
//! - with `--weight-by confidence` every direction weighs its anchors (`siam_losses::Weights`):
//!   images by their confidence, texts by the mean confidence of the batch's images they were
//!   drawn for ([`BatchWeights`]); the symmetric losses weigh their image rows (and the
//!   contrastive loss its text rows) the same way.

use std::sync::Mutex;

use burn::tensor::Tensor;

use super::config::LossSettings;
use super::health::LearningStats;
use super::step::{BatchWeights, Objective, ScoreError, Scored};
use super::TrainError;
use siam_losses::{
    embedding_spread, CrossBatchMemory, HardnessSchedule, LogitParams, Loss, LossStats, Weights,
    XbmConfig,
};

/// A loss with its miner schedule.
#[derive(Debug)]
pub struct MetricObjective {
    /// The loss with its parameters.
    pub loss: Loss,
    /// The miner per epoch.
    pub miners: HardnessSchedule,
    /// Cross-batch memories `[texts for image anchors, images for text anchors]`.
    pub memory: Option<Mutex<[CrossBatchMemory; 2]>>,
}

/// Builds the objective from the settings, checking every value.
pub fn build_objective(s: &LossSettings) -> Result<Box<dyn Objective>, TrainError> {
    let loss = s.loss()?;
    let miners = s.miners();
    let memory = match s.xbm {
        0 => None,
        size => {
            let xbm = XbmConfig::new(size).with_start(s.xbm_start);
            let one = || {
                xbm.init()
                    .map_err(|e| TrainError::Config(format!("--xbm {size}: {e}")))
            };
            Some(Mutex::new([one()?, one()?]))
        }
    };
    Ok(Box::new(MetricObjective {
        loss,
        miners,
        memory,
    }))
}

fn value(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .as_slice::<f64>()
        .map(|s| s[0])
        .unwrap_or(f64::NAN)
}

impl MetricObjective {
    /// Losses that already score both directions in one call (without a memory).
    fn symmetric(&self) -> bool {
        matches!(self.loss, Loss::Contrastive(_) | Loss::Sigmoid(_))
    }

    /// Both directions through the memories; the contrastive loss one-directional in each.
    #[allow(clippy::too_many_arguments)]
    fn score_with_memory(
        &self,
        memory: &Mutex<[CrossBatchMemory; 2]>,
        (img, img_labels): (Tensor<2>, &[usize]),
        (txt, txt_labels): (Tensor<2>, &[usize]),
        (i2t_w, t2i_w): (Weights<'_>, Weights<'_>),
        logits: LogitParams,
        epoch: usize,
        commit: bool,
        spread: Option<f32>,
    ) -> Result<Scored, ScoreError> {
        let miner = self.miners.miner_for_epoch(epoch);
        let loss = match self.loss {
            Loss::Contrastive(c) => Loss::Contrastive(siam_losses::ContrastiveLoss {
                symmetric: false,
                ..c
            }),
            other => other,
        };
        let mut mem = memory.lock().map_err(|_| {
            ScoreError("the cross-batch memory was poisoned by an earlier failure".to_string())
        })?;
        let [to_texts, to_images] = &mut *mem;
        let a = to_texts
            .score(
                &loss,
                img.clone(),
                img_labels,
                txt.clone(),
                txt_labels,
                miner,
                logits.clone(),
                i2t_w,
            )
            .map_err(|e| ScoreError(format!("image anchors: {e}")))?;
        let b = to_images
            .score(
                &loss,
                txt.clone(),
                txt_labels,
                img.clone(),
                img_labels,
                miner,
                logits,
                t2i_w,
            )
            .map_err(|e| ScoreError(format!("text anchors: {e}")))?;
        // After both losses (PML issue #24: enqueueing first lets a batch meet itself).
        if commit {
            let fail = |e: siam_losses::LossError| ScoreError(format!("cross-batch memory: {e}"));
            to_texts.commit(txt, txt_labels).map_err(fail)?;
            to_images.commit(img, img_labels).map_err(fail)?;
        }
        let (i2t, t2i) = (value(&a.loss), value(&b.loss));
        Ok(Scored {
            loss: (a.loss + b.loss).mul_scalar(0.5),
            i2t,
            t2i,
            stats: LearningStats::of(&LossStats::mean_of(&a.stats, &b.stats), spread),
        })
    }

    /// The initial `(t', b)` of a loss with a learnable bias: SigLIP's `(ln 10, -10)`.
    pub fn initial_logits(&self) -> Option<(f32, f32)> {
        match self.loss {
            Loss::Sigmoid(s) => Some((s.logit_scale, s.logit_bias)),
            _ => None,
        }
    }
}

impl Objective for MetricObjective {
    fn score(
        &self,
        img: Tensor<2>,
        img_labels: &[usize],
        txt: Tensor<2>,
        txt_labels: &[usize],
        weights: Option<&BatchWeights>,
        logits: LogitParams,
        epoch: usize,
    ) -> Result<Scored, ScoreError> {
        self.score_micro(
            img, img_labels, txt, txt_labels, weights, logits, epoch, true,
        )
    }

    fn state(&self) -> Option<Vec<siam_losses::XbmSnapshot>> {
        let mem = self.memory.as_ref()?.lock().ok()?;
        Some(mem.iter().map(CrossBatchMemory::snapshot).collect())
    }

    fn restore_state(
        &self,
        state: &[siam_losses::XbmSnapshot],
        device: &burn::tensor::Device,
    ) -> Result<(), ScoreError> {
        let Some(memory) = &self.memory else {
            return Ok(());
        };
        let mut mem = memory.lock().map_err(|_| {
            ScoreError("the cross-batch memory was poisoned by an earlier failure".to_string())
        })?;
        if state.len() != mem.len() {
            return Err(ScoreError(format!(
                "{} cross-batch memories saved, {} expected",
                state.len(),
                mem.len()
            )));
        }
        for (m, s) in mem.iter_mut().zip(state) {
            m.restore(s, device)
                .map_err(|e| ScoreError(format!("cross-batch memory: {e}")))?;
        }
        Ok(())
    }

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
        let miner = self.miners.miner_for_epoch(epoch);
        // Read before the loss takes the embeddings: one [B, d] read-back, no graph.
        let spread = embedding_spread(&img);
        let logits = if self.uses_logit_scale() {
            logits
        } else {
            LogitParams::default()
        };
        let (i2t_w, t2i_w) = match weights {
            Some(w) => (
                Weights::both(&w.images, &w.texts),
                Weights::both(&w.texts, &w.images),
            ),
            None => (Weights::none(), Weights::none()),
        };
        if let Some(memory) = &self.memory {
            return self.score_with_memory(
                memory,
                (img, img_labels),
                (txt, txt_labels),
                (i2t_w, t2i_w),
                logits,
                epoch,
                commit,
                spread,
            );
        }
        if self.symmetric() {
            let out = self
                .loss
                .forward_weighted(img, img_labels, txt, txt_labels, miner, logits, i2t_w)
                .map_err(|e| ScoreError(e.to_string()))?;
            let v = value(&out.loss);
            return Ok(Scored {
                loss: out.loss,
                i2t: v,
                t2i: v,
                stats: LearningStats::of(&out.stats, spread),
            });
        }
        let a = self
            .loss
            .forward_weighted(
                img.clone(),
                img_labels,
                txt.clone(),
                txt_labels,
                miner,
                logits.clone(),
                i2t_w,
            )
            .map_err(|e| ScoreError(format!("image anchors: {e}")))?;
        let b = self
            .loss
            .forward_weighted(txt, txt_labels, img, img_labels, miner, logits, t2i_w)
            .map_err(|e| ScoreError(format!("text anchors: {e}")))?;
        let (i2t, t2i) = (value(&a.loss), value(&b.loss));
        Ok(Scored {
            loss: (a.loss + b.loss).mul_scalar(0.5),
            i2t,
            t2i,
            stats: LearningStats::of(&LossStats::mean_of(&a.stats, &b.stats), spread),
        })
    }

    fn uses_logit_scale(&self) -> bool {
        self.loss.uses_logit_scale()
    }

    fn initial_logits(&self) -> Option<(f32, f32)> {
        MetricObjective::initial_logits(self)
    }

    fn describe(&self) -> String {
        let params = match &self.loss {
            Loss::Triplet(t) => format!("margin {}", t.margin),
            Loss::Pairwise(p) => {
                format!("pos margin {}, neg margin {}", p.pos_margin, p.neg_margin)
            }
            Loss::Contrastive(c) => format!("initial temperature {}", c.temperature),
            Loss::MultiSimilarity(m) => {
                format!("alpha {}, beta {}, base {}", m.alpha, m.beta, m.base)
            }
            Loss::Sigmoid(s) => format!(
                "learnable t' from {:.4}, bias from {}",
                s.logit_scale, s.logit_bias
            ),
        };
        let memory = match &self.memory {
            Some(m) => {
                let c = m.lock().map(|m| m[0].config()).ok();
                c.map_or(String::new(), |c| {
                    format!(
                        ", cross-batch memory of {} references per direction from step {}",
                        c.size, c.start
                    )
                })
            }
            None => String::new(),
        };
        format!(
            "{} ({params}), miner {}{memory}",
            self.loss.name(),
            self.miners
        )
    }
}
