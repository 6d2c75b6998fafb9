//! Reading a Hugging Face `config.json`: the fields every architecture shares, RoPE in both the
//! classic (`rope_theta` + `rope_scaling`) and the transformers 5 (`rope_parameters`, flat or by
//! layer type) forms, and `layer_types`. Each architecture's file adds its own fields.
//! RoPE on part of each head (`partial_rotary_factor` below 1, as Phi-4-mini has) is refused.

use super::Arch;
use crate::model::config::{Activation, Llama3RopeScaling, ModelConfig};
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// A `config.json` value and the file it came from (named in every error).
pub struct HfConfig<'a> {
    pub v: &'a Value,
    pub file: &'a Path,
}

/// RoPE of a model: the global base, the local (sliding-layer) base when it differs, and the
/// frequency scaling of the global layers.
#[derive(Debug, Default, PartialEq)]
pub struct Rope {
    pub theta: Option<f64>,
    pub local_theta: Option<f64>,
    pub llama3: Option<Llama3RopeScaling>,
    pub linear_factor: Option<f64>,
    /// LongRoPE's parameters as given (an architecture that takes it makes them a
    /// [`crate::model::config::LongRope`]; [`HfConfig::base`] refuses them).
    pub longrope: Option<LongRopeParams>,
}

/// The parameters of a `longrope` (or `su`) RoPE scaling object, as `config.json` gives them.
#[derive(Debug, Default, PartialEq)]
pub struct LongRopeParams {
    /// Where they are (`rope_scaling`, `rope_parameters`), for errors.
    pub what: String,
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub factor: Option<f64>,
    pub attention_factor: Option<f64>,
}

/// Which layers attend within a sliding window, as `layer_types` gives them.
#[derive(Debug, PartialEq)]
pub enum LayerPattern {
    /// No `layer_types` in the config.
    Unstated,
    /// Every layer attends to the whole context.
    AllFull,
    /// Every layer uses the window.
    AllSliding,
    /// Layers n-1, 2n-1, … are global, the others use the window.
    EveryNth(usize),
}

impl<'a> HfConfig<'a> {
    /// An error that names the file.
    pub fn err(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: {msg}", self.file.display())
    }

    pub fn u(&self, k: &str) -> Result<usize> {
        self.opt_u(k)
            .ok_or_else(|| self.err(format!("field `{k}` is missing or not an integer")))
    }

