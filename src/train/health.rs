//! Whether a run is learning: the statistics printed beside the loss every epoch, logged per
//! step in `metrics.jsonl` and per epoch in the report, and the collapse warning.
//!
//! - `active_fraction`, `pos_sim`, `neg_sim`, `gap`: the loss's own [`LossStats`] (gathered
//!   while it mines and scores, no extra pass), the mean of both directions;
//! - `spread`: `1 − mean pairwise cosine` of the batch's image embeddings
//!   ([`siam_losses::embedding_spread`]): 0 when every image maps to one point, about 1 when
//!   they point in unrelated directions.
//!
//! A run has collapsed ([`collapse_warning`]) when, over an epoch, the spread is below
//! [`MIN_SPREAD`] while positives score no better than negatives (gap below [`MIN_GAP`]; a
//! narrow cone that still ranks the labels is how the multi-similarity loss trains from random
//! weights: spread 0.04, gap 0.02 and the best zero-shot accuracy of the losses on cifar10-dev
//! after one epoch), or every tuple is active (at least [`PINNED_ACTIVE`]) while positives score
//! no better than negatives (gap below [`MIN_GAP`]): a triplet loss then sits at its margin,
//! since the mean of `s(a,n) − s(a,p) + m` over active triplets is `m` when `s(a,p) = s(a,n)`.

use serde::{Deserialize, Serialize};
use siam_losses::LossStats;

/// Spread under which the image embeddings count as collapsed (mean pairwise cosine > 0.95).
pub const MIN_SPREAD: f64 = 0.05;
/// Active fraction from which every tuple counts as active.
pub const PINNED_ACTIVE: f64 = 0.99;
/// Gap (cosine units) under which positives and negatives score alike.
pub const MIN_GAP: f64 = 0.01;

/// The learning statistics of a step, or their mean over an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LearningStats {
    /// Fraction of mined tuples with a non-zero loss (contrastive: rows where a negative still
    /// outscores the lowest positive), mean of both directions.
    #[serde(default)]
    pub active_fraction: f64,
    /// Mean similarity of the positive pairs the loss used (in the loss's distance: cosine by
    /// default).
    #[serde(default)]
    pub pos_sim: f64,
    /// Mean similarity of the negative pairs the loss used.
    #[serde(default)]
    pub neg_sim: f64,
    /// How much closer positives are than negatives (`pos_sim − neg_sim` for a similarity).
    #[serde(default)]
    pub gap: f64,
    /// `1 − mean pairwise cosine` of the image embeddings (0: collapsed).
    #[serde(default)]
    pub spread: f64,
}

impl LearningStats {
    /// A step's statistics from the loss's and the image embeddings' spread.
    pub fn of(loss: &LossStats, spread: Option<f32>) -> Self {
        Self {
            active_fraction: loss.active_fraction as f64,
            pos_sim: loss.mean_positive as f64,
            neg_sim: loss.mean_negative as f64,
            gap: loss.gap as f64,
            spread: spread.map_or(f64::NAN, f64::from),
        }
    }

    /// `active 0.42  pos 0.61  neg 0.12  gap 0.49  spread 0.83`.
    pub fn describe(&self) -> String {
        format!(
            "active {:.2}  pos {:.3}  neg {:.3}  gap {:.3}  spread {:.3}",
            self.active_fraction, self.pos_sim, self.neg_sim, self.gap, self.spread
        )
    }
}

/// The running mean of [`LearningStats`] over an epoch's steps (NaN values, e.g. the spread
/// of a one-image batch, are left out of their field's mean).
#[derive(Debug, Clone, Default)]
pub struct StatsMean {
    sums: [f64; 5],
    counts: [usize; 5],
}

impl StatsMean {
    /// Adds one step.
    pub fn push(&mut self, s: &LearningStats) {
        let v = [s.active_fraction, s.pos_sim, s.neg_sim, s.gap, s.spread];
        for (k, x) in v.into_iter().enumerate() {
            if x.is_finite() {
                self.sums[k] += x;
                self.counts[k] += 1;
            }
        }
    }

    /// The mean, `None` before the first step.
    pub fn mean(&self) -> Option<LearningStats> {
        if self.counts.iter().all(|&c| c == 0) {
            return None;
        }
        let m = |k: usize| {
            if self.counts[k] > 0 {
                self.sums[k] / self.counts[k] as f64
            } else {
                f64::NAN
            }
        };
        Some(LearningStats {
            active_fraction: m(0),
            pos_sim: m(1),
            neg_sim: m(2),
            gap: m(3),
            spread: m(4),
        })
    }
}

/// What the run trains with, as the warning needs it to name a cause and a flag.
#[derive(Debug, Clone, Copy)]
pub struct RunShape<'a> {
    /// The loss's name (`triplet`, ...).
    pub loss: &'a str,
    /// The miner schedule as given or defaulted (`all`, `semihard:2,hard`, ...).
    pub miner: &'a str,
    /// The triplet margin (`None` for other losses).
    pub margin: Option<f64>,
    /// Peak learning rate.
    pub lr: f64,
}

