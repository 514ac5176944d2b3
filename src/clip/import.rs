//! Loading CLIP weights into [`Clip`], reporting what was applied.
//!
//! Three layouts are read:
//! - **Hugging Face**: a folder with `config.json` (`CLIPConfig`), `model.safetensors` (or
//!   `pytorch_model.bin`) and usually `tokenizer.json`, as published for
//!   `openai/clip-vit-base-patch32`. Keys `vision_model.*`, `text_model.*`,
//!   `visual_projection.weight`, `text_projection.weight`, `logit_scale`; separate
//!   `q_proj`/`k_proj`/`v_proj` are concatenated into our fused `in_proj` at load time.
//! - **OpenAI / open_clip** state dicts (`visual.*`, `transformer.resblocks.*`,
//!   `token_embedding.weight`, ...; or `text.*` as `CustomTextCLIP` writes), ViT or
//!   ModifiedResNet, from `.safetensors` or a pickled `state_dict` (`.pt`/`.bin`/`.pth`, read
//!   in pure Rust), with the architecture from `--arch`. Training checkpoints that wrap the
//!   state dict (`{"state_dict": {"module.visual...": ...}}`) are unwrapped.
//!
//! A siam model folder (`siam.json` + `model.safetensors`, written by `siam train`) is read by
//! [`crate::model::folder`], the one siam model format.
//!
//! Every parameter of the model must be found with the right shape and every tensor of the
//! file used (a few known buffers excepted, see [`ImportReport::ignored`]); otherwise the error
//! lists the missing, unexpected and mis-shaped keys. Tensors are read one at a time when
//! burn-store applies them, converted to f32 (fp16/bf16/f64 files too), transposed or
//! concatenated as the layout needs, so the peak memory stays near one copy of the model.
//! OpenAI's original `.pt` downloads are TorchScript archives, not state dicts: they get an
//! error that says how to convert them.

use super::config::{ClipConfig, ConfigError};
use super::model::Clip;
use burn::module::{Module, ModuleVisitor, Param};
use burn::store::burn_pack::{Error as PackError, Tensor as PackTensor};
use burn::store::ModuleSnapshot;
use burn::tensor::{Bytes, DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the weights file inside a Hugging Face model folder.
pub const WEIGHTS: &str = "model.safetensors";
/// The config of an open_clip folder (`{"model_cfg": ..., "preprocess_cfg": ...}`, as open_clip's
/// `push_to_hf_hub` writes it).
pub const OPEN_CLIP_CONFIG: &str = "open_clip_config.json";
/// The weights of an open_clip folder, safetensors first.
pub const OPEN_CLIP_WEIGHTS: [&str; 2] =
    ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];

/// How to turn OpenAI's TorchScript download into a state dict.
const TORCHSCRIPT_FIX: &str = "convert it to a state dict with `python -c \"import torch, clip; m, _ = clip.load('ViT-B/32', device='cpu', jit=False); torch.save(m.state_dict(), 'ViT-B-32.pt')\"` (pip install clip-anytorch; use your model's name), or with open_clip: `python -c \"import torch, open_clip; m, _, _ = open_clip.create_model_and_transforms('ViT-B-32-quickgelu', pretrained='openai'); torch.save(m.state_dict(), 'ViT-B-32.pt')\"`, then pass that file with --arch ViT-B-32-quickgelu";

