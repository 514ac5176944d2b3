//! CLIP image preprocessing: decode, orient, convert to RGB, bicubic resize, center crop, normalise.
//!
//! The recipe is the one OpenAI's CLIP and Hugging Face's `CLIPImageProcessor`
//! (`transformers/models/clip/image_processing_clip.py`) apply:
//!
//! 1. decode the file (JPEG, PNG, WebP, BMP, GIF: first frame), apply the EXIF orientation
//!    (what `transformers.image_utils.load_image` does with `PIL.ImageOps.exif_transpose`) and
//!    convert to 8-bit RGB (`PIL.Image.convert("RGB")`: grey is replicated, alpha is dropped,
//!    palettes are expanded);
//! 2. resize so the shortest side equals `image_size`, the other side
//!    `int(image_size * long / short)` (`image_transforms.get_resize_output_image_size`), with
//!    PIL's bicubic filter on `uint8` pixels ([`resize_bicubic`]);
//! 3. center crop `image_size` x `image_size` with `top = (h - s) // 2`, `left = (w - s) // 2`
//!    (`image_transforms.center_crop`);
//! 4. scale to `[0, 1]` by `1/255` and normalise per channel: `(x / 255 - mean) / std`
//!    with [`CLIP_MEAN`] and [`CLIP_STD`], written channel-first (CHW).
//!
//! Steps 2 and 3 are fused: only the pixels of the resized image that survive the crop are
//! computed, which gives exactly the same values (each output pixel of PIL's separable resampler
//! depends only on its own filter taps) at a fraction of the cost.
//!
//! # Where exact equality with the Python reference is impossible
//!
//! The resampler reproduces PIL's `ImagingResample` for 8-bit images bit for bit (same
//! coefficients, same 22-bit fixed point, same rounding and clipping to `uint8` between the
//! horizontal and the vertical pass), so for PNG, BMP, GIF and WebP-lossless inputs the output
//! equals `CLIPImageProcessor`'s up to `f32` rounding of the last normalisation step (~1e-7).
//! The remaining differences come from decoders, not from this module:
//! - JPEG: PIL uses libjpeg(-turbo) (islow IDCT, "fancy" chroma upsampling); `image` uses
//!   zune-jpeg, whose IDCT and upsampling round differently, so decoded pixels may differ by
//!   a few levels. The parity tests bound this at a mean absolute difference of 1/255.
//! - lossy WebP: libwebp's and image-webp's YUV->RGB conversions could differ by one level
//!   (on the committed sample they agree exactly).
//! - 16-bit images: `image` maps a 16-bit sample `v` to `round(v / 257)`; PIL reads 16-bit
//!   RGB PNGs by keeping the high byte (`v >> 8`), at most one level away, and clips 16-bit grey
//!   (mode `I;16`) to 255 when converting to RGB, which turns most of the image white; we keep
//!   the correct scaling on purpose.
//! - Measured on the committed samples (`data/tests/preprocess_parity.rs`): PNG, BMP, GIF and
//!   WebP outputs equal `CLIPImageProcessor`'s exactly; JPEGs differ by 0.30-0.40 levels on
//!   average (at most 4 levels on a pixel), the 16-bit RGB PNG by 0.25 levels.
//! - Images whose EXIF orientation is not applied by the caller on the Python side
//!   (`CLIPImageProcessor` itself ignores EXIF) come out rotated there; we always apply it.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// CLIP's per-channel mean of `[0, 1]` RGB pixels (OpenAI `clip/clip.py` `_transform`,
/// `OPENAI_DATASET_MEAN` in open_clip).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];

/// CLIP's per-channel standard deviation of `[0, 1]` RGB pixels (`OPENAI_DATASET_STD`).
#[allow(clippy::excessive_precision)] // digits as published by OpenAI, rounded to f32 here
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Input resolution of the ViT-B/32 and ViT-B/16 CLIP models.
pub const CLIP_IMAGE_SIZE: u32 = 224;

