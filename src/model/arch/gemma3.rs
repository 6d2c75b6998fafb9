//! Gemma 3: four RMS norms per block, RMS-normed queries and keys, `1 + w` norms, a scaled
//! embedding, sliding-window layers with their own RoPE base (10 000) and one global layer in
//! every six (as `layer_types` or `sliding_window_pattern` says).

use super::{layer_types, Arch, Defaults, HfConfig, Layout};
use crate::model::config::{Activation, ModelConfig};
use anyhow::Result;
use serde_json::{json, Value};

pub const LAYOUT: Layout = Layout {
    sandwich_norms: true,
    qk_norm: true,
    norm_plus_one: true,
    embed_scale: true,
};

pub const DEFAULTS: Defaults = Defaults {
    activation: Activation::GeluTanh,
    rope_theta: 1_000_000.0,
    tie_word_embeddings: true,
};

pub const HF_MODEL_TYPES: &[&str] = &["gemma3_text", "gemma3"];

/// Configuration from a Gemma 3 `config.json` (or its `text_config`).
pub fn from_hf(h: &HfConfig) -> Result<ModelConfig> {
    let rope = h.rope()?;
    let mut c = h.base(Arch::Gemma3, &rope)?;
    c.rope_local_theta = Some(rope.local_theta.unwrap_or(10_000.0));
    c.query_pre_attn_scalar = Some(
        h.opt_f("query_pre_attn_scalar")
            .unwrap_or(c.head_dim as f64),
    );
    c.attn_logit_softcapping = h.opt_f("attn_logit_softcapping");
    c.final_logit_softcapping = h.opt_f("final_logit_softcapping");
    let unstated = h.opt_u("sliding_window_pattern").unwrap_or(6);
    h.set_window(&mut c, unstated)?;
    Ok(c)
}

/// The Gemma 3-specific fields of an exported `config.json`.
pub fn hf_json(c: &ModelConfig) -> Value {
    json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": c.query_pre_attn_scalar.unwrap_or(c.head_dim as f64),
        "rope_local_base_freq": c.rope_local_theta.unwrap_or(10000.0),
        "sliding_window": c.sliding_window,
        "sliding_window_pattern": c.sliding_window_pattern,
        "layer_types": layer_types(c),
        "final_logit_softcapping": c.final_logit_softcapping,
        "attn_logit_softcapping": c.attn_logit_softcapping,
    })
}
