//! KUDA's two-stage tuning: trial runs that pick τ by the retain drift on validation facts,
//! then β by the forget accuracy (a fixed target or the know-nothing floor).

use crate::data::Fact;
use crate::eval::completion::accuracy;
use crate::eval::floor::know_nothing_floor;
use crate::forget::config::{ForgetConfig, Method};
use crate::forget::plan::{train_all, TrainCtx};
use crate::forget::seqs::{Seq, SeqSet};
use crate::forget::trainer::first_layer;
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

/// KUDA's two-stage tuning: the largest τ whose retain drift on a validation split stays under
/// `max_drift`, then the smallest β whose forget accuracy (top-1 among candidates) reaches
/// `forget_target` (a fixed accuracy, or the trial model's know-nothing floor).
#[derive(Clone, Debug, Serialize)]
pub struct TuneArgs {
    pub taus: Vec<f64>,
    pub max_drift: f64,
    pub betas: Vec<f64>,
    pub forget_target: ForgetTarget,
}

/// What forget accuracy the β stage of the tuning aims for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgetTarget {
    /// A fixed accuracy (top-1 among candidates), e.g. 0.05.
    Fixed(f64),
    /// The trial model's know-nothing floor ([`crate::eval::floor`]) plus a margin: the model
    /// answers about the forget subjects no better than about made-up ones.
    Floor(f64),
}

impl std::str::FromStr for ForgetTarget {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "--forget-target {s:?}: use an accuracy in [0, 1] (0.05), `floor` or `floor+0.05`"
            )
        };
        let num = |x: &str| -> Result<f64> {
            let v: f64 = x.trim().parse().map_err(|_| bad())?;
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(bad())
            }
        };
        match s.trim().strip_prefix("floor") {
            Some("") => Ok(ForgetTarget::Floor(0.0)),
            Some(rest) => Ok(ForgetTarget::Floor(num(rest
                .strip_prefix('+')
                .ok_or_else(bad)?)?)),
            None => Ok(ForgetTarget::Fixed(num(s)?)),
        }
    }
}

/// What the tuning measures its trials on.
pub(crate) struct TuneData<'a> {
    /// Facts the τ stage's retain drift is measured on.
    pub(crate) validation: &'a [Seq],
    /// The forget facts (the β stage's accuracy).
    pub(crate) forget: &'a [Fact],
    /// Subjects the know-nothing floor makes names from.
    pub(crate) floor_pool: &'a [Fact],
}

/// Run the two-stage tuning; returns the chosen settings and a report of every trial. The
/// model's weights are restored after each trial.
pub(crate) fn tune(
    lm: &mut LanguageModel,
    ctx: &TrainCtx,
    mut cfg: ForgetConfig,
    t: &TuneArgs,
    data: TuneData,
    dir: &std::path::Path,
) -> Result<(ForgetConfig, serde_json::Value)> {
    let TuneData {
        validation,
        forget,
        floor_pool,
    } = data;
    if ctx.method != Method::Kuda {
        bail!(
            "--tune is KUDA's two-stage tuning; method {} has no τ and β",
            ctx.method.name()
        );
    }
    if validation.is_empty() {
        bail!("--tune needs validation facts, and no known facts are left for them");
    }
    let original: Vec<(String, candle_core::Tensor)> = ctx
        .params
        .iter()
        .map(|p| Ok((p.clone(), lm.model.weights().dense(p, lm.model.device())?)))
        .collect::<Result<_>>()?;
    let restore = |lm: &mut LanguageModel| -> Result<()> {
        for (p, w) in &original {
            lm.model.set_param(p, w.clone())?;
        }
        Ok(())
    };
    let mut val = SeqSet::new("validation", validation.to_vec());
    let first = first_layer(&ctx.params);
    val.precompute(&lm.model, lm.pad_id(), first, ctx.rep_layer, false, 16)?;
    let mut taus = t.taus.clone();
    taus.sort_by(|a, b| b.total_cmp(a));
    let mut trials = Vec::new();
    let mut chosen_tau = None;
    for &tau in &taus {
        cfg.kuda.tau = tau;
        train_all(lm, ctx, &cfg, &dir.join(format!("tau-{tau}")), None)?;
        let drift =
            crate::forget::trainer::repr_drift(&lm.model, ctx.rep_layer, lm.pad_id(), &val)?;
        restore(lm)?;
        eprintln!(
            "tune τ = {tau}: retain drift {drift:.4} (bound {})",
            t.max_drift
        );
        trials.push(json!({"stage": "tau", "tau": tau, "retain_drift": drift}));
        if drift <= t.max_drift {
            chosen_tau = Some(tau);
            break;
        }
    }
    let tau = match chosen_tau {
        Some(x) => x,
        None => {
            let smallest = *taus.last().context("--tune-tau is empty")?;
            eprintln!(
                "no τ kept the retain drift under {}; using the smallest, {smallest}",
                t.max_drift
            );
            smallest
        }
    };
    cfg.kuda.tau = tau;
    let mut betas = t.betas.clone();
    betas.sort_by(|a, b| a.total_cmp(b));
    let mut best: Option<(f64, f64)> = None;
    for &beta in &betas {
        cfg.kuda.beta = beta;
        train_all(lm, ctx, &cfg, &dir.join(format!("beta-{beta}")), None)?;
        let acc = accuracy(lm, forget, |f| f.answer.clone())?.top1_candidates;
        let target = match t.forget_target {
            ForgetTarget::Fixed(x) => x,
            ForgetTarget::Floor(margin) => {
                know_nothing_floor(lm, forget, floor_pool)?.top1_candidates + margin
            }
        };
        restore(lm)?;
        eprintln!(
            "tune β = {beta}: forget accuracy {:.1}% (target {:.1}%)",
            100.0 * acc,
            100.0 * target
        );
        trials.push(json!({"stage": "beta", "tau": tau, "beta": beta, "forget_accuracy": acc, "target": target}));
        if best.is_none_or(|(_, a)| acc < a) {
            best = Some((beta, acc));
        }
        if acc <= target {
            break;
        }
    }
    let (beta, _) = best.context("--tune-beta is empty")?;
    cfg.kuda.beta = beta;
    eprintln!("tuned: τ = {tau}, β = {beta}");
    Ok((
        cfg,
        json!({"tau": tau, "beta": beta, "trials": trials, "max_drift": t.max_drift, "forget_target": t.forget_target}),
    ))
}

#[cfg(test)]
mod tests {
    use super::ForgetTarget;

    #[test]
    fn forget_targets_parse_numbers_and_the_floor() {
        let p = |s: &str| s.parse::<ForgetTarget>();
        assert_eq!(p("0.05").unwrap(), ForgetTarget::Fixed(0.05));
        assert_eq!(p("floor").unwrap(), ForgetTarget::Floor(0.0));
        assert_eq!(p("floor+0.05").unwrap(), ForgetTarget::Floor(0.05));
        for bad in ["1.5", "-0.1", "floor-0.05", "floor+x", "ceiling", ""] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains("--forget-target"), "{bad:?}: {e}");
        }
    }
}
