//! The architectures the transformer runs, each one's differences in one file: its block layout
//! (which norms, q/k norms, the `1 + w` norm convention, the embedding scale), how its Hugging
//! Face `config.json` maps onto [`ModelConfig`], how its stored tensors map onto the ones the
//! transformer uses, and what an export writes back.
//!
//! * [`gemma`]: Gemma 1. * [`gemma2`]: Gemma 2 (soft-capping, alternating sliding windows).
//! * [`gemma3`]: Gemma 3 (q/k norms, local and global RoPE bases).
//! * [`llama`]: Llama 2/3/3.1, SmolLM2, Mistral (sliding window), Qwen2 (q/k/v bias).
//! * [`phi3`]: Phi-3 / Phi-3.5 (fused qkv and gate/up projections, LongRoPE, a sliding window).
//! * [`qwen3`]: Qwen 3 (q/k norms without bias).

pub mod gemma;
pub mod gemma2;
pub mod gemma3;
mod hf_config;
pub mod llama;
pub mod phi3;
pub mod qwen3;

pub use hf_config::{config_from_hf, HfConfig, LongRopeParams};

use crate::model::config::ModelConfig;
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which block layout the model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Gemma 1: Llama's block with GELU-tanh, `1 + w` norms and a scaled embedding.
    Gemma,
    /// Gemma 2: four norms per block, attention and final logit soft-capping, sliding-window
    /// attention on every other layer.
    Gemma2,
    /// Gemma 3: four norms per block, q/k norms, local and global RoPE bases.
    Gemma3,
    /// Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2 with qkv bias).
    Llama,
    /// Qwen 3: Llama's block with RMS-normed queries and keys.
    Qwen3,
    /// Phi-3: Llama's block stored with fused projections; LongRoPE.
    Phi3,
}

/// What a block computes beyond the shared pre-norm attention + gated MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Norms after attention and after the MLP as well as before each (Gemma 2/3).
    pub sandwich_norms: bool,
    /// RMS norms on each query and key head before RoPE (Gemma 3, Qwen 3).
    pub qk_norm: bool,
    /// Norm weights are stored as `w` and multiply by `1 + w` (Gemma).
    pub norm_plus_one: bool,
    /// Token embeddings are multiplied by sqrt(hidden size) (Gemma).
    pub embed_scale: bool,
}

/// What a configuration that does not say takes (`config.json` or GGUF metadata alike).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Defaults {
    pub activation: crate::model::config::Activation,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
}

impl Arch {
    /// Every architecture, for listings.
    pub const ALL: [Arch; 6] = [
        Arch::Gemma,
        Arch::Gemma2,
        Arch::Gemma3,
        Arch::Llama,
        Arch::Phi3,
        Arch::Qwen3,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Llama => "llama",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
        }
    }

    /// The block layout of this architecture.
    pub fn layout(&self) -> Layout {
        match self {
            Arch::Gemma => gemma::LAYOUT,
            Arch::Gemma2 => gemma2::LAYOUT,
            Arch::Gemma3 => gemma3::LAYOUT,
            Arch::Llama => llama::LAYOUT,
            Arch::Qwen3 => qwen3::LAYOUT,
            Arch::Phi3 => phi3::LAYOUT,
        }
    }

    /// The defaults of this architecture's configuration.
    pub fn defaults(&self) -> Defaults {
        match self {
            Arch::Gemma => gemma::DEFAULTS,
            Arch::Gemma2 => gemma2::DEFAULTS,
            Arch::Gemma3 => gemma3::DEFAULTS,
            Arch::Llama => llama::DEFAULTS,
            Arch::Qwen3 => qwen3::DEFAULTS,
            Arch::Phi3 => phi3::DEFAULTS,
        }
    }

    /// The architecture of a Hugging Face `model_type`.
    pub fn from_hf_model_type(model_type: &str) -> Option<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.hf_model_types().contains(&model_type))
    }

    /// The `model_type` values of `config.json` that map to this architecture.
    pub fn hf_model_types(&self) -> &'static [&'static str] {
        match self {
            Arch::Gemma => gemma::HF_MODEL_TYPES,
            Arch::Gemma2 => gemma2::HF_MODEL_TYPES,
            Arch::Gemma3 => gemma3::HF_MODEL_TYPES,
            Arch::Llama => llama::HF_MODEL_TYPES,
            Arch::Qwen3 => qwen3::HF_MODEL_TYPES,
            Arch::Phi3 => phi3::HF_MODEL_TYPES,
        }
    }

    /// Every `model_type` unlearn reads, for error messages.
    pub fn supported_hf_model_types() -> String {
        Arch::ALL
            .iter()
            .flat_map(|a| a.hf_model_types().iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The architecture-specific part of the Hugging Face `config.json` an export writes
    /// (`architectures`, `model_type`, activation and the architecture's own fields).
    pub fn hf_json(&self, c: &ModelConfig) -> serde_json::Value {
        match self {
            Arch::Gemma => gemma::hf_json(c),
            Arch::Gemma2 => gemma2::hf_json(c),
            Arch::Gemma3 => gemma3::hf_json(c),
            Arch::Llama => llama::hf_json(c),
            Arch::Qwen3 => qwen3::hf_json(c),
            Arch::Phi3 => phi3::hf_json(c),
        }
    }

    /// Tensors as a checkpoint stores them (Hugging Face names; GGUF's after renaming) → the
    /// tensors the transformer uses: Phi-3's fused projections split.
    pub fn tensors_from_hf(&self, c: &ModelConfig, t: &mut BTreeMap<String, Tensor>) -> Result<()> {
        match self {
            Arch::Phi3 => phi3::split_fused(c, t),
            _ => Ok(()),
        }
    }

    /// The inverse of [`tensors_from_hf`](Self::tensors_from_hf), for an export.
    pub fn tensors_to_hf(&self, c: &ModelConfig, t: &mut BTreeMap<String, Tensor>) -> Result<()> {
        match self {
            Arch::Phi3 => phi3::fuse(c, t),
            _ => Ok(()),
        }
    }
}

/// `layer_types` of an export: which layers attend within the sliding window.
fn layer_types(c: &ModelConfig) -> Vec<&'static str> {
    (0..c.num_layers)
        .map(|l| {
            if c.is_sliding(l) {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect()
}
