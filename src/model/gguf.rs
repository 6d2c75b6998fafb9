//! GGUF files: metadata → [`ModelConfig`], tensors dequantized to f32 and renamed to Hugging
//! Face names and conventions (Gemma norms stored as 1 + w become w; the q/k weights of the
//! architectures llama.cpp stores permuted for its interleaved RoPE are put back in HF's
//! layout, see [`qk_stored_permuted`]; Phi-3's fused projections are split as its Hugging Face
//! checkpoints' are). Phi-3's LongRoPE is read from `rope_factors_short` / `rope_factors_long`
//! and the `rope.scaling` keys; its `attention.sliding_window` (0: none) applies on every layer,
//! as in the Hugging Face model (llama.cpp itself runs Phi-3 without it).

use crate::model::config::{Arch, LongRope, ModelConfig};
use crate::model::gguf_header;
use crate::model::{TextTokenizer, Weights};
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
#[cfg(test)]
use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};
use std::io::{Read, Seek};
use std::path::Path;

/// Read and check a GGUF header and metadata.
pub fn read_content(path: &Path) -> Result<(std::fs::File, Content)> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("{}: cannot read its size", path.display()))?
        .len();
    let ct = read_content_from(&mut f, len, &path.display().to_string())?;
    Ok((f, ct))
}

/// Read and check a GGUF header from `r` (positioned at the start of `len` bytes of GGUF);
/// `what` names the source in errors. The header is checked by [`gguf_header::check`] before
/// candle parses it, so that no count in it is trusted.
pub fn read_content_from<R: Read + Seek>(r: &mut R, len: u64, what: &str) -> Result<Content> {
    if len < 4 {
        bail!("{what}: file too short ({len} bytes) to be a GGUF file");
    }
    gguf_header::check(r, len).map_err(|e| anyhow::anyhow!("{what}: {e:#}"))?;
    Content::read(r).map_err(|e| {
        anyhow::anyhow!("{what}: cannot read the GGUF header (truncated or corrupt?): {e}")
    })
}

fn key_u32(ct: &Content, path: &Path, key: &str) -> Result<usize> {
    let v = ct
        .metadata
        .get(key)
        .with_context(|| format!("{}: GGUF metadata key `{key}` is missing", path.display()))?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .map_err(|_| {
            anyhow::anyhow!(
                "{}: GGUF metadata `{key}` is not an integer",
                path.display()
            )
        })
}

fn opt_u32(ct: &Content, key: &str) -> Option<usize> {
    ct.metadata.get(key).and_then(|v| {
        v.to_u32()
            .ok()
            .map(|x| x as usize)
            .or_else(|| v.to_u64().ok().map(|x| x as usize))
    })
}

fn opt_f64(ct: &Content, key: &str) -> Option<f64> {
    ct.metadata.get(key).and_then(|v| {
        v.to_f32()
            .ok()
            .map(|x| x as f64)
            .or_else(|| v.to_f64().ok())
    })
}

/// The `general.architecture` of a GGUF file (e.g. "llama", "qwen2", "gemma3").
fn arch_name(ct: &Content, path: &Path) -> Result<String> {
    ct.metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .with_context(|| {
            format!(
                "{}: GGUF metadata key `general.architecture` is missing",
                path.display()
            )
        })
}

/// Whether llama.cpp's converter stored the q/k projection rows of this GGUF architecture
/// permuted. It permutes them (per head, rows (half, pair) → (pair, half)) only for the models it
/// converts as `llama` (Llama and Mistral), whose RoPE it applies to interleaved pairs; Qwen2 and
/// Gemma 3 use the rotate-half (NeoX) RoPE of Hugging Face and are stored as they are.
pub fn qk_stored_permuted(arch_name: &str) -> bool {
    matches!(arch_name, "llama" | "mistral")
}

