//! `unlearn forget` and `unlearn edit`: pick the known facts to forget (or edit), the retain
//! facts and general text, the parameters to update (a localization, MLP layers, or the whole
//! model), train with the chosen method, evaluate before and after, and write the result.

use crate::data::dedup::Policy;
use crate::data::splits::{self, Split};
use crate::data::{self, known, Fact};
use crate::eval::completion::{accuracy, Accuracy, Outcome};
use crate::eval::floor::know_nothing_floor;
use crate::eval::perplexity::{perplexity, tokenize_lines, Perplexity};
use crate::forget::config::{Centre, ForgetConfig, Method, WIKITEXT_RETAIN};
use crate::forget::export::{base_spec, write_output, Manifest};
use crate::forget::methods;
use crate::forget::nullspace::{cached_key_sums, key_sums, Projection, Projectors};
use crate::forget::refs::{
    answer_balanced, first_row_ratio, mean_ref_norm, mean_ref_row, mean_ref_row_by_place,
    steering_vector,
};
use crate::forget::seqs::{passage_seqs, ppl_probe, text_chunks, Place, Seq, SeqSet, Sink};
use crate::forget::trainer::{
    first_layer, layer_of, train, Plan, PplProbe, ProjectAt, RowMove, TrainSummary,
};
use crate::locate::localization::Localization;
use crate::model::source::fingerprint;
use crate::model::{LanguageModel, Transformer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

/// Options of `unlearn forget` / `unlearn edit`.
#[derive(Clone, Debug)]
pub struct ForgetArgs {
    pub model: String,
    pub task: String,
    pub forget: String,
    pub known: String,
    /// Merge duplicate facts of a user's file instead of refusing them.
    pub dedup: bool,
    pub method: Method,
    pub localization: Option<PathBuf>,
    /// MLP layers such as `2-4` or `2,3,4`, or `all` (every block parameter).
    pub layers: Option<String>,
    pub config: Option<PathBuf>,
    pub sets: Vec<String>,
    pub edit: bool,
    /// Editing: `rotate` (next candidate answer) or a fixed answer such as ` golf`.
    pub new_answer: String,
    pub partitions: usize,
    /// KUDA's two-stage tuning (τ against a retain-drift bound, then β against a forget target).
    pub tune: Option<TuneArgs>,
    pub full: bool,
    pub eval: bool,
    pub out: PathBuf,
}

impl ForgetArgs {
    /// The command-line defaults: Sports, first 16 known athletes (top-1), no localization
    /// (give one), default settings, evaluation on.
    pub fn defaults(model: &str, method: Method, out: PathBuf) -> ForgetArgs {
        ForgetArgs {
            model: model.into(),
            task: "sports".into(),
            forget: "first-16".into(),
            known: "top1".into(),
            dedup: false,
            method,
            localization: None,
            layers: None,
            config: None,
            sets: vec![],
            edit: false,
            new_answer: "rotate".into(),
            partitions: 1,
            tune: None,
            full: false,
            eval: true,
            out,
        }
    }
}

/// Before/after numbers of one run.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Metrics {
    pub forget: Accuracy,
    /// The forget facts asked about made-up subjects: what knowing nothing scores
    /// ([`crate::eval::floor`]).
    #[serde(default)]
    pub forget_floor: Option<Accuracy>,
    /// Editing: accuracy of the new answers on the edited facts.
    pub edit: Option<Accuracy>,
    pub held_out: Accuracy,
    pub wikitext: Perplexity,
    /// The forget facts whose answer still beats the other candidates: what is not gone.
    #[serde(default)]
    pub forget_kept: Vec<Outcome>,
    /// The held-out facts whose answer no longer does: what the run broke.
    #[serde(default)]
    pub held_out_lost: Vec<Outcome>,
    /// The known facts about namesakes of the forget subjects ([`known::namesakes`]), wherever
    /// they sit (retain facts or held out): what an update that reads names too coarsely
    /// breaks first. None when there are none.
    #[serde(default)]
    pub namesakes: Option<Accuracy>,
    /// The namesakes' facts whose answer no longer beats the other candidates.
    #[serde(default)]
    pub namesakes_lost: Vec<Outcome>,
}

/// Parse `2-4`, `2,3,4` or `7` into layers.
pub fn parse_layers(s: &str, n_layers: usize) -> Result<Vec<usize>> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| -> Result<usize> {
            x.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--layers {s:?}: {x:?} is not a layer number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    bail!("--layers {s:?}: range {a}-{b} is empty");
                }
                v.extend(a..=b)
            }
            None => v.push(num(part)?),
        }
    }
    if v.is_empty() {
        bail!("--layers {s:?}: no layers");
    }
    if let Some(&l) = v.iter().find(|&&l| l >= n_layers) {
        bail!("--layers {s:?}: layer {l} does not exist (the model has {n_layers})");
    }
    v.sort();
    v.dedup();
    Ok(v)
}