    pub fn opt_u(&self, k: &str) -> Option<usize> {
        self.v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize)
    }

    pub fn opt_f(&self, k: &str) -> Option<f64> {
        self.v.get(k).and_then(|x| x.as_f64())
    }

    /// A number that defaults to `default` when missing and is off when `null`.
    pub fn opt_f_or(&self, k: &str, default: f64) -> Option<f64> {
        match self.v.get(k) {
            None => Some(default),
            Some(x) => x.as_f64(),
        }
    }

    pub fn opt_bool(&self, k: &str) -> Option<bool> {
        self.v.get(k).and_then(|x| x.as_bool())
    }

    pub fn opt_str(&self, k: &str) -> Option<&'a str> {
        self.v.get(k).and_then(|x| x.as_str())
    }

    /// Token ids of a field that may be a number or a list.
    pub fn ids(&self, k: &str) -> Vec<u32> {
        match self.v.get(k) {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            _ => vec![],
        }
    }

    /// The MLP activation named by `hidden_activation` or `hidden_act`, else `default`.
    pub fn activation(&self, default: Activation) -> Result<Activation> {
        match self
            .opt_str("hidden_activation")
            .or(self.opt_str("hidden_act"))
        {
            None => Ok(default),
            Some("silu" | "swish") => Ok(Activation::Silu),
            Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") => Ok(Activation::GeluTanh),
            // Gemma 1 checkpoints name "gelu" while transformers runs the tanh approximation.
            Some("gelu") if default == Activation::GeluTanh => Ok(Activation::GeluTanh),
            Some(other) => Err(self.err(format!(
                "activation {other:?} is not supported (supported: silu, gelu_pytorch_tanh)"
            ))),
        }
    }

    /// RoPE from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`.
    pub fn rope(&self) -> Result<Rope> {
        let mut rope = Rope::default();
        match self.v.get("rope_parameters") {
            Some(Value::Object(o))
                if o.contains_key("full_attention") || o.contains_key("sliding_attention") =>
            {
                if let Some(Value::Object(full)) = o.get("full_attention") {
                    rope.theta = full.get("rope_theta").and_then(|x| x.as_f64());
                    self.scaling(full, &mut rope, "rope_parameters.full_attention")?;
                }
                if let Some(Value::Object(local)) = o.get("sliding_attention") {
                    rope.local_theta = local.get("rope_theta").and_then(|x| x.as_f64());
                    let mut scaled = Rope::default();
                    self.scaling(local, &mut scaled, "rope_parameters.sliding_attention")?;
                    if scaled != Rope::default() {
                        bail!(self.err("RoPE scaling of sliding-window layers is not supported"));
                    }
                }
            }
            Some(Value::Object(o)) => {
                rope.theta = o.get("rope_theta").and_then(|x| x.as_f64());
                self.scaling(o, &mut rope, "rope_parameters")?;
            }
            Some(Value::Null) | None => {}
            Some(other) => bail!(self.err(format!("rope_parameters {other} is not an object"))),
        }
        rope.theta = rope.theta.or(self.opt_f("rope_theta"));
        self.full_rotary(self.v.get("partial_rotary_factor"), "partial_rotary_factor")?;
        rope.local_theta = rope.local_theta.or(self.opt_f("rope_local_base_freq"));
        match self.v.get("rope_scaling") {
            Some(Value::Object(o)) => self.scaling(o, &mut rope, "rope_scaling")?,
            Some(Value::Null) | None => {}
            Some(other) => bail!(self.err(format!("rope_scaling {other} is not an object"))),
        }
        Ok(rope)
    }

    /// Refuse a `partial_rotary_factor` (at `what`) other than 1.
    fn full_rotary(&self, factor: Option<&Value>, what: &str) -> Result<()> {
        match factor {
            None | Some(Value::Null) => Ok(()),
            Some(x) if x.as_f64() == Some(1.0) => Ok(()),
            Some(x) => bail!(self.err(format!(
                "{what} = {x}: RoPE on part of each head is not supported (only 1.0)"
            ))),
        }
    }

    /// A list of numbers at `o[k]` (`what` names `o` in errors).
    fn numbers(&self, o: &Map<String, Value>, k: &str, what: &str) -> Result<Vec<f64>> {
        let bad = || self.err(format!("{what}.{k} is missing or not a list of numbers"));
        o.get(k)
            .and_then(|x| x.as_array())
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_f64().ok_or_else(bad))
            .collect()
    }

    /// The scaling of one RoPE parameter object into `rope`.
    fn scaling(&self, o: &Map<String, Value>, rope: &mut Rope, what: &str) -> Result<()> {
        self.full_rotary(
            o.get("partial_rotary_factor"),
            &format!("{what}.partial_rotary_factor"),
        )?;
        let kind = o
            .get("rope_type")
            .or(o.get("type"))
            .and_then(|x| x.as_str())
            .unwrap_or("default");
        let f = |k: &str| {
            o.get(k)
                .and_then(|x| x.as_f64())
                .with_context(|| format!("{}: {what}.{k} is missing", self.file.display()))
        };
        match kind {
            "default" => {}
            "linear" => rope.linear_factor = Some(f("factor")?),
            "llama3" => {
                rope.llama3 = Some(Llama3RopeScaling {
                    factor: f("factor")?,
                    low_freq_factor: f("low_freq_factor")?,
                    high_freq_factor: f("high_freq_factor")?,
                    original_max_position_embeddings: f("original_max_position_embeddings")?
                        as usize,
                })
            }
            "longrope" | "su" => {
                rope.longrope = Some(LongRopeParams {
                    what: what.to_string(),
                    short_factor: self.numbers(o, "short_factor", what)?,
                    long_factor: self.numbers(o, "long_factor", what)?,
                    factor: o.get("factor").and_then(|x| x.as_f64()),
                    attention_factor: o.get("attention_factor").and_then(|x| x.as_f64()),
                })
            }
            other => bail!(self.err(format!(
                "{what}: RoPE type {other:?} is not supported (supported: default, linear, llama3, longrope)"
            ))),
        }
        Ok(())
    }

    /// Which layers use the sliding window according to `layer_types`; a pattern that is not
    /// periodic with one global layer per period is refused.
    pub fn layer_pattern(&self, n_layers: usize) -> Result<LayerPattern> {
        let Some(types) = self.v.get("layer_types").and_then(|x| x.as_array()) else {
            return Ok(LayerPattern::Unstated);
        };
        let sliding: Vec<bool> = types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(self.err(format!("layer_types: unknown layer type {t}"))),
            })
            .collect::<Result<_>>()?;
        if sliding.len() != n_layers {
            bail!(self.err(format!(
                "layer_types has {} entries for {n_layers} layers",
                sliding.len()
            )));
        }
        if sliding.iter().all(|s| !s) {
            return Ok(LayerPattern::AllFull);
        }
        let Some(first_global) = sliding.iter().position(|s| !s) else {
            return Ok(LayerPattern::AllSliding);
        };
        let n = first_global + 1;
        if sliding
            .iter()
            .enumerate()
            .any(|(l, &s)| s == (l + 1).is_multiple_of(n))
        {
            bail!(self.err(format!(
                "layer_types: only a global layer every n-th layer is supported, got {sliding:?}"
            )));
        }
        Ok(LayerPattern::EveryNth(n))
    }

    /// The sliding window (`sliding_window`) and which layers use it (`layer_types`, else one
    /// global layer every `unstated_pattern` layers).
    pub fn set_window(&self, c: &mut ModelConfig, unstated_pattern: usize) -> Result<()> {
        c.sliding_window = self.opt_u("sliding_window");
        c.sliding_window_pattern = match self.layer_pattern(c.num_layers)? {
            LayerPattern::Unstated => Some(unstated_pattern),
            LayerPattern::EveryNth(n) => Some(n),
            LayerPattern::AllSliding => None,
            LayerPattern::AllFull => {
                c.sliding_window = None;
                None
            }
        };
        Ok(())
    }

    /// The fields every architecture shares, with the architecture's [`super::Defaults`].
    pub fn base(&self, arch: Arch, rope: &Rope) -> Result<ModelConfig> {
        if let Some(p) = &rope.longrope {
            bail!(self.err(format!(
                "{}: RoPE type longrope is read for model_type phi3 only",
                p.what
            )));
        }
        let hidden = self.u("hidden_size")?;
        let heads = self.u("num_attention_heads")?;
        let d = arch.defaults();
        let activation = self.activation(d.activation)?;
        Ok(ModelConfig {
            arch,
            vocab_size: self.u("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: self.u("intermediate_size")?,
            num_layers: self.u("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: self.opt_u("num_key_value_heads").unwrap_or(heads),
            head_dim: self.opt_u("head_dim").unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: self.opt_f("rms_norm_eps").unwrap_or(1e-6),
            rope_theta: rope.theta.unwrap_or(d.rope_theta),
            rope_local_theta: None,
            sliding_window: None,
            sliding_window_pattern: None,
            max_position_embeddings: self.opt_u("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: self
                .opt_bool("tie_word_embeddings")
                .unwrap_or(d.tie_word_embeddings),
            attention_bias: self.opt_bool("attention_bias").unwrap_or(false),
            query_pre_attn_scalar: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            activation,
            rope_scaling: rope.llama3,
            rope_linear_factor: rope.linear_factor,
            rope_freq_factors: None,
            rope_longrope: None,
            bos_token_id: self.ids("bos_token_id").first().copied(),
            eos_token_ids: self.ids("eos_token_id"),
            pad_token_id: self.ids("pad_token_id").first().copied(),
        })
    }

    /// Refuse the Qwen-style sliding window (`use_sliding_window` with `max_window_layers`).
    pub fn refuse_qwen_window(&self) -> Result<()> {
        if self.opt_bool("use_sliding_window") == Some(true) {
            bail!(self.err(
                "use_sliding_window = true (a window on the layers above max_window_layers) is not supported"
            ));
        }
        Ok(())
    }
}

/// Model configuration from an HF `config.json` value (an export's exact `unlearn` section
/// when present).
pub fn config_from_hf(v: &Value, file: &Path) -> Result<ModelConfig> {
    if let Some(exact) = v.get("unlearn") {
        return serde_json::from_value(exact.clone())
            .with_context(|| format!("{}: bad `unlearn` section", file.display()));
    }
    let model_type = v
        .get("model_type")
        .and_then(|x| x.as_str())
        .with_context(|| format!("{}: field `model_type` is missing", file.display()))?;
    let Some(arch) = Arch::from_hf_model_type(model_type) else {
        bail!(
            "{}: model_type {model_type:?} is not supported (supported: {})",
            file.display(),
            Arch::supported_hf_model_types()
        );
    };
    // Multimodal Gemma 3 configs nest the language model's fields.
    let v = v.get("text_config").unwrap_or(v);
    let h = HfConfig { v, file };
    let mut c = match arch {
        Arch::Gemma => super::gemma::from_hf(&h)?,
        Arch::Gemma2 => super::gemma2::from_hf(&h)?,
        Arch::Gemma3 => super::gemma3::from_hf(&h)?,
        Arch::Llama => super::llama::from_hf(&h, model_type)?,
        Arch::Qwen3 => super::qwen3::from_hf(&h)?,
        Arch::Phi3 => super::phi3::from_hf(&h)?,
    };
    if c.sliding_window.is_none() {
        c.sliding_window_pattern = None;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hf(v: &Value) -> HfConfig<'_> {
        HfConfig {
            v,
            file: Path::new("config.json"),
        }
    }

    #[test]
    fn rope_is_read_in_both_forms() {
        let classic = json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let new = json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        assert_eq!(hf(&classic).rope().unwrap(), hf(&new).rope().unwrap());
        assert_eq!(hf(&new).rope().unwrap().theta, Some(5e5));
        let nested = json!({"rope_parameters": {
            "full_attention": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0},
            "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}});
        let r = hf(&nested).rope().unwrap();
        assert_eq!(
            (r.theta, r.local_theta, r.linear_factor),
            (Some(1e6), Some(1e4), Some(8.0))
        );
        let yarn = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        let e = hf(&yarn).rope().unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("yarn"), "{e}");
    }

    #[test]
    fn layer_types_become_a_pattern_or_an_error() {
        let t = |v: Value| hf(&json!({ "layer_types": v })).layer_pattern(4);
        let s = "sliding_attention";
        let f = "full_attention";
        assert_eq!(t(json!([s, f, s, f])).unwrap(), LayerPattern::EveryNth(2));
        assert_eq!(t(json!([s, s, f, s])).unwrap(), LayerPattern::EveryNth(3));
        assert_eq!(t(json!([f, f, f, f])).unwrap(), LayerPattern::AllFull);
        assert_eq!(t(json!([s, s, s, s])).unwrap(), LayerPattern::AllSliding);
        assert!(t(json!([s, f, f, s])).is_err());
        assert!(t(json!([s, f])).is_err());
    }
}
