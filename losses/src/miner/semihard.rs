//! FaceNet semi-hard mining (Schroff, Kalenichenko, Philbin 2015, §3.2): per anchor–positive
//! pair, the closest negative with `o_ap < o_an < o_ap + margin`; when there is none, the
//! hardest (closest) negative of the anchor. The band's width is the miner's own margin
//! or, by default, the loss's.

use crate::matrix::PairMatrix;

use super::Tuples;

/// Negatives of row `a` sorted by oriented value (closest first).
fn sorted_negatives(m: &PairMatrix<'_>, a: usize, neg: &mut [u32]) {
    let row = m.row(a);
    neg.sort_unstable_by(|&x, &y| row[x as usize].total_cmp(&row[y as usize]));
}

/// Semi-hard triplets with band width `margin`.
pub(super) fn semi_hard(m: &PairMatrix<'_>, margin: f32) -> Tuples {
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
