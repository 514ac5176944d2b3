//! Training checkpoints: model, optimiser, schedule, step, RNG counters and the resolved config.
//!
//! A checkpoint is a folder of three files, built under a temporary name and renamed into place
//! by [`crate::io::atomic_dir`], so a crash or a full disk at any moment leaves either the old
//! checkpoint or the new one, never half of one:
//!
//! - `model.bpk`: the module's parameters as a burnpack record (burn's `Module::into_record`),
//!   which keeps each parameter's id, so the optimiser state (keyed by id) still applies;
//! - `optimizer.bpk`: AdamW's moments per parameter (`ModuleOptimizer::into_bytes`);
//! - `state.json`: [`TrainState`];
//! - `xbm.bin` (with `--xbm`): the cross-batch memories ([`encode_xbm`]).
//!
//! Between the two renames of `atomic_dir` there is an instant where only the old folder exists,
//! under `.<name>.old.<pid>`; [`find_checkpoint`] falls back to it.

use crate::io::{atomic_dir, atomic_write_bytes, IoError};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

use super::schedule::CosineSchedule;
use siam_losses::XbmSnapshot;

/// Errors reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Writing the checkpoint failed (disk full, permissions); the previous one is untouched.
    #[error(
        "could not write checkpoint {path}: {why}; the previous checkpoint (if any) is untouched (fix the cause, then continue with --resume)"
    )]
    Write {
        /// The checkpoint folder.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// A checkpoint file could not be read.
    #[error("could not read checkpoint file {path}: {why}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// No checkpoint exists where `--resume` looked.
    #[error("no checkpoint in {0} (expected {0}/checkpoint/state.json)")]
    Missing(PathBuf),
    /// The checkpoint was written for a different model or training setup.
    #[error("checkpoint {path} belongs to another model: {why}")]
    Mismatch {
        /// The checkpoint folder.
        path: PathBuf,
        /// What differs.
        why: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, CheckpointError>;

/// Format version of `state.json`.
pub const STATE_FORMAT: u32 = 1;

/// One epoch's validation result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number (1-based; 0 is the evaluation before training).
    pub epoch: usize,
    /// Optimiser steps done at the end of this epoch.
    pub step: usize,
    /// Mean training loss over the epoch (`None` for epoch 0).
    pub train_loss: Option<f64>,
    /// Validation metrics by name (`i2t_r1`, `t2i_r5`, ...).
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// Mean learning statistics over the epoch's steps (`None` for epoch 0).
    #[serde(default)]
    pub train_stats: Option<super::health::LearningStats>,
}

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// `state.json` format version.
    pub format: u32,
    /// Fingerprint of the model architecture and training setup; `--resume` refuses a
    /// checkpoint whose fingerprint differs.
    pub fingerprint: String,
    /// Optimiser steps done.
    pub step: usize,
    /// Epochs fully done.
    pub epoch: usize,
    /// Batches of epoch `epoch + 1` already trained (so a mid-epoch checkpoint resumes there).
    pub batch_in_epoch: usize,
    /// The run's seed. Every random choice (batch order, augmentation, head init) is drawn from
    /// a generator seeded by `(seed, epoch, batch)`, so these counters are the whole RNG state.
    pub seed: u64,
    /// The learning-rate schedule.
    pub schedule: CosineSchedule,
    /// Validation history.
    pub history: Vec<EpochRecord>,
    /// Best value of the selection metric so far and the epoch it came from.
    pub best: Option<(f64, usize)>,
    /// Epochs since the best one (for early stopping).
    pub epochs_since_best: usize,
    /// Wall-clock seconds spent training before this checkpoint.
    pub elapsed_s: f64,
    /// Pairs (anchor-reference comparisons) processed so far.
    pub pairs_seen: u64,
    /// Images trained on so far.
    #[serde(default)]
    pub images_seen: u64,
    /// The resolved training configuration.
    pub config: serde_json::Value,
    /// The hard negatives last mined from the index (`--mine-index`), so a resumed run uses
    /// the same ones.
    #[serde(default)]
    pub mined: Option<super::mining::MinedNegatives>,
}

