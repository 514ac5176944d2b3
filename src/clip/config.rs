//! CLIP architectures as data: presets, open_clip model-config JSON and Hugging Face
//! `config.json` all resolve to one [`ClipConfig`].
//!
//! Presets mirror open_clip's `src/open_clip/model_configs/*.json` (open_clip_torch 3.3.0) and
//! the Hugging Face configs published with `openai/clip-vit-*`; each constructor cites its file.
//! OpenAI's weights were trained with QuickGELU (`x * sigmoid(1.702 x)`), while open_clip's plain
//! names (`ViT-B-32`, ...) use exact GELU and its `-quickgelu` names use QuickGELU; the preset
//! names here follow open_clip exactly, and OpenAI's own spellings (`ViT-B/32`, `RN50` through
//! `clip.load`) mean the QuickGELU models.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors resolving an architecture.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The name is neither a known preset nor an existing JSON file.
    #[error("unknown architecture {name:?}: expected a preset ({known}) or an open_clip model-config JSON file")]
    UnknownPreset {
        /// What the user asked for.
        name: String,
        /// The preset names this build knows.
        known: String,
    },
    /// The config file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The config file is not the JSON we expect.
    #[error("{path}: not a valid {what}: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Which kind of config was expected.
        what: &'static str,
        /// The parser's message.
        why: String,
    },
    /// The config asks for a feature these towers do not implement.
    #[error("{path}: unsupported setting {key} = {value} (siam implements the standard CLIP towers only)")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The setting.
        key: String,
        /// Its value in the file.
        value: String,
    },
    /// A field outside the range a model can be built with.
    #[error("{source_name}: {field} = {value} is invalid (allowed: {allowed})")]
    OutOfRange {
        /// Where the config came from (the file).
        source_name: String,
        /// The field, as spelled in the file.
        field: String,
        /// Its value.
        value: String,
        /// The allowed range.
        allowed: String,
    },
    /// Sizes that cannot build a model (e.g. a width not divisible by the heads).
    #[error("{source_name}: inconsistent architecture: {why}")]
    Invalid {
        /// Where the config came from.
        source_name: String,
        /// What is wrong.
        why: String,
    },
}

/// Result alias for config resolution.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// The transformer MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI's original CLIP (`clip/model.py` `QuickGELU`).
    QuickGelu,
    /// Exact GELU `x * Phi(x)` (erf form), PyTorch's `nn.GELU()` default.
    Gelu,
}

/// A Vision Transformer image tower (Dosovitskiy et al. 2021, as in OpenAI `clip/model.py`
/// `VisionTransformer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Input side in pixels (square images).
    pub image_size: usize,
    /// Patch side in pixels; `image_size` must be a multiple of it.
    pub patch_size: usize,
    /// Transformer width.
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Attention heads (open_clip: `width / head_width`, head_width 64).
    pub heads: usize,
    /// Hidden size of the MLP (open_clip: `width * mlp_ratio`, mlp_ratio 4).
    pub mlp_width: usize,
    /// MLP activation.
    pub activation: Activation,
}

/// OpenAI's ModifiedResNet image tower (RN50 family): three-conv stem, anti-aliased
/// bottlenecks and attention pooling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetVisionConfig {
    /// Input side in pixels.
    pub image_size: usize,
    /// Bottleneck blocks per stage.
    pub layers: [usize; 4],
    /// Stem width (64 for RN50).
    pub width: usize,
    /// Heads of the attention pool (open_clip: `width * 32 / head_width`).
    pub heads: usize,
}

/// Which image tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VisionConfig {
    /// Vision Transformer.
    Vit(VitConfig),
    /// ModifiedResNet.
    #[serde(rename = "resnet")]
    ResNet(ResNetVisionConfig),
}

/// The text transformer (causal, pooled at the end-of-text token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Maximum sequence length, including start and end tokens.
    pub context_length: usize,
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Transformer width.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Hidden size of the MLP.
    pub mlp_width: usize,
    /// MLP activation.
    pub activation: Activation,
}

