//! Tokenizers of the real models, built from their GGUF metadata, against the ids Hugging Face
//! transformers gives for the same files (tests/fixtures/reference/*/prompts.json): prompts,
//! answer tokens, decoding, the Hugging Face directory round trip, and the build time.

use candle_core::quantized::gguf_file::Content;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use unlearn::model::tokenizer::{TextTokenizer, TokenizerKind};

/// The GGUF metadata of a model alias (fetched into the cache when missing).
fn content(alias: &str) -> Content {
    let path = unlearn::model::source::resolve(alias).unwrap().path;
    let mut f = std::fs::File::open(&path).unwrap();
    Content::read(&mut f).unwrap()
}

fn build(alias: &str) -> (TextTokenizer, Duration) {
    let ct = content(alias);
    let t = Instant::now();
    let tk = TextTokenizer::from_gguf(&ct).unwrap();
    (tk, t.elapsed())
}

fn tokenizer(alias: &str) -> &'static TextTokenizer {
    static GEMMA: OnceLock<(TextTokenizer, Duration)> = OnceLock::new();
    static SMOL: OnceLock<(TextTokenizer, Duration)> = OnceLock::new();
    let cell = match alias {
        "gemma3-270m" => &GEMMA,
        "smollm2-135m" => &SMOL,
        _ => panic!("{alias}"),
    };
    &cell.get_or_init(|| build(alias)).0
}

