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