/// The answer an edit teaches for a fact.
fn new_answer_for(f: &Fact, rule: &str) -> Result<String> {
    if rule != "rotate" {
        return Ok(data::as_completion(rule));
    }
    if let Some(a) = &f.new_answer {
        return Ok(data::as_completion(a));
    }
    let c = &f.candidates;
    match c.iter().position(|x| *x == f.answer) {
        Some(i) if c.len() > 1 => Ok(c[(i + 1) % c.len()].clone()),
        _ => bail!(
            "fact {}: no new answer to edit to (the task has no target_new and no other candidates); pass --new-answer",
            f.id
        ),
    }
}

/// What a run is measured on, before and after training.
struct EvalSets<'a> {
    forget: &'a [Fact],
    held_out: &'a [Fact],
    namesakes: &'a [Fact],
    /// Editing: the new answer of each forget fact.
    edit: Option<&'a [String]>,
    ppl_ids: &'a [u32],
    /// The facts have other candidate answers ([`data::has_rivals`]); without them the
    /// know-nothing floor is left out and vocabulary top-1 is the headline.
    rivals: bool,
}

fn evaluate(lm: &LanguageModel, sets: &EvalSets) -> Result<Metrics> {
    let EvalSets {
        forget,
        held_out,
        namesakes,
        edit,
        ppl_ids,
        rivals,
    } = *sets;
    let forget_acc = accuracy(lm, forget, |f| f.answer.clone())?;
    let edit_acc = match edit {
        Some(new) => {
            let by_id: std::collections::HashMap<&str, &String> = forget
                .iter()
                .map(|f| f.id.as_str())
                .zip(new.iter())
                .collect();
            Some(accuracy(lm, forget, |f| by_id[f.id.as_str()].clone())?)
        }
        None => None,
    };
    let pool: Vec<Fact> = forget.iter().chain(held_out).cloned().collect();
    let held_out_acc = accuracy(lm, held_out, |f| f.answer.clone())?;
    let namesakes_acc = match namesakes {
        [] => None,
        n => Some(accuracy(lm, n, |f| f.answer.clone())?),
    };
    let pick = |a: &Accuracy, kept: bool| -> Vec<Outcome> {
        a.outcomes
            .iter()
            .filter(|o| o.kept() == kept)
            .cloned()
            .collect()
    };
    Ok(Metrics {
        forget_kept: pick(&forget_acc, true),
        held_out_lost: pick(&held_out_acc, false),
        forget: forget_acc,
        forget_floor: if rivals {
            Some(know_nothing_floor(lm, forget, &pool)?)
        } else {
            None
        },
        edit: edit_acc,
        held_out: held_out_acc,
        namesakes_lost: namesakes_acc.as_ref().map_or(vec![], |a| pick(a, false)),
        namesakes: namesakes_acc,
        wikitext: perplexity(lm, ppl_ids, 512, 256)?,
    })
}

/// What a corpus run measures itself (`OUT/metrics.json`): WikiText-2 perplexity of the
/// original and the unlearned model; what the corpus taught is measured by multiple choice.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CorpusMetrics {
    /// The corpus forgotten (every passage of it is trained on).
    pub task: String,
    pub before: CorpusSide,
    pub after: CorpusSide,
}

/// One model's side of [`CorpusMetrics`]: perplexity on the held-out half of WikiText-2
/// (the other half is the retain text).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CorpusSide {
    pub wikitext: Perplexity,
}

/// WikiText-2 tokens scored for perplexity (held-out half, windows of 512, stride 256).
pub const PPL_TOKENS: usize = 2048;

/// Up to `n` facts of `task` outside `known` (those the model does not know), in a seeded order.
fn unknown_facts(all: &[Fact], known: &[Fact], n: usize, seed: u64) -> Vec<Fact> {
    let known_ids: std::collections::HashSet<&str> = known.iter().map(|f| f.id.as_str()).collect();
    let mut rest: Vec<Fact> = all
        .iter()
        .filter(|f| !known_ids.contains(f.id.as_str()))
        .cloned()
        .collect();
    rest.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x0DD5));
    rest.truncate(n);
    rest
}

