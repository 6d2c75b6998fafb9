//! Multiple-choice questions scored by letter: the prompt lists the choices as A/B/C/D and ends
//! with "Answer:"; the model's choice is the letter token (" A", " B", …) with the largest logit
//! at the last position. Used for MMLU, WMDP and the multiple-choice form of facts (candidates
//! shuffled with a seed).

use crate::data::Fact;
use crate::model::chat::ChatFormat;
use crate::model::LanguageModel;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One multiple-choice question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mcq {
    pub question: String,
    pub choices: Vec<String>,
    /// Index of the correct choice.
    pub answer: usize,
}

const LETTERS: [&str; 8] = ["A", "B", "C", "D", "E", "F", "G", "H"];

/// Choices of a question made from a fact: its answer and at most three other candidates.
pub const MAX_CHOICES: usize = 4;

/// Zero-shot prompt: question, lettered choices, "Answer:".
pub fn prompt(q: &Mcq) -> String {
    let mut s = format!("{}\n", q.question.trim());
    for (l, c) in LETTERS.iter().zip(&q.choices) {
        s.push_str(&format!("{l}. {}\n", c.trim()));
    }
    s.push_str("Answer:");
    s
}

/// How a model does on a set of questions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct McqScore {
    pub n: usize,
    pub accuracy: f64,
    /// Mean probability of the correct letter, normalized over the choices' letters.
    pub mean_p_correct: f64,
    /// How often each letter was chosen (a model stuck on one letter is at chance).
    pub chosen: Vec<usize>,
    /// 1 / number of choices (of the first question).
    pub chance: f64,
}

/// Score questions in batches of `bs`: prompts of similar length are batched together and only
/// the letters' logits are computed at the last position.
pub fn score(lm: &LanguageModel, qs: &[Mcq], bs: usize) -> Result<McqScore> {
    score_with(lm, qs, bs, None)
}

/// [`score`], or with `chat` each prompt wrapped as a single user turn of the model's chat
/// format; the assistant's answer then starts a line, so its letters are scored without the
/// leading space (`A`, not ` A`).
pub fn score_with(
    lm: &LanguageModel,
    qs: &[Mcq],
    bs: usize,
    chat: Option<&ChatFormat>,
) -> Result<McqScore> {
    if qs.is_empty() {
        return Ok(McqScore::default());
    }
    let k_max = qs.iter().map(|q| q.choices.len()).max().unwrap_or(0);
    if k_max > LETTERS.len() {
        bail!(
            "a question has {k_max} choices; at most {} are supported",
            LETTERS.len()
        );
    }
    let letter_ids: Vec<u32> = LETTERS[..k_max]
        .iter()
        .map(|l| {
            let text = if chat.is_some() {
                l.to_string()
            } else {
                format!(" {l}")
            };
            let ids = lm.tokenizer.encode(&text, false)?;
            ids.last().copied().context("letter has no token")
        })
        .collect::<Result<_>>()?;
    let ids: Vec<Vec<u32>> = qs
        .iter()
        .map(|q| {
            let p = match chat {
                Some(c) => c.user_turn(&prompt(q)),
                None => prompt(q),
            };
            lm.tokenizer.encode(&p, true)
        })
        .collect::<Result<_>>()?;
    let mut tally = Tally::new(k_max);
    for (q, z) in qs.iter().zip(lm.last_token_logits(&ids, &letter_ids, bs)?) {
        tally.add(q, &z)?;
    }
    Ok(tally.finish(qs))
}

/// Running counts of [`score`]: one question's letter logits at a time.
struct Tally {
    right: usize,
    p_sum: f64,
    chosen: Vec<usize>,
}

impl Tally {
    fn new(k_max: usize) -> Tally {
        Tally {
            right: 0,
            p_sum: 0.0,
            chosen: vec![0; k_max],
        }
    }

    /// Add one question: `letters[i]` is the logit of the i-th letter; the choice is the
    /// letter with the largest logit among the question's choices.
    fn add(&mut self, q: &Mcq, letters: &[f32]) -> Result<()> {
        let k = q.choices.len();
        if q.answer >= k {
            bail!(
                "question {:?}: answer index {} but {k} choices",
                q.question,
                q.answer
            );
        }
        let z: Vec<f64> = letters[..k].iter().map(|&x| x as f64).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let pick = (0..k).fold(0, |b, i| if z[i] > z[b] { i } else { b });
        self.chosen[pick] += 1;
        self.right += usize::from(pick == q.answer);
        self.p_sum += e[q.answer] / s;
        Ok(())
    }

    fn finish(self, qs: &[Mcq]) -> McqScore {
        let n = qs.len();
        McqScore {
            n,
            accuracy: self.right as f64 / n as f64,
            mean_p_correct: self.p_sum / n as f64,
            chosen: self.chosen,
            chance: 1.0 / qs[0].choices.len().max(1) as f64,
        }
    }
}

/// The built-in question sets: MMLU (10 questions of each of 57 subjects) and WMDP (785).
pub const SETS: [&str; 2] = ["mmlu", "wmdp"];

/// Questions of a built-in set (see [`SETS`]) or of a JSONL file (see [`load_jsonl`]).
pub fn load_set(set: &str) -> Result<Vec<Mcq>> {
    let dir = crate::data::data_dir();
    let files: Vec<std::path::PathBuf> = match set {
        "mmlu" => vec![dir.join("mmlu/mmlu_test_10x57.jsonl")],
        "wmdp" => (0..5)
            .map(|i| dir.join(format!("wmdp/split_{i}.jsonl")))
            .collect(),
        path if path.ends_with(".jsonl") => vec![path.into()],
        other => bail!(
            "question set {other:?}: expected {} or a .jsonl file of {{\"question\", \"choices\", \"answer\"}} rows",
            SETS.join(", ")
        ),
    };
    let mut qs = Vec::new();
    for f in files {
        qs.extend(load_jsonl(&f)?);
    }
    Ok(qs)
}

