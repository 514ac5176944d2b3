//! Miners: which (anchor, positive, negative) triplets or (anchor, reference) pairs a loss sees.
//!
//! Every miner works per anchor on the oriented `B × R` matrix ([`PairMatrix`], smaller =
//! closer), so memory is `O(B·R)`; nothing builds `B × R × R` masks. The triplet margin
//! of `(a, p, n)` is `t = o_an − o_ap` (positive when the negative is farther).

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
            MinerKind::BatchHard => batch_hard(m),
            MinerKind::SemiHard { margin } => semi_hard(m, margin.unwrap_or(loss_margin)),
            MinerKind::TripletMargin { margin, kind } => {
                let (lo, hi) = match kind {
                    TripletKind::All => (f32::NEG_INFINITY, *margin),
                    TripletKind::Hard => (f32::NEG_INFINITY, margin.min(0.0)),
                    TripletKind::SemiHard => (0.0, *margin),
                    TripletKind::Easy => (*margin, f32::INFINITY),
                };
                Tuples::TripletBand { lo, hi }
            }
            MinerKind::MaxViolation => max_violation(m),
            MinerKind::DistanceWeighted {
                cutoff,
                nonzero_loss_cutoff,
                seed,
            } => distance_weighted(m, *cutoff, *nonzero_loss_cutoff, *seed),
            MinerKind::MultiSimilarity { epsilon } => multi_similarity(m, *epsilon),
        };
        match self.per_anchor_cap {
            Some(cap) => cap_per_anchor(m, tuples, cap),
            None => tuples,
        }
    }
}

impl Default for Miner {
    fn default() -> Self {
        Self::none()
    }
}

/// Per anchor: the farthest positive and the closest negative.
fn batch_hard(m: &PairMatrix<'_>) -> Tuples {
    let mut out = Vec::with_capacity(m.rows);
    for a in 0..m.rows {
        let row = m.row(a);
        let (mut best_p, mut best_n) = (None::<(usize, f32)>, None::<(usize, f32)>);
        for (j, &v) in row.iter().enumerate() {
            if m.is_neg(a, j) {
                if best_n.is_none_or(|(_, b)| v < b) {
                    best_n = Some((j, v));
                }
            } else if m.is_pos(a, j) && best_p.is_none_or(|(_, b)| v > b) {
                best_p = Some((j, v));
            }
        }
        if let (Some((p, _)), Some((n, _))) = (best_p, best_n) {
            out.push([a as u32, p as u32, n as u32]);
        }
    }
    Tuples::Triplets(out)
}

/// Negatives of row `a` sorted by oriented value (closest first).
fn sorted_negatives(m: &PairMatrix<'_>, a: usize, neg: &mut [u32]) {
    let row = m.row(a);
    neg.sort_unstable_by(|&x, &y| row[x as usize].total_cmp(&row[y as usize]));
}

fn semi_hard(m: &PairMatrix<'_>, margin: f32) -> Tuples {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for a in 0..m.rows {
        m.split_row(a, &mut pos, &mut neg);
        if pos.is_empty() || neg.is_empty() {
            continue;
        }
        sorted_negatives(m, a, &mut neg);
        let row = m.row(a);
        for &p in &pos {
            let ap = row[p as usize];
            // First negative strictly farther than the positive.
            let k = neg.partition_point(|&n| row[n as usize] <= ap);
            let n = if k < neg.len() && row[neg[k] as usize] < ap + margin {
                neg[k]
            } else {
                neg[0]
            };
            out.push([a as u32, p, n]);
        }
    }
    Tuples::Triplets(out)
}

fn max_violation(m: &PairMatrix<'_>) -> Tuples {
    let mut out = Vec::new();
    for a in 0..m.rows {
        let row = m.row(a);
        let hardest = (0..m.cols)
            .filter(|&j| m.is_neg(a, j))
            .min_by(|&x, &y| row[x].total_cmp(&row[y]).then(x.cmp(&y)));
        if let Some(n) = hardest {
            out.extend(
                (0..m.cols)
                    .filter(|&j| m.is_pos(a, j))
                    .map(|p| [a as u32, p as u32, n as u32]),
            );
        }
    }
    Tuples::Triplets(out)
}