/// Build the model configuration from GGUF metadata.
pub fn config_from_gguf(ct: &Content, path: &Path) -> Result<ModelConfig> {
    let arch_name = arch_name(ct, path)?;
    let arch = match arch_name.as_str() {
        "gemma" => Arch::Gemma,
        "gemma2" => Arch::Gemma2,
        "gemma3" => Arch::Gemma3,
        "qwen3" => Arch::Qwen3,
        "phi3" => Arch::Phi3,
        "llama" | "qwen2" | "mistral" => Arch::Llama,
        other => bail!(
            "{}: GGUF architecture {other:?} is not supported (supported: gemma, gemma2, gemma3, llama, mistral, phi3, qwen2, qwen3)",
            path.display()
        ),
    };
    let a = arch_name.as_str();
    let k = |s: &str| format!("{a}.{s}");
    let hidden = key_u32(ct, path, &k("embedding_length"))?;
    let heads = key_u32(ct, path, &k("attention.head_count"))?;
    let kv = opt_u32(ct, &k("attention.head_count_kv")).unwrap_or(heads);
    let head_dim = opt_u32(ct, &k("attention.key_length")).unwrap_or(hidden / heads.max(1));
    // Phi-4-mini (converted as `phi3`) rotates 3/4 of each head.
    let rotary = opt_u32(ct, &k("rope.dimension_count")).filter(|_| arch == Arch::Phi3);
    if let Some(rot) = rotary.filter(|&r| r != head_dim) {
        bail!(
            "{}: GGUF metadata `{a}.rope.dimension_count` is {rot}, head_dim {head_dim}: RoPE on part of each head is not supported",
            path.display()
        );
    }
    let emb = ct
        .tensor_infos
        .get("token_embd.weight")
        .with_context(|| format!("{}: tensor `token_embd.weight` is missing", path.display()))?;
    let vocab = *emb.shape.dims().first().with_context(|| {
        format!(
            "{}: tensor `token_embd.weight` has no dimensions (expected [vocab, hidden])",
            path.display()
        )
    })?;
    let gemma3 = arch == Arch::Gemma3;
    // llama.cpp keeps no window pattern, local RoPE base or query scale in the file: it
    // hard-codes them per architecture, as here (Gemma 2: every other layer global, the scale
    // 1/sqrt(head_dim) of its 2B and 9B models; Gemma 3: one global layer in six, local base
    // 10 000).
    let (window, pattern) = match arch {
        Arch::Gemma2 => (
            Some(opt_u32(ct, &k("attention.sliding_window")).unwrap_or(4096)),
            Some(2),
        ),
        Arch::Gemma3 => (
            Some(opt_u32(ct, &k("attention.sliding_window")).unwrap_or(512)),
            Some(6),
        ),
        Arch::Phi3 => (
            opt_u32(ct, &k("attention.sliding_window")).filter(|&w| w > 0),
            None,
        ),
        _ => (None, None),
    };
    let gemma_window = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
    let tok_id = |key: &str| opt_u32(ct, key).map(|x| x as u32);
    let eps = opt_f64(ct, &k("attention.layer_norm_rms_epsilon")).with_context(|| {
        format!(
            "{}: GGUF metadata key `{a}.attention.layer_norm_rms_epsilon` is missing",
            path.display()
        )
    })?;
    Ok(ModelConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: key_u32(ct, path, &k("feed_forward_length"))?,
        num_layers: key_u32(ct, path, &k("block_count"))?,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        rms_norm_eps: eps,
        rope_theta: opt_f64(ct, &k("rope.freq_base")).unwrap_or(arch.defaults().rope_theta),
        rope_local_theta: gemma3.then_some(10_000.0),
        sliding_window: window,
        sliding_window_pattern: pattern,
        max_position_embeddings: opt_u32(ct, &k("context_length")).unwrap_or(4096),
        tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
        attention_bias: ct.tensor_infos.contains_key("blk.0.attn_q.bias"),
        query_pre_attn_scalar: gemma_window.then_some(head_dim as f64),
        final_logit_softcapping: opt_f64(ct, &k("final_logit_softcapping")),
        attn_logit_softcapping: opt_f64(ct, &k("attn_logit_softcapping")),
        activation: arch.defaults().activation,
        rope_scaling: None,
        rope_linear_factor: None,
        rope_freq_factors: None,
        rope_longrope: None,
        bos_token_id: tok_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: tok_id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: tok_id("tokenizer.ggml.padding_token_id"),
    })
}