/// Errors loading or saving weights.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The operating system refused a read or write.
    #[error("{path}: {cause}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the OS said.
        cause: io::Error,
    },
    /// The architecture could not be resolved.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A bare checkpoint file carries no architecture.
    #[error("{path}: a checkpoint file needs --arch (a preset such as ViT-B-32-quickgelu or RN50-quickgelu, or an open_clip model-config JSON file)")]
    NoArch {
        /// The checkpoint.
        path: PathBuf,
    },
    /// OpenAI's original download: a TorchScript program, not a state dict.
    #[error("{path}: this is a TorchScript archive (OpenAI's original .pt download), not a state dict; {fix}")]
    TorchScript {
        /// The archive.
        path: PathBuf,
        /// The conversion recipe.
        fix: &'static str,
    },
    /// Neither safetensors nor a PyTorch pickle.
    #[error("{path}: not a checkpoint siam can read ({why}); expected .safetensors or a pickled PyTorch state dict (.pt, .pth, .bin)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What was found.
        why: String,
    },
    /// A safetensors or pickle file that does not parse.
    #[error("{path}: corrupt {format} file: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// `safetensors` or `PyTorch`.
        format: &'static str,
        /// The parser's message.
        why: String,
    },
    /// The file holds no CLIP weights in any layout we know (e.g. a BERT checkpoint).
    #[error("{path}: not a CLIP checkpoint: none of its {count} tensors has a CLIP key (visual.*, vision_model.*, token_embedding.*); it holds e.g. {sample}")]
    NotClip {
        /// The file.
        path: PathBuf,
        /// How many tensors it has.
        count: usize,
        /// A few of its keys.
        sample: String,
    },
    /// The file's keys do not match the architecture.
    #[error("{}: checkpoint does not match the {arch} architecture: {details}", path.display())]
    KeyMismatch {
        /// The file. (Boxed, like `arch` and `details`, to keep [`ImportError`] small.)
        path: Box<Path>,
        /// Which architecture was expected.
        arch: Box<str>,
        /// Missing, unexpected and mis-shaped keys, listed.
        details: Box<str>,
        /// Keys the model needs that the file lacks.
        missing: Vec<String>,
        /// Keys of the file the model has no place for.
        unexpected: Vec<String>,
        /// `key: file [..] vs model [..]` for tensors of the wrong shape.
        mis_shaped: Vec<String>,
    },
    /// A tensor of a type we cannot convert to f32.
    #[error("{path}: tensor {key} has dtype {dtype}, expected a float type")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// Its dtype.
        dtype: String,
    },
    /// A folder that is no model folder.
    #[error("{path}: not a model folder: expected siam.json (siam) or config.json (Hugging Face) with model.safetensors or pytorch_model.bin, or open_clip_config.json with open_clip_model.safetensors or open_clip_pytorch_model.bin")]
    NotAModelFolder {
        /// The folder.
        path: PathBuf,
    },
    /// burn-store failed while applying tensors (a read error mid-load).
    #[error("{path}: loading failed: {errors}")]
    Apply {
        /// The file.
        path: PathBuf,
        /// burn-store's messages.
        errors: String,
    },
    /// A `hf:` model name could not be resolved to files in the Hugging Face cache (boxed: it
    /// is large and rare).
    #[error(transparent)]
    Hub(Box<crate::hub::HubError>),
    /// Writing a model folder failed.
    #[error("{path}: could not save the model: {why}")]
    Save {
        /// The folder or file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// Result alias for weight import.
pub type Result<T> = std::result::Result<T, ImportError>;

/// Which key layout a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face `CLIPModel`.
    HuggingFace,
    /// OpenAI / open_clip `CLIP` state dict.
    OpenClip,
}

/// The container format of the weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `.safetensors`.
    Safetensors,
    /// A pickled PyTorch state dict.
    PytorchPickle,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The weights file read.
    pub weights: PathBuf,
    /// Its key layout.
    pub layout: Layout,
    /// Its container format.
    pub format: FileFormat,
    /// Number of model tensors loaded (every parameter and BatchNorm statistic).
    pub applied: usize,
    /// Number of tensors in the file.
    pub file_tensors: usize,
    /// File tensors deliberately left unused: BatchNorm `num_batches_tracked` counters, HF
    /// `position_ids`, open_clip's `attn_mask` and OpenAI's `input_resolution`,
    /// `context_length`, `vocab_size` entries.
    pub ignored: Vec<String>,
    /// Element types of the file other than f32, converted to f32 on load.
    pub converted_from: Vec<String>,
    /// Where the architecture came from (preset, JSON or config file).
    pub arch: String,
}

/// A loaded model, its resolved config, and the tokenizer shipped with it (if any).
#[derive(Debug)]
pub struct LoadedModel {
    /// The model.
    pub clip: Clip,
    /// Its architecture.
    pub config: ClipConfig,
    /// `tokenizer.json` beside the weights (Hugging Face and siam folders).
    pub tokenizer_path: Option<PathBuf>,
    /// What was applied.
    pub report: ImportReport,
}

// ---------------------------------------------------------------------------------------------
// Source tensors: name -> (dtype, shape, lazy reader).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SrcDType {
    F32,
    F16,
    BF16,
    F64,
}

type Reader = Arc<dyn Fn() -> io::Result<Vec<u8>> + Send + Sync>;

#[derive(Clone)]
struct SrcTensor {
    dtype: SrcDType,
    shape: Vec<usize>,
    read: Reader,
}

impl SrcTensor {
    fn read_f32(&self) -> io::Result<Vec<f32>> {
        let bytes = (self.read)()?;
        Ok(to_f32(&bytes, self.dtype))
    }
}

fn to_f32(bytes: &[u8], dtype: SrcDType) -> Vec<f32> {
    match dtype {
        SrcDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        SrcDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| burn::tensor::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        SrcDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| burn::tensor::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        SrcDType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
    }
}

