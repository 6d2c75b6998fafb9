//! From the picked facts and text to the trainer: the training context, KUDA's null-space
//! projectors and centre, the trainer's plan (sequences, terms, parameters), and the training
//! runs over the forget facts' partitions.

use crate::forget::config::{Centre, ForgetConfig, Method};
use crate::forget::methods;
use crate::forget::nullspace::{cached_key_sums, key_sums, Projection, Projectors};
use crate::forget::refs::{
    answer_balanced, first_row_ratio, mean_ref_norm, mean_ref_row, mean_ref_row_by_place,
    steering_vector,
};
use crate::forget::run::hash_json;
use crate::forget::seqs::{ppl_probe, Place, Seq, SeqSet, Sink};
use crate::forget::trainer::{first_layer, train, Plan, PplProbe, ProjectAt, TrainSummary};
use crate::model::{LanguageModel, Transformer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

/// Everything a training run needs besides the settings.
pub(crate) struct TrainCtx {
    pub(crate) method: Method,
    pub(crate) edit: bool,
    pub(crate) forget_seqs: Vec<Seq>,
    pub(crate) retain_seqs: Vec<Seq>,
    /// How many of `retain_seqs` are known subjects (the unknown ones follow).
    pub(crate) known_retain: usize,
    pub(crate) text_seqs: Vec<Seq>,
    pub(crate) params: Vec<String>,
    pub(crate) rep_layer: Option<usize>,
    /// KUDA's null-space projectors (empty: nothing is projected).
    pub(crate) projectors: Projectors,
    pub(crate) forget_ids: Vec<String>,
    pub(crate) retain_ids: Vec<String>,
    pub(crate) new_answers: Option<Vec<String>>,
    pub(crate) base_fp: String,
    pub(crate) partitions: usize,
    /// General text whose perplexity the trainer reads (none: not read).
    pub(crate) ppl_probe: Option<PplProbe>,
}

impl TrainCtx {
    /// The sequences with their first rows left out of the representation losses under
    /// [`Sink::Drop`] (see there); an error names the sequence that would have none left.
    pub(crate) fn with_sink(mut self, sink: Sink) -> Result<TrainCtx> {
        let pick = |seqs: Vec<Seq>, ids: &[String], set: &str| -> Result<Vec<Seq>> {
            seqs.into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let id = ids.get(i).map_or_else(|| i.to_string(), |x| x.clone());
                    s.with_sink(sink).with_context(|| format!("{set} {id}"))
                })
                .collect()
        };
        self.forget_seqs = pick(self.forget_seqs, &self.forget_ids, "forget")?;
        self.retain_seqs = pick(self.retain_seqs, &self.retain_ids, "retain")?;
        self.text_seqs = pick(self.text_seqs, &[], "text chunk")?;
        Ok(self)
    }
}

/// Key statistics over the training retain facts and general text, cached on disk.
pub(crate) fn retain_key_sums(
    lm: &LanguageModel,
    cfg: &ForgetConfig,
    params: &[String],
    retain_seqs: &[Seq],
    text_seqs: &[Seq],
) -> Result<crate::forget::nullspace::KeySums> {
    let key_seqs: Vec<Seq> = retain_seqs
        .iter()
        .chain(text_seqs.iter().take(cfg.kuda.key_text_chunks))
        .cloned()
        .collect();
    let mut h = Sha256::new();
    h.update(crate::util::code_fingerprint().as_bytes());
    h.update(crate::model::cache_fingerprint(&lm.origin)?.as_bytes());
    for p in params {
        h.update(p.as_bytes());
    }
    for s in &key_seqs {
        for t in &s.ids {
            h.update(t.to_le_bytes());
        }
        h.update(b"|");
    }
    let path = crate::model::source::cache_dir()?
        .join("keystats")
        .join(format!("{}.safetensors", &hex::encode(h.finalize())[..32]));
    cached_key_sums(&path, || {
        let sp = crate::util::spinner("key statistics over retain facts and text");
        let r = key_sums(&lm.model, &key_seqs, params, lm.pad_id(), 8);
        sp.finish_and_clear();
        r
    })
}

