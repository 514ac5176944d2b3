//! Seeded mutations (truncations, byte flips, inserted and random bytes) of valid files thrown at
//! every reader of untrusted bytes in the `siam` crate: index graph and data files (with their
//! checksums updated, so the layout check itself is what stands between hnsw_rs and the bytes),
//! `.npy` (plain and memory-mapped cache reader), safetensors, PyTorch pickles and tokenizer
//! JSON. Each must return `Ok` or `Err`: a panic fails the test with the seed, and an abort or
//! `process::exit` ends the test binary. The readers of the data crate (CIFAR, tar, tables) are
//! fuzzed the same way in `data/tests/parser_fuzz.rs`. A few hundred cases each, seeded.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

/// One to five edits of `valid`: flip a byte, drop one, duplicate one, truncate, overwrite 8
/// bytes with an extreme integer, or append random bytes.
fn mutate(rng: &mut StdRng, valid: &[u8]) -> Vec<u8> {
    let mut v = valid.to_vec();
    for _ in 0..rng.random_range(1..6) {
        if v.is_empty() {
            break;
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..6) {
            0 => v[i] = rng.random(),
            1 => {
                v.remove(i);
            }
            2 => v.insert(i, v[i]),
            3 => v.truncate(i),
            4 => {
                let x: u64 =
                    [u64::MAX, 1 << 62, 1 << 40, 0, u32::MAX as u64][rng.random_range(0..5)];
                let end = (i + 8).min(v.len());
                v[i..end].copy_from_slice(&x.to_ne_bytes()[..end - i]);
            }
            _ => v.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
        }
    }
    v
}

/// Runs `read` on `rounds` mutations of `valid` written to `path`; panics name the round.
fn fuzz(name: &str, valid: &[u8], path: &Path, rounds: usize, mut read: impl FnMut(&Path, &[u8])) {
    let mut rng = StdRng::seed_from_u64(0x5ea1 ^ name.len() as u64);
    let mut errors = 0;
    for round in 0..rounds {
        let bytes = if round % 10 == 9 {
            (0..rng.random_range(0..512))
                .map(|_| rng.random::<u8>())
                .collect()
        } else {
            mutate(&mut rng, valid)
        };
        fs::write(path, &bytes).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| read(path, &bytes)));
        if r.is_err() {
            errors += 1;
            eprintln!("{name}: round {round} panicked ({} bytes)", bytes.len());
        }
    }
    assert_eq!(errors, 0, "{name}: {errors} of {rounds} inputs panicked");
}

#[test]
fn npy_readers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.npy");
    let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
    siam::io::write_npy(&p, &data, 4, 6).unwrap();
    let valid = fs::read(&p).unwrap();
    fuzz("npy", &valid, &p, 400, |p, _| {
        if let Ok((v, r, c)) = siam::io::read_npy(p) {
            assert_eq!(v.len(), r * c);
        }
        if let Ok(src) = siam::train::cache::FeatureSource::open(p) {
            // A source that opened serves every row it claims.
            let all: Vec<usize> = (0..src.len()).collect();
            if src.dim() > 0 && src.len() < 1 << 16 {
                let t = src.rows(&all, &burn::tensor::Device::flex());
                assert_eq!(t.dims(), [src.len(), src.dim()]);
            }
        }
    });
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn index_graph_and_data_readers_never_panic() {
    let dim = 8;
    let mut rng = StdRng::seed_from_u64(7);
    let n = 40;
    let mut vectors = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        vectors.extend(v.iter().map(|x| x / norm));
    }
    let params = siam::index::HnswParams {
        m: 4,
        ef_construction: 16,
        ef_search: 16,
        build_threads: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("g");
    siam::index::VectorIndex::build(&vectors, dim, params)
        .unwrap()
        .save(&idx)
        .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(idx.join("hnsw.json")).unwrap()).unwrap();
    for kind in ["graph", "data"] {
        let path = idx.join(format!("graph.hnsw.{kind}"));
        let valid = fs::read(&path).unwrap();
        let key = format!("{kind}_sha256");
        let mut loaded = 0;
        fuzz(kind, &valid, &path, 300, |p, bytes| {
            // The checksum is made to match: only the layout check protects hnsw_rs.
            let mut m = meta.clone();
            m[&key] = sha(bytes).into();
            fs::write(idx.join("hnsw.json"), m.to_string()).unwrap();
            if let Ok(ix) = siam::index::VectorIndex::load(p.parent().unwrap()) {
                loaded += 1;
                let q = &vectors[..dim];
                let hits = ix.search(q, 3, 16).unwrap();
                assert_eq!(hits.len(), 3);
            }
        });
        fs::write(&path, &valid).unwrap();
        // Mutations that leave the layout valid (a distance's bytes, a vector value) load.
        assert!(loaded < 300, "{kind}: every mutation loaded");
    }
    fs::write(idx.join("hnsw.json"), meta.to_string()).unwrap();
    siam::index::VectorIndex::load(&idx).unwrap();
}

