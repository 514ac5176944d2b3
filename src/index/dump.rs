//! Writing a [`FlatGraph`] in hnsw_rs 0.3.5's dump format, so that hnsw_rs's `HnswIo` reloads
//! what siam builds (and any program using hnsw_rs can open siam's index files).
//!
//! The layout is hnsw_rs's (`src/hnswio.rs`: `Description::dump`, `PointIndexation::dump`,
//! `dump_point`), in "full" mode, native byte order and `usize` widths, as hnsw_rs writes it:
//!
//! - `NAME.hnsw.graph`: the description (magic `0x002a6779` = format 4, mode 1, `M` as u8,
//!   level scale f64, 16 layers as u8, `ef_construction`, point count and dimension as usize,
//!   the distance's and the value type's names, each as usize length + bytes); then the layer
//!   count (16, u8) and, per layer, magic `0x000a676f`, the number of points whose top layer it
//!   is, and each such point: magic `0x000a678f`, its id (usize), its layer (u8) and rank in
//!   that layer (i32), and for each of the 16 layers the neighbour count (usize) and per
//!   neighbour its id, layer, rank and distance (f32); last, the entry point's id, layer, rank.
//! - `NAME.hnsw.data`: magic `0xa67f0000` and the dimension (usize); then per point, in the
//!   same order: magic, id (u64), byte length (u64), the f32 values.
//!
//! The entry point is written first in its layer, where `FlatGraph::from_hnsw` looks for it.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::build::MAX_LEVEL;
use super::dot::UnitDot;
use super::flat::{FlatGraph, Rows};

const MAGIC_DESCR_4: u32 = 0x002a_6779;
const MAGIC_LAYER: u32 = 0x000a_676f;
const MAGIC_POINT: u32 = 0x000a_678f;
const MAGIC_DATA: u32 = 0xa67f_0000;
/// hnsw_rs's `NB_LAYER_MAX`: every dump describes 16 layers.
const LAYERS: usize = MAX_LEVEL as usize + 1;