/// The collapse warning for an epoch's mean statistics and loss, naming the likely cause and
/// the flag to change; `None` when the run looks healthy (see the module documentation).
pub fn collapse_warning(
    epoch: usize,
    s: &LearningStats,
    loss: Option<f64>,
    run: RunShape<'_>,
) -> Option<String> {
    let hardest = run
        .miner
        .split(',')
        .next_back()
        .is_some_and(|m| matches!(m.trim(), "hard" | "max-violation"));
    let fix = if hardest {
        format!(
            "mining only the hardest tuples (--miner {}) from random weights pulls every embedding to one point; use --miner semihard or --miner all, or a schedule such as --miner semihard:2,hard",
            run.miner
        )
    } else {
        format!(
            "the learning rate (--lr {}) is likely too high for this batch, or the batch holds too few labels; lower --lr, or raise --classes-per-batch / --batch-size",
            run.lr
        )
    };
    // A NaN gap (no tuple scored) counts as no separation.
    if s.spread.is_finite() && s.spread < MIN_SPREAD && (s.gap.is_nan() || s.gap < MIN_GAP) {
        return Some(format!(
            "epoch {epoch}: the image embeddings collapsed (spread {:.3}: every image maps to nearly the same point). Likely cause: {fix}",
            s.spread
        ));
    }
    if s.active_fraction >= PINNED_ACTIVE && s.gap < MIN_GAP {
        let pinned = match (run.margin, loss) {
            (Some(m), Some(l)) if (l - m).abs() <= 0.1 * m.abs().max(1e-6) => {
                format!("; the {} loss {l:.4} sits at its margin {m}", run.loss)
            }
            _ => String::new(),
        };
        return Some(format!(
            "epoch {epoch}: every tuple is active and positives score no higher than negatives (gap {:.4}{pinned}): the model does not separate the labels. Likely cause: {fix}",
            s.gap
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};
    use siam_losses::{embedding_spread, HardnessSchedule, Loss};

    const TRIPLET: RunShape<'static> = RunShape {
        loss: "triplet",
        miner: "hard",
        margin: Some(0.2),
        lr: 1e-3,
    };

    /// The statistics of one step where every image and every text embedding is the same.
    fn collapsed_step(miner: &str) -> (LearningStats, f64) {
        let dev = burn::tensor::Device::flex();
        let rows = |n: usize| {
            let v: Vec<f32> = (0..n).flat_map(|_| [0.6f32, 0.0, -0.8, 0.0]).collect();
            Tensor::<2>::from_data(TensorData::new(v, [n, 4]), &dev)
        };
        let (img, txt) = (rows(8), rows(4));
        let loss: Loss = "triplet".parse().unwrap();
        let miners: HardnessSchedule = miner.parse().unwrap();
        let spread = embedding_spread(&img);
        let il = [0, 0, 1, 1, 2, 2, 3, 3];
        let out = loss
            .forward(
                img,
                &il,
                txt,
                &[0, 1, 2, 3],
                miners.miner_for_epoch(0),
                None,
            )
            .unwrap();
        let v = out.loss.into_data().try_into_vec_as::<f64>().unwrap()[0];
        (LearningStats::of(&out.stats, spread), v)
    }

    #[test]
    fn collapsed_embeddings_raise_the_warning_with_its_cause() {
        let (s, loss) = collapsed_step("hard");
        assert!(s.spread.abs() < 1e-6 && s.active_fraction == 1.0 && s.gap.abs() < 1e-6);
        let w = collapse_warning(3, &s, Some(loss), TRIPLET).expect("collapse is reported");
        assert!(
            w.starts_with("epoch 3: the image embeddings collapsed"),
            "{w}"
        );
        assert!(w.contains("--miner semihard"), "{w}");
        // The same with the learning rate to blame when the miner is not the hardest.
        let w = collapse_warning(
            3,
            &s,
            Some(loss),
            RunShape {
                miner: "all",
                ..TRIPLET
            },
        )
        .unwrap();
        assert!(w.contains("--lr 0.001"), "{w}");
    }

    #[test]
    fn a_loss_pinned_at_the_margin_with_every_tuple_active_is_reported() {
        let (mut s, loss) = collapsed_step("all");
        assert!((loss - 0.2).abs() < 1e-5);
        // Spread alone would not tell: images apart, yet no label separated.
        s.spread = 0.6;
        let w = collapse_warning(1, &s, Some(loss), TRIPLET).expect("pinned loss is reported");
        assert!(w.contains("sits at its margin 0.2"), "{w}");
    }

    #[test]
    fn a_narrow_cone_that_still_ranks_the_labels_is_no_collapse() {
        // Multi-similarity on cifar10-dev after one epoch (session 5's learning bench).
        let s = LearningStats {
            active_fraction: 1.0,
            pos_sim: 0.479,
            neg_sim: 0.459,
            gap: 0.020,
            spread: 0.037,
        };
        assert_eq!(collapse_warning(1, &s, Some(0.61), TRIPLET), None);
        let flat = LearningStats { gap: 0.002, ..s };
        let w = collapse_warning(1, &flat, Some(0.61), TRIPLET).expect("collapse");
        assert!(w.contains("collapsed (spread 0.037"), "{w}");
    }

    #[test]
    fn a_learning_run_raises_nothing() {
        let s = LearningStats {
            active_fraction: 0.99,
            pos_sim: 0.4,
            neg_sim: 0.1,
            gap: 0.3,
            spread: 0.7,
        };
        assert_eq!(collapse_warning(1, &s, Some(0.15), TRIPLET), None);
        let idle = LearningStats {
            active_fraction: 0.2,
            gap: 0.0,
            ..s
        };
        assert_eq!(collapse_warning(1, &idle, Some(0.01), TRIPLET), None);
    }

    #[test]
    fn epoch_means_skip_missing_values() {
        let mut m = StatsMean::default();
        assert_eq!(m.mean(), None);
        m.push(&LearningStats {
            active_fraction: 1.0,
            spread: f64::NAN,
            ..Default::default()
        });
        m.push(&LearningStats {
            active_fraction: 0.5,
            spread: 0.4,
            ..Default::default()
        });
        let mean = m.mean().unwrap();
        assert_eq!((mean.active_fraction, mean.spread), (0.75, 0.4));
    }
}
