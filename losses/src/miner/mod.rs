//! Miners: which (anchor, positive, negative) triplets or (anchor, reference) pairs a loss sees.
//!
//! Every miner works per anchor on the oriented `B × R` matrix ([`PairMatrix`], smaller =
//! closer), so memory is `O(B·R)`; nothing builds `B × R × R` masks. The triplet margin
//! of `(a, p, n)` is `t = o_an − o_ap` (positive when the negative is farther).
//!
//! One file per miner, each with its maths, source and defaults: `all.rs` (batch-all and
//! PML's `TripletMarginMiner` bands), `batch_hard.rs`, `semihard.rs`, `max_violation.rs`,
//! `distance_weighted.rs`, `multi_similarity.rs`; `cap.rs` caps triplets per anchor and
//! `schedule.rs` picks a miner per epoch. [`Miner`] and [`HardnessSchedule`] parse once from
//! their command-line text (`semihard:2,hard`, `all@16`).

mod all;
mod batch_hard;
mod cap;
pub mod distance_weighted;
mod max_violation;
pub mod multi_similarity;
mod schedule;
mod semihard;

pub(crate) use all::for_each_band_triplet;
pub use schedule::HardnessSchedule;

use std::fmt;
use std::str::FromStr;

use crate::error::LossError;
use crate::matrix::PairMatrix;

/// The tuples a miner chose.
#[derive(Debug, Clone, PartialEq)]
pub enum Tuples {
    /// Every valid tuple: all triplets for a triplet loss, all pairs for a pair loss.
    All,
    /// Every triplet `(a, p, n)` whose margin `t = o_an − o_ap` lies in `(lo, hi]`
    /// (implicit: counted per anchor from sorted negatives, never enumerated).
    TripletBand {
        /// Exclusive lower bound on `t` (may be `−∞`).
        lo: f32,
        /// Inclusive upper bound on `t` (may be `+∞`).
        hi: f32,
    },
    /// Explicit triplets `[anchor, positive, negative]`.
    Triplets(Vec<[u32; 3]>),
    /// Explicit positive and negative pairs `[anchor, reference]`.
    Pairs {
        /// Anchor–positive pairs.
        pos: Vec<[u32; 2]>,
        /// Anchor–negative pairs.
        neg: Vec<[u32; 2]>,
    },
}

/// Which triplets pytorch-metric-learning's `TripletMarginMiner` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripletKind {
    /// `t ≤ margin`: every triplet that violates the margin.
    All,
    /// `t ≤ margin` and `t ≤ 0`: the negative is at least as close as the positive.
    Hard,
    /// `0 < t ≤ margin`: the negative is farther than the positive but inside the margin.
    SemiHard,
    /// `t > margin`: triplets that already satisfy the margin.
    Easy,
}

/// A mining strategy.
#[derive(Debug, Clone, PartialEq)]
pub enum MinerKind {
    /// No mining: every valid tuple (same as [`MinerKind::All`]).
    None,
    /// Batch-all: every valid triplet; pair it with [`crate::Reducer::MeanNonZero`] to average
    /// over the active ones (Hermans, Beyer, Leibe 2017, "In Defense of the Triplet Loss").
    All,
    /// Batch-hard: per anchor, the farthest positive and the closest negative
    /// (Hermans et al. 2017; pytorch-metric-learning `BatchHardMiner`).
    BatchHard,
    /// FaceNet semi-hard (Schroff, Kalenichenko, Philbin 2015): per anchor–positive pair the
    /// closest negative with `o_ap < o_an < o_ap + margin`; when there is none, the hardest
    /// (closest) negative of the anchor. `margin` defaults to the loss's margin.
    SemiHard {
        /// Width of the semi-hard band; `None` takes the loss's margin.
        margin: Option<f32>,
    },
    /// pytorch-metric-learning's `TripletMarginMiner(margin, type_of_triplets)`: every
    /// triplet whose margin `t` falls in the band of `kind`.
    TripletMargin {
        /// The miner's margin.
        margin: f32,
        /// Which band.
        kind: TripletKind,
    },
    /// Max-violation (Faghri et al. 2018, VSE++): every anchor–positive pair with the anchor's
    /// hardest negative. With image anchors against text references and the reverse (two calls),
    /// this is VSE++'s sum of the two hardest-negative hinge terms.
    MaxViolation,
    /// Distance-weighted sampling (Wu, Manmatha, Smola, Krähenbühl 2017): per anchor–positive
    /// pair one negative drawn with probability `∝ min(λ, 1/q(d))`,
    /// `q(d) ∝ d^{n−2} (1 − d²/4)^{(n−3)/2}` the density of distances between uniform points on
    /// the unit sphere in `n` dimensions, `d` clamped below at `cutoff`, negatives with
    /// `d ≥ nonzero_loss_cutoff` excluded. Assumes unit-norm embeddings (cosine distances are
    /// converted with `d = √(2 − 2s)`). Deterministic given `seed` and the batch.
    DistanceWeighted {
        /// Lower clamp on `d` (paper: 0.5).
        cutoff: f32,
        /// Negatives at or beyond this distance are never drawn (paper: 1.4).
        nonzero_loss_cutoff: f32,
        /// Seed, mixed with the batch's values.
        seed: u64,
    },
    /// Multi-similarity pair mining (Wang et al. 2019, CVPR; pytorch-metric-learning
    /// `MultiSimilarityMiner`): negatives with `o_an − ε < max_p o_ap` and positives with
    /// `o_ap + ε > min_n o_an`.
    MultiSimilarity {
        /// The slack ε (paper and PML default 0.1).
        epsilon: f32,
    },
}

