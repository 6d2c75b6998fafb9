//! What a model knows: score every fact at its last prompt position (batched, last-position
//! logits only), keep the known ones, and split them deterministically into forget and retain.

use super::Fact;
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

/// How a model does on one fact.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FactScore {
    pub p_answer: f64,
    /// Tokens with a larger logit than the answer's first token (0 = top-1).
    pub rank: usize,
    /// The answer beats the other candidates (true when there are none).
    pub top1_among_candidates: bool,
    /// The candidate ranked first: the answer when it wins (ties go to the other candidate),
    /// else the candidate with the largest logit. Empty in scores cached before it existed.
    #[serde(default)]
    pub first_candidate: String,
}

/// First token of an answer (answers are scored by their first token).
pub fn answer_token(lm: &LanguageModel, answer: &str) -> Result<u32> {
    match lm.tokenizer.encode(answer, false)?.first() {
        Some(&t) => Ok(t),
        None => bail!("answer {answer:?} has no tokens"),
    }
}

/// Score facts in batches of prompts of similar length ([`crate::model::scoring::bucketed`]).
pub fn score(lm: &LanguageModel, facts: &[Fact], batch_size: usize) -> Result<Vec<FactScore>> {
    let bar = crate::util::progress(facts.len() as u64, "scoring facts");
    let ids: Vec<Vec<u32>> = facts
        .iter()
        .map(|f| lm.tokenizer.encode(&f.prompt, true))
        .collect::<Result<_>>()?;
    let out = crate::model::scoring::bucketed(&ids, batch_size, |idx, chunk| {
        let mut out = Vec::with_capacity(chunk.len());
        for (&i, row) in idx.iter().zip(lm.last_logits(chunk)?) {
            let f = &facts[i];
            let lse = crate::model::predict::logsumexp(&row);
            let a = answer_token(lm, &f.answer)? as usize;
            let x = row[a];
            // The strongest other candidate (the earliest on a tie) takes first place from
            // the answer when it at least ties it.
            let mut rival: Option<(&String, f32)> = None;
            for c in &f.candidates {
                let ci = answer_token(lm, c)? as usize;
                if ci != a && rival.is_none_or(|(_, v)| row[ci] > v) {
                    rival = Some((c, row[ci]));
                }
            }
            let first = match rival {
                Some((c, v)) if v >= x => c,
                _ => &f.answer,
            };
            out.push(FactScore {
                p_answer: (x as f64 - lse).exp(),
                rank: row.iter().filter(|&&y| y > x).count(),
                top1_among_candidates: first == &f.answer,
                first_candidate: first.clone(),
            });
        }
        bar.inc(chunk.len() as u64);
        Ok(out)
    })?;
    bar.finish_and_clear();
    Ok(out)
}

/// The facts of a task that the model knows under `rule` (e.g. `top1`), with a message saying
/// how many; an error when it knows none. Duplicates are handled by `policy` ([`super::dedup`]).
pub fn known_facts(
    lm: &LanguageModel,
    task: &str,
    rule: &str,
    policy: super::dedup::Policy,
) -> Result<Vec<Fact>> {
    known_among(
        lm,
        &super::load_task(task, policy)?,
        task,
        KnownRule::parse(rule)?,
    )
}

/// [`known_facts`] of facts already loaded (so that a bad facts file or rule is reported
/// before the model is loaded).
pub fn known_among(
    lm: &LanguageModel,
    facts: &[Fact],
    task: &str,
    rule: KnownRule,
) -> Result<Vec<Fact>> {
    super::context::check_facts_fit(lm, facts, task)?;
    let scores = cached_scores(lm, facts)?;
    let known: Vec<Fact> = facts
        .iter()
        .zip(&scores)
        .filter(|(_, s)| rule.holds(s))
        .map(|(f, _)| f.clone())
        .collect();
    eprintln!(
        "{} of {} facts of {task} known ({rule:?})",
        known.len(),
        facts.len()
    );
    if known.is_empty() {
        bail!(
            "the model knows none of the {} facts of {task} under --known {rule:?}",
            facts.len()
        );
    }
    Ok(known)
}

/// [`score`], cached on disk by model fingerprint and the facts' content (scoring a whole task
/// is the slow part of every command that starts from "the facts the model knows").
pub fn cached_scores(lm: &LanguageModel, facts: &[Fact]) -> Result<Vec<FactScore>> {
    let mut key = crate::model::cache_fingerprint(&lm.origin)?.into_bytes();
    key.extend(serde_json::to_vec(facts)?);
    let v: Vec<FactScore> = crate::util::cached_json("scores", &key, || score(lm, facts, 32))?;
    if v.len() != facts.len() {
        bail!("cached fact scores do not match the facts; delete the scores/ folder of the cache");
    }
    Ok(v)
}

/// Which facts count as known.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum KnownRule {
    /// P(answer) at least this.
    MinProb(f64),
    /// The answer is the top-1 token over the vocabulary.
    Top1,
    /// The answer beats the task's other candidates.
    Top1AmongCandidates,
}

