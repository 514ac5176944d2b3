//! HNSW index quality and speed: siam's `VectorIndex` (built in parallel by src/index/build.rs,
//! hnswlib's algorithm, searched by src/index/flat.rs, saved in hnsw_rs 0.3.5's dump format and
//! reloaded through hnsw_rs) against
//! hnswlib (PyPI, same M and ef_construction) on the same clustered unit vectors, in one run.
//!
//! `cargo bench --bench index` (release). Env: `SIAM_BENCH_N` (default 100000 points),
//! `SIAM_BENCH_PROFILE=1` adds a where-does-the-time-go section for hnsw_rs's own build and
//! search (distance calls counted during a build and a query pass, the kernel timed alone, and
//! hnsw_rs's own `DistDot` for comparison): what siam used before it built graphs itself,
//! `SIAM_PYTHON` (default python3) runs benches/python/index.py.
//!
//! Data: N points and 1,000 held-out queries around 1,000 centres in 512-d: centre `c` (unit
//! gaussian) plus gaussian noise of norm ~1, normalised, so a point has cosine ~0.7 with its
//! centre and ~0.5 with a neighbour of its cluster, as with real image embeddings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hnsw_rs::prelude::{DistDot, Distance, Hnsw};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use siam::index::dot::{dot, UnitDot};
use siam::index::{HnswParams, VectorIndex};

const DIM: usize = 512;
const CENTRES: usize = 1000;
const QUERIES: usize = 1000;
const K: usize = 10;
const EFS: [usize; 5] = [16, 32, 64, 128, 256];

