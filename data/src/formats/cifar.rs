//! CIFAR-10 and CIFAR-100 binary batches (Krizhevsky 2009, "Learning Multiple Layers of
//! Features from Tiny Images"; layout as documented on <https://www.cs.toronto.edu/~kriz/cifar.html>).
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin` (train) and
//! `test_batch.bin`, records of 1 label byte + 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
//! each 32x32 row-major); class names in `batches.meta.txt`. CIFAR-100 (`cifar-100-binary/`):
//! `train.bin` and `test.bin`, records of a coarse and a fine label byte + 3072 pixel bytes; the
//! fine labels are used, names in `fine_label_names.txt`. Without the name files the standard
//! names below are used. Underscores in names read as spaces ("aquarium fish").

use super::utf8;
use crate::dataset::{
    Dataset, DatasetBuilder, DatasetError, DatasetKind, ImageSource, OpenOptions, Result, Split,
};
use image::RgbImage;
use std::path::Path;
use std::sync::Arc;

/// CIFAR-10 class names, in label order (`batches.meta.txt`).
pub const CIFAR10_LABELS: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100 fine class names, in label order (`fine_label_names.txt`).
pub const CIFAR100_LABELS: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

const SIDE: u32 = 32;
const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Ten,
    Hundred,
}

fn class_names(dir: &Path, variant: Variant) -> Result<Vec<String>> {
    let (file, default): (&str, &[&str]) = match variant {
        Variant::Ten => ("batches.meta.txt", &CIFAR10_LABELS),
        Variant::Hundred => ("fine_label_names.txt", &CIFAR100_LABELS),
    };
    let p = dir.join(file);
    if !p.is_file() {
        return Ok(default.iter().map(|s| s.replace('_', " ")).collect());
    }
    let text = utf8(&p, std::fs::read(&p).map_err(|e| DatasetError::io(&p, e))?)?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|s| s.replace('_', " "))
        .collect();
    if names.len() != default.len() {
        return Err(DatasetError::malformed(
            &p,
            0,
            format!(
                "{} class names where CIFAR has {}",
                names.len(),
                default.len()
            ),
        ));
    }
    Ok(names)
}

/// Decodes one batch file: (fine label, image) per record.
pub(crate) fn read_batch(
    path: &Path,
    label_bytes: usize,
    n_classes: usize,
) -> Result<Vec<(usize, RgbImage)>> {
    let bytes = std::fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    let rec = label_bytes + PIXELS;
    if bytes.is_empty() || bytes.len() % rec != 0 {
        return Err(DatasetError::malformed(
            path,
            0,
            format!(
                "{} bytes is not a whole number of {rec}-byte CIFAR records",
                bytes.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / rec);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[label_bytes - 1] as usize;
        if label >= n_classes {
            return Err(DatasetError::malformed(
                path,
                i + 1,
                format!(
                    "label {label} out of range 0..{n_classes} (record #{})",
                    i + 1
                ),
            ));
        }
        let px = &r[label_bytes..];
        let mut rgb = Vec::with_capacity(PIXELS);
        for j in 0..1024 {
            rgb.extend_from_slice(&[px[j], px[1024 + j], px[2048 + j]]);
        }
        out.push((
            label,
            RgbImage::from_raw(SIDE, SIDE, rgb).expect("3*32*32 bytes"),
        ));
    }
    Ok(out)
}

pub(super) fn open(dir: &Path, opts: &OpenOptions) -> Result<Dataset> {
    let ten_train: Vec<_> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .filter(|p| p.is_file())
        .collect();
    let (variant, files): (Variant, Vec<(std::path::PathBuf, Split)>) =
        if !ten_train.is_empty() || dir.join("test_batch.bin").is_file() {
            let mut f: Vec<_> = ten_train.into_iter().map(|p| (p, Split::Train)).collect();
            if dir.join("test_batch.bin").is_file() {
                f.push((dir.join("test_batch.bin"), Split::Test));
            }
            (Variant::Ten, f)
        } else {
            let f: Vec<_> = [("train.bin", Split::Train), ("test.bin", Split::Test)]
                .into_iter()
                .map(|(n, s)| (dir.join(n), s))
                .filter(|(p, _)| p.is_file())
                .collect();
            (Variant::Hundred, f)
        };
    if files.is_empty() {
        return Err(DatasetError::UnknownFormat {
            path: dir.to_path_buf(),
            why: "no CIFAR batch (data_batch_N.bin, test_batch.bin, train.bin, test.bin)".into(),
        });
    }
    let names = class_names(dir, variant)?;
    let label_bytes = if variant == Variant::Ten { 1 } else { 2 };
    let mut b = DatasetBuilder::new(super::dataset_name(dir), dir, DatasetKind::Labels);
    let ids: Vec<usize> = names.iter().map(|n| b.label(n)).collect();
    for (file, split) in files {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, (label, img)) in read_batch(&file, label_bytes, names.len())?
            .into_iter()
            .enumerate()
        {
            let name = format!("{}#{i}", file.display());
            b.push(
                ImageSource::Rgb(Arc::new(img), name),
                Vec::new(),
                Some(ids[label]),
                Some(split),
                format!("{stem}#{i}"),
            );
        }
    }
    b.finish(dir, opts)
}
