//! Twin towers: a CLIP's image and text towers, each followed by a projection head into a joint
//! space, with a freeze policy per tower.
//!
//! The towers may be fed raw inputs (pixels, token ids), the cached output of a locked tower
//! ([`ImageInput::Features`]), or the cached hidden states of a frozen prefix
//! ([`ImageInput::Hidden`]), so the same module serves full fine-tuning, last-N-blocks
//! fine-tuning and heads-only training from the feature cache.

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use super::heads::{l2_normalize, HeadConfig, ProjectionHead};
use crate::clip::layers::Transformer;
use crate::clip::lora::{LoraSpec, LoraSpecError};
use crate::clip::model::{Clip, ImageTower};

/// Which parameters of one tower train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "blocks")]
pub enum FreezePolicy {
    /// The tower is frozen; only its head trains.
    Locked,
    /// The last N residual blocks, the final norm and the tower's projection train.
    LastBlocks(usize),
    /// Every parameter of the tower trains.
    Full,
    /// The tower is frozen and LoRA adapters on its transformer blocks' linears train
    /// ([`crate::clip::lora`]); a ViT image tower or the text tower.
    Lora(LoraSpec),
}

/// A freeze policy that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreezePolicyError {
    /// Not one of the policies.
    #[error(transparent)]
    Unknown(#[from] crate::UnknownName),
    /// `lora:` with a bad setting.
    #[error(transparent)]
    Lora(#[from] LoraSpecError),
}

impl FromStr for FreezePolicy {
    type Err = FreezePolicyError;
    /// `locked` | `last:N` (or `lastN`, `N`) | `full` | `lora[:r:R,alpha:A,targets:attn,mlp]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        if t == "lora" {
            return Ok(Self::Lora(LoraSpec::default()));
        }
        if let Some(spec) = t.strip_prefix("lora:") {
            return Ok(Self::Lora(spec.parse()?));
        }
        match t.as_str() {
            "locked" | "lock" | "frozen" | "heads" | "heads-only" => Ok(Self::Locked),
            "full" | "all" | "unlocked" => Ok(Self::Full),
            _ => {
                let n = t
                    .strip_prefix("last:")
                    .or_else(|| t.strip_prefix("last-"))
                    .or_else(|| t.strip_prefix("last"))
                    .unwrap_or(&t);
                match n.parse::<usize>() {
                    Ok(0) => Ok(Self::Locked),
                    Ok(n) => Ok(Self::LastBlocks(n)),
                    Err(_) => Err(crate::UnknownName::new(
                        "freeze policy",
                        s,
                        "locked, last:N, full or lora:r:8,alpha:16,targets:attn,mlp",
                    )
                    .into()),
                }
            }
        }
    }
}

impl fmt::Display for FreezePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Locked => f.write_str("locked"),
            Self::LastBlocks(n) => write!(f, "last:{n}"),
            Self::Full => f.write_str("full"),
            Self::Lora(spec) => write!(f, "lora:{spec}"),
        }
    }
}

impl FreezePolicy {
    /// Number of leading blocks that stay frozen in a tower of `blocks` blocks (all of them
    /// for `Locked`, where the tower's pooling and projection are frozen too).
    pub fn frozen_blocks(&self, blocks: usize) -> usize {
        match self {
            Self::Locked => blocks,
            Self::LastBlocks(n) => blocks.saturating_sub(*n),
            Self::Full | Self::Lora(_) => 0,
        }
    }
}

/// What the image side is fed.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// CLIP-normalised pixels `[B, 3, S, S]`.
    Pixels(Tensor<4>),
    /// Hidden states after the first `from_block` blocks (a cached frozen prefix).
    Hidden {
        /// `[B, tokens, width]`.
        hidden: Tensor<3>,
        /// The first block still to run.
        from_block: usize,
    },
    /// The tower's output `[B, embed_dim]` (a cached locked tower).
    Features(Tensor<2>),
}

