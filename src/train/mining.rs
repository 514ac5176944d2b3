//! Hard negatives mined from siam's own index (`--mine-index every:E`), after
//! sentence-transformers' `mine_hard_negatives` (`sentence_transformers/util.py`): embed the
//! corpus with the current model, search each anchor's nearest neighbours, and keep as its
//! negatives the nearest items that are not its positives.
//!
//! Every E epochs (at the start of epochs 0, E, 2E, ...) the trainer embeds the training
//! images with the current model, builds a [`VectorIndex`] (HNSW) over them, and for each
//! training image `a` (the anchor) keeps
//!
//! ```text
//! C(a) = { c : label(c) != label(a),  s(a, c) <= (1 - margin) * s(a, p(a)) }  sorted by s(a, c), best first
//! N(a) = C(a)[range_min .. range_max], its first `negatives`
//! ```
//!
//! with `s` the cosine similarity of the joint image embeddings and `label` the mining label
//! (the class, or the caption). sentence-transformers' `relative_margin` compares a candidate
//! with the anchor's own positive; an image's positives here are its label's text (another
//! modality, whose similarities sit on another scale: CLIP's modality gap) and its label's
//! other images, so `p(a)` is the anchor's label centroid (the normalised mean of that label's
//! training embeddings), and a candidate closer than `(1 - margin)` of that is skipped as a
//! likely false negative (a mislabelled or duplicate image). As in sentence-transformers, the
//! margin filter applies before the ranks are counted, and ranks count only candidates of
//! another label.
//!
//! How batches carry them: each batch's records are extended by the mined negatives of its
//! records (those not already in it), and the extended batch goes through the usual batch
//! plan ([`super::data::plan_batch`]): the negatives' images join the image side and their texts
//! (their label prompts or captions) join the text side, with their mining labels. So every
//! loss and miner sees them as in-batch items, in both directions (a mined image is a hard
//! negative reference for the text anchors, and its text one for the image anchors).
//!
//! The graph is built on one thread, which makes it (and so the mined table) deterministic;
//! the table is saved in every checkpoint, so a resumed run uses the table the interrupted one
//! mined.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::index::{HnswParams, IndexError, VectorIndex};

/// Options of the mining, as sentence-transformers names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MineOptions {
    /// Candidates ranked before this are skipped (`range_min`; 0 keeps the hardest).
    pub range_min: usize,
    /// Candidates ranked at or after this are not considered (`range_max`).
    pub range_max: usize,
    /// Skip candidates more similar than `(1 - margin)` times the positive's similarity
    /// (`relative_margin`); `None`: no such filter.
    pub margin: Option<f64>,
    /// Negatives kept per anchor (`num_negatives`).
    pub negatives: usize,
}

/// The mined negatives of one mining pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinedNegatives {
    /// The epoch (0-based) at whose start they were mined.
    pub epoch: usize,
    /// For each dataset record, its negatives (dataset record indices); empty for records
    /// outside the training split.
    pub by_record: Vec<Vec<usize>>,
}

impl MinedNegatives {
    /// `records` followed by the mined negatives of each of them that are not already there.
    pub fn extend_batch(&self, records: &mut Vec<usize>) {
        let n = records.len();
        for i in 0..n {
            let Some(negs) = self.by_record.get(records[i]) else {
                continue;
            };
            for &c in negs {
                if !records.contains(&c) {
                    records.push(c);
                }
            }
        }
    }

    /// Number of anchors with at least one negative, and the number of negatives.
    pub fn counts(&self) -> (usize, usize) {
        let anchors = self.by_record.iter().filter(|v| !v.is_empty()).count();
        (anchors, self.by_record.iter().map(Vec::len).sum())
    }
}

/// Each row's normalised label centroid, dotted with the row: `s(a, p(a))`.
fn centroid_scores(emb: &[f32], dim: usize, labels: &[usize]) -> Vec<f32> {
    let mut sums: std::collections::HashMap<usize, Vec<f64>> = Default::default();
    for (row, &l) in emb.chunks_exact(dim).zip(labels) {
        let s = sums.entry(l).or_insert_with(|| vec![0.0; dim]);
        for (a, &x) in s.iter_mut().zip(row) {
            *a += x as f64;
        }
    }
    for s in sums.values_mut() {
        let norm = s.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        s.iter_mut().for_each(|x| *x /= norm);
    }
    emb.chunks_exact(dim)
        .zip(labels)
        .map(|(row, l)| {
            let c = &sums[l];
            row.iter().zip(c).map(|(&x, &y)| x as f64 * y).sum::<f64>() as f32
        })
        .collect()
}

/// Largest candidate list searched in the graph; beyond it the neighbours are ranked exactly.
const EXACT_AFTER: usize = 512;

