//! Broken, hand-edited and hostile inputs against the `siam` binary, run as a user would: every
//! case asserts the exit code (1, never a panic's 101), no "panicked" on stderr, a one-line
//! error naming the file (or option) and the cause, and that no output path exists after the
//! failure; nothing a user made is ever replaced or removed. Then the inputs that must work
//! (animated GIF, WebP, 16-bit and grayscale PNG, palette PNG, CMYK and EXIF-rotated JPEG, a PNG
//! named .jpg, a CSV with a byte-order mark and quoted commas), each embedded like the plain RGB
//! image PIL decodes it to (`scripts/make_test_images.py` writes both).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

fn siam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_siam"))
        .args(args)
        .output()
        .expect("running siam")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(p: &str) -> String {
    root().join("tests/fixtures").join(p).display().to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn ok(args: &[&str]) -> Output {
    let out = siam(args);
    assert!(
        out.status.success(),
        "siam {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The checks every failure must pass: exit code 1, or 2 for an option value the argument
/// parser refuses (not a panic's 101 or an abort), no
/// "panicked", exactly one stderr line, no raw control character in it, each needle in it, and
/// none of `absent` left behind. Returns the line.
fn fails(args: &[&str], needles: &[&str], absent: &[&Path]) -> String {
    let out = siam(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "siam {args:?} should exit 1 (or 2 for a bad option value): {err}"
    );
    assert!(!err.contains("panicked"), "siam {args:?} panicked: {err}");
    let line = err.trim_end();
    assert_eq!(
        line.lines().count(),
        1,
        "siam {args:?}: not one line: {err}"
    );
    assert!(
        !line.chars().any(|c| c.is_control()),
        "raw control characters: {line:?}"
    );
    for n in needles {
        assert!(line.contains(n), "siam {args:?}: {line:?} lacks {n:?}");
    }
    for p in absent {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "siam {args:?} left {}",
            p.display()
        );
    }
    line.to_string()
}

/// No siam temporary, old or lock file left in `dir`.
fn no_leftovers(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !(n.ends_with(".tmp") || n.contains(".old.") || n.ends_with(".siam-lock")),
            "{}: left {n}",
            dir.display()
        );
    }
}

fn hf() -> String {
    fixture("clip/hf_vit")
}

/// A `siam train` model folder (tiny architecture, one epoch on the demo set), shared.
fn trained() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let run = dir.join("run");
        ok(&[
            "train",
            "--epochs",
            "1",
            "--no-index",
            "--quiet",
            "--out",
            &s(&run),
        ]);
        run
    })
}

/// `siam demo-data` with 2 images per class, shared.
fn demo() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let demo = dir.join("demo");
        ok(&["demo-data", "--out", &s(&demo), "--per-class", "2"]);
        demo
    })
}

/// An index of the demo images built with the HF fixture model, shared (copy before altering).
fn index() -> &'static Path {
    static I: OnceLock<PathBuf> = OnceLock::new();
    I.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let idx = dir.join("idx");
        ok(&[
            "index",
            "--model",
            &hf(),
            "--data",
            &s(&demo().join("images")),
            "--out",
            &s(&idx),
        ]);
        idx
    })
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            fs::copy(e.path(), t).unwrap();
        }
    }
}

fn write(p: &Path, bytes: impl AsRef<[u8]>) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, bytes).unwrap();
}

fn query_img() -> String {
    s(&demo().join("images/train/red_circle/0000.png"))
}

// ---------------------------------------------------------------------------------------------
// Data loss: outputs replace only what siam wrote; locks.
// ---------------------------------------------------------------------------------------------

