//! Cross-batch memory (Wang, Zhang, Huang, Scott 2020, "Cross-Batch Memory for Embedding
//! Learning", CVPR; pytorch-metric-learning `losses/cross_batch_memory.py` `CrossBatchMemory`).
//!
//! Embeddings drift slowly once training has warmed up, so the reference embeddings of the
//! last few batches are still good negatives (and positives): a queue of the last `size`
//! references and their labels, detached, is appended to every batch's own references
//! (`refs' = [refs; memory]`), so the miner and the loss see `R + size` references per anchor
//! for the cost of a `B × (R + size)` matrix. The batch's references are enqueued **after**
//! the loss, so a batch never meets its own detached copies.
//!
//! # Cross-modal memory and PML's unimodal one
//!
//! siam keeps one memory per direction (texts for image anchors, images for text anchors):
//! [`CrossBatchMemory::forward`] scores anchors against `[refs; memory]`, the batch's own
//! references keeping their gradient, then enqueues `refs`. PML's memory is unimodal: the
//! embeddings are the anchors and, enqueued *before* the loss, part of the memory
//! (detached), with each anchor's comparison to its own copy removed. Both agree when the
//! references are the anchors themselves, detached: [`CrossBatchMemory::forward_self`] scores
//! `embeddings` against `[embeddings.detach(); memory]` leaving out `j = i`, and a siam memory
//! of `M − B` plus the batch's `B` are exactly the `M` embeddings PML's
//! `CrossBatchMemory(loss, memory_size = M, miner)` compares with (tested against PML 2.9 in
//! `tests/xbm_parity.rs`; the reference order differs, which no loss or miner depends on
//! except through exact ties).

use burn::tensor::Tensor;

use crate::distance::to_f32;
use crate::error::{LossError, Result};
use crate::loss::{LogitParams, Loss, LossOutput};
use crate::miner::Miner;
use crate::weights::Weights;

/// A cross-batch memory's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XbmConfig {
    /// Embeddings kept (the paper's `M`; its retrieval sets used 5–100 % of the training set).
    pub size: usize,
    /// Steps (calls to `forward`) before the memory is used; it is filled from the first
    /// step, so it is full when it starts (the paper starts after the first ~1k iterations,
    /// once the embeddings drift slowly).
    pub start: usize,
}

impl XbmConfig {
    /// A memory of `size` embeddings, used from the first step.
    pub fn new(size: usize) -> Self {
        Self { size, start: 0 }
    }

    /// The same memory, used only after `start` steps.
    pub fn with_start(mut self, start: usize) -> Self {
        self.start = start;
        self
    }

    /// An empty memory.
    pub fn init(&self) -> Result<CrossBatchMemory> {
        if self.size == 0 {
            return Err(LossError::Parse {
                what: "cross-batch memory size",
                input: "0".into(),
                why: "the memory must hold at least one embedding".into(),
            });
        }
        Ok(CrossBatchMemory {
            config: *self,
            memory: None,
            labels: Vec::with_capacity(self.size),
            next: 0,
            steps: 0,
        })
    }
}

/// A [`CrossBatchMemory`]'s contents: rows `0..labels.len()` of the ring buffer (`dim`
/// values each, row-major), their labels, the next slot and the steps taken.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct XbmSnapshot {
    /// Embedding width (0 while empty).
    pub dim: usize,
    /// The held rows, `labels.len() x dim`.
    pub rows: Vec<f32>,
    /// Their labels.
    pub labels: Vec<usize>,
    /// The slot the next embedding goes to.
    pub next: usize,
    /// Steps taken.
    pub steps: usize,
}

/// A ring buffer of the last `size` reference embeddings (f32, detached, on the references'
/// device) and their labels. See the module documentation.
#[derive(Debug, Clone)]
pub struct CrossBatchMemory {
    config: XbmConfig,
    /// `[size, d]` once the first batch arrived; only the first `labels.len()` rows are filled.
    memory: Option<Tensor<2>>,
    labels: Vec<usize>,
    /// The slot the next embedding goes to.
    next: usize,
    steps: usize,
}

impl CrossBatchMemory {
    /// The configuration.
    pub fn config(&self) -> XbmConfig {
        self.config
    }

    /// Embeddings held.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Nothing held yet.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Steps taken (calls to `forward` or `forward_self`).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Whether the next step uses the memory (`steps ≥ start`).
    pub fn is_active(&self) -> bool {
        self.steps >= self.config.start
    }

    /// The embeddings held, `[len, d]` (detached, f32), with their labels; `None` when empty.
    pub fn references(&self) -> Option<(Tensor<2>, &[usize])> {
        let memory = self.memory.as_ref()?;
        let n = self.labels.len();
        (n > 0).then(|| {
            (
                memory.clone().narrow(0, 0, n).detach(),
                self.labels.as_slice(),
            )
        })
    }

