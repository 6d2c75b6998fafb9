//! Hostile GGUF headers found by the fuzzer or named as threats, each read under the allocation
//! bound: a clean error naming the fault, no panic, no allocation the file does not justify.

use crate::gguf_gen::{valid, RawGguf};
use crate::harness::bounded;
use candle_core::quantized::gguf_file::Value;
use std::io::Cursor;
use unlearn::model::gguf;

/// The error of reading `bytes` as GGUF (header, then config), which must fail.
fn gguf_error(bytes: &[u8]) -> String {
    bounded(bytes.len(), || {
        let ct = gguf::read_content_from(&mut Cursor::new(bytes), bytes.len() as u64, "bad.gguf")?;
        gguf::config_from_gguf(&ct, std::path::Path::new("bad.gguf")).map(|_| ())
    })
    .map(|_| ())
    .expect_err("a hostile GGUF must be refused")
    .to_string()
}

fn with_embedding_dims(dims: Vec<u64>) -> RawGguf {
    let mut g = valid("llama", "llama");
    g.tensors[0].dims = dims;
    g
}

#[test]
fn valid_headers_of_every_version_are_read() {
    for version in 1..=3 {
        let mut g = valid("llama", "gpt2");
        g.version = version;
        let b = g.bytes();
        let ct = gguf::read_content_from(&mut Cursor::new(&b), b.len() as u64, "ok.gguf")
            .unwrap_or_else(|e| panic!("version {version}: {e:#}"));
        assert_eq!(ct.tensor_infos["token_embd.weight"].shape.dims(), [10, 4]);
    }
}

#[test]
fn a_tensor_claiming_2_pow_60_elements_is_refused() {
    let e = gguf_error(&with_embedding_dims(vec![1 << 30, 1 << 30]).bytes());
    assert!(
        e.contains("bad.gguf")
            && e.contains("token_embd.weight")
            && e.contains("1152921504606846976 elements")
            && e.contains("ends at byte"),
        "{e}"
    );
}

#[test]
fn a_shape_whose_element_count_overflows_is_refused() {
    let e = gguf_error(&with_embedding_dims(vec![1 << 32, 1 << 32, 1 << 32]).bytes());
    assert!(
        e.contains("token_embd.weight") && e.contains("overflows"),
        "{e}"
    );
}

#[test]
fn a_metadata_array_of_2_pow_40_entries_is_refused() {
    let mut g = valid("llama", "llama");
    g.meta
        .push(("huge".into(), Value::Array(vec![Value::U8(7); 3])));
    let mut b = g.bytes();
    // The array is written as: type u8 (0), length 3 (u64), the three bytes.
    let mut pattern = 0u32.to_le_bytes().to_vec();
    pattern.extend(3u64.to_le_bytes());
    pattern.extend([7, 7, 7]);
    let at = b
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("the array is in the file")
        + 4;
    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = gguf_error(&b);
    assert!(
        e.contains("metadata `huge`") && e.contains("1099511627776") && e.contains("remain"),
        "{e}"
    );
}

#[test]
fn counts_the_file_cannot_hold_are_refused() {
    let mut g = valid("llama", "llama");
    g.claimed_meta = Some(1 << 60);
    let e = gguf_error(&g.bytes());
    assert!(e.contains("1152921504606846976 metadata entries"), "{e}");
}

/// An alignment of 0 made candle divide by zero.
#[test]
fn an_alignment_of_zero_is_refused() {
    for bad in [0, 3, 48] {
        let mut g = valid("llama", "llama");
        g.meta.retain(|(k, _)| k != "general.alignment");
        g.meta.push(("general.alignment".into(), Value::U32(bad)));
        let e = gguf_error(&g.bytes());
        assert!(
            e.contains("general.alignment")
                && e.contains(&format!("= {bad}"))
                && e.contains("power of two"),
            "{e}"
        );
    }
}

/// An embedding with no dimensions made the config reader index an empty shape.
#[test]
fn an_embedding_without_dimensions_is_refused() {
    let e = gguf_error(&with_embedding_dims(vec![]).bytes());
    assert!(
        e.contains("token_embd.weight") && e.contains("no dimensions"),
        "{e}"
    );
}