/// Largest image (width x height) decoded by default: 100 megapixels. Larger images are refused
/// from their header, before any pixel buffer is allocated ([`ImageError::TooLarge`]).
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Why an image could not be read. Every message is one line that names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The path does not exist.
    #[error("{file}: no such file")]
    NotFound {
        /// The path or record name.
        file: String,
    },
    /// The path is a directory where an image file was expected.
    #[error("{file}: is a directory, expected an image file")]
    IsDirectory {
        /// The path or record name.
        file: String,
    },
    /// The file or record has zero bytes.
    #[error("{file}: empty file (0 bytes), expected an image")]
    Empty {
        /// The path or record name.
        file: String,
    },
    /// Reading the file failed (permissions, I/O error).
    #[error("{file}: cannot read: {reason}")]
    Io {
        /// The path or record name.
        file: String,
        /// The operating system's message.
        reason: String,
    },
    /// The bytes do not start like any image format this crate decodes.
    #[error("{file}: not an image (no JPEG, PNG, WebP, BMP or GIF signature)")]
    NotAnImage {
        /// The path or record name.
        file: String,
    },
    /// A recognised image format using a feature the decoder does not support.
    #[error("{file}: unsupported image: {reason}")]
    UnsupportedFormat {
        /// The path or record name.
        file: String,
        /// What the decoder reported.
        reason: String,
    },
    /// The file ends before the image data does.
    #[error("{file}: truncated image: {reason}")]
    Truncated {
        /// The path or record name.
        file: String,
        /// What is missing.
        reason: String,
    },
    /// The image data is malformed.
    #[error("{file}: corrupt image: {reason}")]
    Corrupt {
        /// The path or record name.
        file: String,
        /// What the decoder reported.
        reason: String,
    },
    /// The header announces more pixels than the configured limit
    /// ([`Preprocessor::max_pixels`], [`DEFAULT_MAX_PIXELS`] by default).
    #[error("{file}: image is {width}x{height} pixels, over the limit of {limit} pixels")]
    TooLarge {
        /// The path or record name.
        file: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The pixel limit in force.
        limit: u64,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ImageError>;

/// CLIP preprocessing settings. Build it with [`Preprocessor::clip`].
#[derive(Clone, Debug)]
pub struct Preprocessor {
    /// Side of the square model input (224 for ViT-B/32); the shortest side is resized to it.
    pub image_size: u32,
    /// Per-channel mean subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Images with more pixels than this are refused before decoding.
    pub max_pixels: u64,
}

impl Preprocessor {
    /// CLIP's recipe at `image_size` (224 for the ViT-B models) with [`CLIP_MEAN`], [`CLIP_STD`]
    /// and [`DEFAULT_MAX_PIXELS`].
    ///
    /// # Panics
    /// If `image_size` is 0.
    pub fn clip(image_size: u32) -> Self {
        assert!(image_size > 0, "image_size must be positive");
        Self {
            image_size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }

    /// Number of floats one preprocessed image occupies: `3 * image_size^2`.
    pub fn output_len(&self) -> usize {
        let s = self.image_size as usize;
        3 * s * s
    }

    /// Reads and decodes an image file to 8-bit RGB with its EXIF orientation applied.
    /// The pixel limit is checked from the header before any pixel buffer is allocated.
    pub fn decode_path(&self, path: &Path) -> Result<RgbImage> {
        let file = path.display().to_string();
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound { file })
            }
            Err(e) => {
                return Err(ImageError::Io {
                    file,
                    reason: one_line(&e.to_string()),
                })
            }
        };
        if meta.is_dir() {
            return Err(ImageError::IsDirectory { file });
        }
        if meta.len() == 0 {
            return Err(ImageError::Empty { file });
        }
        let bytes = std::fs::read(path).map_err(|e| ImageError::Io {
            file: file.clone(),
            reason: one_line(&e.to_string()),
        })?;
        self.decode_bytes(&bytes, &file)
    }

    /// Decodes an image held in memory (a webdataset member, a CIFAR record) to 8-bit RGB with
    /// its EXIF orientation applied; `name` identifies the record in errors.
    pub fn decode_bytes(&self, bytes: &[u8], name: &str) -> Result<RgbImage> {
        let file = || name.to_string();
        if bytes.is_empty() {
            return Err(ImageError::Empty { file: file() });
        }
        let format = image::guess_format(bytes)
            .ok()
            .filter(|f| {
                matches!(
                    f,
                    ImageFormat::Jpeg
                        | ImageFormat::Png
                        | ImageFormat::WebP
                        | ImageFormat::Bmp
                        | ImageFormat::Gif
                )
            })
            .ok_or_else(|| ImageError::NotAnImage { file: file() })?;
        if format == ImageFormat::Jpeg {
            check_jpeg_complete(bytes).map_err(|reason| ImageError::Truncated {
                file: file(),
                reason: reason.to_string(),
            })?;
        }
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        // The pixel limit below replaces image's default 512 MiB allocation cap.
        reader.limits(Limits::no_limits());
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| map_image_error(e, name))?;
        let (width, height) = decoder.dimensions();
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(ImageError::TooLarge {
                file: file(),
                width,
                height,
                limit: self.max_pixels,
            });
        }
        if width == 0 || height == 0 {
            return Err(ImageError::Corrupt {
                file: file(),
                reason: format!("header says {width}x{height} pixels"),
            });
        }
        // A malformed EXIF block is not worth refusing the picture for: keep it unrotated.
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, name))?;
        img.apply_orientation(orientation);
        Ok(img.into_rgb8())
    }

    /// Resizes the shortest side to `image_size` with PIL's bicubic filter and crops the center
    /// `image_size` x `image_size` square, on `uint8` pixels exactly like `CLIPImageProcessor`
    /// (see the module documentation). Only the pixels inside the crop are computed.
    pub fn resize_crop(&self, img: &RgbImage) -> RgbImage {
        let s = self.image_size;
        let (w, h) = img.dimensions();
        let (new_w, new_h) = shortest_side_size(w, h, s);
        // `image_transforms.center_crop`: top = (h - s) // 2, left = (w - s) // 2.
        let left = (new_w - s) / 2;
        let top = (new_h - s) / 2;
        resample_window(img, new_w, new_h, left, top, s, s)
    }

    /// Writes `img` (already `image_size` x `image_size`) as normalised CHW floats
    /// `(x / 255 - mean[c]) / std[c]` into `out`.
    ///
    /// # Panics
    /// If `img` is not `image_size` x `image_size` or `out.len() != 3 * image_size^2`.
    pub fn normalize_into(&self, img: &RgbImage, out: &mut [f32]) {
        let s = self.image_size;
        assert_eq!(
            img.dimensions(),
            (s, s),
            "normalize_into expects an image_size square image"
        );
        let plane = (s as usize) * (s as usize);
        assert_eq!(
            out.len(),
            3 * plane,
            "normalize_into: output must hold 3 * image_size^2 floats"
        );
        // One table per channel: 768 divisions instead of 3 per pixel.
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        let px = img.as_raw().chunks_exact(3);
        for (i, p) in px.enumerate() {
            r_out[i] = lut[0][p[0] as usize];
            g_out[i] = lut[1][p[1] as usize];
            b_out[i] = lut[2][p[2] as usize];
        }
    }

    /// [`resize_crop`](Self::resize_crop) then [`normalize_into`](Self::normalize_into) into `out`
    /// (length `3 * image_size^2`), for filling a batch buffer in place.
    ///
    /// # Panics
    /// If `out.len() != 3 * image_size^2`.
    pub fn preprocess_into(&self, img: &RgbImage, out: &mut [f32]) {
        let cropped = self.resize_crop(img);
        self.normalize_into(&cropped, out);
    }

    /// [`resize_crop`](Self::resize_crop) then [`normalize_into`](Self::normalize_into):
    /// a CHW `Vec` of `3 * image_size^2` floats.
    pub fn preprocess(&self, img: &RgbImage) -> Vec<f32> {
        let mut out = vec![0f32; self.output_len()];
        self.preprocess_into(img, &mut out);
        out
    }

    /// [`decode_path`](Self::decode_path) then [`preprocess`](Self::preprocess).
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        let img = self.decode_path(path)?;
        Ok(self.preprocess(&img))
    }

    /// [`decode_bytes`](Self::decode_bytes) then [`preprocess`](Self::preprocess).
    pub fn load_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let img = self.decode_bytes(bytes, name)?;
        Ok(self.preprocess(&img))
    }
}

