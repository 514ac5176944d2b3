//! Low-rank adapters (LoRA; Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
//! Models", eq. 3) on the linears of the towers' transformer blocks.
//!
//! A frozen linear `h = x W + b` (burn's layout, `W` is `[in, out]`) becomes
//!
//! ```text
//! h = x W + b + (alpha / r) (x A) B,      A: [in, r],  B: [r, out]
//! ```
//!
//! which is PyTorch's `W + (alpha/r) B A` on the `[out, in]` weight, transposed. Only `A` and
//! `B` train. The initialisation is PEFT's (`peft/tuners/lora/layer.py`, `reset_lora_parameters`
//! with `init_lora_weights=True`): `A` Kaiming-uniform with `a = sqrt(5)`, i.e. uniform in
//! `±1/sqrt(in)`, and `B` zero, so a fresh adapter leaves the model exactly as it was.
//!
//! Targets: `attn` puts one adapter on the attention's fused input projection (`in_proj`,
//! `[d, 3d]`: a single `A` shared by Q, K and V and one `B` whose columns are `[q | k | v]`,
//! loralib's `MergedLinear` with every part enabled, not three separate adapters) and one on
//! its output projection; `mlp` one on `c_fc` and one on `c_proj`. open_clip keeps Q, K and V
//! fused in `nn.MultiheadAttention`, which is why PEFT cannot adapt its towers (open_clip
//! issue #1003); siam adapts the fused weight directly.
//!
//! [`LoraAdapter::merge_into`] folds an adapter into its linear (`W += (alpha/r) A B`), so a
//! saved model is a plain CLIP again.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use super::layers::MatmulDtype;

/// Which linears of each transformer block get an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoraTargets {
    /// The attention's fused Q/K/V input projection and its output projection.
    pub attn: bool,
    /// The MLP's expansion and contraction.
    pub mlp: bool,
}

/// A LoRA setting: `r:R,alpha:A,targets:T[,T...]` (defaults r 8, alpha 16, targets attn,mlp).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Rank `r` of `A B`, at least 1.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// The adapted linears.
    pub targets: LoraTargets,
}

// `alpha` is checked to be finite when parsed, so `==` is an equivalence.
impl Eq for LoraSpec {}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            rank: 8,
            alpha: 16.0,
            targets: LoraTargets {
                attn: true,
                mlp: true,
            },
        }
    }
}

/// A LoRA setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoraSpecError {
    /// A key other than `r`, `alpha`, `targets`.
    #[error("unknown LoRA key {0:?} in {1:?}: expected r:N, alpha:X, targets:attn,mlp")]
    UnknownKey(String, String),
    /// A rank that is not a whole number of at least 1.
    #[error("LoRA rank r:{0} must be a whole number of at least 1")]
    BadRank(String),
    /// An alpha that is not a positive number.
    #[error("LoRA alpha:{0} must be a positive number")]
    BadAlpha(String),
    /// A target other than `attn` and `mlp`.
    #[error("unknown LoRA target {0:?}: expected attn and/or mlp")]
    UnknownTarget(String),
    /// `targets:` with nothing after it.
    #[error("LoRA targets are empty: name attn and/or mlp")]
    NoTargets,
}

impl FromStr for LoraSpec {
    type Err = LoraSpecError;
    /// `r:8,alpha:16,targets:attn,mlp`; items after `targets:` without a colon are more
    /// targets. Missing keys keep their defaults; an empty string is the default.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = LoraSpec::default();
        let mut targets: Option<LoraTargets> = None;
        let mut in_targets = false;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once(':') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim()),
                None if in_targets => ("targets".to_string(), item),
                None => return Err(LoraSpecError::UnknownKey(item.into(), s.into())),
            };
            in_targets = key == "targets";
            match key.as_str() {
                "r" | "rank" => {
                    spec.rank = value
                        .parse::<usize>()
                        .ok()
                        .filter(|&r| r >= 1)
                        .ok_or_else(|| LoraSpecError::BadRank(value.into()))?;
                }
                "alpha" => {
                    spec.alpha = value
                        .parse::<f64>()
                        .ok()
                        .filter(|a| a.is_finite() && *a > 0.0)
                        .ok_or_else(|| LoraSpecError::BadAlpha(value.into()))?;
                }
                "targets" => {
                    let t = targets.get_or_insert(LoraTargets {
                        attn: false,
                        mlp: false,
                    });
                    match value.to_ascii_lowercase().as_str() {
                        "attn" | "attention" => t.attn = true,
                        "mlp" => t.mlp = true,
                        "" => {}
                        other => return Err(LoraSpecError::UnknownTarget(other.into())),
                    }
                }
                _ => return Err(LoraSpecError::UnknownKey(key, s.into())),
            }
        }
        if let Some(t) = targets {
            if !t.attn && !t.mlp {
                return Err(LoraSpecError::NoTargets);
            }
            spec.targets = t;
        }
        Ok(spec)
    }
}

impl fmt::Display for LoraSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.targets;
        let names: Vec<&str> = [(t.attn, "attn"), (t.mlp, "mlp")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        write!(
            f,
            "r:{},alpha:{},targets:{}",
            self.rank,
            self.alpha,
            names.join(",")
        )
    }
}