/// Questions from a JSONL file of `{"question", "choices": [...], "answer": i}` rows (MMLU
/// subset, WMDP). Rows with a missing field are errors naming the file and line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Mcq>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let q: Mcq = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a question row (question, choices, answer)",
                path.display(),
                i + 1
            )
        })?;
        if q.choices.len() < 2 || q.answer >= q.choices.len() {
            bail!(
                "{}:{}: needs at least 2 choices and an answer index among them",
                path.display(),
                i + 1
            );
        }
        out.push(q);
    }
    Ok(out)
}

/// The multiple-choice form of facts with candidate answers: "<last prompt line> ___" with
/// the candidates shuffled by `seed` (facts without 2+ candidates are skipped).
pub fn from_facts(facts: &[Fact], seed: u64) -> Vec<Mcq> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    facts
        .iter()
        .filter(|f| f.candidates.len() >= 2 && f.candidates.contains(&f.answer))
        .map(|f| {
            let mut choices: Vec<String> =
                f.candidates.iter().map(|c| c.trim().to_string()).collect();
            if choices.len() > MAX_CHOICES {
                // The answer and three others drawn from a long list (a relation's answers).
                let answer = f.answer.trim().to_string();
                choices.retain(|c| *c != answer);
                choices.shuffle(&mut rng);
                choices.truncate(MAX_CHOICES - 1);
                choices.push(answer);
            }
            choices.shuffle(&mut rng);
            let answer = choices
                .iter()
                .position(|c| c == f.answer.trim())
                .expect("answer is a candidate");
            let line = f.prompt.lines().last().unwrap_or(&f.prompt).trim();
            let line = line.strip_prefix("Fact:").unwrap_or(line).trim();
            Mcq {
                question: format!("Question: {line} ___?"),
                choices,
                answer,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "model" rigged to prefer the letter B: it answers right exactly on the questions whose
    /// answer is B, picks B every time, and puts the probability its logits give on the right
    /// letter.
    #[test]
    fn a_model_rigged_to_prefer_one_letter() {
        let f = crate::data::example_fact();
        let qs = from_facts(&vec![f; 30], 5);
        let row = [0f32, 2.0, 0.0];
        let mut t = Tally::new(3);
        for q in &qs {
            t.add(q, &row).unwrap();
        }
        let s = t.finish(&qs);
        let on_b = qs.iter().filter(|q| q.answer == 1).count();
        assert!(on_b > 0 && on_b < qs.len());
        assert_eq!(s.chosen, vec![0, qs.len(), 0]);
        assert!((s.accuracy - on_b as f64 / qs.len() as f64).abs() < 1e-12);
        let p_b = 2f64.exp() / (2f64.exp() + 2.0);
        let want =
            (on_b as f64 * p_b + (qs.len() - on_b) as f64 * (1.0 - p_b) / 2.0) / qs.len() as f64;
        assert!((s.mean_p_correct - want).abs() < 1e-9);
        assert!((s.chance - 1.0 / 3.0).abs() < 1e-12);
        let bad = Mcq {
            answer: 7,
            ..qs[0].clone()
        };
        assert!(t_err(&bad, &row).contains("answer index 7"));
    }

    fn t_err(q: &Mcq, row: &[f32]) -> String {
        Tally::new(3).add(q, row).unwrap_err().to_string()
    }

    #[test]
    fn sets_are_named() {
        assert_eq!(load_set("mmlu").unwrap().len(), 570);
        assert_eq!(load_set("wmdp").unwrap().len(), 785);
        let e = load_set("trivia").unwrap_err().to_string();
        assert!(e.contains("\"trivia\"") && e.contains("mmlu, wmdp"), "{e}");
        let e = load_set("/nonexistent/q.jsonl").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/q.jsonl"), "{e}");
    }

    #[test]
    fn prompt_lists_letters() {
        let q = Mcq {
            question: "2+2?".into(),
            choices: vec!["3".into(), "4".into()],
            answer: 1,
        };
        assert_eq!(prompt(&q), "2+2?\nA. 3\nB. 4\nAnswer:");
    }

    #[test]
    fn a_long_candidate_list_gives_four_choices_with_the_answer() {
        let mut f = crate::data::example_fact();
        f.candidates = (0..30).map(|i| format!(" c{i}")).collect();
        f.answer = " c17".into();
        let qs = from_facts(&vec![f; 20], 1);
        assert_eq!(qs.len(), 20);
        for q in &qs {
            assert_eq!(q.choices.len(), MAX_CHOICES);
            assert_eq!(q.choices[q.answer], "c17");
            let mut c = q.choices.clone();
            c.dedup();
            assert_eq!(c.len(), MAX_CHOICES);
        }
        assert!(qs.iter().any(|q| q.choices != qs[0].choices));
    }

    #[test]
    fn fact_mcqs_keep_the_answer_among_shuffled_candidates() {
        let f = crate::data::example_fact();
        let qs = from_facts(&vec![f; 20], 3);
        assert_eq!(
            qs[0].question,
            "Question: LeBron James plays the sport of ___?"
        );
        assert!(qs.iter().all(|q| q.choices[q.answer] == "basketball"));
        let positions: std::collections::BTreeSet<usize> = qs.iter().map(|q| q.answer).collect();
        assert!(positions.len() > 1, "candidates are shuffled");
    }
}
