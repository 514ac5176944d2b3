//! [`FlatGraph`]: an HNSW graph as flat arrays, and the HNSW search shared by queries and by
//! the build (Malkov & Yashunin 2018, "Efficient and robust approximate nearest neighbor search
//! using Hierarchical Navigable Small World graphs", Alg. 2 SEARCH-LAYER and Alg. 5
//! K-NN-SEARCH).
//!
//! As in hnswlib (`hnswalg.h`), layer 0 is one `Vec<u32>` with a fixed stride per node
//! (`[count, id_0, .., id_{cap0-1}]`), the upper layers of a node are consecutive blocks of
//! another `Vec<u32>`, vectors stay in the index's contiguous row-major `Vec<f32>`, the visited
//! set is a per-thread array of generation stamps, and the next neighbour's vector is prefetched
//! while the current one is scored. (hnsw_rs keeps every node behind an `Arc<Point>` with
//! `RwLock`ed neighbour lists and a hash set of visited points; profiled, its distance was only
//! ~24% of query time.)
//!
//! The search is generic over [`Links`], so the same code walks a finished [`FlatGraph`] and
//! the graph being built (`super::build`, which reads neighbour lists under per-node locks).
//!
//! Scores are dot products (= cosine for unit vectors), larger is better; ties are broken by
//! the lower id, so the search is deterministic.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use hnsw_rs::prelude::Hnsw;

use super::dot::{DotFn, UnitDot};

/// A node and its score against the query; `Ord` puts the better one (higher score, then lower
/// id) last, so `BinaryHeap<Scored>` pops the best and `BinaryHeap<Reverse<Scored>>` the worst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scored {
    pub(crate) score: f32,
    pub(crate) id: u32,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.id.cmp(&self.id))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Per-thread search scratch: visited stamps (entry `i` equals `stamp` iff node `i` was seen in
/// the current search) and the two heaps, reused across searches to avoid allocations.
#[derive(Default)]
pub(crate) struct Scratch {
    marks: Vec<u16>,
    stamp: u16,
    candidates: BinaryHeap<Scored>,
    /// The (up to) `ef` best nodes of the last [`beam_search`], worst on top.
    pub(crate) results: BinaryHeap<Reverse<Scored>>,
    fresh: Vec<u32>,
}

impl Scratch {
    /// Starts a new search over `n` nodes: returns the stamp that marks "visited".
    fn begin(&mut self, n: usize) -> u16 {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            // Stamps wrapped: old marks could collide with new ones, so clear them once.
            self.marks.fill(0);
            self.stamp = 1;
        }
        self.candidates.clear();
        self.results.clear();
        self.stamp
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's search scratch.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| f(&mut cell.borrow_mut()))
}

/// Hints the CPU to load the first cache lines of a slice (at most [`PREFETCH_BYTES`]) into L1.
#[inline(always)]
pub(crate) fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = row.as_ptr() as *const i8;
        let bytes = std::mem::size_of_val(row).min(PREFETCH_BYTES);
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch never faults, and `off < size_of_val(row)` keeps the pointer
            // inside the slice.
            unsafe { _mm_prefetch(p.add(off), _MM_HINT_T0) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// How much of the next vector is prefetched: all of a 512-d f32 vector (a shorter prefetch
/// measured no better, within the noise of the shared dev machine).
const PREFETCH_BYTES: usize = 2048;

/// The vectors of an index (`n x dim`, row-major; row `i` is node `i`) and the dot-product
/// kernel that scores them.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) dim: usize,
    pub(crate) dot: DotFn,
}

impl<'a> Rows<'a> {
    #[inline(always)]
    pub(crate) fn row(&self, i: u32) -> &'a [f32] {
        &self.data[i as usize * self.dim..(i as usize + 1) * self.dim]
    }

    /// `query · row(i)`.
    #[inline(always)]
    pub(crate) fn score(&self, query: &[f32], i: u32) -> Scored {
        Scored {
            score: (self.dot)(query, self.row(i)),
            id: i,
        }
    }
}

