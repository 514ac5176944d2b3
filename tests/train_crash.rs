//! `siam train` killed with SIGKILL (`Child::kill`) at arbitrary moments: before the first
//! checkpoint, right after it, while a checkpoint is being written, after random delays and
//! across an epoch end. After every kill each checkpoint on disk loads completely (state, model,
//! optimiser), no temporary folder is taken for a checkpoint, and no checkpoint older than the
//! last one seen is used; `--resume` then continues, and the run that was killed five times ends
//! with exactly the losses and weights of an uninterrupted run. So a `kill -9` at any moment
//! loses at most the work since the last checkpoint.
//!
//! A full disk, for real: the run resumes under `setrlimit(RLIMIT_FSIZE)` so that writing the
//! next checkpoint fails with the OS's own error (EFBIG, the same path as ENOSPC). The run stops
//! with a one-line error naming the file and the cause, the previous checkpoint still loads,
//! nothing temporary is left, and `--resume` without the limit finishes the run.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use siam::clip::config::ClipConfig;
use siam::clip::model::Clip;
use siam::model::heads::HeadConfig;
use siam::model::twin::{FreezePolicy, TwinTowers};
use siam::train::checkpoint::{find_checkpoint, load_model, load_optimizer, load_state};
use siam::train::optim::{build_adamw, split_params, AdamWSettings};

/// The tiny architecture on the demo set: 24 steps per epoch, a checkpoint after every step.
const TRAIN: &[&str] = &[
    "train",
    "--epochs",
    "2",
    "--classes-per-batch",
    "4",
    "--per-class",
    "4",
    "--warmup",
    "2",
    "--checkpoint-every",
    "1",
    "--no-index",
    "--quiet",
];
const TOTAL_STEPS: usize = 48;

fn spawn(out: &Path, resume: bool, log: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_siam"));
    cmd.args(TRAIN).arg("--out").arg(out);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("starting siam train")
}

