//! Captions tables: CSV (RFC 4180 quoting), TSV (no quoting, as CC3M/CC12M `.tsv`) or JSONL.
//!
//! Columns are found by header name: image (`image`, `image_path`, `filepath`, `file`,
//! `filename`, `file_name`, `path`, `img`), text (`text`, `caption`, `title`, `sentence`,
//! `raw`), and the optional `label` (or `class`) and `split`. A CSV/TSV without such a header
//! is read as `image, text`. A table with a label column and no text column is a label
//! dataset. JSONL objects use the same keys; their text may be a string or a list of strings.
//! Several rows naming one image give it several captions. Image paths are relative to the
//! table's folder (or [`OpenOptions::image_root`]) and may not leave it.

use super::{resolve_under, utf8};
use crate::dataset::{
    Dataset, DatasetBuilder, DatasetError, DatasetKind, ImageSource, OpenOptions, Result, Split,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const IMAGE_KEYS: &[&str] = &[
    "image",
    "image_path",
    "filepath",
    "file",
    "filename",
    "file_name",
    "path",
    "img",
];
const TEXT_KEYS: &[&str] = &["text", "caption", "captions", "title", "sentence", "raw"];
const LABEL_KEYS: &[&str] = &["label", "class"];
const SPLIT_KEYS: &[&str] = &["split"];

/// Rows of a delimited table: (1-based line where the row starts, fields).
pub(crate) type Table = Vec<(usize, Vec<String>)>;

/// One parsed row: its 1-based line, the image entry, texts, label and split.
struct Row {
    line: usize,
    image: String,
    texts: Vec<String>,
    label: Option<String>,
    split: Option<String>,
}

pub(super) fn open(path: &Path, opts: &OpenOptions) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    let text = utf8(path, bytes)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (rows, has_text) = match ext.as_str() {
        "jsonl" => parse_jsonl(path, text)?,
        "tsv" => rows_from_table(path, split_tsv(text))?,
        _ => rows_from_table(
            path,
            parse_csv(text, b',')
                .map_err(|(line, msg)| DatasetError::malformed(path, line, msg))?,
        )?,
    };
    let root = match &opts.image_root {
        Some(r) => r.clone(),
        None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let kind = if has_text {
        DatasetKind::Captions
    } else {
        DatasetKind::Labels
    };
    let mut b = DatasetBuilder::new(super::dataset_name(path), &root, kind);
    // Record index of each image seen, or None if it is missing.
    let mut seen: HashMap<PathBuf, Option<(usize, usize)>> = HashMap::new();
    let mut split_of: Vec<Option<Split>> = Vec::new();
    for row in rows {
        let file = resolve_under(&root, &row.image, path, row.line)?;
        let split = match &row.split {
            Some(s) => Some(
                s.parse::<Split>()
                    .map_err(|m| DatasetError::malformed(path, row.line, m))?,
            ),
            None => None,
        };
        let known = match seen.get(&file) {
            Some(None) => continue,
            Some(Some(k)) => Some(*k),
            None if !file.is_file() => {
                b.add_missing(file.clone());
                seen.insert(file, None);
                continue;
            }
            None => None,
        };
        // Texts and labels of missing images are not interned: every text has an image.
        let label = row.label.as_deref().map(|l| b.label(l));
        let texts: Vec<usize> = row.texts.iter().map(|t| b.text(t)).collect();
        match known {
            Some((rec, first_line)) => {
                let r = b.record_mut(rec);
                if r.label != label {
                    return Err(DatasetError::malformed(
                        path,
                        row.line,
                        format!(
                            "image {:?} has another label on line {first_line}",
                            row.image
                        ),
                    ));
                }
                if split_of[rec] != split {
                    return Err(DatasetError::malformed(
                        path,
                        row.line,
                        format!(
                            "image {:?} has another split on line {first_line}",
                            row.image
                        ),
                    ));
                }
                for t in texts {
                    if !r.texts.contains(&t) {
                        r.texts.push(t);
                    }
                }
            }
            None => {
                seen.insert(file.clone(), Some((b.len(), row.line)));
                split_of.push(split);
                b.push(
                    ImageSource::File(file),
                    texts,
                    label,
                    split,
                    row.image.clone(),
                );
            }
        }
    }
    b.finish(path, opts)
}

fn find_col(header: &[String], keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| header.iter().position(|h| h.trim().eq_ignore_ascii_case(k)))
}