struct Source {
    path: PathBuf,
    format: FileFormat,
    tensors: BTreeMap<String, SrcTensor>,
    /// Non-float tensors (e.g. `num_batches_tracked`), kept by name and dtype for reporting.
    non_float: BTreeMap<String, String>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |cause| ImportError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Opens a weights file of either format, reading only its metadata.
fn open_source(path: &Path) -> Result<Source> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut magic = [0u8; 8];
    let n = read_up_to(&mut f, &mut magic).map_err(io_err(path))?;
    let magic = &magic[..n];
    if magic.starts_with(b"PK\x03\x04") {
        check_torchscript(path)?;
        return open_pytorch(path);
    }
    if magic.first() == Some(&0x80) {
        return open_pytorch(path);
    }
    if n == 8 {
        let len = u64::from_le_bytes(magic.try_into().expect("8 bytes"));
        let file_len = f.metadata().map_err(io_err(path))?.len();
        if len > 1 && len.checked_add(8).is_some_and(|end| end <= file_len) {
            let mut first = [0u8; 1];
            f.read_exact(&mut first).map_err(io_err(path))?;
            if first[0] == b'{' {
                return open_safetensors(path, len as usize, file_len);
            }
        }
    }
    Err(ImportError::UnknownFormat {
        path: path.to_path_buf(),
        why: format!("it starts with bytes {magic:02x?}"),
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// A TorchScript archive is a zip holding `<name>/code/...` and `<name>/constants.pkl`.
fn check_torchscript(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(io_err(path))?;
    let Ok(archive) = zip::ZipArchive::new(f) else {
        return Ok(()); // let the PyTorch reader produce its own error
    };
    let mut has_code = false;
    let mut has_constants = false;
    for name in archive.file_names().filter_map(|n| n.ok()) {
        has_code |= name.contains("/code/") || name.starts_with("code/");
        has_constants |= name.ends_with("constants.pkl");
    }
    if has_code && has_constants {
        return Err(ImportError::TorchScript {
            path: path.to_path_buf(),
            fix: TORCHSCRIPT_FIX,
        });
    }
    Ok(())
}

fn open_safetensors(path: &Path, header_len: usize, file_len: u64) -> Result<Source> {
    let corrupt = |why: String| ImportError::Corrupt {
        path: path.to_path_buf(),
        format: "safetensors",
        why,
    };
    // The safetensors format caps its JSON header at 100 MB (`safetensors` crate, MAX_HEADER_SIZE).
    if header_len > 100_000_000 {
        return Err(corrupt(format!(
            "header length {header_len} exceeds the format's 100 MB limit"
        )));
    }
    let file = Arc::new(File::open(path).map_err(io_err(path))?);
    let mut header = vec![0u8; header_len];
    file.read_exact_at(&mut header, 8).map_err(io_err(path))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header: {e}")))?;
    let data_start = 8 + header_len as u64;
    let mut tensors = BTreeMap::new();
    let mut non_float = BTreeMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        if !info.is_object() {
            return Err(corrupt(format!("{name}: entry is not an object")));
        }
        let dtype_s = info["dtype"].as_str().unwrap_or("?").to_string();
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .ok_or_else(|| corrupt(format!("{name}: no shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| corrupt(format!("{name}: bad shape")))?;
        let offsets = info["data_offsets"]
            .as_array()
            .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)))
            .ok_or_else(|| corrupt(format!("{name}: bad data_offsets")))?;
        let (dtype, size) = match dtype_s.as_str() {
            "F32" => (SrcDType::F32, 4),
            "F16" => (SrcDType::F16, 2),
            "BF16" => (SrcDType::BF16, 2),
            "F64" => (SrcDType::F64, 8),
            _ => {
                non_float.insert(name, dtype_s);
                continue;
            }
        };
        // Checked: a header may claim any shape; nothing is allocated from it unchecked.
        let nbytes = shape
            .iter()
            .try_fold(size, |acc: usize, &d| acc.checked_mul(d));
        let (start, end) = offsets;
        let fits = end >= start
            && nbytes.is_some_and(|b| b as u64 == end - start)
            && data_start.checked_add(end).is_some_and(|e| e <= file_len);
        if !fits {
            return Err(corrupt(format!(
                "{name}: data_offsets {start}..{end} do not fit shape {shape:?} {dtype_s} in a file of {file_len} bytes"
            )));
        }
        let file = Arc::clone(&file);
        let at = data_start + start;
        let len = (end - start) as usize;
        let read: Reader = Arc::new(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, at)?;
            Ok(buf)
        });
        tensors.insert(name, SrcTensor { dtype, shape, read });
    }
    Ok(Source {
        path: path.to_path_buf(),
        format: FileFormat::Safetensors,
        tensors,
        non_float,
    })
}

