//! webdataset `.tar` shards (Breuel et al., <https://github.com/webdataset/webdataset>), as
//! img2dataset writes them: members `key.jpg` (or `.jpeg`, `.png`, `.webp`) beside `key.txt`
//! (the caption) and/or `key.json` (whose `caption` or `text` field is used when there is no
//! `.txt`). The key is the member path up to the first dot of its file name.
//!
//! Each shard is read once as a stream, front to back, without seeking. Captions are kept; an
//! image is kept as its shard path and byte range ([`ImageSource::FileRange`]), so opening a
//! large set costs one sequential read and little memory, and the loader reads each image with
//! one positioned read. Only uncompressed tar is read. Samples without an image (img2dataset's
//! failed downloads) are left out; an image without a caption is an error naming the shard
//! and the member.

use super::{read_dir_sorted, IMAGE_EXTENSIONS};
use crate::dataset::{
    Dataset, DatasetBuilder, DatasetError, DatasetKind, ImageSource, OpenOptions, Result,
};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Longest caption member read (bytes).
const MAX_TEXT_BYTES: u64 = 1 << 20;

#[derive(Default)]
struct Sample {
    image: Option<(u64, u64, String)>,
    txt: Option<String>,
    json_text: Option<String>,
    entry: usize,
}

pub(super) fn open(path: &Path, opts: &OpenOptions) -> Result<Dataset> {
    let (shards, root): (Vec<PathBuf>, PathBuf) = if path.is_file() {
        (
            vec![path.to_path_buf()],
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        )
    } else {
        let s = read_dir_sorted(path)?
            .into_iter()
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar")))
            .collect();
        (s, path.to_path_buf())
    };
    let mut b = DatasetBuilder::new(super::dataset_name(path), &root, DatasetKind::Captions);
    for shard in &shards {
        read_shard(shard, &mut b)?;
    }
    b.finish(path, opts)
}

/// (key, last extension lower-cased) of a member name.
fn split_key(name: &str) -> Option<(String, String)> {
    let (dir, file) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    let dot = file.find('.')?;
    let ext = file.rsplit('.').next()?.to_ascii_lowercase();
    Some((format!("{dir}{}", &file[..dot]), ext))
}

fn read_shard(shard: &Path, b: &mut DatasetBuilder) -> Result<()> {
    let f = std::fs::File::open(shard).map_err(|e| DatasetError::io(shard, e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 16, f));
    let bad = |n: usize, msg: String| {
        DatasetError::malformed(shard, n, format!("tar member #{n}: {msg}"))
    };
    let mut order: Vec<String> = Vec::new();
    let mut samples: HashMap<String, Sample> = HashMap::new();
    let entries = archive.entries().map_err(|e| bad(0, e.to_string()))?;
    for (i, entry) in entries.enumerate() {
        let n = i + 1;
        let mut e = entry.map_err(|e| bad(n, e.to_string()))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e
            .path()
            .map_err(|err| bad(n, err.to_string()))?
            .to_string_lossy()
            .into_owned();
        let Some((key, ext)) = split_key(&name) else {
            continue;
        };
        let is_image = IMAGE_EXTENSIONS.contains(&ext.as_str());
        if !is_image && ext != "txt" && ext != "json" {
            continue;
        }
        if !samples.contains_key(&key) {
            order.push(key.clone());
        }
        let s = samples.entry(key).or_insert_with(|| Sample {
            entry: n,
            ..Sample::default()
        });
        let size = e.size();
        if is_image {
            s.image = Some((e.raw_file_position(), size, name));
            continue;
        }
        if size > MAX_TEXT_BYTES {
            return Err(bad(
                n,
                format!("{name} is {size} bytes, longer than a caption can be"),
            ));
        }
        let mut buf = Vec::with_capacity(size as usize);
        e.read_to_end(&mut buf)
            .map_err(|err| bad(n, format!("{name}: {err}")))?;
        let text =
            String::from_utf8(buf).map_err(|_| bad(n, format!("{name} is not UTF-8 text")))?;
        if ext == "txt" {
            s.txt = Some(text.trim().to_string());
        } else {
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|err| bad(n, format!("{name}: invalid JSON: {err}")))?;
            s.json_text = ["caption", "text"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_str()))
                .map(|t| t.trim().to_string());
        }
    }
    let shard_name = shard
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for key in order {
        let s = samples
            .remove(&key)
            .expect("every key in order has a sample");
        let Some((offset, len, member)) = s.image else {
            continue;
        };
        let caption = s.txt.or(s.json_text).filter(|t| !t.is_empty()).ok_or_else(|| bad(s.entry, format!("sample {key:?} has an image but no caption (.txt, or .json with \"caption\")")))?;
        let t = b.text(&caption);
        let image = ImageSource::FileRange {
            path: shard.to_path_buf(),
            offset,
            len,
            name: format!("{}/{member}", shard.display()),
        };
        b.push(image, vec![t], None, None, format!("{shard_name}/{key}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_first_dot() {
        assert_eq!(
            split_key("00/000001.jpg"),
            Some(("00/000001".into(), "jpg".into()))
        );
        assert_eq!(split_key("a.seg.PNG"), Some(("a".into(), "png".into())));
        assert_eq!(split_key("noext"), None);
    }
}
