//! QuickGELU and LayerNorm as single operations with a hand-written backward pass.
//!
//! Under autodiff, burn composes both from element-wise primitives: QuickGELU `x * sigmoid(1.702
//! x)` is three recorded ops whose backward adds five more passes over the activations, and
//! LayerNorm's backward goes through every op of its composed definition. On a small CLIP on
//! the `flex` backend those passes, each allocating its output and computing `exp` with libm's
//! scalar `expf`, cost as much as the matrix products around them (`benches/results/tiny.md`).
//!
//! [`FusedOps`] is a burn backend extension: one forward and one backward operation each, run
//! on `flex` by the vectorised, threaded kernels of `siam-kernels` (f32, contiguous inputs) and
//! elsewhere (libtorch, CUDA, other dtypes) by the composition of burn primitives in the trait's
//! default bodies. Its `Autodiff` implementation records each forward as one graph node whose
//! backward calls the backend's backward operation, so gradients never go through the composed
//! graph. [`quick_gelu`] and [`layer_norm`] are the tensor-level entry points the towers use.
//!
//! The maths (QuickGELU: OpenAI CLIP `clip/model.py`; LayerNorm: Ba, Kiros & Hinton 2016):
//! - `QuickGELU(x) = x s`, `s = sigmoid(1.702 x)`; `d/dx = s + 1.702 x s (1 - s)`.
//! - LayerNorm over the last dimension: `xhat = (x - mean) / sqrt(var + eps)`, `y = gamma xhat +
//!   beta`; with `g = dL/dy`, `h = g gamma`: `dL/dx = (h - mean(h) - xhat mean(h xhat)) /
//!   sqrt(var + eps)`, `dL/dgamma = sum_rows g xhat`, `dL/dbeta = sum_rows g`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::LayerNorm;
use burn::tensor::{Bytes, DType, Shape, Tensor};
use siam_kernels::QUICK_GELU_ALPHA;

/// QuickGELU and LayerNorm forward and backward as backend operations.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Cube: cfg(feature = "cuda"), Autodiff)]
pub trait FusedOps: Backend {
    /// `x * sigmoid(1.702 x)`.
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::quick_gelu::<Self>(x)
    }

    /// `grad * (s + 1.702 x s (1 - s))` with `s = sigmoid(1.702 x)`.
    fn quick_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::quick_gelu_backward::<Self>(x, grad)
    }

    /// `gamma * (x - mean) / sqrt(var + eps) + beta` over the last dimension.
    fn layer_norm_affine(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), eps)
    }

    /// `(dL/dx, dL/dgamma, dL/dbeta)` of [`FusedOps::layer_norm_affine`] given `grad = dL/dy`.
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::layer_norm_backward::<Self>(x, gamma, grad, eps)
    }
}

/// QuickGELU through [`FusedOps`]: one recorded operation under autodiff.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::quick_gelu(x.into_dispatch()))
}

/// `ln.forward(x)` through [`FusedOps`] for f32 activations (one recorded operation under
/// autodiff); other dtypes take burn's module, which widens them for the statistics. `eps` is
/// the epsilon `ln` was built with (burn keeps that field private).
pub fn layer_norm<const D: usize>(ln: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    let Some(beta) = ln.beta.as_ref() else {
        return ln.forward(x);
    };
    if x.dtype() != DType::F32 {
        return ln.forward(x);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::layer_norm_affine(
        x.into_dispatch(),
        ln.gamma.val().into_dispatch(),
        beta.val().into_dispatch(),
        eps,
    ))
}

/// The default bodies: compositions of burn primitives, for any backend and dtype.
mod composed {
    use super::*;

