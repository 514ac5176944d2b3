//! `siam demo-data`: writes the synthetic demo set as an ordinary image folder plus a captions
//! table, so users see the formats siam reads. By default it is exactly the set `siam train`
//! trains on without `--data`, with the images that run held out in `images/val/` and
//! `images/test/`, apart from `images/train/`.

use std::path::PathBuf;

/// Write the synthetic shapes demo set to a folder.
#[derive(clap::Args, Debug)]
pub struct DemoDataArgs {
    /// Output folder (gets images/{train,val,test}/<label>/*.png and captions.csv).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Images per class (`siam train`'s demo: its --demo-per-class).
    #[arg(long, default_value_t = siam::train::config::DEMO_PER_CLASS)]
    pub per_class: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = siam::train::config::DEMO_IMAGE_SIZE)]
    pub image_size: u32,
    /// Seed of the images and of the split (`siam train`'s --seed, or --split-seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `siam demo-data`.
pub fn run(args: DemoDataArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.per_class > 0, "--per-class must be at least 1");
    anyhow::ensure!(args.image_size >= 16, "--image-size must be at least 16");
    use siam::output::{command_line, OutputKind, OutputLock, DEMO_MARKER};
    let _lock = OutputLock::acquire(&args.out, &command_line())?;
    // Built under a temporary name and renamed; an existing folder is replaced only when it is
    // an earlier demo-data output (its `siam-demo.json`).
    let n = siam::io::atomic_dir(&args.out, OutputKind::DemoData, |tmp| {
        let n = siam_data::synthetic::write_demo(tmp, args.per_class, args.image_size, args.seed)?;
        let marker = serde_json::json!({
            "format": "siam-demo",
            "per_class": args.per_class,
            "image_size": args.image_size,
            "seed": args.seed,
        });
        siam::io::atomic_write_bytes(&tmp.join(DEMO_MARKER), marker.to_string().as_bytes())?;
        Ok(n)
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    siam::console::err_line(format_args!(
        "wrote {n} images to {} (image folder: {}/images, split into train/, val/ and test/ as `siam train --seed {}` splits them; captions table: {}/captions.csv)",
        args.out.display(),
        args.out.display(),
        args.seed,
        args.out.display()
    ));
    Ok(())
}
