//! Training sequences: facts (prompt + answer tokens) and general-text chunks, tokenized once,
//! with what the losses need precomputed from the frozen original model — the residual at the
//! first updated layer (layers below it never run again), the reference residual at the
//! representation layer, and the reference log-probabilities of the targets.

use crate::data::Fact;
use crate::eval::perplexity::tokenize_lines;
use crate::forget::config::PPL_PROBE_TOKENS;
use crate::forget::trainer::PplProbe;
use crate::model::head_logprobs::resid_logprobs;
use crate::model::{
    Batch, HookPoint, Hooks, LanguageModel, LogitsAt, PadSide, RunOpts, Transformer,
};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};

/// One tokenized training sequence.
#[derive(Clone, Debug)]
pub struct Seq {
    pub ids: Vec<u32>,
    /// (position, token): the logits at `position` score `token` (answer tokens of a fact, the
    /// next token of a text).
    pub targets: Vec<(usize, u32)>,
    /// Positions the representation losses of a forget fact act on: the subject's first token
    /// to the last prompt token (the shared few-shot prefix before the subject is left alone).
    pub rep_positions: Vec<usize>,
    /// The subject's tokens (facts only).
    pub subject: Option<std::ops::Range<usize>>,
    /// First tokens of the fact's other candidate answers, which its answer competes with in
    /// "top-1 among the candidates" (facts only).
    pub rivals: Vec<u32>,
}

/// How the row at a sequence's first position enters the representation losses. That position
/// is the attention sink: the BOS token, or the first token where the model adds none, and its
/// residual is far larger than any other (at Qwen2.5-Coder 1.5B's layer 6, 174 times the median
/// row norm; Gemma 3 270M's BOS row, 15 times). Counted like any other row, it sets the means
/// that scale RMU's steering and normalise the retain MSEs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sink {
    /// The first row counts like any other.
    #[default]
    Keep,
    /// The first row is no forget row (KUDA's deviation and RMU's steering leave it alone) and
    /// sets no scale (RMU's steering norm, the retain MSEs' normaliser); the retain MSEs still
    /// count its change, so it is held where it was.
    Drop,
}

/// Which positions of a forget fact the representation losses (KUDA's deviation, RMU's
/// steering) act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForgetPositions {
    /// The subject's first token to the last prompt token.
    #[default]
    Prompt,
    /// The subject's tokens only: the prompt's template tokens after it, shared by every
    /// fact, are left to the retain terms.
    Subject,
    /// The subject's last token (where causal tracing finds the fact looked up).
    LastSubject,
    /// The subject's last token to the last prompt token: the rows that have read the whole
    /// name. A row at an earlier subject token has seen only the start of the name, the same
    /// as for every subject whose name starts so (Alex Smith's "Alex" is every Alex's), so
    /// moving it moves them all.
    Named,
}

/// Where a position sits in a fact's prompt relative to its subject, so that the same place
/// can be found in another fact (whose subject has another length).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Place {
    /// Before the subject (the shared few-shot prefix).
    Before,
    /// A subject token other than the last.
    Subject,
    /// The subject's last token.
    LastSubject,
    /// `k` tokens after the subject's last token (0 = the first template token after it).
    After(usize),
}

impl Seq {
    /// Where position `p` sits in this fact (None for a text chunk).
    pub fn place(&self, p: usize) -> Option<Place> {
        let span = self.subject.as_ref()?;
        Some(if p < span.start {
            Place::Before
        } else if p + 1 < span.end {
            Place::Subject
        } else if p + 1 == span.end {
            Place::LastSubject
        } else {
            Place::After(p - span.end)
        })
    }

