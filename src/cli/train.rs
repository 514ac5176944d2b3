//! `siam train`: arguments, the progress display, and the call into [`crate::train::train`].

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

use crate::device::{self, Backend, DeviceSpec};
use crate::train::config::{LossSettings, TowerDtype};
use crate::train::heads::HeadKind;
use crate::train::optim::AdamWSettings;
use crate::train::twin::FreezePolicy;
use crate::train::{Event, Observer, TrainConfig, TrainReport};

/// Images per label of the embedded demo set.
const DEMO_PER_CLASS: usize = 40;
/// Epochs of the embedded demo (recall@1 from chance to ~0.8 on the validation split).
const DEMO_EPOCHS: usize = 15;
/// Side of the demo images (the tiny architecture's input size).
const DEMO_IMAGE_SIZE: u32 = 64;

/// Fine-tune CLIP's towers with metric learning (or train a small CLIP from scratch).
///
/// With no --data and no --model, trains the built-in tiny CLIP architecture from random
/// weights on the synthetic shapes demo set.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Starting checkpoint: a siam model folder, a Hugging Face CLIP folder, or an
    /// OpenAI/open_clip state dict (.safetensors/.pt, with --arch). Omit to start from random
    /// weights of --arch.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Architecture: a preset (tiny, ViT-B-32, ViT-B-32-quickgelu, ViT-B-16, ViT-L-14, RN50, ...)
    /// or an open_clip model-config JSON file. Without --model: random initial weights.
    #[arg(long)]
    pub arch: Option<String>,
    /// Dataset (image folder, captions table, Karpathy JSON, CIFAR, webdataset shards).
    /// Omit for the synthetic demo set.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output model folder (also holds checkpoint/, metrics.jsonl, loss.png, recall.png).
    #[arg(long, short = 'o', default_value = "siam-model")]
    pub out: PathBuf,
    /// Loss: contrastive, pairwise, triplet, multi-similarity or sigmoid (SigLIP: learnable
    /// logit scale from ln 10 and bias from -10, saved in checkpoints); default triplet; with
    /// --prompt, CoOp's cross-entropy over the class prompts.
    #[arg(long)]
    pub loss: Option<String>,
    /// Miner: all, hard, semihard, max-violation, distance-weighted, multi-similarity, none
    /// (default: the loss's usual miner).
    #[arg(long)]
    pub miner: Option<String>,
    /// Triplet margin (cosine similarity units).
    #[arg(long, default_value_t = 0.2)]
    pub margin: f64,
    /// Pairwise loss: positive similarity target.
    #[arg(long, default_value_t = 0.8)]
    pub pos_margin: f64,
    /// Pairwise loss: negative similarity ceiling.
    #[arg(long, default_value_t = 0.3)]
    pub neg_margin: f64,
    /// Contrastive loss: initial temperature (random-init models; checkpoints keep theirs).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Cross-batch memory: keep the last SIZE reference embeddings per direction (texts for
    /// image anchors, images for text anchors) as extra references (0: off).
    #[arg(long, default_value_t = 0, value_name = "SIZE")]
    pub xbm: usize,
    /// Steps before the cross-batch memory is used (it fills from the start).
    #[arg(long, default_value_t = 0, value_name = "STEP")]
    pub xbm_start: usize,
    /// Labels per batch (P) for class-balanced batches.
    #[arg(long, default_value_t = 6)]
    pub classes_per_batch: usize,
    /// Images per label per batch (K).
    #[arg(long, default_value_t = 4)]
    pub per_class: usize,
    /// Batch size for datasets without labels.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (gradient accumulation keeping all negatives).
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Epochs (default 15 on the demo set, 10 otherwise).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Peak learning rate (after warm-up).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// AdamW weight decay (never applied to norms, biases and the logit scale).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad: f64,
    /// Projection heads: linear, adapter (CLIP-Adapter residual MLP) or identity.
    #[arg(long, default_value = "linear")]
    pub head: String,
    /// Joint embedding size (default: the CLIP's).
    #[arg(long)]
    pub joint_dim: Option<usize>,
    /// Adapter mixing ratio alpha.
    #[arg(long, default_value_t = 0.2)]
    pub adapter_ratio: f64,
    /// Image tower: locked, last:N or full.
    #[arg(long, default_value = "full")]
    pub freeze_image: String,
    /// Text tower: locked, last:N or full.
    #[arg(long, default_value = "full")]
    pub freeze_text: String,
    /// Random-resized-crop and flip augmentation.
    #[arg(long)]
    pub augment: bool,
    /// Seed (a CPU run with the same seed is reproducible).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation metric that picks the kept checkpoint (mean_r1, i2t_r1, t2i_r1, i2t_r5, ...).
    #[arg(long, default_value = "mean_r1")]
    pub select_metric: String,
    /// Stop after this many epochs without improvement.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Also checkpoint every N steps (0: at epoch ends only).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Do not use the feature cache for locked towers.
    #[arg(long)]
    pub no_cache: bool,
    /// Feature cache folder (default: <out>/../.siam-cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Largest cache (GB) of a last:N tower's frozen blocks' hidden states (images: only
    /// without --augment); larger ones run the frozen blocks every step. 0: never cache.
    /// Per item: 150 KiB for a ViT-B/32 image, 591 KiB for ViT-B/16, ~2 KiB per text token.
    #[arg(long, default_value_t = crate::train::config::default_prefix_cache_max_gb())]
    pub prefix_cache_max_gb: f64,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps (the run can be resumed).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// flex, tch or cuda (default: flex on cpu, the GPU backend on cuda).
    #[arg(long)]
    pub backend: Option<String>,
    /// Tower matmul type: f32, or bf16 as PyTorch autocast (linears, attention, patch
    /// embedding and projections in bf16; f32 master weights, norms, softmax, heads, losses
    /// and mining; a ResNet image tower stays f32; flex emulates it, slower than f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Write a JSON summary (config, recall before/after, time, throughput) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Do not build `<out>/index` (an HNSW index of the dataset for `siam query`) after training.
    #[arg(long)]
    pub no_index: bool,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub prompt: super::prompt::PromptArgs,
}