/// The training's perplexity probe (the end of `wiki_train`) and KUDA's projectors measured on it.
pub(crate) fn probe_and_projectors(
    lm: &LanguageModel,
    method: Method,
    cfg: &ForgetConfig,
    params: &[String],
    seqs: (&[Seq], &[Seq]),
    wiki_train: &[String],
) -> Result<(PplProbe, Projectors)> {
    let probe = ppl_probe(lm, wiki_train)?;
    let projectors = kuda_projectors(lm, method, cfg, params, seqs, &probe)?;
    Ok((probe, projectors))
}

/// KUDA's null-space projectors from the key statistics of the retain data and `key_text_chunks`
/// text chunks (`seqs`), with their pass shares over the probe text printed (empty for the
/// other methods and `projection = none`). Built once per run; the key sums go when they are.
pub(crate) fn kuda_projectors(
    lm: &LanguageModel,
    method: Method,
    cfg: &ForgetConfig,
    params: &[String],
    (retain_seqs, text_seqs): (&[Seq], &[Seq]),
    probe: &PplProbe,
) -> Result<Projectors> {
    if method != Method::Kuda || cfg.kuda.projection == Projection::None {
        return Ok(Projectors::default());
    }
    let sums = retain_key_sums(lm, cfg, params, retain_seqs, text_seqs)?;
    let mut projectors =
        Projectors::build(&lm.model, &sums, params, cfg.kuda.projection, cfg.kuda.tau)?;
    drop(sums);
    let seqs: Vec<Seq> = probe
        .ids
        .chunks(512)
        .filter(|c| c.len() >= 2)
        .map(|c| Seq::text(probe.bos.into_iter().chain(c.iter().copied()).collect()))
        .collect::<Result<_>>()?;
    projectors.measure_held_out(&lm.model, &seqs, lm.pad_id())?;
    for (point, ps) in &projectors.pass {
        eprintln!(
            "projector at {point}: lets through {:.2} % of its key data's energy, {} of held-out text's",
            100.0 * ps.key_data,
            ps.held_out_text
                .map_or("?".into(), |h| format!("{:.2} %", 100.0 * h))
        );
    }
    Ok(projectors)
}

/// The plan of one part of the forget facts under `cfg`; `logp_file` keeps the forget
/// sequences' reference log-probabilities (NPO) across interruptions.
pub(crate) fn plan_for(
    model: &Transformer,
    pad: u32,
    ctx: &TrainCtx,
    cfg: &ForgetConfig,
    part: &[usize],
    logp_file: Option<PathBuf>,
) -> Result<Plan> {
    let mut fset = SeqSet::new(
        "forget",
        part.iter().map(|&i| ctx.forget_seqs[i].clone()).collect(),
    );
    if let Some(f) = logp_file {
        fset.keep_logp_in(f);
    }
    let steer = if ctx.method == Method::Rmu {
        let first = first_layer(&ctx.params);
        fset.precompute(model, pad, first, ctx.rep_layer, false, 16)?;
        let norm = mean_ref_norm(&fset)?;
        eprintln!(
            "rmu: steering norm {:.1} ({} × the mean row norm {norm:.1} at layer {}){}",
            cfg.rmu.steer_coeff * norm,
            cfg.rmu.steer_coeff,
            ctx.rep_layer.unwrap_or_default(),
            first_row_ratio(&fset)?.map_or(String::new(), |r| format!(
                "; the first rows (attention sink) are {r:.0} × the median of the others: \
                 `--set sink=drop` leaves them out"
            ))
        );
        Some(steering_vector(
            model.config.hidden_size,
            cfg.rmu.steer_coeff * norm,
            cfg.seed,
        ))
    } else {
        None
    };
    let mut plan = Plan {
        terms: methods::terms(ctx.method, cfg, ctx.edit, steer)?,
        forget: fset,
        retain: SeqSet::with_pool(
            "retain",
            ctx.retain_seqs.clone(),
            repeat_known(
                ctx.retain_seqs.len(),
                ctx.known_retain,
                cfg.experimental.retain_known_repeat,
            ),
        )?,
        text: SeqSet::new("text", ctx.text_seqs.clone()),
        params: ctx.params.clone(),
        rep_layer: ctx.rep_layer,
        projectors: ctx.projectors.clone(),
        project_at: match (
            cfg.kuda.experimental.project_update,
            cfg.kuda.experimental.moments_per_term,
        ) {
            _ if ctx.method != Method::Kuda => ProjectAt::Gradient,
            (true, _) => ProjectAt::Update,
            (false, false) => ProjectAt::Gradient,
            (false, true) => ProjectAt::OwnMoments,
        },
        pad,
        text_rows: cfg.text_ce_rows,
        ppl_probe: ctx.ppl_probe.clone(),
    };
    plan.precompute(model, 16)?;
    if ctx.method == Method::Kuda {
        let (known, all) = (ctx.known_retain, ctx.retain_seqs.len());
        center_deviation(&mut plan, cfg.kuda.center, 0..known, known..all)?;
        if cfg.kuda.experimental.start_perturbation > 0.0 {
            perturb_reference(
                &mut plan.forget,
                cfg.kuda.experimental.start_perturbation,
                cfg.seed,
            )?;
        }
    }
    Ok(plan)
}