#[test]
fn outputs_never_replace_a_users_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let notes = d.join("notes.txt");
    write(&notes, "my notes");
    let user = d.join("userdir");
    write(&user.join("precious.txt"), "precious");
    let images = s(&demo().join("images"));
    let check_intact = || {
        assert_eq!(fs::read_to_string(&notes).unwrap(), "my notes");
        assert_eq!(
            fs::read_to_string(user.join("precious.txt")).unwrap(),
            "precious"
        );
        assert_eq!(fs::read_dir(&user).unwrap().count(), 1);
        no_leftovers(d);
    };
    // 1-2: index --out an existing file, a user's folder.
    for target in [&notes, &user] {
        fails(
            &[
                "index",
                "--model",
                &hf(),
                "--data",
                &images,
                "--out",
                &s(target),
            ],
            &[&s(target), "refusing to replace"],
            &[],
        );
        check_intact();
    }
    // 3-4: train --out a user's folder or file (refused before any data is read).
    for target in [&user, &notes] {
        fails(
            &["train", "--epochs", "1", "--out", &s(target)],
            &[&s(target), "not a training output folder"],
            &[],
        );
        check_intact();
    }
    // 5: embed --out a user's .npy (no siam sidecar beside it).
    let npy = d.join("mine.npy");
    write(&npy, b"\x93NUMPY user data");
    fails(
        &["embed", "--model", &hf(), "--texts", "x", "--out", &s(&npy)],
        &["mine.npy", "refusing"],
        &[&d.join("mine.ids.json")],
    );
    assert_eq!(fs::read(&npy).unwrap(), b"\x93NUMPY user data");
    // 6: embed whose sidecar path is a user's file.
    let side = d.join("e.ids.json");
    write(&side, "{\"mine\": true}");
    fails(
        &[
            "embed",
            "--model",
            &hf(),
            "--texts",
            "x",
            "--out",
            &s(&d.join("e.npy")),
        ],
        &["e.ids.json", "refusing"],
        &[&d.join("e.npy")],
    );
    assert_eq!(fs::read_to_string(&side).unwrap(), "{\"mine\": true}");
    // 7: eval --json a user's JSON file.
    let ujson = d.join("results.json");
    write(&ujson, "{\"mine\": 1}");
    fails(
        &[
            "eval",
            "--model",
            &hf(),
            "--data",
            &images,
            "--json",
            &s(&ujson),
        ],
        &["results.json", "refusing"],
        &[&d.join("results.png")],
    );
    // 8: eval --json whose chart path is a user's PNG.
    let upng = d.join("chart.png");
    write(&upng, b"\x89PNG\r\n\x1a\nuser");
    fails(
        &[
            "eval",
            "--model",
            &hf(),
            "--data",
            &images,
            "--json",
            &s(&d.join("chart.json")),
        ],
        &["chart.png", "refusing"],
        &[&d.join("chart.json")],
    );
    assert_eq!(fs::read(&upng).unwrap(), b"\x89PNG\r\n\x1a\nuser");
    // 9: demo-data --out a user's folder.
    fails(
        &["demo-data", "--out", &s(&user)],
        &["userdir", "refusing"],
        &[],
    );
    // 10: train --report a user's file (refused before training).
    fails(
        &[
            "train",
            "--epochs",
            "1",
            "--out",
            &s(&d.join("r")),
            "--report",
            &s(&notes),
        ],
        &["notes.txt", "refusing"],
        &[&d.join("r")],
    );
    check_intact();
    // 10b: a failing command leaves no folder it made for its output.
    let deep = d.join("deep/er/idx");
    fails(
        &[
            "index",
            "--model",
            &hf(),
            "--data",
            &s(&d.join("nowhere")),
            "--out",
            &s(&deep),
        ],
        &["nowhere"],
        &[&d.join("deep")],
    );
}

#[test]
fn outputs_siam_wrote_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 11: an index folder over an older index.
    let idx = d.join("idx");
    copy_dir(index(), &idx);
    ok(&[
        "index",
        "--model",
        &hf(),
        "--data",
        &s(&demo().join("images")),
        "--out",
        &s(&idx),
    ]);
    assert!(idx.join("manifest.json").is_file());
    // ... but not once a user's file was put inside it.
    write(&idx.join("notes.txt"), "mine");
    fails(
        &[
            "index",
            "--model",
            &hf(),
            "--data",
            &s(&demo().join("images")),
            "--out",
            &s(&idx),
        ],
        &["notes.txt", "siam did not write"],
        &[],
    );
    assert!(idx.join("notes.txt").is_file());
    // 12: embeddings twice.
    let e = s(&d.join("e.npy"));
    ok(&["embed", "--model", &hf(), "--texts", "a", "--out", &e]);
    ok(&["embed", "--model", &hf(), "--texts", "a", "b", "--out", &e]);
    assert_eq!(siam::io::read_npy_shape(&d.join("e.npy")).unwrap().0, 2);
    // 13: demo data twice.
    let demo2 = s(&d.join("demo"));
    ok(&["demo-data", "--out", &demo2, "--per-class", "1"]);
    ok(&["demo-data", "--out", &demo2, "--per-class", "1"]);
    no_leftovers(d);
}

