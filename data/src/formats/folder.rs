//! Image folders: `root/<label>/*.jpg`, optionally `root/{train,val,test}/<label>/*.jpg`.
//!
//! The label text is the folder name with `_` read as a space (`golden_retriever` becomes
//! "golden retriever"), or the text a mapping file gives the folder (`labels.json`:
//! `{"n01440764": "tench"}`, or `labels.txt`: lines `n01440764 tench`, as ImageNet's
//! `LOC_synset_mapping.txt`). Images are found recursively inside each label folder; files
//! with other extensions are ignored.

use super::{is_image_path, read_dir_sorted, utf8};
use crate::dataset::{
    Dataset, DatasetBuilder, DatasetError, DatasetKind, ImageSource, OpenOptions, Result, Split,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub(super) fn open(root: &Path, opts: &OpenOptions) -> Result<Dataset> {
    let map_file = match &opts.label_map {
        Some(p) => Some(p.clone()),
        None => ["labels.json", "labels.txt", "labels.tsv"]
            .iter()
            .map(|n| root.join(n))
            .find(|p| p.is_file()),
    };
    let mapping = match &map_file {
        Some(p) => read_label_map(p)?,
        None => HashMap::new(),
    };
    let subdirs: Vec<PathBuf> = read_dir_sorted(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    let split_dirs: Vec<(Split, PathBuf)> = subdirs
        .iter()
        .filter_map(|d| {
            d.file_name()?
                .to_str()?
                .parse::<Split>()
                .ok()
                .map(|s| (s, d.clone()))
        })
        .collect();
    // Split folders only when every sub-folder is one and each holds label folders.
    let by_split = !split_dirs.is_empty()
        && split_dirs.len() == subdirs.len()
        && split_dirs.iter().all(|(_, d)| {
            read_dir_sorted(d)
                .map(|v| v.iter().any(|p| p.is_dir()))
                .unwrap_or(false)
        });
    let mut b = DatasetBuilder::new(super::dataset_name(root), root, DatasetKind::Labels);
    let groups: Vec<(Option<Split>, PathBuf)> = if by_split {
        split_dirs.into_iter().map(|(s, d)| (Some(s), d)).collect()
    } else {
        vec![(None, root.to_path_buf())]
    };
    // Walk first, then register labels in sorted folder order, whatever the split folders.
    let mut found: Vec<(Option<Split>, String, Vec<PathBuf>)> = Vec::new();
    for (split, dir) in groups {
        for label_dir in read_dir_sorted(&dir)?.into_iter().filter(|p| p.is_dir()) {
            let folder = label_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut files = Vec::new();
            collect_images(&label_dir, &mut files, 0)?;
            if !files.is_empty() {
                found.push((split, folder, files));
            }
        }
    }
    let mut folders: Vec<&String> = found.iter().map(|(_, f, _)| f).collect();
    folders.sort();
    folders.dedup();
    let ids: HashMap<String, usize> = folders
        .into_iter()
        .map(|f| {
            let text = mapping
                .get(f)
                .cloned()
                .unwrap_or_else(|| f.replace('_', " "));
            (f.clone(), b.label(&text))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    for (split, folder, files) in found {
        let label = ids[&folder];
        for f in files {
            let key = f
                .strip_prefix(root)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            b.push(ImageSource::File(f), Vec::new(), Some(label), split, key);
        }
    }
    b.finish(root, opts)
}

/// Depth limit of the recursive walk (guards against symlink loops).
const MAX_DEPTH: usize = 16;

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            collect_images(&p, out, depth + 1)?;
        } else if is_image_path(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads a folder-name to label-text mapping: a JSON object of strings, or text lines
/// `folder<TAB>text` / `folder text` (split at the first tab, else the first space).
pub(crate) fn read_label_map(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    let text = utf8(path, bytes)?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let mut out = HashMap::new();
    if is_json {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| DatasetError::malformed(path, e.line(), format!("invalid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            DatasetError::malformed(
                path,
                1,
                "expected a JSON object {\"folder\": \"label text\"}",
            )
        })?;
        for (k, v) in obj {
            let t = v.as_str().ok_or_else(|| {
                DatasetError::malformed(path, 1, format!("the label text of {k:?} is not a string"))
            })?;
            out.insert(k.clone(), t.to_string());
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('\t')
                .or_else(|| line.split_once(' '))
                .ok_or_else(|| {
                    DatasetError::malformed(path, i + 1, "expected `folder<TAB>label text`")
                })?;
            let v = v.trim();
            if k.is_empty() || v.is_empty() {
                return Err(DatasetError::malformed(
                    path,
                    i + 1,
                    "expected `folder<TAB>label text`",
                ));
            }
            out.insert(k.to_string(), v.to_string());
        }
    }
    if out.is_empty() {
        return Err(DatasetError::BadConfig {
            path: path.to_path_buf(),
            msg: "the label mapping is empty".into(),
        });
    }
    Ok(out)
}
