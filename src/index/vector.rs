//! [`VectorIndex`]: one HNSW graph over unit vectors, with exact search beside it.

use std::fs;
use std::path::{Path, PathBuf};

use hnsw_rs::prelude::HnswIo;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dot::{dot_kernel, UnitDot};
use super::flat::FlatGraph;
use super::{IndexError, Result};

/// Base name of hnsw_rs's dump files: `graph.hnsw.graph` and `graph.hnsw.data`.
const DUMP_BASENAME: &str = "graph";
const META: &str = "hnsw.json";
const VECTORS: &str = "vectors.npy";
/// Largest allowed deviation of a vector's L2 norm from 1.
const NORM_TOLERANCE: f32 = 1e-3;

/// HNSW build and search parameters (Malkov & Yashunin 2018, "Efficient and robust approximate
/// nearest neighbor search using Hierarchical Navigable Small World graphs").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Neighbours kept per node and layer (`M`; hnsw_rs's `max_nb_connection`), 2..=256.
    pub m: usize,
    /// Candidate list size while inserting (`ef_construction`), >= 1.
    pub ef_construction: usize,
    /// Default candidate list size while searching (`ef`), >= 1; raised to `k` when smaller.
    pub ef_search: usize,
    /// Threads used to insert in parallel while building, >= 1.
    pub build_threads: usize,
}

impl Default for HnswParams {
    /// hnswlib's common setting: M = 16, ef_construction = 200; ef = 64; 2 build threads.
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
            build_threads: 2,
        }
    }
}

impl HnswParams {
    /// Checks every parameter, naming the first one out of its domain.
    pub fn validate(&self) -> Result<()> {
        let bad = |what, value, must| Err(IndexError::BadParams { what, value, must });
        // hnsw_rs's dump stores M in one byte.
        if !(2..=255).contains(&self.m) {
            return bad("m", self.m, "must be between 2 and 255");
        }
        if self.ef_construction == 0 {
            return bad("ef_construction", 0, "must be at least 1");
        }
        if self.ef_search == 0 {
            return bad("ef_search", 0, "must be at least 1");
        }
        if self.build_threads == 0 {
            return bad("build_threads", 0, "must be at least 1");
        }
        Ok(())
    }
}

/// What `hnsw.json` records about a saved graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VectorMeta {
    dim: usize,
    count: usize,
    params: HnswParams,
    /// SHA-256 (hex) of `graph.hnsw.graph` and `graph.hnsw.data`, checked before hnsw_rs reads
    /// them: hnsw_rs exits the process or panics on a truncated or altered dump.
    graph_sha256: Option<String>,
    data_sha256: Option<String>,
}

/// An HNSW index over L2-normalised vectors, searched by cosine similarity.
///
/// The graph is built by [`super::build`] (hnswlib's algorithm, in parallel, straight into a
/// [`FlatGraph`] of contiguous neighbour arrays), searched by our own HNSW search, saved in
/// hnsw_rs's dump format ([`super::dump`]) and reloaded through hnsw_rs's `HnswIo`, then copied
/// into a [`FlatGraph`] again. hnsw_rs's own insertion and search were 4-5x slower to build
/// and ~4x slower to query (its `Arc`/`RwLock` node structure; BENCHMARKS.md).
///
/// Row `i` of the vectors given to [`VectorIndex::build`] has id `i`. The vectors are also kept
/// contiguously for [`VectorIndex::search_exact`] and to report exact cosine scores.
pub struct VectorIndex {
    dim: usize,
    vectors: Vec<f32>,
    params: HnswParams,
    /// The graph, searched by [`FlatGraph::search`]; `None` when empty (hnsw_rs cannot dump a
    /// graph without an entry point).
    flat: Option<FlatGraph>,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("dim", &self.dim)
            .field("len", &self.len())
            .field("params", &self.params)
            .finish()
    }
}

/// Checks a flat `rows x dim` buffer of finite unit vectors; returns `rows`.
pub(crate) fn check_unit_rows(what: &'static str, data: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(IndexError::ZeroDim);
    }
    if !data.len().is_multiple_of(dim) {
        return Err(IndexError::Shape {
            what,
            len: data.len(),
            dim,
        });
    }
    let dot = dot_kernel();
    for (row, v) in data.chunks_exact(dim).enumerate() {
        if v.iter().any(|x| !x.is_finite()) {
            return Err(IndexError::NonFinite { what, row });
        }
        let norm = dot(v, v).sqrt();
        if (norm - 1.0).abs() > NORM_TOLERANCE {
            return Err(IndexError::NotUnit { what, row, norm });
        }
    }
    Ok(data.len() / dim)
}

