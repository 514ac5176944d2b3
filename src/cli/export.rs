//! `siam export`: a model folder to a Hugging Face or open_clip folder.

use std::path::PathBuf;

use anyhow::Context;

use siam::export::{export, ExportFormat};
use siam::model::encoder::Encoder;

/// Write a model (a `siam train` folder, or any CLIP siam reads) as a Hugging Face CLIP folder
/// (`transformers.CLIPModel.from_pretrained`) or an open_clip folder
/// (`open_clip.create_model_and_transforms("local-dir:DIR")`). Linear heads are folded into
/// CLIP's projections; adapter heads are refused.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The model: a folder written by `siam train`, a Hugging Face or open_clip folder, a
    /// checkpoint file with --arch, or hf:org/name[@revision].
    pub model: PathBuf,
    /// Architecture of a bare checkpoint file (a preset or an open_clip model-config JSON).
    #[arg(long)]
    pub arch: Option<String>,
    /// Output layout: hf (transformers) or open_clip.
    #[arg(long)]
    pub format: ExportFormat,
    /// Output folder; replaced only if it is empty or a previous `siam export`.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

/// Runs `siam export`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    // Export reads values only: the pure-Rust CPU backend is always enough.
    let device = siam::device::open(siam::device::DeviceSpec::Cpu, None)?;
    let enc = Encoder::load(&args.model, args.arch.as_deref(), &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let _lock = siam::output::OutputLock::acquire(&args.out, &siam::output::command_line())?;
    let source = args.model.display().to_string();
    let report = export(&enc, args.format, &args.out, &source)?;
    for h in &report.heads {
        siam::console::err_line(format_args!("{h}"));
    }
    siam::console::err_line(format_args!(
        "wrote {} ({} format, {} tensors, embedding size {}): {}",
        report.out.display(),
        report.format,
        report.tensors,
        report.embed_dim,
        report.files.join(", ")
    ));
    Ok(())
}
