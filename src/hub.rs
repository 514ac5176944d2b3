//! Weights by name from the Hugging Face Hub: `--model hf:org/name[@revision]`.
//!
//! A name resolves to a snapshot folder of the standard Hugging Face cache, laid out exactly as
//! `huggingface_hub` lays it out (`file_download.py`, `hf_hub_download`), so files Python
//! downloaded are used here and files siam downloaded are used by Python:
//!
//! ```text
//! $HF_HUB_CACHE  (default $HF_HOME/hub; HF_HOME defaults to $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface)
//!   models--org--name/
//!     blobs/<etag>                the contents, named by ETag (SHA-256 for LFS files, git SHA-1 else)
//!     blobs/<etag>.incomplete     a download in progress, resumed with an HTTP Range request
//!     refs/<branch>               the commit a branch resolved to
//!     snapshots/<commit>/<file>   relative symlinks into blobs/
//! ```
//!
//! The protocol is what `huggingface_hub`'s `get_hf_file_metadata` and `http_get` speak:
//! `HEAD {HF_ENDPOINT}/{repo}/resolve/{revision}/{file}`, following relative redirects (renamed
//! repos) but not absolute ones; the answer carries `X-Repo-Commit` (the commit), `X-Linked-Etag`
//! or `ETag` (the blob's name), `X-Linked-Size` or `Content-Length`, and for LFS files a
//! `Location` on a CDN. The blob is then fetched with `GET` into `<etag>.incomplete`; after an
//! interruption the download resumes with `Range: bytes=N-` (up to [`RESUME_TRIES`] times in one
//! call, and a later call resumes what a killed process left). Its size, and for LFS files its
//! SHA-256, are checked before it is renamed into place and linked into the snapshot.
//!
//! Which files: a Hugging Face CLIP repo (`config.json`, then `model.safetensors`, else
//! `pytorch_model.bin`, and `tokenizer.json` when there is one) or an open_clip repo
//! (`open_clip_config.json`, then `open_clip_model.safetensors`, else
//! `open_clip_pytorch_model.bin`): safetensors before a pickle when downloading. A cached
//! snapshot that already holds a config and weights (whichever were downloaded, by siam or by
//! Python) is used without any request; a branch then stays at the commit `refs/<branch>`
//! recorded (name a commit, `@sha`, to move). Pickles are read by siam's pure-Rust reader,
//! which runs no code from the file.
//!
//! Environment, as `huggingface_hub` reads it: `HF_ENDPOINT` (mirrors), `HF_TOKEN` (else
//! `$HF_HOME/token`; sent only to the endpoint's own host), `HF_HUB_OFFLINE` (cache only, as
//! does `siam --offline`), `HF_HUB_CACHE`, `HF_HOME`.
//!
//! Why not the `hf-hub` crate: its 0.4 line neither reads `HF_HUB_CACHE` nor `HF_HUB_OFFLINE` and
//! names partial files differently from Python (so neither side resumes the other's download);
//! its 1.x line (checked at 1.1.0, `repository/download.rs`) restarts an interrupted download from
//! byte 0 instead of sending a Range request, also reads no offline variable, and brings an async
//! stack (tokio, reqwest, hf-xet) into a synchronous program. The protocol siam needs is the
//! few requests above, so it is spoken here on `ureq`.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// The prefix that marks a Hub model name in `--model`.
pub const SCHEME: &str = "hf:";
/// The Hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// How many times one call resumes an interrupted download before giving up.
pub const RESUME_TRIES: usize = 3;
/// Redirects followed for one file at most.
const MAX_REDIRECTS: usize = 10;

/// Config and weight files of the two repo layouts siam reads, in order of preference.
const LAYOUTS: [(&str, [&str; 2]); 2] = [
    ("config.json", ["model.safetensors", "pytorch_model.bin"]),
    (
        "open_clip_config.json",
        ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
    ),
];
/// Fetched with a Hugging Face layout when the repo has it.
const TOKENIZER: &str = "tokenizer.json";

static OFFLINE_FLAG: AtomicBool = AtomicBool::new(false);

/// Turns downloads off for this process (`siam --offline`), as `HF_HUB_OFFLINE=1` does.
pub fn set_offline(on: bool) {
    OFFLINE_FLAG.store(on, Ordering::Relaxed);
}

