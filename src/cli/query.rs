//! `siam query`: image queries answer the best-matching label texts (or captions), `--text`
//! queries answer the best-matching images, from an index folder written by `siam index` or
//! `siam train`.

use std::path::PathBuf;

use anyhow::Context;
use siam_data::dataset::OnBadImage;

use super::common::{DeviceArgs, ModelArgs};
use super::index::{hnsw_dir, IndexModel};
use crate::embed::{embed_image_files, embed_texts, expand_image_args};
use crate::index::{Hit, JointIndex};

/// Ask an index: images in, label texts out; or --text in, images out.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["images", "text"])))]
pub struct QueryArgs {
    /// Query images.
    pub images: Vec<PathBuf>,
    /// Query texts (answers are images).
    #[arg(long, num_args = 1..)]
    pub text: Vec<String>,
    /// The index folder (from `siam index`, or `<run>/index` from `siam train`; a training
    /// output folder with an `index/` inside also works).
    #[arg(long, short = 'i')]
    pub index: PathBuf,
    /// Answers per query.
    #[arg(long, short = 'k', default_value_t = 5)]
    pub k: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Brute force instead of HNSW.
    #[arg(long)]
    pub exact: bool,
    /// Model to embed the queries with (default: the one that built the index).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Architecture for a bare checkpoint given with --model.
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs `siam query`.
pub fn run(args: QueryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.k > 0, "--k must be at least 1");
    let mut dir = args.index.clone();
    if !dir.join("model.json").is_file() && dir.join("index").join("model.json").is_file() {
        dir = dir.join("index");
    }
    anyhow::ensure!(dir.exists(), "{}: no such index folder", dir.display());
    let card_path = dir.join("model.json");
    let card: IndexModel =
        serde_json::from_slice(&std::fs::read(&card_path).with_context(|| {
            format!("{}: not a siam index folder (no model.json)", dir.display())
        })?)
        .with_context(|| format!("{}: not a siam index manifest", card_path.display()))?;
    let images = expand_image_args(&args.images)?;
    let (model_path, arch) = match &args.model {
        Some(m) => (m.clone(), args.arch.clone()),
        None => (card.path.clone(), card.arch.clone()),
    };
    let fingerprint = crate::fingerprint::model_fingerprint(&model_path, arch.as_deref())
        .with_context(|| format!("{}: the model that built this index", model_path.display()))?;
    let index = JointIndex::load(&hnsw_dir(&dir), Some(&fingerprint))?;
    let device = args.device.open()?;
    let enc = ModelArgs {
        model: model_path,
        arch,
        tokenizer: None,
    }
    .load(&device)?;
    let results: Vec<(String, Vec<Hit>)> = if !images.is_empty() {
        let n = index.manifest().texts;
        anyhow::ensure!(n > 0, "{}: the index holds no texts", dir.display());
        anyhow::ensure!(
            args.k <= n,
            "--k {} is larger than the {n} texts in the index",
            args.k
        );
        let e = embed_image_files(&enc, &images, 32, 2, OnBadImage::Fail, &mut |_| {})?;
        e.data
            .chunks(e.dim)
            .zip(&e.kept)
            .map(|(q, &i)| {
                Ok((
                    images[i].display().to_string(),
                    index.query_by_image_embedding(q, args.k, args.exact)?,
                ))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        let n = index.manifest().images;
        anyhow::ensure!(n > 0, "{}: the index holds no images", dir.display());
        anyhow::ensure!(
            args.k <= n,
            "--k {} is larger than the {n} images in the index",
            args.k
        );
        let refs: Vec<&str> = args.text.iter().map(String::as_str).collect();
        let e = embed_texts(&enc, &refs, 256, &mut |_| {})?;
        e.chunks(enc.dim())
            .zip(&args.text)
            .map(|(q, t)| {
                Ok((
                    t.clone(),
                    index.query_by_text_embedding(q, args.k, args.exact)?,
                ))
            })
            .collect::<anyhow::Result<_>>()?
    };
    print_results(&results, args.json)
}

fn print_results(results: &[(String, Vec<Hit>)], json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|(q, hits)| serde_json::json!({ "query": q, "hits": hits }))
            .collect();
        crate::console::out_line(format_args!("{}", serde_json::to_string_pretty(&v)?));
    } else {
        for (q, hits) in results {
            crate::console::out_line(format_args!("{q}"));
            for h in hits {
                crate::console::out_line(format_args!("  {:.4}  {}", h.score, h.name));
            }
        }
    }
    Ok(())
}
