//! What every integration test of the `siam` crate shares (`mod support;` in each file): the
//! fixtures folder, readers of the `.npy` and safetensors files the Python references wrote,
//! the test device, the demo set and an observer for training runs, and running the `siam`
//! binary.
//!
//! Each test file uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `tests/fixtures/<sub>`.
pub fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
}

/// The device tests run on: `SIAM_TEST_DEVICE` (flex by default; see
/// `siam::device::from_env`).
pub fn device() -> burn::tensor::Device {
    siam::device::from_env()
}

/// A training observer that keeps the run's info lines (`.0`) and warnings (`.1`).
#[derive(Default)]
pub struct Log(pub Vec<String>, pub Vec<String>);

impl siam::train::Observer for Log {
    fn event(&mut self, e: &siam::train::Event) {
        match e {
            siam::train::Event::Info(s) => self.0.push(s.clone()),
            siam::train::Event::Warning(w) => self.1.push(w.clone()),
            _ => {}
        }
    }
}

/// The synthetic demo set training tests run on: 16 images per label, 64 px, seed 0.
pub fn demo() -> siam_data::dataset::Dataset {
    siam_data::synthetic::demo(16, 64, 0)
}

/// A little-endian, C-order `.npy` array (numpy format 1.0) of f32, i32 or i64.
#[derive(Debug, Clone)]
pub struct Npy {
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Its values, widened to f64 (exact for f32 and i32).
    pub values: Vec<f64>,
}

impl Npy {
    /// The values as f32.
    pub fn f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
}

/// Reads a `.npy` file written by numpy, panicking with the file's name on anything else.
pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not a .npy file",
        path.display()
    );
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(
        header.contains("'fortran_order': False"),
        "{}: fortran order",
        path.display()
    );
    let open = header.find("'shape': (").unwrap() + "'shape': (".len();
    let close = open + header[open..].find(')').unwrap();
    let shape: Vec<usize> = header[open..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data = &bytes[10 + hlen..];
    let values: Vec<f64> = if header.contains("'<f4'") {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    } else if header.contains("'<i4'") {
        data.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    } else if header.contains("'<i8'") {
        data.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    } else {
        panic!("{}: unsupported dtype in {header}", path.display())
    };
    assert_eq!(
        values.len(),
        shape.iter().product::<usize>(),
        "{}: size",
        path.display()
    );
    Npy { shape, values }
}

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// `F32`, `I64`, ...
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its little-endian bytes.
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// The values of an `F32` tensor.
    pub fn f32s(&self) -> Vec<f32> {
        self.bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// The values of an `I64` tensor.
    pub fn i64s(&self) -> Vec<i64> {
        self.bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// A safetensors file (8-byte header length, JSON header, data) by tensor name.
pub fn read_safetensors(path: &Path) -> BTreeMap<String, RawTensor> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let data = &raw[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let t = RawTensor {
                dtype: v["dtype"].as_str().unwrap().to_string(),
                shape,
                bytes: data[a..b].to_vec(),
            };
            (k.clone(), t)
        })
        .collect()
}

/// The tensors of a model folder's `model.safetensors` by name, so two folders compare by
/// value, not by the order of their header entries.
pub fn weights(dir: &Path) -> BTreeMap<String, RawTensor> {
    read_safetensors(&dir.join("model.safetensors"))
}

/// `(step, loss)` of every step a run logged in `dir/metrics.jsonl` (for comparing a resumed
/// run with an uninterrupted one).
pub fn step_losses(dir: &Path) -> Vec<(usize, f64)> {
    siam::train::metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| (m.step, m.loss))
        .collect()
}

/// Runs the `siam` binary.
pub fn siam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_siam"))
        .args(args)
        .output()
        .expect("running siam")
}

/// Runs `siam`, asserting success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = siam(args);
    assert!(
        out.status.success(),
        "siam {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts a failure with a one-line message on stderr, no panic, that contains every
/// `needles` entry; returns stderr.
pub fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = siam(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "siam {args:?} should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
    err
}
