//! Per-step training metrics as JSON lines (`metrics.jsonl` in the run folder).
//!
//! One object per optimiser step, appended and flushed as the run goes, so `tail -f` shows
//! progress and a crash keeps everything logged until then. On `--resume` the file is cut back to
//! the checkpoint's step ([`MetricsLog::resume`]), so steps that are trained again after a crash
//! are not logged twice.

use serde::{Deserialize, Serialize};

use super::health::LearningStats;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimiser step (1-based: the number of updates done after this one).
    pub step: usize,
    /// Epoch (1-based).
    pub epoch: usize,
    /// Loss of the step (mean over both directions).
    pub loss: f64,
    /// Loss with image anchors and text references.
    pub loss_i2t: f64,
    /// Loss with text anchors and image references.
    pub loss_t2i: f64,
    /// Active fraction, mean positive and negative similarity, their gap, and the image
    /// embeddings' spread (`active_fraction`, `pos_sim`, `neg_sim`, `gap`, `spread` in the JSON).
    #[serde(flatten)]
    pub stats: LearningStats,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Anchor-reference pairs compared per second in this step.
    pub pairs_per_s: f64,
    /// Seconds since the run (including resumed parts) started.
    pub time_s: f64,
}

/// Errors of the metrics log.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The log could not be opened, read or written.
    #[error("metrics log {path}: {cause}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// The open `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MetricsError + '_ {
        move |cause| MetricsError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }

    /// Starts a new log at `path`, replacing any old one.
    pub fn create(path: &Path) -> Result<Self, MetricsError> {
        let file = File::create(path).map_err(Self::io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Reopens the log of a resumed run, keeping only the lines of steps `<= step`.
    pub fn resume(path: &Path, step: usize) -> Result<Self, MetricsError> {
        let kept = read(path)
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.step <= step)
            .collect::<Vec<_>>();
        let mut body = Vec::new();
        for m in &kept {
            serde_json::to_writer(&mut body, m).expect("metrics serialise");
            body.push(b'\n');
        }
        crate::io::atomic_write_bytes(path, &body).map_err(|e| MetricsError::Io {
            path: path.to_path_buf(),
            cause: std::io::Error::other(e.to_string()),
        })?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(Self::io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one step and flushes it.
    pub fn push(&mut self, m: &StepMetrics) -> Result<(), MetricsError> {
        let mut line = serde_json::to_vec(m).expect("metrics serialise");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(Self::io(&self.path))
    }
}

/// Reads a metrics log; lines that do not parse (a line cut by a crash) are skipped.
pub fn read(path: &Path) -> Result<Vec<StepMetrics>, MetricsError> {
    let f = File::open(path).map_err(MetricsLog::io(path))?;
    Ok(BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(step: usize) -> StepMetrics {
        StepMetrics {
            step,
            epoch: 1,
            loss: step as f64,
            loss_i2t: 0.0,
            loss_t2i: 0.0,
            stats: LearningStats {
                active_fraction: 0.5,
                ..Default::default()
            },
            lr: 1e-3,
            grad_norm: 1.0,
            pairs_per_s: 10.0,
            time_s: 0.1,
        }
    }

    #[test]
    fn resume_drops_steps_after_the_checkpoint_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&p).unwrap();
        for s in 1..=5 {
            log.push(&m(s)).unwrap();
        }
        drop(log);
        // A crash mid-write leaves a torn last line.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"step\": 6, \"ep").unwrap();
        drop(f);
        let mut log = MetricsLog::resume(&p, 3).unwrap();
        log.push(&m(4)).unwrap();
        let steps: Vec<usize> = read(&p).unwrap().iter().map(|m| m.step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
    }
}
