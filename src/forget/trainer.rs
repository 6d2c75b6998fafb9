//! The trainer: updates only the parameters of a localization, one weighted sum of loss terms
//! per step (each term one forward + backward on its own data, starting from the cached
//! residual below the first updated layer, stopping at the representation layer when the term
//! needs nothing above it), optional null-space projection, AdamW with schedule and clipping,
//! a JSONL log line per step, checkpoints, exact resume, and a clean stop on NaN/divergence
//! that keeps the last good weights.

use crate::forget::angles::{gradient_angles, GradAngles};
use crate::forget::checkpoint::{
    checkpoint_due, param_map, restore_state, trainable_bytes, BeforeUpdate, Checkpoints,
    RemovedOnDrop, Undo, RETAIN_FIRST_KEY, UNDO_IN_MEMORY_BYTES,
};
use crate::forget::config::ForgetConfig;
use crate::forget::guard::Guard;
use crate::forget::nullspace::Projectors;
use crate::forget::optim::{global_norm, Optimizer};
use crate::forget::seqs::{logprobs_of, SeqSet, Sink};
use crate::forget::terms::{
    logit_loss, logits_grad, repr_loss, repr_loss_scaled, repr_scale, LogitLoss, ReprLoss,
};
use crate::model::head_logprobs::{resid_logprobs, scale_rows};
use crate::model::{Checkpoint, LogitsAt, RunOpts, Transformer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Which data a term trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSet {
    Forget,
    Retain,
    Text,
}

/// What a term computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    Logit(LogitLoss),
    /// A representation loss at the plan's representation layer; `sample` = share of the
    /// representation positions drawn each step (1 = all).
    Repr {
        loss: ReprLoss,
        sample: f64,
    },
}

/// One weighted term of the objective.
#[derive(Clone, Debug)]
pub struct Term {
    pub name: String,
    pub weight: f64,
    pub data: DataSet,
    pub loss: Loss,
    /// Project this term's gradient onto the retain null space.
    pub project: bool,
}

/// What KUDA's null-space projection acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectAt {
    /// The optimizer's whole update (every term's part of it).
    Update,
    /// The projected terms' gradients, before they enter the optimizer (its moments are
    /// shared by every term, so its per-entry scaling moves the update out of the subspace).
    Gradient,
    /// The projected terms keep their own Adam moments, and their Adam update is projected;
    /// the other terms' update is not.
    OwnMoments,
}

/// Prefix of the gradient (and Adam state) entries of the projected terms under
/// [`ProjectAt::OwnMoments`].
pub const OWN_MOMENTS: &str = "projected-terms/";

/// Everything one training run needs.
pub struct Plan {
    pub terms: Vec<Term>,
    pub forget: SeqSet,
    pub retain: SeqSet,
    pub text: SeqSet,
    /// Parameters updated (HF names).
    pub params: Vec<String>,
    /// Layer whose output the representation losses read.
    pub rep_layer: Option<usize>,
    pub projectors: Projectors,
    /// What the projectors act on (nothing is projected without projectors).
    pub project_at: ProjectAt,
    pub pad: u32,
    /// Next-token targets sampled per text chunk for cross-entropy (0 = all).
    pub text_rows: usize,
    /// General text whose perplexity is read every `ppl_every` steps (none: not read).
    pub ppl_probe: Option<PplProbe>,
}

/// Token ids of general text that no term trains on, with the BOS token the model puts
/// before each perplexity window (if any).
#[derive(Clone, Debug)]
pub struct PplProbe {
    pub bos: Option<u32>,
    pub ids: Vec<u32>,
}

impl Plan {
    fn set(&self, d: DataSet) -> &SeqSet {
        match d {
            DataSet::Forget => &self.forget,
            DataSet::Retain => &self.retain,
            DataSet::Text => &self.text,
        }
    }

    fn batch_size(d: DataSet, cfg: &ForgetConfig) -> usize {
        match d {
            DataSet::Forget => cfg.batch_size,
            DataSet::Retain => cfg.retain_batch_size,
            DataSet::Text => cfg.text_batch_size,
        }
    }

    /// Lowest updated layer (layers below it are cached).
    pub fn first_layer(&self) -> usize {
        first_layer(&self.params)
    }

    /// Cache the frozen model's values each set needs; drop terms whose data is empty.
    pub fn precompute(&mut self, model: &Transformer, bs: usize) -> Result<()> {
        let first = self.first_layer();
        self.terms.retain(|t| t.weight > 0.0);
        // Without retain facts (a task whose every known fact is forgotten) or general text,
        // the terms on them are dropped, with a word; without forget data there is no run.
        for (d, empty) in [
            (DataSet::Retain, self.retain.is_empty()),
            (DataSet::Text, self.text.is_empty()),
        ] {
            if empty && self.terms.iter().any(|t| t.data == d) {
                let names: Vec<String> = self
                    .terms
                    .iter()
                    .filter(|t| t.data == d)
                    .map(|t| t.name.clone())
                    .collect();
                eprintln!(
                    "note: no {d:?} data, so term(s) {} are left out",
                    names.join(", ")
                );
                self.terms.retain(|t| t.data != d);
            }
        }
        for d in [DataSet::Forget, DataSet::Retain, DataSet::Text] {
            let uses: Vec<&Term> = self.terms.iter().filter(|t| t.data == d).collect();
            if uses.is_empty() {
                continue;
            }
            let rep = uses
                .iter()
                .any(|t| matches!(t.loss, Loss::Repr { .. }))
                .then_some(self.rep_layer)
                .flatten();
            if uses.iter().any(|t| matches!(t.loss, Loss::Repr { .. })) && rep.is_none() {
                bail!("a representation loss needs a representation layer");
            }
            let logp = uses
                .iter()
                .any(|t| matches!(t.loss, Loss::Logit(LogitLoss::Npo { .. })));
            let pad = self.pad;
            let set = match d {
                DataSet::Forget => &mut self.forget,
                DataSet::Retain => &mut self.retain,
                DataSet::Text => &mut self.text,
            };
            if set.is_empty() {
                bail!(
                    "term(s) {} need {d:?} data but the set is empty",
                    uses.iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            set.precompute(model, pad, first, rep, logp, bs)?;
        }
        Ok(())
    }
}

/// Lowest block holding one of `params` (0 when none is in a block).
pub fn first_layer(params: &[String]) -> usize {
    params.iter().filter_map(|p| layer_of(p)).min().unwrap_or(0)
}

/// Block index of a parameter name (`model.layers.{l}.…`).
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub steps_done: usize,
    pub resumed_from: Option<usize>,
    pub final_losses: BTreeMap<String, f64>,
    pub seconds: f64,
    /// Forget vs retain gradient angles at the first and the last step's weights.
    pub gradient_angles: Option<AnglesAtEnds>,
    /// How far each forget fact's rows moved (representation losses only), in the order of
    /// the plan's forget facts.
    pub forget_moves: Option<Vec<RowMove>>,
    /// The null-space projectors' pass shares (see [`crate::forget::nullspace::PassShare`]).
    pub projector_pass: BTreeMap<String, crate::forget::nullspace::PassShare>,
    /// The probe text's perplexity with the final weights (the log holds the readings before
    /// every `ppl_every`-th step); none without a probe or with `ppl_every = 0`.
    pub text_ppl_end: Option<f64>,
}

/// [`GradAngles`] at the weights the run started from and those it ended with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AnglesAtEnds {
    /// Step the run started from (0, or the step a resumed run restarted at).
    pub start_step: usize,
    pub start: GradAngles,
    pub end: GradAngles,
}

/// Members of `d` (indices of its sequences) drawn for step `step`, micro-batch `micro`.
pub(crate) fn draw_members(
    plan: &Plan,
    cfg: &ForgetConfig,
    d: DataSet,
    step: usize,
    micro: usize,
) -> Vec<usize> {
    let set = plan.set(d);
    let picked = draw(
        set.pool_len(),
        Plan::batch_size(d, cfg),
        cfg.seed,
        step,
        micro,
        d,
    );
    picked.into_iter().map(|p| set.pool_member(p)).collect()
}

/// Members of `d` for step `step`, micro-batch `micro`: a seeded draw without replacement
/// (everything when the set is no larger than the batch).
fn draw(len: usize, bs: usize, seed: u64, step: usize, micro: usize, d: DataSet) -> Vec<usize> {
    let mut all: Vec<usize> = (0..len).collect();
    if len <= bs {
        return all;
    }
    let s = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((micro as u64) << 48)
        ^ ((d as u64) << 56);
    all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(s));
    let mut v = all[..bs].to_vec();
    v.sort();
    v
}

/// Loss and parameter gradients of one term on a batch. `focus` (one weight per fact of the
/// forget set, KUDA's focus) weighs the rows of a representation loss on the forget facts.
pub(crate) fn term_grads(
    model: &Transformer,
    plan: &Plan,
    term: &Term,
    members: &[usize],
    rng: &mut rand::rngs::StdRng,
    focus: Option<&[f64]>,
) -> Result<(f64, BTreeMap<String, Tensor>)> {
    term_grads_in_parts(model, plan, term, members, rng, focus, REPR_PART_TOKENS)
}

