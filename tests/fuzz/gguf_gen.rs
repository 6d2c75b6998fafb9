//! Structure-aware GGUF generation: a raw writer that puts down whatever counts, value types,
//! shapes, tensor types and offsets it is given (so a header can lie), and a generator that
//! starts from a small valid Llama/Gemma header and bends its fields.

use arbtest::arbitrary::{Result as ArbResult, Unstructured};
use candle_core::quantized::gguf_file::Value;

/// One tensor entry as written: any dimensions, type id and offset.
pub struct RawTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: u32,
    pub offset: u64,
}

/// A GGUF file as written: version, metadata, tensor entries, the counts the header claims,
/// and the bytes after the header.
pub struct RawGguf {
    pub version: u32,
    pub meta: Vec<(String, Value)>,
    pub tensors: Vec<RawTensor>,
    pub claimed_tensors: Option<u64>,
    pub claimed_meta: Option<u64>,
    pub data: Vec<u8>,
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

impl RawGguf {
    fn len(&self, out: &mut Vec<u8>, n: u64) {
        if self.version == 1 {
            out.extend((n as u32).to_le_bytes());
        } else {
            out.extend(n.to_le_bytes());
        }
    }

    fn string(&self, out: &mut Vec<u8>, s: &str) {
        self.len(out, s.len() as u64);
        out.extend(s.as_bytes());
    }

    fn value(&self, out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.extend(x.to_le_bytes()),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(u8::from(*x)),
            Value::String(s) => self.string(out, s),
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
            Value::Array(a) => {
                out.extend(a.first().map_or(4, type_id).to_le_bytes());
                self.len(out, a.len() as u64);
                for x in a {
                    self.value(out, x);
                }
            }
        }
    }

    /// The file's bytes, the data padded to 32 bytes after the header.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        let nt = self.claimed_tensors.unwrap_or(self.tensors.len() as u64);
        let nm = self.claimed_meta.unwrap_or(self.meta.len() as u64);
        self.len(&mut out, nt);
        self.len(&mut out, nm);
        for (k, v) in &self.meta {
            self.string(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            self.value(&mut out, v);
        }
        for t in &self.tensors {
            self.string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                self.len(&mut out, d);
            }
            out.extend(t.dtype.to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(&self.data);
        out
    }
}

/// Dimensions and counts that break arithmetic.
const SIZES: [u64; 10] = [0, 1, 2, 4, 8, 32, 256, 1 << 32, 1 << 40, 1 << 60];

/// A value of any type, biased to extremes.
fn odd_value(u: &mut Unstructured, depth: usize) -> ArbResult<Value> {
    Ok(match u.int_in_range(0..=12)? {
        0 => Value::U8(u.arbitrary()?),
        1 => Value::I8(u.arbitrary()?),
        2 => Value::U16(u.arbitrary()?),
        3 => Value::I16(u.arbitrary()?),
        4 => Value::U32(*u.choose(&[0, 1, 2, 3, 5, 16, u32::MAX])?),
        5 => Value::I32(*u.choose(&[-1, 0, 1, i32::MIN, i32::MAX])?),
        6 => Value::F32(*u.choose(&[f32::NAN, f32::INFINITY, -1.0, 0.0, 1e-6, 1e38])?),
        7 => Value::Bool(u.arbitrary()?),
        8 => Value::String(u.arbitrary()?),
        9 if depth < 3 => {
            let n = u.int_in_range(0..=4)?;
            let first = odd_value(u, depth + 1)?;
            Value::Array(std::iter::repeat_n(first, n).collect())
        }
        10 => Value::U64(*u.choose(&SIZES)?),
        11 => Value::I64(u.arbitrary()?),
        _ => Value::F64(u.arbitrary()?),
    })
}

/// Keys the readers look at.
const KEYS: [&str; 16] = [
    "general.alignment",
    "general.architecture",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.block_count",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.add_space_prefix",
];

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A small valid GGUF: a Llama or Gemma 3 header with a SentencePiece (`llama`) or byte-level
/// (`gpt2`) tokenizer, an f32 embedding and a Q4_0 tensor.
pub fn valid(arch: &str, tokenizer: &str) -> RawGguf {
    let tokens = [
        "<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "  ", "<0x41>",
    ];
    let n = tokens.len();
    let k = |s: &str| format!("{arch}.{s}");
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (k("embedding_length"), Value::U32(4)),
        (k("attention.head_count"), Value::U32(2)),
        (k("feed_forward_length"), Value::U32(8)),
        (k("block_count"), Value::U32(1)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ("general.alignment".into(), Value::U32(32)),
        (
            "tokenizer.ggml.model".into(),
            Value::String(tokenizer.into()),
        ),
        ("tokenizer.ggml.tokens".into(), strs(&tokens)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array((0..n).map(|i| Value::F32(i as f32)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array((0..n).map(|i| Value::I32([2, 3, 3, 1][i.min(3)])).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strs(&["a b", "▁ a"])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
    ];
    let tensors = vec![
        RawTensor {
            name: "token_embd.weight".into(),
            dims: vec![4, n as u64],
            dtype: 0,
            offset: 0,
        },
        RawTensor {
            name: "blk.0.ffn_up.weight".into(),
            dims: vec![32, 1],
            dtype: 2,
            offset: 160,
        },
    ];
    RawGguf {
        version: 3,
        meta,
        tensors,
        claimed_tensors: None,
        claimed_meta: None,
        data: (0..192u32).map(|i| (i * 7) as u8).collect(),
    }
}

/// A [`valid`] GGUF with up to six fields bent: a value replaced, an entry dropped or added, a
/// shape, type or offset changed, a count that lies, another version.
pub fn structured(u: &mut Unstructured) -> ArbResult<Vec<u8>> {
    let mut raw = valid(
        u.choose(&["llama", "gemma3"])?,
        u.choose(&["llama", "gpt2"])?,
    );
    let (meta, tensors) = (&mut raw.meta, &mut raw.tensors);
    for _ in 0..u.int_in_range(0..=6)? {
        match u.int_in_range(0..=9)? {
            0 | 1 => {
                let i = u.choose_index(meta.len())?;
                meta[i].1 = odd_value(u, 0)?;
            }
            2 => {
                let i = u.choose_index(meta.len())?;
                meta.remove(i);
            }
            3 => meta.push((u.choose(&KEYS)?.to_string(), odd_value(u, 0)?)),
            4 => {
                let t = u.choose_index(tensors.len())?;
                let dims = (0..u.int_in_range(0..=5)?)
                    .map(|_| u.choose(&SIZES).copied())
                    .collect::<ArbResult<_>>()?;
                tensors[t].dims = dims;
            }
            5 => {
                let t = u.choose_index(tensors.len())?;
                tensors[t].dtype = *u.choose(&[0, 1, 2, 3, 4, 8, 10, 12, 14, 15, 30, 99])?;
            }
            6 => {
                let t = u.choose_index(tensors.len())?;
                tensors[t].offset = *u.choose(&SIZES)?;
            }
            7 => raw.version = u.int_in_range(0..=4)?,
            8 => {
                let lie = Some(*u.choose(&SIZES)?);
                if u.arbitrary()? {
                    raw.claimed_tensors = lie;
                } else {
                    raw.claimed_meta = lie;
                }
            }
            _ => {
                let t = u.choose_index(tensors.len())?;
                let copy = RawTensor {
                    name: tensors[t].name.clone(),
                    dims: tensors[t].dims.clone(),
                    dtype: tensors[t].dtype,
                    offset: tensors[t].offset,
                };
                tensors.push(copy);
            }
        }
    }
    Ok(raw.bytes())
}