/// Read access to the neighbour lists of an HNSW graph.
pub(crate) trait Links {
    /// Number of nodes.
    fn nodes(&self) -> usize;
    /// Calls `f` on every neighbour of `node` on `layer` (none above the node's level).
    fn for_each_link(&self, node: u32, layer: usize, f: impl FnMut(u32));
    /// Hints the CPU to load `node`'s layer-0 list.
    fn prefetch_links0(&self, _node: u32) {}
}

/// Alg. 5's descent on one upper layer (ef = 1): from `cur`, move to the best neighbour until
/// none improves; returns where it stopped.
pub(crate) fn greedy<G: Links>(
    g: &G,
    rows: Rows<'_>,
    query: &[f32],
    mut cur: Scored,
    layer: usize,
) -> Scored {
    loop {
        let mut best = cur;
        g.for_each_link(cur.id, layer, |nb| {
            let s = rows.score(query, nb);
            if s > best {
                best = s;
            }
        });
        if best == cur {
            return cur;
        }
        cur = best;
    }
}

/// Alg. 2 on `layer` from `entry` with candidate list size `ef >= 1`: pop the best candidate
/// `c`, stop when it is worse than the worst of the `ef` results, else score `c`'s unvisited
/// neighbours and keep those better than the worst result. The results are left in
/// `scratch.results` (worst on top).
pub(crate) fn beam_search<G: Links>(
    g: &G,
    rows: Rows<'_>,
    query: &[f32],
    entry: Scored,
    ef: usize,
    layer: usize,
    scratch: &mut Scratch,
) {
    let stamp = scratch.begin(g.nodes());
    let Scratch {
        marks,
        candidates,
        results,
        fresh,
        ..
    } = scratch;
    marks[entry.id as usize] = stamp;
    candidates.push(entry);
    results.push(Reverse(entry));
    while let Some(c) = candidates.pop() {
        let worst = results.peek().expect("results hold the entry").0;
        if c < worst {
            break;
        }
        // The next candidate's links are likely needed next: start loading them.
        if layer == 0 {
            if let Some(next) = candidates.peek() {
                g.prefetch_links0(next.id);
            }
        }
        fresh.clear();
        g.for_each_link(c.id, layer, |nb| {
            let m = &mut marks[nb as usize];
            if *m != stamp {
                *m = stamp;
                fresh.push(nb);
            }
        });
        if let Some(&first) = fresh.first() {
            prefetch(rows.row(first));
        }
        #[allow(clippy::needless_range_loop)]
        for j in 0..fresh.len() {
            if let Some(&next) = fresh.get(j + 1) {
                prefetch(rows.row(next));
            }
            let s = rows.score(query, fresh[j]);
            if results.len() < ef || s > results.peek().expect("non-empty").0 {
                candidates.push(s);
                results.push(Reverse(s));
                if results.len() > ef {
                    results.pop();
                }
            }
        }
    }
}

/// The graph of an HNSW index as flat arrays (see the module doc). Node ids are row numbers of
/// the index's vectors.
#[derive(Debug, Clone)]
pub(crate) struct FlatGraph {
    n: usize,
    entry: u32,
    max_level: usize,
    /// Slots per node on layer 0: one count, then `stride0 - 1` neighbour ids.
    stride0: usize,
    links0: Vec<u32>,
    /// Slots per (node, upper layer) block, laid out as on layer 0.
    stride_up: usize,
    /// Block of node `i`'s layer 1 in `upper` (in blocks); its layer `l` is block
    /// `upper_start[i] + l - 1`. Nodes of level 0 own no block.
    upper_start: Vec<u32>,
    level: Vec<u8>,
    upper: Vec<u32>,
}

impl Links for FlatGraph {
    #[inline(always)]
    fn nodes(&self) -> usize {
        self.n
    }

    #[inline(always)]
    fn for_each_link(&self, node: u32, layer: usize, f: impl FnMut(u32)) {
        let ids = if layer == 0 {
            self.links0(node)
        } else {
            self.links_up(node, layer)
        };
        ids.iter().copied().for_each(f);
    }

