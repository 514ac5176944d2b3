//! The binary's front ends (declared from `src/main.rs`, not part of the library): one module
//! per `siam` subcommand, each a `clap::Args` struct (mostly the library's own settings
//! sections, flattened) and a `run` function that calls the library. Subcommand modules never
//! call each other; what they share (model loading, zero-shot labels and templates, progress
//! bars, the bad-image summary) is in [`common`]; `siam train --prompt` is the train module's
//! own `train/prompt.rs`. `src/main.rs` only parses, dispatches and reports errors.

pub mod classify;
pub mod common;
pub mod demo_data;
pub mod embed;
pub mod eval;
pub mod export;
pub mod index;
pub mod merge;
pub mod pseudo_label;
pub mod query;
pub mod serve;
pub mod train;