/// HF name of a GGUF tensor (None: not part of the model, e.g. `rope_freqs`). Phi-3's fused
/// tensors keep their Hugging Face names (`attn_qkv` → `qkv_proj`; its `ffn_up` holds gate and
/// up: `gate_up_proj`).
fn hf_name(name: &str, arch: Arch) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let m = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if arch == Arch::Phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" if arch.layout().sandwich_norms => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{m}.{kind}"))
}

/// The values of a one-dimensional tensor of the file (None: it has no such tensor).
fn read_vector<R: Read + Seek>(
    ct: &Content,
    f: &mut R,
    name: &str,
    path: &Path,
) -> Result<Option<Vec<f64>>> {
    if !ct.tensor_infos.contains_key(name) {
        return Ok(None);
    }
    let t = ct
        .tensor(f, name, &Device::Cpu)
        .and_then(|q| q.dequantize(&Device::Cpu))
        .map_err(|e| anyhow::anyhow!("{}: cannot read `{name}`: {e}", path.display()))?;
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    Ok(Some(v.into_iter().map(f64::from).collect()))
}

/// LongRoPE as llama.cpp stores Phi-3's: the factors as tensors `rope_factors_short` and
/// `rope_factors_long`, the original context and attention factor (default 1) as metadata.
fn longrope<R: Read + Seek>(ct: &Content, f: &mut R, path: &Path) -> Result<Option<LongRope>> {
    let short = read_vector(ct, f, "rope_factors_short.weight", path)?;
    let long = read_vector(ct, f, "rope_factors_long.weight", path)?;
    let (short_factor, long_factor) = match (short, long) {
        (None, None) => return Ok(None),
        (Some(s), Some(l)) => (s, l),
        _ => bail!(
            "{}: one of the tensors `rope_factors_short.weight` and `rope_factors_long.weight` is missing",
            path.display()
        ),
    };
    let a = arch_name(ct, path)?;
    Ok(Some(LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: key_u32(
            ct,
            path,
            &format!("{a}.rope.scaling.original_context_length"),
        )?,
        attention_factor: opt_f64(ct, &format!("{a}.rope.scaling.attn_factor")).unwrap_or(1.0),
    }))
}

/// Undo llama.cpp's q/k row permutation: rows (head, pair, half) → (head, half, pair).
fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    Ok(t.reshape((heads, rows / heads / 2, 2, rest))?
        .transpose(1, 2)?
        .reshape(dims)?
        .contiguous()?)
}

/// The names of the tensors kept as quantized blocks under `--weights gguf`: every block
/// matrix the model computes with as it is stored — not the LM head (all its rows are read by
/// every logit; it stays f32), nor tensors an architecture converts at load (Phi-3's fused
/// projections, which are not among these names). Empty without `--weights gguf`.
fn keep_as_blocks(config: &ModelConfig) -> std::collections::BTreeSet<String> {
    if !crate::model::keeps_blocks() {
        return Default::default();
    }
    let head = if config.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    Weights::expected_shapes(config)
        .into_iter()
        .filter(|(n, shape)| shape.len() == 2 && n != head)
        .map(|(n, _)| n)
        .collect()
}

/// Whether a GGUF tensor type holds its numbers in less than f32 (quantized blocks, f16, bf16:
/// each widens exactly to the f32 numbers a load would make of it).
fn narrower_than_f32(t: candle_core::quantized::GgmlDType) -> bool {
    !matches!(t, candle_core::quantized::GgmlDType::F32)
}

