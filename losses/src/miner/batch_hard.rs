//! Batch-hard mining (Hermans, Beyer, Leibe 2017, "In Defense of the Triplet Loss";
//! pytorch-metric-learning `miners/batch_hard_miner.py` `BatchHardMiner`): per anchor, the
//! farthest positive and the closest negative, `(a, argmax_p o_ap, argmin_n o_an)`.
//! No parameters.

use crate::matrix::PairMatrix;

use super::Tuples;

/// Per anchor: the farthest positive and the closest negative.
pub(super) fn batch_hard(m: &PairMatrix<'_>) -> Tuples {
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
