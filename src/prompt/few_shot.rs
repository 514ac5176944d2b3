//! The few-shot protocol of CoOp's experiments (Zhou et al. 2022, sec. 4.1; Dassl
//! `DatasetBase.generate_fewshot_dataset`): K images per class drawn at random, with a seed,
//! from the training split. A class with fewer than K images gives all of them.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// `k` records per label drawn from `records` (with `label_of(record)`), seeded: the same seed
/// gives the same draw. The result is grouped by label (ascending), each group in draw order.
pub fn few_shot(
    records: &[usize],
    label_of: impl Fn(usize) -> Option<usize>,
    k: usize,
    seed: u64,
) -> Vec<usize> {
    let mut by_label: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &r in records {
        if let Some(l) = label_of(r) {
            by_label.entry(l).or_default().push(r);
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (_, mut v) in by_label {
        v.shuffle(&mut rng);
        v.truncate(k);
        out.extend(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_per_class_seeded_and_within_the_split() {
        // 3 labels, 10 records each; records 0..30, label r % 3; the "split" is 0..27.
        let split: Vec<usize> = (0..27).collect();
        let label = |r: usize| Some(r % 3);
        let a = few_shot(&split, label, 4, 7);
        assert_eq!(a.len(), 12);
        for l in 0..3 {
            assert_eq!(a.iter().filter(|&&r| r % 3 == l).count(), 4);
        }
        assert!(a.iter().all(|r| split.contains(r)));
        assert_eq!(a, few_shot(&split, label, 4, 7));
        assert_ne!(a, few_shot(&split, label, 4, 8));
        let mut dedup = a.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), 12);
        // More shots than a class has: all of it.
        assert_eq!(few_shot(&split, label, 100, 0).len(), 27);
        // Unlabelled records are ignored.
        assert!(few_shot(&split, |_| None, 4, 0).is_empty());
    }
}
