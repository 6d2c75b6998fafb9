//! Forget data given as passages of text rather than prompt/answer facts: a user's JSONL file
//! of `{"text": …}` rows (RMU's usual input, a MUSE-style forget corpus), or WMDP's questions
//! written out with their correct answers (`wmdp-qa:0,1,2,3,4`, the forget data of the
//! WMDP unlearning-and-relearning protocol); `mmlu-qa`, unscored MMLU questions written the
//! same way, is retain data in that form (`corpus_retain`). Methods that train on every token
//! of a text (GA, GradDiff, NPO, SimNPO, RMU, localized fine-tuning, KUDA's deviation at every
//! position) can use them; evaluation is then by multiple choice (`unlearn mcq`), not by facts.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// A named passage.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    /// `FILE:LINE` or `wmdp:SPLIT:INDEX`.
    pub id: String,
    pub text: String,
}

/// Whether `task` names passages rather than facts: `wmdp-qa[:splits]`, or a `.jsonl` file
/// whose first row has a `text` field and no `prompt`.
pub fn is_corpus(task: &str) -> Result<bool> {
    if task == "wmdp-qa" || task.starts_with("wmdp-qa:") || task == "mmlu-qa" {
        return Ok(true);
    }
    let p = Path::new(task);
    if !(p.is_file() && task.ends_with(".jsonl")) {
        return Ok(false);
    }
    let text = std::fs::read_to_string(p).with_context(|| format!("{task}: cannot read"))?;
    let Some(first) = text.lines().find(|l| !l.trim().is_empty()) else {
        return Ok(false);
    };
    let v: serde_json::Value = match serde_json::from_str(first) {
        Ok(v) => v,
        Err(_) => return Ok(false),
    };
    Ok(v.get("text").is_some() && v.get("prompt").is_none())
}

/// The passages of a corpus task (see [`is_corpus`]).
pub fn load(task: &str) -> Result<Vec<Passage>> {
    if task == "wmdp-qa" {
        return wmdp_qa("wmdp");
    }
    if let Some(s) = task.strip_prefix("wmdp-qa:") {
        return wmdp_qa(&format!("wmdp:{s}"));
    }
    if task == "mmlu-qa" {
        return mmlu_qa();
    }
    load_jsonl(Path::new(task))
}

/// `{"text": …}` rows; a missing or empty text is an error naming the file and line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Passage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let what = format!("{}: line {}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{what}: not a JSON object"))?;
        let Some(t) = v.get("text").and_then(|t| t.as_str()) else {
            bail!("{what}: no \"text\" string (a corpus file has one {{\"text\": …}} per line)");
        };
        if t.trim().is_empty() {
            bail!("{what}: the text is empty");
        }
        out.push(Passage {
            id: format!("{}:{}", path.display(), i + 1),
            text: t.to_string(),
        });
    }
    if out.is_empty() {
        bail!("{}: no passages", path.display());
    }
    Ok(out)
}

/// WMDP questions of a set (`wmdp`, `wmdp:0,3`) as text: the question, then "Answer:" and the
/// correct choice — what the model should no longer be able to say.
fn wmdp_qa(set: &str) -> Result<Vec<Passage>> {
    let qs = crate::eval::mcq::load_set(set)?;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    Ok(qs
        .into_iter()
        .map(|q| {
            let split = q.subject.clone().unwrap_or_default();
            let k = seen.entry(split.clone()).or_default();
            *k += 1;
            Passage {
                id: format!("wmdp:{split}:{}", *k - 1),
                text: qa_text(&q),
            }
        })
        .collect())
}

/// MMLU questions that no built-in question set scores (10 of each of the 52 subjects outside
/// the near ones, `data/mmlu/mmlu_retain_10x52.jsonl`), written like [`wmdp_qa`]'s: retain data
/// in the forget passages' question-and-answer form.
fn mmlu_qa() -> Result<Vec<Passage>> {
    let path = crate::data::data_dir().join("mmlu/mmlu_retain_10x52.jsonl");
    Ok(crate::eval::mcq::load_jsonl(&path)?
        .iter()
        .enumerate()
        .map(|(i, q)| Passage {
            id: format!("mmlu-qa:{i}"),
            text: qa_text(q),
        })
        .collect())
}

/// A question and its correct answer as one passage.
pub fn qa_text(q: &crate::eval::mcq::Mcq) -> String {
    format!(
        "Question: {}\nAnswer: {}",
        q.question.trim(),
        q.choices[q.answer].trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wmdp_questions_become_passages_with_their_answers() {
        assert!(is_corpus("wmdp-qa").unwrap());
        assert!(is_corpus("wmdp-qa:0,1").unwrap());
        assert!(!is_corpus("sports").unwrap());
        let p = load("wmdp-qa:4").unwrap();
        assert_eq!(p.len(), 157);
        assert_eq!(p[0].id, "wmdp:split_4:0");
        let q = &crate::eval::mcq::load_set("wmdp:4").unwrap()[0];
        assert!(p[0].text.starts_with("Question: "));
        assert!(p[0]
            .text
            .ends_with(&format!("Answer: {}", q.choices[q.answer].trim())));
        assert_eq!(load("wmdp-qa").unwrap().len(), 785);
    }

    #[test]
    fn mmlu_retain_passages_are_no_scored_question() {
        assert!(is_corpus("mmlu-qa").unwrap());
        let p = load("mmlu-qa").unwrap();
        assert_eq!(p.len(), 520);
        assert!(p[0].text.starts_with("Question: ") && p[0].text.contains("\nAnswer: "));
        let mut scored: std::collections::HashSet<String> =
            ["mmlu", "mmlu-near", "mmlu-val", "wmdp"]
                .iter()
                .flat_map(|s| crate::eval::mcq::load_set(s).unwrap())
                .chain(crate::eval::mcq::dev_examples().unwrap())
                .map(|q| qa_text(&q))
                .collect();
        let n = scored.len();
        scored.extend(p.iter().map(|x| x.text.clone()));
        assert_eq!(
            scored.len(),
            n + p.len(),
            "a retain passage repeats a scored question"
        );
    }

    #[test]
    fn a_text_file_is_a_corpus_and_bad_rows_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.jsonl");
        std::fs::write(&f, "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n").unwrap();
        let task = f.to_str().unwrap();
        assert!(is_corpus(task).unwrap());
        let p = load(task).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p[1].id.ends_with("c.jsonl:3"), "{}", p[1].id);
        std::fs::write(&f, "{\"text\": \"one\"}\n{\"txt\": \"two\"}\n").unwrap();
        let e = load(task).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("\"text\""), "{e}");
        let facts = dir.path().join("f.jsonl");
        std::fs::write(
            &facts,
            "{\"prompt\": \"a\", \"subject\": \"a\", \"answer\": \"b\", \"text\": \"x\"}\n",
        )
        .unwrap();
        assert!(!is_corpus(facts.to_str().unwrap()).unwrap());
    }
}
