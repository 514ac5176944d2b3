//! The training configuration. Each section is at once a `clap` argument group (`siam train`
//! flattens them, so a flag, its help and its default are written once, here) and a part of
//! [`TrainConfig`], which is saved in every checkpoint and in the model card:
//!
//! | section | flags |
//! |---|---|
//! | [`DataConfig`] (shared with `eval` and `index`) | `--data --templates --split-seed --on-bad-image` |
//! | [`LossSettings`] (siam-losses' typed configs) | `--loss --miner --margin --pos-margin --neg-margin --temperature --ms-* --xbm*` |
//! | [`BatchConfig`] | `--classes-per-batch --per-class --batch-size --accum` |
//! | [`OptimConfig`] | `--epochs --lr --min-lr --warmup --clip-grad`, AdamW's `--weight-decay --beta1 --beta2 --adam-eps` |
//! | [`TowerConfig`] | `--head --joint-dim --adapter-ratio --adapter-reduction --freeze-image --freeze-text --dtype` |
//! | [`CacheConfig`] | `--no-cache --cache-dir --prefix-cache-max-gb` |
//!
//! [`TrainConfig::default`] is the command line's defaults ([`clap_defaults`]), so a library
//! caller and `siam train` without flags run the same configuration.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use super::optim::AdamWSettings;
use crate::dataset::DataConfig;
use crate::model::heads::HeadKind;
use crate::model::twin::FreezePolicy;
use siam_losses::{HardnessSchedule, Loss, LossConfig, LossKind};

/// Images per label of the synthetic demo set `siam train` uses without `--data`.
pub const DEMO_PER_CLASS: usize = 40;
/// Side of the demo images (the tiny architecture's input size).
pub const DEMO_IMAGE_SIZE: u32 = 64;
/// Epochs on the demo set when `--epochs` is not given (recall@1 from chance to ~0.8).
pub const DEMO_EPOCHS: usize = 15;
/// Epochs on a dataset when `--epochs` is not given.
pub const DATA_EPOCHS: usize = 10;

/// Validation metrics `--select-metric` may name (see [`super::report::metric_map`]).
pub const SELECT_METRICS: &[&str] = &[
    "mean_r1", "mean_r5", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
];

pub use crate::settings::clap_defaults;

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
    type Err = crate::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(crate::UnknownName::new("dtype", s, "f32 or bf16")),
        }
    }
}

/// Loss and miner settings. clap parses `--loss` and `--miner` once, into siam-losses'
/// [`LossConfig`] and [`HardnessSchedule`]; every default (the loss, its miner, margins,
/// temperature, multi-similarity's parameters) is siam-losses' own, so an unset flag here is
/// `None`, never a number. A parameter flag applies to the loss that takes it (`--margin` to
/// the triplet loss, ...) and is ignored by the others.
///
/// Stored (checkpoint fingerprint, `siam.json`'s `training`, the report) with `loss` and `miner`
/// in their text forms, as siam always wrote them; see [`LossSettings::fingerprint_value`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct LossSettings {
    /// Loss: contrastive, pairwise, triplet, multi-similarity or sigmoid (SigLIP: learnable
    /// logit scale from ln 10 and bias from -10, saved in checkpoints), optionally with its
    /// parameters (`triplet:margin=0.3`, `pairwise:distance=euclidean`); default triplet; with
    /// --prompt, CoOp's cross-entropy over the class prompts.
    #[arg(long, value_name = "LOSS[:KEY=VALUE,..]")]
    pub loss: Option<LossConfig>,
    /// Miner: all, hard, semihard, max-violation, distance-weighted, multi-similarity, none, or
    /// a schedule such as semihard:2,hard (default: the loss's usual miner).
    #[arg(long)]
    pub miner: Option<HardnessSchedule>,
    /// Triplet margin (cosine similarity units; default: the triplet loss's own).
    #[arg(long, help = param_help("Triplet margin (cosine similarity units)", "margin"))]
    pub margin: Option<f64>,
    /// Pairwise loss: positives should be more similar than this.
    #[arg(long, help = param_help("Pairwise loss: positives should be more similar than this", "pos-margin"))]
    pub pos_margin: Option<f64>,
    /// Pairwise loss: negatives should be less similar than this.
    #[arg(long, help = param_help("Pairwise loss: negatives should be less similar than this", "neg-margin"))]
    pub neg_margin: Option<f64>,
    /// Contrastive (InfoNCE) initial temperature, > 0: the logit scale starts at `ln(1/t)`
    /// (random-init models; checkpoints keep theirs).
    #[arg(long, help = param_help("Contrastive (InfoNCE) initial temperature, > 0: the logit scale starts at ln(1/t) (random-init models; checkpoints keep theirs)", "temperature"))]
    pub temperature: Option<f64>,
    /// Multi-similarity `alpha` (Wang et al. 2019).
    #[arg(long, help = param_help("Multi-similarity alpha (Wang et al. 2019)", "alpha"))]
    pub ms_alpha: Option<f64>,
    /// Multi-similarity `beta` (Wang et al. 2019).
    #[arg(long, help = param_help("Multi-similarity beta (Wang et al. 2019)", "beta"))]
    pub ms_beta: Option<f64>,
    /// Multi-similarity `base`, lambda (Wang et al. 2019).
    #[arg(long, help = param_help("Multi-similarity base, lambda (Wang et al. 2019)", "base"))]
    pub ms_base: Option<f64>,
    /// Cross-batch memory: keep the last SIZE reference embeddings per direction (texts for
    /// image anchors, images for text anchors) as extra references (0: off).
    #[arg(long, default_value_t = 0, value_name = "SIZE")]
    #[serde(default)]
    pub xbm: usize,
    /// Steps before the cross-batch memory is used (it fills from the start).
    #[arg(long, default_value_t = 0, value_name = "STEP")]
    #[serde(default)]
    pub xbm_start: usize,
}

