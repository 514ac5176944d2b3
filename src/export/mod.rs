//! `siam export`: a model siam loads (above all a folder `siam train` wrote) becomes a folder
//! that Python's CLIP libraries load without siam:
//!
//! - [`ExportFormat::Hf`]: a Hugging Face CLIP folder (`config.json`, `model.safetensors`,
//!   tokenizer and preprocessor files) for `transformers.CLIPModel.from_pretrained`;
//! - [`ExportFormat::OpenClip`]: an open_clip folder (`open_clip_config.json` with `model_cfg`
//!   and `preprocess_cfg`, `open_clip_model.safetensors`) for
//!   `open_clip.create_model_and_transforms("local-dir:DIR")`, or
//!   `open_clip.create_model(name, pretrained="DIR/open_clip_model.safetensors")`.
//!
//! Names are the import's names read backwards: every parameter goes through the same recipe
//! ([`crate::clip::import`]'s `hf_recipe` / `open_clip_recipe`) that loads it, so a `Copy` is
//! written as is, a `Transpose` transposed back to PyTorch's `[out, in]`, and the fused
//! attention projection split into `q/k/v` again.
//!
//! Heads are folded into CLIP's projections, so the exported CLIP's embeddings are siam's:
//! - identity heads pass through;
//! - a linear head `y = x W + b` after CLIP's projection `x = h P` becomes the projection
//!   `P' = P W`. Its bias has no place in the bias-free ViT and text projections, but it can be
//!   moved into the LayerNorm right before them: `h = g * n + beta`, so
//!   `y = g * n P' + (beta P' + b)`, and a shift `delta` of `beta` with `delta P' = b` gives the
//!   same `y`. `delta` is the least-squares solution, checked to reproduce `b`; it exists
//!   whenever `P'` has full column rank (the joint size is at most the tower's width, as in
//!   every published CLIP), else the export is refused with the residual. Only the pooled
//!   token's output reaches an embedding, so the embeddings are exact; the text tower's
//!   `last_hidden_state` (all tokens after the final LayerNorm) is shifted by `delta`.
//!   The ResNet tower ends in `c_proj`, a linear layer with a bias: `W` and `b` fold into it
//!   directly (`W_c' = W_c W`, `b_c' = b_c W + b`).
//! - adapter heads (CLIP-Adapter's residual MLP with ReLUs) are not linear and are refused.
//!
//! The output is written into a temporary folder beside `--out` and renamed into place
//! ([`crate::io::atomic_dir`]); an existing `--out` is replaced only when it is empty or a
//! previous export ([`MARKER`] inside, nothing but [`FILES`] beside it).

mod hf;
mod open_clip;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use serde::Serialize;

use crate::clip::config::VisionConfig;
use crate::clip::import::{hf_recipe, open_clip_recipe, transpose, ExpectedParam, Recipe};
use crate::model::encoder::Encoder;
use crate::model::heads::ProjectionHead;

/// The file that marks a folder as written by `siam export`.
pub const MARKER: &str = "siam-export.json";

/// Every file an export folder may hold (both formats), so a previous export is recognised
/// whole before it is replaced.
pub const FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "open_clip_config.json",
    "open_clip_model.safetensors",
    MARKER,
];