    /// Appends `refs` (`[R, d]`) and their labels, detached, overwriting the oldest when full;
    /// of a batch larger than the memory only its last `size` rows are kept.
    pub fn enqueue(&mut self, refs: Tensor<2>, labels: &[usize]) -> Result<()> {
        let [r, d] = refs.dims();
        LossError::check_labels("references", r, labels.len())?;
        let size = self.config.size;
        let memory = match self.memory.take() {
            Some(m) => {
                let [_, have] = m.dims();
                if let Err(e) = LossError::check_widths(have, d) {
                    self.memory = Some(m);
                    return Err(e);
                }
                m
            }
            None => Tensor::zeros([size, d], &refs.device()),
        };
        let skip = r.saturating_sub(size);
        let (mut refs, labels) = (
            to_f32(refs.detach()).narrow(0, skip, r - skip),
            &labels[skip..],
        );
        let mut memory = memory;
        let mut labels = labels;
        while !labels.is_empty() {
            let n = labels.len().min(size - self.next);
            let part = refs.clone().narrow(0, 0, n);
            // Detached again: burn's autodiff would otherwise keep the old memory, which an
            // earlier backward pass consumed, as this one's ancestor.
            memory = memory
                .slice_assign([self.next..self.next + n, 0..d], part)
                .detach();
            for (k, &l) in labels[..n].iter().enumerate() {
                match self.labels.get_mut(self.next + k) {
                    Some(slot) => *slot = l,
                    None => self.labels.push(l),
                }
            }
            self.next = (self.next + n) % size;
            labels = &labels[n..];
            if !labels.is_empty() {
                refs = refs.narrow(0, n, labels.len());
            }
        }
        self.memory = Some(memory);
        Ok(())
    }

