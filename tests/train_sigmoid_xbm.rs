//! `siam train --loss sigmoid` and `--xbm SIZE` end to end on the synthetic demo set: both
//! learn (recall@1 rises), the sigmoid loss's bias is a trained parameter saved in the
//! checkpoint, and both run on locked towers' cached features.

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

#[test]
fn memory_and_accumulation_are_refused_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir.path().join("acc"), "triplet", 64);
    c.batch.accum_steps = 2;
    let device = siam::device::from_env();
    let e = train(&c, &device, Some(demo()), &mut Log::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--xbm") && e.contains("--accum"), "{e}");
}