fn fixture(dir: &str) -> serde_json::Value {
    let p = format!(
        "{}/tests/fixtures/reference/{dir}/prompts.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn prompts_match(alias: &str, dir: &str) {
    let tk = tokenizer(alias);
    let fx = fixture(dir);
    assert_eq!(tk.add_bos, fx["tokenizer_adds_bos"].as_bool().unwrap());
    assert_eq!(tk.bos_id, Some(fx["bos_token_id"].as_u64().unwrap() as u32));
    assert_eq!(
        tk.eos_ids,
        vec![fx["eos_token_id"].as_u64().unwrap() as u32]
    );
    assert_eq!(tk.pad_id, Some(fx["pad_token_id"].as_u64().unwrap() as u32));
    let prompts = fx["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 8);
    for p in prompts {
        let text = p["prompt"].as_str().unwrap();
        let got = tk.encode(text, true).unwrap();
        assert_eq!(got, ids(&p["input_ids"]), "{alias}: ids of {text:?}");
        let toks: Vec<String> = got.iter().map(|&i| tk.id_to_token(i).unwrap()).collect();
        let want: Vec<String> = p["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(toks, want, "{alias}: tokens of {text:?}");
        // The span of the last word is the last token(s).
        let last = text.split_whitespace().last().unwrap();
        let (span_ids, span) = tk.encode_with_span(text, last, true).unwrap();
        assert_eq!(span_ids, got);
        assert_eq!(span.end, got.len(), "{alias}: span of {last:?} in {text:?}");
    }
}

#[test]
fn gemma3_prompt_ids_match_reference() {
    prompts_match("gemma3-270m", "gemma3");
    assert_eq!(
        tokenizer("gemma3-270m").kind,
        TokenizerKind::SentencePieceBpe
    );
}

#[test]
fn smollm2_prompt_ids_match_reference() {
    prompts_match("smollm2-135m", "smollm2");
    assert_eq!(tokenizer("smollm2-135m").kind, TokenizerKind::ByteLevelBpe);
}

/// Every answer is one token; where the reference names its id (as an answer, a prompt token
/// or a top-20 prediction) the id agrees.
fn answers_are_single_tokens(alias: &str, dir: &str, space: char) {
    let tk = tokenizer(alias);
    let fx = fixture(dir);
    let mut known: HashMap<String, u32> = HashMap::new();
    for p in fx["prompts"].as_array().unwrap() {
        known.insert(
            p["answer_token"].as_str().unwrap().into(),
            p["answer_token_id"].as_u64().unwrap() as u32,
        );
        for (t, i) in [("tokens", "input_ids"), ("top20_tokens", "top20_ids")] {
            for (t, i) in p[t].as_array().unwrap().iter().zip(ids(&p[i])) {
                known.insert(t.as_str().unwrap().into(), i);
            }
        }
    }
    let mut checked = 0;
    for a in [
        " Paris",
        " basketball",
        " football",
        " baseball",
        " golf",
        " A",
        " B",
        " C",
        " D",
        " Japan",
        " Apple",
        " Portuguese",
        " Microsoft",
        " French",
    ] {
        let got = tk.encode(a, false).unwrap();
        assert_eq!(got.len(), 1, "{alias}: {a:?} is {got:?}");
        let spelled = a.replacen(' ', &space.to_string(), 1);
        assert_eq!(tk.id_to_token(got[0]).unwrap(), spelled, "{alias}: {a:?}");
        if let Some(&want) = known.get(&spelled) {
            assert_eq!(got[0], want, "{alias}: id of {a:?}");
            checked += 1;
        }
    }
    assert!(
        checked >= 7,
        "{alias}: only {checked} answers had a reference id"
    );
}

#[test]
fn gemma3_answers_are_single_reference_tokens() {
    answers_are_single_tokens("gemma3-270m", "gemma3", '▁');
}

#[test]
fn smollm2_answers_are_single_reference_tokens() {
    answers_are_single_tokens("smollm2-135m", "smollm2", 'Ġ');
}

const TEXTS: [&str; 9] = [
    "The capital of France is Paris.",
    "  two leading spaces, three   inside, trailing  ",
    "line one\nline two\n\n\nafter blank lines\r\n",
    "tabs\tand\t\ttabs",
    "Ünïcödé: naïve café, Straße, 東京都, Ελληνικά, русский",
    "emoji 🙂👍🏽 and 🇫🇷 flags",
    "code: fn main() { println!(\"{}\", 1 + 2); }",
    "<b>bold</b> and </footer> tags",
    "",
];

fn decode_inverts_encode(alias: &str) {
    let tk = tokenizer(alias);
    for text in TEXTS {
        let ids = tk.encode(text, false).unwrap();
        assert_eq!(tk.decode(&ids).unwrap(), text, "{alias}: {ids:?}");
    }
}

#[test]
fn gemma3_decode_inverts_encode() {
    decode_inverts_encode("gemma3-270m");
}

#[test]
fn smollm2_decode_inverts_encode() {
    decode_inverts_encode("smollm2-135m");
}

#[test]
fn control_tokens_are_not_split() {
    let g = tokenizer("gemma3-270m");
    let ids = g
        .encode("<start_of_turn>user\nHi<end_of_turn>", false)
        .unwrap();
    assert_eq!(ids[0], 105);
    assert_eq!(*ids.last().unwrap(), 106);
    let s = tokenizer("smollm2-135m");
    let ids = s.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
}

fn hf_round_trip(alias: &str) {
    let tk = tokenizer(alias);
    let dir = tempfile::tempdir().unwrap();
    tk.save_hf(dir.path()).unwrap();
    let back = TextTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(back.kind, tk.kind);
    assert_eq!(
        (back.bos_id, &back.eos_ids, back.pad_id, back.add_bos),
        (tk.bos_id, &tk.eos_ids, tk.pad_id, tk.add_bos)
    );
    assert_eq!(back.vocab_size(), tk.vocab_size());
    let prompts = fixture(if alias.starts_with("gemma") {
        "gemma3"
    } else {
        "smollm2"
    });
    let prompts: Vec<String> = prompts["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prompt"].as_str().unwrap().to_string())
        .collect();
    for text in prompts.iter().map(String::as_str).chain(TEXTS) {
        assert_eq!(
            back.encode(text, true).unwrap(),
            tk.encode(text, true).unwrap(),
            "{alias}: {text:?}"
        );
    }
}

#[test]
fn gemma3_save_hf_round_trip() {
    hf_round_trip("gemma3-270m");
}

#[test]
fn smollm2_save_hf_round_trip() {
    hf_round_trip("smollm2-135m");
}

/// Rebuilding Gemma's 262k-token tokenizer (merges from the vocabulary) must stay cheap.
#[test]
fn gemma3_tokenizer_builds_fast() {
    let ct = content("gemma3-270m");
    let mut best = Duration::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        let tk = TextTokenizer::from_gguf(&ct).unwrap();
        best = best.min(t.elapsed());
        assert_eq!(tk.vocab_size(), 262_144);
    }
    eprintln!("gemma3 tokenizer from GGUF metadata: {best:?}");
    assert!(best < Duration::from_secs(10), "{best:?}");
}