/// Errors exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A head is a CLIP-Adapter MLP, which no linear projection can express.
    #[error("{model}: the {tower} head is a CLIP-Adapter MLP (--head adapter), which CLIP's linear projection cannot express; export a model trained with --head linear or --head identity")]
    AdapterHead {
        /// The model exported.
        model: String,
        /// `image` or `text`.
        tower: &'static str,
    },
    /// A linear head's bias cannot be moved into the LayerNorm before the projection.
    #[error("{model}: the {tower} head's bias (max |b| {max:.3e}) cannot be folded into CLIP's bias-free projection: the {norm} shift reaches only {rank} of the {joint} joint dimensions (residual {residual:.1e}); train with a zero-initialised, frozen bias or a joint size of at most {rank}")]
    Bias {
        /// The model exported.
        model: String,
        /// `image` or `text`.
        tower: &'static str,
        /// Largest bias magnitude.
        max: f32,
        /// The LayerNorm that would absorb it.
        norm: &'static str,
        /// Dimensions a LayerNorm shift can reach (the tower's width, at most).
        rank: usize,
        /// The joint size.
        joint: usize,
        /// `max |delta P' - b|` of the best shift.
        residual: f64,
    },
    /// The target format cannot hold this architecture.
    #[error("{model}: {format} cannot hold this model: {why}")]
    Unsupported {
        /// The model exported.
        model: String,
        /// `Hugging Face CLIPModel` or `open_clip`.
        format: &'static str,
        /// What does not fit.
        why: String,
    },
    /// `--out` exists and is not a previous export.
    #[error(transparent)]
    NotOurs(#[from] crate::output::OutputError),
    /// Writing the folder failed; `--out` was left as it was.
    #[error("{path}: could not write the export: {why}")]
    Write {
        /// The folder.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// The model's tokenizer could not be serialised.
    #[error(transparent)]
    Tokenizer(#[from] siam_data::tokenizer::TokenizerError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ExportError>;

/// The folder layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// Hugging Face transformers `CLIPModel`.
    Hf,
    /// open_clip `CLIP`.
    OpenClip,
}

impl FromStr for ExportFormat {
    type Err = crate::UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "hf" | "huggingface" | "transformers" => Ok(Self::Hf),
            "open_clip" | "openclip" => Ok(Self::OpenClip),
            _ => Err(crate::UnknownName::new(
                "export format",
                s,
                "hf or open_clip",
            )),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hf => "hf",
            Self::OpenClip => "open_clip",
        })
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The folder written.
    pub out: PathBuf,
    /// Its format.
    pub format: ExportFormat,
    /// The files in it.
    pub files: Vec<String>,
    /// Number of tensors in the weights file.
    pub tensors: usize,
    /// The joint (projection) size.
    pub embed_dim: usize,
    /// How each head was carried over (identity, folded into which tensors).
    pub heads: Vec<String>,
    /// The model exported, as given.
    pub source: String,
}

// ---------------------------------------------------------------------------------------------
// Tensors in siam's naming, and in the target's.

/// One CLIP parameter in siam's naming (enum variants skipped, as the import names them).
#[derive(Debug, Clone)]
struct OurTensor {
    container: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Default)]
struct Collect {
    stack: crate::clip::import::ModulePath,
    out: BTreeMap<String, OurTensor>,
    order: Vec<String>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.stack.key();
        let container = self.stack.container();
        let t = param.val();
        let shape = t.dims().to_vec();
        let values = crate::model::encoder::to_vec(t);
        self.order.push(path.clone());
        self.out.insert(
            path,
            OurTensor {
                container,
                shape,
                values,
            },
        );
    }
}

/// Element values of a tensor to write.
#[derive(Debug, Clone)]
pub(crate) enum Values {
    /// float32.
    F32(Vec<f32>),
    /// int64 (BatchNorm's `num_batches_tracked`).
    I64(Vec<i64>),
}

/// A tensor under its name in the target layout.
#[derive(Debug, Clone)]
pub(crate) struct Named {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Values,
}

/// The safetensors file format (`safetensors` `docs/`: an 8-byte little-endian header length,
/// a JSON header naming each tensor's dtype, shape and byte range, then the bytes), with
/// `__metadata__.format = "pt"` as transformers requires. Tensors are sorted by name, so the
/// same model always gives the same bytes.
pub(crate) fn safetensors_bytes(tensors: &[Named]) -> Vec<u8> {
    let mut sorted: Vec<&Named> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "format": "pt", "producer": "siam export" }),
    );
    let mut data = Vec::new();
    for t in &sorted {
        let start = data.len();
        let dtype = match &t.values {
            Values::F32(v) => {
                v.iter()
                    .for_each(|x| data.extend_from_slice(&x.to_le_bytes()));
                "F32"
            }
            Values::I64(v) => {
                v.iter()
                    .for_each(|x| data.extend_from_slice(&x.to_le_bytes()));
                "I64"
            }
        };
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()] }),
        );
    }
    let mut h = serde_json::to_vec(&header).expect("a JSON map serialises");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// Which naming to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Hf,
    OpenClip,
}

