//! Classification metrics on embeddings: zero-shot accuracy against class text embeddings, and
//! the nearest-neighbour metrics of pytorch-metric-learning's `AccuracyCalculator`.

use serde::{Deserialize, Serialize};

use super::{check_count, rows_of, EvalError, Result};
use crate::index::scores::{for_each_query_scores, ranks_before, top_k};

/// Zero-shot classification results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZeroShotReport {
    /// Fraction of images whose most similar class text is their class.
    pub top1: f64,
    /// Fraction of images whose class is among the 5 most similar class texts (1.0 when there
    /// are at most 5 classes).
    pub top5: f64,
    /// Mean over classes present among the images of the per-class top-1 recall (CLIP_benchmark's
    /// `mean_per_class_recall`, i.e. balanced accuracy).
    pub mean_per_class_recall: f64,
    /// Images scored.
    pub images: usize,
    /// Classes (rows of the class text embeddings).
    pub classes: usize,
}

/// Zero-shot classification: image `i` is scored against every class embedding and its rank is
/// that of its true class (ties broken towards the lower class index).
///
/// This is CLIP_benchmark's `zeroshot_classification.py` (`accuracy(logits, target, topk=(1, 5))`
/// with `logits = image_features @ classifier`). `class_texts` is `C x dim`: one embedding per
/// class, already averaged over prompt templates and re-normalised by the caller, as in CLIP's
/// prompt ensembling. `labels[i] < C` is image `i`'s class.
pub fn zero_shot(
    images: &[f32],
    class_texts: &[f32],
    dim: usize,
    labels: &[usize],
) -> Result<ZeroShotReport> {
    let n = rows_of("image embeddings", images, dim)?;
    let c = rows_of("class text embeddings", class_texts, dim)?;
    check_count("labels", labels.len(), n)?;
    check_range("labels", labels, c)?;
    let ranks = for_each_query_scores(images, class_texts, dim, |i, s| {
        let y = labels[i];
        1 + (0..c)
            .filter(|&j| j != y && ranks_before(s[j], j, s[y], y))
            .count()
    });
    let frac = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / n as f64;
    let mut hits = vec![0usize; c];
    let mut counts = vec![0usize; c];
    for (&y, &r) in labels.iter().zip(&ranks) {
        counts[y] += 1;
        hits[y] += usize::from(r == 1);
    }
    let present: Vec<usize> = (0..c).filter(|&k| counts[k] > 0).collect();
    let mean_per_class_recall = present
        .iter()
        .map(|&k| hits[k] as f64 / counts[k] as f64)
        .sum::<f64>()
        / present.len() as f64;
    Ok(ZeroShotReport {
        top1: frac(1),
        top5: frac(5),
        mean_per_class_recall,
        images: n,
        classes: c,
    })
}

/// Nearest-neighbour metrics of a labelled embedding set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighbourReport {
    /// Fraction of queries whose nearest other sample has their label.
    pub precision_at_1: f64,
    /// Mean over queries of (same-label samples among the R nearest) / R.
    pub r_precision: f64,
    /// Mean over queries of MAP@R.
    pub map_at_r: f64,
    /// Queries counted: samples whose label has at least one other sample. NaN metrics when 0.
    pub queries: usize,
}

/// precision@1, R-precision and MAP@R exactly as pytorch-metric-learning 2.9.0's
/// `AccuracyCalculator().get_accuracy(x, labels)` computes them (`utils/accuracy_calculator.py`,
/// reference = query set, `ref_includes_query=True`, `avg_of_avgs=False`), using cosine
/// similarity (dot products of the given unit vectors).
///
/// For each sample `i` whose label occurs `R + 1 >= 2` times, the other samples are ranked by
/// similarity (ties: lower index first) and, with `rel_k` = 1 when the k-th neighbour shares the
/// label:
/// - precision@1 = `rel_1`;
/// - R-precision = `(1/R) sum_{k<=R} rel_k`;
/// - MAP@R = `(1/R) sum_{k<=R} rel_k * (sum_{t<=k} rel_t) / k` (Musgrave et al., "A Metric
///   Learning Reality Check", ECCV 2020).
///
/// Samples whose label occurs once ("lone" queries) are not queries but stay as references.
/// Each metric is the mean over queries.
pub fn neighbour_metrics(
    embeddings: &[f32],
    dim: usize,
    labels: &[usize],
) -> Result<NeighbourReport> {
    let n = rows_of("embeddings", embeddings, dim)?;
    check_count("labels", labels.len(), n)?;
    let mut count = std::collections::HashMap::<usize, usize>::new();
    for &l in labels {
        *count.entry(l).or_default() += 1;
    }
    let per_query = for_each_query_scores(embeddings, embeddings, dim, |i, s| {
        let r = count[&labels[i]] - 1;
        if r == 0 {
            return None;
        }
        let top = top_k(s, r, Some(i));
        let (mut cum, mut ap, mut hits) = (0usize, 0f64, 0usize);
        for (k, &j) in top.iter().enumerate() {
            if labels[j] == labels[i] {
                cum += 1;
                hits += 1;
                ap += cum as f64 / (k + 1) as f64;
            }
        }
        let p1 = f64::from(u8::from(labels[top[0]] == labels[i]));
        Some((p1, hits as f64 / r as f64, ap / r as f64))
    });
    let q: Vec<(f64, f64, f64)> = per_query.into_iter().flatten().collect();
    let mean = |f: fn(&(f64, f64, f64)) -> f64| {
        if q.is_empty() {
            f64::NAN
        } else {
            q.iter().map(f).sum::<f64>() / q.len() as f64
        }
    };
    Ok(NeighbourReport {
        precision_at_1: mean(|t| t.0),
        r_precision: mean(|t| t.1),
        map_at_r: mean(|t| t.2),
        queries: q.len(),
    })
}

