//! Fused CPU kernels on plain `f32` slices for the operations that dominate a small CLIP's
//! training step on burn's pure-Rust `flex` backend once its matrix products run at full speed:
//! QuickGELU forward and backward, LayerNorm's backward, linear layers, multi-head attention from
//! the fused Q/K/V projection, AdamW's update and the gradient norm's sum of squares.
//!
//! burn composes them from separate element-wise ops under autodiff (QuickGELU forward and
//! backward is eight passes over the activations, each allocating its output, and the sigmoid's
//! `exp` is libm's scalar `expf`); here each is one pass, vectorised for the CPU this runs on
//! (AVX-512F, AVX2 + FMA, or the baseline target, picked at run time) and split over rayon's
//! threads in fixed-size chunks, so results do not depend on the number of threads.
//!
//! The crate knows slices, not tensors: `siam::clip::fused` wraps these kernels as a burn backend
//! extension with a hand-written autodiff backward.

mod adamw;
mod attention;
mod exp;
mod layer_norm;
mod linear;
mod quick_gelu;
mod simd;
mod strided;
mod sum_of_squares;

pub use adamw::{adamw_update, AdamWStep};
pub use attention::{attention_backward, attention_forward, AttentionShape};
pub use exp::{exp, sigmoid};
pub use layer_norm::layer_norm_backward;
pub use linear::{linear_backward, linear_forward, LinearShape};
pub use quick_gelu::{quick_gelu, quick_gelu_backward, QUICK_GELU_ALPHA};
pub use simd::CHUNK;
pub use sum_of_squares::sum_of_squares;

/// A deterministic pseudo-random vector in [-1, 1) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