/// Maps siam's tensors to the target's names and layouts by reading the import recipes
/// backwards.
fn to_target(
    tensors: &BTreeMap<String, OurTensor>,
    order: &[String],
    target: Target,
    model: &str,
) -> Result<Vec<Named>> {
    let mut out = Vec::with_capacity(order.len());
    for path in order {
        let t = &tensors[path];
        let p = ExpectedParam {
            path: path.clone(),
            container: t.container.clone(),
            shape: t.shape.clone(),
        };
        let recipe = match target {
            Target::OpenClip => open_clip_recipe(&p, ""),
            Target::Hf => hf_recipe(&p).ok_or_else(|| ExportError::Unsupported {
                model: model.to_string(),
                format: "Hugging Face CLIPModel",
                why: format!("{path} has no counterpart there"),
            })?,
        };
        let f32s = |name: &str, shape: Vec<usize>, values: Vec<f32>| Named {
            name: name.to_string(),
            shape,
            values: Values::F32(values),
        };
        match recipe {
            // PyTorch holds logit_scale as a 0-d tensor; siam as [1].
            Recipe::Copy(k) if path == "logit_scale" => {
                out.push(f32s(&k, vec![], t.values.clone()))
            }
            Recipe::Copy(k) => out.push(f32s(&k, t.shape.clone(), t.values.clone())),
            Recipe::Transpose(k) => match t.shape.as_slice() {
                [r, c] => out.push(f32s(&k, vec![*c, *r], transpose(&t.values, *r, *c))),
                _ => out.push(f32s(&k, t.shape.clone(), t.values.clone())),
            },
            // siam's fused [d, 3d] in_proj: back to [3d, d], then one [d, d] block per key.
            Recipe::ConcatTranspose(keys) => {
                let [r, c] = t.shape[..] else {
                    unreachable!("a fused attention weight is 2-D")
                };
                let back = transpose(&t.values, r, c);
                let rows = c / keys.len();
                for (i, k) in keys.iter().enumerate() {
                    let block = back[i * rows * r..(i + 1) * rows * r].to_vec();
                    out.push(f32s(k, vec![rows, r], block));
                }
            }
            Recipe::Concat(keys) => {
                let n = t.values.len() / keys.len();
                for (i, k) in keys.iter().enumerate() {
                    out.push(f32s(k, vec![n], t.values[i * n..(i + 1) * n].to_vec()));
                }
            }
        }
        // PyTorch's BatchNorm also saves a step counter that strict loading expects.
        if target == Target::OpenClip && path.ends_with(".running_mean") {
            let prefix = out
                .last()
                .and_then(|n| n.name.strip_suffix(".running_mean"))
                .map(str::to_string);
            if let Some(prefix) = prefix {
                out.push(Named {
                    name: format!("{prefix}.num_batches_tracked"),
                    shape: vec![],
                    values: Values::I64(vec![0]),
                });
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Folding the heads.

/// `a [n, k] @ b [k, m]` in f64, row-major.
fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * m];
    for i in 0..n {
        for l in 0..k {
            let x = a[i * k + l];
            if x == 0.0 {
                continue;
            }
            for j in 0..m {
                out[i * m + j] += x * b[l * m + j];
            }
        }
    }
    out
}

/// Solves `g y = r` (`g` `[n, n]`, symmetric positive semi-definite) by Gaussian elimination
/// with partial pivoting; `None` when `g` is singular.
fn solve(mut g: Vec<f64>, mut r: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    let scale = g.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    for col in 0..n {
        let piv =
            (col..n).max_by(|&a, &b| g[a * n + col].abs().total_cmp(&g[b * n + col].abs()))?;
        if g[piv * n + col].abs() <= 1e-12 * scale {
            return None;
        }
        if piv != col {
            for j in 0..n {
                g.swap(piv * n + j, col * n + j);
            }
            r.swap(piv, col);
        }
        for row in col + 1..n {
            let f = g[row * n + col] / g[col * n + col];
            if f != 0.0 {
                for j in col..n {
                    g[row * n + j] -= f * g[col * n + j];
                }
                r[row] -= f * r[col];
            }
        }
    }
    let mut y = vec![0f64; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|j| g[i * n + j] * y[j]).sum();
        y[i] = (r[i] - s) / g[i * n + i];
    }
    Some(y)
}

/// The shift `delta` (`[n]`) with `delta M = b` for `M` `[n, d]`, by least squares, and the
/// residual `max |delta M - b|`.
fn shift_for_bias(m: &[f64], b: &[f64], n: usize, d: usize) -> (Vec<f64>, f64) {
    let mt: Vec<f64> = transpose_f64(m, n, d);
    let delta = if d <= n {
        // Minimum-norm solution delta = M (M^T M)^-1 b.
        solve(matmul(&mt, m, d, n, d), b.to_vec(), d).map(|y| matmul(m, &y, n, d, 1))
    } else {
        // Least squares: (M M^T) delta = M b.
        solve(matmul(m, &mt, n, d, n), matmul(m, b, n, d, 1), n)
    }
    .unwrap_or_else(|| vec![0f64; n]);
    let got = matmul(&delta, m, 1, n, d);
    let residual = got
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max);
    (delta, residual)
}