fn lock_file(out: &Path, pid: u32) {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let body = serde_json::json!({"pid": pid, "host": host, "command": "siam other", "started": 0});
    write(&siam::output::lock_path(out), body.to_string());
}

#[test]
fn a_live_lock_refuses_and_a_stale_one_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx");
    let images = s(&demo().join("images"));
    // 14: a live holder (a sleeping child standing for another siam).
    let mut holder = Command::new("sleep").arg("30").spawn().unwrap();
    lock_file(&out, holder.id());
    fails(
        &[
            "index",
            "--model",
            &hf(),
            "--data",
            &images,
            "--out",
            &s(&out),
        ],
        &["another siam process", &format!("pid {}", holder.id())],
        &[&out],
    );
    // 16: --resume of a folder another live process is writing.
    let run = dir.path().join("run");
    lock_file(&run, holder.id());
    fails(
        &["train", "--resume", "--out", &s(&run)],
        &["another siam process"],
        &[&run],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    // 15: the holder is gone: its lock is stale and taken over.
    ok(&[
        "index",
        "--model",
        &hf(),
        "--data",
        &images,
        "--out",
        &s(&out),
    ]);
    assert!(!siam::output::lock_path(&out).exists());
}

#[test]
fn two_trainings_of_one_folder_at_once_one_is_refused() {
    // 17: real concurrent processes.
    let dir = tempfile::tempdir().unwrap();
    let run = s(&dir.path().join("run"));
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_siam"))
            .args([
                "train",
                "--epochs",
                "1",
                "--no-index",
                "--quiet",
                "--out",
                &run,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(1)),
        "one run must win and one be refused: {codes:?}"
    );
    let refused = outs.iter().find(|o| o.status.code() == Some(1)).unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("another siam process") && err.contains("pid"),
        "{err}"
    );
    assert!(dir.path().join("run/siam.json").is_file());
    no_leftovers(dir.path());
}

// ---------------------------------------------------------------------------------------------
// Configs: one validation, naming file, field and range.
// ---------------------------------------------------------------------------------------------