/// Path of the checkpoint folder inside a run's output folder.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// The cross-batch memories' file of a checkpoint (`--xbm`).
pub const XBM_FILE: &str = "xbm.bin";
const XBM_MAGIC: &[u8; 8] = b"SIAMXBM1";

/// `xbm.bin`: the magic `SIAMXBM1`, the number of memories (u64), then per memory `dim`,
/// `rows`, `next`, `steps` (u64 each), `rows` labels (u64) and `rows x dim` f32 values, all
/// little-endian.
pub fn encode_xbm(memories: &[XbmSnapshot]) -> Vec<u8> {
    let mut b = XBM_MAGIC.to_vec();
    let u = |b: &mut Vec<u8>, v: usize| b.extend((v as u64).to_le_bytes());
    u(&mut b, memories.len());
    for m in memories {
        for v in [m.dim, m.labels.len(), m.next, m.steps] {
            u(&mut b, v);
        }
        m.labels.iter().for_each(|&l| u(&mut b, l));
        m.rows.iter().for_each(|x| b.extend(x.to_le_bytes()));
    }
    b
}

/// Reads [`encode_xbm`]'s bytes, checking every count against the bytes left before
/// allocating.
pub fn decode_xbm(bytes: &[u8]) -> std::result::Result<Vec<XbmSnapshot>, String> {
    let mut rest = bytes
        .strip_prefix(&XBM_MAGIC[..])
        .ok_or("not a siam cross-batch memory file (bad magic)")?;
    let u = |rest: &mut &[u8]| -> std::result::Result<usize, String> {
        let (head, tail) = rest.split_at_checked(8).ok_or("truncated")?;
        *rest = tail;
        usize::try_from(u64::from_le_bytes(head.try_into().expect("8 bytes")))
            .map_err(|_| "a count does not fit in memory".to_string())
    };
    let count = u(&mut rest)?;
    let mut out = Vec::new();
    for i in 0..count {
        let (dim, rows, next, steps) = (u(&mut rest)?, u(&mut rest)?, u(&mut rest)?, u(&mut rest)?);
        let need = rows
            .checked_mul(8)
            .and_then(|l| rows.checked_mul(dim)?.checked_mul(4)?.checked_add(l))
            .filter(|&n| n <= rest.len())
            .ok_or_else(|| format!("memory {i}: {rows} rows of {dim} values exceed the file"))?;
        let labels = (0..rows)
            .map(|_| u(&mut rest))
            .collect::<std::result::Result<_, _>>()?;
        let (data, tail) = rest.split_at(need - rows * 8);
        rest = tail;
        let rows_f32 = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        out.push(XbmSnapshot {
            dim,
            rows: rows_f32,
            labels,
            next,
            steps,
        });
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last memory", rest.len()));
    }
    Ok(out)
}

/// The cross-batch memories a checkpoint saved (`None`: the run had none).
pub fn load_xbm(dir: &Path) -> Result<Option<Vec<XbmSnapshot>>> {
    let path = dir.join(XBM_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = read(&path)?;
    decode_xbm(&bytes)
        .map(Some)
        .map_err(|why| CheckpointError::Read { path, why })
}

/// Writes a checkpoint folder atomically (with the cross-batch memories `xbm`, if any).
pub fn save<M: Module>(
    dir: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
    xbm: Option<&[XbmSnapshot]>,
) -> Result<()> {
    let werr = |why: String| CheckpointError::Write {
        path: dir.to_path_buf(),
        why,
    };
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| werr(format!("{e:?}")))?;
    let optim_bytes = optim.into_bytes().map_err(|e| werr(format!("{e:?}")))?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| werr(e.to_string()))?;
    let xbm_bytes = xbm.map(encode_xbm);
    let mut files = vec![
        ("model.bpk", &model_bytes[..]),
        ("optimizer.bpk", &optim_bytes[..]),
        ("state.json", &json[..]),
    ];
    if let Some(b) = &xbm_bytes {
        files.push((XBM_FILE, &b[..]));
    }
    atomic_dir(dir, crate::output::OutputKind::Checkpoint, |tmp| {
        for &(name, bytes) in &files {
            // Named as the file will be called in `dir`, not by its temporary path.
            atomic_write_bytes(&tmp.join(name), bytes).map_err(|e| match e {
                IoError::Os { source, .. } => format!("{name}: {source}"),
                other => other.to_string(),
            })?;
        }
        Ok(())
    })
    .map_err(|e| werr(e.to_string()))?;
    // A run killed while writing leaves its temporary folder (or, mid-swap, the old one);
    // now that a complete checkpoint is in place they are only clutter.
    crate::io::remove_stale_temps(dir);
    Ok(())
}

