//! Hugging Face model directories: `config.json`, `*.safetensors`, `tokenizer.json`; load and
//! export.

use crate::model::{ModelConfig, TextTokenizer, Weights};
use anyhow::Result;
use candle_core::Device;
use std::path::Path;

/// Load config, weights and tokenizer from a Hugging Face model directory.
pub fn load_hf_dir(dir: &Path, _device: &Device) -> Result<(ModelConfig, Weights, TextTokenizer)> {
    anyhow::bail!("{}: HF directory loading not implemented yet", dir.display())
}