/// Move each reference row of `set` (KUDA's h₀ at the representation layer) by a seeded
/// Gaussian vector scaled to `share` of the row's norm, so that the deviation loss has a
/// fixed, non-zero gradient at the start (see `kuda.experimental.start_perturbation`).
pub(crate) fn perturb_reference(set: &mut SeqSet, share: f64, seed: u64) -> Result<()> {
    use rand_distr::{Distribution, Normal};
    let Some((_, refs)) = set.rep_ref.as_mut() else {
        bail!("{}: reference residuals not computed", set.name);
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5EA7_0B0B);
    let normal = Normal::new(0.0f64, 1.0).expect("unit normal");
    for r in refs.iter_mut() {
        let (t, d) = r.dims2()?;
        let rows: Vec<Vec<f64>> = r.to_dtype(DType::F64)?.to_vec2()?;
        let mut out = Vec::with_capacity(t * d);
        for row in rows {
            let z: Vec<f64> = (0..d).map(|_| normal.sample(&mut rng)).collect();
            let zn = z.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            let rn = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            out.extend(row.iter().zip(&z).map(|(x, e)| x + share * rn * e / zn));
        }
        *r = Tensor::from_vec(out, (t, d), r.device())?.to_dtype(r.dtype())?;
    }
    Ok(())
}

/// The draw pool of the training retain set: each of the `n` retain facts once (`known` known
/// subjects first, then the unknown ones), followed by `repeat − 1` more turns of the known ones.
pub(crate) fn repeat_known(n: usize, known: usize, repeat: usize) -> Vec<usize> {
    (0..n).chain((1..repeat).flat_map(|_| 0..known)).collect()
}

