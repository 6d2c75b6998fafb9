//! `unlearn locate`: known facts of a task → forget split → causal traces averaged over the
//! facts (by token role, as ROME does) → a [`Localization`] written as JSON with an SVG heat map
//! and bar chart.

use super::attribution::Corruption;
use super::localization::{best_window, random_mlps, Component, Localization};
use super::probe::{self, FitOpts, ProbeAt, ProbeCurve};
use super::trace::{trace, TraceKind, TraceOpts};
use crate::data::dedup::Policy;
use crate::data::known;
use crate::data::Fact;
use crate::model::LanguageModel;
use crate::report::svg;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Token roles the residual grid is averaged over (ROME's categories).
pub const ROLES: [&str; 6] = [
    "first subject",
    "middle subject",
    "last subject",
    "first after",
    "further",
    "last token",
];

/// Extraction heads kept by path patching (the heads with the largest direct effect).
pub const EXTRACTION_HEADS: usize = 4;

/// Localization methods of `unlearn locate`.
pub const METHODS: [&str; 7] = [
    "causal-trace",
    "kuda-window",
    "attribution",
    "probe",
    "path-patch",
    "random",
    "all-mlps",
];

/// Options of `unlearn locate`.
pub struct LocateArgs {
    pub model: String,
    pub task: String,
    pub forget: String,
    pub known: String,
    /// Merge duplicate facts of a user's file instead of refusing them.
    pub dedup: bool,
    pub seed: u64,
    pub method: String,
    pub top_k: usize,
    /// MLPs in KUDA's window.
    pub window: usize,
    /// MLP layers restored together in the MLP trace, centred on each layer (1 = the
    /// single-layer effect, which the window choice then sums).
    pub restore_window: usize,
    /// What the noise's 3 × std is measured on: `subjects` (the subject tokens' embeddings
    /// over the task's known facts, as ROME does) or `vocabulary` (the whole matrix).
    pub noise_from: String,
    pub samples: usize,
    pub max_facts: usize,
    pub budget_of: Option<PathBuf>,
    /// Attribution's corrupted run: `noise` (3 × embedding std on the subject) or `replace`
    /// (the subject swapped for another known subject of as many tokens).
    pub corruption: String,
    /// Causal tracing also restores every head at the last token (heads.svg).
    pub heads: bool,
    pub out: PathBuf,
}

/// Mean of a residual grid row over the positions of each role (NaN when a role is empty).
fn by_role(row: &[f64], s0: usize, s1: usize) -> Vec<f64> {
    let t = row.len();
    let mean = |r: std::ops::Range<usize>| {
        if r.is_empty() {
            f64::NAN
        } else {
            r.clone().map(|i| row[i]).sum::<f64>() / r.len() as f64
        }
    };
    vec![
        mean(s0..s0 + 1),
        mean(s0 + 1..s1.saturating_sub(1).max(s0 + 1)),
        mean(s1 - 1..s1),
        mean(s1..(s1 + 1).min(t - 1).max(s1)),
        mean((s1 + 1).min(t - 1)..t - 1),
        mean(t - 1..t),
    ]
}

/// What a localization method measured on the traced facts.
struct Scores {
    /// One score per MLP layer: what the bar chart draws and the window sums.
    mlp: Vec<f64>,
    /// One score per head (layer × head): restored at the last token, or path patching's
    /// direct effect; zeros where the method does not score heads.
    head: Vec<Vec<f64>>,
    /// Whether `head` was measured (and is ranked and drawn).
    heads_measured: bool,
    trace: Option<Traces>,
    attribution: Option<super::attribution::AttributionScores>,
    paths: Option<super::path_patch::PathScores>,
    probes: Option<Vec<ProbeCurve>>,
}

/// Causal traces averaged over the facts: the residual grid by token role, and each fact's own.
struct Traces {
    resid_roles: Vec<Vec<f64>>,
    per_fact: Vec<serde_json::Value>,
}

impl Scores {
    fn empty(n_layers: usize, n_heads: usize) -> Scores {
        Scores {
            mlp: vec![0.0; n_layers],
            head: vec![vec![0.0; n_heads]; n_layers],
            heads_measured: false,
            trace: None,
            attribution: None,
            paths: None,
            probes: None,
        }
    }

    /// Every MLP and every scored head, best first.
    fn ranked(&self) -> Vec<(Component, f64)> {
        let mut ranked: Vec<(Component, f64)> = self
            .mlp
            .iter()
            .enumerate()
            .map(|(l, &v)| (Component::Mlp { layer: l }, v))
            .collect();
        let heads = match &self.attribution {
            Some(s) => Some(&s.heads),
            None if self.heads_measured => Some(&self.head),
            None => None,
        };
        for (l, hs) in heads.into_iter().flatten().enumerate() {
            ranked.extend(
                hs.iter()
                    .enumerate()
                    .map(|(h, &v)| (Component::Head { layer: l, head: h }, v)),
            );
        }
        ranked.sort_by(|x, y| y.1.total_cmp(&x.1));
        ranked
    }
}

fn check_args(a: &LocateArgs) -> Result<()> {
    if a.samples == 0 || a.window == 0 || a.top_k == 0 || a.max_facts == 0 || a.restore_window == 0
    {
        bail!("--samples, --window, --restore-window, --top-k and --max-facts must be at least 1");
    }
    if !METHODS.contains(&a.method.as_str()) {
        bail!("--method {:?}: use one of {}", a.method, METHODS.join(", "));
    }
    Ok(())
}

/// The noise base (the noise is 3 × it): ROME's is the std of the subject tokens' embeddings
/// over the task's known facts; `vocabulary` takes the whole embedding matrix.
fn noise_base(lm: &LanguageModel, known_facts: &[Fact], from: &str) -> Result<f64> {
    match from {
        "subjects" => {
            let spans = known_facts
                .iter()
                .map(|f| {
                    let (ids, span) = lm.tokenizer.encode_with_span(&f.prompt, &f.subject, true)?;
                    Ok(ids[span].to_vec())
                })
                .collect::<Result<Vec<_>>>()?;
            super::trace::subject_embedding_std(&lm.model, &spans)
        }
        "vocabulary" => super::trace::embedding_std(&lm.model),
        other => bail!("--noise-from {other:?}: use subjects or vocabulary"),
    }
}

/// A traced fact's prompt ids (BOS first), its subject's token span and its answer's token.
fn encoded(lm: &LanguageModel, f: &Fact) -> Result<(Vec<u32>, std::ops::Range<usize>, u32)> {
    let (ids, span) = lm.tokenizer.encode_with_span(&f.prompt, &f.subject, true)?;
    Ok((ids, span, known::answer_token(lm, &f.answer)?))
}

/// Causal tracing of each fact: the residual at every layer × token, the MLPs restored at the
/// last subject token, and (with `a.heads`) every head at the last token; averaged over facts.
fn trace_facts(
    a: &LocateArgs,
    lm: &LanguageModel,
    traced: &[&Fact],
    noise_base: f64,
) -> Result<Scores> {
    let n_layers = lm.model.config.num_layers;
    let n_heads = lm.model.config.num_heads;
    let mut s = Scores::empty(n_layers, n_heads);
    s.heads_measured = a.heads;
    let mut per_fact = Vec::new();
    let mut resid_roles = vec![vec![0f64; ROLES.len()]; n_layers];
    let mut role_counts = vec![vec![0usize; ROLES.len()]; n_layers];
    let bar = crate::util::progress(traced.len() as u64, "tracing facts");
    for f in traced {
        bar.inc(1);
        let (ids, span, answer) = encoded(lm, f)?;
        let base = TraceOpts {
            samples: a.samples,
            seed: a.seed,
            noise_base: Some(noise_base),
            ..Default::default()
        };
        let resid = trace(&lm.model, &ids, span.clone(), answer, &base)?;
        let mlp_opts = TraceOpts {
            kind: TraceKind::Mlp,
            window: a.restore_window.min(n_layers),
            positions: Some(vec![span.end - 1]),
            ..base.clone()
        };
        let mlp = trace(&lm.model, &ids, span.clone(), answer, &mlp_opts)?;
        // Each head's output at the last token (where heads move the attribute).
        if a.heads {
            let head_opts = TraceOpts {
                kind: TraceKind::Head,
                window: 1,
                positions: Some(vec![ids.len() - 1]),
                ..base.clone()
            };
            let heads = trace(&lm.model, &ids, span.clone(), answer, &head_opts)?;
            for (l, row) in s.head.iter_mut().enumerate() {
                for (h, v) in row.iter_mut().enumerate() {
                    *v += heads.grid[l * n_heads + h][ids.len() - 1] - heads.p_corrupt;
                }
            }
        }
        for l in 0..n_layers {
            let roles = by_role(&resid.effects()[l], span.start, span.end);
            for (r, v) in roles.iter().enumerate() {
                if v.is_finite() {
                    resid_roles[l][r] += v;
                    role_counts[l][r] += 1;
                }
            }
            s.mlp[l] += mlp.grid[l][span.end - 1] - mlp.p_corrupt;
        }
        per_fact.push(json!({"id": f.id, "subject": f.subject, "answer": f.answer, "p_clean": resid.p_clean,
            "p_corrupt": resid.p_corrupt, "resid_grid": resid.grid, "mlp_last_subject": (0..n_layers).map(|l| mlp.grid[l][span.end - 1]).collect::<Vec<_>>()}));
    }
    bar.finish_and_clear();
    let n = traced.len() as f64;
    for l in 0..n_layers {
        s.mlp[l] /= n;
        for v in s.head[l].iter_mut() {
            *v /= n;
        }
        for r in 0..ROLES.len() {
            resid_roles[l][r] = if role_counts[l][r] > 0 {
                resid_roles[l][r] / role_counts[l][r] as f64
            } else {
                f64::NAN
            };
        }
    }
    s.trace = Some(Traces {
        resid_roles,
        per_fact,
    });
    Ok(s)
}

/// Attribution patching of the traced facts against a corrupted run (noise on the subject, or
/// another known subject of as many tokens).
fn attribution_scores(
    a: &LocateArgs,
    lm: &LanguageModel,
    known_facts: &[Fact],
    traced: &[&Fact],
    noise_base: f64,
) -> Result<Scores> {
    let mut items = Vec::new();
    for f in traced {
        let (ids, span, answer) = encoded(lm, f)?;
        let alt = f
            .candidates
            .iter()
            .find(|c| **c != f.answer)
            .or(f.new_answer.as_ref())
            .with_context(|| {
                format!(
                    "fact {}: attribution needs an alternative answer (candidates or new_answer)",
                    f.id
                )
            })?;
        let corrupt_ids = if a.corruption == "replace" {
            Some(replaced_subject(lm, f, known_facts, ids.len())?)
        } else {
            None
        };
        items.push(super::attribution::AttributionItem {
            ids,
            subject: span,
            answer,
            alternative: known::answer_token(lm, alt)?,
            corrupt_ids,
        });
    }
    let corruption = match a.corruption.as_str() {
        "noise" => Corruption::Noise {
            std: noise_base * 3.0,
        },
        "replace" => Corruption::Replace,
        other => bail!("--corruption {other:?}: use noise or replace"),
    };
    let scores = super::attribution::attribute(&lm.model, &items, corruption, a.seed)?;
    let c = &lm.model.config;
    Ok(Scores {
        mlp: scores.mlps.clone(),
        attribution: Some(scores),
        ..Scores::empty(c.num_layers, c.num_heads)
    })
}

/// Path patching of the traced facts: each head's direct effect on the answer, and each MLP's
/// effect through the extraction heads.
fn path_patch_scores(
    a: &LocateArgs,
    lm: &LanguageModel,
    traced: &[&Fact],
    noise_base: f64,
) -> Result<Scores> {
    let mut items = Vec::new();
    for f in traced {
        let (ids, span, answer) = encoded(lm, f)?;
        items.push(super::path_patch::PathItem {
            ids,
            subject: span,
            answer,
        });
    }
    let o = super::path_patch::PathOpts {
        samples: a.samples,
        noise_std: noise_base * 3.0,
        seed: a.seed,
        extraction_heads: EXTRACTION_HEADS,
    };
    let bar = crate::util::progress(2 * items.len() as u64, "path patching");
    let paths = super::path_patch::path_patch(&lm.model, &items, &o, || bar.inc(1))?;
    bar.finish_and_clear();
    let c = &lm.model.config;
    Ok(Scores {
        mlp: paths.mlp_via_heads.clone(),
        head: paths.head_direct.clone(),
        heads_measured: true,
        paths: Some(paths),
        ..Scores::empty(c.num_layers, c.num_heads)
    })
}

/// The scores of the method `a.method` (random and all-MLPs score nothing).
fn score(
    a: &LocateArgs,
    lm: &LanguageModel,
    known_facts: &[Fact],
    traced: &[&Fact],
    noise_base: f64,
) -> Result<Scores> {
    let c = &lm.model.config;
    match a.method.as_str() {
        "causal-trace" | "kuda-window" => trace_facts(a, lm, traced, noise_base),
        "attribution" => attribution_scores(a, lm, known_facts, traced, noise_base),
        "path-patch" => path_patch_scores(a, lm, traced, noise_base),
        "probe" => {
            let (curves, rise) = probe_curves(lm, known_facts, a.seed)?;
            Ok(Scores {
                mlp: rise,
                probes: Some(curves),
                ..Scores::empty(c.num_layers, c.num_heads)
            })
        }
        _ => Ok(Scores::empty(c.num_layers, c.num_heads)),
    }
}

/// The MLP layers a method chooses: the top k by score (k from `--top-k`, or enough MLPs for
/// another localization's parameter budget), KUDA's best window, or k at random.
fn choose_layers(
    a: &LocateArgs,
    lm: &LanguageModel,
    ranked: &[(Component, f64)],
    mlp: &[f64],
) -> Result<Vec<usize>> {
    let n_layers = lm.model.config.num_layers;
    let budget = match &a.budget_of {
        Some(p) => {
            let other: Localization = serde_json::from_str(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read", p.display()))?,
            )
            .with_context(|| format!("{}: not a localization.json", p.display()))?;
            Some(other.param_count)
        }
        None => None,
    };
    let mlp_params = lm
        .model
        .mlp_param_names(&[0])
        .iter()
        .map(|n| lm.model.weights().elem_count(n))
        .sum::<Result<usize>>()?;
    let k = match budget {
        Some(b) => b.div_ceil(mlp_params.max(1)).clamp(1, n_layers),
        None => a.top_k.min(n_layers),
    };
    Ok(match a.method.as_str() {
        "causal-trace" | "attribution" | "probe" | "path-patch" => ranked
            .iter()
            .filter_map(|(c, _)| match c {
                Component::Mlp { layer } => Some(*layer),
                _ => None,
            })
            .take(k)
            .collect(),
        "kuda-window" => {
            let w = if budget.is_some() {
                k
            } else {
                a.window.min(n_layers)
            };
            let s = best_window(mlp, w)?;
            (s..s + w).collect()
        }
        "random" => random_mlps(n_layers, k, a.seed),
        "all-mlps" => (0..n_layers).collect(),
        other => bail!("--method {other:?}: use one of {}", METHODS.join(", ")),
    })
}

/// What `run` hands to the writer: the facts, the noise and what the method measured.
struct Found<'a> {
    known_facts: &'a [Fact],
    forget: &'a [Fact],
    traced: usize,
    noise_base: f64,
    scores: &'a Scores,
    chosen_layers: &'a [usize],
}

