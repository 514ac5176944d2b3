//! `siam pseudo-label`: zero-shot labels for unlabelled images, kept by confidence and a
//! per-class cap, written as a label table `siam train --data` reads; with true labels at hand
//! (an image folder of class folders, CIFAR, a label table) also top-1/top-k accuracy, accuracy
//! against coverage and a reliability diagram (see [`siam::pseudo_label`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use siam_data::dataset::{Dataset, ImageSource};

use super::common::{embed_records_with_progress, LabelArgs, ModelArgs};
use siam::device::DeviceConfig;
use siam::embed::{class_probabilities, expand_image_args, files_dataset};
use siam::eval::plot::line_chart;
use siam::pseudo_label::{
    coverage_curve, reliability, select, write_table, CoveragePoint, PseudoLabel, PseudoRow,
    ReliabilityBin, Selection,
};

/// Label unlabelled images with zero-shot CLIP and write a training table.
#[derive(clap::Args, Debug)]
pub struct PseudoLabelArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceConfig,
    /// The images: a folder (walked recursively), or any dataset siam reads; class folders,
    /// CIFAR labels or a label column count as true labels for the accuracy report.
    #[arg(long)]
    pub data: PathBuf,
    /// Which records of a dataset with splits: all, train, val or test.
    #[arg(long, default_value = "all")]
    pub split: String,
    #[command(flatten)]
    pub labels: LabelArgs,
    /// The table to write (image, label, confidence, top_k). Images must lie in its folder or
    /// below; images that are not files (CIFAR) are written as PNGs into `<out stem>-images/`.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Labels (with probabilities) recorded per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Keep an image only if its top-1 probability is at least this.
    #[arg(long, default_value_t = 0.0)]
    pub min_confidence: f32,
    /// Keep at most this many images per label: the most confident (balanced sets).
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// The accuracy report written beside the table when true labels are known.
#[derive(Debug, Clone, Serialize)]
pub struct PseudoLabelReport {
    /// Images labelled.
    pub images: usize,
    /// Images kept by the threshold and cap.
    pub kept: usize,
    /// Top-1 accuracy over all images.
    pub top1: f64,
    /// Top-k accuracy over all images (k = --top-k).
    pub top_k: f64,
    /// k.
    pub k: usize,
    /// Top-1 accuracy of the kept images.
    pub kept_top1: f64,
    /// Accuracy against coverage.
    pub coverage: Vec<CoveragePoint>,
    /// Reliability diagram, 10 bins.
    pub reliability: Vec<ReliabilityBin>,
    /// Expected calibration error.
    pub ece: f64,
}

fn normalise(s: &str) -> String {
    s.trim().to_lowercase().replace('_', " ")
}