/// A whole CLIP: both towers and the shared embedding size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Size of the joint image-text embedding.
    pub embed_dim: usize,
    /// Image tower.
    pub vision: VisionConfig,
    /// Text tower.
    pub text: TextConfig,
    /// LayerNorm epsilon in both towers (1e-5 in OpenAI, open_clip and Hugging Face).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_eps() -> f64 {
    1e-5
}

const OPENAI_TEXT: fn(Activation) -> TextConfig = |activation| TextConfig {
    context_length: 77,
    vocab_size: 49408,
    width: 512,
    heads: 8,
    layers: 12,
    mlp_width: 2048,
    activation,
};

fn vit(
    image_size: usize,
    patch_size: usize,
    width: usize,
    layers: usize,
    activation: Activation,
) -> VisionConfig {
    VisionConfig::Vit(VitConfig {
        image_size,
        patch_size,
        width,
        layers,
        heads: width / 64,
        mlp_width: width * 4,
        activation,
    })
}

/// Preset names accepted by [`ClipConfig::from_preset`].
pub const PRESETS: &[&str] = &[
    "ViT-B-32",
    "ViT-B-32-quickgelu",
    "ViT-B-16",
    "ViT-B-16-quickgelu",
    "ViT-L-14",
    "ViT-L-14-quickgelu",
    "RN50",
    "RN50-quickgelu",
    "ViT-B/32",
    "ViT-B/16",
    "ViT-L/14",
    "tiny",
];

impl ClipConfig {
    /// OpenAI's ViT-B/32 (QuickGELU): open_clip `model_configs/ViT-B-32-quickgelu.json`
    /// (embed 512; vision 224 px, patch 32, width 768, 12 layers; text 77 x 49408, width 512,
    /// 8 heads, 12 layers) and Hugging Face `openai/clip-vit-base-patch32/config.json`.
    pub fn vit_b_32() -> Self {
        Self::from_parts(
            512,
            vit(224, 32, 768, 12, Activation::QuickGelu),
            Activation::QuickGelu,
        )
    }

    /// OpenAI's ViT-B/16 (QuickGELU): open_clip `model_configs/ViT-B-16-quickgelu.json`
    /// (as ViT-B/32 with patch 16) and `openai/clip-vit-base-patch16/config.json`.
    pub fn vit_b_16() -> Self {
        Self::from_parts(
            512,
            vit(224, 16, 768, 12, Activation::QuickGelu),
            Activation::QuickGelu,
        )
    }

    /// OpenAI's ViT-L/14 (QuickGELU): open_clip `model_configs/ViT-L-14-quickgelu.json`
    /// (embed 768; vision width 1024, 24 layers, patch 14; text width 768, 12 heads) and
    /// `openai/clip-vit-large-patch14/config.json`.
    pub fn vit_l_14() -> Self {
        let mut c = Self::from_parts(
            768,
            vit(224, 14, 1024, 24, Activation::QuickGelu),
            Activation::QuickGelu,
        );
        c.text.width = 768;
        c.text.heads = 12;
        c.text.mlp_width = 3072;
        c
    }

    /// OpenAI's RN50 (QuickGELU text tower): open_clip `model_configs/RN50-quickgelu.json`
    /// (embed 1024; layers [3, 4, 6, 3], width 64, 224 px; attention-pool heads
    /// `width * 32 / 64` = 32, as `_build_vision_tower` computes them).
    pub fn rn50() -> Self {
        Self::from_parts(
            1024,
            VisionConfig::ResNet(ResNetVisionConfig {
                image_size: 224,
                layers: [3, 4, 6, 3],
                width: 64,
                heads: 32,
            }),
            Activation::QuickGelu,
        )
    }

