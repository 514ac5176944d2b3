//! Load test of `siam serve` on loopback: queries per second and p50/p99 latency with 1, 4 and
//! 16 concurrent clients, for text queries and for image uploads, asserting zero failed
//! requests.
//!
//! `cargo bench --bench serve` (release). The server is the `siam` binary, started with the
//! rate limit off on an ephemeral port, over an index of the synthetic demo set (written as
//! files, `SIAM_BENCH_PER_CLASS` images per label, default 25: 300 images) built by
//! `siam index` with `SIAM_BENCH_MODEL` (default: the tiny CLIP fixture
//! `tests/fixtures/clip/hf_vit`, 32 px, so the figures are mostly the server's own cost; give
//! a `siam train` output folder or a real CLIP folder for model-bound figures).
//! Each client opens one connection per request (`Connection: close`) and sends
//! `SIAM_BENCH_REQUESTS` requests (default 200) per concurrency level and kind; every request
//! must answer 200 with `k` images. The table printed is what BENCHMARKS.md shows.

#[path = "../tests/support/http.rs"]
mod http;
#[path = "../tests/support/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_siam");
const K: usize = 10;
const CLIENTS: [usize; 3] = [1, 4, 16];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone)]
enum Kind {
    Text(Vec<String>),
    Image(Vec<Vec<u8>>),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Text(_) => "text query",
            Kind::Image(_) => "image upload",
        }
    }

    fn send(&self, addr: std::net::SocketAddr, i: usize) -> Result<(), String> {
        let r = match self {
            Kind::Text(t) => http::post_json(
                addr,
                "/api/search",
                &serde_json::json!({ "text": t[i % t.len()], "k": K }).to_string(),
            ),
            Kind::Image(imgs) => http::request(
                addr,
                "POST",
                &format!("/api/search/image?k={K}"),
                &[("Content-Type", "image/png")],
                &imgs[i % imgs.len()],
            ),
        }
        .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!(
                "status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        match v["images"].as_array() {
            Some(a) if a.len() == K => Ok(()),
            _ => Err(format!("not {K} images: {v}")),
        }
    }
}

struct Row {
    qps: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
    total: usize,
}

fn run(addr: std::net::SocketAddr, kind: &Kind, clients: usize, per_level: usize) -> Row {
    let per_client = per_level.div_ceil(clients);
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let kind = kind.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_client);
                let mut failed = Vec::new();
                for j in 0..per_client {
                    let t = Instant::now();
                    match kind.send(addr, c * per_client + j) {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(e) => failed.push(e),
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut failed = Vec::new();
    for h in handles {
        let (l, f) = h.join().expect("client thread");
        lat.extend(l);
        failed.extend(f);
    }
    let wall = start.elapsed();
    if let Some(e) = failed.first() {
        eprintln!("first failure: {e}");
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    Row {
        qps: (lat.len() + failed.len()) as f64 / wall.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        failed: failed.len(),
        total: lat.len() + failed.len(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let per_class = env_usize("SIAM_BENCH_PER_CLASS", 25);
    let per_level = env_usize("SIAM_BENCH_REQUESTS", 200);
    let model = std::env::var_os("SIAM_BENCH_MODEL").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/hf_vit"),
        PathBuf::from,
    );
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    eprintln!(
        "indexing the demo set ({per_class} per label) with {}",
        model.display()
    );
    let (index, images) = server::demo_index(BIN, &root, &model, per_class);
    let s = server::Server::start(BIN, &index, &["--rate-limit", "0", "--max-k", "100"]);
    let texts: Vec<String> = ["red", "green", "blue", "yellow"]
        .iter()
        .flat_map(|c| {
            ["circle", "square", "triangle"].iter().flat_map(move |sh| {
                ["white", "black"]
                    .iter()
                    .map(move |bg| format!("a large {c} {sh} on a {bg} background"))
            })
        })
        .collect();
    let mut pngs = Vec::new();
    for label in [
        "red_circle",
        "blue_square",
        "green_triangle",
        "yellow_circle",
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(images.join(label))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        pngs.push(std::fs::read(&files[0]).unwrap());
    }
    let kinds = [Kind::Text(texts), Kind::Image(pngs)];
    // Warm-up: the first queries pay for lazy initialisation.
    for kind in &kinds {
        for i in 0..10 {
            kind.send(s.addr, i).expect("warm-up request");
        }
    }
    println!(
        "\n{} images indexed; k = {K}; {per_level} requests per row; model {}\n",
        12 * per_class,
        model.display()
    );
    println!("| query | clients | queries/s | p50 | p99 | failed |");
    println!("|---|---|---|---|---|---|");
    let mut failures = 0;
    for kind in &kinds {
        for clients in CLIENTS {
            let r = run(s.addr, kind, clients, per_level);
            println!(
                "| {} | {clients} | {:.0} | {:.1} ms | {:.1} ms | {} of {} |",
                kind.name(),
                r.qps,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.failed,
                r.total
            );
            failures += r.failed;
        }
    }
    assert_eq!(failures, 0, "{failures} requests failed");
}
