//! Files siam writes: every one goes to a temporary name in the same folder and is renamed into
//! place, so a crash never leaves a half-written checkpoint, index or embedding file. Also the
//! `.npy` format (NumPy's `format.rst`, version 1.0) for embeddings that numpy reads.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Errors reading or writing siam's files.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused a read or write (what it said is the error's source).
    #[error("{path}")]
    Os {
        /// The file involved.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A `.npy` file that is not a little-endian f32 2-D array.
    #[error("{path}: not a 2-D little-endian float32 .npy file ({why})")]
    BadNpy {
        /// The file involved.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, IoError>;

fn os(path: &Path) -> impl FnOnce(io::Error) -> IoError + '_ {
    move |source| IoError::Os {
        path: path.to_path_buf(),
        source,
    }
}

/// The temporary sibling a file or folder is written under before the rename.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `path` atomically: `write` fills a temporary file, which is flushed to disk and renamed
/// over `path`. On any error the temporary file is removed and `path` is untouched.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(os(dir))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let file = fs::File::create(&tmp)?;
        let mut w = io::BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(IoError::Os {
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

/// Writes bytes atomically.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |w| w.write_all(bytes))
}

/// Builds a folder under a temporary name and renames it to `path` once `fill` succeeded,
/// replacing an older folder of that name only when it is an output of `kind` that siam wrote
/// ([`crate::output::check_replaceable`]; anything else is refused before `fill` runs). On
/// error the temporary folder is removed.
pub fn atomic_dir<T>(
    path: &Path,
    kind: crate::output::OutputKind,
    fill: impl FnOnce(&Path) -> std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>,
) -> std::result::Result<T, Box<dyn std::error::Error + Send + Sync>> {
    crate::output::check_replaceable(path, kind)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(os(dir))?;
    }
    let tmp = temp_sibling(path);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(os(&tmp))?;
    match fill(&tmp) {
        Ok(v) => {
            let old = path.with_file_name(format!(
                ".{}.old.{}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            let had_old = path.exists();
            if had_old {
                fs::rename(path, &old).map_err(os(path))?;
            }
            if let Err(e) = fs::rename(&tmp, path) {
                if had_old {
                    let _ = fs::rename(&old, path);
                }
                let _ = fs::remove_dir_all(&tmp);
                return Err(os(path)(e).into());
            }
            if had_old {
                let _ = fs::remove_dir_all(&old);
            }
            Ok(v)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Removes what killed writers left beside `path`: temporary siblings `.{name}.{pid}.tmp`
/// (never a finished file: [`atomic_write`] and [`atomic_dir`] rename them only once complete)
/// and, when `path` itself exists, the `.{name}.old.{pid}` folder of an interrupted
/// [`atomic_dir`] swap. Names of this process are kept. Returns how many entries went.
///
/// Call it only for paths this process owns (a training run's own output folder): another
/// process writing the same path at the same moment would lose its temporary file.
pub fn remove_stale_temps(path: &Path) -> usize {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let name = name.to_string_lossy();
    let me = std::process::id().to_string();
    let tmp_prefix = format!(".{name}.");
    let old_prefix = format!(".{name}.old.");
    let is_pid = |s: &str| !s.is_empty() && s != me && s.bytes().all(|b| b.is_ascii_digit());
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let entry = e.file_name().to_string_lossy().into_owned();
        let stale = match entry.strip_prefix(&old_prefix) {
            Some(pid) => is_pid(pid) && path.exists(),
            None => entry
                .strip_prefix(&tmp_prefix)
                .and_then(|r| r.strip_suffix(".tmp"))
                .is_some_and(is_pid),
        };
        if stale {
            let p = e.path();
            let gone = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            removed += usize::from(gone.is_ok());
        }
    }
    removed
}

/// The `.npy` v1.0 header for a C-order little-endian f32 array of `shape`, padded so the data
/// starts at a multiple of 64 bytes.
fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let mut h = Vec::with_capacity(unpadded + pad);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.extend(std::iter::repeat_n(b' ', pad));
    h.push(b'\n');
    h
}

/// Writes a `rows x cols` f32 matrix (row-major) as `.npy`, atomically.
///
/// # Panics
/// If `data.len() != rows * cols`.
pub fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    assert_eq!(data.len(), rows * cols, "npy data does not match its shape");
    atomic_write(path, |w| {
        w.write_all(&npy_header(&[rows, cols]))?;
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Where the data of a 2-D little-endian f32 `.npy` file lies: `rows x cols` values from byte
/// `offset` to the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NpyLayout {
    /// Byte offset of the first value.
    pub offset: usize,
    /// Rows (a 1-D array of `n` reads as `n x 1`).
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// Why a `.npy` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NpyHeaderError(pub String);

/// Largest header this reader accepts (NumPy writes a few hundred bytes; version 2 allows 4 GiB).
const MAX_NPY_HEADER: usize = 1 << 16;

/// Parses the header at the start of `head` (the first bytes of a `.npy` file; 64 KiB suffice)
/// of a file `file_len` bytes long, checking that the data the shape promises is exactly what
/// the file holds, in checked arithmetic, before anyone allocates or slices by it.
pub fn parse_npy_header(
    head: &[u8],
    file_len: u64,
) -> std::result::Result<NpyLayout, NpyHeaderError> {
    parse_npy_layout(head, file_len).map_err(NpyHeaderError)
}

fn parse_npy_layout(head: &[u8], file_len: u64) -> std::result::Result<NpyLayout, String> {
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (hlen, hstart) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        2 | 3 if head.len() >= 12 => (
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported format version {v}")),
    };
    if hlen > MAX_NPY_HEADER {
        return Err(format!("header of {hlen} bytes is implausibly long"));
    }
    let header = head
        .get(hstart..hstart + hlen)
        .ok_or("header runs past the end")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    if !header.contains("'descr': '<f4'") {
        return Err("dtype is not '<f4'".into());
    }
    if header.contains("'fortran_order': True") {
        return Err("fortran order".into());
    }
    let shape_src = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape")?;
    let dims: Vec<usize> = shape_src
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| "shape is not integers"))
        .collect::<std::result::Result<_, _>>()?;
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        _ => return Err("not 2-D".into()),
    };
    let offset = hstart + hlen;
    let want = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(4))
        .and_then(|n| n.checked_add(offset))
        .ok_or_else(|| format!("shape ({rows}, {cols}) is implausibly large"))?;
    if want as u64 != file_len {
        return Err(format!(
            "data length does not match the shape ({rows}, {cols}): the file holds {file_len} bytes, the shape needs {want} (truncated?)"
        ));
    }
    Ok(NpyLayout { offset, rows, cols })
}

fn npy_layout(path: &Path) -> Result<(fs::File, NpyLayout)> {
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(os(path))?;
    let len = file.metadata().map_err(os(path))?.len();
    let mut head = Vec::with_capacity(1024);
    (&mut file)
        .take(MAX_NPY_HEADER as u64 + 12)
        .read_to_end(&mut head)
        .map_err(os(path))?;
    let layout = parse_npy_header(&head, len).map_err(|e| IoError::BadNpy {
        path: path.to_path_buf(),
        why: e.0,
    })?;
    Ok((file, layout))
}

/// `(rows, cols)` of a 2-D little-endian f32 `.npy` file, reading only its header.
pub fn read_npy_shape(path: &Path) -> Result<(usize, usize)> {
    npy_layout(path).map(|(_, l)| (l.rows, l.cols))
}

/// Reads a 2-D little-endian f32 `.npy` file into `(data, rows, cols)`; the size is checked
/// against the file's length before the values are allocated.
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    use std::io::{Read, Seek, SeekFrom};
    let (mut file, l) = npy_layout(path)?;
    let mut bytes = vec![0u8; l.rows * l.cols * 4];
    file.seek(SeekFrom::Start(l.offset as u64))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(os(path))?;
    let out = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((out, l.rows, l.cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        write_npy(&p, &data, 3, 4).unwrap();
        let raw = fs::read(&p).unwrap();
        assert_eq!((raw.len() - 12 * 4) % 64, 0);
        assert_eq!(read_npy(&p).unwrap(), (data, 3, 4));
    }

    #[test]
    fn truncated_npy_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.npy");
        write_npy(&p, &[1.0; 8], 2, 4).unwrap();
        let raw = fs::read(&p).unwrap();
        fs::write(&p, &raw[..raw.len() - 3]).unwrap();
        assert!(read_npy(&p).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn stale_temps_of_other_processes_go() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint");
        let me = std::process::id();
        for n in [
            ".checkpoint.1.tmp".to_string(),
            ".checkpoint.old.2".to_string(),
            format!(".checkpoint.{me}.tmp"),
            ".checkpointx.3.tmp".to_string(),
        ] {
            fs::create_dir_all(dir.path().join(n)).unwrap();
        }
        fs::write(dir.path().join(".checkpoint.4.tmp"), b"half").unwrap();
        // Without `checkpoint` itself, the old folder is the only copy: it stays.
        assert_eq!(remove_stale_temps(&ck), 2);
        assert!(dir.path().join(".checkpoint.old.2").is_dir());
        fs::create_dir_all(&ck).unwrap();
        assert_eq!(remove_stale_temps(&ck), 1);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!(".checkpoint.{me}.tmp"),
                ".checkpointx.3.tmp".into(),
                "checkpoint".into()
            ]
        );
    }

    #[test]
    fn failed_write_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write_bytes(&p, b"old").unwrap();
        let r = atomic_write(&p, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(r.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
