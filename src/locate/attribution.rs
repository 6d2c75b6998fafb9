//! Attribution patching: a linear estimate of every head's and MLP's patching effect from one
//! corrupted forward and one clean forward+backward per batch. The metric is the logit
//! difference between the true answer and an alternative; a component's score is
//! `Σ (a_clean − a_corrupt) · ∂metric/∂a` over rows and positions (≈ how much the metric drops
//! when the component's corrupted activation is patched into the clean run).

use crate::locate::trace::subject_noise;
use crate::model::batch::{Batch, PadSide};
use crate::model::hooks::{HookPoint, Hooks, Patch, PatchMode, Selection};
use crate::model::transformer::{LogitsAt, RunOpts};
use crate::model::Transformer;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// One prompt to attribute: token ids, subject token range, answer and alternative token ids,
/// and for [`Corruption::Replace`] the same prompt with another subject of as many tokens.
pub struct AttributionItem {
    pub ids: Vec<u32>,
    pub subject: std::ops::Range<usize>,
    pub answer: u32,
    pub alternative: u32,
    pub corrupt_ids: Option<Vec<u32>>,
}

/// How the corrupted run differs from the clean one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Corruption {
    /// Gaussian noise of this standard deviation on the subject's embeddings (ROME).
    Noise { std: f64 },
    /// The subject replaced by another subject (each item's `corrupt_ids`).
    Replace,
}

/// Scores per layer: `heads[l][h]` and `mlps[l]`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AttributionScores {
    pub heads: Vec<Vec<f64>>,
    pub mlps: Vec<f64>,
    pub metric_clean: f64,
    pub metric_corrupt: f64,
}

