//! Readers for each on-disk format, all producing a [`Dataset`].
//!
//! | format | what | splits from |
//! |---|---|---|
//! | [`Format::ImageFolder`] | `root/<label>/*.jpg` (or `root/{train,val,test}/<label>/…`) | the split folders, else seed |
//! | [`Format::Captions`] | CSV, TSV or JSONL rows of (image path, text[, label][, split]) | a `split` column, else seed |
//! | [`Format::Karpathy`] | `dataset_{flickr8k,flickr30k,coco}.json` of Karpathy & Fei-Fei 2015 | the file |
//! | [`Format::Cifar`] | CIFAR-10/100 binary batches (Krizhevsky 2009) | the file names |
//! | [`Format::WebDataset`] | `.tar` shards (`key.jpg` + `key.txt`/`key.json`), as written by img2dataset | seed |

mod captions;
mod cifar;
mod folder;
mod karpathy;
mod webdataset;

pub use cifar::{CIFAR100_LABELS, CIFAR10_LABELS};

use crate::dataset::{Dataset, DatasetError, OpenOptions, Result};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// The formats [`Dataset::open`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A folder of label folders of images.
    ImageFolder,
    /// A captions table: `.csv`, `.tsv` or `.jsonl`.
    Captions,
    /// A Karpathy split JSON file.
    Karpathy,
    /// A folder of CIFAR-10 or CIFAR-100 binary batches.
    Cifar,
    /// A `.tar` shard or a folder of them.
    WebDataset,
}

impl FromStr for Format {
    type Err = crate::dataset::UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "folder" | "imagefolder" | "image-folder" => Ok(Self::ImageFolder),
            "captions" | "csv" | "tsv" | "jsonl" => Ok(Self::Captions),
            "karpathy" => Ok(Self::Karpathy),
            "cifar" | "cifar10" | "cifar100" => Ok(Self::Cifar),
            "webdataset" | "wds" | "tar" => Ok(Self::WebDataset),
            _ => Err(crate::dataset::UnknownName::new(
                "format",
                s,
                "folder, captions, karpathy, cifar or webdataset",
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ImageFolder => "folder",
            Self::Captions => "captions",
            Self::Karpathy => "karpathy",
            Self::Cifar => "cifar",
            Self::WebDataset => "webdataset",
        })
    }
}

/// Image file extensions the loader decodes.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

pub(crate) fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn ext_lower(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| DatasetError::io(dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| DatasetError::io(dir, e))?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(e.path());
    }
    out.sort();
    Ok(out)
}

/// Detects the format of `path` (see [`Dataset::open`]).
///
/// # Errors
/// [`DatasetError::UnknownFormat`] when nothing matches; [`DatasetError::Io`] if a folder
/// cannot be listed.
pub fn detect(path: &Path) -> Result<Format> {
    let unknown = |why: &str| DatasetError::UnknownFormat {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if path.is_file() {
        return match ext_lower(path).as_str() {
            "csv" | "tsv" | "jsonl" => Ok(Format::Captions),
            "json" => Ok(Format::Karpathy),
            "tar" => Ok(Format::WebDataset),
            e => Err(unknown(&format!("a file with extension {e:?}"))),
        };
    }
    let entries = read_dir_sorted(path)?;
    let names: Vec<String> = entries
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    if has("data_batch_1.bin") || has("test_batch.bin") || has("train.bin") || has("test.bin") {
        return Ok(Format::Cifar);
    }
    if entries.iter().any(|p| p.is_file() && ext_lower(p) == "tar") {
        return Ok(Format::WebDataset);
    }
    if names
        .iter()
        .any(|n| n.starts_with("dataset_") && n.ends_with(".json"))
    {
        return Ok(Format::Karpathy);
    }
    let tables: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.is_file() && matches!(ext_lower(p).as_str(), "csv" | "tsv" | "jsonl"))
        .collect();
    if tables.len() == 1 {
        return Ok(Format::Captions);
    }
    if entries.iter().any(|p| p.is_dir()) {
        return Ok(Format::ImageFolder);
    }
    Err(unknown(
        "a folder with no sub-folder, table, .tar shard or CIFAR batch",
    ))
}

