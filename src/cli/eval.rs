//! `siam eval`: retrieval recall@k both ways (CLIP_benchmark's definition), and for label
//! datasets zero-shot accuracy, precision@1 / R-precision / MAP@R (pytorch-metric-learning's
//! AccuracyCalculator) and linear-probe accuracy (the CLIP paper's logistic regression on frozen
//! image features). `--compare M1 M2` puts two models side by side; a PNG of the recall@k curves
//! comes with the JSON. `--alphas` measures the WiSE-FT curve of two models instead
//! ([`siam::merge::alpha_curve`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use siam_data::dataset::{Dataset, DatasetKind, Split};

use super::common::{embed_records_with_progress, recorded_split, report_missing, Bars, ModelArgs};
use siam::dataset::{DataConfig, SplitRecord};
use siam::device::DeviceConfig;
use siam::eval::classification::{neighbour_metrics, zero_shot, NeighbourReport, ZeroShotReport};
use siam::eval::linear_probe::{linear_probe, LinearProbeConfig, LinearProbeReport};
use siam::eval::plot::recall_curves;
use siam::eval::retrieval::{retrieval_report, Positives, RetrievalReport};
use siam::index::dataset::{dataset_texts, Subset};
use siam::index::{HnswParams, VectorIndex};
use siam::model::encoder::Encoder;

/// Evaluate one model (or compare two) on a dataset split.
#[derive(clap::Args, Debug)]
#[command(mut_arg("data", |a| a.required(true)))]
pub struct EvalArgs {
    /// The model (folder, or checkpoint with --arch). With --alphas: twice, the zero-shot
    /// model then the fine-tuned one.
    #[arg(long, short = 'm', required_unless_present = "compare")]
    pub model: Vec<PathBuf>,
    /// WiSE-FT curve: zero-shot accuracy of the weight-space blends (1 - a) * M1 + a * M2 for
    /// these alphas (e.g. 0,0.25,0.5,0.75,1) on every --data (the first is in-domain).
    #[arg(long, value_delimiter = ',')]
    pub alphas: Vec<f32>,
    /// Architecture for a bare checkpoint.
    #[arg(long)]
    pub arch: Option<String>,
    /// Two models to compare side by side (e.g. CLIP before and after training).
    #[arg(long, num_args = 2, value_names = ["M1", "M2"], conflicts_with = "model")]
    pub compare: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataConfig,
    #[command(flatten)]
    pub device: DeviceConfig,
    /// The split to evaluate: test, val, train or all.
    #[arg(long, default_value = "test")]
    pub split: Subset,
    /// Write the report as JSON here (and the recall@k curves as a PNG beside it).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also rank through an HNSW index and report its recall@10 against exact ranking.
    #[arg(long)]
    pub ann: bool,
    /// Skip the linear probe (it embeds the train split too).
    #[arg(long)]
    pub no_linear_probe: bool,
    /// Inverse regularisation C of the linear probe.
    #[arg(long, default_value_t = 1.0)]
    pub probe_c: f64,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Everything `siam eval` measures for one model.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The model.
    pub model: String,
    /// The dataset and split.
    pub data: String,
    /// The split.
    pub split: String,
    /// Images evaluated.
    pub images: usize,
    /// Texts ranked (class texts or captions).
    pub texts: usize,
    /// Retrieval in both directions.
    pub retrieval: RetrievalReport,
    /// Zero-shot classification (label datasets), with the model folder's learned prompts when
    /// it has them for every class.
    pub zero_shot: Option<ZeroShotReport>,
    /// Zero-shot classification with the hand-written templates, when `zero_shot` used learned
    /// prompts (side by side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot_templates: Option<ZeroShotReport>,
    /// precision@1, R-precision, MAP@R of image embeddings (label datasets).
    pub neighbours: Option<NeighbourReport>,
    /// Linear probe (label datasets with a train split).
    pub linear_probe: Option<LinearProbeReport>,
    /// HNSW recall@10 against exact search, per direction (with --ann).
    pub ann_recall_at_10: Option<AnnRecall>,
    /// The split the records were chosen from (seed and fractions).
    pub split_record: SplitRecord,
    /// Evaluated images the model was trained on (`None`: the model records no split of this
    /// dataset, so it cannot tell).
    pub training_images: Option<usize>,
}

