//! Opening every dataset format: detection, labels and captions, splits, refused paths and
//! malformed input naming its file and line.

use image::{Rgb, RgbImage};
use siam_data::dataset::{
    Dataset, DatasetError, DatasetKind, ImageSource, OnBadImage, OpenOptions, Split,
};
use siam_data::formats::Format;
use siam_data::preprocess::Preprocessor;
use std::path::Path;

fn write_img(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(20, 15, |x, y| Rgb([seed, (x * 10) as u8, (y * 10) as u8]));
    img.save(path).unwrap();
}

fn opts() -> OpenOptions {
    OpenOptions::default()
}

#[test]
fn image_folder_labels_from_folder_names() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write_img(&r.join("golden_retriever/a.jpg"), 1);
    write_img(&r.join("golden_retriever/sub/b.png"), 2);
    write_img(&r.join("cat/c.jpg"), 3);
    std::fs::write(r.join("cat/notes.txt"), "not an image").unwrap();
    std::fs::create_dir(r.join("empty")).unwrap();
    let ds = Dataset::open(r, &opts()).unwrap();
    assert_eq!(ds.kind, DatasetKind::Labels);
    assert_eq!(ds.labels, vec!["cat", "golden retriever"]);
    assert_eq!(ds.len(), 3);
    let gr = &ds.records[1];
    assert_eq!(ds.texts[gr.texts[0]], "a photo of a golden retriever.");
    assert_eq!(ds.label_texts[1], gr.texts);
    // Deterministic seeded split.
    assert_eq!(Dataset::open(r, &opts()).unwrap().splits, ds.splits);
}

#[test]
fn image_folder_mapping_file_and_split_folders() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write_img(&r.join("train/n01/a.jpg"), 1);
    write_img(&r.join("train/n02/b.jpg"), 2);
    write_img(&r.join("val/n01/c.jpg"), 3);
    write_img(&r.join("test/n02/d.jpg"), 4);
    std::fs::write(
        r.join("labels.txt"),
        "n01 tench, Tinca tinca\nn02\tgoldfish\n",
    )
    .unwrap();
    let ds = Dataset::open(r, &opts()).unwrap();
    assert_eq!(ds.labels, vec!["tench, Tinca tinca", "goldfish"]);
    let splits: Vec<Split> = ds.splits.clone();
    assert_eq!(
        splits,
        vec![Split::Test, Split::Train, Split::Train, Split::Val]
    );
    assert_eq!(ds.split(Split::Val).len(), 1);
    // A malformed mapping names its line.
    std::fs::write(r.join("labels.txt"), "n01 tench\nbroken\n").unwrap();
    let e = Dataset::open(r, &opts()).unwrap_err();
    assert!(e.to_string().contains("labels.txt:2"), "{e}");
}

#[test]
fn captions_csv_groups_rows_lists_missing_and_refuses_escapes() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write_img(&r.join("img/a.jpg"), 1);
    write_img(&r.join("img/b.jpg"), 2);
    let csv = "filepath,caption\nimg/a.jpg,\"a dog, running\"\nimg/b.jpg,a cat\nimg/a.jpg,a brown dog\nimg/gone.jpg,lost\n";
    std::fs::write(r.join("caps.csv"), csv).unwrap();
    let ds = Dataset::open(r, &opts()).unwrap();
    assert_eq!(ds.kind, DatasetKind::Captions);
    assert_eq!(ds.len(), 2);
    let a: Vec<&str> = ds.records[0]
        .texts
        .iter()
        .map(|&t| ds.texts[t].as_str())
        .collect();
    assert_eq!(a, vec!["a dog, running", "a brown dog"]);
    assert_eq!(ds.missing, vec![r.join("img/gone.jpg")]);
    assert!(
        !ds.texts.iter().any(|t| t == "lost"),
        "captions of missing images are dropped"
    );
    let fail = OpenOptions {
        on_bad_image: OnBadImage::Fail,
        ..opts()
    };
    let e = Dataset::open(&r.join("caps.csv"), &fail).unwrap_err();
    assert!(
        matches!(e, DatasetError::MissingFiles { count: 1, .. }),
        "{e}"
    );

    std::fs::write(
        r.join("caps.csv"),
        "image,text\nimg/a.jpg,ok\n../outside.jpg,escape\n",
    )
    .unwrap();
    let e = Dataset::open(&r.join("caps.csv"), &opts()).unwrap_err();
    assert!(
        matches!(e, DatasetError::PathEscapesRoot { line: 3, .. }),
        "{e}"
    );

    std::fs::write(
        r.join("caps.csv"),
        "image,text\nimg/a.jpg,ok\nimg/b.jpg,too,many\n",
    )
    .unwrap();
    let e = Dataset::open(&r.join("caps.csv"), &opts()).unwrap_err();
    assert!(e.to_string().contains("caps.csv:3:"), "{e}");
}

