//! `hf:` model names, for real, against a local Hugging Face Hub: a server on 127.0.0.1 started
//! by each test, serving the tiny test CLIPs with the Hub's routes and headers
//! (`/{repo}/resolve/{revision}/{file}`; `ETag` and `X-Repo-Commit`; LFS files answered with a
//! 302 to a CDN-like `/cdn/{sha256}` carrying `X-Linked-Etag` and `X-Linked-Size`; 404s and
//! 401s with the Hub's `X-Error-Code`; a relative 307 for a renamed repo), with byte ranges and,
//! on demand, bodies cut off halfway.
//!
//! Python's side (`tests/fixtures/hub/python_hub.py`, huggingface_hub's `hf_hub_download`) runs
//! when `SIAM_PYTHON` names a python with huggingface_hub; without it the cache layout siam
//! writes is compared with the layout huggingface_hub wrote, committed as
//! `tests/fixtures/hub/python_cache_layout.json`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Int, Tensor, TensorData};
use sha2::{Digest, Sha256};
use siam::clip::import::load_model;
use siam::hub::{download_file, fetch_model, HubSettings, ModelName, RESUME_TRIES};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    auth: bool,
}

struct State {
    base: String,
    cdn: String,
    repos: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    log: Mutex<Vec<Seen>>,
    /// How many of the next CDN bodies are cut off halfway.
    cut: AtomicUsize,
}

/// The local Hub: `org/tiny` (Hugging Face layout: config.json, model.safetensors, a
/// pytorch_model.bin that must never be fetched, tokenizer.json) and `org/tiny-open-clip`
/// (open_clip layout, safetensors and pickle).
struct Hub {
    state: Arc<State>,
}

fn tiny_repos() -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let read = |p: &str| std::fs::read(fixtures().join(p)).unwrap();
    let mut hf = BTreeMap::new();
    hf.insert("config.json".into(), read("clip/hf_vit/config.json"));
    hf.insert(
        "model.safetensors".into(),
        read("clip/hf_vit/model.safetensors"),
    );
    hf.insert(
        "pytorch_model.bin".into(),
        read("clip/open_clip_vit/model.pt"),
    );
    hf.insert(
        "tokenizer.json".into(),
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/assets/clip_tokenizer.json"),
        )
        .unwrap(),
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&read("clip/open_clip_vit/open_clip_config.json")).unwrap();
    let hub_cfg = serde_json::json!({
        "model_cfg": cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    });
    let mut oc = BTreeMap::new();
    oc.insert(
        "open_clip_config.json".into(),
        serde_json::to_vec_pretty(&hub_cfg).unwrap(),
    );
    oc.insert(
        "open_clip_model.safetensors".into(),
        read("clip/open_clip_vit/model.safetensors"),
    );
    oc.insert(
        "open_clip_pytorch_model.bin".into(),
        read("clip/open_clip_vit/model.pt"),
    );
    let mut repos = BTreeMap::new();
    repos.insert("org/tiny".to_string(), hf);
    repos.insert("org/tiny-open-clip".to_string(), oc);
    repos
}

fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".bin")
}

impl Hub {
    fn start() -> Self {
        // Two origins, like the Hub and its CDN, served by the same routes.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let state = Arc::new(State {
            base: format!("http://{}", listener.local_addr().unwrap()),
            cdn: format!("http://{}", cdn.local_addr().unwrap()),
            repos: tiny_repos(),
            log: Mutex::new(Vec::new()),
            cut: AtomicUsize::new(0),
        });
        for l in [listener, cdn] {
            let s = Arc::clone(&state);
            std::thread::spawn(move || {
                for stream in l.incoming().flatten() {
                    let s = Arc::clone(&s);
                    std::thread::spawn(move || serve(stream, &s));
                }
            });
        }
        Hub { state }
    }

    fn url(&self) -> &str {
        &self.state.base
    }

    fn log(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    fn settings(&self, home: &Path) -> HubSettings {
        HubSettings {
            endpoint: self.url().to_string(),
            cache: home.join("hub"),
            token: None,
            offline: None,
        }
    }
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8], head: bool) {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = s.write_all(out.as_bytes());
    if !head {
        let _ = s.write_all(body);
    }
    let _ = s.flush();
}

