//! The feature cache: outputs of a locked tower, computed once and reused across epochs and
//! runs.
//!
//! A locked tower is a fixed function, so its output for a record never changes. The cache
//! stores the image tower's output for every record (and the text tower's for every text) as a
//! `.npy` matrix named by a SHA-256 fingerprint of everything the output depends on:
//!
//! - the tower's parameters (the bytes of its burnpack record),
//! - the preprocessing (image side, mean, std) or the tokenizer context length,
//! - the inputs (every record's image name, or every text).
//!
//! Files are written atomically ([`crate::io::write_npy`]) and read memory-mapped
//! ([`memmap2`]); a batch gathers its rows from the map. Heads-only epochs then never run a
//! tower.
//!
//! The same holds for the frozen prefix of a tower that trains only its last N blocks
//! (`last:N`): the embeddings and the first `blocks - N` blocks are a fixed function, so their
//! output, the hidden states entering the first unlocked block, is cached once
//! ([`FeatureCache::image_prefix`], [`FeatureCache::text_prefix`]) and fed to the unlocked
//! blocks every epoch ([`PrefixSource`]). Its fingerprint covers only the frozen prefix's
//! parameters (so a resumed run, whose unlocked blocks have moved, still hits), the
//! preprocessing or the token ids, the inputs and the number of frozen blocks. Image prefixes
//! are only valid without augmentation (the pixels of a record must never change).
//!
//! Hidden states are much larger than tower outputs, one `width`-vector per token:
//!
//! | tower | per item |
//! |---|---|
//! | ViT-B/32 image (50 tokens x 768) | 150 KiB |
//! | ViT-B/16 image (197 x 768) | 591 KiB |
//! | ViT-L/14 image (257 x 1024) | 1 MiB |
//! | OpenAI text (width 512), a 12-token label | 24 KiB |
//! | `tiny` image (65 x 64) | 16 KiB |
//!
//! Texts are stored packed, each at its own token count: under the causal mask a position
//! never sees the positions after it, so a text's hidden states do not depend on how far its
//! batch was padded, and a batch pads them again with zeros after each text's end. The caller
//! bounds the file size (`--prefix-cache-max-gb`); a prefix that would not fit is computed
//! every step instead.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use siam_data::dataset::Dataset;

use siam_data::preprocess::Preprocessor;
use siam_data::tokenizer::ClipTokenizer;

use super::inputs::for_each_pixel_batch;
use super::TrainError;
use crate::fingerprint::hex;
use crate::model::encoder::{to_vec, token_tensor};
use crate::model::twin::TwinTowers;

/// Where cached features live.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

/// A memory-mapped `rows x dim` f32 matrix.
#[derive(Debug, Clone)]
pub struct FeatureSource {
    map: Arc<Mmap>,
    offset: usize,
    rows: usize,
    dim: usize,
    path: PathBuf,
}

impl FeatureSource {
    /// Maps a `.npy` file written by [`crate::io::write_npy`].
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let bad = |why: String| TrainError::Cache(path.to_path_buf(), why);
        let f = File::open(path).map_err(|e| bad(e.to_string()))?;
        // SAFETY: cache files are only ever replaced by rename, never written in place, so the
        // mapped bytes do not change under us.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| bad(e.to_string()))?;
        // The one bounded `.npy` reader: the shape is checked against the mapped length
        // before any row is sliced.
        let layout = crate::io::parse_npy_header(&map, map.len() as u64).map_err(|e| bad(e.0))?;
        let (offset, rows, dim) = (layout.offset, layout.rows, layout.cols);
        Ok(Self {
            map: Arc::new(map),
            offset,
            rows,
            dim,
            path: path.to_path_buf(),
        })
    }

    /// Rows in the matrix.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the matrix has no row.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Feature size.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows `idx` as a `[idx.len(), dim]` tensor on `device`.
    ///
    /// # Panics
    /// If an index is out of range (a programmer error).
    pub fn rows(&self, idx: &[usize], device: &Device) -> Tensor<2> {
        let mut out = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            self.extend_with(i..i + 1, &mut out);
        }
        Tensor::from_data(TensorData::new(out, [idx.len(), self.dim]), device)
    }

    /// Appends the values of rows `range` to `out`.
    ///
    /// # Panics
    /// If the range runs past the last row.
    fn extend_with(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        assert!(
            range.end <= self.rows,
            "feature rows {range:?} out of {}",
            self.rows
        );
        let bytes = &self.map[self.offset..][range.start * self.dim * 4..range.end * self.dim * 4];
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }

    /// Size of the mapped file in bytes.
    pub fn bytes(&self) -> u64 {
        self.map.len() as u64
    }
}

