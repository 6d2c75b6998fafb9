//! Completion accuracy on a set of facts: top-1 over the vocabulary, top-1 among the task's
//! candidate answers, and mean P(answer) (first answer token at the last prompt position).

use crate::data::known::score;
use crate::data::Fact;
use crate::model::LanguageModel;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Accuracy of a model on facts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub n: usize,
    /// Share of facts whose answer is the top-1 token.
    pub top1: f64,
    /// Share of facts whose answer beats the other candidates.
    pub top1_candidates: f64,
    pub mean_p: f64,
    /// Each fact's answer and the candidate ranked first (not written with the summary).
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
}

/// One fact's answer and the candidate the model ranks first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub subject: String,
    pub answer: String,
    /// The first among the task's candidates (the answer when it wins).
    pub first: String,
}

impl Outcome {
    /// Whether the answer still beats the other candidates.
    pub fn kept(&self) -> bool {
        self.first == self.answer
    }
}

/// Score `facts` against `answer_of(fact)` (the true answer, or a new one after editing).
pub fn accuracy(
    lm: &LanguageModel,
    facts: &[Fact],
    answer_of: impl Fn(&Fact) -> String,
) -> Result<Accuracy> {
    if facts.is_empty() {
        return Ok(Accuracy::default());
    }
    let relabeled: Vec<Fact> = facts
        .iter()
        .map(|f| Fact {
            answer: answer_of(f),
            ..f.clone()
        })
        .collect();
    let s = score(lm, &relabeled, 32)?;
    let n = s.len() as f64;
    Ok(Accuracy {
        n: s.len(),
        top1: s.iter().filter(|x| x.rank == 0).count() as f64 / n,
        top1_candidates: s.iter().filter(|x| x.top1_among_candidates).count() as f64 / n,
        mean_p: s.iter().map(|x| x.p_answer).sum::<f64>() / n,
        outcomes: relabeled
            .iter()
            .zip(&s)
            .map(|(f, x)| Outcome {
                subject: f.subject.clone(),
                answer: f.answer.clone(),
                first: x.first_candidate.clone(),
            })
            .collect(),
    })
}
