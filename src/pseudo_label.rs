//! Pseudo-labels from zero-shot CLIP: each unlabelled image gets the label texts CLIP ranks
//! highest (probabilities `softmax(logit_scale * cos(image, class))`, classes ensembled over
//! prompt templates as `siam classify` does), a confidence threshold and a per-class cap pick the
//! images to keep, and the result is a captions table `siam train --data` reads.
//!
//! When the images have true labels, [`coverage_curve`] and [`reliability`] measure how far
//! the pseudo-labels can be trusted: accuracy against coverage (the selective-classification
//! curve of El-Yaniv & Wiener 2010: keep the most confident fraction, score what is kept) and
//! the reliability diagram with its expected calibration error (Guo et al., "On Calibration of
//! Modern Neural Networks", ICML 2017, eqs. 2-3).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors of the pseudo-label table.
#[derive(Debug, thiserror::Error)]
pub enum PseudoLabelError {
    /// An option value that cannot work.
    #[error("{0}")]
    Option(String),
    /// An image lies outside the folder of the table, where the captions reader cannot reach it.
    #[error("{table}: image {image} is not inside the table's folder {folder} (captions tables name images relative to their folder); write the table into a folder that holds the images")]
    Outside {
        /// The table.
        table: PathBuf,
        /// The image.
        image: PathBuf,
        /// The table's folder.
        folder: PathBuf,
    },
    /// The table could not be written.
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    /// A table to read is malformed.
    #[error("{path}:{line}: {why}")]
    Table {
        /// The table.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A table could not be read.
    #[error("{path}: {cause}")]
    Read {
        /// The table.
        path: PathBuf,
        /// The cause (printed, not chained).
        cause: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, PseudoLabelError>;

/// The labels of one image, most probable first.
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoLabel {
    /// The item (image) index in the caller's list.
    pub item: usize,
    /// `(class, probability)`, by falling probability (ties: lower class first), `k` entries.
    pub top: Vec<(usize, f32)>,
}

impl PseudoLabel {
    /// The top-`k` classes of one probability row.
    pub fn from_probabilities(item: usize, probs: &[f32], k: usize) -> Self {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        order.truncate(k.max(1));
        Self {
            item,
            top: order.into_iter().map(|c| (c, probs[c])).collect(),
        }
    }

    /// The top-1 class and its probability.
    pub fn best(&self) -> (usize, f32) {
        self.top[0]
    }
}

/// Which pseudo-labels to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    /// Keep an image only if its top-1 probability is at least this.
    pub min_confidence: f32,
    /// Keep at most this many images per (top-1) class: the most confident ones.
    pub per_class: Option<usize>,
}

/// The positions (into `labels`) kept by `sel`, in input order: first the threshold on the top-1
/// probability, then per top-1 class the `per_class` most confident (ties: earlier item first).
pub fn select(labels: &[PseudoLabel], sel: Selection) -> Vec<usize> {
    let mut kept: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i].best().1 >= sel.min_confidence)
        .collect();
    if let Some(cap) = sel.per_class {
        let mut by_class: HashMap<usize, Vec<usize>> = HashMap::new();
        for &i in &kept {
            by_class.entry(labels[i].best().0).or_default().push(i);
        }
        let mut capped = Vec::new();
        for (_, mut v) in by_class {
            v.sort_by(|&a, &b| {
                labels[b]
                    .best()
                    .1
                    .total_cmp(&labels[a].best().1)
                    .then(a.cmp(&b))
            });
            v.truncate(cap);
            capped.extend(v);
        }
        capped.sort_unstable();
        kept = capped;
    }
    kept
}

/// One point of the accuracy-against-coverage curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CoveragePoint {
    /// Share of the images kept.
    pub coverage: f64,
    /// Images kept.
    pub kept: usize,
    /// The confidence threshold that keeps them (the lowest kept top-1 probability).
    pub threshold: f32,
    /// Top-1 accuracy of the kept images.
    pub accuracy: f64,
}