fn load(path: &Path, arch: &Path) {
    let _ = siam::clip::import::load_model(
        path,
        Some(arch.to_str().unwrap()),
        &burn::tensor::Device::flex(),
    );
}

#[test]
fn safetensors_reader_never_panics() {
    let arch = fixture("clip/open_clip_vit/open_clip_config.json");
    let valid = fs::read(fixture("clip/open_clip_vit/model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    // Mostly inside the header, where the structure is.
    let hlen = u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let head = valid[..8 + hlen].to_vec();
    let body = valid[8 + hlen..].to_vec();
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..200 {
        let mut bytes = mutate(&mut rng, &head);
        if round % 2 == 0 {
            bytes.extend_from_slice(&body);
        }
        fs::write(&p, &bytes).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| load(&p, &arch)));
        assert!(r.is_ok(), "safetensors round {round} panicked");
    }
    fuzz("safetensors", &valid, &p, 60, |p, _| load(p, &arch));
}

#[test]
fn pytorch_pickle_reader_never_panics() {
    let arch = fixture("clip/open_clip_vit/open_clip_config.json");
    let valid = fs::read(fixture("clip/open_clip_vit/model.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.pt");
    fuzz("pickle", &valid, &p, 200, |p, _| load(p, &arch));
    // The pickle inside the zip, mutated alone (zip CRCs would catch most whole-file edits).
    let pkl_start = valid
        .windows(8)
        .position(|w| w == b"data.pkl")
        .map(|i| i + 8)
        .unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(13);
    for round in 0..200 {
        let mut bytes = valid.clone();
        let i = pkl_start + 30 + rng.random_range(0..400.min(bytes.len() - pkl_start - 30));
        bytes[i] = rng.random();
        fs::write(&p, &bytes).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| load(&p, &arch)));
        assert!(r.is_ok(), "pickle body round {round} panicked");
    }
}

#[test]
fn tokenizer_json_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    let small = fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("data/tests/fixtures/tokenizer/not_clip_tokenizer.json"),
    )
    .unwrap();
    fuzz("tokenizer", &small, &p, 300, |p, _| {
        let _ = siam_data::tokenizer::ClipTokenizer::from_file(p);
    });
    // The real CLIP tokenizer, truncated or flipped near its start (its structure).
    let full =
        fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/assets/clip_tokenizer.json"))
            .unwrap();
    let mut rng = StdRng::seed_from_u64(17);
    for round in 0..12 {
        let mut bytes = full[..rng.random_range(0..4096)].to_vec();
        if round % 2 == 0 {
            bytes = full.clone();
            let i = rng.random_range(0..2048);
            bytes[i] = rng.random();
        }
        fs::write(&p, &bytes).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _ = siam_data::tokenizer::ClipTokenizer::from_file(&p);
        }));
        assert!(r.is_ok(), "clip tokenizer round {round} panicked");
    }
}