/// Unlearn a corpus of passages (`wmdp-qa`, a `{"text"}` file): every token of every passage
/// is forget data; WikiText chunks are the general text and, unless `corpus_retain` names a
/// corpus, the retain data. Facts-based settings (editing, `--tune`, focus, stopping at a
/// forget accuracy, a deviation centre) are refused; the result is measured by multiple choice
/// (`unlearn mcq --model OUT`).
fn run_corpus(
    a: &ForgetArgs,
    cfg: ForgetConfig,
    device: &candle_core::Device,
) -> Result<LanguageModel> {
    let facts_only = [
        (a.edit, "editing"),
        (a.tune.is_some(), "--tune"),
        (cfg.kuda.focus > 0.0, "kuda.focus"),
        (cfg.stop_at_forget_acc.is_some(), "stop_at_forget_acc"),
        (cfg.kuda.center != Centre::None, "kuda.center"),
        (cfg.retain_unknown_facts > 0, "retain_unknown_facts"),
    ];
    if let Some((_, what)) = facts_only.iter().find(|(on, _)| *on) {
        bail!(
            "{what} works on facts (prompts with answers); {} is a corpus of passages",
            a.task
        );
    }
    let passages = data::corpus::load(&a.task)?;
    let retain_passages = corpus_retain_passages(&cfg, &passages)?;
    let mut lm = LanguageModel::load(&a.model, device)?;
    let base_fp = fingerprint(&lm.origin)?;
    let (localization, params, param_count, top) = updated_params(a, &lm)?;
    let rep_layer = methods::rep_layer(a.method, &cfg, top)?;
    let (forget_seqs, forget_ids) = passage_seqs(&lm, &passages, cfg.corpus_tokens)?;
    let (wiki_train, wiki_eval) = data::wikitext_halves()?;
    let ppl_ids = tokenize_lines(&lm, &wiki_eval, PPL_TOKENS)?;
    // The original model's perplexity depends only on it and the text: cached.
    let wikitext_before = if a.eval {
        let key = serde_json::to_vec(
            &json!({"corpus_ppl": 1, "model": crate::model::cache_fingerprint(&lm.origin)?,
            "ppl": ppl_ids}),
        )?;
        let p: Perplexity =
            crate::util::cached_json("metrics", &key, || perplexity(&lm, &ppl_ids, 512, 256))?;
        eprintln!("before: wikitext ppl {:.3}", p.perplexity);
        Some(p)
    } else {
        None
    };
    let n_text = cfg.kuda.key_text_chunks.max(cfg.text_batch_size * 8).max(1);
    let n_wiki_retain = if retain_passages.is_some() {
        0
    } else {
        cfg.retain_facts
    };
    let mut chunks = text_chunks(&lm, &wiki_train, cfg.text_tokens, n_text + n_wiki_retain)?;
    let (retain_seqs, retain_ids) = match &retain_passages {
        Some(p) => passage_seqs(&lm, p, cfg.corpus_tokens)?,
        None => {
            let r = chunks.split_off(n_text.min(chunks.len()));
            let ids = (0..r.len()).map(|i| format!("wikitext:{i}")).collect();
            (r, ids)
        }
    };
    let text_seqs = chunks;
    eprintln!(
        "{}: {} passages of {} in {} pieces to forget; {} pieces of {} as retain data; updating {} tensors ({:.2} M parameters){}",
        a.method.name(),
        passages.len(),
        a.task,
        forget_seqs.len(),
        retain_seqs.len(),
        cfg.corpus_retain,
        params.len(),
        param_count as f64 / 1e6,
        rep_layer.map_or(String::new(), |r| format!(", representation layer {r}"))
    );
    let (ppl_probe, projectors) = probe_and_projectors(
        &lm,
        a.method,
        &cfg,
        &params,
        (&retain_seqs, &text_seqs),
        &wiki_train,
    )?;
    let ctx = TrainCtx {
        method: a.method,
        edit: false,
        forget_seqs,
        known_retain: retain_seqs.len(),
        retain_seqs,
        text_seqs,
        params: params.clone(),
        rep_layer,
        projectors,
        forget_ids,
        retain_ids,
        new_answers: None,
        base_fp: base_fp.clone(),
        partitions: a.partitions,
        ppl_probe: Some(ppl_probe),
    }
    .with_sink(cfg.sink)?;
    let stop = std::env::var("UNLEARN_STOP_AFTER_STEP")
        .ok()
        .and_then(|s| s.parse().ok());
    let summaries = train_all(&mut lm, &ctx, &cfg, &a.out, stop)?;
    let metrics = match &wikitext_before {
        Some(before) => {
            let after = perplexity(&lm, &ppl_ids, 512, 256)?;
            eprintln!(
                "wikitext ppl {:.3} -> {:.3} ({:+.1} %)",
                before.perplexity,
                after.perplexity,
                100.0 * (after.perplexity / before.perplexity - 1.0)
            );
            let m = CorpusMetrics {
                task: a.task.clone(),
                before: CorpusSide {
                    wikitext: before.clone(),
                },
                after: CorpusSide { wikitext: after },
            };
            crate::util::write_json(&a.out.join("metrics.json"), &m)?;
            Some(serde_json::to_value(&m)?)
        }
        None => None,
    };
    let manifest = Manifest {
        edit: false,
        dedup: false,
        forget_split: "all".into(),
        ..manifest_of(
            a,
            &ctx,
            &cfg,
            &summaries,
            (localization, params, param_count),
            metrics,
        )
    };
    write_output(&a.out, &lm, &manifest, a.full)?;
    eprintln!(
        "wrote {} (a corpus is measured by multiple choice: unlearn mcq --model {} --set wmdp)",
        a.out.join("manifest.json").display(),
        a.out.display()
    );
    Ok(lm)
}

