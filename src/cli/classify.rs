//! `siam classify`: zero-shot classification as CLIP does it. Per image, label probabilities
//! `softmax(logit_scale * cos(image, label))`, where a label's embedding is the re-normalised
//! mean of its normalised template embeddings (prompt ensembling).

use std::path::PathBuf;

use siam_data::dataset::OnBadImage;

use super::common::{read_lines, DeviceArgs, ModelArgs};
use crate::embed::{class_embeddings, class_probabilities, embed_image_files, expand_image_args};

/// Classify images against label texts (zero-shot).
#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// Images (files or folders).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Comma-separated labels, e.g. "cataract,pterygium,normal eye".
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// A file with one label per line.
    #[arg(long)]
    pub labels_file: Option<PathBuf>,
    /// Prompt template with {} for the label; repeat to ensemble several. Default: "a photo of a {}."
    #[arg(long = "template")]
    pub templates: Vec<String>,
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
    let mut labels: Vec<String> = args
        .labels
        .iter()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(f) = &args.labels_file {
        labels.extend(read_lines(f)?);
    }
    anyhow::ensure!(
        !labels.is_empty(),
        "no labels: give --labels a,b,c or --labels-file FILE"
    );
    anyhow::ensure!(args.top_k > 0, "--top-k must be at least 1");
    for t in &args.templates {
        anyhow::ensure!(t.contains("{}"), "template {t:?} has no {{}} for the label");
    }
    let templates = if args.templates.is_empty() {
        vec!["a photo of a {}.".to_string()]
    } else {
        args.templates.clone()
    };
    let images = expand_image_args(&args.images)?;
    let device = args.device.open()?;
    let enc = args.model.load(&device)?;
    let classes = class_embeddings(&enc, &labels, &templates)?;
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
        crate::console::out_line(format_args!("{}", serde_json::to_string_pretty(&v)?));
    } else {
        for (img, top) in &results {
            crate::console::out_line(format_args!("{img}"));
            for (l, p) in top {
                crate::console::out_line(format_args!("  {:6.2}%  {l}", p * 100.0));
            }
        }
    }
    Ok(())
}
