//! Multi-similarity pair mining (Wang, Han, Huang, Dong, Scott 2019, CVPR; PML
//! `miners/multi_similarity_miner.py` `MultiSimilarityMiner`): negatives with
//! `o_an − ε < max_p o_ap` and positives with `o_ap + ε > min_n o_an`.

use crate::matrix::PairMatrix;

use super::Tuples;

/// The paper's and PML's slack ε.
pub const DEFAULT_EPSILON: f32 = 0.1;

/// The hard positive and negative pairs of every anchor for slack `eps`.
pub(super) fn multi_similarity(m: &PairMatrix<'_>, eps: f32) -> Tuples {
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