    /// A tiny CLIP for demos and tests with random weights: ViT 64 px, patch 8, width 64,
    /// 2 layers, 2 heads; text width 64, 2 layers, 2 heads, context 77, the CLIP vocabulary
    /// (49,408); embed 64. Not from any published model.
    pub fn tiny() -> Self {
        Self {
            embed_dim: 64,
            vision: VisionConfig::Vit(VitConfig {
                image_size: 64,
                patch_size: 8,
                width: 64,
                layers: 2,
                heads: 2,
                mlp_width: 256,
                activation: Activation::QuickGelu,
            }),
            text: TextConfig {
                context_length: 77,
                vocab_size: 49408,
                width: 64,
                heads: 2,
                layers: 2,
                mlp_width: 256,
                activation: Activation::QuickGelu,
            },
            layer_norm_eps: 1e-5,
        }
    }

    fn from_parts(embed_dim: usize, vision: VisionConfig, text_act: Activation) -> Self {
        Self {
            embed_dim,
            vision,
            text: OPENAI_TEXT(text_act),
            layer_norm_eps: 1e-5,
        }
    }

    /// Sets the activation of every transformer MLP (open_clip's single `quick_gelu` flag).
    pub fn with_activation(mut self, activation: Activation) -> Self {
        if let VisionConfig::Vit(v) = &mut self.vision {
            v.activation = activation;
        }
        self.text.activation = activation;
        self
    }

    /// A preset by name. open_clip's names keep open_clip's meaning: `ViT-B-32` uses exact GELU
    /// (`model_configs/ViT-B-32.json`, for LAION/DataComp weights) and `ViT-B-32-quickgelu`
    /// QuickGELU (OpenAI weights). OpenAI's spellings `ViT-B/32`, `ViT-B/16`, `ViT-L/14` name
    /// the OpenAI (QuickGELU) models. `tiny` is [`ClipConfig::tiny`].
    pub fn from_preset(name: &str) -> Result<Self> {
        let c = match name {
            "ViT-B-32-quickgelu" | "ViT-B/32" => Self::vit_b_32(),
            "ViT-B-16-quickgelu" | "ViT-B/16" => Self::vit_b_16(),
            "ViT-L-14-quickgelu" | "ViT-L/14" => Self::vit_l_14(),
            "RN50-quickgelu" => Self::rn50(),
            "ViT-B-32" => Self::vit_b_32().with_activation(Activation::Gelu),
            "ViT-B-16" => Self::vit_b_16().with_activation(Activation::Gelu),
            "ViT-L-14" => Self::vit_l_14().with_activation(Activation::Gelu),
            "RN50" => Self::rn50().with_activation(Activation::Gelu),
            "tiny" => Self::tiny(),
            _ => {
                return Err(ConfigError::UnknownPreset {
                    name: name.to_string(),
                    known: PRESETS.join(", "),
                })
            }
        };
        Ok(c)
    }

