//! Batch samplers: plain shuffled batches, and P x K class-balanced batches for triplet mining.
//!
//! Both return an epoch as a list of batches of item positions (`0..n`), deterministic for a
//! (seed, epoch) pair: the generator is ChaCha12 (`rand::rngs::StdRng`) seeded from both.

use crate::dataset::splitmix64;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;

/// Errors from building a sampler.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SamplerError {
    /// There is no item to sample.
    #[error("no item to sample from")]
    Empty,
    /// A batch size, P or K is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// P x K sampling asked for more labels per batch than the data has.
    #[error("a P x K batch needs P = {p} distinct labels, but the data has {classes}")]
    TooFewClasses {
        /// Labels in the data.
        classes: usize,
        /// Labels asked per batch.
        p: usize,
    },
}

fn epoch_rng(seed: u64, epoch: u64) -> StdRng {
    StdRng::seed_from_u64(splitmix64(
        splitmix64(seed) ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    ))
}

/// Shuffles `0..n` every epoch and cuts it into batches of `batch_size`.
#[derive(Debug, Clone)]
pub struct ShuffledSampler {
    n: usize,
    batch_size: usize,
    drop_last: bool,
    seed: u64,
}

impl ShuffledSampler {
    /// A sampler over `n` items; with `drop_last` a final short batch is left out.
    ///
    /// # Errors
    /// [`SamplerError::Empty`] for `n == 0`, [`SamplerError::Zero`] for `batch_size == 0`.
    pub fn new(
        n: usize,
        batch_size: usize,
        drop_last: bool,
        seed: u64,
    ) -> Result<Self, SamplerError> {
        if n == 0 {
            return Err(SamplerError::Empty);
        }
        if batch_size == 0 {
            return Err(SamplerError::Zero("batch size"));
        }
        Ok(Self {
            n,
            batch_size,
            drop_last,
            seed,
        })
    }

    /// Batches per epoch.
    pub fn epoch_len(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }

    /// The batches of epoch `epoch`: every item exactly once (less a dropped tail).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..self.n).collect();
        idx.shuffle(&mut epoch_rng(self.seed, epoch));
        let mut out: Vec<Vec<usize>> = idx.chunks(self.batch_size).map(<[usize]>::to_vec).collect();
        if self.drop_last && out.last().is_some_and(|b| b.len() < self.batch_size) {
            out.pop();
        }
        out
    }
}

/// Batches of P labels with K items each (Hermans, Beyer & Leibe 2017, "In Defense of the
/// Triplet Loss for Person Re-Identification", §2: "batch hard" needs P x K batches).
///
/// Each epoch: every label's items are shuffled and cut into chunks of K; a label's last short
/// chunk (or a label with fewer than K items) is filled up with other items of the same label,
/// drawn at random (so an item can appear twice in a batch only when its label has fewer than K
/// items). Batches are then formed by taking one chunk from each of the P labels with the most
/// chunks left (ties broken at random), which packs the most batches possible, and the batches
/// are shuffled. The epoch length is `max b such that sum_l min(c_l, b) >= P * b` with
/// `c_l = ceil(n_l / K)`; when the chunks pack exactly (e.g. equal class sizes, a multiple of
/// P labels) every item is visited once per epoch (items of a label whose count is not a
/// multiple of K may appear a second time as fill).
#[derive(Debug, Clone)]
pub struct ClassBalancedSampler {
    by_label: Vec<Vec<usize>>,
    p: usize,
    k: usize,
    seed: u64,
}

impl ClassBalancedSampler {
    /// A sampler over items with these labels (item `i` has label `labels[i]`).
    ///
    /// # Errors
    /// [`SamplerError::Empty`], [`SamplerError::Zero`] for `p` or `k` of 0, and
    /// [`SamplerError::TooFewClasses`] if fewer than `p` labels occur.
    pub fn new(labels: &[usize], p: usize, k: usize, seed: u64) -> Result<Self, SamplerError> {
        if labels.is_empty() {
            return Err(SamplerError::Empty);
        }
        if p == 0 {
            return Err(SamplerError::Zero("P"));
        }
        if k == 0 {
            return Err(SamplerError::Zero("K"));
        }
        let n_labels = labels.iter().max().map_or(0, |m| m + 1);
        let mut by_label = vec![Vec::new(); n_labels];
        for (i, &l) in labels.iter().enumerate() {
            by_label[l].push(i);
        }
        by_label.retain(|v| !v.is_empty());
        if by_label.len() < p {
            return Err(SamplerError::TooFewClasses {
                classes: by_label.len(),
                p,
            });
        }
        Ok(Self {
            by_label,
            p,
            k,
            seed,
        })
    }

    /// Items per batch, P x K.
    pub fn batch_size(&self) -> usize {
        self.p * self.k
    }

    /// Batches per epoch (see the type's documentation).
    pub fn epoch_len(&self) -> usize {
        let chunks: Vec<usize> = self
            .by_label
            .iter()
            .map(|v| v.len().div_ceil(self.k))
            .collect();
        let total: usize = chunks.iter().sum();
        (0..=total / self.p)
            .rev()
            .find(|&b| chunks.iter().map(|&c| c.min(b)).sum::<usize>() >= self.p * b)
            .unwrap_or(0)
    }