fn open_pytorch(path: &Path) -> Result<Source> {
    use burn::store::pytorch_reader::{DType as PtDType, PytorchReader};
    let corrupt = |why: String| ImportError::Corrupt {
        path: path.to_path_buf(),
        format: "PyTorch",
        why,
    };
    // The pickle is parsed (burn-store's pure-Rust unpickler), never executed; a reader panic on
    // a malformed file is caught and reported, not a crash.
    let reader = siam_data::quiet::catch_quietly(|| PytorchReader::new(path))
        .map_err(|p| corrupt(p.0))?
        .map_err(|e| corrupt(e.to_string()))?;
    // No tensor may claim more bytes than the file could hold (uncompressed zip members, or a
    // deflated one at deflate's largest ratio, about 1032:1).
    let file_len = std::fs::metadata(path).map_err(io_err(path))?.len();
    let max_bytes = file_len.saturating_mul(1032);
    let mut tensors = BTreeMap::new();
    let mut non_float = BTreeMap::new();
    for (name, t) in reader.into_tensors() {
        let dtype = match t.dtype() {
            PtDType::F32 => SrcDType::F32,
            PtDType::F16 => SrcDType::F16,
            PtDType::BF16 => SrcDType::BF16,
            PtDType::F64 => SrcDType::F64,
            other => {
                non_float.insert(name, format!("{other:?}"));
                continue;
            }
        };
        let shape = t.shape().to_vec();
        let elem = match dtype {
            SrcDType::F16 | SrcDType::BF16 => 2,
            SrcDType::F32 => 4,
            SrcDType::F64 => 8,
        };
        let nbytes = shape
            .iter()
            .try_fold(elem, |acc: u64, &d| acc.checked_mul(d as u64));
        if nbytes.is_none_or(|b| b > max_bytes) {
            return Err(corrupt(format!(
                "{name}: shape {shape:?} claims more data than a file of {file_len} bytes holds"
            )));
        }
        let (_, _, _, read) = t.into_parts();
        let read = move || siam_data::quiet::catch_quietly(&read).map_err(io::Error::other)?;
        tensors.insert(
            name,
            SrcTensor {
                dtype,
                shape,
                read: Arc::new(read),
            },
        );
    }
    Ok(Source {
        path: path.to_path_buf(),
        format: FileFormat::PytorchPickle,
        tensors,
        non_float,
    })
}

/// Unwraps training checkpoints: `state_dict.` and DDP's `module.` prefixes.
fn strip_wrappers(src: &mut Source) {
    for prefix in ["state_dict.", "model.", "module."] {
        let all = src.tensors.keys().all(|k| k.starts_with(prefix));
        if all && !src.tensors.is_empty() {
            let old = std::mem::take(&mut src.tensors);
            src.tensors = old
                .into_iter()
                .map(|(k, v)| (k[prefix.len()..].to_string(), v))
                .collect();
            let old = std::mem::take(&mut src.non_float);
            src.non_float = old
                .into_iter()
                .map(|(k, v)| (k.strip_prefix(prefix).unwrap_or(&k).to_string(), v))
                .collect();
        }
    }
}

fn detect_layout(src: &Source) -> Result<Layout> {
    let keys = || src.tensors.keys();
    if keys().any(|k| k.starts_with("vision_model.") || k.starts_with("text_model.")) {
        return Ok(Layout::HuggingFace);
    }
    if keys().any(|k| {
        k.starts_with("visual.")
            || k.starts_with("token_embedding.")
            || k.starts_with("text.token_embedding.")
    }) {
        return Ok(Layout::OpenClip);
    }
    let sample: Vec<&str> = src
        .tensors
        .keys()
        .chain(src.non_float.keys())
        .take(4)
        .map(String::as_str)
        .collect();
    Err(ImportError::NotClip {
        path: src.path.clone(),
        count: src.tensors.len() + src.non_float.len(),
        sample: if sample.is_empty() {
            "nothing".into()
        } else {
            sample.join(", ")
        },
    })
}

fn is_ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
        || key.ends_with("position_ids")
        || key == "attn_mask"
        || key == "text.attn_mask"
        || key == "input_resolution"
        || key == "context_length"
        || key == "vocab_size"
}

// ---------------------------------------------------------------------------------------------
// The model side: every parameter's path, owning module type and shape, without initialising.

/// One model parameter: its path (enum variants skipped), owning module type and shape.
/// `crate::export` builds these to read the recipes backwards.
pub(crate) struct ExpectedParam {
    pub(crate) path: String,
    pub(crate) container: String,
    pub(crate) shape: Vec<usize>,
}

/// Where a [`ModuleVisitor`] is in the module tree, as the key the parameter is saved under
/// (burn's enum wrappers skipped, as safetensors keys skip them).
#[derive(Default)]
pub(crate) struct ModulePath {
    stack: Vec<(String, String)>,
}

impl ModulePath {
    /// Enters module `name` of container type `container`.
    pub(crate) fn enter(&mut self, name: &str, container: &str) {
        self.stack.push((name.to_string(), container.to_string()));
    }

    /// Leaves the innermost module.
    pub(crate) fn exit(&mut self) {
        self.stack.pop();
    }

