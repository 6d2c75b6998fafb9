//! Next-token predictions at the last position of prompts: top-k tokens with probabilities,
//! and a given answer's probability and rank. Prompts are batched with left padding, neighbours
//! in length together, and only the last position's logits are computed.

use crate::model::scoring::bucketed;
use crate::model::LanguageModel;
use anyhow::{bail, Result};
use serde::Serialize;

/// One token and its probability.
#[derive(Clone, Debug, Serialize)]
pub struct TokenProb {
    pub id: u32,
    pub token: String,
    pub prob: f64,
    pub logit: f32,
}

/// A given answer's standing in the distribution.
#[derive(Clone, Debug, Serialize)]
pub struct AnswerScore {
    pub answer: String,
    /// First token of the answer (the one scored).
    pub id: u32,
    pub prob: f64,
    /// Number of tokens with a strictly larger logit (0 = argmax).
    pub rank: usize,
    /// The answer is more than one token; only its first token is scored.
    pub multi_token: bool,
}

/// The next-token distribution of one prompt.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub prompt: String,
    pub n_tokens: usize,
    pub top: Vec<TokenProb>,
    pub answer: Option<AnswerScore>,
}

/// log Σ exp over a row of logits (f64 accumulation).
pub fn logsumexp(row: &[f32]) -> f64 {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

/// Predict the next token of every prompt, `batch_size` prompts at a time.
pub fn predict(
    lm: &LanguageModel,
    prompts: &[String],
    top_k: usize,
    answer: Option<&str>,
    batch_size: usize,
) -> Result<Vec<Prediction>> {
    let answer_ids = match answer {
        Some(a) => {
            let ids = lm.tokenizer.encode(a, false)?;
            if ids.is_empty() {
                bail!("--answer {a:?} has no tokens");
            }
            Some((a.to_string(), ids))
        }
        None => None,
    };
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| lm.tokenizer.encode(p, true))
        .collect::<Result<_>>()?;
    // Each vocabulary row is reduced to its prediction inside its batch.
    bucketed(&ids, batch_size, |idx, chunk| {
        let mut out = Vec::with_capacity(chunk.len());
        for (&i, row) in idx.iter().zip(lm.last_logits(chunk)?) {
            let (prompt, toks) = (&prompts[i], &ids[i]);
            let lse = logsumexp(&row);
            let prob = |x: f32| (x as f64 - lse).exp();
            let mut idx: Vec<usize> = (0..row.len()).collect();
            let k = top_k.min(row.len());
            if k > 0 {
                idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            }
            idx.truncate(k);
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let top = idx
                .iter()
                .map(|&i| TokenProb {
                    id: i as u32,
                    token: lm.tokenizer.decode(&[i as u32]).unwrap_or_default(),
                    prob: prob(row[i]),
                    logit: row[i],
                })
                .collect();
            let answer = answer_ids.as_ref().map(|(a, aid)| {
                let id = aid[0];
                let x = row[id as usize];
                AnswerScore {
                    answer: a.clone(),
                    id,
                    prob: prob(x),
                    rank: row.iter().filter(|&&y| y > x).count(),
                    multi_token: aid.len() > 1,
                }
            });
            out.push(Prediction {
                prompt: prompt.clone(),
                n_tokens: toks.len(),
                top,
                answer,
            });
        }
        Ok(out)
    })
}
