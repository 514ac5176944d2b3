//! The open_clip layout: `open_clip_config.json` as `open_clip.push_to_hf_hub` writes it
//! (`{"model_cfg": ..., "preprocess_cfg": ...}`, the model config in the keys of open_clip's
//! `model_configs/*.json` and `CLIPVisionCfg` / `CLIPTextCfg` in `model.py`) and
//! `open_clip_model.safetensors`, the state dict of open_clip's `CLIP` class.

use serde_json::json;

use super::{json_bytes, safetensors_bytes, ExportError, Named, Result};
use crate::clip::config::{Activation, VisionConfig};
use crate::train::encoder::Encoder;

/// `a / b` as open_clip's float ratio, when `b * ratio` gives `a` back exactly.
fn ratio(a: usize, b: usize) -> Option<f64> {
    let r = a as f64 / b as f64;
    ((b as f64 * r) as usize == a).then_some(r)
}

/// The folder's files, name and bytes.
pub(super) fn files(
    enc: &Encoder,
    tensors: &[Named],
    embed_dim: usize,
    model: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let c = &enc.card.clip;
    let unsupported = |why: String| ExportError::Unsupported {
        model: model.to_string(),
        format: "open_clip",
        why,
    };
    if c.layer_norm_eps != 1e-5 {
        return Err(unsupported(format!(
            "layer_norm_eps is {}, open_clip's LayerNorm uses 1e-5",
            c.layer_norm_eps
        )));
    }
    let t = &c.text;
    let vision_act = match &c.vision {
        VisionConfig::Vit(v) => Some(v.activation),
        VisionConfig::ResNet(_) => None,
    };
    if vision_act.is_some_and(|a| a != t.activation) {
        return Err(unsupported(
            "its image and text towers use different activations; open_clip has one quick_gelu switch".into(),
        ));
    }
    let vision_cfg = match &c.vision {
        VisionConfig::Vit(v) => json!({
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "head_width": v.width / v.heads,
            "mlp_ratio": ratio(v.mlp_width, v.width)
                .ok_or_else(|| unsupported(format!("vision MLP width {} is no float multiple of width {}", v.mlp_width, v.width)))?,
            "patch_size": v.patch_size,
        }),
        VisionConfig::ResNet(r) => json!({
            "image_size": r.image_size,
            "layers": r.layers,
            "width": r.width,
            // open_clip: heads = width * 32 // head_width.
            "head_width": r.width * 32 / r.heads,
            "patch_size": null,
        }),
    };
    let model_cfg = json!({
        "embed_dim": embed_dim,
        "quick_gelu": t.activation == Activation::QuickGelu,
        "vision_cfg": vision_cfg,
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
            "mlp_ratio": ratio(t.mlp_width, t.width)
                .ok_or_else(|| unsupported(format!("text MLP width {} is no float multiple of width {}", t.mlp_width, t.width)))?,
        },
    });
    let config = json!({
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": enc.card.mean,
            "std": enc.card.std,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    });
    Ok(vec![
        ("open_clip_config.json".into(), json_bytes(&config)),
        (
            "open_clip_model.safetensors".into(),
            safetensors_bytes(tensors),
        ),
    ])
}
