//! Random bytes and mutated valid files thrown at every parser (captions CSV/TSV/JSONL,
//! Karpathy JSON, CIFAR batches, webdataset tar, label mapping, format detection, the loader's
//! decoding of a corrupt shard member): each must return `Ok` or an `Err`, never panic.
//! Seeded, so a failure reproduces.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use siam_data::dataset::{Dataset, OpenOptions};
use siam_data::formats::Format;
use siam_data::pipeline::{Loader, LoaderOptions};
use siam_data::preprocess::Preprocessor;
use std::path::Path;
use std::sync::Arc;

const ROUNDS: usize = 300;

fn random_bytes(rng: &mut StdRng, alphabet: &[u8]) -> Vec<u8> {
    let n = rng.random_range(0..400);
    (0..n)
        .map(|_| {
            if rng.random_bool(0.7) && !alphabet.is_empty() {
                alphabet[rng.random_range(0..alphabet.len())]
            } else {
                rng.random()
            }
        })
        .collect()
}

/// Flips, deletes or duplicates a few bytes of `valid`.
fn mutate(rng: &mut StdRng, valid: &[u8]) -> Vec<u8> {
    let mut v = valid.to_vec();
    for _ in 0..rng.random_range(1..6) {
        if v.is_empty() {
            break;
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..4) {
            0 => v[i] = rng.random(),
            1 => {
                v.remove(i);
            }
            2 => v.insert(i, v[i]),
            _ => v.truncate(i),
        }
    }
    v
}

/// Opens `path` as `format`; any panic fails the test with the input that caused it.
fn must_not_panic(path: &Path, format: Option<Format>, bytes: &[u8]) {
    let opts = OpenOptions {
        format,
        ..OpenOptions::default()
    };
    let r = std::panic::catch_unwind(|| Dataset::open(path, &opts).map(|d| d.len()));
    assert!(
        r.is_ok(),
        "parser panicked on {path:?} with bytes {bytes:?}"
    );
}

fn fuzz_file(name: &str, format: Option<Format>, valid: &[u8], alphabet: &[u8], seed: u64) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.jpg"), b"\xff\xd8 not really").unwrap();
    let path = d.path().join(name);
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..ROUNDS {
        let bytes = if round % 2 == 0 {
            random_bytes(&mut rng, alphabet)
        } else {
            mutate(&mut rng, valid)
        };
        std::fs::write(&path, &bytes).unwrap();
        let target = if format == Some(Format::Cifar) {
            d.path().to_path_buf()
        } else {
            path.clone()
        };
        must_not_panic(&target, format, &bytes);
    }
}

#[test]
fn captions_csv_tsv_jsonl() {
    let csv = b"image,text,label,split\na.jpg,\"a, b\",x,train\n\"a.jpg\",\"q\"\"q\",x,test\n";
    fuzz_file(
        "t.csv",
        Some(Format::Captions),
        csv,
        b"a.jpg,\"\n\r\ttext",
        1,
    );
    fuzz_file(
        "t.tsv",
        Some(Format::Captions),
        b"a.jpg\tone\n../a.jpg\ttwo\n",
        b"a.jpg\t\n../",
        2,
    );
    let jl =
        b"{\"image\": \"a.jpg\", \"text\": [\"x\", \"y\"], \"label\": 3, \"split\": \"val\"}\n";
    fuzz_file(
        "t.jsonl",
        Some(Format::Captions),
        jl,
        b"{}[]\":,a.jpgtext\n",
        3,
    );
}

#[test]
fn karpathy_json() {
    let k = br#"{"images": [{"filepath": "", "filename": "a.jpg", "split": "restval", "sentences": [{"raw": "x", "tokens": ["x"]}]}]}"#;
    fuzz_file(
        "dataset_x.json",
        Some(Format::Karpathy),
        k,
        b"{}[]\":,a.jpgsplitsentencesraw",
        4,
    );
}

#[test]
fn cifar_batches() {
    let mut valid = vec![3u8];
    valid.extend(std::iter::repeat_n(7u8, 3072));
    fuzz_file("data_batch_1.bin", Some(Format::Cifar), &valid, &[], 5);
    fuzz_file("train.bin", Some(Format::Cifar), &valid, &[], 6);
}

#[test]
fn webdataset_tar() {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("k.png", &b"\x89PNG\r\n\x1a\n junk"[..]),
        ("k.txt", b"caption"),
        ("j.jpg", b"\xff\xd8"),
        ("j.json", b"{\"caption\": \"c\"}"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    let valid = b.into_inner().unwrap();
    fuzz_file("s.tar", Some(Format::WebDataset), &valid, &[], 7);
    // The loader reads the (corrupt) members by range and must skip them without a panic.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("s.tar"), &valid).unwrap();
    let ds = Arc::new(Dataset::open(d.path(), &OpenOptions::default()).unwrap());
    let mut l = Loader::new(
        ds.clone(),
        Preprocessor::clip(8),
        vec![(0..ds.len()).collect()],
        LoaderOptions::default(),
    );
    let batch = l.next().unwrap().unwrap();
    assert_eq!((batch.len(), batch.skipped.len()), (0, 2));
}

#[test]
fn label_mapping_and_detection() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("n01")).unwrap();
    std::fs::write(d.path().join("n01/a.png"), b"x").unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    for round in 0..ROUNDS {
        let name = if round % 2 == 0 {
            "labels.txt"
        } else {
            "labels.json"
        };
        let bytes = if round % 3 == 0 {
            mutate(&mut rng, b"{\"n01\": \"tench\"}")
        } else {
            random_bytes(&mut rng, b"n01 \t\n{}\":")
        };
        let _ = std::fs::remove_file(d.path().join("labels.txt"));
        let _ = std::fs::remove_file(d.path().join("labels.json"));
        std::fs::write(d.path().join(name), &bytes).unwrap();
        must_not_panic(d.path(), None, &bytes);
    }
}
