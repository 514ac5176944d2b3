//! Blocked similarity matrices: `queries x candidates` dot products computed a block of query
//! rows at a time, so memory stays O(block x candidates) whatever the number of queries. Shared by
//! exact search ([`super::VectorIndex::search_exact`]) and the metrics of `crate::eval`.

use rayon::prelude::*;

use super::dot::dot_kernel;

/// Upper bound on the floats of one score block (16 MiB).
const BLOCK_FLOATS: usize = 1 << 22;

/// Calls `visit(query_index, scores)` for every query row, where `scores[j]` is the dot product
/// of the query with candidate `j`. Blocks of query rows run in parallel on rayon's pool; within
/// a block each candidate row is loaded once for all queries of the block. `visit` results are
/// returned in query order.
pub(crate) fn for_each_query_scores<R: Send>(
    queries: &[f32],
    candidates: &[f32],
    dim: usize,
    visit: impl Fn(usize, &[f32]) -> R + Sync,
) -> Vec<R> {
    let nq = queries.len() / dim;
    let nc = candidates.len() / dim;
    let block = (BLOCK_FLOATS / nc.max(1)).clamp(1, 64);
    let dot = dot_kernel();
    let blocks: Vec<Vec<R>> = (0..nq.div_ceil(block))
        .into_par_iter()
        .map(|b| {
            let q0 = b * block;
            let q1 = (q0 + block).min(nq);
            let rows = q1 - q0;
            let mut scores = vec![0f32; rows * nc];
            for (j, c) in candidates.chunks_exact(dim).enumerate() {
                for r in 0..rows {
                    let q = &queries[(q0 + r) * dim..(q0 + r + 1) * dim];
                    scores[r * nc + j] = dot(q, c);
                }
            }
            (0..rows)
                .map(|r| visit(q0 + r, &scores[r * nc..(r + 1) * nc]))
                .collect()
        })
        .collect();
    blocks.into_iter().flatten().collect()
}

/// `true` when candidate `a` (score `sa`) ranks before candidate `b` (score `sb`): higher score
/// first, lower index first among equal scores.
#[inline]
pub(crate) fn ranks_before(sa: f32, a: usize, sb: f32, b: usize) -> bool {
    sa > sb || (sa == sb && a < b)
}

/// Indices of the `k` best candidates in rank order (see [`ranks_before`]), skipping `skip`.
pub(crate) fn top_k(scores: &[f32], k: usize, skip: Option<usize>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&j| Some(j) != skip).collect();
    let k = k.min(idx.len());
    let cmp = |a: &usize, b: &usize| {
        if ranks_before(scores[*a], *a, scores[*b], *b) {
            std::cmp::Ordering::Less
        } else if a == b {
            std::cmp::Ordering::Equal
        } else {
            std::cmp::Ordering::Greater
        }
    };
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_scores_match_naive() {
        let dim = 3;
        let q: Vec<f32> = (0..5 * dim).map(|i| i as f32 * 0.1).collect();
        let c: Vec<f32> = (0..4 * dim).map(|i| 1.0 - i as f32 * 0.05).collect();
        let got = for_each_query_scores(&q, &c, dim, |i, s| (i, s.to_vec()));
        for (i, (qi, row)) in got.iter().enumerate() {
            assert_eq!(*qi, i);
            for (j, s) in row.iter().enumerate() {
                let want: f32 = (0..dim).map(|t| q[i * dim + t] * c[j * dim + t]).sum();
                assert!((s - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn top_k_breaks_ties_by_index_and_skips() {
        let s = [0.5, 0.9, 0.5, 0.9, 0.1];
        assert_eq!(top_k(&s, 3, None), vec![1, 3, 0]);
        assert_eq!(top_k(&s, 3, Some(1)), vec![3, 0, 2]);
        assert_eq!(top_k(&s, 10, Some(4)), vec![1, 3, 0, 2]);
    }
}