/// A copy of the trained model folder with `siam.json` edited by `edit`.
fn edited_model(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let m = dir.join("model");
    copy_dir(trained(), &m);
    let p = m.join("siam.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    write(&p, serde_json::to_vec_pretty(&v).unwrap());
    m
}

#[test]
fn bad_siam_json_values_are_named() {
    type Edit = fn(&mut serde_json::Value);
    let cases: &[(&str, Edit, &[&str])] = &[
        // 18-23
        (
            "patch_size 0",
            |v| v["clip"]["vision"]["patch_size"] = 0.into(),
            &["patch_size", "allowed"],
        ),
        (
            "image_size 0",
            |v| v["clip"]["vision"]["image_size"] = 0.into(),
            &["image_size", "allowed"],
        ),
        (
            "joint_dim 0",
            |v| v["joint_dim"] = 0.into(),
            &["joint_dim", "allowed"],
        ),
        (
            "std 0",
            |v| v["std"] = serde_json::json!([0.0, 0.0, 0.0]),
            &["std[0]", "above 0"],
        ),
        ("version 99", |v| v["version"] = 99.into(), &["version 99"]),
        (
            "heads 0",
            |v| v["clip"]["text"]["heads"] = 0.into(),
            &["text.heads", "allowed"],
        ),
        (
            "embed_dim text",
            |v| v["clip"]["embed_dim"] = "wide".into(),
            &["invalid type"],
        ),
        (
            "card image_size",
            |v| v["image_size"] = 7.into(),
            &["image_size = 7"],
        ),
        (
            "head d_in",
            |v| v["image_head"]["d_in"] = 3.into(),
            &["image_head.d_in"],
        ),
    ];
    for (what, edit, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let m = edited_model(dir.path(), edit);
        let out = dir.path().join("e.npy");
        let line = fails(
            &[
                "embed",
                "--model",
                &s(&m),
                "--texts",
                "x",
                "--out",
                &s(&out),
            ],
            needles,
            &[&out],
        );
        assert!(line.contains("siam.json"), "{what}: {line}");
        assert!(!line.contains("missing field"), "{what}: {line}");
    }
}

#[test]
fn bad_hf_and_open_clip_configs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixture("clip/hf_vit/config.json")).unwrap())
            .unwrap();
    type Edit = fn(&mut serde_json::Value);
    // 24-26: Hugging Face config.json.
    let hf_cases: &[(Edit, &str)] = &[
        (
            |v| v["vision_config"]["patch_size"] = 0.into(),
            "patch_size",
        ),
        (
            |v| v["vision_config"]["num_attention_heads"] = 0.into(),
            "vision.heads",
        ),
        (|v| v["text_config"]["hidden_size"] = 0.into(), "text.width"),
    ];
    for (i, (edit, field)) in hf_cases.iter().enumerate() {
        let m = d.join(format!("hf{i}"));
        copy_dir(Path::new(&hf()), &m);
        let mut v = base.clone();
        edit(&mut v);
        write(&m.join("config.json"), v.to_string());
        fails(
            &[
                "embed",
                "--model",
                &s(&m),
                "--texts",
                "x",
                "--out",
                &s(&d.join("o.npy")),
            ],
            &["config.json", field],
            &[&d.join("o.npy")],
        );
    }
    // 27-30: open_clip model-config JSON given as --arch.
    let oc_cases: &[(&str, &str)] = &[
        (
            r#"{"embed_dim": 64, "vision_cfg": {"image_size": 0, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32}, "text_cfg": {"width": 64, "heads": 2, "layers": 1}}"#,
            "image_size",
        ),
        (
            r#"{"embed_dim": 64, "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 1, "head_width": 0}, "text_cfg": {"width": 64, "heads": 2, "layers": 1}}"#,
            "head_width",
        ),
        (
            r#"{"embed_dim": 64, "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32, "mlp_ratio": -1}, "text_cfg": {"width": 64, "heads": 2, "layers": 1}}"#,
            "mlp_width",
        ),
        (
            r#"{"embed_dim": 0, "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32}, "text_cfg": {"width": 64, "heads": 2, "layers": 1}}"#,
            "embed_dim",
        ),
    ];
    for (i, (json, field)) in oc_cases.iter().enumerate() {
        let arch = d.join(format!("arch{i}.json"));
        write(&arch, json);
        let out = d.join(format!("o{i}.npy"));
        let weights = fixture("clip/hf_vit/model.safetensors");
        fails(
            &[
                "embed",
                "--model",
                &weights,
                "--arch",
                &s(&arch),
                "--texts",
                "x",
                "--out",
                &s(&out),
            ],
            &[&format!("arch{i}.json"), field],
            &[&out],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Index files altered with their checksums updated to match.
// ---------------------------------------------------------------------------------------------

fn sha(p: &Path) -> String {
    format!("{:x}", Sha256::digest(fs::read(p).unwrap()))
}

/// Rewrites `hnsw.json` of `graph_dir` with the current checksums of its dump files.
fn rehash(graph_dir: &Path) {
    let meta = graph_dir.join("hnsw.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&meta).unwrap()).unwrap();
    v["graph_sha256"] = sha(&graph_dir.join("graph.hnsw.graph")).into();
    v["data_sha256"] = sha(&graph_dir.join("graph.hnsw.data")).into();
    write(&meta, v.to_string());
}

/// Offset of layer 0's point count in a dump graph file.
fn layer0_count_offset(graph: &[u8]) -> usize {
    let w = std::mem::size_of::<usize>();
    let mut at = 4 + 1 + 1 + 8 + 1 + 3 * w;
    for _ in 0..2 {
        let len = usize::from_ne_bytes(graph[at..at + w].try_into().unwrap());
        at += w + len;
    }
    at + 1 + 4
}

#[test]
fn altered_index_files_are_errors() {
    type Alter = fn(&Path);
    let cases: &[(&str, Alter, &[&str])] = &[
        // 31: truncated graph, checksum updated.
        (
            "truncated graph",
            |h| {
                let g = h.join("images/graph.hnsw.graph");
                let b = fs::read(&g).unwrap();
                write(&g, &b[..b.len() / 2]);
                rehash(&h.join("images"));
            },
            &["graph.hnsw.graph", "truncated"],
        ),
        // 32: a point count of 2^62 (hnsw_rs would allocate it and abort).
        (
            "huge count",
            |h| {
                let g = h.join("images/graph.hnsw.graph");
                let mut b = fs::read(&g).unwrap();
                let at = layer0_count_offset(&b);
                b[at..at + 8].copy_from_slice(&(1u64 << 62).to_ne_bytes());
                write(&g, b);
                rehash(&h.join("images"));
            },
            &["graph.hnsw.graph", "claims"],
        ),
        // 33: truncated data file (hnsw_rs exits 1 silently).
        (
            "truncated data",
            |h| {
                let g = h.join("texts/graph.hnsw.data");
                let b = fs::read(&g).unwrap();
                write(&g, &b[..b.len() - 7]);
                rehash(&h.join("texts"));
            },
            &["graph.hnsw.graph", "data file"],
        ),
        // 34: flipped bytes in the middle of the graph.
        (
            "flipped graph",
            |h| {
                let g = h.join("images/graph.hnsw.graph");
                let mut b = fs::read(&g).unwrap();
                let mid = b.len() / 2;
                for x in &mut b[mid..mid + 16] {
                    *x ^= 0xa5;
                }
                write(&g, b);
                rehash(&h.join("images"));
            },
            &["graph.hnsw.graph", "corrupt"],
        ),
        // 35: checksum not updated.
        (
            "plain flip",
            |h| {
                let g = h.join("images/graph.hnsw.data");
                let mut b = fs::read(&g).unwrap();
                let n = b.len() - 1;
                b[n] ^= 1;
                write(&g, b);
            },
            &["graph.hnsw.data", "altered"],
        ),
        // 36: bad HNSW parameters.
        (
            "m 0",
            |h| {
                let p = h.join("images/hnsw.json");
                let mut v: serde_json::Value =
                    serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
                v["params"]["m"] = 0.into();
                write(&p, v.to_string());
            },
            &["hnsw.json", "m = 0"],
        ),
        // 37: another format version.
        (
            "version",
            |h| {
                let p = h.join("manifest.json");
                let mut v: serde_json::Value =
                    serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
                v["format_version"] = 99.into();
                write(&p, v.to_string());
            },
            &["manifest.json", "version 99"],
        ),
        // 38: truncated vectors.
        (
            "vectors",
            |h| {
                let p = h.join("texts/vectors.npy");
                let b = fs::read(&p).unwrap();
                write(&p, &b[..b.len() - 4]);
            },
            &["vectors.npy", "truncated"],
        ),
        // 39: image ids of the wrong count.
        (
            "ids",
            |h| write(&h.join("images.json"), "[\"a.png\"]"),
            &["image ids"],
        ),
        // 40: texts file missing.
        (
            "texts",
            |h| fs::remove_file(h.join("texts.json")).unwrap(),
            &["texts.json", "missing"],
        ),
    ];
    for (what, alter, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        copy_dir(index(), &idx);
        alter(&idx);
        let line = fails(&["query", &query_img(), "--index", &s(&idx)], needles, &[]);
        assert!(line.contains("idx"), "{what}: {line}");
    }
    // 41: a manifest that is not siam's (the index's one manifest names its model).
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("idx");
    copy_dir(index(), &idx);
    write(&idx.join("manifest.json"), "\u{1b}[31mnot json\r");
    fails(
        &["query", &query_img(), "--index", &s(&idx)],
        &["manifest.json"],
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// Checkpoints, tokenizers and text files.
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_checkpoint_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let weights = fs::read(fixture("clip/hf_vit/model.safetensors")).unwrap();
    let hlen = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let mut huge_header = weights.clone();
    huge_header[..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let mut huge_shape = weights.clone();
    let header = String::from_utf8(weights[8..8 + hlen].to_vec()).unwrap();
    // The first non-empty shape gets a leading dimension of 2^62.
    let at = header
        .match_indices("\"shape\":[")
        .map(|(i, m)| i + m.len())
        .find(|&i| header.as_bytes()[i].is_ascii_digit())
        .unwrap();
    let bumped = format!("{}4611686018427387904,{}", &header[..at], &header[at..]);
    assert_eq!(bumped.len(), header.len() + 20);
    huge_shape.splice(0..8 + hlen, {
        let mut h = ((hlen + 20) as u64).to_le_bytes().to_vec();
        h.extend_from_slice(bumped.as_bytes());
        h
    });
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // 42-47
        (
            "trunc.safetensors",
            weights[..weights.len() / 3].to_vec(),
            "trunc.safetensors",
        ),
        (
            "huge_header.safetensors",
            huge_header,
            "huge_header.safetensors",
        ),
        ("huge_shape.safetensors", huge_shape, "do not fit"),
        (
            "random.pt",
            [&[0x80u8, 0x02][..], &[0xffu8; 64][..]].concat(),
            "random.pt",
        ),
        ("zip.pt", b"PK\x03\x04 not really a zip".to_vec(), "zip.pt"),
        ("empty.bin", Vec::new(), "empty.bin"),
    ];
    for (name, bytes, needle) in cases {
        let p = d.join(name);
        write(&p, bytes);
        let out = d.join("o.npy");
        fails(
            &[
                "embed",
                "--model",
                &s(&p),
                "--arch",
                "tiny",
                "--texts",
                "x",
                "--out",
                &s(&out),
            ],
            &[needle],
            &[&out],
        );
    }
    // 48: a broken tokenizer.json.
    let tok = d.join("tokenizer.json");
    write(&tok, "{\"model\": {\"type\": \"BPE\", \"vocab\": 5}}");
    fails(
        &[
            "embed",
            "--model",
            &hf(),
            "--tokenizer",
            &s(&tok),
            "--texts",
            "x",
            "--out",
            &s(&d.join("o.npy")),
        ],
        &["tokenizer.json"],
        &[&d.join("o.npy")],
    );
    // 49: a missing --texts-file.
    fails(
        &[
            "embed",
            "--model",
            &hf(),
            "--texts-file",
            &s(&d.join("none.txt")),
            "--out",
            &s(&d.join("o.npy")),
        ],
        &["none.txt"],
        &[&d.join("o.npy")],
    );
}

// ---------------------------------------------------------------------------------------------
// Images and datasets.
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_images_name_the_file_once_and_advise_only_where_it_applies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad = fixture("images/truncated.jpg");
    // 50: embed: names the file once, and the --on-bad-image advice it accepts.
    let out = d.join("o.npy");
    let line = fails(
        &[
            "embed",
            "--model",
            &hf(),
            "--images",
            &bad,
            "--out",
            &s(&out),
        ],
        &["truncated.jpg", "--on-bad-image skip"],
        &[&out],
    );
    assert_eq!(
        line.matches("truncated.jpg").count(),
        1,
        "cause repeated: {line}"
    );
    // 51-52: query and classify do not accept --on-bad-image: no such advice.
    for args in [
        vec!["query", bad.as_str(), "--index", index().to_str().unwrap()],
        vec![
            "classify",
            bad.as_str(),
            "--model",
            hf().leak(),
            "--labels",
            "a,b",
        ],
    ] {
        let line = fails(&args, &["truncated.jpg"], &[]);
        assert!(!line.contains("--on-bad-image"), "{line}");
    }
    // 53: every image unreadable: the message names them.
    let line = fails(
        &[
            "embed",
            "--model",
            &hf(),
            "--on-bad-image",
            "skip",
            "--out",
            &s(&out),
            "--images",
            &bad,
            &fixture("images/empty.jpg"),
            &fixture("images/not_an_image.jpg"),
        ],
        &[
            "none of the 3 image(s) could be read",
            "truncated.jpg",
            "empty.jpg",
        ],
        &[&out],
    );
    let _ = line;
    // 54: an image claiming 40000 x 40000 pixels is refused before allocation.
    let png = d.join("huge.png");
    let mut b = fs::read(fixture("images/gray.png")).unwrap();
    b[16..24].copy_from_slice(&[0, 0, 0x9c, 0x40, 0, 0, 0x9c, 0x40]);
    write(&png, b);
    fails(
        &[
            "embed",
            "--model",
            &hf(),
            "--images",
            &s(&png),
            "--out",
            &s(&out),
        ],
        &["huge.png"],
        &[&out],
    );
}

#[test]
fn bad_datasets_are_named_and_skipped_rows_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = demo().join("images/train/red_circle/0000.png");
    fs::copy(&img, d.join("a.png")).unwrap();
    fs::copy(
        demo().join("images/train/blue_square/0000.png"),
        d.join("b.png"),
    )
    .unwrap();
    let eval = |data: &Path, extra: &[&str]| {
        let mut a = vec![
            "eval".to_string(),
            "--model".into(),
            hf(),
            "--data".into(),
            s(data),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let run = |a: &[String], needles: &[&str]| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        fails(&refs, needles, &[])
    };
    // 55: rows naming missing images are counted and named.
    let t = d.join("missing.csv");
    write(
        &t,
        "image,text,split\na.png,a red circle,test\nb.png,a blue square,test\ngone.png,lost,test\n",
    );
    let a = eval(&t, &["--split", "test"]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = ok(&refs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipped 1 record(s)") && err.contains("gone.png"),
        "{err}"
    );
    // 56: no test split: the message names the table.
    let t = d.join("nosplit.csv");
    write(&t, "image,text,split\na.png,x,train\nb.png,y,train\n");
    let line = run(
        &eval(&t, &["--split", "test"]),
        &["nosplit: the dataset has no test split"],
    );
    assert!(!line.starts_with("siam: error: :"), "{line}");
    // 57: --split bogus lists every valid value.
    run(
        &eval(&t, &["--split", "bogus"]),
        &["bogus", "all, train, val or test"],
    );
    // 58: a header without an image column.
    let t = d.join("noimage.csv");
    write(&t, "text,label\nhello,a\n");
    run(&eval(&t, &[]), &["noimage.csv", "no image column"]);
    // 59: a tar of random bytes: control bytes escaped.
    let t = d.join("junk.tar");
    let mut junk = vec![0u8; 1536];
    for (i, x) in junk.iter_mut().enumerate() {
        *x = [0x1b, b'\r', b'[', b'2', b'J', 0x07, b'a'][i % 7];
    }
    write(&t, junk);
    run(&eval(&t, &[]), &["junk.tar"]);
    // 60: a CIFAR batch of the wrong size.
    let c = d.join("cifar");
    write(&c.join("data_batch_1.bin"), vec![1u8; 3073 + 100]);
    run(&eval(&c, &[]), &["data_batch_1.bin"]);
    // 61: a malformed Karpathy JSON.
    let k = d.join("dataset_flickr8k.json");
    write(&k, "{\"images\": [{\"filename\": 3}]}");
    run(&eval(&k, &[]), &["dataset_flickr8k.json"]);
    // 62: an unbalanced quote in a CSV.
    let t = d.join("quote.csv");
    write(&t, "image,text\na.png,\"never closed\n");
    run(&eval(&t, &[]), &["quote.csv"]);
    // 63: a bad JSONL line.
    let t = d.join("bad.jsonl");
    write(&t, "{\"image\": \"a.png\", \"text\": \"x\"}\n{not json\n");
    run(&eval(&t, &[]), &["bad.jsonl:2"]);
    // 64: a dataset that does not exist.
    run(&eval(&d.join("nowhere"), &[]), &["nowhere"]);
    // 65: a folder without images.
    let e = d.join("empty_folder/label");
    fs::create_dir_all(&e).unwrap();
    write(&e.join("readme.txt"), "no images");
    run(&eval(&d.join("empty_folder"), &[]), &["empty_folder"]);
    // 66: `siam index` of the table with missing rows says so too.
    let out = ok(&[
        "index",
        "--model",
        &hf(),
        "--data",
        &s(&d.join("missing.csv")),
        "--out",
        &s(&d.join("i")),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("gone.png"));
    // 67: and so does `siam train`.
    let table = d.join("train.csv");
    let mut rows = fs::read_to_string(demo().join("captions.csv")).unwrap();
    rows.push_str("images/gone/0000.png,a lost photo,gone,train\n");
    write(&table, rows);
    copy_dir(&demo().join("images"), &d.join("images"));
    let out = ok(&[
        "train",
        "--data",
        &s(&table),
        "--epochs",
        "1",
        "--no-index",
        "--quiet",
        "--out",
        &s(&d.join("run")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipped 1 record(s)") && err.contains("gone/0000.png"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Closed pipes end printing, not the work.
// ---------------------------------------------------------------------------------------------

/// Runs siam with stdout (and, with `close_stderr`, stderr) closed before it writes, as
/// `siam ... | head -0` would; returns the exit code and what it printed on stderr.
fn closed_pipe(args: &[&str], close_stderr: bool) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_siam"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    if close_stderr {
        drop(child.stderr.take());
    } else {
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
    }
    (child.wait().unwrap().code(), err)
}

#[test]
fn closed_pipes_do_not_panic_or_stop_the_work() {
    // 67: query --json | head
    let (code, err) = closed_pipe(
        &["query", &query_img(), "--index", &s(index()), "--json"],
        false,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // 68: classify --json | head
    let (code, err) = closed_pipe(
        &[
            "classify",
            &query_img(),
            "--model",
            &hf(),
            "--labels",
            "a,b",
            "--json",
        ],
        false,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // 69: train 2>&1 | head: both closed; the run still writes its model.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (code, _) = closed_pipe(
        &["train", "--epochs", "1", "--no-index", "--out", &s(&run)],
        true,
    );
    assert_eq!(code, Some(0));
    assert!(run.join("siam.json").is_file() && run.join("model.safetensors").is_file());
}

// ---------------------------------------------------------------------------------------------
// Inputs that must work.
// ---------------------------------------------------------------------------------------------

fn embed_image(path: &str, out: &Path) -> Vec<f32> {
    ok(&[
        "embed",
        "--model",
        &hf(),
        "--images",
        path,
        "--out",
        &s(out),
    ]);
    siam::io::read_npy(out).unwrap().0
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn unusual_images_embed_like_their_rgb_originals() {
    // 70-77
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.npy");
    let unrelated = embed_image(&fixture("images/cat_like.jpg"), &out);
    for name in [
        "animated.gif",
        "lossless.webp",
        "gray16.png",
        "gray.png",
        "palette.png",
        "cmyk.jpg",
        "exif_rot6.jpg",
        "png_named.jpg",
    ] {
        let got = embed_image(&fixture(&format!("images/variants/{name}")), &out);
        let want = embed_image(&fixture(&format!("images/variants/{name}.rgb.png")), &out);
        let (same, other) = (cosine(&got, &want), cosine(&got, &unrelated));
        // Lossless decodes match to rounding; JPEG decoders differ by a level or two.
        assert!(same > 0.999, "{name}: cosine {same} with its RGB original");
        assert!(
            1.0 - same < (1.0 - other) / 10.0,
            "{name}: {same} vs unrelated {other}"
        );
    }
    // The EXIF rotation matters: the unrotated pixels embed measurably differently.
    let rotated = embed_image(&fixture("images/variants/exif_rot6.jpg"), &out);
    let upright = embed_image(&fixture("images/variants/png_named.jpg.rgb.png"), &out);
    let want = embed_image(&fixture("images/variants/exif_rot6.jpg.rgb.png"), &out);
    assert!(cosine(&rotated, &want) > cosine(&rotated, &upright));
}

#[test]
fn a_csv_with_bom_and_quoted_commas_reads_like_the_plain_table() {
    // 78
    let dir = tempfile::tempdir().unwrap();
    let texts = |table: &str, name: &str| -> serde_json::Value {
        let idx = dir.path().join(name);
        ok(&[
            "index",
            "--model",
            &hf(),
            "--data",
            &fixture(&format!("images/variants/{table}")),
            "--out",
            &s(&idx),
        ]);
        serde_json::from_str(&fs::read_to_string(idx.join("texts.json")).unwrap()).unwrap()
    };
    let plain = texts("plain.tsv", "a");
    let quoted = texts("bom_quoted.csv", "b");
    assert_eq!(plain, quoted);
    assert!(plain.to_string().contains("a photo, with a comma"));
    assert!(plain.to_string().contains("a \\\"quoted\\\" word, twice"));
}