/// Rows of a CSV/TSV table (list of (line, fields)), header detected by column names.
fn rows_from_table(path: &Path, table: Table) -> Result<(Vec<Row>, bool)> {
    let mut it = table
        .into_iter()
        .filter(|(_, f)| !(f.len() == 1 && f[0].trim().is_empty()));
    let Some((line0, first)) = it.next() else {
        return Err(DatasetError::Empty(path.to_path_buf()));
    };
    let img = find_col(&first, IMAGE_KEYS);
    let (img, text, label, split, width, data_first) = match img {
        Some(i) => {
            let text = find_col(&first, TEXT_KEYS);
            let label = find_col(&first, LABEL_KEYS);
            if text.is_none() && label.is_none() {
                return Err(DatasetError::malformed(
                    path,
                    line0,
                    format!(
                        "the header has an image column but no text ({}) or label column",
                        TEXT_KEYS.join(", ")
                    ),
                ));
            }
            (
                i,
                text,
                label,
                find_col(&first, SPLIT_KEYS),
                first.len(),
                None,
            )
        }
        None => {
            let named: Vec<&str> = first
                .iter()
                .map(|h| h.trim())
                .filter(|h| {
                    [TEXT_KEYS, LABEL_KEYS, SPLIT_KEYS]
                        .iter()
                        .any(|keys| keys.iter().any(|k| h.eq_ignore_ascii_case(k)))
                })
                .collect();
            if !named.is_empty() {
                return Err(DatasetError::malformed(
                    path,
                    line0,
                    format!(
                        "the header names {} but no image column ({})",
                        named.join(", "),
                        IMAGE_KEYS.join(", ")
                    ),
                ));
            }
            if first.len() < 2 {
                return Err(DatasetError::malformed(
                    path,
                    line0,
                    "expected a header naming an image and a text column, or rows `image,text`",
                ));
            }
            (0, Some(1), None, None, first.len(), Some((line0, first)))
        }
    };
    let mut rows = Vec::new();
    for (line, fields) in data_first.into_iter().chain(it) {
        if fields.len() != width {
            return Err(DatasetError::malformed(
                path,
                line,
                format!("{} fields where the table has {width}", fields.len()),
            ));
        }
        let image = fields[img].trim().to_string();
        if image.is_empty() {
            return Err(DatasetError::malformed(path, line, "empty image path"));
        }
        let texts = match text {
            Some(t) => {
                let t = fields[t].trim();
                if t.is_empty() {
                    return Err(DatasetError::malformed(path, line, "empty caption"));
                }
                vec![t.to_string()]
            }
            None => Vec::new(),
        };
        let label = match label {
            Some(l) => {
                let l = fields[l].trim();
                if l.is_empty() {
                    return Err(DatasetError::malformed(path, line, "empty label"));
                }
                Some(l.to_string())
            }
            None => None,
        };
        let split = split
            .map(|s| fields[s].trim().to_string())
            .filter(|s| !s.is_empty());
        rows.push(Row {
            line,
            image,
            texts,
            label,
            split,
        });
    }
    Ok((rows, text.is_some()))
}

fn parse_jsonl(path: &Path, text: &str) -> Result<(Vec<Row>, bool)> {
    let mut rows = Vec::new();
    let mut any_text = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| DatasetError::malformed(path, line, format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| DatasetError::malformed(path, line, "expected a JSON object"))?;
        let get = |keys: &[&str]| keys.iter().find_map(|k| obj.get(*k));
        let image = get(IMAGE_KEYS)
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                DatasetError::malformed(
                    path,
                    line,
                    format!("no image path (one of {})", IMAGE_KEYS.join(", ")),
                )
            })?
            .trim()
            .to_string();
        let texts = match get(TEXT_KEYS) {
            None => Vec::new(),
            Some(serde_json::Value::String(s)) => vec![s.trim().to_string()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(|s| s.trim().to_string()).ok_or_else(|| {
                        DatasetError::malformed(path, line, "a caption in the list is not a string")
                    })
                })
                .collect::<Result<_>>()?,
            Some(_) => {
                return Err(DatasetError::malformed(
                    path,
                    line,
                    "the text is neither a string nor a list of strings",
                ))
            }
        };
        if texts.iter().any(String::is_empty) {
            return Err(DatasetError::malformed(path, line, "empty caption"));
        }
        let label = match get(LABEL_KEYS) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                Some(s.trim().to_string())
            }
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(DatasetError::malformed(
                    path,
                    line,
                    "the label is not a non-empty string or number",
                ))
            }
        };
        let split = match get(SPLIT_KEYS) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(DatasetError::malformed(
                    path,
                    line,
                    "the split is not a string",
                ))
            }
        };
        let has = !texts.is_empty();
        match any_text {
            None => any_text = Some(has),
            Some(prev) if prev != has => {
                return Err(DatasetError::malformed(
                    path,
                    line,
                    if has {
                        "a caption where earlier rows have none"
                    } else {
                        "no caption where earlier rows have one"
                    },
                ))
            }
            _ => {}
        }
        if !has && label.is_none() {
            return Err(DatasetError::malformed(
                path,
                line,
                format!("no text ({}) and no label", TEXT_KEYS.join(", ")),
            ));
        }
        rows.push(Row {
            line,
            image,
            texts,
            label,
            split,
        });
    }
    if rows.is_empty() {
        return Err(DatasetError::Empty(path.to_path_buf()));
    }
    Ok((rows, any_text.unwrap_or(false)))
}

