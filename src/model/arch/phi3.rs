//! Phi-3 (Phi-3 mini/medium, Phi-3.5 mini): Llama's block (plain RMS norms, SiLU-gated MLP, no
//! biases) with the query, key and value projections stored as one `qkv_proj` and the gate and
//! up projections as one `gate_up_proj` — split at load into the separate tensors every method
//! works with, fused again on export —, a sliding window on every layer when `sliding_window`
//! is set, and RoPE either plain or LongRoPE (`longrope`, formerly `su`).
//!
//! LongRoPE as transformers computes it: the original context is the top-level
//! `original_max_position_embeddings` (4096 when absent; a value inside `rope_scaling` is
//! overridden by it), the attention factor is `attention_factor` when given, else
//! sqrt(1 + ln s / ln original) for s = `factor`, or max_position_embeddings / original, above 1
//! (else 1). It scales cos and sin at every length; the long factors replace the short ones
//! for sequences longer than the original context.

use super::{Arch, Defaults, HfConfig, Layout, LongRopeParams};
use crate::model::config::{Activation, LongRope, ModelConfig};
use anyhow::{bail, Result};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const LAYOUT: Layout = super::llama::LAYOUT;

pub const DEFAULTS: Defaults = Defaults {
    activation: Activation::Silu,
    rope_theta: 10_000.0,
    tie_word_embeddings: false,
};

pub const HF_MODEL_TYPES: &[&str] = &["phi3"];

/// transformers' Phi-3 defaults of what `config.json` may leave out.
const RMS_NORM_EPS: f64 = 1e-5;
const ORIGINAL_MAX_POSITION_EMBEDDINGS: usize = 4096;

/// Configuration from a Phi-3 `config.json`.
pub fn from_hf(h: &HfConfig) -> Result<ModelConfig> {
    let mut rope = h.rope()?;
    let longrope = rope.longrope.take();
    if rope.llama3.is_some() || rope.linear_factor.is_some() {
        bail!(h.err(
            "rope_scaling: Phi-3 takes the RoPE types default and longrope only (as transformers)"
        ));
    }
    let mut c = h.base(Arch::Phi3, &rope)?;
    c.rms_norm_eps = h.opt_f("rms_norm_eps").unwrap_or(RMS_NORM_EPS);
    // transformers' Phi-3 has no biases, whatever `attention_bias` says.
    c.attention_bias = false;
    c.sliding_window = h.opt_u("sliding_window");
    c.rope_longrope = longrope.map(|p| longrope_of(h, &c, p)).transpose()?;
    Ok(c)
}

