//! `unlearn eval`: the same numbers for the original and the unlearned model, side by side —
//! forget and held-out accuracy (completion, multiple choice, other spellings and phrasings),
//! fluency of answers to forget prompts, latent knowledge (probes trained on the original model,
//! read on both), WikiText-2 perplexity, and with `--suite full` MMLU
//! (570 questions) and WMDP (785). Writes OUT/metrics.json and prints a table.

use crate::data::splits::Split;
use crate::data::{self, known, Fact};
use crate::eval::completion::accuracy;
use crate::eval::floor::know_nothing_floor;
use crate::eval::fluency::{fluency, Fluency};
use crate::eval::formats::{formats_for, rewrite};
use crate::eval::perplexity::{perplexity, tokenize_lines};
use crate::eval::schema::{BeforeAfter, EvalMetrics, Row, Skipped, TableHead};
use crate::eval::{latent, mcq};
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

/// Known non-forget facts the latent-knowledge probes train on (a quarter tests them).
pub const LATENT_PROBE_FACTS: usize = 240;

/// How much to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    /// Facts in every form, fluency, perplexity.
    Quick,
    /// Quick + MMLU subset + WMDP.
    Full,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Quick => "quick",
            Suite::Full => "full",
        }
    }
}

impl std::str::FromStr for Suite {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Suite::Quick),
            "full" => Ok(Suite::Full),
            _ => bail!("--suite {s:?}: use quick or full"),
        }
    }
}

/// Options of `unlearn eval`.
#[derive(Clone, Debug)]
pub struct EvalArgs {
    pub model: String,
    pub unlearned: Option<PathBuf>,
    pub task: String,
    pub forget: String,
    pub known: String,
    /// Merge duplicate facts of a user's file instead of refusing them.
    pub dedup: bool,
    pub seed: u64,
    pub suite: Suite,
    pub held_out: usize,
    pub out: PathBuf,
}

/// The forget facts asked about made-up subjects (what "forgotten" scores).
const FLOOR_METRIC: &str = "forget.know_nothing_floor.top1_candidates";

/// Metrics that are yardsticks for the others rather than goals.
const REFERENCE_METRICS: &[&str] = &[FLOOR_METRIC];

/// Metric name → (sample count, value, lower is better).
type Measures = BTreeMap<String, (usize, f64, bool)>;

/// What the facts allow to be measured and the data files it reads, settled before any model
/// call (a missing file or a metric the facts cannot support is known before minutes of work).
struct Plan {
    /// Each set's facts have candidate answers to rank (forget, held out).
    rivals: [bool; 2],
    /// The latent-knowledge probes have two answers or more to tell apart.
    latent: bool,
    skipped: Vec<Skipped>,
    /// WikiText-2's held-out half (perplexity).
    wiki_eval: Vec<String>,
    /// `--suite full`: MMLU's and WMDP's questions.
    suite_mcqs: Vec<(&'static str, Vec<mcq::Mcq>)>,
}

impl Plan {
    fn new(forget: &[Fact], held_out: &[Fact], probe_facts: &[Fact], suite: Suite) -> Result<Plan> {
        let mut skipped = Vec::new();
        let mut skip = |metric: &str, why: String| {
            skipped.push(Skipped {
                metric: metric.into(),
                why,
            })
        };
        let mut rivals = [false; 2];
        for (i, (name, facts)) in [("forget", forget), ("held_out", held_out)]
            .into_iter()
            .enumerate()
        {
            if facts.is_empty() {
                skip(&format!("{name}.*"), format!("no {name} facts"));
                continue;
            }
            rivals[i] = data::has_rivals(facts);
            if !rivals[i] {
                let why = format!(
                    "some {name} facts have no other candidate answer (no `candidates`, nor an \
                     `attribute` shared with facts of other answers): ranked against themselves \
                     they would always score 100 %; vocabulary top-1 is the headline"
                );
                skip(&format!("{name}.top1_candidates"), why.clone());
                skip(&format!("{name}.mcq_accuracy"), why.clone());
                if i == 0 {
                    skip(FLOOR_METRIC, why);
                }
            }
        }
        let (_, train) = latent::split(probe_facts);
        let latent = match crate::locate::probe::Labels::from_facts(train) {
            Ok(_) => true,
            Err(e) => {
                skip("latent.*", format!("{e}"));
                false
            }
        };
        let (_, wiki_eval) = data::wikitext_halves()?;
        let mut suite_mcqs = Vec::new();
        if suite == Suite::Full {
            for name in mcq::SETS {
                suite_mcqs.push((name, mcq::load_set(name)?));
            }
        }
        Ok(Plan {
            rivals,
            latent,
            skipped,
            wiki_eval,
            suite_mcqs,
        })
    }

