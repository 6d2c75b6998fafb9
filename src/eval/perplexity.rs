//! Perplexity of held-out text with a fixed token budget: windows of `window` tokens (BOS
//! first when the model uses one) moved by `stride`; each window scores only the tokens the
//! previous one did not, with every scored token seeing at least `window − stride` tokens of
//! context (except at the start). Logits are computed only at scored positions.

use crate::model::{Batch, LanguageModel, LogitsAt, PadSide, RunOpts};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A perplexity measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    pub tokens: usize,
    pub window: usize,
    pub stride: usize,
}

/// Token ids of text lines (a newline after each), at most `budget + 1` of them.
pub fn tokenize_lines(lm: &LanguageModel, lines: &[String], budget: usize) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for l in lines {
        ids.extend(lm.tokenizer.encode(&format!("{l}\n"), false)?);
        if ids.len() > budget {
            break;
        }
    }
    ids.truncate(budget + 1);
    Ok(ids)
}

/// Perplexity of `ids` (the first token is context only).
pub fn perplexity(
    lm: &LanguageModel,
    ids: &[u32],
    window: usize,
    stride: usize,
) -> Result<Perplexity> {
    if ids.len() < 2 {
        bail!("perplexity needs at least 2 tokens");
    }
    let bos = lm
        .tokenizer
        .add_bos
        .then_some(lm.tokenizer.bos_id)
        .flatten();
    let body = window.saturating_sub(usize::from(bos.is_some()));
    if stride == 0 || body < 2 || stride > body {
        bail!("perplexity: need 0 < stride ≤ window − 1 (got window {window}, stride {stride})");
    }
    let (mut nll, mut count) = (0f64, 0usize);
    let mut scored_to = 1; // next token index to score
    let mut s = 0;
    while scored_to < ids.len() {
        let end = (s + body).min(ids.len());
        let mut seq: Vec<u32> = bos.into_iter().collect();
        let off = seq.len();
        seq.extend_from_slice(&ids[s..end]);
        // Token ids[j] is predicted at slot off + (j - s) - 1.
        let rows: Vec<(usize, usize)> = (scored_to..end).map(|j| (0, off + j - s - 1)).collect();
        let targets: Vec<u32> = (scored_to..end).map(|j| ids[j]).collect();
        let batch = Batch::new(&[seq], lm.pad_id(), PadSide::Right, lm.model.device())?;
        let out = lm.model.run(
            &batch,
            &RunOpts {
                logits: LogitsAt::Rows(rows),
                ..Default::default()
            },
        )?;
        let (lp, _) =
            crate::forget::seqs::logprobs_of(out.logits.as_ref().expect("asked"), &targets)?;
        nll -= lp.iter().sum::<f64>();
        count += lp.len();
        scored_to = end;
        if end == ids.len() {
            break;
        }
        s += stride;
    }
    let mean = nll / count as f64;
    Ok(Perplexity {
        perplexity: mean.exp(),
        nll: mean,
        tokens: count,
        window,
        stride,
    })
}
