//! The training run: data, model, validation, the epoch loop, checkpoints, the final model
//! folder, curves and report.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use siam_data::dataset::{Dataset, OpenOptions, Split};
use siam_data::pipeline::{Loader, LoaderOptions};
use siam_data::preprocess::Preprocessor;
use siam_data::tokenizer::ClipTokenizer;

use super::cache::{FeatureCache, FeatureSource, Prefix, PrefixSource};
use super::checkpoint::{self, EpochRecord, TrainState, STATE_FORMAT};
use super::config::TrainConfig;
use super::data::{eval_plan, plan_batch, sampler, BatchPlan, EvalPlan, TextMode};
use super::encoder::{to_vec, token_tensor};
use super::folder::{self, InitialWeights, ModelCard};
use super::heads::HeadConfig;
use super::metrics::{MetricsLog, StepMetrics};
use super::objective::build_objective;
use super::optim::{build_adamw, split_params};
use super::schedule::CosineSchedule;
use super::step::{Stepper, TrainBatch};
use super::twin::{FreezePolicy, ImageInput, TextInput, TwinTowers};
use super::TrainError;
use crate::clip::config::ClipConfig;
use crate::clip::import::load_model;
use crate::clip::layers::MatmulDtype;
use crate::clip::model::Clip;
use crate::eval::retrieval::{retrieval_report, Positives, RetrievalReport};

/// Something the run reports while it goes (the CLI draws it; tests may ignore it).
#[derive(Debug, Clone)]
pub enum Event {
    /// A line worth showing (model source, data, cache use).
    Info(String),
    /// Training starts: total steps of the run, steps already done.
    Start {
        /// Optimiser steps of the whole run.
        total_steps: usize,
        /// Steps already done (resumed runs).
        done: usize,
    },
    /// One optimiser step.
    Step(StepMetrics),
    /// Validation before training (epoch 0) or after an epoch.
    Epoch(EpochRecord),
    /// A checkpoint was written.
    Checkpoint(PathBuf),
}

/// Receives [`Event`]s.
pub trait Observer {
    /// Called for every event.
    fn event(&mut self, e: &Event);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&mut self, _e: &Event) {}
}

/// The summary written by `--report` and returned by [`train`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// The resolved configuration.
    pub config: TrainConfig,
    /// Where the weights came from.
    pub initial_weights: InitialWeights,
    /// Validation metrics before training (`None` when resumed, or no validation split).
    pub before: Option<BTreeMap<String, f64>>,
    /// Validation metrics of the model written to the output folder.
    pub after: Option<BTreeMap<String, f64>>,
    /// Epoch whose weights were kept (best by the selection metric, else the last).
    pub kept_epoch: usize,
    /// Optimiser steps done in total.
    pub steps: usize,
    /// Epochs done.
    pub epochs: usize,
    /// Whether early stopping ended the run.
    pub early_stopped: bool,
    /// Whether the run reached its end (false when `max_steps` stopped it; the output folder
    /// then holds only the checkpoint).
    pub finished: bool,
    /// Wall-clock seconds of training (all invocations).
    pub train_seconds: f64,
    /// Anchor-reference pairs per second over the run.
    pub pairs_per_second: f64,
    /// Images per second over the run.
    pub images_per_second: f64,
    /// The output model folder.
    pub output: PathBuf,
    /// Validation history.
    pub history: Vec<EpochRecord>,
    /// Scalar values in trainable parameters.
    pub trainable_parameters: usize,
    /// Scalar values in frozen parameters.
    pub frozen_parameters: usize,
}

/// The run's model before training: towers, heads, card and tokenizer.
struct Prepared {
    model: TwinTowers,
    card: ModelCard,
    tokenizer: ClipTokenizer,
    tokenizer_src: Option<PathBuf>,
}

fn head_configs(cfg: &TrainConfig, clip: &ClipConfig) -> (HeadConfig, HeadConfig, usize) {
    let d = cfg.joint_dim.unwrap_or(clip.embed_dim);
    let h = HeadConfig {
        kind: cfg.head,
        d_in: clip.embed_dim,
        d_out: d,
        ratio: cfg.adapter_ratio,
        reduction: cfg.adapter_reduction,
    };
    (h, h, d)
}

/// Serialises seeding and random initialisation: burn's generator is per device and global, so
/// two runs initialising at once in one process (tests) would interleave their draws.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Initialises every lazily initialised parameter now, in module order.
fn materialize<M: Module>(m: &M) {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let _ = p.val();
        }
    }
    m.visit(&mut Touch);
}

