//! A user's own facts: JSON lines (`{"prompt", "subject", "answer", …}`) or TSV with a header
//! naming at least `prompt`, `subject`, `answer` (optional: `new_answer`, `candidates` as
//! `|`-separated answers, `attribute`). A fact without `candidates` but with an `attribute`
//! (a relation) gets the answers of the facts sharing its attribute as its candidates.

use std::collections::BTreeMap;

use super::{as_completion, dedup, Fact};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Reads one field of the current row.
type Getter = Box<dyn Fn(&str) -> Option<String>>;

/// Load a `.jsonl` or `.tsv` facts file; duplicates are refused or merged by `policy`
/// ([`dedup`]), named by their lines.
pub fn load(path: &Path, policy: dedup::Policy) -> Result<Vec<Fact>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let tsv = path.extension().is_some_and(|e| e == "tsv");
    let mut facts = Vec::new();
    let mut lines = Vec::new();
    let mut header: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let what = format!("{}: line {}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let get: Getter = if tsv {
            if header.is_empty() {
                header = line.split('\t').map(|s| s.trim().to_string()).collect();
                for need in ["prompt", "subject", "answer"] {
                    if !header.iter().any(|h| h == need) {
                        bail!("{what}: the header has no `{need}` column");
                    }
                }
                continue;
            }
            let cells: Vec<String> = line.split('\t').map(|s| s.to_string()).collect();
            if cells.len() != header.len() {
                bail!(
                    "{what}: {} columns, the header has {} ({})",
                    cells.len(),
                    header.len(),
                    header.join(", ")
                );
            }
            let h = header.clone();
            Box::new(move |k: &str| {
                h.iter()
                    .position(|x| x == k)
                    .and_then(|c| cells.get(c).cloned())
                    .filter(|s| !s.is_empty())
            })
        } else {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{what}: not valid JSON"))?;
            Box::new(move |k: &str| match &v[k] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(a) => Some(
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
        };
        let need = |k: &str| get(k).with_context(|| format!("{what}: field `{k}` is missing"));
        let answer = as_completion(&need("answer")?);
        let mut candidates: Vec<String> = get("candidates")
            .map(|c| c.split('|').map(as_completion).collect())
            .unwrap_or_default();
        if !candidates.is_empty() && !candidates.contains(&answer) {
            candidates.push(answer.clone());
        }
        let f = Fact {
            id: get("id").unwrap_or_else(|| facts.len().to_string()),
            prompt: need("prompt")?,
            subject: need("subject")?,
            answer,
            new_answer: get("new_answer").map(|a| as_completion(&a)),
            paraphrases: vec![],
            neighborhood: vec![],
            candidates,
            attribute: get("attribute"),
        };
        f.validate(&what)?;
        facts.push(f);
        lines.push(i + 1);
    }
    if facts.is_empty() {
        bail!("{}: no facts", path.display());
    }
    let mut facts = dedup::apply(facts, policy, |i| {
        format!("{}: line {}", path.display(), lines[i])
    })?;
    let derived = derive_candidates(&mut facts);
    if derived > 0 {
        eprintln!(
            "{}: {derived} facts without `candidates` rank their answer among the answers of \
             the facts sharing their `attribute`",
            path.display()
        );
    }
    Ok(facts)
}

