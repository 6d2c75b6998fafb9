//! `unlearn run experiment.toml`: one file names the model, the task and split, the
//! localizations, the unlearning runs (compared under a shared parameter budget when a
//! localization takes `budget_of` another), the evaluation suite and the relearning attack.
//! Every stage writes its own directory under OUT and, last, `stage.json` with the content hash
//! of everything it depends on (its settings, the model's fingerprint, the hashes of the stages
//! it reads, the tool version). A re-run skips every stage whose hash is unchanged, so a
//! finished experiment re-runs nothing and an edited one re-runs only what the edit touches; a
//! stage that was interrupted has no `stage.json` and runs again (training resumes from its
//! checkpoint). The report is rebuilt at the end.

use crate::eval::relearn::{RelearnArgs, RelearnConfig};
use crate::eval::run::{EvalArgs, Suite};
use crate::forget::config::Method;
use crate::forget::run::ForgetArgs;
use crate::locate::run::{LocateArgs, METHODS};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The experiment file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default = "default_task")]
    pub task: String,
    #[serde(default = "default_forget")]
    pub forget: String,
    #[serde(default = "default_known")]
    pub known: String,
    /// Merge duplicate facts of a user's facts file instead of refusing them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dedup: bool,
    #[serde(default)]
    pub seed: u64,
    /// Repeat every unlearning run (and its evaluation and attack) with each of these seeds
    /// (stages `NAME-seedS`); empty: once, with `seed`. Localizations run once, with `seed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub localization: Vec<LocalizationSpec>,
    pub unlearn: Vec<UnlearnSpec>,
    #[serde(default)]
    pub eval: EvalSpec,
    #[serde(default)]
    pub relearn: RelearnSpec,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_model() -> String {
    "gemma3-270m".into()
}
fn default_task() -> String {
    "sports".into()
}
fn default_forget() -> String {
    "first-16".into()
}
fn default_known() -> String {
    "top1".into()
}

/// One `[[localization]]`: a `unlearn locate` run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalizationSpec {
    pub name: String,
    pub method: String,
    #[serde(default = "three")]
    pub top_k: usize,
    #[serde(default = "three")]
    pub window: usize,
    /// MLP layers restored together in the MLP trace (1 = single-layer effects).
    #[serde(default = "one")]
    pub restore_window: usize,
    /// Noise base: subjects (ROME) or vocabulary.
    #[serde(default = "subjects")]
    pub noise_from: String,
    #[serde(default = "five")]
    pub samples: usize,
    #[serde(default = "eight")]
    pub max_facts: usize,
    /// Name of another localization whose parameter count this one matches.
    #[serde(default)]
    pub budget_of: Option<String>,
    /// Attribution's corruption: noise or replace.
    #[serde(default = "noise")]
    pub corruption: String,
    /// Causal tracing also traces every head (left out of the stage hash when true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub heads: bool,
}

fn yes() -> bool {
    true
}

fn one() -> usize {
    1
}

fn subjects() -> String {
    "subjects".into()
}

fn is_true(b: &bool) -> bool {
    *b
}

fn noise() -> String {
    "noise".into()
}

fn three() -> usize {
    3
}
fn five() -> usize {
    5
}
fn eight() -> usize {
    8
}

/// One `[[unlearn]]`: a `unlearn forget` (or `edit`) run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlearnSpec {
    pub name: String,
    /// The method; may be left out when `preset` gives it.
    #[serde(default)]
    pub method: Option<String>,
    /// A named preset (`unlearn presets`): its method, layers and settings, under this run's
    /// own `layers`, `localization` and `set`.
    #[serde(default)]
    pub preset: Option<String>,
    /// Name of a `[[localization]]`; or give `layers`.
    #[serde(default)]
    pub localization: Option<String>,
    /// MLP layers (`2-4`) or `all`.
    #[serde(default)]
    pub layers: Option<String>,
    /// Settings as `key=value` (see `unlearn forget --help`).
    #[serde(default)]
    pub set: Vec<String>,
    #[serde(default)]
    pub edit: bool,
}

impl UnlearnSpec {
    /// Method, layers and settings after the preset (if any).
    pub fn expanded(&self) -> Result<crate::forget::presets::Expanded> {
        crate::forget::presets::Expanded::resolve(
            self.preset.as_deref(),
            self.method.as_deref(),
            self.layers.as_deref(),
            self.localization.is_some(),
            &self.set,
        )
    }
}