#[test]
fn captions_tsv_jsonl_labels_and_splits() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write_img(&r.join("a.jpg"), 1);
    write_img(&r.join("b.jpg"), 2);
    std::fs::write(
        r.join("t.tsv"),
        "a.jpg\tfirst caption\nb.jpg\tsecond caption\n",
    )
    .unwrap();
    let ds = Dataset::open(&r.join("t.tsv"), &opts()).unwrap();
    assert_eq!(ds.texts, vec!["first caption", "second caption"]);

    let jl = "{\"image\": \"a.jpg\", \"text\": [\"x one\", \"x two\"], \"label\": \"dog\", \"split\": \"test\"}\n\n{\"image\": \"b.jpg\", \"text\": \"y\", \"label\": \"cat\", \"split\": \"train\"}\n";
    std::fs::write(r.join("t.jsonl"), jl).unwrap();
    let o = OpenOptions {
        format: Some(Format::Captions),
        ..opts()
    };
    let ds = Dataset::open(&r.join("t.jsonl"), &o).unwrap();
    assert_eq!(ds.records[0].texts.len(), 2);
    assert_eq!(ds.labels, vec!["dog", "cat"]);
    assert_eq!(ds.splits, vec![Split::Test, Split::Train]);
    assert_eq!(ds.texts[ds.label_texts[1][0]], "a photo of a cat.");

    // A label-only table is a label dataset.
    std::fs::write(r.join("l.csv"), "image,label\na.jpg,dog\nb.jpg,cat\n").unwrap();
    let ds = Dataset::open(&r.join("l.csv"), &opts()).unwrap();
    assert_eq!(ds.kind, DatasetKind::Labels);
    assert_eq!(ds.texts[ds.records[1].texts[0]], "a photo of a cat.");

    std::fs::write(
        r.join("t.jsonl"),
        "{\"image\": \"a.jpg\", \"text\": \"ok\"}\n{\"image\": \"b.jpg\"\n",
    )
    .unwrap();
    let e = Dataset::open(&r.join("t.jsonl"), &opts()).unwrap_err();
    assert!(e.to_string().contains("t.jsonl:2:"), "{e}");
}

#[test]
fn karpathy_split_file() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    for n in ["1.jpg", "2.jpg", "3.jpg"] {
        write_img(&r.join("Images").join(n), 9);
    }
    let json = r#"{"dataset": "flickr8k", "images": [
      {"filename": "1.jpg", "split": "train", "sentences": [{"raw": "A dog runs .", "tokens": ["a"]}, {"tokens": ["a", "dog"]}]},
      {"filename": "2.jpg", "split": "restval", "sentences": [{"raw": "Two cats"}]},
      {"filename": "3.jpg", "split": "test", "sentences": [{"raw": "A bird"}]},
      {"filename": "4.jpg", "split": "val", "sentences": [{"raw": "gone"}]}]}"#;
    std::fs::write(r.join("dataset_flickr8k.json"), json).unwrap();
    let ds = Dataset::open(r, &opts()).unwrap();
    assert_eq!(ds.root, r.join("Images"));
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.splits, vec![Split::Train, Split::Train, Split::Test]);
    assert_eq!(
        ds.texts[..2],
        ["A dog runs .".to_string(), "a dog".to_string()]
    );
    assert_eq!(ds.missing, vec![r.join("Images/4.jpg")]);

    std::fs::write(
        r.join("dataset_flickr8k.json"),
        r#"{"images": [{"filename": "1.jpg", "split": "holdout", "sentences": [{"raw": "x"}]}]}"#,
    )
    .unwrap();
    let e = Dataset::open(r, &opts()).unwrap_err();
    assert!(e.to_string().contains("image #1 (1.jpg)"), "{e}");
    std::fs::write(r.join("dataset_flickr8k.json"), r#"{"images": [{"filename": "../../x.jpg", "split": "test", "sentences": [{"raw": "x"}]}]}"#).unwrap();
    assert!(matches!(
        Dataset::open(r, &opts()),
        Err(DatasetError::PathEscapesRoot { .. })
    ));
}