    /// Anchors against their references and, once active, the memory's (after the batch's
    /// own); then the references are enqueued. Gradients reach anchors and `refs`, never the
    /// memory. For the contrastive loss, use a one-directional loss (`symmetric: false`) and
    /// one memory per direction: the memory rows cannot be anchors.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        loss: &Loss,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Tensor<2>,
        ref_labels: &[usize],
        miner: &Miner,
        params: LogitParams,
    ) -> Result<LossOutput> {
        self.forward_weighted(
            loss,
            anchors,
            anchor_labels,
            refs,
            ref_labels,
            miner,
            params,
            Weights::none(),
        )
    }

    /// [`CrossBatchMemory::forward`] with per-anchor loss weights (see [`Weights`]): the
    /// memory's references carry none (a reference's weight never multiplies in), so the
    /// weighting composes with the memory unchanged. Reference weights, when given, are the
    /// batch's; the memory's rows then weigh 1.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_weighted(
        &mut self,
        loss: &Loss,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Tensor<2>,
        ref_labels: &[usize],
        miner: &Miner,
        params: LogitParams,
        weights: Weights<'_>,
    ) -> Result<LossOutput> {
        let out = self.score(
            loss,
            anchors,
            anchor_labels,
            refs.clone(),
            ref_labels,
            miner,
            params,
            weights,
        )?;
        self.commit(refs, ref_labels)?;
        Ok(out)
    }

    /// The loss of [`Self::forward_weighted`] without its update: the memory is left as it
    /// was. With [`Self::commit`] afterwards it is `forward_weighted`; gradient accumulation
    /// scores every micro-step of an optimiser step against the same memory and commits once.
    #[allow(clippy::too_many_arguments)]
    pub fn score(
        &self,
        loss: &Loss,
        anchors: Tensor<2>,
        anchor_labels: &[usize],
        refs: Tensor<2>,
        ref_labels: &[usize],
        miner: &Miner,
        params: LogitParams,
        weights: Weights<'_>,
    ) -> Result<LossOutput> {
        weights.check(anchor_labels.len(), ref_labels.len())?;
        match self.active_references() {
            Some((mem, mem_labels)) => {
                let all_labels: Vec<usize> =
                    ref_labels.iter().chain(&mem_labels).copied().collect();
                check_against(&refs, ref_labels, &mem)?;
                let all = Tensor::cat(vec![to_f32(refs), mem], 0);
                let ref_w = extend_weights(weights.refs, all_labels.len());
                let w = Weights {
                    anchors: weights.anchors,
                    refs: ref_w.as_deref(),
                };
                loss.run_parts(
                    anchors,
                    anchor_labels,
                    all,
                    &all_labels,
                    false,
                    miner,
                    params,
                    w,
                )
            }
            None => loss.forward_weighted(
                anchors,
                anchor_labels,
                refs,
                ref_labels,
                miner,
                params,
                weights,
            ),
        }
    }

    /// The update that ends a step: `refs` enqueued (detached) and the step counted.
    pub fn commit(&mut self, refs: Tensor<2>, ref_labels: &[usize]) -> Result<()> {
        self.enqueue(refs, ref_labels)?;
        self.steps += 1;
        Ok(())
    }

    /// What the memory holds, as plain numbers (to save it in a checkpoint).
    pub fn snapshot(&self) -> XbmSnapshot {
        let (dim, rows) = match self.references() {
            Some((t, _)) => {
                let [_, d] = t.dims();
                let v = to_f32(t)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default();
                (d, v)
            }
            None => (0, Vec::new()),
        };
        XbmSnapshot {
            dim,
            rows,
            labels: self.labels.clone(),
            next: self.next,
            steps: self.steps,
        }
    }

    /// Puts back what [`Self::snapshot`] took (on `device`); a snapshot that does not fit this
    /// memory's size is refused.
    pub fn restore(&mut self, s: &XbmSnapshot, device: &burn::tensor::Device) -> Result<()> {
        let size = self.config.size;
        let n = s.labels.len();
        let fits = n <= size
            && s.rows.len() == n * s.dim
            && (n == 0 || s.dim > 0)
            && s.next < size
            && (n == size || s.next == n);
        if !fits {
            return Err(LossError::Parse {
                what: "cross-batch memory snapshot",
                input: format!("{n} rows of {} values, next slot {}", s.dim, s.next),
                why: format!("does not fit a memory of {size}"),
            });
        }
        self.reset();
        if n > 0 {
            let rows = Tensor::<2>::from_data(
                burn::tensor::TensorData::new(s.rows.clone(), [n, s.dim]),
                device,
            );
            let memory = Tensor::zeros([size, s.dim], device);
            self.memory = Some(memory.slice_assign([0..n, 0..s.dim], rows).detach());
        }
        self.labels = s.labels.clone();
        self.next = s.next;
        self.steps = s.steps;
        Ok(())
    }

    /// PML's unimodal call: `embeddings` against `[embeddings.detach(); memory]`, leaving out
    /// each embedding's comparison with itself, then `embeddings` are enqueued. With a memory
    /// of `M − B` this is PML's `CrossBatchMemory(loss, memory_size = M, miner)` on batches of
    /// `B` (see the module documentation). The batch's own references are detached even
    /// before the memory is active or filled, as in PML, so gradients reach the embeddings
    /// as anchors only.
    pub fn forward_self(
        &mut self,
        loss: &Loss,
        embeddings: Tensor<2>,
        labels: &[usize],
        miner: &Miner,
        params: LogitParams,
    ) -> Result<LossOutput> {
        self.forward_self_weighted(loss, embeddings, labels, miner, params, None)
    }

    /// [`CrossBatchMemory::forward_self`] with one loss weight per embedding (see [`Weights`];
    /// the memory's rows weigh 1 where a loss reads reference weights).
    pub fn forward_self_weighted(
        &mut self,
        loss: &Loss,
        embeddings: Tensor<2>,
        labels: &[usize],
        miner: &Miner,
        params: LogitParams,
        weights: Option<&[f32]>,
    ) -> Result<LossOutput> {
        let w = Weights {
            anchors: weights,
            refs: None,
        };
        let own = to_f32(embeddings.clone().detach());
        let out = match self.active_references() {
            Some((mem, mem_labels)) => {
                check_against(&embeddings, labels, &mem)?;
                let all_labels: Vec<usize> = labels.iter().chain(&mem_labels).copied().collect();
                let all = Tensor::cat(vec![own, mem], 0);
                loss.run_parts(
                    embeddings.clone(),
                    labels,
                    all,
                    &all_labels,
                    true,
                    miner,
                    params,
                    w,
                )?
            }
            None => loss.run_parts(
                embeddings.clone(),
                labels,
                own,
                labels,
                true,
                miner,
                params,
                w,
            )?,
        };
        self.enqueue(embeddings, labels)?;
        self.steps += 1;
        Ok(out)
    }

    /// The memory's references when it is active and not empty (labels copied: the loss
    /// needs them beside the batch's).
    fn active_references(&self) -> Option<(Tensor<2>, Vec<usize>)> {
        if !self.is_active() {
            return None;
        }
        self.references().map(|(t, l)| (t, l.to_vec()))
    }

    /// Empties the memory and restarts the step count.
    pub fn reset(&mut self) {
        self.memory = None;
        self.labels.clear();
        self.next = 0;
        self.steps = 0;
    }
}