/// A corpus run's retain passages (`corpus_retain`): none when they are WikiText chunks, else
/// `retain_facts` passages of the named corpus drawn by the seed, none of them a forget passage.
fn corpus_retain_passages(
    cfg: &ForgetConfig,
    forget: &[data::corpus::Passage],
) -> Result<Option<Vec<data::corpus::Passage>>> {
    let name = &cfg.corpus_retain;
    if name == WIKITEXT_RETAIN {
        return Ok(None);
    }
    if !data::corpus::is_corpus(name)? {
        bail!(
            "corpus_retain = {name:?}: expected {WIKITEXT_RETAIN}, mmlu-qa, wmdp-qa[:splits] or a \
             .jsonl file of {{\"text\": …}} rows"
        );
    }
    let mut p = data::corpus::load(name).with_context(|| format!("corpus_retain = {name:?}"))?;
    let forget_texts: std::collections::HashSet<&str> =
        forget.iter().map(|f| f.text.as_str()).collect();
    if let Some(both) = p.iter().find(|r| forget_texts.contains(r.text.as_str())) {
        bail!(
            "corpus_retain = {name:?}: passage {} is also a forget passage (a text cannot be both \
             forgotten and kept)",
            both.id
        );
    }
    p.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x2E7A));
    p.truncate(cfg.retain_facts);
    Ok(Some(p))
}

/// The manifest of a finished run: the base model, what was updated with which settings,
/// the facts trained on (from `ctx`) and how training ended.
fn manifest_of(
    a: &ForgetArgs,
    ctx: &TrainCtx,
    cfg: &ForgetConfig,
    summaries: &[TrainSummary],
    (localization, params, param_count): (Option<Localization>, Vec<String>, usize),
    metrics: Option<serde_json::Value>,
) -> Manifest {
    Manifest {
        tool: crate::util::tool_id(),
        base_model: base_spec(&a.model),
        base_sha256: ctx.base_fp.clone(),
        method: a.method.name().into(),
        edit: a.edit,
        task: a.task.clone(),
        dedup: a.dedup,
        forget_split: a.forget.clone(),
        forget_ids: ctx.forget_ids.clone(),
        retain_ids: ctx.retain_ids.clone(),
        new_answers: ctx.new_answers.clone(),
        localization,
        params,
        param_count,
        config: cfg.clone(),
        seed: cfg.seed,
        steps: cfg.steps,
        steps_done: summaries.iter().map(|s| s.steps_done).collect(),
        final_losses: summaries
            .last()
            .map(|s| s.final_losses.clone())
            .unwrap_or_default(),
        gradient_angles: summaries.last().and_then(|s| s.gradient_angles.clone()),
        projector_pass: summaries
            .last()
            .map(|s| s.projector_pass.clone())
            .unwrap_or_default(),
        text_ppl_end: summaries.last().and_then(|s| s.text_ppl_end),
        threads: crate::util::threads(),
        precision: crate::model::precision_label(),
        weights: if a.full {
            "full".into()
        } else {
            "changed".into()
        },
        metrics,
    }
}

/// What a run updates: the localization's parameters, the MLPs of `--layers`, or every block
/// parameter; with their count and the last updated layer.
fn updated_params(
    a: &ForgetArgs,
    lm: &LanguageModel,
) -> Result<(Option<Localization>, Vec<String>, usize, usize)> {
    let n_layers = lm.model.config.num_layers;
    let (localization, params): (Option<Localization>, Vec<String>) =
        match (&a.localization, &a.layers) {
            (Some(_), Some(_)) => bail!("give --localization or --layers, not both"),
            (Some(p), None) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                let loc: Localization = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a localization.json", p.display()))?;
                for q in &loc.params {
                    lm.model.weights().dims(q).with_context(|| {
                        format!("{}: parameter `{q}` is not in this model", p.display())
                    })?;
                }
                let params = loc.params.clone();
                (Some(loc), params)
            }
            (None, Some(s)) if s == "all" => (None, all_block_params(lm)),
            (None, Some(s)) => (None, lm.model.mlp_param_names(&parse_layers(s, n_layers)?)),
            (None, None) => (None, all_block_params(lm)),
        };
    let param_count: usize = params
        .iter()
        .map(|p| lm.model.weights().elem_count(p))
        .sum::<Result<usize>>()?;
    let top = params
        .iter()
        .filter_map(|p| layer_of(p))
        .max()
        .unwrap_or(n_layers - 1);
    Ok((localization, params, param_count, top))
}

/// Held-out known facts evaluated at most.
pub const HELD_OUT_FACTS: usize = 200;