/// Give KUDA's deviation its centre (`kuda.center`): per forget row, the point the cosine is
/// taken around. `known` and `unknown` are where the retain facts about known and unknown
/// subjects sit in the retain set (each subject once).
pub(crate) fn center_deviation(
    plan: &mut Plan,
    centre: Centre,
    known: Range<usize>,
    unknown: Range<usize>,
) -> Result<()> {
    // Centre rows by place in the prompt, and the centre for any other place.
    let (by_place, fallback): (BTreeMap<Place, Tensor>, Tensor) = match centre {
        Centre::None => return Ok(()),
        Centre::Mean => {
            let sets: Vec<&SeqSet> = [&plan.retain, &plan.text]
                .into_iter()
                .filter(|s| s.rep_ref.is_some())
                .collect();
            if sets.is_empty() {
                bail!("kuda.center = mean needs retain facts or general text at the representation layer (retain_weight or text_weight > 0)");
            }
            (BTreeMap::new(), mean_ref_row(&sets)?)
        }
        Centre::Unknown | Centre::Known => {
            let (members, what) = if centre == Centre::Unknown {
                if unknown.is_empty() {
                    bail!("kuda.center = unknown needs facts about subjects the model does not know: set retain_unknown_facts > 0");
                }
                let m: Vec<(usize, f64)> = unknown.map(|i| (i, 1.0)).collect();
                (m, "unknown subjects")
            } else {
                if known.is_empty() {
                    bail!("kuda.center = known needs retain facts about known subjects: set retain_facts > 0");
                }
                (
                    answer_balanced(&plan.retain, known),
                    "known subjects, each answer weighted the same",
                )
            };
            if plan.retain.rep_ref.is_none() {
                bail!(
                    "kuda.center = {} needs the retain facts at the representation layer (kuda.retain_weight > 0)",
                    centre.name()
                );
            }
            let means = mean_ref_row_by_place(&plan.retain, &members)?;
            let total: usize = means.values().map(|(_, n)| n).sum();
            let mut all: Option<Tensor> = None;
            for (m, n) in means.values() {
                let part = m.affine(*n as f64 / total as f64, 0.0)?;
                all = Some(match all {
                    Some(a) => (a + part)?,
                    None => part,
                });
            }
            eprintln!(
                "kuda.center = {}: {} places from {total} rows of {} {what}",
                centre.name(),
                means.len(),
                members.len()
            );
            let all =
                all.with_context(|| format!("the {what} have no representation positions"))?;
            (means.into_iter().map(|(k, (m, _))| (k, m)).collect(), all)
        }
    };
    let mut centres = Vec::with_capacity(plan.forget.len());
    let (mut moved, mut n) = (0.0, 0usize);
    let refs = &plan
        .forget
        .rep_ref
        .as_ref()
        .context("forget facts: reference residuals not computed")?
        .1;
    for (seq, r) in plan.forget.seqs.iter().zip(refs) {
        let zero = fallback.zeros_like()?;
        let mut rows = vec![zero; seq.ids.len()];
        for &p in &seq.rep_positions {
            let c = seq
                .place(p)
                .and_then(|pl| by_place.get(&pl))
                .unwrap_or(&fallback)
                .clone();
            let h0 = r.get(p)?.to_dtype(DType::F32)?;
            moved += (&h0 - &c)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
            n += 1;
            rows[p] = c;
        }
        centres.push(Tensor::stack(&rows, 0)?);
    }
    eprintln!(
        "kuda.center = {}: mean |h₀ − c| = {:.1}{}; mean |h₀| of the forget rows {:.1}",
        centre.name(),
        moved / n.max(1) as f64,
        plan.rep_layer
            .map_or(String::new(), |l| format!(" at layer {l}")),
        mean_ref_norm(&plan.forget)?
    );
    plan.forget.rep_centre = Some(centres);
    Ok(())
}

/// The forget facts `0..n` cut into `k` consecutive partitions (at least one, none empty).
pub(crate) fn partitions(n: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.min(n).max(1);
    (0..k)
        .map(|i| (i * n / k..(i + 1) * n / k).collect())
        .collect()
}