/// [`term_grads`], the term's batch run in parts of at most `part_tokens` padded tokens.
fn term_grads_in_parts(
    model: &Transformer,
    plan: &Plan,
    term: &Term,
    members: &[usize],
    rng: &mut rand::rngs::StdRng,
    focus: Option<&[f64]>,
    part_tokens: usize,
) -> Result<(f64, BTreeMap<String, Tensor>)> {
    let set = plan.set(term.data);
    match &term.loss {
        Loss::Logit(kind) => {
            // Text chunks: a seeded sample of their next-token targets (the LM head over the
            // whole vocabulary is the expensive part of a step).
            let picked: Vec<Vec<(usize, u32)>> = members
                .iter()
                .map(|&i| {
                    let mut t = set.seqs[i].targets.clone();
                    if term.data == DataSet::Text && plan.text_rows > 0 && t.len() > plan.text_rows
                    {
                        t.shuffle(rng);
                        t.truncate(plan.text_rows);
                        t.sort();
                    }
                    t
                })
                .collect();
            // The batch a part at a time; each part's loss is a mean over its own rows (or
            // sequences), weighted by its share of the batch's, so that the parts add up to
            // the whole batch's loss and gradient.
            let n_rows: usize = picked.iter().map(Vec::len).sum();
            let lens: Vec<usize> = members.iter().map(|&i| set.seqs[i].ids.len()).collect();
            let (mut total, mut grads) = (0.0, BTreeMap::new());
            for part in token_parts(&lens, part_tokens) {
                let share = if kind.per_sequence() {
                    part.len() as f64 / members.len() as f64
                } else {
                    part.iter().map(|&k| picked[k].len()).sum::<usize>() as f64 / n_rows as f64
                };
                if share == 0.0 {
                    continue;
                }
                let pm: Vec<usize> = part.iter().map(|&k| members[k]).collect();
                let pp: Vec<&Vec<(usize, u32)>> = part.iter().map(|&k| &picked[k]).collect();
                let (l, g) = logit_part(model, plan, set, *kind, &pm, &pp)?;
                total += share * l;
                add_into(&mut grads, g, share)?;
            }
            Ok((total, grads))
        }
        Loss::Repr { loss, sample } => {
            let positions: Vec<Vec<usize>> = members
                .iter()
                .map(|&i| {
                    let s = &set.seqs[i];
                    let mut pos: Vec<usize> = if term.data == DataSet::Forget {
                        s.rep_positions.clone()
                    } else {
                        (0..s.ids.len()).collect()
                    };
                    if *sample < 1.0 {
                        let n = ((pos.len() as f64 * sample).round() as usize).max(1);
                        pos.shuffle(rng);
                        pos.truncate(n);
                        pos.sort();
                    }
                    pos
                })
                .collect();
            let row_weights: Option<Vec<f64>> =
                focus.filter(|_| term.data == DataSet::Forget).map(|w| {
                    members
                        .iter()
                        .zip(&positions)
                        .flat_map(|(&i, pos)| std::iter::repeat_n(w[i], pos.len()))
                        .collect()
                });
            let firsts: Vec<bool> = positions.iter().flatten().map(|&p| p == 0).collect();
            // The whole batch's scale, then its members a part at a time (a bounded number of
            // tokens through the layers' backward pass); the parts' losses and gradients add
            // up to the whole batch's.
            let (h0_all, _) = batch_refs(set, members, &positions, model.device())?;
            let scale = repr_scale(loss, &h0_all, Some(&firsts))?;
            drop(h0_all);
            let lens: Vec<usize> = members.iter().map(|&i| set.seqs[i].ids.len()).collect();
            let mut total = 0.0;
            let mut grads = BTreeMap::new();
            // Each member's first row in the batch's row order.
            let mut at = 0;
            let starts: Vec<usize> = positions
                .iter()
                .map(|p| {
                    let s = at;
                    at += p.len();
                    s
                })
                .collect();
            for part in token_parts(&lens, part_tokens) {
                // Rows of this part in the batch's row order.
                let mut row_of = Vec::with_capacity(part.len());
                for &k in &part {
                    row_of.extend(starts[k]..starts[k] + positions[k].len());
                }
                let pm: Vec<usize> = part.iter().map(|&k| members[k]).collect();
                let pp: Vec<Vec<usize>> = part.iter().map(|&k| positions[k].clone()).collect();
                let prep = set.prepare(model, &pm, plan.pad)?;
                let (out, flat, idx, h, h0) =
                    repr_rows(model, plan.rep_layer, set, &prep, &pp, true)?;
                let (b, t, d) = out.resid.dims3()?;
                let w: Option<Vec<f64>> = row_weights
                    .as_ref()
                    .map(|w| row_of.iter().map(|&r| w[r]).collect());
                let f: Vec<bool> = row_of.iter().map(|&r| firsts[r]).collect();
                let (l, dh) = repr_loss_scaled(loss, &h, &h0, w.as_deref(), Some(&f), scale)?;
                let dres = flat
                    .zeros_like()?
                    .index_add(&idx, &dh.to_dtype(flat.dtype())?, 0)?
                    .reshape((b, t, d))?;
                let g = model.backward(&out, None, Some(&dres))?;
                drop(out);
                total += l;
                add_into(&mut grads, g.params, 1.0)?;
            }
            Ok((total, grads))
        }
    }
}

/// A logit loss and its parameter gradients on some members of a set, with their picked
/// (position, target) rows.
fn logit_part(
    model: &Transformer,
    plan: &Plan,
    set: &SeqSet,
    kind: LogitLoss,
    members: &[usize],
    picked: &[&Vec<(usize, u32)>],
) -> Result<(f64, BTreeMap<String, Tensor>)> {
    let prep = set.prepare(model, members, plan.pad)?;
    let rows: Vec<(usize, usize)> = picked
        .iter()
        .enumerate()
        .flat_map(|(k, t)| t.iter().map(move |&(p, _)| (k, p)))
        .collect();
    let targets: Vec<u32> = picked.iter().copied().flatten().map(|&(_, t)| t).collect();
    let per: Vec<usize> = picked.iter().map(|t| t.len()).collect();
    let reference: Option<Vec<f64>> = set
        .logp_ref
        .as_ref()
        .map(|r| members.iter().map(|&i| r[i]).collect());
    // A frozen head: log-probabilities and their row gradients a chunk of rows at a
    // time (no [rows, vocabulary] matrix); a trained head needs the logits' gradient.
    let head_frozen = !model.head_is_trainable();
    let out = model.run(
        &prep.batch,
        &RunOpts {
            start: prep.start.clone(),
            logits: if head_frozen {
                LogitsAt::None
            } else {
                LogitsAt::Rows(rows.clone())
            },
            grad: true,
            checkpoint: Checkpoint::Auto,
            ..Default::default()
        },
    )?;
    let (loss, g) = if head_frozen {
        let (tl, at) = resid_logprobs(model, &out.resid, &rows, &targets, true)?;
        let (loss, c) = logit_loss(kind, &tl.lp, &per, reference.as_deref())?;
        let d_rows = scale_rows(tl.d_rows.as_ref().expect("asked"), &c)?;
        (
            loss,
            model.backward(&out, None, Some(&at.scatter(&d_rows)?))?,
        )
    } else {
        let logits = out.logits.as_ref().expect("asked for logits");
        let (lp, sm) = logprobs_of(logits, &targets)?;
        let (loss, c) = logit_loss(kind, &lp, &per, reference.as_deref())?;
        let dl = logits_grad(&c, &targets, &sm)?.to_dtype(logits.dtype())?;
        (loss, model.backward(&out, Some(&dl), None)?)
    };
    Ok((loss, g.params))
}

/// Tokens (sequences × their longest length) at most in one part of a representation term's
/// batch: on a 1.5B model, 32 passages of 256 tokens through three blocks' backward pass held
/// several gigabytes of activations at once.
pub const REPR_PART_TOKENS: usize = 2048;

/// The members (indices into `lens`) in parts of at most `budget` padded tokens each, members
/// of similar length together; one part in the given order when the whole batch fits (a
/// sequence longer than the budget is a part of its own).
fn token_parts(lens: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let longest = lens.iter().copied().max().unwrap_or(0);
    if lens.len() * longest <= budget {
        return vec![(0..lens.len()).collect()];
    }
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(lens[k]));
    let mut parts: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for k in order {
        // Sorted longest first: the part's longest is its first.
        let width = cur.first().map_or(lens[k], |&f| lens[f]);
        if !cur.is_empty() && (cur.len() + 1) * width > budget {
            parts.push(std::mem::take(&mut cur));
        }
        cur.push(k);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    for p in &mut parts {
        p.sort();
    }
    parts
}

/// The frozen references h₀ of `members` at `positions` (relative to the set's centre when it
/// has one), in row order, with the centre rows (empty without a centre).
fn batch_refs(
    set: &SeqSet,
    members: &[usize],
    positions: &[Vec<usize>],
    device: &candle_core::Device,
) -> Result<(Tensor, Vec<Tensor>)> {
    let (_, refs) = set
        .rep_ref
        .as_ref()
        .context("reference residuals not computed")?;
    let mut h0_rows = Vec::new();
    let mut centre_rows = Vec::new();
    for (&i, pos) in members.iter().zip(positions) {
        let pi = Tensor::from_vec(
            pos.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            pos.len(),
            device,
        )?;
        h0_rows.push(refs[i].index_select(&pi, 0)?);
        if let Some(c) = &set.rep_centre {
            centre_rows.push(c[i].index_select(&pi, 0)?);
        }
    }
    let mut h0 = Tensor::cat(&h0_rows, 0)?;
    if !centre_rows.is_empty() {
        let c = Tensor::cat(&centre_rows, 0)?;
        h0 = h0.broadcast_sub(&c.to_dtype(h0.dtype())?)?;
        return Ok((h0, vec![c]));
    }
    Ok((h0, vec![]))
}

