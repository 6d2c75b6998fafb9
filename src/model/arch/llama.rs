//! The Llama family: pre-norm blocks with SiLU-gated MLPs and plain RMS norms. Llama 2/3 and
//! SmolLM2 (`llama`, with Llama 3.1's RoPE scaling), Mistral (`mistral`: a sliding window on
//! every layer) and Qwen2 (`qwen2`: biases on the q/k/v projections).

use super::{Arch, Defaults, HfConfig, Layout};
use crate::model::config::{Activation, ModelConfig};
use anyhow::Result;
use serde_json::{json, Value};

pub const LAYOUT: Layout = Layout {
    sandwich_norms: false,
    qk_norm: false,
    norm_plus_one: false,
    embed_scale: false,
};

pub const DEFAULTS: Defaults = Defaults {
    activation: Activation::Silu,
    rope_theta: 10_000.0,
    tie_word_embeddings: false,
};

pub const HF_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2"];

/// Configuration from a Llama, Mistral or Qwen2 `config.json`.
pub fn from_hf(h: &HfConfig, model_type: &str) -> Result<ModelConfig> {
    let rope = h.rope()?;
    let mut c = h.base(Arch::Llama, &rope)?;
    match model_type {
        "qwen2" => {
            h.refuse_qwen_window()?;
            c.attention_bias = h.opt_bool("attention_bias").unwrap_or(true);
        }
        "mistral" => c.sliding_window = h.opt_u("sliding_window"),
        _ => {}
    }
    Ok(c)
}

/// The model type an export names: Qwen2 for q/k/v biases, Mistral for a sliding window.
pub fn hf_json(c: &ModelConfig) -> Value {
    let (arch, model_type) = if c.attention_bias {
        ("Qwen2ForCausalLM", "qwen2")
    } else if c.sliding_window.is_some() {
        ("MistralForCausalLM", "mistral")
    } else {
        ("LlamaForCausalLM", "llama")
    };
    json!({
        "architectures": [arch],
        "model_type": model_type,
        "hidden_act": "silu",
        "attention_bias": c.attention_bias,
        "mlp_bias": false,
        "sliding_window": c.sliding_window,
    })
}