impl Default for LossSettings {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The loss whose default `param` (a [`LossConfig`] parameter name) is; `None` for names no
/// loss takes.
fn loss_taking(param: &str) -> Option<Loss> {
    let kind = LossKind::ALL
        .into_iter()
        .find(|k| k.parameters().contains(&param))?;
    LossConfig::new(kind).init().ok()
}

/// siam-losses' default of a loss parameter (cosine similarity), as the shortest decimal that
/// reads back as the f32 (`0.2`, not `0.20000000298`).
fn default_param(param: &str) -> Option<f64> {
    let v = match (loss_taking(param)?, param) {
        (Loss::Triplet(t), "margin") => t.margin,
        (Loss::Pairwise(p), "pos-margin") => p.pos_margin,
        (Loss::Pairwise(p), "neg-margin") => p.neg_margin,
        (Loss::Contrastive(c), "temperature") => c.temperature,
        (Loss::MultiSimilarity(m), "alpha") => m.alpha,
        (Loss::MultiSimilarity(m), "beta") => m.beta,
        (Loss::MultiSimilarity(m), "base") => m.base,
        _ => return None,
    };
    v.to_string().parse().ok()
}

/// `--help` of a loss-parameter flag: `what`, then siam-losses' default of `param`.
fn param_help(what: &str, param: &str) -> String {
    match default_param(param) {
        Some(d) => format!("{what} [default: {d}, the loss's own]"),
        None => what.to_string(),
    }
}

impl LossSettings {
    /// The parameter flags as `(flag, LossConfig parameter, value)`.
    fn parameter_flags(&self) -> [(&'static str, &'static str, Option<f64>); 7] {
        [
            ("--margin", "margin", self.margin),
            ("--pos-margin", "pos-margin", self.pos_margin),
            ("--neg-margin", "neg-margin", self.neg_margin),
            ("--temperature", "temperature", self.temperature),
            ("--ms-alpha", "alpha", self.ms_alpha),
            ("--ms-beta", "beta", self.ms_beta),
            ("--ms-base", "base", self.ms_base),
        ]
    }

    /// The loss configuration: `--loss` (else siam-losses' default, triplet) with the
    /// parameter flags that apply to it set on top. A flag that is not finite, or that sets a
    /// parameter `--loss` already sets, is an error naming it.
    pub fn loss_config(&self) -> Result<LossConfig, super::TrainError> {
        let mut config = self.loss.unwrap_or_default();
        for (flag, param, value) in self.parameter_flags() {
            let Some(v) = value else { continue };
            if !config.kind.parameters().contains(&param) {
                continue;
            }
            if !v.is_finite() {
                return Err(super::TrainError::Config(format!(
                    "{flag} must be a finite number, got {v}"
                )));
            }
            let slot = match param {
                "margin" => &mut config.margin,
                "pos-margin" => &mut config.pos_margin,
                "neg-margin" => &mut config.neg_margin,
                "temperature" => &mut config.temperature,
                "alpha" => &mut config.alpha,
                "beta" => &mut config.beta,
                _ => &mut config.base,
            };
            if slot.is_some() {
                return Err(super::TrainError::Config(format!(
                    "{flag}: --loss {} already sets {param}; give it once",
                    self.loss.unwrap_or_default()
                )));
            }
            *slot = Some(v as f32);
        }
        Ok(config)
    }

