//! Losses: one file per loss, each with its configuration and its maths.
//!
//! - [`ContrastiveLoss`] (`contrastive.rs`): label-aware symmetric InfoNCE (CLIP, SupCon, NT-Xent);
//! - [`PairwiseLoss`] (`pairwise.rs`): the margin pair loss (Hadsell et al. 2006);
//! - [`TripletLoss`] (`triplet.rs`): the margin triplet loss (FaceNet);
//! - [`MultiSimilarityLoss`] (`multi_similarity.rs`): Wang et al. 2019;
//! - [`SigmoidLoss`] (`sigmoid.rs`): SigLIP's pairwise sigmoid loss, label-aware;
//! - [`LossConfig`] (`config.rs`): a loss parsed once from its name and parameters, with the
//!   defaults each loss owns.
//!
//! Each loss runs in three steps (see the crate docs): the `B × R` matrix is computed on
//! the autodiff tensors by its [`Distance`]; the host reads it back in f32, the [`Miner`]
//! picks tuples per anchor, and the loss value `L` and `G = ∂L/∂M` (one entry per matrix
//! entry, so memory stays `O(B·R)`) are computed exactly in f64/f32; finally the loss tensor
//! is assembled as `⟨G, M⟩ − stopgrad(⟨G, M⟩) + L`, whose value is `L` and whose gradient
//! with respect to `M` is `G`, so autodiff carries it on to the embeddings (and the logit
//! scale). Half-precision towers are cast to f32 before the matrix.

mod config;
mod contrastive;
mod multi_similarity;
mod pairwise;
mod sigmoid;
mod triplet;

pub use config::{LossConfig, LossKind};
pub use contrastive::{ContrastiveLoss, Positives};
pub use multi_similarity::MultiSimilarityLoss;
pub use pairwise::PairwiseLoss;
pub use sigmoid::SigmoidLoss;
pub use triplet::TripletLoss;

use std::str::FromStr;

use burn::tensor::{Tensor, TensorData};

use crate::distance::Distance;
use crate::error::{LossError, Result};
use crate::matrix::PairMatrix;
use crate::miner::Miner;
use crate::weights::Weights;

/// `ln 100`: open_clip clamps the learnable logit scale so `exp(scale) ≤ 100`.
pub const MAX_LOGIT_SCALE: f32 = 4.605_170_2;

/// Diagnostics that make collapse visible, gathered while the loss is computed (no extra pass
/// over the matrix).
///
/// A model that learns shows a growing [`gap`](Self::gap) and, for margin losses, a falling
/// active fraction. A collapsed one (every embedding at one point) shows positives and
/// negatives scoring alike (`gap` ≈ 0) with every tuple active: a triplet loss then sits at
/// its margin, since `mean(d(a,p) − d(a,n) + m) = m` over active triplets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    /// Fraction of mined tuples with a non-zero loss (contrastive: fraction of rows where some
    /// negative still scores at least as high as the lowest-scoring positive).
    pub active_fraction: f32,
    /// Mean distance (or similarity, in the distance's own units) over positive pairs used.
    pub mean_positive: f32,
    /// Mean distance (or similarity) over negative pairs used.
    pub mean_negative: f32,
    /// How much closer positives are than negatives, in the distance's units and sign-free:
    /// `mean_positive − mean_negative` for a similarity, `mean_negative − mean_positive` for a
    /// distance. Positive when the model separates labels, 0 when it cannot tell them apart.
    pub gap: f32,
    /// Number of tuples mined (triplets, pairs, or contrastive positive pairs).
    pub mined: usize,
}

impl LossStats {
    /// The mean of two directions' statistics (image anchors and text anchors), each field
    /// averaged with equal weight as the two directions' losses are; `mined` is the sum.
    pub fn mean_of(a: &LossStats, b: &LossStats) -> LossStats {
        LossStats {
            active_fraction: 0.5 * (a.active_fraction + b.active_fraction),
            mean_positive: 0.5 * (a.mean_positive + b.mean_positive),
            mean_negative: 0.5 * (a.mean_negative + b.mean_negative),
            gap: 0.5 * (a.gap + b.gap),
            mined: a.mined + b.mined,
        }
    }
}

