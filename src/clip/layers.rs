//! The pre-norm transformer both CLIP towers share, named after OpenAI's `clip/model.py`
//! (`ResidualAttentionBlock`, `Transformer`) so its parameters carry the checkpoint's key names:
//! `resblocks.N.{ln_1, attn.in_proj, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`.
//!
//! [`MatmulDtype`] gives the towers PyTorch-autocast mixed precision: parameters stay f32 (the
//! optimiser's master weights), and only the matrix multiplies cast their operands to bf16.

use super::config::Activation;
use super::fused;
use super::lora::{adapted, LoraAdapter, LoraSpec};
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::{conv2d, linear as linear_op};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor};

/// The float type of a tower's matrix multiplies (linears, attention scores and mixing, the
/// patch-embedding convolution, the final projection).
///
/// `Bf16` follows PyTorch's autocast (`torch.autocast(dtype=torch.bfloat16)`, whose CUDA op list
/// runs `linear`, `matmul`, `conv2d` in the lower precision and `layer_norm`, `softmax` and
/// losses in f32): each multiply casts its input and the f32 weight to bf16 and its output
/// back to f32. Autodiff casts the gradient back through each cast, so the parameters and their
/// gradients stay f32. Residual adds, LayerNorm, softmax and everything after the towers stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulDtype {
    /// Every multiply in f32.
    #[default]
    F32,
    /// Multiplies in bfloat16 with f32 outputs.
    Bf16,
}

impl MatmulDtype {
    fn lower<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::F32 => x,
            Self::Bf16 => x.cast(FloatDType::BF16),
        }
    }

    fn upper<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::F32 => x,
            Self::Bf16 => x.cast(FloatDType::F32),
        }
    }

    /// Whether `device`'s backend multiplies bf16 matrices: a 2x2 product must come back as
    /// bf16 with the right values. A backend that panics or silently answers in another type
    /// fails.
    pub fn bf16_supported(device: &Device) -> bool {
        let device = device.clone();
        std::panic::catch_unwind(move || {
            let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
            let p = Self::Bf16.lower(a.clone()).matmul(Self::Bf16.lower(a));
            p.dtype() == burn::tensor::DType::BF16
                && p.cast(FloatDType::F32).into_data().try_to_vec::<f32>().ok()
                    == Some(vec![7.0, 10.0, 15.0, 22.0])
        })
        .unwrap_or(false)
    }

    /// `layer.forward(x)` in this precision (bias added in it too, as autocast's `linear`).
    ///
    /// `x` `[..., d_in]` is multiplied as one `[rows, d_in]` matrix. burn's `linear`
    /// (burn-backend `ops/modules/linear.rs`) folds the leading dims into the rows only when that
    /// makes the product squarer, so for CLIP's `d -> d` projections (`out_proj`, and `c_proj`'s
    /// `4d -> d`) it runs one small `[L, d_in] x [d_in, d]` product per sequence; for a batch of
    /// short sequences (the tiny recipe's 65 tokens) one product over all rows is faster.
    pub fn linear<const D: usize>(self, layer: &Linear, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        if D > 2 {
            let d_in = dims[D - 1];
            let rows = x.shape().num_elements() / d_in.max(1);
            let out = self.linear(layer, x.reshape([rows, d_in]));
            let mut out_dims = dims;
            out_dims[D - 1] = out.dims()[1];
            return out.reshape(out_dims);
        }
        if self == Self::F32 {
            return match &layer.bias {
                // One recorded operation with a threaded product (`fused::linear`).
                Some(bias) if D == 2 && x.dtype() == DType::F32 => {
                    let [rows, d_in] = [dims[0], dims[D - 1]];
                    let y = fused::linear(x.reshape([rows, d_in]), layer.weight.val(), bias.val());
                    let mut out_dims = dims;
                    out_dims[D - 1] = y.dims()[1];
                    y.reshape(out_dims)
                }
                _ => layer.forward(x),
            };
        }
        let out = linear_op(
            self.lower(x),
            self.lower(layer.weight.val()),
            layer.bias.as_ref().map(|b| self.lower(b.val())),
        );
        self.upper(out)
    }

    /// `x @ w` for a weight `[in, out]` on `[..., in]` (a linear without bias) in this
    /// precision.
    pub fn project<const D: usize>(self, x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
        self.upper(linear_op(self.lower(x), self.lower(w), None))
    }

    /// `a @ b` in this precision.
    pub fn matmul<const D: usize>(self, a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
        self.upper(self.lower(a).matmul(self.lower(b)))
    }

    /// `conv.forward(x)` in this precision. A `Same`-padded convolution (none in CLIP's ViT,
    /// whose patch embedding is `Valid`) runs in f32, as burn keeps that padding rule private.
    pub fn conv2d(self, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        let padding = match conv.padding {
            _ if self == Self::F32 => return conv.forward(x),
            PaddingConfig2d::Same => return conv.forward(x),
            PaddingConfig2d::Valid => [(0, 0), (0, 0)],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        };
        let options =
            ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
        let out = conv2d(
            self.lower(x),
            self.lower(conv.weight.val()),
            conv.bias.as_ref().map(|b| self.lower(b.val())),
            options,
        );
        self.upper(out)
    }
}

