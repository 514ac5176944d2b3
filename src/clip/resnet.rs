//! CLIP's ModifiedResNet image tower (the RN50 / RN101 / RN50x4 ... family); its weights are
//! imported by [`super::import`] like every other tower's.
//!
//! Mirrors `ModifiedResNet` in OpenAI CLIP `clip/model.py` and open_clip
//! `src/open_clip/modified_resnet.py` (Radford et al. 2021, "Learning Transferable Visual Models
//! From Natural Language Supervision", section 2.4). It differs from torchvision's ResNet in three
//! ways:
//!
//! - a three-convolution stem (3x3 stride 2, 3x3, 3x3, each BatchNorm + ReLU) followed by a 2x2
//!   average pool instead of one 7x7 convolution and a max pool;
//! - anti-aliased downsampling: a block with stride s > 1 keeps every convolution at stride 1 and
//!   average-pools by s after its 3x3 convolution, and its shortcut is AvgPool(s) -> 1x1 conv -> BN;
//! - the global average pool is replaced by [`AttentionPool2d`]: one multi-head attention step
//!   whose query is the mean of the final feature map.
//!
//! Field names follow the open_clip / OpenAI state-dict keys (`conv1`, `bn1`, `layer1.0.conv2`,
//! `attnpool.q_proj`, ...), so import renames only the shortcut (see `super::import`):
//! PyTorch names the shortcut `downsample.0` (conv) and `downsample.1` (BatchNorm) because its
//! `AvgPool2d` sits at index `-1` of an `OrderedDict` `nn.Sequential`; burn field names cannot be
//! numbers, so here they are `downsample.conv` and `downsample.bn`.
//!
//! BatchNorm runs on its running statistics whenever the device is not an autodiff device, or
//! after [`ModifiedResNet::freeze_batch_norm`] (what open_clip's `lock(freeze_bn_stats=True)`
//! does); on an autodiff device with training enabled it uses batch statistics, like PyTorch's
//! `train()` mode.

