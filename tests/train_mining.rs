//! Hard negatives mined from the index (`--mine-index every:E`) end to end on the demo set:
//! every epoch mines, the mined negatives (kept in the checkpoint) are training images of
//! another mining label, and an interrupted run resumes to exactly the uninterrupted result. The
//! mining rule itself (labels, ranks, margin) is checked by hand in `src/train/mining.rs`.

mod support;

use std::path::Path;

use siam::train::checkpoint::load_state;
use siam::train::config::MineEvery;
use siam::train::{train, TrainConfig};
use siam_data::dataset::Split;

use support::{demo, Log};

fn cfg(out: &Path) -> TrainConfig {
    let mut c = TrainConfig {
        arch: Some("tiny".into()),
        out: out.to_path_buf(),
        ..TrainConfig::default()
    };
    c.optim.epochs = Some(2);
    c.optim.warmup_steps = 2;
    c.batch.classes_per_batch = 4;
    c.batch.per_class = 4;
    c.mining.mine_index = Some(MineEvery(1));
    c.mining.mine_range_min = 1;
    c.mining.mine_range_max = 5;
    c.mining.mine_negatives = 2;
    c.mining.mine_margin = Some(0.01);
    c
}

#[test]
fn mined_negatives_join_the_batches_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let device = siam::device::from_env();
    let full = dir.path().join("full");
    let mut log = Log::default();
    train(&cfg(&full), &device, Some(demo()), &mut log).unwrap();
    for e in [1, 2] {
        let needle = format!("hard negatives (--mine-index) for epoch {e}:");
        assert!(log.0.iter().any(|l| l.contains(&needle)), "{:?}", log.0);
    }
    let st = load_state(&full.join("checkpoint")).unwrap();
    let mined = st.mined.expect("the checkpoint keeps the mined negatives");
    assert_eq!(mined.epoch, 1);
    let ds = demo();
    let train_recs = ds.indices_of(Split::Train);
    let mut total = 0;
    for (r, negs) in mined.by_record.iter().enumerate() {
        if !train_recs.contains(&r) {
            assert!(negs.is_empty());
            continue;
        }
        assert!(negs.len() <= 2);
        total += negs.len();
        for &c in negs {
            assert!(train_recs.contains(&c), "{c} is not a training image");
            // The demo set is captioned: an image's mining label is its caption (as in the
            // loss, images of one class with other captions are negatives).
            let caption = |i: usize| ds.records[i].texts[0];
            assert_ne!(caption(c), caption(r), "{r} -> {c}");
        }
    }
    eprintln!("{total} negatives for {} training images", train_recs.len());
    assert!(total >= train_recs.len(), "only {total} negatives");

    // Interrupted inside the second epoch (after its mining), then resumed.
    let cut = dir.path().join("cut");
    let mut c = cfg(&cut);
    let steps_per_epoch = siam::train::metrics::read(&full.join("metrics.jsonl"))
        .unwrap()
        .len()
        / 2;
    c.max_steps = Some(steps_per_epoch + 1);
    train(&c, &device, Some(demo()), &mut Log::default()).unwrap();
    c.max_steps = None;
    c.resume = true;
    let mut log = Log::default();
    train(&c, &device, Some(demo()), &mut log).unwrap();
    assert!(
        !log.0.iter().any(|l| l.contains("hard negatives")),
        "the resumed run mined again: {:?}",
        log.0
    );
    assert_eq!(support::step_losses(&full), support::step_losses(&cut));
    assert!(
        support::weights(&full) == support::weights(&cut),
        "resumed weights differ"
    );
}
