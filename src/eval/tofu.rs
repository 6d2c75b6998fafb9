//! TOFU (Maini et al. 2024), scaled to a CPU. The benchmark fine-tunes a model on QA about 200
//! fictitious authors, unlearns a forget split (1 %, 5 %: 2 or 10 authors) and asks two
//! questions: is the unlearned model indistinguishable from one that never saw the forget
//! authors (*forget quality*: the p-value of a two-sample Kolmogorov–Smirnov test between the
//! truth ratios of the forget answers under the unlearned model and under a model fine-tuned on
//! the retain QA only), and is it still useful (*model utility*: the harmonic mean of answer
//! probability, ROUGE-L recall of greedy answers and truth-ratio score on the retain QA, on real
//! authors and on world facts).
//!
//! Scaled here: the target model learns the forget split plus the first `retain` QA of
//! `retain_perturbed` (the questions that carry paraphrased and perturbed answers), not all
//! 4,000; the retain model learns those retain QA alone, with the same settings. `unlearn tofu
//! data` writes both training sets; `unlearn learn` trains; `unlearn tofu eval` measures.
//!
//! Definitions as TOFU's code computes them (length-normalized: every probability is
//! exp(−mean token loss) of the answer after "Question: …\nAnswer:"):
//! * truth ratio TR = P̄(perturbed) / P(paraphrased), P̄ the geometric mean over the perturbed
//!   answers (real authors and world facts have no paraphrase: the answer stands in);
//! * truth score: forget, mean of min(TR, 1/TR); the others, mean of max(0, 1 − TR);
//! * probability: forget and retain, mean P(answer); real authors and world facts, mean of
//!   P(answer) / (P(answer) + Σ P(perturbed));
//! * forget quality: KS p-value (exact, two-sided) between the forget TRs of two models.

use crate::data::as_completion;
use crate::eval::perplexity::tail_logprobs;
use crate::eval::rouge::rouge_l;
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

/// One question with the answers the truth ratio compares.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub question: String,
    pub answer: String,
    /// The answer reworded (forget and retain sets only).
    pub paraphrased: Option<String>,
    /// Wrong answers of the same form.
    pub perturbed: Vec<String>,
}

/// The prompt the QA is learned and asked with (the same as `unlearn learn`'s QA format).
pub fn prompt(question: &str) -> String {
    format!("Question: {}\nAnswer:", question.trim())
}

/// Read a TOFU `*_perturbed.jsonl` file (the first `n` rows); a row without a needed field is
/// an error naming the file, the line and the field.
pub fn load_items(path: &Path, n: usize) -> Result<Vec<Item>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if out.len() == n {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let field = |k: &str| -> Result<String> {
            match v.get(k).and_then(|x| x.as_str()) {
                Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                _ => bail!("{}: field `{k}` is missing or not a non-empty string", at()),
            }
        };
        let perturbed: Vec<String> = match v.get("perturbed_answer") {
            Some(serde_json::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| match x.as_str() {
                    Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                    _ => bail!(
                        "{}: `perturbed_answer` holds a non-string or empty entry",
                        at()
                    ),
                })
                .collect::<Result<_>>()?,
            _ => bail!(
                "{}: field `perturbed_answer` is missing or not a non-empty list",
                at()
            ),
        };
        out.push(Item {
            question: field("question")?,
            answer: field("answer")?,
            paraphrased: v
                .get("paraphrased_answer")
                .is_some()
                .then(|| field("paraphrased_answer"))
                .transpose()?,
            perturbed,
        });
    }
    if out.is_empty() {
        bail!("{}: no questions", path.display());
    }
    Ok(out)
}

/// Which TOFU set a score is for (they are scored differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    Forget,
    Retain,
    /// Real authors and world facts: probability against the perturbed answers.
    Choice,
}

/// Scores of one model on one set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetScores {
    pub n: usize,
    pub probability: f64,
    pub rouge_l_recall: f64,
    pub truth_score: f64,
    /// Truth ratio of every question (the forget quality test reads them).
    pub truth_ratios: Vec<f64>,
    /// (question, answer, the model's greedy answer) for the first few.
    pub samples: Vec<(String, String, String)>,
}

