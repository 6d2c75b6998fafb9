//! Statistics of the frozen model's reference rows at the representation layer (their mean
//! norm, the attention sink's share, KUDA's centre, per-place means) and the targets built on
//! them (RMU's steering vector, answer-balanced weights).

use crate::forget::seqs::{Place, SeqSet};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};

/// A fixed random unit vector of dimension `d` scaled to `norm` (RMU's c·u), seeded.
pub fn steering_vector(d: usize, norm: f64, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x524D_5500);
    let v: Vec<f64> = (0..d).map(|_| rng.random::<f64>()).collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|x| (x / n * norm) as f32).collect()
}

/// The reference rows (at the representation layer) of a set's rep positions, one `[n, D]`
/// f64 tensor per sequence.
fn ref_rows(set: &SeqSet) -> Result<Vec<Tensor>> {
    let (_, refs) = set
        .rep_ref
        .as_ref()
        .with_context(|| format!("{}: reference residuals not computed", set.name))?;
    set.seqs
        .iter()
        .zip(refs)
        .map(|(seq, r)| {
            let pos: Vec<u32> = seq.rep_positions.iter().map(|&p| p as u32).collect();
            let pi = Tensor::from_vec(pos, seq.rep_positions.len(), r.device())?;
            Ok(r.index_select(&pi, 0)?.to_dtype(DType::F64)?)
        })
        .collect()
}

/// Mean L2 norm of the reference rows (at the representation layer) of a set's rep positions.
pub fn mean_ref_norm(set: &SeqSet) -> Result<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for rows in ref_rows(set)? {
        let norms: Vec<f64> = rows.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
        s += norms.iter().sum::<f64>();
        n += norms.len();
    }
    Ok(s / n.max(1) as f64)
}

