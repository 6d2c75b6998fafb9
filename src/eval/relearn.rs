//! The relearning attack (SPEC §4): LoRA adapters (all linear layers by default) trained on one
//! half of the forget facts plus retain facts and general text; the forget accuracy of the
//! *other* half, which the attack never sees, is measured every few steps. Knowledge that was
//! only suppressed comes back on the unseen half; knowledge that is gone has to be learned
//! from scratch, and the unseen half stays near chance. `unlearn relearn` runs it on an
//! unlearned model (and, for comparison, on the original one when asked). With `--full` the
//! attack fine-tunes weights themselves (the tensors the unlearning updated) instead of
//! adapters: the stronger attack when the change sits in a few layers.

use crate::data::{self, Fact};
use crate::eval::completion::{accuracy, Accuracy};
use crate::forget::config::ForgetConfig;
use crate::forget::lora::{fine_tune, Lora, LoraConfig, Resume, Tuned};
use crate::forget::seqs::{text_chunks, Seq, SeqSet};
use crate::forget::terms::LogitLoss;
use crate::forget::trainer::{DataSet, Loss, Plan, Term};
use crate::model::memo::BatchMemo;
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of the attack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelearnConfig {
    pub steps: usize,
    /// Measure the unseen half every this many steps (and at 0 and the end).
    pub eval_every: usize,
    /// The adapters' learning rate.
    pub lr: f64,
    /// The learning rate when weights are fine-tuned themselves (`--full`).
    pub full_lr: f64,
    /// Forget facts (of the seen half) per step.
    pub batch_size: usize,
    pub retain_batch_size: usize,
    pub text_batch_size: usize,
    pub retain_weight: f64,
    pub text_weight: f64,
    pub seed: u64,
    pub lora: LoraConfig,
}

impl Default for RelearnConfig {
    fn default() -> Self {
        RelearnConfig {
            steps: 20,
            eval_every: 5,
            lr: 1e-3,
            full_lr: 2e-5,
            batch_size: 8,
            retain_batch_size: 8,
            text_batch_size: 2,
            retain_weight: 1.0,
            text_weight: 1.0,
            seed: 0,
            lora: LoraConfig::default(),
        }
    }
}

impl RelearnConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.eval_every == 0 || self.batch_size == 0 {
            bail!("relearn: steps, eval_every and batch_size must be at least 1");
        }
        for (name, lr) in [("lr", self.lr), ("full_lr", self.full_lr)] {
            if !(lr.is_finite() && lr > 0.0) {
                bail!("relearn: {name} must be a positive number, got {lr}");
            }
        }
        self.lora.validate()
    }
}

/// Accuracy of the unseen (and the trained) half over the attack's steps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelearnCurve {
    pub steps: Vec<usize>,
    pub unseen: Vec<Accuracy>,
    pub seen: Vec<Accuracy>,
    pub losses: Vec<f64>,
    /// Adapter parameters trained (0 when weights were fine-tuned themselves).
    pub lora_params: usize,
    /// Weights fine-tuned themselves (0 with adapters).
    #[serde(default)]
    pub full_params: usize,
    pub seconds: f64,
}

/// Attack `lm` in place: LoRA (or, with `full`, those weights) on `seen` (+ `retain`, + text),
/// measuring `unseen`.
pub fn relearn(
    lm: &mut LanguageModel,
    seen: &[Fact],
    unseen: &[Fact],
    retain: &[Fact],
    cfg: &RelearnConfig,
    full: Option<&[String]>,
) -> Result<RelearnCurve> {
    if seen.is_empty() || unseen.is_empty() {
        bail!(
            "relearn: needs forget facts to train on and others to measure (got {} and {})",
            seen.len(),
            unseen.len()
        );
    }
    let facts = |fs: &[Fact]| -> Result<Vec<Seq>> {
        fs.iter().map(|f| Seq::fact(lm, f, &f.answer)).collect()
    };
    let (train, keep) = (facts(seen)?, facts(retain)?);
    let truth = |f: &Fact| f.answer.clone();
    let a = attack(lm, train, keep, cfg, full, None, |_, lm| {
        Ok((accuracy(lm, unseen, truth)?, accuracy(lm, seen, truth)?))
    })?;
    let (unseen, seen) = a.measured.into_iter().unzip();
    Ok(RelearnCurve {
        steps: a.steps,
        unseen,
        seen,
        losses: a.losses,
        lora_params: a.lora_params,
        full_params: a.full_params,
        seconds: a.seconds,
    })
}