/// Applies the MLP activation.
///
/// QuickGELU is `x * sigmoid(1.702 x)` (OpenAI `clip/model.py` `QuickGELU`); GELU is the exact
/// erf form `x * Phi(x)` (PyTorch `nn.GELU()`).
pub fn activate<const D: usize>(x: Tensor<D>, act: Activation) -> Tensor<D> {
    match act {
        Activation::QuickGelu => fused::quick_gelu(x),
        Activation::Gelu => gelu(x),
    }
}

/// A `Linear` initialised from N(0, std) with a zero bias, as open_clip's
/// `TextTransformer.init_parameters` initialises its projections.
pub(crate) fn linear(d_in: usize, d_out: usize, std: f64, device: &Device) -> Linear {
    let mut l = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    l.bias = Some(Initializer::Zeros.init([d_out], device));
    l
}

/// `fan_in^-1/2`: the bound of PyTorch's default `nn.Linear` init (Kaiming-uniform, a = sqrt 5).
fn fan_in_bound(fan_in: usize) -> f64 {
    (fan_in as f64).powf(-0.5)
}

/// A `Linear` with weight U(+-`w_bound`) and bias U(+-`b_bound`) (zero when `b_bound` is 0).
fn uniform_linear(
    d_in: usize,
    d_out: usize,
    w_bound: f64,
    b_bound: f64,
    device: &Device,
) -> Linear {
    let uniform = |b: f64| Initializer::Uniform { min: -b, max: b };
    let mut l = LinearConfig::new(d_in, d_out)
        .with_initializer(uniform(w_bound))
        .init(device);
    l.bias = Some(if b_bound > 0.0 {
        uniform(b_bound).init([d_out], device)
    } else {
        Initializer::Zeros.init([d_out], device)
    });
    l
}

/// A LayerNorm with weight 1 and bias 0.
pub(crate) fn layer_norm(d: usize, eps: f64, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d).with_epsilon(eps).init(device)
}

/// A parameter drawn from N(0, std).
pub(crate) fn normal_param<const D: usize>(
    shape: [usize; D],
    std: f64,
    device: &Device,
) -> Param<Tensor<D>> {
    Initializer::Normal { mean: 0.0, std }.init(shape, device)
}

/// Multi-head self-attention with a fused input projection, as PyTorch's
/// `nn.MultiheadAttention` stores it (`in_proj_weight` [3d, d], `in_proj_bias` [3d]).
///
/// `softmax(Q K^T / sqrt(d_head)) V` per head (Vaswani et al. 2017), then `out_proj`.
/// Here `in_proj` holds the transpose ([d, 3d], burn's `Linear` layout): one matmul computes
/// Q, K and V together.
#[derive(Module, Debug)]
pub struct SelfAttention {
    /// Fused Q/K/V projection, output columns `[q | k | v]`.
    pub in_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    /// LoRA adapter on the fused `in_proj` (one for Q, K and V together; see [`super::lora`]).
    pub in_proj_lora: Option<LoraAdapter>,
    /// LoRA adapter on `out_proj`.
    pub out_proj_lora: Option<LoraAdapter>,
    /// Number of heads.
    pub heads: usize,
    /// Precision of the projections and of `Q K^T` and `P V`.
    #[module(skip)]
    pub matmul_dtype: MatmulDtype,
}