    /// The accuracy row of a set: among the candidates when it has them, else top-1 over the
    /// vocabulary.
    fn headline(&self, set: usize) -> &'static str {
        if self.rivals[set] {
            "top1_candidates"
        } else {
            "top1_vocab"
        }
    }
}

/// Every number of one model.
fn measure(
    lm: &LanguageModel,
    original: &LanguageModel,
    forget: &[Fact],
    held_out: &[Fact],
    new_answers: Option<&[String]>,
    a: &EvalArgs,
    plan: &Plan,
) -> Result<(Measures, Fluency)> {
    let mut m = Measures::new();
    let bar = crate::util::spinner("evaluating");
    let mut clock = Clock::new();
    let truth = |f: &Fact| f.answer.clone();
    for (i, (name, facts, lower)) in [("forget", forget, true), ("held_out", held_out, false)]
        .into_iter()
        .enumerate()
    {
        if facts.is_empty() {
            continue;
        }
        let acc = accuracy(lm, facts, truth)?;
        if plan.rivals[i] {
            m.insert(
                format!("{name}.top1_candidates"),
                (acc.n, acc.top1_candidates, lower),
            );
            let qs = mcq::from_facts(facts, a.seed);
            if !qs.is_empty() {
                let s = mcq::score(lm, &qs, 16)?;
                m.insert(format!("{name}.mcq_accuracy"), (s.n, s.accuracy, lower));
            }
        }
        m.insert(format!("{name}.top1_vocab"), (acc.n, acc.top1, lower));
        m.insert(format!("{name}.mean_p"), (acc.n, acc.mean_p, lower));
    }
    if plan.rivals[0] {
        let pool: Vec<Fact> = forget.iter().chain(held_out).cloned().collect();
        let floor = know_nothing_floor(lm, forget, &pool)?;
        m.insert(FLOOR_METRIC.into(), (floor.n, floor.top1_candidates, true));
    }
    clock.lap(&mut m, "facts_and_mcq");
    let pick = |acc: &crate::eval::completion::Accuracy| {
        if plan.rivals[0] {
            acc.top1_candidates
        } else {
            acc.top1
        }
    };
    for fmt in formats_for(forget) {
        let facts: Vec<Fact> = forget.iter().filter_map(|f| rewrite(f, fmt)).collect();
        let acc = accuracy(lm, &facts, truth)?;
        m.insert(
            format!("forget.{}.{}", fmt.name(), plan.headline(0)),
            (acc.n, pick(&acc), true),
        );
    }
    // After an edit: the new answer of each forget fact, by id.
    let new_of: Option<std::collections::HashMap<&str, &String>> =
        new_answers.map(|new| forget.iter().map(|f| f.id.as_str()).zip(new).collect());
    if let Some(by_id) = &new_of {
        let acc = accuracy(lm, forget, |f| by_id[f.id.as_str()].clone())?;
        m.insert(
            format!("edit.{}", plan.headline(0)),
            (acc.n, pick(&acc), false),
        );
    }
    // CounterFact: the same facts asked in other words (they should go, or take the new
    // answer), and other subjects with the same true answer (they should stay).
    let reworded = |f: &Fact, prompts: &[String]| -> Vec<Fact> {
        prompts
            .iter()
            .map(|p| Fact {
                prompt: p.clone(),
                ..f.clone()
            })
            .collect()
    };
    let para: Vec<Fact> = forget
        .iter()
        .flat_map(|f| reworded(f, &f.paraphrases))
        .collect();
    if !para.is_empty() {
        let acc = accuracy(lm, &para, truth)?;
        m.insert(
            format!("forget.paraphrase.{}", plan.headline(0)),
            (acc.n, pick(&acc), true),
        );
        if let Some(by_id) = &new_of {
            let acc = accuracy(lm, &para, |f| by_id[f.id.as_str()].clone())?;
            m.insert(
                format!("edit.paraphrase.{}", plan.headline(0)),
                (acc.n, pick(&acc), false),
            );
        }
    }
    let neighbors: Vec<Fact> = forget
        .iter()
        .flat_map(|f| reworded(f, &f.neighborhood))
        .collect();
    if !neighbors.is_empty() {
        let acc = accuracy(lm, &neighbors, truth)?;
        m.insert(
            format!("neighborhood.{}", plan.headline(0)),
            (acc.n, pick(&acc), false),
        );
        m.insert("neighborhood.mean_p".into(), (acc.n, acc.mean_p, false));
    }
    clock.lap(&mut m, "formats");
    let prompts: Vec<String> = forget.iter().map(|f| f.prompt.clone()).collect();
    let flu = fluency(lm, original, &prompts, 16)?;
    clock.lap(&mut m, "fluency");
    m.insert(
        "fluency.ngram_entropy".into(),
        (flu.n, flu.ngram_entropy, false),
    );
    m.insert(
        "fluency.perplexity_under_original".into(),
        (flu.n, flu.perplexity_under_original, true),
    );
    let ids = tokenize_lines(lm, &plan.wiki_eval, crate::forget::run::PPL_TOKENS)?;
    let p = perplexity(lm, &ids, 512, 256)?;
    m.insert(
        "utility.wikitext_perplexity".into(),
        (p.tokens, p.perplexity, true),
    );
    clock.lap(&mut m, "perplexity");
    for (name, qs) in &plan.suite_mcqs {
        let s = mcq::score(lm, qs, 8)?;
        m.insert(
            format!("utility.{name}_accuracy"),
            (s.n, s.accuracy, *name == "wmdp"),
        );
    }
    if a.suite == Suite::Full {
        clock.lap(&mut m, "mmlu_wmdp");
    }
    bar.finish_and_clear();
    Ok((m, flu))
}