/// Length-normalized probability of an answer from its token log-probabilities.
fn norm_prob(lp: &[f64]) -> f64 {
    (lp.iter().sum::<f64>() / lp.len().max(1) as f64).exp()
}

/// The per-question numbers from the normalized probabilities of the answer, the paraphrase
/// (or the answer again) and the perturbed answers: (probability, truth ratio).
pub fn item_scores(kind: SetKind, answer: f64, para: f64, perturbed: &[f64]) -> (f64, f64) {
    let geo = perturbed.iter().map(|p| p.max(1e-300).ln()).sum::<f64>() / perturbed.len() as f64;
    let tr = geo.exp() / para.max(1e-300);
    let prob = match kind {
        SetKind::Choice => answer / (answer + perturbed.iter().sum::<f64>()).max(1e-300),
        _ => answer,
    };
    (prob, tr)
}

/// The set's truth score from its truth ratios.
pub fn truth_score(kind: SetKind, trs: &[f64]) -> f64 {
    let f = |t: f64| match kind {
        SetKind::Forget => t.min(1.0 / t),
        _ => (1.0 - t).max(0.0),
    };
    trs.iter().map(|&t| f(t)).sum::<f64>() / trs.len().max(1) as f64
}

/// Score a model on a set: one batched pass over every answer, one greedy answer per question.
pub fn score_set(
    lm: &LanguageModel,
    items: &[Item],
    kind: SetKind,
    max_new: usize,
) -> Result<SetScores> {
    let mut seqs = Vec::new();
    let mut prompts = Vec::new();
    for it in items {
        let p = lm.tokenizer.encode(&prompt(&it.question), true)?;
        let mut answers = vec![
            it.answer.as_str(),
            it.paraphrased.as_deref().unwrap_or(&it.answer),
        ];
        answers.extend(it.perturbed.iter().map(String::as_str));
        for a in answers {
            let mut ids = p.clone();
            ids.extend(lm.tokenizer.encode(&as_completion(a), false)?);
            seqs.push((ids, p.len()));
        }
        prompts.push(p);
    }
    let lps = tail_logprobs(&lm.model, lm.pad_id(), &seqs, 8)?;
    let mut at = 0;
    let (mut prob, mut trs) = (0.0, Vec::new());
    for it in items {
        let k = 2 + it.perturbed.len();
        let ps: Vec<f64> = lps[at..at + k].iter().map(|l| norm_prob(l)).collect();
        at += k;
        let (p, tr) = item_scores(kind, ps[0], ps[1], &ps[2..]);
        prob += p;
        trs.push(tr);
    }
    let gens = crate::eval::greedy_answers(lm, &prompts, max_new)?;
    let mut rouge = 0.0;
    let mut samples = Vec::new();
    for (it, g) in items.iter().zip(&gens) {
        let g = g
            .split("\nQuestion")
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        rouge += rouge_l(&g, &it.answer).recall;
        if samples.len() < 3 {
            samples.push((it.question.clone(), it.answer.clone(), g));
        }
    }
    let n = items.len() as f64;
    Ok(SetScores {
        n: items.len(),
        probability: prob / n,
        rouge_l_recall: rouge / n,
        truth_score: truth_score(kind, &trs),
        truth_ratios: trs,
        samples,
    })
}

/// Harmonic mean (0 when any value is 0).
pub fn harmonic_mean(v: &[f64]) -> f64 {
    if v.iter().any(|&x| x <= 0.0) {
        return 0.0;
    }
    v.len() as f64 / v.iter().map(|x| 1.0 / x).sum::<f64>()
}

