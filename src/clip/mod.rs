//! CLIP towers in burn: configs, the ViT and ModifiedResNet image towers, the text transformer,
//! and weight import from the Hugging Face and OpenAI/open_clip layouts.

pub mod config;
pub mod fused;
pub mod import;
pub mod layers;
pub mod lora;
pub mod model;
pub mod resnet;
pub mod text;
pub mod vit;