impl SelfAttention {
    /// `width` split into `heads`; initialised as open_clip's text tower does
    /// (in_proj N(0, width^-1/2), out_proj N(0, proj_std), zero biases).
    pub fn new(width: usize, heads: usize, proj_std: f64, device: &Device) -> Self {
        Self {
            in_proj: linear(width, 3 * width, (width as f64).powf(-0.5), device),
            out_proj: linear(width, width, proj_std, device),
            in_proj_lora: None,
            out_proj_lora: None,
            heads,
            matmul_dtype: MatmulDtype::F32,
        }
    }

    /// `x` [B, L, D] to [B, L, D]; `causal` masks keys after each query.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let m = self.matmul_dtype;
        let qkv = adapted(m, &self.in_proj, self.in_proj_lora.as_ref(), x);
        let o = match m {
            // One fused operation (`fused::attention`): no head split or merge copies.
            MatmulDtype::F32 => fused::attention(qkv, h, causal),
            // Unfused, so that the products run in bf16 while the scores and the softmax stay
            // f32 (autocast's math path).
            MatmulDtype::Bf16 => {
                // [B, L, 3D] -> [3, B, H, L, Dh]: one copy lays q, k and v out head-major.
                let qkv = qkv.reshape([b, l, 3, h, dh]).permute([2, 0, 3, 1, 4]);
                let mut parts = qkv
                    .chunk(3, 0)
                    .into_iter()
                    .map(|t| t.reshape([b, h, l, dh]));
                let (q, k, v) = (
                    parts.next().expect("3 chunks"),
                    parts.next().expect("3 chunks"),
                    parts.next().expect("3 chunks"),
                );
                let scores = m
                    .matmul(q, k.swap_dims(2, 3))
                    .mul_scalar((dh as f64).powf(-0.5));
                let scores = if causal {
                    let device = scores.device();
                    let pos = Tensor::<1, Int>::arange(0..l as i64, &device);
                    // Key j is hidden from query i when j > i.
                    let later = pos.clone().reshape([1, l]).greater(pos.reshape([l, 1]));
                    scores.mask_fill(later.unsqueeze::<4>(), f32::NEG_INFINITY)
                } else {
                    scores
                };
                let o = m.matmul(softmax(scores, 3), v);
                o.swap_dims(1, 2).reshape([b, l, d])
            }
        };
        adapted(m, &self.out_proj, self.out_proj_lora.as_ref(), o)
    }
}

/// The transformer MLP: `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion `width -> mlp_width`.
    pub c_fc: Linear,
    /// Contraction `mlp_width -> width`.
    pub c_proj: Linear,
    /// LoRA adapter on `c_fc`.
    pub c_fc_lora: Option<LoraAdapter>,
    /// LoRA adapter on `c_proj`.
    pub c_proj_lora: Option<LoraAdapter>,
    /// Activation between them.
    #[module(skip)]
    pub activation: Activation,
    /// Precision of both linears.
    #[module(skip)]
    pub matmul_dtype: MatmulDtype,
}

impl Mlp {
    /// Forward on `[..., width]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let m = self.matmul_dtype;
        let h = adapted(m, &self.c_fc, self.c_fc_lora.as_ref(), x);
        adapted(
            m,
            &self.c_proj,
            self.c_proj_lora.as_ref(),
            activate(h, self.activation),
        )
    }
}

/// Pre-norm residual block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct ResidualAttentionBlock {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Self-attention.
    pub attn: SelfAttention,
    /// Norm before the MLP.
    pub ln_2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Epsilon of `ln_1` and `ln_2` (burn's `LayerNorm` keeps its own private).
    #[module(skip)]
    pub eps: f64,
}

impl ResidualAttentionBlock {
    /// Forward on `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let x = x.clone()
            + self
                .attn
                .forward(fused::layer_norm(&self.ln_1, x, self.eps), causal);
        x.clone() + self.mlp.forward(fused::layer_norm(&self.ln_2, x, self.eps))
    }
}

