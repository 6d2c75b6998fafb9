//! Fact-lookup probes (Mechanistic Unlearning's FLU, SPEC §2.4a): the residual stream after
//! each block, read at the last subject token and at the last token, and one multinomial
//! logistic regression per layer that predicts the fact's answer (the attribute) from it.
//! Trained and tested on disjoint facts, the test accuracy by layer shows where the model
//! looks the attribute up: the MLP layers where it rises steeply are the FLU layers. The same
//! probes, trained on the original model, read the latent knowledge of an unlearned one.

use crate::data::Fact;
use crate::model::batch::{Batch, PadSide};
use crate::model::hooks::{HookPoint, Hooks};
use crate::model::{LanguageModel, LogitsAt, RunOpts, Transformer};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where a probe reads the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeAt {
    LastSubject,
    LastToken,
}

impl ProbeAt {
    pub const BOTH: [ProbeAt; 2] = [ProbeAt::LastSubject, ProbeAt::LastToken];

    pub fn name(self) -> &'static str {
        match self {
            ProbeAt::LastSubject => "last subject token",
            ProbeAt::LastToken => "last token",
        }
    }
}

/// Residual-stream features of facts: `layers[l][i]` is fact i's residual after block l − 1
/// (`l = 0`: the embeddings, `l = L`: after the last block), for each reading position.
pub struct Features {
    pub last_subject: Vec<Vec<Vec<f32>>>,
    pub last_token: Vec<Vec<Vec<f32>>>,
}

impl Features {
    pub fn at(&self, at: ProbeAt) -> &Vec<Vec<Vec<f32>>> {
        match at {
            ProbeAt::LastSubject => &self.last_subject,
            ProbeAt::LastToken => &self.last_token,
        }
    }
}

/// Residual streams of `facts` at their last subject token and last prompt token, every layer.
pub fn features(lm: &LanguageModel, facts: &[Fact], batch_size: usize) -> Result<Features> {
    let items = facts
        .iter()
        .map(|f| {
            let (t, span) = lm
                .tokenizer
                .encode_with_span(&f.prompt, &f.subject, true)
                .with_context(|| format!("fact {}", f.id))?;
            Ok((t, span.end - 1))
        })
        .collect::<Result<Vec<_>>>()?;
    features_of(&lm.model, lm.pad_id(), &items, batch_size)
}

/// Residual streams of token sequences at a given position (the last subject token) and at
/// their last token, every layer.
pub fn features_of(
    model: &Transformer,
    pad_id: u32,
    items: &[(Vec<u32>, usize)],
    batch_size: usize,
) -> Result<Features> {
    let n_layers = model.config.num_layers;
    let points: Vec<HookPoint> = std::iter::once(HookPoint::ResidPre(0))
        .chain((0..n_layers).map(HookPoint::ResidPost))
        .collect();
    let mut hooks = Hooks::new();
    for p in &points {
        hooks = hooks.cache(*p);
    }
    let mut out = Features {
        last_subject: vec![Vec::with_capacity(items.len()); n_layers + 1],
        last_token: vec![Vec::with_capacity(items.len()); n_layers + 1],
    };
    for chunk in items.chunks(batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(t, _)| t.clone()).collect();
        let batch = Batch::new(&ids, pad_id, PadSide::Right, model.device())?;
        let run = model.run(
            &batch,
            &RunOpts {
                hooks: Some(&hooks),
                logits: LogitsAt::None,
                ..Default::default()
            },
        )?;
        for (l, p) in points.iter().enumerate() {
            let act = run
                .cache
                .get(p)
                .with_context(|| format!("activation {p} was not cached"))?
                .to_dtype(candle_core::DType::F32)?;
            for (r, ((_, s), &last)) in chunk.iter().zip(&batch.last).enumerate() {
                let row = act.get(r)?;
                out.last_subject[l].push(row.get(*s)?.to_vec1()?);
                out.last_token[l].push(row.get(last)?.to_vec1()?);
            }
        }
    }
    Ok(out)
}

/// Class labels: each fact's answer, as an index into the sorted answers of `train`.
pub struct Labels {
    pub classes: Vec<String>,
}

