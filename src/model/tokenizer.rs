//! Tokenizers, built from GGUF metadata or read from a Hugging Face `tokenizer.json`, and wrapped
//! with the model's special tokens (BOS, EOS, pad, whether BOS is prepended).
//!
//! From GGUF (`tokenizer.ggml.*`), following what Hugging Face transformers builds from the same
//! file, so token ids agree with the PyTorch reference:
//!
//! * `gpt2` (SmolLM2, Llama 3, Qwen2): byte-level BPE with the file's merges; the split regex
//!   comes from `tokenizer.ggml.pre` (GPT-2's unless a known other one is named); control tokens
//!   (type 3) are special added tokens.
//! * `llama` (Gemma, Llama 2): SentencePiece BPE with byte fallback. A file without merges
//!   (Gemma) gets them rebuilt with the rule of HF's SentencePiece converter: every split of a
//!   piece into two pieces of the vocabulary is a merge; the splits of one piece are ordered by
//!   the scores of their parts, and the pieces by their rank. The rank is the score, except for
//!   Gemma, whose vocabulary is already in merge order and whose scores are ranks with `-1000`
//!   placeholders punched through them (`▁high`, every whitespace run): there the rank is the
//!   position. Gemma replaces spaces with `▁` (no dummy prefix, no pre-tokenizer); Llama 2 uses a
//!   `Metaspace` pre-tokenizer. Control tokens (type 3) are special added tokens; user-defined
//!   tokens (type 4: `\n\n`, `\t\t`, `<b>`…) are matched whole, as SentencePiece and llama.cpp
//!   do, except the runs of spaces (stored with spaces, spelled with `▁` in the vocabulary).
//!
//! [`TextTokenizer::save_hf`] writes `tokenizer.json`, `tokenizer_config.json` and a sidecar
//! (`unlearn_tokenizer.json`) holding the special tokens, so that [`TextTokenizer::from_hf_dir`]
//! gives back exactly the same tokenizer.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

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
    /// The model's chat template (Jinja source), when it has one (see [`crate::model::chat`]).
    pub chat_template: Option<String>,
}

/// What `save_hf` writes beside tokenizer.json so that a round trip is exact.
#[derive(Serialize, Deserialize)]
struct Sidecar {
    kind: TokenizerKind,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    #[serde(default)]
    chat_template: Option<String>,
}

const SIDECAR: &str = "unlearn_tokenizer.json";

/// SentencePiece token types as GGUF stores them.
const TYPE_CONTROL: u32 = 3;
const TYPE_USER_DEFINED: u32 = 4;

/// SentencePiece's word-boundary mark.
const SPACE_MARK: char = '\u{2581}';

/// Split regexes of byte-level tokenizers whose `tokenizer.ggml.pre` differs from GPT-2's
/// (GPT-2's is the one `ByteLevel` applies by itself). Same patterns as llama.cpp and HF use.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" | "pixtral" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

fn meta<'a>(ct: &'a Content, key: &str) -> Result<&'a Value> {
    ct.metadata.get(key).with_context(|| {
        format!("GGUF metadata key `{key}` is missing: cannot build the tokenizer")
    })
}

fn meta_string(ct: &Content, key: &str) -> Result<String> {
    meta(ct, key)?
        .to_string()
        .cloned()
        .map_err(|_| anyhow::anyhow!("GGUF metadata `{key}` is not a string"))
}

fn meta_u32(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| {
        v.to_u32()
            .ok()
            .or_else(|| v.to_i32().ok().map(|x| x as u32))
            .or_else(|| v.to_u64().ok().map(|x| x as u32))
    })
}

fn meta_bool(ct: &Content, key: &str) -> Option<bool> {
    ct.metadata.get(key).and_then(|v| v.to_bool().ok())
}

fn array<'a>(ct: &'a Content, key: &str) -> Result<&'a Vec<Value>> {
    meta(ct, key)?
        .to_vec()
        .map_err(|_| anyhow::anyhow!("GGUF metadata `{key}` is not an array"))
}

