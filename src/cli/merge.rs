//! `siam merge`: WiSE-FT weight-space interpolation of a zero-shot and a fine-tuned model
//! ([`siam::merge`]; its accuracy curve is `siam eval --alphas`).

use std::path::PathBuf;

use siam::device::DeviceConfig;
use siam::merge::{load, merge_into_folder};

/// Blend a zero-shot and a fine-tuned model in weight space (WiSE-FT).
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The zero-shot model (siam model folder, Hugging Face CLIP folder, or checkpoint + --arch).
    pub zero_shot: PathBuf,
    /// The fine-tuned model (same architecture, heads and preprocessing).
    pub fine_tuned: PathBuf,
    /// Weight of the fine-tuned model: (1 - alpha) * zero-shot + alpha * fine-tuned.
    #[arg(long)]
    pub alpha: f32,
    /// Architecture of a bare checkpoint file among the two.
    #[arg(long)]
    pub arch: Option<String>,
    /// The merged model folder (written under a temporary name, then renamed).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceConfig,
}

/// Runs `siam merge`.
pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let zs = load(&args.zero_shot, args.arch.as_deref(), &device)?;
    let ft = load(&args.fine_tuned, args.arch.as_deref(), &device)?;
    merge_into_folder(&zs, &ft, args.alpha, &args.out)?;
    siam::console::err_line(format_args!(
        "wrote {}: (1 - {a}) * {} + {a} * {}",
        args.out.display(),
        args.zero_shot.display(),
        args.fine_tuned.display(),
        a = args.alpha
    ));
    Ok(())
}