/// Exact two-sided p-value of the two-sample Kolmogorov–Smirnov test, P(D ≥ d) under the null
/// (as scipy's `ks_2samp` with its exact method): the share of the C(n+m, n) orderings of the
/// pooled sample whose empirical distributions never get as far apart as the observed ones.
/// Returns (D, p).
pub fn ks_2samp(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return (0.0, 1.0);
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    // D in units of 1/(n·m): |i·m − j·n| at every pooled value, ties stepped together.
    let (mut i, mut j, mut dmax) = (0usize, 0usize, 0i64);
    while i < n || j < m {
        let x = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        dmax = dmax.max((i as i64 * m as i64 - j as i64 * n as i64).abs());
    }
    let d = dmax as f64 / (n * m) as f64;
    if dmax == 0 {
        return (0.0, 1.0);
    }
    // A uniformly random path from (0,0) to (n,m) steps right at (i,j) with probability
    // (n−i)/(n−i+m−j). Sum the probability of the steps that first leave |i·m − j·n| < dmax
    // (a sum of small positive terms, so tiny p-values keep their digits).
    let inside = |i: usize, j: usize| (i as i64 * m as i64 - j as i64 * n as i64).abs() < dmax;
    let mut pr = vec![vec![0.0f64; m + 1]; n + 1];
    pr[0][0] = 1.0;
    let mut out = 0.0;
    for i in 0..=n {
        for j in 0..=m {
            let p = pr[i][j];
            let left = (n - i + m - j) as f64;
            if p == 0.0 || left == 0.0 {
                continue;
            }
            for (ni, nj, w) in [(i + 1, j, n - i), (i, j + 1, m - j)] {
                if w == 0 {
                    continue;
                }
                let q = p * w as f64 / left;
                if inside(ni, nj) {
                    pr[ni][nj] += q;
                } else {
                    out += q;
                }
            }
        }
    }
    (d, out.clamp(0.0, 1.0))
}

/// Scores of one model on the four sets, with its model utility.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TofuScores {
    pub forget: SetScores,
    pub retain: SetScores,
    pub real_authors: SetScores,
    pub world_facts: SetScores,
    pub model_utility: f64,
}

/// What `unlearn tofu` reads: the data directory, the forget split and the retain QA count.
#[derive(Clone, Debug, Serialize)]
pub struct TofuOpts {
    pub data: PathBuf,
    /// `forget01` or `forget05`.
    pub split: String,
    /// Retain QA learned (the first of `retain_perturbed.jsonl`).
    pub retain: usize,
    /// Real-author and world-fact questions asked (TOFU: 100 and 117).
    pub general: usize,
    /// Longest greedy answer to the author questions (real/world answers get 16 tokens).
    pub max_new: usize,
}

/// The four sets.
pub struct TofuSets {
    pub forget: Vec<Item>,
    pub retain: Vec<Item>,
    pub real_authors: Vec<Item>,
    pub world_facts: Vec<Item>,
}

impl TofuOpts {
    pub fn load(&self) -> Result<TofuSets> {
        if !matches!(self.split.as_str(), "forget01" | "forget05") {
            bail!(
                "TOFU split `{}`: use forget01 (2 authors) or forget05 (10 authors)",
                self.split
            );
        }
        if self.retain == 0 || self.general == 0 || self.max_new == 0 {
            bail!("TOFU: --retain, --general and --max-new must be at least 1");
        }
        let f = |name: &str, n: usize| load_items(&self.data.join(format!("{name}.jsonl")), n);
        Ok(TofuSets {
            forget: f(&format!("{}_perturbed", self.split), usize::MAX)?,
            retain: f("retain_perturbed", self.retain)?,
            real_authors: f("real_authors_perturbed", self.general)?,
            world_facts: f("world_facts_perturbed", self.general)?,
        })
    }
}

/// Measure one model on the four sets.
pub fn score(lm: &LanguageModel, sets: &TofuSets, max_new: usize) -> Result<TofuScores> {
    let bar = crate::util::progress(4, "TOFU sets");
    let one = |items: &[Item], kind: SetKind, max_new: usize| {
        let s = score_set(lm, items, kind, max_new);
        bar.inc(1);
        s
    };
    let forget = one(&sets.forget, SetKind::Forget, max_new)?;
    let retain = one(&sets.retain, SetKind::Retain, max_new)?;
    let real_authors = one(&sets.real_authors, SetKind::Choice, 16)?;
    let world_facts = one(&sets.world_facts, SetKind::Choice, 16)?;
    bar.finish_and_clear();
    let parts: Vec<f64> = [&retain, &real_authors, &world_facts]
        .iter()
        .flat_map(|s| [s.probability, s.rouge_l_recall, s.truth_score])
        .collect();
    Ok(TofuScores {
        model_utility: harmonic_mean(&parts),
        forget,
        retain,
        real_authors,
        world_facts,
    })
}

