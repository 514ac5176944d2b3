//! The training run as phases, each a method of [`Trainer`]:
//!
//! 1. [`Trainer::setup`]: data, batch sampler, model (or the checkpoint to resume), freeze
//!    policies, optimiser and schedule;
//! 2. [`Trainer::attach_caches`]: locked towers' features and `last:N` towers' frozen-prefix
//!    hidden states from the on-disk caches, then `--dtype`;
//! 3. [`Trainer::begin`]: the output folder, the metrics log, validation before training;
//! 4. [`Trainer::run_epoch`]: one pass of optimiser steps, with checkpoints inside the epoch
//!    when asked (`--checkpoint-every`, `--max-steps`);
//! 5. [`Trainer::end_epoch`]: validation, keeping the best weights, the epoch's checkpoint,
//!    early stopping;
//! 6. [`Trainer::finish`]: the model folder (best epoch's weights), curves and the report.
//!
//! [`train`] runs them in order; a run that fails before its first checkpoint removes the
//! output folder it created.

use burn::module::Module;
use burn::tensor::Device;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use siam_data::dataset::{Dataset, Split};
use siam_data::pipeline::{Loader, LoaderOptions};
use siam_data::preprocess::Preprocessor;

use super::cache::{FeatureCache, Prefix};
use super::checkpoint::{self, EpochRecord, TrainState, STATE_FORMAT};
use super::config::{TowerDtype, TrainConfig, WeightBy};
use super::data::{
    eval_plan, mining_label, plan_batch, sampler, BatchPlan, BatchSampler, EvalPlan, TextMode,
};
use super::health::{collapse_warning, RunShape, StatsMean};
use super::inputs::{describe_skipped, Inputs};
use super::metrics::{MetricsLog, StepMetrics};
use super::objective::build_objective;
use super::optim::{build_adamw, split_params, ParamSplit};
use super::report::{metric_map, write_curves, Event, Observer, TrainReport};
use super::schedule::CosineSchedule;
use super::setup::{bf16_notice, fingerprint, open_data, prepare_model, Prepared};
use super::step::{BatchWeights, Objective, StepOutcome, Stepper, TrainBatch};
use super::TrainError;
use crate::model::folder::{self, ModelCard};
use crate::model::twin::{FreezePolicy, TwinTowers};

/// Runs training as `cfg` says, on `device` (autodiff is added here). `demo` supplies the
/// dataset when `cfg` names none (default: the synthetic demo set of `cfg`). Every option is
/// checked before anything is read or written; a run that fails before its first checkpoint
/// leaves no output folder behind (it removes only what it created).
pub fn train(
    cfg: &TrainConfig,
    device: &Device,
    demo: Option<Dataset>,
    obs: &mut dyn Observer,
) -> Result<TrainReport, TrainError> {
    cfg.validate()?;
    super::memory::keep_freed_memory();
    let created = first_missing(&cfg.out);
    let result = run(cfg, device, demo, obs);
    if let (Err(_), Some(created)) = (&result, created) {
        let ck = checkpoint::checkpoint_dir(&cfg.out);
        if checkpoint::find_checkpoint(&ck).is_none() {
            // Best effort: the error being returned says what went wrong.
            let _ = std::fs::remove_dir_all(created);
        }
    }
    result
}

/// The outermost folder of `path` that does not exist yet (what creating `path` creates).
fn first_missing(path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return None;
    }
    let mut top = path.to_path_buf();
    while let Some(parent) = top.parent() {
        if parent.as_os_str().is_empty() || parent.exists() {
            break;
        }
        top = parent.to_path_buf();
    }
    Some(top)
}

fn run(
    cfg: &TrainConfig,
    device: &Device,
    demo: Option<Dataset>,
    obs: &mut dyn Observer,
) -> Result<TrainReport, TrainError> {
    let (mut t, mut model) = Trainer::setup(cfg, device, demo, obs)?;
    t.attach_caches(&mut model, obs)?;
    t.begin(&model, obs)?;
    while t.st.epoch < t.epochs {
        let (m, interrupted) = t.run_epoch(model, obs)?;
        model = m;
        if interrupted {
            t.interrupted = true;
            break;
        }
        if t.end_epoch(&model, obs)? {
            break;
        }
    }
    t.finish(model)
}