    pub(super) fn quick_gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let s = B::sigmoid(B::float_mul_scalar(x.clone(), QUICK_GELU_ALPHA.into()));
        B::float_mul(x, s)
    }

    pub(super) fn quick_gelu_backward<B: Backend>(
        x: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let ax = B::float_mul_scalar(x, QUICK_GELU_ALPHA.into());
        let s = B::sigmoid(ax.clone());
        // s + a x s (1 - s) = s (1 + a x (1 - s))
        let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
        let inner = B::float_add_scalar(B::float_mul(ax, one_minus_s), 1.0.into());
        B::float_mul(grad, B::float_mul(s, inner))
    }

    pub(super) fn layer_norm_backward<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        grad: FloatTensor<B>,
        eps: f64,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let shape = x.shape();
        let d = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / d.max(1);
        let flat = Shape::new([rows, d]);
        let x = B::float_reshape(x, flat.clone());
        let grad = B::float_reshape(grad, flat);
        let gamma_row = B::float_reshape(gamma, Shape::new([1, d]));
        let centred = B::float_sub(x.clone(), B::float_mean_dim(x, 1));
        let var = B::float_mean_dim(B::float_mul(centred.clone(), centred.clone()), 1);
        let r = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
        let xhat = B::float_mul(centred, r.clone());
        let h = B::float_mul(grad.clone(), gamma_row);
        let mean_h = B::float_mean_dim(h.clone(), 1);
        let mean_hx = B::float_mean_dim(B::float_mul(h.clone(), xhat.clone()), 1);
        let dx = B::float_mul(
            B::float_sub(B::float_sub(h, mean_h), B::float_mul(xhat.clone(), mean_hx)),
            r,
        );
        let dgamma = B::float_sum_dim(B::float_mul(grad.clone(), xhat), 0);
        let dbeta = B::float_sum_dim(grad, 0);
        let vector = Shape::new([d]);
        (
            B::float_reshape(dx, shape),
            B::float_reshape(dgamma, vector.clone()),
            B::float_reshape(dbeta, vector),
        )
    }
}

/// The contiguous f32 values of a flex tensor, or `None` (another dtype, a strided view).
fn f32_values(t: &FlexTensor) -> Option<&[f32]> {
    t.as_slice::<f32>()
}

/// A flex tensor of `shape` holding `values`.
fn flex_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

impl FusedOps for Flex {
    fn quick_gelu(x: FlexTensor) -> FlexTensor {
        let Some(values) = f32_values(&x) else {
            return composed::quick_gelu::<Self>(x);
        };
        let mut out = vec![0f32; values.len()];
        siam_kernels::quick_gelu(values, &mut out);
        flex_tensor(out, x.shape())
    }

    fn quick_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (Some(values), Some(g)) = (f32_values(&x), f32_values(&grad)) else {
            return composed::quick_gelu_backward::<Self>(x, grad);
        };
        let mut out = vec![0f32; values.len()];
        siam_kernels::quick_gelu_backward(values, g, &mut out);
        flex_tensor(out, x.shape())
    }

    fn layer_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        grad: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (Some(values), Some(gm), Some(g)) =
            (f32_values(&x), f32_values(&gamma), f32_values(&grad))
        else {
            return composed::layer_norm_backward::<Self>(x, gamma, grad, eps);
        };
        let mut dx = vec![0f32; values.len()];
        let (dgamma, dbeta) = siam_kernels::layer_norm_backward(values, gm, g, eps as f32, &mut dx);
        let d = Shape::new([gm.len()]);
        (
            flex_tensor(dx, x.shape()),
            flex_tensor(dgamma, d.clone()),
            flex_tensor(dbeta, d),
        )
    }
}

#[cfg(feature = "tch")]
impl FusedOps for burn::backend::LibTorch {}

#[cfg(feature = "cuda")]
impl FusedOps for burn::backend::Cube {}

impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuickGeluBackward;

        impl<B: Backend + FusedOps> Backward<B, 1> for QuickGeluBackward {
            /// The input activations.
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                if let [Some(parent)] = ops.parents {
                    grads.register::<B>(parent.id, B::quick_gelu_backward(ops.state, grad));
                }
            }
        }

        match QuickGeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let output = B::quick_gelu(input.clone());
                prep.finish(input, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quick_gelu(x.into_primitive())),
        }
    }

    fn layer_norm_affine(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: Backend + FusedOps> Backward<B, 3> for LayerNormBackward {
            /// The input, the scale and epsilon.
            type State = (FloatTensor<B>, FloatTensor<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, eps) = ops.state;
                let (dx, dgamma, dbeta) = B::layer_norm_backward(x, gamma, grad, eps);
                let [px, pgamma, pbeta] = ops.parents;
                for (parent, g) in [(px, dx), (pgamma, dgamma), (pbeta, dbeta)] {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }

        let nodes = [x.node(), gamma.node(), beta.node()];
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        match LayerNormBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::layer_norm_affine(x.clone(), gamma.clone(), beta, eps);
                prep.finish((x, gamma, eps), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::layer_norm_affine(x, gamma, beta, eps)),
        }
    }
}
