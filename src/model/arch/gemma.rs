//! Gemma 1 (Gemma-2B/7B): Llama's block with GELU-tanh, `1 + w` RMS norms, an embedding scaled
//! by sqrt(hidden size) and tied embeddings.

use super::{Arch, Defaults, HfConfig, Layout};
use crate::model::config::{Activation, ModelConfig};
use anyhow::Result;
use serde_json::{json, Value};

pub const LAYOUT: Layout = Layout {
    sandwich_norms: false,
    qk_norm: false,
    norm_plus_one: true,
    embed_scale: true,
};

pub const DEFAULTS: Defaults = Defaults {
    activation: Activation::GeluTanh,
    rope_theta: 10_000.0,
    tie_word_embeddings: true,
};

pub const HF_MODEL_TYPES: &[&str] = &["gemma"];

/// Configuration from a Gemma `config.json`.
pub fn from_hf(h: &HfConfig) -> Result<ModelConfig> {
    h.base(Arch::Gemma, &h.rope()?)
}

/// The Gemma-specific fields of an exported `config.json`.
pub fn hf_json(_: &ModelConfig) -> Value {
    json!({
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
    })
}
