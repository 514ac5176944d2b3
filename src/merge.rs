//! Weight-space interpolation of two models of one architecture: WiSE-FT (Wortsman et al.,
//! "Robust fine-tuning of zero-shot models", CVPR 2022, eq. 1):
//!
//! ```text
//! theta_alpha = (1 - alpha) * theta_0 + alpha * theta_1
//! ```
//!
//! with `theta_0` the zero-shot model and `theta_1` the fine-tuned one, applied to every tensor
//! of the model: both towers, the logit scale, the projection heads and any normalisation
//! buffers (as the reference `wise_ft.py` interpolates every key of the state dict). `alpha = 0`
//! gives the zero-shot weights and `alpha = 1` the fine-tuned weights bit for bit (the endpoints
//! are copied, not computed, so `-0.0` and rounding never change them). [`alpha_curve`]
//! measures the paper's curve: zero-shot accuracy of the blends along alpha (`siam eval
//! --alphas`).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::model::encoder::{Encoder, EncoderError};
use crate::model::folder::{self, FolderError, ModelCard};
use crate::model::twin::TwinTowers;

/// Errors of [`interpolate`] and [`merge_into_folder`].
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// `alpha` is not a finite number in `[0, 1]`.
    #[error("--alpha {0}: expected a number from 0 (zero-shot) to 1 (fine-tuned)")]
    Alpha(f32),
    /// A model could not be loaded (the cause is printed, not chained).
    #[error("{path}: {cause}")]
    Load {
        /// The model given.
        path: PathBuf,
        /// The cause (boxed: import errors are large).
        cause: Box<EncoderError>,
    },
    /// The two models' cards differ in an architecture field.
    #[error("the models differ in {field}: zero-shot {zero_shot}, fine-tuned {fine_tuned}")]
    Config {
        /// The first differing field, as a dotted path into `siam.json` (`clip.vision.width`).
        field: String,
        /// Its value in the zero-shot model.
        zero_shot: String,
        /// Its value in the fine-tuned model.
        fine_tuned: String,
    },
    /// The two models' tensors differ in name or shape.
    #[error("the models differ in tensor {name}: zero-shot {zero_shot}, fine-tuned {fine_tuned}")]
    Tensor {
        /// The first differing tensor's path (`clip.text.positional_embedding`).
        name: String,
        /// Its name and shape in the zero-shot model.
        zero_shot: String,
        /// Its name and shape in the fine-tuned model.
        fine_tuned: String,
    },
    /// The merged folder could not be written.
    #[error(transparent)]
    Folder(#[from] FolderError),
    /// A dataset of the WiSE-FT curve has images without labels.
    #[error("{0}: the WiSE-FT curve measures zero-shot accuracy and needs a dataset with labels")]
    NoLabels(String),
    /// Embedding a dataset's images failed.
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    /// Embedding a dataset's class texts failed.
    #[error(transparent)]
    Texts(#[from] crate::index::dataset::DatasetIndexError),
    /// Scoring the zero-shot classification failed.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// The tokenizer of the fine-tuned model could not be copied.
    #[error("{path}: {why}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        why: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, MergeError>;

/// The card fields that fix the architecture and the preprocessing: everything but provenance
/// (`initial_weights`, `training`) and the tokenizer file name.
fn architecture(card: &ModelCard) -> serde_json::Value {
    serde_json::json!({
        "clip": card.clip,
        "image_head": card.image_head,
        "text_head": card.text_head,
        "joint_dim": card.joint_dim,
        "image_size": card.image_size,
        "context_length": card.context_length,
        "mean": card.mean,
        "std": card.std,
    })
}

/// The first field (depth first, in key order) where two JSON values differ.
fn first_difference(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let null = Value::Null;
                first_difference(
                    &join(k),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(&join(&i.to_string()), p, q)),
        _ if a == b => None,
        _ => Some((path.to_string(), a.to_string(), b.to_string())),
    }
}

/// Checks that two cards describe one architecture with one preprocessing, naming the first
/// differing field.
pub fn check_cards(zero_shot: &ModelCard, fine_tuned: &ModelCard) -> Result<()> {
    match first_difference("", &architecture(zero_shot), &architecture(fine_tuned)) {
        None => Ok(()),
        Some((field, zero_shot, fine_tuned)) => Err(MergeError::Config {
            field,
            zero_shot,
            fine_tuned,
        }),
    }
}

/// Every float tensor of a module in visiting order, with its dotted path.
#[derive(Default)]
struct Collect {
    stack: Vec<String>,
    out: Vec<(String, TensorData)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push((
            self.stack.join("."),
            param.val().into_data().convert::<f32>(),
        ));
    }
}

