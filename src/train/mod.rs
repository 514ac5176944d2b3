//! The training loop: towers, heads, feature cache, optimiser, checkpoints.

pub mod schedule;