/// localization.json (the localization and the method's own measurements) and its charts.
fn write_outputs(a: &LocateArgs, lm: &LanguageModel, loc: &Localization, f: &Found) -> Result<()> {
    let n_layers = lm.model.config.num_layers;
    let s = f.scores;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut v = serde_json::to_value(loc)?;
    let o = v.as_object_mut().expect("object");
    o.insert("known_facts".into(), json!(f.known_facts.len()));
    o.insert(
        "forget_facts".into(),
        json!(f.forget.iter().map(|f| &f.id).collect::<Vec<_>>()),
    );
    o.insert("traced_facts".into(), json!(f.traced));
    o.insert(
        "noise".into(),
        json!({"from": a.noise_from, "base_std": f.noise_base, "std": 3.0 * f.noise_base,
            "restore_window": a.restore_window}),
    );
    if let Some(x) = &s.attribution {
        o.insert("attribution".into(), serde_json::to_value(x)?);
    }
    if let Some(p) = &s.paths {
        o.insert("path_patch".into(), serde_json::to_value(p)?);
    }
    if let Some(c) = &s.probes {
        o.insert("probe_curves".into(), serde_json::to_value(c)?);
        o.insert("probe_rise_by_block".into(), json!(s.mlp));
    }
    if let Some(t) = &s.trace {
        o.insert("mlp_indirect_effect_last_subject".into(), json!(s.mlp));
        o.insert("head_indirect_effect_last_token".into(), json!(s.head));
        o.insert(
            "resid_indirect_effect_by_role".into(),
            json!({"roles": ROLES, "grid": t.resid_roles}),
        );
        o.insert("per_fact".into(), json!(t.per_fact));
    }
    crate::util::write_json(&a.out.join("localization.json"), &v)?;
    let layers: Vec<String> = (0..n_layers).map(|l| l.to_string()).collect();
    if let Some(t) = &s.trace {
        let roles: Vec<String> = ROLES.iter().map(|s| s.to_string()).collect();
        let title = format!(
            "Residual restoration: indirect effect on P(answer), {} facts",
            f.traced
        );
        write(
            &a.out.join("trace.svg"),
            &svg::heatmap(&title, &layers, &roles, &t.resid_roles, "ΔP"),
        )?;
    }
    if s.heads_measured {
        let head_names: Vec<String> = (0..lm.model.config.num_heads)
            .map(|h| format!("head {h}"))
            .collect();
        let what = if s.paths.is_some() {
            "Head → logits direct path (path patching): drop of P(answer)"
        } else {
            "Head restoration at the last token: indirect effect"
        };
        write(
            &a.out.join("heads.svg"),
            &svg::heatmap(
                &format!("{what}, {} facts", f.traced),
                &layers,
                &head_names,
                &s.head,
                "ΔP",
            ),
        )?;
    }
    if let Some(c) = &s.probes {
        write(
            &a.out.join("probes.svg"),
            &probe_svg(c, f.known_facts.len()),
        )?;
    }
    let hl: Vec<bool> = (0..n_layers)
        .map(|l| f.chosen_layers.contains(&l))
        .collect();
    let title = format!(
        "{} ({}: red = chosen)",
        match a.method.as_str() {
            "attribution" => "MLP attribution score",
            "probe" => "Rise of probe accuracy (last subject token) across each block",
            "path-patch" => "MLP effect on P(answer) through the extraction heads (path patching)",
            _ => "MLP indirect effect at the last subject token",
        },
        a.method
    );
    write(
        &a.out.join("components.svg"),
        &svg::bars(&title, &layers, &s.mlp, &hl),
    )
}