/// Every float tensor of a model (parameters and buffers) in visiting order, with its dotted
/// path (`clip.text.positional_embedding`), as f32 data.
pub fn named_tensors(model: &TwinTowers) -> Vec<(String, TensorData)> {
    let mut c = Collect::default();
    model.visit(&mut c);
    c.out
}

/// Replaces the `i`-th visited float tensor by `(1 - alpha) * zero[i] + alpha * own`.
struct Blend {
    zero: Vec<TensorData>,
    alpha: f32,
    next: usize,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let zero = &self.zero[self.next];
        self.next += 1;
        let alpha = self.alpha;
        param.map(|fine| {
            let device = fine.device();
            let require_grad = fine.is_require_grad();
            let dtype = fine.dtype();
            let theta0 = Tensor::<D>::from_data(zero.clone(), &device).cast(dtype);
            let merged = theta0.mul_scalar(1.0 - alpha) + fine.mul_scalar(alpha);
            merged.set_require_grad(require_grad)
        })
    }
}

/// `(1 - alpha) * zero_shot + alpha * fine_tuned`, tensor by tensor (see the module
/// documentation). The models must have the same tensors in the same order with the same
/// shapes; the first one that differs is named in the error.
pub fn interpolate(
    zero_shot: &TwinTowers,
    fine_tuned: &TwinTowers,
    alpha: f32,
) -> Result<TwinTowers> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(MergeError::Alpha(alpha));
    }
    let a = named_tensors(zero_shot);
    let b = named_tensors(fine_tuned);
    let describe = |t: Option<&(String, TensorData)>| match t {
        Some((n, d)) => format!("{n} {:?}", d.shape()),
        None => "absent".to_string(),
    };
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i), b.get(i));
        let same =
            matches!((x, y), (Some((n, p)), Some((m, q))) if n == m && p.shape() == q.shape());
        if !same {
            let name = x.or(y).map(|(n, _)| n.clone()).unwrap_or_default();
            return Err(MergeError::Tensor {
                name,
                zero_shot: describe(x),
                fine_tuned: describe(y),
            });
        }
    }
    if alpha == 0.0 {
        return Ok(zero_shot.clone());
    }
    if alpha == 1.0 {
        return Ok(fine_tuned.clone());
    }
    let mut blend = Blend {
        zero: a.into_iter().map(|(_, d)| d).collect(),
        alpha,
        next: 0,
    };
    Ok(fine_tuned.clone().map(&mut blend))
}

/// Loads a model for merging: a siam model folder, or (with `arch` for a bare checkpoint) any
/// CLIP checkpoint siam imports, with identity heads.
pub fn load(path: &Path, arch: Option<&str>, device: &burn::tensor::Device) -> Result<Encoder> {
    let arch = if folder::is_model_folder(path) {
        None
    } else {
        arch
    };
    Encoder::load(path, arch, device).map_err(|cause| MergeError::Load {
        path: path.to_path_buf(),
        cause: Box::new(cause),
    })
}

/// Two loaded models blended at `alpha`, ready to embed: the fine-tuned model's card,
/// tokenizer and device.
pub fn blend_encoders(zero_shot: &Encoder, fine_tuned: &Encoder, alpha: f32) -> Result<Encoder> {
    check_cards(&zero_shot.card, &fine_tuned.card)?;
    let model = interpolate(&zero_shot.model, &fine_tuned.model, alpha)?;
    Ok(Encoder::from_parts(
        model,
        fine_tuned.card.clone(),
        fine_tuned.tokenizer.clone(),
        fine_tuned.device(),
    ))
}

