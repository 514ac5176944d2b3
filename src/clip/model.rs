//! The whole CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural
//! Language Supervision"): an image tower, a text tower and the learned temperature.
//!
//! `logits_per_image = exp(logit_scale) * norm(encode_image(x)) @ norm(encode_text(t))^T`
//! and `logits_per_text` is its transpose (open_clip `model.py` `CLIP.get_logits`).

use super::config::{ClipConfig, VisionConfig};
use super::layers::MatmulDtype;
use super::resnet::{ModifiedResNet, ModifiedResNetConfig};
use super::text::TextTransformer;
use super::vit::VisionTransformer;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Int, Tensor};

/// The image tower: a Vision Transformer or OpenAI's ModifiedResNet.
///
/// Saved and loaded with enum variant names skipped, so its parameters sit at `visual.*`
/// exactly like open_clip's keys.
// A tower is built once per model and moved, never copied in bulk: boxing the ViT would only
// add an indirection to every forward.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ImageTower {
    /// ViT-B/32, ViT-B/16, ViT-L/14, ...
    Vit(VisionTransformer),
    /// RN50, RN101, RN50x4, ...
    ResNet(ModifiedResNet),
}

impl ImageTower {
    /// `[B, 3, H, W]` CLIP-normalised pixels to unnormalised `[B, embed_dim]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Vit(v) => v.forward(pixels),
            Self::ResNet(r) => r.forward(pixels),
        }
    }

    /// The ViT, when this tower is one (for block-wise freezing).
    pub fn as_vit(&self) -> Option<&VisionTransformer> {
        match self {
            Self::Vit(v) => Some(v),
            Self::ResNet(_) => None,
        }
    }
}

/// CLIP: image tower, text tower, temperature.
#[derive(Module, Debug)]
pub struct Clip {
    /// Image tower (`visual.*`).
    pub visual: ImageTower,
    /// Text tower (open_clip's `token_embedding`, `positional_embedding`, `transformer`,
    /// `ln_final`, `text_projection`, here under `text.*` as in open_clip's `CustomTextCLIP`).
    pub text: TextTransformer,
    /// Log of the inverse softmax temperature, shape `[1]` (a scalar in PyTorch);
    /// initialised to `ln(1 / 0.07)` as in the paper.
    pub logit_scale: Param<Tensor<1>>,
}

/// L2-normalises rows: `x / max(||x||, 1e-12)` (PyTorch `F.normalize`).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

impl Clip {
    /// A randomly initialised CLIP (open_clip's initialisation; see each tower's `new`).
    ///
    /// Parameters are initialised lazily: a model about to be overwritten by an import never
    /// draws its random values.
    pub fn new(config: &ClipConfig, device: &Device) -> Self {
        let eps = config.layer_norm_eps;
        let visual = match &config.vision {
            VisionConfig::Vit(v) => {
                ImageTower::Vit(VisionTransformer::new(v, config.embed_dim, eps, device))
            }
            VisionConfig::ResNet(r) => ImageTower::ResNet(
                ModifiedResNetConfig::new(
                    r.layers,
                    r.width,
                    config.embed_dim,
                    r.heads,
                    r.image_size,
                )
                .init(device),
            ),
        };
        Self {
            visual,
            text: TextTransformer::new(&config.text, config.embed_dim, eps, device),
            logit_scale: Initializer::Constant {
                value: (1.0f64 / 0.07).ln(),
            }
            .init([1], device),
        }
    }

    /// Sets the precision of both towers' matrix multiplies (see [`MatmulDtype`]). A ResNet
    /// image tower keeps computing in f32 (bf16 is wired through the transformer layers only);
    /// see [`Clip::matmul_dtype_applies_to_image`].
    pub fn set_matmul_dtype(&mut self, dtype: MatmulDtype) {
        if let ImageTower::Vit(v) = &mut self.visual {
            v.set_matmul_dtype(dtype);
        }
        self.text.set_matmul_dtype(dtype);
    }

    /// Whether [`Clip::set_matmul_dtype`] reaches the image tower (a ViT) or only the text tower.
    pub fn matmul_dtype_applies_to_image(&self) -> bool {
        self.visual.as_vit().is_some()
    }

    /// `[B, 3, H, W]` CLIP-normalised pixels to unnormalised image embeddings `[B, embed_dim]`.
    pub fn encode_image(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.visual.forward(pixels)
    }

    /// Token ids `[B, L]` (L = the longest text's length; anything after a text's end is
    /// ignored) and each text's length (start and end tokens included) to unnormalised text
    /// embeddings `[B, embed_dim]`, pooled at position `lengths[i] - 1`.
    ///
    /// # Panics
    /// If `lengths` does not hold one value in `1..=L` per row, or `L` exceeds the context.
    pub fn encode_text(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<2> {
        self.text.forward(ids, lengths)
    }

    /// Cosine similarities scaled by `exp(logit_scale)`: `(logits_per_image [B_img, B_txt],
    /// logits_per_text [B_txt, B_img])`.
    pub fn forward(
        &self,
        pixels: Tensor<4>,
        ids: Tensor<2, Int>,
        lengths: &[usize],
    ) -> (Tensor<2>, Tensor<2>) {
        let img = l2_normalize(self.encode_image(pixels));
        let txt = l2_normalize(self.encode_text(ids, lengths));
        let scale = self.logit_scale.val().exp().unsqueeze::<2>();
        let per_image = img.matmul(txt.transpose()) * scale;
        let per_text = per_image.clone().transpose();
        (per_image, per_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    #[test]
    fn tiny_clip_shapes_and_logit_symmetry() {
        let d = Device::flex();
        let clip = Clip::new(&ClipConfig::tiny(), &d);
        let px = Tensor::<4>::random([3, 3, 64, 64], Distribution::Normal(0.0, 1.0), &d);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![49406i64, 320, 49407, 49406, 49407, 0], [2, 3]),
            &d,
        );
        let (pi, pt) = clip.forward(px, ids, &[3, 2]);
        assert_eq!(pi.dims(), [3, 2]);
        assert_eq!(pt.dims(), [2, 3]);
        pi.clone()
            .transpose()
            .into_data()
            .assert_approx_eq::<f32>(&pt.into_data(), Tolerance::absolute(1e-6));
        // Cosines are within [-1, 1], so logits are bounded by exp(ln(1/0.07)) = 14.2857.
        let max = pi.abs().max().into_scalar::<f32>();
        assert!(max <= 1.0 / 0.07 + 1e-3, "{max}");
    }

    #[test]
    fn l2_normalize_by_hand() {
        let d = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::from([[3.0f32, 4.0], [0.0, 0.0]]), &d);
        l2_normalize(x).into_data().assert_approx_eq::<f32>(
            &TensorData::from([[0.6f32, 0.8], [0.0, 0.0]]),
            Tolerance::absolute(1e-6),
        );
    }
}