/// Output size of "resize the shortest side to `size`" as `transformers`
/// (`get_resize_output_image_size(default_to_square=False)`) and torchvision compute it:
/// the long side becomes `int(size * long / short)` (truncated).
pub fn shortest_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((f64::from(size) * f64::from(long)) / f64::from(short)) as u32;
    let new_long = new_long.max(size);
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Resizes `img` to `width` x `height` with PIL's bicubic filter (`Image.resize(..,
/// Image.BICUBIC)`, `libImaging/Resample.c`): the Keys cubic kernel with `a = -0.5`, support 2,
/// widened by the scale factor when shrinking (antialiasing), coefficients normalised and
/// quantised to 22-bit fixed point, horizontal pass then vertical pass, each rounding and clipping
/// to `uint8`. The output equals PIL's bit for bit.
///
/// # Panics
/// If `width` or `height` is 0.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(
        width > 0 && height > 0,
        "resize_bicubic: target size must be positive"
    );
    resample_window(img, width, height, 0, 0, width, height)
}

/// PIL's fixed-point precision for 8-bit images: `PRECISION_BITS = 32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;

/// PIL's bicubic kernel (`bicubic_filter` in `Resample.c`, Keys with `a = -0.5`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Filter taps of one axis for the output positions `first..first + count` of a resize from
/// `in_size` to `out_size` (`precompute_coeffs` + `normalize_coeffs_8bpc` in `Resample.c`).
struct Taps {
    /// Per output position: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Taps per output position (row stride of `weights`).
    ksize: usize,
    /// Fixed-point weights, `ksize` per output position.
    weights: Vec<i32>,
}

