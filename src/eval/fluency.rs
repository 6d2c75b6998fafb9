//! Fluency of answers to forget prompts: greedy continuations, scored by n-gram entropy (ROME's
//! weighted mix of bigram and trigram entropy over the words) and by their perplexity under the
//! original model (gibberish is improbable under it), with samples kept for the report.

use crate::eval::perplexity::tail_logprobs;
use crate::model::generate::{generate, Sampling};
use crate::model::LanguageModel;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Fluency of a set of generations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fluency {
    pub n: usize,
    /// Mean of 2/3·H₂ + 4/3·H₃ (bits) over generations.
    pub ngram_entropy: f64,
    /// Perplexity of the generated tokens under the original model.
    pub perplexity_under_original: f64,
    /// (prompt tail, generation) pairs.
    pub samples: Vec<(String, String)>,
}

/// Entropy (bits) of the n-gram distribution of words.
fn ngram_entropy_n(words: &[&str], n: usize) -> f64 {
    if words.len() < n {
        return 0.0;
    }
    let mut counts: HashMap<&[&str], usize> = HashMap::new();
    for w in words.windows(n) {
        *counts.entry(w).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.log2()
        })
        .sum()
}

/// ROME's n-gram entropy of a text: the mean of (2/3)·H₂ and (4/3)·H₃, over whitespace words
/// (ROME splits with NLTK's word tokenizer).
pub fn ngram_entropy(text: &str) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    (2.0 / 3.0 * ngram_entropy_n(&words, 2) + 4.0 / 3.0 * ngram_entropy_n(&words, 3)) / 2.0
}

/// Greedy continuations of `prompts` by `lm`, scored for fluency (perplexity under `original`).
pub fn fluency(
    lm: &LanguageModel,
    original: &LanguageModel,
    prompts: &[String],
    max_new: usize,
) -> Result<Fluency> {
    if prompts.is_empty() {
        return Ok(Fluency::default());
    }
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| lm.tokenizer.encode(p, true))
        .collect::<Result<_>>()?;
    let mut gens: Vec<Vec<u32>> = Vec::new();
    for chunk in ids.chunks(16) {
        gens.extend(generate(
            &lm.model,
            chunk,
            max_new,
            &lm.stop_ids(),
            lm.pad_id(),
            Sampling::default(),
        )?);
    }
    let stops = lm.stop_ids();
    let (mut nll, mut count, mut ent) = (0f64, 0usize, 0f64);
    let mut samples = Vec::new();
    let mut tails = Vec::new();
    for (p, g) in ids.iter().zip(&gens) {
        let g: Vec<u32> = g.iter().copied().filter(|t| !stops.contains(t)).collect();
        let text = lm.tokenizer.decode(&g)?;
        ent += ngram_entropy(&text);
        if !g.is_empty() {
            let mut seq = p.clone();
            seq.extend(&g);
            tails.push((seq, p.len()));
        }
        samples.push((String::new(), text));
    }
    // Perplexity of the generated tokens under the original model, all answers batched.
    for lp in tail_logprobs(&original.model, original.pad_id(), &tails, 16)? {
        nll -= lp.iter().sum::<f64>();
        count += lp.len();
    }
    for (s, p) in samples.iter_mut().zip(prompts) {
        s.0 = p.lines().last().unwrap_or(p).to_string();
    }
    Ok(Fluency {
        n: prompts.len(),
        ngram_entropy: ent / prompts.len() as f64,
        perplexity_under_original: if count > 0 {
            (nll / count as f64).exp()
        } else {
            f64::NAN
        },
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_has_low_entropy() {
        let rep = ngram_entropy("the the the the the the the the");
        let varied = ngram_entropy("he played basketball for the Lakers and won four titles");
        assert_eq!(rep, 0.0);
        assert!(varied > 2.5, "{varied}");
        // 4 distinct bigrams, 3 distinct trigrams, uniform: H₂ = 2, H₃ = log2(3).
        let h = ngram_entropy("a b c d e");
        let want = (2.0 / 3.0 * 2.0 + 4.0 / 3.0 * 3f64.log2()) / 2.0;
        assert!((h - want).abs() < 1e-12, "{h} vs {want}");
    }
}
