//! CounterFact (ROME): the 5,614 records with the full schema (paraphrase and neighbourhood
//! prompts) and the 21,919 requested rewrites.

use super::{as_completion, Fact};
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

fn rewrite_to_fact(rw: &Value, case: &Value, what: &str) -> Result<Fact> {
    let s = |v: &Value, name: &str| -> Result<String> {
        v.as_str()
            .map(|x| x.to_string())
            .with_context(|| format!("{what}: field `{name}` is missing or not a string"))
    };
    let template = s(&rw["prompt"], "requested_rewrite.prompt")?;
    let subject = s(&rw["subject"], "requested_rewrite.subject")?;
    if !template.contains("{}") {
        anyhow::bail!("{what}: requested_rewrite.prompt {template:?} has no {{}} for the subject");
    }
    let answer = as_completion(&s(
        &rw["target_true"]["str"],
        "requested_rewrite.target_true.str",
    )?);
    let new = as_completion(&s(
        &rw["target_new"]["str"],
        "requested_rewrite.target_new.str",
    )?);
    let id = case
        .as_u64()
        .map(|c| c.to_string())
        .with_context(|| format!("{what}: field `case_id` is missing"))?;
    Ok(Fact {
        id,
        prompt: template.replace("{}", &subject),
        subject,
        answer: answer.clone(),
        new_answer: Some(new.clone()),
        paraphrases: vec![],
        neighborhood: vec![],
        candidates: vec![answer, new],
        attribute: rw["relation_id"].as_str().map(|x| x.to_string()),
    })
}

/// The full-schema subset (a JSON array).
pub fn load_full(path: &Path) -> Result<Vec<Fact>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let v: Vec<Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON array", path.display()))?;
    v.iter()
        .enumerate()
        .map(|(i, r)| {
            let what = format!("{}: record {i}", path.display());
            let mut f = rewrite_to_fact(&r["requested_rewrite"], &r["case_id"], &what)?;
            let list = |k: &str| -> Vec<String> {
                r[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(|s| s.to_string()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            f.paraphrases = list("paraphrase_prompts");
            f.neighborhood = list("neighborhood_prompts");
            f.validate(&what)?;
            Ok(f)
        })
        .collect()
}

/// The requested rewrites (JSON lines); errors name the line.
pub fn load_rewrites(path: &Path) -> Result<Vec<Fact>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let what = format!("{}: line {}", path.display(), i + 1);
            let r: Value =
                serde_json::from_str(l).with_context(|| format!("{what}: not valid JSON"))?;
            let f = rewrite_to_fact(&r["requested_rewrite"], &r["case_id"], &what)?;
            f.validate(&what)?;
            Ok(f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_files() {
        let d = crate::data::data_dir().join("counterfact");
        let full = load_full(&d.join("counterfact_full_schema_subset.json")).unwrap();
        assert_eq!(full.len(), 5614);
        assert_eq!(full[0].prompt, "The mother tongue of Danielle Darrieux is");
        assert_eq!(
            (full[0].answer.as_str(), full[0].new_answer.as_deref()),
            (" French", Some(" English"))
        );
        assert_eq!(
            (full[0].paraphrases.len(), full[0].neighborhood.len()),
            (2, 10)
        );
        let rw = load_rewrites(&d.join("counterfact_requested_rewrites_all.jsonl")).unwrap();
        assert_eq!(rw.len(), 21919);
    }

    #[test]
    fn a_row_without_a_field_names_the_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.jsonl");
        std::fs::write(&p, "{\"case_id\": 0, \"requested_rewrite\": {\"prompt\": \"{} is in\", \"subject\": \"X\", \"target_true\": {\"str\": \"A\"}, \"target_new\": {\"str\": \"B\"}}}\n{\"case_id\": 1, \"requested_rewrite\": {\"prompt\": \"{} is in\", \"subject\": \"Y\"}}\n").unwrap();
        let e = load_rewrites(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("target_true"), "{e}");
    }
}
