//! What siam may replace, and who is writing an output folder.
//!
//! Every path a user names as an output (`train --out`, `index --out`, `embed --out`,
//! `eval --json`, `demo-data --out`, ...) goes through [`check_replaceable`] before anything is
//! written: a path that does not exist, or an empty folder, is free; an existing path is
//! replaced only when it is an output of the same [`OutputKind`] that siam wrote, recognised by
//! its manifest (a model folder's `siam.json`, an index's `manifest.json`,
//! a PNG's `Software: siam` text chunk, ...). Anything else is refused with one line naming the
//! path: a user's file or folder is never renamed aside or removed. Folders siam replaces
//! wholesale must also hold nothing but the entries siam writes there.
//!
//! A command that writes an output folder holds an [`OutputLock`] on it: the file
//! `.<name>.siam-lock` beside the folder, naming the process (pid, host, command, start time).
//! A second writer is refused with one line naming the holder; a lock whose process is gone
//! (same host, no such pid, or a pid reused by a younger process) is stale and taken over.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors checking or locking an output path.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The path exists and is not an output of this kind that siam wrote.
    #[error("{path}: already exists and is not {kind} written by siam ({why}); refusing to replace it: choose another path or move it away yourself")]
    NotOurs {
        /// The output path.
        path: PathBuf,
        /// What siam would have written there.
        kind: &'static str,
        /// Why it is not recognised.
        why: String,
    },
    /// Another live process holds the output's lock.
    #[error("{path}: another siam process is writing it ({holder}); wait for it to finish or choose another path (a lock left by a crashed process is taken over automatically)")]
    Locked {
        /// The output path.
        path: PathBuf,
        /// Who holds the lock.
        holder: String,
    },
    /// The operating system refused a read or write.
    #[error("{path}: {cause}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the OS said (printed, not chained).
        cause: io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, OutputError>;

/// The kinds of output siam writes, each with the manifest that recognises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A `siam train` output folder: `siam.json` with `"format": "siam-model"`, or a
    /// `checkpoint/state.json`. Files are written into it; the folder itself is never replaced.
    TrainRun,
    /// An index folder (`siam index`, a `siam train` run's `index/`): `manifest.json` with
    /// `format_version`.
    JointIndex,
    /// One graph of a joint index: `hnsw.json`.
    VectorIndex,
    /// A training checkpoint folder: `state.json`.
    Checkpoint,
    /// A siam model folder replaced as a whole (`siam merge --out`): `siam.json` with
    /// `"format": "siam-model"`, its weights, tokenizer and learned prompts.
    ModelFolder,
    /// `siam embed --out`: a `.npy` whose sidecar `<stem>.ids.json` siam wrote.
    Embeddings,
    /// The sidecar `<stem>.ids.json` of embeddings: `{"dim", "ids"}`.
    EmbeddingIds,
    /// `siam eval --json`: a report object (or list of them) with `model` and `retrieval`.
    EvalReport,
    /// `siam train --report`: a training report with `output` and `finished`.
    TrainReport,
    /// A PNG chart carrying the text chunk `Software: siam` ([`tag_png`]).
    Plot,
    /// `siam demo-data --out`: a folder with `siam-demo.json`.
    DemoData,
    /// `siam export --out`: a Hugging Face or open_clip folder with `siam-export.json`.
    Export,
}

/// The marker file of a demo-data folder.
pub const DEMO_MARKER: &str = "siam-demo.json";

