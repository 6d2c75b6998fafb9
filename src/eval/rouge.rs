//! ROUGE-L (longest common subsequence of words) as MUSE uses it for KnowMem and VerbMem:
//! recall = LCS / reference length, precision = LCS / candidate length, F1 their harmonic mean.
//! Words are lower-cased and split on anything that is not a letter or a digit (the
//! `rouge_score` package's default tokenizer without stemming).

/// Lower-cased alphanumeric words.
pub fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Length of the longest common subsequence (O(n·m) time, O(m) memory).
pub fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L scores of a candidate against a reference.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RougeL {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

pub fn rouge_l(candidate: &str, reference: &str) -> RougeL {
    let (c, r) = (words(candidate), words(reference));
    if c.is_empty() || r.is_empty() {
        return RougeL {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
    }
    let l = lcs(&c, &r) as f64;
    let (p, rc) = (l / c.len() as f64, l / r.len() as f64);
    RougeL {
        precision: p,
        recall: rc,
        f1: if l == 0.0 {
            0.0
        } else {
            2.0 * p * rc / (p + rc)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_strings() {
        // LCS of "the cat sat on the mat" and "the cat lay on a mat" = the cat on mat (4).
        let s = rouge_l("The cat lay on a mat.", "the cat sat on the mat");
        assert!((s.recall - 4.0 / 6.0).abs() < 1e-12);
        assert!((s.precision - 4.0 / 6.0).abs() < 1e-12);
        assert!((s.f1 - 4.0 / 6.0).abs() < 1e-12);
        // Order matters: reversed words share a subsequence of one.
        let s = rouge_l("c b a", "a b c");
        assert!((s.recall - 1.0 / 3.0).abs() < 1e-12);
        // Identical up to case and punctuation.
        assert_eq!(rouge_l("Hello, World!", "hello world").f1, 1.0);
        // Candidate longer than the reference: recall 1, precision 2/4.
        let s = rouge_l("paris is in france", "paris france");
        assert_eq!(s.recall, 1.0);
        assert_eq!(s.precision, 0.5);
        assert_eq!(rouge_l("", "x").f1, 0.0);
        assert_eq!(rouge_l("a b", "c d").f1, 0.0);
    }
}