/// Run a prepared batch up to the representation layer and gather the rows at `positions`
/// (per member) with their frozen references: (run, flat residual, row index, h, h₀) — both
/// taken relative to the set's centre when it has one.
fn repr_rows(
    model: &Transformer,
    rep_layer: Option<usize>,
    set: &SeqSet,
    prep: &crate::forget::seqs::Prepared,
    positions: &[Vec<usize>],
    grad: bool,
) -> Result<(crate::model::RunOutput, Tensor, Tensor, Tensor, Tensor)> {
    let rep = rep_layer.context("representation loss without a layer")?;
    let (refl, _) = set
        .rep_ref
        .as_ref()
        .context("reference residuals not computed")?;
    if *refl != rep {
        bail!("reference residuals were computed at layer {refl}, the loss reads layer {rep}");
    }
    let out = model.run(
        &prep.batch,
        &RunOpts {
            start: prep.start.clone(),
            stop_at: Some(rep + 1),
            logits: LogitsAt::None,
            grad,
            checkpoint: Checkpoint::Auto,
            ..Default::default()
        },
    )?;
    let (b, t, d) = out.resid.dims3()?;
    let flat_idx: Vec<u32> = positions
        .iter()
        .enumerate()
        .flat_map(|(k, pos)| pos.iter().map(move |&p| (k * t + p) as u32))
        .collect();
    let n = flat_idx.len();
    let idx = Tensor::from_vec(flat_idx, n, model.device())?;
    let flat = out.resid.reshape((b * t, d))?;
    let mut h = flat.index_select(&idx, 0)?;
    let (h0, centre) = batch_refs(set, &prep.members, positions, model.device())?;
    if let Some(c) = centre.first() {
        // d(h − c)/dh = I: a centre moves the rows, not the chain rule.
        h = h.broadcast_sub(&c.to_dtype(h.dtype())?)?;
    }
    Ok((out, flat, idx, h, h0))
}

/// Retain drift: ‖h − h₀‖²/mean‖h₀‖² at the representation layer over every token of a set
/// (whose references were precomputed with the original model).
pub fn repr_drift(
    model: &Transformer,
    rep_layer: Option<usize>,
    pad: u32,
    set: &SeqSet,
) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    chunk_rows(
        model,
        rep_layer,
        pad,
        set,
        |s| (0..s.ids.len()).collect(),
        |chunk, _, h, h0| {
            let (l, _) = repr_loss(&ReprLoss::RefMse { sink: Sink::Keep }, &h, &h0)?;
            sum += l * chunk.len() as f64;
            n += chunk.len();
            Ok(())
        },
    )?;
    Ok(sum / n.max(1) as f64)
}

/// Run every member of a set, 16 at a time, up to the representation layer (frozen weights
/// as they are, no gradient) and hand each chunk, its rows' positions (`positions` of each
/// member) and the rows h and h₀ (relative to the set's centre) to `f`.
fn chunk_rows(
    model: &Transformer,
    rep_layer: Option<usize>,
    pad: u32,
    set: &SeqSet,
    positions: impl Fn(&crate::forget::seqs::Seq) -> Vec<usize>,
    mut f: impl FnMut(&[usize], &[Vec<usize>], Tensor, Tensor) -> Result<()>,
) -> Result<()> {
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(16) {
        let prep = set.prepare(model, chunk, pad)?;
        let pos: Vec<Vec<usize>> = chunk.iter().map(|&i| positions(&set.seqs[i])).collect();
        let (_, _, _, h, h0) = repr_rows(model, rep_layer, set, &prep, &pos, false)?;
        f(chunk, &pos, h, h0)?;
    }
    Ok(())
}

/// How far one forget fact's rows have moved at the representation layer, read the way
/// KUDA's deviation reads them (relative to the centre when the run has one).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RowMove {
    /// Mean cos(h − c, h₀ − c) over the fact's representation rows (1 = not moved, −1 =
    /// reflected through the centre).
    pub cos_mean: f64,
    /// The same at the last prompt token, where the answer is read.
    pub cos_last: f64,
    /// |h − c| / |h₀ − c| at the last prompt token.
    pub norm_last: f64,
}

/// [`RowMove`] of every forget fact at the model's current weights, in the order of
/// `plan.forget`; `None` when no term reads the forget facts' representation.
pub fn forget_moves(model: &Transformer, plan: &Plan) -> Result<Option<Vec<RowMove>>> {
    let reads_rows = plan
        .terms
        .iter()
        .any(|t| t.data == DataSet::Forget && matches!(t.loss, Loss::Repr { .. }));
    if !reads_rows || plan.forget.rep_ref.is_none() {
        return Ok(None);
    }
    let set = &plan.forget;
    let mut moves = Vec::with_capacity(set.len());
    let rep = |s: &crate::forget::seqs::Seq| s.rep_positions.clone();
    chunk_rows(
        model,
        plan.rep_layer,
        plan.pad,
        set,
        rep,
        |chunk, positions, h, h0| {
            let (h, h0) = (h.to_dtype(DType::F64)?, h0.to_dtype(DType::F64)?);
            let dot: Vec<f64> = (&h * &h0)?.sum(1)?.to_vec1()?;
            let nh: Vec<f64> = h.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            let n0: Vec<f64> = h0.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            let mut at = 0;
            for (pos, &i) in positions.iter().zip(chunk) {
                if pos.is_empty() {
                    bail!("forget sequence {i} has no representation rows");
                }
                let rows = at..at + pos.len();
                let cos = |r: usize| dot[r] / (nh[r] * n0[r]).max(1e-12);
                let last = rows.end - 1;
                moves.push(RowMove {
                    cos_mean: rows.clone().map(cos).sum::<f64>() / pos.len() as f64,
                    cos_last: cos(last),
                    norm_last: nh[last] / n0[last].max(1e-12),
                });
                at = rows.end;
            }
            Ok(())
        },
    )?;
    Ok(Some(moves))
}

fn add_into(
    acc: &mut BTreeMap<String, Tensor>,
    g: BTreeMap<String, Tensor>,
    scale: f64,
) -> Result<()> {
    for (n, t) in g {
        // A whole batch (scale 1) adds its gradients as they are, without a scaled copy.
        let t = if scale == 1.0 {
            t
        } else {
            t.affine(scale, 0.0)?
        };
        match acc.get_mut(&n) {
            Some(a) => *a = (&*a + t)?,
            None => {
                acc.insert(n, t);
            }
        }
    }
    Ok(())
}

/// A loss term that became NaN or diverged.
#[derive(Debug)]
struct BadLoss(String);

impl std::fmt::Display for BadLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadLoss {}

/// The summed, weighted (and, per term, projected) gradients of step `step` (0-based) and the
/// loss of each term. Deterministic in (seed, step).
pub fn step_grads(
    model: &Transformer,
    plan: &Plan,
    cfg: &ForgetConfig,
    step: usize,
    focus: Option<&[f64]>,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, f64>)> {
    let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut losses: BTreeMap<String, f64> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        cfg.seed
            .wrapping_add(step as u64)
            .wrapping_mul(0x2545_F491_4F6C_DD1D),
    );
    for micro in 0..cfg.grad_accum {
        for term in &plan.terms {
            let members = draw_members(plan, cfg, term.data, step, micro);
            let (l, mut g) = term_grads(model, plan, term, &members, &mut rng, focus)
                .with_context(|| format!("step {}: term `{}`", step + 1, term.name))?;
            if !finite(l) || l.abs() > cfg.max_abs_loss {
                let what = if finite(l) {
                    "diverged"
                } else {
                    "is not a number"
                };
                return Err(BadLoss(format!(
                    "step {}: loss term `{}` {what} ({l})",
                    step + 1,
                    term.name
                ))
                .into());
            }
            if term.project && plan.project_at == ProjectAt::OwnMoments {
                g = g
                    .into_iter()
                    .map(|(n, t)| (format!("{OWN_MOMENTS}{n}"), t))
                    .collect();
            } else if term.project {
                plan.projectors.apply(&mut g)?;
            }
            add_into(&mut grads, g, term.weight / cfg.grad_accum as f64)?;
            *losses.entry(term.name.clone()).or_default() += l / cfg.grad_accum as f64;
        }
    }
    Ok((grads, losses))
}

/// Entries of the projected terms ([`OWN_MOMENTS`]) added into their parameters' entries,
/// projected first when `projectors` are given.
fn own_moments_folded(
    mut map: BTreeMap<String, Tensor>,
    projectors: Option<&Projectors>,
) -> Result<BTreeMap<String, Tensor>> {
    let own: Vec<String> = map
        .keys()
        .filter(|k| k.starts_with(OWN_MOMENTS))
        .cloned()
        .collect();
    if own.is_empty() {
        return Ok(map);
    }
    let mut part = BTreeMap::new();
    for k in own {
        let t = map.remove(&k).expect("listed");
        part.insert(k[OWN_MOMENTS.len()..].to_string(), t);
    }
    if let Some(p) = projectors {
        p.apply(&mut part)?;
    }
    add_into(&mut map, part, 1.0)?;
    Ok(map)
}

