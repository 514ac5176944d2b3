//! What a run tells the world: [`Event`]s while it goes (the CLI draws them), the
//! [`TrainReport`] at the end (`--report`), the validation metric names ([`metric_map`]) and
//! the curves (`loss.png`, `recall.png`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::checkpoint::EpochRecord;
use super::config::TrainConfig;
use super::metrics::StepMetrics;
use super::TrainError;
use crate::eval::retrieval::RetrievalReport;
use crate::model::folder::InitialWeights;

/// Something the run reports while it goes (the CLI draws it; tests may ignore it).
#[derive(Debug, Clone)]
pub enum Event {
    /// A line worth showing (model source, data, cache use).
    Info(String),
    /// Training starts: total steps of the run, steps already done.
    Start {
        /// Optimiser steps of the whole run.
        total_steps: usize,
        /// Steps already done (resumed runs).
        done: usize,
    },
    /// One optimiser step.
    Step(StepMetrics),
    /// Validation before training (epoch 0) or after an epoch.
    Epoch(EpochRecord),
    /// A checkpoint was written.
    Checkpoint(PathBuf),
    /// Something looks wrong with the run (the collapse warning of [`super::health`]).
    Warning(String),
}

/// Receives [`Event`]s.
pub trait Observer {
    /// Called for every event.
    fn event(&mut self, e: &Event);
}

/// The summary written by `--report` and returned by [`super::train`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// The resolved configuration.
    pub config: TrainConfig,
    /// Where the weights came from.
    pub initial_weights: InitialWeights,
    /// Validation metrics before training (`None` when resumed, or no validation split).
    pub before: Option<BTreeMap<String, f64>>,
    /// Validation metrics of the model written to the output folder.
    pub after: Option<BTreeMap<String, f64>>,
    /// Epoch whose weights were kept (best by the selection metric, else the last).
    pub kept_epoch: usize,
    /// Optimiser steps done in total.
    pub steps: usize,
    /// Epochs done.
    pub epochs: usize,
    /// Whether early stopping ended the run.
    pub early_stopped: bool,
    /// Whether the run reached its end (false when `max_steps` stopped it; the output folder
    /// then holds only the checkpoint).
    pub finished: bool,
    /// Wall-clock seconds of training (all invocations).
    pub train_seconds: f64,
    /// Anchor-reference pairs per second over the run.
    pub pairs_per_second: f64,
    /// Images per second over the run.
    pub images_per_second: f64,
    /// The output model folder.
    pub output: PathBuf,
    /// Validation history.
    pub history: Vec<EpochRecord>,
    /// Scalar values in trainable parameters.
    pub trainable_parameters: usize,
    /// Scalar values in frozen parameters.
    pub frozen_parameters: usize,
    /// Warnings raised during the run (collapse), in order.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Metric names of a report: `i2t_r1`, ..., `t2i_r10`, `mean_r1`, `mean_r5` (the names
/// `--select-metric` takes, [`super::config::SELECT_METRICS`]).
pub fn metric_map(r: &RetrievalReport) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for (name, d) in [("i2t", &r.image_to_text), ("t2i", &r.text_to_image)] {
        m.insert(format!("{name}_r1"), d.recall_at_1);
        m.insert(format!("{name}_r5"), d.recall_at_5);
        m.insert(format!("{name}_r10"), d.recall_at_10);
    }
    m.insert(
        "mean_r1".into(),
        0.5 * (r.image_to_text.recall_at_1 + r.text_to_image.recall_at_1),
    );
    m.insert(
        "mean_r5".into(),
        0.5 * (r.image_to_text.recall_at_5 + r.text_to_image.recall_at_5),
    );
    m
}

/// `loss.png`: training loss per step; `recall.png`: validation recall@1 and @5 per epoch.
pub fn write_curves(out: &Path, metrics: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    let steps = super::metrics::read(metrics).unwrap_or_default();
    let loss: Vec<(f32, f32)> = steps
        .iter()
        .map(|m| (m.step as f32, m.loss as f32))
        .collect();
    crate::eval::plot::line_chart(
        &[("train loss".to_string(), loss)],
        "training loss",
        "step",
        "loss",
        &out.join("loss.png"),
    )?;
    if history.iter().any(|h| !h.metrics.is_empty()) {
        let series: Vec<(String, Vec<(f32, f32)>)> = ["i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"]
            .iter()
            .map(|k| {
                (
                    k.replace("_r", " recall@"),
                    history
                        .iter()
                        .filter_map(|h| h.metrics.get(*k).map(|v| (h.epoch as f32, *v as f32)))
                        .collect(),
                )
            })
            .collect();
        crate::eval::plot::line_chart(
            &series,
            "validation recall",
            "epoch",
            "recall",
            &out.join("recall.png"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_selectable_metric_is_reported() {
        use crate::eval::retrieval::{retrieval_report, Positives};
        let img = [1.0f32, 0.0, 0.0, 1.0];
        let r = retrieval_report(
            &img,
            &img,
            2,
            Positives::Labels {
                image_labels: &[0, 1],
                text_labels: &[0, 1],
            },
        )
        .unwrap();
        let m = super::metric_map(&r);
        for name in super::super::config::SELECT_METRICS {
            assert!(m.contains_key(*name), "{name}");
        }
        assert_eq!(m["mean_r1"], 1.0);
    }
}
