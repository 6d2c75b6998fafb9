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
use crate::forget::seqs::{passage_seqs, text_chunks, Seq};
use crate::forget::trainer::{layer_of, RowMove, TrainSummary};
use crate::locate::localization::Localization;
use crate::model::source::fingerprint;
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

use crate::forget::plan::{partitions, probe_and_projectors, train_all, TrainCtx};
use crate::forget::tune::{tune, TuneArgs, TuneData};

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

#[cfg(test)]
mod tests {
    use super::{data, unknown_facts, Fact};

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
}

#[cfg(test)]
#[path = "efficacy_tests.rs"]
mod efficacy_tests;
