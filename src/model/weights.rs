//! The weights of a model as named f32 tensors, in Hugging Face naming and conventions
//! (`model.layers.{l}.mlp.down_proj.weight`, out × in; Gemma norms stored as `w` with scale 1+w;
//! Llama q/k in the HF (un-permuted) layout), so that export is a plain write — but for Phi-3's
//! fused projections, which are held split into q/k/v and gate/up (see
//! [`crate::model::arch::phi3`]).

use crate::model::config::ModelConfig;
use anyhow::{bail, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;

#[derive(Clone, Default)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        match self.tensors.get(name) {
            Some(t) => Ok(t),
            None => bail!("model weights: tensor `{name}` is missing"),
        }
    }

    /// The expected name → shape of every tensor of a model with this config.
    pub fn expected_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q, kv) = (c.num_heads * hd, c.num_kv_heads * hd);
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, d],
        )];
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
            if c.attention_bias {
                v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
            v.push((format!("{p}.input_layernorm.weight"), vec![d]));
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            let layout = c.arch.layout();
            if layout.sandwich_norms {
                v.push((format!("{p}.pre_feedforward_layernorm.weight"), vec![d]));
                v.push((format!("{p}.post_feedforward_layernorm.weight"), vec![d]));
            }
            if layout.qk_norm {
                v.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
                v.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
            }
        }
        v.push(("model.norm.weight".to_string(), vec![d]));
        if !c.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![c.vocab_size, d]));
        }
        v
    }

    /// Every tensor the config needs is present with the right shape.
    pub fn check_against(&self, c: &ModelConfig) -> Result<()> {
        for (name, shape) in Self::expected_shapes(c) {
            let t = self.get(&name)?;
            if t.dims() != shape.as_slice() {
                bail!(
                    "model weights: tensor `{name}` has shape {:?}, expected {:?} from the config",
                    t.dims(),
                    shape
                );
            }
        }
        Ok(())
    }

    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}