impl OutputKind {
    /// What it is, in the user's words.
    pub fn describe(self) -> &'static str {
        match self {
            OutputKind::TrainRun => "a training output folder",
            OutputKind::JointIndex => "an index folder",
            OutputKind::VectorIndex => "an index graph folder",
            OutputKind::Checkpoint => "a checkpoint folder",
            OutputKind::ModelFolder => "a model folder",
            OutputKind::Embeddings => "an embeddings .npy file",
            OutputKind::EmbeddingIds => "an embeddings ids file",
            OutputKind::EvalReport => "an eval report",
            OutputKind::TrainReport => "a training report",
            OutputKind::Plot => "a chart",
            OutputKind::DemoData => "a demo-data folder",
            OutputKind::Export => "an export folder",
        }
    }

    fn is_folder(self) -> bool {
        !matches!(
            self,
            OutputKind::Embeddings
                | OutputKind::EmbeddingIds
                | OutputKind::EvalReport
                | OutputKind::TrainReport
                | OutputKind::Plot
        )
    }

    /// Entries a folder of this kind may hold when siam replaces it wholesale; `None` for
    /// folders siam writes into without replacing.
    fn known_entries(self) -> Option<&'static [&'static str]> {
        match self {
            OutputKind::JointIndex => Some(&[
                "manifest.json",
                "images.json",
                "texts.json",
                "images",
                "texts",
            ]),
            OutputKind::VectorIndex => Some(&[
                "hnsw.json",
                "vectors.npy",
                "graph.hnsw.graph",
                "graph.hnsw.data",
            ]),
            OutputKind::Checkpoint => Some(&["model.bpk", "optimizer.bpk", "state.json"]),
            OutputKind::ModelFolder => Some(&[
                "siam.json",
                "model.safetensors",
                "tokenizer.json",
                "prompts.json",
                "prompts.safetensors",
            ]),
            OutputKind::DemoData => Some(&[DEMO_MARKER, "images", "captions.csv"]),
            OutputKind::Export => Some(crate::export::FILES),
            _ => None,
        }
    }

    /// Why `path` (which exists) is not this kind's output, or `None` when it is.
    fn not_ours(self, path: &Path) -> Option<String> {
        if self.is_folder() != path.is_dir() {
            return Some(if path.is_dir() {
                "it is a folder".into()
            } else {
                "it is a file, not a folder".into()
            });
        }
        if self.is_folder() && is_empty_dir(path) {
            return None;
        }
        let json = |p: &Path| -> Option<serde_json::Value> {
            let bytes = fs::read(p).ok()?;
            serde_json::from_slice(&bytes).ok()
        };
        let has_key = |v: &serde_json::Value, k: &str| v.get(k).is_some();
        let ok = match self {
            OutputKind::ModelFolder => json(&path.join("siam.json"))
                .is_some_and(|v| v.get("format").and_then(|f| f.as_str()) == Some("siam-model")),
            OutputKind::TrainRun => {
                json(&path.join("siam.json"))
                    .is_some_and(|v| v.get("format").and_then(|f| f.as_str()) == Some("siam-model"))
                    || json(&path.join("checkpoint").join("state.json")).is_some()
            }
            OutputKind::JointIndex => {
                json(&path.join("manifest.json")).is_some_and(|v| has_key(&v, "format_version"))
            }
            OutputKind::VectorIndex => {
                json(&path.join("hnsw.json")).is_some_and(|v| has_key(&v, "params"))
            }
            OutputKind::Checkpoint => json(&path.join("state.json")).is_some(),
            OutputKind::DemoData => json(&path.join(DEMO_MARKER))
                .is_some_and(|v| v.get("format").and_then(|f| f.as_str()) == Some("siam-demo")),
            OutputKind::Export => {
                json(&path.join(crate::export::MARKER)).is_some_and(|v| has_key(&v, "written_by"))
            }
            OutputKind::EmbeddingIds => json(path).is_some_and(|v| is_ids_sidecar(&v)),
            OutputKind::Embeddings => {
                json(&sidecar_of(path)).is_some_and(|v| is_ids_sidecar(&v))
                    && crate::io::read_npy_shape(path).is_ok()
            }
            OutputKind::EvalReport => json(path).is_some_and(|v| {
                let is_report =
                    |r: &serde_json::Value| has_key(r, "model") && has_key(r, "retrieval");
                match &v {
                    serde_json::Value::Array(a) => !a.is_empty() && a.iter().all(is_report),
                    r => is_report(r),
                }
            }),
            OutputKind::TrainReport => {
                json(path).is_some_and(|v| has_key(&v, "output") && has_key(&v, "finished"))
            }
            OutputKind::Plot => fs::read(path).is_ok_and(|b| is_tagged_png(&b)),
        };
        if !ok {
            return Some(match self {
                OutputKind::Plot => "no `Software: siam` chunk".into(),
                OutputKind::Embeddings => "no siam ids sidecar beside it".into(),
                k if k.is_folder() => "no siam manifest inside".into(),
                _ => "its content is not siam's".into(),
            });
        }
        let known = self.known_entries()?;
        let foreign = fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| !known.contains(&n.as_str()) && !is_siam_temp(n))?;
        Some(format!("it holds {foreign:?}, which siam did not write"))
    }
}

