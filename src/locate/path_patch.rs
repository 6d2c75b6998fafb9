//! Path patching (Wang et al. 2022), as Mechanistic Unlearning uses it to find the fact-lookup
//! MLPs of open-ended facts: first the *extraction heads* — the heads whose output at the last
//! token reaches the logits directly and carries the answer — then the MLPs whose output
//! matters *through those heads only*.
//!
//! The corrupted run adds seeded Gaussian noise to the subject's embeddings (ROME). Every path
//! is isolated exactly, by running single blocks from cached clean states:
//! * head → logits: block L is run from the clean `resid_pre` with one head's `z` at the last
//!   token taken from the corrupted run; the change of the block's attention output (after
//!   its own output norm, which belongs to the head's path) is added to the clean final
//!   residual, and P(answer) is read through the final norm and the unembedding. Everything
//!   after block L's attention is frozen at its clean value, so only the direct path counts.
//! * MLP m → extraction heads → logits: the corrupted-minus-clean output of MLP m, at every
//!   position before the last (so it reaches the heads' keys and values, not their query), is
//!   added to the clean `resid_pre` of each extraction head's block L > m; every other head
//!   and position of that block keeps its clean `z`; the heads' changes reach the logits
//!   directly as above, all extraction heads at once.
//!
//! Effects are drops of P(answer) (clean minus patched), averaged over noise samples and facts.

use crate::locate::trace::{answer_probs, subject_noise};
use crate::model::batch::{Batch, PadSide};
use crate::model::hooks::{HookPoint, Hooks, Patch, PatchMode, Selection};
use crate::model::transformer::{LogitsAt, RunOpts};
use crate::model::Transformer;
use anyhow::{bail, Result};
use candle_core::{IndexOp, Tensor};

/// One prompt: tokens, subject token range, answer token.
pub struct PathItem {
    pub ids: Vec<u32>,
    pub subject: std::ops::Range<usize>,
    pub answer: u32,
}

/// Settings of the search.
#[derive(Clone, Debug)]
pub struct PathOpts {
    /// Noise samples per prompt.
    pub samples: usize,
    /// Standard deviation of the noise on the subject embeddings.
    pub noise_std: f64,
    pub seed: u64,
    /// Heads kept as extraction heads (the largest direct effects).
    pub extraction_heads: usize,
}

/// What path patching found, averaged over the prompts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PathScores {
    /// `[layer][head]`: drop of P(answer) when the head's corrupted output at the last token
    /// reaches the logits directly.
    pub head_direct: Vec<Vec<f64>>,
    /// The extraction heads, (layer, head), largest direct effect first.
    pub extraction_heads: Vec<(usize, usize)>,
    /// `[layer]`: drop of P(answer) when MLP `layer`'s corrupted output reaches the logits
    /// only through the extraction heads' keys and values.
    pub mlp_via_heads: Vec<f64>,
    pub p_clean: f64,
    pub p_corrupt: f64,
    pub prompts: usize,
}

/// Clean and corrupted states of one prompt.
struct Runs {
    clean: crate::model::hooks::ActivationCache,
    corrupt: crate::model::hooks::ActivationCache,
    /// Clean final residual at the last token, `[1, D]`.
    final_last: Tensor,
    p_clean: f64,
    p_corrupt: f64,
}

fn runs(model: &Transformer, it: &PathItem, o: &PathOpts) -> Result<Runs> {
    let t = it.ids.len();
    if it.subject.is_empty() || it.subject.end > t {
        bail!(
            "path patching: subject tokens {:?} outside the prompt of {t} tokens",
            it.subject
        );
    }
    if o.samples == 0 || !(o.noise_std.is_finite() && o.noise_std >= 0.0) {
        bail!("path patching: samples must be ≥ 1 and the noise a number ≥ 0");
    }
    let dev = model.device().clone();
    let (n_layers, d) = (model.config.num_layers, model.config.hidden_size);
    let dtype = model.dtype();
    let one = Batch::new(std::slice::from_ref(&it.ids), 0, PadSide::Left, &dev)?;
    let mut hooks = Hooks::new();
    for l in 0..n_layers {
        for p in [
            HookPoint::ResidPre(l),
            HookPoint::AttnZ(l),
            HookPoint::AttnOut(l),
            HookPoint::MlpOut(l),
        ] {
            hooks = hooks.cache(p);
        }
    }
    let clean = model.run(
        &one,
        &RunOpts {
            hooks: Some(&hooks),
            logits: LogitsAt::Last,
            ..Default::default()
        },
    )?;
    let p_clean = answer_probs(clean.logits.as_ref().expect("logits"), it.answer)?[0];
    let n = o.samples;
    let noise = subject_noise(
        &vec![it.subject.clone(); n],
        t,
        d,
        o.noise_std,
        o.seed,
        dtype,
        &dev,
    )?;
    let mut ch = Hooks::new().patch(Patch {
        point: HookPoint::Embed,
        mode: PatchMode::Add,
        value: noise,
        sel: Selection::default(),
    });
    for l in 0..n_layers {
        ch = ch.cache(HookPoint::AttnZ(l)).cache(HookPoint::MlpOut(l));
    }
    let batch = Batch::new(&vec![it.ids.clone(); n], 0, PadSide::Left, &dev)?;
    let cor = model.run(
        &batch,
        &RunOpts {
            hooks: Some(&ch),
            logits: LogitsAt::Last,
            ..Default::default()
        },
    )?;
    let pc = answer_probs(cor.logits.as_ref().expect("logits"), it.answer)?;
    Ok(Runs {
        final_last: clean.resid.i((.., t - 1, ..))?,
        clean: clean.cache,
        corrupt: cor.cache,
        p_clean,
        p_corrupt: pc.iter().sum::<f64>() / n as f64,
    })
}