/// Run `unlearn locate`: the known facts of the task and their forget split, the method's
/// scores on the first `max_facts` forget facts, the chosen layers, and the files.
pub fn run(a: &LocateArgs, device: &candle_core::Device) -> Result<()> {
    check_args(a)?;
    crate::outdir::prepare(&a.out, &[("--model", a.model.clone())])?;
    let facts = crate::data::load_task(&a.task, Policy::merge_if(a.dedup))?;
    let rule = known::KnownRule::parse(&a.known)?;
    let lm = LanguageModel::load(&a.model, device)?;
    let known_facts = known::known_among(&lm, &facts, &a.task, rule)?;
    let (forget, _) = known::split(&known_facts, &a.forget, a.seed)?;
    let traced: Vec<&Fact> = forget.iter().take(a.max_facts).collect();
    let noise_base = noise_base(&lm, &known_facts, &a.noise_from)?;
    let scores = score(a, &lm, &known_facts, &traced, noise_base)?;
    let ranked = scores.ranked();
    let chosen_layers = choose_layers(a, &lm, &ranked, &scores.mlp)?;
    let chosen: Vec<Component> = chosen_layers
        .iter()
        .map(|&l| Component::Mlp { layer: l })
        .collect();
    let data_id = format!("{}:{}:{}:seed{}", a.task, a.known, a.forget, a.seed);
    let loc = Localization::new(
        &a.method,
        &lm.origin.spec,
        &data_id,
        ranked,
        chosen,
        &lm.model,
    )?;
    let found = Found {
        known_facts: &known_facts,
        forget: &forget,
        traced: traced.len(),
        noise_base,
        scores: &scores,
        chosen_layers: &chosen_layers,
    };
    write_outputs(a, &lm, &loc, &found)?;
    println!(
        "{}: {} MLP layers {:?}, {} parameters → {}",
        a.method,
        chosen_layers.len(),
        chosen_layers,
        loc.param_count,
        a.out.join("localization.json").display()
    );
    Ok(())
}

