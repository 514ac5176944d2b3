//! `siam train --prompt coop:N[:csc]` (part of `siam train`'s front end): CoOp prompt learning with frozen towers (see
//! [`siam::prompt`]); the output folder is a siam model folder with the learned prompts, which
//! `classify`, `eval`, `index`, `query` and `pseudo-label` then use for its classes.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use burn::module::Module;

use super::TrainArgs;
use crate::cli::common::progress_bar;
use siam::model::encoder::Encoder;
use siam::model::folder;
use siam::prompt::learner::{ClassPosition, PromptSpec};
use siam::prompt::train::{train_prompts, PromptTrainConfig};

/// Prompt-learning options of `siam train`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PromptArgs {
    /// Learn prompts instead of weights: coop:N (N context vectors shared by all classes) or
    /// coop:N:csc (one context per class); the towers stay frozen. Needs --model and a dataset
    /// with labels.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Initialise the context from this phrase's word embeddings (e.g. "a photo of a"); N is
    /// then the phrase's token count.
    #[arg(long)]
    pub prompt_init: Option<String>,
    /// Where the class name goes: end, middle or front of the context.
    #[arg(long, default_value = "end")]
    pub prompt_position: String,
    /// Few-shot: K images per class from the training split (drawn with --seed).
    #[arg(long)]
    pub shots: Option<usize>,
    /// Weight each image's loss: `confidence` reads the confidence column of a table written
    /// by `siam pseudo-label` (with --prompt).
    #[arg(long)]
    pub weight_by: Option<String>,
}

/// Runs `siam train --prompt ...`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let p = &args.prompt;
    let spec: PromptSpec = p.prompt.as_deref().unwrap_or_default().parse()?;
    let position: ClassPosition = p.prompt_position.parse()?;
    let c = &args.config;
    let model = c
        .model
        .as_ref()
        .context("--prompt learns prompts for a CLIP: give it with --model")?;
    let data = c.data.path()?.context(
        "--prompt needs --data: a dataset with labels (image folder, CIFAR, label table)",
    )?;
    anyhow::ensure!(p.shots != Some(0), "--shots must be at least 1");
    siam::output::check_replaceable(&args.config.out, siam::output::OutputKind::TrainRun)?;
    let weights = match p.weight_by.as_deref() {
        None => None,
        Some("confidence") => Some(siam::pseudo_label::read_confidences(data)?),
        Some(other) => anyhow::bail!("--weight-by {other:?}: the only weighting is `confidence`"),
    };
    let device = args.device.open()?.autodiff();
    let arch = if folder::is_model_folder(model) {
        None
    } else {
        c.arch.as_deref()
    };
    let mut enc = Encoder::load(model, arch, &device)?;
    enc.model = enc.model.no_grad();
    let opts = siam_data::dataset::OpenOptions {
        seed: c.split_seed(),
        ..Default::default()
    };
    let ds = Arc::new(siam_data::dataset::Dataset::open(data, &opts)?);
    // --loss given: that siam loss over the class prompts; else CoOp's cross-entropy.
    let loss = c.loss.loss.as_ref().map(|_| c.loss.clone());
    let cfg = PromptTrainConfig {
        spec,
        init: p.prompt_init.clone(),
        position,
        shots: p.shots,
        seed: c.seed,
        epochs: c.optim.epochs.unwrap_or(20),
        lr: c.optim.lr,
        warmup: c.optim.warmup_steps,
        batch_size: c.batch.batch_size,
        loss,
        weights,
        threads: c.threads,
    };
    siam::console::err_line(format_args!(
        "prompt learning: {} context vector(s){}, class token {:?}, {} classes, loss {}",
        spec.n_ctx,
        if spec.class_specific {
            " per class"
        } else {
            ""
        },
        position,
        ds.labels.len(),
        c.loss
            .loss
            .map_or_else(|| "CoOp cross-entropy".into(), |l| l.to_string())
    ));
    let pb = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        progress_bar(usize::MAX, "prompts")
    };
    let (lp, report) = train_prompts(&enc, &ds, &cfg, &mut |step, total, loss| {
        pb.set_length(total as u64);
        pb.set_position(step as u64);
        pb.set_message(format!("loss {loss:.4}"));
    })?;
    pb.finish_and_clear();
    save(&c.out, &enc, &lp)?;
    siam::console::err_line(format_args!(
        "{} training images, {} steps, final loss {:.4}",
        report.train_images, report.steps, report.final_loss
    ));
    if let (Some(split), Some(t), Some(l)) = (
        &report.eval_split,
        report.templates_top1,
        report.learned_top1,
    ) {
        siam::console::out_line(format_args!(
            "{split} split, {} images: zero-shot top-1 hand-written templates {:.2}%, learned prompts {:.2}%",
            report.eval_images,
            100.0 * t,
            100.0 * l
        ));
    }
    if let Some(r) = &args.report {
        siam::io::atomic_write_bytes(r, &serde_json::to_vec_pretty(&report)?)?;
    }
    siam::console::err_line(format_args!(
        "wrote {} (model + prompts.json, prompts.safetensors)",
        c.out.display()
    ));
    Ok(())
}

/// The model folder (the frozen model as loaded) with the learned prompts beside it.
fn save(out: &Path, enc: &Encoder, lp: &siam::prompt::LearnedPrompts) -> anyhow::Result<()> {
    let mut card = enc.card.clone();
    let tokenizer = card
        .tokenizer
        .as_ref()
        .map(|name| enc.source.join(name))
        .filter(|p| p.is_file());
    if tokenizer.is_none() {
        card.tokenizer = None;
    }
    card.training = serde_json::json!({"prompt_learning": lp.card.training});
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    folder::save(out, &enc.model, &card, tokenizer.as_deref())?;
    lp.save(out)?;
    Ok(())
}