pub(crate) fn hash_json(v: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// The run's settings (defaults, `--config`, `--set`), checked against its other options
/// before anything is loaded.
fn settings(a: &ForgetArgs) -> Result<ForgetConfig> {
    let toml_text = match &a.config {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let cfg =
        ForgetConfig::resolve(a.method, toml_text.as_deref(), &a.sets).with_context(|| {
            a.config.as_ref().map_or("settings".into(), |p| {
                format!("settings from {}", p.display())
            })
        })?;
    if a.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    if a.edit && cfg.stop_at_forget_acc.is_some() {
        bail!("stop_at_forget_acc stops a forget run; `unlearn edit` trains every step");
    }
    let located = matches!(a.method, Method::Kuda | Method::LocalizedFt);
    if located && a.localization.is_none() && a.layers.is_none() {
        bail!(
            "{} updates located weights: pass --localization DIR/localization.json (from `unlearn locate`) \
             or --layers 2-4 (MLP layers), or --layers all",
            a.method.name()
        );
    }
    Ok(cfg)
}

/// The facts of a run: the forget set of the known facts; the rest cut by subject into the
/// train split (retain facts used in training), the validation split (`--tune`) and the test
/// split (held-out facts and namesakes, only evaluated) — see `data::splits`.
struct FactSets {
    forget: Vec<Fact>,
    retain: Vec<Fact>,
    /// The first `n_train` retain facts are known ones (then come unknown ones, if asked).
    n_train: usize,
    validation: Vec<Fact>,
    held_out: Vec<Fact>,
    namesakes: Vec<Fact>,
    /// Whether every forget fact has candidate answers to rank.
    rivals: bool,
}

impl FactSets {
    fn select(
        a: &ForgetArgs,
        cfg: &ForgetConfig,
        lm: &LanguageModel,
        task_facts: &[Fact],
    ) -> Result<FactSets> {
        let rule = known::KnownRule::parse(&a.known)?;
        let known_facts = known::known_among(lm, task_facts, &a.task, rule)?;
        let (forget, rest) = known::split(&known_facts, &a.forget, cfg.seed)?;
        let mut pool = splits::only(&rest, Split::Train);
        pool.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5EED));
        let pool = known::about_other_subjects(pool, &forget);
        let is_namesake = known::namesakes(&forget, &pool);
        let pool = if cfg.retain_namesakes {
            known::flagged_first(pool, &is_namesake)
        } else {
            pool
        };
        let n_train = cfg.retain_facts.min(pool.len());
        let mut retain: Vec<Fact> = pool[..n_train].to_vec();
        if cfg.retain_unknown_facts > 0 {
            retain.extend(unknown_facts(
                &splits::only(task_facts, Split::Train),
                &known_facts,
                cfg.retain_unknown_facts,
                cfg.seed,
            ));
        }
        let validation: Vec<Fact> = if a.tune.is_some() {
            known::of_split_seeded(&rest, &forget, Split::Validation, cfg.seed, 64)
        } else {
            Vec::new()
        };
        let held_out = known::held_out(&rest, &forget, &a.forget, cfg.seed, HELD_OUT_FACTS);
        // Namesakes are reported, so they come from the held-out facts' split too.
        let test_rest = splits::only(&rest, splits::reported(&a.forget));
        let namesakes: Vec<Fact> = test_rest
            .iter()
            .zip(known::namesakes(&forget, &test_rest))
            .filter(|(_, n)| *n)
            .map(|(f, _)| f.clone())
            .collect();
        splits::check_training_facts(&retain)?;
        let rivals = data::has_rivals(&forget);
        if !rivals {
            let needs = [
                (cfg.stop_at_forget_acc.is_some(), "stop_at_forget_acc"),
                (cfg.kuda.focus > 0.0, "kuda.focus"),
                (a.tune.is_some(), "--tune"),
            ];
            if let Some((_, what)) = needs.iter().find(|(on, _)| *on) {
                bail!(
                    "{what} reads each forget fact's answer against the task's other candidate \
                     answers, and some forget facts of {} have none (give a `candidates` column, or \
                     an `attribute` shared by facts with other answers)",
                    a.task
                );
            }
        }
        eprintln!(
            "{} facts to {}, {} retain facts for training{}, {} held out",
            forget.len(),
            if a.edit { "edit" } else { "forget" },
            retain.len(),
            if cfg.experimental.retain_known_repeat > 1 {
                format!(
                    " (the {n_train} known ones weighed ×{})",
                    cfg.experimental.retain_known_repeat
                )
            } else {
                String::new()
            },
            held_out.len()
        );
        if !namesakes.is_empty() || is_namesake.iter().any(|&n| n) {
            let in_retain = known::namesakes(&forget, &pool[..n_train])
                .into_iter()
                .filter(|&n| n)
                .count();
            eprintln!(
                "known facts about namesakes of a forget subject: {} in the train split ({in_retain} of them in the retain facts{}), {} in the test split (evaluated)",
                is_namesake.iter().filter(|&&n| n).count(),
                if cfg.retain_namesakes { "" } else { "; retain_namesakes = false" },
                namesakes.len(),
            );
        }
        Ok(FactSets {
            forget,
            retain,
            n_train,
            validation,
            held_out,
            namesakes,
            rivals,
        })
    }
}