fn hnsw_error(path: &Path, why: impl Into<String>) -> IndexError {
    IndexError::Hnsw {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|source| crate::io::IoError::Os {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|source| crate::io::IoError::Os {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(format!("{:x}", hasher.finalize()))
}

impl VectorIndex {
    /// Builds an index over `vectors` (`n x dim`, row-major, each row L2-normalised to within
    /// 1e-3), inserting in parallel on `params.build_threads` threads. `n = 0` gives an empty
    /// index.
    pub fn build(vectors: &[f32], dim: usize, params: HnswParams) -> Result<Self> {
        Self::build_with_progress(vectors, dim, params, &|_| {})
    }

    /// [`VectorIndex::build`], calling `progress` with the number of vectors inserted since
    /// its last call (for a progress bar).
    pub fn build_with_progress(
        vectors: &[f32],
        dim: usize,
        params: HnswParams,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Self> {
        params.validate()?;
        let n = check_unit_rows("vectors", vectors, dim)?;
        let flat = if n == 0 {
            None
        } else {
            let graph = super::build::build_graph(
                vectors,
                dim,
                params.m,
                params.ef_construction,
                params.build_threads,
                dot_kernel(),
                progress,
            )
            .map_err(|why| hnsw_error(Path::new("."), why))?;
            Some(graph)
        };
        Ok(VectorIndex {
            dim,
            vectors: vectors.to_vec(),
            params,
            flat,
        })
    }

    /// Number of indexed vectors.
    pub fn len(&self) -> usize {
        self.vectors.len() / self.dim
    }

    /// Whether the index holds no vector.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Build and search parameters.
    pub fn params(&self) -> &HnswParams {
        &self.params
    }

    /// The indexed vectors, `len() x dim()` row-major.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    fn check_query(&self, query: &[f32], k: usize) -> Result<()> {
        if query.len() != self.dim {
            return Err(IndexError::QueryDim {
                expected: self.dim,
                got: query.len(),
            });
        }
        check_unit_rows("query", query, self.dim)?;
        if k == 0 || k > self.len() {
            return Err(IndexError::BadK { k, len: self.len() });
        }
        Ok(())
    }

    /// The `k` approximate nearest neighbours of `query` (a unit vector) as `(id, cosine)`,
    /// best first (ties: lower id first), searching with candidate list size
    /// `max(ef, k)`. Scores are exact dot products with the stored vectors.
    ///
    /// Errors when `k` is 0 or larger than [`VectorIndex::len`], or on a bad query.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<(usize, f32)>> {
        self.check_query(query, k)?;
        let Some(flat) = &self.flat else {
            return Err(IndexError::BadK { k, len: 0 });
        };
        // Scores come from the same kernel as `search_exact`: exact dot products.
        let mut hits = flat.search(&self.vectors, self.dim, query, ef.max(k), dot_kernel());
        sort_hits(&mut hits);
        hits.truncate(k);
        Ok(hits)
    }

    /// The exact `k` nearest neighbours by brute force, same output as [`VectorIndex::search`].
    pub fn search_exact(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        self.check_query(query, k)?;
        let dot = dot_kernel();
        let scores: Vec<f32> = self
            .vectors
            .chunks_exact(self.dim)
            .map(|v| dot(query, v))
            .collect();
        Ok(super::scores::top_k(&scores, k, None)
            .into_iter()
            .map(|i| (i, scores[i]))
            .collect())
    }

    /// Writes the index to folder `dir` (atomically: built under a temporary name, then
    /// renamed): `hnsw.json`, `vectors.npy` and hnsw_rs's `graph.hnsw.graph` / `graph.hnsw.data`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::io::atomic_dir(dir, crate::output::OutputKind::VectorIndex, |tmp| {
            self.write_into(tmp).map_err(Into::into)
        })
        .map_err(|e| match e.downcast::<IndexError>() {
            Ok(e) => *e,
            Err(e) => hnsw_error(dir, e.to_string()),
        })
    }

    /// Writes the files into an existing folder.
    pub(crate) fn write_into(&self, dir: &Path) -> Result<()> {
        crate::io::write_npy(&dir.join(VECTORS), &self.vectors, self.len(), self.dim)?;
        let (mut graph_sha256, mut data_sha256) = (None, None);
        if let Some(flat) = &self.flat {
            let (graph_path, data_path) = (dump_path(dir, "graph"), dump_path(dir, "data"));
            super::dump::write_dump(
                &graph_path,
                &data_path,
                flat,
                super::flat::Rows {
                    data: &self.vectors,
                    dim: self.dim,
                    dot: dot_kernel(),
                },
                self.params.m,
                self.params.ef_construction,
            )
            .map_err(|source| crate::io::IoError::Os {
                path: graph_path.clone(),
                source,
            })?;
            graph_sha256 = Some(sha256_file(&graph_path)?);
            data_sha256 = Some(sha256_file(&data_path)?);
        }
        let meta = VectorMeta {
            dim: self.dim,
            count: self.len(),
            params: self.params,
            graph_sha256,
            data_sha256,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
        crate::io::atomic_write_bytes(&dir.join(META), &json)?;
        Ok(())
    }

    /// Loads an index written by [`VectorIndex::save`]. Missing, truncated or altered files are
    /// errors, never a panic or an exit: the dump files are checked against the SHA-256 recorded
    /// at save time before hnsw_rs reads them.
    pub fn load(dir: &Path) -> Result<Self> {
        let meta_path = dir.join(META);
        if !meta_path.is_file() {
            return Err(IndexError::Missing { path: meta_path });
        }
        let corrupt = |path: &Path, why: String| IndexError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        let bytes = fs::read(&meta_path).map_err(|source| crate::io::IoError::Os {
            path: meta_path.clone(),
            source,
        })?;
        let meta: VectorMeta =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&meta_path, e.to_string()))?;
        meta.params
            .validate()
            .map_err(|e| corrupt(&meta_path, e.to_string()))?;
        let vec_path = dir.join(VECTORS);
        if !vec_path.is_file() {
            return Err(IndexError::Missing { path: vec_path });
        }
        let (vectors, rows, cols) =
            crate::io::read_npy(&vec_path).map_err(|e| corrupt(&vec_path, e.to_string()))?;
        if rows != meta.count || cols != meta.dim || meta.dim == 0 {
            return Err(corrupt(
                &vec_path,
                format!(
                    "holds {rows} x {cols}, hnsw.json says {} x {}",
                    meta.count, meta.dim
                ),
            ));
        }
        let flat = if meta.count == 0 {
            None
        } else {
            Some(load_graph(dir, &meta)?)
        };
        Ok(VectorIndex {
            dim: meta.dim,
            vectors,
            params: meta.params,
            flat,
        })
    }
}

