//! Hugging Face model directories: `config.json`, `*.safetensors`, `tokenizer.json`. Loading
//! (f32/f16/bf16 tensors, converted to f32) and export (what unlearn writes loads back with
//! identical logits: the exact configuration is kept in an `unlearn` section of config.json).

use crate::model::config::{Activation, Arch, Llama3RopeScaling, ModelConfig};
use crate::model::{TextTokenizer, Weights};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Model configuration from an HF `config.json` value.
pub fn config_from_hf(v: &Value, file: &Path) -> Result<ModelConfig> {
    if let Some(exact) = v.get("unlearn") {
        return serde_json::from_value(exact.clone())
            .with_context(|| format!("{}: bad `unlearn` section", file.display()));
    }
    let get_u = |k: &str| -> Result<usize> {
        v.get(k)
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .with_context(|| {
                format!(
                    "{}: field `{k}` is missing or not an integer",
                    file.display()
                )
            })
    };
    let opt_f = |k: &str| v.get(k).and_then(|x| x.as_f64());
    let model_type = v
        .get("model_type")
        .and_then(|x| x.as_str())
        .with_context(|| format!("{}: field `model_type` is missing", file.display()))?;
    let (arch, activation) = match model_type {
        "gemma3_text" | "gemma3" => (Arch::Gemma3, Activation::GeluTanh),
        "llama" | "qwen2" | "mistral" => (Arch::Llama, Activation::Silu),
        other => bail!("{}: model_type {other:?} is not supported (supported: gemma3_text, llama, qwen2, mistral)", file.display()),
    };
    let v = if model_type == "gemma3" {
        v.get("text_config").unwrap_or(v)
    } else {
        v
    };
    let hidden = get_u("hidden_size")?;
    let heads = get_u("num_attention_heads")?;
    let head_dim = v
        .get("head_dim")
        .and_then(|x| x.as_u64())
        .map(|x| x as usize)
        .unwrap_or(hidden / heads.max(1));
    let gemma = arch == Arch::Gemma3;
    if model_type == "mistral" && v.get("sliding_window").is_some_and(|x| !x.is_null()) {
        bail!(
            "{}: Mistral with a sliding window is not supported",
            file.display()
        );
    }
    let ids = |k: &str| -> Vec<u32> {
        match v.get(k) {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            _ => vec![],
        }
    };
    let rope_scaling = match v.get("rope_scaling") {
        Some(Value::Object(o))
            if o.get("rope_type")
                .or(o.get("type"))
                .and_then(|x| x.as_str())
                == Some("llama3") =>
        {
            let f = |k: &str| {
                o.get(k)
                    .and_then(|x| x.as_f64())
                    .with_context(|| format!("{}: rope_scaling.{k} is missing", file.display()))
            };
            Some(Llama3RopeScaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
            })
        }
        Some(Value::Object(o))
            if gemma && o.get("rope_type").and_then(|x| x.as_str()) == Some("linear") =>
        {
            bail!("{}: linear RoPE scaling is not supported", file.display())
        }
        Some(Value::Null) | None => None,
        Some(Value::Object(_)) if gemma => None,
        Some(other) => bail!("{}: rope_scaling {other} is not supported", file.display()),
    };
    let pattern = v
        .get("sliding_window_pattern")
        .and_then(|x| x.as_u64())
        .map(|x| x as usize)
        .or_else(|| {
            let types = v.get("layer_types")?.as_array()?;
            let first_global = types
                .iter()
                .position(|t| t.as_str() == Some("full_attention"))?;
            Some(first_global + 1)
        });
    Ok(ModelConfig {
        arch,
        vocab_size: get_u("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: get_u("intermediate_size")?,
        num_layers: get_u("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: v
            .get("num_key_value_heads")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .unwrap_or(heads),
        head_dim,
        rms_norm_eps: opt_f("rms_norm_eps").unwrap_or(1e-6),
        rope_theta: opt_f("rope_theta").unwrap_or(if gemma { 1_000_000.0 } else { 10_000.0 }),
        rope_local_theta: if gemma {
            Some(opt_f("rope_local_base_freq").unwrap_or(10_000.0))
        } else {
            None
        },
        sliding_window: if gemma {
            v.get("sliding_window")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
        } else {
            None
        },
        sliding_window_pattern: if gemma { pattern.or(Some(6)) } else { None },
        max_position_embeddings: v
            .get("max_position_embeddings")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .unwrap_or(4096),
        tie_word_embeddings: v
            .get("tie_word_embeddings")
            .and_then(|x| x.as_bool())
            .unwrap_or(gemma),
        attention_bias: v
            .get("attention_bias")
            .and_then(|x| x.as_bool())
            .unwrap_or(model_type == "qwen2"),
        query_pre_attn_scalar: if gemma {
            Some(opt_f("query_pre_attn_scalar").unwrap_or(head_dim as f64))
        } else {
            None
        },
        final_logit_softcapping: opt_f("final_logit_softcapping"),
        attn_logit_softcapping: opt_f("attn_logit_softcapping"),
        activation,
        rope_scaling,
        bos_token_id: ids("bos_token_id").first().copied(),
        eos_token_ids: ids("eos_token_id"),
        pad_token_id: ids("pad_token_id").first().copied(),
    })
}

/// Load every `*.safetensors` file of a directory as f32 tensors.
pub fn load_safetensors(dir: &Path, device: &Device) -> Result<Weights> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors files", dir.display());
    }
    let mut w = Weights::default();
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("{}: cannot read", f.display()))?;
        let what = f.display().to_string();
        w.tensors
            .extend(tensors_from_safetensors(&bytes, &what, device)?);
    }
    Ok(w)
}