    /// The dotted key of the current position.
    pub(crate) fn key(&self) -> String {
        self.stack
            .iter()
            .filter(|(_, c)| !c.starts_with("Enum:"))
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The container type of the innermost module.
    pub(crate) fn container(&self) -> String {
        self.stack
            .last()
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct ParamLister {
    stack: ModulePath,
    out: Vec<ExpectedParam>,
}

impl ModuleVisitor for ParamLister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.stack.key();
        let container = self.stack.container();
        self.out.push(ExpectedParam {
            path,
            container,
            shape: param.lazy_shape().to_vec(),
        });
    }
}

fn expected_params(clip: &Clip) -> Vec<ExpectedParam> {
    let mut lister = ParamLister::default();
    clip.visit(&mut lister);
    lister.out
}

// ---------------------------------------------------------------------------------------------
// Recipes: how one model tensor is built from file tensors.

#[derive(Debug, Clone)]
pub(crate) enum Recipe {
    /// Same layout.
    Copy(String),
    /// A PyTorch `Linear` weight [out, in] into burn's [in, out].
    Transpose(String),
    /// HF q/k/v weights [d, d] each: stacked to [3d, d], then transposed to [d, 3d].
    ConcatTranspose(Vec<String>),
    /// HF q/k/v biases concatenated.
    Concat(Vec<String>),
}

impl Recipe {
    fn keys(&self) -> Vec<&str> {
        match self {
            Self::Copy(k) | Self::Transpose(k) => vec![k.as_str()],
            Self::ConcatTranspose(ks) | Self::Concat(ks) => ks.iter().map(String::as_str).collect(),
        }
    }

    /// The shape this recipe yields from the file's shapes, or why it cannot.
    fn result_shape(&self, src: &BTreeMap<String, SrcTensor>) -> Option<Vec<usize>> {
        let shape = |k: &str| src.get(k).map(|t| t.shape.clone());
        match self {
            Self::Copy(k) => shape(k),
            Self::Transpose(k) => match shape(k)?.as_slice() {
                [a, b] => Some(vec![*b, *a]),
                other => Some(other.to_vec()),
            },
            Self::ConcatTranspose(ks) => {
                let shapes: Vec<Vec<usize>> = ks.iter().map(|k| shape(k)).collect::<Option<_>>()?;
                let cols = shapes.first()?.get(1).copied()?;
                if shapes.iter().any(|s| s.len() != 2 || s[1] != cols) {
                    return Some(shapes.concat());
                }
                Some(vec![cols, shapes.iter().map(|s| s[0]).sum()])
            }
            Self::Concat(ks) => {
                let shapes: Vec<Vec<usize>> = ks.iter().map(|k| shape(k)).collect::<Option<_>>()?;
                if shapes.iter().any(|s| s.len() != 1) {
                    return Some(shapes.concat());
                }
                Some(vec![shapes.iter().map(|s| s[0]).sum()])
            }
        }
    }

    fn produce(&self, src: &BTreeMap<String, SrcTensor>) -> io::Result<Vec<f32>> {
        let get = |k: &str| -> io::Result<&SrcTensor> {
            src.get(k).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("tensor {k} vanished"))
            })
        };
        match self {
            Self::Copy(k) => get(k)?.read_f32(),
            Self::Transpose(k) => {
                let t = get(k)?;
                let v = t.read_f32()?;
                Ok(match t.shape.as_slice() {
                    [r, c] => transpose(&v, *r, *c),
                    _ => v,
                })
            }
            Self::ConcatTranspose(ks) => {
                let parts: Vec<(Vec<f32>, usize, usize)> = ks
                    .iter()
                    .map(|k| {
                        let t = get(k)?;
                        Ok((t.read_f32()?, t.shape[0], t.shape[1]))
                    })
                    .collect::<io::Result<_>>()?;
                let cols = parts[0].2;
                let rows: usize = parts.iter().map(|p| p.1).sum();
                // out[c, r_total] = part[r, c]
                let mut out = vec![0f32; rows * cols];
                let mut r0 = 0;
                for (v, r, _) in &parts {
                    for i in 0..*r {
                        for j in 0..cols {
                            out[j * rows + r0 + i] = v[i * cols + j];
                        }
                    }
                    r0 += r;
                }
                Ok(out)
            }
            Self::Concat(ks) => {
                let mut out = Vec::new();
                for k in ks {
                    out.extend(get(k)?.read_f32()?);
                }
                Ok(out)
            }
        }
    }
}

/// `[r, c]` row-major to `[c, r]`, in cache-friendly tiles.
pub(crate) fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    const T: usize = 32;
    let mut out = vec![0f32; r * c];
    for i0 in (0..r).step_by(T) {
        for j0 in (0..c).step_by(T) {
            for i in i0..(i0 + T).min(r) {
                for j in j0..(j0 + T).min(c) {
                    out[j * r + i] = v[i * c + j];
                }
            }
        }
    }
    out
}