/// A loss tensor of shape `[1]` and its diagnostics.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The reduced loss, shape `[1]`, differentiable.
    pub loss: Tensor<1>,
    /// Diagnostics.
    pub stats: LossStats,
}

/// The loss value and its derivative with respect to every oriented matrix entry.
#[derive(Debug, Clone)]
pub struct HostLoss {
    /// Reduced loss value.
    pub value: f64,
    /// `∂L/∂o` for the `B × R` oriented matrix (for the contrastive loss: `∂L/∂logits`).
    pub grad: Vec<f32>,
    /// `∂L/∂o` for the reference-by-reference matrix (triplet `swap` across modalities only).
    pub grad_refs: Option<Vec<f32>>,
    /// Diagnostics.
    pub stats: LossStats,
}

impl HostLoss {
    fn zero(n: usize, stats: LossStats) -> Self {
        Self {
            value: 0.0,
            grad: vec![0.0; n],
            grad_refs: None,
            stats,
        }
    }
}

/// Running sums for the diagnostics.
#[derive(Default)]
struct Tally {
    mined: usize,
    active: usize,
    /// Anchor weight of the mined tuples (= `mined` without weights).
    w_mined: f64,
    /// Anchor weight of the tuples with a positive loss (= `active` without weights).
    w_active: f64,
    pos_sum: f64,
    pos_n: usize,
    neg_sum: f64,
    neg_n: usize,
}

impl Tally {
    fn stats(&self, d: Distance) -> LossStats {
        let mean = |s: f64, n: usize| {
            if n > 0 {
                d.orient((s / n as f64) as f32)
            } else {
                0.0
            }
        };
        // Oriented means (smaller is closer): the gap is their difference, whatever the distance.
        let oriented = |s: f64, n: usize| if n > 0 { (s / n as f64) as f32 } else { 0.0 };
        let gap = if self.pos_n > 0 && self.neg_n > 0 {
            oriented(self.neg_sum, self.neg_n) - oriented(self.pos_sum, self.pos_n)
        } else {
            0.0
        };
        LossStats {
            active_fraction: if self.mined > 0 {
                self.active as f32 / self.mined as f32
            } else {
                0.0
            },
            mean_positive: mean(self.pos_sum, self.pos_n),
            mean_negative: mean(self.neg_sum, self.neg_n),
            gap,
            mined: self.mined,
        }
    }
}

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn scale(grad: &mut [f32], by: f64) {
    grad.iter_mut().for_each(|g| *g = (*g as f64 * by) as f32);
}

impl HostLoss {
    /// `∂L/∂o → ∂L/∂M`: for a similarity `o = −M`, so every entry changes sign.
    fn unorient(&mut self, distance: Distance) {
        if distance.is_similarity() {
            self.grad.iter_mut().for_each(|g| *g = -*g);
            if let Some(g) = self.grad_refs.as_mut() {
                g.iter_mut().for_each(|x| *x = -*x);
            }
        }
    }
}

/// A loss with its parameters: the single entry point for training loops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Symmetric, label-aware InfoNCE.
    Contrastive(ContrastiveLoss),
    /// Margin contrastive loss on pairs.
    Pairwise(PairwiseLoss),
    /// Margin triplet loss.
    Triplet(TripletLoss),
    /// Multi-similarity loss.
    MultiSimilarity(MultiSimilarityLoss),
    /// SigLIP's pairwise sigmoid loss.
    Sigmoid(SigmoidLoss),
}

/// The learnable scalars a loss may read, each shape `[1]`: the contrastive loss reads
/// `scale` (the log of its logit scale), the sigmoid loss `scale` (`t'`) and `bias` (`b`).
/// A missing one falls back on the loss's configured constant; the others ignore both.
#[derive(Debug, Clone, Default)]
pub struct LogitParams {
    /// Log of the logit scale.
    pub scale: Option<Tensor<1>>,
    /// Logit bias.
    pub bias: Option<Tensor<1>>,
}