/// A run in progress: everything the phases share except the model, which each phase takes
/// and gives back (a step consumes it).
struct Trainer<'a> {
    cfg: &'a TrainConfig,
    /// The autodiff device.
    device: Device,
    ds: Arc<Dataset>,
    mode: TextMode,
    /// Training records.
    train_idx: Vec<usize>,
    /// Loss weight of every dataset record (`--weight-by confidence`).
    record_weights: Option<Vec<f32>>,
    batches: BatchSampler,
    steps_per_epoch: usize,
    total_steps: usize,
    epochs: usize,
    card: ModelCard,
    tokenizer_src: Option<PathBuf>,
    objective: Box<dyn Objective>,
    params: ParamSplit,
    stepper: Stepper,
    st: TrainState,
    inputs: Inputs,
    ck_dir: PathBuf,
    val_plan: Option<EvalPlan>,
    log: Option<MetricsLog>,
    session_start: Instant,
    elapsed_before: f64,
    steps_this_run: usize,
    /// Mean loss of the epoch that just ran (`None`: no step in it).
    epoch_loss: Option<f64>,
    /// Mean learning statistics of the epoch that is running.
    epoch_stats: StatsMean,
    /// Collapse warnings raised so far.
    warnings: Vec<String>,
    early_stopped: bool,
    interrupted: bool,
}

/// One optimiser step's micro-batches and their image count.
type StepBatches = (Vec<TrainBatch>, usize);

impl<'a> Trainer<'a> {
    /// Phase 1: data, sampler, model (or the checkpoint to resume), freezing, optimiser.
    fn setup(
        cfg: &'a TrainConfig,
        device: &Device,
        demo: Option<Dataset>,
        obs: &mut dyn Observer,
    ) -> Result<(Self, TwinTowers), TrainError> {
        let device = device.clone().autodiff();
        let (ds, split) = open_data(cfg, demo, obs)?;
        let ds = Arc::new(ds);
        let mode = TextMode::of(&ds);
        let train_idx = ds.indices_of(Split::Train);
        let record_weights = loss_weights(cfg, &ds, &train_idx, obs)?;
        let (train_idx, batches, steps_per_epoch) = batches_of(cfg, &ds)?;
        let epochs = cfg.epochs();
        let total_steps = steps_per_epoch * epochs;
        let Prepared {
            model,
            card,
            tokenizer,
            tokenizer_src,
        } = prepare_model(cfg, split, &device, obs)?;
        let fp = fingerprint(cfg, &card, &ds);
        let ck_dir = checkpoint::checkpoint_dir(&cfg.out);
        let objective = build_objective(&cfg.loss)?;
        // SigLIP's t' and b start at its values; a checkpoint's replace them on resume.
        let model = match objective.initial_logits() {
            Some((log_scale, bias)) => model.with_sigmoid_logits(log_scale, bias, &device),
            None => model,
        };
        // Adapters before the checkpoint, which holds them unmerged.
        let (image_policy, text_policy) = (cfg.towers.image_policy(), cfg.towers.text_policy());
        let model = model.with_lora(image_policy, text_policy, cfg.seed, &device)?;
        let (model, resumed) = resume(cfg, &ck_dir, &fp, model, obs)?;
        let model = model.with_freeze(
            cfg.towers.image_policy(),
            cfg.towers.text_policy(),
            objective.uses_logit_scale(),
        )?;
        let params = split_params(&model);
        let total = params.trainable_values + params.frozen_values;
        obs.event(&Event::Info(format!(
            "training {} of {} parameters ({:.2}%, {} frozen); image tower {}, text tower {}, {} heads into {} dims; loss {}",
            params.trainable_values,
            total,
            100.0 * params.trainable_values as f64 / total.max(1) as f64,
            params.frozen_values,
            cfg.towers.image_policy(),
            cfg.towers.text_policy(),
            cfg.towers.head,
            card.joint_dim,
            objective.describe()
        )));
        let optim = build_adamw(&cfg.optim.adamw, &params);
        let (optim, st) = match resumed {
            Some((dir, st)) => {
                if let Some(memories) = checkpoint::load_xbm(&dir)? {
                    objective.restore_state(&memories, &device).map_err(|e| {
                        checkpoint::CheckpointError::Mismatch {
                            path: dir.join(checkpoint::XBM_FILE),
                            why: e.0,
                        }
                    })?;
                }
                (checkpoint::load_optimizer(&dir, optim)?, st)
            }
            None => (optim, fresh_state(cfg, fp, steps_per_epoch, epochs)),
        };
        let stepper = Stepper {
            optim,
            schedule: st.schedule,
            max_grad_norm: cfg.optim.max_grad_norm(),
            step: st.step,
            epoch: st.epoch,
        };
        let inputs = Inputs {
            ds: Arc::clone(&ds),
            pre: Preprocessor::clip(card.image_size as u32),
            tokenizer,
            context: card.context_length,
            images: None,
            texts: None,
            image_prefix: None,
            text_prefix: None,
            threads: cfg.threads.max(1),
        };
        let trainer = Trainer {
            cfg,
            device,
            ds,
            mode,
            train_idx,
            record_weights,
            batches,
            steps_per_epoch,
            total_steps,
            epochs,
            card,
            tokenizer_src,
            objective,
            params,
            stepper,
            elapsed_before: st.elapsed_s,
            st,
            inputs,
            ck_dir,
            val_plan: None,
            log: None,
            session_start: Instant::now(),
            steps_this_run: 0,
            epoch_loss: None,
            epoch_stats: StatsMean::default(),
            warnings: Vec::new(),
            early_stopped: false,
            interrupted: false,
        };
        Ok((trainer, model))
    }

