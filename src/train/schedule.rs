//! Learning-rate schedule: linear warm-up, then a half cosine down to a floor.
//!
//! The formula is open_clip's `cosine_lr` (`src/open_clip_train/scheduler.py`), evaluated once per
//! optimiser step `s` (0-based):
//!
//! ```text
//! s <  W:  lr(s) = base * (s + 1) / W
//! s >= W:  e = s - W,  E = T - W,
//!          lr(s) = floor + 0.5 * (1 + cos(pi * e / E)) * (base - floor)
//! ```
//!
//! with `W` warm-up steps and `T` total steps. open_clip has no floor (`floor = 0`); a floor lets
//! long runs keep learning a little at the end. The PyTorch reference in
//! `tests/fixtures/train/make_train_reference.py` uses the same expression.

use serde::{Deserialize, Serialize};

/// A warm-up + cosine schedule over a known number of optimiser steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// Peak learning rate, reached at the end of warm-up.
    pub base_lr: f64,
    /// Number of linear warm-up steps (`W`).
    pub warmup_steps: usize,
    /// Total number of optimiser steps (`T`).
    pub total_steps: usize,
    /// Learning rate at the end of the cosine (0 in open_clip).
    pub min_lr: f64,
}

impl CosineSchedule {
    /// The learning rate for optimiser step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        if span == 0 {
            return self.base_lr;
        }
        let e = (step - self.warmup_steps).min(span) as f64;
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * e / span as f64).cos());
        self.min_lr + cos * (self.base_lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_and_reaches_base() {
        let s = CosineSchedule {
            base_lr: 1e-3,
            warmup_steps: 4,
            total_steps: 10,
            min_lr: 0.0,
        };
        assert!(close(s.lr(0), 0.25e-3));
        assert!(close(s.lr(1), 0.5e-3));
        assert!(close(s.lr(3), 1e-3));
    }

    #[test]
    fn cosine_halves_at_midpoint_and_ends_at_floor() {
        let s = CosineSchedule {
            base_lr: 1.0,
            warmup_steps: 2,
            total_steps: 12,
            min_lr: 0.1,
        };
        // step 2 is the first cosine step: cos(0) = 1, full base.
        assert!(close(s.lr(2), 1.0));
        // e = 5 of E = 10: cos(pi/2) = 0, so halfway between floor and base.
        assert!(close(s.lr(7), 0.1 + 0.5 * 0.9));
        assert!(close(s.lr(12), 0.1));
        // Past the end it stays at the floor instead of rising again.
        assert!(close(s.lr(40), 0.1));
    }

    #[test]
    fn no_warmup_starts_at_base() {
        let s = CosineSchedule {
            base_lr: 2.0,
            warmup_steps: 0,
            total_steps: 4,
            min_lr: 0.0,
        };
        assert!(close(s.lr(0), 2.0));
        assert!(close(s.lr(2), 1.0));
    }
}