/// Attribute a batch of prompts; the corruption is seeded Gaussian noise on the subject
/// embeddings or the subject replaced by another one.
pub fn attribute(
    model: &Transformer,
    items: &[AttributionItem],
    corruption: Corruption,
    seed: u64,
) -> Result<AttributionScores> {
    if items.is_empty() {
        bail!("attribution: no prompts");
    }
    let dev = model.device().clone();
    let (n_layers, d, h, hd) = (
        model.config.num_layers,
        model.config.hidden_size,
        model.config.num_heads,
        model.config.head_dim,
    );
    let seqs: Vec<Vec<u32>> = items.iter().map(|i| i.ids.clone()).collect();
    let batch = Batch::new(
        &seqs,
        model.config.pad_token_id.unwrap_or(0),
        PadSide::Left,
        &dev,
    )?;
    let (b, t) = (batch.size(), batch.len());
    let dtype = model.dtype();
    let noise_std = match corruption {
        Corruption::Noise { std } => std,
        Corruption::Replace => 0.0,
    };
    let mut spans = Vec::with_capacity(items.len());
    for (r, it) in items.iter().enumerate() {
        if it.subject.is_empty() || it.subject.end > it.ids.len() {
            bail!(
                "attribution: prompt {r}: subject tokens {:?} outside its {} tokens",
                it.subject,
                it.ids.len()
            );
        }
        let shift = t - it.ids.len();
        spans.push(it.subject.start + shift..it.subject.end + shift);
    }
    let noise = subject_noise(&spans, t, d, noise_std, seed, dtype, &dev)?;
    let points: Vec<HookPoint> = (0..n_layers)
        .flat_map(|l| [HookPoint::AttnZ(l), HookPoint::MlpOut(l)])
        .collect();
    let mut hooks = Hooks::new();
    for &p in &points {
        hooks = hooks.cache(p).grad(p);
    }
    // Metric weights on the last-position logits: +1 answer, −1 alternative, per row.
    let v = model.config.vocab_size;
    let mut w = vec![0f32; b * v];
    for (r, it) in items.iter().enumerate() {
        w[r * v + it.answer as usize] += 1.0;
        w[r * v + it.alternative as usize] -= 1.0;
    }
    let w = Tensor::from_vec(w, (b, v), &dev)?.to_dtype(dtype)?;
    let metric = |logits: &Tensor| -> Result<f64> {
        Ok((logits * &w)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            / b as f64)
    };
    let clean = model.run(
        &batch,
        &RunOpts {
            hooks: Some(&hooks),
            logits: LogitsAt::Last,
            grad: true,
            ..Default::default()
        },
    )?;
    let grads = model.backward(&clean, Some(&(&w / b as f64)?), None)?;
    let (mut ch, cor_batch) = match corruption {
        Corruption::Noise { .. } => (
            Hooks::new().patch(Patch {
                point: HookPoint::Embed,
                mode: PatchMode::Add,
                value: noise,
                sel: Selection::default(),
            }),
            batch.clone(),
        ),
        Corruption::Replace => {
            let mut seqs = Vec::new();
            for (r, it) in items.iter().enumerate() {
                match &it.corrupt_ids {
                    Some(c) if c.len() == it.ids.len() => seqs.push(c.clone()),
                    Some(c) => bail!(
                        "attribution: prompt {r}: the replaced prompt has {} tokens, the prompt {}",
                        c.len(),
                        it.ids.len()
                    ),
                    None => bail!("attribution: prompt {r} has no replaced-subject prompt"),
                }
            }
            (
                Hooks::new(),
                Batch::new(
                    &seqs,
                    model.config.pad_token_id.unwrap_or(0),
                    PadSide::Left,
                    &dev,
                )?,
            )
        }
    };
    for &p in &points {
        ch = ch.cache(p);
    }
    let cor = model.run(
        &cor_batch,
        &RunOpts {
            hooks: Some(&ch),
            logits: LogitsAt::Last,
            ..Default::default()
        },
    )?;
    let mut heads = vec![vec![0f64; h]; n_layers];
    let mut mlps = vec![0f64; n_layers];
    for l in 0..n_layers {
        let z = HookPoint::AttnZ(l);
        let diff = (&clean.cache[&z] - &cor.cache[&z])?;
        // [B, T, H, hd] → per head.
        let per_head: Vec<f64> = (diff * &grads.hooks[&z])?
            .reshape((b * t, h, hd))?
            .sum(2)?
            .sum(0)?
            .to_dtype(DType::F64)?
            .to_vec1()?;
        heads[l] = per_head;
        let m = HookPoint::MlpOut(l);
        let diff = (&clean.cache[&m] - &cor.cache[&m])?;
        mlps[l] = (diff * &grads.hooks[&m])?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(AttributionScores {
        heads,
        mlps,
        metric_clean: metric(clean.logits.as_ref().expect("logits"))?,
        metric_corrupt: metric(cor.logits.as_ref().expect("logits"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;
    use crate::model::transformer::tests::tiny_model;

    /// With a small corruption the linear estimate matches the real patching effect.
    #[test]
    fn attribution_matches_actual_patching_for_small_corruptions() {
        let m = tiny_model(Arch::Gemma3);
        let items = vec![
            AttributionItem {
                ids: vec![1, 5, 9, 3, 7, 11],
                subject: 1..3,
                answer: 4,
                alternative: 6,
                corrupt_ids: None,
            },
            AttributionItem {
                ids: vec![1, 8, 2, 10],
                subject: 1..2,
                answer: 4,
                alternative: 6,
                corrupt_ids: None,
            },
        ];
        let s = attribute(&m, &items, Corruption::Noise { std: 1e-3 }, 3).unwrap();
        // Actual effect of patching the corrupted MLP output of layer 1 into the clean run.
        let seqs: Vec<Vec<u32>> = items.iter().map(|i| i.ids.clone()).collect();
        let batch = Batch::new(&seqs, 0, PadSide::Left, m.device()).unwrap();
        let (t, d) = (batch.len(), m.config.hidden_size);
        // Rebuild the same noise as `attribute` does.
        let spans: Vec<_> = items
            .iter()
            .map(|it| {
                let shift = t - it.ids.len();
                it.subject.start + shift..it.subject.end + shift
            })
            .collect();
        let noise = subject_noise(&spans, t, d, 1e-3, 3, DType::F64, m.device()).unwrap();
        let corrupt = Patch {
            point: HookPoint::Embed,
            mode: PatchMode::Add,
            value: noise,
            sel: Selection::default(),
        };
        let metric = |hooks: &Hooks| {
            let out = m
                .run(
                    &batch,
                    &RunOpts {
                        hooks: Some(hooks),
                        ..Default::default()
                    },
                )
                .unwrap();
            let l: Vec<Vec<f64>> = out.logits.unwrap().to_vec2().unwrap();
            l.iter().map(|r| r[4] - r[6]).sum::<f64>() / 2.0
        };
        let clean_metric = metric(&Hooks::new());
        assert!((clean_metric - s.metric_clean).abs() < 1e-9);
        for l in 0..m.config.num_layers {
            let p = HookPoint::MlpOut(l);
            let cor = m
                .run(
                    &batch,
                    &RunOpts {
                        hooks: Some(&Hooks::new().patch(corrupt.clone()).cache(p)),
                        ..Default::default()
                    },
                )
                .unwrap();
            let patched = metric(&Hooks::new().patch(Patch {
                point: p,
                mode: PatchMode::Replace,
                value: cor.cache[&p].clone(),
                sel: Selection::default(),
            }));
            let actual = clean_metric - patched;
            let est = s.mlps[l];
            assert!(
                (actual - est).abs() <= 0.05 * actual.abs() + 1e-9,
                "layer {l}: actual {actual}, attribution {est}"
            );
        }
    }
}