use burn::config::Config;
use burn::module::{Module, ModuleMapper, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::AvgPoolOptions;
use burn::tensor::{Device, Tensor};

/// Channel multiplier of a [`Bottleneck`]: its output has `4 * planes` channels.
pub const BOTTLENECK_EXPANSION: usize = 4;

/// Shape of a ModifiedResNet image tower.
///
/// Field meanings follow open_clip's `ModifiedResNet(layers, output_dim, heads, image_size,
/// width)`; open_clip derives `heads = width * 32 / head_width` with `head_width = 64`
/// (`src/open_clip/model.py`, `_build_vision_tower`) and `output_dim = embed_dim`.
#[derive(Config, Debug)]
pub struct ModifiedResNetConfig {
    /// Number of [`Bottleneck`] blocks in each of the four stages.
    pub layers: [usize; 4],
    /// Channels after the stem; stage i has `width * 2^i` planes and `4 * width * 2^i` outputs,
    /// so the final feature map has `32 * width` channels.
    pub width: usize,
    /// Size of the output embedding (CLIP's joint `embed_dim`).
    pub output_dim: usize,
    /// Attention heads in [`AttentionPool2d`]; must divide `32 * width`.
    pub heads: usize,
    /// Side of the square input image in pixels; the attention pool sees an
    /// `(image_size / 32)^2` grid, so it must be a multiple of 32.
    pub image_size: usize,
}

impl ModifiedResNetConfig {
    /// CLIP RN50: `layers [3, 4, 6, 3]`, `width 64`, `output_dim 1024`, `heads 32`, 224 px.
    ///
    /// Values from open_clip `src/open_clip/model_configs/RN50.json` (`embed_dim 1024`,
    /// `vision_cfg {image_size 224, layers [3,4,6,3], width 64}`; heads = 64 * 32 / 64) and
    /// OpenAI `clip/model.py` `build_model` (`vision_heads = vision_width * 32 // 64`).
    pub fn rn50() -> Self {
        Self::new([3, 4, 6, 3], 64, 1024, 32, 224)
    }

    /// Channels of the final feature map that [`AttentionPool2d`] attends over (`32 * width`).
    pub fn embed_dim(&self) -> usize {
        self.width * 32
    }

    /// Builds a randomly initialised tower on `device`, initialised like open_clip's
    /// `ModifiedResNet.init_parameters` (attention projections ~ N(0, embed_dim^-1/2), the last
    /// BatchNorm of each block with gamma = 0 so each residual block starts as the identity).
    ///
    /// # Panics
    ///
    /// If `width` is odd or zero, `image_size` is not a positive multiple of 32, or `heads`
    /// does not divide `32 * width`.
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; the workspace says 1.85
    pub fn init(&self, device: &Device) -> ModifiedResNet {
        assert!(
            self.width >= 2 && self.width % 2 == 0,
            "ModifiedResNet width must be even and positive, got {}",
            self.width
        );
        assert!(
            self.image_size >= 32 && self.image_size % 32 == 0,
            "ModifiedResNet image_size must be a positive multiple of 32, got {}",
            self.image_size
        );
        let embed_dim = self.embed_dim();
        assert!(
            self.heads > 0 && embed_dim % self.heads == 0,
            "ModifiedResNet heads ({}) must divide 32 * width ({embed_dim})",
            self.heads
        );
        let half = self.width / 2;
        let mut inplanes = self.width;
        let mut stage = |planes: usize, blocks: usize, stride: usize| -> Vec<Bottleneck> {
            let mut out = Vec::with_capacity(blocks);
            for i in 0..blocks {
                let s = if i == 0 { stride } else { 1 };
                out.push(Bottleneck::new(inplanes, planes, s, device));
                inplanes = planes * BOTTLENECK_EXPANSION;
            }
            out
        };
        let layer1 = stage(self.width, self.layers[0], 1);
        let layer2 = stage(self.width * 2, self.layers[1], 2);
        let layer3 = stage(self.width * 4, self.layers[2], 2);
        let layer4 = stage(self.width * 8, self.layers[3], 2);
        ModifiedResNet {
            conv1: conv(3, half, 3, 2, device),
            bn1: BatchNormConfig::new(half).init(device),
            conv2: conv(half, half, 3, 1, device),
            bn2: BatchNormConfig::new(half).init(device),
            conv3: conv(half, self.width, 3, 1, device),
            bn3: BatchNormConfig::new(self.width).init(device),
            layer1,
            layer2,
            layer3,
            layer4,
            attnpool: AttentionPool2d::new(
                self.image_size / 32,
                embed_dim,
                self.heads,
                self.output_dim,
                device,
            ),
        }
    }
}

/// A bias-free convolution with "same" padding (`kernel / 2`), as every ModifiedResNet conv is.
fn conv(cin: usize, cout: usize, kernel: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            kernel / 2,
            kernel / 2,
            kernel / 2,
            kernel / 2,
        ))
        .with_bias(false)
        .init(device)
}

/// `AvgPool2d(k)` of PyTorch: k x k windows, stride k, no padding.
fn avg_pool(x: Tensor<4>, k: usize) -> Tensor<4> {
    avg_pool2d(x, AvgPoolOptions::new([k, k]).with_stride([k, k]))
}

/// CLIP's ModifiedResNet image tower: `[B, 3, H, W]` pixels to `[B, output_dim]` embeddings
/// (unnormalised, like open_clip `encode_image(normalize=False)`).
#[derive(Module, Debug)]
pub struct ModifiedResNet {
    /// Stem conv 3x3 stride 2, 3 -> width/2.
    pub conv1: Conv2d,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm,
    /// Stem conv 3x3, width/2 -> width/2.
    pub conv2: Conv2d,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm,
    /// Stem conv 3x3, width/2 -> width.
    pub conv3: Conv2d,
    /// BatchNorm after `conv3`.
    pub bn3: BatchNorm,
    /// Stage 1 (stride 1, `4 * width` outputs).
    pub layer1: Vec<Bottleneck>,
    /// Stage 2 (stride 2, `8 * width` outputs).
    pub layer2: Vec<Bottleneck>,
    /// Stage 3 (stride 2, `16 * width` outputs).
    pub layer3: Vec<Bottleneck>,
    /// Stage 4 (stride 2, `32 * width` outputs).
    pub layer4: Vec<Bottleneck>,
    /// Attention pooling head to `output_dim`.
    pub attnpool: AttentionPool2d,
}