    /// A fact completed by `answer` (its tokens are the targets).
    pub fn fact(lm: &LanguageModel, f: &Fact, answer: &str) -> Result<Seq> {
        let (mut ids, span) = lm
            .tokenizer
            .encode_with_span(&f.prompt, &f.subject, true)
            .with_context(|| format!("fact {}: tokenizing the prompt", f.id))?;
        let ans = lm.tokenizer.encode(answer, false)?;
        if ans.is_empty() {
            bail!("fact {}: the answer {answer:?} has no tokens", f.id);
        }
        let n = ids.len();
        let targets = ans
            .iter()
            .enumerate()
            .map(|(j, &t)| (n - 1 + j, t))
            .collect();
        let rep_positions = (span.start..n).collect();
        ids.extend_from_slice(&ans[..ans.len() - 1]);
        let mut rivals = Vec::new();
        for c in &f.candidates {
            let t = crate::data::known::answer_token(lm, c)
                .with_context(|| format!("fact {}: candidate answer", f.id))?;
            if t != ans[0] && !rivals.contains(&t) {
                rivals.push(t);
            }
        }
        Ok(Seq {
            ids,
            targets,
            rep_positions,
            subject: Some(span),
            rivals,
        })
    }

    /// This fact with its representation positions cut to `which` (a text chunk is returned
    /// unchanged).
    pub fn at_forget_positions(mut self, which: ForgetPositions) -> Seq {
        if let Some(span) = &self.subject {
            self.rep_positions = match which {
                ForgetPositions::Prompt => self.rep_positions,
                ForgetPositions::Subject => span.clone().collect(),
                ForgetPositions::LastSubject => vec![span.end - 1],
                ForgetPositions::Named => self
                    .rep_positions
                    .into_iter()
                    .filter(|&p| p + 1 >= span.end)
                    .collect(),
            };
        }
        self
    }

    /// This sequence with its first row left out of its representation rows under
    /// [`Sink::Drop`] (the forget rows and the rows the scales are taken over; the retain
    /// MSEs read every row of a retain sequence); an error when no row would be left (a one-token subject at the start
    /// of a prompt, read at that token only).
    pub fn with_sink(mut self, sink: Sink) -> Result<Seq> {
        if sink == Sink::Drop {
            self.rep_positions.retain(|&p| p != 0);
            if self.rep_positions.is_empty() {
                bail!("no representation position is left once the first one is dropped (sink = \"drop\"): a subject at the start of the prompt read at that token only");
            }
        }
        Ok(self)
    }

    /// A text chunk: every next token is a target, every position a representation position.
    pub fn text(ids: Vec<u32>) -> Result<Seq> {
        if ids.len() < 2 {
            bail!("a text chunk needs at least 2 tokens");
        }
        let targets = (0..ids.len() - 1).map(|i| (i, ids[i + 1])).collect();
        let rep_positions = (0..ids.len()).collect();
        Ok(Seq {
            ids,
            targets,
            rep_positions,
            subject: None,
            rivals: Vec::new(),
        })
    }
}

/// The training's perplexity probe ([`crate::forget::config::ForgetConfig::ppl_every`]): the
/// last [`PPL_PROBE_TOKENS`] tokens of `lines` (WikiText's training half, whose start holds
/// the text chunks the terms train on and the key statistics read).
pub fn ppl_probe(lm: &LanguageModel, lines: &[String]) -> Result<PplProbe> {
    let (mut n, mut from) = (0, lines.len());
    while from > 0 && n <= PPL_PROBE_TOKENS {
        from -= 1;
        n += lm
            .tokenizer
            .encode(&format!("{}\n", lines[from]), false)?
            .len();
    }
    let mut ids = tokenize_lines(lm, &lines[from..], usize::MAX - 1)?;
    ids.drain(..ids.len().saturating_sub(PPL_PROBE_TOKENS));
    let bos = lm
        .tokenizer
        .add_bos
        .then_some(lm.tokenizer.bos_id)
        .flatten();
    Ok(PplProbe { bos, ids })
}

/// Chunks of `tokens_per_chunk` tokens of the lines of a text (BOS first when the model adds
/// one), at most `max_chunks`, in order.
pub fn text_chunks(
    lm: &LanguageModel,
    lines: &[String],
    tokens_per_chunk: usize,
    max_chunks: usize,
) -> Result<Vec<Seq>> {
    if tokens_per_chunk < 2 {
        bail!("text chunks need at least 2 tokens (got {tokens_per_chunk})");
    }
    let bos = lm
        .tokenizer
        .add_bos
        .then_some(lm.tokenizer.bos_id)
        .flatten();
    let body = tokens_per_chunk - usize::from(bos.is_some());
    let mut out = Vec::new();
    // Tokenize line by line until enough tokens are there.
    let mut toks: Vec<u32> = Vec::new();
    for line in lines {
        toks.extend(lm.tokenizer.encode(&format!("{line}\n"), false)?);
        if toks.len() >= body * max_chunks {
            break;
        }
    }
    for c in toks.chunks_exact(body).take(max_chunks) {
        let mut ids: Vec<u32> = bos.into_iter().collect();
        ids.extend_from_slice(c);
        out.push(Seq::text(ids)?);
    }
    Ok(out)
}