/// The prompt of `f` with its subject replaced by the first other known subject (with another
/// answer) that gives a prompt of `len` tokens, so positions line up with the clean run.
fn replaced_subject(
    lm: &LanguageModel,
    f: &crate::data::Fact,
    pool: &[crate::data::Fact],
    len: usize,
) -> Result<Vec<u32>> {
    let at = f
        .prompt
        .rfind(&f.subject)
        .context("the subject is not in the prompt")?;
    for g in pool
        .iter()
        .filter(|g| g.subject != f.subject && g.answer != f.answer)
    {
        let p = format!(
            "{}{}{}",
            &f.prompt[..at],
            g.subject,
            &f.prompt[at + f.subject.len()..]
        );
        let ids = lm.tokenizer.encode(&p, true)?;
        if ids.len() == len {
            return Ok(ids);
        }
    }
    bail!(
        "fact {}: no other known subject gives a prompt of the same length ({len} tokens); use --corruption noise",
        f.id
    )
}

/// FLU probes on the known facts: one half (seeded) trains, the other tests. Returns both
/// curves and the rise of the last-subject-token test accuracy across each block.
pub fn probe_curves(
    lm: &LanguageModel,
    facts: &[crate::data::Fact],
    seed: u64,
) -> Result<(Vec<ProbeCurve>, Vec<f64>)> {
    if facts.len() < 8 {
        bail!(
            "probes need at least 8 known facts to train and test on, got {}",
            facts.len()
        );
    }
    let (train, test) = known::split(facts, &format!("random-{}", facts.len() / 2), seed)?;
    let ftr = probe::features(lm, &train, 16)?;
    let fte = probe::features(lm, &test, 16)?;
    let mut curves = Vec::new();
    for at in ProbeAt::BOTH {
        let (c, _, _) = probe::curve(
            at,
            ftr.at(at),
            &train,
            fte.at(at),
            &test,
            FitOpts::default(),
        )?;
        curves.push(c);
    }
    let rise = probe::rises(&curves[0]);
    Ok((curves, rise))
}

