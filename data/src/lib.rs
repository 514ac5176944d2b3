//! Image-text datasets, CLIP preprocessing and tokenization, samplers and a synthetic demo set.
//!
//! `siam-data` knows files and pixels, nothing about losses or models.

pub mod augment;
pub mod cache;
pub mod dataset;
pub mod formats;
pub mod pipeline;
pub mod preprocess;
pub mod quiet;
pub mod sampler;
pub mod synthetic;
pub mod templates;
pub mod tokenizer;
