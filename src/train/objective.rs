//! The training objective: a `siam_losses` loss and miner (or a miner schedule), applied in
//! both directions.
//!
//! - triplet, pairwise, multi-similarity: `0.5 * (L(img -> txt) + L(txt -> img))`, each
//!   direction mined on its own `B x R` matrix (pytorch-metric-learning's `ref_emb` call);
//! - contrastive: `siam_losses`' symmetric InfoNCE is already the mean of both directions, so
//!   it is called once with image anchors and text references.

use burn::tensor::Tensor;

use super::config::LossSettings;
use super::step::{Objective, ScoreError, Scored};
use super::TrainError;
use siam_losses::{HardnessSchedule, Loss};

/// A loss with its miner schedule.
#[derive(Debug, Clone)]
pub struct MetricObjective {
    /// The loss with its parameters.
    pub loss: Loss,
    /// The miner per epoch.
    pub miners: HardnessSchedule,
    /// The miner schedule as given (for the log).
    pub miner_text: String,
}

/// The miner a loss uses when `--miner` is not given: batch-all (mean over active triplets)
/// for the triplet loss, every pair for pairwise and contrastive, and multi-similarity mining
/// for the multi-similarity loss (its paper's pairing).
pub fn default_miner(loss: &Loss) -> &'static str {
    match loss {
        Loss::Triplet(_) => "all",
        Loss::Pairwise(_) => "all",
        Loss::Contrastive(_) => "none",
        Loss::MultiSimilarity(_) => "multi-similarity",
    }
}

/// Builds the objective from the settings, checking every value.
pub fn build_objective(s: &LossSettings) -> Result<Box<dyn Objective>, TrainError> {
    let cfg = |e: siam_losses::LossError| TrainError::Config(format!("--loss {}: {e}", s.name()));
    let mut loss: Loss = s.name().parse().map_err(cfg)?;
    let finite = |what: &str, v: f64| {
        if v.is_finite() {
            Ok(v as f32)
        } else {
            Err(TrainError::Config(format!(
                "{what} must be a finite number, got {v}"
            )))
        }
    };
    match &mut loss {
        Loss::Triplet(t) => t.margin = finite("--margin", s.margin)?,
        Loss::Pairwise(p) => {
            p.pos_margin = finite("--pos-margin", s.pos_margin)?;
            p.neg_margin = finite("--neg-margin", s.neg_margin)?;
        }
        Loss::Contrastive(c) => {
            if let Some(t) = s.temperature {
                c.temperature = finite("--temperature", t)?;
            }
        }
        Loss::MultiSimilarity(m) => {
            m.alpha = finite("--ms-alpha", s.ms_alpha)?;
            m.beta = finite("--ms-beta", s.ms_beta)?;
            m.base = finite("--ms-base", s.ms_base)?;
        }
    }
    let miner_text = s
        .miner
        .clone()
        .unwrap_or_else(|| default_miner(&loss).to_string());
    let miners: HardnessSchedule = miner_text
        .parse()
        .map_err(|e| TrainError::Config(format!("--miner {miner_text}: {e}")))?;
    Ok(Box::new(MetricObjective {
        loss,
        miners,
        miner_text,
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

impl Objective for MetricObjective {
    fn score(
        &self,
        img: Tensor<2>,
        img_labels: &[usize],
        txt: Tensor<2>,
        txt_labels: &[usize],
        logit_scale: Tensor<1>,
        epoch: usize,
    ) -> Result<Scored, ScoreError> {
        let miner = self.miners.miner_for_epoch(epoch);
        let scale = self.uses_logit_scale().then_some(logit_scale);
        if let Loss::Contrastive(_) = self.loss {
            let out = self
                .loss
                .forward(img, img_labels, txt, txt_labels, miner, scale)
                .map_err(|e| ScoreError(e.to_string()))?;
            let v = value(&out.loss);
            return Ok(Scored {
                loss: out.loss,
                i2t: v,
                t2i: v,
                active: out.stats.active_fraction as f64,
            });
        }
        let a = self
            .loss
            .forward(
                img.clone(),
                img_labels,
                txt.clone(),
                txt_labels,
                miner,
                scale.clone(),
            )
            .map_err(|e| ScoreError(format!("image anchors: {e}")))?;
        let b = self
            .loss
            .forward(txt, txt_labels, img, img_labels, miner, scale)
            .map_err(|e| ScoreError(format!("text anchors: {e}")))?;
        let (i2t, t2i) = (value(&a.loss), value(&b.loss));
        Ok(Scored {
            loss: (a.loss + b.loss).mul_scalar(0.5),
            i2t,
            t2i,
            active: 0.5 * (a.stats.active_fraction + b.stats.active_fraction) as f64,
        })
    }

    fn uses_logit_scale(&self) -> bool {
        matches!(self.loss, Loss::Contrastive(_))
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
        };
        format!("{} ({params}), miner {}", self.loss.name(), self.miner_text)
    }
}