/// Opens `path` as `format`.
pub(crate) fn open(format: Format, path: &Path, opts: &OpenOptions) -> Result<Dataset> {
    match format {
        Format::ImageFolder => folder::open(path, opts),
        Format::Captions => {
            captions::open(&single_file(path, &["csv", "tsv", "jsonl"], None)?, opts)
        }
        Format::Karpathy => karpathy::open(&single_file(path, &["json"], Some("dataset_"))?, opts),
        Format::Cifar => cifar::open(path, opts),
        Format::WebDataset => webdataset::open(path, opts),
    }
}

/// `path` itself if a file, else the only file in it with one of `exts` (and `prefix`).
fn single_file(path: &Path, exts: &[&str], prefix: Option<&str>) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let found: Vec<PathBuf> = read_dir_sorted(path)?
        .into_iter()
        .filter(|p| {
            p.is_file()
                && exts.contains(&ext_lower(p).as_str())
                && prefix.is_none_or(|pre| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(pre))
                })
        })
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => Err(DatasetError::UnknownFormat {
            path: path.to_path_buf(),
            why: format!("no {} file in it", exts.join("/")),
        }),
        n => Err(DatasetError::UnknownFormat {
            path: path.to_path_buf(),
            why: format!(
                "{n} candidate files in it ({}); name one",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Joins a relative image path from a table onto `root`, refusing absolute paths and `..`
/// that climbs above the root (checked on the path's components, without touching the disk).
pub(crate) fn resolve_under(root: &Path, entry: &str, file: &Path, line: usize) -> Result<PathBuf> {
    let escape = || DatasetError::PathEscapesRoot {
        file: file.to_path_buf(),
        line,
        entry: entry.to_string(),
        root: root.to_path_buf(),
    };
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for c in Path::new(entry).components() {
        match c {
            Component::Normal(s) => {
                out.push(s);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err(escape());
                }
                out.pop();
                depth -= 1;
            }
            Component::RootDir | Component::Prefix(_) => return Err(escape()),
        }
    }
    if depth == 0 {
        return Err(DatasetError::malformed(
            file,
            line,
            format!("image path {entry:?} names no file"),
        ));
    }
    Ok(out)
}

/// The name of a dataset: the file stem or folder name.
pub(crate) fn dataset_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}

/// Decodes UTF-8, naming the line of the first invalid byte.
pub(crate) fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        DatasetError::malformed(path, line, "not valid UTF-8 text")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let r = Path::new("/data");
        let f = Path::new("t.csv");
        assert_eq!(
            resolve_under(r, "a/b.jpg", f, 1).unwrap(),
            Path::new("/data/a/b.jpg")
        );
        assert_eq!(
            resolve_under(r, "./a/../b.jpg", f, 1).unwrap(),
            Path::new("/data/b.jpg")
        );
        assert!(matches!(
            resolve_under(r, "../x.jpg", f, 3),
            Err(DatasetError::PathEscapesRoot { line: 3, .. })
        ));
        assert!(matches!(
            resolve_under(r, "a/../../x.jpg", f, 1),
            Err(DatasetError::PathEscapesRoot { .. })
        ));
        assert!(matches!(
            resolve_under(r, "/etc/passwd", f, 1),
            Err(DatasetError::PathEscapesRoot { .. })
        ));
        assert!(matches!(
            resolve_under(r, "a/..", f, 1),
            Err(DatasetError::Malformed { .. })
        ));
    }

    #[test]
    fn format_names_parse() {
        assert_eq!("wds".parse::<Format>().unwrap(), Format::WebDataset);
        assert_eq!(
            Format::Karpathy.to_string().parse::<Format>().unwrap(),
            Format::Karpathy
        );
        assert!("zip".parse::<Format>().is_err());
    }
}
