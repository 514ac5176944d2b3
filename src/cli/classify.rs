//! `siam classify`: zero-shot classification as CLIP does it. Per image, label probabilities
//! `softmax(logit_scale * cos(image, label))`, where a label's embedding is the re-normalised
//! mean of its normalised template embeddings (prompt ensembling).

use std::path::PathBuf;

use siam_data::dataset::OnBadImage;

use super::common::{LabelArgs, ModelArgs};
use siam::device::DeviceConfig;
use siam::embed::{class_probabilities, embed_image_files, expand_image_args};

/// Classify images against label texts (zero-shot).
#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// Images (files or folders).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceConfig,
    #[command(flatten)]
    pub labels: LabelArgs,
    /// How many labels to print per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

/// Runs `siam classify`.
pub fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    let zero_shot = args.labels.classes()?;
    anyhow::ensure!(args.top_k > 0, "--top-k must be at least 1");
    let labels = &zero_shot.labels;
    let images = expand_image_args(&args.images)?;
    let device = args.device.open()?;
    let enc = args.model.load(&device)?;
    let classes = zero_shot.embed(&enc)?;
    let emb = embed_image_files(
        &enc,
        &images,
        args.batch_size,
        2,
        OnBadImage::Fail,
        &mut |_| {},
    )?;
    let scale = enc.logit_scale();
    let mut results = Vec::new();
    for (row, &i) in emb.data.chunks(emb.dim).zip(&emb.kept) {
        let p = class_probabilities(row, &classes, scale);
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        order.truncate(args.top_k);
        results.push((
            images[i].display().to_string(),
            order
                .into_iter()
                .map(|c| (labels[c].clone(), p[c]))
                .collect::<Vec<_>>(),
        ));
    }
    if args.json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|(img, top)| {
                serde_json::json!({
                    "image": img,
                    "labels": top.iter().map(|(l, p)| serde_json::json!({"label": l, "probability": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        siam::console::out_line(format_args!("{}", serde_json::to_string_pretty(&v)?));
    } else {
        for (img, top) in &results {
            siam::console::out_line(format_args!("{img}"));
            for (l, p) in top {
                siam::console::out_line(format_args!("  {:6.2}%  {l}", p * 100.0));
            }
        }
    }
    Ok(())
}
