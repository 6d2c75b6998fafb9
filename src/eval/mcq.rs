//! Multiple-choice questions scored by letter, as lm-eval-harness scores MMLU: the prompt lists
//! the choices as A/B/C/D and ends with "Answer:"; the model's choice is the letter token
//! (" A", " B", …) with the largest log-likelihood at the last position (one softmax, so the
//! largest logit). Questions with a subject get the harness's header line; with shots, the
//! subject's dev questions and their answers come first (the shared prefix is run once). Used
//! for MMLU, WMDP and the multiple-choice form of facts (candidates shuffled with a seed).

use crate::data::Fact;
use crate::model::chat::ChatFormat;
use crate::model::memo::BatchMemo;
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
    /// MMLU subject (`college_biology`) or WMDP split (`split_3`): groups the scores, picks
    /// the few-shot examples and, for MMLU subjects, the header line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

const LETTERS: [&str; 8] = ["A", "B", "C", "D", "E", "F", "G", "H"];

/// Choices of a question made from a fact: its answer and at most three other candidates.
pub const MAX_CHOICES: usize = 4;

/// A question's lines: question, lettered choices, "Answer:".
pub fn prompt(q: &Mcq) -> String {
    let mut s = format!("{}\n", q.question.trim());
    for (l, c) in LETTERS.iter().zip(&q.choices) {
        s.push_str(&format!("{l}. {}\n", c.trim()));
    }
    s.push_str("Answer:");
    s
}

/// The harness's header for an MMLU subject ("…about college biology.\n\n"); none for
/// questions without a subject or grouped by WMDP split.
fn header(q: &Mcq) -> String {
    match &q.subject {
        Some(s) if !s.starts_with("split_") => format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            s.replace('_', " ")
        ),
        _ => String::new(),
    }
}

/// The part of a question's prompt shared by every question of its subject: the header and
/// the worked examples (each question, " <letter>", a blank line).
fn shared_prefix(q: &Mcq, examples: &[Mcq]) -> String {
    let mut s = header(q);
    for e in examples {
        s.push_str(&prompt(e));
        s.push_str(&format!(" {}\n\n", LETTERS[e.answer]));
    }
    s
}

/// How questions are put to the model.
#[derive(Clone, Debug, Default)]
pub struct Asking<'a> {
    /// Wrap each prompt as a single user turn of the model's chat format; the assistant's
    /// answer then starts a line, so its letters are scored without the leading space.
    pub chat: Option<&'a ChatFormat>,
    /// Worked examples per subject (the first `shots` dev questions of the subject).
    pub shots: usize,
    /// The pool of worked examples (MMLU dev), looked up by subject.
    pub examples: &'a [Mcq],
    /// Where each batch's letter logits are kept, so that an interrupted scoring resumes
    /// (none: nothing kept).
    pub memo: Option<&'a BatchMemo>,
}

/// How a model does on a set of questions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct McqScore {
    pub n: usize,
    pub accuracy: f64,
    /// Standard error of the accuracy, √(acc·(1−acc)/(n−1)) as lm-eval-harness reports it.
    #[serde(default)]
    pub stderr: f64,
    /// Mean probability of the correct letter, normalized over the choices' letters.
    pub mean_p_correct: f64,
    /// How often each letter was chosen (a model stuck on one letter is at chance).
    pub chosen: Vec<usize>,
    /// 1 / number of choices (of the first question).
    pub chance: f64,
    /// Accuracy per subject or split, in order of first appearance (empty when no question
    /// has a subject).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupScore>,
}

/// Accuracy on the questions of one subject or split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupScore {
    pub name: String,
    pub n: usize,
    pub accuracy: f64,
    pub stderr: f64,
}

/// Standard error of an accuracy over `n` questions (sample standard deviation / √n).
pub fn stderr(accuracy: f64, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    (accuracy * (1.0 - accuracy) / (n - 1) as f64).sqrt()
}

/// Score questions zero-shot in batches of `bs`: prompts of similar length are batched together
/// and only the letters' logits are computed at the last position.
pub fn score(lm: &LanguageModel, qs: &[Mcq], bs: usize) -> Result<McqScore> {
    score_with(lm, qs, bs, &Asking::default())
}

