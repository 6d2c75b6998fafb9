//! The fixed three-way split of a task's facts by subject: **train** (the facts training may
//! use as retain facts), **validation** (what tuning, `--tune` and any choice of settings
//! read) and **test** (reported only: no training, tuning or stopping code reads it). All the
//! facts of a subject fall in one split, decided by a hash of the subject alone, so the split
//! does not depend on the model, the seed, the order of the file or which facts are known.
//!
//! Forget sets follow the same split: `--forget validation:first-16` forgets the first 16
//! known facts of validation subjects (tune on these), `--forget test:first-16` those of test
//! subjects (report these). Held-out facts (knowledge that should stay) come from the test
//! split, about subjects other than the forget ones — from the validation split when the
//! forget set is of validation subjects, so that a tuning run reads nothing of the test split.

use super::Fact;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One of the three splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// Share of subjects in train and validation (the test split has the rest, 25 %).
pub const TRAIN_SHARE: f64 = 0.5;
pub const VALIDATION_SHARE: f64 = 0.25;

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// The split of a subject: a uniform number from the SHA-256 of the subject, cut at the
    /// shares.
    pub fn of_subject(subject: &str) -> Split {
        let h = Sha256::digest(format!("unlearn-split\0{}", subject.trim()).as_bytes());
        let x = u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) as f64 / 2f64.powi(64);
        if x < TRAIN_SHARE {
            Split::Train
        } else if x < TRAIN_SHARE + VALIDATION_SHARE {
            Split::Validation
        } else {
            Split::Test
        }
    }

    pub fn of(f: &Fact) -> Split {
        Split::of_subject(&f.subject)
    }
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Split> {
        Ok(match s {
            "train" => Split::Train,
            "validation" | "val" => Split::Validation,
            "test" => Split::Test,
            _ => bail!("split {s:?}: use train, validation or test"),
        })
    }
}

/// The facts of `facts` in `split`, in their order.
pub fn only(facts: &[Fact], split: Split) -> Vec<Fact> {
    facts
        .iter()
        .filter(|f| Split::of(f) == split)
        .cloned()
        .collect()
}

/// A `--forget` spec with an optional split prefix (`test:first-16`): the split and the rest.
pub fn parse_forget_spec(spec: &str) -> Result<(Option<Split>, &str)> {
    match spec.split_once(':') {
        Some((s, rest)) => Ok((Some(s.parse()?), rest)),
        None => Ok((None, spec)),
    }
}

/// The split a run's held-out facts and namesakes come from: validation when its forget set
/// is of validation subjects (a tuning run reads nothing of the test split), else test.
pub fn reported(forget_spec: &str) -> Split {
    match parse_forget_spec(forget_spec) {
        Ok((Some(Split::Validation), _)) => Split::Validation,
        _ => Split::Test,
    }
}

/// Which split each reported set of facts comes from, for `metrics.json`: the forget facts
/// from the split named in the `--forget` spec (`all` without a prefix), held-out facts and
/// namesakes from [`reported`], tuning facts from the validation split.
pub fn labels(forget_spec: &str) -> SplitLabels {
    let forget = match parse_forget_spec(forget_spec) {
        Ok((Some(s), _)) => s.name(),
        _ => "all",
    };
    let kept = reported(forget_spec).name();
    SplitLabels {
        forget: forget.into(),
        held_out: kept.into(),
        namesakes: kept.into(),
        tuning: "validation".into(),
        rule: "by subject: sha256 of the subject, train 50 % / validation 25 % / test 25 %".into(),
    }
}

/// Which split each set of facts of a run comes from (see [`labels`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitLabels {
    pub forget: String,
    pub held_out: String,
    pub namesakes: String,
    pub tuning: String,
    /// How facts are assigned to splits.
    pub rule: String,
}

/// Refuse to train on facts of the test split: the retain facts a trainer receives must come
/// from the train split (a forget set drawn from the test split is what is reported, and is
/// the only test-split data a run may train on).
pub fn check_training_facts(retain: &[Fact]) -> Result<()> {
    if let Some(f) = retain.iter().find(|f| Split::of(f) != Split::Train) {
        bail!(
            "internal check: retain fact {} (subject {:?}) is in the {} split; training may \
             only use train-split facts besides the forget set",
            f.id,
            f.subject,
            Split::of(f).name()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_fall_in_fixed_splits_near_their_shares() {
        let facts = crate::data::load_task("sports", crate::data::dedup::Policy::Refuse).unwrap();
        let n = facts.len() as f64;
        let share = |s| only(&facts, s).len() as f64 / n;
        let (tr, va, te) = (
            share(Split::Train),
            share(Split::Validation),
            share(Split::Test),
        );
        assert!((tr - 0.5).abs() < 0.05, "{tr}");
        assert!((va - 0.25).abs() < 0.04, "{va}");
        assert!((te - 0.25).abs() < 0.04, "{te}");
        // Fixed: the same subject always lands in the same split, whatever the spacing.
        assert_eq!(
            Split::of_subject("LeBron James"),
            Split::of_subject(" LeBron James ")
        );
        let e = check_training_facts(&only(&facts, Split::Test)[..1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("test split"), "{e}");
        check_training_facts(&only(&facts, Split::Train)).unwrap();
    }

    #[test]
    fn forget_specs_take_a_split_prefix() {
        assert_eq!(
            parse_forget_spec("test:first-16").unwrap(),
            (Some(Split::Test), "first-16")
        );
        assert_eq!(
            parse_forget_spec("validation:random-8").unwrap(),
            (Some(Split::Validation), "random-8")
        );
        assert_eq!(parse_forget_spec("first-16").unwrap(), (None, "first-16"));
        assert!(parse_forget_spec("dev:first-16").is_err());
        assert_eq!(reported("validation:first-16"), Split::Validation);
        assert_eq!(reported("test:first-16"), Split::Test);
        assert_eq!(reported("first-16"), Split::Test);
    }
}
