//! KUDA's focus (`kuda.focus`): every few steps, read how strongly the model still gives each
//! forget fact's answer over its rivals, and weigh that fact's rows in the deviation loss by it.
//! The total forget pressure stays what it was (the weights average 1 over the forget facts);
//! it moves from the facts already forgotten, whose further deviation only costs the retain
//! facts, to those the model still knows.

use crate::forget::seqs::SeqSet;
use crate::model::Transformer;
use anyhow::{bail, Result};

/// Where one forget fact stands: its answer's share of the softmax over the answer and its
/// rivals at the last prompt position, and whether the answer still ranks first among them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    pub share: f64,
    pub kept: bool,
}

/// The standing of every fact of `set` under the model's current weights (a full forward of
/// the prompts, in batches).
pub fn standings(model: &Transformer, set: &SeqSet, pad: u32) -> Result<Vec<Standing>> {
    let mut prompts = Vec::with_capacity(set.len());
    for s in &set.seqs {
        let Some(&(at, _)) = s.targets.first() else {
            bail!("a forget fact without an answer token");
        };
        if s.rivals.is_empty() {
            bail!(
                "kuda.focus and stop_at_forget_acc read each forget fact's answer against \
                 the task's other candidates, and this task's facts have none"
            );
        }
        prompts.push(s.ids[..=at].to_vec());
    }
    // Prompts of similar length batched together; each row reduced inside its batch.
    crate::model::scoring::bucketed(&prompts, 32, |idx, chunk| {
        let rows = model.last_logits(chunk, pad)?;
        Ok(idx
            .iter()
            .zip(rows)
            .map(|(&i, row)| {
                let s = &set.seqs[i];
                let a = row[s.targets[0].1 as usize] as f64;
                let r: Vec<f64> = s.rivals.iter().map(|&t| row[t as usize] as f64).collect();
                let top = r.iter().fold(a, |m, &x| m.max(x));
                let z: f64 = (a - top).exp() + r.iter().map(|&x| (x - top).exp()).sum::<f64>();
                Standing {
                    share: (a - top).exp() / z,
                    kept: r.iter().all(|&x| x < a),
                }
            })
            .collect())
    })
}

/// Per-fact weights share^γ (a share is floored at 10⁻³), scaled to average 1: γ = 0 weighs
/// every fact alike; larger γ puts more of the pressure on the facts still known.
pub fn weights(standings: &[Standing], gamma: f64) -> Vec<f64> {
    let s: Vec<f64> = standings
        .iter()
        .map(|x| x.share.max(1e-3).powf(gamma))
        .collect();
    let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
    s.iter().map(|x| x / mean).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forget::seqs::Seq;
    use crate::model::transformer::tests::tiny_model;
    use crate::model::Arch;

    #[test]
    fn weights_average_one_and_follow_the_share() {
        let st = |share: f64| Standing { share, kept: true };
        let w = weights(&[st(0.9), st(0.3), st(0.0)], 2.0);
        assert!((w.iter().sum::<f64>() / 3.0 - 1.0).abs() < 1e-12);
        assert!(w[0] > w[1] && w[1] > w[2] && w[2] > 0.0, "{w:?}");
        assert!((w[0] / w[1] - 9.0).abs() < 1e-9);
        let flat = weights(&[st(0.9), st(0.3)], 0.0);
        assert_eq!(flat, vec![1.0, 1.0]);
    }

    #[test]
    fn standings_read_the_last_prompt_position_of_each_fact_alone() {
        let model = tiny_model(Arch::Gemma3);
        // Prompts of different lengths (left padding must not change what they give).
        let fact = |ids: Vec<u32>, answer: u32| {
            let n = ids.len();
            Seq {
                ids,
                targets: vec![(n - 1, answer)],
                rep_positions: vec![n - 1],
                subject: Some(1..2),
                rivals: vec![5, 6],
            }
        };
        let seqs = vec![fact(vec![2, 9, 4, 7, 3], 8), fact(vec![2, 11, 3], 9)];
        let set = SeqSet::new("forget", seqs.clone());
        let got = standings(&model, &set, 0).unwrap();
        for (s, g) in seqs.iter().zip(&got) {
            // One prompt alone: no padding.
            let one = crate::model::Batch::new(
                std::slice::from_ref(&s.ids),
                0,
                crate::model::PadSide::Left,
                model.device(),
            )
            .unwrap();
            let opts = crate::model::RunOpts {
                logits: crate::model::LogitsAt::Last,
                ..Default::default()
            };
            let logits = model.run(&one, &opts).unwrap().logits.unwrap();
            let row: Vec<f64> = logits
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let answer = s.targets[0].1;
            let z = |t: u32| row[t as usize].exp();
            let want = z(answer) / (z(answer) + s.rivals.iter().map(|&t| z(t)).sum::<f64>());
            assert!((g.share - want).abs() < 1e-4, "{} vs {want}", g.share);
            let kept = s
                .rivals
                .iter()
                .all(|&t| row[t as usize] < row[answer as usize]);
            assert_eq!(g.kept, kept);
        }
    }
}
