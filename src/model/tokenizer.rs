//! Tokenizers: built from GGUF metadata (byte-level BPE with the file's merges; SentencePiece
//! BPE with merges rebuilt from the vocabulary order) or read from `tokenizer.json`; wrapped with
//! the model's special tokens. The rules follow what Hugging Face transformers does with the same
//! GGUF file, so token ids agree with the PyTorch reference.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::{AddedToken, DecoderWrapper, Tokenizer};

/// Kind of tokenizer, for `unlearn inspect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenizerKind {
    /// GPT-2 style byte-level BPE (SmolLM2, Llama 3, Qwen2).
    ByteLevelBpe,
    /// SentencePiece BPE (Gemma, Llama 2).
    SentencePieceBpe,
    /// Read from a tokenizer.json of unknown kind.
    TokenizerJson,
}

/// A tokenizer plus the model's special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub kind: TokenizerKind,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    /// Whether the model expects BOS at the start of every prompt (Gemma: yes; SmolLM2: no).
    pub add_bos: bool,
}

/// What `save_hf` writes beside tokenizer.json so that a round trip is exact.
#[derive(Serialize, Deserialize)]
struct Sidecar {
    kind: TokenizerKind,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
}

const SIDECAR: &str = "unlearn_tokenizer.json";

/// SentencePiece token types as GGUF stores them.
const TYPE_CONTROL: u32 = 3;
const TYPE_USER_DEFINED: u32 = 4;

fn meta<'a>(ct: &'a Content, key: &str) -> Result<&'a Value> {
    ct.metadata.get(key).with_context(|| {
        format!("GGUF metadata key `{key}` is missing: cannot build the tokenizer")
    })
}

fn meta_u32(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| {
        v.to_u32()
            .ok()
            .or_else(|| v.to_i32().ok().map(|x| x as u32))
    })
}

fn string_array(ct: &Content, key: &str) -> Result<Vec<String>> {
    let arr = meta(ct, key)?
        .to_vec()
        .with_context(|| format!("GGUF metadata `{key}` is not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.to_string()
                .cloned()
                .with_context(|| format!("GGUF metadata `{key}`[{i}] is not a string"))
        })
        .collect()
}

fn u32_array(ct: &Content, key: &str, n: usize) -> Result<Option<Vec<u32>>> {
    let Some(v) = ct.metadata.get(key) else {
        return Ok(None);
    };
    let arr = v
        .to_vec()
        .with_context(|| format!("GGUF metadata `{key}` is not an array"))?;
    if arr.len() != n {
        bail!(
            "GGUF metadata `{key}` has {} entries for {n} tokens",
            arr.len()
        );
    }
    let out = arr
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.to_i32()
                .map(|v| v as u32)
                .or_else(|_| x.to_u32())
                .map_err(|_| anyhow::anyhow!("GGUF metadata `{key}`[{i}] is not an integer"))
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok(Some(out))
}

/// Merges implied by a SentencePiece vocabulary whose order is the merge priority (Gemma):
/// every split of a piece into two pieces that are both in the vocabulary is a merge; merges of
/// earlier pieces come first; for one piece, longer left parts first, then longer right parts,
/// then by the ids of the parts.
pub fn merges_from_vocab_order(tokens: &[String]) -> Vec<(String, String)> {
    // First id of each string (a string listed twice keeps its first position).
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        id.entry(t.as_str()).or_insert(i);
    }
    // The priority of a piece is its last position (as a dict built in order would give).
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        last.insert(t.as_str(), i);
    }
    let mut merges: Vec<(usize, usize, usize, usize, usize, &str, &str)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if id[t.as_str()] != i {
            continue;
        }
        let prio = last[t.as_str()];
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if let (Some(&li), Some(&ri)) = (id.get(l), id.get(r)) {
                merges.push((
                    prio,
                    usize::MAX - l.chars().count(),
                    usize::MAX - r.chars().count(),
                    li,
                    ri,
                    l,
                    r,
                ));
            }
        }
    }
    merges.sort_unstable();
    merges
        .into_iter()
        .map(|m| (m.5.to_string(), m.6.to_string()))
        .collect()
}

/// Whether `c` is one of the 256 characters GPT-2's byte-level alphabet spells bytes with.
fn in_byte_alphabet(c: char) -> bool {
    matches!(c, '!'..='~' | '\u{a1}'..='\u{ac}' | '\u{ae}'..='\u{ff}')
        || (256..324).contains(&(c as u32))
}

fn build_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("building the tokenizer: {e}")
}