/// Seconds spent per section, kept with the measures as `seconds.<section>` (not table rows).
struct Clock(std::time::Instant);

impl Clock {
    fn new() -> Clock {
        Clock(std::time::Instant::now())
    }

    fn lap(&mut self, m: &mut Measures, what: &str) {
        m.insert(
            format!("seconds.{what}"),
            (0, self.0.elapsed().as_secs_f64(), true),
        );
        self.0 = std::time::Instant::now();
    }
}

/// The facts an unlearned run was about: its manifest's forget facts (and the retain facts it
/// trained on) when there is one, else the `--forget` split of the known facts.
pub struct RunFacts {
    pub manifest: Option<Value>,
    pub task: String,
    pub forget: Vec<Fact>,
    /// Known facts outside the forget set.
    pub rest: Vec<Fact>,
    /// Ids of the retain facts the run trained on.
    pub trained: HashSet<String>,
    pub new_answers: Option<Vec<String>>,
}

/// The task of a run and its facts, read before any model is loaded (a bad facts file or
/// manifest is reported at once).
pub struct RunTask {
    pub manifest: Option<Value>,
    pub task: String,
    pub facts: Vec<Fact>,
    pub rule: known::KnownRule,
}

/// Read the task of a run directory (its manifest's, else `task`) and the facts.
pub fn run_task(
    unlearned: Option<&std::path::Path>,
    task: &str,
    known_rule: &str,
    dedup: bool,
) -> Result<RunTask> {
    let manifest: Option<Value> = match unlearned {
        Some(d) => {
            let p = d.join("manifest.json");
            match std::fs::read_to_string(&p) {
                Ok(t) => Some(
                    serde_json::from_str(&t)
                        .with_context(|| format!("{}: not valid JSON", p.display()))?,
                ),
                Err(_) => None,
            }
        }
        None => None,
    };
    let task = manifest
        .as_ref()
        .and_then(|m| m["task"].as_str())
        .unwrap_or(task)
        .to_string();
    // A run that merged duplicates is read back the same way.
    let dedup = dedup || manifest.as_ref().is_some_and(|m| m["dedup"] == true);
    let facts = data::load_task(&task, crate::data::dedup::Policy::merge_if(dedup))?;
    Ok(RunTask {
        manifest,
        task,
        facts,
        rule: known::KnownRule::parse(known_rule)?,
    })
}

/// Find the facts of a run (see [`RunFacts`]).
pub fn facts_of_run(
    original: &LanguageModel,
    rt: RunTask,
    forget_spec: &str,
    seed: u64,
) -> Result<RunFacts> {
    let RunTask {
        manifest,
        task,
        facts,
        rule,
    } = rt;
    let known_facts = known::known_among(original, &facts, &task, rule)?;
    let ids_of = |key: &str| -> Option<Vec<String>> {
        manifest.as_ref()?[key].as_array().map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
    };
    let (forget, rest): (Vec<Fact>, Vec<Fact>) = match ids_of("forget_ids") {
        Some(ids) => {
            let set: HashSet<&String> = ids.iter().collect();
            let f: Vec<Fact> = ids
                .iter()
                .filter_map(|id| known_facts.iter().find(|k| &k.id == id).cloned())
                .collect();
            if f.len() != ids.len() {
                bail!("{} forget facts of the manifest are not known to the original model under --known {rule:?}", ids.len() - f.len());
            }
            (
                f,
                known_facts
                    .iter()
                    .filter(|k| !set.contains(&k.id))
                    .cloned()
                    .collect(),
            )
        }
        None => known::split(&known_facts, forget_spec, seed)?,
    };
    let trained: HashSet<String> = ids_of("retain_ids")
        .unwrap_or_default()
        .into_iter()
        .collect();
    let new_answers = ids_of("new_answers");
    Ok(RunFacts {
        manifest,
        task,
        forget,
        rest,
        trained,
        new_answers,
    })
}

