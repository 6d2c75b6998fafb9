//! MUSE-News (Shi et al. 2024), scaled to a CPU: the three forget-side measures and the
//! utility one, for any model (the original, a model that learned the corpus with
//! `unlearn learn`, an unlearned one).
//!
//! * KnowMem: greedy answers (stopped at the end of the line, at most 32 tokens) to 100 QA
//!   about the forget articles and 100 about retained ones, prompted with the split's in-context
//!   examples as "Question: …\nAnswer: …" blocks; score = mean ROUGE-L F1 against the answer.
//! * VerbMem: the model continues the last `prompt_tokens` tokens of each of the 100 forget
//!   passages for `new_tokens` tokens (MUSE: the whole prompt, 128 tokens); score = mean
//!   ROUGE-L F1 against the same number of tokens of the true continuation.
//! * PrivLeak: Min-K% Prob (k = 40%) of the first `text_tokens` tokens of each forget and holdout
//!   text, and the AUC of telling them apart. MUSE reports (AUC − AUC_retrain) / AUC_retrain
//!   against a model retrained without the forget set; without that model the AUC itself is
//!   reported (0.5 = no leak) and `privleak` is computed against 0.5, the AUC of a model that
//!   never saw either set (documented in metrics.json).

use crate::eval::perplexity::tail_logprobs;
use crate::eval::rouge::rouge_l;
use crate::eval::schema::MuseMetrics;
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Sizes of the scaled benchmark.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct MuseOpts {
    /// Items of each split used (MUSE: 100).
    pub n: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub text_tokens: usize,
}

