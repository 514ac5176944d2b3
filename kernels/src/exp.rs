//! A branch-free `exp` that vectorises (libm's `expf` is a scalar call LLVM cannot vectorise).
//!
//! Cephes' `expf` (S. L. Moshier, Cephes Math Library, `expf.c`): `x = n ln 2 + r` with
//! `n = round(x / ln 2)`, `|r| <= ln 2 / 2`; `e^r` by its degree-7 minimax polynomial
//! `1 + r + r^2 P(r)`, and `2^n` put straight into the exponent bits. Relative error about
//! 2e-7 (a couple of ulp) over the clamped range.

/// `1.5 * 2^23`: adding it rounds an `f32` of magnitude below `2^22` to an integer and leaves
/// that integer in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n * LN2_HI` is exact for the `|n| <= 128` used here.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Inputs are clamped to this range, so `2^n` stays a normal float: `e^88.3 = 2.2e38` and
/// `e^-87.3 = 1.2e-38` (below it the result would be subnormal or zero; it is about 1e-38).
const MAX_IN: f32 = 88.3;
const MIN_IN: f32 = -87.3;

/// `e^x` for `x` in `[-87.3, 88.3]` (clamped outside), within about 2e-7 relative.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(MIN_IN, MAX_IN);
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let k = t.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((k + 127) << 23) as u32)
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_clamps_instead_of_overflowing() {
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 2e-38);
        assert!(sigmoid(-1000.0) < 1e-37);
        assert_eq!(sigmoid(1000.0), 1.0);
    }
}