/// Sizes of a [`Transformer`].
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec {
    /// Model width.
    pub width: usize,
    /// Number of blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden size.
    pub mlp_width: usize,
    /// MLP activation.
    pub activation: Activation,
    /// LayerNorm epsilon.
    pub eps: f64,
}

/// A stack of [`ResidualAttentionBlock`]s (`transformer.resblocks.N`).
#[derive(Module, Debug)]
pub struct Transformer {
    /// The blocks, in order.
    pub resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    /// Random init following open_clip `TextTransformer.init_parameters`: attention
    /// N(0, width^-1/2), output projections N(0, width^-1/2 (2 layers)^-1/2), MLP expansion
    /// N(0, (2 width)^-1/2), zero biases, unit LayerNorms.
    pub fn new(spec: TransformerSpec, device: &Device) -> Self {
        let w = spec.width as f64;
        let proj_std = w.powf(-0.5) * ((2 * spec.layers.max(1)) as f64).powf(-0.5);
        let fc_std = (2.0 * w).powf(-0.5);
        let (d, h) = (spec.width, spec.mlp_width);
        Self::blocks(spec, device, || {
            [
                linear(d, 3 * d, w.powf(-0.5), device),
                linear(d, d, proj_std, device),
                linear(d, h, fc_std, device),
                linear(h, d, proj_std, device),
            ]
        })
    }

    /// Random init as PyTorch's module defaults, which is what open_clip's vision tower gets
    /// (its `VisionTransformer.init_parameters` is a no-op): `nn.MultiheadAttention`'s
    /// in-projection Xavier-uniform U(+-sqrt(6 / (width + 3 width))) with a zero bias, its
    /// out-projection U(+-width^-1/2) with a zero bias, and each MLP `nn.Linear`
    /// U(+-fan_in^-1/2) for weight and bias (Kaiming-uniform with a = sqrt 5); unit LayerNorms.
    pub fn torch_default(spec: TransformerSpec, device: &Device) -> Self {
        let (d, h) = (spec.width, spec.mlp_width);
        let (bd, bh) = (fan_in_bound(d), fan_in_bound(h));
        Self::blocks(spec, device, || {
            [
                uniform_linear(d, 3 * d, (6.0 / (4 * d) as f64).sqrt(), 0.0, device),
                uniform_linear(d, d, bd, 0.0, device),
                uniform_linear(d, h, bd, bd, device),
                uniform_linear(h, d, bh, bh, device),
            ]
        })
    }

    /// `spec.layers` blocks with unit LayerNorms and the linears `linears` makes for each, in
    /// the order in_proj, out_proj, c_fc, c_proj.
    fn blocks(spec: TransformerSpec, device: &Device, linears: impl Fn() -> [Linear; 4]) -> Self {
        let resblocks = (0..spec.layers)
            .map(|_| {
                let [in_proj, out_proj, c_fc, c_proj] = linears();
                ResidualAttentionBlock {
                    ln_1: layer_norm(spec.width, spec.eps, device),
                    attn: SelfAttention {
                        in_proj,
                        out_proj,
                        in_proj_lora: None,
                        out_proj_lora: None,
                        heads: spec.heads,
                        matmul_dtype: MatmulDtype::F32,
                    },
                    ln_2: layer_norm(spec.width, spec.eps, device),
                    mlp: Mlp {
                        c_fc,
                        c_proj,
                        c_fc_lora: None,
                        c_proj_lora: None,
                        activation: spec.activation,
                        matmul_dtype: MatmulDtype::F32,
                    },
                    eps: spec.eps,
                }
            })
            .collect();
        Self { resblocks }
    }

    /// Sets the precision of every block's multiplies.
    pub fn set_matmul_dtype(&mut self, dtype: MatmulDtype) {
        for b in &mut self.resblocks {
            b.attn.matmul_dtype = dtype;
            b.mlp.matmul_dtype = dtype;
        }
    }

