//! Building an HNSW graph in parallel, straight into the flat layout of [`FlatGraph`].
//!
//! The algorithm is hnswlib's (`hnswalg.h`, `addPoint`), itself Malkov & Yashunin 2018, Alg. 1
//! INSERT with Alg. 4's neighbour-selection heuristic:
//!
//! 1. A node's level is `floor(-ln(u) * mL)` with `mL = 1 / ln(M)` and `u` uniform in (0, 1],
//!    drawn from a hash of the node id (so levels do not depend on thread timing), capped at
//!    [`MAX_LEVEL`] (hnsw_rs's 16 layers, so the dump stays readable by hnsw_rs).
//! 2. Greedy descent (ef = 1) from the entry point down to the node's level + 1, then on each
//!    layer from `min(level, top)` down to 0: a beam search with `ef_construction`, the
//!    heuristic picks at most `M` neighbours among the results (keep a candidate `c`, best
//!    first, unless an already kept `s` is closer to it than the new node is:
//!    `s·c > q·c`), and links are made both ways. A neighbour whose list is full (`2M` on
//!    layer 0, `M` above) re-selects its list from its links plus the new node with the same
//!    heuristic. The next layer starts from the best neighbour found.
//! 3. Every node's lists are changed under its own lock; searches read them without locking
//!    (see [`Growing::for_each_link`]; hnswlib locks there too). An insert that raises the top
//!    level holds the entry-point lock for its whole insertion.
//!
//! Threads take the next node id from a shared counter, so the graph, like hnswlib's with
//! several threads, depends on timing; with one thread it is deterministic.

use std::sync::atomic::{
    AtomicU32, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use parking_lot::Mutex;

use super::dot::DotFn;
use super::flat::{
    beam_search, greedy, upper_blocks, with_scratch, FlatGraph, Links, Rows, Scored,
};

/// Highest level a node may get: hnsw_rs keeps 16 layers (`NB_LAYER_MAX`), 0..=15.
pub(crate) const MAX_LEVEL: u8 = 15;

/// Seed of the level hash (any fixed value; hnsw_rs seeds its level generator with 397).
const LEVEL_SEED: u64 = 397;

/// Level of node `id`: `floor(-ln(u) * ml)` with `u` in (0, 1] from SplitMix64 of the id.
pub(crate) fn level_of(id: usize, ml: f64) -> u8 {
    let mut z = (id as u64)
        .wrapping_add(LEVEL_SEED)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    (-u.ln() * ml).floor().min(MAX_LEVEL as f64) as u8
}

/// One thread's reusable lists for [`Growing::insert`], so inserts allocate nothing once warm.
#[derive(Default)]
struct Buffers {
    /// Results of a layer's beam search, best first.
    found: Vec<Scored>,
    /// The new node's selected neighbours.
    kept: Vec<Scored>,
    /// A full list plus the new link, while it is re-selected.
    relink: Vec<Scored>,
    /// Its re-selected links.
    relinked: Vec<Scored>,
}

/// The graph while it grows: lists as atomics (plain loads and stores on x86), rewritten under
/// one lock per node, so threads share them without `unsafe`.
struct Growing<'a> {
    rows: Rows<'a>,
    m: usize,
    ef_construction: usize,
    level: Vec<u8>,
    upper_start: Vec<u32>,
    stride0: usize,
    links0: Vec<AtomicU32>,
    stride_up: usize,
    upper: Vec<AtomicU32>,
    locks: Vec<Mutex<()>>,
    /// Entry point and the top level.
    top: Mutex<(u32, u8)>,
}

impl Links for Growing<'_> {
    fn nodes(&self) -> usize {
        self.level.len()
    }

    /// Reads without the node's lock: a list being rewritten at the same moment may show a mix
    /// of its old and new ids, every one a valid node (slots only ever hold node ids), which
    /// the search tolerates (it dedupes by its visited marks). The count is published with
    /// `Release` after the slots it covers, so no slot past what was written is read.
    fn for_each_link(&self, node: u32, layer: usize, mut f: impl FnMut(u32)) {
        if let Some(block) = self.block(node, layer) {
            let count = (block[0].load(Acquire) as usize).min(block.len() - 1);
            for id in &block[1..=count] {
                f(id.load(Relaxed));
            }
        }
    }
}

impl<'a> Growing<'a> {
    /// The list of `node` on `layer` (`[count, ids..]`), `None` above its level. Read or write
    /// it only while holding `locks[node]`.
    fn block(&self, node: u32, layer: usize) -> Option<&[AtomicU32]> {
        let i = node as usize;
        if layer == 0 {
            Some(&self.links0[i * self.stride0..(i + 1) * self.stride0])
        } else if layer <= self.level[i] as usize {
            let b = (self.upper_start[i] as usize + layer - 1) * self.stride_up;
            Some(&self.upper[b..b + self.stride_up])
        } else {
            None
        }
    }

