//! The Hugging Face layout: what `CLIPModel.save_pretrained` and the `openai/clip-vit-*` repos
//! hold (transformers `models/clip/configuration_clip.py` for the config keys), plus the files
//! `CLIPProcessor.from_pretrained` reads: the tokenizer (`tokenizer.json`, and `vocab.json` +
//! `merges.txt` for the slow `CLIPTokenizer`) and `preprocessor_config.json`
//! (`CLIPImageProcessor`).

use serde_json::json;

use super::{json_bytes, safetensors_bytes, ExportError, Named, Result};
use crate::clip::config::{Activation, VisionConfig};
use crate::train::encoder::Encoder;

fn act(a: Activation) -> &'static str {
    match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
    }
}

/// The folder's files, name and bytes.
pub(super) fn files(
    enc: &Encoder,
    tensors: &[Named],
    embed_dim: usize,
    model: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let c = &enc.card.clip;
    let VisionConfig::Vit(v) = &c.vision else {
        return Err(ExportError::Unsupported {
            model: model.to_string(),
            format: "Hugging Face CLIPModel",
            why: "it has no ResNet image tower; use --format open_clip".into(),
        });
    };
    let t = &c.text;
    let logit_scale = tensors
        .iter()
        .find(|n| n.name == "logit_scale")
        .and_then(|n| match &n.values {
            super::Values::F32(v) => v.first().copied(),
            super::Values::I64(_) => None,
        })
        .unwrap_or(2.6592);
    let config = json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": embed_dim,
        "logit_scale_init_value": logit_scale,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": t.mlp_width,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": act(t.activation),
            "layer_norm_eps": c.layer_norm_eps,
            "projection_dim": embed_dim,
            "attention_dropout": 0.0,
            "bos_token_id": siam_data::tokenizer::START_OF_TEXT,
            // transformers pools the text at the first eos_token_id (any value but 2).
            "eos_token_id": siam_data::tokenizer::END_OF_TEXT,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": v.mlp_width,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_act": act(v.activation),
            "layer_norm_eps": c.layer_norm_eps,
            "projection_dim": embed_dim,
            "attention_dropout": 0.0,
        },
    });
    let size = enc.card.image_size;
    let preprocessor = json!({
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": true,
        "size": {"shortest_edge": size},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": size, "width": size},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": enc.card.mean,
        "image_std": enc.card.std,
        "do_convert_rgb": true,
    });
    let special = json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    });
    let mut tok_config = special.clone();
    let obj = tok_config.as_object_mut().expect("an object");
    obj.insert("tokenizer_class".into(), json!("CLIPTokenizer"));
    obj.insert("model_max_length".into(), json!(t.context_length));
    obj.insert("do_lower_case".into(), json!(true));
    obj.insert("errors".into(), json!("replace"));
    obj.insert("clean_up_tokenization_spaces".into(), json!(false));
    let tokenizer = enc.tokenizer.to_json()?;
    let (vocab, merges) = slow_tokenizer_files(&tokenizer, model)?;
    Ok(vec![
        ("config.json".into(), json_bytes(&config)),
        ("model.safetensors".into(), safetensors_bytes(tensors)),
        ("tokenizer.json".into(), tokenizer.into_bytes()),
        ("tokenizer_config.json".into(), json_bytes(&tok_config)),
        ("special_tokens_map.json".into(), json_bytes(&special)),
        ("vocab.json".into(), vocab),
        ("merges.txt".into(), merges),
        ("preprocessor_config.json".into(), json_bytes(&preprocessor)),
    ])
}

/// `vocab.json` and `merges.txt` (`#version: 0.2`, one `a b` pair per line) from a BPE
/// `tokenizer.json`, whose merges are `"a b"` strings or `["a", "b"]` pairs.
fn slow_tokenizer_files(tokenizer_json: &str, model: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let bad = |why: &str| ExportError::Unsupported {
        model: model.to_string(),
        format: "Hugging Face CLIPModel",
        why: format!("its tokenizer is not a BPE tokenizer.json ({why})"),
    };
    let v: serde_json::Value =
        serde_json::from_str(tokenizer_json).map_err(|e| bad(&e.to_string()))?;
    let m = &v["model"];
    let vocab = m.get("vocab").ok_or_else(|| bad("no model.vocab"))?;
    let merges = m
        .get("merges")
        .and_then(|x| x.as_array())
        .ok_or_else(|| bad("no model.merges"))?;
    let mut text = String::from("#version: 0.2\n");
    for pair in merges {
        let line = match pair {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) if a.len() == 2 => {
                let part = |i: usize| a[i].as_str().unwrap_or_default().to_string();
                format!("{} {}", part(0), part(1))
            }
            _ => return Err(bad("a merge is neither \"a b\" nor [a, b]")),
        };
        text.push_str(&line);
        text.push('\n');
    }
    Ok((
        serde_json::to_vec(vocab).expect("JSON serialises"),
        text.into_bytes(),
    ))
}
