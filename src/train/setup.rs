//! A run's starting point: its data ([`open_data`]) and its model before training
//! ([`prepare_model`]: a siam model folder keeps its heads, a CLIP checkpoint or a random
//! initialisation gets fresh ones), the model card it will write, and the fingerprint a
//! checkpoint must share with the run that resumes it.

use burn::tensor::{Device, Tensor, TensorData};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

use siam_data::dataset::{Dataset, OpenOptions};
use siam_data::tokenizer::ClipTokenizer;

use super::config::{TrainConfig, DEMO_IMAGE_SIZE};
use super::report::{Event, Observer};
use super::TrainError;
use crate::clip::config::ClipConfig;
use crate::clip::import::load_model;
use crate::clip::layers::MatmulDtype;
use crate::clip::model::Clip;
use crate::dataset::{DatasetId, SplitRecord};
use crate::model::folder::{self, InitialWeights, ModelCard};
use crate::model::heads::{HeadConfig, ProjectionHead};
use crate::model::init;
use crate::model::twin::TwinTowers;

/// The run's dataset and the record of its split: `--data` split by `--split-seed` (default
/// `--seed`), else `demo` (the caller's in-memory set), else the synthetic demo set.
pub(super) fn open_data(
    cfg: &TrainConfig,
    demo: Option<Dataset>,
    obs: &mut dyn Observer,
) -> Result<(Dataset, SplitRecord), TrainError> {
    if let Some(path) = cfg.data.path()? {
        let (ds, split) = cfg.data.open(cfg.split_seed())?;
        let (tr, va, te) = ds.split_counts();
        obs.event(&Event::Info(format!(
            "data: {} ({} images: {tr} train, {va} val, {te} test; {} labels; split seed {})",
            path.display(),
            ds.len(),
            ds.labels.len(),
            split.seed
        )));
        if let Some(line) = ds.missing_summary() {
            obs.event(&Event::Info(line));
        }
        return Ok((ds, split));
    }
    let ds = demo.unwrap_or_else(|| cfg.demo_dataset());
    let (tr, va, te) = ds.split_counts();
    obs.event(&Event::Info(format!(
        "data: synthetic demo set ({} images of {} labels: {tr} train, {va} val, {te} test)",
        ds.len(),
        ds.labels.len()
    )));
    let defaults = OpenOptions::default();
    let split = SplitRecord {
        dataset: DatasetId::Demo {
            per_class: ds.len() / ds.labels.len().max(1),
            image_size: DEMO_IMAGE_SIZE,
        },
        seed: cfg.split_seed(),
        val_fraction: defaults.val_fraction,
        test_fraction: defaults.test_fraction,
    };
    Ok((ds, split))
}

/// The run's model before training: towers, heads, card and tokenizer.
pub(super) struct Prepared {
    pub model: TwinTowers,
    pub card: ModelCard,
    pub tokenizer: ClipTokenizer,
    pub tokenizer_src: Option<PathBuf>,
}

/// Where training starts: CLIP towers, their architecture and provenance, and the heads of
/// a siam model folder (`None`: fresh heads).
struct Start {
    clip: Clip,
    clip_cfg: ClipConfig,
    initial: InitialWeights,
    tokenizer_src: Option<PathBuf>,
    heads: Option<(ProjectionHead, ProjectionHead, HeadConfig, HeadConfig)>,
}

fn load_start(
    cfg: &TrainConfig,
    device: &Device,
    obs: &mut dyn Observer,
) -> Result<Start, TrainError> {
    match &cfg.model {
        Some(path) if folder::card_format(path).as_deref() == Some(folder::FORMAT) => {
            let (model, card) = folder::load(path, device)?;
            obs.event(&Event::Info(format!(
                "model: {} (a siam model folder; training continues with its heads)",
                path.display()
            )));
            Ok(Start {
                clip: model.clip,
                clip_cfg: card.clip.clone(),
                initial: InitialWeights::Checkpoint {
                    path: path.display().to_string(),
                },
                tokenizer_src: card.tokenizer.as_ref().map(|t| path.join(t)),
                heads: Some((
                    model.image_head,
                    model.text_head,
                    card.image_head,
                    card.text_head,
                )),
            })
        }
        Some(path) => {
            let loaded = load_model(path, cfg.arch.as_deref(), device)?;
            obs.event(&Event::Info(format!(
                "model: {} ({} tensors loaded, architecture {})",
                path.display(),
                loaded.report.applied,
                loaded.report.arch
            )));
            Ok(Start {
                clip: loaded.clip,
                clip_cfg: loaded.config,
                initial: InitialWeights::Checkpoint {
                    path: path.display().to_string(),
                },
                tokenizer_src: loaded.tokenizer_path,
                heads: None,
            })
        }
        None => {
            let arch = cfg.arch.clone().unwrap_or_else(|| "tiny".into());
            let clip_cfg = ClipConfig::from_arch(&arch)?;
            obs.event(&Event::Info(format!(
                "model: no checkpoint given, so architecture {arch} starts from RANDOM weights (seed {}); recall before training is chance level",
                cfg.seed
            )));
            let mut clip = Clip::new(&clip_cfg, device);
            if let Some(t) = cfg.loss.initial_temperature() {
                clip.logit_scale = burn::module::Param::from_tensor(Tensor::from_data(
                    TensorData::new(vec![(1.0 / t).ln() as f32], [1]),
                    device,
                ));
            }
            Ok(Start {
                clip,
                clip_cfg,
                initial: InitialWeights::Random {
                    arch,
                    seed: cfg.seed,
                },
                tokenizer_src: None,
                heads: None,
            })
        }
    }
}