/// LongRoPE of a model from its `rope_scaling` parameters (see the module documentation).
fn longrope_of(h: &HfConfig, c: &ModelConfig, p: LongRopeParams) -> Result<LongRope> {
    let pairs = c.head_dim / 2;
    for (key, f) in [
        ("short_factor", &p.short_factor),
        ("long_factor", &p.long_factor),
    ] {
        if f.len() != pairs {
            bail!(h.err(format!(
                "{}.{key} has {} factors; head_dim {} needs {pairs}",
                p.what,
                f.len(),
                c.head_dim
            )));
        }
    }
    let original = h
        .opt_u("original_max_position_embeddings")
        .unwrap_or(ORIGINAL_MAX_POSITION_EMBEDDINGS);
    let factor = p
        .factor
        .unwrap_or(c.max_position_embeddings as f64 / original as f64);
    let attention_factor = p.attention_factor.unwrap_or(if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original as f64).ln()).sqrt()
    });
    if original == 0 || !(attention_factor.is_finite() && attention_factor > 0.0) {
        bail!(h.err(format!(
            "original_max_position_embeddings {original} and {}: no positive LongRoPE attention factor",
            p.what
        )));
    }
    Ok(LongRope {
        short_factor: p.short_factor,
        long_factor: p.long_factor,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// The Phi-3-specific fields of an exported `config.json` (LongRoPE is written with the other
/// RoPE scalings).
pub fn hf_json(c: &ModelConfig) -> Value {
    let act = match c.activation {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    };
    json!({
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_act": act,
        "sliding_window": c.sliding_window,
    })
}

/// The fused tensors of block `l` and the tensors each holds, by rows in this order (name,
/// rows): `qkv_proj` = [q; k; v], `gate_up_proj` = [gate; up].
fn fused(c: &ModelConfig, l: usize) -> [(String, Vec<(String, usize)>); 2] {
    let p = format!("model.layers.{l}");
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let f = c.intermediate_size;
    let part = |m: &str, rows: usize| (format!("{p}.{m}.weight"), rows);
    [
        (
            format!("{p}.self_attn.qkv_proj.weight"),
            vec![
                part("self_attn.q_proj", q),
                part("self_attn.k_proj", kv),
                part("self_attn.v_proj", kv),
            ],
        ),
        (
            format!("{p}.mlp.gate_up_proj.weight"),
            vec![part("mlp.gate_proj", f), part("mlp.up_proj", f)],
        ),
    ]
}

/// Split every fused tensor into its parts (each its own storage). A block stored with the
/// parts already separate (as a GGUF file may hold q, k and v) is left as it is.
pub fn split_fused(c: &ModelConfig, t: &mut BTreeMap<String, Tensor>) -> Result<()> {
    for l in 0..c.num_layers {
        for (name, parts) in fused(c, l) {
            let present = parts.iter().filter(|(p, _)| t.contains_key(p)).count();
            let Some(w) = t.remove(&name) else {
                if present == parts.len() {
                    continue;
                }
                bail!("model weights: tensor `{name}` is missing");
            };
            if present > 0 {
                bail!("model weights: `{name}` and the tensors it fuses are both present");
            }
            let rows: usize = parts.iter().map(|(_, n)| n).sum();
            if w.dims() != [rows, c.hidden_size] {
                bail!(
                    "model weights: tensor `{name}` has shape {:?}, expected {:?} from the config",
                    w.dims(),
                    [rows, c.hidden_size]
                );
            }
            let mut at = 0;
            for (p, n) in parts {
                t.insert(p, w.narrow(0, at, n)?.copy()?);
                at += n;
            }
        }
    }
    Ok(())
}

/// Fuse the parts back into Phi-3's tensors (all of a fused tensor's parts, or none, must be
/// there).
pub fn fuse(c: &ModelConfig, t: &mut BTreeMap<String, Tensor>) -> Result<()> {
    for l in 0..c.num_layers {
        for (name, parts) in fused(c, l) {
            let ws: Vec<Tensor> = parts.iter().filter_map(|(p, _)| t.remove(p)).collect();
            if ws.is_empty() {
                continue;
            }
            if ws.len() < parts.len() {
                let names: Vec<&str> = parts.iter().map(|(p, _)| p.as_str()).collect();
                bail!("export: `{name}` is written from all of {names:?} or none of them");
            }
            t.insert(name, Tensor::cat(&ws, 0)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::config_from_hf;
    use candle_core::Device;
    use std::path::Path;

    /// A Phi-3 `config.json` of a tiny model with the given extra fields.
    fn config(extra: Value) -> Value {
        let mut v = json!({"model_type": "phi3", "hidden_size": 32, "num_attention_heads": 2,
            "num_key_value_heads": 1, "intermediate_size": 48, "num_hidden_layers": 2,
            "vocab_size": 64, "max_position_embeddings": 128});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    fn read(v: &Value) -> Result<ModelConfig> {
        config_from_hf(v, Path::new("m/config.json"))
    }

    fn err(v: &Value) -> String {
        format!("{:#}", read(v).unwrap_err())
    }

    #[test]
    fn longrope_takes_transformers_original_context_and_attention_factor() {
        let factors = json!([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]);
        let scaling = json!({"type": "su", "short_factor": factors, "long_factor": factors,
            "original_max_position_embeddings": 8});
        // The top-level original context wins over the one inside rope_scaling.
        let c = read(&config(json!({"rope_scaling": scaling,
            "original_max_position_embeddings": 16})))
        .unwrap();
        let lr = c.rope_longrope.as_ref().unwrap();
        assert_eq!(lr.original_max_position_embeddings, 16);
        assert!((lr.attention_factor - 1.75f64.sqrt()).abs() < 1e-15);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert!(c.validate().is_ok());
        // Absent, it is transformers' 4096: max_position_embeddings 128 scales by nothing.
        let c = read(&config(json!({"rope_scaling": scaling}))).unwrap();
        let lr = c.rope_longrope.unwrap();
        assert_eq!(
            (lr.original_max_position_embeddings, lr.attention_factor),
            (4096, 1.0)
        );
        let mut given = scaling.clone();
        given["attention_factor"] = json!(1.5);
        let c = read(&config(json!({ "rope_scaling": given }))).unwrap();
        assert_eq!(c.rope_longrope.unwrap().attention_factor, 1.5);
    }

    #[test]
    fn unsupported_rope_is_refused_by_key() {
        let f = json!([1.0, 1.0, 1.0, 1.0]);
        let e = err(&config(
            json!({"rope_scaling": {"type": "longrope", "short_factor": f, "long_factor": f}}),
        ));
        assert!(
            e.contains("m/config.json") && e.contains("rope_scaling.short_factor"),
            "{e}"
        );
        let e = err(&config(json!({"partial_rotary_factor": 0.75})));
        assert!(
            e.contains("m/config.json") && e.contains("partial_rotary_factor"),
            "{e}"
        );
        let e = err(&config(
            json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
        ));
        assert!(e.contains("rope_parameters.partial_rotary_factor"), "{e}");
        let e = err(&config(
            json!({"rope_scaling": {"type": "linear", "factor": 2.0}}),
        ));
        assert!(e.contains("longrope"), "{e}");
        let e = err(&config(
            json!({"rope_scaling": {"type": "longrope", "long_factor": f}}),
        ));
        assert!(e.contains("rope_scaling.short_factor"), "{e}");
        // Only Phi-3 reads LongRoPE.
        let mut llama = config(json!({"rope_scaling": {"type": "longrope",
            "short_factor": f, "long_factor": f}}));
        llama["model_type"] = json!("llama");
        assert!(err(&llama).contains("phi3"));
    }

    #[test]
    fn fused_tensors_split_and_fuse_back() {
        let c = read(&config(json!({}))).unwrap();
        let d = Device::Cpu;
        let qkv = Tensor::arange(0f32, 64.0 * 32.0, &d)
            .unwrap()
            .reshape((64, 32))
            .unwrap();
        let gate_up = Tensor::arange(0f32, 96.0 * 32.0, &d)
            .unwrap()
            .reshape((96, 32))
            .unwrap();
        let mut t = BTreeMap::new();
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            t.insert(format!("{p}.self_attn.qkv_proj.weight"), qkv.clone());
            t.insert(format!("{p}.mlp.gate_up_proj.weight"), gate_up.clone());
        }
        let original = t.clone();
        split_fused(&c, &mut t).unwrap();
        let k = &t["model.layers.1.self_attn.k_proj.weight"];
        assert_eq!(k.dims(), [16, 32]);
        let row = |x: &Tensor| x.get(0).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(row(k), row(&qkv.get(32).unwrap().unsqueeze(0).unwrap()));
        assert_eq!(t["model.layers.0.mlp.up_proj.weight"].dims(), [48, 32]);
        fuse(&c, &mut t).unwrap();
        assert_eq!(
            t.keys().collect::<Vec<_>>(),
            original.keys().collect::<Vec<_>>()
        );
        for (name, w) in &original {
            let back = t[name].to_vec2::<f32>().unwrap();
            assert_eq!(back, w.to_vec2::<f32>().unwrap(), "{name}");
        }
        // A fused tensor of the wrong shape, or a missing one, is named.
        let mut bad = original.clone();
        bad.insert(
            "model.layers.1.self_attn.qkv_proj.weight".into(),
            qkv.narrow(0, 0, 48).unwrap(),
        );
        let e = split_fused(&c, &mut bad).unwrap_err().to_string();
        assert!(e.contains("layers.1.self_attn.qkv_proj") && e.contains("[48, 32]"));
        let mut missing = original.clone();
        missing.remove("model.layers.0.mlp.gate_up_proj.weight");
        let e = split_fused(&c, &mut missing).unwrap_err().to_string();
        assert!(e.contains("layers.0.mlp.gate_up_proj") && e.contains("missing"));
        // An export that chooses only part of a fused tensor is refused.
        split_fused(&c, &mut t).unwrap();
        t.remove("model.layers.0.self_attn.v_proj.weight");
        assert!(fuse(&c, &mut t)
            .unwrap_err()
            .to_string()
            .contains("qkv_proj"));
    }
}
