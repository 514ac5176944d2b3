//! What the towers read: pixels through the loader, or the feature and prefix caches of
//! frozen towers ([`Inputs`]); and validation, which embeds the validation split through the
//! same inputs and ranks it ([`Inputs::evaluate`]).

use burn::tensor::{Device, Tensor, TensorData};
use std::sync::Arc;

use siam_data::dataset::Dataset;
use siam_data::pipeline::{Loader, LoaderOptions};
use siam_data::preprocess::Preprocessor;
use siam_data::tokenizer::ClipTokenizer;

use super::cache::{FeatureSource, PrefixSource};
use super::data::EvalPlan;
use super::TrainError;
use crate::eval::retrieval::{retrieval_report, Positives, RetrievalReport};
use crate::model::encoder::{to_vec, token_tensor};
use crate::model::twin::{ImageInput, TextInput, TwinTowers};

/// Everything a step or an evaluation needs about the data.
pub(super) struct Inputs {
    pub(super) ds: Arc<Dataset>,
    pub(super) pre: Preprocessor,
    pub(super) tokenizer: ClipTokenizer,
    pub(super) context: usize,
    pub(super) images: Option<FeatureSource>,
    pub(super) texts: Option<FeatureSource>,
    /// Hidden states of a `last:N` image tower's frozen prefix, by record.
    pub(super) image_prefix: Option<PrefixSource>,
    /// Hidden states of a `last:N` text tower's frozen prefix, by text.
    pub(super) text_prefix: Option<PrefixSource>,
    pub(super) threads: usize,
}

impl Inputs {
    pub(super) fn text_input(
        &self,
        texts: &[usize],
        device: &Device,
    ) -> Result<TextInput, TrainError> {
        if let Some(src) = &self.texts {
            return Ok(TextInput::Features(src.rows(texts, device)));
        }
        if let Some(src) = &self.text_prefix {
            let (hidden, lengths) = src.hidden(texts, device);
            return Ok(TextInput::Hidden {
                hidden,
                from_block: src.from_block(),
                lengths,
            });
        }
        let strs: Vec<&str> = texts.iter().map(|&t| self.ds.texts[t].as_str()).collect();
        let tb = self.tokenizer.encode_batch(&strs, self.context)?;
        Ok(TextInput::Tokens {
            ids: token_tensor(&tb.ids, tb.rows, tb.len, device),
            lengths: tb.lengths,
        })
    }

    /// Whether images come from a cache (tower outputs or prefix hidden states), not pixels.
    pub(super) fn images_cached(&self) -> bool {
        self.images.is_some() || self.image_prefix.is_some()
    }

    /// The cached input for `records`, if images are cached.
    pub(super) fn cached_images(&self, records: &[usize], device: &Device) -> Option<ImageInput> {
        if let Some(src) = &self.images {
            return Some(ImageInput::Features(src.rows(records, device)));
        }
        let src = self.image_prefix.as_ref()?;
        Some(ImageInput::Hidden {
            hidden: src.hidden(records, device).0,
            from_block: src.from_block(),
        })
    }

    pub(super) fn pixels(&self, pixels: Vec<f32>, n: usize, device: &Device) -> ImageInput {
        let s = self.pre.image_size as usize;
        ImageInput::Pixels(Tensor::from_data(
            TensorData::new(pixels, [n, 3, s, s]),
            device,
        ))
    }

    /// Embeds the evaluation images and texts with `model` (no autodiff) and ranks them.
    pub(super) fn evaluate(
        &self,
        model: &TwinTowers,
        plan: &EvalPlan,
        device: &Device,
    ) -> Result<RetrievalReport, TrainError> {
        let dim = model.image_head_dim();
        let img = self.embed_images(model, &plan.records, device, "validation")?;
        let mut txt = Vec::with_capacity(plan.texts.len() * dim);
        for chunk in plan.texts.chunks(256) {
            txt.extend(to_vec(model.embed_texts(self.text_input(chunk, device)?)));
        }
        let positives = match (&plan.image_keys, &plan.text_to_image) {
            (Some(keys), _) => Positives::Labels {
                image_labels: keys,
                text_labels: &plan.text_keys,
            },
            (None, Some(t2i)) => Positives::Captions { text_to_image: t2i },
            (None, None) => unreachable!("an eval plan has keys or owners"),
        };
        Ok(retrieval_report(&img, &txt, dim, positives)?)
    }
}

impl Inputs {
    /// The joint embeddings of the images of `records` (`n x dim`, row-major, unit rows) by
    /// `model` (no autodiff), from the caches when images are cached, else from their pixels
    /// (unaugmented). `what` names the job in errors.
    pub(super) fn embed_images(
        &self,
        model: &TwinTowers,
        records: &[usize],
        device: &Device,
        what: &str,
    ) -> Result<Vec<f32>, TrainError> {
        let mut img = Vec::with_capacity(records.len() * model.image_head_dim());
        const B: usize = 64;
        if self.images_cached() {
            for chunk in records.chunks(B) {
                let input = self
                    .cached_images(chunk, device)
                    .expect("images are cached");
                img.extend(to_vec(model.embed_images(input)));
            }
        } else {
            let (ds, pre) = (&self.ds, &self.pre);
            for_each_pixel_batch(ds, pre, records, self.threads, device, what, |px| {
                img.extend(to_vec(model.embed_images(ImageInput::Pixels(px))));
            })?;
        }
        Ok(img)
    }
}

/// Calls `f` with the preprocessed pixels of `records` (`[n, 3, s, s]` on `device` without
/// autodiff), 64 records at a time in record order, decoded on `threads` threads: the one
/// loop that feeds pixels to the towers outside training steps (validation, filling the
/// caches). An image that cannot be read is an error naming it (`what`: which job).
pub(super) fn for_each_pixel_batch(
    ds: &Arc<Dataset>,
    pre: &Preprocessor,
    records: &[usize],
    threads: usize,
    device: &Device,
    what: &str,
    mut f: impl FnMut(Tensor<4>),
) -> Result<(), TrainError> {
    const B: usize = 64;
    let inner = device.clone().without_autodiff();
    let batches: Vec<Vec<usize>> = records.chunks(B).map(<[usize]>::to_vec).collect();
    let loader = Loader::new(
        Arc::clone(ds),
        pre.clone(),
        batches,
        LoaderOptions {
            threads,
            ..LoaderOptions::default()
        },
    );
    let s = pre.image_size as usize;
    for b in loader {
        let b = b?;
        if b.len() != b.indices.len() || !b.skipped.is_empty() {
            return Err(TrainError::Unreadable {
                what: what.to_string(),
                images: describe_skipped(&b.skipped),
            });
        }
        let n = b.len();
        f(Tensor::<4>::from_data(
            TensorData::new(b.pixels, [n, 3, s, s]),
            &inner,
        ));
    }
    Ok(())
}

/// Why each image a loader skipped could not be read (each reason names its image).
pub(super) fn describe_skipped(skipped: &[(String, String)]) -> String {
    skipped
        .iter()
        .map(|(_, why)| why.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}