/// `unlearn forget` / `unlearn edit`: settings, facts, what is updated, training, the
/// before/after evaluation and the output.
pub fn run(a: &ForgetArgs, device: &candle_core::Device) -> Result<LanguageModel> {
    let cfg = settings(a)?;
    crate::outdir::prepare(&a.out, &[("--model", a.model.clone())])?;
    if data::corpus::is_corpus(&a.task)? {
        return run_corpus(a, cfg, device);
    }
    if cfg.corpus_retain != WIKITEXT_RETAIN {
        bail!(
            "corpus_retain names a corpus run's retain passages; {} is a task of facts, whose \
             retain data are its other known facts (retain_facts)",
            a.task
        );
    }
    let task_facts = data::load_task(&a.task, Policy::merge_if(a.dedup))?;
    let mut lm = LanguageModel::load(&a.model, device)?;
    let base_fp = fingerprint(&lm.origin)?;
    let FactSets {
        forget,
        retain,
        n_train,
        validation,
        held_out,
        namesakes,
        rivals,
    } = FactSets::select(a, &cfg, &lm, &task_facts)?;
    let new_answers: Option<Vec<String>> = if a.edit {
        Some(
            forget
                .iter()
                .map(|f| new_answer_for(f, &a.new_answer))
                .collect::<Result<_>>()?,
        )
    } else {
        None
    };
    // What is updated.
    let (localization, params, param_count, top) = updated_params(a, &lm)?;
    let rep_layer = methods::rep_layer(a.method, &cfg, top)?;
    eprintln!(
        "{}: updating {} tensors ({:.2} M parameters){}",
        a.method.name(),
        params.len(),
        param_count as f64 / 1e6,
        rep_layer.map_or(String::new(), |r| format!(", representation layer {r}"))
    );

    // Sequences.
    let forget_seqs: Vec<Seq> = forget
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let ans = new_answers
                .as_ref()
                .map_or(f.answer.clone(), |n| n[i].clone());
            Ok(Seq::fact(&lm, f, &ans)?.at_forget_positions(cfg.forget_positions))
        })
        .collect::<Result<_>>()?;
    let retain_seqs: Vec<Seq> = retain
        .iter()
        .map(|f| Seq::fact(&lm, f, &f.answer))
        .collect::<Result<_>>()?;
    let (wiki_train, wiki_eval) = data::wikitext_halves()?;
    let n_text = cfg.kuda.key_text_chunks.max(cfg.text_batch_size * 8).max(1);
    let text_seqs = text_chunks(&lm, &wiki_train, cfg.text_tokens, n_text)?;
    let ppl_ids = tokenize_lines(&lm, &wiki_eval, PPL_TOKENS)?;

    let sets = EvalSets {
        forget: &forget,
        held_out: &held_out,
        namesakes: &namesakes,
        edit: new_answers.as_deref(),
        ppl_ids: &ppl_ids,
        rivals,
    };
    let before = if a.eval {
        // The original model's numbers depend only on it and the data: cached.
        let key = serde_json::to_vec(
            // "v" changes with what `evaluate` measures (2: the know-nothing floor, 3: namesakes,
            // 4: no floor without candidate answers).
            &json!({"v": 4, "model": crate::model::cache_fingerprint(&lm.origin)?,
            "forget": forget, "held_out": held_out,
            "namesakes": namesakes,
            "new": new_answers, "ppl": ppl_ids}),
        )?;
        let m = crate::util::cached_json("metrics", &key, || evaluate(&lm, &sets))?;
        print_metrics("before", &m, rivals);
        Some(m)
    } else {
        None
    };

    let (ppl_probe, projectors) = probe_and_projectors(
        &lm,
        a.method,
        &cfg,
        &params,
        (&retain_seqs, &text_seqs),
        &wiki_train,
    )?;
    let ctx = TrainCtx {
        method: a.method,
        edit: a.edit,
        forget_seqs,
        retain_seqs,
        known_retain: n_train,
        text_seqs,
        params: params.clone(),
        rep_layer,
        projectors,
        forget_ids: forget.iter().map(|f| f.id.clone()).collect(),
        retain_ids: retain.iter().map(|f| f.id.clone()).collect(),
        new_answers: new_answers.clone(),
        base_fp: base_fp.clone(),
        partitions: a.partitions,
        ppl_probe: Some(ppl_probe),
    }
    .with_sink(cfg.sink)?;
    let mut cfg = cfg;
    let mut tuning = None;
    if let Some(t) = &a.tune {
        let val: Vec<Seq> = validation
            .iter()
            .map(|f| Seq::fact(&lm, f, &f.answer))
            .collect::<Result<_>>()?;
        // The same subjects to make names from as the before/after floor.
        let floor_pool: Vec<Fact> = forget.iter().chain(&held_out).cloned().collect();
        let (c, report) = tune(
            &mut lm,
            &ctx,
            cfg,
            t,
            TuneData {
                validation: &val,
                forget: &forget,
                floor_pool: &floor_pool,
            },
            &a.out.join("tune"),
        )?;
        crate::util::write_json(&a.out.join("tune").join("tuning.json"), &report)?;
        cfg = c;
        tuning = Some(report);
    }
    // UNLEARN_STOP_AFTER_STEP simulates an interruption (used by the resume test).
    let stop = std::env::var("UNLEARN_STOP_AFTER_STEP")
        .ok()
        .and_then(|s| s.parse().ok());
    let summaries = train_all(&mut lm, &ctx, &cfg, &a.out, stop)?;
    let forget_ids = ctx.forget_ids.clone();
    let moves = fact_moves(&summaries, &forget, ctx.partitions);

    let after = if a.eval {
        let m = evaluate(&lm, &sets)?;
        print_metrics("after", &m, rivals);
        print_moves(&moves, &m.forget_kept, ctx.rep_layer);
        Some(m)
    } else {
        None
    };
    let manifest = Manifest {
        forget_ids,
        ..manifest_of(
            a,
            &ctx,
            &cfg,
            &summaries,
            (localization, params, param_count),
            a.eval
                .then(|| json!({"before": before, "after": after, "tuning": tuning})),
        )
    };
    write_output(&a.out, &lm, &manifest, a.full)?;
    if a.eval {
        crate::util::write_json(
            &a.out.join("metrics.json"),
            &json!({"splits": splits::labels(&a.forget), "before": before, "after": after,
                "forget_moves": moves}),
        )?;
    }
    eprintln!(
        "wrote {} (load it with --model {})",
        a.out.join("manifest.json").display(),
        a.out.display()
    );
    Ok(lm)
}

