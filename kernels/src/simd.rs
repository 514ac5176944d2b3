//! Running one loop body compiled for the best vector extension this CPU has, and splitting a
//! pass into fixed-size chunks over rayon's threads.
//!
//! The kernels are written as plain `#[inline(always)]` loops; [`vectorised!`] compiles a copy
//! of the call inside functions with `#[target_feature(enable = "avx512f")]` and
//! `"avx2,fma"`, and picks one by run-time detection (cached by the standard library), so LLVM
//! vectorises the same source at 16, 8 or 4 lanes.

/// Elements per task when a pass is split over threads: 16k f32 (64 KiB per array) is a few
/// microseconds of work, well above rayon's cost of handing out a task, and small enough that
/// two cores share a `[1560, 512]` activation or a 128 x 512 weight (four chunks).
pub const CHUNK: usize = 1 << 14;

/// Runs `$body` (an expression over the given bindings) compiled for AVX-512F, AVX2 + FMA or
/// the baseline target, whichever is the best this CPU supports.
macro_rules! vectorised {
    (|$($arg:ident : $ty:ty),*| $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn v4($($arg: $ty),*) { $body }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3($($arg: $ty),*) { $body }
            fn base($($arg: $ty),*) { $body }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                unsafe { v4($($arg),*) }
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { v3($($arg),*) }
            } else {
                base($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            fn base($($arg: $ty),*) { $body }
            base($($arg),*)
        }
    }};
}
pub(crate) use vectorised;

/// Partial sums kept by the reductions below: one AVX-512 register of f32 (two AVX2 ones).
const LANES: usize = 16;

/// `sum_i f(a_i, b_i, c_i)` over equal-length slices.
///
/// A plain `iter().sum()` over f32 is one chain of ordered additions that LLVM must not
/// reorder, so it stays scalar; sixteen partial sums in a fixed order vectorise, and give the
/// same value on every CPU (the lanes are explicit, not the register width).
#[inline(always)]
pub(crate) fn sum3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
        .map(|((&x, &y), &z)| f(x, y, z))
        .sum();
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for (s, ((&x, &y), &z)) in acc.iter_mut().zip(x.iter().zip(y).zip(z)) {
            *s += f(x, y, z);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum_i f(x_i)` (see [`sum3`]).
#[inline(always)]
pub(crate) fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum3(x, x, x, |v, _, _| f(v))
}

/// `sum_i a_i b_i` (see [`sum3`]).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum3(a, b, b, |x, y, _| x * y)
}

/// `max_i x_i` with sixteen partial maxima (see [`sum3`]); `-inf` for an empty slice.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for (m, &v) in acc.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values;

    #[test]
    fn reductions_match_f64_for_every_tail_length() {
        for n in [0, 1, 15, 16, 17, 65, 130] {
            let (a, b) = (test_values(n, 5), test_values(n, 6));
            let want_dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let want_sq: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
            let want_max = a.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert!((dot(&a, &b) as f64 - want_dot).abs() < 1e-5, "dot, n = {n}");
            assert!(
                (sum_map(&a, |x| x * x) as f64 - want_sq).abs() < 1e-5,
                "sum, n = {n}"
            );
            assert_eq!(max(&a), want_max, "max, n = {n}");
        }
    }
}
