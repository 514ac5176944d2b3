//! Image-text retrieval metrics: recall@k, mean rank and median rank in both directions.
//!
//! Definition (CLIP_benchmark `clip_benchmark/metrics/zeroshot_retrieval.py`, `recall_at_k`):
//! a query *hits at k* if any of its positives is among its k most similar candidates, and
//! recall@k is the fraction of queries that hit. Every caption of an image is a positive of that
//! image, so image-to-text recall@k counts an image as found as soon as one of its captions is in
//! the top k. Equivalently, with `rank` the 1-based position of the query's best-ranked positive,
//! recall@k = mean(rank <= k); mean rank and median rank summarise the same ranks (median as
//! `np.median`, the mean of the two middle ranks for an even count).
//!
//! Ranks are exact: every query is scored against every candidate by blocked matrix products
//! ([`super::scores`]). Equal scores are ordered by candidate index (lower first), so results are
//! deterministic.

use serde::{Deserialize, Serialize};

use super::{check_count, median, rows_of, Result};
use crate::index::scores::{for_each_query_scores, ranks_before};

/// Which texts are positives of which images.
#[derive(Debug, Clone, Copy)]
pub enum Positives<'a> {
    /// Caption datasets: text `j` is a caption of image `text_to_image[j]`. An image's positives
    /// are all its captions; a caption's only positive is its image.
    Captions {
        /// For every text, the index of the image it describes.
        text_to_image: &'a [usize],
    },
    /// Label datasets: image `i` and text `j` are positives when
    /// `image_labels[i] == text_labels[j]` (typically one prompt text per class).
    Labels {
        /// Class of every image.
        image_labels: &'a [usize],
        /// Class of every text.
        text_labels: &'a [usize],
    },
}

/// The retrieval metrics of one direction (queries of one modality against the other).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionReport {
    /// Fraction of queries with a positive in the top 1.
    pub recall_at_1: f64,
    /// Fraction of queries with a positive in the top 5.
    pub recall_at_5: f64,
    /// Fraction of queries with a positive in the top 10.
    pub recall_at_10: f64,
    /// Mean over queries of the 1-based rank of the best-ranked positive.
    pub mean_rank: f64,
    /// Median over queries of that rank (`np.median`).
    pub median_rank: f64,
    /// Queries counted (those with at least one positive).
    pub queries: usize,
    /// Queries left out because no candidate is their positive (e.g. a class with no image).
    pub queries_without_positive: usize,
    /// Number of candidates each query was ranked against.
    pub candidates: usize,
    /// Per counted query, the rank of its best positive (in query order). Not serialised.
    #[serde(skip)]
    pub ranks: Vec<usize>,
}

impl DirectionReport {
    fn from_ranks(ranks: Vec<Option<usize>>, candidates: usize) -> Self {
        let without = ranks.iter().filter(|r| r.is_none()).count();
        let ranks: Vec<usize> = ranks.into_iter().flatten().collect();
        let n = ranks.len();
        let mean_rank = if n == 0 {
            f64::NAN
        } else {
            ranks.iter().map(|&r| r as f64).sum::<f64>() / n as f64
        };
        let mut report = DirectionReport {
            recall_at_1: 0.0,
            recall_at_5: 0.0,
            recall_at_10: 0.0,
            mean_rank,
            median_rank: median(&ranks).unwrap_or(f64::NAN),
            queries: n,
            queries_without_positive: without,
            candidates,
            ranks,
        };
        report.recall_at_1 = report.recall_at(1);
        report.recall_at_5 = report.recall_at(5);
        report.recall_at_10 = report.recall_at(10);
        report
    }

    /// recall@k: the fraction of counted queries whose best positive ranks within the top `k`
    /// (NaN when no query was counted).
    pub fn recall_at(&self, k: usize) -> f64 {
        if self.ranks.is_empty() {
            return f64::NAN;
        }
        self.ranks.iter().filter(|&&r| r <= k).count() as f64 / self.ranks.len() as f64
    }

    /// `(k, recall@k)` for `k = 1..=max_k` (capped at the number of candidates), for plotting.
    pub fn recall_curve(&self, max_k: usize) -> Vec<(usize, f64)> {
        let max_k = max_k.min(self.candidates).max(1);
        let mut hist = vec![0usize; max_k + 1];
        for &r in &self.ranks {
            if r <= max_k {
                hist[r] += 1;
            }
        }
        let n = self.ranks.len().max(1) as f64;
        let mut hits = 0;
        (1..=max_k)
            .map(|k| {
                hits += hist[k];
                (k, hits as f64 / n)
            })
            .collect()
    }
}

/// Retrieval metrics in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalReport {
    /// Image queries retrieving texts ("text retrieval" in CLIP_benchmark's naming).
    pub image_to_text: DirectionReport,
    /// Text queries retrieving images ("image retrieval" in CLIP_benchmark's naming).
    pub text_to_image: DirectionReport,
}

/// 1-based rank of the best-ranked positive in `scores`, or `None` without positives.
///
/// With `p` the best positive (highest score, lowest index among equals), the rank is one plus
/// the number of non-positives ranking before `p`.
fn best_positive_rank(scores: &[f32], is_positive: impl Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<(f32, usize)> = None;
    for (j, &s) in scores.iter().enumerate() {
        if is_positive(j) && best.is_none_or(|(bs, bj)| ranks_before(s, j, bs, bj)) {
            best = Some((s, j));
        }
    }
    let (bs, bj) = best?;
    let before = scores
        .iter()
        .enumerate()
        .filter(|&(j, &s)| !is_positive(j) && ranks_before(s, j, bs, bj))
        .count();
    Some(before + 1)
}

