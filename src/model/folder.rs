//! The trained model folder that `siam train` writes and every other command loads.
//!
//! ```text
//! <out>/siam.json            ModelCard: marker, CLIP config, heads, tokenizer, preprocessing,
//!                            the training configuration and the split it trained on
//! <out>/model.safetensors    TwinTowers parameters (burn layout, enum variant names skipped)
//! <out>/tokenizer.json       only when the source checkpoint brought its own tokenizer
//! ```
//!
//! Each file is written to a temporary name and renamed ([`crate::io`]); the card comes last.

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::heads::{HeadConfig, HeadKind};
use super::twin::TwinTowers;
use crate::clip::config::ClipConfig;
use crate::clip::model::Clip;

/// Value of [`ModelCard::format`].
pub const FORMAT: &str = "siam-model";
/// Current [`ModelCard::version`].
pub const VERSION: u32 = 1;
/// The card's file name.
pub const CARD_FILE: &str = "siam.json";
/// The weights' file name.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Errors reading or writing a model folder.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// `siam.json` is missing or is not a siam model card.
    #[error("{path}: not a siam model folder ({why})")]
    NotAModel {
        /// The folder or card.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The weights do not fit the architecture in the card.
    #[error("{path}: weights do not match siam.json ({why})")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What differs.
        why: String,
    },
    /// `siam.json` is a siam model card with a value no model can be built with (or a version
    /// this build does not read).
    #[error("{path}: {why}")]
    Invalid {
        /// The card.
        path: PathBuf,
        /// The field and what is allowed.
        why: String,
    },
    /// Writing failed; nothing was replaced.
    #[error("could not write model folder {path}: {why}")]
    Write {
        /// The folder.
        path: PathBuf,
        /// What failed.
        why: String,
    },
}

/// Where the initial weights of a trained model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InitialWeights {
    /// A checkpoint file or folder.
    Checkpoint {
        /// Its path as given.
        path: String,
    },
    /// Random initialisation from an architecture (preset name or config file), with this seed.
    Random {
        /// The architecture as given (`tiny`, `ViT-B-32`, a JSON path).
        arch: String,
        /// The seed of the initialisation.
        seed: u64,
    },
}

/// `siam.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Always [`FORMAT`].
    pub format: String,
    /// Card version.
    pub version: u32,
    /// The CLIP architecture.
    pub clip: ClipConfig,
    /// The image head.
    pub image_head: HeadConfig,
    /// The text head.
    pub text_head: HeadConfig,
    /// Size of the joint space.
    pub joint_dim: usize,
    /// Tokenizer file inside the folder, or `None` for siam's built-in CLIP tokenizer.
    pub tokenizer: Option<String>,
    /// Model input side in pixels.
    pub image_size: usize,
    /// Text context length.
    pub context_length: usize,
    /// Preprocessing mean per channel.
    pub mean: [f32; 3],
    /// Preprocessing std per channel.
    pub std: [f32; 3],
    /// Where the weights training started from.
    pub initial_weights: InitialWeights,
    /// The resolved training configuration (free-form, for the record).
    #[serde(default)]
    pub training: serde_json::Value,
    /// The dataset and train/val/test split the model was trained on; `siam eval` and `siam
    /// index` use it for that dataset (`None`: not trained by siam, or by an older version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::dataset::SplitRecord>,
}

impl ModelCard {
    /// A fresh TwinTowers of this card's architecture (random values, to be overwritten),
    /// drawn under [`super::init::shell`].
    pub fn init(&self, device: &Device) -> TwinTowers {
        super::init::shell(|| TwinTowers {
            clip: Clip::new(&self.clip, device),
            image_head: self.image_head.init(device),
            text_head: self.text_head.init(device),
            logit_bias: None,
        })
    }
}

/// Identity head config for a plain CLIP of embedding size `d`.
pub fn identity_head(d: usize) -> HeadConfig {
    HeadConfig {
        kind: HeadKind::Identity,
        d_in: d,
        d_out: d,
        ratio: 0.0,
        reduction: 1,
    }
}