    /// Adds fresh LoRA adapters ([`super::lora`]) to `spec`'s targets in every block; `seed`
    /// makes each adapter's `A` distinct and reproducible.
    pub fn attach_lora(&mut self, spec: &LoraSpec, seed: u64, device: &Device) {
        let new = |l: &Linear, salt: u64| {
            let [d_in, d_out] = l.weight.shape().dims::<2>();
            Some(LoraAdapter::new(d_in, d_out, spec, seed ^ salt, device))
        };
        for (i, b) in self.resblocks.iter_mut().enumerate() {
            let s = (i as u64 + 1) << 8;
            if spec.targets.attn {
                b.attn.in_proj_lora = new(&b.attn.in_proj, s | 1);
                b.attn.out_proj_lora = new(&b.attn.out_proj, s | 2);
            }
            if spec.targets.mlp {
                b.mlp.c_fc_lora = new(&b.mlp.c_fc, s | 3);
                b.mlp.c_proj_lora = new(&b.mlp.c_proj, s | 4);
            }
        }
    }

    /// Folds every adapter into its linear and removes it: the same function, plain weights.
    pub fn merge_lora(mut self) -> Self {
        fn fold(l: Linear, a: Option<LoraAdapter>) -> Linear {
            match a {
                Some(a) => a.merge_into(l),
                None => l,
            }
        }
        for b in &mut self.resblocks {
            let attn = &mut b.attn;
            attn.in_proj = fold(attn.in_proj.clone(), attn.in_proj_lora.take());
            attn.out_proj = fold(attn.out_proj.clone(), attn.out_proj_lora.take());
            let mlp = &mut b.mlp;
            mlp.c_fc = fold(mlp.c_fc.clone(), mlp.c_fc_lora.take());
            mlp.c_proj = fold(mlp.c_proj.clone(), mlp.c_proj_lora.take());
        }
        self
    }

    /// Makes the adapters (only) trainable, after the tower was frozen.
    pub fn train_lora_only(mut self) -> Self {
        let on = |a: Option<LoraAdapter>| a.map(|a| a.set_require_grad(true));
        for b in &mut self.resblocks {
            b.attn.in_proj_lora = on(b.attn.in_proj_lora.take());
            b.attn.out_proj_lora = on(b.attn.out_proj_lora.take());
            b.mlp.c_fc_lora = on(b.mlp.c_fc_lora.take());
            b.mlp.c_proj_lora = on(b.mlp.c_proj_lora.take());
        }
        self
    }