impl TrainArgs {
    /// The resolved configuration.
    pub fn config(&self) -> Result<TrainConfig> {
        let parse = |what: &str, r: std::result::Result<FreezePolicy, String>| {
            r.map_err(|e| anyhow::anyhow!("--{what}: {e}"))
        };
        Ok(TrainConfig {
            model: self.model.clone(),
            arch: self.arch.clone(),
            data: self.data.clone(),
            demo_per_class: DEMO_PER_CLASS,
            out: self.out.clone(),
            loss: LossSettings {
                loss: self.loss.clone().unwrap_or_else(|| "triplet".into()),
                miner: self.miner.clone(),
                margin: self.margin,
                pos_margin: self.pos_margin,
                neg_margin: self.neg_margin,
                temperature: self.temperature,
                xbm: self.xbm,
                xbm_start: self.xbm_start,
                ..LossSettings::default()
            },
            classes_per_batch: self.classes_per_batch,
            per_class: self.per_class,
            batch_size: self.batch_size,
            accum_steps: self.accum,
            epochs: self
                .epochs
                .unwrap_or(if self.data.is_none() { DEMO_EPOCHS } else { 10 }),
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup,
            adamw: AdamWSettings {
                weight_decay: self.weight_decay,
                ..AdamWSettings::default()
            },
            max_grad_norm: (self.clip_grad > 0.0).then_some(self.clip_grad),
            head: self
                .head
                .parse::<HeadKind>()
                .map_err(|e| anyhow::anyhow!("--head: {e}"))?,
            joint_dim: self.joint_dim,
            adapter_ratio: self.adapter_ratio,
            adapter_reduction: 4,
            freeze_image: parse("freeze-image", self.freeze_image.parse())?,
            freeze_text: parse("freeze-text", self.freeze_text.parse())?,
            augment: self.augment,
            seed: self.seed,
            select_metric: self.select_metric.clone(),
            patience: self.patience,
            checkpoint_every: self.checkpoint_every,
            feature_cache: !self.no_cache,
            cache_dir: self.cache_dir.clone(),
            prefix_cache_max_gb: self.prefix_cache_max_gb,
            dtype: self
                .dtype
                .parse::<TowerDtype>()
                .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?,
            threads: self.threads,
            resume: self.resume,
            max_steps: self.max_steps,
        })
    }
}

/// Draws the progress bar and prints the run's messages to stderr.
struct Console {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Console {
    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(s),
            _ => {
                crate::console::err_line(format_args!("{s}"));
            }
        }
    }
}

