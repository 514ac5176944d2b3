//! Batch-all (every valid triplet; Hermans et al. 2017 pair it with a mean over the active
//! ones) and pytorch-metric-learning's `TripletMarginMiner(margin, type_of_triplets)`
//! (`miners/triplet_margin_miner.py`): both keep every triplet whose margin
//! `t = o_an − o_ap` lies in a band `(lo, hi]`; batch-all's band is `(−∞, ∞]`. Bands stay
//! implicit ([`Tuples::TripletBand`]): losses count them from sorted negatives.

use crate::matrix::PairMatrix;

use super::{TripletKind, Tuples};

/// The band `(lo, hi]` of triplet margins `TripletMarginMiner` keeps for `kind`.
pub(super) fn triplet_margin_band(margin: f32, kind: TripletKind) -> Tuples {
    let (lo, hi) = match kind {
        TripletKind::All => (f32::NEG_INFINITY, margin),
        TripletKind::Hard => (f32::NEG_INFINITY, margin.min(0.0)),
        TripletKind::SemiHard => (0.0, margin),
        TripletKind::Easy => (margin, f32::INFINITY),
    };
    Tuples::TripletBand { lo, hi }
}

/// Enumerates the triplets of a band or of "all" for one anchor (used by caps and by pair
/// losses fed a band); `f` receives `(p, n)`.
pub(crate) fn for_each_band_triplet(
    m: &PairMatrix<'_>,
    a: usize,
    lo: f32,
    hi: f32,
    pos: &mut Vec<u32>,
    neg: &mut Vec<u32>,
    mut f: impl FnMut(u32, u32),
) {
    m.split_row(a, pos, neg);
    let row = m.row(a);
    for &p in pos.iter() {
        let ap = row[p as usize];
        for &n in neg.iter() {
            let t = row[n as usize] - ap;
            if t > lo && t <= hi {
                f(p, n);
            }
        }
    }
}
