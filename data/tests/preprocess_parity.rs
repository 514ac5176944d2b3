//! CLIP image preprocessing against Hugging Face's `CLIPImageProcessor` (PIL) and PIL's resize.
//!
//! References: `data/tests/fixtures/preprocess/*.npy`, written by `make_preprocess_fixtures.py`
//! beside them from the images in `tests/fixtures/images/` (`scripts/make_test_images.py`).
//!
//! Where exact equality is impossible, and why:
//! - JPEG and lossy WebP: PIL decodes with libjpeg-turbo / libwebp, `image` with zune-jpeg /
//!   image-webp; IDCT, chroma upsampling and YUV->RGB rounding differ by a few levels on some
//!   pixels. These cases are held to a mean absolute difference <= 1/255 in `[0, 1]` pixel units
//!   (measured: JPEG 0.30-0.40 levels mean, 4 levels max; the lossy WebP sample agrees exactly).
//! - 16-bit RGB PNG: PIL keeps the high byte (`v >> 8`), `image` rounds `v / 257`: <= 1 level
//!   per decoded sample (measured 0.25 levels mean after resizing).
//! - Lossless inputs (PNG, BMP, GIF, lossless WebP): the resampler reproduces PIL's fixed-point
//!   bicubic bit for bit, so the only difference is `f32` rounding of `(x/255 - mean)/std`;
//!   the maximum difference must stay below 1e-4 in `[0, 1]` units (measured: 0).
//! - gray16.png: PIL's own `convert("RGB")` of a 16-bit grey image clips to 255; the reference
//!   converts `round(v / 257)` first (see the fixture script), as siam does.

use std::path::{Path, PathBuf};