/// Accuracy against coverage: for each coverage `c` in `coverages` (fractions in `(0, 1]`), the
/// `ceil(c * n)` most confident images (ties: earlier first) and the top-1 accuracy among them.
pub fn coverage_curve(
    confidence: &[f32],
    correct: &[bool],
    coverages: &[f64],
) -> Vec<CoveragePoint> {
    let n = confidence.len().min(correct.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]).then(a.cmp(&b)));
    let mut hits = vec![0usize; n + 1];
    for (j, &i) in order.iter().enumerate() {
        hits[j + 1] = hits[j] + usize::from(correct[i]);
    }
    coverages
        .iter()
        .filter(|_| n > 0)
        .map(|&c| {
            let kept = ((c * n as f64).ceil() as usize).clamp(1, n);
            CoveragePoint {
                coverage: kept as f64 / n as f64,
                kept,
                threshold: confidence[order[kept - 1]],
                accuracy: hits[kept] as f64 / kept as f64,
            }
        })
        .collect()
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// Lower edge (exclusive, except for the first bin).
    pub lo: f32,
    /// Upper edge (inclusive).
    pub hi: f32,
    /// Images whose top-1 probability falls in the bin.
    pub count: usize,
    /// Their mean top-1 probability.
    pub confidence: f64,
    /// Their top-1 accuracy.
    pub accuracy: f64,
}

