//! Text generation with a KV cache: greedy by default, or temperature sampling with a seed.

use crate::model::transformer::{KvCache, Transformer};
use anyhow::Result;
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            seed: 0,
        }
    }
}

/// Generate up to `max_new` tokens after each prompt (token ids), stopping a row at one of
/// `stop_ids`. Returns the new tokens of each row (the stop token included when it came).
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    max_new: usize,
    stop_ids: &[u32],
    pad_id: u32,
    sampling: Sampling,
) -> Result<Vec<Vec<u32>>> {
    let mut kv = KvCache::new(model.config.num_layers);
    let mut rng = rand::rngs::StdRng::seed_from_u64(sampling.seed);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut done = vec![false; prompts.len()];
    let mut input: Vec<Vec<u32>> = prompts.to_vec();
    // Every row's tokens so far, for a run of the whole sequences again.
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    for _ in 0..max_new {
        if done.iter().all(|&d| d) {
            break;
        }
        if !kv.is_empty() && rope_changes(model, &seqs) {
            // The cached keys were rotated with the other RoPE table (LongRoPE past its
            // original context): run the whole sequences again, as transformers' Phi-3 does.
            kv = KvCache::new(model.config.num_layers);
            input = seqs.clone();
        }
        let logits = model.step(&input, pad_id, &mut kv)?;
        let next = choose(&logits, sampling, &mut rng)?;
        for (i, &tok) in next.iter().enumerate() {
            seqs[i].push(tok);
            if !done[i] {
                out[i].push(tok);
                if stop_ids.contains(&tok) {
                    done[i] = true;
                }
            }
        }
        input = next.iter().map(|&t| vec![t]).collect();
    }
    Ok(out)
}

/// Whether a row's RoPE table changes with its newest token (the last of `seqs`), so that its
/// cached keys do not hold.
fn rope_changes(model: &Transformer, seqs: &[Vec<u32>]) -> bool {
    let c = &model.config;
    seqs.iter()
        .any(|s| c.rope_table_of(s.len() - 1) != c.rope_table_of(s.len()))
}

/// Pick one token per row from last-position logits `[B, V]`.
pub fn choose(logits: &Tensor, s: Sampling, rng: &mut impl Rng) -> Result<Vec<u32>> {
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows
        .iter()
        .map(|r| {
            if s.temperature <= 0.0 {
                argmax(r)
            } else {
                let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let w: Vec<f64> = r
                    .iter()
                    .map(|&x| ((x as f64 - m) / s.temperature).exp())
                    .collect();
                let total: f64 = w.iter().sum();
                let mut u = rng.random::<f64>() * total;
                let mut pick = r.len() - 1;
                for (i, wi) in w.iter().enumerate() {
                    if u < *wi {
                        pick = i;
                        break;
                    }
                    u -= wi;
                }
                pick as u32
            }
        })
        .collect())
}

/// Index of the largest value (the first one on ties).
pub fn argmax(r: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in r.iter().enumerate() {
        if x > r[best] {
            best = i;
        }
    }
    best as u32
}