/// Run `unlearn eval`; returns what it wrote to OUT/metrics.json.
/// The facts an evaluation reads: the run's forget facts, the held-out facts of the reported
/// split (never a retain fact the run trained on), and the known facts the latent probes train
/// on (outside the forget set and the test split).
struct EvalFacts {
    forget: Vec<Fact>,
    held_out: Vec<Fact>,
    probe_facts: Vec<Fact>,
    /// The forget split the numbers belong to (the manifest's, else `--forget`).
    forget_spec: String,
}

fn eval_facts(a: &EvalArgs, rf: &RunFacts) -> EvalFacts {
    let probe_facts: Vec<Fact> = rf
        .rest
        .iter()
        .filter(|f| Split::of(f) != Split::Test)
        .take(LATENT_PROBE_FACTS)
        .cloned()
        .collect();
    let forget_spec = rf
        .manifest
        .as_ref()
        .and_then(|m| m["forget_split"].as_str())
        .unwrap_or(&a.forget)
        .to_string();
    // Held out: the reported split (test; validation for a run on validation subjects). A
    // run's retain facts are train-split facts; a manifest written before the splits may
    // name others, which are left out.
    let held_out: Vec<Fact> =
        known::held_out(&rf.rest, &rf.forget, &forget_spec, a.seed, usize::MAX)
            .into_iter()
            .filter(|f| !rf.trained.contains(&f.id))
            .take(a.held_out)
            .collect();
    EvalFacts {
        forget: rf.forget.clone(),
        held_out,
        probe_facts,
        forget_spec,
    }
}

/// The original model's measures: they depend only on it, the facts and the suite, so they are
/// cached. An entry from a version that measured other things (it lacks a row the unlearned
/// model has) is measured again rather than leaving that row out.
fn original_measures(
    a: &EvalArgs,
    original: &LanguageModel,
    ef: &EvalFacts,
    new_answers: Option<&[String]>,
    plan: &Plan,
    unlearned: Option<&(Measures, Fluency)>,
) -> Result<(Measures, Fluency)> {
    let key = serde_json::to_vec(
        &json!({"v": 3, "model": crate::model::cache_fingerprint(&original.origin)?,
        "forget": ef.forget, "held_out": ef.held_out, "new": new_answers, "suite": a.suite, "seed": a.seed}),
    )?;
    let same_rows =
        |cached: &(Measures, Fluency)| unlearned.is_none_or(|(u, _)| u.keys().eq(cached.0.keys()));
    crate::util::cached_json_if("eval", &key, same_rows, || {
        measure(
            original,
            original,
            &ef.forget,
            &ef.held_out,
            new_answers,
            a,
            plan,
        )
    })
}

/// The table's rows: every measure of the original beside the unlearned model's.
fn table_rows(orig: &Measures, unl: Option<&Measures>) -> Vec<Row> {
    orig.iter()
        .filter(|(k, _)| !k.starts_with("seconds."))
        .map(|(k, &(n, v, lower))| Row {
            metric: k.clone(),
            n,
            original: v,
            unlearned: unl.and_then(|m| m.get(k).map(|x| x.1)),
            lower_is_better: lower,
            reference: REFERENCE_METRICS.contains(&k.as_str()),
        })
        .collect()
}

/// Seconds per section of each model's measures.
fn section_seconds(orig: &Measures, unl: Option<&Measures>) -> BeforeAfter<BTreeMap<String, f64>> {
    let timing = |m: &Measures| -> BTreeMap<String, f64> {
        m.iter()
            .filter_map(|(k, v)| k.strip_prefix("seconds.").map(|s| (s.to_string(), v.1)))
            .collect()
    };
    BeforeAfter {
        original: timing(orig),
        unlearned: unl.map(timing),
    }
}

/// The first residual-stream index an unlearning run can change (index l = after block l − 1):
/// layers below the first updated block are the same in both models.
fn first_changed_index(manifest: Option<&Value>) -> usize {
    manifest
        .and_then(|m| m["params"].as_array())
        .and_then(|ps| {
            ps.iter()
                .filter_map(|p| p.as_str().and_then(crate::forget::trainer::layer_of))
                .min()
        })
        .map_or(0, |l| l + 1)
}