/// HNSW recall@10 against exact ranking.
#[derive(Debug, Clone, Serialize)]
pub struct AnnRecall {
    /// Image queries against the text index.
    pub image_to_text: f64,
    /// Text queries against the image index.
    pub text_to_image: f64,
}

/// Runs `siam eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size: must be at least 1");
    anyhow::ensure!(args.threads > 0, "--threads: must be at least 1");
    anyhow::ensure!(
        args.probe_c.is_finite() && args.probe_c > 0.0,
        "--probe-c: must be a positive number, got {}",
        args.probe_c
    );
    if !args.alphas.is_empty() {
        return alpha_curve(&args);
    }
    // Refuse to replace a user's file before any work starts.
    if let Some(json) = &args.json {
        use siam::output::{check_replaceable, OutputKind};
        check_replaceable(json, OutputKind::EvalReport)?;
        check_replaceable(&json.with_extension("png"), OutputKind::Plot)?;
    }
    anyhow::ensure!(
        args.model.len() <= 1,
        "--model is given {} times; compare two models with --compare M1 M2, or blend them with --alphas",
        args.model.len()
    );
    let models: Vec<PathBuf> = match args.model.first() {
        Some(m) => vec![m.clone()],
        None => args.compare.clone(),
    };
    // The split: the first model's own for this dataset, if it recorded one.
    let splits: Vec<Option<SplitRecord>> = models.iter().map(|m| recorded_split(m)).collect();
    let primary = splits.iter().flatten().find(|r| args.data.is_split_of(r));
    let data = args.data.open_for_model(primary)?;
    report_missing(&data.dataset);
    let ds = Arc::new(data.dataset.clone());
    let records = args.split.records(&ds)?;
    if data.model_split_known() {
        siam::console::err_line(format_args!("{}", data.describe()));
    }
    let device = args.device.open()?;
    let mut reports = Vec::new();
    for (m, split) in models.iter().zip(&splits) {
        let enc = ModelArgs {
            model: m.clone(),
            arch: args.arch.clone(),
            tokenizer: None,
        }
        .load(&device)?;
        let mut report = evaluate(&enc, m, &ds, &records, &args, &data.split)?;
        report.training_images = match split {
            Some(r) if Some(r) == primary => data.trained_on(&records),
            Some(r) => args
                .data
                .training_images(r)?
                .map(|names| data.count_in(&records, &names)),
            None => None,
        };
        if let Some(n) = report.training_images.filter(|&n| n > 0) {
            siam::console::err_line(format_args!(
                "warning: {n} of the {} evaluated images were in the training split of {} (it was trained on them)",
                records.len(),
                m.display()
            ));
        }
        reports.push(report);
    }
    print_reports(&reports);
    if let Some(json) = &args.json {
        let value = if reports.len() == 1 {
            serde_json::to_value(&reports[0])?
        } else {
            serde_json::to_value(&reports)?
        };
        let body = serde_json::to_vec_pretty(&value)?;
        siam::output::write_file(json, siam::output::OutputKind::EvalReport, &body)?;
        let png = json.with_extension("png");
        let named: Vec<(&str, &RetrievalReport)> = reports
            .iter()
            .map(|r| (r.model.as_str(), &r.retrieval))
            .collect();
        recall_curves(&named, 10, &png)?;
        siam::console::err_line(format_args!(
            "wrote {} and {}",
            json.display(),
            png.display()
        ));
    }
    Ok(())
}

