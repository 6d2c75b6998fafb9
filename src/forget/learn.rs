//! `unlearn learn`: fine-tune a model on a text corpus or a QA set, the way MUSE and TOFU made
//! their target models, so that there is something to unlearn (Gemma 3 270M does not know the
//! post-2023 BBC articles of MUSE-News or TOFU's fictitious authors). Full fine-tuning of every
//! block weight by default, or chosen MLP layers, with a WikiText cross-entropy beside the
//! corpus's so that the model stays a language model; the trainer of `unlearn forget` (AdamW,
//! cosine schedule, clipping, checkpoints and resume, NaN stop); the output is the same
//! changed-tensor directory, loadable with `--model DIR` and usable as the model to unlearn.
//!
//! Data: `.txt` (lines), or JSON / JSON lines of strings, `{"text"}`, `{"prompt", "gt"}`
//! (continuous text) or `{"question", "answer"}` (QA: "Question: …\nAnswer:" completed by
//! the answer; only the answer's tokens are targets).

use crate::data::Fact;
use crate::forget::config::{ForgetConfig, Method};
use crate::forget::export::{base_spec, write_output, Manifest};
use crate::forget::lora::{fine_tune, Lora, LoraConfig, Tuned};
use crate::forget::run::{all_block_params, hash_json, parse_layers};
use crate::forget::seqs::{ppl_probe, text_chunks, Seq, SeqSet};
use crate::forget::terms::LogitLoss;
use crate::forget::trainer::{train, DataSet, Loss, Plan, Term};
use crate::model::source::fingerprint;
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Options of `unlearn learn`.
pub struct LearnArgs {
    pub model: String,
    pub data: PathBuf,
    /// MLP layers (`2-4`) or `all` (default: every block weight).
    pub layers: Option<String>,
    /// Settings as for `unlearn forget` (steps, batch_size, text_tokens, optim.*, seed…).
    pub sets: Vec<String>,
    /// Text chunks (of `text_tokens` tokens) taken from a corpus at most.
    pub max_chunks: usize,
    /// Learn LoRA adapters (merged into the weights at the end) instead of the weights.
    pub lora: Option<LoraConfig>,
    pub out: PathBuf,
}

/// What a data file holds.
#[derive(Debug)]
pub enum Corpus {
    Text(Vec<String>),
    Qa(Vec<(String, String)>),
}

/// Read a corpus or QA file; rows without the expected fields are errors naming file and row.
pub fn read_corpus(path: &Path) -> Result<Corpus> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "txt") {
        return Ok(Corpus::Text(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect(),
        ));
    }
    let rows: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(v)) => v,
        _ => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| {
                    format!(
                        "{}:{}: not JSON (expected a JSON array or JSON lines)",
                        path.display(),
                        i + 1
                    )
                })
            })
            .collect::<Result<_>>()?,
    };
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    let field = |r: &Value, k: &str| r.get(k).and_then(|v| v.as_str()).map(String::from);
    if rows[0].get("question").is_some() {
        let mut qa = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            match (field(r, "question"), field(r, "answer")) {
                (Some(q), Some(a)) => qa.push((q, a)),
                _ => bail!(
                    "{}: row {}: needs string fields `question` and `answer`",
                    path.display(),
                    i + 1
                ),
            }
        }
        return Ok(Corpus::Qa(qa));
    }
    let mut lines = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let t = match r {
            Value::String(s) => s.clone(),
            _ => match (field(r, "text"), field(r, "prompt"), field(r, "gt")) {
                (Some(t), _, _) => t,
                (None, Some(p), Some(g)) => format!("{p}{g}"),
                _ => bail!(
                    "{}: row {}: expected a string, {{\"text\"}}, {{\"prompt\", \"gt\"}} or {{\"question\", \"answer\"}}",
                    path.display(),
                    i + 1
                ),
            },
        };
        lines.extend(t.lines().filter(|l| !l.trim().is_empty()).map(String::from));
    }
    Ok(Corpus::Text(lines))
}

/// A QA pair as a fact: the question prompt completed by the answer.
pub fn qa_fact(i: usize, q: &str, a: &str) -> Fact {
    let q = q.trim();
    Fact {
        id: format!("qa-{i}"),
        prompt: format!("Question: {q}\nAnswer:"),
        subject: q.to_string(),
        answer: crate::data::as_completion(a.trim()),
        new_answer: None,
        paraphrases: vec![],
        neighborhood: vec![],
        candidates: vec![],
        attribute: None,
    }
}