use image::RgbImage;
use siam_data::preprocess::{resize_bicubic, ImageError, Preprocessor, CLIP_STD};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn images() -> PathBuf {
    root().join("tests/fixtures/images")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

/// A numpy `.npy` array (version 1/2, little-endian, C order) as raw bytes plus its shape.
fn read_npy(path: &Path) -> (String, Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not a .npy file",
        path.display()
    );
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header
        .split("'descr': '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (descr, shape, bytes[start + header_len..].to_vec())
}

fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let (descr, shape, data) = read_npy(path);
    assert_eq!(descr, "<f4", "{}", path.display());
    (
        shape,
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[derive(serde::Deserialize)]
struct Case {
    image: String,
    size: u32,
    file: String,
    lossless: bool,
}

#[derive(serde::Deserialize)]
struct ResizeCase {
    image: String,
    width: u32,
    height: u32,
    file: String,
}

#[derive(serde::Deserialize)]
struct Manifest {
    cases: Vec<Case>,
    resize: Vec<ResizeCase>,
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn matches_clip_image_processor() {
    let manifest = manifest();
    assert!(manifest.cases.len() >= 12);
    let mut report = Vec::new();
    for case in &manifest.cases {
        let pre = Preprocessor::clip(case.size);
        let ours = pre.load(&images().join(&case.image)).unwrap();
        let (shape, reference) = read_npy_f32(&fixtures().join(&case.file));
        assert_eq!(
            shape,
            vec![3, case.size as usize, case.size as usize],
            "{}",
            case.file
        );
        assert_eq!(ours.len(), reference.len());
        // Back to [0, 1] pixel units: x = v * std + mean.
        let plane = (case.size * case.size) as usize;
        let (mut sum, mut max) = (0f64, 0f64);
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            let c = i / plane;
            let d = f64::from((a - b).abs() * CLIP_STD[c]);
            sum += d;
            max = max.max(d);
        }
        let mean = sum / ours.len() as f64;
        report.push(format!(
            "{:22} {:3}px  mean |diff| = {:.5} levels, max = {:.2} levels",
            case.image,
            case.size,
            mean * 255.0,
            max * 255.0
        ));
        assert!(
            mean <= 1.0 / 255.0,
            "{}: mean abs diff {mean} > 1/255",
            case.file
        );
        if case.lossless {
            assert!(
                max < 1e-4,
                "{}: lossless input must match PIL exactly, max diff {max}",
                case.file
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn resize_bicubic_equals_pil_bit_for_bit() {
    for case in manifest().resize {
        let img = Preprocessor::clip(224)
            .decode_path(&images().join(&case.image))
            .unwrap();
        let ours = resize_bicubic(&img, case.width, case.height);
        let (descr, shape, reference) = read_npy(&fixtures().join(&case.file));
        assert_eq!(descr, "|u1");
        assert_eq!(shape, vec![case.height as usize, case.width as usize, 3]);
        let diff = ours
            .as_raw()
            .iter()
            .zip(&reference)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "{}: {diff} bytes differ from PIL", case.file);
    }
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 200x120 with orientation 6 (rotate 90 clockwise to display).
    let img = Preprocessor::clip(224)
        .decode_path(&images().join("exif_rot6.jpg"))
        .unwrap();
    assert_eq!(img.dimensions(), (120, 200));
}

#[test]
fn animated_gif_uses_first_frame() {
    let pre = Preprocessor::clip(32);
    let img = pre.decode_path(&images().join("animated.gif")).unwrap();
    assert_eq!(img.dimensions(), (64, 64));
    // The second frame is the negative of the first: a light first-frame corner rules it out.
    let (_, reference) = read_npy_f32(&fixtures().join("animated.gif.32.npy"));
    let ours = pre.preprocess(&img);
    assert!((ours[0] - reference[0]).abs() < 1e-4);
}

#[test]
fn decode_bytes_equals_decode_path() {
    let pre = Preprocessor::clip(224);
    let path = images().join("cat_like.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let a = pre.decode_path(&path).unwrap();
    let b: RgbImage = pre.decode_bytes(&bytes, "cat_like.jpg").unwrap();
    assert_eq!(a, b);
}

fn err_of(result: Result<RgbImage, ImageError>) -> ImageError {
    match result {
        Ok(img) => panic!("expected an error, decoded {:?}", img.dimensions()),
        Err(e) => e,
    }
}

fn assert_one_line_naming(e: &ImageError, name: &str) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    assert!(msg.contains(name), "error does not name {name}: {msg}");
}

#[test]
fn bad_inputs_give_one_line_errors_naming_the_file() {
    let pre = Preprocessor::clip(224);
    type IsExpected = fn(&ImageError) -> bool;
    let cases: [(&str, IsExpected); 4] = [
        ("missing.jpg", |e| matches!(e, ImageError::NotFound { .. })),
        ("empty.jpg", |e| matches!(e, ImageError::Empty { .. })),
        ("not_an_image.jpg", |e| {
            matches!(e, ImageError::NotAnImage { .. })
        }),
        ("truncated.jpg", |e| {
            matches!(e, ImageError::Truncated { .. })
        }),
    ];
    for (name, is_expected) in cases {
        let e = err_of(pre.decode_path(&images().join(name)));
        assert!(is_expected(&e), "{name}: unexpected error {e:?}");
        assert_one_line_naming(&e, name);
        eprintln!("{e}");
    }
    let e = err_of(pre.decode_path(&images()));
    assert!(matches!(e, ImageError::IsDirectory { .. }), "{e:?}");
    assert_one_line_naming(&e, "images");
    assert!(pre.load(&images().join("empty.jpg")).is_err());
}

#[test]
fn over_the_pixel_limit_is_refused_from_the_header() {
    let mut pre = Preprocessor::clip(224);
    pre.max_pixels = 320 * 240 - 1;
    let e = err_of(pre.decode_path(&images().join("cat_like.jpg")));
    match &e {
        ImageError::TooLarge {
            width,
            height,
            limit,
            ..
        } => {
            assert_eq!((*width, *height, *limit), (320, 240, 320 * 240 - 1));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_one_line_naming(&e, "cat_like.jpg");

    // A PNG header claiming 100000 x 100000 pixels with no data behind it: refused before any
    // allocation under the default 100 MP limit.
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&png[12..]);
    png.extend_from_slice(&crc.to_be_bytes());
    // One IDAT chunk holding a tiny zlib stream (5 stored zero bytes), then IEND.
    let idat: &[u8] = &[
        0x78, 0x01, 0x01, 5, 0, 0xFA, 0xFF, 0, 0, 0, 0, 0, 0, 0x05, 0, 0x01,
    ];
    png.extend_from_slice(&(idat.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(b"IDAT");
    png.extend_from_slice(idat);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
    let e = err_of(Preprocessor::clip(224).decode_bytes(&png, "huge.png"));
    assert!(
        matches!(
            e,
            ImageError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{e:?}"
    );
    assert_one_line_naming(&e, "huge.png");
}

/// CRC-32 (IEEE) for the hand-made PNG chunk above.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn no_panic_on_arbitrary_bytes() {
    let pre = Preprocessor::clip(32);
    let good = std::fs::read(images().join("cat_like.jpg")).unwrap();
    let png = std::fs::read(images().join("rgba.png")).unwrap();
    let gif = std::fs::read(images().join("animated.gif")).unwrap();
    let webp = std::fs::read(images().join("photo_lossy.webp")).unwrap();
    // Deterministic xorshift so failures reproduce.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for source in [&good, &png, &gif, &webp] {
        for cut in [
            1,
            2,
            3,
            8,
            16,
            30,
            64,
            100,
            500,
            source.len() / 3,
            source.len() - 1,
        ] {
            let _ = pre.decode_bytes(&source[..cut.min(source.len())], "cut");
        }
        for _ in 0..60 {
            let mut bytes = source.clone();
            for _ in 0..(1 + next() % 8) {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] = next() as u8;
            }
            if let Ok(img) = pre.decode_bytes(&bytes, "mutated") {
                let _ = pre.preprocess(&img);
            }
        }
    }
    for len in [0usize, 1, 7, 64, 1000] {
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        assert!(pre.decode_bytes(&junk, "junk").is_err());
    }
}