/// `[eval]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSpec {
    /// quick, full, or none.
    pub suite: String,
    pub held_out: usize,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec {
            suite: "quick".into(),
            held_out: 200,
        }
    }
}

/// `[relearn]`: the attack on each unlearned model (steps = 0: none).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelearnSpec {
    pub steps: usize,
    pub eval_every: usize,
    pub lr: f64,
    pub rank: usize,
}

impl Default for RelearnSpec {
    fn default() -> Self {
        RelearnSpec {
            steps: 10,
            eval_every: 5,
            lr: 1e-3,
            rank: 8,
        }
    }
}

impl Experiment {
    /// Read and check an experiment file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Experiment> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Experiment::parse(&text, &path.display().to_string())
    }

    /// Parse and check the text of an experiment file; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<Experiment> {
        let e: Experiment =
            toml::from_str(text).with_context(|| format!("{what}: not a valid experiment"))?;
        e.validate()
            .with_context(|| format!("{what}: not a valid experiment"))?;
        Ok(e)
    }

    /// Each unlearning run with its seed and stage name: once with `seed`, or once per entry
    /// of `seeds` as `NAME-seedS`.
    pub fn runs(&self) -> Vec<(&UnlearnSpec, u64, String)> {
        if self.seeds.is_empty() {
            return self
                .unlearn
                .iter()
                .map(|u| (u, self.seed, u.name.clone()))
                .collect();
        }
        // Seed by seed: a long experiment stopped part-way has every run at the first seeds.
        let mut v = Vec::new();
        for &s in &self.seeds {
            for u in &self.unlearn {
                v.push((u, s, format!("{}-seed{s}", u.name)));
            }
        }
        v
    }

    /// The part of the experiment that `--only` names: the unlearning runs called `NAME` or
    /// `NAME-…` for any of `names` (so `npo` takes `npo-lr-half` and `npo-default`, not
    /// `npo2`), and the localizations they read (with those their budgets come from). A name
    /// that takes no run is an error listing the runs there are.
    pub fn only(&self, names: &[String]) -> Result<Experiment> {
        let takes = |n: &str, run: &str| {
            run == n
                || run
                    .strip_prefix(n)
                    .is_some_and(|rest| rest.starts_with('-'))
        };
        for n in names {
            if !self.unlearn.iter().any(|u| takes(n, &u.name)) {
                let all: Vec<&str> = self.unlearn.iter().map(|u| u.name.as_str()).collect();
                bail!(
                    "--only {n}: no unlearning run of experiment `{}` is called `{n}` or `{n}-…` (its runs: {})",
                    self.name,
                    all.join(", ")
                );
            }
        }
        let mut e = self.clone();
        e.unlearn
            .retain(|u| names.iter().any(|n| takes(n, &u.name)));
        let mut needed: std::collections::BTreeSet<String> = e
            .unlearn
            .iter()
            .filter_map(|u| u.localization.clone())
            .collect();
        // A budget names a localization defined before it: walking backwards closes the set.
        for l in self.localization.iter().rev() {
            if needed.contains(&l.name) {
                needed.extend(l.budget_of.clone());
            }
        }
        e.localization.retain(|l| needed.contains(&l.name));
        Ok(e)
    }

    pub fn validate(&self) -> Result<()> {
        let mut names = std::collections::BTreeSet::new();
        for l in &self.localization {
            if !names.insert(format!("l:{}", l.name)) {
                bail!("localization `{}` is defined twice", l.name);
            }
            if !METHODS.contains(&l.method.as_str()) {
                bail!(
                    "localization `{}`: method {:?} is not one of {}",
                    l.name,
                    l.method,
                    METHODS.join(", ")
                );
            }
        }
        for l in &self.localization {
            if let Some(b) = &l.budget_of {
                let pos = self.localization.iter().position(|x| &x.name == b);
                let me = self.localization.iter().position(|x| x.name == l.name);
                if pos.is_none() || pos >= me {
                    bail!("localization `{}`: budget_of `{b}` must name a localization defined before it", l.name);
                }
            }
        }
        let mut distinct = self.seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != self.seeds.len() {
            bail!("seeds {:?}: a seed is repeated", self.seeds);
        }
        if self.unlearn.is_empty() {
            bail!("no [[unlearn]] runs");
        }
        for u in &self.unlearn {
            if !names.insert(format!("u:{}", u.name)) {
                bail!("unlearn run `{}` is defined twice", u.name);
            }
            if u.name.contains(['/', '\\']) || u.name.is_empty() {
                bail!("unlearn run name {:?} must be a plain file name", u.name);
            }
            let x = u
                .expanded()
                .with_context(|| format!("unlearn run `{}`", u.name))?;
            match (&u.localization, &u.layers) {
                (Some(l), None) => {
                    if !self.localization.iter().any(|x| &x.name == l) {
                        bail!("unlearn run `{}`: no localization named `{l}`", u.name);
                    }
                }
                (None, _) => {}
                (Some(_), Some(_)) => {
                    bail!(
                        "unlearn run `{}`: give localization or layers, not both",
                        u.name
                    )
                }
            }
            crate::forget::config::ForgetConfig::resolve(x.method.parse()?, None, &x.sets)
                .with_context(|| format!("unlearn run `{}`: set", u.name))?;
        }
        if self.eval.suite != "none" {
            self.eval.suite.parse::<Suite>().context("[eval] suite")?;
        }
        if self.relearn.steps > 0 {
            self.relearn_config().validate().context("[relearn]")?;
        }
        Ok(())
    }

    fn relearn_config(&self) -> RelearnConfig {
        RelearnConfig {
            steps: self.relearn.steps,
            eval_every: self.relearn.eval_every,
            lr: self.relearn.lr,
            seed: self.seed,
            lora: crate::forget::lora::LoraConfig {
                rank: self.relearn.rank,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Whether a stage ran or was found done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Cached,
    Ran,
}

/// One stage: its directory, the hash of what it depends on, and the work.
pub struct Stage<'a> {
    pub name: String,
    pub dir: PathBuf,
    pub key: String,
    pub work: Box<dyn FnOnce() -> Result<()> + 'a>,
}

pub const STAGE_FILE: &str = "stage.json";

/// The key a finished stage recorded, if any.
fn finished_key(dir: &Path) -> Option<String> {
    let t = std::fs::read_to_string(dir.join(STAGE_FILE)).ok()?;
    let v: Value = serde_json::from_str(&t).ok()?;
    v["key"].as_str().map(String::from)
}

/// Run the stages in order, skipping those finished with the same key. A stage finished under
/// another key has its directory cleared first (its outputs are stale); an unfinished one keeps
/// it (a training checkpoint there resumes).
pub fn execute(stages: Vec<Stage>) -> Result<Vec<(String, Outcome)>> {
    let mut out = Vec::new();
    let n = stages.len();
    for (i, s) in stages.into_iter().enumerate() {
        match finished_key(&s.dir) {
            Some(k) if k == s.key => {
                eprintln!("[{}/{n}] {}: unchanged, skipped", i + 1, s.name);
                out.push((s.name, Outcome::Cached));
                continue;
            }
            Some(_) => {
                eprintln!(
                    "[{}/{n}] {}: settings changed, running again",
                    i + 1,
                    s.name
                );
                std::fs::remove_dir_all(&s.dir)
                    .with_context(|| format!("clearing {}", s.dir.display()))?;
            }
            None => eprintln!("[{}/{n}] {}", i + 1, s.name),
        }
        std::fs::create_dir_all(&s.dir).with_context(|| format!("creating {}", s.dir.display()))?;
        let t0 = std::time::Instant::now();
        crate::util::reset_peak();
        (s.work)().with_context(|| format!("stage {}", s.name))?;
        crate::util::write_json(
            &s.dir.join(STAGE_FILE),
            &json!({"stage": s.name, "key": s.key,
                "seconds": t0.elapsed().as_secs_f64(),
                "peak_rss_bytes": crate::util::peak_rss()}),
        )?;
        out.push((s.name, Outcome::Ran));
    }
    Ok(out)
}

/// Where an experiment's stage writes: `OUT/KIND/NAME`, KIND one of locate, unlearn, eval,
/// relearn.
pub fn stage_dir(out: &Path, kind: &str, name: &str) -> PathBuf {
    out.join(kind).join(name)
}

fn hash(v: &Value) -> String {
    let mut h = Sha256::new();
    h.update(v.to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Run an experiment; returns the report's path and what each stage did.
pub fn run(
    e: &Experiment,
    out: &Path,
    device: &candle_core::Device,
) -> Result<(PathBuf, Vec<(String, Outcome)>)> {
    e.validate()?;
    crate::outdir::prepare(out, &[("the experiment's model", e.model.clone())])?;
    let t0 = std::time::Instant::now();
    let model_fp = crate::model::cache_fingerprint(&crate::model::source::resolve(&e.model)?)?;
    let mut base = json!({"tool": crate::util::tool_id(), "model": model_fp, "task": e.task,
        "forget": e.forget, "known": e.known, "seed": e.seed});
    if e.dedup {
        base["dedup"] = json!(true);
    }
    let mut stages = Vec::new();
    let mut loc_keys: BTreeMap<String, String> = BTreeMap::new();
    let loc_dir = |n: &str| stage_dir(out, "locate", n);
    for l in &e.localization {
        let key = hash(&json!({"base": base, "spec": l,
            "budget": l.budget_of.as_ref().map(|b| &loc_keys[b])}));
        loc_keys.insert(l.name.clone(), key.clone());
        let args = LocateArgs {
            model: e.model.clone(),
            task: e.task.clone(),
            forget: e.forget.clone(),
            known: e.known.clone(),
            dedup: e.dedup,
            seed: e.seed,
            method: l.method.clone(),
            top_k: l.top_k,
            window: l.window,
            restore_window: l.restore_window,
            noise_from: l.noise_from.clone(),
            samples: l.samples,
            max_facts: l.max_facts,
            budget_of: l
                .budget_of
                .as_ref()
                .map(|b| loc_dir(b).join("localization.json")),
            corruption: l.corruption.clone(),
            heads: l.heads,
            out: loc_dir(&l.name),
        };
        stages.push(Stage {
            name: format!("locate {} ({})", l.name, l.method),
            dir: loc_dir(&l.name),
            key,
            work: Box::new(move || crate::locate::run::run(&args, device)),
        });
    }
    let mut reports = Vec::new();
    for (u, seed, name) in e.runs() {
        let x = u.expanded()?;
        let method: Method = x.method.parse()?;
        let fkey = hash(&json!({"base": base, "spec": u, "seed": seed,
            "loc": u.localization.as_ref().map(|l| &loc_keys[l])}));
        let fdir = stage_dir(out, "unlearn", &name);
        let fa = ForgetArgs {
            task: e.task.clone(),
            forget: e.forget.clone(),
            known: e.known.clone(),
            dedup: e.dedup,
            localization: u
                .localization
                .as_ref()
                .map(|l| loc_dir(l).join("localization.json")),
            layers: x.layers.clone(),
            sets: std::iter::once(format!("seed={seed}"))
                .chain(x.sets.iter().cloned())
                .collect(),
            edit: u.edit,
            eval: false,
            ..ForgetArgs::defaults(&e.model, method, fdir.clone())
        };
        stages.push(Stage {
            name: format!("unlearn {name} ({})", x.method),
            dir: fdir.clone(),
            key: fkey.clone(),
            work: Box::new(move || crate::forget::run::run(&fa, device).map(|_| ())),
        });
        reports.push(fdir.clone());
        if e.eval.suite != "none" {
            let edir = stage_dir(out, "eval", &name);
            let ea = EvalArgs {
                model: e.model.clone(),
                unlearned: Some(fdir.clone()),
                task: e.task.clone(),
                forget: e.forget.clone(),
                known: e.known.clone(),
                dedup: e.dedup,
                seed,
                suite: e.eval.suite.parse()?,
                held_out: e.eval.held_out,
                out: edir.clone(),
            };
            stages.push(Stage {
                name: format!("evaluate {name}"),
                dir: edir.clone(),
                key: hash(&json!({"unlearn": fkey, "eval": e.eval})),
                work: Box::new(move || crate::eval::run::run(&ea, device).map(|_| ())),
            });
            reports.push(edir);
        }
        if e.relearn.steps > 0 {
            let rdir = stage_dir(out, "relearn", &name);
            let ra = RelearnArgs {
                model: e.model.clone(),
                unlearned: Some(fdir.clone()),
                task: e.task.clone(),
                forget: e.forget.clone(),
                known: e.known.clone(),
                dedup: e.dedup,
                seed,
                cfg: RelearnConfig {
                    seed,
                    ..e.relearn_config()
                },
                measure: None,
                full: false,
                layers: None,
                out: rdir.clone(),
            };
            stages.push(Stage {
                name: format!("relearning attack on {name}"),
                dir: rdir.clone(),
                key: hash(&json!({"unlearn": fkey, "relearn": e.relearn})),
                work: Box::new(move || crate::eval::relearn::run(&ra, device).map(|_| ())),
            });
            reports.push(rdir);
        }
    }
    reports.extend(e.localization.iter().map(|l| loc_dir(&l.name)));
    let done = execute(stages)?;
    let report = out.join("report.html");
    crate::report::html::run(&reports, &report)?;
    crate::util::write_json(
        &out.join("experiment.json"),
        &json!({"experiment": e, "stages": done,
            "seconds": t0.elapsed().as_secs_f64()}),
    )?;
    eprintln!(
        "experiment {} finished in {:.0}s ({} stages run, {} unchanged); report: {}",
        e.name,
        t0.elapsed().as_secs_f64(),
        done.iter().filter(|d| d.1 == Outcome::Ran).count(),
        done.iter().filter(|d| d.1 == Outcome::Cached).count(),
        report.display()
    );
    Ok((report, done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Stages that count their runs; the second (when `fail`) fails once, like a kill.
    fn stages<'a>(
        root: &Path,
        keys: [&'a str; 3],
        runs: &'a RefCell<Vec<usize>>,
        fail: bool,
    ) -> Vec<Stage<'a>> {
        (0..3)
            .map(|i| {
                let dir = root.join(format!("s{i}"));
                let d2 = dir.clone();
                Stage {
                    name: format!("s{i}"),
                    dir,
                    key: keys[i].into(),
                    work: Box::new(move || {
                        runs.borrow_mut()[i] += 1;
                        std::fs::write(d2.join("out.txt"), keys[i])?;
                        if fail && i == 1 {
                            bail!("killed");
                        }
                        Ok(())
                    }),
                }
            })
            .collect()
    }

    #[test]
    fn finished_stages_are_skipped_and_interrupted_ones_resume() {
        let d = tempfile::tempdir().unwrap();
        let runs = RefCell::new(vec![0; 3]);
        // Interrupted in the second stage: the first finished, the second did not.
        let e = execute(stages(d.path(), ["a", "b", "c"], &runs, true)).unwrap_err();
        assert!(format!("{e:#}").contains("stage s1: killed"), "{e:#}");
        assert_eq!(*runs.borrow(), vec![1, 1, 0]);
        // Resumed: the first is skipped, the second and third run.
        let r = execute(stages(d.path(), ["a", "b", "c"], &runs, false)).unwrap();
        assert_eq!(
            r.iter().map(|x| x.1).collect::<Vec<_>>(),
            [Outcome::Cached, Outcome::Ran, Outcome::Ran]
        );
        assert_eq!(*runs.borrow(), vec![1, 2, 1]);
        // Finished: nothing runs again.
        let r = execute(stages(d.path(), ["a", "b", "c"], &runs, false)).unwrap();
        assert!(r.iter().all(|x| x.1 == Outcome::Cached));
        assert_eq!(*runs.borrow(), vec![1, 2, 1]);
        // A changed key re-runs that stage only, from a cleared directory.
        std::fs::write(d.path().join("s2/stale.txt"), "old").unwrap();
        let r = execute(stages(d.path(), ["a", "b", "c2"], &runs, false)).unwrap();
        assert_eq!(r[2].1, Outcome::Ran);
        assert_eq!(*runs.borrow(), vec![1, 2, 2]);
        assert!(!d.path().join("s2/stale.txt").exists());
    }

    /// The example experiments shipped in experiments/ are valid.
    #[test]
    fn seeds_repeat_every_unlearning_run() {
        let text = r#"
name = "t"
seeds = [0, 1, 2]
[[unlearn]]
name = "ga"
method = "ga"
layers = "2-4"
[[unlearn]]
name = "rmu"
method = "rmu"
layers = "2-4"
"#;
        let e = Experiment::parse(text, "t.toml").unwrap();
        let runs: Vec<(String, u64)> = e.runs().into_iter().map(|(_, s, n)| (n, s)).collect();
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[0], ("ga-seed0".to_string(), 0));
        assert_eq!(runs[5], ("rmu-seed2".to_string(), 2));
        let once = Experiment::parse(&text.replace("seeds = [0, 1, 2]", "seed = 7"), "t").unwrap();
        let names: Vec<(String, u64)> = once.runs().into_iter().map(|(_, s, n)| (n, s)).collect();
        assert_eq!(names, [("ga".to_string(), 7), ("rmu".to_string(), 7)]);
        let e = Experiment::parse(&text.replace("[0, 1, 2]", "[0, 1, 0]"), "t").unwrap_err();
        assert!(format!("{e:#}").contains("repeated"), "{e:#}");
    }

    #[test]
    fn a_run_may_name_a_preset_instead_of_a_method() {
        let text = r#"
name = "t"
[[unlearn]]
name = "p"
preset = "kuda-sports"
layers = "2-4"
set = ["steps=3"]
[[unlearn]]
name = "none"
layers = "2-4"
"#;
        let e = Experiment::parse(text, "t.toml").unwrap_err();
        assert!(format!("{e:#}").contains("give a method"), "{e:#}");
        let e = Experiment::parse(
            &text.replace("name = \"none\"", "name = \"g\"\nmethod = \"ga\""),
            "t",
        )
        .unwrap();
        let x = e.unlearn[0].expanded().unwrap();
        let p = crate::forget::presets::find("kuda-sports").unwrap();
        assert_eq!(x.method, p.method);
        assert_eq!(x.layers.as_deref(), Some("2-4"));
        assert_eq!(x.sets.last().unwrap(), "steps=3");
        assert_eq!(x.sets.len(), p.set.len() + 1);
        let bad = text.replace(
            "preset = \"kuda-sports\"",
            "preset = \"kuda-sports\"\nmethod = \"npo\"",
        );
        let e = Experiment::parse(&bad, "t").unwrap_err();
        assert!(format!("{e:#}").contains("--preset kuda-sports"), "{e:#}");
    }

    /// Two localizations, the second at the first one's parameter budget.
    const TWO_LOCALIZATIONS: &str = r#"[[localization]]
name = "traced"
method = "kuda-window"
[[localization]]
name = "rand"
method = "random"
budget_of = "traced"
"#;

    #[test]
    fn only_keeps_the_named_runs_and_the_localizations_they_read() {
        let text = format!(
            "name = \"t\"\nseeds = [0, 1]\n{TWO_LOCALIZATIONS}{}",
            r#"[[localization]]
name = "unused"
method = "probe"
[[unlearn]]
name = "npo-lr-half"
method = "npo"
localization = "rand"
[[unlearn]]
name = "npo"
method = "npo"
layers = "2-3"
[[unlearn]]
name = "npo2"
method = "npo"
localization = "unused"
[[unlearn]]
name = "ga"
method = "ga"
localization = "traced"
"#
        );
        let e = Experiment::parse(&text, "t").unwrap();
        let part = e.only(&["npo".into()]).unwrap();
        let runs: Vec<String> = part.runs().into_iter().map(|r| r.2).collect();
        assert_eq!(
            runs,
            [
                "npo-lr-half-seed0",
                "npo-seed0",
                "npo-lr-half-seed1",
                "npo-seed1"
            ]
        );
        // `rand` takes its budget from `traced`: both stay; `unused` goes.
        let locs: Vec<&str> = part.localization.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(locs, ["traced", "rand"]);
        part.validate().unwrap();
        let two = e.only(&["ga".into(), "npo2".into()]).unwrap();
        assert_eq!(two.unlearn.len(), 2);
        let err = format!("{:#}", e.only(&["rmu".into()]).unwrap_err());
        assert!(
            err.contains("--only rmu") && err.contains("npo-lr-half, npo, npo2, ga"),
            "{err}"
        );
    }

    #[test]
    fn shipped_experiments_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Experiment::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
                n += 1;
            }
        }
        assert!(n >= 4, "{n} experiments in {}", dir.display());
    }

    #[test]
    fn experiment_files_are_checked() {
        let ok = &format!(
            "name = \"t\"\n{TWO_LOCALIZATIONS}{}",
            r#"[[unlearn]]
name = "kuda"
method = "kuda"
localization = "traced"
set = ["steps=5"]
"#
        );
        let e: Experiment = toml::from_str(ok).unwrap();
        e.validate().unwrap();
        assert_eq!(e.eval.suite, "quick");
        for (bad, what) in [
            (
                ok.replace("method = \"random\"", "method = \"magic\""),
                "magic",
            ),
            (
                ok.replace(
                    "localization = \"traced\"\nset",
                    "localization = \"nope\"\nset",
                ),
                "nope",
            ),
            (ok.replace("steps=5", "stepz=5"), "stepz"),
            (
                ok.replace("budget_of = \"traced\"", "budget_of = \"rand\""),
                "budget_of",
            ),
            (
                ok.replace("method = \"kuda\"", "method = \"erase\""),
                "erase",
            ),
        ] {
            let e: Experiment = toml::from_str(&bad).unwrap();
            let err = format!("{:#}", e.validate().unwrap_err());
            assert!(err.contains(what), "{what}: {err}");
        }
        let err = toml::from_str::<Experiment>(
            &ok.replace("name = \"t\"", "name = \"t\"\nmodle = \"x\""),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("modle"), "{err}");
    }
}