fn dump_path(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!("{DUMP_BASENAME}.hnsw.{kind}"))
}

/// Checks the dump files against their recorded SHA-256, reloads them through hnsw_rs's
/// `HnswIo` and copies the graph into a [`FlatGraph`]; hnsw_rs's graph and its loader are
/// dropped on return.
fn load_graph(dir: &Path, meta: &VectorMeta) -> Result<FlatGraph> {
    for (kind, want) in [("graph", &meta.graph_sha256), ("data", &meta.data_sha256)] {
        let path = dump_path(dir, kind);
        if !path.is_file() {
            return Err(IndexError::Missing { path });
        }
        let want = want.as_deref().ok_or_else(|| IndexError::Corrupt {
            path: dir.join(META),
            why: format!("no checksum recorded for {}", path.display()),
        })?;
        if sha256_file(&path)? != want {
            return Err(IndexError::Corrupt {
                path,
                why: "content differs from what was saved (truncated or altered)".into(),
            });
        }
    }
    let graph_path = dump_path(dir, "graph");
    // The checksums only prove the files are what some writer recorded; the layout is checked
    // in full before hnsw_rs, which panics, aborts or exits on a malformed dump, sees it.
    let read = |p: &Path| {
        fs::read(p).map_err(|source| crate::io::IoError::Os {
            path: p.to_path_buf(),
            source,
        })
    };
    let (graph, data) = (read(&graph_path)?, read(&dump_path(dir, "data"))?);
    super::dump::validate_dump(&graph, &data, meta.count, meta.dim, meta.params.m).map_err(
        |why| IndexError::Corrupt {
            path: graph_path.clone(),
            why,
        },
    )?;
    drop((graph, data));
    // The graph borrows its loader, so both live only inside this closure; what leaves it is
    // the owned flat copy. hnsw_rs panics on some malformed dumps: caught, never a crash.
    siam_data::quiet::catch_quietly(|| {
        let mut loader = HnswIo::new(dir, DUMP_BASENAME);
        let hnsw = loader
            .load_hnsw::<f32, UnitDot>()
            .map_err(|e| hnsw_error(dir, e.to_string()))?;
        let (points, hdim) = (
            hnsw.get_nb_point(),
            hnsw.get_point_indexation().get_data_dimension(),
        );
        if points != meta.count || hdim != meta.dim {
            return Err(IndexError::Corrupt {
                path: graph_path.clone(),
                why: format!(
                    "graph holds {points} points of dimension {hdim}, hnsw.json says {} x {}",
                    meta.count, meta.dim
                ),
            });
        }
        FlatGraph::from_hnsw(&hnsw, meta.count).map_err(|why| IndexError::Corrupt {
            path: graph_path.clone(),
            why,
        })
    })
    .map_err(|p| hnsw_error(dir, p.0))?
}

/// Sorts `(id, score)` best first, lower id first among equal scores.
pub(crate) fn sort_hits(hits: &mut [(usize, f32)]) {
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}