/// Whether `path` is a siam model folder (holds `siam.json`).
pub fn is_model_folder(path: &Path) -> bool {
    path.join(CARD_FILE).is_file()
}

/// The `format` a folder's `siam.json` declares, if it has one that parses as JSON; a folder
/// declaring [`FORMAT`] is loaded as a trained model (and a bad card is reported as such).
pub fn card_format(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(CARD_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("format")?.as_str().map(String::from)
}

/// Reads `siam.json` of a folder: the format and version are checked first (an unknown
/// version is refused by name), then the fields, then every size through
/// [`ModelCard::validate`].
pub fn read_card(dir: &Path) -> Result<ModelCard, FolderError> {
    let p = dir.join(CARD_FILE);
    let bad = |why: String| FolderError::NotAModel {
        path: p.clone(),
        why,
    };
    let bytes = std::fs::read(&p).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let format = value.get("format").and_then(|f| f.as_str());
    if format != Some(FORMAT) {
        return Err(bad(format!("format is {format:?}, expected {FORMAT:?}")));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        other => {
            return Err(FolderError::Invalid {
                path: p.clone(),
                why: format!(
                    "version {}, this siam reads version {VERSION}; a newer siam wrote it, or the file was edited",
                    other.map_or_else(|| value["version"].to_string(), |v| v.to_string())
                ),
            })
        }
    }
    let card: ModelCard = serde_json::from_value(value).map_err(|e| FolderError::Invalid {
        path: p.clone(),
        why: e.to_string(),
    })?;
    card.validate(&p)?;
    Ok(card)
}

impl ModelCard {
    /// Checks every size against what can build and run a model: the CLIP config
    /// ([`ClipConfig::validate`]), `joint_dim` and the heads' sizes, `image_size` and
    /// `context_length` against the towers', `mean` finite and `std` finite and above 0.
    /// Errors name `path`, the field and the allowed values.
    pub fn validate(&self, path: &Path) -> Result<(), FolderError> {
        use crate::clip::config::{in_range, positive, positive_f64};
        let src = path.display().to_string();
        let invalid = |why: String| FolderError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        let config = |e: crate::clip::config::ConfigError| invalid(e.to_string());
        let range = |field: &str, value: usize, lo: usize, hi: usize| {
            in_range(&src, field, value, lo, hi).map_err(config)
        };
        self.clip
            .validate(&format!("{src}: clip"))
            .map_err(config)?;
        positive(&src, "joint_dim", self.joint_dim).map_err(config)?;
        let size = self.clip.image_size();
        range("image_size", self.image_size, size, size)?;
        range(
            "context_length",
            self.context_length,
            2,
            self.clip.context_length(),
        )?;
        for c in 0..3 {
            positive_f64(&src, &format!("std[{c}]"), f64::from(self.std[c])).map_err(config)?;
            if !self.mean[c].is_finite() {
                return Err(invalid(format!(
                    "mean[{c}] = {} is not finite",
                    self.mean[c]
                )));
            }
        }
        for (name, head) in [
            ("image_head", &self.image_head),
            ("text_head", &self.text_head),
        ] {
            let e = self.clip.embed_dim;
            range(&format!("{name}.d_in"), head.d_in, e, e)?;
            let j = self.joint_dim;
            range(&format!("{name}.d_out"), head.d_out, j, j)?;
            if head.kind == HeadKind::Identity && head.d_in != head.d_out {
                return Err(invalid(format!(
                    "{name} is an identity head from {} to {}",
                    head.d_in, head.d_out
                )));
            }
            if head.kind == HeadKind::Adapter {
                range(&format!("{name}.reduction"), head.reduction, 1, head.d_in)?;
                if !(0.0..=1.0).contains(&head.ratio) {
                    return Err(invalid(format!(
                        "{name}.ratio = {} is invalid (allowed: 0 to 1)",
                        head.ratio
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Serialises the model's parameters as safetensors bytes.
fn weights_bytes(model: &TwinTowers) -> Result<Vec<u8>, burn::store::SafetensorsStoreError> {
    let mut store = SafetensorsStore::from_bytes(None).skip_enum_variants(true);
    model.save_into(&mut store)?;
    store.get_bytes()
}

/// Writes a model folder: `model.safetensors` (and the tokenizer copy) first, `siam.json` last,
/// each file to a temporary name and renamed, so a folder that has a card always has complete
/// weights. Other files in the folder (a run's checkpoint, metrics) are left alone.
pub fn save(
    dir: &Path,
    model: &TwinTowers,
    card: &ModelCard,
    tokenizer_src: Option<&Path>,
) -> Result<(), FolderError> {
    let werr = |why: String| FolderError::Write {
        path: dir.to_path_buf(),
        why,
    };
    // A card no later command could load is never written.
    card.validate(&dir.join(CARD_FILE))?;
    let weights = weights_bytes(model).map_err(|e| werr(e.to_string()))?;
    let json = serde_json::to_vec_pretty(card).map_err(|e| werr(e.to_string()))?;
    crate::io::atomic_write_bytes(&dir.join(WEIGHTS_FILE), &weights)
        .map_err(|e| werr(e.to_string()))?;
    if let (Some(src), Some(name)) = (tokenizer_src, &card.tokenizer) {
        let bytes = std::fs::read(src).map_err(|e| werr(format!("{}: {e}", src.display())))?;
        crate::io::atomic_write_bytes(&dir.join(name), &bytes).map_err(|e| werr(e.to_string()))?;
    }
    crate::io::atomic_write_bytes(&dir.join(CARD_FILE), &json).map_err(|e| werr(e.to_string()))
}

/// Loads a model folder onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<(TwinTowers, ModelCard), FolderError> {
    let card = read_card(dir)?;
    let mut model = card.init(device);
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(FolderError::NotAModel {
            path,
            why: "model.safetensors is missing".into(),
        });
    }
    let mut store = SafetensorsStore::from_file(&path).skip_enum_variants(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| FolderError::Weights {
            path: path.clone(),
            why: e.to_string(),
        })?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(FolderError::Weights {
            path,
            why: format!(
                "missing {:?}, errors {:?}",
                result.missing.iter().map(|m| &m.0).collect::<Vec<_>>(),
                result.errors
            ),
        });
    }
    Ok((model, card))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::twin::{ImageInput, TextInput};
    use burn::tensor::{Distribution, Int, Tensor, TensorData};

    fn card() -> ModelCard {
        let clip = ClipConfig::tiny();
        let head = HeadConfig {
            kind: HeadKind::Adapter,
            d_in: clip.embed_dim,
            d_out: 32,
            ratio: 0.2,
            reduction: 4,
        };
        ModelCard {
            format: FORMAT.into(),
            version: VERSION,
            image_size: clip.image_size(),
            context_length: clip.context_length(),
            clip,
            image_head: head,
            text_head: head,
            joint_dim: 32,
            tokenizer: None,
            mean: [0.5; 3],
            std: [0.25; 3],
            initial_weights: InitialWeights::Random {
                arch: "tiny".into(),
                seed: 1,
            },
            training: serde_json::Value::Null,
            split: None,
        }
    }

    #[test]
    fn save_then_load_gives_the_same_embeddings() {
        let d = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        let card = card();
        let model = card.init(&d);
        save(&out, &model, &card, None).unwrap();
        let (back, card2) = load(&out, &d).unwrap();
        assert_eq!(card, card2);
        let px = Tensor::<4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &d);
        let a = model
            .embed_images(ImageInput::Pixels(px.clone()))
            .into_data();
        let b = back.embed_images(ImageInput::Pixels(px)).into_data();
        assert_eq!(a, b);
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(vec![49406i64, 320, 49407], [1, 3]), &d);
        let ta = model.embed_texts(TextInput::Tokens {
            ids: ids.clone(),
            lengths: vec![3],
        });
        let tb = back.embed_texts(TextInput::Tokens {
            ids,
            lengths: vec![3],
        });
        assert_eq!(ta.into_data(), tb.into_data());
    }

    #[test]
    fn a_folder_without_card_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), &Device::flex()).unwrap_err();
        assert!(err.to_string().contains("not a siam model folder"), "{err}");
    }
}
