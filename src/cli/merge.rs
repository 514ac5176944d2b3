//! `siam merge` (WiSE-FT weight-space interpolation of a zero-shot and a fine-tuned model) and
//! `siam eval --alphas` (the zero-shot accuracy curve of the blends, in-domain against other
//! domains, as in Wortsman et al. 2022, fig. 1).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use siam_data::dataset::DatasetKind;

use super::common::{embed_records_with_progress, DeviceArgs};
use super::eval::EvalArgs;
use super::index::{dataset_texts, split_records};
use crate::eval::classification::zero_shot;
use crate::eval::plot::line_chart;
use crate::merge::{blend_encoders, check_cards, load, merge_into_folder};

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
    pub device: DeviceArgs,
}

/// Runs `siam merge`.
pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let zs = load(&args.zero_shot, args.arch.as_deref(), &device)?;
    let ft = load(&args.fine_tuned, args.arch.as_deref(), &device)?;
    merge_into_folder(&zs, &ft, args.alpha, &args.out)?;
    eprintln!(
        "wrote {}: (1 - {a}) * {} + {a} * {}",
        args.out.display(),
        args.zero_shot.display(),
        args.fine_tuned.display(),
        a = args.alpha
    );
    Ok(())
}

/// One dataset's accuracies along the curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurveData {
    /// The dataset path.
    pub data: String,
    /// `in-domain` (the first --data) or `other`.
    pub role: &'static str,
    /// Images evaluated.
    pub images: usize,
    /// Zero-shot top-1 accuracy per alpha.
    pub top1: Vec<f64>,
    /// Zero-shot top-5 accuracy per alpha.
    pub top5: Vec<f64>,
}

/// The WiSE-FT curve `siam eval --alphas` writes.
#[derive(Debug, Clone, Serialize)]
pub struct AlphaCurve {
    /// The zero-shot model.
    pub zero_shot: String,
    /// The fine-tuned model.
    pub fine_tuned: String,
    /// The split evaluated.
    pub split: String,
    /// The blend weights of the fine-tuned model.
    pub alphas: Vec<f32>,
    /// Accuracy per dataset, the in-domain one first.
    pub datasets: Vec<CurveData>,
}

/// Runs `siam eval --alphas`.
pub fn alpha_curve(args: &EvalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.model.len() == 2,
        "--alphas needs --model twice: the zero-shot model, then the fine-tuned one (got {})",
        args.model.len()
    );
    for &a in &args.alphas {
        anyhow::ensure!(
            (0.0..=1.0).contains(&a),
            "--alphas: {a} is outside 0 (zero-shot) ..= 1 (fine-tuned)"
        );
    }
    let device = args.device.open()?;
    let zs = load(&args.model[0], args.arch.as_deref(), &device)?;
    let ft = load(&args.model[1], args.arch.as_deref(), &device)?;
    check_cards(&zs.card, &ft.card)?;
    let mut sets = Vec::new();
    for path in &args.data.data {
        let ds = Arc::new(args.data.open_path(path)?);
        anyhow::ensure!(
            ds.kind == DatasetKind::Labels,
            "{}: --alphas measures zero-shot accuracy and needs a dataset with labels",
            path.display()
        );
        let records = split_records(&ds, &args.split)?;
        sets.push((ds, records));
    }
    let mut curve = AlphaCurve {
        zero_shot: args.model[0].display().to_string(),
        fine_tuned: args.model[1].display().to_string(),
        split: args.split.clone(),
        alphas: args.alphas.clone(),
        datasets: Vec::new(),
    };
    for i in 0..sets.len() {
        curve.datasets.push(CurveData {
            data: args.data.data[i].display().to_string(),
            role: if i == 0 { "in-domain" } else { "other" },
            images: 0,
            top1: Vec::new(),
            top5: Vec::new(),
        });
    }
    for &alpha in &args.alphas {
        let enc = blend_encoders(&zs, &ft, alpha)?;
        for (i, (ds, records)) in sets.iter().enumerate() {
            let img = embed_records_with_progress(
                &enc,
                ds,
                records,
                args.batch_size,
                args.threads,
                args.data.on_bad_image,
                &format!("a={alpha}"),
            )?;
            let kept: Vec<usize> = img.kept.iter().map(|&k| records[k]).collect();
            let labels: Vec<usize> = kept
                .iter()
                .map(|&r| {
                    ds.records[r]
                        .label
                        .context("a label record without a label")
                })
                .collect::<anyhow::Result<_>>()?;
            let (texts, _) = dataset_texts(&enc, ds, &kept)?;
            let z = zero_shot(&img.data, &texts, enc.dim(), &labels)?;
            let c = &mut curve.datasets[i];
            c.images = kept.len();
            c.top1.push(z.top1);
            c.top5.push(z.top5);
        }
    }
    print_curve(&curve);
    if let Some(json) = &args.json {
        crate::io::atomic_write_bytes(json, &serde_json::to_vec_pretty(&curve)?)?;
        let png = json.with_extension("png");
        let series: Vec<(String, Vec<(f32, f32)>)> = curve
            .datasets
            .iter()
            .map(|c| {
                (
                    format!("{} ({})", c.data, c.role),
                    curve
                        .alphas
                        .iter()
                        .zip(&c.top1)
                        .map(|(&a, &v)| (a, v as f32))
                        .collect(),
                )
            })
            .collect();
        line_chart(
            &series,
            "WiSE-FT: zero-shot accuracy of (1 - alpha) * zero-shot + alpha * fine-tuned",
            "alpha",
            "top-1 accuracy",
            &png,
        )?;
        eprintln!("wrote {} and {}", json.display(), png.display());
    }
    Ok(())
}

fn print_curve(c: &AlphaCurve) {
    println!(
        "WiSE-FT curve, {} split: (1 - alpha) * {} + alpha * {}",
        c.split, c.zero_shot, c.fine_tuned
    );
    println!("zero-shot top-1 accuracy (percent)");
    print!("{:>6}", "alpha");
    for d in &c.datasets {
        print!("  {:>12}", d.role);
    }
    println!();
    for (k, a) in c.alphas.iter().enumerate() {
        print!("{a:>6.2}");
        for d in &c.datasets {
            print!("  {:>12.2}", 100.0 * d.top1[k]);
        }
        println!();
    }
    for d in &c.datasets {
        println!("  {} = {} ({} images)", d.role, d.data, d.images);
    }
}
