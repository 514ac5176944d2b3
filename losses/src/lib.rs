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
//!
//! Layout: `loss/` holds one file per loss (its config, defaults and maths) and
//! [`LossConfig`], the typed, parsed form of `--loss`; `miner/` one file per miner and the
//! [`HardnessSchedule`] (`--miner`); `distance.rs`, `reducer.rs`, `matrix.rs`, `weights.rs`
//! (per-anchor loss weights, [`Weights`]) and `error.rs` are shared; `spread.rs` measures how
//! far apart embeddings are ([`embedding_spread`], the collapse diagnostic beside
//! [`LossStats`]); `xbm.rs` is the cross-batch memory ([`CrossBatchMemory`]); `test_device.rs`
//! the device tests run on (`SIAM_TEST_DEVICE`, one definition for the whole workspace). With
//! the `serde` feature, [`LossConfig`] and [`HardnessSchedule`] serialise as their text forms.
//!
//! ```no_run
//! use burn::tensor::{Device, Distribution, Tensor};
//! use siam_losses::{HardnessSchedule, Loss, Miner};
//!
//! let dev = Device::flex().autodiff();
//! let images = Tensor::<2>::random([8, 16], Distribution::Default, &dev).require_grad();
//! let texts = Tensor::<2>::random([8, 16], Distribution::Default, &dev).require_grad();
//! let labels = [0, 0, 1, 1, 2, 2, 3, 3];
//!
//! // CLIP-style, label-aware symmetric InfoNCE with a fixed temperature.
//! let clip: Loss = "contrastive".parse().unwrap();
//! let out = clip.forward(images.clone(), &labels, texts.clone(), &labels, &Miner::none(), None).unwrap();
//!
//! // Triplet loss, semi-hard for two epochs then batch-hard, both directions.
//! let triplet: Loss = "triplet".parse().unwrap();
//! let schedule: HardnessSchedule = "semihard:2,hard".parse().unwrap();
//! let miner = schedule.miner_for_epoch(0);
//! let i2t = triplet.forward(images.clone(), &labels, texts.clone(), &labels, miner, None).unwrap();
//! let t2i = triplet.forward(texts, &labels, images, &labels, miner, None).unwrap();
//! let grads = (i2t.loss + t2i.loss + out.loss).backward();
//! ```

/// `Serialize` / `Deserialize` of a type as its text form (`Display` / `FromStr`), with the
/// `serde` feature: what `--loss` and `--miner` read is what a config file stores.
macro_rules! serde_as_text {
    ($t:ty) => {
        #[cfg(feature = "serde")]
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod distance;
pub mod error;
pub mod loss;
pub mod matrix;
pub mod miner;
pub mod reducer;
pub mod spread;
pub mod test_device;
pub mod weights;
pub mod xbm;

pub use distance::Distance;
pub use error::{LossError, Result};
pub use loss::{
    ContrastiveLoss, HostLoss, LogitParams, Loss, LossConfig, LossKind, LossOutput, LossStats,
    MultiSimilarityLoss, PairwiseLoss, Positives, SigmoidLoss, TripletLoss, MAX_LOGIT_SCALE,
};
pub use matrix::PairMatrix;
pub use miner::{HardnessSchedule, Miner, MinerKind, TripletKind, Tuples};
pub use reducer::Reducer;
pub use spread::embedding_spread;
pub use test_device::{test_device, TestDevice, TestDeviceError};
pub use weights::Weights;
pub use xbm::{CrossBatchMemory, XbmConfig, XbmSnapshot};