/// [`unpermute`] of a matrix held as quantized blocks: each row is a whole number of blocks,
/// so rows move as bytes, and the dequantized result equals [`unpermute`] of the dequantized
/// matrix.
fn unpermute_blocks(
    q: &candle_core::quantized::QTensor,
    heads: usize,
    device: &Device,
) -> Result<candle_core::quantized::QTensor> {
    let (rows, cols) = q.shape().dims2()?;
    let (bs, ts) = (q.dtype().block_size(), q.dtype().type_size());
    if cols % bs != 0 {
        anyhow::bail!("rows of {cols} values are not whole blocks of {bs}");
    }
    // Where each row comes from: unpermute applied to the row numbers.
    let idx = Tensor::arange(0f32, rows as f32, &Device::Cpu)?.reshape((rows, 1))?;
    let from: Vec<f32> = unpermute(&idx, heads)?.flatten_all()?.to_vec1()?;
    let data = q.data()?;
    let row_bytes = cols / bs * ts;
    let mut out = Vec::with_capacity(data.len());
    for r in from {
        let r = r as usize;
        out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
        q.dtype(),
        &out,
        vec![rows, cols],
        device,
    )?)
}

/// Load config, weights and tokenizer from a GGUF file.
pub fn load_gguf(path: &Path, device: &Device) -> Result<(ModelConfig, Weights, TextTokenizer)> {
    let (mut f, ct) = read_content(path)?;
    let mut config = config_from_gguf(&ct, path)?;
    // Llama 3.1's RoPE scaling as llama.cpp stores it: the divisor of each frequency.
    config.rope_freq_factors = read_vector(&ct, &mut f, "rope_freqs.weight", path)?;
    config.rope_longrope = longrope(&ct, &mut f, path)?;
    // Before any tensor is reshaped by these numbers (a head count of 0 would divide by zero).
    config
        .validate()
        .with_context(|| format!("{}", path.display()))?;
    let permuted = qk_stored_permuted(&arch_name(&ct, path)?);
    let tokenizer = TextTokenizer::from_gguf(&ct).with_context(|| format!("{}", path.display()))?;
    let mut weights = Weights::default();
    let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    let bar = crate::util::progress(names.len() as u64, "dequantizing");
    let as_blocks = keep_as_blocks(&config);
    for name in names {
        bar.inc(1);
        let Some(hf) = hf_name(&name, config.arch) else {
            continue;
        };
        let q = ct
            .tensor(&mut f, &name, device)
            .map_err(|e| anyhow::anyhow!("{}: cannot read tensor `{name}`: {e}", path.display()))?;
        // The heads whose q/k rows llama.cpp permuted in this tensor, if it did.
        let heads = match permuted {
            true if name.contains(".attn_q.") => Some(config.num_heads),
            true if name.contains(".attn_k.") => Some(config.num_kv_heads),
            _ => None,
        };
        if as_blocks.contains(&hf) && narrower_than_f32(q.dtype()) && q.rank() == 2 {
            let q = match heads {
                Some(h) => unpermute_blocks(&q, h, device)
                    .with_context(|| format!("{}: tensor `{name}`", path.display()))?,
                None => q,
            };
            weights.blocks.insert(hf, std::sync::Arc::new(q));
            continue;
        }
        let mut t = q.dequantize(device).map_err(|e| {
            anyhow::anyhow!("{}: cannot dequantize tensor `{name}`: {e}", path.display())
        })?;
        // llama.cpp stores Gemma's norm weights as the multiplier 1 + w.
        if config.arch.layout().norm_plus_one && hf.contains("norm") {
            t = t.affine(1.0, -1.0)?;
        }
        if let Some(h) = heads {
            t = unpermute(&t, h)?;
        }
        weights.tensors.insert(hf, crate::model::stored(t)?);
    }
    bar.finish_and_clear();
    config
        .arch
        .tensors_from_hf(&config, &mut weights.tensors)
        .with_context(|| format!("{}", path.display()))?;
    Ok((config, weights, tokenizer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.ffn_down.weight", Arch::Llama).unwrap(),
            "model.layers.3.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", Arch::Gemma3).unwrap(),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", Arch::Llama).unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.1.attn_q.bias", Arch::Llama).unwrap(),
            "model.layers.1.self_attn.q_proj.bias"
        );
        assert!(hf_name("rope_freqs.weight", Arch::Llama).is_none());
        // Phi-3's fused tensors keep their Hugging Face names until they are split.
        assert_eq!(
            hf_name("blk.2.ffn_up.weight", Arch::Phi3).unwrap(),
            "model.layers.2.mlp.gate_up_proj.weight"
        );
        assert_eq!(
            hf_name("blk.2.attn_qkv.weight", Arch::Phi3).unwrap(),
            "model.layers.2.self_attn.qkv_proj.weight"
        );
        assert!(hf_name("rope_factors_long.weight", Arch::Phi3).is_none());
    }

    #[test]
    fn only_llama_converted_architectures_are_unpermuted() {
        // llama.cpp's LlamaModel (also used for Mistral) permutes q/k; Qwen2Model and
        // Gemma3Model write them as Hugging Face has them.
        assert!(qk_stored_permuted("llama"));
        assert!(qk_stored_permuted("mistral"));
        assert!(!qk_stored_permuted("qwen2"));
        assert!(!qk_stored_permuted("gemma3"));
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // llama.cpp: reshape(heads, 2, hd/2, in).swapaxes(1, 2).
        let (heads, hd, inp) = (2, 4, 3);
        let hf = Tensor::arange(0f32, (heads * hd * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * hd, inp))
            .unwrap();
        let permuted = hf
            .reshape((heads, 2, hd / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((heads * hd, inp))
            .unwrap();
        let back = unpermute(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }

    /// A tiny GGUF with the given metadata and one f32 embedding tensor.
    fn tiny_gguf(path: &Path, meta: &[(&str, Value)]) {
        use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
        let emb = QTensor::quantize(
            &Tensor::zeros((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let mut f = std::fs::File::create(path).unwrap();
        let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut f, &m, &[("token_embd.weight", &emb)]).unwrap();
    }

    #[test]
    fn unknown_architecture_and_tokenizer_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("odd.gguf");
        tiny_gguf(
            &p,
            &[("general.architecture", Value::String("bert".into()))],
        );
        let e = load_gguf(&p, &Device::Cpu)
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            e.contains("odd.gguf") && e.contains("\"bert\"") && e.contains("not supported"),
            "{e}"
        );
        let llama = |extra: Vec<(&'static str, Value)>| {
            let mut m = vec![
                ("general.architecture", Value::String("llama".into())),
                ("llama.embedding_length", Value::U32(8)),
                ("llama.attention.head_count", Value::U32(2)),
                ("llama.feed_forward_length", Value::U32(16)),
                ("llama.block_count", Value::U32(1)),
                ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ];
            m.extend(extra);
            m
        };
        tiny_gguf(&p, &llama(vec![]));
        let e = format!(
            "{:#}",
            load_gguf(&p, &Device::Cpu).err().expect("must fail")
        );
        assert!(e.contains("tokenizer.ggml.model"), "{e}");
        let toks = Value::Array(
            ["a", "b", "c", "d"]
                .iter()
                .map(|t| Value::String(t.to_string()))
                .collect(),
        );
        tiny_gguf(
            &p,
            &llama(vec![
                ("tokenizer.ggml.model", Value::String("rwkv".into())),
                ("tokenizer.ggml.tokens", toks),
            ]),
        );
        let e = format!(
            "{:#}",
            load_gguf(&p, &Device::Cpu).err().expect("must fail")
        );
        assert!(
            e.contains("rwkv") && e.contains("unsupported tokenizer"),
            "{e}"
        );
        let mut bad = llama(vec![]);
        bad.retain(|(k, _)| *k != "llama.block_count");
        tiny_gguf(&p, &bad);
        let e = config_from_gguf(&read_content(&p).unwrap().1, &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("llama.block_count") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"NOPE and more bytes").unwrap();
        let e = read_content(&p).unwrap_err().to_string();
        assert!(e.contains("x.gguf") && e.contains("not a GGUF file"), "{e}");
        std::fs::write(&p, b"GG").unwrap();
        assert!(read_content(&p)
            .unwrap_err()
            .to_string()
            .contains("too short"));
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00").unwrap();
        let e = read_content(&p).unwrap_err().to_string();
        assert!(e.contains("tensor count") && e.contains("truncated"), "{e}");
        let e = read_content(&dir.path().join("missing.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.gguf") && e.contains("cannot open"),
            "{e}"
        );
    }
}