/// Run block `l` alone on `rows` copies of the prompt from `start` with `patches` at its
/// `z`, and return its attention output at the last token minus the clean one, `[rows, D]`.
fn attn_out_change(
    model: &Transformer,
    it: &PathItem,
    r: &Runs,
    l: usize,
    start: Tensor,
    patches: Vec<Patch>,
) -> Result<Tensor> {
    let t = it.ids.len();
    let rows = start.dim(0)?;
    let batch = Batch::new(
        &vec![it.ids.clone(); rows],
        0,
        PadSide::Left,
        model.device(),
    )?;
    let mut hooks = Hooks::new().cache(HookPoint::AttnOut(l));
    for p in patches {
        hooks = hooks.patch(p);
    }
    let out = model.run(
        &batch,
        &RunOpts {
            hooks: Some(&hooks),
            start: Some((l, start)),
            stop_at: Some(l + 1),
            logits: LogitsAt::None,
            ..Default::default()
        },
    )?;
    let patched = out.cache[&HookPoint::AttnOut(l)].i((.., t - 1, ..))?;
    let clean = r.clean[&HookPoint::AttnOut(l)].i((.., t - 1, ..))?;
    Ok(patched.broadcast_sub(&clean)?)
}

/// P(answer) with `delta` `[rows, D]` added to the clean final residual at the last token.
fn probs_with(model: &Transformer, r: &Runs, answer: u32, delta: &Tensor) -> Result<Vec<f64>> {
    let rows = delta.broadcast_add(&r.final_last)?;
    answer_probs(&model.head(&rows)?, answer)
}

/// `[layer][head]` direct effects of one prompt.
fn head_direct(model: &Transformer, it: &PathItem, r: &Runs) -> Result<Vec<Vec<f64>>> {
    let (n_layers, h) = (model.config.num_layers, model.config.num_heads);
    let t = it.ids.len();
    let n = r.corrupt[&HookPoint::AttnZ(0)].dim(0)?;
    let rows = n * h;
    // Row s·H + k: sample s, head k.
    let sample_of = Tensor::from_vec(
        (0..rows).map(|i| (i / h) as u32).collect::<Vec<_>>(),
        rows,
        model.device(),
    )?;
    let mut out = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        let resid = &r.clean[&HookPoint::ResidPre(l)];
        let start = resid.broadcast_as((rows, t, resid.dim(2)?))?.contiguous()?;
        let cz = r.corrupt[&HookPoint::AttnZ(l)].index_select(&sample_of, 0)?;
        let patches = (0..h)
            .map(|k| Patch {
                point: HookPoint::AttnZ(l),
                mode: PatchMode::Replace,
                value: cz.clone(),
                sel: Selection {
                    rows: Some((0..n).map(|s| s * h + k).collect()),
                    positions: Some(vec![t - 1]),
                    heads: Some(vec![k]),
                },
            })
            .collect();
        let delta = attn_out_change(model, it, r, l, start, patches)?;
        let p = probs_with(model, r, it.answer, &delta)?;
        out.push(
            (0..h)
                .map(|k| r.p_clean - (0..n).map(|s| p[s * h + k]).sum::<f64>() / n as f64)
                .collect(),
        );
    }
    Ok(out)
}

