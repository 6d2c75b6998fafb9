//! Facts: what a model may know and what unlearning targets. A [`Fact`] is a prompt whose
//! completion is an answer about a subject; loaders read Sports Facts ([`sports`]), CounterFact
//! ([`counterfact`]) and a user's own file ([`user`]); [`known`] keeps the facts a model actually
//! knows and splits them deterministically.

pub mod context;
pub mod corpus;
pub mod counterfact;
pub mod dedup;
pub mod known;
pub mod splits;
pub mod sports;
pub mod user;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One fact: `prompt` completed by `answer` (with its leading space, e.g. `" basketball"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// Stable identifier within its dataset (row id, case id).
    pub id: String,
    pub prompt: String,
    /// The subject as it appears in the prompt (its last occurrence is the subject span).
    pub subject: String,
    pub answer: String,
    /// Replacement answer for editing (CounterFact target_new; another sport).
    pub new_answer: Option<String>,
    pub paraphrases: Vec<String>,
    pub neighborhood: Vec<String>,
    /// Closed answer set of the task (e.g. the three sports), answer included.
    pub candidates: Vec<String>,
    /// Grouping attribute (sport, relation id) for splits such as `basketball`.
    pub attribute: Option<String>,
}

impl Fact {
    /// Check the fields a fact needs; `what` names where it came from.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.prompt.trim().is_empty() {
            bail!("{what}: field `prompt` is empty");
        }
        if self.subject.trim().is_empty() {
            bail!("{what}: field `subject` is empty");
        }
        if !self.prompt.contains(&self.subject) {
            bail!(
                "{what}: the subject {:?} does not occur in the prompt {:?}",
                self.subject,
                self.prompt
            );
        }
        if self.answer.trim().is_empty() {
            bail!("{what}: field `answer` is empty");
        }
        Ok(())
    }
}

/// Where the datasets live: `$UNLEARN_DATA`, else `data/` of this repository.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("UNLEARN_DATA").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data"),
    }
}

/// Whether every fact has a closed answer set to be ranked in: its answer and at least one
/// other candidate. Without one, "top-1 among the candidates", the know-nothing floor and the
/// multiple-choice question are always right and cannot move.
pub fn has_rivals(facts: &[Fact]) -> bool {
    !facts.is_empty()
        && facts.iter().all(|f| {
            f.candidates.iter().any(|c| *c != f.answer) && f.candidates.contains(&f.answer)
        })
}

/// Give an answer its leading space (answers are completions of a prompt).
pub fn as_completion(answer: &str) -> String {
    if answer.starts_with(' ') {
        answer.to_string()
    } else {
        format!(" {answer}")
    }
}

/// Load a task by name: `sports`, `counterfact`, or a path to a user facts file. Duplicate facts
/// in a user's file are refused or merged by `policy` ([`dedup`]); the built-in datasets are
/// always merged (the first of each is kept).
pub fn load_task(task: &str, policy: dedup::Policy) -> Result<Vec<Fact>> {
    let builtin = match task {
        "sports" => sports::load(&data_dir().join("sports_facts/sports.csv"))?,
        "counterfact" => counterfact::load_full(&data_dir().join("counterfact/counterfact_full_schema_subset.json"))?,
        "counterfact-rewrites" => counterfact::load_rewrites(&data_dir().join("counterfact/counterfact_requested_rewrites_all.jsonl"))?,
        path if std::path::Path::new(path).is_file() => return user::load(std::path::Path::new(path), policy),
        other => bail!("unknown task {other:?}: use sports, counterfact, counterfact-rewrites, or a path to a .jsonl/.tsv facts file{}", if other.starts_with("wmdp-qa") { " (wmdp-qa is a corpus of passages: `unlearn forget` trains on it; measure the result with `unlearn mcq`)" } else { "" }),
    };
    let (facts, dropped) = dedup::without_repeats(builtin);
    if dropped > 0 {
        eprintln!("{task}: {dropped} repeated facts merged (the first of each kept)");
    }
    Ok(facts)
}

/// WikiText-2 (test split) lines, cut in two halves at an article boundary: the first half is
/// general text for training and key statistics, the second is held out for perplexity.
pub fn wikitext_halves() -> Result<(Vec<String>, Vec<String>)> {
    let path = data_dir().join("wikitext2/wiki.test.raw");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.len() < 4 {
        bail!(
            "{}: too little text ({} lines)",
            path.display(),
            lines.len()
        );
    }
    let is_title = |l: &str| {
        let t = l.trim();
        t.starts_with("= ") && t.ends_with(" =") && !t.starts_with("= =")
    };
    let mid = (lines.len() / 2..lines.len())
        .find(|&i| is_title(&lines[i]))
        .unwrap_or(lines.len() / 2);
    let eval = lines[mid..].to_vec();
    let mut train = lines;
    train.truncate(mid);
    Ok((train, eval))
}

/// A Sports fact for tests.
#[cfg(test)]
pub(crate) fn example_fact() -> Fact {
    Fact {
        id: "1".into(),
        prompt: "Fact: Tiger Woods plays the sport of golf\nFact: LeBron James plays the sport of"
            .into(),
        subject: "LeBron James".into(),
        answer: " basketball".into(),
        new_answer: None,
        paraphrases: vec![],
        neighborhood: vec![],
        candidates: vec![" football".into(), " basketball".into(), " baseball".into()],
        attribute: None,
    }
}
