//! `siam embed`: L2-normalised embeddings of images or texts as a `.npy` file numpy reads, with
//! a sidecar `<out>.ids.json` listing the id (path or text) of each row.

use std::path::PathBuf;

use anyhow::Context;
use siam_data::dataset::OnBadImage;

use super::common::{progress_bar, report_skipped, ModelArgs};
use siam::device::DeviceConfig;
use siam::embed::{embed_image_files, embed_texts, expand_image_args};
use siam::io::write_npy;

/// Embed images or texts into the joint space.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["images", "texts", "texts_file"])))]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceConfig,
    /// Image files or folders (walked recursively).
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Texts to embed.
    #[arg(long, num_args = 1..)]
    pub texts: Vec<String>,
    /// A file with one text per line.
    #[arg(long)]
    pub texts_file: Option<PathBuf>,
    /// Output .npy file (a sidecar <out>.ids.json lists the row ids).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// What to do with an unreadable image: fail (default here) or skip.
    #[arg(long, default_value = "fail")]
    pub on_bad_image: OnBadImage,
}

/// Runs `siam embed`.
pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size: must be at least 1");
    anyhow::ensure!(args.threads > 0, "--threads: must be at least 1");
    use siam::output::{check_replaceable, write_file, OutputKind};
    check_replaceable(&args.out, OutputKind::Embeddings)?;
    check_replaceable(&sidecar_path(&args.out), OutputKind::EmbeddingIds)?;
    // Resolve every input before loading the model, so bad input fails fast.
    let images = if args.images.is_empty() {
        Vec::new()
    } else {
        expand_image_args(&args.images)?
    };
    let texts: Vec<String> = match &args.texts_file {
        Some(f) => siam::embed::read_lines(f)?,
        None => args.texts.clone(),
    };
    let device = args.device.open()?;
    let enc = args.model.load(&device)?;
    let (data, ids): (Vec<f32>, Vec<String>) = if !images.is_empty() {
        let pb = progress_bar(images.len(), "images");
        let e = embed_image_files(
            &enc,
            &images,
            args.batch_size,
            args.threads,
            args.on_bad_image,
            &mut |n| pb.set_position(n as u64),
        )
        .map_err(|e| match e {
            // Only `embed` among the commands that stop on a bad image can skip one instead.
            siam::embed::EmbedError::Image(_) => {
                anyhow::anyhow!("{e} (use --on-bad-image skip to leave such images out)")
            }
            e => e.into(),
        })?;
        pb.finish_and_clear();
        report_skipped(&e.skipped);
        let ids = e
            .kept
            .iter()
            .map(|&i| images[i].display().to_string())
            .collect();
        (e.data, ids)
    } else {
        let pb = progress_bar(texts.len(), "texts");
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let d = embed_texts(&enc, &refs, 256, &mut |n| pb.set_position(n as u64))?;
        pb.finish_and_clear();
        (d, texts.clone())
    };
    let dim = enc.dim();
    let rows = data.len() / dim;
    let sidecar = sidecar_path(&args.out);
    let json = serde_json::to_vec_pretty(&serde_json::json!({ "dim": dim, "ids": ids }))?;
    write_npy(&args.out, &data, rows, dim).with_context(|| "writing embeddings")?;
    // The sidecar marks the .npy as siam's; without it the pair is not left half written.
    if let Err(e) = write_file(&sidecar, OutputKind::EmbeddingIds, &json) {
        let _ = std::fs::remove_file(&args.out);
        return Err(e.into());
    }
    siam::console::err_line(format_args!(
        "wrote {rows} x {dim} embeddings to {} (ids in {})",
        args.out.display(),
        sidecar.display()
    ));
    Ok(())
}

/// `emb.npy` -> `emb.ids.json`.
pub fn sidecar_path(out: &std::path::Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "embeddings".into());
    out.with_file_name(format!("{stem}.ids.json"))
}