/// The cached hidden states of a tower's frozen prefix: for item `i` (a record's image or a
/// text), tokens `offsets[i]..offsets[i + 1]` of a memory-mapped `[tokens, width]` matrix,
/// to be fed to blocks `from_block..`.
#[derive(Debug, Clone)]
pub struct PrefixSource {
    tokens: FeatureSource,
    offsets: Vec<usize>,
    from_block: usize,
}

impl PrefixSource {
    /// Items (images or texts).
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there is no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first block still to run on these hidden states.
    pub fn from_block(&self) -> usize {
        self.from_block
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        self.tokens.path()
    }

    /// Size of the mapped file in bytes.
    pub fn bytes(&self) -> u64 {
        self.tokens.bytes()
    }

    /// Items `idx` as `[idx.len(), L, width]`, `L` the most tokens of any of them, each item
    /// zero-padded after its last token, and every item's token count.
    ///
    /// # Panics
    /// If an index is out of range (a programmer error).
    pub fn hidden(&self, idx: &[usize], device: &Device) -> (Tensor<3>, Vec<usize>) {
        let lengths: Vec<usize> = idx
            .iter()
            .map(|&i| self.offsets[i + 1] - self.offsets[i])
            .collect();
        let l = lengths.iter().copied().max().unwrap_or(0);
        let w = self.tokens.dim();
        let mut out = Vec::with_capacity(idx.len() * l * w);
        for (&i, &n) in idx.iter().zip(&lengths) {
            self.tokens
                .extend_with(self.offsets[i]..self.offsets[i + 1], &mut out);
            out.resize(out.len() + (l - n) * w, 0.0);
        }
        let t = Tensor::from_data(TensorData::new(out, [idx.len(), l, w]), device);
        (t, lengths)
    }
}

/// What [`FeatureCache::image_prefix`] or [`FeatureCache::text_prefix`] did.
#[derive(Debug)]
pub enum Prefix {
    /// The hidden states are on disk and mapped.
    Ready {
        /// The mapped hidden states.
        source: PrefixSource,
        /// Whether they were already on disk (else computed now).
        reused: bool,
    },
    /// The file would exceed the size bound; nothing was computed.
    TooLarge {
        /// Bytes the file would take.
        bytes: u64,
    },
}

/// Hashes every parameter's shape and values in module order (not the record bytes, which
/// carry per-process parameter ids).
fn module_digest<M: Module>(m: &M, h: &mut Sha256) -> Result<(), TrainError> {
    struct Hash<'a>(&'a mut Sha256);
    impl burn::module::ModuleVisitor for Hash<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let t = p.val();
            self.0.update(format!("{:?}", t.dims()).as_bytes());
            for v in to_vec(t) {
                self.0.update(v.to_le_bytes());
            }
        }
    }
    m.visit(&mut Hash(h));
    Ok(())
}