/// One summary row per probe position: the best layer's probe accuracy on the forget facts,
/// over the layers the run can change.
fn latent_rows(latent: &[latent::LatentCurve], forget: usize, first_changed: usize) -> Vec<Row> {
    latent
        .iter()
        .map(|c| {
            let best = |v: &[f64]| {
                v.iter()
                    .skip(first_changed)
                    .cloned()
                    .fold(f64::NAN, f64::max)
            };
            Row {
                metric: format!(
                    "latent.forget.best_layer_probe_{}",
                    c.at.name().replace(' ', "_")
                ),
                n: forget,
                original: best(&c.original),
                unlearned: c.unlearned.as_deref().map(best),
                lower_is_better: true,
                reference: false,
            }
        })
        .collect()
}

/// Run `unlearn eval`: the facts of the run, the unlearned model's measures and the (cached)
/// original's, the latent probes, one table and `metrics.json`.
pub fn run(a: &EvalArgs, device: &candle_core::Device) -> Result<EvalMetrics> {
    let t0 = std::time::Instant::now();
    crate::outdir::prepare(
        &a.out,
        &crate::outdir::with_unlearned(&a.model, &a.unlearned),
    )?;
    let rt = run_task(a.unlearned.as_deref(), &a.task, &a.known, a.dedup)?;
    let original = LanguageModel::load(&a.model, device)?;
    let rf = facts_of_run(&original, rt, &a.forget, a.seed)?;
    let ef = eval_facts(a, &rf);
    eprintln!(
        "evaluating {} forget facts and {} held-out facts",
        ef.forget.len(),
        ef.held_out.len()
    );
    let plan = Plan::new(&ef.forget, &ef.held_out, &ef.probe_facts, a.suite)?;
    for s in &plan.skipped {
        eprintln!("left out: {} ({})", s.metric, s.why);
    }
    let new_answers = rf.new_answers.as_deref();
    let unlearned_lm = match &a.unlearned {
        Some(d) => Some(LanguageModel::load(&d.display().to_string(), device)?),
        None => None,
    };
    let unl = match &unlearned_lm {
        Some(lm) => Some(measure(
            lm,
            &original,
            &ef.forget,
            &ef.held_out,
            new_answers,
            a,
            &plan,
        )?),
        None => None,
    };
    let (orig_m, orig_f) = original_measures(a, &original, &ef, new_answers, &plan, unl.as_ref())?;
    let unl_m = unl.as_ref().map(|(m, _)| m);
    let mut rows = table_rows(&orig_m, unl_m);
    let t_latent = std::time::Instant::now();
    let latent = if plan.latent {
        latent::latent(
            &original,
            unlearned_lm.as_ref(),
            &ef.probe_facts,
            &ef.forget,
            new_answers,
        )?
    } else {
        Vec::new()
    };
    let first_changed = first_changed_index(rf.manifest.as_ref());
    rows.extend(latent_rows(&latent, ef.forget.len(), first_changed));
    print_table(&rows);
    let out = EvalMetrics {
        head: TableHead {
            tool: crate::util::tool_id(),
            model: a.model.clone(),
            unlearned: a.unlearned.clone(),
            task: rf.task.clone(),
            suite: a.suite.name().into(),
            forget_facts: ef.forget.len(),
            held_out_facts: ef.held_out.len(),
            manifest: rf.manifest.clone(),
            rows,
        },
        splits: crate::data::splits::labels(&ef.forget_spec),
        skipped: plan.skipped,
        latent,
        latent_probe_facts: ef.probe_facts.len(),
        latent_summary_from_index: first_changed,
        section_seconds: section_seconds(&orig_m, unl_m),
        latent_seconds: t_latent.elapsed().as_secs_f64(),
        fluency_samples: BeforeAfter {
            original: orig_f.samples,
            unlearned: unl.as_ref().map(|(_, f)| f.samples.clone()),
        },
        seconds: t0.elapsed().as_secs_f64(),
    };
    crate::util::write_json(&a.out.join("metrics.json"), &out)?;
    eprintln!(
        "wrote {} in {:.0}s",
        a.out.join("metrics.json").display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(out)
}

pub fn print_table(rows: &[Row]) {
    println!(
        "{:<44} {:>5} {:>10} {:>10}",
        "metric", "n", "original", "unlearned"
    );
    for r in rows {
        println!(
            "{:<44} {:>5} {:>10.4} {:>10}",
            r.metric,
            r.n,
            r.original,
            r.unlearned.map_or("-".into(), |v| format!("{v:.4}"))
        );
    }
}