impl TextTokenizer {
    /// Build from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(ct: &Content) -> Result<TextTokenizer> {
        let model = meta(ct, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|_| anyhow::anyhow!("GGUF metadata `tokenizer.ggml.model` is not a string"))?
            .clone();
        let mut tokens = string_array(ct, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 {
            bail!("GGUF metadata `tokenizer.ggml.tokens` is empty");
        }
        let types = u32_array(ct, "tokenizer.ggml.token_type", n)?;
        let original = tokens.clone();
        let (mut inner, kind) = match model.as_str() {
            "gpt2" => {
                let merges: Vec<(String, String)> = string_array(ct, "tokenizer.ggml.merges")?
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .with_context(|| format!("GGUF metadata `tokenizer.ggml.merges`[{i}] = {m:?} is not two tokens"))
                    })
                    .collect::<Result<_>>()?;
                let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
                for (i, (a, b)) in merges.iter().enumerate() {
                    if !vocab.contains_key(a) || !vocab.contains_key(b) || !vocab.contains_key(&format!("{a}{b}")) {
                        bail!("GGUF metadata `tokenizer.ggml.merges`[{i}] = \"{a} {b}\" uses a token missing from the vocabulary");
                    }
                }
                let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(build_err)?;
                let mut tk = Tokenizer::new(bpe);
                tk.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true)));
                tk.with_decoder(Some(ByteLevel::new(true, true, true)));
                (tk, TokenizerKind::ByteLevelBpe)
            }
            "llama" => {
                // Runs of spaces are stored as real spaces; the vocabulary spells them with ▁.
                for t in tokens.iter_mut() {
                    if !t.is_empty() && t.chars().all(|c| c == ' ') {
                        *t = "\u{2581}".repeat(t.chars().count());
                    }
                }
                let has_merges = ct.metadata.contains_key("tokenizer.ggml.merges");
                let merges = if has_merges {
                    string_array(ct, "tokenizer.ggml.merges")?
                        .iter()
                        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
                        .collect()
                } else {
                    merges_from_vocab_order(&tokens)
                };
                // A string listed twice gets its last id (as transformers builds it).
                let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
                let unk = meta_u32(ct, "tokenizer.ggml.unknown_token_id").and_then(|i| tokens.get(i as usize).cloned());
                let mut b = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
                if let Some(u) = unk {
                    b = b.unk_token(u);
                }
                let mut tk = Tokenizer::new(b.build().map_err(build_err)?);
                tk.with_normalizer(Some(Replace::new(" ", "\u{2581}").map_err(build_err)?)).map_err(build_err)?;
                let dec: Vec<DecoderWrapper> = vec![
                    Replace::new("\u{2581}", " ").map_err(build_err)?.into(),
                    ByteFallback::new().into(),
                    Fuse::new().into(),
                ];
                tk.with_decoder(Some(DecoderSequence::new(dec)));
                (tk, TokenizerKind::SentencePieceBpe)
            }
            other => bail!(
                "GGUF metadata `tokenizer.ggml.model` = {other:?}: unsupported tokenizer (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)"
            ),
        };
        if let Some(types) = &types {
            let byte_level = kind == TokenizerKind::ByteLevelBpe;
            let control: Vec<AddedToken> = original
                .iter()
                .zip(types)
                .filter(|(t, &ty)| {
                    ty == TYPE_CONTROL && (!byte_level || t.chars().all(in_byte_alphabet))
                })
                .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
                .collect();
            inner.add_special_tokens(control).map_err(build_err)?;
            // User-defined tokens are matched whole, as llama.cpp does (runs of spaces are
            // left to the model: their stored spelling is not in the vocabulary).
            let user: Vec<AddedToken> = original
                .iter()
                .zip(tokens.iter())
                .zip(types)
                .filter(|((o, t), &ty)| ty == TYPE_USER_DEFINED && o == t)
                .map(|((o, _), _)| AddedToken::from(o.clone(), false).normalized(false))
                .collect();
            inner.add_tokens(user).map_err(build_err)?;
        }
        let check = |key: &str| -> Result<Option<u32>> {
            match meta_u32(ct, key) {
                Some(i) if (i as usize) < n => Ok(Some(i)),
                Some(i) => {
                    bail!("GGUF metadata `{key}` = {i} is outside the vocabulary of {n} tokens")
                }
                None => Ok(None),
            }
        };
        let bos_id = check("tokenizer.ggml.bos_token_id")?;
        let eos_ids: Vec<u32> = check("tokenizer.ggml.eos_token_id")?.into_iter().collect();
        let pad_id = check("tokenizer.ggml.padding_token_id")?;
        let add_bos = ct
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(TextTokenizer {
            inner,
            kind,
            bos_id,
            eos_ids,
            pad_id,
            add_bos,
        })
    }

    /// Read `tokenizer.json` (+ special tokens from the sidecar written by [`save_hf`],
    /// else from `config.json` / `tokenizer_config.json`).
    ///
    /// [`save_hf`]: TextTokenizer::save_hf
    pub fn from_hf_dir(dir: &Path) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!(
                "{}: missing (a Hugging Face model directory needs tokenizer.json)",
                path.display()
            );
        }
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read the tokenizer: {e}", path.display()))?;
        let side = dir.join(SIDECAR);
        if side.exists() {
            let s: Sidecar = serde_json::from_str(&std::fs::read_to_string(&side)?)
                .with_context(|| format!("{}: bad JSON", side.display()))?;
            return Ok(TextTokenizer {
                inner,
                kind: s.kind,
                bos_id: s.bos_id,
                eos_ids: s.eos_ids,
                pad_id: s.pad_id,
                add_bos: s.add_bos,
            });
        }
        let read = |name: &str| -> Option<serde_json::Value> {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
        };
        let config = read("config.json").unwrap_or_default();
        let tcfg = read("tokenizer_config.json").unwrap_or_default();
        let id_of = |v: &serde_json::Value| -> Option<u32> {
            match v {
                serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
                serde_json::Value::String(s) => inner.token_to_id(s),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .and_then(|s| inner.token_to_id(s)),
                _ => None,
            }
        };
        let bos_id = id_of(&config["bos_token_id"]).or_else(|| id_of(&tcfg["bos_token"]));
        let eos_ids = match &config["eos_token_id"] {
            serde_json::Value::Array(a) => a.iter().filter_map(id_of).collect(),
            v => id_of(v)
                .or_else(|| id_of(&tcfg["eos_token"]))
                .into_iter()
                .collect(),
        };
        let pad_id = id_of(&config["pad_token_id"]).or_else(|| id_of(&tcfg["pad_token"]));
        let add_bos = tcfg["add_bos_token"].as_bool().unwrap_or(false);
        Ok(TextTokenizer {
            inner,
            kind: TokenizerKind::TokenizerJson,
            bos_id,
            eos_ids,
            pad_id,
            add_bos,
        })
    }

    /// Write tokenizer.json, tokenizer_config.json and the sidecar into `dir`.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("serializing the tokenizer: {e}"))?;
        crate::util::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let tcfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos_id),
            "eos_token": name(self.eos_ids.first().copied()),
            "pad_token": name(self.pad_id),
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
        });
        crate::util::write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&tcfg)?.as_bytes(),
        )?;
        let side = Sidecar {
            kind: self.kind,
            bos_id: self.bos_id,
            eos_ids: self.eos_ids.clone(),
            pad_id: self.pad_id,
            add_bos: self.add_bos,
        };
        crate::util::write_atomic(
            &dir.join(SIDECAR),
            serde_json::to_string_pretty(&side)?.as_bytes(),
        )?;
        Ok(())
    }

    /// Token ids of `text`; with `special`, BOS is prepended when the model expects it.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if special && self.add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of a prompt and the token range of the last occurrence of `subject` in it:
    /// the tokens whose characters overlap the subject's.
    pub fn encode_with_span(
        &self,
        text: &str,
        subject: &str,
        special: bool,
    ) -> Result<(Vec<u32>, std::ops::Range<usize>)> {
        let Some(start) = text.rfind(subject) else {
            bail!("the subject {subject:?} does not occur in {text:?}")
        };
        let end = start + subject.len();
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        let shift = usize::from(special && self.add_bos && self.bos_id.is_some());
        let mut ids = Vec::with_capacity(enc.len() + shift);
        if shift == 1 {
            ids.push(self.bos_id.expect("checked"));
        }
        ids.extend_from_slice(enc.get_ids());
        let hits: Vec<usize> = enc
            .get_offsets()
            .iter()
            .enumerate()
            .filter(|(_, &(a, b))| a < end && b > start && b > a)
            .map(|(i, _)| i + shift)
            .collect();
        match (hits.first(), hits.last()) {
            (Some(&a), Some(&b)) => Ok((ids, a..b + 1)),
            _ => bail!("the subject {subject:?} covers no token of {text:?}"),
        }
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("decoding {ids:?}: {e}"))
    }

    /// The vocabulary string of one token.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_follow_vocabulary_order_then_longer_parts() {
        // "ab" comes before "abc"; "abc" splits as (ab, c) and (a, bc): longer left first.
        let v = toks(&["a", "b", "c", "ab", "bc", "abc"]);
        let m = merges_from_vocab_order(&v);
        let want: Vec<(String, String)> = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn sentencepiece_tokenizer_segments_by_merge_priority() {
        let v = toks(&[
            "<unk>", "▁", "h", "e", "l", "o", "▁h", "▁he", "ll", "llo", "▁hello", "el", "lo",
        ]);
        let merges = merges_from_vocab_order(&v);
        let vocab: ahash::AHashMap<String, u32> = v
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let mut tk = Tokenizer::new(bpe);
        tk.with_normalizer(Some(Replace::new(" ", "▁").unwrap()))
            .unwrap();
        let ids = tk.encode(" hello", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![10], "▁hello is one piece");
        let ids = tk.encode(" hel", false).unwrap().get_tokens().to_vec();
        assert_eq!(ids, vec!["▁he", "l"]);
    }
}