/// Embeds the split with `enc` and computes every metric that applies to the dataset.
pub fn evaluate(
    enc: &Encoder,
    model: &Path,
    ds: &Arc<Dataset>,
    records: &[usize],
    args: &EvalArgs,
    split: &SplitRecord,
) -> anyhow::Result<EvalReport> {
    let d = enc.dim();
    let img = embed_records_with_progress(
        enc,
        ds,
        records,
        args.batch_size,
        args.threads,
        args.data.on_bad_image,
        "images",
    )?;
    let kept: Vec<usize> = img.kept.iter().map(|&i| records[i]).collect();
    let (texts, entries) = dataset_texts(enc, ds, &kept, &Bars::default())?;
    let mut zero_templates = None;
    let (retrieval, zero, neighbours, probe) = match ds.kind {
        DatasetKind::Labels => {
            let labels: Vec<usize> = kept
                .iter()
                .map(|&r| {
                    ds.records[r]
                        .label
                        .context("a label dataset record without a label")
                })
                .collect::<anyhow::Result<_>>()?;
            let class_ids: Vec<usize> = entries
                .iter()
                .map(|e| e.label.unwrap_or(usize::MAX))
                .collect();
            let retrieval = retrieval_report(
                &img.data,
                &texts,
                d,
                Positives::Labels {
                    image_labels: &labels,
                    text_labels: &class_ids,
                },
            )?;
            let zero = zero_shot(&img.data, &texts, d, &labels)?;
            if siam::prompt::LearnedPrompts::of_encoder(enc)?
                .is_some_and(|lp| lp.classes_of(&ds.labels).is_some())
            {
                let hand = siam::index::dataset::template_class_texts(enc, ds)?;
                zero_templates = Some(zero_shot(&img.data, &hand, d, &labels)?);
            }
            let neighbours = if kept.len() > 1 {
                Some(neighbour_metrics(&img.data, d, &labels)?)
            } else {
                None
            };
            let probe = if args.no_linear_probe {
                None
            } else {
                linear_probe_on_train(enc, ds, &img.data, &labels, args)?
            };
            (retrieval, Some(zero), neighbours, probe)
        }
        DatasetKind::Captions => {
            let owners: Vec<usize> = entries
                .iter()
                .map(|e| e.image.unwrap_or(usize::MAX))
                .collect();
            let r = retrieval_report(
                &img.data,
                &texts,
                d,
                Positives::Captions {
                    text_to_image: &owners,
                },
            )?;
            (r, None, None, None)
        }
    };
    let ann = if args.ann {
        Some(ann_recall(&img.data, &texts, d)?)
    } else {
        None
    };
    Ok(EvalReport {
        model: model.display().to_string(),
        data: ds.root.display().to_string(),
        split: args.split.to_string(),
        images: kept.len(),
        texts: entries.len(),
        retrieval,
        zero_shot: zero,
        zero_shot_templates: zero_templates,
        neighbours,
        linear_probe: probe,
        ann_recall_at_10: ann,
        split_record: split.clone(),
        training_images: None,
    })
}

/// The CLIP paper's linear probe: logistic regression on frozen image features of the train
/// split, scored on the evaluated images. `None` when there is no train split to fit on.
fn linear_probe_on_train(
    enc: &Encoder,
    ds: &Arc<Dataset>,
    test_x: &[f32],
    test_y: &[usize],
    args: &EvalArgs,
) -> anyhow::Result<Option<LinearProbeReport>> {
    if matches!(args.split, Subset::All | Subset::Only(Split::Train)) {
        return Ok(None);
    }
    let train = ds.indices_of(Split::Train);
    if train.is_empty() {
        return Ok(None);
    }
    let e = embed_records_with_progress(
        enc,
        ds,
        &train,
        args.batch_size,
        args.threads,
        args.data.on_bad_image,
        "probe",
    )?;
    let y: Vec<usize> = e
        .kept
        .iter()
        .filter_map(|&i| ds.records[train[i]].label)
        .collect();
    let distinct: std::collections::BTreeSet<usize> = y.iter().copied().collect();
    if distinct.len() < 2 {
        return Ok(None);
    }
    let config = LinearProbeConfig {
        c: args.probe_c,
        ..LinearProbeConfig::default()
    };
    Ok(Some(linear_probe(
        &e.data, &y, test_x, test_y, e.dim, &config,
    )?))
}