impl Taps {
    fn new(in_size: u32, out_size: u32, first: u32, count: u32) -> Self {
        const SUPPORT: f64 = 2.0;
        let scale = f64::from(in_size) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(count as usize);
        let mut weights = vec![0i32; ksize * count as usize];
        let mut k = vec![0f64; ksize];
        for (i, xx) in (first..first + count).enumerate() {
            let center = (f64::from(xx) + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C casts truncate toward zero; the clamp to 0 makes that equal to floor here.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[i * ksize..i * ksize + ksize];
            let one = f64::from(1u32 << PRECISION_BITS);
            for x in 0..n {
                let w = if ww != 0.0 { k[x] / ww } else { k[x] };
                // normalize_coeffs_8bpc: round half away from zero.
                row[x] = if w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                };
            }
            bounds.push((xmin, n));
        }
        Self {
            bounds,
            ksize,
            weights,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + n])
    }
}

/// Horizontal taps laid out for RGB rows: each tap weight repeated for the three channels and
/// padded with zero weights to whole groups of [`GROUP`] pixels, so one output pixel is a
/// fixed-width multiply-add over `3 * GROUP` bytes that the compiler turns into SIMD. The integer
/// sums are the same as PIL's (addition order does not matter in `i32`, and PIL's own `i32`
/// accumulators bound the range), so the result stays bit-exact.
struct RgbTaps {
    taps: Taps,
    /// Per output position: number of `GROUP`-pixel chunks, or 0 when the padded window would
    /// run past the end of the row (then the plain loop is used).
    chunks: Vec<usize>,
    /// `3 * GROUP * max_chunks` expanded weights per output position.
    expanded: Vec<i32>,
    stride: usize,
}

