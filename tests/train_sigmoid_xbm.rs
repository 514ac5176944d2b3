//! `siam train --loss sigmoid` and `--xbm SIZE` end to end on the synthetic demo set: both
//! learn (recall@1 rises), the sigmoid loss's bias is a trained parameter saved in the
//! checkpoint, and both run on locked towers' cached features; the memory is kept in
//! checkpoints and works with gradient accumulation.

mod support;

use std::path::Path;

use siam::model::twin::FreezePolicy;
use siam::train::config::LossSettings;
use siam::train::{train, TrainConfig};
use support::{demo, Log};

fn cfg(out: &Path, loss: &str, xbm: usize) -> TrainConfig {
    let mut c = TrainConfig {
        arch: Some("tiny".into()),
        out: out.to_path_buf(),
        loss: LossSettings {
            loss: Some(loss.parse().unwrap()),
            xbm,
            ..LossSettings::default()
        },
        ..TrainConfig::default()
    };
    c.optim.epochs = Some(6);
    c.optim.warmup_steps = 2;
    c.batch.classes_per_batch = 4;
    c.batch.per_class = 4;
    c
}

fn learns(c: &TrainConfig) -> (f64, f64, Vec<String>) {
    let device = siam::device::from_env();
    let mut log = Log::default();
    let report = train(c, &device, Some(demo()), &mut log).unwrap();
    let before = report.before.as_ref().unwrap()["mean_r1"];
    let after = report.after.as_ref().unwrap()["mean_r1"];
    (before, after, log.0)
}

#[test]
fn sigmoid_loss_learns_and_trains_its_bias() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sigmoid");
    let c = cfg(&out, "sigmoid", 0);
    let (before, after, log) = learns(&c);
    assert!(after > before + 0.15, "mean recall@1 {before} -> {after}");
    assert!(log.iter().any(|l| l.contains("sigmoid")), "{log:?}");
    // The checkpoint holds the bias, moved away from its initial -10 by training.
    let device = siam::device::from_env().autodiff();
    let model = siam::model::folder::load(&out, &device)
        .unwrap()
        .1
        .init(&device);
    let model = model.with_sigmoid_logits(0.0, 0.0, &device);
    let ck =
        siam::train::checkpoint::find_checkpoint(&siam::train::checkpoint::checkpoint_dir(&out))
            .expect("a checkpoint");
    let model = siam::train::checkpoint::load_model(&ck, model).unwrap();
    let b = model
        .logit_bias
        .unwrap()
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()[0];
    let t = model
        .clip
        .logit_scale
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()[0];
    assert!(b.is_finite() && b != -10.0 && b != 0.0, "bias {b}");
    assert!(
        t.is_finite() && t != 10f32.ln() && t != 0.0,
        "log scale {t}"
    );
}

#[test]
fn cross_batch_memory_learns() {
    let dir = tempfile::tempdir().unwrap();
    // Batch-all triplets (the loss's default miner) against the batch's 16 references and 64
    // remembered ones per direction.
    let c = cfg(&dir.path().join("xbm"), "triplet", 64);
    let (before, after, log) = learns(&c);
    assert!(after > before + 0.15, "mean recall@1 {before} -> {after}");
    assert!(
        log.iter().any(|l| l.contains("cross-batch memory of 64")),
        "{log:?}"
    );
}

#[test]
fn sigmoid_and_memory_run_on_cached_features() {
    let dir = tempfile::tempdir().unwrap();
    for (name, loss, xbm) in [("a", "sigmoid", 64), ("b", "contrastive", 32)] {
        let mut c = cfg(&dir.path().join(name), loss, xbm);
        c.towers.freeze_image = FreezePolicy::Locked;
        c.towers.freeze_text = FreezePolicy::Locked;
        c.cache.cache_dir = Some(dir.path().join("cache"));
        c.loss.xbm_start = 2;
        let (before, after, log) = learns(&c);
        assert!(
            log.iter().any(|l| l.contains("features computed into")
                || l.contains("features reused from")),
            "{log:?}"
        );
        assert!(after > before, "{loss}: mean recall@1 {before} -> {after}");
    }
}

/// The memories are saved in every checkpoint (`xbm.bin`): a run interrupted mid-epoch
/// resumes with its memory and ends bit-identical to the uninterrupted one; with `--accum 2`
/// the memory takes each step's batch once.
#[test]
fn memory_resumes_exactly_and_runs_with_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    let device = siam::device::from_env();
    for accum in [1, 2] {
        let full = dir.path().join(format!("full{accum}"));
        let mut c = cfg(&full, "triplet", 40);
        c.optim.epochs = Some(2);
        c.batch.accum_steps = accum;
        train(&c, &device, Some(demo()), &mut Log::default()).unwrap();
        assert!(full.join("checkpoint").join("xbm.bin").is_file());
        let memories = siam::train::checkpoint::load_xbm(&full.join("checkpoint"))
            .unwrap()
            .unwrap();
        let steps = siam::train::metrics::read(&full.join("metrics.jsonl")).unwrap();
        for m in &memories {
            assert_eq!(m.steps, steps.len(), "one enqueue per optimiser step");
            assert_eq!(m.labels.len(), 40, "the memory is full");
        }

        let cut = dir.path().join(format!("cut{accum}"));
        let mut k = c.clone();
        k.out = cut.clone();
        k.max_steps = Some(steps.len() / 2 + 1);
        train(&k, &device, Some(demo()), &mut Log::default()).unwrap();
        k.max_steps = None;
        k.resume = true;
        train(&k, &device, Some(demo()), &mut Log::default()).unwrap();
        assert_eq!(
            support::step_losses(&full),
            support::step_losses(&cut),
            "accum {accum}"
        );
    }
}
