//! `siam index`: embeds a dataset's images and its label texts (or captions) with a model and
//! builds HNSW indexes over both.
//!
//! ```text
//! INDEX/model.json   which model built it: path, --arch, fingerprint
//! INDEX/hnsw/        the JointIndex (manifest, embeddings, ids, graphs)
//! ```
//! The folder is built under a temporary name and renamed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use siam_data::dataset::{Dataset, DatasetKind, Split};

use super::common::{embed_records_with_progress, progress_bar, DataArgs, DeviceArgs, ModelArgs};
use crate::embed::{embed_texts, ensemble};
use crate::index::{HnswParams, JointIndex, TextEntry, VectorIndex};
use crate::train::encoder::Encoder;

/// Build an HNSW index over a dataset's images and texts.
#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Output index folder.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Which records to index: all, train, val or test.
    #[arg(long, default_value = "all")]
    pub split: String,
    /// HNSW neighbours per node (M).
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// HNSW candidate list while building.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// HNSW candidate list while searching.
    #[arg(long, default_value_t = 64)]
    pub ef: usize,
    /// Batch size for embedding.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// `INDEX/model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexModel {
    /// The model path as an absolute path.
    pub path: PathBuf,
    /// `--arch` given with it.
    pub arch: Option<String>,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// The JointIndex folder inside an index folder.
pub fn hnsw_dir(index: &Path) -> PathBuf {
    index.join("hnsw")
}

/// Records of a split (`all` for every record); an error if the split is empty.
pub fn split_records(ds: &Dataset, split: &str) -> anyhow::Result<Vec<usize>> {
    if split == "all" {
        return Ok((0..ds.len()).collect());
    }
    let s: Split = split.parse().map_err(|_: String| {
        anyhow::anyhow!("--split {split:?}: expected all, train, val or test")
    })?;
    let idx = ds.indices_of(s);
    if idx.is_empty() {
        let (tr, va, te) = ds.split_counts();
        // The dataset's own name (a table's root is its folder, empty in the working folder).
        let name = if ds.name.is_empty() {
            ds.root.display().to_string()
        } else {
            ds.name.clone()
        };
        anyhow::bail!(
            "{name}: the dataset has no {split} split (train {tr}, val {va}, test {te} images); use --split all, or a split it has"
        );
    }
    Ok(idx)
}

/// One embedding per class of a label dataset from its prompt texts (the dataset's templates),
/// ensembled and re-normalised; row-major `classes x d`.
pub fn template_class_texts(enc: &Encoder, ds: &Dataset) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(ds.labels.len() * enc.dim());
    for c in 0..ds.labels.len() {
        let prompts: Vec<&str> = ds.label_texts[c]
            .iter()
            .map(|&t| ds.texts[t].as_str())
            .collect();
        out.extend(ensemble(enc, &prompts)?);
    }
    Ok(out)
}

/// Label datasets: one ensembled embedding per class (mean of its prompt-text embeddings,
/// re-normalised). Caption datasets: one per caption of the indexed records.
pub fn dataset_texts(
    enc: &Encoder,
    ds: &Dataset,
    records: &[usize],
) -> anyhow::Result<(Vec<f32>, Vec<TextEntry>)> {
    match ds.kind {
        DatasetKind::Labels => {
            let entries = (0..ds.labels.len())
                .map(|c| TextEntry {
                    text: ds.labels[c].clone(),
                    image: None,
                    label: Some(c),
                })
                .collect();
            // A model folder's learned prompts (siam train --prompt) replace the templates.
            if let Some(v) = crate::prompt::learned_class_embeddings(enc, &ds.labels)? {
                return Ok((v, entries));
            }
            Ok((template_class_texts(enc, ds)?, entries))
        }
        DatasetKind::Captions => {
            let mut entries = Vec::new();
            for (pos, &r) in records.iter().enumerate() {
                for &t in &ds.records[r].texts {
                    entries.push(TextEntry {
                        text: ds.texts[t].clone(),
                        image: Some(pos),
                        label: None,
                    });
                }
            }
            let texts: Vec<&str> = entries.iter().map(|e| e.text.as_str()).collect();
            let pb = progress_bar(texts.len(), "captions");
            let out = embed_texts(enc, &texts, 256, &mut |n| pb.set_position(n as u64))?;
            pb.finish_and_clear();
            Ok((out, entries))
        }
    }
}

/// Embeds `records` of `ds` and their texts with `enc` and writes an index folder at `out`.
#[allow(clippy::too_many_arguments)]
pub fn build_index(
    enc: &Encoder,
    model_path: &Path,
    arch: Option<&str>,
    ds: Arc<Dataset>,
    records: &[usize],
    out: &Path,
    params: HnswParams,
    batch_size: usize,
    threads: usize,
) -> anyhow::Result<(usize, usize)> {
    let fingerprint =
        crate::fingerprint::model_fingerprint(model_path, arch).with_context(|| {
            format!(
                "{}: reading the model to fingerprint it",
                model_path.display()
            )
        })?;
    let images = embed_records_with_progress(
        enc,
        &ds,
        records,
        batch_size,
        threads,
        siam_data::dataset::OnBadImage::Skip,
        "images",
    )?;
    let kept: Vec<usize> = images.kept.iter().map(|&i| records[i]).collect();
    let image_ids: Vec<String> = kept.iter().map(|&r| ds.records[r].image.name()).collect();
    let (texts, entries) = dataset_texts(enc, &ds, &kept)?;
    let graph = |vectors: &[f32], what: &str| {
        let pb = progress_bar(vectors.len() / enc.dim().max(1), what);
        let built = VectorIndex::build_with_progress(vectors, enc.dim(), params, &|k| pb.inc(k));
        pb.finish_and_clear();
        built
    };
    let image_graph = graph(&images.data, "image graph")?;
    let text_graph = graph(&texts, "text graph")?;
    let index = JointIndex::from_parts(&fingerprint, image_graph, image_ids, text_graph, entries)?;
    let model = IndexModel {
        path: std::fs::canonicalize(model_path).unwrap_or_else(|_| model_path.to_path_buf()),
        arch: arch.map(String::from),
        fingerprint,
    };
    let counts = (index.manifest().images, index.manifest().texts);
    crate::io::atomic_dir(out, crate::output::OutputKind::IndexFolder, |tmp| {
        index.save(&hnsw_dir(tmp))?;
        crate::io::atomic_write_bytes(
            &tmp.join("model.json"),
            &serde_json::to_vec_pretty(&model)?,
        )?;
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(counts)
}

/// Runs `siam index`.
pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    use crate::output::{check_replaceable, command_line, OutputKind, OutputLock};
    check_replaceable(&args.out, OutputKind::IndexFolder)?;
    let _lock = OutputLock::acquire(&args.out, &command_line())?;
    let ds = Arc::new(args.data.open()?);
    let records = split_records(&ds, &args.split)?;
    let device = args.device.open()?;
    let enc = args.model.load(&device)?;
    let params = HnswParams {
        m: args.m,
        ef_construction: args.ef_construction,
        ef_search: args.ef,
        ..HnswParams::default()
    };
    let (ni, nt) = build_index(
        &enc,
        &args.model.model,
        args.model.arch.as_deref(),
        ds,
        &records,
        &args.out,
        params,
        args.batch_size,
        args.threads,
    )?;
    crate::console::err_line(format_args!(
        "indexed {ni} images and {nt} texts in {}",
        args.out.display()
    ));
    Ok(())
}
