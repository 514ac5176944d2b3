//! The synthetic demo set: in memory, and written to disk as an image folder plus captions
//! table that the ordinary readers open again.

use siam_data::dataset::{Dataset, DatasetKind, ImageSource, OpenOptions, Split};
use siam_data::synthetic::{demo, write_demo};

#[test]
fn written_demo_reads_back_as_folder_and_table() {
    let d = tempfile::tempdir().unwrap();
    let n = write_demo(d.path(), 3, 24, 11).unwrap();
    assert_eq!(n, 36);
    let mem = demo(3, 24, 11);

    let table = Dataset::open(&d.path().join("captions.csv"), &OpenOptions::default()).unwrap();
    assert_eq!(table.kind, DatasetKind::Captions);
    assert_eq!(table.len(), 36);
    assert_eq!(table.labels, mem.labels);
    for (t, m) in table.records.iter().zip(&mem.records) {
        assert_eq!(table.texts[t.texts[0]], mem.texts[m.texts[0]]);
        let ImageSource::File(p) = &t.image else {
            panic!("files on disk")
        };
        let ImageSource::Rgb(img, _) = &m.image else {
            panic!("in memory")
        };
        assert_eq!(
            image::open(p).unwrap().to_rgb8().as_raw(),
            img.as_raw(),
            "PNG is lossless"
        );
    }

    let folder = Dataset::open(&d.path().join("images"), &OpenOptions::default()).unwrap();
    assert_eq!(folder.kind, DatasetKind::Labels);
    assert_eq!(folder.labels.len(), 12);
    assert!(folder.labels.contains(&"yellow triangle".to_string()));
    // The directory itself (one table in it) opens as the table.
    assert_eq!(
        Dataset::open(d.path(), &OpenOptions::default())
            .unwrap()
            .kind,
        DatasetKind::Captions
    );
}

#[test]
fn demo_labels_are_balanced_and_split_per_label() {
    let ds = demo(10, 32, 0);
    let labels = ds.record_labels().unwrap();
    for l in 0..12 {
        assert_eq!(labels.iter().filter(|&&x| x == l).count(), 10);
    }
    assert_eq!(ds.split_counts(), (96, 12, 12));
}

#[test]
fn written_demo_keeps_the_in_memory_split_in_folders_and_table() {
    // 10 per label: 8 train, 1 val, 1 test per label, by the seeded split `siam train` uses.
    let d = tempfile::tempdir().unwrap();
    write_demo(d.path(), 10, 16, 3).unwrap();
    let mem = demo(10, 16, 3);
    let table = Dataset::open(&d.path().join("captions.csv"), &OpenOptions::default()).unwrap();
    assert_eq!(table.splits, mem.splits, "the table carries the split");
    let folder = Dataset::open(&d.path().join("images"), &OpenOptions::default()).unwrap();
    assert_eq!(folder.split_counts(), mem.split_counts());
    for split in [Split::Train, Split::Val, Split::Test] {
        let sub = d.path().join("images").join(split.to_string());
        let files = walk(&sub);
        assert_eq!(files, mem.indices_of(split).len(), "{split}");
    }
    // Another seed holds out other images: the folder follows the seed it was written with.
    let other = demo(10, 16, 4);
    assert_ne!(other.splits, mem.splits);
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p)
            } else {
                1
            }
        })
        .sum()
}
