//! `siam::clip::fused`: QuickGELU, LayerNorm and attention as single operations with a
//! hand-written backward give the values and gradients of burn's own composition (QuickGELU from
//! `x * sigmoid(1.702 x)`, LayerNorm from `burn::nn::LayerNorm`, linear from burn's `linear`,
//! attention from a head split, `matmul` and `softmax`), on the test device
//! (`SIAM_TEST_DEVICE`), for tensors small and large enough to be split over threads, and for a
//! strided view (which takes the composed path on flex).

mod support;

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::module::linear;
use burn::tensor::{Device, Distribution, Int, Tensor, Tolerance};
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

/// Multi-head attention from `[q | k | v]` `[B, L, 3D]` composed of burn tensor ops, as the
/// towers computed it before `fused::attention`.
fn attention_composed(qkv: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let [b, l, d3] = qkv.dims();
    let (d, dh) = (d3 / 3, d3 / 3 / heads);
    let parts = qkv.reshape([b, l, 3, heads, dh]).permute([2, 0, 3, 1, 4]);
    let part = |n: usize| parts.clone().narrow(0, n, 1).reshape([b, heads, l, dh]);
    let (q, k, v) = (part(0), part(1), part(2));
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar((dh as f64).powf(-0.5));
    let scores = if causal {
        let pos = Tensor::<1, Int>::arange(0..l as i64, &scores.device());
        let later = pos.clone().reshape([1, l]).greater(pos.reshape([l, 1]));
        scores.mask_fill(later.unsqueeze::<4>(), f32::NEG_INFINITY)
    } else {
        scores
    };
    softmax(scores, 3)
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, l, d])
}

#[test]
fn attention_forward_and_gradient_match_the_composition() {
    let device = support::device().autodiff();
    // (shape of qkv, heads): a small one, the tiny recipe's image tower (24 x 65 tokens, width
    // 128, 4 heads) and text tower (6 x 8 tokens).
    let cases = [([2, 7, 48], 2), ([24, 65, 384], 4), ([6, 8, 384], 4)];
    for (shape, heads) in cases {
        for causal in [false, true] {
            let what = format!("attention {shape:?} causal {causal}");
            let qkv =
                Tensor::<3>::random(shape, Distribution::Normal(0.0, 0.7), &device).require_grad();
            let w = random([shape[0], shape[1], shape[2] / 3], &device);
            let ours = fused::attention(qkv.clone(), heads, causal);
            let theirs = attention_composed(qkv.clone(), heads, causal);
            assert_close(ours.clone(), theirs.clone(), &format!("{what}: forward"));
            let g_ours = qkv.grad(&(ours * w.clone()).sum().backward()).unwrap();
            let g_theirs = qkv.grad(&(theirs * w).sum().backward()).unwrap();
            assert_close(g_ours, g_theirs, &format!("{what}: dL/dqkv"));
        }
    }
}

#[test]
fn attention_on_a_strided_view_takes_the_composed_path_to_the_same_gradient() {
    // A transposed view is not contiguous: flex hands it, forward and backward, to the
    // composition of backend primitives in `FusedOps`'s default bodies.
    let device = support::device().autodiff();
    for causal in [false, true] {
        let base =
            Tensor::<3>::random([3, 48, 5], Distribution::Normal(0.0, 0.7), &device).require_grad();
        let w = random([3, 5, 16], &device);
        // One view each: burn's tape cannot be walked twice through a shared node.
        let ours = fused::attention(base.clone().swap_dims(1, 2), 2, causal);
        let theirs = attention_composed(base.clone().swap_dims(1, 2), 2, causal);
        assert_close(ours.clone(), theirs.clone(), "strided attention forward");
        let g_ours = base.grad(&(ours * w.clone()).sum().backward()).unwrap();
        let g_theirs = base.grad(&(theirs * w).sum().backward()).unwrap();
        assert_close(g_ours, g_theirs, "strided attention dL/dqkv");
    }
}

/// `a` against `b` relative to `b`'s largest magnitude (gradients summed over many rows).
fn assert_close_scaled<const D: usize>(a: Tensor<D>, b: Tensor<D>, what: &str) {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
    let (a, b) = (a.into_data(), b.into_data());
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let worst = a
        .iter::<f32>()
        .zip(b.iter::<f32>())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale,
        "{what}: worst difference {worst:e} at scale {scale}"
    );
}

#[test]
fn linear_forward_and_gradients_match_burns_linear() {
    let device = support::device().autodiff();
    // [rows, d_in] -> d_out: a small one, the tiny recipe's MLP (1,560 rows, 128 -> 512 -> 128).
    for (rows, d_in, d_out) in [(5, 16, 8), (1560, 128, 512), (1560, 512, 128)] {
        for x_tracked in [true, false] {
            let what = format!("linear {rows} x {d_in} -> {d_out}, x tracked {x_tracked}");
            let normal = |shape: [usize; 2]| {
                Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
            };
            let x = normal([rows, d_in]);
            let x = if x_tracked { x.require_grad() } else { x };
            let w = normal([d_in, d_out]).require_grad();
            let b = Tensor::<1>::random([d_out], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let g = normal([rows, d_out]);
            let ours = fused::linear(x.clone(), w.clone(), b.clone());
            let theirs = linear(x.clone(), w.clone(), Some(b.clone()));
            assert_close_scaled(ours.clone(), theirs.clone(), &format!("{what}: forward"));
            let go = (ours * g.clone()).sum().backward();
            let gt = (theirs * g).sum().backward();
            if x_tracked {
                let (a, b) = (x.grad(&go).unwrap(), x.grad(&gt).unwrap());
                assert_close_scaled(a, b, &format!("{what}: dL/dx"));
            } else {
                assert!(
                    x.grad(&go).is_none(),
                    "{what}: a gradient for an untracked input"
                );
            }
            let (a, c) = (w.grad(&go).unwrap(), w.grad(&gt).unwrap());
            assert_close_scaled(a, c, &format!("{what}: dL/dW"));
            let (a, c) = (b.grad(&go).unwrap(), b.grad(&gt).unwrap());
            assert_close_scaled(a, c, &format!("{what}: dL/db"));
        }
    }
}

#[test]
fn linear_on_a_strided_view_takes_burns_path_to_the_same_gradient() {
    let device = support::device().autodiff();
    let base = Tensor::<2>::random([16, 6], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let w = Tensor::<2>::random([16, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let b = Tensor::<1>::random([8], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let g = Tensor::<2>::random([6, 8], Distribution::Normal(0.0, 1.0), &device);
    let ours = fused::linear(base.clone().transpose(), w.clone(), b.clone());
    let theirs = linear(base.clone().transpose(), w.clone(), Some(b.clone()));
    assert_close_scaled(ours.clone(), theirs.clone(), "strided linear forward");
    let go = (ours * g.clone()).sum().backward();
    let gt = (theirs * g).sum().backward();
    for (a, c, what) in [
        (base.grad(&go).unwrap(), base.grad(&gt).unwrap(), "dL/dx"),
        (w.grad(&go).unwrap(), w.grad(&gt).unwrap(), "dL/dW"),
    ] {
        assert_close_scaled(a, c, &format!("strided linear {what}"));
    }
    assert_close_scaled(
        b.grad(&go).unwrap(),
        b.grad(&gt).unwrap(),
        "strided linear dL/db",
    );
}