/// Probe accuracy by layer, one line per reading position, with the majority-class baseline.
pub fn probe_svg(curves: &[ProbeCurve], n_facts: usize) -> String {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|c| {
            (
                format!("test, {}", c.at.name()),
                c.test
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (i as f64, v))
                    .collect(),
            )
        })
        .collect();
    if let Some(c) = curves.first() {
        let n = c.test.len() as f64 - 1.0;
        series.push((
            "majority class".into(),
            vec![(0.0, c.majority), (n, c.majority)],
        ));
    }
    svg::lines(
        &format!("Probe accuracy by layer ({n_facts} known facts, half train / half test; 0 = embeddings, l = after block l − 1)"),
        "layer",
        &series,
    )
}

fn write(p: &Path, s: &str) -> Result<()> {
    crate::util::write_atomic(p, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_average_the_right_positions() {
        // bos, The, [s0 A, B, C s1-1], is, in, the, last
        let row: Vec<f64> = (0..9).map(|i| i as f64).collect();
        let r = by_role(&row, 2, 5);
        assert_eq!(r, vec![2.0, 3.0, 4.0, 5.0, 6.5, 8.0]);
        // A one-token subject has no middle.
        let r = by_role(&row, 2, 3);
        assert!(r[1].is_nan());
        assert_eq!(r[2], 2.0);
    }
}