/// Give each fact without candidates, but with an attribute, the distinct answers of all facts
/// sharing that attribute (its own included; in first-seen order) when there are at least two.
/// Returns how many facts got candidates.
pub fn derive_candidates(facts: &mut [Fact]) -> usize {
    let mut by_attr: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in facts.iter() {
        if let Some(a) = &f.attribute {
            let answers = by_attr.entry(a.clone()).or_default();
            if !answers.contains(&f.answer) {
                answers.push(f.answer.clone());
            }
        }
    }
    let mut n = 0;
    for f in facts.iter_mut().filter(|f| f.candidates.is_empty()) {
        if let Some(answers) = f.attribute.as_ref().and_then(|a| by_attr.get(a)) {
            if answers.len() >= 2 {
                f.candidates = answers.clone();
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_tsv() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("f.jsonl");
        std::fs::write(&j, "{\"prompt\": \"The Eiffel Tower is in\", \"subject\": \"Eiffel Tower\", \"answer\": \"Paris\"}\n").unwrap();
        let f = load(&j, dedup::Policy::Refuse).unwrap();
        assert_eq!(f[0].answer, " Paris");
        let t = d.path().join("f.tsv");
        std::fs::write(&t, "prompt\tsubject\tanswer\tcandidates\nToyota is based in\tToyota\t Japan\tJapan|Korea\n").unwrap();
        let f = load(&t, dedup::Policy::Refuse).unwrap();
        assert_eq!(f[0].candidates, vec![" Japan", " Korea"]);
    }

    #[test]
    fn candidates_come_from_the_facts_sharing_an_attribute() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("f.jsonl");
        let line = |p: &str, s: &str, a: &str, r: &str| {
            format!("{{\"prompt\": \"{p}\", \"subject\": \"{s}\", \"answer\": \"{a}\", \"attribute\": \"{r}\"}}\n")
        };
        let text = [
            line("Toyota is based in", "Toyota", "Japan", "P17"),
            line("Fiat is based in", "Fiat", "Italy", "P17"),
            line("Honda is based in", "Honda", "Japan", "P17"),
            line("Paris is the capital of", "Paris", "France", "P1376"),
        ]
        .concat();
        std::fs::write(&j, text).unwrap();
        let f = load(&j, dedup::Policy::Refuse).unwrap();
        assert_eq!(f[0].candidates, [" Japan", " Italy"]);
        assert_eq!(f[1].candidates, [" Japan", " Italy"]);
        // A relation with one answer has nothing to rank against: no candidates.
        assert!(f[3].candidates.is_empty());
        assert!(crate::data::has_rivals(&f[..3]) && !crate::data::has_rivals(&f));
    }

    #[test]
    fn duplicate_lines_are_refused_or_merged() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("f.jsonl");
        let a = "{\"prompt\": \"The Eiffel Tower is in\", \"subject\": \"Eiffel Tower\", \"answer\": \"Paris\"}\n";
        let b = "{\"prompt\": \"Toyota is based in\", \"subject\": \"Toyota\", \"answer\": \"Japan\"}\n";
        std::fs::write(&j, format!("{a}{b}\n{a}")).unwrap();
        let e = load(&j, dedup::Policy::Refuse).unwrap_err().to_string();
        assert!(e.contains("line 4 repeats") && e.contains("line 1"), "{e}");
        let f = load(&j, dedup::Policy::Merge).unwrap();
        assert_eq!(f.len(), 2);
        // The same id twice is a duplicate too.
        let t = d.path().join("f.tsv");
        std::fs::write(
            &t,
            "id\tprompt\tsubject\tanswer\nsame\tA b\tA\tx\nsame\tC d\tC\ty\n",
        )
        .unwrap();
        let e = load(&t, dedup::Policy::Refuse).unwrap_err().to_string();
        assert!(
            e.contains("line 3 repeats") && e.contains("line 2") && e.contains("same id"),
            "{e}"
        );
    }

    #[test]
    fn missing_fields_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("f.jsonl");
        std::fs::write(&j, "{\"prompt\": \"a b\", \"subject\": \"a\", \"answer\": \"c\"}\n{\"prompt\": \"x y\", \"answer\": \"z\"}\n").unwrap();
        let e = load(&j, dedup::Policy::Refuse).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("subject"), "{e}");
        std::fs::write(
            &j,
            "{\"prompt\": \"a b\", \"subject\": \"q\", \"answer\": \"c\"}\n",
        )
        .unwrap();
        assert!(load(&j, dedup::Policy::Refuse)
            .unwrap_err()
            .to_string()
            .contains("does not occur"));
    }

    #[test]
    fn a_tsv_row_with_another_column_count_names_the_line_and_the_header() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("f.tsv");
        let header = "prompt\tsubject\tanswer\n";
        std::fs::write(
            &t,
            format!("{header}Toyota is based in\tToyota\tJapan\nSony is from\tSony\n"),
        )
        .unwrap();
        let e = load(&t, dedup::Policy::Refuse).unwrap_err().to_string();
        let want = format!(
            "{}: line 3: 2 columns, the header has 3 (prompt, subject, answer)",
            t.display()
        );
        assert_eq!(e, want);
        std::fs::write(&t, format!("{header}Sony is from\tSony\tJapan\textra\n")).unwrap();
        let e = load(&t, dedup::Policy::Refuse).unwrap_err().to_string();
        assert!(e.contains("line 2: 4 columns, the header has 3"), "{e}");
    }
}
