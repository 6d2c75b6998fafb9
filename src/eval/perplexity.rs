//! Perplexity of held-out text with a fixed token budget: windows of `window` tokens (BOS
//! first when the model uses one) moved by `stride`; each window scores only the tokens the
//! previous one did not, with every scored token seeing at least `window − stride` tokens of
//! context (except at the start). Logits are computed only at scored positions.

use crate::model::head_logprobs::run_target_logprobs;
use crate::model::{Batch, LanguageModel, PadSide, Transformer};
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
    let bos = lm
        .tokenizer
        .add_bos
        .then_some(lm.tokenizer.bos_id)
        .flatten();
    perplexity_of(&lm.model, bos, lm.pad_id(), ids, window, stride)
}

/// Log-probabilities of `targets` at (row 0, position) `rows` of one sequence.
pub fn target_logprobs(
    model: &Transformer,
    seq: Vec<u32>,
    pad: u32,
    rows: &[(usize, usize)],
    targets: &[u32],
) -> Result<Vec<f64>> {
    let batch = Batch::new(&[seq], pad, PadSide::Right, model.device())?;
    run_target_logprobs(model, &batch, rows, targets)
}

/// Log-probabilities of the tails of several sequences in batches of `bs`: for `(seq, from)`,
/// the log-probability of every token `seq[from..]` given the tokens before it.
pub fn tail_logprobs(
    model: &Transformer,
    pad: u32,
    items: &[(Vec<u32>, usize)],
    bs: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(bs.max(1)) {
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (r, (seq, from)) in chunk.iter().enumerate() {
            if *from == 0 || *from > seq.len() {
                bail!(
                    "tail_logprobs: the tail must start inside the sequence (1..={})",
                    seq.len()
                );
            }
            for (p, &tok) in seq.iter().enumerate().skip(*from) {
                rows.push((r, p - 1));
                targets.push(tok);
            }
        }
        if rows.is_empty() {
            out.extend(chunk.iter().map(|_| Vec::new()));
            continue;
        }
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.clone()).collect();
        let batch = Batch::new(&seqs, pad, PadSide::Right, model.device())?;
        let lp = run_target_logprobs(model, &batch, &rows, &targets)?;
        let mut k = 0;
        for (seq, from) in chunk {
            let n = seq.len() - from;
            out.push(lp[k..k + n].to_vec());
            k += n;
        }
    }
    Ok(out)
}

/// [`perplexity`] for a bare transformer, with the BOS token (if any) put before each window.
pub fn perplexity_of(
    model: &Transformer,
    bos: Option<u32>,
    pad: u32,
    ids: &[u32],
    window: usize,
    stride: usize,
) -> Result<Perplexity> {
    if ids.len() < 2 {
        bail!("perplexity needs at least 2 tokens");
    }
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
        let lp = target_logprobs(model, seq, pad, &rows, &targets)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LogitsAt, RunOpts};

    /// Batched tails give the same numbers as one sequence at a time.
    #[test]
    fn batched_tails_equal_single_sequences() {
        let m = crate::model::transformer::tests::tiny_model(crate::model::Arch::Gemma3);
        let items = vec![
            (vec![1u32, 5, 9, 3, 7], 2usize),
            (vec![1, 4, 8], 1),
            (vec![1, 6, 2, 2], 3),
        ];
        let batched = tail_logprobs(&m, 0, &items, 8).unwrap();
        for ((seq, from), b) in items.iter().zip(&batched) {
            let rows: Vec<(usize, usize)> = (*from..seq.len()).map(|p| (0, p - 1)).collect();
            let one = target_logprobs(&m, seq.clone(), 0, &rows, &seq[*from..]).unwrap();
            assert_eq!(one.len(), b.len());
            for (x, y) in one.iter().zip(b) {
                assert!((x - y).abs() < 1e-9, "{x} vs {y}");
            }
        }
        assert!(tail_logprobs(&m, 0, &[(vec![1, 2], 0)], 8).is_err());
    }
    use crate::model::transformer::tests::tiny_model;
    use crate::model::Arch;

    /// −mean log p of each next token with the whole sequence as context, computed from the
    /// full logits of one run.
    fn by_hand(model: &Transformer, seq: &[u32], from: usize) -> f64 {
        let b = Batch::new(&[seq.to_vec()], 0, PadSide::Right, model.device()).unwrap();
        let out = model
            .run(
                &b,
                &RunOpts {
                    logits: LogitsAt::All,
                    ..Default::default()
                },
            )
            .unwrap();
        let l: Vec<Vec<f64>> = out
            .logits
            .unwrap()
            .get(0)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_vec2()
            .unwrap();
        let mut nll = 0.0;
        for j in from..seq.len() {
            let row = &l[j - 1];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            nll += lse - row[seq[j] as usize];
        }
        nll / (seq.len() - from) as f64
    }

    #[test]
    fn one_window_equals_the_full_sequence_and_windows_see_their_context() {
        let m = tiny_model(Arch::Llama);
        let ids: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 23).collect();
        // One window holding everything (BOS = 1 first): the plain sequence perplexity (the
        // log-softmax runs in f32, hence 1e-6).
        let p = perplexity_of(&m, Some(1), 0, &ids, 32, 16).unwrap();
        let mut with_bos = vec![1];
        with_bos.extend(&ids);
        assert_eq!(p.tokens, 19);
        assert!(
            (p.nll - by_hand(&m, &with_bos, 2)).abs() < 1e-6,
            "{} vs {}",
            p.nll,
            by_hand(&m, &with_bos, 2)
        );
        // Windows of 9 (BOS + 8 tokens), stride 4: every token is scored once, tokens 1..8 in
        // the first window, then 4 new tokens per window with 4 earlier ones as context.
        let p = perplexity_of(&m, Some(1), 0, &ids, 9, 4).unwrap();
        assert_eq!(p.tokens, 19);
        let mut total = by_hand(&m, &with_bos[..9], 2) * 7.0;
        let mut s = 4;
        while s + 8 <= 20 + 3 && s < 20 {
            let end = (s + 8).min(20);
            let mut w = vec![1];
            w.extend(&ids[s..end]);
            let fresh = end - (s + 4);
            total += by_hand(&m, &w, w.len() - fresh) * fresh as f64;
            if end == 20 {
                break;
            }
            s += 4;
        }
        assert!(
            (p.nll - total / 19.0).abs() < 1e-6,
            "{} vs {}",
            p.nll,
            total / 19.0
        );
        assert!(perplexity_of(&m, None, 0, &ids, 8, 0).is_err());
    }
}
