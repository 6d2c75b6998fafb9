//! Gemma 2: four RMS norms per block (before and after attention and the MLP), `1 + w` norms,
//! a scaled embedding, soft-capping of the attention scores and of the final logits, and a
//! sliding window on every other layer (layers 0, 2, … local; 1, 3, … global).

use super::{layer_types, Arch, Defaults, HfConfig, Layout};
use crate::model::config::{Activation, ModelConfig};
use anyhow::Result;
use serde_json::{json, Value};

pub const LAYOUT: Layout = Layout {
    sandwich_norms: true,
    qk_norm: false,
    norm_plus_one: true,
    embed_scale: true,
};

pub const DEFAULTS: Defaults = Defaults {
    activation: Activation::GeluTanh,
    rope_theta: 10_000.0,
    tie_word_embeddings: true,
};

pub const HF_MODEL_TYPES: &[&str] = &["gemma2"];

/// transformers' defaults for the soft caps when `config.json` does not state them.
const ATTN_SOFTCAP: f64 = 50.0;
const FINAL_SOFTCAP: f64 = 30.0;

/// Configuration from a Gemma 2 `config.json`.
pub fn from_hf(h: &HfConfig) -> Result<ModelConfig> {
    let rope = h.rope()?;
    let mut c = h.base(Arch::Gemma2, &rope)?;
    c.query_pre_attn_scalar = Some(
        h.opt_f("query_pre_attn_scalar")
            .unwrap_or(c.head_dim as f64),
    );
    c.attn_logit_softcapping = h.opt_f_or("attn_logit_softcapping", ATTN_SOFTCAP);
    c.final_logit_softcapping = h.opt_f_or("final_logit_softcapping", FINAL_SOFTCAP);
    h.set_window(&mut c, 2)?;
    Ok(c)
}

/// The Gemma 2-specific fields of an exported `config.json`.
pub fn hf_json(c: &ModelConfig) -> Value {
    json!({
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": c.query_pre_attn_scalar.unwrap_or(c.head_dim as f64),
        "sliding_window": c.sliding_window,
        "layer_types": layer_types(c),
        "attn_logit_softcapping": c.attn_logit_softcapping,
        "final_logit_softcapping": c.final_logit_softcapping,
    })
}