/// What the text side is fed.
#[derive(Debug, Clone)]
pub enum TextInput {
    /// Token ids `[B, L]` and each text's length.
    Tokens {
        /// `[B, L]` ids.
        ids: Tensor<2, Int>,
        /// Tokens per text, start and end included.
        lengths: Vec<usize>,
    },
    /// Hidden states after the first `from_block` causal blocks.
    Hidden {
        /// `[B, L, width]`.
        hidden: Tensor<3>,
        /// The first block still to run.
        from_block: usize,
        /// Tokens per text.
        lengths: Vec<usize>,
    },
    /// The tower's output `[B, embed_dim]`.
    Features(Tensor<2>),
}

/// Errors of the freeze policy.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// Unlocking the last N blocks of a tower that has no blocks (the ResNet image tower).
    #[error("--freeze-image last:{0} needs a ViT image tower; this model's image tower is a ResNet (use locked or full)")]
    NoBlocks(usize),
    /// LoRA on a tower without transformer blocks (the ResNet image tower).
    #[error("--lora / --freeze-image lora:{0}: LoRA adapts transformer blocks, and this model's image tower is a ResNet (give --freeze-image locked or full)")]
    LoraOnResNet(LoraSpec),
    /// More blocks asked for than the tower has.
    #[error("{tower} tower has {have} blocks; last:{asked} asks for more (use full)")]
    TooManyBlocks {
        /// Which tower.
        tower: &'static str,
        /// Blocks in the tower.
        have: usize,
        /// Blocks asked for.
        asked: usize,
    },
}

/// CLIP towers plus heads. Both embeddings are L2-normalised.
#[derive(Module, Debug)]
pub struct TwinTowers {
    /// The CLIP (towers and logit scale).
    pub clip: Clip,
    /// Head after the image tower.
    pub image_head: ProjectionHead,
    /// Head after the text tower.
    pub text_head: ProjectionHead,
    /// The sigmoid loss's learnable logit bias `b` (SigLIP; `None` for every other loss). Its
    /// log scale `t'` is the CLIP's `logit_scale`.
    pub logit_bias: Option<Param<Tensor<1>>>,
}

impl TwinTowers {
    /// `clip` with a fresh head of shape `head` after each tower.
    pub fn new(clip: Clip, head: HeadConfig, device: &Device) -> Self {
        TwinTowers {
            clip,
            image_head: head.init(device),
            text_head: head.init(device),
            logit_bias: None,
        }
    }

    /// Joint image embeddings `[B, d]`, L2-normalised.
    pub fn embed_images(&self, input: ImageInput) -> Tensor<2> {
        let feats = match input {
            ImageInput::Pixels(p) => self.clip.encode_image(p),
            ImageInput::Hidden { hidden, from_block } => match &self.clip.visual {
                ImageTower::Vit(v) => v.forward_suffix(hidden, from_block),
                ImageTower::ResNet(_) => {
                    unreachable!("hidden states are only cached for ViT towers")
                }
            },
            ImageInput::Features(f) => f,
        };
        l2_normalize(self.image_head.forward(feats))
    }

    /// Joint text embeddings `[B, d]`, L2-normalised.
    pub fn embed_texts(&self, input: TextInput) -> Tensor<2> {
        let feats = match input {
            TextInput::Tokens { ids, lengths } => self.clip.encode_text(ids, &lengths),
            TextInput::Hidden {
                hidden,
                from_block,
                lengths,
            } => self.clip.text.forward_suffix(hidden, from_block, &lengths),
            TextInput::Features(f) => f,
        };
        l2_normalize(self.text_head.forward(feats))
    }

    /// Size of the joint space (the image head's output).
    pub fn image_head_dim(&self) -> usize {
        match (&self.image_head.proj, &self.image_head.adapter) {
            (Some(p), _) => p.weight.shape().dims::<2>()[1],
            (None, Some(a)) => a.up.weight.shape().dims::<2>()[1],
            (None, None) => match &self.clip.visual {
                ImageTower::Vit(v) => v.proj.shape().dims::<2>()[1],
                ImageTower::ResNet(_) => self.clip.text.text_projection.shape().dims::<2>()[1],
            },
        }
    }

