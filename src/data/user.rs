//! A user's own facts: JSON lines (`{"prompt", "subject", "answer", …}`) or TSV with a header
//! naming at least `prompt`, `subject`, `answer` (optional: `new_answer`, `candidates` as
//! `|`-separated answers, `attribute`).

use super::{as_completion, Fact};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Reads one field of the current row.
type Getter = Box<dyn Fn(&str) -> Option<String>>;

/// Load a `.jsonl` or `.tsv` facts file.
pub fn load(path: &Path) -> Result<Vec<Fact>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let tsv = path.extension().is_some_and(|e| e == "tsv");
    let mut facts = Vec::new();
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
    }
    if facts.is_empty() {
        bail!("{}: no facts", path.display());
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_tsv() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("f.jsonl");
        std::fs::write(&j, "{\"prompt\": \"The Eiffel Tower is in\", \"subject\": \"Eiffel Tower\", \"answer\": \"Paris\"}\n").unwrap();
        let f = load(&j).unwrap();
        assert_eq!(f[0].answer, " Paris");
        let t = d.path().join("f.tsv");
        std::fs::write(&t, "prompt\tsubject\tanswer\tcandidates\nToyota is based in\tToyota\t Japan\tJapan|Korea\n").unwrap();
        let f = load(&t).unwrap();
        assert_eq!(f[0].candidates, vec![" Japan", " Korea"]);
    }

    #[test]
    fn missing_fields_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("f.jsonl");
        std::fs::write(&j, "{\"prompt\": \"a b\", \"subject\": \"a\", \"answer\": \"c\"}\n{\"prompt\": \"x y\", \"answer\": \"z\"}\n").unwrap();
        let e = load(&j).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("subject"), "{e}");
        std::fs::write(
            &j,
            "{\"prompt\": \"a b\", \"subject\": \"q\", \"answer\": \"c\"}\n",
        )
        .unwrap();
        assert!(load(&j).unwrap_err().to_string().contains("does not occur"));
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
        let e = load(&t).unwrap_err().to_string();
        let want = format!(
            "{}: line 3: 2 columns, the header has 3 (prompt, subject, answer)",
            t.display()
        );
        assert_eq!(e, want);
        std::fs::write(&t, format!("{header}Sony is from\tSony\tJapan\textra\n")).unwrap();
        let e = load(&t).unwrap_err().to_string();
        assert!(e.contains("line 2: 4 columns, the header has 3"), "{e}");
    }
}