/// Train on every part of the forget facts in turn (one part unless editing in partitions).
pub(crate) fn train_all(
    lm: &mut LanguageModel,
    ctx: &TrainCtx,
    cfg: &ForgetConfig,
    out: &std::path::Path,
    stop: Option<usize>,
) -> Result<Vec<TrainSummary>> {
    let parts = partitions(ctx.forget_seqs.len(), ctx.partitions);
    let mut summaries = Vec::new();
    for (pi, part) in parts.iter().enumerate() {
        let key = hash_json(&json!({
            "cfg": cfg, "method": ctx.method, "edit": ctx.edit, "params": ctx.params, "base": ctx.base_fp,
            "forget": part.iter().map(|&i| &ctx.forget_ids[i]).collect::<Vec<_>>(),
            "new": ctx.new_answers, "retain": ctx.retain_ids, "part": pi, "parts": parts.len(),
        }));
        let dir = if parts.len() == 1 {
            out.to_path_buf()
        } else {
            out.join(format!("part-{}", pi + 1))
        };
        // The reference log-probabilities are part of the run's state, like its checkpoint:
        // named by what the checkpoint must match (the run's key, which covers the weights this
        // part starts from, the storage and the thread count), not by the code, so that a run
        // resumed by a later build goes on from the reference it started with.
        let logp_key = hash_json(&json!({
            "run": key, "weights": crate::model::weights_tag(), "threads": crate::util::threads(),
        }));
        let logp_file = dir
            .join("checkpoint")
            .join(format!("reference-logp-{}.json", &logp_key[..16]));
        let plan = plan_for(&lm.model, lm.pad_id(), ctx, cfg, part, Some(logp_file))?;
        let s = train(&mut lm.model, &plan, cfg, &key, &dir, stop)?;
        eprintln!(
            "{}: {} steps in {:.1}s",
            dir.display(),
            s.steps_done,
            s.seconds
        );
        summaries.push(s);
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::{center_deviation, repeat_known, Centre, Plan};
    use crate::forget::nullspace::Projectors;
    use crate::forget::seqs::{Seq, SeqSet};
    use candle_core::{Device, Tensor};

    /// A fact of 6 tokens: subject at 2..4, then 2 template tokens; answer token `answer`.
    /// Its reference row at position p is [value + p, 0] (layer 0).
    fn fact(answer: u32, value: f32) -> (Seq, Tensor) {
        let seq = Seq {
            ids: vec![1, 2, 3, 4, 5, 6],
            targets: vec![(5, answer)],
            rep_positions: (2..6).collect(),
            subject: Some(2..4),
            rivals: vec![],
        };
        let rows: Vec<f32> = (0..6).flat_map(|p| [value + p as f32, 0.0]).collect();
        (seq, Tensor::from_vec(rows, (6, 2), &Device::Cpu).unwrap())
    }

    fn set(name: &str, facts: Vec<(Seq, Tensor)>) -> SeqSet {
        let (seqs, refs): (Vec<Seq>, Vec<Tensor>) = facts.into_iter().unzip();
        let mut s = SeqSet::new(name, seqs);
        s.rep_ref = Some((0, refs));
        s
    }

    /// Centre of the forget fact's last subject token (position 3) for `centre`.
    fn centre_at_last_subject(centre: Centre) -> anyhow::Result<Option<f32>> {
        // Retain: three known facts (answers 7, 7, 9), then two unknown ones.
        let retain = set(
            "retain",
            vec![
                fact(7, 10.0),
                fact(7, 20.0),
                fact(9, 60.0),
                fact(7, 100.0),
                fact(9, 200.0),
            ],
        );
        let mut plan = Plan {
            terms: vec![],
            forget: set("forget", vec![fact(7, 0.0)]),
            retain,
            text: SeqSet::new("text", vec![]),
            params: vec![],
            rep_layer: Some(0),
            projectors: Projectors::default(),
            project_at: crate::forget::trainer::ProjectAt::Gradient,
            pad: 0,
            text_rows: 0,
            ppl_probe: None,
        };
        center_deviation(&mut plan, centre, 0..3, 3..5)?;
        match plan.forget.rep_centre {
            Some(c) => Ok(Some(c[0].get(3)?.to_vec1::<f32>()?[0])),
            None => Ok(None),
        }
    }

    #[test]
    fn known_retain_facts_are_repeated_after_the_unknown_ones() {
        assert_eq!(repeat_known(5, 2, 1), vec![0, 1, 2, 3, 4]);
        assert_eq!(repeat_known(5, 2, 3), vec![0, 1, 2, 3, 4, 0, 1, 0, 1]);
    }

    #[test]
    fn the_centres_average_the_unknown_or_the_balanced_known_subjects() {
        // Unknown subjects (retain members 3 and 4) at position 3: (103 + 203) / 2.
        let at = |c| centre_at_last_subject(c).unwrap();
        assert_eq!(at(Centre::Unknown), Some(153.0));
        // Known ones, each answer the same weight: ((13 + 23) / 2 + 63) / 2.
        assert_eq!(at(Centre::Known), Some(40.5));
        assert_eq!(at(Centre::None), None);
    }
}