/// Waits for `child` to exit; panics with its log on failure or after two minutes.
fn finish(mut child: Child, log: &Path) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = fs::read_to_string(log).unwrap_or_default();
            assert!(status.success(), "siam train failed: {err}");
            return;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!(
                "siam train did not finish: {}",
                fs::read_to_string(log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The step of the checkpoint `--resume` would use now, if any (reads may race the writer's
/// renames; a failed read is "unknown").
fn visible_step(out: &Path) -> Option<usize> {
    let dir = find_checkpoint(&out.join("checkpoint"))?;
    load_state(&dir).ok().map(|s| s.step)
}

/// What ends the wait before a kill.
enum Until {
    /// This long after the start.
    Delay(Duration),
    /// The first moment `checkpoint/state.json` exists.
    FirstCheckpoint,
    /// The first moment the run's temporary checkpoint folder exists (it is writing one).
    Writing,
    /// A checkpoint of at least this step exists.
    Step(usize),
}

/// Runs (or resumes) training into `out`, kills it with SIGKILL when `until` says, and checks
/// what it left. Returns the step of the checkpoint now on disk.
fn kill_and_check(out: &Path, resume: bool, until: Until, log: &Path) -> Option<usize> {
    let mut child = spawn(out, resume, log);
    let t0 = Instant::now();
    let mut seen = None;
    loop {
        if let Some(s) = visible_step(out) {
            seen = seen.max(Some(s));
        }
        let now = match &until {
            Until::Delay(d) => t0.elapsed() >= *d,
            Until::FirstCheckpoint => out.join("checkpoint/state.json").is_file(),
            // This process's folder: an earlier run's leftover one does not count.
            Until::Writing => out.join(format!(".checkpoint.{}.tmp", child.id())).is_dir(),
            Until::Step(s) => seen.is_some_and(|v| v >= *s),
        };
        if now {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "siam train ended ({status}) before the kill: {}",
                fs::read_to_string(log).unwrap()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no kill moment came"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL on unix
    child.wait().unwrap();

    let dir = find_checkpoint(&out.join("checkpoint"));
    if let Some(dir) = &dir {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name == "checkpoint" || name.starts_with(".checkpoint.old."),
            "resume would use {name}"
        );
        check_checkpoint(dir);
    }
    let step = dir.map(|d| load_state(&d).unwrap().step);
    eprintln!(
        "killed after {:.2} s: checkpoint of step {step:?} (last seen {seen:?}); temporary: {:?}",
        t0.elapsed().as_secs_f64(),
        leftovers(out)
    );
    assert!(
        step >= seen,
        "checkpoint of step {seen:?} lost: now {step:?}"
    );
    step
}

/// Every file of a checkpoint loads into the tiny model and its optimiser.
fn check_checkpoint(dir: &Path) {
    let st = load_state(dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(st.step <= TOTAL_STEPS && st.epoch <= 2, "{st:?}");
    let device = siam::device::from_env().autodiff();
    let cfg = ClipConfig::tiny();
    let head = HeadConfig::linear(cfg.embed_dim, cfg.embed_dim);
    let model = TwinTowers::new(Clip::new(&cfg, &device), head, &device);
    let model = load_model(dir, model).unwrap_or_else(|e| panic!("{e}"));
    let model = model
        .with_freeze(FreezePolicy::Full, FreezePolicy::Full, false)
        .unwrap();
    let optim = build_adamw(&AdamWSettings::default(), &split_params(&model));
    load_optimizer(dir, optim).unwrap_or_else(|e| panic!("{e}"));
}

fn losses(out: &Path) -> Vec<(usize, f64)> {
    siam::train::metrics::read(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| (m.step, m.loss))
        .collect()
}

/// Entries of `out` whose names mark them temporary.
fn leftovers(out: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(out) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

#[test]
fn kill_9_at_any_moment_loses_at_most_the_work_since_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.txt");

    let reference = dir.path().join("reference");
    finish(spawn(&reference, false, &log), &log);
    assert_eq!(losses(&reference).len(), TOTAL_STEPS);

    let out = dir.path().join("killed");
    // Killed at once: there may be no checkpoint yet; --resume says so in one line.
    if kill_and_check(&out, false, Until::Delay(Duration::from_millis(50)), &log).is_none() {
        let o = Command::new(env!("CARGO_BIN_EXE_siam"))
            .args(TRAIN)
            .arg("--out")
            .arg(&out)
            .arg("--resume")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(last.contains("no checkpoint in"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let first = kill_and_check(&out, false, Until::FirstCheckpoint, &log).unwrap();
    assert!(first >= 1);
    let mut step = first;
    for until in [
        Until::Writing,
        Until::Delay(Duration::from_millis(700)),
        Until::Writing,
        Until::Step(26), // past the end of epoch 1 (validation, best/, epoch checkpoint)
        Until::Delay(Duration::from_millis(1300)),
    ] {
        if step >= TOTAL_STEPS - 2 {
            break;
        }
        step = kill_and_check(&out, true, until, &log).unwrap();
    }
    finish(spawn(&out, true, &log), &log);

    // Each step's loss logged once, and equal to the uninterrupted run's; the same weights.
    assert_eq!(losses(&out), losses(&reference));
    assert!(
        support::weights(&out) == support::weights(&reference),
        "weights differ from the uninterrupted run"
    );
    assert_eq!(
        load_state(&out.join("checkpoint")).unwrap().step,
        TOTAL_STEPS
    );
    // What the killed runs were writing has been cleared away.
    assert_eq!(leftovers(&out), Vec::<PathBuf>::new());
}

/// Larger than `model.bpk` of the tiny model (13.6 MB), smaller than `optimizer.bpk` (27 MB,
/// two moments per parameter): the first file of the next checkpoint fits, the second cannot.
#[cfg(unix)]
const FILE_SIZE_LIMIT: u64 = 20 << 20;

#[cfg(unix)]
#[test]
fn a_full_disk_keeps_the_previous_checkpoint() {
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.txt");
    let out = dir.path().join("run");
    let run = |extra: &[&str], limit: Option<u64>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_siam"));
        cmd.args(TRAIN).arg("--out").arg(&out).args(extra);
        if let Some(bytes) = limit {
            // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: bytes as libc::rlim_t,
                        rlim_max: bytes as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // A write past the limit then fails with EFBIG instead of killing.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let o = cmd.output().expect("running siam train");
        fs::write(&log, &o.stderr).unwrap();
        (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
    };

    let (status, err) = run(&["--max-steps", "3"], None);
    assert!(status.success(), "{err}");
    let ck = out.join("checkpoint");
    assert_eq!(load_state(&ck).unwrap().step, 3);
    let sizes = |name: &str| fs::metadata(ck.join(name)).unwrap().len();
    assert!(
        sizes("model.bpk") < FILE_SIZE_LIMIT && sizes("optimizer.bpk") > FILE_SIZE_LIMIT,
        "the limit no longer falls between the checkpoint's files"
    );
    let before = fs::read(ck.join("optimizer.bpk")).unwrap();

    // The step-4 checkpoint cannot be written.
    let (status, err) = run(&["--resume"], Some(FILE_SIZE_LIMIT));
    assert!(!status.success(), "the run should stop: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let line = err.trim_end().lines().last().unwrap();
    assert_eq!(line, errors[0], "{err}");
    eprintln!("under the size limit: {line}");
    for needle in [
        "siam: error: could not write checkpoint",
        &ck.display().to_string(),
        "optimizer.bpk",
        "File too large",
        "--resume",
    ] {
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
    }

    // The previous checkpoint is whole and is the one --resume finds; nothing temporary stays.
    assert_eq!(find_checkpoint(&ck), Some(ck.clone()));
    assert_eq!(load_state(&ck).unwrap().step, 3);
    assert_eq!(fs::read(ck.join("optimizer.bpk")).unwrap(), before);
    check_checkpoint(&ck);
    assert_eq!(leftovers(&out), Vec::<PathBuf>::new());

    // With room again, the run continues from step 3 to the end, logging each step once.
    let (status, err) = run(&["--resume"], None);
    assert!(status.success(), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    let steps: Vec<usize> = losses(&out).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (1..=TOTAL_STEPS).collect::<Vec<_>>());
    assert_eq!(load_state(&ck).unwrap().step, TOTAL_STEPS);
    assert!(out.join("siam.json").is_file());
}