    /// Resolves `--arch`: a preset name, or a path to an open_clip model-config JSON file.
    pub fn from_arch(arch: &str) -> Result<Self> {
        match Self::from_preset(arch) {
            Ok(c) => Ok(c),
            Err(e) => {
                let p = Path::new(arch);
                if p.is_file() || arch.ends_with(".json") {
                    Self::from_open_clip_json(p)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The input image side in pixels.
    pub fn image_size(&self) -> usize {
        match &self.vision {
            VisionConfig::Vit(v) => v.image_size,
            VisionConfig::ResNet(r) => r.image_size,
        }
    }

    /// The text context length (longest token sequence).
    pub fn context_length(&self) -> usize {
        self.text.context_length
    }

    /// Parses an open_clip model-config JSON (`embed_dim`, `quick_gelu`, `vision_cfg`,
    /// `text_cfg`), applying the defaults of open_clip's `CLIPVisionCfg`/`CLIPTextCfg`
    /// (`model.py`: head_width 64, mlp_ratio 4.0, patch_size 16, image_size 224, context 77,
    /// vocab 49408, width 512, heads 8, layers 12). Settings that change the architecture
    /// beyond the standard towers (timm or HF towers, layer scale, attentional pooling, ...)
    /// are refused by name.
    pub fn from_open_clip_json(path: &Path) -> Result<Self> {
        let text = read(path)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            what: "open_clip model config",
            why: e.to_string(),
        })?;
        // A Hub repo's open_clip_config.json nests the model config under "model_cfg".
        let v = v.get("model_cfg").cloned().unwrap_or(v);
        Self::from_open_clip_value(&v, path)
    }

    /// [`ClipConfig::from_open_clip_json`] on an already parsed value; `path` names it in errors.
    pub fn from_open_clip_value(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let parse_err = open_clip_parse_err(path);
        let obj = v
            .as_object()
            .ok_or_else(|| parse_err("not a JSON object".into()))?;
        let embed_dim = get_usize(obj, "embed_dim", None).map_err(&parse_err)?;
        let act = if obj.get("quick_gelu").and_then(|q| q.as_bool()) == Some(true) {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        let empty = serde_json::Map::new();
        let vc = obj
            .get("vision_cfg")
            .and_then(|x| x.as_object())
            .ok_or_else(|| parse_err("missing object vision_cfg".into()))?;
        let tc = obj
            .get("text_cfg")
            .and_then(|x| x.as_object())
            .unwrap_or(&empty);
        refuse_nonstandard_open_clip(vc, tc, path)?;
        let c = Self {
            embed_dim,
            vision: open_clip_vision(vc, act, path)?,
            text: open_clip_text(tc, act, path)?,
            layer_norm_eps: 1e-5,
        };
        c.validate(&path.display().to_string())?;
        Ok(c)
    }

    /// Parses a Hugging Face `CLIPConfig` `config.json` (`projection_dim`, `text_config`,
    /// `vision_config`, each with `hidden_size`, `intermediate_size`, `num_attention_heads`,
    /// `num_hidden_layers`, `hidden_act`, ...), with the defaults of transformers'
    /// `models/clip/configuration_clip.py` for absent fields.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = read(path)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            what: "Hugging Face CLIP config.json",
            why: e.to_string(),
        })?;
        let parse_err = |why: String| ConfigError::Parse {
            path: path.to_path_buf(),
            what: "Hugging Face CLIP config.json",
            why,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| parse_err("not a JSON object".into()))?;
        if let Some(mt) = obj.get("model_type").and_then(|m| m.as_str()) {
            if mt != "clip" {
                return Err(parse_err(format!("model_type is {mt:?}, not \"clip\"")));
            }
        }
        let empty = serde_json::Map::new();
        let tc = obj
            .get("text_config")
            .and_then(|x| x.as_object())
            .unwrap_or(&empty);
        let vc = obj
            .get("vision_config")
            .and_then(|x| x.as_object())
            .unwrap_or(&empty);
        let act =
            |cfg: &serde_json::Map<String, serde_json::Value>, key: &str| -> Result<Activation> {
                match cfg
                    .get("hidden_act")
                    .and_then(|a| a.as_str())
                    .unwrap_or("quick_gelu")
                {
                    "quick_gelu" => Ok(Activation::QuickGelu),
                    "gelu" => Ok(Activation::Gelu),
                    other => Err(ConfigError::Unsupported {
                        path: path.to_path_buf(),
                        key: format!("{key}.hidden_act"),
                        value: format!("{other:?}"),
                    }),
                }
            };
        let eps = get_f64(tc, "layer_norm_eps", 1e-5).map_err(parse_err)?;
        let veps = get_f64(vc, "layer_norm_eps", 1e-5).map_err(parse_err)?;
        if (eps - veps).abs() > 0.0 {
            return Err(ConfigError::Unsupported {
                path: path.to_path_buf(),
                key: "vision_config.layer_norm_eps".into(),
                value: format!("{veps} (text tower has {eps})"),
            });
        }
        let channels = get_usize(vc, "num_channels", Some(3)).map_err(parse_err)?;
        if channels != 3 {
            return Err(ConfigError::Unsupported {
                path: path.to_path_buf(),
                key: "vision_config.num_channels".into(),
                value: channels.to_string(),
            });
        }
        let c = Self {
            embed_dim: get_usize(obj, "projection_dim", Some(512)).map_err(parse_err)?,
            vision: VisionConfig::Vit(VitConfig {
                image_size: get_usize(vc, "image_size", Some(224)).map_err(parse_err)?,
                patch_size: get_usize(vc, "patch_size", Some(32)).map_err(parse_err)?,
                width: get_usize(vc, "hidden_size", Some(768)).map_err(parse_err)?,
                layers: get_usize(vc, "num_hidden_layers", Some(12)).map_err(parse_err)?,
                heads: get_usize(vc, "num_attention_heads", Some(12)).map_err(parse_err)?,
                mlp_width: get_usize(vc, "intermediate_size", Some(3072)).map_err(parse_err)?,
                activation: act(vc, "vision_config")?,
            }),
            text: TextConfig {
                context_length: get_usize(tc, "max_position_embeddings", Some(77))
                    .map_err(parse_err)?,
                vocab_size: get_usize(tc, "vocab_size", Some(49408)).map_err(parse_err)?,
                width: get_usize(tc, "hidden_size", Some(512)).map_err(parse_err)?,
                heads: get_usize(tc, "num_attention_heads", Some(8)).map_err(parse_err)?,
                layers: get_usize(tc, "num_hidden_layers", Some(12)).map_err(parse_err)?,
                mlp_width: get_usize(tc, "intermediate_size", Some(2048)).map_err(parse_err)?,
                activation: act(tc, "text_config")?,
            },
            layer_norm_eps: eps,
        };
        c.validate(&path.display().to_string())?;
        Ok(c)
    }