impl ModifiedResNet {
    /// Embeds a batch of preprocessed images.
    ///
    /// `stem -> layer1..4 -> attnpool`, as `ModifiedResNet.forward` in open_clip.
    ///
    /// # Panics
    ///
    /// If `images` is not `[B, 3, image_size, image_size]` for the configured `image_size`
    /// (the positional embedding fixes the grid size).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.attnpool.forward(self.forward_features(images))
    }

    /// The final feature map `[B, 32 * width, H / 32, W / 32]`, before attention pooling.
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<4> {
        let x = relu(self.bn1.forward(self.conv1.forward(images)));
        let x = relu(self.bn2.forward(self.conv2.forward(x)));
        let x = relu(self.bn3.forward(self.conv3.forward(x)));
        let mut x = avg_pool(x, 2);
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward(x);
        }
        x
    }

    /// Output embedding size.
    pub fn output_dim(&self) -> usize {
        self.attnpool.c_proj.weight.shape().dims::<2>()[1]
    }

    /// Side of the square input image this tower was built for.
    pub fn image_size(&self) -> usize {
        let tokens = self.attnpool.positional_embedding.shape().dims::<2>()[0];
        // tokens = (image_size / 32)^2 + 1
        ((tokens - 1) as f64).sqrt().round() as usize * 32
    }

    /// Makes every BatchNorm use (and keep) its running statistics, even on an autodiff device
    /// while the rest of the model trains: open_clip's `freeze_batch_norm_2d` /
    /// `lock(freeze_bn_stats=True)`. Fine-tuning with CLIP-sized batches of one domain would
    /// otherwise overwrite the pre-training statistics. The affine gamma/beta stay trainable.
    pub fn freeze_batch_norm(self) -> Self {
        self.map(&mut BatchNormFreezer)
    }
}

/// Turns off the `training` flag of every module it visits; the only flags in a ModifiedResNet
/// are BatchNorm's.
struct BatchNormFreezer;

impl ModuleMapper for BatchNormFreezer {
    fn map_flag(&mut self, flag: Param<burn::module::Flag>) -> Param<burn::module::Flag> {
        flag.with_value(false)
    }
}

/// The residual block of ModifiedResNet (open_clip `modified_resnet.py` `Bottleneck`,
/// expansion 4): `relu(bn3(conv3(pool_s(relu(bn2(conv2(relu(bn1(conv1 x))))))) + shortcut(x))`,
/// where `pool_s` is `AvgPool2d(s)` for stride s > 1 and the identity otherwise.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1, inplanes -> planes.
    pub conv1: Conv2d,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm,
    /// 3x3, planes -> planes (stride 1 even in a downsampling block).
    pub conv2: Conv2d,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm,
    /// 1x1, planes -> 4 * planes.
    pub conv3: Conv2d,
    /// BatchNorm after `conv3`.
    pub bn3: BatchNorm,
    /// Projection shortcut, present when the stride is > 1 or the channel count changes.
    pub downsample: Option<Downsample>,
    /// Anti-aliasing average-pool size (1: no pooling).
    pub stride: usize,
}

