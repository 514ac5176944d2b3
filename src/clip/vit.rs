//! The Vision Transformer image tower (Dosovitskiy et al. 2021, "An Image is Worth 16x16
//! Words"), laid out as OpenAI's `clip/model.py` `VisionTransformer` and open_clip's
//! `transformer.py` `VisionTransformer`: `conv1` patch embedding, `class_embedding`,
//! `positional_embedding`, `ln_pre`, `transformer.resblocks.N`, `ln_post`, `proj`.
//!
//! `embed(x) = ln_post(h_L[:, 0]) @ proj`, where `h_0 = ln_pre([cls; patches(x)] + pos)` and
//! `h_l` are pre-norm residual attention blocks without a mask.

use super::config::VitConfig;
use super::fused;
use super::layers::{layer_norm, normal_param, MatmulDtype, Transformer, TransformerSpec};
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::LayerNorm;
use burn::tensor::{Device, Tensor};

/// The ViT image tower.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patch embedding: `[width, 3, patch, patch]`, stride `patch`, no bias.
    pub conv1: Conv2d,
    /// The learned class token `[width]`.
    pub class_embedding: Param<Tensor<1>>,
    /// Learned positions `[1 + grid^2, width]`.
    pub positional_embedding: Param<Tensor<2>>,
    /// Norm before the transformer.
    pub ln_pre: LayerNorm,
    /// The residual attention blocks.
    pub transformer: Transformer,
    /// Norm on the class token's output.
    pub ln_post: LayerNorm,
    /// Projection `[width, embed_dim]`, applied as `x @ proj`.
    pub proj: Param<Tensor<2>>,
    /// Precision of `conv1` and `proj` (the blocks carry their own).
    #[module(skip)]
    pub matmul_dtype: MatmulDtype,
    /// Epsilon of the tower's own LayerNorms (burn's `LayerNorm` keeps its own private).
    #[module(skip)]
    pub eps: f64,
}

impl VisionTransformer {
    /// Random init as open_clip: class token, positions and projection N(0, width^-1/2); the
    /// patch embedding and the blocks with PyTorch's module defaults
    /// ([`Transformer::torch_default`]; open_clip leaves its vision blocks to them).
    pub fn new(cfg: &VitConfig, embed_dim: usize, eps: f64, device: &Device) -> Self {
        let w = cfg.width;
        let scale = (w as f64).powf(-0.5);
        let grid = cfg.image_size / cfg.patch_size;
        Self {
            conv1: Conv2dConfig::new([3, w], [cfg.patch_size, cfg.patch_size])
                .with_stride([cfg.patch_size, cfg.patch_size])
                .with_bias(false)
                .init(device),
            class_embedding: normal_param([w], scale, device),
            positional_embedding: normal_param([grid * grid + 1, w], scale, device),
            ln_pre: layer_norm(w, eps, device),
            transformer: Transformer::torch_default(
                TransformerSpec {
                    width: w,
                    layers: cfg.layers,
                    heads: cfg.heads,
                    mlp_width: cfg.mlp_width,
                    activation: cfg.activation,
                    eps,
                },
                device,
            ),
            ln_post: layer_norm(w, eps, device),
            proj: normal_param([w, embed_dim], scale, device),
            matmul_dtype: MatmulDtype::F32,
            eps,
        }
    }

    /// Sets the precision of the patch embedding, every block and the projection.
    pub fn set_matmul_dtype(&mut self, dtype: MatmulDtype) {
        self.matmul_dtype = dtype;
        self.transformer.set_matmul_dtype(dtype);
    }

    /// Number of residual blocks.
    pub fn num_blocks(&self) -> usize {
        self.transformer.len()
    }

    /// Patch + class-token embedding, positions and `ln_pre`, then the first `n_blocks`
    /// blocks: `[B, 3, H, W]` to hidden states `[B, 1 + grid^2, width]`.
    ///
    /// # Panics
    /// If the image side differs from the configured one (the position table would not fit).
    pub fn forward_prefix(&self, pixels: Tensor<4>, n_blocks: usize) -> Tensor<3> {
        let x = self.matmul_dtype.conv2d(&self.conv1, pixels); // [B, W, g, g]
        let [b, w, gh, gw] = x.dims();
        let x = x.reshape([b, w, gh * gw]).swap_dims(1, 2); // [B, g*g, W]
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, w])
            .expand([b, 1, w]);
        let pos = self.positional_embedding.val();
        assert_eq!(
            pos.dims()[0],
            gh * gw + 1,
            "image of {gh}x{gw} patches does not match the position table"
        );
        let x = Tensor::cat(vec![cls, x], 1) + pos.unsqueeze::<3>();
        let x = fused::layer_norm(&self.ln_pre, x, self.eps);
        self.transformer.forward_range(x, 0, n_blocks, false)
    }

    /// The remaining blocks from `from_block`, then `ln_post` on the class token and the
    /// projection: hidden `[B, T, width]` to `[B, embed_dim]`.
    pub fn forward_suffix(&self, hidden: Tensor<3>, from_block: usize) -> Tensor<2> {
        let x = self
            .transformer
            .forward_range(hidden, from_block, self.num_blocks(), false);
        let [b, _, w] = x.dims();
        // LayerNorm is per token, so normalising the pooled token alone equals pooling after.
        let cls = x.narrow(1, 0, 1).reshape([b, w]);
        self.matmul_dtype.matmul(
            fused::layer_norm(&self.ln_post, cls, self.eps),
            self.proj.val(),
        )
    }

    /// `[B, 3, H, W]` (CLIP-normalised pixels) to unnormalised embeddings `[B, embed_dim]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let hidden = self.forward_prefix(pixels, 0);
        self.forward_suffix(hidden, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::config::{ClipConfig, VisionConfig};

    #[test]
    fn prefix_then_suffix_equals_forward() {
        let d = Device::flex();
        let c = ClipConfig::tiny();
        let VisionConfig::Vit(v) = &c.vision else {
            unreachable!()
        };
        let vit = VisionTransformer::new(v, c.embed_dim, 1e-5, &d);
        let x = Tensor::<4>::random(
            [2, 3, 64, 64],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &d,
        );
        let full = vit.forward(x.clone());
        assert_eq!(full.dims(), [2, 64]);
        let split = vit.forward_suffix(vit.forward_prefix(x, 1), 1);
        full.into_data()
            .assert_approx_eq::<f32>(&split.into_data(), burn::tensor::Tolerance::absolute(1e-5));
    }
}