/// Multiple-choice accuracy of held-back questions over the steps of an attack that trains
/// on passages (retrain-on-T: WMDP splits 0–3 written with their answers, split 4 measured).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelearnMcqCurve {
    pub steps: Vec<usize>,
    pub measured: Vec<crate::eval::mcq::McqScore>,
    pub losses: Vec<f64>,
    /// Adapter parameters trained (0 when weights were fine-tuned themselves).
    pub lora_params: usize,
    /// Weights fine-tuned themselves (0 with adapters).
    #[serde(default)]
    pub full_params: usize,
    pub seconds: f64,
}

/// Attack `lm` in place: LoRA (or, with `full`, those weights) on the passages `train` (every
/// token a target; WikiText as retain data and general text), scoring the questions `measure`
/// every few steps (kept at each measurement with `resume`: see [`attack`]). Step 0 measures
/// the model as given: with `memo`, its batches are read from (and kept in) that model's
/// scores, so questions already asked of it by `unlearn mcq` (or by another attack on it) are
/// not computed again.
pub fn relearn_passages(
    lm: &mut LanguageModel,
    train: Vec<Seq>,
    measure: &[crate::eval::mcq::Mcq],
    cfg: &RelearnConfig,
    full: Option<&[String]>,
    resume: Option<&Resume>,
    memo: Option<&BatchMemo>,
) -> Result<RelearnMcqCurve> {
    if train.is_empty() || measure.is_empty() {
        bail!(
            "relearn: needs passages to train on and questions to measure (got {} and {})",
            train.len(),
            measure.len()
        );
    }
    let (wiki_train, _) = data::wikitext_halves()?;
    // WikiText chunks after the ones `attack` uses as general text.
    let n = cfg.text_batch_size.max(1) * 8;
    let keep = text_chunks(lm, &wiki_train, 64, n + cfg.retain_batch_size.max(1) * 4)?.split_off(n);
    let a = attack(lm, train, keep, cfg, full, resume, |step, lm| {
        let how = crate::eval::mcq::Asking {
            memo: memo.filter(|_| step == 0),
            ..Default::default()
        };
        crate::eval::mcq::score_with(lm, measure, 8, &how)
    })?;
    Ok(RelearnMcqCurve {
        steps: a.steps,
        measured: a.measured,
        losses: a.losses,
        lora_params: a.lora_params,
        full_params: a.full_params,
        seconds: a.seconds,
    })
}

/// An attack's measurements so far, as kept for a resumed run (`curve.json`).
#[derive(Serialize, Deserialize)]
struct Kept<M> {
    steps: Vec<usize>,
    measured: Vec<M>,
    losses: Vec<f64>,
    seconds: f64,
}

/// What [`attack`] returns: the measurements at its evaluation steps.
struct Attack<M> {
    steps: Vec<usize>,
    measured: Vec<M>,
    losses: Vec<f64>,
    lora_params: usize,
    full_params: usize,
    seconds: f64,
}