fn string_array(ct: &Content, key: &str) -> Result<Vec<String>> {
    array(ct, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.to_string()
                .cloned()
                .map_err(|_| anyhow::anyhow!("GGUF metadata `{key}`[{i}] is not a string"))
        })
        .collect()
}

fn check_len(key: &str, got: usize, n: usize) -> Result<()> {
    if got != n {
        bail!("GGUF metadata `{key}` has {got} entries for {n} tokens (`tokenizer.ggml.tokens`)");
    }
    Ok(())
}

fn u32_array(ct: &Content, key: &str, n: usize) -> Result<Option<Vec<u32>>> {
    if !ct.metadata.contains_key(key) {
        return Ok(None);
    }
    let arr = array(ct, key)?;
    check_len(key, arr.len(), n)?;
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

fn f32_array(ct: &Content, key: &str, n: usize) -> Result<Vec<f32>> {
    let arr = array(ct, key)?;
    check_len(key, arr.len(), n)?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.to_f32()
                .or_else(|_| x.to_f64().map(|v| v as f32))
                .map_err(|_| anyhow::anyhow!("GGUF metadata `{key}`[{i}] is not a number"))
        })
        .collect()
}

/// The file's merges as pairs, each checked against the vocabulary (both parts and their
/// concatenation must be tokens).
fn file_merges(
    ct: &Content,
    vocab: &ahash::AHashMap<String, u32>,
) -> Result<Vec<(String, String)>> {
    const KEY: &str = "tokenizer.ggml.merges";
    let mut out = Vec::new();
    for (i, m) in string_array(ct, KEY)?.into_iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            bail!("GGUF metadata `{KEY}`[{i}] = {m:?} is not two tokens separated by a space");
        };
        for part in [a, b, &format!("{a}{b}")] {
            if !vocab.contains_key(part) {
                bail!(
                    "GGUF metadata `{KEY}`[{i}] = {m:?}: {part:?} is not in the vocabulary \
                     (`tokenizer.ggml.tokens`)"
                );
            }
        }
        out.push((a.to_string(), b.to_string()));
    }
    Ok(out)
}

/// How the merges implied by a SentencePiece vocabulary are ranked (see
/// [`merges_from_scores`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeRank {
    /// By the score of the merged piece, higher first (scores that are log-probabilities:
    /// Llama 2).
    Score,
    /// By the position of the merged piece in the vocabulary, earlier first (Gemma: the
    /// vocabulary is in merge order and the scores are ranks with placeholders).
    Position,
}

/// Merges implied by a SentencePiece vocabulary with scores (the rule of Hugging Face's
/// converter): every split of a piece into two pieces that are both in the vocabulary is a
/// merge. The splits of one piece are ordered by the scores of (left, right) part, higher
/// first, ties in order of the cut; then the merges are ordered by the rank of the piece they
/// make (see [`MergeRank`]), ties in vocabulary order. A string listed twice counts once, at its
/// first position, with the score and rank of its last entry (as a dict built in order gives).
pub fn merges_from_scores(
    tokens: &[String],
    scores: &[f32],
    rank: MergeRank,
) -> Result<Vec<(String, String)>> {
    check_len("tokenizer.ggml.scores", scores.len(), tokens.len())?;
    let mut last: ahash::AHashMap<&str, usize> = ahash::AHashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        last.insert(t.as_str(), i);
    }
    let desc = |a: f32, b: f32| b.total_cmp(&a);
    // (piece, left, right) as positions of their last entries.
    let mut merges: Vec<(usize, usize, usize)> = Vec::with_capacity(tokens.len() * 2);
    let mut local: Vec<(usize, usize)> = Vec::new();
    let mut seen: ahash::AHashSet<&str> = ahash::AHashSet::with_capacity(tokens.len());
    for t in tokens {
        if !seen.insert(t.as_str()) {
            continue;
        }
        local.clear();
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if let (Some(&li), Some(&ri)) = (last.get(l), last.get(r)) {
                local.push((li, ri));
            }
        }
        // Stable: equal scores keep the order of the cuts.
        local.sort_by(|a, b| desc(scores[a.0], scores[b.0]).then(desc(scores[a.1], scores[b.1])));
        let p = last[t.as_str()];
        merges.extend(local.iter().map(|&(l, r)| (p, l, r)));
    }
    // Stable: merges of equal rank keep vocabulary order.
    match rank {
        MergeRank::Position => merges.sort_by_key(|m| m.0),
        MergeRank::Score => merges.sort_by(|a, b| desc(scores[a.0], scores[b.0])),
    }
    Ok(merges
        .into_iter()
        .map(|(_, l, r)| (tokens[l].clone(), tokens[r].clone()))
        .collect())
}