    /// The image tower's block count (0 for a ResNet).
    pub fn image_blocks(&self) -> usize {
        self.clip.visual.as_vit().map_or(0, |v| v.num_blocks())
    }

    /// The text tower's block count.
    pub fn text_blocks(&self) -> usize {
        self.clip.text.num_blocks()
    }

    /// Applies the freeze policies: frozen parameters stop requiring gradients. The heads
    /// always train; the logit scale trains only if `train_logit_scale`.
    pub fn with_freeze(
        mut self,
        image: FreezePolicy,
        text: FreezePolicy,
        train_logit_scale: bool,
    ) -> Result<Self, TwinError> {
        self.clip.visual = match (self.clip.visual, image) {
            (v, FreezePolicy::Full) => v.set_require_grad(true),
            (v, FreezePolicy::Locked) => v.no_grad(),
            (ImageTower::ResNet(_), FreezePolicy::LastBlocks(n)) => {
                return Err(TwinError::NoBlocks(n))
            }
            (ImageTower::ResNet(_), FreezePolicy::Lora(spec)) => {
                return Err(TwinError::LoraOnResNet(spec))
            }
            (ImageTower::Vit(v), FreezePolicy::Lora(_)) => {
                let mut v = v.no_grad();
                v.transformer = v.transformer.train_lora_only();
                ImageTower::Vit(v)
            }
            (ImageTower::Vit(v), FreezePolicy::LastBlocks(n)) => {
                let mut v = v.no_grad();
                v.transformer = unlock_last_blocks(v.transformer, n, "image")?;
                v.ln_post = v.ln_post.set_require_grad(true);
                v.proj = v.proj.set_require_grad(true);
                ImageTower::Vit(v)
            }
        };
        let t = self.clip.text;
        self.clip.text = match text {
            FreezePolicy::Full => t.set_require_grad(true),
            FreezePolicy::Locked => t.no_grad(),
            FreezePolicy::LastBlocks(n) => {
                let mut t = t.no_grad();
                t.transformer = unlock_last_blocks(t.transformer, n, "text")?;
                t.ln_final = t.ln_final.set_require_grad(true);
                t.text_projection = t.text_projection.set_require_grad(true);
                t
            }
            FreezePolicy::Lora(_) => {
                let mut t = t.no_grad();
                t.transformer = t.transformer.train_lora_only();
                t
            }
        };
        self.clip.logit_scale = self.clip.logit_scale.set_require_grad(train_logit_scale);
        self.logit_bias = self
            .logit_bias
            .map(|b| b.set_require_grad(train_logit_scale));
        self.image_head = self.image_head.set_require_grad(true);
        self.text_head = self.text_head.set_require_grad(true);
        Ok(self)
    }

    /// Adds fresh LoRA adapters (`B = 0`: the model is unchanged) to the towers whose policy is
    /// [`FreezePolicy::Lora`]; `seed` draws their `A`. Call before loading a checkpoint that
    /// holds adapters, so the module has their places.
    pub fn with_lora(
        mut self,
        image: FreezePolicy,
        text: FreezePolicy,
        seed: u64,
        device: &Device,
    ) -> Result<Self, TwinError> {
        if let FreezePolicy::Lora(spec) = image {
            match &mut self.clip.visual {
                ImageTower::Vit(v) => v.transformer.attach_lora(&spec, seed ^ 0x1, device),
                ImageTower::ResNet(_) => return Err(TwinError::LoraOnResNet(spec)),
            }
        }
        if let FreezePolicy::Lora(spec) = text {
            let t = &mut self.clip.text.transformer;
            t.attach_lora(&spec, seed ^ 0x2, device);
        }
        Ok(self)
    }

    /// The same model with every LoRA adapter folded into its linear (`W + (alpha/r) A B`):
    /// plain CLIP weights that any command loads.
    pub fn merge_lora(mut self) -> Self {
        if let ImageTower::Vit(v) = &mut self.clip.visual {
            v.transformer = v.transformer.clone().merge_lora();
        }
        self.clip.text.transformer = self.clip.text.transformer.clone().merge_lora();
        self
    }