    #[inline(always)]
    fn prefetch_links0(&self, node: u32) {
        let b = node as usize * self.stride0;
        prefetch(&self.links0[b..b + self.stride0]);
    }
}

/// Upper-layer block of every node: `upper_start[i]` is the first block of node `i` (blocks
/// of all nodes laid out in id order, `level[i]` blocks each); returns it and the block count.
pub(crate) fn upper_blocks(level: &[u8]) -> Result<(Vec<u32>, usize), String> {
    let mut start = Vec::with_capacity(level.len());
    let mut blocks = 0usize;
    for &l in level {
        start.push(u32::try_from(blocks).map_err(|_| "too many upper blocks")?);
        blocks += l as usize;
    }
    Ok((start, blocks))
}

impl FlatGraph {
    /// Assembles a graph from its arrays (see the field docs); `links0` holds `n` blocks of
    /// `stride0` slots and `upper` the blocks [`upper_blocks`] lays out, `stride_up` slots each.
    /// Every list is sorted by id here, so a built and a reloaded graph search identically.
    pub(crate) fn from_parts(
        entry: u32,
        level: Vec<u8>,
        stride0: usize,
        mut links0: Vec<u32>,
        stride_up: usize,
        mut upper: Vec<u32>,
    ) -> Result<Self, String> {
        let n = level.len();
        let (upper_start, blocks) = upper_blocks(&level)?;
        if n == 0 || links0.len() != n * stride0 || upper.len() != blocks * stride_up {
            return Err(format!(
                "{n} nodes with {} layer-0 and {} upper slots",
                links0.len(),
                upper.len()
            ));
        }
        let max_level = *level.iter().max().expect("n > 0") as usize;
        if entry as usize >= n || level[entry as usize] as usize != max_level {
            return Err(format!(
                "entry point {entry} is not on the top layer {max_level}"
            ));
        }
        for (stride, slots) in [(stride0, &mut links0), (stride_up, &mut upper)] {
            for (b, block) in slots.chunks_exact_mut(stride).enumerate() {
                let count = block[0] as usize;
                if count >= stride {
                    return Err(format!(
                        "list {b} holds {count} links, room for {}",
                        stride - 1
                    ));
                }
                let ids = &mut block[1..=count];
                if let Some(&bad) = ids.iter().find(|&&j| j as usize >= n) {
                    return Err(format!("list {b} links to {bad}, past {n} nodes"));
                }
                ids.sort_unstable();
            }
        }
        Ok(FlatGraph {
            n,
            entry,
            max_level,
            stride0,
            links0,
            stride_up,
            upper_start,
            level,
            upper,
        })
    }

    /// Builds the flat graph from per-node neighbour lists: `layers[i][l]` are node `i`'s
    /// neighbours on layer `l` (its level is `layers[i].len() - 1`), `entry` the node the
    /// search starts from, which must have the highest level. Errors name what is inconsistent.
    pub(crate) fn from_lists(layers: &[Vec<Vec<u32>>], entry: usize) -> Result<Self, String> {
        let n = layers.len();
        if n == 0 || n > u32::MAX as usize || entry >= n {
            return Err(format!("{n} nodes, entry point {entry}"));
        }
        let mut cap0 = 1;
        let mut cap_up = 1;
        for (i, node) in layers.iter().enumerate() {
            if node.is_empty() || node.len() > u8::MAX as usize + 1 {
                return Err(format!("node {i} has {} layers", node.len()));
            }
            for (l, ids) in node.iter().enumerate() {
                if l == 0 {
                    cap0 = cap0.max(ids.len());
                } else {
                    cap_up = cap_up.max(ids.len());
                }
            }
        }
        let (stride0, stride_up) = (cap0 + 1, cap_up + 1);
        let mut links0 = vec![0u32; n * stride0];
        let mut level = vec![0u8; n];
        let mut upper = Vec::new();
        for (i, node) in layers.iter().enumerate() {
            let block = &mut links0[i * stride0..(i + 1) * stride0];
            block[0] = node[0].len() as u32;
            block[1..=node[0].len()].copy_from_slice(&node[0]);
            level[i] = (node.len() - 1) as u8;
            for ids in &node[1..] {
                upper.push(ids.len() as u32);
                upper.extend_from_slice(ids);
                upper.resize(upper.len() + cap_up - ids.len(), 0);
            }
        }
        Self::from_parts(entry as u32, level, stride0, links0, stride_up, upper)
    }

