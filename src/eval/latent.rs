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

/// Probes trained on the original model, read on both. `retain` trains (a quarter is kept to
/// test the probes); `new_answers` are the edit targets, aligned with `forget`.
pub fn latent(
    original: &LanguageModel,
    unlearned: Option<&LanguageModel>,
    retain: &[Fact],
    forget: &[Fact],
    new_answers: Option<&[String]>,
) -> Result<Vec<LatentCurve>> {
    let (test, train) = split(retain);
    let labels = Labels::from_facts(train)?;
    let f_train = probe::features(original, train, 16)?;
    let f_test = probe::features(original, test, 16)?;
    let f_orig = probe::features(original, forget, 16)?;
    let f_unl = match unlearned {
        Some(lm) => Some(probe::features(lm, forget, 16)?),
        None => None,
    };
    let y = |facts: &[Fact]| -> Vec<Option<usize>> {
        facts.iter().map(|f| labels.of(&f.answer)).collect()
    };
    let (y_train, y_test, y_forget) = (y(train), y(test), y(forget));
    let y_train: Vec<usize> = y_train.into_iter().flatten().collect();
    let y_new: Option<Vec<Option<usize>>> =
        new_answers.map(|v| v.iter().map(|a| labels.of(a)).collect());
    let mut out = Vec::new();
    let bar = crate::util::progress(
        (2 * f_train.last_token.len()) as u64,
        "latent-knowledge probes",
    );
    for at in ProbeAt::BOTH {
        let mut c = LatentCurve {
            at,
            retain_test: Vec::new(),
            original: Vec::new(),
            unlearned: f_unl.as_ref().map(|_| Vec::new()),
            unlearned_new_answer: f_unl.as_ref().and(y_new.as_ref()).map(|_| Vec::new()),
        };
        for l in 0..f_train.at(at).len() {
            let p = Probe::fit(
                &f_train.at(at)[l],
                &y_train,
                labels.classes.len(),
                FitOpts::default(),
            )?;
            c.retain_test.push(p.accuracy(&f_test.at(at)[l], &y_test));
            c.original.push(p.accuracy(&f_orig.at(at)[l], &y_forget));
            if let (Some(u), Some(fu)) = (c.unlearned.as_mut(), f_unl.as_ref()) {
                u.push(p.accuracy(&fu.at(at)[l], &y_forget));
                if let (Some(n), Some(yn)) = (c.unlearned_new_answer.as_mut(), y_new.as_ref()) {
                    n.push(p.accuracy(&fu.at(at)[l], yn));
                }
            }
            bar.inc(1);
        }
        out.push(c);
    }
    bar.finish_and_clear();
    Ok(out)
}
