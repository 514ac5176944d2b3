//! Distances, miners, reducers and metric-learning losses for burn.
//!
//! The crate knows tensors and labels, nothing else. A loss composes a [`Distance`],
//! the tuples a [`Miner`] chose and a [`Reducer`], as in pytorch-metric-learning:
//!
//! 1. the anchor-by-reference matrix is computed once on the (autodiff) tensors;
//! 2. it is read back to the host in f32, where miners pick tuples per anchor from
//!    the `B × R` matrix (never `B × R × R` masks) and the loss value and its
//!    derivative with respect to every matrix entry are computed exactly;
//! 3. the loss tensor is assembled so that its value is that loss and its gradient
//!    flows back through the matrix into the embeddings (and the logit scale).
//!
//! Memory is `O(B·R)` for every loss and miner.

pub mod distance;
pub mod error;
pub mod matrix;
pub mod miner;
pub mod loss;
pub mod reducer;

pub use distance::Distance;
pub use error::{LossError, Result};
pub use matrix::PairMatrix;
pub use loss::{ContrastiveLoss, HostLoss, Loss, LossOutput, LossStats, MultiSimilarityLoss, PairwiseLoss, Positives, TripletLoss, MAX_LOGIT_SCALE};
pub use reducer::Reducer;
pub use miner::{HardnessSchedule, Miner, MinerKind, TripletKind, Tuples};

use burn::tensor::Device;

/// The device tests run on: `SIAM_TEST_DEVICE=tch` selects libtorch's CPU device when
/// this crate is built with its `tch` feature, anything else the pure-Rust flex backend.
pub fn test_device() -> Device {
    #[allow(unused_variables)]
    let want = std::env::var("SIAM_TEST_DEVICE").unwrap_or_default();
    #[cfg(feature = "tch")]
    if want == "tch" {
        #[allow(deprecated)]
        return Device::libtorch();
    }
    Device::flex()
}
