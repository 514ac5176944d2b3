//! Max-violation mining (Faghri, Fleet, Kiros, Fidler 2018, VSE++): every anchor–positive
//! pair with the anchor's hardest negative `argmin_n o_an`. With image anchors against text
//! references and the reverse (two calls), a hinge loss on these is VSE++'s sum of the two
//! hardest-negative terms. No parameters.

use crate::matrix::PairMatrix;

use super::Tuples;

/// Every positive of each anchor with that anchor's hardest negative.
pub(super) fn max_violation(m: &PairMatrix<'_>) -> Tuples {
    let mut out = Vec::new();
    for a in 0..m.rows {
        let row = m.row(a);
        let hardest = (0..m.cols)
            .filter(|&j| m.is_neg(a, j))
            .min_by(|&x, &y| row[x].total_cmp(&row[y]).then(x.cmp(&y)));
        if let Some(n) = hardest {
            out.extend(
                (0..m.cols)
                    .filter(|&j| m.is_pos(a, j))
                    .map(|p| [a as u32, p as u32, n as u32]),
            );
        }
    }
    Tuples::Triplets(out)
}
