//! Model configuration: the architecture-independent description of a decoder-only transformer
//! that the hooked transformer runs; what differs between architectures lives in
//! [`crate::model::arch`].

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

pub use crate::model::arch::Arch;

/// Activation of the gated MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
    /// SiLU / swish (Llama).
    Silu,
}

/// Llama 3 style RoPE frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// LongRoPE frequency scaling (Phi-3's `longrope`, formerly `su`): each RoPE frequency divided
/// by its factor (one per rotary pair) — the short factors for a sequence of at most
/// `original_max_position_embeddings` tokens, the long ones for a longer sequence — and cos and
/// sin multiplied by `attention_factor` whatever the length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub original_max_position_embeddings: usize,
    pub attention_factor: f64,
}

/// Everything the forward pass needs to know about a model's shape and numerics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE base of global layers.
    pub rope_theta: f64,
    /// RoPE base of sliding-window (local) layers (Gemma 3: 10 000).
    pub rope_local_theta: Option<f64>,
    /// Sliding window of local layers (Gemma 3 270M: 512).
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer (1-based: layers n-1, 2n-1, …) is global; the others use the window.
    pub sliding_window_pattern: Option<usize>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Attention scores are scaled by 1/sqrt(query_pre_attn_scalar) (Gemma) instead of
    /// 1/sqrt(head_dim).
    pub query_pre_attn_scalar: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub activation: Activation,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Linear RoPE scaling (positions divided by this factor) of the layers that use the
    /// global base (Gemma 3 4B and larger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_linear_factor: Option<f64>,
    /// Per-frequency divisors of the global layers' RoPE frequencies, as llama.cpp stores
    /// Llama 3.1's scaling (`rope_freqs.weight`): one per rotary pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_freq_factors: Option<Vec<f64>>,
    /// LongRoPE of the global layers (Phi-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_longrope: Option<LongRope>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// A plain Llama-architecture configuration (no biases, windows, caps or RoPE scaling;
    /// untied; BOS 1, EOS 2, PAD 0) of the given sizes, `head_dim = hidden / heads`.
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        vocab: usize,
        hidden: usize,
        intermediate: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        rope_theta: f64,
        rms_norm_eps: f64,
    ) -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hidden / heads.max(1),
            rms_norm_eps,
            rope_theta,
            rope_local_theta: None,
            sliding_window: None,
            sliding_window_pattern: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: false,
            attention_bias: false,
            query_pre_attn_scalar: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            activation: Activation::Silu,
            rope_scaling: None,
            rope_linear_factor: None,
            rope_freq_factors: None,
            rope_longrope: None,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: Some(0),
        }
    }

    /// True when layer `l` attends only within the sliding window.
    pub fn is_sliding(&self, l: usize) -> bool {
        match (self.sliding_window, self.sliding_window_pattern) {
            (Some(_), Some(p)) if p > 0 => !(l + 1).is_multiple_of(p),
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// RoPE of layer `l`: its base, and whether the global frequency scaling applies (it does
    /// on every layer that uses the global base).
    pub fn rope_of(&self, l: usize) -> (f64, bool) {
        match self.rope_local_theta {
            Some(local) if self.is_sliding(l) => (local, false),
            _ => (self.rope_theta, true),
        }
    }

    /// The frequency scalings of the RoPE tables of a layer (`scaled`: one that takes the global
    /// scaling, see [`rope_of`](Self::rope_of)), one table each: a single one, or with LongRoPE
    /// the short and the long one (see [`rope_table_of`](Self::rope_table_of)).
    pub fn rope_scalings(&self, scaled: bool) -> Vec<crate::model::ops::RopeScaling<'_>> {
        let base = crate::model::ops::RopeScaling {
            llama3: self.rope_scaling.as_ref().filter(|_| scaled),
            linear: self.rope_linear_factor.filter(|_| scaled),
            factors: self.rope_freq_factors.as_deref().filter(|_| scaled),
            cos_sin_scale: None,
        };
        match self.rope_longrope.as_ref() {
            None => vec![base],
            Some(lr) => [&lr.short_factor, &lr.long_factor]
                .into_iter()
                .map(|f| crate::model::ops::RopeScaling {
                    factors: scaled.then_some(f.as_slice()),
                    cos_sin_scale: scaled.then_some(lr.attention_factor),
                    ..base
                })
                .collect(),
        }
    }

    /// Which of the [`rope_scalings`](Self::rope_scalings) tables a sequence of `len` tokens
    /// (those cached before it included) takes: 0, or with LongRoPE 1 (the long factors) when it
    /// is longer than the original context, as transformers chooses by the length it runs.
    pub fn rope_table_of(&self, len: usize) -> usize {
        match &self.rope_longrope {
            Some(lr) if len > lr.original_max_position_embeddings => 1,
            _ => 0,
        }
    }

    /// Scale applied to q·k.
    pub fn attn_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// How attention scores are formed: the q·k scale and the soft cap.
    pub fn attn_scores(&self) -> crate::model::ops::AttnScores {
        crate::model::ops::AttnScores {
            scale: self.attn_scale(),
            softcap: self.attn_logit_softcapping,
        }
    }

    /// Scale applied to the token embeddings (Gemma: sqrt(hidden)).
    pub fn embed_scale(&self) -> f64 {
        if self.arch.layout().embed_scale {
            (self.hidden_size as f64).sqrt()
        } else {
            1.0
        }
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn param_count(&self) -> usize {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_heads * hd;
        let kv = self.num_kv_heads * hd;
        let mut per_layer = d * q + 2 * d * kv + q * d + 3 * d * f;
        if self.attention_bias {
            per_layer += q + 2 * kv;
        }
        let layout = self.arch.layout();
        per_layer += if layout.sandwich_norms { 4 * d } else { 2 * d };
        if layout.qk_norm {
            per_layer += 2 * hd;
        }
        let mut n = self.vocab_size * d + self.num_layers * per_layer + d;
        if !self.tie_word_embeddings {
            n += self.vocab_size * d;
        }
        n
    }

    /// Check that the numbers make sense before any tensor is built.
    pub fn validate(&self) -> Result<()> {
        let checks: [(&str, usize); 6] = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in checks {
            if v == 0 {
                bail!("model config: `{name}` must be positive, got 0");
            }
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!(
                "model config: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "model config: head_dim ({}) must be even for RoPE",
                self.head_dim
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            bail!(
                "model config: rms_norm_eps must be a positive number, got {}",
                self.rms_norm_eps
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!(
                "model config: rope_theta must be a positive number, got {}",
                self.rope_theta
            );
        }
        if let Some(lr) = &self.rope_longrope {
            self.validate_longrope(lr)?;
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 || f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                bail!(
                    "model config: {} RoPE frequency factors for head_dim {} (expected {} positive numbers)",
                    f.len(),
                    self.head_dim,
                    self.head_dim / 2
                );
            }
        }
        Ok(())
    }

    /// LongRoPE: one positive factor per rotary pair in each set, a positive attention factor and
    /// original context, and no other frequency scaling beside it.
    fn validate_longrope(&self, lr: &LongRope) -> Result<()> {
        for (name, f) in [("short", &lr.short_factor), ("long", &lr.long_factor)] {
            if f.len() != self.head_dim / 2 || f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                bail!(
                    "model config: {} LongRoPE {name} factors for head_dim {} (expected {} positive numbers)",
                    f.len(),
                    self.head_dim,
                    self.head_dim / 2
                );
            }
        }
        if !(lr.attention_factor.is_finite() && lr.attention_factor > 0.0) {
            bail!(
                "model config: LongRoPE attention factor must be a positive number, got {}",
                lr.attention_factor
            );
        }
        if lr.original_max_position_embeddings == 0 {
            bail!("model config: LongRoPE original_max_position_embeddings must be positive");
        }
        if self.rope_scaling.is_some()
            || self.rope_linear_factor.is_some()
            || self.rope_freq_factors.is_some()
        {
            bail!("model config: LongRoPE cannot be combined with another RoPE scaling");
        }
        Ok(())
    }

    /// The Hugging Face `config.json` for this model (what transformers needs to load it).
    pub fn to_hf_json(&self) -> serde_json::Value {
        use serde_json::json;
        let mut v = self.arch.hf_json(self);
        let o = v.as_object_mut().expect("object");
        o.insert("vocab_size".into(), self.vocab_size.into());
        o.insert("hidden_size".into(), self.hidden_size.into());
        o.insert("intermediate_size".into(), self.intermediate_size.into());
        o.insert("num_hidden_layers".into(), self.num_layers.into());
        o.insert("num_attention_heads".into(), self.num_heads.into());
        o.insert("num_key_value_heads".into(), self.num_kv_heads.into());
        o.insert("head_dim".into(), self.head_dim.into());
        o.insert("rms_norm_eps".into(), self.rms_norm_eps.into());
        o.insert("rope_theta".into(), self.rope_theta.into());
        o.insert(
            "max_position_embeddings".into(),
            self.max_position_embeddings.into(),
        );
        o.insert(
            "tie_word_embeddings".into(),
            self.tie_word_embeddings.into(),
        );
        o.insert("torch_dtype".into(), "float32".into());
        if let Some(b) = self.bos_token_id {
            o.insert("bos_token_id".into(), b.into());
        }
        if !self.eos_token_ids.is_empty() {
            let eos: serde_json::Value = if self.eos_token_ids.len() == 1 {
                self.eos_token_ids[0].into()
            } else {
                self.eos_token_ids.clone().into()
            };
            o.insert("eos_token_id".into(), eos);
        }
        if let Some(p) = self.pad_token_id {
            o.insert("pad_token_id".into(), p.into());
        }
        if let Some(s) = &self.rope_scaling {
            o.insert(
                "rope_scaling".into(),
                json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                       "high_freq_factor": s.high_freq_factor,
                       "original_max_position_embeddings": s.original_max_position_embeddings}),
            );
        }
        if let Some(f) = self.rope_linear_factor {
            o.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": f}),
            );
        }
        if let Some(lr) = &self.rope_longrope {
            // The attention factor is written as it is (transformers takes it so), and the
            // original context also at the top level, where Phi-3's configuration reads it.
            o.insert(
                "rope_scaling".into(),
                json!({"rope_type": "longrope", "short_factor": lr.short_factor,
                       "long_factor": lr.long_factor, "attention_factor": lr.attention_factor,
                       "original_max_position_embeddings": lr.original_max_position_embeddings}),
            );
            o.insert(
                "original_max_position_embeddings".into(),
                lr.original_max_position_embeddings.into(),
            );
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn gemma_like() -> ModelConfig {
        ModelConfig {
            arch: Arch::Gemma3,
            vocab_size: 262144,
            hidden_size: 640,
            intermediate_size: 2048,
            num_layers: 18,
            num_heads: 4,
            num_kv_heads: 1,
            head_dim: 256,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            rope_local_theta: Some(10_000.0),
            sliding_window: Some(512),
            sliding_window_pattern: Some(6),
            max_position_embeddings: 32768,
            tie_word_embeddings: true,
            attention_bias: false,
            query_pre_attn_scalar: Some(256.0),
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            activation: Activation::GeluTanh,
            rope_scaling: None,
            rope_linear_factor: None,
            rope_freq_factors: None,
            rope_longrope: None,
            bos_token_id: Some(2),
            eos_token_ids: vec![1],
            pad_token_id: Some(0),
        }
    }

    #[test]
    fn gemma3_270m_parameter_count_and_layer_types() {
        let c = gemma_like();
        // 268,098,176 parameters in the HF checkpoint of Gemma 3 270M.
        assert_eq!(c.param_count(), 268_098_176);
        let globals: Vec<usize> = (0..18).filter(|&l| !c.is_sliding(l)).collect();
        assert_eq!(globals, vec![5, 11, 17]);
        assert_eq!(c.rope_of(0), (10_000.0, false));
        assert_eq!(c.rope_of(5), (1_000_000.0, true));
    }

    #[test]
    fn validate_rejects_nonsense() {
        let mut c = gemma_like();
        c.num_kv_heads = 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let mut c = gemma_like();
        c.rms_norm_eps = f64::NAN;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rms_norm_eps"));
    }
}