const GROUP: usize = 4;
const LANES: usize = 3 * GROUP;

impl RgbTaps {
    fn new(taps: Taps, in_w: usize) -> Self {
        let max_chunks = taps.ksize.div_ceil(GROUP);
        let stride = max_chunks * LANES;
        let count = taps.bounds.len();
        let mut chunks = Vec::with_capacity(count);
        let mut expanded = vec![0i32; stride * count];
        for i in 0..count {
            let (start, k) = taps.taps(i);
            let n = k.len().div_ceil(GROUP);
            let fits = start + n * GROUP <= in_w;
            chunks.push(if fits { n } else { 0 });
            for (j, &w) in k.iter().enumerate() {
                expanded[i * stride + 3 * j..i * stride + 3 * j + 3].fill(w);
            }
        }
        Self {
            taps,
            chunks,
            expanded,
            stride,
        }
    }

    /// Output pixel `i` of the horizontal pass over one RGB row.
    #[inline]
    fn apply(&self, row: &[u8], i: usize) -> [u8; 3] {
        let half = 1i32 << (PRECISION_BITS - 1);
        let (start, k) = self.taps.taps(i);
        let n = self.chunks[i];
        if n == 0 {
            let pixels = &row[start * 3..(start + k.len()) * 3];
            let (mut r, mut g, mut b) = (half, half, half);
            for (p, &w) in pixels.chunks_exact(3).zip(k) {
                r += i32::from(p[0]) * w;
                g += i32::from(p[1]) * w;
                b += i32::from(p[2]) * w;
            }
            return [clip8(r), clip8(g), clip8(b)];
        }
        let window = &row[start * 3..start * 3 + n * LANES];
        let weights = &self.expanded[i * self.stride..i * self.stride + n * LANES];
        let mut acc = [0i32; LANES];
        for (p, w) in window.chunks_exact(LANES).zip(weights.chunks_exact(LANES)) {
            // Fixed-size views: no bounds checks, one vector multiply-add per chunk.
            let p: &[u8; LANES] = p.try_into().expect("chunk of LANES bytes");
            let w: &[i32; LANES] = w.try_into().expect("chunk of LANES weights");
            for l in 0..LANES {
                acc[l] += i32::from(p[l]) * w[l];
            }
        }
        let mut sum = [half; 3];
        for (l, a) in acc.iter().enumerate() {
            sum[l % 3] += a;
        }
        [clip8(sum[0]), clip8(sum[1]), clip8(sum[2])]
    }
}