/// Errors resolving a Hub model name.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The text after `hf:` is not `org/name` or `org/name@revision`.
    #[error(
        "{spec:?}: not a Hub model name ({why}); expected hf:org/name or hf:org/name@revision"
    )]
    BadName {
        /// What was given.
        spec: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Downloads are off and the cache lacks something the model needs.
    #[error("{repo}@{revision}: not in the Hugging Face cache {cache}: {missing}; downloads are off ({why}), run once without that to download")]
    NotCached {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// What is missing (a ref, a file, weights).
        missing: String,
        /// The repo's cache folder.
        cache: PathBuf,
        /// Which switch turned downloads off.
        why: &'static str,
    },
    /// The repo has no such file at that revision (HTTP 404).
    #[error("{repo}@{revision}: no file {file} on {endpoint} (HTTP 404)")]
    FileNotFound {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The file.
        file: String,
        /// The Hub asked.
        endpoint: String,
    },
    /// The repo does not exist, or is private or gated and the token does not open it.
    #[error("{repo}: repository not found on {endpoint}, or private or gated (HTTP {status}{code}); check the name, and set HF_TOKEN for a gated repo")]
    RepoNotFound {
        /// `org/name`.
        repo: String,
        /// The Hub asked.
        endpoint: String,
        /// 401, 403 or 404.
        status: u16,
        /// The Hub's `X-Error-Code`, as `, code` or empty.
        code: String,
    },
    /// The repo exists but not the branch, tag or commit.
    #[error("{repo}: no revision {revision:?} on {endpoint} (HTTP 404)")]
    RevisionNotFound {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The Hub asked.
        endpoint: String,
    },
    /// Any other HTTP status.
    #[error("{url}: HTTP {status}")]
    Http {
        /// The request.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The connection failed (refused, reset, timed out, TLS).
    #[error("{url}: {why} (cannot reach the Hub at HF_ENDPOINT or its CDN; --offline uses the cache only)")]
    Network {
        /// The request.
        url: String,
        /// The transport's message.
        why: String,
    },
    /// A download broke off more often than [`RESUME_TRIES`]; the part stays for the next run.
    #[error("{file}: download interrupted at {got} of {expected} bytes ({why}); run the command again to resume from {partial}")]
    Interrupted {
        /// The file in the repo.
        file: String,
        /// Bytes on disk.
        got: u64,
        /// The file's size.
        expected: String,
        /// The last error.
        why: String,
        /// The `.incomplete` file kept.
        partial: PathBuf,
    },
    /// The server's answer lacks a header the protocol needs.
    #[error(
        "{url}: the answer has no {header} header; is HF_ENDPOINT ({endpoint}) a Hugging Face Hub?"
    )]
    MissingHeader {
        /// The request.
        url: String,
        /// The header.
        header: &'static str,
        /// The endpoint used.
        endpoint: String,
    },
    /// A downloaded file does not have the size or SHA-256 the Hub announced; it was deleted.
    #[error("{file}: downloaded content does not match the Hub's {what} (expected {expected}, got {got}); the partial file was removed, run again")]
    Corrupt {
        /// The file in the repo.
        file: String,
        /// `size` or `sha256`.
        what: &'static str,
        /// Announced value.
        expected: String,
        /// Found value.
        got: String,
    },
    /// The repo holds no CLIP weights in a layout siam reads.
    #[error("{repo}@{revision}: no CLIP weights siam can read: expected config.json with model.safetensors or pytorch_model.bin (Hugging Face), or open_clip_config.json with open_clip_model.safetensors or open_clip_pytorch_model.bin (open_clip){found}")]
    NoWeights {
        /// `org/name`.
        repo: String,
        /// The revision.
        revision: String,
        /// `; found X` when a config was found without weights, else empty.
        found: String,
    },
    /// Reading or writing the cache failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said (printed, not chained).
        cause: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, HubError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HubError + '_ {
    move |cause| HubError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// `org/name` at a revision (branch, tag or commit; `main` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelName {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or 40-hex commit.
    pub revision: String,
}