/// The checkpoint folder to resume from: `dir` if complete, else the `.name.old.*` sibling that
/// `atomic_dir` leaves for an instant during its swap (the one with the most steps, should
/// several runs have been killed there). Temporary `.name.<pid>.tmp` folders are never
/// returned: a kill may have cut them short.
pub fn find_checkpoint(dir: &Path) -> Option<PathBuf> {
    if dir.join("state.json").is_file() {
        return Some(dir.to_path_buf());
    }
    let parent = dir.parent()?;
    let name = dir.file_name()?.to_string_lossy().into_owned();
    let prefix = format!(".{name}.old.");
    fs::read_dir(parent)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .filter_map(|p| load_state(&p).ok().map(|st| (st.step, p)))
        .max()
        .map(|(_, p)| p)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| CheckpointError::Read {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Reads only `state.json` of a checkpoint folder.
pub fn load_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let state: TrainState =
        serde_json::from_slice(&read(&path)?).map_err(|e| CheckpointError::Read {
            path: path.clone(),
            why: e.to_string(),
        })?;
    if state.format != STATE_FORMAT {
        return Err(CheckpointError::Read {
            path,
            why: format!("format {} (this siam reads {STATE_FORMAT})", state.format),
        });
    }
    Ok(state)
}

/// Loads the model parameters of a checkpoint into `model` (same architecture), keeping the
/// recorded parameter ids. A shape or key mismatch is a [`CheckpointError::Mismatch`].
pub fn load_model<M: Module>(dir: &Path, model: M) -> Result<M> {
    let path = dir.join("model.bpk");
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(read(&path)?)).map_err(|e| {
        CheckpointError::Read {
            path: path.clone(),
            why: format!("{e:?}"),
        }
    })?;
    model
        .try_load_record(record)
        .map_err(|e| CheckpointError::Mismatch {
            path: dir.to_path_buf(),
            why: format!("{e:?}"),
        })
}