    fn score(&self, a: u32, b: u32) -> f32 {
        (self.rows.dot)(self.rows.row(a), self.rows.row(b))
    }

    /// Alg. 4 (hnswlib's `getNeighborsByHeuristic2`): from `cands`, sorted best first by their
    /// score against the base node, keep at most `m`; `c` is kept unless a kept `s` has
    /// `s·c > base·c` (it is closer to `s` than to the base). Fewer than `m` candidates are
    /// all kept.
    fn select(&self, cands: &[Scored], m: usize, out: &mut Vec<Scored>) {
        out.clear();
        if cands.len() < m {
            out.extend_from_slice(cands);
            return;
        }
        for &c in cands {
            if out.len() >= m {
                break;
            }
            let row = self.rows.row(c.id);
            if out
                .iter()
                .all(|s| (self.rows.dot)(row, self.rows.row(s.id)) <= c.score)
            {
                out.push(c);
            }
        }
    }

    /// Adds `new` to the list of `node` on `layer`, re-selecting the list when it is full.
    fn link(&self, node: u32, new: u32, layer: usize, bufs: &mut Buffers) {
        let Buffers {
            relink: scratch,
            relinked: kept,
            ..
        } = bufs;
        let cap = if layer == 0 {
            self.stride0
        } else {
            self.stride_up
        } - 1;
        let _guard = self.locks[node as usize].lock();
        let block = self
            .block(node, layer)
            .expect("linked on a layer the node has");
        let count = block[0].load(Relaxed) as usize;
        if block[1..=count].iter().any(|id| id.load(Relaxed) == new) {
            return;
        }
        if count < cap {
            block[1 + count].store(new, Relaxed);
            block[0].store(count as u32 + 1, Release);
            return;
        }
        scratch.clear();
        let ids = block[1..=count].iter().map(|id| id.load(Relaxed));
        scratch.extend(ids.chain([new]).map(|id| Scored {
            score: self.score(node, id),
            id,
        }));
        scratch.sort_unstable_by(|a, b| b.cmp(a));
        self.select(scratch, cap, kept);
        for (slot, s) in block[1..].iter().zip(kept.iter()) {
            slot.store(s.id, Relaxed);
        }
        block[0].store(kept.len() as u32, Release);
    }

    /// Inserts node `q` (Alg. 1), with this thread's `bufs`.
    fn insert(&self, q: u32, bufs: &mut Buffers) {
        let lq = self.level[q as usize];
        let top = self.top.lock();
        let (entry, top_level) = *top;
        // Only an insert that raises the top level keeps the entry point locked.
        let raises = lq > top_level;
        let top = if raises {
            Some(top)
        } else {
            drop(top);
            None
        };
        let query = self.rows.row(q);
        let mut cur = self.rows.score(query, entry);
        for l in (lq as usize + 1..=top_level as usize).rev() {
            cur = greedy(self, self.rows, query, cur, l);
        }
        let (mut found, mut kept) = (
            std::mem::take(&mut bufs.found),
            std::mem::take(&mut bufs.kept),
        );
        for l in (0..=lq.min(top_level) as usize).rev() {
            with_scratch(|s| {
                beam_search(self, self.rows, query, cur, self.ef_construction, l, s);
                found.clear();
                found.extend(s.results.drain().map(|r| r.0));
            });
            found.sort_unstable_by(|a, b| b.cmp(a));
            found.retain(|s| s.id != q);
            self.select(&found, self.m, &mut kept);
            // Added one by one, not written over: another thread may already have linked to
            // `q` on this layer (it can reach `q` from the layer above).
            for s in &kept {
                self.link(q, s.id, l, bufs);
                self.link(s.id, q, l, bufs);
            }
            if let Some(&best) = kept.first() {
                cur = best;
            }
        }
        (bufs.found, bufs.kept) = (found, kept);
        if let Some(mut top) = top {
            *top = (q, lq);
        }
    }
}