/// TSV as CC3M writes it: one row per line, fields split at tabs, no quoting.
fn split_tsv(text: &str) -> Table {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            (
                i + 1,
                l.trim_end_matches('\r')
                    .split('\t')
                    .map(str::to_string)
                    .collect(),
            )
        })
        .collect()
}

/// RFC 4180 CSV: fields separated by `delim`, optionally double-quoted, `""` inside quotes is a
/// quote, quoted fields may span lines. Returns (first line of the row, fields) per row, or
/// (line, message) for an unterminated quote or text after a closing quote.
pub(crate) fn parse_csv(text: &str, delim: u8) -> std::result::Result<Table, (usize, String)> {
    let b = text.as_bytes();
    let take = |f: &mut Vec<u8>| {
        String::from_utf8(std::mem::take(f)).expect("split at ASCII bytes of valid UTF-8")
    };
    let (mut rows, mut fields, mut field) = (Vec::new(), Vec::new(), Vec::<u8>::new());
    let (mut line, mut row_line) = (1usize, 1usize);
    let mut row_open = false;
    let mut quoted = false;
    let mut i = 0usize;
    while i < b.len() {
        let c = b[i];
        if !row_open {
            row_line = line;
            row_open = true;
        }
        if c == b'"' && field.is_empty() && !quoted {
            let start = line;
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err((start, "unterminated quoted field".into())),
                    Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                        field.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&x) => {
                        if x == b'\n' {
                            line += 1;
                        }
                        field.push(x);
                        i += 1;
                    }
                }
            }
            match b.get(i) {
                None | Some(b'\n') | Some(b'\r') => {}
                Some(&x) if x == delim => {}
                Some(_) => return Err((line, "text after a closing quote".into())),
            }
            quoted = true;
            continue;
        }
        match c {
            x if x == delim => {
                fields.push(take(&mut field));
                quoted = false;
            }
            b'\r' | b'\n' => {
                fields.push(take(&mut field));
                quoted = false;
                rows.push((row_line, std::mem::take(&mut fields)));
                row_open = false;
                if c == b'\r' && b.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                line += 1;
            }
            x => field.push(x),
        }
        i += 1;
    }
    if row_open {
        fields.push(take(&mut field));
        rows.push((row_line, fields));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(s: &str) -> Vec<(usize, Vec<String>)> {
        parse_csv(s, b',').unwrap()
    }
    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn csv_quotes_and_lines() {
        let r = csv("image,text\na.jpg,\"a dog, running\"\r\nb.jpg,\"say \"\"hi\"\"\nover two lines\"\nc.jpg,\n");
        assert_eq!(r[0], (1, v(&["image", "text"])));
        assert_eq!(r[1], (2, v(&["a.jpg", "a dog, running"])));
        assert_eq!(r[2], (3, v(&["b.jpg", "say \"hi\"\nover two lines"])));
        assert_eq!(r[3], (5, v(&["c.jpg", ""])));
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn csv_round_trips_random_fields() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let alphabet = ['a', 'b', ',', '"', '\n', '\r', ' ', 'é', '\t'];
        for _ in 0..500 {
            let rows: Vec<Vec<String>> = (0..rng.random_range(1..5))
                .map(|_| {
                    (0..3)
                        .map(|_| {
                            (0..rng.random_range(1..6))
                                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                                .collect()
                        })
                        .collect()
                })
                .collect();
            let text: String = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|f| format!("\"{}\"", f.replace('"', "\"\"")))
                        .collect::<Vec<_>>()
                        .join(",")
                        + "\n"
                })
                .collect();
            let parsed: Vec<Vec<String>> = parse_csv(&text, b',')
                .unwrap()
                .into_iter()
                .map(|(_, f)| f)
                .collect();
            assert_eq!(parsed, rows, "{text:?}");
        }
    }

    #[test]
    fn csv_without_final_newline_and_errors() {
        assert_eq!(csv("a,b"), vec![(1, v(&["a", "b"]))]);
        assert_eq!(csv("\"a\",\"\""), vec![(1, v(&["a", ""]))]);
        assert_eq!(parse_csv("x\n\"open,b\n", b',').unwrap_err().0, 2);
        assert_eq!(parse_csv("\"a\"b,c\n", b',').unwrap_err().0, 1);
    }
}