impl Bottleneck {
    fn new(inplanes: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let out = planes * BOTTLENECK_EXPANSION;
        let mut bn3 = BatchNormConfig::new(out).init(device);
        bn3.gamma = Initializer::Zeros.init([out], device);
        let downsample = (stride > 1 || inplanes != out).then(|| Downsample {
            conv: conv(inplanes, out, 1, 1, device),
            bn: BatchNormConfig::new(out).init(device),
            stride,
        });
        Self {
            conv1: conv(inplanes, planes, 1, 1, device),
            bn1: BatchNormConfig::new(planes).init(device),
            conv2: conv(planes, planes, 3, 1, device),
            bn2: BatchNormConfig::new(planes).init(device),
            conv3: conv(planes, out, 1, 1, device),
            bn3,
            downsample,
            stride,
        }
    }

    /// Applies the block to `[B, inplanes, H, W]`, giving `[B, 4 * planes, H / s, W / s]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let mut out = relu(self.bn2.forward(self.conv2.forward(out)));
        if self.stride > 1 {
            out = avg_pool(out, self.stride);
        }
        let out = self.bn3.forward(self.conv3.forward(out));
        let identity = match &self.downsample {
            Some(d) => d.forward(x),
            None => x,
        };
        relu(out + identity)
    }
}

/// The projection shortcut of a [`Bottleneck`]: `bn(conv1x1(AvgPool2d(stride)(x)))`.
/// open_clip keys: `downsample.0` (the conv) and `downsample.1` (the BatchNorm).
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 conv, stride 1 (open_clip `downsample.0`).
    pub conv: Conv2d,
    /// BatchNorm (open_clip `downsample.1`).
    pub bn: BatchNorm,
    /// Average-pool size in front of the conv (1: none).
    pub stride: usize,
}

impl Downsample {
    /// Applies the shortcut.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.stride > 1 {
            avg_pool(x, self.stride)
        } else {
            x
        };
        self.bn.forward(self.conv.forward(x))
    }
}

/// CLIP's attention pooling (open_clip `modified_resnet.py` `AttentionPool2d`).
///
/// The `[B, C, h, w]` map becomes `L = hw + 1` tokens: the spatial mean, then the `hw` pixels in
/// row-major order, plus a learned positional embedding `[L, C]`. One multi-head attention step
/// (separate `q/k/v_proj`, scaled dot product, `c_proj`) runs over them and the output at the
/// mean token is the embedding. Only that token is queried here, which gives the same result as
/// open_clip's full `multi_head_attention_forward(...)[0]` at `1/L` of its query cost.
#[derive(Module, Debug)]
pub struct AttentionPool2d {
    /// `[hw + 1, C]`, added to the tokens.
    pub positional_embedding: Param<Tensor<2>>,
    /// Key projection C -> C.
    pub k_proj: Linear,
    /// Query projection C -> C.
    pub q_proj: Linear,
    /// Value projection C -> C.
    pub v_proj: Linear,
    /// Output projection C -> output_dim.
    pub c_proj: Linear,
    /// Number of attention heads.
    pub num_heads: usize,
}

impl AttentionPool2d {
    fn new(
        spacial_dim: usize,
        embed_dim: usize,
        heads: usize,
        output_dim: usize,
        device: &Device,
    ) -> Self {
        let std = (embed_dim as f64).powf(-0.5);
        let normal = Initializer::Normal { mean: 0.0, std };
        let linear = |d_out: usize| {
            LinearConfig::new(embed_dim, d_out)
                .with_initializer(normal.clone())
                .init(device)
        };
        Self {
            positional_embedding: normal.init([spacial_dim * spacial_dim + 1, embed_dim], device),
            k_proj: linear(embed_dim),
            q_proj: linear(embed_dim),
            v_proj: linear(embed_dim),
            c_proj: linear(output_dim),
            num_heads: heads,
        }
    }

