//! A cap on the triplets kept per anchor (`miner@N`): the `N` with the largest violation
//! `o_ap − o_an` (ties by order). Pair miners are left as they are.

use crate::matrix::PairMatrix;

use super::{for_each_band_triplet, Tuples};

/// Keeps at most `cap` triplets per anchor.
pub(super) fn cap_per_anchor(m: &PairMatrix<'_>, tuples: Tuples, cap: usize) -> Tuples {
    let violation =
        |t: &[u32; 3]| m.at(t[0] as usize, t[1] as usize) - m.at(t[0] as usize, t[2] as usize);
    let keep_hardest = |group: &mut Vec<[u32; 3]>, out: &mut Vec<[u32; 3]>| {
        if group.len() > cap {
            group.sort_by(|x, y| violation(y).total_cmp(&violation(x)));
            group.truncate(cap);
        }
        out.append(group);
    };
    match tuples {
        Tuples::Triplets(mut ts) => {
            ts.sort_by_key(|t| t[0]);
            let mut out = Vec::new();
            let mut group = Vec::new();
            for t in ts {
                if group.last().is_some_and(|g: &[u32; 3]| g[0] != t[0]) {
                    keep_hardest(&mut group, &mut out);
                }
                group.push(t);
            }
            keep_hardest(&mut group, &mut out);
            Tuples::Triplets(out)
        }
        Tuples::All | Tuples::TripletBand { .. } => {
            let (lo, hi) = match tuples {
                Tuples::TripletBand { lo, hi } => (lo, hi),
                _ => (f32::NEG_INFINITY, f32::INFINITY),
            };
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            let mut out = Vec::new();
            let mut group = Vec::new();
            for a in 0..m.rows {
                for_each_band_triplet(m, a, lo, hi, &mut pos, &mut neg, |p, n| {
                    group.push([a as u32, p, n])
                });
                keep_hardest(&mut group, &mut out);
            }
            Tuples::Triplets(out)
        }
        // A cap counts triplets; pair miners are left as they are.
        pairs @ Tuples::Pairs { .. } => pairs,
    }
}
