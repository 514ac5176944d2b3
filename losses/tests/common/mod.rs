//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use burn::tensor::{Device, Tensor};

pub fn dev() -> Device {
    siam_losses::test_device().autodiff()
}

pub fn tensor(rows: &[&[f32]], dev: &Device) -> Tensor<2> {
    let d = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::<1>::from_floats(flat.as_slice(), dev).reshape([rows.len(), d])
}

pub fn from_vec(v: &[f32], n: usize, d: usize, dev: &Device) -> Tensor<2> {
    Tensor::<1>::from_floats(v, dev).reshape([n, d])
}

pub fn scalar(t: Tensor<1>) -> f32 {
    t.into_data().try_into_vec::<f32>().unwrap()[0]
}

pub fn vec2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