/// Loads or initialises the model `cfg` starts from (seeded by `cfg.seed`), with the card the
/// run writes (recording `split`).
pub(super) fn prepare_model(
    cfg: &TrainConfig,
    split: SplitRecord,
    device: &Device,
    obs: &mut dyn Observer,
) -> Result<Prepared, TrainError> {
    let _lock = init::lock_seeded(device, cfg.seed);
    let start = load_start(cfg, device, obs)?;
    let (image_head, text_head, ih, th) = match start.heads {
        Some(heads) => heads,
        None => {
            let t = &cfg.towers;
            let h = HeadConfig {
                kind: t.head,
                d_in: start.clip_cfg.embed_dim,
                d_out: t.joint_dim.unwrap_or(start.clip_cfg.embed_dim),
                ratio: t.adapter_ratio,
                reduction: t.adapter_reduction,
            };
            (h.init(device), h.init(device), h, h)
        }
    };
    let tokenizer = match &start.tokenizer_src {
        Some(p) => ClipTokenizer::from_file(p)?,
        None => ClipTokenizer::builtin()?,
    };
    init::materialize(&start.clip);
    init::materialize(&image_head);
    init::materialize(&text_head);
    let card = ModelCard {
        format: folder::FORMAT.into(),
        version: folder::VERSION,
        image_size: start.clip_cfg.image_size(),
        context_length: start.clip_cfg.context_length(),
        clip: start.clip_cfg,
        image_head: ih,
        text_head: th,
        joint_dim: ih.d_out,
        tokenizer: start
            .tokenizer_src
            .as_ref()
            .map(|_| "tokenizer.json".to_string()),
        mean: siam_data::preprocess::CLIP_MEAN,
        std: siam_data::preprocess::CLIP_STD,
        initial_weights: start.initial,
        training: serde_json::to_value(cfg).unwrap_or_default(),
        split: Some(split),
    };
    Ok(Prepared {
        model: TwinTowers {
            clip: start.clip,
            image_head,
            text_head,
            logit_bias: None,
        },
        card,
        tokenizer,
        tokenizer_src: start.tokenizer_src,
    })
}

/// Fingerprint of what a checkpoint must share with the run resuming it: architecture, heads,
/// freeze policies, initial weights, loss, data and batch shape.
pub(super) fn fingerprint(cfg: &TrainConfig, card: &ModelCard, ds: &Dataset) -> String {
    let b = &cfg.batch;
    let mut v = serde_json::json!({
        "clip": card.clip, "image_head": card.image_head, "text_head": card.text_head,
        "initial": card.initial_weights,
        "freeze": [cfg.towers.image_policy(), cfg.towers.text_policy()],
        "loss": cfg.loss.fingerprint_value(), "data": ds.name, "records": ds.len(),
        "batch": [b.classes_per_batch, b.per_class, b.batch_size, b.accum_steps],
        "seed": cfg.seed,
    });
    if let Some(s) = cfg.data.split_seed {
        v["split_seed"] = s.into();
    }
    // Only when on, so checkpoints of runs without mining keep their fingerprints.
    if cfg.mining.mine_index.is_some() {
        v["mining"] = serde_json::to_value(&cfg.mining).unwrap_or_default();
    }
    crate::fingerprint::hex(&Sha256::digest(v.to_string().as_bytes()))
}

/// What `--dtype bf16` does on this model and device, or why it cannot run.
pub fn bf16_notice(model: &TwinTowers, device: &Device) -> Result<String, TrainError> {
    if !MatmulDtype::bf16_supported(device) {
        return Err(TrainError::Config(format!(
            "--dtype bf16: this backend ({device:?}) cannot multiply bf16 matrices; use --dtype f32 or a libtorch/CUDA build"
        )));
    }
    let towers = if model.clip.matmul_dtype_applies_to_image() {
        "both towers"
    } else {
        "the text tower (the ResNet image tower stays f32)"
    };
    let emulated = if format!("{device:?}").contains("Flex(") {
        "; flex rounds to bf16 but multiplies through f32, so expect it slower than f32, not faster"
    } else {
        ""
    };
    Ok(format!(
        "dtype bf16: matmuls of {towers} in bf16 with f32 master weights; norms, softmax, heads, losses and mining stay f32{emulated}"
    ))
}