fn transpose_f64(v: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0f64; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A linear head's `W` (`[d_in, d_out]`, burn's layout) and bias, in f64.
fn linear_head(head: &ProjectionHead) -> Option<(Vec<f64>, usize, usize, Vec<f64>)> {
    let lin = head.proj.as_ref()?;
    let [d_in, d_out] = lin.weight.val().dims();
    let w = f64s(&crate::model::encoder::to_vec(lin.weight.val()));
    let b = match &lin.bias {
        Some(b) => f64s(&crate::model::encoder::to_vec(b.val())),
        None => vec![0f64; d_out],
    };
    Some((w, d_in, d_out, b))
}

/// Bias magnitudes below this are zero: a bias initialised at zero and never trained.
const ZERO_BIAS: f64 = 0.0;
/// How closely a LayerNorm shift must reproduce the bias.
const FOLD_TOL: f64 = 1e-6;

/// Folds both heads into the CLIP tensors (see the module documentation); returns one line per
/// head saying what was done.
fn fold_heads(
    enc: &Encoder,
    tensors: &mut BTreeMap<String, OurTensor>,
    model: &str,
) -> Result<Vec<String>> {
    let resnet = matches!(enc.card.clip.vision, VisionConfig::ResNet(_));
    let mut notes = Vec::new();
    for (tower, head) in [
        ("image", &enc.model.image_head),
        ("text", &enc.model.text_head),
    ] {
        if head.adapter.is_some() {
            return Err(ExportError::AdapterHead {
                model: model.to_string(),
                tower,
            });
        }
        let Some((w, d_in, d_out, b)) = linear_head(head) else {
            notes.push(format!("{tower} head: identity (CLIP's own projection)"));
            continue;
        };
        let bias_max = b.iter().fold(0f64, |m, x| m.max(x.abs()));
        if tower == "image" && resnet {
            let (wc, bc) = (
                "visual.attnpool.c_proj.weight",
                "visual.attnpool.c_proj.bias",
            );
            let wt = &tensors[wc];
            let k = wt.shape[0];
            let new_w = matmul(&f64s(&wt.values), &w, k, d_in, d_out);
            let new_b: Vec<f64> = matmul(&f64s(&tensors[bc].values), &w, 1, d_in, d_out)
                .iter()
                .zip(&b)
                .map(|(x, y)| x + y)
                .collect();
            set(tensors, wc, vec![k, d_out], &new_w);
            set(tensors, bc, vec![d_out], &new_b);
            notes.push(format!(
                "image head: linear {d_in}->{d_out} folded into attnpool.c_proj (weight and bias)"
            ));
            continue;
        }
        let (proj, norm, norm_name) = if tower == "image" {
            (
                "visual.proj",
                "visual.ln_post.beta",
                "ln_post (post_layernorm)",
            )
        } else {
            (
                "text.text_projection",
                "text.ln_final.beta",
                "ln_final (final_layer_norm)",
            )
        };
        let p = &tensors[proj];
        let width = p.shape[0];
        let new_p = matmul(&f64s(&p.values), &w, width, d_in, d_out);
        let mut note = format!("{tower} head: linear {d_in}->{d_out} folded into {proj}");
        if bias_max > ZERO_BIAS {
            let (delta, residual) = shift_for_bias(&new_p, &b, width, d_out);
            if residual > FOLD_TOL * (1.0 + bias_max) {
                return Err(ExportError::Bias {
                    model: model.to_string(),
                    tower,
                    max: bias_max as f32,
                    norm: norm_name,
                    rank: width.min(d_out),
                    joint: d_out,
                    residual,
                });
            }
            let beta: Vec<f64> = f64s(&tensors[norm].values)
                .iter()
                .zip(&delta)
                .map(|(x, y)| x + y)
                .collect();
            set(tensors, norm, vec![width], &beta);
            note.push_str(&format!(
                "; its bias moved into {norm_name}'s shift (reproduced to {residual:.1e})"
            ));
        }
        set(tensors, proj, vec![width, d_out], &new_p);
        notes.push(note);
    }
    Ok(notes)
}