impl KnownRule {
    pub fn parse(s: &str) -> Result<KnownRule> {
        Ok(match s {
            "top1" => KnownRule::Top1,
            "candidates" => KnownRule::Top1AmongCandidates,
            p => match p.strip_prefix("p>=").and_then(|x| x.parse::<f64>().ok()) {
                Some(v) if (0.0..=1.0).contains(&v) => KnownRule::MinProb(v),
                _ => {
                    bail!("--known {s:?}: use top1, candidates or p>=0.5 (a probability in [0, 1])")
                }
            },
        })
    }

    pub fn holds(&self, s: &FactScore) -> bool {
        match *self {
            KnownRule::MinProb(p) => s.p_answer >= p,
            KnownRule::Top1 => s.rank == 0,
            KnownRule::Top1AmongCandidates => s.top1_among_candidates,
        }
    }
}

/// Split known facts into (forget, the rest) by a named rule: `first-N`, `random-N` (with
/// seed), `half-a` / `half-b` (first or second half), or an attribute value such as
/// `basketball`; prefixed by a split (`test:first-16`), the rule picks among the known facts
/// of that split's subjects (see [`super::splits`]).
pub fn split(known: &[Fact], spec: &str, seed: u64) -> Result<(Vec<Fact>, Vec<Fact>)> {
    let (which, rule) = super::splits::parse_forget_spec(spec)?;
    let Some(which) = which else {
        return split_by_rule(known, rule, seed);
    };
    let (inside, outside): (Vec<Fact>, Vec<Fact>) = known
        .iter()
        .cloned()
        .partition(|f| super::splits::Split::of(f) == which);
    if inside.is_empty() {
        bail!(
            "split {spec:?}: no known fact is about a {} subject",
            which.name()
        );
    }
    let (forget, mut rest) = split_by_rule(&inside, rule, seed).with_context(|| {
        format!(
            "among the {} known facts of the {} split",
            inside.len(),
            which.name()
        )
    })?;
    rest.extend(outside);
    Ok((forget, rest))
}

/// The held-out facts of a run: known facts about subjects other than the forget ones, in a
/// seeded order, at most `n`, from the split the run reports on ([`super::splits::reported`]:
/// validation for a forget set of validation subjects, else test).
pub fn held_out(
    rest: &[Fact],
    forget: &[Fact],
    forget_spec: &str,
    seed: u64,
    n: usize,
) -> Vec<Fact> {
    let split = super::splits::reported(forget_spec);
    of_split_seeded(rest, forget, split, seed, n)
}

/// Known facts of `split` about subjects other than the forget ones, in a seeded order, at
/// most `n` (held-out facts from the test split, tuning facts from the validation split).
pub fn of_split_seeded(
    rest: &[Fact],
    forget: &[Fact],
    split: super::splits::Split,
    seed: u64,
    n: usize,
) -> Vec<Fact> {
    let mut v = about_other_subjects(super::splits::only(rest, split), forget);
    v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x4E1D));
    v.truncate(n);
    v
}

fn split_by_rule(known: &[Fact], spec: &str, seed: u64) -> Result<(Vec<Fact>, Vec<Fact>)> {
    let n_of = |s: &str| -> Result<usize> {
        let n: usize = s
            .parse()
            .map_err(|_| anyhow::anyhow!("split {spec:?}: {s:?} is not a number"))?;
        if n == 0 || n > known.len() {
            bail!(
                "split {spec:?}: asks for {n} facts but {} are known",
                known.len()
            );
        }
        Ok(n)
    };
    let idx: Vec<usize> = if let Some(n) = spec.strip_prefix("first-") {
        (0..n_of(n)?).collect()
    } else if let Some(n) = spec.strip_prefix("random-") {
        let n = n_of(n)?;
        let mut all: Vec<usize> = (0..known.len()).collect();
        all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let mut v = all[..n].to_vec();
        v.sort();
        v
    } else if spec == "half-a" {
        (0..known.len() / 2).collect()
    } else if spec == "half-b" {
        (known.len() / 2..known.len()).collect()
    } else {
        let v: Vec<usize> = (0..known.len())
            .filter(|&i| known[i].attribute.as_deref() == Some(spec))
            .collect();
        if v.is_empty() {
            bail!("split {spec:?}: not first-N, random-N, half-a, half-b, nor an attribute of any known fact");
        }
        v
    };
    let set: std::collections::HashSet<usize> = idx.iter().copied().collect();
    let forget = idx.iter().map(|&i| known[i].clone()).collect();
    let retain = (0..known.len())
        .filter(|i| !set.contains(i))
        .map(|i| known[i].clone())
        .collect();
    Ok((forget, retain))
}

/// The words of a name that can identify someone: lower-cased, stripped of punctuation at their
/// ends; initials, short particles (two letters or fewer) and suffixes (jr, sr, ii–iv) left out.
fn name_words(name: &str) -> Vec<String> {
    name.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| {
            w.chars().count() > 2 && !matches!(w.as_str(), "jr" | "sr" | "iii" | "ii" | "iv")
        })
        .collect()
}

