//! Bad options of `siam train`, `eval`, `embed`, `index` and `query` are refused before any
//! data is read or any file is created: each gives a non-zero exit, one line on stderr naming
//! the option, no panic, and leaves no output path behind. A `siam train` that fails before its
//! first checkpoint leaves no output folder. A `--k` larger than the index answers with the
//! whole index (tests/cli.rs).

mod support;

use std::path::Path;

use support::siam;

/// Runs `siam args`, expecting a refusal naming `option`, and that `out` was not created.
fn refused(args: &[&str], option: &str, out: &Path) {
    let run = siam(args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "siam {args:?} should fail");
    assert!(run.status.code().is_some(), "siam {args:?} was killed");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(
        err.contains(option),
        "{args:?}: {err:?} does not name {option}"
    );
    assert!(!out.exists(), "{args:?}: left {}", out.display());
}

#[test]
fn bad_train_options_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out_s = out.display().to_string();
    // A dataset that does not exist: every refusal below comes before it is opened.
    let data = dir.path().join("no-such-data").display().to_string();
    for (flag, value) in [
        ("--loss", "quadruplet"),
        ("--miner", "hardest-ever"),
        ("--select-metric", "r@1"),
        ("--temperature", "0"),
        ("--temperature", "-1"),
        ("--batch-size", "0"),
        ("--per-class", "0"),
        ("--classes-per-batch", "1"),
        ("--joint-dim", "0"),
        ("--lr", "0"),
        ("--min-lr", "1"),
        ("--epochs", "0"),
        ("--accum", "0"),
        ("--clip-grad", "-1"),
        ("--weight-decay", "-0.1"),
        ("--beta1", "1"),
        ("--adapter-ratio", "2"),
        ("--prefix-cache-max-gb", "-1"),
        ("--threads", "0"),
        ("--freeze-image", "sometimes"),
        ("--freeze-text", "lora:r:0"),
        ("--lora", "targets:conv"),
        ("--mine-index", "every:0"),
        ("--mine-range-max", "0"),
        ("--mine-margin", "1"),
        ("--mine-negatives", "0"),
        ("--head", "mlp-of-doom"),
        ("--dtype", "f8"),
        ("--split-seed", "x"),
        ("--on-bad-image", "maybe"),
        ("--device", "tpu"),
    ] {
        // `--flag=value`, so that negative numbers are values, not flags.
        let opt = format!("{flag}={value}");
        let args = [
            "train",
            "--data",
            &data,
            "--out",
            &out_s,
            "--no-index",
            &opt,
        ];
        refused(&args, flag, &out);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bad_eval_index_embed_and_query_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_s = out.display().to_string();
    let json = out.with_extension("json");
    let json_s = json.display().to_string();
    // Neither the model nor the data exist: options are checked first.
    let model = dir.path().join("no-model").display().to_string();
    let data = dir.path().join("no-data").display().to_string();
    let eval = |flag: &str, value: &str| {
        let opt = format!("{flag}={value}");
        [
            "eval", "--model", &model, "--data", &data, "--json", &json_s, &opt,
        ]
        .map(String::from)
    };
    for (flag, value) in [
        ("--split", "validation-x"),
        ("--batch-size", "0"),
        ("--threads", "0"),
        ("--probe-c", "0"),
        ("--split-seed", "-3"),
        ("--on-bad-image", "maybe"),
        ("--templates", ""),
    ] {
        let args = eval(flag, value);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, flag, &json);
    }
    for (flag, value) in [
        ("--m", "0"),
        ("--ef-construction", "0"),
        ("--ef", "0"),
        ("--batch-size", "0"),
        ("--split", "most"),
    ] {
        let opt = format!("{flag}={value}");
        let args = [
            "index", "--model", &model, "--data", &data, "--out", &out_s, &opt,
        ];
        refused(&args, flag, &out);
    }
    for (flag, value) in [("--batch-size", "0"), ("--threads", "0")] {
        let opt = format!("{flag}={value}");
        let args = [
            "embed", "--model", &model, "--texts", "a", "--out", &out_s, &opt,
        ];
        refused(&args, flag, &out);
    }
    let args = ["query", "--text", "a", "--index", &out_s, "--k", "0"];
    refused(&args, "--k", &out);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_train_run_that_fails_before_its_first_checkpoint_leaves_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new/run");
    let out_s = out.display().to_string();
    // 12 labels in the demo set: 13 per batch cannot be drawn (found only once data is read).
    let run = siam(&[
        "train",
        "--out",
        &out_s,
        "--no-index",
        "--classes-per-batch",
        "13",
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(err.contains("--classes-per-batch"), "{err}");
    assert!(
        !dir.path().join("new").exists(),
        "left the folders it created"
    );

    // A loss that overflows in the first epoch, before any checkpoint: the folder training
    // created (and its metrics log) goes away; an existing parent stays.
    std::fs::create_dir(dir.path().join("new")).unwrap();
    let run = siam(&[
        "train",
        "--out",
        &out_s,
        "--no-index",
        "--quiet",
        "--epochs",
        "1",
        "--lr",
        "1e30",
        "--warmup",
        "0",
        "--clip-grad",
        "0",
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    assert!(err.contains("no checkpoint was written yet"), "{err}");
    assert!(!out.exists(), "left {}", out.display());
    assert!(
        dir.path().join("new").is_dir(),
        "removed a folder it did not create"
    );
}