fn serve(mut stream: TcpStream, st: &State) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut range = None;
    let mut auth = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = v.trim() == "Bearer secret-token",
                _ => {}
            }
        }
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    st.log.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
        auth,
    });
    let head = method == "HEAD";
    let not_found = |s: &mut TcpStream, code: &str, status: &str| {
        respond(
            s,
            status,
            &[
                ("X-Error-Code", code.into()),
                ("Content-Length", "0".into()),
            ],
            b"",
            head,
        )
    };
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let Some(body) = st
            .repos
            .values()
            .flat_map(|r| r.values())
            .find(|b| sha256(b) == sha)
        else {
            return not_found(&mut stream, "EntryNotFound", "404 Not Found");
        };
        let from: usize = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
            .unwrap_or(0);
        let part = &body[from.min(body.len())..];
        let mut headers = vec![
            ("Content-Length", part.len().to_string()),
            ("Accept-Ranges", "bytes".to_string()),
            ("ETag", format!("\"{sha}\"")),
        ];
        let status = if range.is_some() {
            headers.push((
                "Content-Range",
                format!("bytes {from}-{}/{}", body.len() - 1, body.len()),
            ));
            "206 Partial Content"
        } else {
            "200 OK"
        };
        let cut = !head
            && st
                .cut
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if cut {
            // Promise the whole body, send half of it, hang up.
            respond(
                &mut stream,
                status,
                &headers,
                &part[..part.len() / 2],
                false,
            );
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        return respond(&mut stream, status, &headers, part, head);
    }
    // /{org}/{name}/resolve/{revision}/{file}
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segs.len() != 5 || segs[2] != "resolve" {
        return not_found(&mut stream, "", "404 Not Found");
    }
    let (org, name, rev, file) = (segs[0], segs[1], segs[3], segs[4]);
    if org == "old-org" {
        // A renamed repo: the Hub answers with a relative redirect to the new name.
        let to = format!("/org/{name}/resolve/{rev}/{file}");
        return respond(
            &mut stream,
            "307 Temporary Redirect",
            &[("Location", to), ("Content-Length", "0".into())],
            b"",
            head,
        );
    }
    let Some(repo) = st.repos.get(&format!("{org}/{name}")) else {
        // The real Hub says 401 for an unknown repo when no token opens it.
        return not_found(&mut stream, "RepoNotFound", "401 Unauthorized");
    };
    if rev != "main" && rev != COMMIT {
        return not_found(&mut stream, "RevisionNotFound", "404 Not Found");
    }
    let Some(body) = repo.get(file) else {
        return not_found(&mut stream, "EntryNotFound", "404 Not Found");
    };
    let sha = sha256(body);
    if is_lfs(file) {
        let headers = [
            ("Location", format!("{}/cdn/{sha}", st.cdn)),
            ("X-Repo-Commit", COMMIT.to_string()),
            ("X-Linked-Etag", format!("\"{sha}\"")),
            ("X-Linked-Size", body.len().to_string()),
            ("ETag", format!("\"{}\"", &sha256(sha.as_bytes())[..40])),
            ("Content-Length", "0".to_string()),
        ];
        respond(&mut stream, "302 Found", &headers, b"", head);
    } else {
        let headers = [
            ("X-Repo-Commit", COMMIT.to_string()),
            ("ETag", format!("\"{}\"", &sha[..40])),
            ("Content-Length", body.len().to_string()),
        ];
        respond(&mut stream, "200 OK", &headers, body, head);
    }
}

fn name(spec: &str) -> ModelName {
    ModelName::parse(spec).unwrap().unwrap()
}

fn cdn_gets(log: &[Seen]) -> Vec<Seen> {
    log.iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/cdn/"))
        .cloned()
        .collect()
}