fn is_norm(container: &str) -> bool {
    container == "Struct:LayerNorm" || container == "Struct:BatchNorm"
}

/// PyTorch's name for a norm parameter.
fn torch_leaf(leaf: &str, container: &str) -> String {
    match (leaf, is_norm(container)) {
        ("gamma", true) => "weight".into(),
        ("beta", true) => "bias".into(),
        _ => leaf.into(),
    }
}

fn split_leaf(path: &str) -> (&str, &str) {
    match path.rfind('.') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn join(prefix: &str, leaf: &str) -> String {
    if prefix.is_empty() {
        leaf.to_string()
    } else {
        format!("{prefix}.{leaf}")
    }
}

/// OpenAI/open_clip: names are ours except norms (`weight`/`bias`), the fused attention
/// projection (`in_proj_weight`), the ResNet shortcut (`downsample.0`/`.1`) and the text
/// tower's prefix (none in `CLIP`, `text.` in `CustomTextCLIP`).
pub(crate) fn open_clip_recipe(p: &ExpectedParam, text_prefix: &str) -> Recipe {
    let path = match p.path.strip_prefix("text.") {
        Some(rest) => format!("{text_prefix}{rest}"),
        None => p.path.clone(),
    };
    let path = path
        .replace(".downsample.conv.", ".downsample.0.")
        .replace(".downsample.bn.", ".downsample.1.");
    let (prefix, leaf) = split_leaf(&path);
    if let Some(attn) = prefix
        .strip_suffix(".in_proj")
        .filter(|_| p.container == "Struct:Linear")
    {
        let key = format!("{attn}.in_proj_{leaf}");
        return if leaf == "weight" {
            Recipe::Transpose(key)
        } else {
            Recipe::Copy(key)
        };
    }
    let key = join(prefix, &torch_leaf(leaf, &p.container));
    if p.container == "Struct:Linear" && leaf == "weight" {
        Recipe::Transpose(key)
    } else {
        Recipe::Copy(key)
    }
}

/// Hugging Face `CLIPModel` names (transformers `models/clip/modeling_clip.py`).
pub(crate) fn hf_recipe(p: &ExpectedParam) -> Option<Recipe> {
    let path = p.path.as_str();
    let direct = |k: &str| Some(Recipe::Copy(k.to_string()));
    match path {
        "logit_scale" => return direct("logit_scale"),
        "text.token_embedding.weight" => {
            return direct("text_model.embeddings.token_embedding.weight")
        }
        "text.positional_embedding" => {
            return direct("text_model.embeddings.position_embedding.weight")
        }
        "text.text_projection" => return Some(Recipe::Transpose("text_projection.weight".into())),
        "visual.conv1.weight" => return direct("vision_model.embeddings.patch_embedding.weight"),
        "visual.class_embedding" => return direct("vision_model.embeddings.class_embedding"),
        "visual.positional_embedding" => {
            return direct("vision_model.embeddings.position_embedding.weight")
        }
        "visual.proj" => return Some(Recipe::Transpose("visual_projection.weight".into())),
        _ => {}
    }
    let (prefix, leaf) = split_leaf(path);
    let t_leaf = torch_leaf(leaf, &p.container);
    let norm = |name: &str| Some(Recipe::Copy(format!("{name}.{t_leaf}")));
    match prefix {
        "text.ln_final" => return norm("text_model.final_layer_norm"),
        "visual.ln_pre" => return norm("vision_model.pre_layrnorm"),
        "visual.ln_post" => return norm("vision_model.post_layernorm"),
        _ => {}
    }
    let (tower, rest) = if let Some(r) = prefix.strip_prefix("text.transformer.resblocks.") {
        ("text_model", r)
    } else if let Some(r) = prefix.strip_prefix("visual.transformer.resblocks.") {
        ("vision_model", r)
    } else {
        return None;
    };
    let (idx, module) = rest.split_once('.')?;
    let base = format!("{tower}.encoder.layers.{idx}");
    let linear = |name: &str| {
        let key = format!("{base}.{name}.{leaf}");
        Some(if leaf == "weight" {
            Recipe::Transpose(key)
        } else {
            Recipe::Copy(key)
        })
    };
    match module {
        "ln_1" => Some(Recipe::Copy(format!("{base}.layer_norm1.{t_leaf}"))),
        "ln_2" => Some(Recipe::Copy(format!("{base}.layer_norm2.{t_leaf}"))),
        "attn.in_proj" => {
            let keys = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|n| format!("{base}.self_attn.{n}.{leaf}"))
                .collect();
            Some(if leaf == "weight" {
                Recipe::ConcatTranspose(keys)
            } else {
                Recipe::Concat(keys)
            })
        }
        "attn.out_proj" => linear("self_attn.out_proj"),
        "mlp.c_fc" => linear("mlp.fc1"),
        "mlp.c_proj" => linear("mlp.fc2"),
        _ => None,
    }
}