/// Loads the optimiser state of a checkpoint into a freshly built optimiser.
pub fn load_optimizer(dir: &Path, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let path = dir.join("optimizer.bpk");
    optim
        .from_bytes(Bytes::from_bytes_vec(read(&path)?))
        .map_err(|e| CheckpointError::Read {
            path,
            why: format!("{e:?}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::{build_adamw, split_params, AdamWSettings};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Tensor};

    fn state(fp: &str) -> TrainState {
        TrainState {
            format: STATE_FORMAT,
            fingerprint: fp.into(),
            step: 3,
            epoch: 1,
            batch_in_epoch: 2,
            seed: 7,
            schedule: CosineSchedule {
                base_lr: 0.1,
                warmup_steps: 1,
                total_steps: 10,
                min_lr: 0.0,
            },
            history: vec![],
            best: Some((0.5, 1)),
            epochs_since_best: 0,
            elapsed_s: 1.5,
            pairs_seen: 99,
            images_seen: 12,
            config: serde_json::json!({"loss": "triplet"}),
            mined: None,
        }
    }

    fn step(model: Linear, opt: &mut ModuleOptimizer, device: &Device) -> Linear {
        let x = Tensor::<2>::ones([2, 3], device);
        let loss = model.forward(x).square().sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        opt.step(0.05, model, grads)
    }

    fn values(m: &Linear) -> Vec<f32> {
        m.weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// Training 2 steps, checkpointing, then 2 more must equal training 2 steps, reloading
    /// everything from the checkpoint into fresh objects, then 2 more.
    #[test]
    fn resume_continues_exactly() {
        let device = Device::flex().autodiff();
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint");
        let settings = AdamWSettings::default();
        let model = LinearConfig::new(3, 2).init(&device);
        let mut opt = build_adamw(&settings, &split_params(&model));
        let model = step(model, &mut opt, &device);
        let model = step(model, &mut opt, &device);
        save(&ck, &model, &opt, &state("fp"), None).unwrap();
        let mut opt_a = opt.clone();
        let a = step(step(model, &mut opt_a, &device), &mut opt_a, &device);

        let fresh = LinearConfig::new(3, 2).init(&device);
        let loaded = load_model(&find_checkpoint(&ck).unwrap(), fresh).unwrap();
        let mut opt_b =
            load_optimizer(&ck, build_adamw(&settings, &split_params(&loaded))).unwrap();
        let b = step(step(loaded, &mut opt_b, &device), &mut opt_b, &device);
        assert_eq!(values(&a), values(&b));
        assert_eq!(load_state(&ck).unwrap(), state("fp"));
    }

    #[test]
    fn other_architecture_is_a_mismatch() {
        let device = Device::flex().autodiff();
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint");
        let model = LinearConfig::new(3, 2).init(&device);
        let opt = build_adamw(&AdamWSettings::default(), &split_params(&model));
        save(&ck, &model, &opt, &state("fp"), None).unwrap();
        let other = LinearConfig::new(4, 2).init(&device);
        let err = load_model(&ck, other).unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn memories_round_trip_and_bad_files_are_refused() {
        let m = vec![
            XbmSnapshot {
                dim: 2,
                rows: vec![1.0, -2.5, 0.25, 3.0],
                labels: vec![7, 9],
                next: 2,
                steps: 5,
            },
            XbmSnapshot::default(),
        ];
        let b = encode_xbm(&m);
        assert_eq!(decode_xbm(&b).unwrap(), m);
        assert!(decode_xbm(&b[..b.len() - 1]).is_err());
        assert!(decode_xbm(&b[1..]).is_err());
        let mut huge = b.clone();
        huge[8 + 8 + 8..8 + 8 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_xbm(&huge).is_err());
        let mut extra = b;
        extra.push(0);
        assert!(decode_xbm(&extra).is_err());
    }

    #[test]
    fn falls_back_to_the_old_folder_mid_swap() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, step: usize| {
            let p = dir.path().join(name);
            fs::create_dir_all(&p).unwrap();
            let st = TrainState {
                step,
                ..state("fp")
            };
            fs::write(p.join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
            p
        };
        write(".checkpoint.old.123", 3);
        let newest = write(".checkpoint.old.456", 5);
        // A temporary folder may hold a complete-looking state.json; it is never used.
        write(".checkpoint.789.tmp", 9);
        let ck = dir.path().join("checkpoint");
        assert_eq!(find_checkpoint(&ck), Some(newest));
    }

    #[test]
    fn a_new_checkpoint_clears_what_killed_runs_left() {
        let device = Device::flex().autodiff();
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint");
        fs::create_dir_all(dir.path().join(".checkpoint.1.tmp")).unwrap();
        fs::create_dir_all(dir.path().join(".checkpoint.old.2")).unwrap();
        let model = LinearConfig::new(3, 2).init(&device);
        let opt = build_adamw(&AdamWSettings::default(), &split_params(&model));
        save(&ck, &model, &opt, &state("fp"), None).unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["checkpoint"]);
    }
}
