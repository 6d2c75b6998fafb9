//! Last-position scores of many prompts, fast: prompts are sorted by length and batched with
//! their neighbours (so batches carry little padding, see [`length_buckets`]), and the LM head can be restricted to a
//! few tokens (the letters of a multiple-choice question). Results come back in the prompts'
//! order.

use crate::model::batch::{Batch, PadSide};
use crate::model::hooks::{ActivationCache, Hooks};
use crate::model::memo::BatchMemo;
use crate::model::transformer::{KvCache, LogitsAt, RunOpts, Transformer};
use anyhow::{bail, Result};
use candle_core::DType;

/// Padded slots a batch may hold beyond its real tokens, as a fraction of them.
pub const MAX_PADDING: f64 = 0.25;

/// Indices of `seqs` sorted by length (ties keep their order), cut into batches of at most
/// `batch_size` (0 counts as 1). A batch also ends before a sequence whose length would make
/// its padded size exceed its real tokens by more than [`MAX_PADDING`] (a long prompt among
/// short ones gets a batch of its own rather than padding its neighbours).
pub fn length_buckets(seqs: &[Vec<u32>], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = seqs[i].len();
        // Sorted: the newcomer is the longest, so the padded size is (n + 1) · len.
        let padded = (cur.len() + 1) * len;
        let too_padded = padded as f64 > (1.0 + MAX_PADDING) * (real + len) as f64;
        if !cur.is_empty() && (cur.len() >= batch_size.max(1) || too_padded) {
            out.push(std::mem::take(&mut cur));
            real = 0;
        }
        cur.push(i);
        real += len;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Run `f` on each length bucket of `seqs` (see [`length_buckets`]) with the bucket's indices
/// into `seqs` and its sequences; `f` returns one result per sequence of its bucket (reduce a
/// vocabulary row to what is read inside `f`, so that only one batch of rows is alive), and
/// the results are put back in the order of `seqs`.
pub fn bucketed<T>(
    seqs: &[Vec<u32>],
    batch_size: usize,
    mut f: impl FnMut(&[usize], &[Vec<u32>]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut out: Vec<Option<T>> = (0..seqs.len()).map(|_| None).collect();
    for bucket in length_buckets(seqs, batch_size) {
        let chunk: Vec<Vec<u32>> = bucket.iter().map(|&i| seqs[i].clone()).collect();
        let rows = f(&bucket, &chunk)?;
        if rows.len() != bucket.len() {
            bail!(
                "scoring a batch of {} prompts gave {} results",
                bucket.len(),
                rows.len()
            );
        }
        for (i, r) in bucket.into_iter().zip(rows) {
            out[i] = Some(r);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

impl Transformer {
    /// Logits of the vocabulary entries `tokens` at the last position of each sequence
    /// (`[seqs.len()][tokens.len()]`), in length-bucketed, left-padded batches of
    /// `batch_size`. Only the K rows of the LM head that are asked for are multiplied.
    pub fn last_token_logits(
        &self,
        seqs: &[Vec<u32>],
        tokens: &[u32],
        pad: u32,
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.last_token_logits_kept(seqs, tokens, pad, batch_size, None)
    }

    /// [`last_token_logits`](Self::last_token_logits), each batch read from `memo` when it
    /// holds it and kept there when computed.
    pub fn last_token_logits_kept(
        &self,
        seqs: &[Vec<u32>],
        tokens: &[u32],
        pad: u32,
        batch_size: usize,
        memo: Option<&BatchMemo>,
    ) -> Result<Vec<Vec<f32>>> {
        bucketed(seqs, batch_size, |_, chunk| {
            kept_or(memo, &[&[0], tokens, &[pad]], chunk, || {
                self.last_logits_of(chunk, tokens, pad)
            })
        })
    }

    /// The logits of `tokens` at the last position of each of `chunk` (one batch).
    fn last_logits_of(
        &self,
        chunk: &[Vec<u32>],
        tokens: &[u32],
        pad: u32,
    ) -> Result<Vec<Vec<f32>>> {
        let b = Batch::new(chunk, pad, PadSide::Left, self.device())?;
        let opts = RunOpts {
            logits: LogitsAt::None,
            ..Default::default()
        };
        let resid = self.run(&b, &opts)?.resid;
        self.last_rows(&resid, tokens)
    }

    /// The logits of `tokens` at the last column of a left-padded batch's residual (every
    /// row's last token is there).
    fn last_rows(&self, resid: &candle_core::Tensor, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let last = resid.narrow(1, resid.dim(1)? - 1, 1)?.squeeze(1)?;
        let z = self.head_tokens(&last, tokens)?;
        Ok(z.to_dtype(DType::F32)?.to_vec2()?)
    }
}

/// The rows of a batch: read from `memo` under (`kind`, `chunk`) when kept there, else
/// computed by `f` and kept.
fn kept_or(
    memo: Option<&BatchMemo>,
    kind: &[&[u32]],
    chunk: &[Vec<u32>],
    f: impl FnOnce() -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let Some(m) = memo else { return f() };
    let key = BatchMemo::key(kind, chunk);
    if let Some(rows) = m.get(&key) {
        return Ok(rows);
    }
    let rows = f()?;
    m.put(&key, &rows)?;
    Ok(rows)
}

impl Transformer {
    /// [`last_token_logits`](Self::last_token_logits) of `prefix ++ suffix` for each suffix,
    /// with the shared prefix run once: its keys and values are cached and repeated for each
    /// batch, so a few-shot prompt costs about what its question alone does. Suffixes are
    /// length-bucketed and left-padded after the prefix; each suffix's tokens take the
    /// positions right after the prefix. Each batch is read from `memo` when it holds it and
    /// kept there when computed (the prefix is run only if a batch is computed).
    pub fn last_token_logits_after_kept(
        &self,
        prefix: &[u32],
        suffixes: &[Vec<u32>],
        tokens: &[u32],
        pad: u32,
        batch_size: usize,
        memo: Option<&BatchMemo>,
    ) -> Result<Vec<Vec<f32>>> {
        if prefix.is_empty() {
            return self.last_token_logits_kept(suffixes, tokens, pad, batch_size, memo);
        }
        let table = |len: usize| self.config.rope_table_of(len);
        if suffixes
            .iter()
            .any(|s| table(prefix.len() + s.len()) != table(prefix.len()))
        {
            // The whole prompt takes another RoPE table than the prefix alone (LongRoPE past
            // its original context): the prefix's cached keys would not hold.
            let whole: Vec<Vec<u32>> = suffixes.iter().map(|s| [prefix, s].concat()).collect();
            return self.last_token_logits_kept(&whole, tokens, pad, batch_size, memo);
        }
        let mut shared: Option<KvCache> = None;
        let start = prefix.len() as u32;
        bucketed(suffixes, batch_size, |_, chunk| {
            kept_or(memo, &[&[1], tokens, &[pad], prefix], chunk, || {
                if shared.is_none() {
                    shared = Some(self.prefix_cache(prefix, pad)?);
                }
                let shared = shared.as_ref().expect("made above");
                let mut b = Batch::new(chunk, pad, PadSide::Left, self.device())?;
                for p in b.positions.iter_mut().flatten() {
                    *p += start;
                }
                let resid = self.run_on(&b, &mut shared.repeated(b.size())?)?;
                self.last_rows(&resid, tokens)
            })
        })
    }

    /// The keys and values of `prefix` run alone, to be repeated for each batch after it.
    fn prefix_cache(&self, prefix: &[u32], pad: u32) -> Result<KvCache> {
        let mut shared = KvCache::new(self.config.num_layers);
        let pb = Batch::new(&[prefix.to_vec()], pad, PadSide::Left, self.device())?;
        self.run_on(&pb, &mut shared)?;
        Ok(shared)
    }

    /// The final residual of batch `b` run after the keys and values in `kv` (which it
    /// extends), without hooks or logits.
    fn run_on(&self, b: &Batch, kv: &mut KvCache) -> Result<candle_core::Tensor> {
        let (resid, _) = self.run_cached(
            b,
            self.embed(&b.ids)?,
            0,
            kv,
            &Hooks::default(),
            &mut ActivationCache::new(),
            &LogitsAt::None,
        )?;
        Ok(resid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;
    use crate::model::transformer::tests::tiny_model;

    #[test]
    fn buckets_group_similar_lengths_and_results_return_in_order() {
        let seqs = vec![vec![1; 5], vec![1; 1], vec![1; 4], vec![1; 1], vec![1; 9]];
        assert_eq!(
            length_buckets(&seqs, 2),
            vec![vec![1, 3], vec![2, 0], vec![4]]
        );
        // Three short prompts fill a batch of 4 alone: the long one would pad them 4-fold.
        let mixed = vec![vec![1; 2], vec![1; 10], vec![1; 2], vec![1; 2]];
        assert_eq!(length_buckets(&mixed, 4), vec![vec![0, 2, 3], vec![1]]);
        let lens = bucketed(&seqs, 2, |_, c| Ok(c.iter().map(|s| s.len()).collect())).unwrap();
        assert_eq!(lens, vec![5, 1, 4, 1, 9]);
        let e = bucketed(&seqs, 2, |_, _| Ok(vec![0usize])).unwrap_err();
        assert!(e.to_string().contains("gave 1 results"), "{e}");
    }

    /// Bucketed batches with the head restricted to a few tokens give the logits of the plain
    /// full-vocabulary run of each prompt alone (Llama with biases; Gemma with soft-capping;
    /// Phi-3 with LongRoPE, whose whole prompts pass its original context where the short
    /// prefix does not).
    #[test]
    fn bucketed_token_logits_equal_single_prompt_full_logits() {
        for arch in [Arch::Llama, Arch::Gemma3, Arch::Phi3] {
            let m = tiny_model(arch);
            let seqs: Vec<Vec<u32>> = vec![
                vec![1, 5, 9, 3, 7, 11],
                vec![1, 4],
                vec![1, 8, 15, 2, 6],
                vec![1, 20, 3],
                vec![1, 7, 7, 7, 7, 7, 7, 9],
            ];
            let tokens = [13u32, 2, 22, 5];
            let fast = m.last_token_logits(&seqs, &tokens, 0, 2).unwrap();
            assert_eq!(fast.len(), seqs.len());
            for (s, got) in seqs.iter().zip(&fast) {
                let full = &m.last_logits(std::slice::from_ref(s), 0).unwrap()[0];
                let want: Vec<f32> = tokens.iter().map(|&t| full[t as usize]).collect();
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{arch:?} {s:?}: {got:?} vs {want:?}");
                }
            }
            // The same prompts behind a shared prefix run once: equal to each whole prompt.
            for prefix in [&[1u32, 17, 3, 9, 12][..], &[1, 17]] {
                let whole: Vec<Vec<u32>> = seqs
                    .iter()
                    .map(|s| prefix.iter().chain(&s[1..]).copied().collect())
                    .collect();
                let suffixes: Vec<Vec<u32>> = seqs.iter().map(|s| s[1..].to_vec()).collect();
                let shared = m
                    .last_token_logits_after_kept(prefix, &suffixes, &tokens, 0, 2, None)
                    .unwrap();
                let plain = m.last_token_logits(&whole, &tokens, 0, 1).unwrap();
                for (got, want) in shared.iter().zip(&plain) {
                    for (a, b) in got.iter().zip(want) {
                        assert!((a - b).abs() < 1e-4, "{arch:?}: {got:?} vs {want:?}");
                    }
                }
            }
            let e = m.last_token_logits(&seqs, &[99], 0, 2).unwrap_err();
            assert!(e.to_string().contains("token id 99"), "{e}");
        }
    }
}