fn normal(rng: &mut StdRng) -> f32 {
    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// `n + QUERIES` clustered unit vectors; the last QUERIES rows are the queries.
fn clustered(n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(20261129);
    let centres: Vec<Vec<f32>> = (0..CENTRES)
        .map(|_| unit((0..DIM).map(|_| normal(&mut rng)).collect()))
        .collect();
    let sigma = 1.0 / (DIM as f32).sqrt();
    let mut all = Vec::with_capacity((n + QUERIES) * DIM);
    for _ in 0..n + QUERIES {
        let c = &centres[rng.random_range(0..CENTRES)];
        all.extend(unit(
            c.iter().map(|x| x + sigma * normal(&mut rng)).collect(),
        ));
    }
    let queries = all.split_off(n * DIM);
    (all, queries)
}

fn exact_top_k(data: &[f32], queries: &[f32]) -> Vec<Vec<usize>> {
    queries
        .par_chunks_exact(DIM)
        .map(|q| {
            let mut s: Vec<(f32, usize)> = data
                .chunks_exact(DIM)
                .enumerate()
                .map(|(i, v)| (dot(q, v), i))
                .collect();
            s.select_nth_unstable_by(K, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            s.truncate(K);
            s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            s.into_iter().map(|p| p.1).collect()
        })
        .collect()
}

fn recall(found: &[Vec<usize>], truth: &[Vec<usize>]) -> f64 {
    let hits: usize = found
        .iter()
        .zip(truth)
        .map(|(f, t)| f.iter().filter(|i| t.contains(i)).count())
        .sum();
    hits as f64 / (truth.len() * K) as f64
}

/// Single-thread query pass: (recall@10, queries per second).
fn query_pass(index: &VectorIndex, queries: &[f32], truth: &[Vec<usize>], ef: usize) -> (f64, f64) {
    let t = Instant::now();
    let found: Vec<Vec<usize>> = queries
        .chunks_exact(DIM)
        .map(|q| {
            index
                .search(q, K, ef)
                .unwrap()
                .into_iter()
                .map(|h| h.0)
                .collect()
        })
        .collect();
    let qps = QUERIES as f64 / t.elapsed().as_secs_f64();
    (recall(&found, truth), qps)
}

/// A distance that counts its calls, to see how much of the time is distance computation.
struct Counting<D> {
    inner: D,
    calls: AtomicU64,
}

impl<D: Distance<f32>> Distance<f32> for Counting<D> {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.eval(a, b)
    }
}

fn profile<D: Distance<f32> + Send + Sync>(name: &str, dist: D, data: &[f32], queries: &[f32]) {
    let n = data.len() / DIM;
    let hnsw = Hnsw::<f32, Counting<D>>::new(
        16,
        n,
        16,
        200,
        Counting {
            inner: dist,
            calls: AtomicU64::new(0),
        },
    );
    let items: Vec<(&[f32], usize)> = data.chunks_exact(DIM).zip(0..n).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let t = Instant::now();
    pool.install(|| hnsw.parallel_insert_slice(&items));
    let build = t.elapsed().as_secs_f64();
    let build_calls = hnsw.get_distance().calls.swap(0, Ordering::Relaxed);
    let t = Instant::now();
    for q in queries.chunks_exact(DIM) {
        std::hint::black_box(hnsw.search(q, K, 64));
    }
    let query = t.elapsed().as_secs_f64();
    let query_calls = hnsw.get_distance().calls.load(Ordering::Relaxed);
    // The kernel alone on the same data, random rows (cache misses as in the graph walk).
    let mut rng = StdRng::seed_from_u64(1);
    let pairs: Vec<(usize, usize)> = (0..1_000_000)
        .map(|_| (rng.random_range(0..n), rng.random_range(0..n)))
        .collect();
    let d = &hnsw.get_distance().inner;
    let t = Instant::now();
    let mut acc = 0.0;
    for &(i, j) in &pairs {
        acc += d.eval(&data[i * DIM..(i + 1) * DIM], &data[j * DIM..(j + 1) * DIM]);
    }
    std::hint::black_box(acc);
    let per_call = t.elapsed().as_secs_f64() / pairs.len() as f64;
    println!(
        "| {name} | {build:.2} s | {build_calls} | {:.0}% | {:.0} | {query_calls} | {:.0}% | {:.1} ns |",
        100.0 * build_calls as f64 * per_call / build,
        QUERIES as f64 / query,
        100.0 * query_calls as f64 * per_call / query,
        per_call * 1e9
    );
}

fn main() {
    let n: usize = std::env::var("SIAM_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let params = HnswParams {
        m: 16,
        ef_construction: 200,
        ef_search: 64,
        build_threads: 2,
    };
    println!("# HNSW index: {n} clustered {DIM}-d unit vectors ({CENTRES} centres), {QUERIES} queries, k = {K}\n");
    let t = Instant::now();
    let (data, queries) = clustered(n);
    let truth = exact_top_k(&data, &queries);
    eprintln!("data + exact top-{K}: {:.1} s", t.elapsed().as_secs_f64());

    if std::env::var("SIAM_BENCH_PROFILE").is_ok_and(|v| v == "1") {
        let m = n.min(20_000);
        println!("## Where the time goes ({m} points, 1 build thread, ef = 64)\n");
        println!("| distance | build | build dist calls | build time in dist | queries/s | query dist calls | query time in dist | one call |");
        println!("|---|---|---|---|---|---|---|---|");
        profile(
            "siam UnitDot",
            UnitDot::default(),
            &data[..m * DIM],
            &queries,
        );
        profile(
            "hnsw_rs DistDot (simdeez)",
            DistDot,
            &data[..m * DIM],
            &queries,
        );
        println!();
    }

    let t = Instant::now();
    let index = VectorIndex::build(&data, DIM, params).unwrap();
    let build = t.elapsed().as_secs_f64();
    eprintln!("siam build: {build:.1} s");
    let saved = tempfile::tempdir().unwrap();
    let t = Instant::now();
    index.save(&saved.path().join("v")).unwrap();
    let save = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let index = VectorIndex::load(&saved.path().join("v")).unwrap();
    let load = t.elapsed().as_secs_f64();
    eprintln!("siam save {save:.1} s, load {load:.1} s");
    let ours: Vec<(f64, f64)> = EFS
        .iter()
        .map(|&ef| query_pass(&index, &queries, &truth, ef))
        .collect();
    drop(index);

    // hnswlib on the same vectors.
    let tmp = tempfile::tempdir().unwrap();
    let (dp, qp, tp) = (
        tmp.path().join("data.npy"),
        tmp.path().join("queries.npy"),
        tmp.path().join("truth.npy"),
    );
    siam::io::write_npy(&dp, &data, n, DIM).unwrap();
    siam::io::write_npy(&qp, &queries, QUERIES, DIM).unwrap();
    let flat: Vec<f32> = truth.iter().flatten().map(|&i| i as f32).collect();
    siam::io::write_npy(&tp, &flat, QUERIES, K).unwrap();
    let python = std::env::var("SIAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let efs = EFS.map(|e| e.to_string()).join(",");
    let out = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/python/index.py"
        ))
        .args([dp.as_os_str(), qp.as_os_str(), tp.as_os_str()])
        .args(["16", "200", &efs])
        .output();
    let theirs: Option<serde_json::Value> = match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            eprintln!(
                "hnswlib side failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("could not run {python}: {e}");
            None
        }
    };

    println!("## Build (M = 16, ef_construction = 200, 2 threads)\n");
    println!("| | siam | hnswlib | siam / hnswlib |");
    println!("|---|---|---|---|");
    let their_build = theirs.as_ref().and_then(|t| t["build_s"].as_f64());
    match their_build {
        Some(b) => println!(
            "| build time | {build:.1} s | {b:.1} s | {:.2}x |",
            build / b
        ),
        None => println!("| build time | {build:.1} s | n/a | n/a |"),
    }
    println!(
        "\nsiam saves the index (hnsw_rs dump + vectors, SHA-256) in {save:.1} s and loads it \
         (checksums, hnsw_rs's loader, flat copy) in {load:.1} s."
    );
    println!("\n## Queries (1 thread, k = {K})\n");
    println!("| ef | siam recall@10 | siam queries/s | ms/query | hnswlib recall@10 | hnswlib queries/s | QPS siam / hnswlib |");
    println!("|---|---|---|---|---|---|---|");
    for (i, ef) in EFS.iter().enumerate() {
        let (r, q) = ours[i];
        let row = theirs.as_ref().map(|t| &t["rows"][i]);
        match row.and_then(|r| Some((r["recall"].as_f64()?, r["qps"].as_f64()?))) {
            Some((tr, tq)) => println!(
                "| {ef} | {r:.4} | {q:.0} | {:.3} | {tr:.4} | {tq:.0} | {:.2} |",
                1e3 / q,
                q / tq
            ),
            None => println!(
                "| {ef} | {r:.4} | {q:.0} | {:.3} | n/a | n/a | n/a |",
                1e3 / q
            ),
        }
    }
}