fn finite(x: f64) -> bool {
    x.is_finite()
}

/// Train `model` (its trainable set becomes `plan.params`) for `cfg.steps` steps, writing
/// `dir/train.jsonl` and checkpoints in `dir/checkpoint/`; resumes from a checkpoint of the
/// same run (written with the same thread count). On NaN or divergence (a loss term, the
/// weights' norm, the retain loss: see [`Guard`]) the last good weights stay in `model` and
/// in the checkpoint, and the error names the step and what diverged. `stop_after` simulates
/// an interruption: the run stops with an error after that step (its checkpoint written), as
/// if killed.
pub fn train(
    model: &mut Transformer,
    plan: &Plan,
    cfg: &ForgetConfig,
    run_key: &str,
    dir: &Path,
    stop_after: Option<usize>,
) -> Result<TrainSummary> {
    // A run resumes only with the weights' storage and compute dtypes it started with.
    let run_key = format!("{run_key}{}", crate::model::weights_tag());
    let ck = Checkpoints {
        dir: dir.join("checkpoint"),
        run_key: &run_key,
        threads: crate::util::threads(),
        undo_in_memory_bytes: UNDO_IN_MEMORY_BYTES,
    };
    train_with(model, plan, cfg, &ck, dir, stop_after)
}

/// [`train`], its checkpoints described by `ck`.
fn train_with(
    model: &mut Transformer,
    plan: &Plan,
    cfg: &ForgetConfig,
    ck: &Checkpoints,
    dir: &Path,
    stop_after: Option<usize>,
) -> Result<TrainSummary> {
    let t0 = std::time::Instant::now();
    model.set_trainable(&plan.params)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ck_dir = &ck.dir;
    let mut opt = Optimizer::new(cfg.optim.clone());
    let mut guard = Guard::new(cfg, plan, &param_map(model, plan)?)?;
    let mut start = 0;
    let mut resumed_from = None;
    // KUDA's focus (the forget facts' weights) and the stop at a forget accuracy both read
    // the forget facts' standing every `standing_every` steps.
    let focusing = cfg.kuda.focus > 0.0
        && plan.terms.iter().any(|t| {
            t.data == DataSet::Forget
                && matches!(
                    t.loss,
                    Loss::Repr {
                        loss: ReprLoss::Deviation { .. },
                        ..
                    }
                )
        });
    let mut focus: Option<Vec<f64>> = None;
    let mut steps_done = cfg.steps;
    if let Some((step, tensors)) = ck.read()? {
        restore_state(model, plan, &mut opt, &mut focus, step, &tensors)?;
        if let Some(v) = tensors.get(RETAIN_FIRST_KEY) {
            guard.set_retain_first(v.to_dtype(DType::F64)?.to_vec1::<f64>()?[0]);
        }
        start = step;
        resumed_from = Some(step);
        eprintln!("resuming from the checkpoint after step {step}");
    }
    let log_path = dir.join("train.jsonl");
    let mut log = open_log(&log_path, start)?;
    let bar = crate::util::progress(cfg.steps as u64, "training");
    bar.set_position(start as u64);
    let mut last = BTreeMap::new();
    // Where a run whose retain loss exploded (read one step after the update that did it)
    // goes back to: held in memory, or on disk when the trainable state is large (on a 1.5B
    // model the copy of three MLPs with their moments is 1.4 GB). On disk too, between
    // updates, Adam's moments when the undo copy is written there (`Optimizer::park`).
    let mut undo: Option<Undo> = None;
    let undo_ck = Checkpoints {
        dir: ck_dir.join("undo"),
        ..*ck
    };
    let undo_on_disk = 3 * trainable_bytes(model, plan)? > ck.undo_in_memory_bytes;
    // Scratch: removed however the run ends (a killed run's copy is overwritten next time).
    let _undo_dir = undo_on_disk.then(|| RemovedOnDrop(undo_ck.dir.clone()));
    let angles_start = if start < cfg.steps {
        gradient_angles(model, plan, cfg, start)?
    } else {
        None
    };
    // The checkpoint of the weights after `$step` steps, with the optimizer, focus and guard.
    let mut saved_at = std::time::Instant::now();
    macro_rules! save {
        ($step:expr) => {
            ck.save(
                model,
                plan,
                &opt,
                focus.as_deref(),
                guard.retain_first(),
                $step,
            )?
        };
    }
    for step in start..cfg.steps {
        let ts = std::time::Instant::now();
        let mut kept = None;
        let reading = (focusing || cfg.stop_at_forget_acc.is_some())
            && (step % cfg.standing_every == 0 || (focusing && focus.is_none()));
        if reading {
            let st = crate::forget::focus::standings(model, &plan.forget, plan.pad).with_context(
                || format!("step {}: reading the forget facts' standing", step + 1),
            )?;
            let k = st.iter().filter(|s| s.kept).count();
            kept = Some(k);
            if focusing {
                focus = Some(crate::forget::focus::weights(&st, cfg.kuda.focus));
            }
            let acc = k as f64 / st.len().max(1) as f64;
            if cfg.stop_at_forget_acc.is_some_and(|t| acc <= t) {
                // The weights after `step` steps are the result (a run started again reads
                // the same standing at this step and stops here too).
                save!(step);
                eprintln!(
                    "forget accuracy {:.1}% ({k} of {}) ≤ stop_at_forget_acc: stopped after step {step}",
                    100.0 * acc,
                    st.len()
                );
                steps_done = step;
                break;
            }
        }
        let text_ppl = match &plan.ppl_probe {
            Some(p) if cfg.ppl_every > 0 && step % cfg.ppl_every == 0 => Some(
                text_ppl(model, plan, p)
                    .with_context(|| format!("step {}: reading the text perplexity", step + 1))?,
            ),
            _ => None,
        };
        let (grads, losses) = match step_grads(model, plan, cfg, step, focus.as_deref()) {
            Ok(x) => x,
            Err(e) => {
                if e.downcast_ref::<BadLoss>().is_some() {
                    save!(step);
                    bail!(
                        "{e}; stopped, the weights after step {step} are kept in {}",
                        ck_dir.display()
                    );
                }
                return Err(e);
            }
        };
        if let Some(why) = guard.retain_diverged(&losses) {
            // These losses were read at the weights after `step` steps: go back one update.
            let kept_step = match undo.take() {
                Some(Undo::Held(b)) => {
                    let b = *b;
                    for (n, w) in b.weights {
                        model.set_param(&n, w)?;
                    }
                    (opt, focus) = (b.opt, b.focus);
                    step - 1
                }
                Some(Undo::Written) => undo_ck.restore(model, plan, &mut opt, &mut focus)?,
                None => step,
            };
            save!(kept_step);
            bail!(
                "step {}: {why}; stopped, the weights after step {kept_step} are kept in {}",
                step + 1,
                ck_dir.display()
            );
        }
        // Past the retain check the update before this one can no longer be undone: its copy
        // of the weights and of the optimizer goes now, not after this step's own copies are
        // made (on a 1.5B model the two together are gigabytes).
        drop(undo.take());
        let mut grads = grads;
        let total: f64 = plan.terms.iter().map(|t| t.weight * losses[&t.name]).sum();
        let norm = global_norm(&own_moments_folded(grads.clone(), None)?)?;
        if !finite(norm) {
            save!(step);
            bail!(
                "step {}: the gradient is not a number; stopped, the weights after step {step} are kept in {}",
                step + 1,
                ck_dir.display()
            );
        }
        if cfg.optim.clip_norm > 0.0 && norm > cfg.optim.clip_norm {
            let s = cfg.optim.clip_norm / norm;
            for g in grads.values_mut() {
                *g = g.affine(s, 0.0)?;
            }
        }
        let lr = cfg.optim.lr_at(step, cfg.steps);
        let params = param_map(model, plan)?;
        // The optimizer before this update, to go back to: a copy held in memory, or the undo
        // checkpoint written now (the model still holds the weights after `step` steps), so
        // that the old and new moments of a large model are never in memory together.
        let opt_before = if undo_on_disk {
            opt.unpark()?;
            undo_ck.save(
                model,
                plan,
                &opt,
                focus.as_deref(),
                guard.retain_first(),
                step,
            )?;
            None
        } else {
            Some(opt.clone())
        };
        let mut upd = opt.update(&params, grads, lr)?;
        match plan.project_at {
            ProjectAt::Update => plan.projectors.apply(&mut upd)?,
            ProjectAt::OwnMoments => upd = own_moments_folded(upd, Some(&plan.projectors))?,
            ProjectAt::Gradient => {}
        }
        // The new weights, each update going as soon as it is added.
        let updated: Vec<String> = upd.keys().cloned().collect();
        let mut next = params.clone();
        for (n, u) in upd {
            let w = (&params[&n] + u)?;
            next.insert(n, w);
        }
        if let Some(why) = guard.weights_diverged(&next)? {
            match opt_before {
                Some(o) => opt = o,
                None => {
                    undo_ck.restore(model, plan, &mut opt, &mut focus)?;
                }
            }
            save!(step);
            bail!(
                "step {}: {why}; stopped, the weights after step {step} are kept in {}",
                step + 1,
                ck_dir.display()
            );
        }
        for n in &updated {
            model.set_param(n, next[n].clone())?;
        }
        undo = Some(match opt_before {
            Some(opt) => Undo::Held(Box::new(BeforeUpdate {
                weights: params,
                opt,
                focus: focus.clone(),
            })),
            None => {
                // The weights before the update are on disk: their copy goes now.
                drop(params);
                Undo::Written
            }
        });
        let mut line = json!({"step": step + 1, "lr": lr, "loss": total, "terms": losses, "grad_norm": norm,
            "seconds": ts.elapsed().as_secs_f64()});
        if let Some(k) = kept {
            // How many forget facts the model still answers, read before this step.
            line["forget_kept"] = json!(k);
        }
        if let Some(p) = text_ppl {
            // Perplexity of the probe text, read before this step.
            line["text_ppl"] = json!(p);
        }
        writeln!(log, "{line}")?;
        log.flush()?;
        bar.set_message(format!("loss {total:.4}"));
        bar.inc(1);
        last = losses;
        let stop = stop_after == Some(step + 1);
        if stop || checkpoint_due(step + 1, cfg, saved_at.elapsed()) {
            save!(step + 1);
            saved_at = std::time::Instant::now();
        }
        if undo_on_disk {
            // Out of memory until the next update (on a 1.5B model a gigabyte that the next
            // forward and backward passes then have).
            opt.park(&undo_ck.dir.join("moments.safetensors"))?;
        }
        if stop {
            bar.abandon();
            bail!(
                "stopped after step {} as asked; run again to resume",
                step + 1
            );
        }
    }
    bar.finish_and_clear();
    let text_ppl_end = match &plan.ppl_probe {
        Some(p) if cfg.ppl_every > 0 => Some(text_ppl(model, plan, p)?),
        _ => None,
    };
    // Neither the update to undo nor the optimizer is read again: on a 1.5B model Adam's
    // moments alone are a gigabyte, which the gradients of the angles below then reuse.
    drop(undo);
    drop(opt);
    let gradient_angles = match angles_start {
        Some(s) => gradient_angles(model, plan, cfg, steps_done.saturating_sub(1))?.map(|end| {
            AnglesAtEnds {
                start_step: start,
                start: s,
                end,
            }
        }),
        None => None,
    };
    if let Some(a) = &gradient_angles {
        eprintln!(
            "forget vs retain gradient: {:.1}° → {:.1}° projected (start), {:.1}° → {:.1}° (end)",
            a.start.before_deg, a.start.after_deg, a.end.before_deg, a.end.after_deg
        );
    }
    Ok(TrainSummary {
        steps_done,
        resumed_from,
        final_losses: last,
        seconds: t0.elapsed().as_secs_f64(),
        gradient_angles,
        forget_moves: forget_moves(model, plan)?,
        projector_pass: plan.projectors.pass.clone(),
        text_ppl_end,
    })
}

