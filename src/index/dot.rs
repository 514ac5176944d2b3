//! Dot products of f32 vectors on the CPU's vector units, and the HNSW distance built on them.
//!
//! The kernel is picked once per process by runtime feature detection: AVX-512F, else AVX2 + FMA,
//! else a portable scalar loop with eight independent accumulators (which LLVM vectorises for the
//! baseline target). All kernels sum in f32; they differ from a sequential sum only by rounding.

use std::sync::OnceLock;

/// Signature of a dot-product kernel. Both slices must have the same length.
pub type DotFn = fn(&[f32], &[f32]) -> f32;

/// The fastest dot-product kernel this CPU supports (detected once, then cached).
pub fn dot_kernel() -> DotFn {
    static KERNEL: OnceLock<DotFn> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return dot_avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return dot_avx2;
            }
        }
        dot_scalar
    })
}

/// `sum_i a_i b_i` with the fastest kernel this CPU supports.
///
/// # Panics
/// If `a.len() != b.len()` (a programmer error: callers check dimensions).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    dot_kernel()(a, b)
}

/// Portable kernel: eight accumulators break the add dependency chain so LLVM can vectorise it.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for i in chunks * 8..n {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only returned by `dot_kernel` after detecting avx2 and fma.
    unsafe { dot_avx2_impl(a, b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut s0 = _mm256_setzero_ps();
    let mut s1 = _mm256_setzero_ps();
    let mut s2 = _mm256_setzero_ps();
    let mut s3 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: every load reads 8 floats at offsets < n.
    unsafe {
        while i + 32 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                s1,
            );
            s2 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 16)),
                _mm256_loadu_ps(pb.add(i + 16)),
                s2,
            );
            s3 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 24)),
                _mm256_loadu_ps(pb.add(i + 24)),
                s3,
            );
            i += 32;
        }
        while i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        let lo = _mm256_castps256_ps128(s);
        let hi = _mm256_extractf128_ps(s, 1);
        let q = _mm_add_ps(lo, hi);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        let mut total = _mm_cvtss_f32(q);
        while i < n {
            total += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        total
    }
}

#[cfg(target_arch = "x86_64")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only returned by `dot_kernel` after detecting avx512f.
    unsafe { dot_avx512_impl(a, b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512_impl(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut s0 = _mm512_setzero_ps();
    let mut s1 = _mm512_setzero_ps();
    let mut s2 = _mm512_setzero_ps();
    let mut s3 = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY: full loads read 16 floats at offsets < n; the tail uses a masked load.
    unsafe {
        while i + 64 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            s1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                s1,
            );
            s2 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 32)),
                _mm512_loadu_ps(pb.add(i + 32)),
                s2,
            );
            s3 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 48)),
                _mm512_loadu_ps(pb.add(i + 48)),
                s3,
            );
            i += 64;
        }
        while i + 16 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u32 << (n - i)).wrapping_sub(1) as __mmask16;
            let x = _mm512_maskz_loadu_ps(mask, pa.add(i));
            let y = _mm512_maskz_loadu_ps(mask, pb.add(i));
            s1 = _mm512_fmadd_ps(x, y, s1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)))
    }
}

/// Cosine distance between unit vectors for hnsw_rs: `max(0, 1 - a·b)`.
///
/// hnsw_rs asserts that distances are non-negative (`select_neighbours` in hnsw_rs 0.3.5
/// `src/hnsw.rs`); for unit vectors f32 rounding can make `a·b` exceed 1 by a few ulps, so the
/// distance is clamped at 0 (hnsw_rs's own `DistDot` asserts instead, which panics on a query
/// equal to an indexed vector). Inputs must be L2-normalised for this to be a cosine distance.
#[derive(Clone, Copy)]
pub struct UnitDot {
    kernel: DotFn,
}

impl Default for UnitDot {
    fn default() -> Self {
        UnitDot {
            kernel: dot_kernel(),
        }
    }
}

impl hnsw_rs::prelude::Distance<f32> for UnitDot {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        let d = 1.0 - (self.kernel)(va, vb);
        // `max` also maps NaN to 0; inputs are checked finite before they reach the index.
        d.max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn kernels_agree_with_f64_on_every_length() {
        let mut kernels: Vec<DotFn> = vec![dot_scalar, dot_kernel()];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            kernels.push(dot_avx2);
        }
        for n in 0..140 {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2).collect();
            let want = reference(&a, &b);
            for k in &kernels {
                let got = k(&a, &b) as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "n={n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn distance_is_clamped_for_unit_vectors() {
        use hnsw_rs::prelude::Distance;
        // 1/sqrt(3) components: the f32 dot of this vector with itself rounds above 1.
        let v = vec![1.0f32 / 3f32.sqrt(); 3];
        let d = UnitDot::default();
        assert_eq!(d.eval(&v, &v), (1.0 - dot(&v, &v)).max(0.0));
        assert!(d.eval(&v, &v) >= 0.0);
        let w = vec![1.0f32 + 1e-6, 0.0, 0.0];
        assert_eq!(d.eval(&w, &w), 0.0);
        assert!((d.eval(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-7);
    }
}
