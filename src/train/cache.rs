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

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use siam_data::dataset::Dataset;
use siam_data::pipeline::{Loader, LoaderOptions};
use siam_data::preprocess::Preprocessor;
use siam_data::tokenizer::ClipTokenizer;

use super::encoder::{to_vec, token_tensor};
use super::run::hex;
use super::twin::TwinTowers;
use super::TrainError;

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
        if map.len() < 10 || &map[..6] != b"\x93NUMPY" || map[6] != 1 {
            return Err(bad("not a version-1 .npy file".into()));
        }
        let hlen = u16::from_le_bytes([map[8], map[9]]) as usize;
        let header = std::str::from_utf8(&map[10..10 + hlen]).map_err(|e| bad(e.to_string()))?;
        if !header.contains("'<f4'") {
            return Err(bad("not float32".into()));
        }
        let shape = header
            .split('(')
            .nth(1)
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| bad("no shape".into()))?;
        let dims: Vec<usize> = shape
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let [rows, dim] = dims[..] else {
            return Err(bad(format!("shape ({shape}) is not 2-D")));
        };
        let offset = 10 + hlen;
        if map.len() != offset + rows * dim * 4 {
            return Err(bad("truncated".into()));
        }
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
        let bytes = &self.map[self.offset..];
        for &i in idx {
            assert!(i < self.rows, "feature row {i} out of {}", self.rows);
            let row = &bytes[i * self.dim * 4..(i + 1) * self.dim * 4];
            out.extend(
                row.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        Tensor::from_data(TensorData::new(out, [idx.len(), self.dim]), device)
    }
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

    fn load_or_build(
        &self,
        name: &str,
        build: impl FnOnce() -> Result<(Vec<f32>, usize, usize), TrainError>,
    ) -> Result<(FeatureSource, bool), TrainError> {
        let path = self.dir.join(format!("{name}.npy"));
        if path.is_file() {
            if let Ok(src) = FeatureSource::open(&path) {
                return Ok((src, true));
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
        self.load_or_build(&name, || {
            let frozen = model.valid();
            let inner = device.clone().without_autodiff();
            const B: usize = 64;
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
            let mut out = Vec::new();
            let mut dim = 0;
            for b in loader {
                let b = b?;
                if b.len() != b.indices.len() || !b.skipped.is_empty() {
                    return Err(TrainError::Config(format!(
                        "image(s) could not be read while filling the feature cache: {:?}",
                        b.skipped
                    )));
                }
                let n = b.len();
                let px = Tensor::<4>::from_data(TensorData::new(b.pixels, [n, 3, s, s]), &inner);
                let f = frozen.clip.encode_image(px);
                dim = f.dims()[1];
                out.extend(to_vec(f));
            }
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
        self.load_or_build(&name, || {
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