impl LoraSpec {
    /// The update's scale `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One adapter: `(alpha/r) (x A) B` added to a linear's output.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// Down-projection `[in, r]` (PEFT's `lora_A.weight`, transposed).
    pub a: Param<Tensor<2>>,
    /// Up-projection `[r, out]` (PEFT's `lora_B.weight`, transposed), zero at the start.
    pub b: Param<Tensor<2>>,
    /// `alpha / r`.
    #[module(skip)]
    pub scale: f64,
}

impl LoraAdapter {
    /// A fresh adapter for a `d_in -> d_out` linear: `A` uniform in `±1/sqrt(d_in)` drawn from
    /// SplitMix64 of `(seed, i)` (so it does not depend on the backend's generator), `B` zero.
    pub fn new(d_in: usize, d_out: usize, spec: &LoraSpec, seed: u64, device: &Device) -> Self {
        let r = spec.rank;
        let bound = 1.0 / (d_in as f64).sqrt();
        let a: Vec<f32> = (0..d_in * r)
            .map(|i| {
                let z = siam_data::dataset::splitmix64(seed ^ (i as u64).wrapping_mul(0x9E37));
                let u = (z >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) * bound) as f32
            })
            .collect();
        LoraAdapter {
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, r]), device)),
            b: Param::from_tensor(Tensor::zeros([r, d_out], device)),
            scale: spec.scale(),
        }
    }

    /// `(alpha/r) (x A) B` on `[..., in]`, in the tower's matmul precision.
    pub fn delta<const D: usize>(&self, m: MatmulDtype, x: Tensor<D>) -> Tensor<D> {
        let h = m.project(x, self.a.val());
        m.project(h, self.b.val()).mul_scalar(self.scale)
    }

    /// `layer` with this adapter folded in: `W + (alpha/r) A B`.
    pub fn merge_into(&self, mut layer: Linear) -> Linear {
        let delta = self.a.val().matmul(self.b.val()).mul_scalar(self.scale);
        layer.weight = layer.weight.map(|w| w + delta);
        layer
    }

    /// Number of scalar parameters (`r (in + out)`).
    pub fn num_params(&self) -> usize {
        self.a.shape().num_elements() + self.b.shape().num_elements()
    }
}

/// `layer(x)`, plus `lora`'s update when there is one.
pub fn adapted<const D: usize>(
    m: MatmulDtype,
    layer: &Linear,
    lora: Option<&LoraAdapter>,
    x: Tensor<D>,
) -> Tensor<D> {
    match lora {
        None => m.linear(layer, x),
        Some(a) => m.linear(layer, x.clone()) + a.delta(m, x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s: LoraSpec = "r:4,alpha:8,targets:attn".parse().unwrap();
        assert_eq!((s.rank, s.alpha), (4, 8.0));
        assert_eq!(
            s.targets,
            LoraTargets {
                attn: true,
                mlp: false
            }
        );
        let s: LoraSpec = "r:8,alpha:16,targets:attn,mlp".parse().unwrap();
        assert_eq!(s, LoraSpec::default());
        assert_eq!(s.to_string().parse::<LoraSpec>().unwrap(), s);
        assert_eq!("".parse::<LoraSpec>().unwrap(), LoraSpec::default());
        assert!(matches!(
            "r:0".parse::<LoraSpec>(),
            Err(LoraSpecError::BadRank(_))
        ));
        assert!(matches!(
            "targets:attn,conv".parse::<LoraSpec>(),
            Err(LoraSpecError::UnknownTarget(_))
        ));
        assert!(matches!(
            "alpha:-1".parse::<LoraSpec>(),
            Err(LoraSpecError::BadAlpha(_))
        ));
        assert!(matches!(
            "rank8".parse::<LoraSpec>(),
            Err(LoraSpecError::UnknownKey(..))
        ));
    }

    /// PEFT's init bound and the zero `B`; the merged linear equals linear + update.
    #[test]
    fn init_and_merge_by_hand() {
        let d = Device::flex();
        let spec = LoraSpec {
            rank: 2,
            alpha: 4.0,
            ..LoraSpec::default()
        };
        let mut ad = LoraAdapter::new(4, 3, &spec, 7, &d);
        let a: Vec<f32> = ad.a.val().into_data().try_to_vec::<f32>().unwrap();
        assert!(a.iter().all(|v| v.abs() <= 0.5) && a.iter().any(|v| *v != 0.0));
        let b: Vec<f32> = ad.b.val().into_data().try_to_vec::<f32>().unwrap();
        assert!(b.iter().all(|v| *v == 0.0));
        // A = e_0 e_0^T + e_1 e_1^T (first two inputs), B = [[1,0,0],[0,0,1]], scale 2:
        // the update sends x to 2 (x_0, 0, x_1).
        let mut av = vec![0.0f32; 8];
        av[0] = 1.0;
        av[3] = 1.0;
        ad.a = Param::from_tensor(Tensor::from_data(TensorData::new(av, [4, 2]), &d));
        ad.b = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0], [2, 3]),
            &d,
        ));
        let layer = crate::clip::layers::linear(4, 3, 0.0, &d);
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4]), &d);
        let y: Vec<f32> = adapted(MatmulDtype::F32, &layer, Some(&ad), x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(y, vec![2.0, 0.0, 4.0]);
        let merged = ad.merge_into(layer);
        let z: Vec<f32> = merged.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(z, y);
    }
}