#[test]
fn unknown_types_duplicates_and_bad_booleans_are_named() {
    let mut g = valid("llama", "llama");
    g.tensors[1].dtype = 99;
    let e = gguf_error(&g.bytes());
    assert!(
        e.contains("unknown tensor type 99") && e.contains("valid:"),
        "{e}"
    );

    let mut g = valid("llama", "llama");
    g.tensors[1].name = "token_embd.weight".into();
    assert!(gguf_error(&g.bytes()).contains("defined twice"));

    let mut g = valid("llama", "llama");
    g.meta.push(("flag".into(), Value::Bool(true)));
    let mut b = g.bytes();
    let key = b.windows(4).position(|w| w == b"flag").unwrap();
    b[key + 4 + 4] = 2; // after the key: the type (u32), then the boolean byte
    let e = gguf_error(&b);
    assert!(
        e.contains("metadata `flag`") && e.contains("boolean byte 2"),
        "{e}"
    );
}

/// A syntax error inside `decoder` made tokenizers panic (`expect("Helper")`) instead of
/// returning an error.
#[test]
fn a_tokenizer_json_with_a_broken_decoder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"{"version": "1.0", "decoder": {"type" "Fuse"}, "model": {"type": "BPE"}}"#;
    std::fs::write(dir.path().join("tokenizer.json"), text).unwrap();
    let e = bounded(text.len(), || {
        unlearn::model::TextTokenizer::from_hf_dir(dir.path())
    })
    .err()
    .expect("a broken tokenizer.json must be refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("tokenizer.json") && e.contains("not valid JSON") && e.contains("line 1"),
        "{e}"
    );
}

/// tokenizers panicked building a BPE whose merge makes a string longer than every token, or
/// whose second part is shorter than the continuing-subword prefix.
#[test]
fn bpe_merges_tokenizers_would_panic_on_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = |model: &str| {
        format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {model}}}"#
        )
    };
    let cases = [
        (
            r#"{"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}"#,
            r#"model.merges[0] = "a" "b": "ab" is not in model.vocab"#,
        ),
        (
            r###"{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"],
                "continuing_subword_prefix": "##"}"###,
            "does not start with the continuing-subword prefix \"##\"",
        ),
    ];
    for (model, want) in cases {
        let text = file(model);
        std::fs::write(dir.path().join("tokenizer.json"), &text).unwrap();
        let e = bounded(text.len(), || {
            unlearn::model::TextTokenizer::from_hf_dir(dir.path())
        })
        .err()
        .expect("bad merges must be refused");
        let e = format!("{e:#}");
        assert!(e.contains("tokenizer.json") && e.contains(want), "{e}");
    }
    // The same file with the merged token in the vocabulary loads.
    let ok = file(r#"{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}"#);
    std::fs::write(dir.path().join("tokenizer.json"), ok).unwrap();
    let t = unlearn::model::TextTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(t.encode("ab", false).unwrap(), [2]);
}

/// tokenizers panicked encoding with a template post-processor that names a special token it
/// does not define.
#[test]
fn a_template_naming_an_undefined_special_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "decoder": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {}},
        "model": {"type": "BPE", "vocab": {"a": 0, "<s>": 1}, "merges": []}}"#;
    std::fs::write(dir.path().join("tokenizer.json"), text).unwrap();
    let e = bounded(text.len(), || {
        unlearn::model::TextTokenizer::from_hf_dir(dir.path())
    })
    .err()
    .expect("the template must be refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("tokenizer.json")
            && e.contains("post_processor.single[0]")
            && e.contains("\"<s>\""),
        "{e}"
    );
}

/// A head count of 0 made the Llama q/k un-permutation divide by zero while loading.
#[test]
fn a_head_count_of_zero_is_refused_before_tensors_are_reshaped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("heads.gguf");
    let mut g = valid("llama", "llama");
    for (k, v) in &mut g.meta {
        if k == "llama.attention.head_count" {
            *v = Value::U32(0);
        }
    }
    g.tensors[1].name = "blk.0.attn_q.weight".into();
    std::fs::write(&p, g.bytes()).unwrap();
    let e = gguf::load_gguf(&p, &candle_core::Device::Cpu)
        .err()
        .expect("a head count of 0 must be refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("heads.gguf") && e.contains("num_attention_heads") && e.contains("got 0"),
        "{e}"
    );
}