/// `clip8` of `Resample.c`: drop the fixed-point fraction (arithmetic shift) and clip to 0..=255.
#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `img` to `out_w` x `out_h` like PIL and returns only the window
/// `left..left + crop_w`, `top..top + crop_h` of the result.
fn resample_window(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    left: u32,
    top: u32,
    crop_w: u32,
    crop_h: u32,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    debug_assert!(left + crop_w <= out_w && top + crop_h <= out_h);
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    let src = img.as_raw();
    let half = 1i32 << (PRECISION_BITS - 1);

    if !need_h && !need_v {
        return image::imageops::crop_imm(img, left, top, crop_w, crop_h).to_image();
    }

    // Horizontal pass: rows `y_first..y_last` of the source (those the vertical taps read),
    // columns of the crop window only. `rows` is the intermediate uint8 image, as in PIL.
    let vert = need_v.then(|| Taps::new(in_h, out_h, top, crop_h));
    let (y_first, y_last) = match &vert {
        Some(t) => {
            let (s0, _) = t.bounds[0];
            let (sl, nl) = t.bounds[crop_h as usize - 1];
            (s0, sl + nl)
        }
        None => (top as usize, (top + crop_h) as usize),
    };
    let mid_w = crop_w as usize;
    let mid_h = y_last - y_first;
    let stride_in = in_w as usize * 3;
    let mid: Vec<u8> = if need_h {
        let horiz = RgbTaps::new(Taps::new(in_w, out_w, left, crop_w), in_w as usize);
        let mut mid = vec![0u8; mid_w * mid_h * 3];
        for (row_out, y) in mid.chunks_exact_mut(mid_w * 3).zip(y_first..y_last) {
            let row_in = &src[y * stride_in..(y + 1) * stride_in];
            for (xx, px) in row_out.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&horiz.apply(row_in, xx));
            }
        }
        mid
    } else {
        let x0 = left as usize * 3;
        let mut mid = Vec::with_capacity(mid_w * mid_h * 3);
        for y in y_first..y_last {
            mid.extend_from_slice(&src[y * stride_in + x0..y * stride_in + x0 + mid_w * 3]);
        }
        mid
    };

    let Some(vert) = vert else {
        return RgbImage::from_raw(crop_w, crop_h, mid).expect("buffer length matches");
    };
    // Vertical pass over whole rows: contiguous multiply-adds the compiler vectorises.
    let row_len = mid_w * 3;
    let mut out = vec![0u8; row_len * crop_h as usize];
    let mut acc = vec![0i32; row_len];
    for (yy, row_out) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, k) = vert.taps(yy);
        acc.fill(half);
        for (j, &w) in k.iter().enumerate() {
            let y = start + j - y_first;
            let row_in = &mid[y * row_len..(y + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(row_in) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in row_out.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(crop_w, crop_h, out).expect("buffer length matches")
}

/// A baseline or progressive JPEG must end its entropy-coded data with an EOI marker
/// (`FF D9`). zune-jpeg fills a truncated scan with grey instead of failing, where libjpeg
/// (and so PIL) raises "image file is truncated"; this check restores the error.
/// The EOI is looked for after the first SOS marker so that the EOI of an embedded EXIF
/// thumbnail (in APP1, before SOS) is not mistaken for it.
fn check_jpeg_complete(bytes: &[u8]) -> std::result::Result<(), &'static str> {
    let mut i = 2; // after SOI
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while i < bytes.len() && bytes[i] == 0xFF && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        if i + 4 > bytes.len() {
            return Err("file ends inside the JPEG header");
        }
        if bytes[i] != 0xFF {
            // Not a marker where one must be: let the decoder report the corruption.
            return Ok(());
        }
        let marker = bytes[i + 1];
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        if marker == 0xDA {
            let scan = &bytes[(i + 2 + len).min(bytes.len())..];
            return if scan.windows(2).rev().any(|w| w == [0xFF, 0xD9]) {
                Ok(())
            } else {
                Err("no end-of-image marker after the image data")
            };
        }
        if marker == 0xD9 {
            return Err("end-of-image marker before any image data");
        }
        i += 2 + len;
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn map_image_error(e: image::ImageError, name: &str) -> ImageError {
    let file = name.to_string();
    let reason = one_line(&e.to_string());
    match e {
        image::ImageError::Unsupported(_) => ImageError::UnsupportedFormat { file, reason },
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated { file, reason }
        }
        image::ImageError::Limits(_) => ImageError::UnsupportedFormat { file, reason },
        _ if reason.to_lowercase().contains("eof") || reason.to_lowercase().contains("truncat") => {
            ImageError::Truncated { file, reason }
        }
        _ => ImageError::Corrupt { file, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_side_truncates_like_python_int() {
        // int(224 * 320 / 240) = int(298.67) = 298
        assert_eq!(shortest_side_size(320, 240, 224), (298, 224));
        assert_eq!(shortest_side_size(240, 320, 224), (224, 298));
        assert_eq!(shortest_side_size(100, 100, 224), (224, 224));
        // int(32 * 333 / 100) = int(106.56) = 106
        assert_eq!(shortest_side_size(100, 333, 32), (32, 106));
    }

    #[test]
    fn bicubic_kernel_values() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        // a = -0.5 at x = 0.5: (1.5 * 0.5 - 2.5) * 0.25 + 1 = 0.5625
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        // at x = 1.5: ((1.5 - 5) * 1.5 + 8) * 1.5 - 4 = -0.125, times -0.5 = -0.0625
        assert!((bicubic(-1.5) + 0.0625).abs() < 1e-12);
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (inp, out) in [(320u32, 298u32), (640, 224), (10, 37), (7, 3)] {
            let t = Taps::new(inp, out, 0, out);
            for i in 0..out as usize {
                let (_, k) = t.taps(i);
                let sum: i64 = k.iter().map(|&w| i64::from(w)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{inp}->{out} at {i}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
        let out = resize_bicubic(&img, 11, 50);
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
    }

    #[test]
    fn same_size_is_identity_and_crop_is_centered() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(resize_bicubic(&img, 5, 3), img);
        let p = Preprocessor::clip(3);
        // 5x3 -> shortest side already 3: crop left = (5 - 3) // 2 = 1.
        let c = p.resize_crop(&img);
        assert_eq!(c.get_pixel(0, 0).0, [1, 0, 7]);
        assert_eq!(c.get_pixel(2, 2).0, [3, 2, 7]);
    }

    #[test]
    fn crop_window_equals_full_resize_then_crop() {
        let img = RgbImage::from_fn(41, 29, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x * y) % 251) as u8])
        });
        let full = resize_bicubic(&img, 22, 16);
        let win = resample_window(&img, 22, 16, 3, 0, 16, 16);
        assert_eq!(
            win,
            image::imageops::crop_imm(&full, 3, 0, 16, 16).to_image()
        );
    }

    #[test]
    fn grouped_taps_equal_plain_fixed_point_sums() {
        let mut state = 12345u32;
        let row: Vec<u8> = (0..97 * 3)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        for out in [3u32, 10, 31, 50, 96, 97, 200] {
            let taps = Taps::new(97, out, 0, out);
            let plain: Vec<[u8; 3]> = (0..out as usize)
                .map(|i| {
                    let (start, k) = taps.taps(i);
                    let mut s = [1i32 << (PRECISION_BITS - 1); 3];
                    for (j, &w) in k.iter().enumerate() {
                        for c in 0..3 {
                            s[c] += i32::from(row[(start + j) * 3 + c]) * w;
                        }
                    }
                    [clip8(s[0]), clip8(s[1]), clip8(s[2])]
                })
                .collect();
            let grouped = RgbTaps::new(Taps::new(97, out, 0, out), 97);
            assert!(grouped.chunks.iter().any(|&c| c > 0));
            for (i, p) in plain.iter().enumerate() {
                assert_eq!(grouped.apply(&row, i), *p, "97 -> {out}, pixel {i}");
            }
        }
    }

    #[test]
    fn normalize_maps_mean_to_zero() {
        let p = Preprocessor::clip(1);
        let img = RgbImage::from_pixel(1, 1, image::Rgb([0, 255, 128]));
        let mut out = [0f32; 3];
        p.normalize_into(&img, &mut out);
        assert!((out[0] - (-CLIP_MEAN[0] / CLIP_STD[0])).abs() < 1e-6);
        assert!((out[1] - (1.0 - CLIP_MEAN[1]) / CLIP_STD[1]).abs() < 1e-6);
        assert!((out[2] - (128.0 / 255.0 - CLIP_MEAN[2]) / CLIP_STD[2]).abs() < 1e-6);
    }

    #[test]
    fn jpeg_completeness_check() {
        // SOI, APP0 (len 4), SOS (len 2), data, EOI.
        let ok = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xDA, 0, 2, 9, 9, 0xFF, 0xD9,
        ];
        assert!(check_jpeg_complete(&ok).is_ok());
        assert!(check_jpeg_complete(&ok[..14]).is_err());
        assert!(check_jpeg_complete(&ok[..5]).is_err());
    }
}