/// Recall@10 of HNSW search against exact search, both directions.
fn ann_recall(images: &[f32], texts: &[f32], d: usize) -> anyhow::Result<AnnRecall> {
    let params = HnswParams::default();
    let one = |queries: &[f32], base: &[f32]| -> anyhow::Result<f64> {
        let idx = VectorIndex::build(base, d, params)?;
        let k = 10.min(idx.len());
        if k == 0 {
            return Ok(f64::NAN);
        }
        let (mut hit, mut total) = (0usize, 0usize);
        for q in queries.chunks(d) {
            let exact: std::collections::HashSet<usize> = idx
                .search_exact(q, k)?
                .into_iter()
                .map(|(i, _)| i)
                .collect();
            hit += idx
                .search(q, k, params.ef_search)?
                .iter()
                .filter(|(i, _)| exact.contains(i))
                .count();
            total += k;
        }
        Ok(hit as f64 / total.max(1) as f64)
    };
    Ok(AnnRecall {
        image_to_text: one(images, texts)?,
        text_to_image: one(texts, images)?,
    })
}

fn print_reports(reports: &[EvalReport]) {
    // NaN (e.g. R-precision when every class has one image) prints as "n/a".
    let pct = |v: f64| {
        if v.is_nan() {
            "   n/a".to_string()
        } else {
            format!("{:6.2}", 100.0 * v)
        }
    };
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |name: &str, f: &dyn Fn(&EvalReport) -> Option<String>| {
        let vals: Vec<String> = reports
            .iter()
            .map(|r| f(r).unwrap_or_else(|| "     -".into()))
            .collect();
        rows.push((name.to_string(), vals));
    };
    for (k, name) in [
        (1, "image->text R@1"),
        (5, "image->text R@5"),
        (10, "image->text R@10"),
    ] {
        add(name, &|r| Some(pct(r.retrieval.image_to_text.recall_at(k))));
    }
    add("image->text mean rank", &|r| {
        Some(format!("{:6.2}", r.retrieval.image_to_text.mean_rank))
    });
    add("image->text median rank", &|r| {
        Some(format!("{:6.1}", r.retrieval.image_to_text.median_rank))
    });
    for (k, name) in [
        (1, "text->image R@1"),
        (5, "text->image R@5"),
        (10, "text->image R@10"),
    ] {
        add(name, &|r| Some(pct(r.retrieval.text_to_image.recall_at(k))));
    }
    add("text->image mean rank", &|r| {
        Some(format!("{:6.2}", r.retrieval.text_to_image.mean_rank))
    });
    add("text->image median rank", &|r| {
        Some(format!("{:6.1}", r.retrieval.text_to_image.median_rank))
    });
    add("zero-shot top-1", &|r| {
        r.zero_shot.as_ref().map(|z| pct(z.top1))
    });
    if reports.iter().any(|r| r.zero_shot_templates.is_some()) {
        add("zero-shot top-1 (templates)", &|r| {
            r.zero_shot_templates
                .as_ref()
                .or(r.zero_shot.as_ref())
                .map(|z| pct(z.top1))
        });
        add("zero-shot top-1 (learned)", &|r| {
            r.zero_shot_templates
                .as_ref()
                .and(r.zero_shot.as_ref())
                .map(|z| pct(z.top1))
        });
    }
    add("zero-shot top-5", &|r| {
        r.zero_shot.as_ref().map(|z| pct(z.top5))
    });
    add("precision@1", &|r| {
        r.neighbours.as_ref().map(|n| pct(n.precision_at_1))
    });
    add("R-precision", &|r| {
        r.neighbours.as_ref().map(|n| pct(n.r_precision))
    });
    add("MAP@R", &|r| r.neighbours.as_ref().map(|n| pct(n.map_at_r)));
    add("linear probe", &|r| {
        r.linear_probe.as_ref().map(|p| pct(p.accuracy))
    });
    add("HNSW recall@10 (i->t)", &|r| {
        r.ann_recall_at_10.as_ref().map(|a| pct(a.image_to_text))
    });
    add("HNSW recall@10 (t->i)", &|r| {
        r.ann_recall_at_10.as_ref().map(|a| pct(a.text_to_image))
    });
    let first = &reports[0];
    siam::console::out_line(format_args!(
        "{} split of {}: {} images, {} texts (percent)",
        first.split, first.data, first.images, first.texts
    ));
    if reports.len() > 1 {
        siam::console::out_line(format_args!(
            "{:<26} {}",
            "",
            reports
                .iter()
                .enumerate()
                .map(|(i, _)| format!("  M{}", i + 1))
                .collect::<Vec<_>>()
                .join("    ")
        ));
        for (i, r) in reports.iter().enumerate() {
            siam::console::out_line(format_args!("  M{} = {}", i + 1, r.model));
        }
    }
    for (name, vals) in rows {
        siam::console::out_line(format_args!("{name:<26} {}", vals.join("  ")));
    }
}