/// `unlearn tofu data`: the two training sets as QA JSON lines — `learn-full.jsonl` (the
/// forget split first, then the retain QA) and `learn-retain.jsonl` (the retain QA alone).
pub fn write_learn_sets(o: &TofuOpts, out: &Path) -> Result<()> {
    let sets = o.load()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let lines = |items: &[&Item]| -> String {
        items
            .iter()
            .map(|it| json!({"question": it.question, "answer": it.answer}).to_string() + "\n")
            .collect()
    };
    let full: Vec<&Item> = sets.forget.iter().chain(&sets.retain).collect();
    let retain: Vec<&Item> = sets.retain.iter().collect();
    crate::util::write_atomic(&out.join("learn-full.jsonl"), lines(&full).as_bytes())?;
    crate::util::write_atomic(&out.join("learn-retain.jsonl"), lines(&retain).as_bytes())?;
    eprintln!(
        "wrote {}/learn-full.jsonl ({} forget + {} retain QA) and learn-retain.jsonl; next:\n  \
         unlearn learn --data {0}/learn-full.jsonl --out {0}/full\n  \
         unlearn learn --data {0}/learn-retain.jsonl --out {0}/retain\n  \
         unlearn forget --model {0}/full --task {0}/full/facts.jsonl --known 'p>=0.0' \
         --forget first-{1} --method kuda --out {0}/kuda\n  \
         unlearn tofu eval --model {0}/full --retain-model {0}/retain --unlearned {0}/kuda --out {0}/eval",
        out.display(),
        sets.forget.len(),
        sets.retain.len()
    );
    Ok(())
}

/// Options of `unlearn tofu eval`.
pub struct TofuEvalArgs {
    /// The model fine-tuned on forget + retain QA.
    pub model: String,
    /// The model fine-tuned on the retain QA only (the forget-quality reference).
    pub retain_model: String,
    /// Unlearned models (directories from `unlearn forget`).
    pub unlearned: Vec<PathBuf>,
    pub opts: TofuOpts,
    pub out: PathBuf,
}