/// Passages of a corpus as training sequences: each passage (BOS first when the model adds
/// one) cut into pieces of at most `max_tokens` tokens, every next token a target; with the
/// pieces' ids (`<passage id>#<piece>`).
pub fn passage_seqs(
    lm: &LanguageModel,
    passages: &[crate::data::corpus::Passage],
    max_tokens: usize,
) -> Result<(Vec<Seq>, Vec<String>)> {
    let bos = lm
        .tokenizer
        .add_bos
        .then_some(lm.tokenizer.bos_id)
        .flatten();
    let body = max_tokens.saturating_sub(usize::from(bos.is_some())).max(1);
    let (mut seqs, mut ids) = (Vec::new(), Vec::new());
    for p in passages {
        let toks = lm.tokenizer.encode(&p.text, false)?;
        for (k, c) in toks.chunks(body).enumerate() {
            let piece: Vec<u32> = bos.into_iter().chain(c.iter().copied()).collect();
            if piece.len() < 2 {
                continue;
            }
            seqs.push(Seq::text(piece)?);
            ids.push(format!("{}#{k}", p.id));
        }
    }
    Ok((seqs, ids))
}

/// A set of sequences with the frozen model's values cached per sequence.
pub struct SeqSet {
    pub name: String,
    pub seqs: Vec<Seq>,
    /// Residual entering block `start_layer`, `[T_i, D]` per sequence (None when it is 0).
    start: Option<(usize, Vec<Tensor>)>,
    /// Original residual after block `rep_layer`, `[T_i, D]` per sequence.
    pub rep_ref: Option<(usize, Vec<Tensor>)>,
    /// Original sum of target log-probabilities per sequence.
    pub logp_ref: Option<Vec<f64>>,
    /// Centre the representation losses measure around, `[T_i, D]` per sequence (rows at
    /// the representation positions; KUDA's `center`).
    pub rep_centre: Option<Vec<Tensor>>,
    /// What batches are drawn from: indices into `seqs`, a sequence repeated to weigh it
    /// more (None: each sequence once). The cached values stay one per sequence.
    pool: Option<Vec<usize>>,
    /// What the cache holds: (start layer, representation layer, log-probabilities), so that
    /// asking again for the same is free (RMU reads its forget set's norms before the plan).
    made: Option<(usize, Option<usize>, bool)>,
    /// Where the targets' log-probabilities are kept once computed (NPO's reference: the only
    /// cached value that needs the whole model, so that a resumed run need not run it again).
    logp_file: Option<PathBuf>,
}

/// A batch ready to run: padded ids, the starting residual, and the rows of the sequences.
pub struct Prepared {
    pub batch: Batch,
    pub start: Option<(usize, Tensor)>,
    /// Indices (into the set) of the batch's rows.
    pub members: Vec<usize>,
}

impl SeqSet {
    pub fn new(name: &str, seqs: Vec<Seq>) -> SeqSet {
        SeqSet {
            name: name.into(),
            seqs,
            start: None,
            rep_ref: None,
            logp_ref: None,
            rep_centre: None,
            pool: None,
            made: None,
            logp_file: None,
        }
    }

    /// Keep the log-probabilities [`SeqSet::precompute`] computes in `file`, and read them from
    /// there when it holds one per sequence. The caller names the file by everything the values
    /// depend on (the model's weights, the sequences, the thread count).
    pub fn keep_logp_in(&mut self, file: PathBuf) {
        self.logp_file = Some(file);
    }

    /// A set whose batches are drawn from `pool` (indices into `seqs`, repeats allowed).
    pub fn with_pool(name: &str, seqs: Vec<Seq>, pool: Vec<usize>) -> Result<SeqSet> {
        if let Some(&i) = pool.iter().find(|&&i| i >= seqs.len()) {
            bail!(
                "{name}: pool index {i} is outside its {} sequences",
                seqs.len()
            );
        }
        Ok(SeqSet {
            pool: Some(pool),
            ..SeqSet::new(name, seqs)
        })
    }