    /// Checks that the sizes can build a model: every size at least 1 (and at most 2^20), the
    /// ViT image side a multiple of its patch side, widths divisible by their heads, the
    /// LayerNorm epsilon finite and positive. Errors name `source_name` (the file), the field
    /// and the allowed range. Every path that reads a config (presets, open_clip JSON, Hugging
    /// Face `config.json`, `siam.json`) ends here.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let src = source_name;
        let bad = |why: String| {
            Err(ConfigError::Invalid {
                source_name: src.to_string(),
                why,
            })
        };
        positive(src, "embed_dim", self.embed_dim)?;
        positive_f64(src, "layer_norm_eps", self.layer_norm_eps)?;
        match &self.vision {
            VisionConfig::Vit(v) => {
                for (field, value) in [
                    ("vision.image_size", v.image_size),
                    ("vision.patch_size", v.patch_size),
                    ("vision.width", v.width),
                    ("vision.layers", v.layers),
                    ("vision.heads", v.heads),
                    ("vision.mlp_width", v.mlp_width),
                ] {
                    positive(src, field, value)?;
                }
                if v.image_size % v.patch_size != 0 {
                    return bad(format!(
                        "vision.image_size {} is not a multiple of vision.patch_size {}",
                        v.image_size, v.patch_size
                    ));
                }
                if v.width % v.heads != 0 {
                    return bad(format!(
                        "vision.width {} not divisible by {} vision.heads",
                        v.width, v.heads
                    ));
                }
            }
            VisionConfig::ResNet(r) => {
                for (i, &l) in r.layers.iter().enumerate() {
                    positive(src, &format!("vision.layers[{i}]"), l)?;
                }
                positive(src, "vision.heads", r.heads)?;
                in_range(src, "vision.width", r.width, 2, MAX_SIZE / 32)?;
                in_range(src, "vision.image_size", r.image_size, 32, MAX_SIZE)?;
                if r.width % 2 != 0 {
                    return bad(format!("ResNet vision.width {} must be even", r.width));
                }
                if r.image_size % 32 != 0 {
                    return bad(format!(
                        "ResNet vision.image_size {} is not a multiple of 32",
                        r.image_size
                    ));
                }
                let d = r.width * 32;
                if d % r.heads != 0 {
                    return bad(format!(
                        "attention-pool width {d} not divisible by {} vision.heads",
                        r.heads
                    ));
                }
            }
        }
        let t = &self.text;
        for (field, value) in [
            ("text.vocab_size", t.vocab_size),
            ("text.width", t.width),
            ("text.heads", t.heads),
            ("text.layers", t.layers),
            ("text.mlp_width", t.mlp_width),
        ] {
            positive(src, field, value)?;
        }
        // Start and end tokens need two positions.
        in_range(src, "text.context_length", t.context_length, 2, MAX_SIZE)?;
        if !t.width.is_multiple_of(t.heads) {
            return bad(format!(
                "text.width {} not divisible by {} text.heads",
                t.width, t.heads
            ));
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

type JsonMap = serde_json::Map<String, serde_json::Value>;

fn open_clip_parse_err(path: &Path) -> impl Fn(String) -> ConfigError + '_ {
    move |why| ConfigError::Parse {
        path: path.to_path_buf(),
        what: "open_clip model config",
        why,
    }
}

/// Refuses, by name, open_clip settings whose non-default values change the architecture
/// beyond the standard CLIP towers (timm or HF towers, layer scale, attentional pooling, ...).
fn refuse_nonstandard_open_clip(vc: &JsonMap, tc: &JsonMap, path: &Path) -> Result<()> {
    type Accept = fn(&serde_json::Value) -> bool;
    fn is_null(x: &serde_json::Value) -> bool {
        x.is_null()
    }
    fn is_false(x: &serde_json::Value) -> bool {
        x.as_bool() == Some(false) || x.is_null()
    }
    fn is_zero(x: &serde_json::Value) -> bool {
        x.as_f64() == Some(0.0) || x.is_null()
    }
    fn is_tok(x: &serde_json::Value) -> bool {
        x.as_str() == Some("tok")
    }
    fn is_learnable(x: &serde_json::Value) -> bool {
        x.as_str() == Some("learnable")
    }
    fn is_argmax(x: &serde_json::Value) -> bool {
        x.as_str() == Some("argmax")
    }
    fn is_linear(x: &serde_json::Value) -> bool {
        x.as_str() == Some("linear")
    }
    let vision: [(&str, Accept); 16] = [
        ("timm_model_name", is_null),
        ("ls_init_value", is_null),
        ("act_kwargs", is_null),
        ("norm_kwargs", is_null),
        ("attentional_pool", is_false),
        ("no_ln_pre", is_false),
        ("final_ln_after_pool", is_false),
        ("qk_norm", is_false),
        ("scaled_cosine_attn", is_false),
        ("scale_heads", is_false),
        ("scale_attn_inner", is_false),
        ("scale_attn", is_false),
        ("scale_fc", is_false),
        ("pool_type", is_tok),
        ("pos_embed_type", is_learnable),
        ("patch_dropout", is_zero),
    ];
    let text: [(&str, Accept); 16] = [
        ("hf_model_name", is_null),
        ("ls_init_value", is_null),
        ("act_kwargs", is_null),
        ("norm_kwargs", is_null),
        ("embed_cls", is_false),
        ("no_causal_mask", is_false),
        ("final_ln_after_pool", is_false),
        ("proj_bias", is_false),
        ("qk_norm", is_false),
        ("scaled_cosine_attn", is_false),
        ("scale_heads", is_false),
        ("scale_attn_inner", is_false),
        ("scale_attn", is_false),
        ("scale_fc", is_false),
        ("pool_type", is_argmax),
        ("proj_type", is_linear),
    ];
    for (cfg, prefix, rules) in [(vc, "vision_cfg", &vision), (tc, "text_cfg", &text)] {
        for (key, ok) in rules {
            if let Some(val) = cfg.get(*key).filter(|v| !ok(v)) {
                return Err(ConfigError::Unsupported {
                    path: path.to_path_buf(),
                    key: format!("{prefix}.{key}"),
                    value: val.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// open_clip's `vision_cfg.image_size`: an integer, or a square `[side, side]`.
fn open_clip_image_size(vc: &JsonMap, path: &Path) -> Result<usize> {
    match vc.get("image_size") {
        Some(serde_json::Value::Array(a)) => {
            let sides: Vec<_> = a.iter().filter_map(|x| x.as_u64()).collect();
            if sides.len() != 2 || sides[0] != sides[1] {
                return Err(ConfigError::Unsupported {
                    path: path.to_path_buf(),
                    key: "vision_cfg.image_size".into(),
                    value: vc["image_size"].to_string(),
                });
            }
            Ok(sides[0] as usize)
        }
        _ => get_usize(vc, "image_size", Some(224)).map_err(open_clip_parse_err(path)),
    }
}

/// `vision_cfg` with open_clip's `CLIPVisionCfg` defaults: a ModifiedResNet when `layers` is
/// a list of 4 stage depths, else a ViT (head_width 64, mlp_ratio 4.0, patch_size 16).
fn open_clip_vision(vc: &JsonMap, act: Activation, path: &Path) -> Result<VisionConfig> {
    let parse_err = open_clip_parse_err(path);
    let head_width = get_usize(vc, "head_width", Some(64)).map_err(&parse_err)?;
    positive(
        &path.display().to_string(),
        "vision_cfg.head_width",
        head_width,
    )?;
    let image_size = open_clip_image_size(vc, path)?;
    let width = get_usize(vc, "width", Some(768)).map_err(&parse_err)?;
    if let Some(serde_json::Value::Array(a)) = vc.get("layers") {
        let l: Vec<usize> = a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as usize)
            .collect();
        let [l0, l1, l2, l3] = l[..] else {
            return Err(parse_err(
                "vision_cfg.layers must hold 4 stage depths".into(),
            ));
        };
        return Ok(VisionConfig::ResNet(ResNetVisionConfig {
            image_size,
            layers: [l0, l1, l2, l3],
            width,
            heads: width.saturating_mul(32) / head_width,
        }));
    }
    let mlp_ratio = get_f64(vc, "mlp_ratio", 4.0).map_err(&parse_err)?;
    Ok(VisionConfig::Vit(VitConfig {
        image_size,
        patch_size: get_usize(vc, "patch_size", Some(16)).map_err(&parse_err)?,
        width,
        layers: get_usize(vc, "layers", Some(12)).map_err(&parse_err)?,
        heads: width / head_width,
        mlp_width: scaled(width, mlp_ratio),
        activation: act,
    }))
}

/// `text_cfg` with open_clip's `CLIPTextCfg` defaults (context 77, vocab 49408, width 512,
/// 8 heads, 12 layers, mlp_ratio 4.0).
fn open_clip_text(tc: &JsonMap, act: Activation, path: &Path) -> Result<TextConfig> {
    let parse_err = open_clip_parse_err(path);
    let width = get_usize(tc, "width", Some(512)).map_err(&parse_err)?;
    let ratio = get_f64(tc, "mlp_ratio", 4.0).map_err(&parse_err)?;
    Ok(TextConfig {
        context_length: get_usize(tc, "context_length", Some(77)).map_err(&parse_err)?,
        vocab_size: get_usize(tc, "vocab_size", Some(49408)).map_err(&parse_err)?,
        width,
        heads: get_usize(tc, "heads", Some(8)).map_err(&parse_err)?,
        layers: get_usize(tc, "layers", Some(12)).map_err(&parse_err)?,
        mlp_width: scaled(width, ratio),
        activation: act,
    })
}

/// `width * ratio` as open_clip computes the MLP width (`int(width * mlp_ratio)`); a negative
/// or non-finite ratio gives 0, which validation then refuses.
fn scaled(width: usize, ratio: f64) -> usize {
    let v = width as f64 * ratio;
    if v.is_finite() && v > 0.0 {
        v.min(usize::MAX as f64) as usize
    } else {
        0
    }
}

/// Largest size any field may take: far above every published CLIP, low enough that no
/// allocation derived from it overflows.
const MAX_SIZE: usize = 1 << 20;

/// `Ok` when `1 <= value <= MAX_SIZE`, else [`ConfigError::OutOfRange`] naming the field.
pub fn positive(source_name: &str, field: &str, value: usize) -> Result<()> {
    in_range(source_name, field, value, 1, MAX_SIZE)
}

/// `Ok` when `lo <= value <= hi`, else [`ConfigError::OutOfRange`] naming the field.
pub fn in_range(source_name: &str, field: &str, value: usize, lo: usize, hi: usize) -> Result<()> {
    if (lo..=hi).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::OutOfRange {
        source_name: source_name.to_string(),
        field: field.to_string(),
        value: value.to_string(),
        allowed: format!("{lo} to {hi}"),
    })
}

/// `Ok` when `value` is finite and `> 0`, else [`ConfigError::OutOfRange`] naming the field.
pub fn positive_f64(source_name: &str, field: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        return Ok(());
    }
    Err(ConfigError::OutOfRange {
        source_name: source_name.to_string(),
        field: field.to_string(),
        value: value.to_string(),
        allowed: "a finite number above 0".into(),
    })
}

fn get_usize(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    default: Option<usize>,
) -> std::result::Result<usize, String> {
    match obj.get(key) {
        Some(v) if !v.is_null() => v
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| format!("{key} is {v}, expected a non-negative integer")),
        _ => default.ok_or_else(|| format!("missing {key}")),
    }
}

fn get_f64(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    default: f64,
) -> std::result::Result<f64, String> {
    match obj.get(key) {
        Some(v) if !v.is_null() => v
            .as_f64()
            .ok_or_else(|| format!("{key} is {v}, expected a number")),
        _ => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn open_clip_json_matches_preset() {
        let dir = tempfile::tempdir().unwrap();
        // Verbatim open_clip 3.3.0 model_configs/ViT-B-32-quickgelu.json.
        let p = write(
            dir.path(),
            "ViT-B-32-quickgelu.json",
            r#"{"embed_dim": 512, "quick_gelu": true,
                "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}"#,
        );
        assert_eq!(
            ClipConfig::from_open_clip_json(&p).unwrap(),
            ClipConfig::vit_b_32()
        );
        // Verbatim RN50.json (no quick_gelu: exact GELU in the text tower).
        let p = write(
            dir.path(),
            "RN50.json",
            r#"{"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": [3,4,6,3], "width": 64, "patch_size": null},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}"#,
        );
        assert_eq!(
            ClipConfig::from_open_clip_json(&p).unwrap(),
            ClipConfig::from_preset("RN50").unwrap()
        );
    }

    #[test]
    fn unsupported_open_clip_setting_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "x.json",
            r#"{"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base"}, "text_cfg": {}}"#,
        );
        let e = ClipConfig::from_open_clip_json(&p).unwrap_err().to_string();
        assert!(e.contains("vision_cfg.timm_model_name"), "{e}");
    }

    #[test]
    fn hf_config_defaults_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "config.json",
            r#"{"model_type": "clip", "projection_dim": 512,
                "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                                "num_hidden_layers": 12, "hidden_act": "quick_gelu"},
                "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                  "num_hidden_layers": 12, "patch_size": 32, "image_size": 224}}"#,
        );
        assert_eq!(
            ClipConfig::from_hf_config(&p).unwrap(),
            ClipConfig::vit_b_32()
        );
        let p = write(dir.path(), "bert.json", r#"{"model_type": "bert"}"#);
        assert!(ClipConfig::from_hf_config(&p)
            .unwrap_err()
            .to_string()
            .contains("bert"));
    }

    #[test]
    fn presets_round_trip_through_json() {
        for name in PRESETS {
            let c = ClipConfig::from_preset(name).unwrap();
            c.validate(name).unwrap();
            let back: ClipConfig =
                serde_json::from_str(&serde_json::to_string_pretty(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
        assert_eq!(ClipConfig::rn50().image_size(), 224);
        assert_eq!(ClipConfig::vit_l_14().context_length(), 77);
        assert!(ClipConfig::from_preset("ViT-H-14").is_err());
    }
}