pub(crate) fn check_range(what: &'static str, values: &[usize], bound: usize) -> Result<()> {
    match values.iter().enumerate().find(|(_, &v)| v >= bound) {
        Some((index, &value)) => Err(EvalError::OutOfRange {
            what,
            index,
            value,
            bound,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_shot_hand_made() {
        // Classes along x, y, -x; images with exact integer dot products.
        let classes = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        // Image 0 (3,1), class 0: scores (3,1,-3) -> rank 1.
        // Image 1 (1,1), class 1: scores (1,1,-1) -> tie with class 0 (lower index) -> rank 2.
        // Image 2 (1,2), class 2: scores (1,2,-1) -> rank 3.
        // Image 3 (-2,1), class 2: scores (-2,1,2) -> rank 1.
        let images = [3.0, 1.0, 1.0, 1.0, 1.0, 2.0, -2.0, 1.0];
        let r = zero_shot(&images, &classes, 2, &[0, 1, 2, 2]).unwrap();
        assert_eq!(r.top1, 0.5);
        assert_eq!(r.top5, 1.0);
        // Per class: 1/1, 0/1, 1/2 -> mean 0.5.
        assert_eq!(r.mean_per_class_recall, 0.5);
        assert!(zero_shot(&images, &classes, 2, &[0, 1, 3, 2]).is_err());
    }

    #[test]
    fn neighbour_metrics_hand_made() {
        // Points (x, 0): the similarity of two samples is the product of their x, so the
        // ranks below are easy to read off.
        let pts: [(f32, usize); 5] = [(1.0, 0), (0.9, 0), (0.8, 1), (0.7, 0), (-1.0, 2)];
        let emb: Vec<f32> = pts.iter().flat_map(|&(x, _)| [x, 0.0]).collect();
        let labels: Vec<usize> = pts.iter().map(|p| p.1).collect();
        let r = neighbour_metrics(&emb, 2, &labels).unwrap();
        // Label 0 has 3 samples (R = 2); labels 1 and 2 are lone, so 3 queries.
        // Query 0 (1.0): others by score 0.9(0),0.8(1),0.7(0),-1(2): top2 = [s1 (rel), s2] ->
        //   p1 = 1, rp = 1/2, map = (1/1)/2 = 0.5.
        // Query 1 (0.9): scores 0.9,0.72,0.63,-0.9 -> order s0,s2,s3: top2 = [s0 rel, s2] ->
        //   p1 = 1, rp = 0.5, map = 0.5.
        // Query 3 (0.7): order s0,s1,s2 -> top2 both rel -> p1 = 1, rp = 1, map = (1 + 1)/2 = 1.
        assert_eq!(r.queries, 3);
        assert_eq!(r.precision_at_1, 1.0);
        assert!((r.r_precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.map_at_r - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn map_at_r_counts_late_hits() {
        // Query 0 (label 0, R = 2) has a different label first and a same-label second:
        // rel = [0, 1] -> R-precision 1/2, MAP@R (1/2)/2 = 0.25.
        let xs = [1.0f32, 0.5, 0.9, 0.4, -1.0];
        let labels = [0, 0, 1, 0, 1];
        let emb: Vec<f32> = xs.iter().flat_map(|&x| [x, 0.0]).collect();
        let r = neighbour_metrics(&emb, 2, &labels).unwrap();
        // Query 0: others 0.9(l1), 0.5(l0), 0.4(l0), -1(l1) -> top2 [l1, l0]: p1 0, rp .5, map .25
        // Query 1 (0.5): scores .5,.45,.2,-.5 -> order s0(l0), s2(l1): p1 1, rp .5, map .5
        // Query 2 (0.9, label 1, R=1): scores .9,.45,.36,-.9 -> top1 s0 (l0): 0, 0, 0
        // Query 3 (0.4): order s0(l0), s2(l1): p1 1, rp .5, map .5
        // Query 4 (-1, label 1, R=1): scores -1,-.5,-.9,-.4 -> top1 s3 (l0): 0, 0, 0
        assert_eq!(r.queries, 5);
        assert!((r.precision_at_1 - 2.0 / 5.0).abs() < 1e-12);
        assert!((r.r_precision - 1.5 / 5.0).abs() < 1e-12);
        assert!((r.map_at_r - 1.25 / 5.0).abs() < 1e-12);
    }
}