    /// The loss with every default filled in and every value checked.
    pub fn loss(&self) -> Result<Loss, super::TrainError> {
        let config = self.loss_config()?;
        config
            .init()
            .map_err(|e| super::TrainError::Config(format!("--loss {config}: {e}")))
    }

    /// The miner schedule: `--miner`, else the loss's usual one (siam-losses'
    /// [`LossKind::default_miner`]).
    pub fn miners(&self) -> HardnessSchedule {
        self.miner
            .clone()
            .unwrap_or_else(|| self.loss.unwrap_or_default().default_miner())
    }

    /// The loss's name (`triplet` when `--loss` is not given).
    pub fn name(&self) -> &'static str {
        self.loss.unwrap_or_default().kind.name()
    }

    /// The initial temperature of a random-init model's logit scale: `--temperature`, else a
    /// temperature `--loss` names (`contrastive:temperature=0.05`).
    pub fn initial_temperature(&self) -> Option<f64> {
        self.temperature.or_else(|| {
            self.loss
                .and_then(|l| l.temperature)
                .and_then(|t| t.to_string().parse().ok())
        })
    }

    /// These settings as checkpoint fingerprints record them. siam wrote the parameter flags
    /// with their defaults filled in (`"margin": 0.2`, ...); an unset flag is written so here
    /// too, with siam-losses' default, so a checkpoint written before the flags became optional
    /// still resumes (tested by `fingerprints_of_older_checkpoints_still_match`).
    pub fn fingerprint_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        for (flag, param, value) in self.parameter_flags() {
            // The temperature had no default and was written as null.
            if value.is_none() && param != "temperature" {
                let key = flag.trim_start_matches("--").replace('-', "_");
                v[key] = default_param(param).into();
            }
        }
        v
    }
}

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct BatchConfig {
    /// Labels per batch (P) for class-balanced batches.
    #[arg(long, default_value_t = 6)]
    pub classes_per_batch: usize,
    /// Images per label per batch (K).
    #[arg(long, default_value_t = 4)]
    pub per_class: usize,
    /// Batch size for datasets without labels (shuffled batches).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (gradient accumulation keeping all negatives; 1 = none).
    #[arg(long = "accum", default_value_t = 1)]
    pub accum_steps: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The optimiser and its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct OptimConfig {
    /// Passes over the training split (default: 15 on the demo set, 10 on a dataset).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Peak learning rate (after warm-up).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Linear warm-up steps.
    #[arg(long = "warmup", default_value_t = 10)]
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad: f64,
    /// AdamW.
    #[command(flatten)]
    pub adamw: AdamWSettings,
}

impl Default for OptimConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

impl OptimConfig {
    /// Global-norm gradient clipping, `None` when `--clip-grad 0`.
    pub fn max_grad_norm(&self) -> Option<f64> {
        (self.clip_grad != 0.0).then_some(self.clip_grad)
    }

    /// Checks the optimiser's values, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<(), super::TrainError> {
        let bad =
            |flag: &str, why: String| Err(super::TrainError::Config(format!("{flag}: {why}")));
        let o = self;
        if !o.lr.is_finite() || o.lr <= 0.0 {
            return bad(
                "--lr",
                format!("the learning rate must be a positive number, got {}", o.lr),
            );
        }
        if !o.min_lr.is_finite() || o.min_lr < 0.0 || o.min_lr > o.lr {
            return bad("--min-lr", format!("must be in [0, lr], got {}", o.min_lr));
        }
        if o.epochs == Some(0) {
            return bad("--epochs", "must be at least 1".into());
        }
        if !(o.clip_grad.is_finite() && o.clip_grad >= 0.0) {
            return bad(
                "--clip-grad",
                format!("must be positive (0: off), got {}", o.clip_grad),
            );
        }
        let w = &o.adamw;
        if !(w.weight_decay.is_finite() && w.weight_decay >= 0.0) {
            return bad(
                "--weight-decay",
                format!("must be >= 0, got {}", w.weight_decay),
            );
        }
        for (flag, b) in [("--beta1", w.beta_1), ("--beta2", w.beta_2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(flag, format!("must be in [0, 1), got {b}"));
            }
        }
        if !(w.epsilon.is_finite() && w.epsilon > 0.0) {
            return bad("--adam-eps", format!("must be positive, got {}", w.epsilon));
        }
        Ok(())
    }
}