/// The negatives of each row of `emb` (`n x dim`, unit rows) with mining labels `labels`, as
/// row indices (see the module doc for the rule). Neighbours come from an HNSW graph over the
/// rows, searched with a candidate list that doubles until `range_max` candidates of another
/// label pass the margin; an anchor that needs more than 512 candidates (most of its
/// neighbours share its label or fail the margin) ranks every row exactly instead.
pub fn mine_negatives(
    emb: &[f32],
    dim: usize,
    labels: &[usize],
    opts: &MineOptions,
) -> Result<Vec<Vec<usize>>, IndexError> {
    let n = labels.len();
    let params = HnswParams {
        build_threads: 1,
        ..HnswParams::default()
    };
    let index = VectorIndex::build(emb, dim, params)?;
    if n < 2 {
        return Ok(vec![Vec::new(); n]);
    }
    let positive = centroid_scores(emb, dim, labels);
    (0..n)
        .into_par_iter()
        .map(|a| {
            let query = &emb[a * dim..(a + 1) * dim];
            let limit = opts.margin.map(|m| ((1.0 - m) * positive[a] as f64) as f32);
            let mut k = (4 * (opts.range_max + 1)).min(n);
            loop {
                // A graph search with a candidate list near n costs more than ranking every
                // row, so past EXACT_AFTER the ranking is exact.
                let hits = if k >= n || k > EXACT_AFTER {
                    k = n;
                    index.search_exact(query, n)?
                } else {
                    index.search(query, k, k)?
                };
                let candidates: Vec<usize> = hits
                    .into_iter()
                    .filter(|&(c, s)| {
                        c != a && labels[c] != labels[a] && limit.is_none_or(|l| s <= l)
                    })
                    .map(|(c, _)| c)
                    .collect();
                if candidates.len() >= opts.range_max || k == n {
                    let end = candidates.len().min(opts.range_max);
                    let start = opts.range_min.min(end);
                    return Ok(candidates[start..end]
                        .iter()
                        .take(opts.negatives)
                        .copied()
                        .collect());
                }
                k = (2 * k).min(n);
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors at angles (degrees) in the plane.
    fn at(degrees: &[f32]) -> Vec<f32> {
        degrees
            .iter()
            .flat_map(|d| {
                let r = d.to_radians();
                [r.cos(), r.sin()]
            })
            .collect()
    }

    fn opts(range_min: usize, range_max: usize, margin: Option<f64>, n: usize) -> MineOptions {
        MineOptions {
            range_min,
            range_max,
            margin,
            negatives: n,
        }
    }

    /// Anchor 0 (label 0, at 0 degrees) with its label-mate at 40 degrees; label 1 at 5, 25,
    /// 60 degrees; label 2 at 90 and 180. By hand, the other-label candidates of row 0, best
    /// first: row 2 (5), row 3 (25), row 4 (60), row 5 (90), row 6 (180).
    #[test]
    fn negatives_by_hand() {
        let emb = at(&[0.0, 40.0, 5.0, 25.0, 60.0, 90.0, 180.0]);
        let labels = [0, 0, 1, 1, 1, 2, 2];
        let all = mine_negatives(&emb, 2, &labels, &opts(0, 10, None, 3)).unwrap();
        assert_eq!(all[0], vec![2, 3, 4]);
        // Never the anchor's label, for every anchor.
        for (a, negs) in all.iter().enumerate() {
            assert!(
                negs.iter().all(|&c| labels[c] != labels[a]),
                "{a}: {negs:?}"
            );
        }
        // Ranks 1..3 only: rows 3 and 4.
        let ranged = mine_negatives(&emb, 2, &labels, &opts(1, 3, None, 5)).unwrap();
        assert_eq!(ranged[0], vec![3, 4]);
        // Label 0's centroid is at 20 degrees: s(0, p) = cos 20 = 0.9397. With margin 0.1 the
        // limit is 0.8457, which skips row 2 (cos 5 = 0.9962) and row 3 (cos 25 = 0.9063);
        // rows 4 (cos 60 = 0.5) and 5 (cos 90 = 0) are the first kept.
        let margin = mine_negatives(&emb, 2, &labels, &opts(0, 10, Some(0.1), 2)).unwrap();
        assert_eq!(margin[0], vec![4, 5]);
        // Margin 0: only candidates above the centroid score cos 20 are skipped (row 2).
        let zero = mine_negatives(&emb, 2, &labels, &opts(0, 10, Some(0.0), 1)).unwrap();
        assert_eq!(zero[0], vec![3]);
    }

    #[test]
    fn batches_carry_the_negatives_once() {
        let mined = MinedNegatives {
            epoch: 0,
            by_record: vec![vec![3, 4], vec![4], vec![], vec![], vec![]],
        };
        let mut recs = vec![0, 1, 3];
        mined.extend_batch(&mut recs);
        assert_eq!(recs, vec![0, 1, 3, 4]);
        assert_eq!(mined.counts(), (2, 3));
    }
}
