//! The training loop: towers, heads, feature cache, optimiser, checkpoints.
