//! `siam train` end to end on the synthetic demo set: recall improves, the output folder loads
//! as an Encoder, an interrupted run resumes to exactly the uninterrupted result, locked towers
//! train from the feature cache, and bad input is a clear error.

mod support;

use std::path::Path;

use siam::model::twin::FreezePolicy;
use siam::model::Encoder;
use siam::train::config::LossSettings;
use siam::train::{train, TrainConfig, TrainError};
use siam_data::dataset::Dataset;
use support::{demo, Log};

/// The learning statistics of every step and epoch are in range, a learning run widens the
/// gap between positives and negatives, and raises no collapse warning.
fn check_learning_stats(out: &Path, report: &siam::train::TrainReport, log: &Log) {
    let steps = siam::train::metrics::read(&out.join("metrics.jsonl")).unwrap();
    for m in &steps {
        let s = m.stats;
        assert!((0.0..=1.0).contains(&s.active_fraction), "{s:?}");
        assert!((-1.0..=1.0).contains(&s.pos_sim) && (-1.0..=1.0).contains(&s.neg_sim));
        assert!((s.gap - (s.pos_sim - s.neg_sim)).abs() < 1e-4, "{s:?}");
        assert!(s.spread > 0.0 && s.spread <= 1.0 + 1.0 / 15.0, "{s:?}");
    }
    let line = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    for key in ["active_fraction", "pos_sim", "neg_sim", "gap", "spread"] {
        assert!(
            line.contains(&format!("\"{key}\":")),
            "metrics.jsonl lacks {key}"
        );
    }
    let epochs: Vec<_> = report.history.iter().filter(|r| r.epoch > 0).collect();
    assert!(epochs.iter().all(|r| r.train_stats.is_some()));
    assert!(report.history[0].train_stats.is_none());
    let gap = |r: &siam::train::checkpoint::EpochRecord| r.train_stats.unwrap().gap;
    assert!(
        gap(epochs[epochs.len() - 1]) > gap(epochs[0]),
        "the gap should grow while the model learns"
    );
    let json = serde_json::to_value(report).unwrap();
    assert!(json["history"][1]["train_stats"]["spread"].is_number());
    assert_eq!(json["warnings"], serde_json::json!([]));
    assert!(
        log.1.is_empty(),
        "collapse warning on a learning run: {:?}",
        log.1
    );
}

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
    c
}

fn same_weights(a: &Path, b: &Path) -> bool {
    support::weights(a) == support::weights(b)
}

#[test]
fn demo_training_improves_recall_and_the_folder_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let mut c = cfg(&out);
    c.optim.epochs = Some(6);
    let device = siam::device::from_env();
    let mut log = Log::default();
    let report = train(&c, &device, Some(demo()), &mut log).unwrap();
    assert!(
        log.0.iter().any(|l| l.contains("RANDOM weights")),
        "{:?}",
        log.0
    );
    let before = report.before.as_ref().unwrap()["mean_r1"];
    let after = report.after.as_ref().unwrap()["mean_r1"];
    assert!(after > before + 0.15, "mean recall@1 {before} -> {after}");
    for f in [
        "siam.json",
        "model.safetensors",
        "metrics.jsonl",
        "loss.png",
        "recall.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let steps = siam::train::metrics::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(steps.len(), report.steps);
    assert!(steps
        .iter()
        .all(|m| m.loss.is_finite() && m.pairs_per_s > 0.0));
    check_learning_stats(&out, &report, &log);

    // The folder is a model every command loads; its embeddings are unit vectors.
    let enc = Encoder::load(&out, None, &device).unwrap();
    assert_eq!(enc.dim(), 64);
    let t = enc
        .embed_texts(&[
            "a small red circle on a white background",
            "a large blue square on a black background",
        ])
        .unwrap();
    assert_eq!(t.len(), 2 * 64);
    for row in t.chunks(64) {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "{n}");
    }
}