fn set(tensors: &mut BTreeMap<String, OurTensor>, key: &str, shape: Vec<usize>, v: &[f64]) {
    let t = tensors
        .get_mut(key)
        .expect("a CLIP tensor folded into exists");
    t.shape = shape;
    t.values = v.iter().map(|&x| x as f32).collect();
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// Exports a loaded model (`Encoder::load` of a `siam train` folder, or any CLIP siam reads)
/// into `out`. `source` names the model in messages and in [`MARKER`].
pub fn export(
    enc: &Encoder,
    format: ExportFormat,
    out: &Path,
    source: &str,
) -> Result<ExportReport> {
    crate::output::check_replaceable(out, crate::output::OutputKind::Export)?;
    if let (ExportFormat::Hf, VisionConfig::ResNet(_)) = (format, &enc.card.clip.vision) {
        return Err(ExportError::Unsupported {
            model: source.to_string(),
            format: "Hugging Face CLIPModel",
            why: "it has no ResNet image tower; use --format open_clip".into(),
        });
    }
    let mut collect = Collect::default();
    enc.model.clip.visit(&mut collect);
    let order = collect.order;
    let mut tensors = collect.out;
    let heads = fold_heads(enc, &mut tensors, source)?;
    let embed_dim = enc.card.joint_dim;
    let (files, n_tensors) = match format {
        ExportFormat::Hf => {
            let named = to_target(&tensors, &order, Target::Hf, source)?;
            (hf::files(enc, &named, embed_dim, source)?, named.len())
        }
        ExportFormat::OpenClip => {
            let named = to_target(&tensors, &order, Target::OpenClip, source)?;
            (
                open_clip::files(enc, &named, embed_dim, source)?,
                named.len(),
            )
        }
    };
    let mut report = ExportReport {
        out: out.to_path_buf(),
        format,
        files: files.iter().map(|(n, _)| n.clone()).collect(),
        tensors: n_tensors,
        embed_dim,
        heads,
        source: source.to_string(),
    };
    report.files.push(MARKER.to_string());
    let marker = serde_json::to_vec_pretty(&serde_json::json!({
        "written_by": concat!("siam ", env!("CARGO_PKG_VERSION")),
        "report": &report,
    }))
    .expect("the report serialises");
    let mut all = files;
    all.push((MARKER.to_string(), marker));
    crate::io::atomic_dir(out, crate::output::OutputKind::Export, |tmp| {
        for (name, bytes) in &all {
            crate::io::atomic_write_bytes(&tmp.join(name), bytes)?;
        }
        Ok(())
    })
    .map_err(|e| ExportError::Write {
        path: out.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok(report)
}

/// Pretty JSON bytes with a final newline.
fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("JSON values serialise");
    b.push(b'\n');
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_moves_into_the_norm_shift_exactly() {
        // M [3, 2] of full column rank: any b in R^2 is reached.
        let m = [1.0, 2.0, 0.0, 1.0, 3.0, -1.0];
        let b = [0.5, -0.25];
        let (delta, residual) = shift_for_bias(&m, &b, 3, 2);
        assert!(residual < 1e-12, "{residual}");
        let got = matmul(&delta, &m, 1, 3, 2);
        assert!((got[0] - 0.5).abs() < 1e-12 && (got[1] + 0.25).abs() < 1e-12);
    }

    #[test]
    fn bias_beyond_the_width_is_reported() {
        // M [1, 2]: a shift of one value reaches only the direction (1, 1).
        let m = [1.0, 1.0];
        let (_, residual) = shift_for_bias(&m, &[1.0, -1.0], 1, 2);
        assert!((residual - 1.0).abs() < 1e-12, "{residual}");
        let (_, residual) = shift_for_bias(&m, &[2.0, 2.0], 1, 2);
        assert!(residual < 1e-12, "{residual}");
    }

    #[test]
    fn safetensors_header_is_aligned_and_sorted() {
        let bytes = safetensors_bytes(&[
            Named {
                name: "b".into(),
                shape: vec![2],
                values: Values::F32(vec![1.0, 2.0]),
            },
            Named {
                name: "a".into(),
                shape: vec![],
                values: Values::I64(vec![7]),
            },
        ]);
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(h["a"]["data_offsets"], serde_json::json!([0, 8]));
        assert_eq!(h["b"]["data_offsets"], serde_json::json!([8, 16]));
        assert_eq!(h["__metadata__"]["format"], "pt");
        assert_eq!(bytes.len(), 8 + n + 16);
        assert_eq!(&bytes[8 + n..8 + n + 8], &7i64.to_le_bytes());
    }

    #[test]
    fn a_foreign_folder_is_not_overwritten() {
        use crate::output::{check_replaceable, OutputKind};
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("x");
        std::fs::create_dir(&out).unwrap();
        assert!(
            check_replaceable(&out, OutputKind::Export).is_ok(),
            "an empty folder"
        );
        std::fs::write(out.join("config.json"), b"{}").unwrap();
        let e = check_replaceable(&out, OutputKind::Export)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an export folder written by siam"), "{e}");
        std::fs::write(out.join(MARKER), br#"{"written_by": "siam"}"#).unwrap();
        assert!(check_replaceable(&out, OutputKind::Export).is_ok());
        std::fs::write(out.join("notes.txt"), b"mine").unwrap();
        assert!(check_replaceable(&out, OutputKind::Export).is_err());
    }
}
