//! AdamW whose update is one fused pass over host memory on the CPU backend.
//!
//! burn's `AdamW` (`burn-optim/src/optim/adamw.rs`) updates a parameter with about fifteen
//! tensor operations, each a full pass over the parameter and a fresh buffer; on a small model
//! (heads trained from the feature cache) those passes dominate the step. On flex, whose
//! tensors are host buffers handed over without a copy when uniquely owned, [`FusedAdamW`]
//! does the same arithmetic in one vectorised loop, in place ([`siam_kernels::adamw_update`],
//! split over rayon's threads in fixed chunks, so both cores of a small machine share the pass
//! over a large embedding table); on other backends (libtorch, CUDA) it runs
//! burn's `AdamW` unchanged. The state is burn's `AdamWState`, so checkpoints are the same.
//!
//! Per element, at step `t` (Loshchilov & Hutter 2019, as burn and PyTorch compute it):
//!
//! ```text
//! m <- b1 m + (1 - b1) g              v <- b2 v + (1 - b2) g^2
//! p <- p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! ```

use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{DType, Device, Tensor, TensorData};
use siam_kernels::AdamWStep;

/// AdamW with burn's semantics and state, fused on the flex backend.
#[derive(Clone)]
pub struct FusedAdamW {
    inner: AdamW,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl FusedAdamW {
    /// The optimizer for these hyper-parameters.
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let inner = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            inner,
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        }
    }
}

fn on_flex(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        if !on_flex(&device) || tensor.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return self.inner.step(lr, tensor, grad, state);
        }
        let shape = tensor.shape();
        let n = shape.num_elements();
        let (time, m, v) = match state {
            Some(s) => (
                s.momentum.time + 1,
                s.momentum.moment_1.into_data(),
                s.momentum.moment_2.into_data(),
            ),
            None => (
                1,
                TensorData::zeros::<f32, _>(shape.clone()),
                TensorData::zeros::<f32, _>(shape.clone()),
            ),
        };
        let (mut p, g, mut m, mut v) = (tensor.into_data(), grad.into_data(), m, v);
        assert_eq!(p.num_elements(), n, "parameter of {n} values");
        siam_kernels::adamw_update(
            p.as_mut_slice::<f32>().expect("f32 parameter"),
            g.as_slice::<f32>().expect("f32 gradient"),
            m.as_mut_slice::<f32>().expect("f32 moment"),
            v.as_mut_slice::<f32>().expect("f32 moment"),
            AdamWStep {
                lr: lr as f32,
                beta_1: self.beta_1,
                beta_2: self.beta_2,
                epsilon: self.epsilon,
                weight_decay: self.weight_decay,
                time,
            },
        );
        let momentum = AdaptiveMomentumState::new(
            time,
            Tensor::from_data(m, &device),
            Tensor::from_data(v, &device),
        );
        (
            Tensor::from_data(p, &device),
            Some(AdamWState::new(momentum)),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Five steps from the same start: the fused pass and burn's AdamW agree to rounding, and
    /// their states carry the same step count.
    #[test]
    fn matches_burn_adamw() {
        let device = Device::flex();
        let fused = FusedAdamW::new(0.9, 0.98, 1e-6, 0.1);
        let burn_adamw = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.98)
            .with_epsilon(1e-6)
            .with_weight_decay(0.1)
            .build();
        let start = Tensor::<2>::random([7, 33], Distribution::Normal(0.0, 1.0), &device);
        let (mut a, mut b) = (start.clone(), start);
        let (mut sa, mut sb) = (None, None);
        for t in 0..5 {
            let g = Tensor::<2>::random([7, 33], Distribution::Normal(0.0, 1.0), &device);
            let lr = 1e-2 / (t + 1) as f64;
            (a, sa) = fused.step(lr, a, g.clone(), sa);
            (b, sb) = burn_adamw.step(lr, b, g, sb);
        }
        let (a, b) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "max difference {worst}");
        assert_eq!(sa.unwrap().momentum.time, sb.unwrap().momentum.time);
    }

    /// A parameter of several chunks takes the parallel path: still burn's AdamW.
    #[test]
    fn parallel_chunks_match_burn_adamw() {
        let device = Device::flex();
        let fused = FusedAdamW::new(0.9, 0.999, 1e-8, 0.1);
        let burn_adamw = AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(0.1)
            .build();
        let shape = [3 * siam_kernels::CHUNK / 64 + 1, 64];
        let start = Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (mut a, mut b) = (start.clone(), start);
        let (mut sa, mut sb) = (None, None);
        for _ in 0..3 {
            let g = Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            (a, sa) = fused.step(1e-2, a, g.clone(), sa);
            (b, sb) = burn_adamw.step(1e-2, b, g, sb);
        }
        let worst = (a - b).abs().max().into_data().try_to_vec::<f32>().unwrap()[0];
        assert!(worst < 1e-6, "max difference {worst}");
    }
}