impl ModelName {
    /// Parses `hf:org/name[@revision]`; `None` when `spec` does not start with `hf:`.
    pub fn parse(spec: &str) -> Result<Option<Self>> {
        let Some(rest) = spec.strip_prefix(SCHEME) else {
            return Ok(None);
        };
        let bad = |why| HubError::BadName {
            spec: spec.to_string(),
            why,
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, v)) => (r, v),
            None => (rest, "main"),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad("the repo must be org/name"));
        }
        let name_ok = |p: &&str| {
            *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !parts.iter().all(name_ok) {
            return Err(bad("org and name may hold letters, digits, '-', '_', '.'"));
        }
        if revision.is_empty()
            || revision.chars().any(|c| c.is_whitespace() || c == '\\')
            || revision.split('/').any(|s| s.is_empty() || s == "..")
        {
            return Err(bad("the revision after @ must be a branch, tag or commit"));
        }
        Ok(Some(Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        }))
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}@{}", self.repo, self.revision)
    }
}

/// Where and how to reach the Hub, from the environment (see the module documentation).
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// `HF_ENDPOINT` without a trailing slash.
    pub endpoint: String,
    /// The cache root (`HF_HUB_CACHE`, or `$HF_HOME/hub`).
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the contents of `$HF_HOME/token`.
    pub token: Option<String>,
    /// Why downloads are off, if they are (`HF_HUB_OFFLINE` or `--offline`).
    pub offline: Option<&'static str>,
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

impl HubSettings {
    /// Reads `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`, `HF_HUB_OFFLINE` and the
    /// `--offline` switch.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = if OFFLINE_FLAG.load(Ordering::Relaxed) {
            Some("--offline")
        } else if var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)) {
            Some("HF_HUB_OFFLINE is set")
        } else {
            None
        };
        Self {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            cache,
            token,
            offline,
        }
    }

    /// The cache folder of a model repo: `models--org--name`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache
            .join(format!("models--{}", repo.replace('/', "--")))
    }
}

/// A model resolved to a cache snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `snapshots/<commit>`: a folder `siam` loads like any model folder.
    pub dir: PathBuf,
    /// The commit.
    pub commit: String,
    /// The files of the snapshot siam uses (config, weights, tokenizer).
    pub files: Vec<String>,
    /// Those of them this call downloaded (empty on a cache hit).
    pub downloaded: Vec<String>,
}