/// Builds the HNSW graph of `vectors` (`n >= 1` unit rows of `dim`) with `m` links per node
/// (`2m` on layer 0) and `ef_construction`, inserting on `threads` threads; `progress` is
/// called with the number of nodes inserted since its last call.
pub(crate) fn build_graph(
    vectors: &[f32],
    dim: usize,
    m: usize,
    ef_construction: usize,
    threads: usize,
    dot: DotFn,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FlatGraph, String> {
    let n = vectors.len() / dim;
    if n == 0 || n > u32::MAX as usize {
        return Err(format!("cannot build a graph over {n} vectors"));
    }
    let ml = 1.0 / (m as f64).ln();
    let level: Vec<u8> = (0..n).map(|i| level_of(i, ml)).collect();
    let (upper_start, blocks) = upper_blocks(&level)?;
    let (stride0, stride_up) = (2 * m + 1, m + 1);
    let atomics = |len: usize| (0..len).map(|_| AtomicU32::new(0)).collect::<Vec<_>>();
    let g = Growing {
        rows: Rows {
            data: vectors,
            dim,
            dot,
        },
        m,
        ef_construction,
        upper_start,
        stride0,
        links0: atomics(n * stride0),
        stride_up,
        upper: atomics(blocks * stride_up),
        locks: (0..n).map(|_| Mutex::new(())).collect(),
        top: Mutex::new((0, level[0])),
        level,
    };
    progress(1);
    let next = AtomicUsize::new(1);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut bufs = Buffers::default();
                let mut done = 0u64;
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= n {
                        break;
                    }
                    g.insert(i as u32, &mut bufs);
                    done += 1;
                    if done == 256 {
                        progress(done);
                        done = 0;
                    }
                }
                progress(done);
            });
        }
    });
    let entry = g.top.into_inner().0;
    let plain = |v: Vec<AtomicU32>| v.into_iter().map(AtomicU32::into_inner).collect();
    FlatGraph::from_parts(
        entry,
        g.level,
        stride0,
        plain(g.links0),
        stride_up,
        plain(g.upper),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::dot::dot_kernel;

    #[test]
    fn levels_follow_the_geometric_law() {
        let ml = 1.0 / 16f64.ln();
        let n = 200_000;
        let mut counts = [0usize; 16];
        for i in 0..n {
            counts[level_of(i, ml) as usize] += 1;
        }
        // P(level >= l) = M^-l: 1/16 of the nodes reach layer 1, 1/256 layer 2.
        let at_least = |l: usize| counts[l..].iter().sum::<usize>() as f64 / n as f64;
        assert!((at_least(1) - 1.0 / 16.0).abs() < 0.003, "{}", at_least(1));
        assert!(
            (at_least(2) - 1.0 / 256.0).abs() < 0.0008,
            "{}",
            at_least(2)
        );
    }

    /// Random unit vectors: lists respect their caps, hold no self-link or duplicate, every
    /// node is reachable on layer 0 from the entry point with one thread (which is
    /// deterministic), and all but a handful with two. Concurrent insertion, as in hnswlib, can
    /// prune the last link into a node inserted at the same moment; with M = 4 (8 links on layer
    /// 0) a loaded machine once left 1 of 2,000 unreachable.
    #[test]
    fn builds_a_consistent_connected_graph() {
        let (n, dim) = (2000, 8);
        let mut state = 7u64;
        let mut v: Vec<f32> = (0..n * dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        for row in v.chunks_exact_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        let lists = |g: &FlatGraph| -> Vec<Vec<u32>> {
            (0..n as u32)
                .flat_map(|i| (0..=g.level(i)).map(move |l| (i, l)))
                .map(|(i, l)| g.links(i, l).to_vec())
                .collect()
        };
        let one = build_graph(&v, dim, 4, 32, 1, dot_kernel(), &|_| {}).unwrap();
        let again = build_graph(&v, dim, 4, 32, 1, dot_kernel(), &|_| {}).unwrap();
        assert_eq!(lists(&one), lists(&again));
        for threads in [1, 2] {
            let done = AtomicUsize::new(0);
            let progress = |k: u64| {
                done.fetch_add(k as usize, Relaxed);
            };
            let g = build_graph(&v, dim, 4, 32, threads, dot_kernel(), &progress).unwrap();
            assert_eq!(done.into_inner(), n);
            assert_eq!(g.len(), n);
            for i in 0..n as u32 {
                for l in 0..=g.level(i) {
                    let ids = g.links(i, l);
                    assert!(ids.len() <= if l == 0 { 8 } else { 4 });
                    assert!(!ids.contains(&i));
                    assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicate");
                }
            }
            let mut seen = vec![false; n];
            let mut stack = vec![g.entry()];
            seen[g.entry() as usize] = true;
            while let Some(i) = stack.pop() {
                for &j in g.links(i, 0) {
                    if !std::mem::replace(&mut seen[j as usize], true) {
                        stack.push(j);
                    }
                }
            }
            let lost = seen.iter().filter(|&&s| !s).count();
            let allowed = if threads == 1 { 0 } else { n / 200 };
            assert!(
                lost <= allowed,
                "{threads} threads: {lost} nodes unreachable from the entry point"
            );
        }
    }
}