fn fmt_metrics(m: &std::collections::BTreeMap<String, f64>) -> String {
    ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
        .iter()
        .filter_map(|k| {
            m.get(*k)
                .map(|v| format!("{} {:.3}", k.replace("_r", " R@"), v))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

impl Observer for Console {
    fn event(&mut self, e: &Event) {
        match e {
            Event::Info(s) => self.line(s),
            Event::Start { total_steps, done } => {
                if !self.quiet {
                    let bar = ProgressBar::with_draw_target(
                        Some(*total_steps as u64),
                        ProgressDrawTarget::stderr(),
                    );
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
                        )
                        .expect("valid template"),
                    );
                    bar.set_position(*done as u64);
                    bar.enable_steady_tick(Duration::from_millis(500));
                    self.bar = Some(bar);
                }
            }
            Event::Step(m) => {
                if let Some(b) = &self.bar {
                    b.set_position(m.step as u64);
                    b.set_message(format!(
                        "loss {:.4}  active {:.2}  {:.0} pairs/s",
                        m.loss, m.active_fraction, m.pairs_per_s
                    ));
                }
            }
            Event::Epoch(r) => {
                let what = if r.epoch == 0 {
                    "before training".to_string()
                } else {
                    format!(
                        "epoch {} (loss {:.4})",
                        r.epoch,
                        r.train_loss.unwrap_or(f64::NAN)
                    )
                };
                if !r.metrics.is_empty() {
                    self.line(&format!("{what}: {}", fmt_metrics(&r.metrics)));
                } else {
                    self.line(&what);
                }
            }
            Event::Checkpoint(_) => {}
        }
    }
}

/// Runs `siam train`.
pub fn run(args: TrainArgs) -> Result<()> {
    if args.prompt.prompt.is_some() {
        return super::prompt::run(&args);
    }
    anyhow::ensure!(
        args.prompt.weight_by.is_none(),
        "--weight-by confidence weights CoOp's cross-entropy; use it with --prompt coop:N"
    );
    let cfg = args.config()?;
    {
        use crate::output::{check_replaceable, OutputKind};
        check_replaceable(&cfg.out, OutputKind::TrainRun)?;
        if let Some(p) = &args.report {
            check_replaceable(p, OutputKind::TrainReport)?;
        }
    }
    // Held until the model, the index and the report are written; a second writer of the same
    // folder (a fresh run or a --resume) is refused while this process lives.
    let _lock = crate::output::OutputLock::acquire(&cfg.out, &crate::output::command_line())?;
    let spec: DeviceSpec = args.device.parse()?;
    let backend = args
        .backend
        .as_deref()
        .map(str::parse::<Backend>)
        .transpose()?;
    let device = device::open(spec, backend)?;
    let demo = cfg
        .data
        .is_none()
        .then(|| siam_data::synthetic::demo(cfg.demo_per_class, DEMO_IMAGE_SIZE, cfg.seed));
    let index_data = demo.clone();
    if cfg.data.is_none() {
        crate::console::err_line(format_args!(
            "no --data: training on the synthetic shapes demo set ({} labels x {} images)",
            12, cfg.demo_per_class
        ));
    }
    let mut console = Console {
        bar: None,
        quiet: args.quiet,
    };
    let result = crate::train::train(&cfg, &device, demo, &mut console);
    if let Some(b) = console.bar.take() {
        b.finish_and_clear();
    }
    let report: TrainReport = result?;
    summarise(&report);
    if report.finished && !args.no_index {
        index_output(&cfg, index_data, &device)?;
    }
    if let Some(p) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        crate::output::write_file(p, crate::output::OutputKind::TrainReport, &json)
            .with_context(|| format!("writing --report {}", p.display()))?;
        crate::console::err_line(format_args!("report: {}", p.display()));
    }
    Ok(())
}

/// Builds `<out>/index` over every record of the training dataset with the trained model, so
/// `siam query --index <out>` answers at once.
fn index_output(
    cfg: &TrainConfig,
    demo: Option<siam_data::dataset::Dataset>,
    device: &burn::tensor::Device,
) -> Result<()> {
    let ds = match (demo, &cfg.data) {
        (Some(d), _) => d,
        (None, Some(p)) => siam_data::dataset::Dataset::open(
            p,
            &siam_data::dataset::OpenOptions {
                seed: cfg.seed,
                ..Default::default()
            },
        )?,
        (None, None) => return Ok(()),
    };
    let enc = crate::train::Encoder::load(&cfg.out, None, device)?;
    let records: Vec<usize> = (0..ds.len()).collect();
    let out = cfg.out.join("index");
    let (ni, nt) = crate::cli::index::build_index(
        &enc,
        &cfg.out,
        None,
        std::sync::Arc::new(ds),
        &records,
        &out,
        crate::index::HnswParams::default(),
        64,
        cfg.threads.max(1),
    )?;
    crate::console::err_line(format_args!(
        "index: {ni} images and {nt} texts in {} (try `siam query --index {} --text \"a large red circle on a white background\"`)",
        out.display(),
        cfg.out.display()
    ));
    Ok(())
}

fn summarise(r: &TrainReport) {
    if !r.finished {
        crate::console::err_line(format_args!(
            "stopped after {} steps (--max-steps); continue with --resume (checkpoint in {})",
            r.steps,
            r.output.join("checkpoint").display()
        ));
        return;
    }
    if let crate::train::folder::InitialWeights::Random { arch, .. } = &r.initial_weights {
        crate::console::err_line(format_args!(
            "note: {arch} was trained from RANDOM initial weights (no checkpoint given)"
        ));
    }
    if let (Some(b), Some(a)) = (&r.before, &r.after) {
        for k in ["i2t_r1", "t2i_r1"] {
            if let (Some(x), Some(y)) = (b.get(k), a.get(k)) {
                crate::console::err_line(format_args!(
                    "{}: {:.3} before -> {:.3} after",
                    k.replace("_r", " recall@"),
                    x,
                    y
                ));
            }
        }
    }
    crate::console::err_line(format_args!(
        "{} steps in {:.1} s ({:.0} pairs/s, {:.1} images/s); model (epoch {}) written to {}",
        r.steps,
        r.train_seconds,
        r.pairs_per_second,
        r.images_per_second,
        r.kept_epoch,
        r.output.display()
    ));
}
