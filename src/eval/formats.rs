//! Other forms of the same fact, to see whether knowledge is gone or only one phrasing of it:
//! the subject capitalized ("LEBRON JAMES") or dashed ("L-e-B-r-o-n J-a-m-e-s"), as in
//! Mechanistic Unlearning, and paraphrased templates for Sports Facts.

use crate::data::Fact;

/// A named way of rewriting a fact's prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Capitalized,
    Dashed,
    /// The `i`-th paraphrase template (sports only).
    Template(usize),
}

impl Format {
    pub fn name(&self) -> String {
        match self {
            Format::Capitalized => "capitalized".into(),
            Format::Dashed => "dashed".into(),
            Format::Template(i) => format!("template_{}", i + 1),
        }
    }
}

/// Paraphrase templates of "<subject> plays the sport of" (one-shot, like the original).
pub const SPORT_TEMPLATES: [&str; 3] = [
    "Fact: Tiger Woods is known for playing golf\nFact: {} is known for playing",
    "Q: Which sport does Tiger Woods play? A: golf\nQ: Which sport does {} play? A:",
    "Tiger Woods is a professional golf player. {} is a professional",
];

/// Letters of each word joined by dashes.
pub fn dashed(s: &str) -> String {
    s.split(' ')
        .map(|w| w.chars().map(String::from).collect::<Vec<_>>().join("-"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fact in another form (the subject's last occurrence rewritten), or None when the
/// format does not apply (templates need a sports fact).
pub fn rewrite(f: &Fact, fmt: Format) -> Option<Fact> {
    let new_subject = match fmt {
        Format::Capitalized => f.subject.to_uppercase(),
        Format::Dashed => dashed(&f.subject),
        Format::Template(i) => {
            let sports = f.candidates.iter().any(|c| c.trim() == "basketball");
            if !sports {
                return None;
            }
            let prompt = SPORT_TEMPLATES.get(i)?.replace("{}", &f.subject);
            return Some(Fact {
                prompt,
                ..f.clone()
            });
        }
    };
    with_subject(f, new_subject)
}

/// The fact with its subject's last occurrence in the prompt replaced by `new_subject`, or
/// None when the prompt does not contain the subject.
pub fn with_subject(f: &Fact, new_subject: String) -> Option<Fact> {
    let at = f.prompt.rfind(&f.subject)?;
    let prompt = format!(
        "{}{}{}",
        &f.prompt[..at],
        new_subject,
        &f.prompt[at + f.subject.len()..]
    );
    Some(Fact {
        prompt,
        subject: new_subject,
        ..f.clone()
    })
}

/// Every format that applies to the task of `facts`.
pub fn formats_for(facts: &[Fact]) -> Vec<Format> {
    let mut v = vec![Format::Capitalized, Format::Dashed];
    if facts
        .first()
        .is_some_and(|f| rewrite(f, Format::Template(0)).is_some())
    {
        v.extend((0..SPORT_TEMPLATES.len()).map(Format::Template));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_the_subject() {
        assert_eq!(dashed("LeBron James"), "L-e-B-r-o-n J-a-m-e-s");
        let f = crate::data::example_fact();
        let c = rewrite(&f, Format::Capitalized).unwrap();
        assert!(c.prompt.ends_with("Fact: LEBRON JAMES plays the sport of"));
        assert!(c.prompt.starts_with("Fact: Tiger Woods"));
        let t = rewrite(&f, Format::Template(1)).unwrap();
        assert!(t.prompt.ends_with("Which sport does LeBron James play? A:"));
        assert_eq!(formats_for(&[f]).len(), 5);
    }
}