/// How many times larger a first-position reference row (the attention sink, see
/// [`crate::forget::seqs::Sink`]) is than the median of the other rows, as the median over the
/// set's sequences whose representation rows include their first position; `None` when none
/// does.
pub fn first_row_ratio(set: &SeqSet) -> Result<Option<f64>> {
    let (mut first, mut others) = (Vec::new(), Vec::new());
    for (seq, rows) in set.seqs.iter().zip(ref_rows(set)?) {
        let norms: Vec<f64> = rows.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
        for (&p, n) in seq.rep_positions.iter().zip(norms) {
            if p == 0 {
                first.push(n)
            } else {
                others.push(n)
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    if first.is_empty() || others.is_empty() {
        return Ok(None);
    }
    Ok(Some(median(first) / median(others).max(1e-12)))
}

/// Mean reference row over the rep positions of several sets (KUDA's centre μ).
pub fn mean_ref_row(sets: &[&SeqSet]) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    let mut n = 0usize;
    for set in sets {
        for rows in ref_rows(set)? {
            n += rows.dim(0)?;
            let s = rows.sum(0)?;
            sum = Some(match sum {
                Some(acc) => (acc + s)?,
                None => s,
            });
        }
    }
    let sum = sum.context("no reference rows to average")?;
    Ok((sum / n as f64)?.to_dtype(DType::F32)?)
}

/// Weighted mean reference row of some members of a fact set, per place in the prompt (rep
/// positions only), with the count of rows behind each. `members` pairs a member with its
/// weight (every row of a member counts with the member's weight).
pub fn mean_ref_row_by_place(
    set: &SeqSet,
    members: &[(usize, f64)],
) -> Result<BTreeMap<Place, (Tensor, usize)>> {
    let rows = ref_rows(set)?;
    let mut acc: BTreeMap<Place, (Tensor, f64, usize)> = BTreeMap::new();
    for &(i, w) in members {
        let seq = set
            .seqs
            .get(i)
            .with_context(|| format!("{}: no member {i}", set.name))?;
        for (j, &p) in seq.rep_positions.iter().enumerate() {
            let Some(place) = seq.place(p) else { continue };
            let r = rows[i].get(j)?.affine(w, 0.0)?;
            match acc.get_mut(&place) {
                Some((s, tw, n)) => {
                    *s = (&*s + r)?;
                    *tw += w;
                    *n += 1;
                }
                None => {
                    acc.insert(place, (r, w, 1));
                }
            }
        }
    }
    acc.into_iter()
        .map(|(k, (s, w, n))| Ok((k, ((s / w)?.to_dtype(DType::F32)?, n))))
        .collect()
}

/// Weights that give each answer (a fact's first target token) the same total weight among
/// `members` of a fact set: 1 / (number of answers × facts with this answer).
pub fn answer_balanced(set: &SeqSet, members: impl Iterator<Item = usize>) -> Vec<(usize, f64)> {
    let members: Vec<(usize, Option<u32>)> = members
        .map(|i| (i, set.seqs[i].targets.first().map(|&(_, t)| t)))
        .collect();
    let mut count: HashMap<Option<u32>, usize> = HashMap::new();
    for (_, a) in &members {
        *count.entry(*a).or_default() += 1;
    }
    let k = count.len() as f64;
    members
        .iter()
        .map(|(i, a)| (*i, 1.0 / (k * count[a] as f64)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forget::seqs::Seq;

    #[test]
    fn the_centre_by_place_averages_one_place_over_subjects_of_any_length() {
        let dev = candle_core::Device::Cpu;
        // Three facts whose subjects have 1, 2 and 3 tokens, then two template tokens.
        let fact = |len: usize| Seq {
            ids: (0..(2 + len + 2) as u32).collect(),
            targets: vec![(len + 3, 0)],
            rep_positions: (2..len + 4).collect(),
            subject: Some(2..2 + len),
            rivals: vec![],
        };
        let seqs = vec![fact(1), fact(2), fact(3)];
        // Reference row at position p of fact i: [10·i + p, 1].
        let refs: Vec<Tensor> = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let v: Vec<f32> = (0..s.ids.len())
                    .flat_map(|p| [(10 * i + p) as f32, 1.0])
                    .collect();
                Tensor::from_vec(v, (s.ids.len(), 2), &dev).unwrap()
            })
            .collect();
        let mut set = SeqSet::new("retain", seqs);
        set.rep_ref = Some((1, refs));
        // Facts 1 and 2 only (fact 0 is a known subject).
        let means = mean_ref_row_by_place(&set, &[(1, 1.0), (2, 1.0)]).unwrap();
        let at = |pl: Place| {
            let (m, n) = &means[&pl];
            (m.to_vec1::<f32>().unwrap()[0], *n)
        };
        // Last subject token: fact 1 at 3, fact 2 at 4 → (13 + 24) / 2.
        assert_eq!(at(Place::LastSubject), (18.5, 2));
        // Other subject tokens: fact 1 at 2, fact 2 at 2 and 3 → (12 + 22 + 23) / 3.
        assert_eq!(at(Place::Subject), (19.0, 3));
        // First template token: fact 1 at 4, fact 2 at 5.
        assert_eq!(at(Place::After(0)), (19.5, 2));
        assert_eq!(at(Place::After(1)), (20.5, 2));
        assert_eq!(means.len(), 4);
        // Weighted: fact 1 three times fact 2 at the last subject token: (3·13 + 24) / 4.
        let w = mean_ref_row_by_place(&set, &[(1, 3.0), (2, 1.0)]).unwrap();
        assert_eq!(w[&Place::LastSubject].0.to_vec1::<f32>().unwrap()[0], 15.75);
        assert!(mean_ref_row_by_place(&set, &[(3, 1.0)]).is_err());
    }

    #[test]
    fn balanced_weights_give_each_answer_the_same_total() {
        let fact = |answer: u32| Seq {
            ids: vec![1, 2, 3],
            targets: vec![(2, answer)],
            rep_positions: vec![1, 2],
            subject: Some(1..2),
            rivals: vec![],
        };
        let set = SeqSet::new("retain", vec![fact(7), fact(7), fact(7), fact(9), fact(5)]);
        let w = answer_balanced(&set, 0..4);
        // Answers 7 (three facts) and 9 (one) among members 0..4: 1/6 each, and 1/2.
        let want = [1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 0.5];
        for ((i, got), (j, want)) in w.iter().zip(want.iter().enumerate()) {
            assert_eq!(*i, j);
            assert!((got - want).abs() < 1e-12, "{w:?}");
        }
    }
}
