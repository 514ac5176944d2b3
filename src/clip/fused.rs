//! QuickGELU, LayerNorm, linear layers and multi-head attention as single operations with a
//! hand-written backward pass.
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
//! graph. [`quick_gelu`], [`layer_norm`], [`linear`] and [`attention`] are the tensor-level
//! entry points the towers use.
//!
//! The maths (QuickGELU: OpenAI CLIP `clip/model.py`; LayerNorm: Ba, Kiros & Hinton 2016):
//! - `QuickGELU(x) = x s`, `s = sigmoid(1.702 x)`; `d/dx = s + 1.702 x s (1 - s)`.
//! - LayerNorm over the last dimension: `xhat = (x - mean) / sqrt(var + eps)`, `y = gamma xhat +
//!   beta`; with `g = dL/dy`, `h = g gamma`: `dL/dx = (h - mean(h) - xhat mean(h xhat)) /
//!   sqrt(var + eps)`, `dL/dgamma = sum_rows g xhat`, `dL/dbeta = sum_rows g`.
//! - Linear `y = x W + b`: `dx = dY W^T`, `dW = x^T dY`, `db = sum_rows dY`.
//! - Attention (Vaswani et al. 2017) straight from the fused `[q | k | v]` projection, per
//!   head: `P = softmax(s Q K^T)`, `s = dh^-1/2`, `O = P V`; backward `dV = P^T dO`, `dP = dO
//!   V^T`, `dS = P (dP - rowsum(P dP))`, `dQ = s dS K`, `dK = s dS^T Q` (`P` recomputed).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::LayerNorm;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bytes, DType, Shape, Slice, Tensor, TensorData};
use siam_kernels::{AttentionShape, LinearShape, QUICK_GELU_ALPHA};

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

    /// `x W + b` for `x` `[n, d_in]`, `weight` `[d_in, d_out]`, `bias` `[d_out]`.
    fn dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::linear(x, weight, Some(bias))
    }

    /// `(dL/dx, dL/dW, dL/db)` of [`FusedOps::dense`] given `grad = dL/dy`; the first two
    /// only when asked for.
    fn dense_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need_x: bool,
        need_weight: bool,
    ) -> (
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
    ) {
        composed::dense_backward::<Self>(x, weight, grad, need_x, need_weight)
    }

    /// Self-attention over `heads` heads from the fused projection `qkv` `[B, L, 3D]` (columns
    /// `[q | k | v]`), to `[B, L, D]` with the heads side by side; `causal` hides later keys.
    fn attention_qkv(qkv: FloatTensor<Self>, heads: usize, causal: bool) -> FloatTensor<Self> {
        composed::attention_qkv::<Self>(qkv, heads, causal)
    }

    /// `dL/dqkv` `[B, L, 3D]` of [`FusedOps::attention_qkv`] given `grad = dL/dout` `[B, L, D]`.
    fn attention_qkv_backward(
        qkv: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<Self> {
        composed::attention_qkv_backward::<Self>(qkv, grad, heads, causal)
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

/// `x W + b` through [`FusedOps`] (one recorded operation under autodiff): `x` `[n, d_in]`,
/// `weight` `[d_in, d_out]` (burn's `Linear` layout), `bias` `[d_out]`.
pub fn linear(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::dense(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// `[n, d_in] x [d_in, d_out]`.
fn linear_shape(x: &Shape, weight: &Shape) -> LinearShape {
    let ([rows, d_in], [w_in, d_out]) = (x.dims::<2>(), weight.dims::<2>());
    assert_eq!(d_in, w_in, "linear: input width {d_in}, weight rows {w_in}");
    LinearShape { rows, d_in, d_out }
}

/// Self-attention from the fused Q/K/V projection through [`FusedOps`]: `qkv` `[B, L, 3D]`
/// (columns `[q | k | v]`, as `nn.MultiheadAttention`'s `in_proj`) to `[B, L, D]`, one recorded
/// operation under autodiff. `D` must split into `heads`.
pub fn attention(qkv: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::attention_qkv(
        qkv.into_dispatch(),
        heads,
        causal,
    ))
}

/// `[B, L, 3D]` split into `heads` heads.
fn attention_shape(qkv: &Shape, heads: usize, causal: bool) -> AttentionShape {
    let [batch, len, three_d] = qkv.dims::<3>();
    assert!(
        heads > 0 && three_d % (3 * heads) == 0,
        "attention: width {three_d} is not 3 x {heads} heads"
    );
    AttentionShape {
        batch,
        len,
        heads,
        head_dim: three_d / 3 / heads,
        causal,
    }
}

/// The default bodies: compositions of burn primitives, for any backend and dtype.
mod composed {
    use super::*;

    #[allow(clippy::type_complexity)]
    pub(super) fn dense_backward<B: Backend>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        need_x: bool,
        need_weight: bool,
    ) -> (
        Option<FloatTensor<B>>,
        Option<FloatTensor<B>>,
        FloatTensor<B>,
    ) {
        (
            need_x.then(|| B::linear_x_backward(weight, grad.clone())),
            need_weight.then(|| B::linear_weight_backward(x, grad.clone())),
            B::linear_bias_backward(grad),
        )
    }

    /// `qkv` `[B, L, 3D]` to Q, K, V `[B, H, L, dh]`.
    fn split_heads<B: Backend>(qkv: FloatTensor<B>, s: AttentionShape) -> [FloatTensor<B>; 3] {
        let (b, l, h, dh) = (s.batch, s.len, s.heads, s.head_dim);
        let parts = B::float_permute(
            B::float_reshape(qkv, Shape::new([b, l, 3, h, dh])),
            &[2, 0, 3, 1, 4],
        );
        [0, 1, 2].map(|part| {
            let mut slices = [Slice::from(..); 5];
            slices[0] = Slice::from(part..part + 1);
            B::float_reshape(
                B::float_slice(parts.clone(), &slices),
                Shape::new([b, h, l, dh]),
            )
        })
    }

    /// `[B, H, L, dh]` to `[B, L, H dh]`.
    fn merge_heads<B: Backend>(o: FloatTensor<B>, s: AttentionShape) -> FloatTensor<B> {
        B::float_reshape(
            B::float_swap_dims(o, 1, 2),
            Shape::new([s.batch, s.len, s.heads * s.head_dim]),
        )
    }

    /// `softmax(s Q K^T)` `[B, H, L, L]`, later keys masked when causal.
    fn probabilities<B: Backend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        s: AttentionShape,
    ) -> FloatTensor<B> {
        let scale = (s.head_dim as f64).powf(-0.5);
        let scores = B::float_mul_scalar(
            B::float_matmul(q, B::float_swap_dims(k, 2, 3)),
            scale.into(),
        );
        let full = scores.shape();
        let scores = if s.causal {
            let l = s.len;
            let hidden: Vec<f32> = (0..l * l)
                .map(|n| {
                    if n % l > n / l {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let bias = B::float_from_data(TensorData::new(hidden, [1, 1, l, l]), &scores.device());
            let bias = B::float_cast(bias, scores.dtype().into());
            B::float_add(scores, B::float_expand(bias, full.clone()))
        } else {
            scores
        };
        let max = B::float_max_dim(scores.clone(), 3);
        let e = B::float_exp(B::float_sub(scores, B::float_expand(max, full.clone())));
        let total = B::float_sum_dim(e.clone(), 3);
        B::float_div(e, B::float_expand(total, full))
    }

    pub(super) fn attention_qkv<B: Backend>(
        qkv: FloatTensor<B>,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<B> {
        let s = attention_shape(&qkv.shape(), heads, causal);
        let [q, k, v] = split_heads::<B>(qkv, s);
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        };
        merge_heads::<B>(B::attention(q, k, v, None, None, options), s)
    }

    pub(super) fn attention_qkv_backward<B: Backend>(
        qkv: FloatTensor<B>,
        grad: FloatTensor<B>,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<B> {
        let s = attention_shape(&qkv.shape(), heads, causal);
        let (b, l, h, dh) = (s.batch, s.len, s.heads, s.head_dim);
        let [q, k, v] = split_heads::<B>(qkv, s);
        let p = probabilities::<B>(q.clone(), k.clone(), s);
        let g = B::float_swap_dims(B::float_reshape(grad, Shape::new([b, l, h, dh])), 1, 2);
        let dv = B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), g.clone());
        let dp = B::float_matmul(g, B::float_swap_dims(v, 2, 3));
        let full = p.shape();
        let dot = B::float_sum_dim(B::float_mul(p.clone(), dp.clone()), 3);
        let ds = B::float_mul_scalar(
            B::float_mul(p, B::float_sub(dp, B::float_expand(dot, full))),
            (dh as f64).powf(-0.5).into(),
        );
        let dq = B::float_matmul(ds.clone(), k);
        let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
        let one = Shape::new([1, b, h, l, dh]);
        let stacked = B::float_cat(
            [dq, dk, dv]
                .into_iter()
                .map(|t| B::float_reshape(t, one.clone()))
                .collect(),
            0,
        );
        // [3, B, H, L, dh] back to [B, L, 3, H, dh], the layout of `qkv`.
        B::float_reshape(
            B::float_permute(stacked, &[1, 3, 0, 2, 4]),
            Shape::new([b, l, 3 * h * dh]),
        )
    }

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

    fn dense(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let (Some(xv), Some(wv), Some(bv)) =
            (f32_values(&x), f32_values(&weight), f32_values(&bias))
        else {
            return <Self as ModuleOps<Self>>::linear(x, weight, Some(bias));
        };
        let s = linear_shape(&x.shape(), &weight.shape());
        let mut y = vec![0f32; s.rows * s.d_out];
        siam_kernels::linear_forward(xv, wv, bv, s, &mut y);
        flex_tensor(y, Shape::new([s.rows, s.d_out]))
    }

    fn dense_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        need_x: bool,
        need_weight: bool,
    ) -> (Option<FlexTensor>, Option<FlexTensor>, FlexTensor) {
        let (Some(xv), Some(wv), Some(g)) =
            (f32_values(&x), f32_values(&weight), f32_values(&grad))
        else {
            return composed::dense_backward::<Self>(x, weight, grad, need_x, need_weight);
        };
        let s = linear_shape(&x.shape(), &weight.shape());
        let mut dx = need_x.then(|| vec![0f32; xv.len()]);
        let mut dw = need_weight.then(|| vec![0f32; wv.len()]);
        let mut db = vec![0f32; s.d_out];
        siam_kernels::linear_backward(xv, wv, g, s, dx.as_deref_mut(), dw.as_deref_mut(), &mut db);
        (
            dx.map(|v| flex_tensor(v, x.shape())),
            dw.map(|v| flex_tensor(v, weight.shape())),
            flex_tensor(db, Shape::new([s.d_out])),
        )
    }

    fn attention_qkv(qkv: FlexTensor, heads: usize, causal: bool) -> FlexTensor {
        let Some(values) = f32_values(&qkv) else {
            return composed::attention_qkv::<Self>(qkv, heads, causal);
        };
        let s = attention_shape(&qkv.shape(), heads, causal);
        let mut out = vec![0f32; values.len() / 3];
        siam_kernels::attention_forward(values, s, &mut out);
        flex_tensor(out, Shape::new([s.batch, s.len, s.heads * s.head_dim]))
    }

    fn attention_qkv_backward(
        qkv: FlexTensor,
        grad: FlexTensor,
        heads: usize,
        causal: bool,
    ) -> FlexTensor {
        let (Some(values), Some(g)) = (f32_values(&qkv), f32_values(&grad)) else {
            return composed::attention_qkv_backward::<Self>(qkv, grad, heads, causal);
        };
        let s = attention_shape(&qkv.shape(), heads, causal);
        let mut dqkv = vec![0f32; values.len()];
        siam_kernels::attention_backward(values, g, s, &mut dqkv);
        flex_tensor(dqkv, qkv.shape())
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

    fn dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LinearBackward;

        impl<B: Backend + FusedOps> Backward<B, 3> for LinearBackward {
            /// The input and the weight.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight) = ops.state;
                let [px, pw, pb] = ops.parents;
                let (dx, dw, db) = B::dense_backward(x, weight, grad, px.is_some(), pw.is_some());
                for (parent, g) in [(px, dx), (pw, dw), (pb, Some(db))] {
                    if let (Some(parent), Some(g)) = (parent, g) {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }

        let nodes = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        );
        match LinearBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::dense(x.clone(), weight.clone(), bias);
                prep.finish((x, weight), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dense(x, weight, bias)),
        }
    }

    fn attention_qkv(qkv: FloatTensor<Self>, heads: usize, causal: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: Backend + FusedOps> Backward<B, 1> for AttentionBackward {
            /// The fused projection, the number of heads and the mask flag (the backward
            /// recomputes the attention weights from them).
            type State = (FloatTensor<B>, usize, bool);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                if let [Some(parent)] = ops.parents {
                    let (qkv, heads, causal) = ops.state;
                    let dqkv = B::attention_qkv_backward(qkv, grad, heads, causal);
                    grads.register::<B>(parent.id, dqkv);
                }
            }
        }

        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = qkv.into_primitive();
                let output = B::attention_qkv(input.clone(), heads, causal);
                prep.finish((input, heads, causal), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::attention_qkv(qkv.into_primitive(), heads, causal))
            }
        }
    }
}