/// Writes the WiSE-FT model at `alpha` as a siam model folder `out`, built under a temporary
/// name and renamed into place. The card is the fine-tuned model's, with the merge recorded
/// under `training.merge`; the fine-tuned model's tokenizer file is copied along.
pub fn merge_into_folder(
    zero_shot: &Encoder,
    fine_tuned: &Encoder,
    alpha: f32,
    out: &Path,
) -> Result<ModelCard> {
    let merged = blend_encoders(zero_shot, fine_tuned, alpha)?;
    let mut card = merged.card.clone();
    card.training = serde_json::json!({
        "merge": {
            "method": "wise-ft",
            "alpha": alpha,
            "zero_shot": zero_shot.source.display().to_string(),
            "fine_tuned": fine_tuned.source.display().to_string(),
        },
        "fine_tuned_training": fine_tuned.card.training,
    });
    let tokenizer = card
        .tokenizer
        .as_ref()
        .map(|name| fine_tuned.source.join(name))
        .filter(|p| p.is_file());
    if tokenizer.is_none() {
        card.tokenizer = None;
    }
    crate::io::atomic_dir(out, crate::output::OutputKind::ModelFolder, |tmp| {
        folder::save(tmp, &merged.model, &card, tokenizer.as_deref())?;
        Ok(())
    })
    .map_err(|e| MergeError::Write {
        path: out.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok(card)
}

/// One dataset a WiSE-FT curve is measured on: labelled images, classified zero-shot.
#[derive(Debug, Clone)]
pub struct CurveSet {
    /// The dataset as the user named it (for the report).
    pub name: String,
    /// The dataset.
    pub dataset: std::sync::Arc<siam_data::dataset::Dataset>,
    /// The records evaluated (one split).
    pub records: Vec<usize>,
}

/// How a curve's images are embedded.
#[derive(Debug, Clone, Copy)]
pub struct CurveOptions {
    /// Images per batch.
    pub batch_size: usize,
    /// Decoding threads.
    pub threads: usize,
    /// What an unreadable image does.
    pub on_bad_image: siam_data::dataset::OnBadImage,
}

/// One dataset's accuracies along the curve.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CurveData {
    /// The dataset path.
    pub data: String,
    /// `in-domain` (the first dataset) or `other`.
    pub role: &'static str,
    /// Images evaluated.
    pub images: usize,
    /// Zero-shot top-1 accuracy per alpha.
    pub top1: Vec<f64>,
    /// Zero-shot top-5 accuracy per alpha.
    pub top5: Vec<f64>,
}

/// The WiSE-FT curve (Wortsman et al. 2022, fig. 1): zero-shot accuracy of the blends
/// `(1 - alpha) * zero-shot + alpha * fine-tuned`, in-domain and on other datasets.
#[derive(Debug, Clone, serde::Serialize)]
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

/// Measures the WiSE-FT curve: for every alpha, the blend of `zero_shot` and `fine_tuned`
/// ([`blend_encoders`]) classifies each set's images zero-shot against its class texts
/// (prompt-ensembled templates, as `siam eval`). `progress` sees each embedding pass;
/// `skipped` is told the unreadable images of each.
#[allow(clippy::too_many_arguments)]
pub fn alpha_curve(
    zero_shot: &Encoder,
    fine_tuned: &Encoder,
    alphas: &[f32],
    split: &str,
    sets: &[CurveSet],
    options: CurveOptions,
    progress: &dyn crate::progress::Progress,
    skipped: &mut dyn FnMut(&siam_data::pipeline::BadImageSummary),
) -> Result<AlphaCurve> {
    check_cards(&zero_shot.card, &fine_tuned.card)?;
    let mut datasets: Vec<CurveData> = sets
        .iter()
        .enumerate()
        .map(|(i, s)| CurveData {
            data: s.name.clone(),
            role: if i == 0 { "in-domain" } else { "other" },
            images: 0,
            top1: Vec::new(),
            top5: Vec::new(),
        })
        .collect();
    for &alpha in alphas {
        let enc = blend_encoders(zero_shot, fine_tuned, alpha)?;
        for (set, data) in sets.iter().zip(&mut datasets) {
            let ds = &set.dataset;
            let img = crate::index::dataset::embed_dataset_images(
                &enc,
                ds,
                &set.records,
                options.batch_size,
                options.threads,
                options.on_bad_image,
                &format!("a={alpha}"),
                progress,
            )?;
            skipped(&img.skipped);
            let kept: Vec<usize> = img.kept.iter().map(|&k| set.records[k]).collect();
            let labels: Vec<usize> = kept
                .iter()
                .map(|&r| ds.records[r].label)
                .collect::<Option<_>>()
                .ok_or_else(|| MergeError::NoLabels(set.name.clone()))?;
            let (texts, _) = crate::index::dataset::dataset_texts(&enc, ds, &kept, progress)?;
            let z = crate::eval::classification::zero_shot(&img.data, &texts, enc.dim(), &labels)?;
            data.images = kept.len();
            data.top1.push(z.top1);
            data.top5.push(z.top5);
        }
    }
    Ok(AlphaCurve {
        zero_shot: zero_shot.source.display().to_string(),
        fine_tuned: fine_tuned.source.display().to_string(),
        split: split.to_string(),
        alphas: alphas.to_vec(),
        datasets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::config::ClipConfig;
    use crate::clip::model::Clip;
    use crate::model::heads::HeadConfig;
    use burn::tensor::Device;

    fn twin(seed: u64, device: &Device) -> TwinTowers {
        let cfg = ClipConfig::tiny();
        crate::model::init::seeded(device, seed, || {
            TwinTowers::new(
                Clip::new(&cfg, device),
                HeadConfig::linear(cfg.embed_dim, 16),
                device,
            )
        })
    }

    fn flat(m: &TwinTowers) -> Vec<Vec<f32>> {
        named_tensors(m)
            .into_iter()
            .map(|(_, d)| d.try_to_vec::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn endpoints_are_the_inputs_bit_for_bit_and_half_is_the_mean() {
        let d = Device::flex();
        let (a, b) = (twin(1, &d), twin(2, &d));
        let bits = |v: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
            v.into_iter()
                .map(|t| t.into_iter().map(f32::to_bits).collect())
                .collect()
        };
        assert_eq!(
            bits(flat(&interpolate(&a, &b, 0.0).unwrap())),
            bits(flat(&a))
        );
        assert_eq!(
            bits(flat(&interpolate(&a, &b, 1.0).unwrap())),
            bits(flat(&b))
        );
        let half = flat(&interpolate(&a, &b, 0.5).unwrap());
        let (fa, fb) = (flat(&a), flat(&b));
        assert_ne!(fa, fb);
        for ((h, x), y) in half.iter().zip(&fa).zip(&fb) {
            for ((h, x), y) in h.iter().zip(x).zip(y) {
                assert!((h - 0.5 * (x + y)).abs() <= 1e-7 * (1.0 + x.abs() + y.abs()));
            }
        }
    }

    #[test]
    fn mismatched_models_name_the_first_difference() {
        let d = Device::flex();
        let a = twin(1, &d);
        let cfg = ClipConfig::tiny();
        let b = TwinTowers::new(
            Clip::new(&cfg, &d),
            HeadConfig::linear(cfg.embed_dim, 8),
            &d,
        );
        let e = interpolate(&a, &b, 0.5).unwrap_err().to_string();
        assert!(e.contains("image_head.proj.weight"), "{e}");
        assert!(e.contains("[64, 16]") && e.contains("[64, 8]"), "{e}");
        assert!(matches!(
            interpolate(&a, &a, 1.5),
            Err(MergeError::Alpha(_))
        ));
    }

    #[test]
    fn card_mismatch_names_the_field() {
        let mut x = crate::model::encoder::clip_card(
            &ClipConfig::tiny(),
            folder::InitialWeights::Random {
                arch: "tiny".into(),
                seed: 0,
            },
            None,
        );
        let y = x.clone();
        assert!(check_cards(&x, &y).is_ok());
        x.clip.text.layers += 1;
        let e = check_cards(&x, &y).unwrap_err().to_string();
        assert!(e.contains("clip.text.layers"), "{e}");
    }
}