/// The probe text's perplexity under the model's current weights.
fn text_ppl(model: &Transformer, plan: &Plan, p: &PplProbe) -> Result<f64> {
    Ok(
        crate::eval::perplexity::perplexity_of(model, p.bos, plan.pad, &p.ids, 512, 256)?
            .perplexity,
    )
}

fn open_log(path: &Path, keep_steps: usize) -> Result<std::fs::File> {
    // Keep the lines of steps already done (a resumed run continues the same log).
    let kept: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| (s as usize) <= keep_steps)
        })
        .map(String::from)
        .collect();
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    for l in kept {
        writeln!(f, "{l}")?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forget::config::Method;
    use crate::forget::methods;
    use crate::forget::nullspace::{key_sums, Projection, Projectors};
    use crate::forget::seqs::Seq;
    use crate::model::transformer::tests::tiny_model;
    use crate::model::Arch;

    fn fact_seq(ids: &[u32], rep_from: usize) -> Seq {
        let n = ids.len();
        Seq {
            ids: ids[..n - 1].to_vec(),
            targets: vec![(n - 2, ids[n - 1])],
            rep_positions: (rep_from..n - 1).collect(),
            subject: Some(rep_from..rep_from + 1),
            rivals: vec![3, 4],
        }
    }

    /// KUDA on a tiny Gemma: MLPs 0–1 updated, representation layer 1, forget 2 facts while
    /// keeping one retain sequence of 4 tokens (4 keys: the key covariances have null spaces).
    fn kuda_plan(model: &Transformer, projection: Projection, cfg: &ForgetConfig) -> Plan {
        let params = model.mlp_param_names(&[0, 1]);
        let retain = vec![Seq::text(vec![1, 4, 8, 15]).unwrap()];
        let proj = if projection == Projection::None {
            Projectors::default()
        } else {
            let sums = key_sums(model, &retain, &params, 0, 4).unwrap();
            Projectors::build(model, &sums, &params, projection, cfg.kuda.tau).unwrap()
        };
        let mut plan = Plan {
            terms: methods::terms(Method::Kuda, cfg, false, None).unwrap(),
            forget: SeqSet::new(
                "forget",
                vec![
                    fact_seq(&[1, 5, 9, 3, 7, 11], 2),
                    fact_seq(&[1, 6, 2, 13, 9], 1),
                ],
            ),
            retain: SeqSet::new("retain", retain),
            text: SeqSet::new("text", vec![]),
            params,
            rep_layer: Some(1),
            projectors: proj,
            project_at: ProjectAt::Update,
            pad: 0,
            text_rows: 0,
            ppl_probe: None,
        };
        plan.precompute(model, 4).unwrap();
        plan
    }

    #[test]
    fn a_centred_set_gives_its_rows_relative_to_the_centre() {
        let model = tiny_model(Arch::Gemma3);
        let mut plan = kuda_plan(&model, Projection::None, &tiny_cfg());
        let refs = plan.forget.rep_ref.clone().unwrap().1;
        let members = [0usize, 1];
        let positions: Vec<Vec<usize>> = members
            .iter()
            .map(|&i| plan.forget.seqs[i].rep_positions.clone())
            .collect();
        let prep = plan.forget.prepare(&model, &members, 0).unwrap();
        let rows = |set: &SeqSet| {
            let (_, _, _, h, h0) =
                repr_rows(&model, Some(1), set, &prep, &positions, false).unwrap();
            let abs = |t: Tensor| -> f32 {
                t.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            };
            (abs(h), abs(h0))
        };
        let (h, h0) = rows(&plan.forget);
        assert!(h > 1.0 && (h - h0).abs() < 1e-3 * h, "{h} {h0}");
        // Centred on its own reference rows, the untrained model's rows are all zero.
        plan.forget.rep_centre = Some(refs);
        let (h, h0) = rows(&plan.forget);
        assert!(h < 1e-3 && h0 == 0.0, "{h} {h0}");
    }

    #[test]
    fn token_parts_keep_a_batch_that_fits_whole_and_split_one_that_does_not() {
        assert_eq!(token_parts(&[5, 9, 3], 27), vec![vec![0, 1, 2]]);
        // Longest first: 9 alone (9 + 5 > 12 per two rows of 9), then 5 and 3 together.
        assert_eq!(token_parts(&[5, 9, 3], 12), vec![vec![1], vec![0, 2]]);
        // A sequence over the budget is a part of its own.
        assert_eq!(token_parts(&[40, 2, 2], 8), vec![vec![0], vec![1, 2]]);
        let parts = token_parts(&[7; 10], 21);
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
    }

    /// A term's batch taken one sequence at a time gives the loss and gradients of the whole
    /// batch (each part divides by the whole batch's scale, or is weighted by its share of it):
    /// KUDA's deviation with focus weights, the reference MSE with the sink dropped, RMU's
    /// steering, cross-entropy, −log(1 − p) and SimNPO (a mean over sequences).
    #[test]
    fn a_batch_in_parts_has_the_whole_batchs_loss_and_gradient() {
        let m = tiny_model(Arch::Gemma3);
        let mut cfg = tiny_cfg();
        cfg.sink = Sink::Drop;
        let mut plan = kuda_plan(&m, Projection::None, &cfg);
        let mut seqs = plan.forget.seqs.clone();
        seqs.push(fact_seq(&[1, 7, 7, 2, 10, 4, 12], 0));
        plan.forget = SeqSet::new("forget", seqs);
        plan.precompute(&m, 4).unwrap();
        // Trained a little away from the references, so that every loss has a gradient.
        let mut m2 = tiny_model(Arch::Gemma3);
        m2.set_trainable(&plan.params).unwrap();
        for p in &plan.params {
            let w = m2.weights().get(p).unwrap().clone();
            let noise = crate::model::ops::tests::rnd(w.dims(), 7, 0.05)
                .to_dtype(w.dtype())
                .unwrap();
            m2.set_param(p, (w + noise).unwrap()).unwrap();
        }
        let d = m.config.hidden_size;
        let kinds = [
            ReprLoss::Deviation { beta: 3.0 },
            ReprLoss::RefMse { sink: Sink::Drop },
            ReprLoss::Steer {
                target: (0..d).map(|i| (i as f32 * 0.37).sin()).collect(),
            },
        ];
        let focus = [2.0, 0.5, 1.0];
        let losses = kinds
            .into_iter()
            .map(|loss| Loss::Repr { loss, sample: 0.5 })
            .chain([
                Loss::Logit(LogitLoss::Ce),
                Loss::Logit(LogitLoss::Unlikely),
                Loss::Logit(LogitLoss::SimNpo {
                    beta: 2.5,
                    gamma: 0.5,
                }),
            ]);
        for kind in losses {
            let term = Term {
                name: "t".into(),
                weight: 1.0,
                data: DataSet::Forget,
                loss: kind.clone(),
                project: false,
            };
            let run = |part_tokens: usize| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(3);
                term_grads_in_parts(
                    &m2,
                    &plan,
                    &term,
                    &[0, 1, 2],
                    &mut rng,
                    Some(&focus),
                    part_tokens,
                )
                .unwrap()
            };
            let (whole, gw) = run(usize::MAX);
            let (parts, gp) = run(1);
            assert!(whole.abs() > 1e-6, "{kind:?}: no loss");
            assert!(
                (whole - parts).abs() < 1e-6 * whole.abs(),
                "{kind:?}: {whole} vs {parts}"
            );
            for (name, g) in &gw {
                let norm = sq(g).sqrt();
                let diff = sq(&(g - &gp[name]).unwrap()).sqrt();
                assert!(
                    norm > 0.0 && diff < 1e-5 * norm,
                    "{kind:?} {name}: {diff} of {norm}"
                );
            }
        }
    }

    fn sq(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The probe text's perplexity is read before every `ppl_every`-th step (into the log) and
    /// with the final weights (into the summary), and it is the perplexity of those weights.
    #[test]
    fn the_probe_perplexity_is_logged_every_few_steps_and_at_the_end() {
        let mut m = tiny_model(Arch::Gemma3);
        let orig = tiny_model(Arch::Gemma3);
        let mut cfg = tiny_cfg();
        cfg.ppl_every = 2;
        let mut plan = kuda_plan(&m, Projection::None, &cfg);
        let probe = PplProbe {
            bos: None,
            ids: (0..40).map(|i| (i * 7 % 20) as u32 + 1).collect(),
        };
        plan.ppl_probe = Some(probe.clone());
        let dir = tempfile::tempdir().unwrap();
        let s = train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap();
        let ppl = |model: &Transformer| {
            crate::eval::perplexity::perplexity_of(model, None, 0, &probe.ids, 512, 256)
                .unwrap()
                .perplexity
        };
        let log: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("train.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let read: Vec<u64> = log
            .iter()
            .filter(|l| l.get("text_ppl").is_some())
            .map(|l| l["step"].as_u64().unwrap())
            .collect();
        assert_eq!(read, vec![1, 3, 5]);
        assert_eq!(log[0]["text_ppl"].as_f64().unwrap(), ppl(&orig));
        let end = s.text_ppl_end.unwrap();
        assert_eq!(end, ppl(&m));
        assert_ne!(end, ppl(&orig), "training moved nothing");
        cfg.ppl_every = 0;
        let dir = tempfile::tempdir().unwrap();
        let s = train(
            &mut tiny_model(Arch::Gemma3),
            &plan,
            &cfg,
            "k",
            dir.path(),
            None,
        )
        .unwrap();
        assert!(s.text_ppl_end.is_none());
    }

    fn tiny_cfg() -> ForgetConfig {
        let mut c = ForgetConfig::for_method(Method::Kuda);
        c.steps = 5;
        c.optim.lr = 3e-2;
        c.optim.warmup_steps = 0;
        c.kuda.text_weight = 0.0;
        c.kuda.token_ratio = 1.0;
        c.checkpoint_every = 2;
        c
    }

    /// ‖ΔW·Kᵀ‖ over the updated matrices, with K the original model's retain keys.
    fn key_movement(orig: &Transformer, trained: &Transformer, params: &[String]) -> f64 {
        let retain = [Seq::text(vec![1, 4, 8, 15]).unwrap()];
        let mut total = 0.0;
        for p in params {
            let kp = orig.key_point(p).unwrap();
            let b = crate::model::Batch::new(
                &[retain[0].ids.clone()],
                0,
                crate::model::PadSide::Right,
                orig.device(),
            )
            .unwrap();
            let hooks = crate::model::Hooks::new().cache(kp);
            let out = orig
                .run(
                    &b,
                    &RunOpts {
                        hooks: Some(&hooks),
                        logits: LogitsAt::None,
                        ..Default::default()
                    },
                )
                .unwrap();
            let k = orig
                .matrix_input(p, &out.cache[&kp])
                .unwrap()
                .get(0)
                .unwrap();
            let dw = (trained.weights().get(p).unwrap() - orig.weights().get(p).unwrap()).unwrap();
            let m: f64 = dw
                .matmul(&k.t().unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar()
                .unwrap();
            total += m;
        }
        total.sqrt()
    }

    fn trained(projection: Projection, tau: f64) -> (Transformer, Vec<String>) {
        let mut m = tiny_model(Arch::Gemma3);
        let mut cfg = tiny_cfg();
        cfg.kuda.projection = projection;
        cfg.kuda.tau = tau;
        let plan = kuda_plan(&m, projection, &cfg);
        let dir = tempfile::tempdir().unwrap();
        train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap();
        (m, plan.params)
    }

    #[test]
    fn forget_moves_read_one_before_training_and_the_rows_cosines_after() {
        let mut m = tiny_model(Arch::Gemma3);
        let mut cfg = tiny_cfg();
        cfg.kuda.projection = Projection::None;
        let plan = kuda_plan(&m, Projection::None, &cfg);
        let before = forget_moves(&m, &plan).unwrap().unwrap();
        assert_eq!(before.len(), 2);
        for r in &before {
            for x in [r.cos_mean, r.cos_last, r.norm_last] {
                assert!((x - 1.0).abs() < 1e-5, "{r:?}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let s = train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap();
        let after = s.forget_moves.unwrap();
        assert_eq!(after, forget_moves(&m, &plan).unwrap().unwrap());
        assert!(after.iter().all(|r| r.cos_mean < 0.999), "{after:?}");
        // Recompute fact 1's rows from full runs of both models (no cached lower layers).
        let orig = tiny_model(Arch::Gemma3);
        let seq = &plan.forget.seqs[1];
        let rows = |model: &Transformer| -> Vec<Vec<f64>> {
            let b = crate::model::Batch::new(
                std::slice::from_ref(&seq.ids),
                0,
                crate::model::PadSide::Right,
                model.device(),
            )
            .unwrap();
            let opts = RunOpts {
                stop_at: Some(2),
                logits: LogitsAt::None,
                ..Default::default()
            };
            let r = model.run(&b, &opts).unwrap().resid.get(0).unwrap();
            let r: Vec<Vec<f64>> = r.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
            seq.rep_positions.iter().map(|&p| r[p].clone()).collect()
        };
        let (h, h0) = (rows(&m), rows(&orig));
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let cos = |a: &[f64], b: &[f64]| dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
        let n = h.len();
        let mean = (0..n).map(|i| cos(&h[i], &h0[i])).sum::<f64>() / n as f64;
        let norm = (dot(&h[n - 1], &h[n - 1]) / dot(&h0[n - 1], &h0[n - 1])).sqrt();
        let got = &after[1];
        assert!((got.cos_mean - mean).abs() < 1e-5, "{got:?} vs {mean}");
        assert!(
            (got.cos_last - cos(&h[n - 1], &h0[n - 1])).abs() < 1e-5,
            "{got:?}"
        );
        assert!((got.norm_last - norm).abs() < 1e-5, "{got:?} vs {norm}");
        // A method that reads no representation has nothing to report.
        let mut ft = plan;
        ft.terms
            .retain(|t| !matches!(t.loss, Loss::Repr { .. }) || t.data != DataSet::Forget);
        assert!(forget_moves(&m, &ft).unwrap().is_none());
    }

    #[test]
    fn strict_projection_turns_the_forget_gradient_square_to_the_retain_gradient() {
        let mut m = tiny_model(Arch::Gemma3);
        let mut cfg = tiny_cfg();
        cfg.kuda.projection = Projection::Strict;
        cfg.kuda.tau = 1e-6;
        let plan = kuda_plan(&m, Projection::Strict, &cfg);
        m.set_trainable(&plan.params).unwrap();
        let a = gradient_angles(&m, &plan, &cfg, 0).unwrap().unwrap();
        assert!((a.after_deg - 90.0).abs() < 0.5, "{a:?}");
        assert!((a.before_deg - 90.0).abs() > 1.0, "{a:?}");
        cfg.kuda.projection = Projection::None;
        let plan = kuda_plan(&m, Projection::None, &cfg);
        let b = gradient_angles(&m, &plan, &cfg, 0).unwrap().unwrap();
        assert_eq!(b.before_deg, b.after_deg);
        assert!((b.before_deg - a.before_deg).abs() < 1e-6, "{a:?} {b:?}");
    }

    #[test]
    fn strict_projection_keeps_w_k_and_relaxed_sits_between() {
        let orig = tiny_model(Arch::Gemma3);
        let (strict, params) = trained(Projection::Strict, 1e-6);
        let (relaxed, _) = trained(Projection::Relaxed, 0.5);
        let (none, _) = trained(Projection::None, 0.5);
        let (s, r, n) = (
            key_movement(&orig, &strict, &params),
            key_movement(&orig, &relaxed, &params),
            key_movement(&orig, &none, &params),
        );
        // The weights did move (forget loss), but not along the retain keys.
        let moved: f64 = params
            .iter()
            .map(|p| {
                let d =
                    (strict.weights().get(p).unwrap() - orig.weights().get(p).unwrap()).unwrap();
                d.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            })
            .sum::<f64>()
            .sqrt();
        assert!(moved > 1e-2, "strict run did not train (‖ΔW‖ = {moved})");
        assert!(s < 1e-4 * n, "strict moved W·k by {s} (none: {n})");
        assert!(s < r && r < n, "strict {s} < relaxed {r} < none {n}");
    }

    /// With the forget terms alone (retain weight 0) and the strict projection, projecting
    /// the forget terms' own Adam update keeps W·k of the retain keys as well as projecting
    /// the whole update does; projecting the gradient before Adam does not (Adam's per-entry
    /// scaling moves the step out of the subspace).
    #[test]
    fn own_moments_keep_the_forget_update_off_the_retain_keys() {
        let orig = tiny_model(Arch::Gemma3);
        let run = |at: ProjectAt| {
            let mut m = tiny_model(Arch::Gemma3);
            let mut cfg = tiny_cfg();
            cfg.kuda.projection = Projection::Strict;
            cfg.kuda.tau = 1e-6;
            cfg.kuda.retain_weight = 0.0;
            let mut plan = kuda_plan(&m, Projection::Strict, &cfg);
            plan.project_at = at;
            let dir = tempfile::tempdir().unwrap();
            train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap();
            let moved = param_values(&m, &plan.params) != param_values(&orig, &plan.params);
            assert!(moved, "{at:?}: nothing trained");
            key_movement(&orig, &m, &plan.params)
        };
        let (update, own, gradient) = (
            run(ProjectAt::Update),
            run(ProjectAt::OwnMoments),
            run(ProjectAt::Gradient),
        );
        assert!(
            own < 1e-4 * gradient && update < 1e-4 * gradient,
            "own moments {own}, whole update {update}, gradient before Adam {gradient}"
        );
    }

    #[test]
    fn an_interrupted_run_resumes_to_the_same_weights() {
        // Plain KUDA, KUDA with focus read every 2 steps (resuming after step 3 must use
        // the weights read before step 3, kept in the checkpoint), and the forget terms with
        // their own Adam moments (kept in the checkpoint too).
        for (focus, at) in [
            (0.0, ProjectAt::Update),
            (2.0, ProjectAt::Update),
            (0.0, ProjectAt::OwnMoments),
        ] {
            let mut cfg = tiny_cfg();
            cfg.kuda.focus = focus;
            cfg.standing_every = 2;
            let plan_of = |m: &Transformer| {
                let mut p = kuda_plan(m, Projection::Relaxed, &cfg);
                p.project_at = at;
                p
            };
            let straight = {
                let mut m = tiny_model(Arch::Gemma3);
                let plan = plan_of(&m);
                let dir = tempfile::tempdir().unwrap();
                train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap();
                m
            };
            let dir = tempfile::tempdir().unwrap();
            let mut m = tiny_model(Arch::Gemma3);
            let plan = plan_of(&m);
            let e = train(&mut m, &plan, &cfg, "k", dir.path(), Some(3)).unwrap_err();
            assert!(e.to_string().contains("after step 3"), "{e}");
            // A fresh process: the original weights, the same settings.
            let mut m = tiny_model(Arch::Gemma3);
            let s = train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap();
            assert_eq!(s.resumed_from, Some(3));
            assert_eq!(
                param_values(&m, &plan.params),
                param_values(&straight, &plan.params),
                "focus {focus}, {at:?}: the weights differ after resuming"
            );
            let log: Vec<serde_json::Value> =
                std::fs::read_to_string(dir.path().join("train.jsonl"))
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
            let steps: Vec<u64> = log.iter().map(|v| v["step"].as_u64().unwrap()).collect();
            assert_eq!(steps, vec![1, 2, 3, 4, 5]);
            // The standing is read (and logged) before steps 1, 3 and 5 when focusing.
            let read: Vec<u64> = log
                .iter()
                .filter(|v| v.get("forget_kept").is_some())
                .map(|v| v["step"].as_u64().unwrap())
                .collect();
            let want: Vec<u64> = if focus > 0.0 { vec![1, 3, 5] } else { vec![] };
            assert_eq!(read, want, "focus {focus}");
            // Another run's checkpoint is not resumed from.
            let mut m = tiny_model(Arch::Gemma3);
            let s = train(&mut m, &plan, &cfg, "other", dir.path(), None).unwrap();
            assert_eq!(s.resumed_from, None);
        }
    }

    #[test]
    fn a_run_stops_at_the_forget_accuracy_asked_for_and_a_rerun_stops_there_too() {
        let mut cfg = tiny_cfg();
        cfg.standing_every = 2;
        let orig = tiny_model(Arch::Gemma3);
        let plan = kuda_plan(&orig, Projection::Relaxed, &cfg);
        let st = crate::forget::focus::standings(&orig, &plan.forget, 0).unwrap();
        let acc0 = st.iter().filter(|s| s.kept).count() as f64 / st.len() as f64;
        // At the starting accuracy it stops before step 1; below it, it trains on (to the
        // end, or to a later reading: an even step).
        let mut cases = vec![(acc0, Some(0))];
        if acc0 > 0.0 {
            cases.push((acc0 - 0.25, None));
        }
        for (stop, want) in cases {
            cfg.stop_at_forget_acc = Some(stop);
            let dir = tempfile::tempdir().unwrap();
            let mut m = tiny_model(Arch::Gemma3);
            let s = train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap();
            let done = s.steps_done;
            match want {
                Some(w) => assert_eq!(done, w, "stop at {stop}"),
                None => assert!(done == 5 || (done > 0 && done.is_multiple_of(2)), "{done}"),
            }
            if done == 0 {
                assert_eq!(
                    param_values(&m, &plan.params),
                    param_values(&orig, &plan.params)
                );
            }
            // Started again, it reads the same standing at the same step and stops there.
            let mut again = tiny_model(Arch::Gemma3);
            let s2 = train(&mut again, &plan, &cfg, "k", dir.path(), None).unwrap();
            assert_eq!(s2.resumed_from, Some(done));
            assert_eq!(s2.steps_done, done);
            assert_eq!(
                param_values(&again, &plan.params),
                param_values(&m, &plan.params)
            );
        }
    }

    fn param_values(t: &Transformer, params: &[String]) -> Vec<Vec<f64>> {
        params
            .iter()
            .map(|p| {
                t.weights()
                    .get(p)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn focus_moves_the_pressure_to_the_fact_still_known() {
        // One step from the same weights, with focus on and off: focus weighs the two forget
        // facts by their answers' shares, so the focused gradient is the unfocused per-fact
        // gradients mixed in those proportions.
        let m = tiny_model(Arch::Gemma3);
        let mut cfg = tiny_cfg();
        cfg.kuda.token_ratio = 1.0;
        cfg.kuda.retain_weight = 0.0;
        let mut m2 = tiny_model(Arch::Gemma3);
        m2.set_trainable(&m.mlp_param_names(&[0, 1])).unwrap();
        let plan = kuda_plan(&m, Projection::None, &cfg);
        let st = crate::forget::focus::standings(&m2, &plan.forget, 0).unwrap();
        assert_ne!(st[0].share, st[1].share);
        let w = crate::forget::focus::weights(&st, 3.0);
        let grad = |focus: Option<&[f64]>, members: &[usize]| {
            let term = plan
                .terms
                .iter()
                .find(|t| t.data == DataSet::Forget)
                .unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let (_, g) = term_grads(&m2, &plan, term, members, &mut rng, focus).unwrap();
            g
        };
        let both = grad(Some(&w), &[0, 1]);
        let (g0, g1) = (grad(None, &[0]), grad(None, &[1]));
        // Rows of the two facts: the batch mean over all rows is a row-count-weighted mix.
        let rows = |i: usize| plan.forget.seqs[i].rep_positions.len() as f64;
        let (r0, r1) = (rows(0), rows(1));
        for (name, g) in &both {
            let want = ((&g0[name] * (w[0] * r0 / (r0 + r1))).unwrap()
                + (&g1[name] * (w[1] * r1 / (r0 + r1))).unwrap())
            .unwrap();
            let diff: f64 = (g - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-9, "{name}: {diff}");
        }
    }

    /// The L2 norm of the updated parameters.
    fn params_norm(m: &Transformer, params: &[String]) -> f64 {
        let w: Vec<f64> = param_values(m, params).concat();
        w.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    #[test]
    fn exploding_weights_stop_the_run_at_that_step_with_the_weights_before_it() {
        let mut cfg = tiny_cfg();
        cfg.optim.lr = 1e3;
        let orig = tiny_model(Arch::Gemma3);
        let plan = kuda_plan(&orig, Projection::None, &cfg);
        let n0 = params_norm(&orig, &plan.params);
        let dir = tempfile::tempdir().unwrap();
        let mut m = tiny_model(Arch::Gemma3);
        let e = train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap_err();
        let msg = format!("{e:#}");
        // KUDA's first gradient is all but zero (h = h₀); the second update explodes.
        assert!(
            msg.starts_with("step 2: the updated weights' norm")
                && msg.contains("diverge_weight_ratio × their original norm (10 ×")
                && msg.contains("the weights after step 1 are kept"),
            "{msg}"
        );
        let mut one = cfg.clone();
        one.steps = 1;
        let mut after_one = tiny_model(Arch::Gemma3);
        let d = tempfile::tempdir().unwrap();
        train(&mut after_one, &plan, &one, "k", d.path(), None).unwrap();
        assert_eq!(
            param_values(&m, &plan.params),
            param_values(&after_one, &plan.params)
        );
        // Unguarded, the same two steps take the weights far past 10 × their norm.
        cfg.diverge_weight_ratio = 0.0;
        cfg.steps = 2;
        let dir = tempfile::tempdir().unwrap();
        let mut m = tiny_model(Arch::Gemma3);
        train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap();
        let n1 = params_norm(&m, &plan.params);
        assert!(n1 > 10.0 * n0, "‖W‖ {n0} → {n1}");
    }

    #[test]
    fn a_run_ends_the_same_with_its_undo_copy_and_moments_in_memory_or_on_disk() {
        // On disk (a large model), the moments are parked between updates too.
        let cfg = tiny_cfg();
        let plan = kuda_plan(&tiny_model(Arch::Gemma3), Projection::Relaxed, &cfg);
        let run = |undo_in_memory_bytes| {
            let dir = tempfile::tempdir().unwrap();
            let ck = test_checkpoints(dir.path(), undo_in_memory_bytes);
            let mut m = tiny_model(Arch::Gemma3);
            train_with(&mut m, &plan, &cfg, &ck, dir.path(), None).unwrap();
            assert!(
                !ck.dir.join("undo").exists(),
                "the undo copy is left behind"
            );
            let (step, t) = checkpoint_values(&ck);
            (param_values(&m, &plan.params), step, t)
        };
        let held = run(UNDO_IN_MEMORY_BYTES);
        assert_eq!(held.1, cfg.steps);
        assert!(held.2.iter().any(|(n, _)| n.starts_with("adam.v/")));
        assert_eq!(held, run(0));
    }

    #[test]
    fn the_state_to_go_back_to_is_the_same_held_in_memory_or_written_to_disk() {
        let mut cfg = tiny_cfg();
        cfg.optim.lr = 1e3;
        let plan = kuda_plan(&tiny_model(Arch::Gemma3), Projection::None, &cfg);
        // The checkpoint a run stopped by exploding weights keeps: weights, moments, focus.
        let kept = |undo_in_memory_bytes| {
            let (_, msg, dir) = stopped_run(&plan, &cfg, undo_in_memory_bytes);
            assert!(msg.contains("the weights after step 1 are kept"), "{msg}");
            let ck = test_checkpoints(dir.path(), undo_in_memory_bytes);
            checkpoint_values(&ck)
        };
        let held = kept(UNDO_IN_MEMORY_BYTES);
        assert!(held.1.iter().any(|(n, _)| n.starts_with("adam.m/")));
        assert_eq!(held, kept(0));
    }

    #[test]
    fn an_exploding_retain_loss_stops_the_run_with_the_weights_before_the_update_that_did_it() {
        let mut cfg = ForgetConfig::for_method(Method::Graddiff);
        cfg.steps = 12;
        cfg.optim.lr = 1.0;
        cfg.optim.warmup_steps = 0;
        cfg.optim.min_lr_ratio = 1.0;
        cfg.diverge_weight_ratio = 0.0;
        cfg.diverge_retain_ratio = 1.2;
        // Next to nothing holds the retain text: gradient ascent alone, on facts whose
        // answers are the retain text's own next tokens.
        cfg.graddiff_retain_weight = 1e-9;
        let graddiff_plan = |m: &Transformer| {
            let mut plan = kuda_plan(m, Projection::None, &tiny_cfg());
            plan.forget = SeqSet::new(
                "forget",
                vec![fact_seq(&[1, 4, 8], 1), fact_seq(&[1, 4, 8, 15], 1)],
            );
            plan.rep_layer = None;
            plan.terms = methods::terms(Method::Graddiff, &cfg, false, None).unwrap();
            plan.precompute(m, 4).unwrap();
            plan
        };
        // The state to go back to held in memory, and written to disk (as for a large model).
        for undo_in_memory_bytes in [UNDO_IN_MEMORY_BYTES, 0] {
            retain_explodes_with(&cfg, &graddiff_plan, undo_in_memory_bytes);
        }
    }

    /// A tiny model's run under `plan` and `cfg` that must stop, with the state before an
    /// update held in memory up to `undo_in_memory_bytes`: the model, the error and the run's
    /// directory (the undo copy must be gone from it).
    fn stopped_run(
        plan: &Plan,
        cfg: &ForgetConfig,
        undo_in_memory_bytes: usize,
    ) -> (Transformer, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ck = test_checkpoints(dir.path(), undo_in_memory_bytes);
        let mut m = tiny_model(Arch::Gemma3);
        let e = train_with(&mut m, plan, cfg, &ck, dir.path(), None).unwrap_err();
        assert!(
            !ck.dir.join("undo").exists(),
            "the undo copy is left behind"
        );
        (m, format!("{e:#}"), dir)
    }

    /// The step and every tensor (by name, widened) of a run's checkpoint.
    fn checkpoint_values(ck: &Checkpoints) -> (usize, Vec<(String, Vec<f64>)>) {
        let (step, t) = ck.read().unwrap().unwrap();
        let mut t: Vec<(String, Vec<f64>)> = t
            .into_iter()
            .map(|(n, v)| (n, v.flatten_all().unwrap().to_vec1::<f64>().unwrap()))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        (step, t)
    }

    fn test_checkpoints(dir: &Path, undo_in_memory_bytes: usize) -> Checkpoints<'static> {
        Checkpoints {
            dir: dir.join("checkpoint"),
            run_key: "k",
            threads: crate::util::threads(),
            undo_in_memory_bytes,
        }
    }

    fn retain_explodes_with(
        cfg: &ForgetConfig,
        graddiff_plan: &dyn Fn(&Transformer) -> Plan,
        undo_in_memory_bytes: usize,
    ) {
        let plan = graddiff_plan(&tiny_model(Arch::Gemma3));
        let (m, msg, _dir) = stopped_run(&plan, cfg, undo_in_memory_bytes);
        let step: usize = msg
            .strip_prefix("step ")
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{msg}"));
        assert!(
            step >= 2
                && msg.contains("the retain loss (retain_ce)")
                && msg.contains("diverge_retain_ratio × its first value (1.2 ×")
                && msg.contains(&format!("the weights after step {} are kept", step - 2)),
            "{msg}"
        );
        // Kept: the weights of a run of step − 2 steps (the loss read at step N comes from
        // the weights after N − 1 steps, made by update N − 1).
        let mut short = cfg.clone();
        short.steps = step - 2;
        short.diverge_retain_ratio = 0.0;
        let mut straight = tiny_model(Arch::Gemma3);
        if short.steps > 0 {
            let d = tempfile::tempdir().unwrap();
            train(&mut straight, &plan, &short, "k", d.path(), None).unwrap();
        }
        assert_eq!(
            param_values(&m, &plan.params),
            param_values(&straight, &plan.params)
        );
    }

    #[test]
    fn a_checkpoint_of_another_thread_count_is_not_resumed() {
        let cfg = tiny_cfg();
        let dir = tempfile::tempdir().unwrap();
        let ck = |threads| Checkpoints {
            threads,
            ..test_checkpoints(dir.path(), UNDO_IN_MEMORY_BYTES)
        };
        let mut m = tiny_model(Arch::Gemma3);
        let plan = kuda_plan(&m, Projection::Relaxed, &cfg);
        train_with(&mut m, &plan, &cfg, &ck(1), dir.path(), Some(2)).unwrap_err();
        let mut m = tiny_model(Arch::Gemma3);
        let e = train_with(&mut m, &plan, &cfg, &ck(2), dir.path(), None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("after step 2 with --threads 1")
                && msg.contains("runs with --threads 2")
                && msg.contains("Resume with --threads 1, or delete"),
            "{msg}"
        );
        let s = train_with(&mut m, &plan, &cfg, &ck(1), dir.path(), None).unwrap();
        assert_eq!(s.resumed_from, Some(2));
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("checkpoint/state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["threads"], 1);
    }

    #[test]
    fn divergence_stops_naming_step_and_term_and_keeps_good_weights() {
        let mut cfg = ForgetConfig::for_method(Method::LocalizedFt);
        cfg.steps = 4;
        cfg.optim.lr = 1e300;
        cfg.optim.warmup_steps = 0;
        cfg.optim.clip_norm = 0.0;
        // The loss's own check, not the weights' norm.
        cfg.diverge_weight_ratio = 0.0;
        let mut m = tiny_model(Arch::Gemma3);
        let mut plan = kuda_plan(&m, Projection::None, &tiny_cfg());
        plan.terms = methods::terms(Method::LocalizedFt, &cfg, false, None).unwrap();
        plan.terms.retain(|t| t.data != DataSet::Text);
        plan.precompute(&m, 4).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = train(&mut m, &plan, &cfg, "k", dir.path(), None).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("step 2") && msg.contains("forget_unlikely"),
            "{msg}"
        );
        for p in &plan.params {
            let w = m.weights().get(p).unwrap();
            let bad = w
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .any(|x| !x.is_finite());
            assert!(!bad, "{p} holds non-finite weights after the stop");
        }
        assert!(dir.path().join("checkpoint/state.safetensors").exists());
    }
}