    /// How many entries batches are drawn from.
    pub fn pool_len(&self) -> usize {
        self.pool.as_ref().map_or(self.len(), Vec::len)
    }

    /// The sequence behind entry `p` of the draw pool.
    pub fn pool_member(&self, p: usize) -> usize {
        self.pool.as_ref().map_or(p, |v| v[p])
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Right-padded batch of the given members, starting at the cached residual if any.
    pub fn prepare(&self, model: &Transformer, members: &[usize], pad: u32) -> Result<Prepared> {
        let ids: Vec<Vec<u32>> = members.iter().map(|&i| self.seqs[i].ids.clone()).collect();
        let batch = Batch::new(&ids, pad, PadSide::Right, model.device())?;
        let start = match &self.start {
            Some((l, rows)) => Some((*l, stack_padded(rows, members, batch.len())?)),
            None => None,
        };
        Ok(Prepared {
            batch,
            start,
            members: members.to_vec(),
        })
    }

    /// Cache what the frozen model gives: the residual entering `start_layer`, the residual
    /// after `rep_layer`, and the targets' log-probabilities. One pass per batch of at most
    /// `bs` sequences of similar length (right padding leaves the real positions as they are
    /// alone, so the batches only decide how little padding is computed).
    pub fn precompute(
        &mut self,
        model: &Transformer,
        pad: u32,
        start_layer: usize,
        rep_layer: Option<usize>,
        logp: bool,
        bs: usize,
    ) -> Result<()> {
        let what = (start_layer, rep_layer, logp);
        if self.made == Some(what) {
            return Ok(());
        }
        let kept = match (&self.logp_file, logp) {
            (Some(f), true) => read_kept_logp(f, self.seqs.len()),
            _ => None,
        };
        let logp_run = logp && kept.is_none();
        if !logp_run && start_layer == 0 && rep_layer.is_none() {
            // Nothing to run the model for (log-probabilities, if asked for, were kept).
            self.start = None;
            self.rep_ref = None;
            self.logp_ref = kept;
            self.made = Some(what);
            return Ok(());
        }
        let ids: Vec<Vec<u32>> = self.seqs.iter().map(|s| s.ids.clone()).collect();
        let seqs = &self.seqs;
        let rows = crate::model::scoring::bucketed(&ids, bs, |chunk, chunk_ids| {
            let batch = Batch::new(chunk_ids, pad, PadSide::Right, model.device())?;
            let mut hooks = Hooks::new();
            if start_layer > 0 {
                hooks = hooks.cache(HookPoint::ResidPre(start_layer));
            }
            if let Some(r) = rep_layer {
                hooks = hooks.cache(HookPoint::ResidPost(r));
            }
            let stop = if logp_run {
                None
            } else {
                Some(rep_layer.map_or(start_layer, |r| r + 1).max(start_layer))
            };
            let out = model.run(
                &batch,
                &RunOpts {
                    hooks: Some(&hooks),
                    stop_at: stop.filter(|&s| s > 0),
                    logits: LogitsAt::None,
                    ..Default::default()
                },
            )?;
            // Stopped right at the start layer, the run's residual is the one entering it.
            let start_resid = match out.cache.get(&HookPoint::ResidPre(start_layer)) {
                Some(t) => t,
                None => &out.resid,
            };
            let lps = if logp_run {
                let targets = target_ids(seqs, chunk);
                let rows = target_rows(seqs, chunk);
                let lp = resid_logprobs(model, &out.resid, &rows, &targets, false)?
                    .0
                    .lp;
                Some(per_seq_sums(seqs, chunk, &lp))
            } else {
                None
            };
            let mut got = Vec::with_capacity(chunk.len());
            for (k, &i) in chunk.iter().enumerate() {
                let n = seqs[i].ids.len();
                let start = if start_layer > 0 {
                    Some(start_resid.get(k)?.narrow(0, 0, n)?)
                } else {
                    None
                };
                let rep = match rep_layer {
                    Some(r) => Some(
                        out.cache[&HookPoint::ResidPost(r)]
                            .get(k)?
                            .narrow(0, 0, n)?,
                    ),
                    None => None,
                };
                got.push((start, rep, lps.as_ref().map(|v| v[k])));
            }
            Ok(got)
        })?;
        let (mut starts, mut reps, mut lps) = (Vec::new(), Vec::new(), Vec::new());
        for (start, rep, lp) in rows {
            starts.extend(start);
            reps.extend(rep);
            lps.extend(lp);
        }
        self.start = (start_layer > 0).then_some((start_layer, starts));
        self.rep_ref = rep_layer.map(|r| (r, reps));
        if let (Some(f), true) = (&self.logp_file, logp_run) {
            crate::util::write_json(f, &lps).with_context(|| {
                format!("keeping the reference log-probabilities in {}", f.display())
            })?;
        }
        self.logp_ref = if logp { kept.or(Some(lps)) } else { None };
        self.made = Some(what);
        Ok(())
    }
}

/// The log-probabilities kept in `file` when it holds `n` of them (none otherwise: they are
/// computed again).
fn read_kept_logp(file: &Path, n: usize) -> Option<Vec<f64>> {
    let text = std::fs::read(file).ok()?;
    let v: Vec<f64> = serde_json::from_slice(&text).ok()?;
    if v.len() != n {
        eprintln!(
            "note: {} holds {} log-probabilities for {n} sequences; computing them again",
            file.display(),
            v.len()
        );
        return None;
    }
    eprintln!("reference log-probabilities read from {}", file.display());
    Some(v)
}

/// `LogitsAt::Rows` entries for the targets of the members, in order.
pub fn target_rows(seqs: &[Seq], members: &[usize]) -> Vec<(usize, usize)> {
    members
        .iter()
        .enumerate()
        .flat_map(|(k, &i)| seqs[i].targets.iter().map(move |&(p, _)| (k, p)))
        .collect()
}

/// Target token of every row of [`target_rows`].
pub fn target_ids(seqs: &[Seq], members: &[usize]) -> Vec<u32> {
    members
        .iter()
        .flat_map(|&i| seqs[i].targets.iter().map(|&(_, t)| t))
        .collect()
}

/// Sum of per-row values over each member's target rows.
pub fn per_seq_sums(seqs: &[Seq], members: &[usize], rows: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(members.len());
    let mut at = 0;
    for &i in members {
        let n = seqs[i].targets.len();
        out.push(rows[at..at + n].iter().sum());
        at += n;
    }
    out
}

/// Log-probabilities of `targets` under `logits` `[N, V]`, and the softmax.
pub fn logprobs_of(logits: &Tensor, targets: &[u32]) -> Result<(Vec<f64>, Tensor)> {
    let lsm = crate::model::ops::log_softmax_last(&logits.to_dtype(DType::F32)?)?;
    let idx = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), logits.device())?;
    let lp: Vec<f32> = lsm.gather(&idx, 1)?.flatten_all()?.to_vec1()?;
    Ok((lp.into_iter().map(f64::from).collect(), lsm.exp()?))
}