#[test]
fn interrupted_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let device = siam::device::from_env();
    let full = dir.path().join("full");
    train(&cfg(&full), &device, Some(demo()), &mut Log::default()).unwrap();

    let cut = dir.path().join("cut");
    let mut c = cfg(&cut);
    c.max_steps = Some(3);
    let r = train(&c, &device, Some(demo()), &mut Log::default()).unwrap();
    assert_eq!(r.steps, 3);
    assert!(
        !cut.join("siam.json").exists(),
        "an interrupted run writes no final model"
    );
    c.max_steps = None;
    c.resume = true;
    let mut log = Log::default();
    let r = train(&c, &device, Some(demo()), &mut log).unwrap();
    assert!(
        log.0.iter().any(|l| l.contains("resuming from")),
        "{:?}",
        log.0
    );
    let full_steps = siam::train::metrics::read(&full.join("metrics.jsonl")).unwrap();
    assert_eq!(r.steps, full_steps.len());
    let cut_steps = siam::train::metrics::read(&cut.join("metrics.jsonl")).unwrap();
    let losses = |v: &[siam::train::metrics::StepMetrics]| {
        v.iter().map(|m| (m.step, m.loss)).collect::<Vec<_>>()
    };
    assert_eq!(losses(&full_steps), losses(&cut_steps));
    assert!(same_weights(&full, &cut), "resumed weights differ");
}

#[test]
fn resume_refuses_a_checkpoint_of_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let device = siam::device::from_env();
    let mut c = cfg(&out);
    c.optim.epochs = Some(1);
    train(&c, &device, Some(demo()), &mut Log::default()).unwrap();
    let mut other = c.clone();
    other.towers.joint_dim = Some(32);
    other.resume = true;
    other.optim.epochs = Some(2);
    let err = train(&other, &device, Some(demo()), &mut Log::default()).unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint(_)), "{err}");
    assert!(err.to_string().contains("another model"), "{err}");
    // Nothing was lost: the old model and checkpoint are still there.
    assert!(out.join("checkpoint/state.json").is_file());
    Encoder::load(&out, None, &device).unwrap();
}

#[test]
fn locked_towers_train_heads_from_the_feature_cache() {
    let dir = tempfile::tempdir().unwrap();
    let device = siam::device::from_env();
    let mut c = cfg(&dir.path().join("a"));
    c.towers.freeze_image = FreezePolicy::Locked;
    c.towers.freeze_text = FreezePolicy::Locked;
    c.cache.cache_dir = Some(dir.path().join("cache"));
    let mut log = Log::default();
    let first = train(&c, &device, Some(demo()), &mut log).unwrap();
    assert!(
        log.0
            .iter()
            .any(|l| l.contains("image features computed into")),
        "{:?}",
        log.0
    );
    assert!(
        log.0
            .iter()
            .any(|l| l.contains("text features computed into")),
        "{:?}",
        log.0
    );
    // Heads only: two 64 x 64 linear heads with biases.
    assert_eq!(first.trainable_parameters, 2 * (64 * 64 + 64));
    c.out = dir.path().join("b");
    let mut log = Log::default();
    let second = train(&c, &device, Some(demo()), &mut log).unwrap();
    assert!(
        log.0
            .iter()
            .any(|l| l.contains("image features reused from")),
        "{:?}",
        log.0
    );
    assert!(
        log.0
            .iter()
            .any(|l| l.contains("text features reused from")),
        "{:?}",
        log.0
    );
    // Same seed, same cached features: the same run.
    assert_eq!(first.after, second.after);
    assert!(same_weights(&dir.path().join("a"), &dir.path().join("b")));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let device = siam::device::from_env();
    let run = |c: &TrainConfig, ds: Dataset| {
        train(c, &device, Some(ds), &mut Log::default())
            .unwrap_err()
            .to_string()
    };

    let mut c = cfg(&dir.path().join("x"));
    c.optim.lr = 0.0;
    assert!(run(&c, demo()).contains("--lr"));
    c.optim.lr = f64::NAN;
    assert!(run(&c, demo()).contains("--lr"));
    let mut c = cfg(&dir.path().join("y"));
    c.batch.classes_per_batch = 20;
    let e = run(&c, demo());
    assert!(e.contains("--classes-per-batch") && e.contains("12"), "{e}");

    // One label: no negatives, no triplets.
    let ds = demo();
    let one: Vec<usize> = (0..ds.len())
        .filter(|&i| ds.records[i].label == Some(0))
        .collect();
    let e = run(&cfg(&dir.path().join("z")), ds.subset(&one));
    assert!(e.contains("at least 2"), "{e}");

    let mut c = cfg(&dir.path().join("w"));
    c.loss = LossSettings {
        margin: Some(f64::NAN),
        ..LossSettings::default()
    };
    assert!(run(&c, demo()).contains("--margin"));
}