    /// The batches of epoch `epoch`, each of P x K items (K consecutive items per label).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = epoch_rng(self.seed, epoch);
        let k = self.k;
        // Chunks of K per label, last one filled from the same label.
        let mut chunks: Vec<Vec<Vec<usize>>> = Vec::with_capacity(self.by_label.len());
        for items in &self.by_label {
            let mut v = items.clone();
            v.shuffle(&mut rng);
            let mut cs: Vec<Vec<usize>> = v.chunks(k).map(<[usize]>::to_vec).collect();
            if let Some(last) = cs.last_mut() {
                while last.len() < k {
                    let pool: Vec<usize> = if items.len() > last.len() {
                        items
                            .iter()
                            .copied()
                            .filter(|x| !last.contains(x))
                            .collect()
                    } else {
                        items.clone()
                    };
                    last.push(
                        *pool
                            .choose(&mut rng)
                            .expect("a label has at least one item"),
                    );
                }
            }
            chunks.push(cs);
        }
        // Random tie-break order of labels, fixed for the epoch.
        let mut priority: Vec<usize> = (0..chunks.len()).collect();
        priority.shuffle(&mut rng);
        let mut rank = vec![0usize; chunks.len()];
        for (r, &l) in priority.iter().enumerate() {
            rank[l] = r;
        }
        let mut batches = Vec::new();
        loop {
            let mut order: Vec<usize> = (0..chunks.len())
                .filter(|&l| !chunks[l].is_empty())
                .collect();
            if order.len() < self.p {
                break;
            }
            order.sort_by_key(|&l| (std::cmp::Reverse(chunks[l].len()), rank[l]));
            let mut chosen: Vec<usize> = order[..self.p].to_vec();
            chosen.shuffle(&mut rng);
            let mut batch = Vec::with_capacity(self.p * k);
            for l in chosen {
                batch.extend(chunks[l].pop().expect("label has a chunk"));
            }
            batches.push(batch);
            // Rotate tie-breaks so equal-sized labels take turns.
            priority.rotate_left(1);
            for (r, &l) in priority.iter().enumerate() {
                rank[l] = r;
            }
        }
        batches.shuffle(&mut rng);
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shuffled_visits_every_item_once() {
        let s = ShuffledSampler::new(10, 4, false, 3).unwrap();
        let e = s.epoch(0);
        assert_eq!(e.len(), 3);
        assert_eq!(s.epoch_len(), 3);
        let mut all: Vec<usize> = e.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(s.epoch(0), e);
        assert_ne!(s.epoch(1), e);
        let d = ShuffledSampler::new(10, 4, true, 3).unwrap();
        assert_eq!(d.epoch(0).len(), 2);
        assert_eq!(d.epoch_len(), 2);
    }

    #[test]
    fn pk_batches_have_p_labels_with_k_items() {
        // 4 labels x 6 items, P=2, K=3: 8 chunks, 4 batches, every item exactly once.
        let labels: Vec<usize> = (0..24).map(|i| i % 4).collect();
        let s = ClassBalancedSampler::new(&labels, 2, 3, 9).unwrap();
        let e = s.epoch(5);
        assert_eq!(e.len(), 4);
        assert_eq!(s.epoch_len(), 4);
        for b in &e {
            let mut count: HashMap<usize, usize> = HashMap::new();
            for &i in b {
                *count.entry(labels[i]).or_default() += 1;
            }
            assert_eq!(count.len(), 2);
            assert!(count.values().all(|&c| c == 3));
        }
        let mut all = e.concat();
        all.sort();
        assert_eq!(all, (0..24).collect::<Vec<_>>());
        assert_eq!(s.epoch(5), e);
    }

    #[test]
    fn pk_epoch_length_with_unequal_labels() {
        // Label sizes 10, 2, 1 with K = 2: chunks 5, 1, 1; P = 2 gives b = 2
        // (min(5,2)+1+1 = 4 >= 4; b = 3 would need 6 > 5).
        let mut labels = vec![0; 10];
        labels.extend([1, 1, 2]);
        let s = ClassBalancedSampler::new(&labels, 2, 2, 0).unwrap();
        assert_eq!(s.epoch_len(), 2);
        let e = s.epoch(0);
        assert_eq!(e.len(), 2);
        // Label 2 has one item: its chunk repeats it.
        assert!(e
            .iter()
            .any(|b| b.iter().filter(|&&i| i == 12).count() == 2));
    }

    #[test]
    fn pk_refuses_too_few_labels() {
        assert_eq!(
            ClassBalancedSampler::new(&[0, 0, 1], 3, 2, 0).unwrap_err(),
            SamplerError::TooFewClasses { classes: 2, p: 3 }
        );
        assert_eq!(
            ClassBalancedSampler::new(&[0], 1, 0, 0).unwrap_err(),
            SamplerError::Zero("K")
        );
    }
}