/// Image and text features of a model on the hf_vit fixture's inputs, bit for bit.
fn features(model: &Path, arch: Option<&Path>) -> Vec<f32> {
    let d = Device::flex();
    let arch = arch.map(|a| a.display().to_string());
    let m = load_model(model, arch.as_deref(), &d).unwrap();
    let size = m.config.image_size();
    let px = Tensor::<4>::from_data(
        TensorData::new(
            (0..3 * size * size)
                .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
                .collect::<Vec<_>>(),
            [1, 3, size, size],
        ),
        &d,
    );
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![49406i64, 320, 1125, 539, 320, 2368, 49407], [1, 7]),
        &d,
    );
    let mut v = siam::model::encoder::to_vec(m.clip.encode_image(px));
    v.extend(siam::model::encoder::to_vec(m.clip.encode_text(ids, &[7])));
    v
}

/// The cache tree in python_hub.py's `layout` format.
fn layout(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "CACHEDIR.TAG" {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if meta.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(format!("{rel} ({} bytes)", meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    // Python's rglob sorts whole paths; so do we.
    out.sort();
    out
}

#[test]
fn first_download_then_a_cache_hit_without_any_request() {
    let hub = Hub::start();
    let home = tempfile::tempdir().unwrap();
    let settings = hub.settings(home.path());
    let snap = fetch_model(&name("hf:org/tiny"), &settings).unwrap();
    assert_eq!(
        snap.files,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    assert_eq!(snap.downloaded, snap.files);
    assert_eq!(snap.commit, COMMIT);
    let log = hub.log();
    assert!(
        log.iter().all(|s| !s.path.contains("pytorch_model.bin")),
        "a pickle was asked for although safetensors exist: {log:?}"
    );
    assert_eq!(cdn_gets(&log).len(), 1, "{log:?}");

    // huggingface_hub's layout: refs/main, blobs named by ETag, relative snapshot links.
    let repo = home.path().join("hub/models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let weights = std::fs::read(fixtures().join("clip/hf_vit/model.safetensors")).unwrap();
    let link = repo
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from(format!("../../blobs/{}", sha256(&weights)))
    );
    assert_eq!(std::fs::read(&link).unwrap(), weights);

    let n = hub.log().len();
    let again = fetch_model(&name("hf:org/tiny"), &settings).unwrap();
    assert!(again.downloaded.is_empty());
    assert_eq!(hub.log().len(), n, "a cache hit made a request");

    // The snapshot loads to the very numbers of the fixture folder.
    assert_eq!(
        features(&snap.dir, None),
        features(&fixtures().join("clip/hf_vit"), None)
    );
}

#[test]
fn open_clip_repo_takes_safetensors_and_loads_like_the_fixture() {
    let hub = Hub::start();
    let home = tempfile::tempdir().unwrap();
    let snap = fetch_model(&name("hf:org/tiny-open-clip"), &hub.settings(home.path())).unwrap();
    assert_eq!(
        snap.files,
        ["open_clip_config.json", "open_clip_model.safetensors"]
    );
    assert!(hub.log().iter().all(|s| !s.path.ends_with(".bin")));
    let base = fixtures().join("clip/open_clip_vit");
    assert_eq!(
        features(&snap.dir, None),
        features(
            &base.join("model.safetensors"),
            Some(&base.join("open_clip_config.json"))
        )
    );
}

#[test]
fn offline_hit_and_miss() {
    let hub = Hub::start();
    let home = tempfile::tempdir().unwrap();
    let mut offline = hub.settings(home.path());
    offline.offline = Some("--offline");
    let e = fetch_model(&name("hf:org/tiny"), &offline)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("org/tiny@main")
            && e.contains("no refs/main")
            && e.contains("downloads are off (--offline)"),
        "{e}"
    );
    assert!(hub.log().is_empty(), "offline made a request");
    fetch_model(&name("hf:org/tiny"), &hub.settings(home.path())).unwrap();
    let n = hub.log().len();
    let snap = fetch_model(&name("hf:org/tiny"), &offline).unwrap();
    assert_eq!(snap.commit, COMMIT);
    assert_eq!(hub.log().len(), n);
    let e = download_file("org/tiny", "main", "merges.txt", &offline)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("org/tiny@main: not in the Hugging Face cache")
            && e.contains("no file merges.txt"),
        "{e}"
    );
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let hub = Hub::start();
    let home = tempfile::tempdir().unwrap();
    hub.state.cut.store(1, Ordering::SeqCst);
    fetch_model(&name("hf:org/tiny"), &hub.settings(home.path())).unwrap();
    let gets = cdn_gets(&hub.log());
    let size = std::fs::metadata(fixtures().join("clip/hf_vit/model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(
        gets[1].range.as_deref(),
        Some(format!("bytes={}-", size / 2).as_str())
    );
}

#[test]
fn a_part_left_by_a_killed_process_is_resumed_and_too_many_cuts_keep_it() {
    let hub = Hub::start();
    let home = tempfile::tempdir().unwrap();
    let settings = hub.settings(home.path());
    let weights = std::fs::read(fixtures().join("clip/hf_vit/model.safetensors")).unwrap();
    let blobs = home.path().join("hub/models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let part = blobs.join(format!("{}.incomplete", sha256(&weights)));
    std::fs::write(&part, &weights[..1000]).unwrap();
    fetch_model(&name("hf:org/tiny"), &settings).unwrap();
    let gets = cdn_gets(&hub.log());
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].range.as_deref(), Some("bytes=1000-"));
    assert!(!part.exists());

    // More cuts than one call retries: a one-line error, the part kept, the next call done.
    let home = tempfile::tempdir().unwrap();
    let settings = hub.settings(home.path());
    hub.state.cut.store(RESUME_TRIES + 1, Ordering::SeqCst);
    let e = fetch_model(&name("hf:org/tiny"), &settings)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors: download interrupted")
            && e.contains("run the command again to resume"),
        "{e}"
    );
    let part = home
        .path()
        .join("hub/models--org--tiny/blobs")
        .join(format!("{}.incomplete", sha256(&weights)));
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < weights.len() as u64);
    let before = cdn_gets(&hub.log()).len();
    fetch_model(&name("hf:org/tiny"), &settings).unwrap();
    let gets = cdn_gets(&hub.log());
    assert_eq!(gets.len(), before + 1);
    assert_eq!(
        gets.last().unwrap().range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
}

#[test]
fn not_found_errors_name_repo_revision_and_file() {
    let hub = Hub::start();
    let home = tempfile::tempdir().unwrap();
    let settings = hub.settings(home.path());
    let e = download_file("org/tiny", "main", "nope.json", &settings)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "org/tiny@main: no file nope.json on {} (HTTP 404)",
            hub.url()
        )
    );
    let e = fetch_model(&name("hf:org/missing"), &settings)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("org/missing: repository not found") && e.contains("HF_TOKEN"),
        "{e}"
    );
    let e = fetch_model(&name("hf:org/tiny@v9"), &settings)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no revision \"v9\""), "{e}");
}

