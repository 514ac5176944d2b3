//! `siam demo-data`: writes the synthetic demo set as an ordinary image folder plus a captions
//! table, so users see the formats siam reads.

use std::path::PathBuf;

/// Write the synthetic shapes demo set to a folder.
#[derive(clap::Args, Debug)]
pub struct DemoDataArgs {
    /// Output folder (gets images/<label>/*.png and captions.csv).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Images per class.
    #[arg(long, default_value_t = 24)]
    pub per_class: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub image_size: u32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `siam demo-data`.
pub fn run(args: DemoDataArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.per_class > 0, "--per-class must be at least 1");
    anyhow::ensure!(args.image_size >= 16, "--image-size must be at least 16");
    use crate::output::{command_line, OutputKind, OutputLock, DEMO_MARKER};
    let _lock = OutputLock::acquire(&args.out, &command_line())?;
    // Built under a temporary name and renamed; an existing folder is replaced only when it is
    // an earlier demo-data output (its `siam-demo.json`).
    let n = crate::io::atomic_dir(&args.out, OutputKind::DemoData, |tmp| {
        let n = siam_data::synthetic::write_demo(tmp, args.per_class, args.image_size, args.seed)?;
        let marker = serde_json::json!({
            "format": "siam-demo",
            "per_class": args.per_class,
            "image_size": args.image_size,
            "seed": args.seed,
        });
        crate::io::atomic_write_bytes(&tmp.join(DEMO_MARKER), marker.to_string().as_bytes())?;
        Ok(n)
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::console::err_line(format_args!(
        "wrote {n} images to {} (image folder: {}/images, captions table: {}/captions.csv)",
        args.out.display(),
        args.out.display(),
        args.out.display()
    ));
    Ok(())
}
