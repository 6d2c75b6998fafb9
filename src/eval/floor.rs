//! The know-nothing floor: the accuracy a model gets on a set of facts when it knows nothing
//! about their subjects. Each fact is asked again with its subject replaced by a made-up one
//! (the first word of one real subject and the last word of another, sharing no word with the
//! fact's own subject), so the model can only answer from the prompt and its priors.
//!
//! Among a closed set of answers this floor is far above zero: for Sports a model that has never
//! heard of an athlete still says "football" for most of them. A forget accuracy at the floor
//! means the facts are gone; one *below* it means the model still tells the true answer apart —
//! to avoid it.

use crate::data::Fact;
use crate::eval::completion::{accuracy, Accuracy};
use crate::eval::formats::with_subject;
use crate::model::LanguageModel;
use anyhow::Result;
use std::collections::HashSet;

/// Made-up subjects for `facts`, built from the words of `pool`'s subjects (deterministic).
/// Facts whose prompt lacks the subject, or for which no name can be made, are left out.
pub fn made_up(facts: &[Fact], pool: &[Fact]) -> Vec<Fact> {
    let real: HashSet<&str> = pool
        .iter()
        .chain(facts)
        .map(|f| f.subject.as_str())
        .collect();
    let words: Vec<Vec<&str>> = pool
        .iter()
        .map(|f| f.subject.split_whitespace().collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect();
    let n = words.len();
    facts
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let own: HashSet<&str> = f.subject.split_whitespace().collect();
            (1..=n.min(64)).find_map(|k| {
                let first = words[(7 * i + k) % n][0];
                let last = *words[(13 * i + 3 * k + 1) % n].last()?;
                let name = format!("{first} {last}");
                let fresh = first != last
                    && !own.contains(first)
                    && !own.contains(last)
                    && !real.contains(name.as_str());
                fresh.then(|| with_subject(f, name)).flatten()
            })
        })
        .collect()
}

/// Accuracy of `lm` on `facts` asked about made-up subjects (see the module doc).
pub fn know_nothing_floor(lm: &LanguageModel, facts: &[Fact], pool: &[Fact]) -> Result<Accuracy> {
    accuracy(lm, &made_up(facts, pool), |f| f.answer.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(subject: &str) -> Fact {
        Fact {
            id: subject.into(),
            prompt: format!(
                "Fact: Tiger Woods plays the sport of golf\nFact: {subject} plays the sport of"
            ),
            subject: subject.into(),
            answer: " football".into(),
            new_answer: None,
            paraphrases: vec![],
            neighborhood: vec![],
            candidates: vec![" baseball".into(), " basketball".into(), " football".into()],
            attribute: None,
        }
    }

    #[test]
    fn made_up_subjects_are_new_and_share_no_word_with_the_real_one() {
        let names = [
            "Walter Payton",
            "LeBron James",
            "Derek Jeter",
            "Tom Brady",
            "Kobe Bryant",
            "Babe Ruth",
        ];
        let facts: Vec<Fact> = names.iter().map(|n| fact(n)).collect();
        let fake = made_up(&facts, &facts);
        assert_eq!(fake.len(), facts.len());
        for (f, g) in facts.iter().zip(&fake) {
            assert!(!names.contains(&g.subject.as_str()), "{}", g.subject);
            for w in f.subject.split_whitespace() {
                assert!(!g.subject.contains(w), "{} keeps {w}", g.subject);
            }
            // Only the subject changes: the one-shot prefix, answer and candidates stay.
            assert_eq!(g.prompt, f.prompt.replace(&f.subject, &g.subject));
            assert_eq!((&g.answer, &g.candidates), (&f.answer, &f.candidates));
        }
        assert_eq!(fake, made_up(&facts, &facts), "deterministic");
    }

    #[test]
    fn a_pool_too_small_to_make_names_from_gives_none() {
        let one = vec![fact("Walter Payton")];
        assert!(made_up(&one, &one).is_empty());
    }
}