/// Resolves `--model`: a path that exists, or that does not start with `hf:`, is returned as
/// given; `hf:org/name[@revision]` becomes its cache snapshot folder, downloaded as needed with
/// the settings of [`HubSettings::from_env`].
pub fn resolve_model(path: &Path) -> Result<PathBuf> {
    let Some(spec) = path.to_str() else {
        return Ok(path.to_path_buf());
    };
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    match ModelName::parse(spec)? {
        Some(name) => Ok(fetch_model(&name, &HubSettings::from_env())?.dir),
        None => Ok(path.to_path_buf()),
    }
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The model files of a snapshot folder in the cache, if it holds a config and weights.
fn complete_files(dir: &Path) -> Option<Vec<String>> {
    for (config, weights) in LAYOUTS {
        if !dir.join(config).is_file() {
            continue;
        }
        if let Some(w) = weights.iter().find(|w| dir.join(w).is_file()) {
            let mut files = vec![config.to_string(), w.to_string()];
            if config == LAYOUTS[0].0 && dir.join(TOKENIZER).is_file() {
                files.push(TOKENIZER.to_string());
            }
            return Some(files);
        }
    }
    None
}

/// The commit `revision` stands for in the cache: itself when it is a commit, else
/// `refs/<revision>`.
fn cached_commit(repo_dir: &Path, revision: &str) -> Option<String> {
    if is_commit(revision) {
        return Some(revision.to_string());
    }
    let s = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
    let s = s.trim();
    is_commit(s).then(|| s.to_string())
}

/// Resolves a model name to a snapshot: from the cache alone when it holds a config and weights
/// for the revision, else by downloading what is missing (see the module documentation).
pub fn fetch_model(name: &ModelName, settings: &HubSettings) -> Result<Snapshot> {
    let repo_dir = settings.repo_dir(&name.repo);
    let commit = cached_commit(&repo_dir, &name.revision);
    if let Some(c) = &commit {
        let dir = repo_dir.join("snapshots").join(c);
        if let Some(files) = complete_files(&dir) {
            return Ok(Snapshot {
                dir,
                commit: c.clone(),
                files,
                downloaded: Vec::new(),
            });
        }
    }
    if let Some(why) = settings.offline {
        let missing = match &commit {
            None => format!("no refs/{} (never downloaded)", name.revision),
            Some(c) => format!(
                "snapshot {c} has no config with weights (config.json + model.safetensors, or open_clip_config.json + open_clip_model.safetensors)"
            ),
        };
        return Err(HubError::NotCached {
            repo: name.repo.clone(),
            revision: name.revision.clone(),
            missing,
            cache: repo_dir,
            why,
        });
    }
    let client = Client::new(settings);
    let mut revision = name.revision.clone();
    let mut files = Vec::new();
    let mut downloaded = Vec::new();
    let mut commit = None;
    for (config, weights) in LAYOUTS {
        let meta = match client.head(&name.repo, &revision, config) {
            Ok(m) => m,
            Err(HubError::FileNotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        // Every later file comes from the same commit, whatever the branch does meanwhile.
        revision = meta.commit.clone();
        if client.fetch(&name.repo, config, &meta)? {
            downloaded.push(config.to_string());
        }
        files.push(config.to_string());
        for w in weights {
            match client.head(&name.repo, &revision, w) {
                Ok(m) => {
                    if client.fetch(&name.repo, w, &m)? {
                        downloaded.push(w.to_string());
                    }
                    files.push(w.to_string());
                    break;
                }
                Err(HubError::FileNotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        if files.len() < 2 {
            return Err(HubError::NoWeights {
                repo: name.repo.clone(),
                revision: name.revision.clone(),
                found: format!("; found {config} without its weights"),
            });
        }
        if config == LAYOUTS[0].0 {
            match client.head(&name.repo, &revision, TOKENIZER) {
                Ok(m) => {
                    if client.fetch(&name.repo, TOKENIZER, &m)? {
                        downloaded.push(TOKENIZER.to_string());
                    }
                    files.push(TOKENIZER.to_string());
                }
                Err(HubError::FileNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        commit = Some(meta.commit);
        break;
    }
    let Some(commit) = commit else {
        return Err(HubError::NoWeights {
            repo: name.repo.clone(),
            revision: name.revision.clone(),
            found: String::new(),
        });
    };
    if name.revision != commit {
        write_ref(&repo_dir, &name.revision, &commit)?;
    }
    Ok(Snapshot {
        dir: repo_dir.join("snapshots").join(&commit),
        commit,
        files,
        downloaded,
    })
}

/// Downloads one file of a repo into the cache (or finds it there) and returns its snapshot
/// path: `huggingface_hub.hf_hub_download` for one file.
pub fn download_file(
    repo: &str,
    revision: &str,
    file: &str,
    settings: &HubSettings,
) -> Result<PathBuf> {
    let repo_dir = settings.repo_dir(repo);
    if let Some(c) = cached_commit(&repo_dir, revision) {
        let p = repo_dir.join("snapshots").join(&c).join(file);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(why) = settings.offline {
        return Err(HubError::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            missing: format!("no file {file}"),
            cache: repo_dir,
            why,
        });
    }
    let client = Client::new(settings);
    let meta = client.head(repo, revision, file)?;
    client.fetch(repo, file, &meta)?;
    if revision != meta.commit {
        write_ref(&repo_dir, revision, &meta.commit)?;
    }
    Ok(repo_dir.join("snapshots").join(&meta.commit).join(file))
}

fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<()> {
    let p = repo_dir.join("refs").join(revision);
    // huggingface_hub writes the bare commit, no newline.
    crate::io::atomic_write_bytes(&p, commit.as_bytes()).map_err(|e| HubError::Io {
        path: p.clone(),
        cause: io::Error::other(e.to_string()),
    })
}

/// What a `HEAD` on `resolve/` says about a file.
#[derive(Debug, Clone)]
struct FileMeta {
    /// `X-Repo-Commit`.
    commit: String,
    /// `X-Linked-Etag` or `ETag`, without quotes or `W/`.
    etag: String,
    /// `X-Linked-Size` or `Content-Length`.
    size: Option<u64>,
    /// Where the bytes are: the redirect's target, or the resolve URL itself.
    location: String,
}

struct Client<'a> {
    settings: &'a HubSettings,
    agent: ureq::Agent,
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// A redirect target relative to `base`.
fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
        format!("{dir}/{location}")
    }
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters stay).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl<'a> Client<'a> {
    fn new(settings: &'a HubSettings) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("siam/", env!("CARGO_PKG_VERSION"), "; hf_hub"))
            .build()
            .into();
        Self { settings, agent }
    }

    fn request(
        &self,
        method: &str,
        url: &str,
        range_from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = if method == "HEAD" {
            self.agent.head(url)
        } else {
            self.agent.get(url)
        };
        req = req.header("Accept-Encoding", "identity");
        if let Some(token) = &self.settings.token {
            // Only the Hub itself gets the token, never a CDN it redirects to.
            if origin(url) == origin(&self.settings.endpoint) {
                req = req.header("Authorization", format!("Bearer {token}"));
            }
        }
        if let Some(from) = range_from {
            req = req.header("Range", format!("bytes={from}-"));
        }
        req.call().map_err(|e| HubError::Network {
            url: url.to_string(),
            why: e.to_string(),
        })
    }

    /// `HEAD resolve/{revision}/{file}`: relative redirects followed, absolute ones reported.
    fn head(&self, repo: &str, revision: &str, file: &str) -> Result<FileMeta> {
        let endpoint = &self.settings.endpoint;
        let path: Vec<String> = file.split('/').map(encode_segment).collect();
        let mut url = format!(
            "{endpoint}/{repo}/resolve/{}/{}",
            encode_segment(revision),
            path.join("/")
        );
        for _ in 0..MAX_REDIRECTS {
            let resp = self.request("HEAD", &url, None)?;
            let status = resp.status().as_u16();
            let location = header(&resp, "location");
            match status {
                300..=399 => {
                    let Some(loc) = location else {
                        return Err(HubError::MissingHeader {
                            url,
                            header: "Location",
                            endpoint: endpoint.clone(),
                        });
                    };
                    if !loc.contains("://") {
                        url = join_url(&url, &loc);
                        continue;
                    }
                    return self.meta(&resp, &url, loc);
                }
                200..=299 => return self.meta(&resp, &url, url.clone()),
                401 | 403 | 404 => {
                    let code = header(&resp, "x-error-code").unwrap_or_default();
                    return Err(match code.as_str() {
                        "EntryNotFound" => HubError::FileNotFound {
                            repo: repo.to_string(),
                            revision: revision.to_string(),
                            file: file.to_string(),
                            endpoint: endpoint.clone(),
                        },
                        "RevisionNotFound" => HubError::RevisionNotFound {
                            repo: repo.to_string(),
                            revision: revision.to_string(),
                            endpoint: endpoint.clone(),
                        },
                        "" if status == 404 => HubError::FileNotFound {
                            repo: repo.to_string(),
                            revision: revision.to_string(),
                            file: file.to_string(),
                            endpoint: endpoint.clone(),
                        },
                        _ => HubError::RepoNotFound {
                            repo: repo.to_string(),
                            endpoint: endpoint.clone(),
                            status,
                            code: if code.is_empty() {
                                String::new()
                            } else {
                                format!(", {code}")
                            },
                        },
                    });
                }
                _ => return Err(HubError::Http { url, status }),
            }
        }
        Err(HubError::Network {
            url,
            why: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    fn meta(
        &self,
        resp: &ureq::http::Response<ureq::Body>,
        url: &str,
        location: String,
    ) -> Result<FileMeta> {
        let missing = |header| HubError::MissingHeader {
            url: url.to_string(),
            header,
            endpoint: self.settings.endpoint.clone(),
        };
        let commit = header(resp, "x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?;
        if !is_commit(&commit) {
            return Err(missing("X-Repo-Commit (40 hex digits)"));
        }
        let etag = header(resp, "x-linked-etag")
            .or_else(|| header(resp, "etag"))
            .ok_or_else(|| missing("ETag"))?;
        let etag = etag
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string();
        if etag.is_empty() || etag.contains(['/', '\\']) || etag.starts_with('.') {
            return Err(missing("ETag (a plain hash)"));
        }
        let size = header(resp, "x-linked-size")
            .or_else(|| header(resp, "content-length"))
            .and_then(|s| s.trim().parse().ok());
        Ok(FileMeta {
            commit,
            etag,
            size,
            location,
        })
    }

    /// Makes `snapshots/<commit>/<file>` point at the blob, downloading it when it is not in
    /// `blobs/` yet. Returns whether bytes were downloaded.
    fn fetch(&self, repo: &str, file: &str, meta: &FileMeta) -> Result<bool> {
        let repo_dir = self.settings.repo_dir(repo);
        let blobs = repo_dir.join("blobs");
        let blob = blobs.join(&meta.etag);
        let mut downloaded = false;
        if !blob.is_file() {
            std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
            self.download(file, meta, &blob)?;
            downloaded = true;
        }
        link_snapshot(&repo_dir, &meta.commit, file, &meta.etag)?;
        Ok(downloaded)
    }

    /// Downloads into `<blob>.incomplete`, resuming with Range, then checks and renames it.
    fn download(&self, file: &str, meta: &FileMeta, blob: &Path) -> Result<()> {
        let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
        let expected = meta.size;
        let bar = download_bar(file, expected);
        let mut last_error = String::new();
        let mut tries = 0;
        loop {
            let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            if expected.is_some_and(|n| have == n) {
                break;
            }
            if expected.is_some_and(|n| have > n) {
                std::fs::remove_file(&partial).map_err(io_err(&partial))?;
                continue;
            }
            if tries > RESUME_TRIES {
                bar.abandon();
                return Err(HubError::Interrupted {
                    file: file.to_string(),
                    got: have,
                    expected: expected.map_or("?".into(), |n| n.to_string()),
                    why: last_error,
                    partial,
                });
            }
            tries += 1;
            match self.get_into(&meta.location, &partial, have, &bar) {
                Ok(true) => {
                    if expected.is_none() {
                        break;
                    }
                }
                Ok(false) => {}
                Err(GetError::Hub(e)) => {
                    bar.abandon();
                    return Err(e);
                }
                Err(GetError::Broken(why)) => last_error = why,
            }
        }
        bar.finish_and_clear();
        let got = std::fs::metadata(&partial).map_err(io_err(&partial))?.len();
        let corrupt = |what, expected: String, got: String| {
            let _ = std::fs::remove_file(&partial);
            HubError::Corrupt {
                file: file.to_string(),
                what,
                expected,
                got,
            }
        };
        if let Some(n) = expected {
            if got != n {
                return Err(corrupt("size", n.to_string(), got.to_string()));
            }
        }
        // LFS files are named by their SHA-256: check it (git blobs are named by a SHA-1 of a
        // header plus content, which this does not recompute).
        if meta.etag.len() == 64 && meta.etag.bytes().all(|b| b.is_ascii_hexdigit()) {
            let sum = sha256_file(&partial)?;
            if !sum.eq_ignore_ascii_case(&meta.etag) {
                return Err(corrupt("sha256", meta.etag.clone(), sum));
            }
        }
        std::fs::rename(&partial, blob).map_err(io_err(blob))
    }

    /// One `GET` from byte `have` on, appended to `partial`. `Ok(true)`: the body ended
    /// normally; `Ok(false)`: the server ignored or refused the range, start over.
    fn get_into(
        &self,
        url: &str,
        partial: &Path,
        have: u64,
        bar: &ProgressBar,
    ) -> std::result::Result<bool, GetError> {
        let mut url = url.to_string();
        let mut resp = None;
        for _ in 0..MAX_REDIRECTS {
            let r = self
                .request("GET", &url, (have > 0).then_some(have))
                .map_err(|e| GetError::Broken(e.to_string()))?;
            let status = r.status().as_u16();
            if (300..400).contains(&status) {
                let loc = header(&r, "location").ok_or_else(|| {
                    GetError::Hub(HubError::MissingHeader {
                        url: url.clone(),
                        header: "Location",
                        endpoint: self.settings.endpoint.clone(),
                    })
                })?;
                url = join_url(&url, &loc);
                continue;
            }
            resp = Some(r);
            break;
        }
        let Some(resp) = resp else {
            return Err(GetError::Hub(HubError::Network {
                url,
                why: format!("more than {MAX_REDIRECTS} redirects"),
            }));
        };
        let status = resp.status().as_u16();
        let append = match status {
            206 => {
                // `Content-Range: bytes START-END/TOTAL` must start where the part ends.
                let start = header(&resp, "content-range").and_then(|c| {
                    c.trim()
                        .strip_prefix("bytes ")?
                        .split('-')
                        .next()?
                        .parse::<u64>()
                        .ok()
                });
                if start != Some(have) {
                    let _ = std::fs::remove_file(partial);
                    return Ok(false);
                }
                true
            }
            200 => false,
            416 => {
                let _ = std::fs::remove_file(partial);
                return Ok(false);
            }
            _ => return Err(GetError::Hub(HubError::Http { url, status })),
        };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(partial)
            .map_err(|e| GetError::Hub(io_err(partial)(e)))?;
        let start = if append { have } else { 0 };
        bar.set_position(start);
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = out.flush();
                    return Err(GetError::Broken(e.to_string()));
                }
            };
            out.write_all(&buf[..n])
                .map_err(|e| GetError::Hub(io_err(partial)(e)))?;
            bar.inc(n as u64);
        }
        out.sync_all()
            .map_err(|e| GetError::Hub(io_err(partial)(e)))?;
        Ok(true)
    }
}

enum GetError {
    /// Not worth retrying.
    Hub(HubError),
    /// The transfer broke off: resume.
    Broken(String),
}

fn download_bar(file: &str, size: Option<u64>) -> ProgressBar {
    // Small files (configs, tokenizers) go by without a bar.
    let bar = match size {
        Some(n) if n >= 1 << 20 => ProgressBar::new(n),
        _ => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("downloading {file}"));
    bar
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `snapshots/<commit>/<file>` -> `../../blobs/<etag>` (one more `../` per folder in `file`),
/// replaced atomically, as huggingface_hub's `_create_symlink` makes it.
fn link_snapshot(repo_dir: &Path, commit: &str, file: &str, etag: &str) -> Result<()> {
    let link = repo_dir.join("snapshots").join(commit).join(file);
    let parent = link.parent().expect("a snapshot file has a parent");
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let depth = file.split('/').count() + 1;
    let target = format!("{}blobs/{etag}", "../".repeat(depth));
    let tmp = crate::io::temp_sibling(&link);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(io_err(&link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_and_without_revision() {
        assert_eq!(ModelName::parse("runs/eyes").unwrap(), None);
        let n = ModelName::parse("hf:openai/clip-vit-base-patch32")
            .unwrap()
            .unwrap();
        assert_eq!(n.repo, "openai/clip-vit-base-patch32");
        assert_eq!(n.revision, "main");
        let n = ModelName::parse("hf:laion/CLIP-ViT-B-32-laion2B-s34B-b79K@refs/pr/3")
            .unwrap()
            .unwrap();
        assert_eq!(n.revision, "refs/pr/3");
        for bad in [
            "hf:openai",
            "hf:a/b/c",
            "hf:a/../b",
            "hf:a/b@",
            "hf:a/b@x/../y",
            "hf:/b",
        ] {
            let e = ModelName::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected hf:org/name"), "{bad}: {e}");
        }
    }

    #[test]
    fn urls_join_and_encode() {
        assert_eq!(
            join_url("http://h:1/a/resolve/main/x", "/cdn/1"),
            "http://h:1/cdn/1"
        );
        assert_eq!(join_url("http://h/a/b", "c"), "http://h/a/c");
        assert_eq!(join_url("http://h/a", "https://cdn/x"), "https://cdn/x");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(
            origin("https://huggingface.co/x/y"),
            "https://huggingface.co"
        );
    }

    #[test]
    fn snapshot_links_are_relative() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--a--b");
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/abc"), b"x").unwrap();
        link_snapshot(&repo, &"0".repeat(40), "sub/f.json", "abc").unwrap();
        let link = repo
            .join("snapshots")
            .join("0".repeat(40))
            .join("sub/f.json");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../../../blobs/abc")
        );
        assert_eq!(std::fs::read(&link).unwrap(), b"x");
    }
}
