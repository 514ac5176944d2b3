//! Command-line front ends: one module per `siam` subcommand, each a `clap::Args` struct and a
//! `run` function that calls the library. `src/main.rs` only dispatches.

pub mod classify;
pub mod common;
pub mod demo_data;
pub mod embed;
pub mod eval;
pub mod export;
pub mod index;
pub mod merge;
pub mod prompt;
pub mod pseudo_label;
pub mod query;
pub mod train;