fn is_ids_sidecar(v: &serde_json::Value) -> bool {
    v.get("dim").is_some_and(|d| d.is_u64()) && v.get("ids").is_some_and(|i| i.is_array())
}

/// `emb.npy` -> `emb.ids.json`, the sidecar `siam embed` writes beside its `.npy`.
pub fn sidecar_of(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "embeddings".into());
    out.with_file_name(format!("{stem}.ids.json"))
}

/// Temporary names siam's atomic writes use: `.{name}.{pid}.tmp`, `.{name}.old.{pid}`.
fn is_siam_temp(name: &str) -> bool {
    name.starts_with('.') && (name.ends_with(".tmp") || name.contains(".old."))
}

fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Checks that writing `kind` at `path` loses nothing a user made: `Ok` when the path does not
/// exist, is an empty folder (folder kinds), or is an output of `kind` that siam wrote.
pub fn check_replaceable(path: &Path, kind: OutputKind) -> Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    match kind.not_ours(path) {
        None => Ok(()),
        Some(why) => Err(OutputError::NotOurs {
            path: path.to_path_buf(),
            kind: kind.describe(),
            why,
        }),
    }
}

/// The `Software: siam` tEXt chunk's keyword and text (PNG spec 11.3.4.3).
const PNG_TEXT: &[u8] = b"Software\0siam";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Inserts a `tEXt` chunk `Software: siam` right after the PNG's `IHDR`, so siam recognises its
/// own charts before replacing them. Bytes that are not a PNG come back unchanged.
pub fn tag_png(png: &[u8]) -> Vec<u8> {
    // Signature (8) + IHDR chunk (4 length + 4 type + 13 data + 4 CRC).
    const AFTER_IHDR: usize = 33;
    if png.len() < AFTER_IHDR || !png.starts_with(PNG_SIGNATURE) || &png[12..16] != b"IHDR" {
        return png.to_vec();
    }
    let mut chunk = Vec::with_capacity(PNG_TEXT.len() + 12);
    chunk.extend_from_slice(&(PNG_TEXT.len() as u32).to_be_bytes());
    chunk.extend_from_slice(b"tEXt");
    chunk.extend_from_slice(PNG_TEXT);
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    let mut out = Vec::with_capacity(png.len() + chunk.len());
    out.extend_from_slice(&png[..AFTER_IHDR]);
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

/// Whether a PNG carries the chunk [`tag_png`] inserts (walks the chunk list, bounded by the
/// byte length).
fn is_tagged_png(png: &[u8]) -> bool {
    if !png.starts_with(PNG_SIGNATURE) {
        return false;
    }
    let mut at = PNG_SIGNATURE.len();
    while let Some(head) = png.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(data) = png.get(at + 8..(at + 8).saturating_add(len)) else {
            return false;
        };
        match &head[4..8] {
            b"tEXt" if data == PNG_TEXT => return true,
            b"IDAT" | b"IEND" => return false,
            _ => {}
        }
        at = at + 12 + len;
    }
    false
}