/// The tensors of one safetensors file's bytes as f32, named without a `language_model.`
/// prefix; `what` names the file in errors.
pub fn tensors_from_safetensors(
    bytes: &[u8],
    what: &str,
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    let map: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| anyhow::anyhow!("{what}: cannot read safetensors: {e}"))?;
    let mut out = Vec::with_capacity(map.len());
    for (name, t) in map {
        let t = match t.dtype() {
            DType::F32 => t,
            DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
            other => {
                bail!("{what}: tensor `{name}` has dtype {other:?}; expected f32, f16, bf16 or f64")
            }
        };
        let name = name
            .strip_prefix("language_model.")
            .unwrap_or(&name)
            .to_string();
        out.push((name, t));
    }
    Ok(out)
}

/// Load config, weights and tokenizer from a Hugging Face model directory.
pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<(ModelConfig, Weights, TextTokenizer)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    let config = config_from_hf(&v, &cfg_path)?;
    let mut weights = load_safetensors(dir, device)?;
    if config.tie_word_embeddings {
        weights.tensors.remove("lm_head.weight");
    }
    weights
        .check_against(&config)
        .with_context(|| format!("{}", dir.display()))?;
    let tokenizer = TextTokenizer::from_hf_dir(dir)?;
    Ok((config, weights, tokenizer))
}

/// Write a model as a Hugging Face directory: `model.safetensors` (every tensor, or only the
/// named ones), `config.json`, tokenizer files. Each file is written atomically; an existing
/// directory's other files are left alone.
pub fn export_hf_dir(
    config: &ModelConfig,
    weights: &Weights,
    tokenizer: &TextTokenizer,
    dir: &Path,
    only: Option<&[String]>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut chosen: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in &weights.tensors {
        if only.is_none_or(|o| o.contains(name)) {
            chosen.push((
                name.clone(),
                t.to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            ));
        }
    }
    if let Some(o) = only {
        for n in o {
            if !weights.tensors.contains_key(n) {
                bail!("export: the model has no tensor `{n}`");
            }
        }
    }
    crate::util::save_safetensors_atomic(
        &chosen.into_iter().collect::<HashMap<_, _>>(),
        &dir.join("model.safetensors"),
    )?;
    let mut cfg = config.to_hf_json();
    cfg.as_object_mut()
        .expect("object")
        .insert("unlearn".into(), serde_json::to_value(config)?);
    crate::util::write_json(&dir.join("config.json"), &cfg)?;
    tokenizer.save_hf(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_errors_name_the_field() {
        let p = Path::new("m/config.json");
        let e = config_from_hf(&json!({"model_type": "llama", "hidden_size": 8}), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("num_attention_heads"),
            "{e}"
        );
        let e = config_from_hf(&json!({"model_type": "bert"}), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bert"), "{e}");
    }

    #[test]
    fn hf_llama_config_is_read() {
        let v = json!({"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
            "intermediate_size": 1536, "num_hidden_layers": 30, "vocab_size": 49152, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true, "eos_token_id": [2, 0]});
        let c = config_from_hf(&v, Path::new("config.json")).unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.eos_token_ids.clone()),
            (64, 3, vec![2, 0])
        );
        assert_eq!(c.activation, Activation::Silu);
    }

    #[test]
    fn half_precision_safetensors_load_as_f32() {
        let d = tempfile::tempdir().unwrap();
        let t = Tensor::new(&[[1.5f32, -2.25], [0.125, 3.0]], &Device::Cpu).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let m: HashMap<String, Tensor> = [("x".to_string(), t.to_dtype(dt).unwrap())].into();
            candle_core::safetensors::save(&m, d.path().join("a.safetensors")).unwrap();
            let w = load_safetensors(d.path(), &Device::Cpu).unwrap();
            assert_eq!(w.tensors["x"].dtype(), DType::F32);
            assert_eq!(
                w.tensors["x"].to_vec2::<f32>().unwrap(),
                t.to_vec2::<f32>().unwrap()
            );
        }
    }
}