    /// Whether any block carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.resblocks.iter().any(|b| {
            b.attn.in_proj_lora.is_some()
                || b.attn.out_proj_lora.is_some()
                || b.mlp.c_fc_lora.is_some()
                || b.mlp.c_proj_lora.is_some()
        })
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.resblocks.len()
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.resblocks.is_empty()
    }

    /// Runs blocks `from..to` (clamped to the stack) on `[B, L, D]`.
    pub fn forward_range(
        &self,
        mut x: Tensor<3>,
        from: usize,
        to: usize,
        causal: bool,
    ) -> Tensor<3> {
        let to = to.min(self.resblocks.len());
        for block in self.resblocks.iter().take(to).skip(from) {
            x = block.forward(x, causal);
        }
        x
    }

    /// Runs every block.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        self.forward_range(x, 0, self.resblocks.len(), causal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{TensorData, Tolerance};

    /// Range and standard deviation of a parameter's values.
    fn range_std<const D: usize>(p: &Param<Tensor<D>>) -> (f32, f32, f32) {
        let v: Vec<f32> = p.val().into_data().try_to_vec::<f32>().unwrap();
        let n = v.len() as f32;
        let mean = v.iter().sum::<f32>() / n;
        let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n).sqrt();
        let (lo, hi) = v
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        (lo, hi, std)
    }

    #[test]
    fn vision_blocks_start_from_pytorchs_module_defaults() {
        let d = Device::flex();
        let spec = TransformerSpec {
            width: 128,
            layers: 1,
            heads: 4,
            mlp_width: 512,
            activation: Activation::QuickGelu,
            eps: 1e-5,
        };
        let t = Transformer::torch_default(spec, &d);
        let b = &t.resblocks[0];
        // U(-a, a) has standard deviation a / sqrt 3; ~16k-65k draws pin it within 3 %.
        let check = |(lo, hi, std): (f32, f32, f32), a: f64, what: &str| {
            let a = a as f32;
            assert!(
                lo >= -a && hi <= a,
                "{what}: values in [{lo}, {hi}], bound {a}"
            );
            assert!(
                hi > 0.95 * a && lo < -0.95 * a,
                "{what}: does not fill its bound {a}"
            );
            let want = a / 3f32.sqrt();
            assert!(
                (std / want - 1.0).abs() < 0.03,
                "{what}: std {std}, want {want}"
            );
        };
        // nn.MultiheadAttention: Xavier-uniform in_proj [384, 128], Linear-default out_proj.
        check(
            range_std(&b.attn.in_proj.weight),
            (6.0f64 / 512.0).sqrt(),
            "in_proj",
        );
        check(
            range_std(&b.attn.out_proj.weight),
            128f64.powf(-0.5),
            "out_proj",
        );
        check(range_std(&b.mlp.c_fc.weight), 128f64.powf(-0.5), "c_fc");
        check(range_std(&b.mlp.c_proj.weight), 512f64.powf(-0.5), "c_proj");
        // MHA zeroes its biases; nn.Linear draws them from U(+-fan_in^-1/2).
        for (p, what) in [
            (&b.attn.in_proj.bias, "in_proj"),
            (&b.attn.out_proj.bias, "out_proj"),
        ] {
            let (lo, hi, _) = range_std(p.as_ref().unwrap());
            assert_eq!((lo, hi), (0.0, 0.0), "{what} bias");
        }
        let (lo, hi, _) = range_std(b.mlp.c_fc.bias.as_ref().unwrap());
        assert!(
            lo < -0.05 && hi > 0.05 && hi <= 128f32.powf(-0.5),
            "c_fc bias [{lo}, {hi}]"
        );
    }

    #[test]
    fn quick_gelu_and_gelu_by_hand() {
        let d = Device::flex();
        let x = Tensor::<1>::from_data(TensorData::from([-1.0f32, 0.0, 2.0]), &d);
        // x * sigmoid(1.702 x): -1/(1+e^1.702) = -0.154204; 2/(1+e^-3.404) = 1.935659.
        activate(x.clone(), Activation::QuickGelu)
            .into_data()
            .assert_approx_eq::<f32>(
                &TensorData::from([-0.154204f32, 0.0, 1.935659]),
                Tolerance::absolute(1e-5),
            );
        // x * Phi(x): Phi(-1) = 0.158655, Phi(2) = 0.977250.
        activate(x, Activation::Gelu)
            .into_data()
            .assert_approx_eq::<f32>(
                &TensorData::from([-0.158655f32, 0.0, 1.9545]),
                Tolerance::absolute(1e-5),
            );
    }

    /// With identity projections and one head, attention over two tokens is checkable by
    /// hand: under the causal mask the first token only sees itself.
    #[test]
    fn causal_attention_by_hand() {
        let d = Device::flex();
        let mut attn = SelfAttention::new(2, 1, 0.02, &d);
        let eye3 = TensorData::from([
            [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
        ]);
        attn.in_proj.weight = Param::from_tensor(Tensor::from_data(eye3, &d));
        attn.out_proj.weight = Param::from_tensor(Tensor::from_data(
            TensorData::from([[1.0f32, 0.0], [0.0, 1.0]]),
            &d,
        ));
        let x = Tensor::<3>::from_data(TensorData::from([[[1.0f32, 0.0], [0.0, 1.0]]]), &d);
        let y = attn.forward(x.clone(), true).into_data();
        // Token 1 attends to both: scores q.k / sqrt(2) = [0, 1/sqrt 2]; weights
        // softmax = [1/(1+e^(1/sqrt 2)), ...] = [0.330238, 0.669762]; output = weights mixed over the one-hot values.
        y.assert_approx_eq::<f32>(
            &TensorData::from([[[1.0f32, 0.0], [0.330238, 0.669762]]]),
            Tolerance::absolute(1e-5),
        );
        let y = attn.forward(x, false).into_data();
        // Token 0 without the mask: scores [1/sqrt 2, 0] -> [0.669762, 0.330238].
        y.assert_approx_eq::<f32>(
            &TensorData::from([[[0.669762f32, 0.330238], [0.330238, 0.669762]]]),
            Tolerance::absolute(1e-5),
        );
    }
}