#[test]
fn a_loss_that_turns_nan_stops_and_names_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let device = siam::device::from_env();
    let mut c = cfg(&dir.path().join("nan"));
    // A learning rate this large overflows the weights within a few steps.
    c.optim.lr = 1e30;
    c.optim.warmup_steps = 0;
    c.optim.clip_grad = 0.0;
    c.checkpoint_every = 1;
    let err = train(&c, &device, Some(demo()), &mut Log::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Step { .. }), "{msg}");
    assert!(msg.contains("step"), "{msg}");
    assert!(msg.contains("checkpoint"), "{msg}");
}

#[test]
fn last_blocks_train_from_the_prefix_cache() {
    let dir = tempfile::tempdir().unwrap();
    let device = siam::device::from_env();
    let cache = dir.path().join("cache");
    let run = |name: &str, feature_cache: bool| {
        let mut c = cfg(&dir.path().join(name));
        c.optim.epochs = Some(1);
        c.towers.freeze_image = FreezePolicy::LastBlocks(1);
        c.towers.freeze_text = FreezePolicy::LastBlocks(1);
        c.cache.feature_cache = feature_cache;
        c.cache.cache_dir = Some(cache.clone());
        let mut log = Log::default();
        let r = train(&c, &device, Some(demo()), &mut log).unwrap();
        let steps = siam::train::metrics::read(&c.out.join("metrics.jsonl")).unwrap();
        let losses: Vec<f64> = steps.iter().map(|m| m.loss).collect();
        assert_eq!(losses.len(), r.steps);
        (r, losses, log.0)
    };
    let mtimes = || -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
            .collect();
        v.sort();
        v
    };
    let logged = |log: &[String], what: &str| {
        assert!(
            log.iter().any(|l| l.contains(what)),
            "{what:?} not in {log:?}"
        );
    };

    // The frozen first block runs every step.
    let (direct, direct_losses, log) = run("direct", false);
    assert!(!log.iter().any(|l| l.contains("prefix cache")), "{log:?}");
    // Its hidden states come from the cache, computed once.
    let (cached, cached_losses, log) = run("cached", true);
    logged(
        &log,
        "image tower last:1, hidden states after its 1 frozen block(s) for 192 images",
    );
    let texts = demo().texts.len();
    logged(
        &log,
        &format!("text tower last:1, hidden states after its 1 frozen block(s) for {texts} texts"),
    );
    assert_eq!(
        log.iter().filter(|l| l.contains("computed into")).count(),
        2,
        "{log:?}"
    );
    let files = mtimes();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(direct.trainable_parameters, cached.trainable_parameters);
    assert_eq!(direct_losses.len(), cached_losses.len());
    for (step, (a, b)) in direct_losses.iter().zip(&cached_losses).enumerate() {
        eprintln!(
            "step {}: {a} vs {b} (relative {:.1e})",
            step + 1,
            (a - b).abs() / a.abs()
        );
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(b.abs()),
            "step {}: loss {a} without the prefix cache, {b} with it",
            step + 1
        );
    }
    // A second run reuses both files untouched and trains exactly as the first cached run.
    let (_, again_losses, log) = run("again", true);
    assert_eq!(
        log.iter().filter(|l| l.contains("reused from")).count(),
        2,
        "{log:?}"
    );
    assert_eq!(mtimes(), files);
    assert_eq!(again_losses, cached_losses);
    assert!(same_weights(
        &dir.path().join("cached"),
        &dir.path().join("again")
    ));
}