/// Which of `facts` are about a namesake of a `forget` subject: a different subject that
/// shares a name word with one ("Elijah Millsap" for "Paul Millsap", "Jermaine O'Neal" for
/// "Shaquille O'Neal"). An update that moves what the model reads off a name moves their facts
/// too, so they are the retain facts that most need holding in place.
pub fn namesakes(forget: &[Fact], facts: &[Fact]) -> Vec<bool> {
    let subjects: std::collections::HashSet<&str> =
        forget.iter().map(|f| f.subject.as_str()).collect();
    let words: std::collections::HashSet<String> =
        forget.iter().flat_map(|f| name_words(&f.subject)).collect();
    facts
        .iter()
        .map(|f| {
            !subjects.contains(f.subject.as_str())
                && name_words(&f.subject).iter().any(|w| words.contains(w))
        })
        .collect()
}

/// The facts whose subject is not a subject of `forget`: what may count as held out. Another
/// fact about a subject being forgotten is not independent of the forgetting (it shares the
/// subject's representation), so it never stands for "knowledge that was kept".
pub fn about_other_subjects(facts: Vec<Fact>, forget: &[Fact]) -> Vec<Fact> {
    let subjects: std::collections::HashSet<&str> =
        forget.iter().map(|f| f.subject.as_str()).collect();
    facts
        .into_iter()
        .filter(|f| !subjects.contains(f.subject.as_str()))
        .collect()
}

/// `facts` with the flagged ones first, each part in its original (seeded) order.
pub fn flagged_first(facts: Vec<Fact>, flags: &[bool]) -> Vec<Fact> {
    let (first, rest): (Vec<_>, Vec<_>) = facts.into_iter().zip(flags).partition(|(_, &f)| f);
    first.into_iter().chain(rest).map(|(f, _)| f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n: usize) -> Vec<Fact> {
        (0..n)
            .map(|i| Fact {
                id: i.to_string(),
                prompt: format!("P{i} is"),
                subject: format!("P{i}"),
                answer: " x".into(),
                new_answer: None,
                paraphrases: vec![],
                neighborhood: vec![],
                candidates: vec![],
                attribute: Some(if i % 2 == 0 {
                    "even".into()
                } else {
                    "odd".into()
                }),
            })
            .collect()
    }

    #[test]
    fn splits_are_deterministic_and_disjoint() {
        let k = facts(10);
        let (f, r) = split(&k, "first-3", 0).unwrap();
        assert_eq!((f.len(), r.len()), (3, 7));
        let (a, _) = split(&k, "random-4", 7).unwrap();
        let (b, _) = split(&k, "random-4", 7).unwrap();
        assert_eq!(a, b);
        let (c, _) = split(&k, "random-4", 8).unwrap();
        assert_ne!(a, c);
        let (e, r) = split(&k, "even", 0).unwrap();
        assert_eq!(e.len(), 5);
        assert!(r.iter().all(|x| x.attribute.as_deref() == Some("odd")));
        assert!(split(&k, "first-11", 0)
            .unwrap_err()
            .to_string()
            .contains("10 are known"));
        assert!(split(&k, "curling", 0).is_err());
    }

    #[test]
    fn namesakes_share_a_name_word_but_not_the_subject() {
        let named = |names: &[&str]| -> Vec<Fact> {
            let mut v = facts(names.len());
            for (f, n) in v.iter_mut().zip(names) {
                f.subject = n.to_string();
            }
            v
        };
        let forget = named(&["Paul Millsap", "Shaquille O'Neal", "Odell Beckham Jr."]);
        let pool = named(&[
            "Elijah Millsap",
            "Jermaine O'Neal",
            "Shaquille Harrison",
            "paul george",
            "Paul Millsap",
            "Jr. Smith",
            "Al Horford",
            "LeBron James",
        ]);
        assert_eq!(
            namesakes(&forget, &pool),
            [true, true, true, true, false, false, false, false]
        );
        assert_eq!(name_words("  O'Neal,  Jr. "), ["o'neal"]);
        let ids: Vec<String> = flagged_first(
            pool,
            &[false, true, false, true, false, false, false, false],
        )
        .into_iter()
        .map(|f| f.id)
        .collect();
        assert_eq!(ids, ["1", "3", "0", "2", "4", "5", "6", "7"]);
    }

    #[test]
    fn held_out_facts_never_share_a_forget_subject() {
        let mut k = facts(6);
        k[4].subject = "P1".into();
        k[4].prompt = "P1 was born in".into();
        let (forget, rest) = split(&k, "first-2", 0).unwrap();
        let ids: Vec<String> = about_other_subjects(rest, &forget)
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(ids, ["2", "3", "5"]);
    }

    #[test]
    fn known_rules_parse() {
        assert!(matches!(KnownRule::parse("p>=0.5").unwrap(), KnownRule::MinProb(p) if p == 0.5));
        assert!(KnownRule::parse("p>=2").is_err());
        assert!(KnownRule::parse("sometimes").is_err());
    }
}