    /// Whether either tower carries LoRA adapters.
    pub fn has_lora(&self) -> bool {
        self.clip
            .visual
            .as_vit()
            .is_some_and(|v| v.transformer.has_lora())
            || self.clip.text.transformer.has_lora()
    }

    /// The logit scale parameter's current value `exp(s)`-ready tensor `[1]`.
    pub fn logit_scale(&self) -> Tensor<1> {
        self.clip.logit_scale.val()
    }

    /// The learnable logits a loss reads: the log scale and, for the sigmoid loss, the bias.
    pub fn logit_params(&self) -> siam_losses::LogitParams {
        siam_losses::LogitParams {
            scale: Some(self.logit_scale()),
            bias: self.logit_bias.as_ref().map(|b| b.val()),
        }
    }

    /// Starts the sigmoid loss's logits at `t'` (the CLIP's log scale) and `b` (a new
    /// parameter), SigLIP's initialisation.
    pub fn with_sigmoid_logits(mut self, log_scale: f32, bias: f32, device: &Device) -> Self {
        let param =
            |v: f32| Param::from_tensor(Tensor::from_data(TensorData::new(vec![v], [1]), device));
        self.clip.logit_scale = param(log_scale);
        self.logit_bias = Some(param(bias));
        self
    }
}

/// Makes the last `n` residual blocks of a (frozen) transformer trainable again.
fn unlock_last_blocks(
    mut transformer: Transformer,
    n: usize,
    tower: &'static str,
) -> Result<Transformer, TwinError> {
    let have = transformer.resblocks.len();
    if n > have {
        return Err(TwinError::TooManyBlocks {
            tower,
            have,
            asked: n,
        });
    }
    let first = have - n;
    transformer.resblocks = transformer
        .resblocks
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            if i >= first {
                b.set_require_grad(true)
            } else {
                b
            }
        })
        .collect();
    Ok(transformer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::config::ClipConfig;
    use crate::model::heads::HeadConfig;
    use crate::train::optim::split_params;
    use burn::tensor::Device;

    fn twin(device: &Device) -> TwinTowers {
        let cfg = ClipConfig::tiny();
        let head = HeadConfig::linear(cfg.embed_dim, 16);
        TwinTowers::new(Clip::new(&cfg, device), head, device)
    }

    #[test]
    fn parses_policies() {
        assert_eq!(
            "locked".parse::<FreezePolicy>().unwrap(),
            FreezePolicy::Locked
        );
        assert_eq!(
            "last:2".parse::<FreezePolicy>().unwrap(),
            FreezePolicy::LastBlocks(2)
        );
        assert_eq!("full".parse::<FreezePolicy>().unwrap(), FreezePolicy::Full);
        assert!("some".parse::<FreezePolicy>().is_err());
    }

    #[test]
    fn freeze_policies_select_the_right_parameters() {
        let d = Device::flex().autodiff();
        let heads_only = split_params(
            &twin(&d)
                .with_freeze(FreezePolicy::Locked, FreezePolicy::Locked, false)
                .unwrap(),
        );
        // Two linear heads 64 -> 16 with bias.
        assert_eq!(heads_only.trainable_values, 2 * (64 * 16 + 16));
        let last1 = split_params(
            &twin(&d)
                .with_freeze(FreezePolicy::LastBlocks(1), FreezePolicy::Locked, false)
                .unwrap(),
        );
        let full = split_params(
            &twin(&d)
                .with_freeze(FreezePolicy::Full, FreezePolicy::Full, true)
                .unwrap(),
        );
        assert!(heads_only.trainable_values < last1.trainable_values);
        assert!(last1.trainable_values < full.trainable_values);
        assert_eq!(full.frozen_values, 0);
        let err = twin(&d).with_freeze(FreezePolicy::LastBlocks(9), FreezePolicy::Locked, false);
        assert!(err.is_err());
    }
}
