//! Arguments and helpers shared by the subcommands: model selection, zero-shot labels and
//! templates, progress bars, the bad-image summary. (The device and data sections are the library's:
//! [`siam::device::DeviceConfig`], [`siam::dataset::DataConfig`].)

use std::path::PathBuf;

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};

use siam::embed::ZeroShotClasses;
use siam::model::encoder::Encoder;
use siam::progress::Progress;

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

/// `--labels`, `--labels-file`, `--template`: zero-shot candidate labels and their prompts.
#[derive(clap::Args, Debug, Clone)]
pub struct LabelArgs {
    /// Comma-separated candidate labels, e.g. "cataract,pterygium,normal eye".
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// A file with one candidate label per line.
    #[arg(long)]
    pub labels_file: Option<PathBuf>,
    /// Prompt template with {} for the label; repeat to ensemble several. Default: "a photo of a {}."
    #[arg(long = "template")]
    pub templates: Vec<String>,
}

impl LabelArgs {
    /// The labels and templates, checked ([`ZeroShotClasses::new`]).
    pub fn classes(&self) -> anyhow::Result<ZeroShotClasses> {
        Ok(ZeroShotClasses::new(
            &self.labels,
            self.labels_file.as_deref(),
            &self.templates,
        )?)
    }
}

/// Says which files a dataset names that do not exist, if any.
pub fn report_missing(ds: &siam_data::dataset::Dataset) {
    if let Some(line) = ds.missing_summary() {
        siam::console::err_line(format_args!("{line}"));
    }
}

/// Prints the bad-image summary of a run, if any image was skipped.
pub fn report_skipped(s: &siam_data::pipeline::BadImageSummary) {
    if s.count > 0 {
        siam::console::err_line(format_args!(
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

/// Progress bars on stderr for the library's [`Progress`] reports, one bar per stage.
#[derive(Default)]
pub struct Bars {
    bar: parking_lot::Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, stage: &str, len: usize) {
        *self.bar.lock() = Some(progress_bar(len, stage));
    }
    fn set(&self, done: usize) {
        if let Some(b) = &*self.bar.lock() {
            b.set_position(done as u64);
        }
    }
    fn inc(&self, n: usize) {
        if let Some(b) = &*self.bar.lock() {
            b.inc(n as u64);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.bar.lock().take() {
            b.finish_and_clear();
        }
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
) -> anyhow::Result<siam::embed::ImageEmbeddings> {
    let out = siam::index::dataset::embed_dataset_images(
        enc,
        ds,
        records,
        batch_size,
        threads,
        on_bad_image,
        what,
        &Bars::default(),
    )?;
    report_skipped(&out.skipped);
    Ok(out)
}

/// The split a siam model folder records in its `siam.json` (`None` for other models).
pub fn recorded_split(model: &std::path::Path) -> Option<siam::dataset::SplitRecord> {
    siam::model::folder::read_card(model).ok()?.split
}
