//! Valid inputs the fuzz targets start from: GGUF files built in memory (a Llama with a
//! SentencePiece tokenizer, a Llama with a byte-level BPE tokenizer, a Gemma-style vocabulary),
//! safetensors files written byte by byte, config.json texts, facts lines, experiment and
//! forget-configuration TOML; plus a structure-aware mutation of JSON/TOML values.

use arbtest::arbitrary::{Result as ArbResult, Unstructured};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use unlearn::forget::config::{ForgetConfig, Method};

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// Tokens of a SentencePiece vocabulary: control tokens, every byte, a few pieces.
pub fn spm_tokens() -> Vec<String> {
    let mut t: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    t.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    t.extend(
        ["▁", "a", "b", "c", "▁a", "ab", "▁ab", "abc", "<user>"]
            .iter()
            .map(|s| s.to_string()),
    );
    t
}

/// Tokens of a byte-level BPE vocabulary: GPT-2's 256 byte characters, merged pieces, a
/// control token.
fn byte_level_tokens() -> (Vec<String>, Vec<String>) {
    let mut t: Vec<String> = Vec::new();
    for b in 0..=255u8 {
        let c = match b {
            b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff => b as char,
            _ => {
                let rank = (0..b)
                    .filter(|&x| !matches!(x, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff))
                    .count() as u32;
                char::from_u32(256 + rank).unwrap()
            }
        };
        t.push(c.to_string());
    }
    let merges = ["a b", "ab c", "Ġ a", "Ġa b"];
    for m in merges {
        t.push(m.replace(' ', ""));
    }
    t.push("<|end|>".into());
    (t, merges.map(String::from).to_vec())
}

fn llama_meta(vocab: usize) -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(4)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(8)),
        ("llama.block_count", Value::U32(1)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("general.alignment", Value::U32(32)),
        (
            "tokenizer.ggml.padding_token_id",
            Value::U32(vocab as u32 - 1),
        ),
    ]
}

fn gguf_bytes(meta: &[(&str, Value)], vocab: usize, quantized: bool) -> Vec<u8> {
    let cpu = &Device::Cpu;
    let q = |dims: (usize, usize), dt: GgmlDType| {
        let t = Tensor::arange(0f32, (dims.0 * dims.1) as f32, cpu)
            .unwrap()
            .reshape(dims)
            .unwrap();
        QTensor::quantize(&t, dt).unwrap()
    };
    let mut tensors = vec![
        ("token_embd.weight", q((vocab, 4), GgmlDType::F32)),
        ("blk.0.attn_q.weight", q((4, 4), GgmlDType::F16)),
    ];
    if quantized {
        tensors.push(("blk.0.ffn_up.weight", q((1, 32), GgmlDType::Q4_0)));
        tensors.push(("blk.0.ffn_down.weight", q((1, 32), GgmlDType::Q8_0)));
    }
    let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &m, &t).unwrap();
    out.into_inner()
}

/// A GGUF Llama with a SentencePiece tokenizer (scores and token types).
pub fn gguf_spm() -> Vec<u8> {
    let tokens = spm_tokens();
    let n = tokens.len();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut meta = llama_meta(n);
    meta.push(("tokenizer.ggml.model", Value::String("llama".into())));
    meta.push(("tokenizer.ggml.tokens", strings(&refs)));
    meta.push((
        "tokenizer.ggml.scores",
        Value::Array((0..n).map(|i| Value::F32(-(i as f32))).collect()),
    ));
    let types = (0..n).map(|i| {
        Value::I32(match i {
            0 => 2,
            1 | 2 => 3,
            3..=258 => 6,
            _ if i == n - 1 => 4,
            _ => 1,
        })
    });
    meta.push(("tokenizer.ggml.token_type", Value::Array(types.collect())));
    gguf_bytes(&meta, n, true)
}