/// Run `unlearn tofu eval`: every model's scores, forget quality against the retain model,
/// a table, and OUT/metrics.json.
pub fn run_eval(a: &TofuEvalArgs, device: &candle_core::Device) -> Result<serde_json::Value> {
    let t0 = std::time::Instant::now();
    let mut models = vec![
        ("--model", a.model.clone()),
        ("--retain-model", a.retain_model.clone()),
    ];
    models.extend(
        a.unlearned
            .iter()
            .map(|u| ("--unlearned", u.display().to_string())),
    );
    crate::outdir::prepare(&a.out, &models)?;
    let sets = a.opts.load()?;
    let mut names = vec![
        ("learned".to_string(), a.model.clone()),
        ("retain-only".to_string(), a.retain_model.clone()),
    ];
    for d in &a.unlearned {
        let name = d
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| d.display().to_string());
        names.push((name, d.display().to_string()));
    }
    let mut scores = Vec::new();
    for (name, spec) in &names {
        eprintln!("TOFU: scoring {name} ({spec})");
        let lm = LanguageModel::load(spec, device)?;
        scores.push(score(&lm, &sets, a.opts.max_new)?);
    }
    let reference = scores[1].forget.truth_ratios.clone();
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "model", "forget_q", "utility", "fgt_prob", "fgt_rouge", "ret_prob", "ret_rouge"
    );
    let mut models = Vec::new();
    for ((name, spec), s) in names.iter().zip(&scores) {
        let (ks, p) = ks_2samp(&s.forget.truth_ratios, &reference);
        println!(
            "{:<20} {:>9.3e} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            name,
            p,
            s.model_utility,
            s.forget.probability,
            s.forget.rouge_l_recall,
            s.retain.probability,
            s.retain.rouge_l_recall
        );
        models.push(
            json!({"name": name, "model": spec, "forget_quality": p, "ks_statistic": ks,
            "model_utility": s.model_utility, "scores": s}),
        );
    }
    let out = json!({
        "tool": crate::util::tool_id(),
        "benchmark": "tofu", "options": a.opts, "models": models,
        "note": "forget quality: exact two-sided KS p-value between the forget truth ratios of each model and of the retain-only model (the retain-only model scores 1 against itself); model utility: harmonic mean of probability, ROUGE-L recall and truth score on retain QA, real authors and world facts",
        "seconds": t0.elapsed().as_secs_f64(),
    });
    crate::util::write_json(&a.out.join("metrics.json"), &out)?;
    eprintln!("wrote {}", a.out.join("metrics.json").display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_p_values_match_scipy() {
        // Reference values from scipy 1.x `ks_2samp(a, b)` (method "auto" = exact here).
        let a = [0.1, 0.5, 0.9, 1.3, 2.0, 2.2, 3.1];
        let b = [0.4, 0.45, 1.6, 1.7, 1.8, 2.5, 2.6, 2.7, 4.0];
        let (d, p) = ks_2samp(&a, &b);
        assert!((d - 0.3492063492063492).abs() < 1e-12);
        assert!((p - 0.5727272727272728).abs() < 1e-9, "{p}");
        let (d, p) = ks_2samp(&[1.0, 1.0, 2.0, 2.0, 3.0], &[2.0, 2.0, 3.0, 3.0, 4.0, 4.0]);
        assert!((d - 0.4666666666666667).abs() < 1e-12);
        assert!((p - 0.474025974025974).abs() < 1e-9, "{p}");
        let (d, p) = ks_2samp(&[0.5, 0.6, 0.7, 0.8], &[0.1, 0.2, 0.3, 0.9, 1.0]);
        assert!((d - 0.6).abs() < 1e-12);
        assert!((p - 0.2857142857142857).abs() < 1e-9, "{p}");
        let a: Vec<f64> = (0..40).map(f64::from).collect();
        let b: Vec<f64> = (100..140).map(f64::from).collect();
        let (d, p) = ks_2samp(&a, &b);
        assert_eq!(d, 1.0);
        assert!((p / 1.860340365603627e-23 - 1.0).abs() < 1e-6, "{p}");
        assert_eq!(ks_2samp(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), (0.0, 1.0));
    }

    #[test]
    fn truth_ratio_probability_and_utility_by_hand() {
        // Perturbed answers at 0.1 and 0.4 (geometric mean 0.2), paraphrase at 0.5: TR 0.4.
        let (p, tr) = item_scores(SetKind::Retain, 0.6, 0.5, &[0.1, 0.4]);
        assert!((tr - 0.4).abs() < 1e-12 && p == 0.6);
        let (p, _) = item_scores(SetKind::Choice, 0.5, 0.5, &[0.1, 0.4]);
        assert!((p - 0.5).abs() < 1e-12);
        assert!((truth_score(SetKind::Retain, &[0.4, 1.5]) - 0.3).abs() < 1e-12);
        assert!((truth_score(SetKind::Forget, &[0.5, 2.0]) - 0.5).abs() < 1e-12);
        assert!((harmonic_mean(&[1.0, 0.5]) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(harmonic_mean(&[1.0, 0.0]), 0.0);
    }

    #[test]
    fn shipped_sets_load_and_bad_rows_name_file_line_and_field() {
        let o = TofuOpts {
            data: crate::data::data_dir().join("tofu"),
            split: "forget01".into(),
            retain: 40,
            general: 100,
            max_new: 64,
        };
        let s = o.load().unwrap();
        assert_eq!(
            (
                s.forget.len(),
                s.retain.len(),
                s.real_authors.len(),
                s.world_facts.len()
            ),
            (40, 40, 100, 100)
        );
        assert!(s
            .forget
            .iter()
            .all(|i| i.paraphrased.is_some() && i.perturbed.len() == 5));
        assert!(s.world_facts.iter().all(|i| i.paraphrased.is_none()));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(
            &p,
            "{\"question\":\"q\",\"answer\":\"a\",\"perturbed_answer\":[\"b\"]}\n{\"question\":\"q\",\"perturbed_answer\":[\"b\"]}\n",
        )
        .unwrap();
        let e = format!("{:#}", load_items(&p, 10).unwrap_err());
        assert!(
            e.contains("x.jsonl line 2") && e.contains("`answer`"),
            "{e}"
        );
        let bad = TofuOpts {
            split: "forget50".into(),
            ..o
        };
        assert!(bad.load().is_err());
    }
}