/// The heads, what of the towers trains, and the towers' number type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TowerConfig {
    /// Projection heads: linear, adapter (CLIP-Adapter residual MLP) or identity.
    #[arg(long, default_value = "linear")]
    pub head: HeadKind,
    /// Joint embedding size (default: the CLIP's embedding size).
    #[arg(long)]
    pub joint_dim: Option<usize>,
    /// Adapter mixing ratio alpha, in [0, 1].
    #[arg(long, default_value_t = 0.2)]
    pub adapter_ratio: f64,
    /// Adapter bottleneck reduction (hidden size = input size / this).
    #[arg(long, default_value_t = 4)]
    pub adapter_reduction: usize,
    /// Image tower: locked, last:N or full.
    #[arg(long, default_value = "full")]
    pub freeze_image: FreezePolicy,
    /// Text tower: locked, last:N or full.
    #[arg(long, default_value = "full")]
    pub freeze_text: FreezePolicy,
    /// Tower matmul type: f32, or bf16 as PyTorch autocast (linears, attention, patch
    /// embedding and projections in bf16; f32 master weights, norms, softmax, heads, losses
    /// and mining; a ResNet image tower stays f32; flex emulates it, slower than f32).
    #[arg(long, default_value = "f32")]
    pub dtype: TowerDtype,
}

impl Default for TowerConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The on-disk caches of frozen towers' outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct CacheConfig {
    /// Use the on-disk feature cache for locked towers (`--no-cache` turns it off).
    #[arg(long = "no-cache", action = clap::ArgAction::SetFalse)]
    pub feature_cache: bool,
    /// Feature cache folder (default: <out>/../.siam-cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Largest cache (GB, 1e9 bytes) of a last:N tower's frozen blocks' hidden states (images:
    /// only without --augment); larger ones run the frozen blocks every step. 0: never cache.
    /// Per item: 150 KiB for a ViT-B/32 image, 591 KiB for ViT-B/16, ~2 KiB per text token
    /// (see `siam::train::cache`).
    #[arg(long, default_value_t = 4.0)]
    #[serde(default = "default_prefix_cache_max_gb")]
    pub prefix_cache_max_gb: f64,
}

fn default_prefix_cache_max_gb() -> f64 {
    CacheConfig::default().prefix_cache_max_gb
}

impl Default for CacheConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// Everything `siam train` needs: its flags, section by section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Starting checkpoint: a siam model folder, a Hugging Face CLIP folder, or an
    /// OpenAI/open_clip state dict (.safetensors/.pt, with --arch). Omit to start from random
    /// weights of --arch.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Architecture: a preset (tiny, ViT-B-32, ViT-B-32-quickgelu, ViT-B-16, ViT-L-14, RN50, ...)
    /// or an open_clip model-config JSON file. Without --model: random initial weights (tiny by
    /// default).
    #[arg(long)]
    pub arch: Option<String>,
    /// The dataset (none: the synthetic demo set) and its split.
    #[command(flatten)]
    pub data: DataConfig,
    /// Demo set (no --data): images per label.
    #[arg(long, default_value_t = DEMO_PER_CLASS)]
    pub demo_per_class: usize,
    /// Output model folder (also holds checkpoint/, metrics.jsonl, loss.png, recall.png).
    #[arg(long, short = 'o', default_value = "siam-model")]
    pub out: PathBuf,
    /// Loss and miner.
    #[command(flatten)]
    pub loss: LossSettings,
    /// Batches.
    #[command(flatten)]
    pub batch: BatchConfig,
    /// Optimiser and schedule.
    #[command(flatten)]
    pub optim: OptimConfig,
    /// Heads and towers.
    #[command(flatten)]
    pub towers: TowerConfig,
    /// Feature caches.
    #[command(flatten)]
    pub cache: CacheConfig,
    /// Random-resized-crop and flip augmentation of training images.
    #[arg(long)]
    pub augment: bool,
    /// Seed of every random choice (a CPU run with the same seed is reproducible); also the
    /// split seed unless --split-seed is given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation metric that picks the kept checkpoint (mean_r1, mean_r5, i2t_r1, i2t_r5,
    /// i2t_r10, t2i_r1, t2i_r5, t2i_r10).
    #[arg(long, default_value = "mean_r1")]
    pub select_metric: String,
    /// Stop after this many epochs without improvement (default: never).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Also checkpoint every N optimiser steps (0: only at epoch ends).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many optimiser steps in this invocation (the run can be resumed).
    #[arg(long)]
    pub max_steps: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