impl Labels {
    pub fn from_facts(train: &[Fact]) -> Result<Labels> {
        let mut classes: Vec<String> = train.iter().map(|f| f.answer.clone()).collect();
        classes.sort();
        classes.dedup();
        if classes.len() < 2 {
            bail!(
                "a probe needs at least two different answers among its {} training facts",
                train.len()
            );
        }
        Ok(Labels { classes })
    }

    /// Index of `answer`, or None for an answer the probe never saw (counted as a miss).
    pub fn of(&self, answer: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == answer)
    }
}

/// A multinomial logistic regression on standardized features.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// `classes × dim`, row-major.
    w: Vec<f64>,
    b: Vec<f64>,
    classes: usize,
    /// The fit's gradient norm where it stopped (see [`FitOpts::tol`]).
    #[serde(default)]
    pub grad_norm: f64,
}

pub use super::logreg::FitOpts;

/// One line on stderr when some of `probes` stopped at the iteration cap short of the
/// tolerance: near their optimum, not at it.
pub fn report_unconverged<'a>(probes: impl IntoIterator<Item = &'a Probe>) {
    let tol = FitOpts::default().tol;
    let (mut n, mut short, mut worst) = (0, 0, 0f64);
    for p in probes {
        n += 1;
        if p.grad_norm > tol {
            short += 1;
            worst = worst.max(p.grad_norm);
        }
    }
    if short > 0 {
        eprintln!(
            "note: {short} of {n} probes stopped at the iteration cap with gradient norm up to {worst:.1e} (tolerance {tol:.0e}): near their optimum, not at it"
        );
    }
}

impl Probe {
    /// Fit on standardized features: the minimum of the mean cross-entropy + l2/2·‖W‖², a
    /// strictly convex problem solved to its optimum (see [`super::logreg`]), so the probe
    /// depends on the data only, not on a seed or on the order of floating-point sums.
    pub fn fit(x: &[Vec<f32>], y: &[usize], classes: usize, o: FitOpts) -> Result<Probe> {
        if x.is_empty() || x.len() != y.len() {
            bail!("probe: {} feature rows for {} labels", x.len(), y.len());
        }
        if let Some(&bad) = y.iter().find(|&&c| c >= classes) {
            bail!("probe: label {bad} is not below the class count {classes}");
        }
        let d = x[0].len();
        let n = x.len() as f64;
        let mut mean = vec![0f64; d];
        for r in x {
            if r.len() != d {
                bail!(
                    "probe: feature rows of different lengths ({} and {d})",
                    r.len()
                );
            }
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64 / n;
            }
        }
        let mut var = vec![0f64; d];
        for r in x {
            for ((s, &v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (v as f64 - m).powi(2) / n;
            }
        }
        let scale: Vec<f64> = var.iter().map(|v| 1.0 / (v.sqrt() + 1e-6)).collect();
        let xs: Vec<Vec<f64>> = x
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&mean)
                    .zip(&scale)
                    .map(|((&v, m), s)| (v as f64 - m) * s)
                    .collect()
            })
            .collect();
        let f = super::logreg::fit(&xs, y, classes, o)?;
        Ok(Probe {
            mean,
            scale,
            w: f.w,
            b: f.b,
            classes,
            grad_norm: f.grad_norm,
        })
    }

    fn softmax_std(&self, r: &[f64]) -> Vec<f64> {
        let d = r.len();
        let z: Vec<f64> = (0..self.classes)
            .map(|c| {
                self.b[c]
                    + self.w[c * d..(c + 1) * d]
                        .iter()
                        .zip(r)
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
            })
            .collect();
        let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    /// Class probabilities of one raw feature row.
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f64> {
        let r: Vec<f64> = x
            .iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .map(|((&v, m), s)| (v as f64 - m) * s)
            .collect();
        self.softmax_std(&r)
    }

    pub fn predict(&self, x: &[f32]) -> usize {
        let p = self.predict_proba(x);
        (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .unwrap_or(0)
    }

    /// Share of rows predicted as their label (None labels count as misses).
    pub fn accuracy(&self, x: &[Vec<f32>], y: &[Option<usize>]) -> f64 {
        if x.is_empty() {
            return f64::NAN;
        }
        let hits = x
            .iter()
            .zip(y)
            .filter(|(r, l)| Some(self.predict(r)) == **l)
            .count();
        hits as f64 / x.len() as f64
    }
}

/// Probe accuracy at every layer (index 0 = embeddings, l + 1 = after block l).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeCurve {
    pub at: ProbeAt,
    pub train: Vec<f64>,
    pub test: Vec<f64>,
    /// Accuracy of always answering the most common training class, on the test facts.
    pub majority: f64,
}

