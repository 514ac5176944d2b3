//! Training augmentation: random resized crop and horizontal flip.
//!
//! The crop follows torchvision's `RandomResizedCrop.get_params`
//! (`torchvision/transforms/transforms.py`): up to 10 tries of an area fraction drawn uniformly
//! from `scale` and an aspect ratio drawn log-uniformly from `ratio`, width
//! `round(sqrt(area * ratio))`, height `round(sqrt(area / ratio))`, top-left drawn uniformly
//! where it fits; if no try fits, the largest center crop whose aspect is clamped into `ratio`.
//! The crop is then resized to the model's square input with PIL's bicubic filter
//! ([`crate::preprocess::resize_bicubic`]), as torchvision's `resized_crop` does on PIL images.
//! open_clip trains with `scale = (0.9, 1.0)` (`open_clip/transform.py`,
//! `AugmentationCfg.scale`), the default here; the flip probability defaults to 0.5.
//! Evaluation uses no augmentation (the plain CLIP resize + center crop).

use crate::preprocess::{resize_bicubic, Preprocessor};
use image::RgbImage;
use rand::Rng;

/// Augmentation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Range of the crop's area as a fraction of the image's area.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub hflip: f64,
}

impl Default for Augment {
    /// `scale (0.9, 1.0)` (open_clip), `ratio (3/4, 4/3)` (torchvision), flip 0.5.
    fn default() -> Self {
        Self {
            scale: (0.9, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: 0.5,
        }
    }
}

/// A crop rectangle: left, top, width, height in pixels.
pub type Rect = (u32, u32, u32, u32);

impl Augment {
    /// torchvision's `RandomResizedCrop.get_params` for a `width` x `height` image.
    pub fn crop_params<R: Rng>(&self, width: u32, height: u32, rng: &mut R) -> Rect {
        let (w, h) = (f64::from(width), f64::from(height));
        let area = w * h;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, lr0, lr1).exp();
            let cw = (target * aspect).sqrt().round();
            let ch = (target / aspect).sqrt().round();
            if cw > 0.0 && ch > 0.0 && cw <= w && ch <= h {
                let (cw, ch) = (cw as u32, ch as u32);
                let top = rng.random_range(0..=height - ch);
                let left = rng.random_range(0..=width - cw);
                return (left, top, cw, ch);
            }
        }
        let in_ratio = w / h;
        let (cw, ch) = if in_ratio < self.ratio.0.min(self.ratio.1) {
            (w, (w / self.ratio.0.min(self.ratio.1)).round())
        } else if in_ratio > self.ratio.0.max(self.ratio.1) {
            ((h * self.ratio.0.max(self.ratio.1)).round(), h)
        } else {
            (w, h)
        };
        let (cw, ch) = ((cw as u32).clamp(1, width), (ch as u32).clamp(1, height));
        ((width - cw) / 2, (height - ch) / 2, cw, ch)
    }

    /// A random resized crop of `img` to `pre.image_size` square, flipped with probability
    /// `hflip`. The draws are, in order: crop, then flip.
    pub fn apply<R: Rng>(&self, pre: &Preprocessor, img: &RgbImage, rng: &mut R) -> RgbImage {
        let s = pre.image_size;
        let (left, top, cw, ch) = self.crop_params(img.width(), img.height(), rng);
        let cropped = image::imageops::crop_imm(img, left, top, cw, ch).to_image();
        let mut out = resize_bicubic(&cropped, s, s);
        if rng.random_bool(self.hflip.clamp(0.0, 1.0)) {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        out
    }
}

fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crop_stays_inside_and_respects_scale() {
        let a = Augment::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let (x, y, w, h) = a.crop_params(500, 375, &mut rng);
            assert!(x + w <= 500 && y + h <= 375 && w > 0 && h > 0);
            let frac = f64::from(w * h) / (500.0 * 375.0);
            assert!(frac > 0.85 && frac <= 1.0, "{frac}");
        }
    }

    #[test]
    fn fallback_is_center_crop_clamped_to_ratio() {
        // A 1000x10 strip cannot hold any crop of ratio <= 4/3 with 90 % of the area.
        let a = Augment::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(
            a.crop_params(1000, 10, &mut rng),
            ((1000 - 13) / 2, 0, 13, 10)
        );
    }

    #[test]
    fn flip_mirrors_columns() {
        let pre = Preprocessor::clip(4);
        let mut img = RgbImage::new(4, 4);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let always = Augment {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            hflip: 1.0,
        };
        let out = always.apply(&pre, &img, &mut rand::rngs::StdRng::seed_from_u64(3));
        assert_eq!(out.get_pixel(3, 0)[0], 255);
        assert_eq!(out.get_pixel(0, 0)[0], 0);
    }
}