/// Computes image-to-text and text-to-image retrieval metrics.
///
/// `images` is `N x dim`, `texts` is `M x dim`, both row-major and L2-normalised (scores are dot
/// products). `positives` says which texts belong to which images.
pub fn retrieval_report(
    images: &[f32],
    texts: &[f32],
    dim: usize,
    positives: Positives<'_>,
) -> Result<RetrievalReport> {
    let n = rows_of("image embeddings", images, dim)?;
    let m = rows_of("text embeddings", texts, dim)?;
    // Reduce both kinds of positives to keys: image i and text j match when keys are equal.
    let (image_keys, text_keys): (Vec<usize>, Vec<usize>) = match positives {
        Positives::Captions { text_to_image } => {
            check_count("text_to_image", text_to_image.len(), m)?;
            if let Some((index, &value)) = text_to_image.iter().enumerate().find(|(_, &i)| i >= n) {
                return Err(super::EvalError::OutOfRange {
                    what: "text_to_image",
                    index,
                    value,
                    bound: n,
                });
            }
            ((0..n).collect(), text_to_image.to_vec())
        }
        Positives::Labels {
            image_labels,
            text_labels,
        } => {
            check_count("image_labels", image_labels.len(), n)?;
            check_count("text_labels", text_labels.len(), m)?;
            (image_labels.to_vec(), text_labels.to_vec())
        }
    };
    let i2t = for_each_query_scores(images, texts, dim, |i, s| {
        best_positive_rank(s, |j| text_keys[j] == image_keys[i])
    });
    let t2i = for_each_query_scores(texts, images, dim, |j, s| {
        best_positive_rank(s, |i| image_keys[i] == text_keys[j])
    });
    Ok(RetrievalReport {
        image_to_text: DirectionReport::from_ranks(i2t, m),
        text_to_image: DirectionReport::from_ranks(t2i, n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_caption_ranks() {
        // Integer vectors keep every dot product exact, so the ties below are real ties.
        let images = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let texts = [4.0, 1.0, -1.0, 3.0, -3.0, 1.0, 1.0, 3.0];
        let t2i = [0, 0, 1, 2];
        let r = retrieval_report(
            &images,
            &texts,
            2,
            Positives::Captions {
                text_to_image: &t2i,
            },
        )
        .unwrap();
        // Image 0 scores t = (4,-1,-3,1): order t0,t3,t1,t2; positives t0,t1 -> rank 1.
        // Image 1 scores (1,3,1,3): order t1,t3,t0,t2 (ties by index); positive t2 -> rank 4.
        // Image 2 scores (-4,1,3,-1): order t2,t1,t3,t0; positive t3 -> rank 3.
        assert_eq!(r.image_to_text.ranks, vec![1, 4, 3]);
        assert!((r.image_to_text.recall_at_1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.image_to_text.recall_at_5, 1.0);
        assert!((r.image_to_text.mean_rank - 8.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.image_to_text.median_rank, 3.0);
        // Text 0 scores images (4,1,-4) -> image 0 rank 1. Text 1 (-1,3,1) -> image 0 rank 3.
        // Text 2 (-3,1,3) -> image 1 rank 2. Text 3 (1,3,-1) -> image 2 rank 3.
        assert_eq!(r.text_to_image.ranks, vec![1, 3, 2, 3]);
        assert_eq!(r.text_to_image.median_rank, 2.5);
        assert_eq!(r.text_to_image.recall_at(2), 0.5);
        assert_eq!(
            r.text_to_image.recall_curve(10),
            vec![(1, 0.25), (2, 0.5), (3, 1.0)]
        );
    }

    #[test]
    fn labels_without_positive_are_counted_apart() {
        let images = [1.0, 0.0, 0.0, 1.0];
        let texts = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let r = retrieval_report(
            &images,
            &texts,
            2,
            Positives::Labels {
                image_labels: &[0, 1],
                text_labels: &[1, 0, 2],
            },
        )
        .unwrap();
        // Image 0 scores (1,0,1): order t0,t2,t1; its positive t1 (label 0) -> rank 3.
        // Image 1 scores (0,1,1): order t1,t2,t0; its positive t0 -> rank 3.
        assert_eq!(r.image_to_text.ranks, vec![3, 3]);
        assert_eq!(r.text_to_image.queries, 2);
        assert_eq!(r.text_to_image.queries_without_positive, 1);
        // Text 0 (label 1) scores images (1,0) -> image 1 rank 2; text 1 likewise rank 2.
        assert_eq!(r.text_to_image.ranks, vec![2, 2]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let e = retrieval_report(
            &[1.0, 0.0],
            &[1.0],
            2,
            Positives::Captions { text_to_image: &[] },
        );
        assert!(e.unwrap_err().to_string().contains("text embeddings"));
        let e = retrieval_report(
            &[1.0, 0.0],
            &[1.0, 0.0],
            2,
            Positives::Captions {
                text_to_image: &[3],
            },
        );
        assert!(e.unwrap_err().to_string().contains("out of range"));
        let e = retrieval_report(
            &[f32::NAN, 0.0],
            &[1.0, 0.0],
            2,
            Positives::Captions {
                text_to_image: &[0],
            },
        );
        assert!(e.unwrap_err().to_string().contains("not finite"));
    }
}