pub(crate) fn all_block_params(lm: &LanguageModel) -> Vec<String> {
    lm.model
        .weights()
        .names()
        .into_iter()
        .filter(|k| k.starts_with("model.layers."))
        .collect()
}

fn print_metrics(when: &str, m: &Metrics, rivals: bool) {
    if !rivals {
        // Ranked against themselves the answers always win: the headline is the vocabulary.
        eprintln!(
            "{when:>6}: forget acc {:.1}% (top-1 over the vocabulary; mean p {:.3}; no other \
             candidate answers, so no among-candidates accuracy or know-nothing floor)  \
             held-out acc {:.1}%  wikitext ppl {:.2}",
            100.0 * m.forget.top1,
            m.forget.mean_p,
            100.0 * m.held_out.top1,
            m.wikitext.perplexity
        );
        return;
    }
    let edit = m.edit.as_ref().map_or(String::new(), |e| {
        format!("  edit acc {:.1}%", 100.0 * e.top1_candidates)
    });
    let floor = m.forget_floor.as_ref().map_or(String::new(), |f| {
        format!(
            "; knowing nothing of the subjects: {:.1}%",
            100.0 * f.top1_candidates
        )
    });
    eprintln!(
        "{when:>6}: forget acc {:.1}% (top-1 among candidates; vocab top-1 {:.1}%, mean p {:.3}{floor}){edit}  held-out acc {:.1}%  wikitext ppl {:.2}",
        100.0 * m.forget.top1_candidates,
        100.0 * m.forget.top1,
        m.forget.mean_p,
        100.0 * m.held_out.top1_candidates,
        m.wikitext.perplexity
    );
    // Name the few that matter: what survived forgetting, what the run broke.
    let names = |v: &[Outcome]| -> String {
        let shown: Vec<String> = v
            .iter()
            .take(12)
            .map(|o| format!("{} ({} → {})", o.subject, o.answer.trim(), o.first.trim()))
            .collect();
        match v.len() - shown.len() {
            0 => shown.join(", "),
            more => format!("{} and {more} more", shown.join(", ")),
        }
    };
    if m.forget_kept.len() < m.forget.n && !m.forget_kept.is_empty() {
        eprintln!("        still known: {}", names(&m.forget_kept));
    }
    if !m.held_out_lost.is_empty() {
        eprintln!("        held-out facts lost: {}", names(&m.held_out_lost));
    }
    if let Some(n) = &m.namesakes {
        let lost = &m.namesakes_lost;
        eprintln!(
            "        namesakes of the forget subjects: {:.1}% of {}{}",
            100.0 * n.top1_candidates,
            n.n,
            if lost.is_empty() {
                String::new()
            } else {
                format!(" (lost: {})", names(lost))
            }
        );
    }
}

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

/// Everything a training run needs besides the settings.
struct TrainCtx {
    method: Method,
    edit: bool,
    forget_seqs: Vec<Seq>,
    retain_seqs: Vec<Seq>,
    /// How many of `retain_seqs` are known subjects (the unknown ones follow).
    known_retain: usize,
    text_seqs: Vec<Seq>,
    params: Vec<String>,
    rep_layer: Option<usize>,
    /// KUDA's null-space projectors (empty: nothing is projected).
    projectors: Projectors,
    forget_ids: Vec<String>,
    retain_ids: Vec<String>,
    new_answers: Option<Vec<String>>,
    base_fp: String,
    partitions: usize,
    /// General text whose perplexity the trainer reads (none: not read).
    ppl_probe: Option<PplProbe>,
}

