//! Latent knowledge (SPEC §4): per-layer answer probes trained on the original model's
//! residual stream for retain facts, then applied to the forget facts — read from the original
//! model (what was there) and from the unlearned one (what is still there, even when the
//! output no longer says it). After an edit, the same probes also say whether the new answer
//! is what the layers now carry (when the new answer is one of the probe's classes).

use crate::data::Fact;
use crate::locate::probe::{self, FitOpts, Labels, Probe, ProbeAt};
use crate::model::LanguageModel;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Probe accuracy on the forget facts at every layer (0 = embeddings, l = after block l − 1).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatentCurve {
    pub at: ProbeAt,
    /// Probes' accuracy on held-out retain facts of the original model (how good they are).
    pub retain_test: Vec<f64>,
    pub original: Vec<f64>,
    pub unlearned: Option<Vec<f64>>,
    /// Share of forget facts whose probe prediction is the new answer (editing).
    pub unlearned_new_answer: Option<Vec<f64>>,
}

/// The facts that test the probes (a quarter) and those that train them.
pub fn split(retain: &[Fact]) -> (&[Fact], &[Fact]) {
    retain.split_at(retain.len() / 4)
}

/// The original model's side of the probes: per reading position, one probe per layer, its
/// accuracy on the retain facts kept to test it and its reading of the forget facts. It does
/// not depend on the unlearned model, so an experiment that evaluates many runs of the same
/// facts fits it once per process ([`original_side`]).
struct OriginalSide {
    labels: Labels,
    curves: Vec<SideCurve>,
}

/// One reading position of an [`OriginalSide`].
struct SideCurve {
    at: ProbeAt,
    probes: Vec<Probe>,
    retain_test: Vec<f64>,
    original: Vec<f64>,
}

/// What identifies an [`OriginalSide`]: the model and the facts (ids, prompts and answers).
fn side_key(original: &LanguageModel, retain: &[Fact], forget: &[Fact]) -> Result<String> {
    let facts = |fs: &[Fact]| -> Vec<(String, String, String)> {
        fs.iter()
            .map(|f| (f.id.clone(), f.prompt.clone(), f.answer.clone()))
            .collect()
    };
    Ok(serde_json::to_string(&(
        crate::model::cache_fingerprint(&original.origin)?,
        facts(retain),
        facts(forget),
    ))?)
}

/// How many original sides this process has fitted (for tests).
static FITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The last original side fitted in this process, by its key.
static LAST_SIDE: std::sync::Mutex<Option<(String, std::sync::Arc<OriginalSide>)>> =
    std::sync::Mutex::new(None);

/// Fit the probes on the original model (or reuse the last fit of the same model and facts).
fn original_side(
    original: &LanguageModel,
    retain: &[Fact],
    forget: &[Fact],
) -> Result<std::sync::Arc<OriginalSide>> {
    let key = side_key(original, retain, forget)?;
    if let Some((k, side)) = LAST_SIDE.lock().ok().as_deref().and_then(|o| o.as_ref()) {
        if *k == key {
            return Ok(side.clone());
        }
    }
    FITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (test, train) = split(retain);
    let labels = Labels::from_facts(train)?;
    let f_train = probe::features(original, train, 16)?;
    let f_test = probe::features(original, test, 16)?;
    let f_orig = probe::features(original, forget, 16)?;
    let y_forget = labels_of(&labels, forget.iter().map(|f| f.answer.as_str()));
    let mut curves = Vec::new();
    for at in ProbeAt::BOTH {
        let (c, probes, _) = probe::curve(
            at,
            f_train.at(at),
            train,
            f_test.at(at),
            test,
            FitOpts::default(),
        )?;
        curves.push(SideCurve {
            at,
            original: read_layers(&probes, f_orig.at(at), &y_forget),
            probes,
            retain_test: c.test,
        });
    }
    let side = std::sync::Arc::new(OriginalSide { labels, curves });
    if let Ok(mut last) = LAST_SIDE.lock() {
        *last = Some((key, side.clone()));
    }
    Ok(side)
}

/// Each answer's class among the probes' labels (None: an answer they never saw).
fn labels_of<'a>(labels: &Labels, answers: impl Iterator<Item = &'a str>) -> Vec<Option<usize>> {
    answers.map(|a| labels.of(a)).collect()
}

/// Each layer's probe accuracy on features `x` (`x[l]`: rows at layer l) with labels `y`.
fn read_layers(probes: &[Probe], x: &[Vec<Vec<f32>>], y: &[Option<usize>]) -> Vec<f64> {
    probes
        .iter()
        .zip(x)
        .map(|(p, xl)| p.accuracy(xl, y))
        .collect()
}

/// Probes trained on the original model, read on both. `retain` trains (a quarter is kept to
/// test the probes); `new_answers` are the edit targets, aligned with `forget`.
pub fn latent(
    original: &LanguageModel,
    unlearned: Option<&LanguageModel>,
    retain: &[Fact],
    forget: &[Fact],
    new_answers: Option<&[String]>,
) -> Result<Vec<LatentCurve>> {
    let side = original_side(original, retain, forget)?;
    let f_unl = match unlearned {
        Some(lm) => Some(probe::features(lm, forget, 16)?),
        None => None,
    };
    let y_forget = labels_of(&side.labels, forget.iter().map(|f| f.answer.as_str()));
    let y_new = new_answers.map(|v| labels_of(&side.labels, v.iter().map(String::as_str)));
    Ok(side
        .curves
        .iter()
        .map(|c| LatentCurve {
            at: c.at,
            retain_test: c.retain_test.clone(),
            original: c.original.clone(),
            unlearned: f_unl
                .as_ref()
                .map(|fu| read_layers(&c.probes, fu.at(c.at), &y_forget)),
            unlearned_new_answer: f_unl
                .as_ref()
                .zip(y_new.as_ref())
                .map(|(fu, yn)| read_layers(&c.probes, fu.at(c.at), yn)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// The unlearned model's reading goes through the same probes: the original read as the
    /// "unlearned" model gives the original's curve exactly; a second evaluation of the same
    /// facts reuses the fit (same numbers, no new fit), other facts fit again.
    #[test]
    fn probes_fit_once_per_facts_and_read_both_models_alike() {
        let lm = LanguageModel::load("random:tiny", &candle_core::Device::Cpu).unwrap();
        let facts =
            crate::data::load_task("sports", crate::data::dedup::Policy::merge_if(true)).unwrap();
        let (retain, forget) = (&facts[..48], &facts[48..56]);
        let before = FITS.load(Ordering::Relaxed);
        let a = latent(&lm, Some(&lm), retain, forget, None).unwrap();
        let b = latent(&lm, Some(&lm), retain, forget, None).unwrap();
        assert_eq!(FITS.load(Ordering::Relaxed), before + 1);
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.original.len(), lm.model.config.num_layers + 1);
            assert_eq!(x.unlearned.as_ref(), Some(&x.original));
            assert_eq!(x.original, y.original);
            assert_eq!(x.retain_test, y.retain_test);
        }
        latent(&lm, None, retain, &facts[56..64], None).unwrap();
        assert_eq!(FITS.load(Ordering::Relaxed), before + 2);
    }
}