/// Anchors and references after their shapes and labels were checked.
struct Checked<'a> {
    anchors: Tensor<2>,
    refs: Tensor<2>,
    labels: &'a [usize],
    ref_labels: &'a [usize],
    /// The first `B` references are the anchors (an embedding is never its own positive).
    same_set: bool,
    dim: usize,
}

impl<'a> Checked<'a> {
    /// Checks labels against rows and the two widths against each other.
    ///
    /// # Panics
    /// If `same_set` and there are fewer references than anchors (a caller in this crate).
    fn new(
        anchors: Tensor<2>,
        labels: &'a [usize],
        refs: Tensor<2>,
        ref_labels: &'a [usize],
        same_set: bool,
    ) -> Result<Self> {
        let [b, dim] = anchors.dims();
        LossError::check_labels("anchors", b, labels.len())?;
        let [r, dr] = refs.dims();
        LossError::check_labels("references", r, ref_labels.len())?;
        LossError::check_widths(dim, dr)?;
        assert!(!same_set || r >= b, "the anchors are the first references");
        Ok(Self {
            anchors,
            refs,
            labels,
            ref_labels,
            same_set,
            dim,
        })
    }
}

impl Loss {
    /// The loss's distance.
    pub fn distance(&self) -> Distance {
        match self {
            Loss::Contrastive(l) => l.distance,
            Loss::Pairwise(l) => l.distance,
            Loss::Triplet(l) => l.distance,
            Loss::MultiSimilarity(l) => l.distance,
            Loss::Sigmoid(l) => l.distance,
        }
    }

    /// The loss's kind (its name on the command line).
    pub fn kind(&self) -> LossKind {
        match self {
            Loss::Contrastive(_) => LossKind::Contrastive,
            Loss::Pairwise(_) => LossKind::Pairwise,
            Loss::Triplet(_) => LossKind::Triplet,
            Loss::MultiSimilarity(_) => LossKind::MultiSimilarity,
            Loss::Sigmoid(_) => LossKind::Sigmoid,
        }
    }

    /// The loss's name.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Whether the loss uses a learnable logit scale (passed to [`Loss::forward_with`]):
    /// the contrastive and sigmoid losses (the sigmoid loss also a learnable bias).
    pub fn uses_logit_scale(&self) -> bool {
        matches!(self, Loss::Contrastive(_) | Loss::Sigmoid(_))
    }

    /// Anchors (e.g. images) against references (e.g. texts), each with labels; a reference
    /// sharing the anchor's label is a positive, any other a negative. For the triplet,
    /// pairwise and multi-similarity losses call it twice (image→text and text→image) and add;
    /// the contrastive loss is already symmetric. `logit_scale` (log of the scale, shape `[1]`)
    /// is used only by the contrastive loss; without it the loss uses `1/temperature`.
    pub fn forward(
        &self,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Tensor<2>,
        ref_labels: &[usize],
        miner: &Miner,
        logit_scale: Option<Tensor<1>>,
    ) -> Result<LossOutput> {
        let params = LogitParams {
            scale: logit_scale,
            bias: None,
        };
        self.forward_with(anchors, anchor_labels, refs, ref_labels, miner, params)
    }

    /// [`Loss::forward`] with every learnable scalar the loss may read (the sigmoid loss's
    /// bias too).
    pub fn forward_with(
        &self,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Tensor<2>,
        ref_labels: &[usize],
        miner: &Miner,
        params: LogitParams,
    ) -> Result<LossOutput> {
        self.forward_weighted(
            anchors,
            anchor_labels,
            refs,
            ref_labels,
            miner,
            params,
            Weights::none(),
        )
    }