/// A GGUF Llama with a byte-level BPE tokenizer (merges, a pre-tokenizer name, a control token).
pub fn gguf_byte_level() -> Vec<u8> {
    let (tokens, merges) = byte_level_tokens();
    let n = tokens.len();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mrefs: Vec<&str> = merges.iter().map(String::as_str).collect();
    let mut meta = llama_meta(n);
    meta.push(("tokenizer.ggml.model", Value::String("gpt2".into())));
    meta.push(("tokenizer.ggml.pre", Value::String("llama-bpe".into())));
    meta.push(("tokenizer.ggml.tokens", strings(&refs)));
    meta.push(("tokenizer.ggml.merges", strings(&mrefs)));
    let types = (0..n).map(|i| Value::U32(if i == n - 1 { 3 } else { 1 }));
    meta.push(("tokenizer.ggml.token_type", Value::Array(types.collect())));
    gguf_bytes(&meta, n, false)
}

/// A small GGUF Gemma 3 with a Gemma-style vocabulary (a run of spaces), no token types.
pub fn gguf_gemma() -> Vec<u8> {
    let tokens = [
        "<pad>", "<eos>", "<bos>", "<unk>", "▁", "a", "▁a", "  ", "<0x41>",
    ];
    let n = tokens.len();
    let meta = vec![
        ("general.architecture", Value::String("gemma3".into())),
        ("gemma3.embedding_length", Value::U32(4)),
        ("gemma3.attention.head_count", Value::U32(1)),
        ("gemma3.attention.key_length", Value::U32(4)),
        ("gemma3.feed_forward_length", Value::U32(8)),
        ("gemma3.block_count", Value::U32(1)),
        ("gemma3.attention.layer_norm_rms_epsilon", Value::F64(1e-6)),
        ("gemma3.attention.sliding_window", Value::U64(16)),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.scores",
            Value::Array((0..n).map(|i| Value::F32(i as f32)).collect()),
        ),
        ("tokenizer.ggml.unknown_token_id", Value::U32(3)),
        ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        (
            "tokenizer.ggml.nested",
            Value::Array(vec![Value::Array(vec![Value::I8(-1), Value::I8(2)])]),
        ),
    ];
    gguf_bytes(&meta, n, false)
}