/// [`score`], asked as `how` says (chat turn, few-shot examples).
pub fn score_with(lm: &LanguageModel, qs: &[Mcq], bs: usize, how: &Asking) -> Result<McqScore> {
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
            let text = if how.chat.is_some() {
                l.to_string()
            } else {
                format!(" {l}")
            };
            let ids = lm.tokenizer.encode(&text, false)?;
            ids.last().copied().context("letter has no token")
        })
        .collect::<Result<_>>()?;
    // Questions grouped by their shared prefix (header and worked examples); the prefix is run
    // once per group when the whole prompt's tokens start with the prefix's own tokens (a
    // tokenizer may merge across the seam; such a prompt is scored whole).
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let examples = examples_for(q, how)?;
        let prefix = shared_prefix(q, &examples);
        match groups.iter_mut().find(|(p, _)| *p == prefix) {
            Some((_, v)) => v.push(i),
            None => groups.push((prefix, vec![i])),
        }
    }
    let wrap = |text: String| match how.chat {
        Some(c) => c.user_turn(&text),
        None => text,
    };
    let mut logits: Vec<Option<Vec<f32>>> = vec![None; qs.len()];
    for (prefix, members) in &groups {
        let whole: Vec<Vec<u32>> = members
            .iter()
            .map(|&i| {
                lm.tokenizer
                    .encode(&wrap(format!("{prefix}{}", prompt(&qs[i]))), true)
            })
            .collect::<Result<_>>()?;
        // Under a chat turn the seam is inside the user's text: the prefix is the turn's opening.
        let head = match how.chat {
            Some(c) => {
                let open = c.user_turn(prefix);
                open[..open.find(prefix.as_str()).unwrap_or(0) + prefix.len()].to_string()
            }
            None => prefix.clone(),
        };
        let head_ids = if head.is_empty() {
            Vec::new()
        } else {
            lm.tokenizer.encode(&head, true)?
        };
        let (mut tails, mut tail_of, mut alone) = (Vec::new(), Vec::new(), Vec::new());
        for (&i, ids) in members.iter().zip(&whole) {
            if head_ids.len() > 1 && ids.len() > head_ids.len() && ids.starts_with(&head_ids) {
                tails.push(ids[head_ids.len()..].to_vec());
                tail_of.push(i);
            } else {
                alone.push((i, ids.clone()));
            }
        }
        if !tails.is_empty() {
            let z = lm.model.last_token_logits_after_kept(
                &head_ids,
                &tails,
                &letter_ids,
                lm.pad_id(),
                bs,
                how.memo,
            )?;
            for (i, row) in tail_of.into_iter().zip(z) {
                logits[i] = Some(row);
            }
        }
        if !alone.is_empty() {
            let ids: Vec<Vec<u32>> = alone.iter().map(|(_, s)| s.clone()).collect();
            for ((i, _), row) in alone.iter().zip(lm.model.last_token_logits_kept(
                &ids,
                &letter_ids,
                lm.pad_id(),
                bs,
                how.memo,
            )?) {
                logits[*i] = Some(row);
            }
        }
    }
    let mut tally = Tally::new(k_max);
    for (q, z) in qs.iter().zip(&logits) {
        tally.add(q, z.as_deref().context("a question was not scored")?)?;
    }
    Ok(tally.finish(qs))
}

/// The worked examples of a question's subject: the first `how.shots` of the pool.
fn examples_for(q: &Mcq, how: &Asking) -> Result<Vec<Mcq>> {
    if how.shots == 0 {
        return Ok(Vec::new());
    }
    let subject = q.subject.as_deref().with_context(|| {
        format!(
            "question {:?} has no subject, so it has no worked examples (few-shot needs MMLU subjects)",
            q.question
        )
    })?;
    let pool: Vec<Mcq> = how
        .examples
        .iter()
        .filter(|e| e.subject.as_deref() == Some(subject))
        .take(how.shots)
        .cloned()
        .collect();
    if pool.len() < how.shots {
        bail!(
            "{} worked example(s) asked for, but the dev set has {} for subject {subject:?}",
            how.shots,
            pool.len()
        );
    }
    Ok(pool)
}

/// Running counts of [`score`]: one question's letter logits at a time.
struct Tally {
    right: usize,
    p_sum: f64,
    chosen: Vec<usize>,
    /// Whether each question added so far was answered right.
    correct: Vec<bool>,
}