/// `[layer]` effects of each MLP through the extraction `heads` for one prompt.
fn mlp_via(
    model: &Transformer,
    it: &PathItem,
    r: &Runs,
    heads: &[(usize, usize)],
) -> Result<Vec<f64>> {
    let (n_layers, n_heads) = (model.config.num_layers, model.config.num_heads);
    let t = it.ids.len();
    let dev = model.device();
    let n = r.corrupt[&HookPoint::AttnZ(0)].dim(0)?;
    let d = model.config.hidden_size;
    let dtype = r.final_last.dtype();
    // Positions before the last: the senders reach the heads' keys and values only.
    let mask = Tensor::from_vec(
        (0..t)
            .map(|p| if p + 1 < t { 1f32 } else { 0.0 })
            .collect::<Vec<_>>(),
        (1, t, 1),
        dev,
    )?
    .to_dtype(dtype)?;
    // Summed change at the last token, row s·n_layers + m.
    let mut total = Tensor::zeros((n * n_layers, d), dtype, dev)?;
    for &(l, h) in heads {
        if l == 0 {
            continue;
        }
        // Rows s·l + m for senders m < l.
        let rows = n * l;
        let mut starts = Vec::with_capacity(rows);
        let resid = &r.clean[&HookPoint::ResidPre(l)];
        for s in 0..n {
            for m in 0..l {
                let dm = (r.corrupt[&HookPoint::MlpOut(m)].i(s..s + 1)?
                    - &r.clean[&HookPoint::MlpOut(m)])?
                    .broadcast_mul(&mask)?;
                starts.push((resid + dm)?);
            }
        }
        let start = Tensor::cat(&starts, 0)?;
        let cz = &r.clean[&HookPoint::AttnZ(l)];
        let others: Vec<usize> = (0..n_heads).filter(|&k| k != h).collect();
        let mut patches = vec![Patch {
            point: HookPoint::AttnZ(l),
            mode: PatchMode::Replace,
            value: cz.clone(),
            sel: Selection {
                positions: Some((0..t - 1).collect()),
                heads: Some(vec![h]),
                ..Default::default()
            },
        }];
        if !others.is_empty() {
            patches.push(Patch {
                point: HookPoint::AttnZ(l),
                mode: PatchMode::Replace,
                value: cz.clone(),
                sel: Selection {
                    heads: Some(others),
                    ..Default::default()
                },
            });
        }
        let delta = attn_out_change(model, it, r, l, start, patches)?;
        // Scatter rows (s, m < l) into the (s, m < n_layers) layout.
        let idx: Vec<u32> = (0..n)
            .flat_map(|s| (0..l).map(move |m| (s * n_layers + m) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, rows, dev)?;
        total = total.index_add(&idx, &delta, 0)?;
    }
    let p = probs_with(model, r, it.answer, &total)?;
    Ok((0..n_layers)
        .map(|m| r.p_clean - (0..n).map(|s| p[s * n_layers + m]).sum::<f64>() / n as f64)
        .collect())
}

/// Path patching over several prompts: direct effects of every head, the extraction heads
/// (largest mean direct effect), and every MLP's effect through them. `progress` is called
/// after each prompt of each of the two passes.
pub fn path_patch(
    model: &Transformer,
    items: &[PathItem],
    o: &PathOpts,
    mut progress: impl FnMut(),
) -> Result<PathScores> {
    if items.is_empty() {
        bail!("path patching: no prompts");
    }
    if o.extraction_heads == 0 {
        bail!("path patching: keep at least one extraction head");
    }
    let (n_layers, n_heads) = (model.config.num_layers, model.config.num_heads);
    let k = items.len() as f64;
    let mut head = vec![vec![0f64; n_heads]; n_layers];
    let (mut pc, mut pk) = (0.0, 0.0);
    for it in items {
        let r = runs(model, it, o)?;
        for (acc, row) in head.iter_mut().zip(head_direct(model, it, &r)?) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v / k;
            }
        }
        pc += r.p_clean / k;
        pk += r.p_corrupt / k;
        progress();
    }
    let mut order: Vec<(usize, usize)> = (0..n_layers)
        .flat_map(|l| (0..n_heads).map(move |h| (l, h)))
        .collect();
    order.sort_by(|a, b| head[b.0][b.1].total_cmp(&head[a.0][a.1]));
    order.truncate(o.extraction_heads);
    let mut mlps = vec![0f64; n_layers];
    for it in items {
        let r = runs(model, it, o)?;
        for (a, v) in mlps.iter_mut().zip(mlp_via(model, it, &r, &order)?) {
            *a += v / k;
        }
        progress();
    }
    Ok(PathScores {
        head_direct: head,
        extraction_heads: order,
        mlp_via_heads: mlps,
        p_clean: pc,
        p_corrupt: pk,
        prompts: items.len(),
    })
}