    /// Phase 2: the feature cache of locked towers and the prefix cache of `last:N` towers
    /// (when `--no-cache` is not given), then the towers' compute type.
    fn attach_caches(
        &mut self,
        model: &mut TwinTowers,
        obs: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let cfg = self.cfg;
        if cfg.cache.feature_cache {
            let cache = FeatureCache::new(
                cfg.cache
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| default_cache_dir(&cfg.out)),
            );
            self.attach_features(&cache, model, obs)?;
            self.attach_prefixes(&cache, model, obs)?;
        }
        // After the caches: cached features and prefixes are f32 inference products, shared
        // between runs whatever their dtype.
        if cfg.towers.dtype == TowerDtype::Bf16 {
            obs.event(&Event::Info(bf16_notice(model, &self.device)?));
            model.clip.set_matmul_dtype(cfg.towers.dtype.matmul_dtype());
        }
        Ok(())
    }

    fn attach_features(
        &mut self,
        cache: &FeatureCache,
        model: &TwinTowers,
        obs: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let (cfg, ds) = (self.cfg, &self.ds);
        let all: Vec<usize> = (0..ds.len()).collect();
        let say =
            |obs: &mut dyn Observer, tower: &str, what: &str, n: usize, hit: bool, p: &Path| {
                obs.event(&Event::Info(format!(
                    "feature cache: {tower} tower locked, {n} {what} features {} {}",
                    if hit { "reused from" } else { "computed into" },
                    p.display()
                )));
            };
        if cfg.towers.image_policy() == FreezePolicy::Locked && !cfg.augment {
            let pre = &self.inputs.pre;
            let (src, hit) =
                cache.image_features(model, ds, &all, pre, cfg.threads, &self.device)?;
            say(obs, "image", "image", src.len(), hit, src.path());
            self.inputs.images = Some(src);
        }
        if cfg.towers.text_policy() == FreezePolicy::Locked {
            let (tok, ctx) = (&self.inputs.tokenizer, self.inputs.context);
            let (src, hit) = cache.text_features(model, ds, tok, ctx, &self.device)?;
            say(obs, "text", "text", src.len(), hit, src.path());
            self.inputs.texts = Some(src);
        }
        Ok(())
    }

    fn attach_prefixes(
        &mut self,
        cache: &FeatureCache,
        model: &TwinTowers,
        obs: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let (cfg, ds) = (self.cfg, &self.ds);
        let max_bytes = (cfg.cache.prefix_cache_max_gb * 1e9) as u64;
        if let (FreezePolicy::LastBlocks(n), false, true) = (
            cfg.towers.image_policy(),
            cfg.augment,
            max_bytes > 0 && model.clip.visual.as_vit().is_some(),
        ) {
            let all: Vec<usize> = (0..ds.len()).collect();
            let from = model.image_blocks() - n;
            let p = cache.image_prefix(
                model,
                from,
                ds,
                &all,
                &self.inputs.pre,
                cfg.threads,
                max_bytes,
                &self.device,
            )?;
            obs.event(&Event::Info(describe_prefix(
                cfg,
                "image",
                cfg.towers.image_policy(),
                "images",
                &p,
            )));
            if let Prefix::Ready { source, .. } = p {
                self.inputs.image_prefix = Some(source);
            }
        }
        if let (FreezePolicy::LastBlocks(n), true) = (cfg.towers.text_policy(), max_bytes > 0) {
            let from = model.text_blocks() - n;
            let (tok, ctx) = (&self.inputs.tokenizer, self.inputs.context);
            let p = cache.text_prefix(model, from, ds, tok, ctx, max_bytes, &self.device)?;
            obs.event(&Event::Info(describe_prefix(
                cfg,
                "text",
                cfg.towers.text_policy(),
                "texts",
                &p,
            )));
            if let Prefix::Ready { source, .. } = p {
                self.inputs.text_prefix = Some(source);
            }
        }
        Ok(())
    }

    /// Phase 3: the output folder and metrics log, and validation before training (not when
    /// resuming: the history already holds it).
    fn begin(&mut self, model: &TwinTowers, obs: &mut dyn Observer) -> Result<(), TrainError> {
        let cfg = self.cfg;
        let plan = eval_plan(&self.ds, Split::Val, self.mode);
        if plan.records.is_empty() || plan.texts.is_empty() {
            obs.event(&Event::Info(
                "no validation split: the last epoch's weights are kept".into(),
            ));
        } else {
            self.val_plan = Some(plan);
        }
        std::fs::create_dir_all(&cfg.out)
            .map_err(|e| TrainError::Io(cfg.out.clone(), e.to_string()))?;
        remove_stale_temps(&cfg.out);
        let metrics_path = cfg.out.join("metrics.jsonl");
        self.log = Some(if cfg.resume {
            MetricsLog::resume(&metrics_path, self.st.step)?
        } else {
            MetricsLog::create(&metrics_path)?
        });
        if let (false, Some(plan)) = (cfg.resume, &self.val_plan) {
            let r = self.inputs.evaluate(&model.valid(), plan, &self.device)?;
            let rec = EpochRecord {
                epoch: 0,
                step: 0,
                train_loss: None,
                metrics: metric_map(&r),
                train_stats: None,
            };
            obs.event(&Event::Epoch(rec.clone()));
            self.st.history.push(rec);
        }
        obs.event(&Event::Start {
            total_steps: self.total_steps,
            done: self.st.step,
        });
        self.session_start = Instant::now();
        Ok(())
    }

    /// Phase 4: one epoch of optimiser steps (resumed runs skip the micro-batches already
    /// trained). Returns the model and whether `--max-steps` interrupted the epoch.
    fn run_epoch(
        &mut self,
        mut model: TwinTowers,
        obs: &mut dyn Observer,
    ) -> Result<(TwinTowers, bool), TrainError> {
        let epoch = self.st.epoch;
        self.stepper.epoch = epoch;
        let first = self.st.batch_in_epoch;
        if self.cfg.mining.mines_at(epoch)
            && self.st.mined.as_ref().is_none_or(|m| m.epoch != epoch)
        {
            self.mine(&model, epoch, obs)?;
        }
        let (plans, mut loader) = self.epoch_plans(epoch, first);
        let (usable, micro) = (plans.len(), self.cfg.batch.accum_steps);
        let (mut loss_sum, mut loss_n) = (0.0, 0usize);
        let mut b = 0;
        while b < usable {
            let (batches, n_images) = self.gather(&plans, b..b + micro, first, loader.as_mut())?;
            b += micro;
            if batches.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            let (m, out) =
                match self
                    .stepper
                    .step_accumulated(model, batches, self.objective.as_ref())
                {
                    Ok(done) => done,
                    Err((_, cause)) => {
                        return Err(TrainError::Step {
                            cause,
                            last_checkpoint: checkpoint::find_checkpoint(&self.ck_dir),
                        })
                    }
                };
            model = m;
            loss_sum += out.loss;
            loss_n += 1;
            let dt = t0.elapsed().as_secs_f64().max(1e-9);
            if self.after_step(&model, &out, n_images, dt, b < usable, b, obs)? {
                return Ok((model, true));
            }
        }
        self.epoch_loss = (loss_n > 0).then(|| loss_sum / loss_n as f64);
        Ok((model, false))
    }

    /// Mines hard negatives for the training images with the current model (see
    /// [`super::mining`]) into the run's state, which checkpoints keep.
    fn mine(
        &mut self,
        model: &TwinTowers,
        epoch: usize,
        obs: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let t0 = Instant::now();
        let inner = model.valid();
        let emb = self.inputs.embed_images(
            &inner,
            &self.train_idx,
            &self.device,
            "hard-negative mining",
        )?;
        let labels: Vec<usize> = self
            .train_idx
            .iter()
            .map(|&r| mining_label(&self.ds, self.mode, r))
            .collect();
        let embed_s = t0.elapsed().as_secs_f64();
        let dim = inner.image_head_dim();
        let negs = super::mining::mine_negatives(&emb, dim, &labels, &self.cfg.mining.options())?;
        let mut by_record = vec![Vec::new(); self.ds.len()];
        for (row, n) in negs.into_iter().enumerate() {
            by_record[self.train_idx[row]] = n.into_iter().map(|c| self.train_idx[c]).collect();
        }
        let mined = super::mining::MinedNegatives { epoch, by_record };
        let (anchors, total) = mined.counts();
        obs.event(&Event::Info(format!(
            "hard negatives (--mine-index) for epoch {}: {total} for {anchors} of {} training images, from an HNSW index of their embeddings (embedding {embed_s:.1} s, index and search {:.1} s)",
            epoch + 1,
            self.train_idx.len(),
            t0.elapsed().as_secs_f64() - embed_s
        )));
        self.st.mined = Some(mined);
        Ok(())
    }

    /// The micro-batch plans of `epoch` (all of them, so batch numbers and the loader's
    /// augmentation seeds stay those of an uninterrupted run) and, when images are not
    /// cached, a loader of their pixels (micro-batches before `first` left empty).
    fn epoch_plans(&self, epoch: usize, first: usize) -> (Vec<BatchPlan>, Option<Loader>) {
        let cfg = self.cfg;
        let usable = self.steps_per_epoch * cfg.batch.accum_steps;
        let plans: Vec<BatchPlan> = self.batches.epoch(epoch as u64)[..usable]
            .iter()
            .enumerate()
            .map(|(b, pos)| {
                let mut recs: Vec<usize> = pos.iter().map(|&p| self.train_idx[p]).collect();
                if let Some(mined) = &self.st.mined {
                    mined.extend_batch(&mut recs);
                }
                plan_batch(&self.ds, self.mode, recs, cfg.seed, epoch, b)
            })
            .collect();
        if self.inputs.images_cached() {
            return (plans, None);
        }
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
            threads: self.inputs.threads,
            augment: cfg.augment.then(siam_data::augment::Augment::default),
            seed: data_seed(cfg.seed, epoch),
            ..LoaderOptions::default()
        };
        let loader = Loader::new(Arc::clone(&self.ds), self.inputs.pre.clone(), lists, opts);
        (plans, Some(loader))
    }

    /// The inputs of the micro-batches `range` of one step (those before `first`, already
    /// trained, are drawn from the loader and dropped).
    fn gather(
        &self,
        plans: &[BatchPlan],
        range: Range<usize>,
        first: usize,
        mut loader: Option<&mut Loader>,
    ) -> Result<StepBatches, TrainError> {
        let mut batches = Vec::with_capacity(range.len());
        let mut n_images = 0usize;
        for j in range {
            let loaded = match loader.as_deref_mut() {
                Some(l) => Some(l.next().ok_or(TrainError::LoaderEnded)??),
                None => None,
            };
            if j < first {
                continue;
            }
            let plan = &plans[j];
            let images = match (
                self.inputs.cached_images(&plan.records, &self.device),
                loaded,
            ) {
                (Some(input), _) => input,
                (None, Some(batch)) => {
                    if batch.len() != plan.records.len() {
                        return Err(TrainError::Unreadable {
                            what: "training".into(),
                            images: describe_skipped(&batch.skipped),
                        });
                    }
                    let n = batch.len();
                    self.inputs.pixels(batch.pixels, n, &self.device)
                }
                (None, None) => unreachable!("a loader runs when images are not cached"),
            };
            n_images += plan.records.len();
            let weights = self.record_weights.as_ref().map(|w| {
                let images = plan.records.iter().map(|&r| w[r]).collect();
                BatchWeights::from_images(images, &plan.image_labels, &plan.text_labels)
            });
            batches.push(TrainBatch {
                images,
                image_labels: plan.image_labels.clone(),
                texts: self.inputs.text_input(&plan.texts, &self.device)?,
                text_labels: plan.text_labels.clone(),
                weights,
            });
        }
        Ok((batches, n_images))
    }

    /// Books a step: counters, the metrics log, and a checkpoint inside the epoch when
    /// `--checkpoint-every` or `--max-steps` asks (`mid_epoch`: micro-batches remain). Returns
    /// whether `--max-steps` stops the run here.
    #[allow(clippy::too_many_arguments)]
    fn after_step(
        &mut self,
        model: &TwinTowers,
        out: &StepOutcome,
        n_images: usize,
        dt: f64,
        mid_epoch: bool,
        batch: usize,
        obs: &mut dyn Observer,
    ) -> Result<bool, TrainError> {
        let cfg = self.cfg;
        let st = &mut self.st;
        st.pairs_seen += out.pairs;
        st.images_seen += n_images as u64;
        st.batch_in_epoch = batch;
        st.step = self.stepper.step;
        let m = StepMetrics {
            step: st.step,
            epoch: st.epoch + 1,
            loss: out.loss,
            loss_i2t: out.loss_i2t,
            loss_t2i: out.loss_t2i,
            stats: out.stats,
            lr: out.lr,
            grad_norm: out.grad_norm,
            pairs_per_s: out.pairs as f64 / dt,
            time_s: self.elapsed_before + self.session_start.elapsed().as_secs_f64(),
        };
        if let Some(log) = self.log.as_mut() {
            log.push(&m)?;
        }
        self.epoch_stats.push(&out.stats);
        obs.event(&Event::Step(m));
        self.steps_this_run += 1;
        let stop_now = cfg.max_steps.is_some_and(|s| self.steps_this_run >= s);
        let every = cfg.checkpoint_every > 0 && st.step.is_multiple_of(cfg.checkpoint_every);
        if mid_epoch && (every || stop_now) {
            self.save_checkpoint(model, obs)?;
        }
        Ok(stop_now && mid_epoch)
    }

    fn save_checkpoint(
        &mut self,
        model: &TwinTowers,
        obs: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        self.st.elapsed_s = self.elapsed_before + self.session_start.elapsed().as_secs_f64();
        let xbm = self.objective.state();
        checkpoint::save(
            &self.ck_dir,
            model,
            &self.stepper.optim,
            &self.st,
            xbm.as_deref(),
        )?;
        obs.event(&Event::Checkpoint(self.ck_dir.clone()));
        Ok(())
    }

    /// Phase 5: validation, keeping the best weights in `<out>/best`, the epoch's checkpoint,
    /// early stopping. Returns whether the run stops here (early stop or `--max-steps`).
    fn end_epoch(
        &mut self,
        model: &TwinTowers,
        obs: &mut dyn Observer,
    ) -> Result<bool, TrainError> {
        let cfg = self.cfg;
        self.st.epoch += 1;
        self.st.batch_in_epoch = 0;
        let mut metrics = std::collections::BTreeMap::new();
        if let Some(plan) = &self.val_plan {
            let r = self.inputs.evaluate(&model.valid(), plan, &self.device)?;
            metrics = metric_map(&r);
            let value = *metrics.get(&cfg.select_metric).ok_or_else(|| {
                TrainError::Config(format!(
                    "--select-metric {}: unknown; one of {}",
                    cfg.select_metric,
                    metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            if self.st.best.is_none_or(|(b, _)| value > b) {
                self.st.best = Some((value, self.st.epoch));
                self.st.epochs_since_best = 0;
                let best = cfg.out.join("best");
                folder::save(
                    &best,
                    &model.valid().merge_lora(),
                    &self.card,
                    self.tokenizer_src.as_deref(),
                )?;
            } else {
                self.st.epochs_since_best += 1;
            }
        }
        let rec = EpochRecord {
            epoch: self.st.epoch,
            step: self.st.step,
            train_loss: self.epoch_loss.take(),
            metrics,
            train_stats: std::mem::take(&mut self.epoch_stats).mean(),
        };
        obs.event(&Event::Epoch(rec.clone()));
        self.warn_on_collapse(&rec, obs);
        self.st.history.push(rec);
        self.save_checkpoint(model, obs)?;
        let more = self.st.epoch < self.epochs;
        if let (Some(p), Some(_), true) = (cfg.patience, &self.val_plan, more) {
            if self.st.epochs_since_best >= p {
                obs.event(&Event::Info(format!(
                    "early stop: {} did not improve for {p} epoch(s)",
                    cfg.select_metric
                )));
                self.early_stopped = true;
                return Ok(true);
            }
        }
        if more && cfg.max_steps.is_some_and(|s| self.steps_this_run >= s) {
            self.interrupted = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// The collapse warning of an epoch ([`super::health::collapse_warning`]), shown and kept
    /// for the report.
    fn warn_on_collapse(&mut self, rec: &EpochRecord, obs: &mut dyn Observer) {
        let Some(stats) = &rec.train_stats else {
            return;
        };
        let cfg = self.cfg;
        let miner = cfg.loss.miners().to_string();
        let margin = match cfg.loss.loss() {
            Ok(siam_losses::Loss::Triplet(t)) => Some(t.margin as f64),
            _ => None,
        };
        let shape = RunShape {
            loss: cfg.loss.name(),
            miner: &miner,
            margin,
            lr: cfg.optim.lr,
        };
        if let Some(w) = collapse_warning(rec.epoch, stats, rec.train_loss, shape) {
            obs.event(&Event::Warning(w.clone()));
            self.warnings.push(w);
        }
    }

    /// Phase 6: the model folder (the best epoch's weights if validated, else the last), its
    /// validation metrics, the curves and the report. An interrupted run writes only its
    /// checkpoint.
    fn finish(mut self, model: TwinTowers) -> Result<TrainReport, TrainError> {
        let cfg = self.cfg;
        let device = self.device.clone().without_autodiff();
        self.card.training = serde_json::to_value(cfg).unwrap_or_default();
        let best_dir = cfg.out.join("best");
        let (kept_epoch, final_model) = match self.st.best {
            Some((_, e)) if best_dir.join(folder::CARD_FILE).is_file() => {
                (e, folder::load(&best_dir, &device)?.0)
            }
            _ => (self.st.epoch, model.valid().merge_lora()),
        };
        let finished = !self.interrupted;
        let mut after = None;
        if finished {
            let tok = self.tokenizer_src.as_deref();
            folder::save(&cfg.out, &final_model, &self.card, tok)?;
            if let Some(plan) = &self.val_plan {
                let r = self.inputs.evaluate(&final_model, plan, &device)?;
                after = Some(metric_map(&r));
            }
            write_curves(&cfg.out, &cfg.out.join("metrics.jsonl"), &self.st.history)?;
        }
        let st = &self.st;
        let train_seconds = st
            .elapsed_s
            .max(self.elapsed_before + self.session_start.elapsed().as_secs_f64());
        Ok(TrainReport {
            config: cfg.clone(),
            initial_weights: self.card.initial_weights.clone(),
            before: st
                .history
                .iter()
                .find(|r| r.epoch == 0)
                .map(|r| r.metrics.clone()),
            after,
            kept_epoch,
            steps: st.step,
            epochs: st.epoch,
            early_stopped: self.early_stopped,
            finished,
            train_seconds,
            pairs_per_second: st.pairs_seen as f64 / train_seconds.max(1e-9),
            images_per_second: st.images_seen as f64 / train_seconds.max(1e-9),
            output: cfg.out.clone(),
            history: st.history.clone(),
            trainable_parameters: self.params.trainable_values,
            frozen_parameters: self.params.frozen_values,
            warnings: self.warnings,
        })
    }
}

/// Every record's loss weight under `--weight-by confidence` (the `--data` table's
/// confidence column), announced with its mean over the training records.
fn loss_weights(
    cfg: &TrainConfig,
    ds: &Dataset,
    train: &[usize],
    obs: &mut dyn Observer,
) -> Result<Option<Vec<f32>>, TrainError> {
    let Some(WeightBy::Confidence) = cfg.weight_by else {
        return Ok(None);
    };
    let table = cfg.data.path()?.ok_or_else(|| {
        TrainError::Config(
            "--weight-by confidence needs --data: a table `siam pseudo-label` wrote".into(),
        )
    })?;
    let w = crate::pseudo_label::record_weights(table, ds)?;
    let mean = train.iter().map(|&r| w[r] as f64).sum::<f64>() / train.len().max(1) as f64;
    obs.event(&Event::Info(format!(
        "weighting each anchor's loss terms by its confidence from {} (mean {mean:.3} over {} training images)",
        table.display(),
        train.len()
    )));
    Ok(Some(w))
}

/// The training records, their batch sampler, and the optimiser steps per epoch.
fn batches_of(
    cfg: &TrainConfig,
    ds: &Dataset,
) -> Result<(Vec<usize>, BatchSampler, usize), TrainError> {
    let train_idx = ds.indices_of(Split::Train);
    if train_idx.is_empty() {
        return Err(TrainError::EmptyTrainSplit(ds.name.clone()));
    }
    let b = &cfg.batch;
    let batches = sampler(
        ds,
        &train_idx,
        b.classes_per_batch,
        b.per_class,
        b.batch_size,
        cfg.seed,
    )?;
    let steps_per_epoch = batches.epoch_len() / b.accum_steps;
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "--accum {}: {} batches per epoch cannot make one step of that many micro-batches",
            b.accum_steps,
            batches.epoch_len()
        )));
    }
    Ok((train_idx, batches, steps_per_epoch))
}

/// With `--resume`: the last checkpoint's state and weights (in place of the prepared ones,
/// keeping parameter ids), refused when it belongs to another setup.
#[allow(clippy::type_complexity)]
fn resume(
    cfg: &TrainConfig,
    ck_dir: &Path,
    fp: &str,
    model: TwinTowers,
    obs: &mut dyn Observer,
) -> Result<(TwinTowers, Option<(PathBuf, TrainState)>), TrainError> {
    if !cfg.resume {
        return Ok((model, None));
    }
    let dir = checkpoint::find_checkpoint(ck_dir)
        .ok_or_else(|| checkpoint::CheckpointError::Missing(cfg.out.clone()))?;
    let st = checkpoint::load_state(&dir)?;
    if st.fingerprint != fp {
        return Err(checkpoint::CheckpointError::Mismatch {
            path: dir,
            why: "it was written for a different model, data or training setup (architecture, heads, initial weights, loss, dataset or batch shape differ); train into a new --out folder instead".into(),
        }
        .into());
    }
    let model = checkpoint::load_model(&dir, model)?;
    obs.event(&Event::Info(format!(
        "resuming from {} at step {} (epoch {}, batch {})",
        dir.display(),
        st.step,
        st.epoch + 1,
        st.batch_in_epoch
    )));
    Ok((model, Some((dir, st))))
}

/// The state of a run that starts now.
fn fresh_state(
    cfg: &TrainConfig,
    fingerprint: String,
    steps_per_epoch: usize,
    epochs: usize,
) -> TrainState {
    let total_steps = steps_per_epoch * epochs;
    TrainState {
        format: STATE_FORMAT,
        fingerprint,
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        seed: cfg.seed,
        schedule: CosineSchedule {
            base_lr: cfg.optim.lr,
            warmup_steps: cfg.optim.warmup_steps.min(total_steps.saturating_sub(1)),
            total_steps,
            min_lr: cfg.optim.min_lr,
        },
        history: vec![],
        best: None,
        epochs_since_best: 0,
        elapsed_s: 0.0,
        pairs_seen: 0,
        images_seen: 0,
        config: serde_json::to_value(cfg).unwrap_or_default(),
        mined: None,
    }
}

fn describe_prefix(
    cfg: &TrainConfig,
    tower: &str,
    policy: FreezePolicy,
    what: &str,
    p: &Prefix,
) -> String {
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
            cfg.cache.prefix_cache_max_gb
        ),
    }
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
