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