/// The reliability diagram: `bins` equal-width confidence bins `(lo, hi]` (the first includes 0),
/// and the expected calibration error `ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`
/// (Guo et al. 2017, eq. 3).
pub fn reliability(
    confidence: &[f32],
    correct: &[bool],
    bins: usize,
) -> (Vec<ReliabilityBin>, f64) {
    let bins = bins.max(1);
    let mut count = vec![0usize; bins];
    let mut conf = vec![0f64; bins];
    let mut hit = vec![0usize; bins];
    for (&p, &c) in confidence.iter().zip(correct) {
        let b = ((p.clamp(0.0, 1.0) as f64 * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        conf[b] += p as f64;
        hit[b] += usize::from(c);
    }
    let n: usize = count.iter().sum();
    let mut ece = 0.0;
    let out = (0..bins)
        .map(|b| {
            let (m, a) = if count[b] > 0 {
                (conf[b] / count[b] as f64, hit[b] as f64 / count[b] as f64)
            } else {
                (f64::NAN, f64::NAN)
            };
            if count[b] > 0 {
                ece += count[b] as f64 / n as f64 * (a - m).abs();
            }
            ReliabilityBin {
                lo: b as f32 / bins as f32,
                hi: (b + 1) as f32 / bins as f32,
                count: count[b],
                confidence: m,
                accuracy: a,
            }
        })
        .collect();
    (out, ece)
}

/// One row of the pseudo-label table.
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoRow {
    /// The image file.
    pub image: PathBuf,
    /// The top-1 label text.
    pub label: String,
    /// Its probability.
    pub confidence: f32,
    /// The other top-k labels and probabilities (`label=p` joined by `|`), may be empty.
    pub alternatives: String,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Header of the table: `image,label,confidence,top_k`, a label table `siam train --data` reads
/// (the captions reader takes the `image` and `label` columns; `confidence` is read back by
/// [`read_confidences`] for `--weight-by confidence`).
pub const HEADER: &str = "image,label,confidence,top_k";

/// Writes the table to `path` (temporary file, then rename), image paths relative to its folder.
pub fn write_table(path: &Path, rows: &[PseudoRow]) -> Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let abs_folder = std::path::absolute(&folder).unwrap_or(folder.clone());
    let mut lines = Vec::with_capacity(rows.len());
    for r in rows {
        let abs = std::path::absolute(&r.image).unwrap_or(r.image.clone());
        let rel = abs
            .strip_prefix(&abs_folder)
            .map_err(|_| PseudoLabelError::Outside {
                table: path.to_path_buf(),
                image: r.image.clone(),
                folder: abs_folder.clone(),
            })?;
        let rel = rel.to_string_lossy().replace('\\', "/");
        lines.push(format!(
            "{},{},{},{}",
            csv_field(&rel),
            csv_field(&r.label),
            r.confidence,
            csv_field(&r.alternatives)
        ));
    }
    crate::io::atomic_write(path, |w| {
        writeln!(w, "{HEADER}")?;
        for l in &lines {
            writeln!(w, "{l}")?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Splits one CSV line (RFC 4180 quoting, no line breaks inside fields).
fn split_csv_line(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if cur.is_empty() => quoted = true,
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    out.push(cur);
    Some(out)
}

/// The `confidence` column of a table with `image` and `confidence` columns, keyed by the image
/// file resolved against the table's folder: the weights of `siam train --weight-by confidence`.
pub fn read_confidences(path: &Path) -> Result<HashMap<PathBuf, f32>> {
    let text = std::fs::read_to_string(path).map_err(|cause| PseudoLabelError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let bad = |line: usize, why: String| PseudoLabelError::Table {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| bad(1, "empty table".into()))?;
    let header = split_csv_line(header.trim_start_matches('\u{feff}'))
        .ok_or_else(|| bad(1, "unbalanced quotes".into()))?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (img, conf) = match (col("image"), col("confidence")) {
        (Some(i), Some(c)) => (i, c),
        _ => {
            return Err(bad(
                1,
                "--weight-by confidence needs `image` and `confidence` columns (as siam pseudo-label writes)".into(),
            ))
        }
    };
    let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out = HashMap::new();
    for (i, l) in lines {
        let f = split_csv_line(l).ok_or_else(|| bad(i + 1, "unbalanced quotes".into()))?;
        let (Some(im), Some(c)) = (f.get(img), f.get(conf)) else {
            return Err(bad(
                i + 1,
                format!("{} fields where the header has {}", f.len(), header.len()),
            ));
        };
        let w: f32 = c
            .trim()
            .parse()
            .ok()
            .filter(|w: &f32| w.is_finite() && *w >= 0.0)
            .ok_or_else(|| bad(i + 1, format!("confidence {c:?} is not a number >= 0")))?;
        out.insert(folder.join(im.trim()), w);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pl(item: usize, class: usize, p: f32) -> PseudoLabel {
        PseudoLabel {
            item,
            top: vec![(class, p)],
        }
    }

    #[test]
    fn top_k_is_sorted_with_ties_to_the_lower_class() {
        let l = PseudoLabel::from_probabilities(7, &[0.2, 0.5, 0.1, 0.2], 3);
        assert_eq!(l.top, vec![(1, 0.5), (0, 0.2), (3, 0.2)]);
    }

    #[test]
    fn threshold_then_per_class_cap_keeps_the_most_confident() {
        let labels = vec![
            pl(0, 0, 0.9),
            pl(1, 0, 0.4),
            pl(2, 1, 0.7),
            pl(3, 0, 0.95),
            pl(4, 0, 0.6),
            pl(5, 1, 0.5),
        ];
        let all = Selection {
            min_confidence: 0.0,
            per_class: None,
        };
        assert_eq!(select(&labels, all), vec![0, 1, 2, 3, 4, 5]);
        let thr = Selection {
            min_confidence: 0.5,
            per_class: None,
        };
        assert_eq!(select(&labels, thr), vec![0, 2, 3, 4, 5]);
        let cap = Selection {
            min_confidence: 0.5,
            per_class: Some(2),
        };
        // Class 0 above 0.5: 0.9, 0.95, 0.6 -> keep 0.95 and 0.9; class 1: both.
        assert_eq!(select(&labels, cap), vec![0, 2, 3, 5]);
        let one = Selection {
            min_confidence: 0.0,
            per_class: Some(1),
        };
        assert_eq!(select(&labels, one), vec![2, 3]);
    }

    #[test]
    fn coverage_and_calibration_by_hand() {
        let conf = [0.9, 0.8, 0.3, 0.6];
        let correct = [true, false, false, true];
        let c = coverage_curve(&conf, &correct, &[0.25, 0.5, 1.0]);
        // Sorted: 0.9 (T), 0.8 (F), 0.6 (T), 0.3 (F).
        assert_eq!(c[0].kept, 1);
        assert_eq!(c[0].accuracy, 1.0);
        assert_eq!(c[1].accuracy, 0.5);
        assert_eq!(c[1].threshold, 0.8);
        assert_eq!(c[2].accuracy, 0.5);
        let (bins, ece) = reliability(&conf, &correct, 2);
        // Bin (0, .5]: 0.3 F -> conf .3, acc 0. Bin (.5, 1]: .9 T, .8 F, .6 T -> conf .7667, acc .6667.
        assert_eq!(bins[0].count, 1);
        assert_eq!(bins[1].count, 3);
        let want = 0.25 * 0.3 + 0.75 * ((0.9 + 0.8 + 0.6) / 3.0 - 2.0 / 3.0);
        assert!((ece - want).abs() < 1e-6, "{ece} vs {want}");
    }

    #[test]
    fn table_round_trip_and_outside_images() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("imgs/a, b.png");
        let table = d.path().join("pseudo.csv");
        let rows = vec![PseudoRow {
            image: img.clone(),
            label: "red \"circle\"".into(),
            confidence: 0.75,
            alternatives: "x=0.2|y=0.05".into(),
        }];
        write_table(&table, &rows).unwrap();
        let text = std::fs::read_to_string(&table).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        let w = read_confidences(&table).unwrap();
        assert_eq!(w[&d.path().join("imgs/a, b.png")], 0.75);
        let other = tempfile::tempdir().unwrap();
        let far = PseudoRow {
            image: other.path().join("x.png"),
            ..rows[0].clone()
        };
        assert!(matches!(
            write_table(&table, &[far]),
            Err(PseudoLabelError::Outside { .. })
        ));
    }
}