/// The attack: LoRA adapters (or, with `full`, those weights themselves at `cfg.full_lr`)
/// trained with cross-entropy on `train` (+ `retain`, + general text), `measure` called at
/// step 0 (the model as given), every `eval_every` steps and at the end (`measure` is told the
/// step). With `resume`, the state and the
/// measurements so far are kept at every measurement (`curve.json` beside the trainer's
/// state), and a run cut off goes on from its last measurement.
fn attack<M: Serialize + serde::de::DeserializeOwned>(
    lm: &mut LanguageModel,
    train: Vec<Seq>,
    retain: Vec<Seq>,
    cfg: &RelearnConfig,
    full: Option<&[String]>,
    resume: Option<&Resume>,
    mut measure: impl FnMut(usize, &LanguageModel) -> Result<M>,
) -> Result<Attack<M>> {
    cfg.validate()?;
    let t0 = std::time::Instant::now();
    let (wiki_train, _) = data::wikitext_halves()?;
    let text = text_chunks(lm, &wiki_train, 64, cfg.text_batch_size.max(1) * 8)?;
    let ce = |name: &str, weight: f64, data: DataSet| Term {
        name: name.into(),
        weight,
        data,
        loss: Loss::Logit(LogitLoss::Ce),
        project: false,
    };
    let (mut lora, params) = match full {
        Some(names) => (None, names.to_vec()),
        None => {
            let l = Lora::new(&lm.model, cfg.lora.clone(), cfg.seed)?;
            let targets = l.targets();
            (Some(l), targets)
        }
    };
    let full_params = match full {
        Some(names) => names
            .iter()
            .map(|p| Ok(lm.model.weights().get(p)?.elem_count()))
            .sum::<Result<usize>>()?,
        None => 0,
    };
    let mut plan = Plan {
        terms: vec![
            ce("relearn_ce", 1.0, DataSet::Forget),
            ce("retain_ce", cfg.retain_weight, DataSet::Retain),
            ce("text_ce", cfg.text_weight, DataSet::Text),
        ],
        forget: SeqSet::new("relearned data", train),
        retain: SeqSet::new("retain", retain),
        text: SeqSet::new("text", text),
        params,
        rep_layer: None,
        projectors: Default::default(),
        project_at: crate::forget::trainer::ProjectAt::Gradient,
        pad: lm.pad_id(),
        text_rows: 16,
        ppl_probe: None,
    };
    plan.precompute(&lm.model, 16)?;
    let mut fcfg = ForgetConfig {
        steps: cfg.steps,
        batch_size: cfg.batch_size,
        retain_batch_size: cfg.retain_batch_size,
        text_batch_size: cfg.text_batch_size,
        seed: cfg.seed,
        ..ForgetConfig::default()
    };
    // The measurements kept with the trainer's state (the same step), else step 0's.
    let kept = resume.and_then(|r| {
        let step = r.saved_step()?;
        let v = crate::util::read_json(&r.dir.join("curve.json")).ok()??;
        let k: Kept<M> = serde_json::from_value(v).ok()?;
        (k.steps.last() == Some(&step)).then_some(k)
    });
    let k = match kept {
        Some(k) => {
            eprintln!("relearning: going on from step {}", k.losses.len());
            k
        }
        None => Kept {
            steps: vec![0],
            measured: vec![measure(0, lm)?],
            losses: Vec::new(),
            seconds: 0.0,
        },
    };
    let mut out = Attack {
        steps: k.steps,
        measured: k.measured,
        losses: k.losses,
        lora_params: lora.as_ref().map_or(0, |l| l.param_count()),
        full_params,
        seconds: k.seconds,
    };
    let seconds_before = out.seconds;
    let bar = crate::util::progress(cfg.steps as u64, "relearning");
    bar.set_position(out.losses.len() as u64);
    let tuned = match &mut lora {
        Some(l) => {
            fcfg.optim.lr = cfg.lr;
            Tuned::Adapters(l)
        }
        None => {
            fcfg.optim.lr = cfg.full_lr;
            Tuned::Weights
        }
    };
    fine_tune(
        lm,
        &plan,
        &fcfg,
        tuned,
        "relearning attack",
        resume,
        |step, total, lm| {
            out.losses.push(total);
            bar.set_message(format!("loss {total:.3}"));
            bar.inc(1);
            if (step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps {
                out.steps.push(step + 1);
                out.measured.push(measure(step + 1, lm)?);
                if let Some(r) = resume {
                    let kept = Kept {
                        steps: out.steps.clone(),
                        measured: out.measured.iter().collect(),
                        losses: out.losses.clone(),
                        seconds: seconds_before + t0.elapsed().as_secs_f64(),
                    };
                    std::fs::create_dir_all(&r.dir)?;
                    crate::util::write_json(&r.dir.join("curve.json"), &kept)?;
                    return Ok(true);
                }
            }
            Ok(false)
        },
    )?;
    bar.finish_and_clear();
    out.seconds = seconds_before + t0.elapsed().as_secs_f64();
    Ok(out)
}

/// Options of `unlearn relearn`.
pub struct RelearnArgs {
    pub model: String,
    pub unlearned: Option<PathBuf>,
    pub task: String,
    pub forget: String,
    pub known: String,
    /// Merge duplicate facts of a user's file instead of refusing them.
    pub dedup: bool,
    pub seed: u64,
    pub cfg: RelearnConfig,
    /// With a corpus task: the multiple-choice questions measured over the attack (`wmdp:4`).
    pub measure: Option<String>,
    /// Fine-tune weights themselves instead of adapters: the unlearned run's updated tensors,
    /// or the MLPs of `layers`.
    pub full: bool,
    /// With `full`: MLP layers (`4-6`) or `all` (every block parameter).
    pub layers: Option<String>,
    pub out: PathBuf,
}

/// The tensors a `--full` attack fine-tunes (`None` without `--full`): the MLPs of `--layers`,
/// else the tensors the unlearned run updated.
fn full_params(a: &RelearnArgs, lm: &LanguageModel) -> Result<Option<Vec<String>>> {
    if !a.full {
        return Ok(None);
    }
    let names = match (&a.layers, &a.unlearned) {
        (Some(l), _) if l == "all" => crate::forget::run::all_block_params(lm),
        (Some(l), _) => lm.model.mlp_param_names(&crate::forget::run::parse_layers(
            l,
            lm.model.config.num_layers,
        )?),
        (None, Some(d)) => {
            let p = d.join("manifest.json");
            let m = crate::util::read_json(&p)?
                .with_context(|| format!("{}: cannot be read", p.display()))?;
            let names: Vec<String> =
                serde_json::from_value(m["params"].clone()).with_context(|| {
                    format!("{}: field `params` (the updated tensors)", p.display())
                })?;
            if names.is_empty() {
                bail!("{}: the run updated no tensors", p.display());
            }
            names
        }
        (None, None) => bail!("--full needs --layers or --unlearned"),
    };
    Ok(Some(names))
}

/// `--full` and `--layers` agree with each other and with `--unlearned` (before anything loads).
fn check_full(a: &RelearnArgs) -> Result<()> {
    match (a.full, &a.layers, &a.unlearned) {
        (false, Some(_), _) => {
            bail!("--layers chooses what a --full attack fine-tunes; LoRA adapts --targets")
        }
        (true, None, None) => bail!(
            "--full on the original model: give --layers, the MLPs to fine-tune (those the unlearned runs updated, to compare)"
        ),
        _ => Ok(()),
    }
}

/// Split the forget facts into the half the attack trains on and the half it is measured on.
pub fn halves(forget: &[Fact]) -> (Vec<Fact>, Vec<Fact>) {
    let seen = forget.iter().step_by(2).cloned().collect();
    let unseen = forget.iter().skip(1).step_by(2).cloned().collect();
    (seen, unseen)
}

/// Run `unlearn relearn`: the attack on the unlearned model (or on `--model` alone), written
/// to OUT/relearn.json.
pub fn run(a: &RelearnArgs, device: &candle_core::Device) -> Result<serde_json::Value> {
    check_full(a)?;
    crate::outdir::prepare(
        &a.out,
        &crate::outdir::with_unlearned(&a.model, &a.unlearned),
    )?;
    if crate::data::corpus::is_corpus(&a.task)? {
        return run_passages(a, device);
    }
    if a.measure.is_some() {
        bail!(
            "--measure scores questions after training on a corpus of passages; {} is a facts task (its unseen forget facts are measured)",
            a.task
        );
    }
    use crate::eval::run::{facts_of_run, run_task};
    let rt = run_task(a.unlearned.as_deref(), &a.task, &a.known, a.dedup)?;
    let original = LanguageModel::load(&a.model, device)?;
    let rf = facts_of_run(&original, rt, &a.forget, a.seed)?;
    let (seen, unseen) = halves(&rf.forget);
    // The attack's retain facts come from the train split, like an unlearning run's.
    let retain: Vec<Fact> = crate::data::known::about_other_subjects(
        crate::data::splits::only(&rf.rest, crate::data::splits::Split::Train),
        &rf.forget,
    )
    .into_iter()
    .take(64)
    .collect();
    let mut target = match &a.unlearned {
        Some(d) => LanguageModel::load(&d.display().to_string(), device)?,
        None => original,
    };
    let full = full_params(a, &target)?;
    eprintln!(
        "relearning attack: {} on {} seen forget facts, measured on {} unseen",
        attacker(a, full.as_deref()),
        seen.len(),
        unseen.len()
    );
    let curve = relearn(
        &mut target,
        &seen,
        &unseen,
        &retain,
        &a.cfg,
        full.as_deref(),
    )?;
    for (s, u) in curve.steps.iter().zip(&curve.unseen) {
        println!(
            "step {s:>3}: unseen forget facts top-1 among candidates {:.1}%, mean p {:.3}",
            100.0 * u.top1_candidates,
            u.mean_p
        );
    }
    let out = serde_json::json!({
        "tool": crate::util::tool_id(),
        "model": a.model, "unlearned": a.unlearned, "task": rf.task,
        "config": a.cfg, "full_weights": full, "seen_ids": seen.iter().map(|f| &f.id).collect::<Vec<_>>(),
        "unseen_ids": unseen.iter().map(|f| &f.id).collect::<Vec<_>>(),
        "curve": curve,
    });
    let p = a.out.join("relearn.json");
    crate::util::write_json(&p, &out)?;
    eprintln!("wrote {}", p.display());
    Ok(out)
}

/// How the attack is described in its progress line.
fn attacker(a: &RelearnArgs, full: Option<&[String]>) -> String {
    match full {
        Some(names) => format!(
            "full fine-tuning of {} tensors, lr {}",
            names.len(),
            a.cfg.full_lr
        ),
        None => format!("LoRA rank {}", a.cfg.lora.rank),
    }
}

/// `unlearn relearn` on a corpus: LoRA on the passages of `--task`, the questions of
/// `--measure` scored every few steps; OUT/relearn.json.
fn run_passages(a: &RelearnArgs, device: &candle_core::Device) -> Result<serde_json::Value> {
    let Some(set) = &a.measure else {
        bail!(
            "{} is a corpus of passages: give --measure SET, the questions the attack is scored on (e.g. wmdp:4 after training on wmdp-qa:0,1,2,3)",
            a.task
        );
    };
    let questions = crate::eval::mcq::load_set(set)?;
    let passages = crate::data::corpus::load(&a.task)?;
    let mut lm = match &a.unlearned {
        Some(d) => LanguageModel::load(&d.display().to_string(), device)?,
        None => LanguageModel::load(&a.model, device)?,
    };
    let (train, _) = crate::forget::seqs::passage_seqs(&lm, &passages, 256)?;
    let full = full_params(a, &lm)?;
    eprintln!(
        "relearning attack: {} on {} passages of {}, measured on {} questions of {set}",
        attacker(a, full.as_deref()),
        passages.len(),
        a.task,
        questions.len()
    );
    // Kept at every measurement (OUT/checkpoint), so a cut-off attack goes on; the key names
    // everything the curve depends on, the unlearned run by its manifest.
    let manifest = match &a.unlearned {
        Some(d) => Some(crate::util::sha256_file(&d.join("manifest.json"))?),
        None => None,
    };
    let key = serde_json::json!({"tool": crate::util::tool_id(), "model": a.model,
        "unlearned": manifest, "task": a.task, "measure": set, "config": a.cfg, "full": full});
    let resume = Resume {
        dir: a.out.join("checkpoint"),
        key: crate::forget::run::hash_json(&key),
    };
    let memo = BatchMemo::for_model(&lm)?;
    let curve = relearn_passages(
        &mut lm,
        train,
        &questions,
        &a.cfg,
        full.as_deref(),
        Some(&resume),
        Some(&memo),
    )?;
    memo.report_hits("step 0: ");
    for (s, m) in curve.steps.iter().zip(&curve.measured) {
        println!(
            "step {s:>3}: {set} accuracy {:.1}% ± {:.1}",
            100.0 * m.accuracy,
            100.0 * m.stderr
        );
    }
    let out = serde_json::json!({
        "tool": crate::util::tool_id(),
        "model": a.model, "unlearned": a.unlearned, "task": a.task, "measure": set,
        "config": a.cfg, "full_weights": full, "curve": curve,
        "batches_read_back": memo.hits(),
    });
    let p = a.out.join("relearn.json");
    crate::util::write_json(&p, &out)?;
    std::fs::remove_dir_all(&resume.dir).ok();
    eprintln!("wrote {}", p.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (LanguageModel, Vec<Seq>, RelearnConfig) {
        let lm = LanguageModel::load("random:tiny", &candle_core::Device::Cpu).unwrap();
        let passages = crate::data::corpus::load("wmdp-qa:4").unwrap();
        let (train, _) = crate::forget::seqs::passage_seqs(&lm, &passages[..12], 64).unwrap();
        let cfg = RelearnConfig {
            steps: 6,
            eval_every: 2,
            batch_size: 4,
            ..Default::default()
        };
        (lm, train, cfg)
    }

    /// A measurement that reads the trained model: the sum of one prompt's last logits.
    fn probe(lm: &LanguageModel) -> Result<f64> {
        let l = lm.model.last_logits(&[vec![3, 7, 11, 5]], 0)?;
        Ok(l[0].iter().map(|&x| x as f64).sum())
    }

    /// An attack cut off after a kept measurement goes on from there to the same curve as one
    /// run straight through (LoRA and full fine-tuning); under another key it starts over.
    #[test]
    fn a_cut_off_attack_goes_on_to_the_same_curve() {
        for full in [
            None,
            Some(vec!["model.layers.1.mlp.up_proj.weight".to_string()]),
        ] {
            let t = tempfile::tempdir().unwrap();
            let keep = |name: &str, key: &str| Resume {
                dir: t.path().join(name),
                key: key.into(),
            };
            // The attack on a fresh model, kept in `name`; the measurement fails at call
            // `fail_at`. Returns the attack and the measurements made.
            let run = |name: &str, fail_at: usize| {
                let (mut lm, train, cfg) = setup();
                let mut calls = 0;
                let a = attack(
                    &mut lm,
                    train,
                    vec![],
                    &cfg,
                    full.as_deref(),
                    Some(&keep(name, "k")),
                    |_, lm| {
                        calls += 1;
                        if calls == fail_at {
                            bail!("cut off");
                        }
                        probe(lm)
                    },
                );
                (a, calls)
            };
            let straight = run("a", 0).0.unwrap();
            assert_eq!(straight.steps, [0, 2, 4, 6]);
            assert!(run("b", 3).0.is_err());
            assert_eq!(keep("b", "k").saved_step(), Some(2));
            let (resumed, calls) = run("b", 0);
            let resumed = resumed.unwrap();
            assert_eq!(calls, 2, "steps 4 and 6 only");
            assert_eq!(resumed.steps, straight.steps);
            assert_eq!(resumed.measured, straight.measured, "{full:?}");
            assert_eq!(resumed.losses, straight.losses, "{full:?}");
            // Under another key the kept state is not read.
            assert_eq!(keep("b", "other").saved_step(), None);
        }
    }

    /// Step 0 measures the model as given: with a memo, the batches kept of this model (by
    /// `unlearn mcq`) are read back — a marked memo's numbers are the ones step 0 reports —
    /// and every later step is computed.
    #[test]
    fn step_zero_reads_back_the_batches_kept_of_the_model() {
        use crate::eval::mcq::{score_with, Asking, Mcq};
        let (mut lm, train, cfg) = setup();
        let qs: Vec<Mcq> = (0..12)
            .map(|i| Mcq {
                question: format!("Which number comes after {i}?"),
                choices: (0..4).map(|k| format!("{}", i + k)).collect(),
                answer: 1,
                subject: None,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept.jsonl");
        let asked = |memo| Asking {
            memo: Some(memo),
            ..Default::default()
        };
        let first = score_with(&lm, &qs, 8, &asked(&BatchMemo::open(&kept).unwrap())).unwrap();
        let text = std::fs::read_to_string(&kept).unwrap();
        let batches = text.lines().count();
        assert_eq!(batches, 2, "12 questions in batches of 8");
        // Marked: every question's letter logits say "A".
        let marked = dir.path().join("marked.jsonl");
        let mut out = String::new();
        for l in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for row in v["rows"].as_array_mut().unwrap() {
                *row = serde_json::json!([1.0, 0.0, 0.0, 0.0]);
            }
            out += &format!("{v}\n");
        }
        std::fs::write(&marked, out).unwrap();
        let memo = BatchMemo::open(&marked).unwrap();
        let curve = relearn_passages(&mut lm, train, &qs, &cfg, None, None, Some(&memo)).unwrap();
        assert_eq!(curve.steps, [0, 2, 4, 6]);
        assert_eq!(curve.measured[0].chosen, [12, 0, 0, 0], "step 0 read back");
        assert_eq!(memo.hits(), batches, "only step 0 reads the memo");
        assert_ne!(curve.measured[0], first);
        // Without the mark, step 0 is what `mcq` scored.
        let (mut lm, train, cfg) = setup();
        let memo = BatchMemo::open(&kept).unwrap();
        let curve = relearn_passages(&mut lm, train, &qs, &cfg, None, None, Some(&memo)).unwrap();
        assert_eq!(curve.measured[0], first);
        assert_eq!(memo.hits(), batches);
    }
}