    /// Reads the graph of an hnsw_rs index whose points have origin ids `0..n`.
    ///
    /// Every id must appear exactly once and every link must point inside `0..n`; self-links
    /// and duplicates are dropped. hnsw_rs does not expose its entry point; the first point of
    /// its top layer is used (any top-layer node is a valid start for Alg. 5, and siam's own
    /// dumps put the entry point there).
    pub(crate) fn from_hnsw(hnsw: &Hnsw<'_, f32, UnitDot>, n: usize) -> Result<Self, String> {
        let points = hnsw.get_point_indexation();
        let top = points.get_max_level_observed() as usize;
        let mut layers: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
        let mut entry = None;
        for level in 0..=top {
            for p in points.get_layer_iterator(level) {
                let id = p.get_origin_id();
                if id >= n {
                    return Err(format!("point id {id} outside 0..{n}"));
                }
                if !layers[id].is_empty() {
                    return Err(format!("point id {id} appears twice"));
                }
                if level == top && entry.is_none() {
                    entry = Some(id);
                }
                let hood = p.get_neighborhood_id();
                let mut node = Vec::with_capacity(level + 1);
                for l in 0..=level {
                    let mut ids = Vec::new();
                    for nb in hood.get(l).map(Vec::as_slice).unwrap_or_default() {
                        if nb.d_id >= n {
                            return Err(format!(
                                "point id {id} links to {} on layer {l}, outside 0..{n}",
                                nb.d_id
                            ));
                        }
                        if nb.d_id != id {
                            ids.push(nb.d_id as u32);
                        }
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    node.push(ids);
                }
                layers[id] = node;
            }
        }
        if let Some(missing) = layers.iter().position(|l| l.is_empty()) {
            return Err(format!("point id {missing} is missing from the graph"));
        }
        let entry = entry.ok_or("graph has no top layer")?;
        Self::from_lists(&layers, entry)
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// The node every search starts from (it has the highest level).
    pub(crate) fn entry(&self) -> u32 {
        self.entry
    }

    /// Highest layer of `node`.
    pub(crate) fn level(&self, node: u32) -> usize {
        self.level[node as usize] as usize
    }

    /// Neighbours of `node` on layer `l` (empty above its level), sorted by id.
    pub(crate) fn links(&self, node: u32, l: usize) -> &[u32] {
        if l == 0 {
            self.links0(node)
        } else {
            self.links_up(node, l)
        }
    }

    /// Neighbours of `node` on layer 0.
    #[inline(always)]
    fn links0(&self, node: u32) -> &[u32] {
        let block = &self.links0[node as usize * self.stride0..(node as usize + 1) * self.stride0];
        &block[1..=block[0] as usize]
    }

    /// Neighbours of `node` on layer `l >= 1` (empty above its level).
    #[inline(always)]
    fn links_up(&self, node: u32, l: usize) -> &[u32] {
        if l > self.level[node as usize] as usize {
            return &[];
        }
        let b = (self.upper_start[node as usize] as usize + l - 1) * self.stride_up;
        let block = &self.upper[b..b + self.stride_up];
        &block[1..=block[0] as usize]
    }

    /// The (up to) `ef` best nodes found for `query` as `(id, dot product)`, unsorted.
    /// `vectors` is the index's `n x dim` row-major buffer; `ef >= 1`.
    ///
    /// Alg. 5: greedy descent (ef = 1) from the entry point through layers `max_level..1`,
    /// then Alg. 2 on layer 0 with `ef` ([`greedy`], [`beam_search`]).
    pub(crate) fn search(
        &self,
        vectors: &[f32],
        dim: usize,
        query: &[f32],
        ef: usize,
        dot: DotFn,
    ) -> Vec<(usize, f32)> {
        debug_assert_eq!(vectors.len(), self.n * dim);
        let rows = Rows {
            data: vectors,
            dim,
            dot,
        };
        let mut cur = rows.score(query, self.entry);
        for l in (1..=self.max_level).rev() {
            cur = greedy(self, rows, query, cur, l);
        }
        with_scratch(|scratch| {
            beam_search(self, rows, query, cur, ef, 0, scratch);
            scratch
                .results
                .drain()
                .map(|Reverse(s)| (s.id as usize, s.score))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::dot::dot_kernel;

    /// Eight unit vectors on a circle (angle `i * 45°`), a ring graph on layer 0, and nodes 0
    /// and 4 also on layer 1, linked to each other.
    fn ring() -> (Vec<f32>, FlatGraph) {
        let vectors: Vec<f32> = (0..8)
            .flat_map(|i| {
                let a = i as f32 * std::f32::consts::FRAC_PI_4;
                [a.cos(), a.sin()]
            })
            .collect();
        let layers: Vec<Vec<Vec<u32>>> = (0..8u32)
            .map(|i| {
                let mut node = vec![vec![(i + 7) % 8, (i + 1) % 8]];
                if i % 4 == 0 {
                    node.push(vec![(i + 4) % 8]);
                }
                node
            })
            .collect();
        (vectors, FlatGraph::from_lists(&layers, 0).unwrap())
    }

    fn sorted(mut hits: Vec<(usize, f32)>) -> Vec<(usize, f32)> {
        crate::index::vector::sort_hits(&mut hits);
        hits
    }

    #[test]
    fn finds_the_nearest_nodes_on_a_ring() {
        let (v, g) = ring();
        // Query at 170°: nearest are node 4 (180°), node 3 (135°), node 5 (225°).
        let a = 170f32.to_radians();
        let q = [a.cos(), a.sin()];
        let hits = sorted(g.search(&v, 2, &q, 3, dot_kernel()));
        let ids: Vec<usize> = hits.iter().map(|h| h.0).collect();
        assert_eq!(ids, vec![4, 3, 5]);
        assert!((hits[0].1 - 10f32.to_radians().cos()).abs() < 1e-6);
        // ef = 8 reaches every node exactly once.
        let all = g.search(&v, 2, &q, 8, dot_kernel());
        let mut ids: Vec<usize> = all.iter().map(|h| h.0).collect();
        ids.sort();
        assert_eq!(ids, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn ties_go_to_the_lower_id_and_scratch_is_reused() {
        let a = Scored { score: 0.5, id: 3 };
        let b = Scored { score: 0.5, id: 7 };
        assert!(a > b);
        assert!(Scored { score: 0.6, id: 9 } > a);
        let (v, g) = ring();
        // Query at 20°: node 0 (0°) then node 1 (45°); repeated searches reuse the scratch.
        let r = 20f32.to_radians();
        let q = [r.cos(), r.sin()];
        for _ in 0..3 {
            let hits = sorted(g.search(&v, 2, &q, 1, dot_kernel()));
            assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0]);
            let hits = sorted(g.search(&v, 2, &q, 2, dot_kernel()));
            assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 1]);
        }
    }

    #[test]
    fn inconsistent_lists_are_errors() {
        let out_of_range = vec![vec![vec![5u32]], vec![vec![0]]];
        assert!(FlatGraph::from_lists(&out_of_range, 0).is_err());
        let low_entry = vec![vec![vec![1u32]], vec![vec![0], vec![]]];
        assert!(FlatGraph::from_lists(&low_entry, 0).is_err());
        assert!(FlatGraph::from_lists(&low_entry, 1).is_ok());
        assert!(FlatGraph::from_lists(&[], 0).is_err());
    }
}
