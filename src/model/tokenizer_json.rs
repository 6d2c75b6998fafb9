//! Checks of a tokenizer.json for what the tokenizers crate panics on instead of refusing: a
//! syntax error inside `decoder`, BPE merges that overrun its merge buffer, a template
//! post-processor naming a special token it does not define. Each is an error naming the place.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Check `text` (a tokenizer.json) before tokenizers parses it.
pub fn check(text: &str) -> Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).context("not valid JSON")?;
    check_bpe_merges(text)?;
    check_templates(text)
}

/// Refuse the BPE merges of a tokenizer.json that tokenizers would panic on: a merge whose
/// second part is shorter than the continuing-subword prefix or whose merged string is not a
/// token (it is copied into a buffer as long as the longest token). Other models, and files
/// tokenizers will refuse by itself, pass.
fn check_bpe_merges(text: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct Kind {
        model: Option<KindOf>,
    }
    #[derive(Deserialize)]
    struct KindOf {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    #[derive(Deserialize)]
    struct File {
        model: Bpe,
    }
    #[derive(Deserialize)]
    struct Bpe {
        vocab: ahash::AHashMap<String, u32>,
        merges: Vec<Merge>,
        continuing_subword_prefix: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Merge {
        Pair(String, String),
        Joined(String),
    }
    let is_bpe = serde_json::from_str::<Kind>(text)
        .ok()
        .and_then(|k| k.model?.kind)
        .is_some_and(|k| k == "BPE");
    let Some(bpe) = is_bpe
        .then(|| serde_json::from_str::<File>(text).ok())
        .flatten()
    else {
        return Ok(());
    };
    let prefix = bpe.model.continuing_subword_prefix.unwrap_or_default();
    for (i, m) in bpe.model.merges.iter().enumerate() {
        let (a, b) = match m {
            Merge::Pair(a, b) => (a.as_str(), b.as_str()),
            Merge::Joined(j) => match j.split_once(' ') {
                Some(ab) => ab,
                None => continue,
            },
        };
        let Some(rest) = b.get(prefix.len()..) else {
            bail!(
                "model.merges[{i}] = {a:?} {b:?}: the second part does not start with the \
                 continuing-subword prefix {prefix:?}"
            );
        };
        let merged = format!("{a}{rest}");
        if !bpe.model.vocab.contains_key(&merged) {
            bail!("model.merges[{i}] = {a:?} {b:?}: {merged:?} is not in model.vocab");
        }
    }
    Ok(())
}

/// Refuse a `TemplateProcessing` (anywhere in `post_processor`) whose `single` or `pair`
/// template names a special token missing from its `special_tokens`: tokenizers would panic
/// encoding with special tokens.
fn check_templates(text: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct File {
        post_processor: Option<serde_json::Value>,
    }
    let Ok(File {
        post_processor: Some(pp),
    }) = serde_json::from_str::<File>(text)
    else {
        return Ok(());
    };
    check_template_value(&pp, "post_processor")
}

fn check_template_value(v: &serde_json::Value, at: &str) -> Result<()> {
    use serde_json::Value as J;
    match v {
        J::Object(o) => {
            if o.get("type").and_then(J::as_str) == Some("TemplateProcessing") {
                let defined = o.get("special_tokens").and_then(J::as_object);
                for part in ["single", "pair"] {
                    let pieces = o.get(part).and_then(J::as_array).into_iter().flatten();
                    for (i, piece) in pieces.enumerate() {
                        let Some(id) = piece
                            .get("SpecialToken")
                            .and_then(|s| s.get("id"))
                            .and_then(J::as_str)
                        else {
                            continue;
                        };
                        if !defined.is_some_and(|d| d.contains_key(id)) {
                            bail!(
                                "{at}.{part}[{i}] names the special token {id:?}, which \
                                 {at}.special_tokens does not define"
                            );
                        }
                    }
                }
            }
            for (k, x) in o {
                check_template_value(x, &format!("{at}.{k}"))?;
            }
        }
        J::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                check_template_value(x, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}