/// Gemma's giveaway (as HF detects it): a token that is a run of spaces written with spaces.
fn is_gemma_vocabulary(tokens: &[String]) -> bool {
    tokens.iter().any(|t| is_space_run(t))
}

fn is_space_run(t: &str) -> bool {
    t.contains(' ') && t.trim().is_empty()
}

/// GPT-2's byte-level alphabet: the character that spells each byte.
fn byte_char(b: u8) -> char {
    match b {
        b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff => b as char,
        _ => {
            // The other 68 bytes, in order, get 256, 257, …
            let rank = (0..b)
                .filter(|&x| !matches!(x, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff))
                .count() as u32;
            char::from_u32(256 + rank).expect("valid char")
        }
    }
}

/// Whether `c` is one of the 256 characters GPT-2's byte-level alphabet spells bytes with.
fn in_byte_alphabet(c: char) -> bool {
    matches!(c, '!'..='~' | '\u{a1}'..='\u{ac}' | '\u{ae}'..='\u{ff}')
        || (256..324).contains(&(c as u32))
}

/// A byte-level vocabulary entry as the merges spell it: a token written raw (some files hold
/// `\u{fffd}` where their merges spell its bytes) is respelled byte by byte.
fn byte_level_spelling(t: &str) -> String {
    if t.chars().all(in_byte_alphabet) {
        t.to_string()
    } else {
        t.bytes().map(byte_char).collect()
    }
}

fn build_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("building the tokenizer: {e}")
}

/// Control tokens (type 3) as special added tokens, matched whole in raw text.
fn control_tokens<'a>(
    tokens: &'a [String],
    types: &'a [u32],
    keep: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = AddedToken> + 'a {
    tokens
        .iter()
        .zip(types)
        .filter(move |(t, &ty)| ty == TYPE_CONTROL && keep(t))
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
}

fn byte_level_bpe(ct: &Content, tokens: &[String], types: Option<&[u32]>) -> Result<Tokenizer> {
    let vocab: ahash::AHashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (byte_level_spelling(t), i as u32))
        .collect();
    let merges = file_merges(ct, &vocab)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(build_err)?;
    let mut tk = Tokenizer::new(bpe);
    let pre = ct
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .and_then(|p| pre_split_regex(p));
    let byte_level =
        |use_regex| tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, use_regex);
    match pre {
        Some(re) => {
            let split = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(build_err)?;
            tk.with_pre_tokenizer(Some(PreSequence::new(vec![
                split.into(),
                byte_level(false).into(),
            ])));
        }
        None => {
            tk.with_pre_tokenizer(Some(byte_level(true)));
        }
    }
    tk.with_decoder(Some(ByteLevel::new(true, true, true)));
    if let Some(types) = types {
        // A control token written raw is a byte sequence mislabelled, not a marker: leave it to
        // the merges.
        let control: Vec<AddedToken> =
            control_tokens(tokens, types, |t| t.chars().all(in_byte_alphabet)).collect();
        tk.add_special_tokens(control).map_err(build_err)?;
    }
    Ok(tk)
}

