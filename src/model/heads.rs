//! Projection heads that map a tower's output into the joint space.
//!
//! Two kinds:
//! - `linear`: `y = x W + b` (`W: [d_in, d_joint]`). When `d_in == d_joint` it starts as the
//!   identity, so training starts from the checkpoint's own zero-shot embedding space.
//! - `adapter`: CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with
//!   Feature Adapters", 2021, `github.com/gaopengcuhk/CLIP-Adapter` `train.py`): a bottleneck
//!   MLP `A(x) = relu(relu(x W1) W2)` (no biases, `W1: [d, d/r]`, `W2: [d/r, d]`) mixed back into
//!   its input, `y = alpha * A(x) + (1 - alpha) * x`, with `alpha` the mixing ratio (0.2 in the
//!   paper). If the joint size differs from `d`, a linear projection follows the adapter.
//! - `identity` (no parameters): what a plain CLIP checkpoint uses when loaded for inference.
//!
//! Every head's output is L2-normalised by [`l2_normalize`] before any distance is taken.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Which head follows a tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// A linear projection (identity-initialised when square).
    #[default]
    Linear,
    /// A CLIP-Adapter residual bottleneck MLP (plus a projection when the sizes differ).
    Adapter,
    /// No head: the tower's own embedding.
    Identity,
}

impl FromStr for HeadKind {
    type Err = crate::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "linear" => Ok(Self::Linear),
            "adapter" | "mlp" | "residual" => Ok(Self::Adapter),
            "identity" | "none" => Ok(Self::Identity),
            _ => Err(crate::UnknownName::new(
                "head",
                s,
                "linear, adapter or identity",
            )),
        }
    }
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Adapter => "adapter",
            Self::Identity => "identity",
        })
    }
}

/// The shape of one head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Head kind.
    pub kind: HeadKind,
    /// Size of the tower's output.
    pub d_in: usize,
    /// Size of the joint space.
    pub d_out: usize,
    /// Adapter mixing ratio `alpha` (CLIP-Adapter's 0.2).
    pub ratio: f64,
    /// Adapter bottleneck reduction `r` (CLIP-Adapter's 4).
    pub reduction: usize,
}

impl HeadConfig {
    /// A linear head `d_in -> d_out` (the adapter fields at CLIP-Adapter's 0.2 and 4, unused).
    pub fn linear(d_in: usize, d_out: usize) -> Self {
        HeadConfig {
            kind: HeadKind::Linear,
            d_in,
            d_out,
            ratio: 0.2,
            reduction: 4,
        }
    }

    /// Builds the head. Square linear heads start as the identity; other weights use burn's
    /// default (Kaiming-uniform) initialisation.
    pub fn init(&self, device: &Device) -> ProjectionHead {
        let square = self.d_in == self.d_out;
        let (adapter, proj) = match self.kind {
            HeadKind::Identity => (None, None),
            HeadKind::Linear => {
                let mut lin = LinearConfig::new(self.d_in, self.d_out).init(device);
                if square {
                    lin.weight = Param::from_tensor(Tensor::eye(self.d_in, device));
                    lin.bias = Some(Param::from_tensor(Tensor::zeros([self.d_out], device)));
                }
                (None, Some(lin))
            }
            HeadKind::Adapter => {
                let hidden = (self.d_in / self.reduction.max(1)).max(1);
                let adapter = ResidualAdapter {
                    down: LinearConfig::new(self.d_in, hidden)
                        .with_bias(false)
                        .init(device),
                    up: LinearConfig::new(hidden, self.d_in)
                        .with_bias(false)
                        .init(device),
                    ratio: self.ratio,
                };
                let proj = (!square).then(|| LinearConfig::new(self.d_in, self.d_out).init(device));
                (Some(adapter), proj)
            }
        };
        ProjectionHead { adapter, proj }
    }
}

/// CLIP-Adapter's residual bottleneck: `alpha * relu(relu(x W1) W2) + (1 - alpha) * x`.
#[derive(Module, Debug)]
pub struct ResidualAdapter {
    /// `W1: [d, d/r]`, no bias.
    pub down: Linear,
    /// `W2: [d/r, d]`, no bias.
    pub up: Linear,
    /// Mixing ratio `alpha`.
    pub ratio: f64,
}

impl ResidualAdapter {
    /// Applies the adapter to `[B, d]` features.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let a = relu(self.up.forward(relu(self.down.forward(x.clone()))));
        a.mul_scalar(self.ratio) + x.mul_scalar(1.0 - self.ratio)
    }
}

/// A projection head: an optional adapter, then an optional linear projection.
#[derive(Module, Debug)]
pub struct ProjectionHead {
    /// The residual adapter (adapter heads).
    pub adapter: Option<ResidualAdapter>,
    /// The linear projection (linear heads, and adapters into a different size).
    pub proj: Option<Linear>,
}

impl ProjectionHead {
    /// The identity head.
    pub fn identity() -> Self {
        Self {
            adapter: None,
            proj: None,
        }
    }

    /// Maps `[B, d_in]` tower features to `[B, d_out]` joint features (not normalised).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = match &self.adapter {
            Some(a) => a.forward(x),
            None => x,
        };
        match &self.proj {
            Some(p) => p.forward(x),
            None => x,
        }
    }
}

pub use crate::clip::model::l2_normalize;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn rows(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn square_linear_head_starts_as_identity() {
        let d = Device::flex();
        let head = HeadConfig {
            kind: HeadKind::Linear,
            d_in: 3,
            d_out: 3,
            ratio: 0.2,
            reduction: 4,
        }
        .init(&d);
        let x = Tensor::<2>::from_data(TensorData::from([[1.0f32, -2.0, 0.5]]), &d);
        assert_eq!(rows(head.forward(x)), vec![1.0, -2.0, 0.5]);
    }

    #[test]
    fn adapter_mixes_by_ratio() {
        let d = Device::flex();
        let mut head = HeadConfig {
            kind: HeadKind::Adapter,
            d_in: 2,
            d_out: 2,
            ratio: 0.25,
            reduction: 2,
        }
        .init(&d);
        let a = head.adapter.as_mut().unwrap();
        // W1 = [[1],[1]] (sum), W2 = [[1, 2]]: A(x) = relu(relu(x0 + x1) * [1, 2]).
        a.down.weight =
            Param::from_tensor(Tensor::from_data(TensorData::from([[1.0f32], [1.0]]), &d));
        a.up.weight = Param::from_tensor(Tensor::from_data(TensorData::from([[1.0f32, 2.0]]), &d));
        let x = Tensor::<2>::from_data(TensorData::from([[1.0f32, 3.0], [-1.0, -3.0]]), &d);
        let y = rows(head.forward(x));
        // Row 1: A = [4, 8]; 0.25*[4,8] + 0.75*[1,3] = [1.75, 4.25]. Row 2: A = 0 -> 0.75 x.
        let expect = [1.75, 4.25, -0.75, -2.25];
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn adapter_into_other_size_adds_projection() {
        let d = Device::flex();
        let head = HeadConfig {
            kind: HeadKind::Adapter,
            d_in: 8,
            d_out: 4,
            ratio: 0.2,
            reduction: 4,
        }
        .init(&d);
        assert!(head.proj.is_some());
        let y = head.forward(Tensor::ones([3, 8], &d));
        assert_eq!(y.dims(), [3, 4]);
    }

    #[test]
    fn normalize_gives_unit_rows_and_survives_zero() {
        let d = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::from([[3.0f32, 4.0], [0.0, 0.0]]), &d);
        assert_eq!(rows(l2_normalize(x)), vec![0.6, 0.8, 0.0, 0.0]);
    }
}