#[test]
fn a_commit_revision_a_renamed_repo_and_the_token() {
    let hub = Hub::start();
    let home = tempfile::tempdir().unwrap();
    let mut settings = hub.settings(home.path());
    settings.token = Some("secret-token".into());
    let snap = fetch_model(&name(&format!("hf:org/tiny@{COMMIT}")), &settings).unwrap();
    assert_eq!(snap.commit, COMMIT);
    assert!(!home.path().join("hub/models--org--tiny/refs").exists());
    let log = hub.log();
    assert!(log
        .iter()
        .filter(|s| s.path.contains("/resolve/"))
        .all(|s| s.auth && s.path.contains(COMMIT)));
    assert!(
        cdn_gets(&log).iter().all(|s| !s.auth),
        "the token went to the CDN"
    );
    // A renamed repo: the relative redirect is followed, the cache keeps the asked name.
    let snap = fetch_model(&name("hf:old-org/tiny"), &settings).unwrap();
    assert!(snap
        .dir
        .starts_with(home.path().join("hub/models--old-org--tiny")));
}

fn siam() -> Command {
    Command::new(env!("CARGO_BIN_EXE_siam"))
}

#[test]
fn the_binary_takes_hf_names_from_the_environment() {
    let hub = Hub::start();
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("hub.npy");
    let o = siam()
        .args([
            "embed",
            "--model",
            "hf:org/tiny",
            "--texts",
            "a photo of a cat",
            "--out",
        ])
        .arg(&out)
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let local = home.path().join("local.npy");
    let o = siam()
        .args(["embed", "--model"])
        .arg(fixtures().join("clip/hf_vit"))
        .args(["--texts", "a photo of a cat", "--out"])
        .arg(&local)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&local).unwrap());

    // Offline misses, by variable and by flag: one line naming what is missing.
    let empty = tempfile::tempdir().unwrap();
    for (env, flag) in [(Some("1"), None), (None, Some("--offline"))] {
        let mut c = siam();
        c.args([
            "embed",
            "--model",
            "hf:org/tiny-open-clip",
            "--texts",
            "a",
            "--out",
        ])
        .arg(empty.path().join("x.npy"))
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HOME", empty.path())
        .env_remove("HF_HUB_CACHE");
        match env {
            Some(v) => c.env("HF_HUB_OFFLINE", v),
            None => c.env_remove("HF_HUB_OFFLINE"),
        };
        if let Some(f) = flag {
            c.arg(f);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("org/tiny-open-clip@main: not in the Hugging Face cache")
                && err.contains("no refs/main")
                && err.contains(if env.is_some() {
                    "HF_HUB_OFFLINE"
                } else {
                    "--offline"
                }),
            "{err}"
        );
    }
}