fn sentencepiece_bpe(
    ct: &Content,
    original: &[String],
    types: Option<&[u32]>,
) -> Result<Tokenizer> {
    let n = original.len();
    let gemma = is_gemma_vocabulary(original);
    // Runs of spaces are stored as spaces; the vocabulary and its merges spell them with ▁.
    let tokens: Vec<String> = original
        .iter()
        .map(|t| {
            if is_space_run(t) {
                SPACE_MARK.to_string().repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // A string listed twice gets its last id (as transformers builds it).
    let vocab: ahash::AHashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = if ct.metadata.contains_key("tokenizer.ggml.merges") {
        file_merges(ct, &vocab)?
    } else {
        if !ct.metadata.contains_key("tokenizer.ggml.scores") {
            bail!(
                "GGUF metadata key `tokenizer.ggml.scores` is missing: a SentencePiece tokenizer \
                 without `tokenizer.ggml.merges` needs the scores to rebuild its merges"
            );
        }
        let scores = f32_array(ct, "tokenizer.ggml.scores", n)?;
        let rank = if gemma {
            MergeRank::Position
        } else {
            MergeRank::Score
        };
        merges_from_scores(&tokens, &scores, rank)?
    };
    let unk = match meta_u32(ct, "tokenizer.ggml.unknown_token_id") {
        Some(i) => Some(tokens.get(i as usize).cloned().with_context(|| {
            format!("GGUF metadata `tokenizer.ggml.unknown_token_id` = {i} is outside the vocabulary of {n} tokens")
        })?),
        None => None,
    };
    let mut b = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = &unk {
        b = b.unk_token(u.clone());
    }
    let mut tk = Tokenizer::new(b.build().map_err(build_err)?);
    let add_prefix_space = meta_bool(ct, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let mark = SPACE_MARK.to_string();
    let mut dec: Vec<DecoderWrapper> = Vec::new();
    if gemma {
        // Spaces become ▁ and nothing is prepended, even when the file says so (as HF does).
        tk.with_normalizer(Some(Replace::new(" ", mark.as_str()).map_err(build_err)?))
            .map_err(build_err)?;
        dec.push(Replace::new(mark.as_str(), " ").map_err(build_err)?.into());
        dec.push(ByteFallback::new().into());
        dec.push(Fuse::new().into());
    } else {
        let scheme = if add_prefix_space {
            PrependScheme::First
        } else {
            PrependScheme::Never
        };
        tk.with_pre_tokenizer(Some(Metaspace::new(SPACE_MARK, scheme, false)));
        dec.push(ByteFallback::new().into());
        dec.push(Fuse::new().into());
        dec.push(Replace::new(mark.as_str(), " ").map_err(build_err)?.into());
    }
    if add_prefix_space {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    tk.with_decoder(Some(DecoderSequence::new(dec)));
    match types {
        Some(types) => {
            let control: Vec<AddedToken> = control_tokens(original, types, |_| true).collect();
            tk.add_special_tokens(control).map_err(build_err)?;
            // User-defined tokens are matched whole, as SentencePiece does; runs of spaces are
            // left to the merges (their stored spelling is not the vocabulary's).
            let user: Vec<AddedToken> = original
                .iter()
                .zip(types)
                .filter(|(t, &ty)| ty == TYPE_USER_DEFINED && !is_space_run(t))
                .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
                .collect();
            tk.add_tokens(user).map_err(build_err)?;
        }
        None => {
            // No types: at least unk, bos and eos are markers.
            let named: Vec<AddedToken> = [
                unk,
                meta_u32(ct, "tokenizer.ggml.bos_token_id")
                    .and_then(|i| tokens.get(i as usize).cloned()),
                meta_u32(ct, "tokenizer.ggml.eos_token_id")
                    .and_then(|i| tokens.get(i as usize).cloned()),
            ]
            .into_iter()
            .flatten()
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
            tk.add_special_tokens(named).map_err(build_err)?;
        }
    }
    Ok(tk)
}

/// The kind of a tokenizer read from tokenizer.json, judged from its parts.
fn kind_of(tk: &Tokenizer) -> TokenizerKind {
    let byte_level = |p: &PreTokenizerWrapper| match p {
        PreTokenizerWrapper::ByteLevel(_) => true,
        PreTokenizerWrapper::Sequence(s) => s
            .as_ref()
            .iter()
            .any(|p| matches!(p, PreTokenizerWrapper::ByteLevel(_))),
        _ => false,
    };
    match tk.get_model() {
        ModelWrapper::BPE(_) if tk.get_pre_tokenizer().is_some_and(byte_level) => {
            TokenizerKind::ByteLevelBpe
        }
        ModelWrapper::BPE(b) if b.byte_fallback => TokenizerKind::SentencePieceBpe,
        _ => TokenizerKind::TokenizerJson,
    }
}

impl TextTokenizer {
    /// Build from GGUF metadata (`tokenizer.ggml.*`). Errors name the metadata key at fault.
    pub fn from_gguf(ct: &Content) -> Result<TextTokenizer> {
        let model = meta_string(ct, "tokenizer.ggml.model")?;
        let tokens = string_array(ct, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 {
            bail!("GGUF metadata `tokenizer.ggml.tokens` is empty");
        }
        let types = u32_array(ct, "tokenizer.ggml.token_type", n)?;
        let (inner, kind, default_add_bos) = match model.as_str() {
            "gpt2" => (
                byte_level_bpe(ct, &tokens, types.as_deref())?,
                TokenizerKind::ByteLevelBpe,
                false,
            ),
            "llama" => (
                sentencepiece_bpe(ct, &tokens, types.as_deref())?,
                TokenizerKind::SentencePieceBpe,
                true,
            ),
            other => bail!(
                "GGUF metadata `tokenizer.ggml.model` = {other:?}: unsupported tokenizer \
                 (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)"
            ),
        };
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
        let add_bos = meta_bool(ct, "tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos);
        let chat_template = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        Ok(TextTokenizer {
            inner,
            kind,
            bos_id,
            eos_ids,
            pad_id,
            add_bos,
            chat_template,
        })
    }

    /// Read `tokenizer.json`, with the special tokens from the sidecar written by [`save_hf`]
    /// where present, else from `config.json`, `tokenizer_config.json` and
    /// `special_tokens_map.json` (in that order of preference).
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
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        super::tokenizer_json::check(&text).with_context(|| format!("{}", path.display()))?;
        let inner: Tokenizer = text
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: cannot read the tokenizer: {e}", path.display()))?;
        let side = dir.join(SIDECAR);
        if side.exists() {
            let s: Sidecar = serde_json::from_str(
                &std::fs::read_to_string(&side)
                    .with_context(|| format!("reading {}", side.display()))?,
            )
            .with_context(|| format!("{}: bad JSON", side.display()))?;
            let n = inner.get_vocab_size(true) as u32;
            for id in s.bos_id.iter().chain(&s.eos_ids).chain(&s.pad_id) {
                if *id >= n {
                    bail!(
                        "{}: token id {id} is outside the vocabulary of {n} tokens",
                        side.display()
                    );
                }
            }
            return Ok(TextTokenizer {
                inner,
                kind: s.kind,
                bos_id: s.bos_id,
                eos_ids: s.eos_ids,
                pad_id: s.pad_id,
                add_bos: s.add_bos,
                chat_template: s.chat_template,
            });
        }
        let read = |name: &str| -> Result<serde_json::Value> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(serde_json::Value::Null);
            }
            serde_json::from_str(
                &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{}: bad JSON", p.display()))
        };
        let config = read("config.json")?;
        let tcfg = read("tokenizer_config.json")?;
        let smap = read("special_tokens_map.json")?;
        let id_of = |v: &serde_json::Value| -> Option<u32> {
            match v {
                serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
                serde_json::Value::String(s) => inner.token_to_id(s),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .and_then(|s| inner.token_to_id(s)),
                serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
                _ => None,
            }
        };
        let special = |id_key: &str, name: &str| -> Option<u32> {
            id_of(&config[id_key])
                .or_else(|| id_of(&tcfg[name]))
                .or_else(|| id_of(&smap[name]))
        };
        let bos_id = special("bos_token_id", "bos_token");
        let eos_ids = match &config["eos_token_id"] {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|x| x as u32))
                .collect(),
            _ => special("eos_token_id", "eos_token").into_iter().collect(),
        };
        let pad_id = special("pad_token_id", "pad_token");
        // Stated in tokenizer_config.json, else whatever the post-processor does.
        let add_bos = match tcfg["add_bos_token"].as_bool() {
            Some(b) => b,
            None => match (bos_id, inner.encode("a", true)) {
                (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
                _ => false,
            },
        };
        let kind = kind_of(&inner);
        let chat_template = tcfg["chat_template"].as_str().map(str::to_string);
        Ok(TextTokenizer {
            inner,
            kind,
            bos_id,
            eos_ids,
            pad_id,
            add_bos,
            chat_template,
        })
    }

    /// Write tokenizer.json, tokenizer_config.json and the sidecar into `dir` (each atomically).
    /// When the model expects BOS, the tokenizer.json gets a post-processor that prepends it, so
    /// that transformers' `PreTrainedTokenizerFast` adds it too.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let mut tk = self.inner.clone();
        if let (true, Some(b)) = (self.add_bos, self.bos_id) {
            if let Some(name) = self.inner.id_to_token(b) {
                let tp = TemplateProcessing::builder()
                    .try_single(format!("{name} $A"))
                    .map_err(build_err)?
                    .try_pair(format!("{name} $A {name} $B:1"))
                    .map_err(build_err)?
                    .special_tokens(vec![(name.clone(), b)])
                    .build()
                    .map_err(build_err)?;
                tk.with_post_processor(Some(tp));
            }
        }
        let json = tk
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
            "chat_template": self.chat_template,
        });
        crate::util::write_json(&dir.join("tokenizer_config.json"), &tcfg)?;
        let side = Sidecar {
            kind: self.kind,
            bos_id: self.bos_id,
            eos_ids: self.eos_ids.clone(),
            pad_id: self.pad_id,
            add_bos: self.add_bos,
            chat_template: self.chat_template.clone(),
        };
        crate::util::write_json(&dir.join(SIDECAR), &side)?;
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
    use candle_core::quantized::gguf_file::VersionedMagic;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn content(kv: Vec<(&str, Value)>) -> Content {
        Content {
            magic: VersionedMagic::GgufV3,
            metadata: kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        }
    }

    fn str_arr(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
    }

    #[test]
    fn merges_from_scores_rank_by_score_or_position() {
        // "bc" scores higher than "ab" although it comes later; "abc" splits two ways and the
        // split whose left part scores higher ("a" > "ab") comes first.
        let t = strs(&["<unk>", "a", "b", "c", "ab", "bc", "abc"]);
        let s = [0.0, -1.0, -2.0, -3.0, -4.0, -3.5, -6.0];
        let by_score = merges_from_scores(&t, &s, MergeRank::Score).unwrap();
        assert_eq!(
            by_score,
            pairs(&[("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")])
        );
        let by_pos = merges_from_scores(&t, &s, MergeRank::Position).unwrap();
        assert_eq!(
            by_pos,
            pairs(&[("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")])
        );
        let e = merges_from_scores(&t, &s[..3], MergeRank::Score).unwrap_err();
        assert!(e.to_string().contains("tokenizer.ggml.scores"), "{e}");
    }

    #[test]
    fn merges_from_scores_equal_scores_keep_vocabulary_and_cut_order() {
        // Multi-byte characters are cut at character boundaries only.
        let t = strs(&["é", "x", "éx", "xé", "éxé"]);
        let s = [0.0, 0.0, -1.0, -1.0, -2.0];
        let m = merges_from_scores(&t, &s, MergeRank::Score).unwrap();
        assert_eq!(
            m,
            pairs(&[("é", "x"), ("x", "é"), ("é", "xé"), ("éx", "é")])
        );
    }

    /// A 17-token Gemma-style vocabulary: control tokens, a run of spaces stored with spaces,
    /// two byte tokens, then normal pieces whose scores are minus their position.
    fn tiny_gemma() -> Content {
        let tokens = [
            "<pad>", "<eos>", "<bos>", "<unk>", "  ", "<0xC3>", "<0xA9>", "▁", "h", "e", "l", "o",
            "ll", "▁h", "he", "llo", "▁he",
        ];
        let types: Vec<Value> = [3, 3, 3, 2, 4, 6, 6, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
            .iter()
            .map(|&x| Value::I32(x))
            .collect();
        let scores: Vec<Value> = (0..tokens.len())
            .map(|i| match i {
                0..=4 => Value::F32(-1000.0),
                5 | 6 => Value::F32(0.0),
                _ => Value::F32(-(i as f32)),
            })
            .collect();
        content(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", str_arr(&tokens)),
            ("tokenizer.ggml.scores", Value::Array(scores)),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.bos_token_id", Value::U32(2)),
            ("tokenizer.ggml.eos_token_id", Value::U32(1)),
            ("tokenizer.ggml.padding_token_id", Value::U32(0)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(3)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ])
    }

    #[test]
    fn sentencepiece_from_scores_segments_by_hand() {
        let tk = TextTokenizer::from_gguf(&tiny_gemma()).unwrap();
        assert_eq!(tk.kind, TokenizerKind::SentencePieceBpe);
        assert_eq!(
            (tk.bos_id, tk.eos_ids.clone(), tk.pad_id, tk.add_bos),
            (Some(2), vec![1], Some(0), true)
        );
        // ▁ h e l l o: (l,l), then (▁,h), then (ll,o), then (▁h,e) -> ▁he llo.
        assert_eq!(tk.encode(" hello", false).unwrap(), vec![16, 15]);
        assert_eq!(tk.encode(" hello", true).unwrap(), vec![2, 16, 15]);
        // No dummy prefix.
        assert_eq!(tk.encode("hello", false).unwrap(), vec![14, 15]);
        // The run of spaces is a vocabulary piece (spelled ▁▁, merged first by position).
        assert_eq!(tk.encode("he  he", false).unwrap(), vec![14, 4, 14]);
        // Byte fallback for a character outside the vocabulary; control tokens are not split.
        assert_eq!(tk.encode("é<eos>", false).unwrap(), vec![5, 6, 1]);
        for text in [" hello", "hello  hello", "é he", "   "] {
            let ids = tk.encode(text, false).unwrap();
            assert_eq!(tk.decode(&ids).unwrap(), text, "{ids:?}");
        }
    }

    fn tiny_gpt2(merges: &[&str]) -> Content {
        let tokens = [
            "<|endoftext|>",
            "<|im_start|>",
            "h",
            "e",
            "l",
            "o",
            "Ġ",
            "he",
            "ll",
            "llo",
            "Ġhe",
        ];
        let types: Vec<Value> = (0..tokens.len())
            .map(|i| Value::I32(if i < 2 { 3 } else { 1 }))
            .collect();
        content(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("smollm".into())),
            ("tokenizer.ggml.tokens", str_arr(&tokens)),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.merges", str_arr(merges)),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ])
    }

    #[test]
    fn byte_level_bpe_uses_file_merges_and_special_tokens() {
        let tk = TextTokenizer::from_gguf(&tiny_gpt2(&["h e", "l l", "ll o", "Ġ he"])).unwrap();
        assert_eq!(tk.kind, TokenizerKind::ByteLevelBpe);
        assert!(!tk.add_bos);
        assert_eq!(tk.encode(" hello", true).unwrap(), vec![10, 9]);
        assert_eq!(
            tk.encode("<|im_start|>hello", false).unwrap(),
            vec![1, 7, 9]
        );
        assert_eq!(tk.decode(&[1, 10, 9]).unwrap(), "<|im_start|> hello");
    }

    #[test]
    fn errors_name_the_metadata_key() {
        let err = |ct: Content| TextTokenizer::from_gguf(&ct).err().unwrap().to_string();
        let mut ct = tiny_gemma();
        ct.metadata.remove("tokenizer.ggml.tokens");
        assert!(err(ct).contains("`tokenizer.ggml.tokens`"));
        let mut ct = tiny_gemma();
        ct.metadata
            .insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
        let e = err(ct);
        assert!(
            e.contains("`tokenizer.ggml.model`") && e.contains("bert"),
            "{e}"
        );
        let mut ct = tiny_gemma();
        ct.metadata.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(vec![Value::F32(0.0)]),
        );
        let e = err(ct);
        assert!(
            e.contains("`tokenizer.ggml.scores`") && e.contains("1 entries"),
            "{e}"
        );
        let mut ct = tiny_gemma();
        ct.metadata.remove("tokenizer.ggml.scores");
        assert!(err(ct).contains("`tokenizer.ggml.scores` is missing"));
        let mut ct = tiny_gemma();
        ct.metadata
            .insert("tokenizer.ggml.bos_token_id".into(), Value::U32(99));
        assert!(err(ct).contains("`tokenizer.ggml.bos_token_id` = 99"));
        let e = err(tiny_gpt2(&["h e", "l x"]));
        assert!(
            e.contains("`tokenizer.ggml.merges`[1]") && e.contains("\"x\""),
            "{e}"
        );
        let e = err(tiny_gpt2(&["he"]));
        assert!(e.contains("`tokenizer.ggml.merges`[0]"), "{e}");
        let mut ct = tiny_gpt2(&["h e"]);
        ct.metadata.remove("tokenizer.ggml.merges");
        assert!(err(ct).contains("`tokenizer.ggml.merges` is missing"));
    }

    #[test]
    fn save_hf_round_trip_and_plain_tokenizer_json() {
        let mut tk = TextTokenizer::from_gguf(&tiny_gemma()).unwrap();
        tk.chat_template = Some("{{ '<start_of_turn>' }}".into());
        let dir = tempfile::tempdir().unwrap();
        tk.save_hf(dir.path()).unwrap();
        let back = TextTokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(back.chat_template, tk.chat_template);
        assert_eq!(
            (
                back.kind,
                back.bos_id,
                back.eos_ids.clone(),
                back.pad_id,
                back.add_bos
            ),
            (
                tk.kind,
                tk.bos_id,
                tk.eos_ids.clone(),
                tk.pad_id,
                tk.add_bos
            )
        );
        for text in [" hello", "he  he", "é<eos>", "<bos>hello"] {
            assert_eq!(
                back.encode(text, true).unwrap(),
                tk.encode(text, true).unwrap()
            );
        }
        // Without the sidecar the kind, BOS and add_bos are read off the files.
        std::fs::remove_file(dir.path().join(SIDECAR)).unwrap();
        std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
        let plain = TextTokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(plain.kind, TokenizerKind::SentencePieceBpe);
        assert!(!plain.add_bos, "no bos id known without the configs");
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"bos_token": {"content": "<bos>"}, "eos_token": "<eos>", "pad_token": "<pad>"}"#,
        )
        .unwrap();
        let plain = TextTokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(
            (
                plain.bos_id,
                plain.eos_ids.clone(),
                plain.pad_id,
                plain.add_bos
            ),
            (Some(2), vec![1], Some(0), true)
        );
        assert_eq!(plain.encode(" hello", true).unwrap(), vec![2, 16, 15]);
    }
}
