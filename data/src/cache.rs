//! A decode-once cache of images, for datasets that fit in memory.
//!
//! Decoding a JPEG costs far more than cropping and normalising it, and a small fine-tuning set
//! is read every epoch. The cache keeps, per record, the image already resized so its shortest
//! side is the model's input size (PIL bicubic, [`crate::preprocess::resize_bicubic`]), as
//! 8-bit RGB: about `3 * S * S * aspect` bytes (150 KB at S = 224 for a 4:3 photo), a quarter
//! of the float tensor. From it:
//! - evaluation (no augmentation) takes the center crop, which gives exactly the pixels of
//!   [`crate::preprocess::Preprocessor::resize_crop`] (PIL's resampler computes each output pixel
//!   from its own taps, so resize-then-crop equals the fused crop);
//! - training augmentation crops from the cached image instead of the full-resolution one,
//!   a cheaper approximation (the crop is resized from fewer pixels).
//!
//! Entries are added until `budget_bytes` is used up; later records are decoded every time.
//! One cache belongs to one dataset (record indices are its keys) and one image size.

use image::RgbImage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Shortest-side-resized images by record index, up to a byte budget. Shared between loader
/// threads (`Arc<PixelCache>`) and across epochs.
#[derive(Debug)]
pub struct PixelCache {
    image_size: u32,
    budget_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    images: HashMap<usize, Arc<RgbImage>>,
    used: u64,
    hits: u64,
    misses: u64,
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Images held.
    pub entries: usize,
    /// Bytes held.
    pub bytes: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to decode.
    pub misses: u64,
}

impl PixelCache {
    /// An empty cache for model input size `image_size`, holding at most `budget_bytes`.
    pub fn new(image_size: u32, budget_bytes: u64) -> Self {
        Self {
            image_size,
            budget_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The model input size the cached images are resized for.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    /// The cached image of `record`, counting a hit or a miss.
    pub fn get(&self, record: usize) -> Option<Arc<RgbImage>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let found = g.images.get(&record).cloned();
        if found.is_some() {
            g.hits += 1;
        } else {
            g.misses += 1;
        }
        found
    }

    /// Stores `img` for `record` if the budget allows; returns whether it was stored.
    pub fn insert(&self, record: usize, img: Arc<RgbImage>) -> bool {
        let bytes = img.as_raw().len() as u64;
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.images.contains_key(&record) {
            return true;
        }
        if g.used + bytes > self.budget_bytes {
            return false;
        }
        g.used += bytes;
        g.images.insert(record, img);
        true
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        CacheStats {
            entries: g.images.len(),
            bytes: g.used,
            hits: g.hits,
            misses: g.misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respects_budget_and_counts() {
        let c = PixelCache::new(2, 30);
        let img = Arc::new(RgbImage::new(2, 3)); // 18 bytes
        assert!(c.insert(0, img.clone()));
        assert!(!c.insert(1, img.clone()), "36 bytes would exceed 30");
        assert!(c.get(0).is_some());
        assert!(c.get(1).is_none());
        assert_eq!(
            c.stats(),
            CacheStats {
                entries: 1,
                bytes: 18,
                hits: 1,
                misses: 1
            }
        );
    }
}
