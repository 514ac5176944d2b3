//! The loader: batches in sampler order, CLIP preprocessing, deterministic augmentation
//! whatever the thread count, the bad-image policy, and the decode-once cache.

use siam_data::augment::Augment;
use siam_data::cache::PixelCache;
use siam_data::dataset::{Dataset, ImageSource, OnBadImage, OpenOptions};
use siam_data::pipeline::{Loader, LoaderOptions, PipelineError};
use siam_data::preprocess::Preprocessor;
use siam_data::sampler::ShuffledSampler;
use siam_data::synthetic::demo;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images")
}

fn collect(l: Loader) -> Vec<siam_data::pipeline::Batch> {
    l.map(|b| b.unwrap()).collect()
}

#[test]
fn eval_batches_equal_plain_preprocessing_in_sampler_order() {
    let ds = Arc::new(demo(2, 40, 3));
    let pre = Preprocessor::clip(32);
    let batches = ShuffledSampler::new(ds.len(), 5, false, 1)
        .unwrap()
        .epoch(0);
    let out = collect(Loader::new(
        ds.clone(),
        pre.clone(),
        batches.clone(),
        LoaderOptions {
            threads: 3,
            prefetch: 2,
            ..Default::default()
        },
    ));
    assert_eq!(out.len(), batches.len());
    for (b, want) in out.iter().zip(&batches) {
        assert_eq!(&b.indices, want);
        assert_eq!(b.pixels.len(), want.len() * 3 * 32 * 32);
        for (j, &r) in want.iter().enumerate() {
            let ImageSource::Rgb(img, _) = &ds.records[r].image else {
                unreachable!()
            };
            assert_eq!(
                &b.pixels[j * 3072..(j + 1) * 3072],
                pre.preprocess(img).as_slice()
            );
        }
    }
}

#[test]
fn augmentation_is_deterministic_for_a_seed_whatever_the_threads() {
    let ds = Arc::new(demo(2, 48, 0));
    let pre = Preprocessor::clip(32);
    let batches: Vec<Vec<usize>> = (0..ds.len())
        .collect::<Vec<_>>()
        .chunks(4)
        .map(<[usize]>::to_vec)
        .collect();
    let run = |threads, seed| {
        let o = LoaderOptions {
            threads,
            augment: Some(Augment::default()),
            seed,
            ..Default::default()
        };
        collect(Loader::new(ds.clone(), pre.clone(), batches.clone(), o))
            .into_iter()
            .flat_map(|b| b.pixels)
            .collect::<Vec<f32>>()
    };
    let a = run(1, 7);
    assert_eq!(a, run(4, 7));
    assert_ne!(a, run(2, 8));
    let plain: Vec<f32> = collect(Loader::new(
        ds.clone(),
        pre.clone(),
        batches.clone(),
        LoaderOptions::default(),
    ))
    .into_iter()
    .flat_map(|b| b.pixels)
    .collect();
    assert_ne!(a, plain, "augmentation changes pixels");
}

fn bad_folder() -> (tempfile::TempDir, Dataset) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("things");
    std::fs::create_dir_all(&dir).unwrap();
    for n in [
        "cat_like.jpg",
        "truncated.jpg",
        "not_an_image.jpg",
        "empty.jpg",
        "palette.png",
    ] {
        std::fs::copy(fixtures().join(n), dir.join(n)).unwrap();
    }
    let ds = Dataset::open(d.path(), &OpenOptions::default()).unwrap();
    (d, ds)
}

#[test]
fn bad_images_are_skipped_and_counted_or_fail() {
    let (_d, ds) = bad_folder();
    let ds = Arc::new(ds);
    let pre = Preprocessor::clip(16);
    let names: Vec<String> = ds.records.iter().map(|r| r.image.name()).collect();
    let mut l = Loader::new(
        ds.clone(),
        pre.clone(),
        vec![(0..ds.len()).collect()],
        LoaderOptions::default(),
    );
    let b = l.next().unwrap().unwrap();
    assert!(l.next().is_none());
    let good: Vec<String> = b.indices.iter().map(|&i| names[i].clone()).collect();
    assert_eq!(good.len(), 2, "{good:?}");
    assert!(
        good.iter().any(|n| n.ends_with("cat_like.jpg"))
            && good.iter().any(|n| n.ends_with("palette.png"))
    );
    assert_eq!(b.pixels.len(), 2 * 3 * 16 * 16);
    assert_eq!(l.summary().count, 3);
    let summary = l.summary().to_string();
    for bad in ["truncated.jpg", "not_an_image.jpg", "empty.jpg"] {
        assert!(summary.contains(bad), "{summary}");
    }

    let o = LoaderOptions {
        on_bad_image: OnBadImage::Fail,
        ..Default::default()
    };
    let mut l = Loader::new(ds.clone(), pre, vec![(0..ds.len()).collect(), vec![0]], o);
    match l.next().unwrap() {
        Err(PipelineError::BadImage { record, cause }) => {
            assert!(cause.to_string().contains(&names[record]))
        }
        other => panic!("expected a bad-image error, got {other:?}"),
    }
    assert!(l.next().is_none(), "iteration ends at the first failure");
}

#[test]
fn cache_gives_identical_eval_pixels_and_hits_on_the_second_epoch() {
    let (_d, ds) = bad_folder();
    let ds = Arc::new(ds);
    let pre = Preprocessor::clip(24);
    let batches = vec![(0..ds.len()).collect::<Vec<_>>()];
    let plain = collect(Loader::new(
        ds.clone(),
        pre.clone(),
        batches.clone(),
        LoaderOptions::default(),
    ));
    let cache = Arc::new(PixelCache::new(24, 1 << 30));
    let o = LoaderOptions {
        cache: Some(cache.clone()),
        ..Default::default()
    };
    for epoch in 0..2 {
        let cached = collect(Loader::new(
            ds.clone(),
            pre.clone(),
            batches.clone(),
            o.clone(),
        ));
        assert_eq!(cached[0].pixels, plain[0].pixels, "epoch {epoch}");
        assert_eq!(cached[0].skipped.len(), 3);
    }
    let s = cache.stats();
    assert_eq!(s.entries, 2);
    assert_eq!(s.hits, 2);
    // Augmented loading from the cache still works and is seeded.
    let o = LoaderOptions {
        cache: Some(cache),
        augment: Some(Augment::default()),
        seed: 4,
        ..Default::default()
    };
    let a = collect(Loader::new(
        ds.clone(),
        pre.clone(),
        batches.clone(),
        o.clone(),
    ));
    let b = collect(Loader::new(ds.clone(), pre, batches, o));
    assert_eq!(a[0].pixels, b[0].pixels);
}

#[test]
fn dropping_a_loader_early_stops_its_workers() {
    let ds = Arc::new(demo(4, 32, 0));
    let batches: Vec<Vec<usize>> = (0..200).map(|i| vec![i % ds.len()]).collect();
    let mut l = Loader::new(
        ds,
        Preprocessor::clip(32),
        batches,
        LoaderOptions {
            threads: 2,
            prefetch: 2,
            ..Default::default()
        },
    );
    assert_eq!(l.next().unwrap().unwrap().number, 0);
    drop(l); // must return, not hang
}