    /// [`Loss::forward_with`] with per-anchor loss weights: each element's loss is scaled by
    /// its anchor's weight and the reducer divides by the summed weight (see [`Weights`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_weighted(
        &self,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Tensor<2>,
        ref_labels: &[usize],
        miner: &Miner,
        params: LogitParams,
        weights: Weights<'_>,
    ) -> Result<LossOutput> {
        self.run_parts(
            anchors,
            anchor_labels,
            refs,
            ref_labels,
            false,
            miner,
            params,
            weights,
        )
    }

    /// One set of embeddings against itself (unimodal metric learning, PML's default call):
    /// an embedding is never its own positive.
    pub fn forward_self(
        &self,
        embeddings: Tensor<2>,
        labels: &[usize],
        miner: &Miner,
        logit_scale: Option<Tensor<1>>,
    ) -> Result<LossOutput> {
        let params = LogitParams {
            scale: logit_scale,
            bias: None,
        };
        self.forward_self_with(embeddings, labels, miner, params)
    }

    /// [`Loss::forward_self`] with every learnable scalar the loss may read.
    pub fn forward_self_with(
        &self,
        embeddings: Tensor<2>,
        labels: &[usize],
        miner: &Miner,
        params: LogitParams,
    ) -> Result<LossOutput> {
        self.forward_self_weighted(embeddings, labels, miner, params, Weights::none())
    }

    /// [`Loss::forward_self_with`] with one loss weight per embedding (see [`Weights`]).
    pub fn forward_self_weighted(
        &self,
        embeddings: Tensor<2>,
        labels: &[usize],
        miner: &Miner,
        params: LogitParams,
        weights: Weights<'_>,
    ) -> Result<LossOutput> {
        self.run_parts(
            embeddings.clone(),
            labels,
            embeddings,
            labels,
            true,
            miner,
            params,
            weights,
        )
    }

    fn validate(&self, miner: &Miner) -> Result<()> {
        match self {
            Loss::Contrastive(l) => l.validate(miner),
            Loss::Pairwise(l) => l.validate(),
            Loss::Triplet(l) => l.validate(),
            Loss::MultiSimilarity(l) => l.validate(),
            Loss::Sigmoid(l) => l.validate(miner),
        }
    }

    /// Anchors against `refs`. With `same_set` the first `B` references are the anchors
    /// themselves (`forward_self`, or a cross-batch memory after them) and `j = i` is left out.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_parts(
        &self,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Tensor<2>,
        ref_labels: &[usize],
        same_set: bool,
        miner: &Miner,
        params: LogitParams,
        weights: Weights<'_>,
    ) -> Result<LossOutput> {
        self.validate(miner)?;
        let c = Checked::new(anchors, anchor_labels, refs, ref_labels, same_set)?;
        let (b, r) = (c.labels.len(), c.ref_labels.len());
        weights.check(b, r)?;
        let ref_weights = reference_weights(weights, same_set, r);
        if b == 0 || r == 0 {
            return Ok(LossOutput {
                loss: Tensor::zeros([1], &c.anchors.device()),
                stats: LossStats::default(),
            });
        }
        let (scale, bias) = self.read_params(params)?;
        let distance = self.distance();
        let swap_refs = match self {
            // The swap reads reference-to-reference values, which the `B × R` matrix holds
            // only when the references are exactly the anchors.
            Loss::Triplet(t) if t.swap && !(c.same_set && r == b) => Some(c.refs.clone()),
            _ => None,
        };
        let mat = distance.matrix(c.anchors, c.refs);
        let raw = host_f32(&mat);
        let pm = PairMatrix::new(
            raw,
            b,
            r,
            c.labels,
            c.ref_labels,
            c.same_set,
            distance,
            c.dim,
        )?
        .with_weights(weights.anchors, ref_weights.as_deref());
        Ok(match self {
            Loss::Contrastive(l) => l.output(mat, &pm, scale),
            Loss::Sigmoid(l) => l.output(mat, &pm, scale, bias),
            _ => self.tuple_output(mat, &pm, miner, swap_refs),
        })
    }

    /// The learnable scalars this loss reads, with their values (checked finite).
    #[allow(clippy::type_complexity)]
    fn read_params(
        &self,
        p: LogitParams,
    ) -> Result<(Option<(Tensor<1>, f32)>, Option<(Tensor<1>, f32)>)> {
        let scale = || p.scale.clone().map(read_logit_scale).transpose();
        match self {
            Loss::Contrastive(_) => Ok((scale()?, None)),
            Loss::Sigmoid(_) => Ok((scale()?, p.bias.clone().map(read_logit_bias).transpose()?)),
            _ => Ok((None, None)),
        }
    }

    /// Triplet, pairwise and multi-similarity: mine, compute on the host, attach to `mat`.
    fn tuple_output(
        &self,
        mat: Tensor<2>,
        pm: &PairMatrix<'_>,
        miner: &Miner,
        swap_refs: Option<Tensor<2>>,
    ) -> LossOutput {
        let margin = match self {
            Loss::Triplet(t) => t.margin,
            Loss::Pairwise(p) => (p.neg_margin - p.pos_margin).abs(),
            // Only a semi-hard miner without its own margin reads it.
            _ => 0.1,
        };
        let tuples = miner.mine(pm, margin);
        let (mut host, rr) = match self {
            Loss::Triplet(t) => t.host_with_swap(pm, &tuples, swap_refs),
            Loss::Pairwise(p) => (p.host(pm, &tuples), None),
            Loss::MultiSimilarity(s) => (s.host(pm, &tuples), None),
            Loss::Contrastive(_) | Loss::Sigmoid(_) => {
                unreachable!("the contrastive and sigmoid losses attach to their logits")
            }
        };
        host.unorient(pm.distance);
        let mut loss = attach(host.value, mat, host.grad);
        if let (Some(rr), Some(g)) = (rr, host.grad_refs) {
            loss = loss + attach(0.0, rr, g);
        }
        LossOutput {
            loss,
            stats: host.stats,
        }
    }
}