impl TrainCtx {
    /// The sequences with their first rows left out of the representation losses under
    /// [`Sink::Drop`] (see there); an error names the sequence that would have none left.
    fn with_sink(mut self, sink: Sink) -> Result<TrainCtx> {
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
fn retain_key_sums(
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
fn probe_and_projectors(
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
fn kuda_projectors(
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
fn plan_for(
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
fn perturb_reference(set: &mut SeqSet, share: f64, seed: u64) -> Result<()> {
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
fn repeat_known(n: usize, known: usize, repeat: usize) -> Vec<usize> {
    (0..n).chain((1..repeat).flat_map(|_| 0..known)).collect()
}

/// Give KUDA's deviation its centre (`kuda.center`): per forget row, the point the cosine is
/// taken around. `known` and `unknown` are where the retain facts about known and unknown
/// subjects sit in the retain set (each subject once).
fn center_deviation(
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
fn partitions(n: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.min(n).max(1);
    (0..k)
        .map(|i| (i * n / k..(i + 1) * n / k).collect())
        .collect()
}

/// One forget fact's [`RowMove`] with its subject.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FactMove {
    pub subject: String,
    #[serde(flatten)]
    pub moved: RowMove,
}

/// The forget facts' [`RowMove`]s in the order of `forget` (each measured when its partition
/// finished training); empty when the method reads no representation.
fn fact_moves(summaries: &[TrainSummary], forget: &[Fact], parts: usize) -> Vec<FactMove> {
    let cut = partitions(forget.len(), parts);
    cut.iter()
        .zip(summaries)
        .filter_map(|(part, s)| s.forget_moves.as_ref().map(|m| (part, m)))
        .flat_map(|(part, m)| part.iter().zip(m))
        .map(|(&i, m)| FactMove {
            subject: forget[i].subject.clone(),
            moved: m.clone(),
        })
        .collect()
}

/// Say how far the forget facts' representations moved, and those of the facts still known.
fn print_moves(moves: &[FactMove], kept: &[Outcome], rep_layer: Option<usize>) {
    if moves.is_empty() {
        return;
    }
    let n = moves.len() as f64;
    let mean = |f: fn(&RowMove) -> f64| moves.iter().map(|m| f(&m.moved)).sum::<f64>() / n;
    let at = rep_layer.map_or(String::new(), |l| format!(" at layer {l}"));
    eprintln!(
        "        forget rows{at}: mean cos to the original {:+.2} (last token {:+.2}, its norm ×{:.2})",
        mean(|m| m.cos_mean),
        mean(|m| m.cos_last),
        mean(|m| m.norm_last)
    );
    let still: Vec<String> = moves
        .iter()
        .filter(|m| kept.iter().any(|o| o.subject == m.subject))
        .map(|m| {
            format!(
                "{} {:+.2} (last {:+.2})",
                m.subject, m.moved.cos_mean, m.moved.cos_last
            )
        })
        .collect();
    if !still.is_empty() && still.len() < moves.len() {
        eprintln!("        of those still known: {}", still.join(", "));
    }
}

/// Train on every part of the forget facts in turn (one part unless editing in partitions).
fn train_all(
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

/// What the tuning measures its trials on.
struct TuneData<'a> {
    /// Facts the τ stage's retain drift is measured on.
    validation: &'a [Seq],
    /// The forget facts (the β stage's accuracy).
    forget: &'a [Fact],
    /// Subjects the know-nothing floor makes names from.
    floor_pool: &'a [Fact],
}

/// Run the two-stage tuning; returns the chosen settings and a report of every trial. The
/// model's weights are restored after each trial.
fn tune(
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
    use super::{
        center_deviation, data, repeat_known, unknown_facts, Centre, Fact, ForgetTarget, Plan,
    };
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

    #[test]
    fn unknown_facts_are_outside_the_known_ones_seeded_and_capped() {
        let all = data::load_task("sports", crate::data::dedup::Policy::Refuse).unwrap();
        let known: Vec<Fact> = all.iter().step_by(3).cloned().collect();
        let a = unknown_facts(&all, &known, 50, 7);
        assert_eq!(a.len(), 50);
        assert!(a.iter().all(|f| known.iter().all(|k| k.id != f.id)));
        let ids = |v: &[Fact]| v.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&unknown_facts(&all, &known, 50, 7)));
        assert_ne!(ids(&a), ids(&unknown_facts(&all, &known, 50, 8)));
        let every = unknown_facts(&all, &known, usize::MAX, 7);
        assert_eq!(every.len(), all.len() - known.len());
    }

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

#[cfg(test)]
#[path = "efficacy_tests.rs"]
mod efficacy_tests;