/// Opens `--data`: a dataset siam reads, else a plain folder of images.
fn open_images(path: &Path, split: &str) -> anyhow::Result<(Arc<Dataset>, Vec<usize>)> {
    match Dataset::open(path, &Default::default()) {
        Ok(ds) => {
            let records = split
                .parse::<siam::index::dataset::Subset>()?
                .records(&ds)?;
            Ok((Arc::new(ds), records))
        }
        Err(e) if path.is_dir() => {
            let files = expand_image_args(&[path.to_path_buf()])
                .with_context(|| format!("{} (as a dataset: {e})", path.display()))?;
            let n = files.len();
            Ok((Arc::new(files_dataset(&files)), (0..n).collect()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs `siam pseudo-label`.
pub fn run(args: PseudoLabelArgs) -> anyhow::Result<()> {
    let zero_shot = args.labels.classes()?;
    let labels = &zero_shot.labels;
    anyhow::ensure!(args.top_k > 0, "--top-k must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.min_confidence),
        "--min-confidence {} is not a probability in 0..=1",
        args.min_confidence
    );
    anyhow::ensure!(args.per_class != Some(0), "--per-class must be at least 1");
    let stem = args.out.with_extension("");
    for png in ["coverage", "reliability"] {
        let p = PathBuf::from(format!("{}.{png}.png", stem.display()));
        siam::output::check_replaceable(&p, siam::output::OutputKind::Plot)?;
    }
    let (ds, records) = open_images(&args.data, &args.split)?;
    let device = args.device.open()?;
    let enc = args.model.load(&device)?;
    let classes = zero_shot.embed(&enc)?;
    let emb = embed_records_with_progress(
        &enc,
        &ds,
        &records,
        args.batch_size,
        args.threads,
        siam_data::dataset::OnBadImage::Skip,
        "images",
    )?;
    let scale = enc.logit_scale();
    let pseudo: Vec<PseudoLabel> = emb
        .data
        .chunks(emb.dim)
        .zip(&emb.kept)
        .map(|(row, &i)| {
            let p = class_probabilities(row, &classes, scale);
            PseudoLabel::from_probabilities(records[i], &p, args.top_k.min(labels.len()))
        })
        .collect();
    let kept = select(
        &pseudo,
        Selection {
            min_confidence: args.min_confidence,
            per_class: args.per_class,
        },
    );
    let rows = table_rows(&args, &ds, labels, &pseudo, &kept)?;
    write_table(&args.out, &rows)?;
    siam::console::err_line(format_args!(
        "kept {} of {} images; wrote {}",
        kept.len(),
        pseudo.len(),
        args.out.display()
    ));
    // True labels, mapped onto the candidate labels by name.
    let by_name: std::collections::HashMap<String, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (normalise(l), i))
        .collect();
    let truth: Vec<Option<usize>> = pseudo
        .iter()
        .map(|p| {
            ds.records[p.item]
                .label
                .and_then(|l| by_name.get(&normalise(&ds.labels[l])).copied())
        })
        .collect();
    if truth.iter().all(Option::is_none) {
        return Ok(());
    }
    let report = accuracy_report(&pseudo, &truth, &kept, args.top_k);
    print_report(&report);
    let stem = args.out.with_extension("");
    let json = PathBuf::from(format!("{}.metrics.json", stem.display()));
    siam::io::atomic_write_bytes(&json, &serde_json::to_vec_pretty(&report)?)?;
    let cov_png = PathBuf::from(format!("{}.coverage.png", stem.display()));
    let cov: Vec<(f32, f32)> = report
        .coverage
        .iter()
        .map(|c| (c.coverage as f32, c.accuracy as f32))
        .collect();
    line_chart(
        &[("top-1 accuracy of the kept".to_string(), cov)],
        "Pseudo-labels: accuracy against coverage",
        "coverage (share kept, most confident first)",
        "accuracy",
        &cov_png,
    )?;
    let rel_png = PathBuf::from(format!("{}.reliability.png", stem.display()));
    let rel: Vec<(f32, f32)> = report
        .reliability
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| (b.confidence as f32, b.accuracy as f32))
        .collect();
    line_chart(
        &[
            (
                "perfect calibration".to_string(),
                vec![(0.0, 0.0), (1.0, 1.0)],
            ),
            (format!("model (ECE {:.3})", report.ece), rel),
        ],
        "Reliability diagram (10 bins)",
        "mean confidence in bin",
        "accuracy in bin",
        &rel_png,
    )?;
    siam::console::err_line(format_args!(
        "wrote {}, {} and {}",
        json.display(),
        cov_png.display(),
        rel_png.display()
    ));
    Ok(())
}

/// The kept images as table rows; images that are not files are written as PNGs beside the table.
fn table_rows(
    args: &PseudoLabelArgs,
    ds: &Dataset,
    labels: &[String],
    pseudo: &[PseudoLabel],
    kept: &[usize],
) -> anyhow::Result<Vec<PseudoRow>> {
    let stem = args.out.with_extension("");
    let png_dir = PathBuf::from(format!("{}-images", stem.display()));
    let mut rows = Vec::with_capacity(kept.len());
    for &k in kept {
        let p = &pseudo[k];
        let image = match &ds.records[p.item].image {
            ImageSource::File(f) => f.clone(),
            ImageSource::Rgb(img, _) => {
                let f = png_dir.join(format!("{:06}.png", p.item));
                let mut png = Vec::new();
                img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    .with_context(|| format!("{}", f.display()))?;
                siam::output::write_file(&f, siam::output::OutputKind::Plot, &png)?;
                f
            }
            other => anyhow::bail!(
                "{}: image {} is not a file; pseudo-label a folder of images, an image folder \
                 dataset or CIFAR",
                args.data.display(),
                other.name()
            ),
        };
        let (c, conf) = p.best();
        rows.push(PseudoRow {
            image,
            label: labels[c].clone(),
            confidence: conf,
            alternatives: p.top[1..]
                .iter()
                .map(|(c, q)| format!("{}={q:.4}", labels[*c]))
                .collect::<Vec<_>>()
                .join("|"),
        });
    }
    Ok(rows)
}

/// Accuracy of the pseudo-labels against the images' true labels (images whose true label is
/// not among the candidates count as wrong).
pub fn accuracy_report(
    pseudo: &[PseudoLabel],
    truth: &[Option<usize>],
    kept: &[usize],
    k: usize,
) -> PseudoLabelReport {
    let n = pseudo.len().max(1) as f64;
    let correct: Vec<bool> = pseudo
        .iter()
        .zip(truth)
        .map(|(p, t)| *t == Some(p.best().0))
        .collect();
    let in_top_k = pseudo
        .iter()
        .zip(truth)
        .filter(|(p, t)| t.is_some_and(|t| p.top.iter().any(|(c, _)| *c == t)))
        .count();
    let conf: Vec<f32> = pseudo.iter().map(|p| p.best().1).collect();
    let coverages: Vec<f64> = (1..=20).map(|i| i as f64 / 20.0).collect();
    let (bins, ece) = reliability(&conf, &correct, 10);
    PseudoLabelReport {
        images: pseudo.len(),
        kept: kept.len(),
        top1: correct.iter().filter(|&&c| c).count() as f64 / n,
        top_k: in_top_k as f64 / n,
        k,
        kept_top1: kept.iter().filter(|&&i| correct[i]).count() as f64 / kept.len().max(1) as f64,
        coverage: coverage_curve(&conf, &correct, &coverages),
        reliability: bins,
        ece,
    }
}

fn print_report(r: &PseudoLabelReport) {
    siam::console::out_line(format_args!(
        "{} images: top-1 {:.2}%, top-{} {:.2}%; kept {} at top-1 {:.2}%; ECE {:.4}",
        r.images,
        100.0 * r.top1,
        r.k,
        100.0 * r.top_k,
        r.kept,
        100.0 * r.kept_top1,
        r.ece
    ));
    siam::console::out_line(format_args!(
        "{:>9} {:>7} {:>10} {:>9}",
        "coverage", "kept", "threshold", "accuracy"
    ));
    for c in &r.coverage {
        siam::console::out_line(format_args!(
            "{:>8.0}% {:>7} {:>10.4} {:>8.2}%",
            100.0 * c.coverage,
            c.kept,
            c.threshold,
            100.0 * c.accuracy
        ));
    }
}