/// Runs `siam eval --alphas`: the WiSE-FT curve of `--model ZERO_SHOT --model FINE_TUNED`.
fn alpha_curve(args: &EvalArgs) -> anyhow::Result<()> {
    use siam::merge::{load, CurveOptions, CurveSet};
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
    siam::merge::check_cards(&zs.card, &ft.card)?;
    let mut sets = Vec::new();
    for path in &args.data.data {
        let ds = Arc::new(args.data.open_path(path)?);
        report_missing(&ds);
        anyhow::ensure!(
            ds.kind == DatasetKind::Labels,
            "{}: --alphas measures zero-shot accuracy and needs a dataset with labels",
            path.display()
        );
        let records = args.split.records(&ds)?;
        sets.push(CurveSet {
            name: path.display().to_string(),
            dataset: ds,
            records,
        });
    }
    let options = CurveOptions {
        batch_size: args.batch_size,
        threads: args.threads,
        on_bad_image: args.data.on_bad_image,
    };
    let curve = siam::merge::alpha_curve(
        &zs,
        &ft,
        &args.alphas,
        &args.split.to_string(),
        &sets,
        options,
        &Bars::default(),
        &mut super::common::report_skipped,
    )?;
    print_curve(&curve);
    if let Some(json) = &args.json {
        siam::io::atomic_write_bytes(json, &serde_json::to_vec_pretty(&curve)?)?;
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
        siam::eval::plot::line_chart(
            &series,
            "WiSE-FT: zero-shot accuracy of (1 - alpha) * zero-shot + alpha * fine-tuned",
            "alpha",
            "top-1 accuracy",
            &png,
        )?;
        siam::console::err_line(format_args!(
            "wrote {} and {}",
            json.display(),
            png.display()
        ));
    }
    Ok(())
}

fn print_curve(c: &siam::merge::AlphaCurve) {
    siam::console::out_line(format_args!(
        "WiSE-FT curve, {} split: (1 - alpha) * {} + alpha * {}",
        c.split, c.zero_shot, c.fine_tuned
    ));
    siam::console::out_line(format_args!("zero-shot top-1 accuracy (percent)"));
    print!("{:>6}", "alpha");
    for d in &c.datasets {
        print!("  {:>12}", d.role);
    }
    siam::console::out_line(format_args!(""));
    for (k, a) in c.alphas.iter().enumerate() {
        print!("{a:>6.2}");
        for d in &c.datasets {
            print!("  {:>12.2}", 100.0 * d.top1[k]);
        }
        siam::console::out_line(format_args!(""));
    }
    for d in &c.datasets {
        siam::console::out_line(format_args!(
            "  {} = {} ({} images)",
            d.role, d.data, d.images
        ));
    }
}
