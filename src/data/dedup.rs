//! Duplicate facts. The same fact twice in a task (the same prompt and answer, or the same id)
//! ends up trained to be forgotten and kept at once, or counted as held out while it is being
//! forgotten; the same prompt with two answers is a contradiction. A user's file with either is
//! refused, naming both places, unless the user asks to merge them (`--dedup`: the first one is
//! kept, each dropped one is named in a warning). The built-in datasets are merged (CounterFact's
//! rewrites repeat six facts under other case ids).

use super::Fact;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// What to do with duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// An error naming both places (a user's file, by default).
    #[default]
    Refuse,
    /// Keep the first, drop the later ones with a warning.
    Merge,
}

impl Policy {
    /// `--dedup` given or not.
    pub fn merge_if(merge: bool) -> Policy {
        if merge {
            Policy::Merge
        } else {
            Policy::Refuse
        }
    }
}

/// A later fact that repeats an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// Index of the first fact.
    pub first: usize,
    /// Index of the repeat.
    pub repeat: usize,
    /// What they share.
    pub same: Same,
}

/// What two facts share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Same {
    Id,
    PromptAndAnswer,
    /// The same prompt with another answer: they contradict each other.
    PromptOtherAnswer,
}

impl Same {
    fn describe(self) -> &'static str {
        match self {
            Same::Id => "the same id",
            Same::PromptAndAnswer => "the same prompt and answer",
            Same::PromptOtherAnswer => "the same prompt with another answer",
        }
    }
}

/// Every fact that repeats an earlier one (each repeat named once, against the first fact it
/// repeats; an id match is reported before a prompt match).
pub fn find(facts: &[Fact]) -> Vec<Duplicate> {
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut by_prompt: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, f) in facts.iter().enumerate() {
        if let Some(&j) = by_id.get(f.id.as_str()) {
            out.push(Duplicate {
                first: j,
                repeat: i,
                same: Same::Id,
            });
        } else if let Some(&j) = by_prompt.get(f.prompt.as_str()) {
            let same = if facts[j].answer == f.answer {
                Same::PromptAndAnswer
            } else {
                Same::PromptOtherAnswer
            };
            out.push(Duplicate {
                first: j,
                repeat: i,
                same,
            });
        }
        by_id.entry(f.id.as_str()).or_insert(i);
        by_prompt.entry(f.prompt.as_str()).or_insert(i);
    }
    out
}

/// Apply a policy: the facts unchanged when there are no duplicates; otherwise an error naming
/// both places of the first few (`place(i)` says where fact i came from, e.g. `f.jsonl: line 3`),
/// or the facts without their repeats and a warning for each.
pub fn apply(
    facts: Vec<Fact>,
    policy: Policy,
    place: impl Fn(usize) -> String,
) -> Result<Vec<Fact>> {
    let dups = find(&facts);
    if dups.is_empty() {
        return Ok(facts);
    }
    let line = |d: &Duplicate| {
        format!(
            "{} repeats {} ({})",
            place(d.repeat),
            place(d.first),
            d.same.describe()
        )
    };
    match policy {
        Policy::Refuse => {
            let shown: Vec<String> = dups.iter().take(5).map(line).collect();
            bail!(
                "{} duplicate fact{}: {}{}. A fact twice would be trained to be forgotten and kept \
                 at once; remove the repeats, or pass --dedup to keep the first of each",
                dups.len(),
                if dups.len() == 1 { "" } else { "s" },
                shown.join("; "),
                if dups.len() > 5 {
                    format!("; and {} more", dups.len() - 5)
                } else {
                    String::new()
                }
            )
        }
        Policy::Merge => {
            for d in &dups {
                eprintln!("warning: dropped {}", line(d));
            }
            Ok(drop_repeats(facts, &dups))
        }
    }
}

/// The facts without their repeats (the first of each kept) and how many were dropped.
pub fn without_repeats(facts: Vec<Fact>) -> (Vec<Fact>, usize) {
    let dups = find(&facts);
    (drop_repeats(facts, &dups), dups.len())
}

fn drop_repeats(facts: Vec<Fact>, dups: &[Duplicate]) -> Vec<Fact> {
    let drop: std::collections::HashSet<usize> = dups.iter().map(|d| d.repeat).collect();
    facts
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, f)| f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(id: &str, prompt: &str, answer: &str) -> Fact {
        Fact {
            id: id.into(),
            prompt: prompt.into(),
            subject: prompt.split(' ').next().unwrap().into(),
            answer: answer.into(),
            ..crate::data::example_fact()
        }
    }

    #[test]
    fn repeats_are_found_by_id_by_prompt_and_answer_and_by_contradiction() {
        let facts = vec![
            fact("a", "Ann plays", " golf"),
            fact("b", "Bob plays", " tennis"),
            fact("a", "Cid plays", " chess"),
            fact("d", "Ann plays", " golf"),
            fact("e", "Bob plays", " polo"),
        ];
        let d = find(&facts);
        assert_eq!(
            d,
            vec![
                Duplicate {
                    first: 0,
                    repeat: 2,
                    same: Same::Id
                },
                Duplicate {
                    first: 0,
                    repeat: 3,
                    same: Same::PromptAndAnswer
                },
                Duplicate {
                    first: 1,
                    repeat: 4,
                    same: Same::PromptOtherAnswer
                },
            ]
        );
    }

    #[test]
    fn refuse_names_both_places_and_merge_keeps_the_first() {
        let facts = vec![
            fact("a", "Ann plays", " golf"),
            fact("b", "Bob plays", " tennis"),
            fact("c", "Ann plays", " golf"),
        ];
        let e = apply(facts.clone(), Policy::Refuse, |i| {
            format!("f.jsonl: line {}", i + 1)
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("f.jsonl: line 3 repeats f.jsonl: line 1")
                && e.contains("same prompt and answer")
                && e.contains("--dedup"),
            "{e}"
        );
        let kept = apply(facts, Policy::Merge, |i| i.to_string()).unwrap();
        let ids: Vec<&str> = kept.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