/// The batch's reference weights followed by 1 for every memory row (`n` in all).
fn extend_weights(batch: Option<&[f32]>, n: usize) -> Option<Vec<f32>> {
    batch.map(|w| {
        w.iter()
            .copied()
            .chain(std::iter::repeat(1.0))
            .take(n)
            .collect()
    })
}

/// Rows against labels and width against the memory's, before both are concatenated.
fn check_against(t: &Tensor<2>, labels: &[usize], memory: &Tensor<2>) -> Result<()> {
    let [n, d] = t.dims();
    LossError::check_labels("references", n, labels.len())?;
    let [_, have] = memory.dims();
    LossError::check_widths(d, have)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device;

    fn rows(v: &[f32], d: usize) -> Tensor<2> {
        Tensor::<1>::from_floats(v, &test_device()).reshape([v.len() / d, d])
    }

    /// A restored memory holds the same rows, labels, slot and step count, and goes on
    /// exactly as the original; a snapshot of another size is refused.
    #[test]
    fn snapshots_restore_the_ring() {
        let mut m = XbmConfig::new(3).init().unwrap();
        m.commit(rows(&[1., 2.], 1), &[1, 2]).unwrap();
        m.commit(rows(&[3., 4.], 1), &[3, 4]).unwrap();
        let s = m.snapshot();
        assert_eq!(
            (s.rows.clone(), s.labels.clone()),
            (vec![4., 2., 3.], vec![4, 2, 3])
        );
        assert_eq!((s.next, s.steps, s.dim), (1, 2, 1));
        let mut r = XbmConfig::new(3).init().unwrap();
        r.restore(&s, &test_device()).unwrap();
        assert_eq!(r.snapshot(), s);
        m.commit(rows(&[5.], 1), &[5]).unwrap();
        r.commit(rows(&[5.], 1), &[5]).unwrap();
        assert_eq!(r.snapshot(), m.snapshot());
        let mut small = XbmConfig::new(2).init().unwrap();
        assert!(small.restore(&s, &test_device()).is_err());
        let empty = XbmConfig::new(2).init().unwrap().snapshot();
        small.restore(&empty, &test_device()).unwrap();
        assert!(small.is_empty());
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let mut m = XbmConfig::new(3).init().unwrap();
        assert!(m.references().is_none());
        m.enqueue(rows(&[1., 2.], 1), &[1, 2]).unwrap();
        m.enqueue(rows(&[3., 4.], 1), &[3, 4]).unwrap();
        let (t, l) = m.references().unwrap();
        let v = t.into_data().try_into_vec::<f32>().unwrap();
        // Slot order: 4 overwrote 1.
        assert_eq!(v, vec![4., 2., 3.]);
        assert_eq!(l, &[4, 2, 3]);
        // A batch larger than the memory keeps its last rows.
        m.enqueue(rows(&[5., 6., 7., 8., 9.], 1), &[5, 6, 7, 8, 9])
            .unwrap();
        let (t, l) = m.references().unwrap();
        let mut pairs: Vec<(f32, usize)> = t
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
            .into_iter()
            .zip(l.iter().copied())
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(pairs, vec![(7., 7), (8., 8), (9., 9)]);
    }

    #[test]
    fn bad_batches_are_errors() {
        assert!(XbmConfig::new(0).init().is_err());
        let mut m = XbmConfig::new(4).init().unwrap();
        assert!(m.enqueue(rows(&[1., 2.], 1), &[1]).is_err());
        m.enqueue(rows(&[1., 2.], 2), &[1]).unwrap();
        let e = m.enqueue(rows(&[1., 2., 3.], 3), &[1]).unwrap_err();
        assert!(matches!(e, LossError::DimensionMismatch { .. }), "{e}");
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn the_memory_waits_for_its_start() {
        let dev = test_device().autodiff();
        let loss: Loss = "triplet".parse().unwrap();
        let mut m = XbmConfig::new(8).with_start(1).init().unwrap();
        let x = Tensor::<1>::from_floats([1., 0., 0., 1., 1., 0.1, 0.1, 1.].as_slice(), &dev)
            .reshape([4, 2]);
        let l = [0, 1, 0, 1];
        let first = m
            .forward(
                &loss,
                x.clone(),
                &l,
                x.clone(),
                &l,
                &Miner::none(),
                LogitParams::default(),
            )
            .unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(first.stats.mined, 4 * 2 * 2);
        let second = m
            .forward(
                &loss,
                x.clone(),
                &l,
                x,
                &l,
                &Miner::none(),
                LogitParams::default(),
            )
            .unwrap();
        // Each anchor now has twice the positives and twice the negatives.
        assert_eq!(second.stats.mined, 4 * 4 * 4);
        assert_eq!(m.steps(), 2);
    }
}