/// How many items of a list an error message shows.
const LIST_MAX: usize = 12;

fn list(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(LIST_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LIST_MAX {
        s.push_str(&format!(" and {} more", items.len() - LIST_MAX));
    }
    s
}

/// The error listing the keys the model needs that the file lacks, the file's keys the model
/// has no place for, and the tensors of the wrong shape.
fn key_mismatch(
    path: &Path,
    arch: &str,
    missing: Vec<String>,
    unexpected: Vec<String>,
    mis_shaped: Vec<String>,
) -> ImportError {
    let parts: Vec<String> = [
        ("missing", &missing),
        ("unexpected", &unexpected),
        ("mis-shaped", &mis_shaped),
    ]
    .into_iter()
    .filter(|(_, keys)| !keys.is_empty())
    .map(|(what, keys)| format!("{} {what}: {}", keys.len(), list(keys)))
    .collect();
    ImportError::KeyMismatch {
        path: path.to_path_buf().into_boxed_path(),
        arch: arch.into(),
        details: parts.join("; ").into(),
        missing,
        unexpected,
        mis_shaped,
    }
}

/// Applies the planned `(model path, shape, recipe)` tensors to `clip`, each read from the
/// file and converted to f32 only when burn-store asks for it; returns how many were applied.
fn apply_plan(
    clip: &mut Clip,
    plan: Vec<(String, Vec<usize>, Recipe)>,
    tensors: BTreeMap<String, SrcTensor>,
    path: &Path,
) -> Result<usize> {
    let tensors_map = Arc::new(tensors);
    let packs: Vec<PackTensor> = plan
        .into_iter()
        .map(|(name, shape, recipe)| {
            let numel: usize = shape.iter().product();
            let map = Arc::clone(&tensors_map);
            PackTensor::deferred(name, DType::F32, shape, None, numel * 4, move || {
                let v = recipe
                    .produce(&map)
                    .map_err(|e| PackError::IoError(e.to_string()))?;
                Ok(Bytes::from_elems(v))
            })
        })
        .collect();
    let result = clip.apply(packs, None, None, true);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        let mut errs: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        errs.extend(
            result
                .missing
                .iter()
                .map(|(p, _)| format!("{p} was not loaded")),
        );
        return Err(ImportError::Apply {
            path: path.to_path_buf(),
            errors: list(&errs),
        });
    }
    Ok(result.applied.len())
}

/// Loads `src` into `clip` under `layout`, checking every key first.
fn apply_source(clip: &mut Clip, src: Source, layout: Layout, arch: &str) -> Result<ImportReport> {
    let expected = expected_params(clip);
    let text_prefix = if src
        .tensors
        .keys()
        .any(|k| k.starts_with("text.token_embedding."))
    {
        "text."
    } else {
        ""
    };
    let mut missing = Vec::new();
    let mut mis_shaped = Vec::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut plan: Vec<(String, Vec<usize>, Recipe)> = Vec::with_capacity(expected.len());
    for p in &expected {
        let recipe = match layout {
            Layout::OpenClip => Some(open_clip_recipe(p, text_prefix)),
            Layout::HuggingFace => hf_recipe(p),
        };
        let Some(mut recipe) = recipe else {
            missing.push(format!("{} (no Hugging Face counterpart)", p.path));
            continue;
        };
        // PyTorch stores logit_scale as a 0-d scalar; ours is [1].
        let absent: Vec<String> = recipe
            .keys()
            .into_iter()
            .filter(|k| !src.tensors.contains_key(*k))
            .map(String::from)
            .collect();
        if !absent.is_empty() {
            missing.extend(absent);
            continue;
        }
        used.extend(recipe.keys().into_iter().map(String::from));
        let found = recipe.result_shape(&src.tensors).unwrap_or_default();
        let scalar_ok = p.shape == [1] && found.iter().product::<usize>() == 1;
        if found != p.shape && !scalar_ok {
            mis_shaped.push(format!(
                "{}: file {:?}, model expects {:?}",
                recipe.keys().join("+"),
                found,
                p.shape
            ));
            continue;
        }
        if let Recipe::Transpose(k) = &recipe {
            if p.shape.len() != 2 {
                recipe = Recipe::Copy(k.clone());
            }
        }
        plan.push((p.path.clone(), p.shape.clone(), recipe));
    }
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for k in src.tensors.keys().chain(src.non_float.keys()) {
        if used.contains(k) {
            continue;
        }
        if is_ignorable(k) {
            ignored.push(k.clone());
        } else {
            unexpected.push(k.clone());
        }
    }
    if !missing.is_empty() || !unexpected.is_empty() || !mis_shaped.is_empty() {
        return Err(key_mismatch(
            &src.path, arch, missing, unexpected, mis_shaped,
        ));
    }

    let mut converted: BTreeSet<String> = BTreeSet::new();
    for k in &used {
        let d = src.tensors[k].dtype;
        if d != SrcDType::F32 {
            converted.insert(format!("{d:?}"));
        }
    }
    let file_tensors = src.tensors.len() + src.non_float.len();
    let applied = apply_plan(clip, plan, src.tensors, &src.path)?;
    Ok(ImportReport {
        weights: src.path,
        layout,
        format: src.format,
        applied,
        file_tensors,
        ignored,
        converted_from: converted.into_iter().collect(),
        arch: arch.to_string(),
    })
}