/// A miner with an optional cap on the triplets kept per anchor.
#[derive(Debug, Clone, PartialEq)]
pub struct Miner {
    /// The strategy.
    pub kind: MinerKind,
    /// Keep at most this many triplets per anchor: the ones with the largest violation
    /// `o_ap − o_an` (ties by order). `None` keeps all.
    pub per_anchor_cap: Option<usize>,
}

impl Miner {
    /// A miner without a cap.
    pub fn new(kind: MinerKind) -> Self {
        Self {
            kind,
            per_anchor_cap: None,
        }
    }

    /// Every tuple (no mining).
    pub fn none() -> Self {
        Self::new(MinerKind::None)
    }

    /// The same miner with a per-anchor cap.
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.per_anchor_cap = Some(cap);
        self
    }

    /// The miner's command-line name.
    pub fn name(&self) -> &'static str {
        match self.kind {
            MinerKind::None => "none",
            MinerKind::All => "all",
            MinerKind::BatchHard => "hard",
            MinerKind::SemiHard { .. } => "semihard",
            MinerKind::TripletMargin { .. } => "triplet-margin",
            MinerKind::MaxViolation => "max-violation",
            MinerKind::DistanceWeighted { .. } => "distance-weighted",
            MinerKind::MultiSimilarity { .. } => "multi-similarity",
        }
    }

    /// Whether this miner keeps every tuple.
    pub fn is_all(&self) -> bool {
        matches!(self.kind, MinerKind::None | MinerKind::All) && self.per_anchor_cap.is_none()
    }

    /// Mines tuples from `m`; `loss_margin` is the loss's (relative) margin, used by the
    /// semi-hard band when it has none of its own.
    pub fn mine(&self, m: &PairMatrix<'_>, loss_margin: f32) -> Tuples {
        let tuples = match &self.kind {
            MinerKind::None | MinerKind::All => Tuples::All,
            MinerKind::BatchHard => batch_hard::batch_hard(m),
            MinerKind::SemiHard { margin } => semihard::semi_hard(m, margin.unwrap_or(loss_margin)),
            MinerKind::TripletMargin { margin, kind } => all::triplet_margin_band(*margin, *kind),
            MinerKind::MaxViolation => max_violation::max_violation(m),
            MinerKind::DistanceWeighted {
                cutoff,
                nonzero_loss_cutoff,
                seed,
            } => distance_weighted::distance_weighted(m, *cutoff, *nonzero_loss_cutoff, *seed),
            MinerKind::MultiSimilarity { epsilon } => {
                multi_similarity::multi_similarity(m, *epsilon)
            }
        };
        match self.per_anchor_cap {
            Some(cap) => cap::cap_per_anchor(m, tuples, cap),
            None => tuples,
        }
    }
}

impl Default for Miner {
    fn default() -> Self {
        Self::none()
    }
}

pub(crate) fn parse_err(what: &'static str, input: &str, why: impl Into<String>) -> LossError {
    LossError::Parse {
        what,
        input: input.to_string(),
        why: why.into(),
    }
}

impl FromStr for Miner {
    type Err = LossError;

    /// `all | hard | semihard | max-violation | distance-weighted | multi-similarity | none`,
    /// optionally followed by `@N` to keep at most `N` triplets per anchor (e.g. `all@16`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (name, cap) = match s.split_once('@') {
            Some((n, c)) => {
                let cap = c.trim().parse::<usize>().ok().filter(|&c| c > 0);
                let cap = cap.ok_or_else(|| {
                    parse_err("miner", s, "the cap after `@` must be a positive integer")
                })?;
                (n.trim(), Some(cap))
            }
            None => (s, None),
        };
        let kind = match name.to_ascii_lowercase().as_str() {
            "none" => MinerKind::None,
            "all" | "batch-all" => MinerKind::All,
            "hard" | "batch-hard" => MinerKind::BatchHard,
            "semihard" | "semi-hard" => MinerKind::SemiHard { margin: None },
            "max-violation" | "maxviolation" | "vse++" => MinerKind::MaxViolation,
            "distance-weighted" => MinerKind::DistanceWeighted {
                cutoff: distance_weighted::DEFAULT_CUTOFF,
                nonzero_loss_cutoff: distance_weighted::DEFAULT_NONZERO_LOSS_CUTOFF,
                seed: 0,
            },
            "multi-similarity" | "ms" => MinerKind::MultiSimilarity {
                epsilon: multi_similarity::DEFAULT_EPSILON,
            },
            _ => {
                return Err(parse_err(
                    "miner",
                    s,
                    "expected all | hard | semihard | max-violation | distance-weighted | multi-similarity | none [@cap]",
                ))
            }
        };
        Ok(Miner {
            kind,
            per_anchor_cap: cap,
        })
    }
}

impl fmt::Display for Miner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if let Some(c) = self.per_anchor_cap {
            write!(f, "@{c}")?;
        }
        Ok(())
    }
}