/// Writes a file `siam` names as `kind` atomically, after [`check_replaceable`].
pub fn write_file(path: &Path, kind: OutputKind, bytes: &[u8]) -> Result<()> {
    check_replaceable(path, kind)?;
    let bytes = if kind == OutputKind::Plot {
        std::borrow::Cow::Owned(tag_png(bytes))
    } else {
        std::borrow::Cow::Borrowed(bytes)
    };
    crate::io::atomic_write_bytes(path, &bytes).map_err(|e| match e {
        crate::io::IoError::Os { path, source } => OutputError::Io {
            path,
            cause: source,
        },
        other => OutputError::Io {
            path: path.to_path_buf(),
            cause: io::Error::other(other.to_string()),
        },
    })
}

/// What a lock file records about its holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LockHolder {
    pid: u32,
    host: String,
    command: String,
    /// Seconds since the Unix epoch when the lock was taken.
    started: u64,
    /// The holder's start time in clock ticks after boot (`/proc/<pid>/stat` field 22), so a
    /// pid reused by another process is not mistaken for the holder. `None` off Linux.
    #[serde(default)]
    proc_start: Option<u64>,
}

impl LockHolder {
    fn me(command: &str) -> Self {
        let pid = std::process::id();
        LockHolder {
            pid,
            host: hostname(),
            command: command.to_string(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            proc_start: proc_start(pid),
        }
    }

    /// Whether the holder may still be running: always on another host (it cannot be asked).
    fn alive(&self) -> bool {
        if self.host != hostname() || !Path::new("/proc/self").exists() {
            return true;
        }
        match proc_start(self.pid) {
            None => false,
            Some(now) => self.proc_start.is_none_or(|then| then == now),
        }
    }

    fn describe(&self) -> String {
        format!(
            "pid {} on {}, `{}`, since {}",
            self.pid,
            self.host,
            self.command,
            utc(self.started)
        )
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Field 22 of `/proc/<pid>/stat` (start time after boot), `None` when there is no such process.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is parenthesised and may hold spaces: count after its `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix seconds (Howard Hinnant's `civil_from_days`).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The lock file of an output path: `.<name>.siam-lock` beside it.
pub fn lock_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    out.with_file_name(format!(".{name}.siam-lock"))
}

/// A held lock on an output path; released (its file removed) on drop.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
    body: Vec<u8>,
    /// Folders created to hold the lock file, deepest first; removed on drop when still empty,
    /// so a command that fails leaves no output path behind.
    created: Vec<PathBuf>,
}

impl OutputLock {
    /// Takes the lock on `out` for `command` (recorded for whoever is refused), taking over a
    /// stale lock; refuses with [`OutputError::Locked`] while a live process holds it.
    pub fn acquire(out: &Path, command: &str) -> Result<Self> {
        let path = lock_path(out);
        let io_err = |cause| OutputError::Io {
            path: path.clone(),
            cause,
        };
        let mut created = Vec::new();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut missing = Some(dir);
            while let Some(d) = missing.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                created.push(d.to_path_buf());
                missing = d.parent();
            }
            fs::create_dir_all(dir).map_err(|cause| OutputError::Io {
                path: dir.to_path_buf(),
                cause,
            })?;
        }
        let body = serde_json::to_vec(&LockHolder::me(command)).expect("plain data serialises");
        // The lock appears whole or not at all: written under a private name, then hard-linked
        // to the lock name, which fails when the name exists.
        let tmp = crate::io::temp_sibling(&path);
        (|| -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()
        })()
        .map_err(&io_err)?;
        let result = (|| {
            for _ in 0..4 {
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(e)),
                }
                let held = fs::read(&path).unwrap_or_default();
                match serde_json::from_slice::<LockHolder>(&held) {
                    Ok(h) if h.alive() => {
                        return Err(OutputError::Locked {
                            path: out.to_path_buf(),
                            holder: h.describe(),
                        })
                    }
                    // Stale (or unreadable, which a lock written whole never is): take it over,
                    // unless another process took it over first.
                    _ => {
                        if fs::read(&path).unwrap_or_default() == held {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
            }
            Err(OutputError::Locked {
                path: out.to_path_buf(),
                holder: "processes racing for it".into(),
            })
        })();
        let _ = fs::remove_file(&tmp);
        let lock = OutputLock {
            path,
            body,
            created,
        };
        // On refusal the lock drops here: the folders made for it go again.
        result.map(|()| lock)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        if fs::read(&self.path).is_ok_and(|b| b == self.body) {
            let _ = fs::remove_file(&self.path);
        }
        for d in &self.created {
            // Fails, as it should, once the output (or anything else) is inside.
            let _ = fs::remove_dir(d);
        }
    }
}

/// The command line of this process, for lock files.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_files_and_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("notes.txt");
        fs::write(&notes, b"mine").unwrap();
        let e = check_replaceable(&notes, OutputKind::JointIndex).unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        let user = dir.path().join("userdir");
        fs::create_dir(&user).unwrap();
        fs::write(user.join("precious.txt"), b"x").unwrap();
        for kind in [
            OutputKind::JointIndex,
            OutputKind::TrainRun,
            OutputKind::DemoData,
        ] {
            assert!(check_replaceable(&user, kind).is_err());
        }
        for kind in [
            OutputKind::Embeddings,
            OutputKind::EvalReport,
            OutputKind::Plot,
        ] {
            assert!(check_replaceable(&notes, kind).is_err());
        }
        // Free: missing paths and empty folders.
        check_replaceable(&dir.path().join("new"), OutputKind::JointIndex).unwrap();
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        check_replaceable(&empty, OutputKind::TrainRun).unwrap();
    }

    #[test]
    fn siam_outputs_are_recognised_but_not_with_foreign_entries() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("idx");
        fs::create_dir_all(idx.join("images")).unwrap();
        fs::write(idx.join("manifest.json"), br#"{"format_version": 1}"#).unwrap();
        check_replaceable(&idx, OutputKind::JointIndex).unwrap();
        assert!(check_replaceable(&idx, OutputKind::TrainRun).is_err());
        fs::write(idx.join("precious.txt"), b"x").unwrap();
        let e = check_replaceable(&idx, OutputKind::JointIndex).unwrap_err();
        assert!(e.to_string().contains("precious.txt"), "{e}");
    }

    #[test]
    fn tagged_png_is_recognised() {
        let img = image::RgbImage::new(4, 3);
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(!is_tagged_png(&png));
        let tagged = tag_png(&png);
        assert!(is_tagged_png(&tagged));
        // Still a valid PNG (chunk CRC right).
        let back = image::load_from_memory(&tagged).unwrap();
        assert_eq!((back.width(), back.height()), (4, 3));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        write_file(&p, OutputKind::Plot, &png).unwrap();
        write_file(&p, OutputKind::Plot, &png).unwrap();
        fs::write(&p, &png).unwrap();
        assert!(write_file(&p, OutputKind::Plot, &png).is_err());
    }

    #[test]
    fn lock_refuses_a_live_holder_and_takes_over_a_dead_one() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let lock = OutputLock::acquire(&out, "first").unwrap();
        let e = OutputLock::acquire(&out, "second").unwrap_err().to_string();
        assert!(
            e.contains("first") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(lock);
        assert!(!lock_path(&out).exists());
        // A lock of a process that no longer exists.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = LockHolder {
            pid: dead,
            host: hostname(),
            command: "killed".into(),
            started: 0,
            proc_start: None,
        };
        fs::write(lock_path(&out), serde_json::to_vec(&stale).unwrap()).unwrap();
        let lock = OutputLock::acquire(&out, "third").unwrap();
        assert!(fs::read_to_string(lock.path()).unwrap().contains("third"));
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_000_000), "2026-11-30 00:53:20 UTC");
    }
}
