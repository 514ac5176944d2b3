//! `siam::clip::fused`: QuickGELU and LayerNorm as single operations with a hand-written
//! backward give the values and gradients of burn's own composition (QuickGELU from
//! `x * sigmoid(1.702 x)`, LayerNorm from `burn::nn::LayerNorm`), on the test device
//! (`SIAM_TEST_DEVICE`), for tensors small and large enough to be split over threads, and for a
//! strided view (which takes the composed path on flex).

mod support;

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Distribution, Tensor, Tolerance};
use siam::clip::fused;

fn assert_close<const D: usize>(ours: Tensor<D>, theirs: Tensor<D>, what: &str) {
    let (a, b) = (ours.into_data(), theirs.into_data());
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let (a, b) = (
        a.try_to_vec::<f32>().unwrap(),
        b.try_to_vec::<f32>().unwrap(),
    );
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0f32, f32::max);
    assert!(worst < 2e-5, "{what}: worst relative difference {worst:e}");
}

fn random(shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::random(shape, Distribution::Normal(0.0, 2.0), device)
}

/// A LayerNorm with a random scale and shift, so their gradients are not the trivial ones.
fn layer_norm(d: usize, device: &Device) -> LayerNorm {
    let mut ln = LayerNormConfig::new(d).with_epsilon(1e-5).init(device);
    let noise = || Tensor::<1>::random([d], Distribution::Normal(0.0, 0.5), device);
    ln.gamma = Param::from_tensor((ln.gamma.val() + noise()).detach());
    ln.beta = ln
        .beta
        .map(|b| Param::from_tensor((b.val() + noise()).detach()));
    ln
}

/// Shapes: one that fits in a single chunk, one the kernels split over threads with a ragged
/// last chunk (24 x 65 x 128 = 199,680 values, the tiny recipe's image tower).
const SHAPES: [[usize; 3]; 2] = [[2, 5, 16], [24, 65, 128]];

#[test]
fn quick_gelu_forward_and_gradient_match_the_composition() {
    let device = support::device().autodiff();
    for shape in SHAPES {
        let x = random(shape, &device).require_grad();
        // A non-uniform upstream gradient: L = sum(w * f(x)).
        let w = random(shape, &device);
        let ours = fused::quick_gelu(x.clone());
        let theirs = x.clone() * sigmoid(x.clone().mul_scalar(1.702));
        assert_close(ours.clone(), theirs.clone(), "QuickGELU forward");
        let g_ours = x.grad(&(ours * w.clone()).sum().backward()).unwrap();
        let g_theirs = x.grad(&(theirs * w).sum().backward()).unwrap();
        assert_close(g_ours, g_theirs, "QuickGELU dL/dx");
    }
}

#[test]
fn layer_norm_forward_and_gradients_match_burns_module() {
    let device = support::device().autodiff();
    for shape in SHAPES {
        let ln = layer_norm(shape[2], &device);
        let x = random(shape, &device).require_grad();
        let w = random(shape, &device);
        let ours = fused::layer_norm(&ln, x.clone(), 1e-5);
        let theirs = ln.forward(x.clone());
        assert_close(ours.clone(), theirs.clone(), "LayerNorm forward");
        let grads_ours = (ours * w.clone()).sum().backward();
        let grads_theirs = (theirs * w).sum().backward();
        assert_close(
            x.grad(&grads_ours).unwrap(),
            x.grad(&grads_theirs).unwrap(),
            "LayerNorm dL/dx",
        );
        let beta = ln.beta.as_ref().unwrap();
        for p in [&ln.gamma, beta] {
            let (a, b) = (
                p.val().grad(&grads_ours).unwrap(),
                p.val().grad(&grads_theirs).unwrap(),
            );
            // Sums over up to 1,560 rows: compare relative to the gradient's scale.
            let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
            a.into_data().assert_approx_eq::<f32>(
                &b.into_data(),
                Tolerance::absolute(1e-5 * scale).set_relative(1e-4),
            );
        }
    }
}

#[test]
fn strided_and_plain_tensors_take_the_same_values() {
    // A transposed view is not contiguous: flex's kernels hand it to the composition.
    let device = support::device();
    let x = random([4, 16, 6], &device).swap_dims(1, 2);
    let ln = layer_norm(16, &device);
    let y = random([4, 6, 16], &device);
    assert_close(
        fused::layer_norm(&ln, x.clone(), 1e-5),
        ln.forward(x.clone()),
        "LayerNorm on a strided view",
    );
    assert_close(
        fused::quick_gelu(x.clone()),
        x.clone() * sigmoid(x.clone().mul_scalar(1.702)),
        "QuickGELU on a strided view",
    );
    assert_close(
        fused::layer_norm(&ln, y.clone(), 1e-5),
        ln.forward(y),
        "LayerNorm without autodiff",
    );
}