fn prepare_model(
    cfg: &TrainConfig,
    device: &Device,
    obs: &mut dyn Observer,
) -> Result<Prepared, TrainError> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(cfg.seed);
    let (clip, clip_cfg, initial, tokenizer_src, heads) = match &cfg.model {
        Some(path) if folder::card_format(path).as_deref() == Some(folder::FORMAT) => {
            let (model, card) = folder::load(path, device)?;
            obs.event(&Event::Info(format!(
                "model: {} (a siam model folder; training continues with its heads)",
                path.display()
            )));
            let tok = card.tokenizer.as_ref().map(|t| path.join(t));
            (
                model.clip,
                card.clip.clone(),
                InitialWeights::Checkpoint {
                    path: path.display().to_string(),
                },
                tok,
                Some((
                    model.image_head,
                    model.text_head,
                    card.image_head,
                    card.text_head,
                )),
            )
        }
        Some(path) => {
            let loaded = load_model(path, cfg.arch.as_deref(), device)?;
            obs.event(&Event::Info(format!(
                "model: {} ({} tensors loaded, architecture {})",
                path.display(),
                loaded.report.applied,
                loaded.report.arch
            )));
            (
                loaded.clip,
                loaded.config,
                InitialWeights::Checkpoint {
                    path: path.display().to_string(),
                },
                loaded.tokenizer_path,
                None,
            )
        }
        None => {
            let arch = cfg.arch.clone().unwrap_or_else(|| "tiny".into());
            let clip_cfg = ClipConfig::from_arch(&arch)?;
            obs.event(&Event::Info(format!(
                "model: no checkpoint given, so architecture {arch} starts from RANDOM weights (seed {}); recall before training is chance level",
                cfg.seed
            )));
            let mut clip = Clip::new(&clip_cfg, device);
            if let Some(t) = cfg.loss.temperature {
                clip.logit_scale = burn::module::Param::from_tensor(Tensor::from_data(
                    TensorData::new(vec![(1.0 / t).ln() as f32], [1]),
                    device,
                ));
            }
            (
                clip,
                clip_cfg,
                InitialWeights::Random {
                    arch,
                    seed: cfg.seed,
                },
                None,
                None,
            )
        }
    };
    let (image_head, text_head, ih, th, joint_dim) = match heads {
        Some((ih_m, th_m, ih, th)) => (ih_m, th_m, ih, th, ih.d_out),
        None => {
            let (ih, th, d) = head_configs(cfg, &clip_cfg);
            (ih.init(device), th.init(device), ih, th, d)
        }
    };
    let tokenizer = match &tokenizer_src {
        Some(p) => ClipTokenizer::from_file(p)?,
        None => ClipTokenizer::builtin()?,
    };
    materialize(&clip);
    materialize(&image_head);
    materialize(&text_head);
    let card = ModelCard {
        format: folder::FORMAT.into(),
        version: folder::VERSION,
        image_size: clip_cfg.image_size(),
        context_length: clip_cfg.context_length(),
        clip: clip_cfg,
        image_head: ih,
        text_head: th,
        joint_dim,
        tokenizer: tokenizer_src.as_ref().map(|_| "tokenizer.json".to_string()),
        mean: siam_data::preprocess::CLIP_MEAN,
        std: siam_data::preprocess::CLIP_STD,
        initial_weights: initial,
        training: serde_json::to_value(cfg).unwrap_or_default(),
    };
    Ok(Prepared {
        model: TwinTowers {
            clip,
            image_head,
            text_head,
            logit_bias: None,
        },
        card,
        tokenizer,
        tokenizer_src,
    })
}