impl Tally {
    fn new(k_max: usize) -> Tally {
        Tally {
            right: 0,
            p_sum: 0.0,
            chosen: vec![0; k_max],
            correct: Vec::new(),
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
        self.correct.push(pick == q.answer);
        self.p_sum += e[q.answer] / s;
        Ok(())
    }

    fn finish(self, qs: &[Mcq]) -> McqScore {
        let n = qs.len();
        let accuracy = self.right as f64 / n as f64;
        let mut groups: Vec<GroupScore> = Vec::new();
        for (q, &ok) in qs.iter().zip(&self.correct) {
            let Some(name) = &q.subject else { continue };
            let g = match groups.iter().position(|g| &g.name == name) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(GroupScore {
                        name: name.clone(),
                        ..Default::default()
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            g.n += 1;
            g.accuracy += f64::from(u8::from(ok));
        }
        for g in &mut groups {
            g.accuracy /= g.n as f64;
            g.stderr = stderr(g.accuracy, g.n);
        }
        McqScore {
            n,
            accuracy,
            stderr: stderr(accuracy, n),
            mean_p_correct: self.p_sum / n as f64,
            chosen: self.chosen,
            chance: 1.0 / qs[0].choices.len().max(1) as f64,
            groups,
        }
    }
}

/// The built-in question sets: MMLU (10 questions of each of 57 subjects), the full test sets
/// of the five MMLU subjects nearest WMDP (820), an MMLU validation set to tune on (questions
/// 11–15 of each of the other 52 subjects: 260, in neither of those), and WMDP (785, grouped by
/// its five splits; `wmdp:0,3` picks splits).
pub const SETS: [&str; 4] = ["mmlu", "mmlu-near", "mmlu-val", "wmdp"];

/// Questions of a built-in set (see [`SETS`]) or of a JSONL file (see [`load_jsonl`]).
pub fn load_set(set: &str) -> Result<Vec<Mcq>> {
    let dir = crate::data::data_dir();
    match set {
        "mmlu" => load_jsonl(&dir.join("mmlu/mmlu_test_10x57.jsonl")),
        "mmlu-near" => load_jsonl(&dir.join("mmlu/mmlu_near_test.jsonl")),
        "mmlu-val" => load_jsonl(&dir.join("mmlu/mmlu_val_5x52.jsonl")),
        "wmdp" => wmdp_splits(&[0, 1, 2, 3, 4]),
        s if s.starts_with("wmdp:") => {
            let splits = s["wmdp:".len()..]
                .split(',')
                .map(|x| match x.trim().parse::<usize>() {
                    Ok(i) if i < 5 => Ok(i),
                    _ => bail!("question set {s:?}: WMDP splits are 0 to 4, as in wmdp:0,3"),
                })
                .collect::<Result<Vec<_>>>()?;
            wmdp_splits(&splits)
        }
        path if path.ends_with(".jsonl") => load_jsonl(Path::new(path)),
        other => bail!(
            "question set {other:?}: expected {}, wmdp:N[,N…] or a .jsonl file of {{\"question\", \"choices\", \"answer\"}} rows",
            SETS.join(", ")
        ),
    }
}

/// WMDP's questions of the given splits, each question's subject its split (`split_3`).
fn wmdp_splits(splits: &[usize]) -> Result<Vec<Mcq>> {
    let dir = crate::data::data_dir();
    let mut qs = Vec::new();
    for &i in splits {
        for mut q in load_jsonl(&dir.join(format!("wmdp/split_{i}.jsonl")))? {
            q.subject = Some(format!("split_{i}"));
            qs.push(q);
        }
    }
    Ok(qs)
}

/// The MMLU dev questions (5 per subject), the pool of few-shot examples.
pub fn dev_examples() -> Result<Vec<Mcq>> {
    load_jsonl(&crate::data::data_dir().join("mmlu/mmlu_dev.jsonl"))
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
                subject: None,
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
        assert_eq!(load_set("mmlu-near").unwrap().len(), 820);
        // The validation questions are none of the reported ones.
        let val = load_set("mmlu-val").unwrap();
        assert_eq!(val.len(), 260);
        let reported: std::collections::HashSet<String> = ["mmlu", "mmlu-near"]
            .iter()
            .flat_map(|s| load_set(s).unwrap())
            .map(|q| q.question)
            .collect();
        assert!(val.iter().all(|q| !reported.contains(&q.question)));
        let w = load_set("wmdp").unwrap();
        assert_eq!(w.len(), 785);
        assert_eq!(w[157 * 3].subject.as_deref(), Some("split_3"));
        let w = load_set("wmdp:4,1").unwrap();
        assert_eq!(w.len(), 314);
        assert_eq!(w[0].subject.as_deref(), Some("split_4"));
        let e = load_set("wmdp:5").unwrap_err().to_string();
        assert!(e.contains("0 to 4"), "{e}");
        let dev = dev_examples().unwrap();
        assert_eq!(dev.len(), 285);
        for q in load_set("mmlu").unwrap().iter().step_by(10) {
            let how = Asking {
                shots: 5,
                examples: &dev,
                ..Default::default()
            };
            assert_eq!(examples_for(q, &how).unwrap().len(), 5, "{:?}", q.subject);
        }
        let how = Asking {
            shots: 6,
            examples: &dev,
            ..Default::default()
        };
        let e = examples_for(&load_set("mmlu").unwrap()[0], &how)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 5 for subject \"abstract_algebra\""), "{e}");
        let e = load_set("trivia").unwrap_err().to_string();
        assert!(
            e.contains("\"trivia\"") && e.contains("mmlu, mmlu-near, mmlu-val, wmdp"),
            "{e}"
        );
        let e = load_set("/nonexistent/q.jsonl").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/q.jsonl"), "{e}");
    }

    #[test]
    fn prompt_lists_letters() {
        let mut q = Mcq {
            question: "2+2?".into(),
            choices: vec!["3".into(), "4".into()],
            answer: 1,
            subject: None,
        };
        assert_eq!(prompt(&q), "2+2?\nA. 3\nB. 4\nAnswer:");
        assert_eq!(header(&q), "");
        q.subject = Some("elementary_mathematics".into());
        let ex = Mcq {
            question: "1+1?".into(),
            choices: vec!["2".into(), "3".into()],
            answer: 0,
            subject: q.subject.clone(),
        };
        assert_eq!(
            format!("{}{}", shared_prefix(&q, &[ex]), prompt(&q)),
            "The following are multiple choice questions (with answers) about elementary \
             mathematics.\n\n1+1?\nA. 2\nB. 3\nAnswer: A\n\n2+2?\nA. 3\nB. 4\nAnswer:"
        );
        q.subject = Some("split_2".into());
        assert_eq!(header(&q), "", "WMDP splits have no header");
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