    /// Pools `[B, C, h, w]` to `[B, output_dim]`:
    /// `c_proj(concat_heads(softmax(q_0 K^T / sqrt(C / heads)) V))` with `q_0` the query of the
    /// mean token.
    ///
    /// # Panics
    ///
    /// If `h * w + 1` differs from the positional embedding's length or C from its width.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, c, h, w] = x.dims();
        let [len, width] = self.positional_embedding.shape().dims::<2>();
        assert!(
            h * w + 1 == len && c == width,
            "AttentionPool2d expects a [B, {width}, g, g] map with g*g = {} (input image side \
             32 * g), got [B, {c}, {h}, {w}]",
            len - 1
        );
        let tokens = x.reshape([b, c, h * w]).swap_dims(1, 2); // [B, hw, C]
        let mean = tokens.clone().mean_dim(1); // [B, 1, C]
        let tokens = Tensor::cat(vec![mean, tokens], 1)
            + self.positional_embedding.val().unsqueeze_dim::<3>(0); // [B, L, C]

        let heads = self.num_heads;
        let dh = c / heads;
        let split = |t: Tensor<3>, l: usize| t.reshape([b, l, heads, dh]).swap_dims(1, 2); // [B, H, l, dh]
        let q = split(self.q_proj.forward(tokens.clone().narrow(1, 0, 1)), 1);
        let k = split(self.k_proj.forward(tokens.clone()), len);
        let v = split(self.v_proj.forward(tokens), len);
        let scores = q.matmul(k.swap_dims(2, 3)) * (dh as f64).powf(-0.5); // [B, H, 1, L]
        let attended = softmax(scores, 3).matmul(v); // [B, H, 1, dh]
        let pooled = attended.reshape([b, c]); // heads concatenated in order, as PyTorch
        self.c_proj.forward(pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn linear(weight_in_out: Vec<f32>, bias: Vec<f32>, d: usize, device: &Device) -> Linear {
        let mut l = LinearConfig::new(d, d).init(device);
        l.weight = Param::from_data(TensorData::new(weight_in_out, [d, d]), device);
        l.bias = Some(Param::from_data(TensorData::new(bias, [d]), device));
        l
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// A 1x2 grid with zero q/k projections attends uniformly to the 3 tokens
    /// (mean, a, b), so with identity v/c projections the output is mean(mean, a, b) = mean(a, b)
    /// plus the biases: a = (1, 0), b = (3, 2) -> (2, 1) + (0.5, -0.5).
    #[test]
    fn attention_pool_with_uniform_attention_averages_the_tokens() {
        let device = Device::flex();
        let zero = vec![0.0; 4];
        let eye = vec![1.0, 0.0, 0.0, 1.0];
        let pool = AttentionPool2d {
            positional_embedding: Param::from_data(
                TensorData::new(vec![0.0f32; 6], [3, 2]),
                &device,
            ),
            k_proj: linear(zero.clone(), vec![0.0; 2], 2, &device),
            q_proj: linear(zero, vec![0.0; 2], 2, &device),
            v_proj: linear(eye.clone(), vec![0.0; 2], 2, &device),
            c_proj: linear(eye, vec![0.5, -0.5], 2, &device),
            num_heads: 1,
        };
        // [B=1, C=2, h=1, w=2]: channel 0 = (1, 3), channel 1 = (0, 2)
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 3.0, 0.0, 2.0], [1, 2, 1, 2]),
            &device,
        );
        assert_eq!(values(pool.forward(x)), vec![2.5, 0.5]);
    }

    /// With 2 heads of width 1, q = k = x and a huge positional offset on the mean token only for
    /// channel 0, head 0 attends (softmax of 1e3-scale logits) almost only to the mean token and
    /// head 1 sees equal logits; checks that heads split channels in order.
    #[test]
    fn attention_pool_splits_heads_by_channel_blocks() {
        let device = Device::flex();
        let eye = vec![1.0, 0.0, 0.0, 1.0];
        let pool = AttentionPool2d {
            // token 0 (mean) gets +30 on channel 0
            positional_embedding: Param::from_data(
                TensorData::new(vec![30.0f32, 0.0, 0.0, 0.0], [2, 2]),
                &device,
            ),
            k_proj: linear(eye.clone(), vec![0.0; 2], 2, &device),
            q_proj: linear(eye.clone(), vec![0.0; 2], 2, &device),
            v_proj: linear(eye.clone(), vec![0.0; 2], 2, &device),
            c_proj: linear(eye, vec![0.0; 2], 2, &device),
            num_heads: 2,
        };
        // 1x1 grid, pixel (1, 4): tokens (31, 4) and (1, 4).
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 4.0], [1, 2, 1, 1]), &device);
        let out = values(pool.forward(x));
        // head 0: logits 31*31 vs 31*1 -> all weight on 31; head 1: logits 16, 16 -> (4 + 4) / 2.
        assert!((out[0] - 31.0).abs() < 1e-4, "{out:?}");
        assert!((out[1] - 4.0).abs() < 1e-5, "{out:?}");
    }

    #[test]
    fn tiny_tower_maps_images_to_output_dim() {
        let device = Device::flex();
        let cfg = ModifiedResNetConfig::new([1, 2, 1, 1], 4, 16, 2, 64);
        let model = cfg.init(&device);
        assert_eq!(model.output_dim(), 16);
        assert_eq!(model.image_size(), 64);
        assert!(
            model.layer1[0].downsample.is_some(),
            "channels change 4 -> 16"
        );
        assert!(model.layer2[1].downsample.is_none());
        assert_eq!(model.layer3[0].stride, 2);
        let images =
            Tensor::<4>::random([2, 3, 64, 64], burn::tensor::Distribution::Default, &device);
        assert_eq!(
            model.forward_features(images.clone()).dims(),
            [2, 128, 2, 2]
        );
        assert_eq!(model.forward(images).dims(), [2, 16]);
    }

    /// open_clip 3.3.0, `CLIP(embed_dim=1024, vision_cfg=dict(layers=[3,4,6,3], width=64,
    /// image_size=224), ...)`: `sum(p.numel() for p in model.visual.parameters())` = 38,316,896
    /// and `sum(b.numel() for b in model.visual.buffers())` = 53,303, of which 55 are the
    /// `num_batches_tracked` counters of its 55 BatchNorms. burn's `num_params` also counts the
    /// running means and variances (53,248), so the tower must hold 38,316,896 + 53,248.
    #[test]
    fn rn50_preset_has_open_clips_parameter_count() {
        let model = ModifiedResNetConfig::rn50().init(&Device::flex());
        assert_eq!(model.num_params(), 38_316_896 + 53_248);
        assert_eq!(model.output_dim(), 1024);
        assert_eq!(model.image_size(), 224);
        assert_eq!(model.attnpool.num_heads, 32);
        let depths = [
            model.layer1.len(),
            model.layer2.len(),
            model.layer3.len(),
            model.layer4.len(),
        ];
        assert_eq!(depths, [3, 4, 6, 3]);
    }

    /// After `freeze_batch_norm`, BatchNorm on an autodiff device normalises with the running
    /// statistics, so the output equals the inference (`valid()`) output; unfrozen, it uses
    /// batch statistics and differs.
    #[test]
    fn frozen_batch_norm_uses_running_statistics_on_an_autodiff_device() {
        let ad = Device::flex().autodiff();
        let cfg = ModifiedResNetConfig::new([1, 1, 1, 1], 4, 8, 1, 32);
        let mut model = cfg.init(&ad);
        model.bn1.running_mean =
            burn::module::RunningState::new(Tensor::from_data([0.3f32, -0.2], &ad));
        let images = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &ad);
        assert!(images.device().is_autodiff());
        let inference = values(model.valid().forward(images.clone().inner()));
        let frozen_out = values(model.clone().freeze_batch_norm().forward(images.clone()));
        let trained_out = values(model.forward(images));
        let max = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        assert!(max(&frozen_out, &inference) < 1e-5);
        assert!(
            max(&trained_out, &inference) > 1e-3,
            "batch statistics should differ"
        );
    }
}