/// The references' weights as the symmetric contrastive loss reads them (see
/// [`Weights::refs`]): given ones, else the anchors' own for references that are the anchors
/// (`same_set`) and 1 for the rest; `None` when nothing is weighted.
fn reference_weights(w: Weights<'_>, same_set: bool, r: usize) -> Option<Vec<f32>> {
    match (w.refs, w.anchors) {
        (Some(refs), _) => Some(refs.to_vec()),
        (None, Some(a)) if same_set => Some(
            a.iter()
                .copied()
                .chain(std::iter::repeat(1.0))
                .take(r)
                .collect(),
        ),
        _ => None,
    }
}

/// The learnable log logit scale with its value read back (must be finite); the scale used
/// is `exp(min(value, ln 100))`.
fn read_logit_scale(ls: Tensor<1>) -> Result<(Tensor<1>, f32)> {
    let v = ls
        .clone()
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|_| LossError::NonPositive {
            what: "logit scale",
            value: f32::NAN,
        })?;
    let v = v.first().copied().unwrap_or(f32::NAN);
    if !v.is_finite() {
        return Err(LossError::NonPositive {
            what: "exp(logit scale)",
            value: v,
        });
    }
    Ok((ls, v.min(MAX_LOGIT_SCALE).exp()))
}

/// The learnable logit bias with its value read back (must be finite).
fn read_logit_bias(b: Tensor<1>) -> Result<(Tensor<1>, f32)> {
    let v = b
        .clone()
        .into_data()
        .try_into_vec_as::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN);
    if !v.is_finite() {
        return Err(LossError::NotFinite {
            what: "logit bias",
            value: v,
        });
    }
    Ok((b, v))
}

/// A matrix read back to the host in f32 (the distance always produces f32).
fn host_f32(t: &Tensor<2>) -> Vec<f32> {
    t.clone()
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("distance matrices are f32")
}