/// Stack `[T_i, D]` rows of the members, zero-padded on the right to `t`: `[B, t, D]`.
fn stack_padded(rows: &[Tensor], members: &[usize], t: usize) -> Result<Tensor> {
    let mut v = Vec::with_capacity(members.len());
    for &i in members {
        let r = &rows[i];
        let n = r.dim(0)?;
        v.push(if n < t {
            Tensor::cat(
                &[
                    r.clone(),
                    Tensor::zeros((t - n, r.dim(1)?), r.dtype(), r.device())?,
                ],
                0,
            )?
        } else {
            r.clone()
        });
    }
    Ok(Tensor::stack(&v, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fact of 8 prompt tokens whose subject is tokens 3..5.
    fn fact() -> Seq {
        Seq {
            ids: (0..9).collect(),
            targets: vec![(7, 9)],
            rep_positions: (3..8).collect(),
            subject: Some(3..5),
            rivals: vec![],
        }
    }

    /// Sequences of mixed lengths cached in length buckets give each sequence what it gives
    /// alone, in the set's order.
    #[test]
    fn bucketed_precompute_equals_one_sequence_at_a_time_and_is_made_once() {
        let model = crate::model::transformer::tests::tiny_model(crate::model::Arch::Llama);
        let lens = [9usize, 3, 17, 4, 12, 3, 30, 8];
        let seqs: Vec<Seq> = lens
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                Seq::text((0..n as u32).map(|i| 1 + (i * 7 + k as u32) % 20).collect()).unwrap()
            })
            .collect();
        let mut together = SeqSet::new("t", seqs.clone());
        together.precompute(&model, 0, 1, Some(1), true, 4).unwrap();
        let mut alone = SeqSet::new("a", seqs);
        alone.precompute(&model, 0, 1, Some(1), true, 1).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f64 {
            assert_eq!(a.dims(), b.dims());
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            d.to_dtype(DType::F64).unwrap().to_scalar().unwrap()
        };
        let (t, a) = (
            &together.start.as_ref().unwrap().1,
            &alone.start.as_ref().unwrap().1,
        );
        let (tr, ar) = (
            &together.rep_ref.as_ref().unwrap().1,
            &alone.rep_ref.as_ref().unwrap().1,
        );
        for (k, &n) in lens.iter().enumerate() {
            assert_eq!(t[k].dims()[0], n);
            assert!(diff(&t[k], &a[k]) < 1e-5, "start of sequence {k}");
            assert!(
                diff(&tr[k], &ar[k]) < 1e-5,
                "representation of sequence {k}"
            );
            let (lt, la) = (
                together.logp_ref.as_ref().unwrap()[k],
                alone.logp_ref.as_ref().unwrap()[k],
            );
            assert!(
                (lt - la).abs() < 1e-4 * la.abs().max(1.0),
                "log-probability of sequence {k}: {lt} vs {la}"
            );
        }
        // The same again is not computed again (a changed reference stays); something else is.
        let marked = (&tr[0] + 1.0).unwrap();
        together.rep_ref.as_mut().unwrap().1[0] = marked.clone();
        together.precompute(&model, 0, 1, Some(1), true, 4).unwrap();
        assert_eq!(diff(&together.rep_ref.as_ref().unwrap().1[0], &marked), 0.0);
        together
            .precompute(&model, 0, 1, Some(1), false, 4)
            .unwrap();
        assert!(together.logp_ref.is_none());
        assert!(diff(&together.rep_ref.as_ref().unwrap().1[0], &ar[0]) < 1e-5);
    }

    #[test]
    fn kept_log_probabilities_are_read_back_instead_of_computed() {
        let model = crate::model::transformer::tests::tiny_model(crate::model::Arch::Llama);
        let seqs: Vec<Seq> = [5usize, 9, 3]
            .iter()
            .map(|&n| Seq::text((1..=n as u32).collect()).unwrap())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("checkpoint/logp.json");
        let mut first = SeqSet::new("f", seqs.clone());
        first.keep_logp_in(file.clone());
        first.precompute(&model, 0, 1, None, true, 4).unwrap();
        let computed = first.logp_ref.clone().unwrap();
        let kept: Vec<f64> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(kept, computed, "written bit for bit");
        // Marked values in the file are what a later run reads (the model is not run for
        // them), while its start residuals are computed as before.
        let marked: Vec<f64> = computed.iter().map(|v| v - 1.0).collect();
        std::fs::write(&file, serde_json::to_vec(&marked).unwrap()).unwrap();
        let mut again = SeqSet::new("f", seqs.clone());
        again.keep_logp_in(file.clone());
        again.precompute(&model, 0, 1, None, true, 4).unwrap();
        assert_eq!(again.logp_ref.as_ref().unwrap(), &marked);
        let (a, b) = (
            &first.start.as_ref().unwrap().1,
            &again.start.as_ref().unwrap().1,
        );
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(
                d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(),
                0.0
            );
        }
        // A file for other sequences (another count) is not used.
        let mut other = SeqSet::new("f", seqs[..2].to_vec());
        other.keep_logp_in(file);
        other.precompute(&model, 0, 1, None, true, 4).unwrap();
        let got = other.logp_ref.as_ref().unwrap();
        assert_eq!(got.len(), 2);
        for (g, c) in got.iter().zip(&computed) {
            assert!((g - c).abs() <= 1e-9 * c.abs().max(1.0), "{g} vs {c}");
        }
    }

    #[test]
    fn a_position_is_placed_relative_to_the_subject() {
        let f = fact();
        let places: Vec<_> = (0..9).map(|p| f.place(p).unwrap()).collect();
        use Place::*;
        assert_eq!(
            places,
            vec![
                Before,
                Before,
                Before,
                Subject,
                LastSubject,
                After(0),
                After(1),
                After(2),
                After(3)
            ]
        );
        assert_eq!(Seq::text((0..6).collect()).unwrap().place(2), None);
    }

    #[test]
    fn forget_positions_cut_a_fact_and_leave_text_alone() {
        let at = |w| fact().at_forget_positions(w).rep_positions;
        assert_eq!(at(ForgetPositions::Prompt), vec![3, 4, 5, 6, 7]);
        assert_eq!(at(ForgetPositions::Subject), vec![3, 4]);
        assert_eq!(at(ForgetPositions::LastSubject), vec![4]);
        assert_eq!(at(ForgetPositions::Named), vec![4, 5, 6, 7]);
        let text = Seq::text((0..6).collect()).unwrap();
        let cut = text
            .clone()
            .at_forget_positions(ForgetPositions::LastSubject);
        assert_eq!(cut.rep_positions, text.rep_positions);
        // The targets never move.
        assert_eq!(
            fact().at_forget_positions(ForgetPositions::Subject).targets,
            vec![(7, 9)]
        );
    }

    /// `sink = "drop"` leaves each sequence's first row out of the representation rows, so
    /// the scales RMU and the retain MSEs read no longer count it, and the sink diagnostic has
    /// nothing left to report; a sequence left with no row at all is an error, not an empty
    /// loss.
    #[test]
    fn dropping_the_sink_leaves_the_first_rows_out_of_the_scales() {
        use crate::forget::refs::{first_row_ratio, mean_ref_norm};
        let model = crate::model::transformer::tests::tiny_model(crate::model::Arch::Llama);
        let seqs: Vec<Seq> = [9usize, 5, 12]
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                Seq::text((0..n as u32).map(|i| 1 + (i * 5 + k as u32) % 20).collect()).unwrap()
            })
            .collect();
        let set = |sink: Sink| {
            let picked = seqs.iter().map(|s| s.clone().with_sink(sink).unwrap());
            let mut set = SeqSet::new("s", picked.collect());
            set.precompute(&model, 0, 1, Some(1), false, 4).unwrap();
            set
        };
        let (kept, dropped) = (set(Sink::Keep), set(Sink::Drop));
        let (mut first, mut others) = (Vec::new(), Vec::new());
        for r in &kept.rep_ref.as_ref().unwrap().1 {
            let r = r.to_dtype(DType::F64).unwrap();
            let norms: Vec<f64> = r
                .sqr()
                .unwrap()
                .sum(1)
                .unwrap()
                .sqrt()
                .unwrap()
                .to_vec1()
                .unwrap();
            first.push(norms[0]);
            others.extend_from_slice(&norms[1..]);
        }
        for (s, d) in kept.seqs.iter().zip(&dropped.seqs) {
            assert_eq!(s.rep_positions.len(), s.ids.len());
            assert_eq!(d.rep_positions, (1..d.ids.len()).collect::<Vec<_>>());
        }
        let want = others.iter().sum::<f64>() / others.len() as f64;
        let got = mean_ref_norm(&dropped).unwrap();
        assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
        let all =
            (want * others.len() as f64 + first.iter().sum::<f64>()) / (others.len() + 3) as f64;
        let got = mean_ref_norm(&kept).unwrap();
        assert!((got - all).abs() < 1e-6 * all, "{got} vs {all}");
        assert_eq!(first_row_ratio(&dropped).unwrap(), None);
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ratio = first_row_ratio(&kept).unwrap().unwrap();
        let want = median(first) / median(others);
        assert!((ratio - want).abs() < 1e-9 * want, "{ratio} vs {want}");

        let mut lone = Seq::text(vec![3, 4, 5]).unwrap();
        lone.rep_positions = vec![0];
        assert!(lone.clone().with_sink(Sink::Keep).is_ok());
        let err = lone.with_sink(Sink::Drop).unwrap_err().to_string();
        assert!(err.contains("sink = \"drop\""), "{err}");
    }
}
