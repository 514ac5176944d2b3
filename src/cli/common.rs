//! Arguments and helpers shared by the subcommands: device and model selection, progress bars.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{self, Backend, DeviceSpec};
use crate::train::encoder::Encoder;

/// `--device` and `--backend`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Backend: flex (pure Rust, CPU), tch (libtorch; feature `tch`) or cuda (burn's CUDA
    /// backend; feature `cuda`). Default: flex on the CPU, the compiled-in GPU backend on cuda.
    #[arg(long)]
    pub backend: Option<String>,
}

impl DeviceArgs {
    /// Opens the device, or a one-line error naming the fix.
    pub fn open(&self) -> anyhow::Result<Device> {
        let spec: DeviceSpec = self.device.parse()?;
        let backend: Option<Backend> = self.backend.as_deref().map(str::parse).transpose()?;
        Ok(device::open(spec, backend)?)
    }
}

/// `--model`, `--arch`, `--tokenizer`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A model folder (Hugging Face CLIP layout, or written by `siam train`), an
    /// OpenAI/open_clip checkpoint file (.safetensors, .bin, .pt) together with --arch, or a
    /// Hub name hf:org/name[@revision] (downloaded into the Hugging Face cache).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Architecture of a checkpoint file: a preset (ViT-B-32, ViT-B-16, ViT-L-14, RN50, tiny)
    /// or an open_clip model-config JSON file.
    #[arg(long)]
    pub arch: Option<String>,
    /// A tokenizer.json to use instead of the model's own or the built-in CLIP tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl ModelArgs {
    /// Loads the model onto `device`.
    pub fn load(&self, device: &Device) -> anyhow::Result<Encoder> {
        let mut enc = Encoder::load(&self.model, self.arch.as_deref(), device)?;
        if let Some(t) = &self.tokenizer {
            enc.tokenizer = siam_data::tokenizer::ClipTokenizer::from_file(t)?;
        }
        Ok(enc)
    }
}

/// A progress bar on stderr with rate and ETA, hidden for short jobs and when stderr is not a
/// terminal-like sink the user asked to keep quiet.
pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let pb = if len < 64 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len as u64)
    };
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {rate} ETA {eta}")
            .expect("a valid template")
            // indicatif's {per_sec} prints every digit it has (`370.8121/s`).
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", s.per_sec());
                },
            )
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Reads one text per line (blank lines skipped), naming the file on error.
pub fn read_lines(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let s = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let v: Vec<String> = s
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    anyhow::ensure!(!v.is_empty(), "{}: no text lines", path.display());
    Ok(v)
}

/// `--data` and how to open it.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// A dataset: image folder, captions table (.csv/.tsv/.jsonl), Karpathy split JSON, CIFAR
    /// batches folder, or webdataset .tar shard(s). Only `siam eval --alphas` takes several
    /// (the first is the in-domain set).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Prompt templates for label texts: a preset (photo, imagenet7, cifar) or a file with one
    /// template per line, each with {} for the label.
    #[arg(long, default_value = "photo")]
    pub templates: String,
    /// Seed of the train/val/test split for datasets whose files carry none.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// What to do with an unreadable image: skip (counted and named) or fail.
    #[arg(long, default_value = "skip")]
    pub on_bad_image: siam_data::dataset::OnBadImage,
}

impl DataArgs {
    /// Opens the dataset (the one `--data`).
    pub fn open(&self) -> anyhow::Result<siam_data::dataset::Dataset> {
        anyhow::ensure!(
            self.data.len() == 1,
            "--data is given {} times; this command reads one dataset",
            self.data.len()
        );
        self.open_path(&self.data[0])
    }

    /// Opens the dataset at `path` with these options.
    pub fn open_path(&self, path: &std::path::Path) -> anyhow::Result<siam_data::dataset::Dataset> {
        let opts = siam_data::dataset::OpenOptions {
            seed: self.split_seed,
            templates: siam_data::templates::Templates::from_name_or_file(&self.templates)?,
            on_bad_image: self.on_bad_image,
            ..Default::default()
        };
        let ds = siam_data::dataset::Dataset::open(path, &opts)?;
        if let Some(line) = ds.missing_summary() {
            crate::console::err_line(format_args!("{line}"));
        }
        Ok(ds)
    }
}

/// Prints the bad-image summary of a run, if any image was skipped.
pub fn report_skipped(s: &siam_data::pipeline::BadImageSummary) {
    if s.count > 0 {
        crate::console::err_line(format_args!(
            "skipped {} unreadable image(s), first: {}",
            s.count,
            s.first
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
}

/// Embeds dataset records with a progress bar labelled `what`, then reports skipped images.
pub fn embed_records_with_progress(
    enc: &Encoder,
    ds: &std::sync::Arc<siam_data::dataset::Dataset>,
    records: &[usize],
    batch_size: usize,
    threads: usize,
    on_bad_image: siam_data::dataset::OnBadImage,
    what: &str,
) -> anyhow::Result<crate::embed::ImageEmbeddings> {
    let pb = progress_bar(records.len(), what);
    let out = crate::embed::embed_records(
        enc,
        std::sync::Arc::clone(ds),
        records,
        batch_size,
        threads,
        on_bad_image,
        &mut |n| pb.set_position(n as u64),
    )?;
    pb.finish_and_clear();
    report_skipped(&out.skipped);
    Ok(out)
}