/// Euclidean distance on the unit sphere from an oriented value.
fn sphere_distance(m: &PairMatrix<'_>, o: f32) -> f32 {
    use crate::distance::Distance::*;
    match m.distance {
        Cosine | Dot => (2.0 + 2.0 * o).max(0.0).sqrt(),
        Euclidean => o,
        SquaredEuclidean => o.max(0.0).sqrt(),
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small, well-mixed deterministic generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn distance_weighted(
    m: &PairMatrix<'_>,
    cutoff: f32,
    nonzero_loss_cutoff: f32,
    seed: u64,
) -> Tuples {
    let n_dim = m.dim.max(4) as f64;
    // Mix a few matrix values into the seed so every batch draws differently.
    let mix =
        m.o.iter()
            .step_by((m.o.len() / 16).max(1))
            .fold(seed, |h, v| {
                (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01B3)
            });
    let mut rng = SplitMix64(mix);
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let mut w = Vec::new();
    let mut out = Vec::new();
    for a in 0..m.rows {
        m.split_row(a, &mut pos, &mut neg);
        if pos.is_empty() || neg.is_empty() {
            continue;
        }
        let row = m.row(a);
        // log q(d)^{-1} = (2 − n) ln d − ((n − 3)/2) ln(1 − d²/4); weights relative to the max.
        w.clear();
        let mut max_lw = f64::NEG_INFINITY;
        let logw: Vec<Option<f64>> = neg
            .iter()
            .map(|&j| {
                let d = sphere_distance(m, row[j as usize]);
                if d >= nonzero_loss_cutoff {
                    return None;
                }
                let d = d.max(cutoff) as f64;
                let lw = (2.0 - n_dim) * d.ln()
                    - (n_dim - 3.0) / 2.0 * (1.0 - 0.25 * d * d).max(1e-8).ln();
                max_lw = max_lw.max(lw);
                Some(lw)
            })
            .collect();
        let mut total = 0.0;
        for lw in &logw {
            let x = lw.map_or(0.0, |v| (v - max_lw).exp());
            total += x;
            w.push(x);
        }
        if total <= 0.0 || !total.is_finite() {
            continue;
        }
        for &p in &pos {
            let mut u = rng.next_f64() * total;
            let mut pick = w.len() - 1;
            for (k, &x) in w.iter().enumerate() {
                if x > 0.0 {
                    pick = k;
                    if u < x {
                        break;
                    }
                    u -= x;
                }
            }
            out.push([a as u32, p, neg[pick]]);
        }
    }
    Tuples::Triplets(out)
}

fn multi_similarity(m: &PairMatrix<'_>, eps: f32) -> Tuples {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let (mut out_p, mut out_n) = (Vec::new(), Vec::new());
    for a in 0..m.rows {
        m.split_row(a, &mut pos, &mut neg);
        if pos.is_empty() || neg.is_empty() {
            continue;
        }
        let row = m.row(a);
        let min_neg = neg
            .iter()
            .map(|&j| row[j as usize])
            .fold(f32::INFINITY, f32::min);
        let max_pos = pos
            .iter()
            .map(|&j| row[j as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        // PML compares raw values: similarity s_ap − ε < max s_an, distance d_ap + ε > min d_an.
        // In the oriented scale both read o_ap + ε > min o_an and o_an − ε < max o_ap.
        let sim = m.distance.is_similarity();
        for &p in &pos {
            let v = row[p as usize];
            let hard = if sim {
                -v - eps < -min_neg
            } else {
                v + eps > min_neg
            };
            if hard {
                out_p.push([a as u32, p]);
            }
        }
        for &n in &neg {
            let v = row[n as usize];
            let hard = if sim {
                -v + eps > -max_pos
            } else {
                v - eps < max_pos
            };
            if hard {
                out_n.push([a as u32, n]);
            }
        }
    }
    Tuples::Pairs {
        pos: out_p,
        neg: out_n,
    }
}

/// Enumerates the triplets of a band or of "all" for one anchor (used by caps and by pair
/// losses fed a band); `f` receives `(p, n)`.
pub(crate) fn for_each_band_triplet(
    m: &PairMatrix<'_>,
    a: usize,
    lo: f32,
    hi: f32,
    pos: &mut Vec<u32>,
    neg: &mut Vec<u32>,
    mut f: impl FnMut(u32, u32),
) {
    m.split_row(a, pos, neg);
    let row = m.row(a);
    for &p in pos.iter() {
        let ap = row[p as usize];
        for &n in neg.iter() {
            let t = row[n as usize] - ap;
            if t > lo && t <= hi {
                f(p, n);
            }
        }
    }
}

fn cap_per_anchor(m: &PairMatrix<'_>, tuples: Tuples, cap: usize) -> Tuples {
    let violation =
        |t: &[u32; 3]| m.at(t[0] as usize, t[1] as usize) - m.at(t[0] as usize, t[2] as usize);
    let keep_hardest = |group: &mut Vec<[u32; 3]>, out: &mut Vec<[u32; 3]>| {
        if group.len() > cap {
            group.sort_by(|x, y| violation(y).total_cmp(&violation(x)));
            group.truncate(cap);
        }
        out.append(group);
    };
    match tuples {
        Tuples::Triplets(mut ts) => {
            ts.sort_by_key(|t| t[0]);
            let mut out = Vec::new();
            let mut group = Vec::new();
            for t in ts {
                if group.last().is_some_and(|g: &[u32; 3]| g[0] != t[0]) {
                    keep_hardest(&mut group, &mut out);
                }
                group.push(t);
            }
            keep_hardest(&mut group, &mut out);
            Tuples::Triplets(out)
        }
        Tuples::All | Tuples::TripletBand { .. } => {
            let (lo, hi) = match tuples {
                Tuples::TripletBand { lo, hi } => (lo, hi),
                _ => (f32::NEG_INFINITY, f32::INFINITY),
            };
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            let mut out = Vec::new();
            let mut group = Vec::new();
            for a in 0..m.rows {
                for_each_band_triplet(m, a, lo, hi, &mut pos, &mut neg, |p, n| {
                    group.push([a as u32, p, n])
                });
                keep_hardest(&mut group, &mut out);
            }
            Tuples::Triplets(out)
        }
        // A cap counts triplets; pair miners are left as they are.
        pairs @ Tuples::Pairs { .. } => pairs,
    }
}

fn parse_err(what: &'static str, input: &str, why: impl Into<String>) -> LossError {
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
            "distance-weighted" => MinerKind::DistanceWeighted { cutoff: 0.5, nonzero_loss_cutoff: 1.4, seed: 0 },
            "multi-similarity" | "ms" => MinerKind::MultiSimilarity { epsilon: 0.1 },
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

/// Which miner to use at which epoch: hardest-negative mining from the start is known to
/// collapse (Schroff et al. 2015 §3.2; Hermans et al. 2017), so start easier, then harden.
///
/// Parsed from `"semihard:2,hard"`: semi-hard for epochs `< 2`, then batch-hard. Each stage
/// but the last is `miner:until_epoch`; a single miner name is a one-stage schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct HardnessSchedule {
    /// `(miner, first epoch after this stage)`; the last stage has `None` (forever).
    pub stages: Vec<(Miner, Option<usize>)>,
}

impl HardnessSchedule {
    /// A one-stage schedule.
    pub fn constant(miner: Miner) -> Self {
        Self {
            stages: vec![(miner, None)],
        }
    }

    /// The miner for 0-based `epoch`.
    pub fn miner_for_epoch(&self, epoch: usize) -> &Miner {
        self.stages
            .iter()
            .find(|(_, until)| until.is_none_or(|u| epoch < u))
            .map(|(m, _)| m)
            .unwrap_or_else(|| {
                &self
                    .stages
                    .last()
                    .expect("a schedule has at least one stage")
                    .0
            })
    }
}

impl FromStr for HardnessSchedule {
    type Err = LossError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let mut stages = Vec::with_capacity(parts.len());
        let mut last_until = 0usize;
        for (i, part) in parts.iter().enumerate() {
            let is_last = i + 1 == parts.len();
            match part.rsplit_once(':') {
                Some((name, until)) => {
                    let until: usize = until.trim().parse().map_err(|_| {
                        parse_err(
                            "hardness schedule",
                            s,
                            format!("`{part}`: the epoch after `:` must be an integer"),
                        )
                    })?;
                    if until <= last_until && i > 0 {
                        return Err(parse_err(
                            "hardness schedule",
                            s,
                            "stage epochs must increase",
                        ));
                    }
                    last_until = until;
                    stages.push((name.parse()?, Some(until)));
                }
                None if is_last => stages.push((part.parse()?, None)),
                None => {
                    return Err(parse_err(
                        "hardness schedule",
                        s,
                        format!("`{part}` needs `:epoch` (only the last stage may omit it)"),
                    ))
                }
            }
        }
        if stages.is_empty() {
            return Err(parse_err("hardness schedule", s, "empty"));
        }
        Ok(Self { stages })
    }
}
