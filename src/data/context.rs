//! Facts against a model's context: each prompt with its answer must fit in the tokens the
//! model is run with. Checked right after the facts and the tokenizer are loaded, so that a
//! fact too long for the model is named before any long work starts.

use super::Fact;
use crate::model::LanguageModel;
use anyhow::{bail, Result};

/// Tokens a tokenizer may add to a text beyond one per byte (BOS/EOS, a prefix space).
const SPECIAL_TOKENS: usize = 4;

/// Check that every fact of `task` fits in `lm`'s context.
pub fn check_facts_fit(lm: &LanguageModel, facts: &[Fact], task: &str) -> Result<()> {
    check_fit(facts, task, lm.model.context_len(), |text, special| {
        Ok(lm.tokenizer.encode(text, special)?.len())
    })
}

/// Check that each fact's prompt (with its special tokens) followed by its answer, and by its
/// edit answer when it has one, takes at most `limit` tokens; `count(text, special)` counts
/// the tokens of a text. The error names the fact, its task, its token count and the limit.
pub fn check_fit(
    facts: &[Fact],
    task: &str,
    limit: usize,
    count: impl Fn(&str, bool) -> Result<usize>,
) -> Result<()> {
    for f in facts {
        let answers = std::iter::once(&f.answer).chain(&f.new_answer);
        // A token covers at least one byte: a fact this short fits without tokenizing it.
        let longest = answers.clone().map(String::len).max().unwrap_or(0);
        if f.prompt.len() + longest + 2 * SPECIAL_TOKENS <= limit {
            continue;
        }
        let prompt = count(&f.prompt, true)?;
        for a in answers {
            // The last answer token is only predicted, never fed to the model.
            let n = prompt + count(a, false)?.saturating_sub(1);
            if n > limit {
                bail!(
                    "fact {:?} of {task}: its prompt and answer {a:?} take {n} tokens ({prompt} for \
                     the prompt), longer than the model's context of {limit} tokens \
                     (max_position_embeddings); shorten the prompt or leave the fact out",
                    f.id
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per word, plus a BOS with `special`.
    fn words(text: &str, special: bool) -> Result<usize> {
        Ok(text.split_whitespace().count() + usize::from(special))
    }

    fn fact(id: &str, prompt_words: usize, answer: &str) -> Fact {
        Fact {
            id: id.into(),
            prompt: vec!["w"; prompt_words].join(" "),
            answer: answer.into(),
            ..crate::data::example_fact()
        }
    }

    #[test]
    fn a_fact_longer_than_the_context_is_named_with_its_length_and_the_limit() {
        // 30 words + BOS + 2 answer tokens − 1 = 32 tokens: fits a limit of 32, not 31.
        let facts = vec![fact("a", 3, " x"), fact("row-7", 30, " two words")];
        check_fit(&facts, "facts.tsv", 32, words).unwrap();
        let e = check_fit(&facts, "facts.tsv", 31, words)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("fact \"row-7\" of facts.tsv:")
                && e.contains("take 32 tokens (31 for the prompt)")
                && e.contains("context of 31 tokens"),
            "{e}"
        );
        // The edit answer counts too.
        let mut long_edit = fact("e", 3, " x");
        long_edit.new_answer = Some(vec!["y"; 40].join(" "));
        let e = check_fit(&[long_edit], "t", 31, words)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fact \"e\"") && e.contains("take 43 tokens"),
            "{e}"
        );
    }
}