/// `⟨G, M⟩ − stopgrad(⟨G, M⟩) + value`: forward value `value`, gradient `G` with respect to `M`.
fn attach(value: f64, target: Tensor<2>, grad: Vec<f32>) -> Tensor<1> {
    let dims = target.dims();
    let g = Tensor::<2>::from_data(TensorData::new(grad, dims), &target.device());
    let s = (target * g).sum();
    (s.clone() - s.detach()).add_scalar(value as f32)
}

impl FromStr for Loss {
    type Err = LossError;

    /// Parses a [`LossConfig`] (`triplet`, `contrastive:temperature=0.05`, ...) and builds it
    /// with every default the loss owns.
    fn from_str(s: &str) -> Result<Self> {
        s.parse::<LossConfig>()?.init()
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;
    use burn::tensor::TensorData;

    fn run(loss: &str, miner: &str, img: Tensor<2>, txt: Tensor<2>) -> LossOutput {
        let loss: Loss = loss.parse().unwrap();
        let miner: crate::HardnessSchedule = miner.parse().unwrap();
        let (il, tl) = ([0, 0, 1, 1, 2, 2], [0, 1, 2]);
        loss.forward(img, &il, txt, &tl, miner.miner_for_epoch(0), None)
            .unwrap()
    }

    fn equal(rows: usize) -> Tensor<2> {
        let v: Vec<f32> = (0..rows).flat_map(|_| [0.6f32, -0.8, 0.0, 0.0]).collect();
        Tensor::from_data(TensorData::new(v, [rows, 4]), &crate::test_device())
    }

    #[test]
    fn collapsed_embeddings_pin_the_triplet_loss_at_its_margin() {
        let out = run("triplet", "all", equal(6), equal(3));
        let s = out.stats;
        assert_eq!(s.active_fraction, 1.0);
        assert!(s.gap.abs() < 1e-6 && (s.mean_positive - 1.0).abs() < 1e-5);
        let v = out.loss.into_data().try_into_vec_as::<f32>().unwrap()[0];
        assert!((v - TripletLoss::DEFAULT_MARGIN).abs() < 1e-5, "{v}");
    }

    #[test]
    fn separated_embeddings_have_a_positive_gap() {
        // Image i and text i/2 coincide, labels apart: positives at cosine 1, negatives at 0.
        let dev = crate::test_device();
        let eye = |rows: Vec<usize>| {
            let v: Vec<f32> = rows
                .iter()
                .flat_map(|&c| (0..4).map(move |j| if j == c { 1.0 } else { 0.0 }))
                .collect();
            Tensor::<2>::from_data(TensorData::new(v, [rows.len(), 4]), &dev)
        };
        for (loss, miner) in [
            ("triplet", "all"),
            ("pairwise", "all"),
            ("contrastive", "none"),
            ("multi-similarity", "all"),
            ("sigmoid", "none"),
        ] {
            let s = run(loss, miner, eye(vec![0, 0, 1, 1, 2, 2]), eye(vec![0, 1, 2])).stats;
            assert!((s.gap - 1.0).abs() < 1e-5, "{loss}: {s:?}");
            assert!((s.mean_positive - 1.0).abs() < 1e-5, "{loss}: {s:?}");
        }
        // The gap keeps its sign for a distance: positives nearer than negatives.
        let s = run(
            "triplet:distance=euclidean",
            "all",
            eye(vec![0, 0, 1, 1, 2, 2]),
            eye(vec![0, 1, 2]),
        )
        .stats;
        assert!(s.gap > 1.0 && s.mean_positive < s.mean_negative, "{s:?}");
    }

    #[test]
    fn two_directions_average() {
        let a = LossStats {
            active_fraction: 1.0,
            mean_positive: 0.5,
            mean_negative: 0.1,
            gap: 0.4,
            mined: 3,
        };
        let b = LossStats {
            active_fraction: 0.5,
            mean_positive: 0.3,
            mean_negative: 0.3,
            gap: 0.0,
            mined: 5,
        };
        let m = LossStats::mean_of(&a, &b);
        assert_eq!((m.active_fraction, m.gap, m.mined), (0.75, 0.2, 8));
    }
}