/// Fingerprint of what a checkpoint must share with the run resuming it: architecture, heads,
/// freeze policies, initial weights, loss, data and batch shape.
fn fingerprint(cfg: &TrainConfig, card: &ModelCard, ds: &Dataset) -> String {
    let v = serde_json::json!({
        "clip": card.clip, "image_head": card.image_head, "text_head": card.text_head,
        "initial": card.initial_weights, "freeze": [cfg.freeze_image, cfg.freeze_text],
        "loss": cfg.loss, "data": ds.name, "records": ds.len(),
        "batch": [cfg.classes_per_batch, cfg.per_class, cfg.batch_size, cfg.accum_steps],
        "seed": cfg.seed,
    });
    hex(&Sha256::digest(v.to_string().as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn validate(cfg: &TrainConfig) -> Result<(), TrainError> {
    let bad = |what: &str, why: String| Err(TrainError::Config(format!("{what}: {why}")));
    if !cfg.lr.is_finite() || cfg.lr <= 0.0 {
        return bad(
            "--lr",
            format!(
                "the learning rate must be a positive number, got {}",
                cfg.lr
            ),
        );
    }
    if !cfg.min_lr.is_finite() || cfg.min_lr < 0.0 || cfg.min_lr > cfg.lr {
        return bad(
            "--min-lr",
            format!("must be in [0, lr], got {}", cfg.min_lr),
        );
    }
    if cfg.epochs == 0 {
        return bad("--epochs", "must be at least 1".into());
    }
    if cfg.classes_per_batch < 2 {
        return bad(
            "--classes-per-batch",
            format!(
                "{} label(s) per batch leaves no negatives; use at least 2",
                cfg.classes_per_batch
            ),
        );
    }
    if cfg.per_class == 0 {
        return bad("--per-class", "must be at least 1".into());
    }
    if cfg.accum_steps == 0 {
        return bad("--accum", "must be at least 1".into());
    }
    if let Some(m) = cfg.max_grad_norm {
        if !m.is_finite() || m <= 0.0 {
            return bad("--clip-grad", format!("must be positive, got {m}"));
        }
    }
    if !(cfg.adamw.weight_decay.is_finite() && cfg.adamw.weight_decay >= 0.0) {
        return bad(
            "--weight-decay",
            format!("must be >= 0, got {}", cfg.adamw.weight_decay),
        );
    }
    if !(cfg.prefix_cache_max_gb.is_finite() && cfg.prefix_cache_max_gb >= 0.0) {
        return bad(
            "--prefix-cache-max-gb",
            format!("must be >= 0, got {}", cfg.prefix_cache_max_gb),
        );
    }
    if !(0.0..=1.0).contains(&cfg.adapter_ratio) {
        return bad(
            "--adapter-ratio",
            format!("must be in [0, 1], got {}", cfg.adapter_ratio),
        );
    }
    Ok(())
}

/// Everything a step or an evaluation needs about the data.
struct DataCtx {
    ds: Arc<Dataset>,
    pre: Preprocessor,
    tokenizer: ClipTokenizer,
    context: usize,
    images: Option<FeatureSource>,
    texts: Option<FeatureSource>,
    /// Hidden states of a `last:N` image tower's frozen prefix, by record.
    image_prefix: Option<PrefixSource>,
    /// Hidden states of a `last:N` text tower's frozen prefix, by text.
    text_prefix: Option<PrefixSource>,
    threads: usize,
}

impl DataCtx {
    fn text_input(&self, texts: &[usize], device: &Device) -> Result<TextInput, TrainError> {
        if let Some(src) = &self.texts {
            return Ok(TextInput::Features(src.rows(texts, device)));
        }
        if let Some(src) = &self.text_prefix {
            let (hidden, lengths) = src.hidden(texts, device);
            return Ok(TextInput::Hidden {
                hidden,
                from_block: src.from_block(),
                lengths,
            });
        }
        let strs: Vec<&str> = texts.iter().map(|&t| self.ds.texts[t].as_str()).collect();
        let tb = self.tokenizer.encode_batch(&strs, self.context)?;
        Ok(TextInput::Tokens {
            ids: token_tensor(&tb.ids, tb.rows, tb.len, device),
            lengths: tb.lengths,
        })
    }

    /// Whether images come from a cache (tower outputs or prefix hidden states), not pixels.
    fn images_cached(&self) -> bool {
        self.images.is_some() || self.image_prefix.is_some()
    }

    /// The cached input for `records`, if images are cached.
    fn cached_images(&self, records: &[usize], device: &Device) -> Option<ImageInput> {
        if let Some(src) = &self.images {
            return Some(ImageInput::Features(src.rows(records, device)));
        }
        let src = self.image_prefix.as_ref()?;
        Some(ImageInput::Hidden {
            hidden: src.hidden(records, device).0,
            from_block: src.from_block(),
        })
    }

    fn pixels(&self, pixels: Vec<f32>, n: usize, device: &Device) -> ImageInput {
        let s = self.pre.image_size as usize;
        ImageInput::Pixels(Tensor::from_data(
            TensorData::new(pixels, [n, 3, s, s]),
            device,
        ))
    }

    /// Embeds the evaluation images and texts with `model` (no autodiff) and ranks them.
    fn evaluate(
        &self,
        model: &TwinTowers,
        plan: &EvalPlan,
        device: &Device,
    ) -> Result<RetrievalReport, TrainError> {
        let dim = model.image_head_dim();
        let mut img = Vec::with_capacity(plan.records.len() * dim);
        const B: usize = 64;
        if self.images_cached() {
            for chunk in plan.records.chunks(B) {
                let input = self
                    .cached_images(chunk, device)
                    .expect("images are cached");
                img.extend(to_vec(model.embed_images(input)));
            }
        } else {
            let batches: Vec<Vec<usize>> = plan.records.chunks(B).map(<[usize]>::to_vec).collect();
            let loader = Loader::new(
                Arc::clone(&self.ds),
                self.pre.clone(),
                batches,
                LoaderOptions {
                    threads: self.threads,
                    ..LoaderOptions::default()
                },
            );
            for b in loader {
                let b = b?;
                if b.len() != plan.records[b.number * B..].len().min(B) {
                    return Err(TrainError::Config(format!(
                        "validation image(s) could not be read: {}",
                        b.skipped
                            .iter()
                            .map(|(_, why)| why.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )));
                }
                let n = b.len();
                img.extend(to_vec(model.embed_images(self.pixels(b.pixels, n, device))));
            }
        }
        let mut txt = Vec::with_capacity(plan.texts.len() * dim);
        for chunk in plan.texts.chunks(256) {
            txt.extend(to_vec(model.embed_texts(self.text_input(chunk, device)?)));
        }
        let positives = match (&plan.image_keys, &plan.text_to_image) {
            (Some(keys), _) => Positives::Labels {
                image_labels: keys,
                text_labels: &plan.text_keys,
            },
            (None, Some(t2i)) => Positives::Captions { text_to_image: t2i },
            (None, None) => unreachable!("an eval plan has keys or owners"),
        };
        Ok(retrieval_report(&img, &txt, dim, positives)?)
    }
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

impl TwinTowers {
    /// Size of the joint space (the image head's output).
    pub fn image_head_dim(&self) -> usize {
        match (&self.image_head.proj, &self.image_head.adapter) {
            (Some(p), _) => p.weight.shape().dims::<2>()[1],
            (None, Some(a)) => a.up.weight.shape().dims::<2>()[1],
            (None, None) => match &self.clip.visual {
                crate::clip::model::ImageTower::Vit(v) => v.proj.shape().dims::<2>()[1],
                crate::clip::model::ImageTower::ResNet(_) => {
                    self.clip.text.text_projection.shape().dims::<2>()[1]
                }
            },
        }
    }
}

/// Metric names of a report: `i2t_r1`, ..., `t2i_r10`, `mean_r1`.
pub fn metric_map(r: &RetrievalReport) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for (name, d) in [("i2t", &r.image_to_text), ("t2i", &r.text_to_image)] {
        m.insert(format!("{name}_r1"), d.recall_at_1);
        m.insert(format!("{name}_r5"), d.recall_at_5);
        m.insert(format!("{name}_r10"), d.recall_at_10);
    }
    m.insert(
        "mean_r1".into(),
        0.5 * (r.image_to_text.recall_at_1 + r.text_to_image.recall_at_1),
    );
    m.insert(
        "mean_r5".into(),
        0.5 * (r.image_to_text.recall_at_5 + r.text_to_image.recall_at_5),
    );
    m
}

fn open_dataset(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<Dataset, TrainError> {
    match &cfg.data {
        Some(p) => {
            let opts = OpenOptions {
                seed: cfg.seed,
                ..OpenOptions::default()
            };
            let ds = Dataset::open(p, &opts)?;
            let (tr, va, te) = ds.split_counts();
            obs.event(&Event::Info(format!(
                "data: {} ({} images: {tr} train, {va} val, {te} test; {} labels)",
                p.display(),
                ds.len(),
                ds.labels.len()
            )));
            if let Some(line) = ds.missing_summary() {
                obs.event(&Event::Info(line));
            }
            Ok(ds)
        }
        None => Err(TrainError::Config(
            "no dataset (the caller resolves the demo)".into(),
        )),
    }
}

/// Runs training as `cfg` says, on `device` (autodiff is added here). `demo` supplies the
/// dataset when `cfg.data` is `None` (the CLI passes the synthetic demo set).
pub fn train(
    cfg: &TrainConfig,
    device: &Device,
    demo: Option<Dataset>,
    obs: &mut dyn Observer,
) -> Result<TrainReport, TrainError> {
    validate(cfg)?;
    let device = device.clone().autodiff();
    let ds = match (cfg.data.as_ref(), demo) {
        (None, Some(d)) => {
            let (tr, va, te) = d.split_counts();
            obs.event(&Event::Info(format!(
                "data: synthetic demo set ({} images of {} labels: {tr} train, {va} val, {te} test)",
                d.len(),
                d.labels.len()
            )));
            d
        }
        _ => open_dataset(cfg, obs)?,
    };
    let ds = Arc::new(ds);
    let mode = TextMode::of(&ds);
    let train_idx = ds.indices_of(Split::Train);
    if train_idx.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: the training split is empty",
            ds.name
        )));
    }
    let batches = sampler(
        &ds,
        &train_idx,
        cfg.classes_per_batch,
        cfg.per_class,
        cfg.batch_size,
        cfg.seed,
    )?;
    let steps_per_epoch = batches.epoch_len() / cfg.accum_steps;
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "{} batches per epoch cannot make one step of --accum {} micro-batches",
            batches.epoch_len(),
            cfg.accum_steps
        )));
    }
    let total_steps = steps_per_epoch * cfg.epochs;

    let prepared = prepare_model(cfg, &device, obs)?;
    let Prepared {
        mut model,
        mut card,
        tokenizer,
        tokenizer_src,
    } = prepared;
    let fp = fingerprint(cfg, &card, &ds);
    let ck_dir = checkpoint::checkpoint_dir(&cfg.out);
    let objective = build_objective(&cfg.loss)?;
    if cfg.loss.xbm > 0 && cfg.accum_steps > 1 {
        return Err(TrainError::Config(
            "--xbm cannot be combined with --accum above 1 yet (each micro-step would enqueue the batch)".into(),
        ));
    }
    if let Some((log_scale, bias)) = objective.initial_logits() {
        model = model.with_sigmoid_logits(log_scale, bias, &device);
    }

    // Resume: the checkpoint's weights replace the prepared ones (keeping parameter ids).
    let mut state = if cfg.resume {
        let dir = checkpoint::find_checkpoint(&ck_dir)
            .ok_or_else(|| checkpoint::CheckpointError::Missing(cfg.out.clone()))?;
        let st = checkpoint::load_state(&dir)?;
        if st.fingerprint != fp {
            return Err(checkpoint::CheckpointError::Mismatch {
                path: dir,
                why: "it was written for a different model, data or training setup (architecture, heads, initial weights, loss, dataset or batch shape differ); train into a new --out folder instead".into(),
            }
            .into());
        }
        model = checkpoint::load_model(&dir, model)?;
        obs.event(&Event::Info(format!(
            "resuming from {} at step {} (epoch {}, batch {})",
            dir.display(),
            st.step,
            st.epoch + 1,
            st.batch_in_epoch
        )));
        Some((dir, st))
    } else {
        None
    };

    model = model.with_freeze(
        cfg.freeze_image,
        cfg.freeze_text,
        objective.uses_logit_scale(),
    )?;
    let split = split_params(&model);
    obs.event(&Event::Info(format!(
        "training {} parameters ({} frozen); image tower {}, text tower {}, {} heads into {} dims; loss {}",
        split.trainable_values,
        split.frozen_values,
        cfg.freeze_image,
        cfg.freeze_text,
        cfg.head,
        card.joint_dim,
        objective.describe()
    )));
    let mut optim = build_adamw(&cfg.adamw, &split);
    let schedule = CosineSchedule {
        base_lr: cfg.lr,
        warmup_steps: cfg.warmup_steps.min(total_steps.saturating_sub(1)),
        total_steps,
        min_lr: cfg.min_lr,
    };
    let mut st = match state.take() {
        Some((dir, st)) => {
            optim = checkpoint::load_optimizer(&dir, optim)?;
            st
        }
        None => TrainState {
            format: STATE_FORMAT,
            fingerprint: fp.clone(),
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: cfg.seed,
            schedule,
            history: vec![],
            best: None,
            epochs_since_best: 0,
            elapsed_s: 0.0,
            pairs_seen: 0,
            images_seen: 0,
            config: serde_json::to_value(cfg).unwrap_or_default(),
        },
    };
    let mut stepper = Stepper {
        optim,
        schedule: st.schedule,
        max_grad_norm: cfg.max_grad_norm,
        step: st.step,
        epoch: st.epoch,
    };

    // Data: pixels through the loader, or the feature cache for locked towers.
    let pre = Preprocessor::clip(card.image_size as u32);
    let mut ctx = DataCtx {
        ds: Arc::clone(&ds),
        pre,
        tokenizer: tokenizer.clone(),
        context: card.context_length,
        images: None,
        texts: None,
        image_prefix: None,
        text_prefix: None,
        threads: cfg.threads.max(1),
    };
    if cfg.feature_cache {
        let cache = FeatureCache::new(
            cfg.cache_dir
                .clone()
                .unwrap_or_else(|| default_cache_dir(&cfg.out)),
        );
        let eval_records: Vec<usize> = (0..ds.len()).collect();
        if cfg.freeze_image == FreezePolicy::Locked && !cfg.augment {
            let (src, hit) =
                cache.image_features(&model, &ds, &eval_records, &ctx.pre, cfg.threads, &device)?;
            obs.event(&Event::Info(format!(
                "feature cache: image tower locked, {} image features {} {}",
                src.len(),
                if hit { "reused from" } else { "computed into" },
                src.path().display()
            )));
            ctx.images = Some(src);
        }
        if cfg.freeze_text == FreezePolicy::Locked {
            let (src, hit) =
                cache.text_features(&model, &ds, &ctx.tokenizer, ctx.context, &device)?;
            obs.event(&Event::Info(format!(
                "feature cache: text tower locked, {} text features {} {}",
                src.len(),
                if hit { "reused from" } else { "computed into" },
                src.path().display()
            )));
            ctx.texts = Some(src);
        }
        let max_bytes = (cfg.prefix_cache_max_gb * 1e9) as u64;
        let describe = |tower: &str, policy: FreezePolicy, what: &str, p: &Prefix| {
            match p {
            Prefix::Ready { source, reused } => format!(
                "prefix cache: {tower} tower {policy}, hidden states after its {} frozen block(s) for {} {what} ({:.1} MB) {} {}",
                source.from_block(),
                source.len(),
                source.bytes() as f64 / 1e6,
                if *reused { "reused from" } else { "computed into" },
                source.path().display()
            ),
            Prefix::TooLarge { bytes } => format!(
                "prefix cache: {tower} tower {policy}, the frozen blocks' hidden states would take {:.1} GB (over --prefix-cache-max-gb {}), so they run every step",
                *bytes as f64 / 1e9,
                cfg.prefix_cache_max_gb
            ),
        }
        };
        if let (FreezePolicy::LastBlocks(n), false, true) = (
            cfg.freeze_image,
            cfg.augment,
            max_bytes > 0 && model.clip.visual.as_vit().is_some(),
        ) {
            let from = model.image_blocks() - n;
            let p = cache.image_prefix(
                &model,
                from,
                &ds,
                &eval_records,
                &ctx.pre,
                cfg.threads,
                max_bytes,
                &device,
            )?;
            obs.event(&Event::Info(describe(
                "image",
                cfg.freeze_image,
                "images",
                &p,
            )));
            if let Prefix::Ready { source, .. } = p {
                ctx.image_prefix = Some(source);
            }
        }
        if let (FreezePolicy::LastBlocks(n), true) = (cfg.freeze_text, max_bytes > 0) {
            let from = model.text_blocks() - n;
            let p = cache.text_prefix(
                &model,
                from,
                &ds,
                &ctx.tokenizer,
                ctx.context,
                max_bytes,
                &device,
            )?;
            obs.event(&Event::Info(describe("text", cfg.freeze_text, "texts", &p)));
            if let Prefix::Ready { source, .. } = p {
                ctx.text_prefix = Some(source);
            }
        }
    }

    // After the caches: cached features and prefixes are f32 inference products, shared
    // between runs whatever their dtype.
    if cfg.dtype == super::config::TowerDtype::Bf16 {
        obs.event(&Event::Info(bf16_notice(&model, &device)?));
        model.clip.set_matmul_dtype(cfg.dtype.matmul_dtype());
    }
    let val_plan = eval_plan(&ds, Split::Val, mode);
    let has_val = !val_plan.records.is_empty() && !val_plan.texts.is_empty();
    if !has_val {
        obs.event(&Event::Info(
            "no validation split: the last epoch's weights are kept".into(),
        ));
    }
    let metrics_path = cfg.out.join("metrics.jsonl");
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| TrainError::Io(cfg.out.clone(), e.to_string()))?;
    remove_stale_temps(&cfg.out);
    let mut log = if cfg.resume {
        MetricsLog::resume(&metrics_path, st.step)?
    } else {
        MetricsLog::create(&metrics_path)?
    };

    let best_dir = cfg.out.join("best");
    if !cfg.resume && has_val {
        let r = ctx.evaluate(&model.valid(), &val_plan, &device)?;
        let rec = EpochRecord {
            epoch: 0,
            step: 0,
            train_loss: None,
            metrics: metric_map(&r),
        };
        obs.event(&Event::Epoch(rec.clone()));
        st.history.push(rec);
    }
    obs.event(&Event::Start {
        total_steps,
        done: st.step,
    });

    let session_start = Instant::now();
    let elapsed_before = st.elapsed_s;
    let mut early_stopped = false;
    let mut steps_this_run = 0usize;
    let micro = cfg.accum_steps;
    let mut interrupted = false;
    'epochs: while st.epoch < cfg.epochs {
        let epoch = st.epoch;
        stepper.epoch = epoch;
        let all_batches = batches.epoch(epoch as u64);
        let usable = steps_per_epoch * micro;
        // Records of each micro-batch, already trained ones left empty so batch numbers (and
        // the loader's augmentation seeds) stay those of an uninterrupted run.
        let plans: Vec<BatchPlan> = all_batches[..usable]
            .iter()
            .enumerate()
            .map(|(b, pos)| {
                let recs: Vec<usize> = pos.iter().map(|&p| train_idx[p]).collect();
                plan_batch(&ds, mode, recs, cfg.seed, epoch, b)
            })
            .collect();
        let first = st.batch_in_epoch;
        let mut loader = if !ctx.images_cached() {
            let lists: Vec<Vec<usize>> = plans
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if i < first {
                        Vec::new()
                    } else {
                        p.records.clone()
                    }
                })
                .collect();
            let opts = LoaderOptions {
                threads: ctx.threads,
                augment: cfg.augment.then(siam_data::augment::Augment::default),
                seed: data_seed(cfg.seed, epoch),
                ..LoaderOptions::default()
            };
            Some(Loader::new(Arc::clone(&ds), ctx.pre.clone(), lists, opts))
        } else {
            None
        };
        let mut loss_sum = 0.0;
        let mut loss_n = 0usize;
        let mut b = 0usize;
        while b < usable {
            let mut micro_batches = Vec::with_capacity(micro);
            let mut n_images = 0usize;
            for j in b..b + micro {
                let loaded = match loader.as_mut() {
                    Some(l) => Some(
                        l.next()
                            .ok_or_else(|| TrainError::Config("loader ended early".into()))??,
                    ),
                    None => None,
                };
                if j < first {
                    continue;
                }
                let plan = &plans[j];
                let images = match (ctx.cached_images(&plan.records, &device), loaded) {
                    (Some(input), _) => input,
                    (None, Some(batch)) => {
                        if batch.len() != plan.records.len() {
                            return Err(TrainError::Config(format!(
                                "training image(s) could not be read: {}",
                                batch
                                    .skipped
                                    .iter()
                                    .map(|(n, w)| format!("{n} ({w})"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )));
                        }
                        let n = batch.len();
                        ctx.pixels(batch.pixels, n, &device)
                    }
                    (None, None) => unreachable!("a loader runs when images are not cached"),
                };
                n_images += plan.records.len();
                micro_batches.push(TrainBatch {
                    images,
                    image_labels: plan.image_labels.clone(),
                    texts: ctx.text_input(&plan.texts, &device)?,
                    text_labels: plan.text_labels.clone(),
                });
            }
            b += micro;
            if micro_batches.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            let result = if micro_batches.len() == 1 {
                stepper.step(model, micro_batches.pop().expect("one"), objective.as_ref())
            } else {
                stepper.step_accumulated(model, micro_batches, objective.as_ref())
            };
            let out = match result {
                Ok((m, out)) => {
                    model = m;
                    out
                }
                Err((_, e)) => {
                    let last = checkpoint::find_checkpoint(&ck_dir);
                    return Err(TrainError::Step {
                        source: e,
                        last_checkpoint: last,
                    });
                }
            };
            let dt = t0.elapsed().as_secs_f64().max(1e-9);
            st.pairs_seen += out.pairs;
            st.images_seen += n_images as u64;
            st.batch_in_epoch = b;
            st.step = stepper.step;
            loss_sum += out.loss;
            loss_n += 1;
            let m = StepMetrics {
                step: st.step,
                epoch: epoch + 1,
                loss: out.loss,
                loss_i2t: out.loss_i2t,
                loss_t2i: out.loss_t2i,
                active_fraction: out.active_fraction,
                lr: out.lr,
                grad_norm: out.grad_norm,
                pairs_per_s: out.pairs as f64 / dt,
                time_s: elapsed_before + session_start.elapsed().as_secs_f64(),
            };
            log.push(&m)?;
            obs.event(&Event::Step(m));
            steps_this_run += 1;
            let stop_now = cfg.max_steps.is_some_and(|s| steps_this_run >= s);
            if (cfg.checkpoint_every > 0 && st.step % cfg.checkpoint_every == 0 && b < usable)
                || (stop_now && b < usable)
            {
                st.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
                checkpoint::save(&ck_dir, &model, &stepper.optim, &st)?;
                obs.event(&Event::Checkpoint(ck_dir.clone()));
            }
            if stop_now && b < usable {
                interrupted = true;
                break 'epochs;
            }
        }
        drop(loader);
        // End of epoch: validate, keep the best, checkpoint.
        st.epoch += 1;
        st.batch_in_epoch = 0;
        let train_loss = (loss_n > 0).then(|| loss_sum / loss_n as f64);
        let mut metrics = BTreeMap::new();
        if has_val {
            let r = ctx.evaluate(&model.valid(), &val_plan, &device)?;
            metrics = metric_map(&r);
            let value = *metrics.get(&cfg.select_metric).ok_or_else(|| {
                TrainError::Config(format!(
                    "--select-metric {}: unknown; one of {}",
                    cfg.select_metric,
                    metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            if st.best.is_none_or(|(b, _)| value > b) {
                st.best = Some((value, st.epoch));
                st.epochs_since_best = 0;
                folder::save(&best_dir, &model.valid(), &card, tokenizer_src.as_deref())?;
            } else {
                st.epochs_since_best += 1;
            }
        }
        let rec = EpochRecord {
            epoch: st.epoch,
            step: st.step,
            train_loss,
            metrics,
        };
        obs.event(&Event::Epoch(rec.clone()));
        st.history.push(rec);
        st.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
        checkpoint::save(&ck_dir, &model, &stepper.optim, &st)?;
        obs.event(&Event::Checkpoint(ck_dir.clone()));
        if let Some(p) = cfg.patience {
            if has_val && st.epochs_since_best >= p && st.epoch < cfg.epochs {
                obs.event(&Event::Info(format!(
                    "early stop: {} did not improve for {p} epoch(s)",
                    cfg.select_metric
                )));
                early_stopped = true;
                break;
            }
        }
        if cfg.max_steps.is_some_and(|s| steps_this_run >= s) && st.epoch < cfg.epochs {
            interrupted = true;
            break;
        }
    }

    // The output folder: the best epoch's weights if validated, else the last.
    card.training = serde_json::to_value(cfg).unwrap_or_default();
    let (kept_epoch, final_model) = match st.best {
        Some((_, e)) if best_dir.join(folder::CARD_FILE).is_file() => {
            let (m, _) = folder::load(&best_dir, &device.clone().without_autodiff())?;
            (e, m)
        }
        _ => (st.epoch, model.valid()),
    };
    if !interrupted {
        folder::save(&cfg.out, &final_model, &card, tokenizer_src.as_deref())?;
    }
    let after = if has_val && !interrupted {
        Some(metric_map(&ctx.evaluate(
            &final_model,
            &val_plan,
            &device.clone().without_autodiff(),
        )?))
    } else {
        None
    };
    if !interrupted {
        write_curves(&cfg.out, &metrics_path, &st.history)?;
    }
    let train_seconds = st
        .elapsed_s
        .max(elapsed_before + session_start.elapsed().as_secs_f64());
    Ok(TrainReport {
        config: cfg.clone(),
        initial_weights: card.initial_weights.clone(),
        before: st
            .history
            .iter()
            .find(|r| r.epoch == 0)
            .map(|r| r.metrics.clone()),
        after,
        kept_epoch,
        steps: st.step,
        epochs: st.epoch,
        early_stopped,
        finished: !interrupted,
        train_seconds,
        pairs_per_second: st.pairs_seen as f64 / train_seconds.max(1e-9),
        images_per_second: st.images_seen as f64 / train_seconds.max(1e-9),
        output: cfg.out.clone(),
        history: st.history.clone(),
        trainable_parameters: split.trainable_values,
        frozen_parameters: split.frozen_values,
    })
}

/// Removes the temporary files an earlier invocation killed in this output folder left behind
/// (the run owns its folder; see [`crate::io::remove_stale_temps`]).
fn remove_stale_temps(out: &Path) {
    let files = [folder::WEIGHTS_FILE, folder::CARD_FILE, "tokenizer.json"];
    for name in files.iter().chain(&[
        "metrics.jsonl",
        "loss.png",
        "recall.png",
        "best",
        "checkpoint",
    ]) {
        crate::io::remove_stale_temps(&out.join(name));
    }
    for name in files {
        crate::io::remove_stale_temps(&out.join("best").join(name));
    }
}

fn data_seed(seed: u64, epoch: usize) -> u64 {
    super::data::mix(seed ^ 0x6175_676d ^ (epoch as u64).wrapping_mul(0x1000_0000_01b3))
}

/// `<out>/../.siam-cache`.
pub fn default_cache_dir(out: &Path) -> PathBuf {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(".siam-cache")
}

/// `curves.png`: training loss per step, and validation recall@1 per epoch.
fn write_curves(out: &Path, metrics: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    let steps = super::metrics::read(metrics).unwrap_or_default();
    let loss: Vec<(f32, f32)> = steps
        .iter()
        .map(|m| (m.step as f32, m.loss as f32))
        .collect();
    crate::eval::plot::line_chart(
        &[("train loss".to_string(), loss)],
        "training loss",
        "step",
        "loss",
        &out.join("loss.png"),
    )?;
    if history.iter().any(|h| !h.metrics.is_empty()) {
        let series: Vec<(String, Vec<(f32, f32)>)> = ["i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"]
            .iter()
            .map(|k| {
                (
                    k.replace("_r", " recall@"),
                    history
                        .iter()
                        .filter_map(|h| h.metrics.get(*k).map(|v| (h.epoch as f32, *v as f32)))
                        .collect(),
                )
            })
            .collect();
        crate::eval::plot::line_chart(
            &series,
            "validation recall",
            "epoch",
            "recall",
            &out.join("recall.png"),
        )?;
    }
    Ok(())
}