impl TrainConfig {
    /// Epochs of the run: `--epochs`, else [`DEMO_EPOCHS`] on the demo set and
    /// [`DATA_EPOCHS`] on a dataset.
    pub fn epochs(&self) -> usize {
        self.optim.epochs.unwrap_or(if self.data.data.is_empty() {
            DEMO_EPOCHS
        } else {
            DATA_EPOCHS
        })
    }

    /// The seed of the train/val/test split: `--split-seed`, else `--seed`.
    pub fn split_seed(&self) -> u64 {
        self.data.split_seed.unwrap_or(self.seed)
    }

    /// The synthetic demo set this configuration trains on when it names no dataset.
    pub fn demo_dataset(&self) -> siam_data::dataset::Dataset {
        siam_data::synthetic::demo(self.demo_per_class, DEMO_IMAGE_SIZE, self.split_seed())
    }

    /// Checks every value that needs no data, naming the flag of the first bad one; `siam
    /// train` calls this before it reads a file or creates one.
    pub fn validate(&self) -> Result<(), super::TrainError> {
        let bad =
            |flag: &str, why: String| Err(super::TrainError::Config(format!("{flag}: {why}")));
        self.optim.validate()?;
        let b = &self.batch;
        if b.classes_per_batch < 2 {
            return bad(
                "--classes-per-batch",
                format!(
                    "{} label(s) per batch leaves no negatives; use at least 2",
                    b.classes_per_batch
                ),
            );
        }
        for (flag, v) in [
            ("--per-class", b.per_class),
            ("--batch-size", b.batch_size),
            ("--accum", b.accum_steps),
            ("--threads", self.threads),
            ("--demo-per-class", self.demo_per_class),
            ("--adapter-reduction", self.towers.adapter_reduction),
        ] {
            if v == 0 {
                return bad(flag, "must be at least 1".into());
            }
        }
        if self.loss.xbm > 0 && b.accum_steps > 1 {
            return bad(
                "--xbm",
                "cannot be combined with --accum above 1 yet (each micro-step would enqueue the batch)"
                    .into(),
            );
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps", "must be at least 1".into());
        }
        if self.towers.joint_dim == Some(0) {
            return bad("--joint-dim", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.towers.adapter_ratio) {
            return bad(
                "--adapter-ratio",
                format!("must be in [0, 1], got {}", self.towers.adapter_ratio),
            );
        }
        let gb = self.cache.prefix_cache_max_gb;
        if !(gb.is_finite() && gb >= 0.0) {
            return bad("--prefix-cache-max-gb", format!("must be >= 0, got {gb}"));
        }
        self.data.path()?;
        if let Some(t) = self.loss.initial_temperature() {
            if !(t.is_finite() && t > 0.0) {
                return bad(
                    "--temperature",
                    format!("must be a positive number, got {t}"),
                );
            }
        }
        if !SELECT_METRICS.contains(&self.select_metric.as_str()) {
            return bad(
                "--select-metric",
                format!(
                    "unknown metric {:?}; one of {}",
                    self.select_metric,
                    SELECT_METRICS.join(", ")
                ),
            );
        }
        super::objective::build_objective(&self.loss).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_command_lines() {
        let c = TrainConfig::default();
        assert_eq!(c.loss.name(), "triplet");
        assert!(matches!(c.loss.loss().unwrap(), Loss::Triplet(t) if t.margin == 0.2));
        assert_eq!(c.batch.classes_per_batch, 6);
        assert_eq!(c.optim.adamw, AdamWSettings::default());
        assert_eq!(c.optim.max_grad_norm(), Some(1.0));
        assert!(c.cache.feature_cache);
        assert_eq!(c.cache.prefix_cache_max_gb, 4.0);
        assert_eq!(c.demo_per_class, DEMO_PER_CLASS);
        assert_eq!(c.epochs(), DEMO_EPOCHS);
        assert_eq!(c.out, PathBuf::from("siam-model"));
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_flag() {
        type Case = (&'static str, Box<dyn Fn(&mut TrainConfig)>);
        let cases: Vec<Case> = vec![
            (
                "--temperature",
                Box::new(|c| c.loss.temperature = Some(0.0)),
            ),
            ("--batch-size", Box::new(|c| c.batch.batch_size = 0)),
            ("--joint-dim", Box::new(|c| c.towers.joint_dim = Some(0))),
            (
                "--select-metric",
                Box::new(|c| c.select_metric = "r@1".into()),
            ),
            ("--margin", Box::new(|c| c.loss.margin = Some(f64::NAN))),
            (
                "--loss",
                Box::new(|c| c.loss.loss = Some("triplet:margin=-1".parse().unwrap())),
            ),
            ("--clip-grad", Box::new(|c| c.optim.clip_grad = -1.0)),
        ];
        for (flag, edit) in cases {
            let mut c = TrainConfig::default();
            edit(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }

    /// `siam train`'s flags, parsed as clap parses them.
    fn parse(args: &[&str]) -> Result<TrainConfig, clap::Error> {
        use clap::{Args, FromArgMatches};
        let cmd = TrainConfig::augment_args(clap::Command::new("train").no_binary_name(true));
        TrainConfig::from_arg_matches(&cmd.try_get_matches_from(args)?)
    }

    #[test]
    fn loss_and_miner_are_parsed_once_by_clap() {
        let c = parse(&["--loss", "pairwise", "--miner", "semihard:2,hard"]).unwrap();
        assert_eq!(c.loss.loss, Some(LossConfig::new(LossKind::Pairwise)));
        assert_eq!(c.loss.miners().to_string(), "semihard:2,hard");
        let e = parse(&["--loss", "quadruplet"]).unwrap_err().to_string();
        assert!(e.contains("--loss") && e.contains("quadruplet"), "{e}");
        let e = parse(&["--miner", "hardest-ever"]).unwrap_err().to_string();
        assert!(e.contains("--miner") && e.contains("hardest-ever"), "{e}");
        // A parameter flag sets the loss that takes it; others ignore it.
        let c = parse(&["--loss", "triplet", "--margin", "0.35", "--ms-beta", "9"]).unwrap();
        assert_eq!(c.loss.loss_config().unwrap().margin, Some(0.35));
        assert_eq!(c.loss.loss_config().unwrap().beta, None);
        let c = parse(&["--loss", "triplet:margin=0.3", "--margin", "0.35"]).unwrap();
        let e = c.loss.loss_config().unwrap_err().to_string();
        assert!(e.contains("--margin") && e.contains("already sets"), "{e}");
        // No loss named: the default miner is the triplet loss's.
        assert_eq!(LossSettings::default().miners().to_string(), "all");
    }

    #[test]
    fn stored_settings_read_and_fingerprint_as_before() {
        // The loss section as siam wrote it before `--loss`/`--miner` were typed and the
        // parameter flags optional: checkpoint fingerprints hash exactly this.
        let old = serde_json::json!({
            "loss": null, "miner": null, "margin": 0.2, "pos_margin": 0.8, "neg_margin": 0.3,
            "temperature": null, "ms_alpha": 2.0, "ms_beta": 50.0, "ms_base": 0.5,
            "xbm": 0, "xbm_start": 0
        });
        let d = LossSettings::default();
        assert_eq!(d.fingerprint_value().to_string(), old.to_string());
        let mut set = old.clone();
        set["loss"] = "contrastive".into();
        set["miner"] = "semihard:2,hard".into();
        set["temperature"] = 0.05.into();
        let read: LossSettings = serde_json::from_value(set.clone()).unwrap();
        assert_eq!(read.name(), "contrastive");
        assert_eq!(read.miners().to_string(), "semihard:2,hard");
        assert_eq!(read.fingerprint_value().to_string(), set.to_string());
        let given = parse(&[
            "--loss",
            "contrastive",
            "--miner",
            "semihard:2,hard",
            "--temperature",
            "0.05",
        ])
        .unwrap();
        assert_eq!(given.loss.fingerprint_value(), set);
    }
}