#[test]
fn python_and_siam_share_one_cache() {
    let hub = Hub::start();
    let files = ["config.json", "model.safetensors", "tokenizer.json"];
    let siam_home = tempfile::tempdir().unwrap();
    fetch_model(&name("hf:org/tiny"), &hub.settings(siam_home.path())).unwrap();
    let ours = layout(&siam_home.path().join("hub"));
    let committed = fixtures().join("hub/python_cache_layout.json");
    let Some(py) = std::env::var("SIAM_PYTHON").ok().filter(|p| !p.is_empty()) else {
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&committed).unwrap()).unwrap();
        let want: Vec<String> = serde_json::from_value(want["layout"].clone()).unwrap();
        assert_eq!(ours, want, "siam's cache differs from huggingface_hub's");
        return;
    };
    let script = fixtures().join("hub/python_hub.py");
    let python = |home: &Path, args: &[&str]| {
        let o = Command::new(&py)
            .arg(&script)
            .args(args)
            .env("HF_ENDPOINT", hub.url())
            .env("HF_HOME", home)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "python_hub.py {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // Python finds, offline, everything siam downloaded.
    let mut args = vec!["offline", "org/tiny"];
    args.extend(files);
    let found = python(siam_home.path(), &args);
    for f in files {
        let p = found["paths"][f].as_str().unwrap();
        assert!(p.starts_with(siam_home.path().to_str().unwrap()), "{p}");
    }
    // siam uses, without a request, what Python downloaded.
    let py_home = tempfile::tempdir().unwrap();
    let mut args = vec!["download", "org/tiny"];
    args.extend(files);
    python(py_home.path(), &args);
    let n = hub.log().len();
    let snap = fetch_model(&name("hf:org/tiny"), &hub.settings(py_home.path())).unwrap();
    assert!(snap.downloaded.is_empty());
    assert_eq!(
        hub.log().len(),
        n,
        "siam asked the Hub for files Python had"
    );
    // The two trees are the same.
    let theirs = python(
        py_home.path(),
        &["layout", py_home.path().join("hub").to_str().unwrap()],
    );
    let theirs: Vec<String> = serde_json::from_value(theirs["layout"].clone()).unwrap();
    assert_eq!(ours, theirs, "siam's cache differs from huggingface_hub's");
    if std::env::var("SIAM_UPDATE_FIXTURES").is_ok_and(|v| v == "1") {
        let v = serde_json::json!({
            "written_by": "tests/fixtures/hub/python_hub.py layout, after hf_hub_download of org/tiny's config.json, model.safetensors, tokenizer.json from the server in tests/hub.rs",
            "layout": theirs,
        });
        std::fs::write(&committed, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    }
}
