//! The weights of a model as named f32 tensors, in Hugging Face naming and conventions
//! (`model.layers.{l}.mlp.down_proj.weight`, out × in; Gemma norms stored as `w` with scale 1+w;
//! Llama q/k in the HF (un-permuted) layout), so that export is a plain write — but for Phi-3's
//! fused projections, which are held split into q/k/v and gate/up (see
//! [`crate::model::arch::phi3`]). With `--weights gguf` the block matrices stay as the GGUF
//! file holds them (quantized blocks, f16/bf16) and are widened where they are used.

use crate::model::config::ModelConfig;
use anyhow::{bail, Result};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
    /// Matrices held as a GGUF file holds them (`--weights gguf`: quantized blocks, or f16/bf16):
    /// dequantized where they are used — the same f32 numbers as dequantizing them at load, in
    /// the file's size (half to an eighth of f32). A name is in `tensors` or here, never both.
    pub blocks: BTreeMap<String, Arc<QTensor>>,
}

impl Weights {
    /// A tensor held as it is (not one held as blocks: see [`Weights::dense`]).
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        match self.tensors.get(name) {
            Some(t) => Ok(t),
            None if self.blocks.contains_key(name) => bail!(
                "model weights: tensor `{name}` is held as quantized blocks (read it with `dense`)"
            ),
            None => bail!("model weights: tensor `{name}` is missing"),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.blocks.contains_key(name)
    }

    /// Every tensor's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let all: BTreeSet<&String> = self.tensors.keys().chain(self.blocks.keys()).collect();
        all.into_iter().cloned().collect()
    }

    /// How many numbers the tensor holds.
    pub fn elem_count(&self, name: &str) -> Result<usize> {
        Ok(self.dims(name)?.iter().product())
    }

    pub fn dims(&self, name: &str) -> Result<Vec<usize>> {
        match self.blocks.get(name) {
            Some(q) => Ok(q.shape().dims().to_vec()),
            None => Ok(self.get(name)?.dims().to_vec()),
        }
    }

    /// A tensor as numbers on `device`: as held, or dequantized from its blocks.
    pub fn dense(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self.blocks.get(name) {
            Some(q) => Ok(q.dequantize(device)?),
            None => Ok(self.get(name)?.clone()),
        }
    }

    /// Rows `ids` (u32 `[N]`) of a matrix `[R, C]` as `[N, C]`; of blocks, only those rows are
    /// dequantized (an embedding lookup, the LM head's rows of a few tokens).
    pub fn rows(&self, name: &str, ids: &Tensor) -> Result<Tensor> {
        match self.blocks.get(name) {
            Some(q) => Ok(q.embedding(ids)?),
            None => Ok(self.get(name)?.index_select(ids, 0)?),
        }
    }

    /// Hold `t` as `name` (replacing blocks of that name).
    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.blocks.remove(name);
        self.tensors.insert(name.to_string(), t);
    }

    /// Hold `name` as numbers in `dtype` from now on (a matrix about to be trained): blocks
    /// dequantized, half-precision numbers widened; already so, it stays as it is.
    pub fn hold_as(&mut self, name: &str, dtype: DType) -> Result<()> {
        let t = match self.blocks.remove(name) {
            Some(q) => q.dequantize(&q.device())?,
            None => self.get(name)?.clone(),
        };
        if t.dtype() != dtype || !self.tensors.contains_key(name) {
            self.tensors.insert(name.to_string(), t.to_dtype(dtype)?);
        }
        Ok(())
    }

    /// Bytes held by the weights (blocks at their quantized size).
    pub fn bytes(&self) -> usize {
        let dense: usize = self
            .tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        dense
            + self
                .blocks
                .values()
                .map(|q| q.storage_size_in_bytes())
                .sum::<usize>()
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
            let dims = self.dims(&name)?;
            if dims != shape {
                bail!(
                    "model weights: tensor `{name}` has shape {dims:?}, expected {shape:?} from the config"
                );
            }
        }
        Ok(())
    }

    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum::<usize>()
            + self
                .blocks
                .values()
                .map(|q| q.shape().elem_count())
                .sum::<usize>()
    }
}