/// Fit one probe per layer on `train` features and score it on `test` (disjoint facts).
/// Returns the curve and the fitted probes.
pub fn curve(
    at: ProbeAt,
    train_x: &[Vec<Vec<f32>>],
    train_facts: &[Fact],
    test_x: &[Vec<Vec<f32>>],
    test_facts: &[Fact],
    o: FitOpts,
) -> Result<(ProbeCurve, Vec<Probe>, Labels)> {
    let labels = Labels::from_facts(train_facts)?;
    let ytr: Vec<usize> = train_facts
        .iter()
        .map(|f| labels.of(&f.answer).expect("train answers are classes"))
        .collect();
    let yte: Vec<Option<usize>> = test_facts.iter().map(|f| labels.of(&f.answer)).collect();
    let mut counts = vec![0usize; labels.classes.len()];
    for &c in &ytr {
        counts[c] += 1;
    }
    let top = (0..counts.len()).max_by_key(|&c| counts[c]).unwrap_or(0);
    let majority = if yte.is_empty() {
        f64::NAN
    } else {
        yte.iter().filter(|l| **l == Some(top)).count() as f64 / yte.len() as f64
    };
    let mut c = ProbeCurve {
        at,
        train: Vec::new(),
        test: Vec::new(),
        majority,
    };
    let mut probes = Vec::new();
    let bar = crate::util::progress(train_x.len() as u64, "fitting probes");
    for (xl, tl) in train_x.iter().zip(test_x) {
        let p = Probe::fit(xl, &ytr, labels.classes.len(), o)?;
        let ytr_opt: Vec<Option<usize>> = ytr.iter().map(|&v| Some(v)).collect();
        c.train.push(p.accuracy(xl, &ytr_opt));
        c.test.push(p.accuracy(tl, &yte));
        probes.push(p);
        bar.inc(1);
    }
    bar.finish_and_clear();
    report_unconverged(&probes);
    Ok((c, probes, labels))
}

/// Rise of the test accuracy contributed by each block: `rise[l] = test[l + 1] − test[l]`.
pub fn rises(c: &ProbeCurve) -> Vec<f64> {
    c.test.windows(2).map(|w| w[1] - w[0]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian blobs with a shift along one coordinate: the probe separates them, and a
    /// feature that carries no signal gives chance accuracy on fresh data.
    #[test]
    fn probe_separates_classes_and_not_noise() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut make = |n: usize, shift: f32| {
            let mut x = Vec::new();
            let mut y = Vec::new();
            for i in 0..n {
                let c = i % 3;
                let mut r: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0..1.0)).collect();
                r[5] += shift * c as f32;
                x.push(r);
                y.push(c);
            }
            (x, y)
        };
        let (x, y) = make(150, 2.0);
        let p = Probe::fit(&x, &y, 3, FitOpts::default()).unwrap();
        let (xt, yt) = make(150, 2.0);
        let yt: Vec<Option<usize>> = yt.into_iter().map(Some).collect();
        assert!(p.accuracy(&xt, &yt) > 0.9, "{}", p.accuracy(&xt, &yt));
        let (x, y) = make(150, 0.0);
        let p = Probe::fit(&x, &y, 3, FitOpts::default()).unwrap();
        let (xt, yt) = make(300, 0.0);
        let yt: Vec<Option<usize>> = yt.into_iter().map(Some).collect();
        let acc = p.accuracy(&xt, &yt);
        assert!((0.2..0.47).contains(&acc), "noise accuracy {acc}");
        let probs = p.predict_proba(&xt[0]);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Probe::fit(&[], &[], 2, FitOpts::default()).is_err());
        let e = Probe::fit(&[vec![0.0]], &[4], 2, FitOpts::default()).unwrap_err();
        assert!(e.to_string().contains("label 4"), "{e}");
    }
}
