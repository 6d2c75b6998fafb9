//! Tokenizers: built from GGUF metadata (byte-level BPE with merges; SentencePiece with merges
//! rebuilt from scores) or read from `tokenizer.json`; wrapped with the model's special tokens.

use anyhow::Result;

/// Kind of tokenizer, for `unlearn inspect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub inner: tokenizers::Tokenizer,
    pub kind: TokenizerKind,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    /// Whether the model expects BOS at the start of every prompt (Gemma: yes; SmolLM2: no).
    pub add_bos: bool,
}

impl TextTokenizer {
    /// Token ids of `text`; with `special`, BOS is prepended when the model expects it.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if special && self.add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow::anyhow!("decoding {ids:?}: {e}"))
    }

    /// The vocabulary string of one token.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