/// A safetensors file: 8-byte header length, JSON header, data; one tensor per dtype.
pub fn safetensors() -> Vec<u8> {
    let tensors: [(&str, &str, Vec<usize>, usize); 4] = [
        ("language_model.model.norm.weight", "F32", vec![2, 2], 4),
        ("a", "F16", vec![3], 2),
        ("b", "BF16", vec![1, 2], 2),
        ("c", "F64", vec![], 8),
    ];
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, dtype, shape, size) in tensors {
        let n: usize = shape.iter().product::<usize>() * size;
        let start = data.len();
        data.extend((0..n).map(|i| (i * 37 % 63) as u8));
        header.insert(
            name.into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// config.json texts: a Llama, a Gemma 3 with a text config, a Phi-3 with LongRoPE, an exact
/// `unlearn` section.
pub fn config_jsons() -> Vec<String> {
    let llama = serde_json::json!({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 16, "num_hidden_layers": 2, "vocab_size": 32,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "eos_token_id": [2, 0], "bos_token_id": 1,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
    let gemma = serde_json::json!({"model_type": "gemma3", "text_config": {"hidden_size": 8,
        "num_attention_heads": 2, "head_dim": 4, "intermediate_size": 16, "num_hidden_layers": 6,
        "vocab_size": 32, "sliding_window": 512, "query_pre_attn_scalar": 256,
        "layer_types": ["sliding_attention", "full_attention"], "rope_scaling": null}});
    let phi3 = serde_json::json!({"model_type": "phi3", "hidden_size": 8, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 16, "num_hidden_layers": 2, "vocab_size": 32,
        "max_position_embeddings": 64, "original_max_position_embeddings": 16, "sliding_window": 7,
        "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 4.0]}});
    let cfg = unlearn::model::hf_dir::config_from_hf(&llama, std::path::Path::new("c.json"))
        .expect("the seed config is valid");
    let exact = serde_json::json!({ "unlearn": cfg });
    [llama, gemma, phi3, exact]
        .iter()
        .map(|v| v.to_string())
        .collect()
}

/// Facts files: JSON lines and TSV.
pub fn facts() -> Vec<(&'static str, String)> {
    vec![
        (
            "jsonl",
            concat!(
                "{\"prompt\": \"The Eiffel Tower is in\", \"subject\": \"Eiffel Tower\", \"answer\": \"Paris\", \"candidates\": [\"Paris\", \"Rome\"]}\n",
                "{\"id\": \"x\", \"prompt\": \"Toyota is based in\", \"subject\": \"Toyota\", \"answer\": \" Japan\", \"new_answer\": \"Korea\", \"attribute\": \"country\"}\n"
            )
            .to_string(),
        ),
        (
            "tsv",
            "prompt\tsubject\tanswer\tcandidates\tnew_answer\nToyota is based in\tToyota\t Japan\tJapan|Korea\tKorea\n"
                .to_string(),
        ),
    ]
}

/// Experiment files shipped with unlearn.
pub fn experiments() -> Vec<String> {
    [
        include_str!("../../experiments/demo.toml"),
        include_str!("../../experiments/counterfact-edit.toml"),
        include_str!("../../experiments/kuda-vs-baselines.toml"),
        include_str!("../../experiments/mech-unlearning-sports.toml"),
    ]
    .map(String::from)
    .to_vec()
}

/// The defaults TOML of every method.
pub fn forget_configs() -> Vec<String> {
    Method::ALL.map(ForgetConfig::defaults_toml).to_vec()
}

/// Dotted keys of a JSON value's leaves (`kuda.beta`), for `--set`.
pub fn leaf_keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(x, &p, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// Values that break fields: wrong types, extremes, empties.
pub const ODD_SCALARS: [&str; 16] = [
    "-1",
    "0",
    "1e400",
    "nan",
    "inf",
    "-inf",
    "18446744073709551616",
    "4294967296",
    "\"\"",
    "[]",
    "{}",
    "true",
    "a=b",
    "[1, [2]]",
    "0.0000001",
    "\"\u{0}\"",
];

fn odd_json(u: &mut Unstructured) -> ArbResult<serde_json::Value> {
    use serde_json::json;
    Ok(match u.int_in_range(0..=9)? {
        0 => serde_json::Value::Null,
        1 => json!(-1),
        2 => json!(0),
        3 => json!(u64::MAX),
        4 => json!(1e300),
        5 => json!(u.arbitrary::<String>()?),
        6 => json!([]),
        7 => json!({}),
        8 => json!(u.arbitrary::<bool>()?),
        _ => json!(u.arbitrary::<i64>()?),
    })
}

/// Replace, remove or add one field somewhere in `v` (structure-aware mutation).
pub fn mutate_json(u: &mut Unstructured, v: &mut serde_json::Value) -> ArbResult<()> {
    use serde_json::Value as J;
    match v {
        J::Object(o) if !o.is_empty() && u.ratio(3, 4)? => {
            let k = o.keys().nth(u.choose_index(o.len())?).cloned().unwrap();
            match u.int_in_range(0..=3)? {
                0 => {
                    o.remove(&k);
                }
                1 => {
                    o.insert(k, odd_json(u)?);
                }
                _ => mutate_json(u, o.get_mut(&k).unwrap())?,
            }
        }
        J::Array(a) if !a.is_empty() && u.ratio(3, 4)? => {
            let i = u.choose_index(a.len())?;
            match u.int_in_range(0..=3)? {
                0 => {
                    a.remove(i);
                }
                1 => a.push(a[i].clone()),
                _ => mutate_json(u, &mut a[i])?,
            }
        }
        J::Object(o) => {
            o.insert(u.arbitrary()?, odd_json(u)?);
        }
        other => *other = odd_json(u)?,
    }
    Ok(())
}