/// Run `unlearn learn`; returns the trained model.
pub fn run(a: &LearnArgs, device: &candle_core::Device) -> Result<LanguageModel> {
    // Learning new text needs a larger step than unlearning (LoRA's adapters, which start at
    // zero, a larger one still); the user's settings come after.
    let sets: Vec<String> = [
        if a.lora.is_some() {
            "optim.lr=1e-3"
        } else {
            "optim.lr=2e-5"
        },
        "batch_size=8",
        "text_tokens=128",
        "steps=40",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(a.sets.iter().cloned())
    .collect();
    let cfg = ForgetConfig::resolve(Method::LocalizedFt, None, &sets).context("settings")?;
    crate::outdir::prepare(&a.out, &[("--model", a.model.clone())])?;
    let mut lm = LanguageModel::load(&a.model, device)?;
    let base_fp = fingerprint(&lm.origin)?;
    let corpus = read_corpus(&a.data)?;
    let seqs: Vec<Seq> = match &corpus {
        Corpus::Text(lines) => text_chunks(&lm, lines, cfg.text_tokens, a.max_chunks)?,
        Corpus::Qa(qa) => qa
            .iter()
            .enumerate()
            .map(|(i, (q, ans))| {
                Seq::fact(
                    &lm,
                    &qa_fact(i, q, ans),
                    &crate::data::as_completion(ans.trim()),
                )
            })
            .collect::<Result<_>>()?,
    };
    if seqs.is_empty() {
        bail!(
            "{}: nothing to learn (no text chunk of {} tokens)",
            a.data.display(),
            cfg.text_tokens
        );
    }
    let mut lora = match &a.lora {
        Some(c) => {
            if a.layers.is_some() {
                bail!("--layers and --lora: choose the adapted matrices with --targets");
            }
            Some(Lora::new(&lm.model, c.clone(), cfg.seed)?)
        }
        None => None,
    };
    let params = match (&lora, a.layers.as_deref()) {
        (Some(l), _) => l.targets(),
        (None, None | Some("all")) => all_block_params(&lm),
        (None, Some(s)) => lm
            .model
            .mlp_param_names(&parse_layers(s, lm.model.config.num_layers)?),
    };
    let param_count: usize = params
        .iter()
        .map(|p| lm.model.weights().elem_count(p))
        .sum::<Result<usize>>()?;
    let n_tokens: usize = seqs.iter().map(|s| s.targets.len()).sum();
    let how = match &lora {
        Some(l) => format!(
            "LoRA rank {} on {} matrices ({:.2} M adapter parameters)",
            l.cfg.rank,
            params.len(),
            l.param_count() as f64 / 1e6
        ),
        None => format!(
            "{} tensors ({:.1} M parameters)",
            params.len(),
            param_count as f64 / 1e6
        ),
    };
    eprintln!(
        "learning {} sequences ({} target tokens) from {}: {how}, {} steps of {}",
        seqs.len(),
        n_tokens,
        a.data.display(),
        cfg.steps,
        cfg.batch_size
    );
    // General text keeps the model a language model while it memorizes (weight
    // `localized_ft.text_weight`, 0 to switch off).
    let (wiki_train, _) = crate::data::wikitext_halves()?;
    let text = text_chunks(&lm, &wiki_train, 64, cfg.text_batch_size.max(1) * 8)?;
    let ce = |name: &str, weight: f64, data: DataSet| Term {
        name: name.into(),
        weight,
        data,
        loss: Loss::Logit(LogitLoss::Ce),
        project: false,
    };
    let mut plan = Plan {
        terms: vec![
            ce("learn_ce", 1.0, DataSet::Forget),
            ce("text_ce", cfg.localized_ft.text_weight, DataSet::Text),
        ],
        forget: SeqSet::new("corpus", seqs),
        retain: SeqSet::new("retain", vec![]),
        text: SeqSet::new("text", text),
        params: params.clone(),
        rep_layer: None,
        projectors: Default::default(),
        project_at: crate::forget::trainer::ProjectAt::Gradient,
        pad: lm.pad_id(),
        text_rows: cfg.text_ce_rows,
        ppl_probe: Some(ppl_probe(&lm, &wiki_train)?),
    };
    plan.precompute(&lm.model, 8)?;
    let (final_losses, seconds, text_ppl_end) = match &mut lora {
        Some(l) => {
            let (losses, seconds) = learn_adapters(&mut lm, &plan, &cfg, l)?;
            (losses, seconds, None)
        }
        None => {
            let key = hash_json(&json!({"cfg": cfg, "params": params, "base": base_fp,
                "data": crate::util::sha256_file(&a.data)?, "max_chunks": a.max_chunks}));
            let s = train(&mut lm.model, &plan, &cfg, &key, &a.out, None)?;
            (s.final_losses, s.seconds, s.text_ppl_end)
        }
    };
    let manifest = Manifest {
        tool: crate::util::tool_id(),
        base_model: base_spec(&a.model),
        base_sha256: base_fp,
        method: match &lora {
            Some(l) => format!(
                "learn-lora (rank {}, alpha {}, dropout {}, {})",
                l.cfg.rank, l.cfg.alpha, l.cfg.dropout, l.cfg.targets
            ),
            None => "learn".into(),
        },
        edit: false,
        task: base_spec(&a.data.display().to_string()),
        dedup: false,
        forget_split: String::new(),
        forget_ids: vec![],
        retain_ids: vec![],
        new_answers: None,
        localization: None,
        params,
        param_count,
        config: cfg.clone(),
        seed: cfg.seed,
        steps: cfg.steps,
        steps_done: vec![cfg.steps],
        final_losses: final_losses.clone(),
        gradient_angles: None,
        projector_pass: Default::default(),
        text_ppl_end,
        threads: crate::util::threads(),
        precision: crate::model::precision_label(),
        weights: "changed".into(),
        metrics: None,
    };
    write_output(&a.out, &lm, &manifest, false)?;
    if let Corpus::Qa(qa) = &corpus {
        // The learned QA as a facts file, ready for `unlearn forget --task OUT/facts.jsonl`.
        let mut lines = String::new();
        for (i, (q, ans)) in qa.iter().enumerate() {
            let f = qa_fact(i, q, ans);
            lines.push_str(
                &json!({"id": f.id, "prompt": f.prompt, "subject": f.subject, "answer": f.answer})
                    .to_string(),
            );
            lines.push('\n');
        }
        crate::util::write_atomic(&a.out.join("facts.jsonl"), lines.as_bytes())?;
    }
    eprintln!(
        "learned in {:.0}s; final loss {:.4}; wrote {} (use it with --model {})",
        seconds,
        final_losses.get("learn_ce").copied().unwrap_or(f64::NAN),
        a.out.join("manifest.json").display(),
        a.out.display()
    );
    Ok(lm)
}

/// Train LoRA adapters on the plan (merged into `lm` at the end); the last step's loss per term
/// and the seconds taken.
fn learn_adapters(
    lm: &mut LanguageModel,
    plan: &Plan,
    cfg: &ForgetConfig,
    lora: &mut Lora,
) -> Result<(std::collections::BTreeMap<String, f64>, f64)> {
    let t0 = std::time::Instant::now();
    let bar = crate::util::progress(cfg.steps as u64, "learning (LoRA)");
    let losses = fine_tune(
        lm,
        plan,
        cfg,
        Tuned::Adapters(lora),
        "learning",
        None,
        |_, total, _| {
            bar.set_message(format!("loss {total:.3}"));
            bar.inc(1);
            Ok(false)
        },
    )?;
    bar.finish_and_clear();
    lora.merge(&mut lm.model)?;
    Ok((losses, t0.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpora_are_read_and_bad_rows_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("qa.jsonl");
        std::fs::write(&p, "{\"question\": \"Who?\", \"answer\": \"Ann\"}\n\n{\"question\": \"When?\", \"answer\": \"1999\"}\n").unwrap();
        match read_corpus(&p).unwrap() {
            Corpus::Qa(v) => assert_eq!(v[1], ("When?".to_string(), "1999".to_string())),
            c => panic!("{c:?}"),
        }
        let p = d.path().join("texts.json");
        std::fs::write(
            &p,
            r#"["line one\nline two", {"prompt": "a ", "gt": "b"}, {"text": "c"}]"#,
        )
        .unwrap();
        match read_corpus(&p).unwrap() {
            Corpus::Text(v) => assert_eq!(v, ["line one", "line two", "a b", "c"]),
            c => panic!("{c:?}"),
        }
        let p = d.path().join("bad.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"Who?\", \"answer\": \"Ann\"}\n{\"question\": \"When?\"}\n",
        )
        .unwrap();
        let e = read_corpus(&p).unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("answer"), "{e}");
        let f = qa_fact(3, " Who? ", "Ann");
        assert_eq!(
            (f.prompt.as_str(), f.answer.as_str()),
            ("Question: Who?\nAnswer:", " Ann")
        );
        f.validate("qa").unwrap();
    }
}
