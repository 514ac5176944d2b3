//! The resolved training configuration, saved in every checkpoint and in the model card.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::heads::HeadKind;
use super::optim::AdamWSettings;
use super::twin::FreezePolicy;

/// Numeric type the towers compute in. Norms, losses and mining always stay in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TowerDtype {
    /// 32-bit floats everywhere.
    #[default]
    F32,
    /// bfloat16 tower matmuls (f32 master weights, norms, softmax, heads, losses and mining),
    /// as PyTorch's autocast.
    Bf16,
}

impl TowerDtype {
    /// The towers' matmul precision for this choice.
    pub fn matmul_dtype(self) -> crate::clip::layers::MatmulDtype {
        match self {
            Self::F32 => crate::clip::layers::MatmulDtype::F32,
            Self::Bf16 => crate::clip::layers::MatmulDtype::Bf16,
        }
    }
}

impl std::str::FromStr for TowerDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype {s:?}: expected f32 or bf16")),
        }
    }
}

/// Loss and miner settings (names as `siam_losses` parses them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossSettings {
    /// `contrastive`, `pairwise`, `triplet`, `multi-similarity` or `sigmoid`.
    pub loss: String,
    /// `all`, `hard`, `semihard`, `max-violation`, `distance-weighted`, `multi-similarity`,
    /// `none`; `None` picks the loss's usual miner.
    pub miner: Option<String>,
    /// Triplet margin (cosine).
    pub margin: f64,
    /// Pairwise loss: positives should be more similar than this.
    pub pos_margin: f64,
    /// Pairwise loss: negatives should be less similar than this.
    pub neg_margin: f64,
    /// Contrastive (InfoNCE) initial temperature; the logit scale starts at `ln(1/t)`
    /// unless the checkpoint brings its own.
    pub temperature: Option<f64>,
    /// Multi-similarity `alpha`, `beta`, `base` (Wang et al. 2019: 2, 50, 0.5).
    pub ms_alpha: f64,
    /// Multi-similarity `beta`.
    pub ms_beta: f64,
    /// Multi-similarity `base` (lambda).
    pub ms_base: f64,
    /// Cross-batch memory: references kept per direction (0: none).
    #[serde(default)]
    pub xbm: usize,
    /// Steps before the cross-batch memory is used.
    #[serde(default)]
    pub xbm_start: usize,
}

impl Default for LossSettings {
    fn default() -> Self {
        Self {
            loss: "triplet".into(),
            miner: None,
            margin: 0.2,
            pos_margin: 0.8,
            neg_margin: 0.3,
            temperature: None,
            ms_alpha: 2.0,
            ms_beta: 50.0,
            ms_base: 0.5,
            xbm: 0,
            xbm_start: 0,
        }
    }
}

/// Everything `siam train` needs, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Starting checkpoint (a file, a Hugging Face folder, or a siam folder); `None` trains
    /// from random weights of `arch`.
    pub model: Option<PathBuf>,
    /// Architecture: a preset or an open_clip model-config JSON (needed for bare files, and
    /// for random initialisation; `tiny` by default).
    pub arch: Option<String>,
    /// Dataset path; `None` uses the synthetic demo set.
    pub data: Option<PathBuf>,
    /// Demo set: images per label.
    pub demo_per_class: usize,
    /// Output (model) folder.
    pub out: PathBuf,
    /// Loss and miner.
    pub loss: LossSettings,
    /// Labels per batch (P) for class-balanced batches.
    pub classes_per_batch: usize,
    /// Images per label per batch (K).
    pub per_class: usize,
    /// Batch size for datasets without labels (shuffled batches).
    pub batch_size: usize,
    /// Micro-batches per optimiser step (1 = no accumulation).
    pub accum_steps: usize,
    /// Passes over the training split.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine.
    pub min_lr: f64,
    /// Warm-up steps (linear).
    pub warmup_steps: usize,
    /// AdamW settings.
    pub adamw: AdamWSettings,
    /// Global-norm gradient clipping (`None`: off).
    pub max_grad_norm: Option<f64>,
    /// Head kind.
    pub head: HeadKind,
    /// Joint embedding size (`None`: the CLIP's embedding size).
    pub joint_dim: Option<usize>,
    /// Adapter mixing ratio.
    pub adapter_ratio: f64,
    /// Adapter bottleneck reduction.
    pub adapter_reduction: usize,
    /// Image tower policy.
    pub freeze_image: FreezePolicy,
    /// Text tower policy.
    pub freeze_text: FreezePolicy,
    /// Random-crop / flip augmentation of training images.
    pub augment: bool,
    /// Seed of every random choice.
    pub seed: u64,
    /// Validation metric that selects the best checkpoint (`mean_r1`, `i2t_r1`, `t2i_r5`, ...).
    pub select_metric: String,
    /// Stop after this many epochs without improvement (`None`: never).
    pub patience: Option<usize>,
    /// Also checkpoint every N optimiser steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Use the on-disk feature cache for locked towers.
    pub feature_cache: bool,
    /// Where the feature cache lives (`None`: `<out>/../.siam-cache`).
    pub cache_dir: Option<PathBuf>,
    /// Largest frozen-prefix cache file, in GB (1e9 bytes), built for a `last:N` tower
    /// (images only without augmentation); a tower whose cache would be larger runs its frozen
    /// blocks every step instead. 0 turns the prefix cache off. See [`super::cache`] for the
    /// size per item.
    #[serde(default = "default_prefix_cache_max_gb")]
    pub prefix_cache_max_gb: f64,
    /// Tower compute type.
    pub dtype: TowerDtype,
    /// Loader threads.
    pub threads: usize,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Stop after this many optimiser steps in this invocation (testing resumption).
    pub max_steps: Option<usize>,
}

/// 4 GB: some 26k ViT-B/32 or 6.8k ViT-B/16 images (see [`super::cache`]).
pub fn default_prefix_cache_max_gb() -> f64 {
    4.0
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: None,
            arch: None,
            data: None,
            demo_per_class: 40,
            out: PathBuf::from("siam-model"),
            loss: LossSettings::default(),
            classes_per_batch: 6,
            per_class: 4,
            batch_size: 32,
            accum_steps: 1,
            epochs: 8,
            lr: 1e-3,
            min_lr: 0.0,
            warmup_steps: 10,
            adamw: AdamWSettings::default(),
            max_grad_norm: Some(1.0),
            head: HeadKind::Linear,
            joint_dim: None,
            adapter_ratio: 0.2,
            adapter_reduction: 4,
            freeze_image: FreezePolicy::Full,
            freeze_text: FreezePolicy::Full,
            augment: false,
            seed: 0,
            select_metric: "mean_r1".into(),
            patience: None,
            checkpoint_every: 0,
            feature_cache: true,
            cache_dir: None,
            prefix_cache_max_gb: default_prefix_cache_max_gb(),
            dtype: TowerDtype::F32,
            threads: 2,
            resume: false,
            max_steps: None,
        }
    }
}
