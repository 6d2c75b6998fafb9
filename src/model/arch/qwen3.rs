//! Qwen 3: the Llama block with RMS-normed query and key heads (plain `w` norms) before RoPE,
//! and no q/k/v biases.

use super::{Arch, Defaults, HfConfig, Layout};
use crate::model::config::{Activation, ModelConfig};
use anyhow::Result;
use serde_json::{json, Value};

pub const LAYOUT: Layout = Layout {
    sandwich_norms: false,
    qk_norm: true,
    norm_plus_one: false,
    embed_scale: false,
};

pub const DEFAULTS: Defaults = Defaults {
    activation: Activation::Silu,
    rope_theta: 10_000.0,
    tie_word_embeddings: false,
};

pub const HF_MODEL_TYPES: &[&str] = &["qwen3"];

/// Configuration from a Qwen 3 `config.json`.
pub fn from_hf(h: &HfConfig) -> Result<ModelConfig> {
    h.refuse_qwen_window()?;
    let rope = h.rope()?;
    h.base(Arch::Qwen3, &rope)
}

/// The Qwen 3-specific fields of an exported `config.json`.
pub fn hf_json(c: &ModelConfig) -> Value {
    json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_act": "silu",
        "attention_bias": c.attention_bias,
    })
}
