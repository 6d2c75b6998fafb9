//! unlearn — remove specific knowledge from a language model, prove it is gone, and keep the
//! model working.
//!
//! The library follows the data's way through the program: a model is loaded ([`model`]),
//! run with hooks and trained on a chosen subset of its weights.

pub mod bench;
pub mod cli;
pub mod data;
pub mod eval;
pub mod forget;
pub mod locate;
pub mod model;
pub mod outdir;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod util;