impl FeatureCache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Maps the prefix file `name` if it exists and fits `offsets`, else builds it when its
    /// `rows x width` f32 values fit in `max_bytes`.
    fn load_or_build_prefix(
        &self,
        name: &str,
        offsets: Vec<usize>,
        width: usize,
        from_block: usize,
        max_bytes: u64,
        build: impl FnOnce() -> Result<Vec<f32>, TrainError>,
    ) -> Result<Prefix, TrainError> {
        let rows = *offsets.last().expect("offsets start with 0");
        let path = self.dir.join(format!("{name}.npy"));
        if path.is_file() {
            if let Ok(tokens) = FeatureSource::open(&path) {
                if tokens.len() == rows && tokens.dim() == width {
                    return Ok(Prefix::Ready {
                        source: PrefixSource {
                            tokens,
                            offsets,
                            from_block,
                        },
                        reused: true,
                    });
                }
            }
        }
        let bytes = (rows * width * 4) as u64;
        if bytes > max_bytes {
            return Ok(Prefix::TooLarge { bytes });
        }
        let data = build()?;
        crate::io::write_npy(&path, &data, rows, width)
            .map_err(|e| TrainError::Cache(path.clone(), e.to_string()))?;
        Ok(Prefix::Ready {
            source: PrefixSource {
                tokens: FeatureSource::open(&path)?,
                offsets,
                from_block,
            },
            reused: false,
        })
    }

    /// Hidden states of the ViT image tower after its first `from_block` blocks, for every
    /// record in `records` (item `i` = `records[i]`, so pass every record of the dataset to
    /// index by record), built only if the file would take at most `max_bytes`.
    ///
    /// # Panics
    /// If the image tower is not a ViT or `from_block` exceeds its blocks (programmer errors:
    /// the freeze policy was checked before).
    #[allow(clippy::too_many_arguments)]
    pub fn image_prefix(
        &self,
        model: &TwinTowers,
        from_block: usize,
        ds: &Arc<Dataset>,
        records: &[usize],
        pre: &Preprocessor,
        threads: usize,
        max_bytes: u64,
        device: &Device,
    ) -> Result<Prefix, TrainError> {
        let vit = model
            .clip
            .visual
            .as_vit()
            .expect("a frozen prefix needs a ViT image tower");
        assert!(
            from_block <= vit.num_blocks(),
            "block {from_block} of {}",
            vit.num_blocks()
        );
        let [tokens, width] = vit.positional_embedding.dims();
        let mut h = Sha256::new();
        h.update(b"siam-image-prefix-v1");
        // The frozen part only: the unlocked blocks, ln_post and proj move during training.
        module_digest(&vit.conv1, &mut h)?;
        module_digest(&vit.class_embedding, &mut h)?;
        module_digest(&vit.positional_embedding, &mut h)?;
        module_digest(&vit.ln_pre, &mut h)?;
        for b in &vit.transformer.resblocks[..from_block] {
            module_digest(b, &mut h)?;
        }
        h.update(
            format!(
                "{from_block}|{}|{:?}|{:?}",
                pre.image_size, pre.mean, pre.std
            )
            .as_bytes(),
        );
        for &r in records {
            h.update(ds.records[r].image.name().as_bytes());
            h.update(b"\n");
        }
        let name = format!("image-prefix-{}", &hex(&h.finalize())[..32]);
        let offsets = (0..=records.len()).map(|i| i * tokens).collect();
        self.load_or_build_prefix(&name, offsets, width, from_block, max_bytes, || {
            let frozen = model.valid();
            let vit = frozen.clip.visual.as_vit().expect("checked above");
            let mut out = Vec::with_capacity(records.len() * tokens * width);
            for_each_pixel_batch(ds, pre, records, threads, device, "prefix cache", |px| {
                out.extend(to_vec(vit.forward_prefix(px, from_block)));
            })?;
            Ok(out)
        })
    }

    /// Hidden states of the text tower after its first `from_block` causal blocks, every text
    /// of `ds` at its own token count (item = text index), built only if the file would take
    /// at most `max_bytes`.
    ///
    /// # Panics
    /// If `from_block` exceeds the tower's blocks.
    #[allow(clippy::too_many_arguments)]
    pub fn text_prefix(
        &self,
        model: &TwinTowers,
        from_block: usize,
        ds: &Dataset,
        tokenizer: &ClipTokenizer,
        context: usize,
        max_bytes: u64,
        device: &Device,
    ) -> Result<Prefix, TrainError> {
        let text = &model.clip.text;
        assert!(
            from_block <= text.num_blocks(),
            "block {from_block} of {}",
            text.num_blocks()
        );
        let width = text.positional_embedding.dims()[1];
        const CHUNK: usize = 256;
        let chunks = ds
            .texts
            .chunks(CHUNK)
            .map(|c| {
                let strs: Vec<&str> = c.iter().map(String::as_str).collect();
                tokenizer.encode_batch(&strs, context)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut h = Sha256::new();
        h.update(b"siam-text-prefix-v1");
        module_digest(&text.token_embedding, &mut h)?;
        module_digest(&text.positional_embedding, &mut h)?;
        for b in &text.transformer.resblocks[..from_block] {
            module_digest(b, &mut h)?;
        }
        h.update(format!("{from_block}").as_bytes());
        let mut offsets = vec![0];
        // The token ids stand for the texts, the tokenizer and the context length at once.
        for tb in &chunks {
            for (i, &n) in tb.lengths.iter().enumerate() {
                for id in &tb.row(i)[..n] {
                    h.update(id.to_le_bytes());
                }
                h.update(b"|");
                offsets.push(offsets.last().copied().unwrap_or(0) + n);
            }
        }
        let name = format!("text-prefix-{}", &hex(&h.finalize())[..32]);
        self.load_or_build_prefix(&name, offsets, width, from_block, max_bytes, || {
            let frozen = model.valid();
            let inner = device.clone().without_autodiff();
            let mut out = Vec::new();
            for tb in &chunks {
                let hidden = frozen
                    .clip
                    .text
                    .forward_prefix(token_tensor(&tb.ids, tb.rows, tb.len, &inner), from_block);
                let v = to_vec(hidden);
                for (i, &n) in tb.lengths.iter().enumerate() {
                    out.extend_from_slice(&v[i * tb.len * width..(i * tb.len + n) * width]);
                }
            }
            Ok(out)
        })
    }

    /// Maps the cache file `name` when it holds `rows` rows (anything else, a corrupt or
    /// truncated file included, is rebuilt), else builds and writes it.
    fn load_or_build(
        &self,
        name: &str,
        rows: usize,
        build: impl FnOnce() -> Result<(Vec<f32>, usize, usize), TrainError>,
    ) -> Result<(FeatureSource, bool), TrainError> {
        let path = self.dir.join(format!("{name}.npy"));
        if path.is_file() {
            if let Ok(src) = FeatureSource::open(&path) {
                if src.len() == rows && src.dim() > 0 {
                    return Ok((src, true));
                }
            }
        }
        let (data, rows, dim) = build()?;
        crate::io::write_npy(&path, &data, rows, dim)
            .map_err(|e| TrainError::Cache(path.clone(), e.to_string()))?;
        Ok((FeatureSource::open(&path)?, false))
    }

    /// The image tower's output for every record of `ds` (row = record index). Returns the
    /// source and whether it came from disk.
    pub fn image_features(
        &self,
        model: &TwinTowers,
        ds: &Arc<Dataset>,
        records: &[usize],
        pre: &Preprocessor,
        threads: usize,
        device: &Device,
    ) -> Result<(FeatureSource, bool), TrainError> {
        let mut h = Sha256::new();
        h.update(b"siam-image-features-v1");
        module_digest(&model.clip.visual, &mut h)?;
        h.update(format!("{}|{:?}|{:?}", pre.image_size, pre.mean, pre.std).as_bytes());
        for &r in records {
            h.update(ds.records[r].image.name().as_bytes());
            h.update(b"\n");
        }
        let name = format!("image-{}", &hex(&h.finalize())[..32]);
        self.load_or_build(&name, records.len(), || {
            let frozen = model.valid();
            let mut out = Vec::new();
            let mut dim = 0;
            for_each_pixel_batch(ds, pre, records, threads, device, "feature cache", |px| {
                let f = frozen.clip.encode_image(px);
                dim = f.dims()[1];
                out.extend(to_vec(f));
            })?;
            Ok((out, records.len(), dim))
        })
    }

    /// The text tower's output for every text of `ds` (row = text index).
    pub fn text_features(
        &self,
        model: &TwinTowers,
        ds: &Dataset,
        tokenizer: &ClipTokenizer,
        context: usize,
        device: &Device,
    ) -> Result<(FeatureSource, bool), TrainError> {
        let mut h = Sha256::new();
        h.update(b"siam-text-features-v1");
        module_digest(&model.clip.text, &mut h)?;
        h.update(format!("{context}").as_bytes());
        for t in &ds.texts {
            h.update(t.as_bytes());
            h.update(b"\n");
        }
        let name = format!("text-{}", &hex(&h.finalize())[..32]);
        self.load_or_build(&name, ds.texts.len(), || {
            let frozen = model.valid();
            let inner = device.clone().without_autodiff();
            let mut out = Vec::new();
            let mut dim = 0;
            for chunk in ds.texts.chunks(256) {
                let strs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let tb = tokenizer.encode_batch(&strs, context)?;
                let f = frozen
                    .clip
                    .encode_text(token_tensor(&tb.ids, tb.rows, tb.len, &inner), &tb.lengths);
                dim = f.dims()[1];
                out.extend(to_vec(f));
            }
            Ok((out, ds.texts.len(), dim))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_rows_match_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        crate::io::write_npy(&p, &data, 4, 3).unwrap();
        let src = FeatureSource::open(&p).unwrap();
        assert_eq!((src.len(), src.dim()), (4, 3));
        let t = src.rows(&[2, 0], &Device::flex());
        assert_eq!(to_vec(t), vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0]);
    }

    /// Texts of different lengths, gathered from the packed prefix cache and zero-padded,
    /// embed as they do from their tokens; a bound below the file size builds nothing.
    #[test]
    fn text_prefix_embeds_like_the_tokens() {
        use crate::clip::config::ClipConfig;
        use crate::clip::model::Clip;
        use crate::model::heads::HeadConfig;
        use crate::model::twin::TextInput;

        let d = Device::flex();
        let cfg = ClipConfig::tiny();
        let head = HeadConfig::linear(cfg.embed_dim, 16);
        let model = TwinTowers::new(Clip::new(&cfg, &d), head, &d);
        let mut ds = siam_data::synthetic::demo(1, 64, 0);
        ds.texts = vec![
            "a cat".into(),
            "a photo of a small dog on a sofa".into(),
            "x".into(),
        ];
        let tok = ClipTokenizer::builtin().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path().to_path_buf());
        let too_small = cache
            .text_prefix(&model, 1, &ds, &tok, 77, 100, &d)
            .unwrap();
        assert!(
            matches!(too_small, Prefix::TooLarge { .. }),
            "{too_small:?}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let Prefix::Ready { source, reused } = cache
            .text_prefix(&model, 1, &ds, &tok, 77, u64::MAX, &d)
            .unwrap()
        else {
            panic!("not built")
        };
        assert!(!reused);
        let idx = [2, 1, 0];
        let (hidden, lengths) = source.hidden(&idx, &d);
        let strs: Vec<&str> = idx.iter().map(|&i| ds.texts[i].as_str()).collect();
        let tb = tok.encode_batch(&strs, 77).unwrap();
        assert_eq!(lengths, tb.lengths);
        assert_eq!(hidden.dims(), [3, tb.len, 64]);
        let from_cache = model.embed_texts(TextInput::Hidden {
            hidden,
            from_block: source.from_block(),
            lengths,
        });
        let direct = model.embed_texts(TextInput::Tokens {
            ids: token_tensor(&tb.ids, tb.rows, tb.len, &d),
            lengths: tb.lengths.clone(),
        });
        from_cache
            .into_data()
            .assert_approx_eq::<f32>(&direct.into_data(), burn::tensor::Tolerance::absolute(1e-5));
        let again = cache.text_prefix(&model, 1, &ds, &tok, 77, 0, &d).unwrap();
        assert!(
            matches!(again, Prefix::Ready { reused: true, .. }),
            "{again:?}"
        );
    }

    #[test]
    fn truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.npy");
        crate::io::write_npy(&p, &[1.0; 8], 2, 4).unwrap();
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, &raw[..raw.len() - 4]).unwrap();
        assert!(FeatureSource::open(&p).is_err());
    }
}