impl Default for MuseOpts {
    fn default() -> Self {
        MuseOpts {
            n: 100,
            prompt_tokens: 256,
            new_tokens: 64,
            text_tokens: 256,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
struct Qa {
    question: String,
    answer: String,
}

#[derive(Clone, Debug, Deserialize)]
struct Passage {
    prompt: String,
    gt: String,
}

fn read<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&t).with_context(|| format!("{}: unexpected content", p.display()))
}

/// MUSE-News numbers of one model.
#[derive(Clone, Debug, Serialize)]
pub struct MuseScores {
    pub knowmem_forget: f64,
    pub knowmem_retain: f64,
    pub verbmem_forget: f64,
    /// AUC of Min-K% Prob separating forget (members) from holdout texts.
    pub mink_auc: f64,
    pub privleak_vs_half: f64,
    pub samples: Vec<Sample>,
}

/// Min-K% Prob: the mean of the lowest `k` share of token log-probabilities.
pub fn min_k(logprobs: &[f64], k: f64) -> f64 {
    if logprobs.is_empty() {
        return f64::NAN;
    }
    let mut v = logprobs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = ((v.len() as f64 * k).ceil() as usize).clamp(1, v.len());
    v[..n].iter().sum::<f64>() / n as f64
}

/// Area under the ROC curve of scores meant to be higher for `pos` than `neg` (ties count ½).
pub fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut s = 0.0;
    for p in pos {
        for q in neg {
            s += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    s / (pos.len() * neg.len()) as f64
}

/// (question or prompt, true answer, the model's answer).
/// (prompt, reference answer, generation) of one MUSE question.
pub type Sample = (String, String, String);

fn knowmem(lm: &LanguageModel, dir: &Path, split: &str, n: usize) -> Result<(f64, Vec<Sample>)> {
    let qa: Vec<Qa> = read(&dir.join(format!("knowmem/{split}_qa.json")))?;
    let icl: Vec<Qa> = read(&dir.join(format!("knowmem/{split}_qa_icl.json")))?;
    let prefix: String = icl
        .iter()
        .map(|q| {
            format!(
                "Question: {}\nAnswer: {}\n\n",
                q.question.trim(),
                q.answer.trim()
            )
        })
        .collect();
    let items: Vec<&Qa> = qa.iter().take(n).collect();
    let prompts: Vec<Vec<u32>> = items
        .iter()
        .map(|q| {
            lm.tokenizer.encode(
                &format!("{prefix}Question: {}\nAnswer:", q.question.trim()),
                true,
            )
        })
        .collect::<Result<_>>()?;
    let answers = crate::eval::greedy_answers(lm, &prompts, 32)?;
    let mut total = 0.0;
    let mut samples = Vec::new();
    for (q, a) in items.iter().zip(answers) {
        let a = a.lines().next().unwrap_or("").trim().to_string();
        total += rouge_l(&a, &q.answer).f1;
        if samples.len() < 5 {
            samples.push((q.question.clone(), q.answer.clone(), a));
        }
    }
    Ok((total / items.len().max(1) as f64, samples))
}

/// Measure one model on MUSE-News data in `dir` (knowmem/, verbmem/, privleak/).
pub fn muse(lm: &LanguageModel, dir: &Path, o: MuseOpts) -> Result<MuseScores> {
    if o.n == 0 || o.new_tokens == 0 || o.prompt_tokens == 0 || o.text_tokens < 2 {
        bail!("MUSE: n, prompt_tokens and new_tokens must be at least 1, text_tokens at least 2");
    }
    let bar = crate::util::spinner("MUSE-News");
    let (kf, mut samples) = knowmem(lm, dir, "forget", o.n)?;
    let (kr, _) = knowmem(lm, dir, "retain2", o.n)?;
    let passages: Vec<Passage> = read(&dir.join("verbmem/forget.json"))?;
    let mut prompts = Vec::new();
    let mut truths = Vec::new();
    for p in passages.iter().take(o.n) {
        let ids = lm.tokenizer.encode(&p.prompt, true)?;
        let keep = ids.len().saturating_sub(o.prompt_tokens);
        let mut ids2 = ids[..1.min(ids.len())].to_vec();
        ids2.extend_from_slice(&ids[keep.max(1)..]);
        prompts.push(ids2);
        let gt = lm.tokenizer.encode(&p.gt, false)?;
        truths.push(lm.tokenizer.decode(&gt[..gt.len().min(o.new_tokens)])?);
    }
    let conts = crate::eval::greedy_answers(lm, &prompts, o.new_tokens)?;
    let verb = conts
        .iter()
        .zip(&truths)
        .map(|(c, t)| rouge_l(c, t).f1)
        .sum::<f64>()
        / conts.len().max(1) as f64;
    if let (Some(c), Some(t)) = (conts.first(), truths.first()) {
        samples.push(("(verbatim continuation)".into(), t.clone(), c.clone()));
    }
    let score = |file: &str| -> Result<Vec<f64>> {
        let texts: Vec<String> = read(&dir.join(format!("privleak/{file}.json")))?;
        let mut items = Vec::new();
        for t in texts.iter().take(o.n) {
            let mut ids = lm.tokenizer.encode(t, true)?;
            ids.truncate(o.text_tokens);
            if ids.len() < 2 {
                bail!("privleak/{file}.json: a text has fewer than 2 tokens");
            }
            items.push((ids, 1));
        }
        Ok(tail_logprobs(&lm.model, lm.pad_id(), &items, 4)?
            .iter()
            .map(|lp| min_k(lp, 0.4))
            .collect())
    };
    let (f, h) = (score("forget")?, score("holdout")?);
    let a = auc(&f, &h);
    bar.finish_and_clear();
    Ok(MuseScores {
        knowmem_forget: kf,
        knowmem_retain: kr,
        verbmem_forget: verb,
        mink_auc: a,
        privleak_vs_half: (a - 0.5) / 0.5,
        samples,
    })
}

/// MUSE's PrivLeak: the relative difference of the Min-K% AUC from a retrained model's.
pub fn privleak(auc: f64, auc_retrained: f64) -> f64 {
    (auc - auc_retrained) / auc_retrained
}

/// Options of `unlearn muse`.
pub struct MuseArgs {
    pub model: String,
    pub unlearned: Option<std::path::PathBuf>,
    /// A model that never saw the forget set (MUSE's retrained reference) for PrivLeak.
    pub retrained: Option<String>,
    pub data: std::path::PathBuf,
    pub opts: MuseOpts,
    pub out: std::path::PathBuf,
}

/// Run `unlearn muse`: MUSE-News for the model and, when given, the unlearned one, written to
/// OUT/metrics.json as before/after rows (the report shows them like `unlearn eval`'s).
pub fn run(a: &MuseArgs, device: &candle_core::Device) -> Result<MuseMetrics> {
    use crate::eval::run::print_table;
    use crate::eval::schema::{BeforeAfter, Row, TableHead};
    let t0 = std::time::Instant::now();
    let mut models = crate::outdir::with_unlearned(&a.model, &a.unlearned);
    if let Some(r) = &a.retrained {
        models.push(("--retrained", r.clone()));
    }
    crate::outdir::prepare(&a.out, &models)?;
    let original = LanguageModel::load(&a.model, device)?;
    let o = muse(&original, &a.data, a.opts)?;
    let u = match &a.unlearned {
        Some(d) => Some(muse(
            &LanguageModel::load(&d.display().to_string(), device)?,
            &a.data,
            a.opts,
        )?),
        None => None,
    };
    // PrivLeak as MUSE defines it: (AUC − AUC_retrain) / AUC_retrain, where the retrained
    // model never saw the forget texts (0 = no leak; negative = over-unlearned).
    let auc_retrained = match &a.retrained {
        Some(m) => Some(muse(&LanguageModel::load(m, device)?, &a.data, a.opts)?.mink_auc),
        None => None,
    };
    let leak = |s: &MuseScores| auc_retrained.map(|r| privleak(s.mink_auc, r));
    let n = a.opts.n;
    let row = |metric: &str, f: fn(&MuseScores) -> f64, lower: bool| Row {
        metric: metric.into(),
        n,
        original: f(&o),
        unlearned: u.as_ref().map(f),
        lower_is_better: lower,
        reference: false,
    };
    let mut rows = vec![
        row("muse.knowmem_forget_rougeL", |s| s.knowmem_forget, true),
        row("muse.knowmem_retain_rougeL", |s| s.knowmem_retain, false),
        row("muse.verbmem_forget_rougeL", |s| s.verbmem_forget, true),
        row("muse.privleak_mink_auc", |s| s.mink_auc, true),
    ];
    if let Some(p) = leak(&o) {
        // Closer to 0 is better; the table's direction flag cannot say that, so it reads "lower".
        rows.push(Row {
            metric: "muse.privleak_abs_vs_retrained".into(),
            n,
            original: p.abs(),
            unlearned: u.as_ref().and_then(leak).map(f64::abs),
            lower_is_better: true,
            reference: false,
        });
    }
    print_table(&rows);
    let manifest: Option<serde_json::Value> = a
        .unlearned
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("manifest.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    let out = MuseMetrics {
        head: TableHead {
            tool: crate::util::tool_id(),
            model: a.model.clone(),
            unlearned: a.unlearned.clone(),
            task: "muse-news".into(),
            suite: "muse".into(),
            forget_facts: n,
            held_out_facts: n,
            manifest,
            rows,
        },
        options: a.opts,
        privleak_note: "AUC of Min-K% (k = 40%) on forget vs holdout texts. privleak = (AUC − AUC_retrained) / AUC_retrained, MUSE's PrivLeak, when --retrained names a model that never saw the forget set (the rows give its absolute value: 0 = no leak); privleak_vs_half uses 0.5, the AUC of a model that saw neither set".into(),
        privleak_vs_half: BeforeAfter {
            original: o.privleak_vs_half,
            unlearned: u.as_ref().map(|s| s.privleak_vs_half),
        },
        retrained: a.retrained.clone(),
        auc_retrained,
        privleak: BeforeAfter {
            original: leak(&o),
            unlearned: u.as_ref().map(leak),
        },
        samples: BeforeAfter {
            original: o.samples.clone(),
            unlearned: u.as_ref().map(|s| s.samples.clone()),
        },
        seconds: t0.elapsed().as_secs_f64(),
    };
    crate::util::write_json(&a.out.join("metrics.json"), &out)?;
    eprintln!("wrote {}", a.out.join("metrics.json").display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_k_and_auc_on_hand_made_values() {
        // Lowest 40% of 5 values = the 2 lowest.
        assert_eq!(min_k(&[-1.0, -5.0, -2.0, -0.5, -4.0], 0.4), -4.5);
        assert_eq!(min_k(&[-3.0], 0.4), -3.0);
        assert!(min_k(&[], 0.4).is_nan());
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        // Pairs (2,1) win, (2,2) tie, (0,1) and (0,2) lose: (1 + 0.5) / 4.
        assert_eq!(auc(&[2.0, 0.0], &[1.0, 2.0]), (1.0 + 0.5 + 0.0 + 0.0) / 4.0);
        assert_eq!(auc(&[5.0; 3], &[5.0; 4]), 0.5);
        // MUSE's PrivLeak: 0 when the AUC is the retrained model's, −50% when it is half.
        assert_eq!(privleak(0.6, 0.6), 0.0);
        assert_eq!(privleak(0.3, 0.6), -0.5);
        assert!((privleak(0.72, 0.6) - 0.2).abs() < 1e-12);
    }
}