/// Writes `graph` over its vectors (`graph.len()` rows) to `graph_path` and `data_path`.
/// `m` and `ef_construction` are recorded in the description as hnsw_rs records them.
pub(crate) fn write_dump(
    graph_path: &Path,
    data_path: &Path,
    graph: &FlatGraph,
    rows: Rows<'_>,
    m: usize,
    ef_construction: usize,
) -> std::io::Result<()> {
    let (n, dim) = (graph.len(), rows.dim);
    // Points grouped by their top layer, in id order, the entry point first in its layer;
    // `place[i]` = (layer, rank) of node i, hnsw_rs's `PointId`.
    let mut by_layer: Vec<Vec<u32>> = vec![Vec::new(); LAYERS];
    by_layer[graph.level(graph.entry())].push(graph.entry());
    for i in 0..n as u32 {
        if i != graph.entry() {
            by_layer[graph.level(i)].push(i);
        }
    }
    let mut place = vec![(0u8, 0i32); n];
    for (l, ids) in by_layer.iter().enumerate() {
        for (r, &i) in ids.iter().enumerate() {
            place[i as usize] = (l as u8, r as i32);
        }
    }
    let row = |i: u32| rows.row(i);

    let mut g = BufWriter::with_capacity(1 << 20, std::fs::File::create(graph_path)?);
    g.write_all(&MAGIC_DESCR_4.to_ne_bytes())?;
    g.write_all(&[1u8, m as u8])?;
    g.write_all(&(1.0 / (m as f64).ln()).to_ne_bytes())?;
    g.write_all(&[LAYERS as u8])?;
    for v in [ef_construction, n, dim] {
        g.write_all(&v.to_ne_bytes())?;
    }
    for name in [
        std::any::type_name::<UnitDot>(),
        std::any::type_name::<f32>(),
    ] {
        g.write_all(&name.len().to_ne_bytes())?;
        g.write_all(name.as_bytes())?;
    }
    let write_id = |g: &mut BufWriter<std::fs::File>, i: u32| -> std::io::Result<()> {
        let (layer, rank) = place[i as usize];
        g.write_all(&(i as usize).to_ne_bytes())?;
        g.write_all(&[layer])?;
        g.write_all(&rank.to_ne_bytes())
    };

    let mut d = BufWriter::with_capacity(1 << 20, std::fs::File::create(data_path)?);
    d.write_all(&MAGIC_DATA.to_ne_bytes())?;
    d.write_all(&dim.to_ne_bytes())?;

    g.write_all(&[LAYERS as u8])?;
    for ids in &by_layer {
        g.write_all(&MAGIC_LAYER.to_ne_bytes())?;
        g.write_all(&ids.len().to_ne_bytes())?;
        for &i in ids {
            g.write_all(&MAGIC_POINT.to_ne_bytes())?;
            write_id(&mut g, i)?;
            for l in 0..LAYERS {
                let links = graph.links(i, l);
                g.write_all(&links.len().to_ne_bytes())?;
                for &j in links {
                    write_id(&mut g, j)?;
                    // UnitDot's distance, as hnsw_rs would have stored it.
                    let dist = (1.0 - (rows.dot)(row(i), row(j))).max(0.0);
                    g.write_all(&dist.to_ne_bytes())?;
                }
            }
            d.write_all(&MAGIC_DATA.to_ne_bytes())?;
            d.write_all(&(i as u64).to_ne_bytes())?;
            d.write_all(&((dim * 4) as u64).to_ne_bytes())?;
            for x in row(i) {
                d.write_all(&x.to_ne_bytes())?;
            }
        }
    }
    write_id(&mut g, graph.entry())?;
    g.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    d.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// A bounded reader over a dump file's bytes: every read checks the length left first.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "{} file ends at byte {} while {n} more bytes were expected (truncated?)",
                self.what,
                self.bytes.len()
            ));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_ne_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_ne_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_ne_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn usize(&mut self) -> Result<usize, String> {
        const W: usize = std::mem::size_of::<usize>();
        Ok(usize::from_ne_bytes(
            self.take(W)?.try_into().expect("usize bytes"),
        ))
    }

    fn magic(&mut self, want: u32, place: &str) -> Result<(), String> {
        let got = self.u32()?;
        if got != want {
            return Err(format!(
                "{} file: bad magic {got:#x} at {place} (expected {want:#x})",
                self.what
            ));
        }
        Ok(())
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// Checks a dump written by [`write_dump`] completely before hnsw_rs reads it: hnsw_rs
/// `unwrap`s short reads, allocates whatever length a file claims, asserts on magics and ids
/// and calls `process::exit` on a short data file. Every count is bounded by the bytes left
/// and by `count`; every id is below `count` and appears once; every neighbour's (layer, rank)
/// names an existing point and agrees with its id; both files end exactly where the last
/// point does. `count`, `dim` and `m` come from `hnsw.json`.
pub(crate) fn validate_dump(
    graph: &[u8],
    data: &[u8],
    count: usize,
    dim: usize,
    m: usize,
) -> Result<(), String> {
    let mut g = Cursor {
        bytes: graph,
        at: 0,
        what: "graph",
    };
    g.magic(MAGIC_DESCR_4, "the description")?;
    let mode = g.u8()?;
    let m_file = g.u8()? as usize;
    let _scale = g.take(8)?;
    let layers = g.u8()? as usize;
    let _ef = g.usize()?;
    let (n, d) = (g.usize()?, g.usize()?);
    if mode != 1 || m_file != m || layers != LAYERS || n != count || d != dim {
        return Err(format!(
            "graph file describes mode {mode}, M {m_file}, {layers} layers, {n} points of dimension {d}; hnsw.json says mode 1, M {m}, {LAYERS} layers, {count} x {dim}"
        ));
    }
    for (what, want) in [
        ("distance", std::any::type_name::<UnitDot>()),
        ("value type", std::any::type_name::<f32>()),
    ] {
        let len = g.usize()?;
        if len != want.len() || g.take(len)? != want.as_bytes() {
            return Err(format!("graph file: {what} name is not {want:?}"));
        }
    }
    if g.u8()? as usize != LAYERS {
        return Err(format!("graph file: layer count is not {LAYERS}"));
    }
    // Per point: (layer, rank) from its own record; neighbours' claimed places, checked after.
    let mut place: Vec<Option<(u8, i32)>> = vec![None; count];
    let mut order = Vec::with_capacity(count);
    let mut sizes = [0usize; LAYERS];
    let mut claims: Vec<(usize, u8, i32)> = Vec::new();
    // Smallest bytes one point record and one neighbour take, to bound counts by what is left.
    const W: usize = std::mem::size_of::<usize>();
    let (point_min, neigh_min) = (4 + W + 5 + LAYERS * W, W + 9);
    for (l, size) in sizes.iter_mut().enumerate() {
        g.magic(MAGIC_LAYER, &format!("layer {l}"))?;
        let points = g.usize()?;
        if points > count - order.len() {
            return Err(format!(
                "graph file: layer {l} claims {points} points, more than hnsw.json ({count}) holds"
            ));
        }
        if points > g.left() / point_min {
            return Err(format!(
                "graph file truncated: layer {l} claims {points} points, more than the {} bytes left hold",
                g.left()
            ));
        }
        *size = points;
        for r in 0..points {
            g.magic(MAGIC_POINT, &format!("point {r} of layer {l}"))?;
            let id = g.usize()?;
            let (layer, rank) = (g.u8()?, g.i32()?);
            if id >= count || place[id].is_some() || layer as usize != l || rank as usize != r {
                return Err(format!(
                    "graph file: point {r} of layer {l} has id {id}, place ({layer}, {rank}): out of range, repeated or misplaced"
                ));
            }
            place[id] = Some((layer, rank));
            order.push(id);
            for nl in 0..LAYERS {
                let k = g.usize()?;
                if k > count {
                    return Err(format!(
                        "graph file: point {id} claims {k} neighbours in layer {nl}, more than the {count} points"
                    ));
                }
                if k > g.left() / neigh_min {
                    return Err(format!(
                        "graph file truncated: point {id} claims {k} neighbours in layer {nl}, more than the {} bytes left hold",
                        g.left()
                    ));
                }
                for _ in 0..k {
                    let j = g.usize()?;
                    let (jl, jr) = (g.u8()?, g.i32()?);
                    let _dist = g.take(4)?;
                    if j >= count {
                        return Err(format!(
                            "graph file: point {id} has neighbour {j}, but there are {count} points"
                        ));
                    }
                    claims.push((j, jl, jr));
                }
            }
        }
    }
    if order.len() != count {
        return Err(format!(
            "graph file holds {} points, hnsw.json says {count}",
            order.len()
        ));
    }
    let entry = g.usize()?;
    let (el, er) = (g.u8()?, g.i32()?);
    if entry >= count {
        return Err(format!("graph file: entry point {entry} out of {count}"));
    }
    claims.push((entry, el, er));
    for (j, l, r) in claims {
        if place[j] != Some((l, r)) {
            return Err(format!(
                "graph file: point {j} is referred to at place ({l}, {r}), but it is at {:?}",
                place[j]
            ));
        }
    }
    if g.left() != 0 {
        return Err(format!(
            "graph file: {} stray bytes after the entry point",
            g.left()
        ));
    }

    let mut dcur = Cursor {
        bytes: data,
        at: 0,
        what: "data",
    };
    dcur.magic(MAGIC_DATA, "the start")?;
    if dcur.usize()? != dim {
        return Err(format!("data file: dimension is not {dim}"));
    }
    let row_bytes = dim.checked_mul(4).ok_or("dimension overflows")?;
    for &id in &order {
        dcur.magic(MAGIC_DATA, &format!("point {id}"))?;
        let (did, len) = (dcur.u64()?, dcur.u64()?);
        if did != id as u64 || len != row_bytes as u64 {
            return Err(format!(
                "data file: record for point {id} says id {did}, {len} bytes (expected {row_bytes})"
            ));
        }
        dcur.take(row_bytes)?;
    }
    if dcur.left() != 0 {
        return Err(format!(
            "data file: {} stray bytes after the last point",
            dcur.left()
        ));
    }
    Ok(())
}