/// Loads a model from `path`:
/// - a Hugging Face folder (`config.json` + `model.safetensors` or `pytorch_model.bin`);
/// - an OpenAI/open_clip (or Hugging Face) state-dict file, `.safetensors` or pickled.
///
/// `arch` (a preset name or an open_clip model-config JSON path) is required for a bare file
/// and overrides the folder's config when given.
pub fn load_model(path: &Path, arch: Option<&str>, device: &Device) -> Result<LoadedModel> {
    let path = &crate::hub::resolve_model(path).map_err(|e| ImportError::Hub(Box::new(e)))?;
    let (weights, config, arch_name, tokenizer) = if path.is_dir() {
        let tok = Some(path.join("tokenizer.json")).filter(|p| p.is_file());
        let hf = path.join("config.json");
        let oc = path.join(OPEN_CLIP_CONFIG);
        let in_folder = |names: &[&str]| names.iter().map(|w| path.join(w)).find(|p| p.is_file());
        let weights = in_folder(&[WEIGHTS, "pytorch_model.bin"]);
        // An open_clip folder (Hub repo or `siam export --format open_clip`): its config is the
        // architecture unless --arch overrides it.
        if let (None, Some(w), true) = (&weights, in_folder(&OPEN_CLIP_WEIGHTS), oc.is_file()) {
            let config = ClipConfig::from_arch(arch.unwrap_or(&oc.display().to_string()))?;
            let name = arch.map_or_else(|| oc.display().to_string(), str::to_string);
            (w, Some(config), name, None)
        } else {
            let Some(weights) = weights else {
                return Err(ImportError::NotAModelFolder {
                    path: path.to_path_buf(),
                });
            };
            let (config, name) = match arch {
                Some(a) => (ClipConfig::from_arch(a)?, a.to_string()),
                None if hf.is_file() => {
                    (ClipConfig::from_hf_config(&hf)?, hf.display().to_string())
                }
                None => {
                    return Err(ImportError::NotAModelFolder {
                        path: path.to_path_buf(),
                    })
                }
            };
            (weights, Some(config), name, tok)
        }
    } else {
        let config = arch.map(ClipConfig::from_arch).transpose()?;
        (
            path.to_path_buf(),
            config,
            arch.unwrap_or_default().to_string(),
            None,
        )
    };
    let mut src = open_source(&weights)?;
    strip_wrappers(&mut src);
    let layout = detect_layout(&src)?;
    let Some(config) = config else {
        return Err(ImportError::NoArch { path: weights });
    };
    let mut clip = crate::model::init::shell(|| Clip::new(&config, device));
    let report = apply_source(&mut clip, src, layout, &arch_name)?;
    Ok(LoadedModel {
        clip,
        config,
        tokenizer_path: tokenizer,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_concat_by_hand() {
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
        let mut src = BTreeMap::new();
        for (k, v) in [("q", [1f32, 2., 3., 4.]), ("k", [5., 6., 7., 8.])] {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            src.insert(
                k.to_string(),
                SrcTensor {
                    dtype: SrcDType::F32,
                    shape: vec![2, 2],
                    read: Arc::new(move || Ok(bytes.clone())),
                },
            );
        }
        let r = Recipe::ConcatTranspose(vec!["q".into(), "k".into()]);
        assert_eq!(r.result_shape(&src), Some(vec![2, 4]));
        // [[1,2],[3,4],[5,6],[7,8]]^T = [[1,3,5,7],[2,4,6,8]]
        assert_eq!(
            r.produce(&src).unwrap(),
            vec![1., 3., 5., 7., 2., 4., 6., 8.]
        );
    }

    #[test]
    fn fp16_and_bf16_convert() {
        let h: Vec<u8> = [
            burn::tensor::f16::from_f32(1.5),
            burn::tensor::f16::from_f32(-2.0),
        ]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
        assert_eq!(to_f32(&h, SrcDType::F16), vec![1.5, -2.0]);
        let b: Vec<u8> = burn::tensor::bf16::from_f32(0.25).to_le_bytes().to_vec();
        assert_eq!(to_f32(&b, SrcDType::BF16), vec![0.25]);
    }
}
