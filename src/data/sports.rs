//! Sports Facts (Mechanistic Unlearning): athlete → sport with the one-shot prompt of
//! `sports.csv` ("Fact: Tiger Woods plays the sport of golf\nFact: {athlete} plays the sport of").

use super::{as_completion, Fact};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The three sports, as completions.
pub const SPORTS: [&str; 3] = [" football", " basketball", " baseball"];

/// Read `sports.csv`. Malformed rows are errors naming the file and line.
pub fn load(path: &Path) -> Result<Vec<Fact>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    let headers = rdr
        .headers()
        .with_context(|| format!("{}: no header row", path.display()))?
        .clone();
    let col = |name: &str| -> Result<usize> {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: column `{name}` is missing", path.display()))
    };
    let (c_id, c_ath, c_sport, c_prompt) = (
        col("Unnamed: 0").or_else(|_| col(""))?,
        col("athlete")?,
        col("sport")?,
        col("prompt")?,
    );
    let c_inject = headers
        .iter()
        .position(|h| h == "inject_sport_without_golf");
    let mut facts = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.with_context(|| format!("{}: row {line}: cannot parse", path.display()))?;
        let field = |c: usize, name: &str| -> Result<String> {
            match rec.get(c) {
                Some(v) if !v.trim().is_empty() => Ok(v.to_string()),
                _ => bail!(
                    "{}: row {line}: field `{name}` is missing or empty",
                    path.display()
                ),
            }
        };
        let sport = field(c_sport, "sport")?;
        let answer = as_completion(&sport);
        if !SPORTS.contains(&answer.as_str()) {
            bail!(
                "{}: row {line}: sport {sport:?} is not one of football, basketball, baseball",
                path.display()
            );
        }
        let fact = Fact {
            id: field(c_id, "Unnamed: 0")?,
            prompt: field(c_prompt, "prompt")?,
            subject: field(c_ath, "athlete")?,
            answer,
            new_answer: c_inject
                .and_then(|c| rec.get(c))
                .filter(|s| !s.is_empty())
                .map(as_completion),
            paraphrases: vec![],
            neighborhood: vec![],
            candidates: SPORTS.iter().map(|s| s.to_string()).collect(),
            attribute: Some(sport),
        };
        fact.validate(&format!("{}: row {line}", path.display()))?;
        facts.push(fact);
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shipped_file() {
        let facts = load(&crate::data::data_dir().join("sports_facts/sports.csv")).unwrap();
        assert_eq!(facts.len(), 1559);
        let f = &facts[0];
        assert_eq!(f.subject, "DeForest Buckner");
        assert_eq!(f.answer, " football");
        assert!(f
            .prompt
            .ends_with("Fact: DeForest Buckner plays the sport of"));
        assert_eq!(
            facts.iter().filter(|f| f.answer == " basketball").count(),
            490
        );
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.csv");
        std::fs::write(&p, "Unnamed: 0,athlete,sport,prompt\n1,A B,football,Fact: A B plays the sport of\n2,,football,x\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("s.csv") && e.contains("row 3") && e.contains("athlete"),
            "{e}"
        );
        std::fs::write(
            &p,
            "Unnamed: 0,athlete,sport,prompt\n1,A B,curling,Fact: A B plays the sport of\n",
        )
        .unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("curling"));
        std::fs::write(&p, "Unnamed: 0,athlete,prompt\n").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("column `sport`"));
    }
}
