//! [`Encoder`]: one type that embeds images and texts into a joint, L2-normalised space for
//! every model siam can load, so `embed`, `classify`, `index`, `query` and `eval` need not care
//! where the model came from:
//!
//! - a folder written by `siam train` (`siam.json` with `"format": "siam-model"`): the CLIP
//!   towers and the trained heads;
//! - anything [`crate::clip::import::load_model`] reads (Hugging Face folders, OpenAI/open_clip
//!   state dicts with `--arch`, siam CLIP folders): the CLIP towers with identity heads.

use burn::tensor::{Device, Int, Tensor, TensorData};
use std::path::{Path, PathBuf};

use super::folder::{self, identity_head, InitialWeights, ModelCard, FORMAT, VERSION};
use super::twin::{ImageInput, TextInput, TwinTowers};
use crate::clip::config::ClipConfig;
use crate::clip::import::{load_model, ImportError};
use siam_data::preprocess::Preprocessor;
use siam_data::tokenizer::{ClipTokenizer, TokenizerError};

/// Errors loading or using an [`Encoder`].
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// A siam training folder that could not be read.
    #[error(transparent)]
    Folder(#[from] folder::FolderError),
    /// A CLIP checkpoint that could not be imported.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The tokenizer could not be loaded or refused a text.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Pixels of the wrong size.
    #[error("{got} pixel values is not a whole number of 3 x {size} x {size} images")]
    Pixels {
        /// Values given.
        got: usize,
        /// The model's image side.
        size: usize,
    },
}

/// A loaded model ready to embed images and texts.
#[derive(Debug)]
pub struct Encoder {
    /// Towers and heads (identity heads for a plain CLIP).
    pub model: TwinTowers,
    /// Architecture, heads, preprocessing and provenance.
    pub card: ModelCard,
    /// The tokenizer (the model's own `tokenizer.json`, else siam's built-in CLIP tokenizer).
    pub tokenizer: ClipTokenizer,
    /// The folder or file it was loaded from.
    pub source: PathBuf,
    device: Device,
}

impl Encoder {
    /// Loads a `siam train` folder, or any CLIP checkpoint (`arch` as `load_model` takes it),
    /// onto `device` for inference (no autodiff).
    pub fn load(path: &Path, arch: Option<&str>, device: &Device) -> Result<Self, EncoderError> {
        // A folder whose siam.json says siam-model is a trained model: a bad card is reported
        // as such, not re-read as another kind of config.
        let is_trained = folder::card_format(path).as_deref() == Some(FORMAT);
        let (model, card, tokenizer_file) = if is_trained && arch.is_none() {
            let (model, card) = folder::load(path, device)?;
            let tok = card.tokenizer.as_ref().map(|t| path.join(t));
            (model, card, tok)
        } else {
            let loaded = load_model(path, arch, device)?;
            let card = clip_card(
                &loaded.config,
                InitialWeights::Checkpoint {
                    path: path.display().to_string(),
                },
                loaded
                    .tokenizer_path
                    .as_ref()
                    .map(|_| "tokenizer.json".to_string()),
            );
            let (image_head, text_head) =
                super::init::shell(|| (card.image_head.init(device), card.text_head.init(device)));
            let model = TwinTowers {
                clip: loaded.clip,
                image_head,
                text_head,
                logit_bias: None,
            };
            (model, card, loaded.tokenizer_path)
        };
        let tokenizer = match tokenizer_file {
            Some(p) => ClipTokenizer::from_file(&p)?,
            None => ClipTokenizer::builtin()?,
        };
        Ok(Self {
            model,
            card,
            tokenizer,
            source: path.to_path_buf(),
            device: device.clone(),
        })
    }

    /// Wraps a model already in memory (a weight-space blend, see [`crate::merge`]).
    pub fn from_parts(
        model: TwinTowers,
        card: ModelCard,
        tokenizer: ClipTokenizer,
        device: &Device,
    ) -> Self {
        Self {
            model,
            card,
            tokenizer,
            source: PathBuf::new(),
            device: device.clone(),
        }
    }

    /// The device it computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Size of the joint embeddings.
    pub fn dim(&self) -> usize {
        self.card.joint_dim
    }

    /// The model's input side in pixels.
    pub fn image_size(&self) -> usize {
        self.card.image_size
    }

    /// The preprocessing this model expects (CLIP's resize, crop and normalisation).
    pub fn preprocessor(&self) -> Preprocessor {
        let mut p = Preprocessor::clip(self.card.image_size as u32);
        p.mean = self.card.mean;
        p.std = self.card.std;
        p
    }

    /// `[B, 3, S, S]` preprocessed pixels to normalised joint embeddings `[B, d]`.
    pub fn encode_images(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.model.embed_images(ImageInput::Pixels(pixels))
    }

    /// Token ids `[B, L]` and lengths to normalised joint embeddings `[B, d]`.
    pub fn encode_texts(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<2> {
        self.model.embed_texts(TextInput::Tokens {
            ids,
            lengths: lengths.to_vec(),
        })
    }

    /// Flat preprocessed pixels (`B x 3 x S x S`, as `siam_data`'s loader yields them) to
    /// normalised embeddings, row-major `B x d`.
    pub fn embed_pixels(&self, pixels: &[f32]) -> Result<Vec<f32>, EncoderError> {
        let s = self.card.image_size;
        let per = 3 * s * s;
        if pixels.is_empty() || !pixels.len().is_multiple_of(per) {
            return Err(EncoderError::Pixels {
                got: pixels.len(),
                size: s,
            });
        }
        let b = pixels.len() / per;
        let t =
            Tensor::<4>::from_data(TensorData::new(pixels.to_vec(), [b, 3, s, s]), &self.device);
        Ok(to_vec(self.encode_images(t)))
    }

    /// Texts to normalised embeddings, row-major `texts.len() x d`, in batches of 256.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>, EncoderError> {
        let mut out = Vec::with_capacity(texts.len() * self.dim());
        for chunk in texts.chunks(256) {
            let tb = self
                .tokenizer
                .encode_batch(chunk, self.card.context_length)?;
            let ids = token_tensor(&tb.ids, tb.rows, tb.len, &self.device);
            out.extend(to_vec(self.encode_texts(ids, &tb.lengths)));
        }
        Ok(out)
    }

    /// `exp(logit_scale)`: the factor CLIP multiplies cosine similarities by.
    pub fn logit_scale(&self) -> f32 {
        let v = to_vec(self.model.logit_scale().unsqueeze::<2>());
        v.first().copied().unwrap_or(0.0).exp()
    }
}

/// A card for a plain CLIP (identity heads).
pub fn clip_card(
    config: &ClipConfig,
    initial: InitialWeights,
    tokenizer: Option<String>,
) -> ModelCard {
    let d = config.embed_dim;
    ModelCard {
        format: FORMAT.into(),
        version: VERSION,
        clip: config.clone(),
        image_head: identity_head(d),
        text_head: identity_head(d),
        joint_dim: d,
        tokenizer,
        image_size: config.image_size(),
        context_length: config.context_length(),
        mean: siam_data::preprocess::CLIP_MEAN,
        std: siam_data::preprocess::CLIP_STD,
        initial_weights: initial,
        training: serde_json::Value::Null,
        split: None,
    }
}

/// Row-major u32 ids to an Int tensor `[rows, len]`.
pub fn token_tensor(ids: &[u32], rows: usize, len: usize, device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, [rows, len]), device)
}

/// A float tensor's values as f32, row-major.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data after convert")
}