fn cifar_record(label_bytes: &[u8], px: [u8; 3]) -> Vec<u8> {
    let mut v = label_bytes.to_vec();
    for c in px {
        v.extend(std::iter::repeat_n(c, 1024));
    }
    v
}

#[test]
fn cifar10_and_cifar100_batches() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let mut train = cifar_record(&[3], [10, 20, 30]);
    train.extend(cifar_record(&[9], [1, 2, 3]));
    std::fs::write(r.join("data_batch_1.bin"), &train).unwrap();
    std::fs::write(r.join("test_batch.bin"), cifar_record(&[0], [200, 100, 0])).unwrap();
    let ds = Dataset::open(r, &opts()).unwrap();
    assert_eq!(ds.labels.len(), 10);
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.labels[ds.records[0].label.unwrap()], "cat");
    assert_eq!(ds.splits, vec![Split::Train, Split::Train, Split::Test]);
    match &ds.records[2].image {
        ImageSource::Rgb(img, _) => assert_eq!(img.get_pixel(31, 31).0, [200, 100, 0]),
        other => panic!("{other:?}"),
    }
    std::fs::write(r.join("test_batch.bin"), &train[..100]).unwrap();
    let e = Dataset::open(r, &opts()).unwrap_err();
    assert!(e.to_string().contains("test_batch.bin"), "{e}");

    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::write(r.join("train.bin"), cifar_record(&[4, 1], [5, 5, 5])).unwrap();
    let ds = Dataset::open(r, &opts()).unwrap();
    assert_eq!(ds.labels.len(), 100);
    assert_eq!(ds.labels[ds.records[0].label.unwrap()], "aquarium fish");
    std::fs::write(r.join("train.bin"), cifar_record(&[4, 100], [5, 5, 5])).unwrap();
    let e = Dataset::open(r, &opts()).unwrap_err();
    assert!(e.to_string().contains("label 100 out of range"), "{e}");
}

fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
}

#[test]
fn webdataset_shards_stream_and_decode_by_range() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let img = RgbImage::from_fn(9, 7, |x, y| Rgb([(x * 20) as u8, (y * 30) as u8, 77]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "00/000.png", &png);
    add(&mut b, "00/000.txt", b"a striped square\n");
    add(
        &mut b,
        "00/001.json",
        br#"{"status": "failed_to_download"}"#,
    );
    add(&mut b, "00/002.png", &png);
    add(
        &mut b,
        "00/002.json",
        br#"{"caption": "from json", "url": "x"}"#,
    );
    std::fs::write(r.join("shard-000.tar"), b.into_inner().unwrap()).unwrap();
    let ds = Dataset::open(r, &opts()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.texts, vec!["a striped square", "from json"]);
    let pre = Preprocessor::clip(8);
    let decoded = siam_data::pipeline::decode(&pre, &ds.records[1].image).unwrap();
    assert_eq!(decoded.as_raw(), img.as_raw());

    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "k.jpg", &png);
    std::fs::write(r.join("shard-001.tar"), b.into_inner().unwrap()).unwrap();
    let e = Dataset::open(r, &opts()).unwrap_err();
    assert!(
        e.to_string().contains("shard-001.tar") && e.to_string().contains("no caption"),
        "{e}"
    );
}

#[test]
fn detection_errors() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    assert!(matches!(
        Dataset::open(&r.join("nope"), &opts()),
        Err(DatasetError::NotFound(_))
    ));
    assert!(matches!(
        Dataset::open(r, &opts()),
        Err(DatasetError::UnknownFormat { .. })
    ));
    std::fs::create_dir(r.join("cat")).unwrap();
    assert!(matches!(
        Dataset::open(r, &opts()),
        Err(DatasetError::Empty(_))
    ));
    std::fs::write(r.join("x.csv"), "image,text\n").unwrap();
    assert!(matches!(
        Dataset::open(&r.join("x.csv"), &opts()),
        Err(DatasetError::Empty(_))
    ));
}
