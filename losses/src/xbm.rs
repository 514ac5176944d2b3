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
        let out = match self.active_references() {
            Some((mem, mem_labels)) => {
                let all_labels: Vec<usize> =
                    ref_labels.iter().chain(&mem_labels).copied().collect();
                check_against(&refs, ref_labels, &mem)?;
                let all = Tensor::cat(vec![to_f32(refs.clone()), mem], 0);
                loss.run_parts(
                    anchors,
                    anchor_labels,
                    all,
                    &all_labels,
                    false,
                    miner,
                    params,
                )?
            }
            None => loss.forward_with(
                anchors,
                anchor_labels,
                refs.clone(),
                ref_labels,
                miner,
                params,
            )?,
        };
        self.enqueue(refs, ref_labels)?;
        self.steps += 1;
        Ok(out)
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
                )?
            }
            None => loss.run_parts(embeddings.clone(), labels, own, labels, true, miner, params)?,
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
