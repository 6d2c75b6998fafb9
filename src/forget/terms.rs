//! Loss terms and their gradients with respect to what the model outputs: target logits
//! (cross-entropy, gradient ascent, −log(1−p), NPO, SimNPO) or the residual stream at the
//! representation layer (KUDA's deviation loss, MSE to the frozen model, RMU's steering).
//! Each returns the loss and d(loss)/d(output); the transformer's backward does the rest.

use crate::forget::seqs::Sink;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// A loss on the log-probabilities of target tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LogitLoss {
    /// Mean cross-entropy (retain, general text, injecting a new answer).
    Ce,
    /// Gradient ascent: minus the mean cross-entropy.
    Ascent,
    /// Mechanistic Unlearning's forget loss: mean −log(1 − p(target)).
    Unlikely,
    /// NPO: (2/β)·softplus(β·(log π − log π_ref)) per sequence.
    Npo { beta: f64 },
    /// SimNPO: −(2/β)·log σ(−(β/|y|)·log π − γ) per sequence.
    SimNpo { beta: f64, gamma: f64 },
}

impl LogitLoss {
    /// A mean over sequences (NPO, SimNPO) rather than over target rows.
    pub fn per_sequence(&self) -> bool {
        matches!(self, LogitLoss::Npo { .. } | LogitLoss::SimNpo { .. })
    }
}

/// Loss and d(loss)/d(log p of each row), given the rows' log-probabilities, the number of
/// rows of each sequence, and (NPO) the reference sum per sequence.
pub fn logit_loss(
    kind: LogitLoss,
    lp: &[f64],
    rows_per_seq: &[usize],
    reference: Option<&[f64]>,
) -> Result<(f64, Vec<f64>)> {
    let n = lp.len() as f64;
    let nseq = rows_per_seq.len() as f64;
    if lp.is_empty() {
        bail!("loss over no target rows");
    }
    if lp.iter().any(|x| x.is_nan()) {
        // Let the trainer see it (clamps below would hide a NaN).
        return Ok((f64::NAN, vec![0.0; lp.len()]));
    }
    let per_seq = |f: &dyn Fn(usize, f64, usize) -> (f64, f64)| -> (f64, Vec<f64>) {
        let (mut loss, mut c, mut at) = (0.0, Vec::with_capacity(lp.len()), 0);
        for (s, &k) in rows_per_seq.iter().enumerate() {
            let sum: f64 = lp[at..at + k].iter().sum();
            let (l, dl_ds) = f(s, sum, k);
            loss += l / nseq;
            c.extend(std::iter::repeat_n(dl_ds / nseq, k));
            at += k;
        }
        (loss, c)
    };
    Ok(match kind {
        LogitLoss::Ce => (-lp.iter().sum::<f64>() / n, vec![-1.0 / n; lp.len()]),
        LogitLoss::Ascent => (lp.iter().sum::<f64>() / n, vec![1.0 / n; lp.len()]),
        LogitLoss::Unlikely => {
            let mut loss = 0.0;
            let c = lp
                .iter()
                .map(|&x| {
                    let p = x.exp().min(1.0 - 1e-6);
                    loss -= (1.0 - p).ln() / n;
                    p / (1.0 - p) / n
                })
                .collect();
            (loss, c)
        }
        LogitLoss::Npo { beta } => {
            let r = match reference {
                Some(r) => r,
                None => bail!("NPO needs the reference model's log-probabilities"),
            };
            per_seq(&|s, sum, _| {
                let d = beta * (sum - r[s]);
                (2.0 / beta * softplus(d), 2.0 * sigmoid(d))
            })
        }
        LogitLoss::SimNpo { beta, gamma } => per_seq(&|_, sum, k| {
            let u = -beta / k as f64 * sum - gamma;
            (
                -2.0 / beta * log_sigmoid(u),
                2.0 / k as f64 * (1.0 - sigmoid(u)),
            )
        }),
    })
}

/// d(loss)/d(logits) `[N, V]` from d(loss)/d(log p of row i's target) `c` and the softmax:
/// c_i · (onehot_i − softmax_i).
pub fn logits_grad(c: &[f64], targets: &[u32], softmax: &Tensor) -> Result<Tensor> {
    let (n, _) = softmax.dims2()?;
    let dev = softmax.device();
    let cf: Vec<f32> = c.iter().map(|&x| x as f32).collect();
    let ct = Tensor::from_vec(cf, (n, 1), dev)?;
    let idx = Tensor::from_vec(targets.to_vec(), (n, 1), dev)?;
    let onehot = Tensor::zeros_like(softmax)?.scatter_add(
        &idx,
        &Tensor::ones((n, 1), DType::F32, dev)?,
        1,
    )?;
    Ok((onehot - softmax)?.broadcast_mul(&ct)?)
}

/// A loss on residual rows `h` `[M, D]` at the representation layer.
#[derive(Clone, Debug, PartialEq)]
pub enum ReprLoss {
    /// KUDA: mean exp(−β·(1 − cos(h, h₀))) (the trainer passes the rows relative to a
    /// centre when KUDA's `center` sets one).
    Deviation { beta: f64 },
    /// Σ‖h − h₀‖² / (M · mean‖h₀‖²): stay where the frozen model was. Under
    /// [`Sink::Drop`] the mean in the scale leaves out the rows at a sequence's first position
    /// (the attention sink, whose norm would set it), while the sum still counts their change.
    RefMse { sink: Sink },
    /// RMU: Σ‖h − c·u‖² / (M · c²) for the fixed vector `target` = c·u.
    Steer { target: Vec<f32> },
}

/// Loss and d(loss)/dh for rows `h` and their references `h0` (same shape).
pub fn repr_loss(kind: &ReprLoss, h: &Tensor, h0: &Tensor) -> Result<(f64, Tensor)> {
    repr_loss_weighted(kind, h, h0, None, None)
}

/// [`repr_loss`] with each row's share scaled by `weights` (one per row; a loss that is a
/// mean over rows becomes the weighted sum (1/M)·Σ wᵣ·lᵣ): KUDA's focus weighs the rows of
/// the forget facts the model still knows more. `firsts` marks the rows at a sequence's first
/// position (for [`ReprLoss::RefMse`]'s scale under [`Sink::Drop`]; none: no row is).
pub fn repr_loss_weighted(
    kind: &ReprLoss,
    h: &Tensor,
    h0: &Tensor,
    weights: Option<&[f64]>,
    firsts: Option<&[bool]>,
) -> Result<(f64, Tensor)> {
    let scale = repr_scale(kind, h0, firsts)?;
    repr_loss_scaled(kind, h, h0, weights, firsts, scale)
}

/// The denominator a representation loss divides its row sum by, from the reference rows
/// `h0` `[M, D]` of the whole batch: M for [`ReprLoss::Deviation`], M·mean‖h₀‖² for
/// [`ReprLoss::RefMse`] (first rows left out of the mean under [`Sink::Drop`]), M·c² for
/// [`ReprLoss::Steer`]. A batch whose rows are taken a part at a time
/// ([`repr_loss_scaled`]) gets the loss and gradient of the whole batch.
pub fn repr_scale(kind: &ReprLoss, h0: &Tensor, firsts: Option<&[bool]>) -> Result<f64> {
    let (m, _) = h0.dims2()?;
    check_rows(m, firsts)?;
    let mf = m as f64;
    Ok(match kind {
        ReprLoss::Deviation { .. } => mf,
        ReprLoss::RefMse { sink } => {
            let h0 = if h0.dtype() == DType::F64 {
                h0.clone()
            } else {
                h0.to_dtype(DType::F32)?
            };
            let ms0 = match (sink, firsts) {
                (Sink::Drop, Some(firsts)) if firsts.contains(&false) => {
                    let sq: Vec<f64> = h0.sqr()?.sum(1)?.to_dtype(DType::F64)?.to_vec1()?;
                    let kept: Vec<f64> = sq
                        .iter()
                        .zip(firsts)
                        .filter(|(_, &first)| !first)
                        .map(|(&q, _)| q)
                        .collect();
                    kept.iter().sum::<f64>() / kept.len() as f64
                }
                // Every row counts (a batch of first rows only is scaled by them).
                _ => {
                    h0.sqr()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?
                        / mf
                }
            };
            mf * ms0
        }
        ReprLoss::Steer { target } => mf * target.iter().map(|&x| (x as f64).powi(2)).sum::<f64>(),
    })
}

/// A representation loss needs rows, and one first-row mark per row when marks are given.
fn check_rows(m: usize, firsts: Option<&[bool]>) -> Result<()> {
    if m == 0 {
        bail!("representation loss over no rows");
    }
    if firsts.is_some_and(|f| f.len() != m) {
        bail!(
            "{} first-row marks for {m} rows",
            firsts.map_or(0, |f| f.len())
        );
    }
    Ok(())
}

/// [`repr_loss_weighted`] over some rows of a batch, divided by the whole batch's
/// [`repr_scale`]: the parts' losses and gradients add up to the whole batch's.
pub fn repr_loss_scaled(
    kind: &ReprLoss,
    h: &Tensor,
    h0: &Tensor,
    weights: Option<&[f64]>,
    firsts: Option<&[bool]>,
    scale: f64,
) -> Result<(f64, Tensor)> {
    // f32 for the model's tensors; f64 stays f64 (finite-difference checks).
    let dt = if h.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let h = h.to_dtype(dt)?;
    let h0 = h0.to_dtype(dt)?;
    let (m, d) = h.dims2()?;
    check_rows(m, firsts)?;
    let (rows, grad) = per_row(kind, &h, &h0, d, scale)?;
    let (rows, grad) = match weights {
        None => (rows, grad),
        Some(w) => {
            if w.len() != m {
                bail!("{} row weights for {m} rows", w.len());
            }
            let wt = Tensor::from_iter(w.iter().copied(), h.device())?
                .to_dtype(dt)?
                .reshape((m, 1))?;
            ((&rows * &wt)?, grad.broadcast_mul(&wt)?)
        }
    };
    let loss = rows.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok((loss, grad))
}

/// Each row's share of the loss `[M, 1]` (they sum to the loss) and d(loss)/dh `[M, D]`,
/// the row sum divided by `scale` ([`repr_scale`]).
fn per_row(
    kind: &ReprLoss,
    h: &Tensor,
    h0: &Tensor,
    d: usize,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let dt = h.dtype();
    match kind {
        ReprLoss::RefMse { .. } => {
            let diff = (h - h0)?;
            let rows = diff.sqr()?.sum_keepdim(1)?.affine(1.0 / scale, 0.0)?;
            Ok((rows, diff.affine(2.0 / scale, 0.0)?))
        }
        ReprLoss::Steer { target } => {
            if target.len() != d {
                bail!(
                    "steering vector has {} entries, the residual {d}",
                    target.len()
                );
            }
            let t = Tensor::from_slice(target, (1, d), h.device())?.to_dtype(dt)?;
            let diff = h.broadcast_sub(&t)?;
            let rows = diff.sqr()?.sum_keepdim(1)?.affine(1.0 / scale, 0.0)?;
            Ok((rows, diff.affine(2.0 / scale, 0.0)?))
        }
        ReprLoss::Deviation { beta } => {
            let dot = (h * h0)?.sum_keepdim(1)?;
            let nh = h.sqr()?.sum_keepdim(1)?.sqrt()?;
            let n0 = h0.sqr()?.sum_keepdim(1)?.sqrt()?;
            let cos = (&dot / (&nh * &n0)?)?;
            // L_i = exp(−β(1 − cos_i)); dL_i/dh = L_i·β·(h0/(|h||h0|) − cos·h/|h|²).
            let li = cos.affine(*beta, -*beta)?.exp()?;
            let dcos =
                (h0.broadcast_div(&(&nh * &n0)?)? - h.broadcast_mul(&(&cos / nh.sqr()?)?)?)?;
            let s = li.affine(*beta / scale, 0.0)?;
            Ok((li.affine(1.0 / scale, 0.0)?, dcos.broadcast_mul(&s)?))
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn log_sigmoid(x: f64) -> f64 {
    -softplus(-x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Central differences of a scalar function of a vector.
    fn fd(f: &dyn Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
        (0..x.len())
            .map(|i| {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                a[i] += 1e-6;
                b[i] -= 1e-6;
                (f(&a) - f(&b)) / 2e-6
            })
            .collect()
    }

    #[test]
    fn logit_losses_match_finite_differences() {
        let lp = [-0.3, -1.2, -0.05, -2.5, -0.7];
        let rows = [2, 1, 2];
        let reference = [-1.0, -0.2, -0.9];
        for kind in [
            LogitLoss::Ce,
            LogitLoss::Ascent,
            LogitLoss::Unlikely,
            LogitLoss::Npo { beta: 0.1 },
            LogitLoss::Npo { beta: 2.0 },
            LogitLoss::SimNpo {
                beta: 2.5,
                gamma: 0.5,
            },
        ] {
            let (_, c) = logit_loss(kind, &lp, &rows, Some(&reference)).unwrap();
            let f = |x: &[f64]| logit_loss(kind, x, &rows, Some(&reference)).unwrap().0;
            for (a, b) in c.iter().zip(fd(&f, &lp)) {
                assert!((a - b).abs() < 1e-6, "{kind:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn npo_at_the_reference_is_2_ln2_over_beta() {
        let (l, _) =
            logit_loss(LogitLoss::Npo { beta: 0.5 }, &[-1.0], &[1], Some(&[-1.0])).unwrap();
        assert!((l - 4.0 * 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn logits_grad_is_the_chain_rule_through_log_softmax() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[0.3f32, -1.0, 2.0], [1.0, 0.5, -0.5]], &dev).unwrap();
        let targets = [2u32, 0];
        let c = [0.7, -1.3];
        let sm = crate::model::ops::softmax_last(&z).unwrap();
        let g: Vec<Vec<f32>> = logits_grad(&c, &targets, &sm).unwrap().to_vec2().unwrap();
        let zv: Vec<Vec<f32>> = z.to_vec2().unwrap();
        for r in 0..2 {
            let f = |x: &[f64]| {
                let lse = x.iter().map(|v| v.exp()).sum::<f64>().ln();
                c[r] * (x[targets[r] as usize] - lse)
            };
            let x: Vec<f64> = zv[r].iter().map(|&v| v as f64).collect();
            for (a, b) in g[r].iter().zip(fd(&f, &x)) {
                assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn repr_losses_match_finite_differences() {
        let dev = Device::Cpu;
        let hv = [0.5f64, -1.0, 2.0, 0.1, 1.5, -0.3];
        let h0v = [0.4f64, -0.8, 2.5, -0.2, 1.0, 0.6];
        let h0 = Tensor::from_slice(&h0v, (2, 3), &dev).unwrap();
        for kind in [
            ReprLoss::Deviation { beta: 3.0 },
            ReprLoss::RefMse { sink: Sink::Keep },
            ReprLoss::Steer {
                target: vec![1.0, 2.0, -1.0],
            },
        ] {
            let h = Tensor::from_slice(&hv, (2, 3), &dev).unwrap();
            let (_, g) = repr_loss(&kind, &h, &h0).unwrap();
            let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            let f = |x: &[f64]| {
                let h = Tensor::from_slice(x, (2, 3), &dev).unwrap();
                repr_loss(&kind, &h, &h0).unwrap().0
            };
            for (a, b) in g.iter().zip(fd(&f, &hv)) {
                assert!(
                    (a - b).abs() < 1e-6 * (1.0 + b.abs()),
                    "{kind:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn row_weights_scale_each_rows_share_and_match_finite_differences() {
        let dev = Device::Cpu;
        let hv = [0.5f64, -1.0, 2.0, 0.1, 1.5, -0.3];
        let h0v = [0.4f64, -0.8, 2.5, -0.2, 1.0, 0.6];
        let h0 = Tensor::from_slice(&h0v, (2, 3), &dev).unwrap();
        let w = [0.25, 1.75];
        for kind in [
            ReprLoss::Deviation { beta: 0.3 },
            ReprLoss::RefMse { sink: Sink::Keep },
            ReprLoss::Steer {
                target: vec![1.0, 2.0, -1.0],
            },
        ] {
            let loss = |x: &[f64], w: Option<&[f64]>| {
                let h = Tensor::from_slice(x, (2, 3), &dev).unwrap();
                repr_loss_weighted(&kind, &h, &h0, w, None).unwrap().0
            };
            // Weights (1, 1) change nothing; (2, 0) counts the first row twice, the second not.
            assert!((loss(&hv, Some(&[1.0, 1.0])) - loss(&hv, None)).abs() < 1e-12);
            let one = |r: usize| {
                let h = Tensor::from_slice(&hv[3 * r..3 * r + 3], (1, 3), &dev).unwrap();
                let h0r = h0.narrow(0, r, 1).unwrap();
                repr_loss(&kind, &h, &h0r).unwrap().0
            };
            if !matches!(kind, ReprLoss::RefMse { .. }) {
                // (RefMse's scale is the mean reference norm of all rows.)
                assert!(
                    (loss(&hv, Some(&[2.0, 0.0])) - one(0)).abs() < 1e-9,
                    "{kind:?}"
                );
            }
            let h = Tensor::from_slice(&hv, (2, 3), &dev).unwrap();
            let (_, g) = repr_loss_weighted(&kind, &h, &h0, Some(&w), None).unwrap();
            let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            for (a, b) in g.iter().zip(fd(&|x| loss(x, Some(&w)), &hv)) {
                assert!(
                    (a - b).abs() < 1e-6 * (1.0 + b.abs()),
                    "{kind:?}: {a} vs {b}"
                );
            }
        }
        let h = Tensor::from_slice(&hv, (2, 3), &dev).unwrap();
        let e = repr_loss_weighted(
            &ReprLoss::RefMse { sink: Sink::Keep },
            &h,
            &h0,
            Some(&[1.0]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("1 row weights for 2 rows"), "{e}");
    }

    /// Under `sink = "drop"` the retain MSE's scale leaves out the first rows (a sink of norm
    /// 100 here would set it) while their change still counts, against the other rows' scale;
    /// the gradient matches finite differences, and without first rows, or kept, nothing changes.
    #[test]
    fn a_dropped_sink_leaves_the_retain_scale_and_stays_in_the_loss() {
        let dev = Device::Cpu;
        let h0v = [100.0f64, 0.0, 0.0, 0.4, -0.8, 2.5, -0.2, 1.0, 0.6];
        let hv = [98.0f64, 0.5, 0.0, 0.5, -1.0, 2.0, 0.1, 1.5, -0.3];
        let h0 = Tensor::from_slice(&h0v, (3, 3), &dev).unwrap();
        let firsts = [true, false, false];
        let drop = ReprLoss::RefMse { sink: Sink::Drop };
        let keep = ReprLoss::RefMse { sink: Sink::Keep };
        let loss = |kind: &ReprLoss, x: &[f64], firsts: Option<&[bool]>| {
            let h = Tensor::from_slice(x, (3, 3), &dev).unwrap();
            repr_loss_weighted(kind, &h, &h0, None, firsts).unwrap().0
        };
        let sq = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
        let diff: Vec<f64> = hv.iter().zip(&h0v).map(|(a, b)| a - b).collect();
        let ordinary = (sq(&h0v[3..6]) + sq(&h0v[6..9])) / 2.0;
        let want = sq(&diff) / (3.0 * ordinary);
        let got = loss(&drop, &hv, Some(&firsts));
        assert!((got - want).abs() < 1e-12 * want, "{got} vs {want}");
        // The sink's change is most of it; with the sink in the scale, everything would count
        // about 740 times less.
        assert!(sq(&diff[..3]) / (3.0 * ordinary) > 0.5 * got);
        let kept = loss(&keep, &hv, Some(&firsts));
        assert!((kept - sq(&diff) / (3.0 * sq(&h0v) / 3.0)).abs() < 1e-12);
        assert!(got > 500.0 * kept);
        assert_eq!(loss(&drop, &hv, None), kept);
        assert!((loss(&drop, &hv, Some(&[false; 3])) - kept).abs() < 1e-12 * kept);
        let h = Tensor::from_slice(&hv, (3, 3), &dev).unwrap();
        let (_, g) = repr_loss_weighted(&drop, &h, &h0, None, Some(&firsts)).unwrap();
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in g.iter().zip(fd(&|x| loss(&drop, x, Some(&firsts)), &hv)) {
            assert!((a - b).abs() < 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let e = repr_loss_weighted(&drop, &h, &h0, None, Some(&[true])).unwrap_err();
        assert!(
            e.to_string().contains("1 first-row marks for 3 rows"),
            "{e}"
        );
    }

    #[test]
    fn deviation_is_one_at_the_reference_and_fades() {
        let dev = Device::Cpu;
        let h0 = Tensor::new(&[[1f32, 2.0, 3.0]], &dev).unwrap();
        let (l, _) = repr_loss(&ReprLoss::Deviation { beta: 2.0 }, &h0, &h0).unwrap();
        assert!((l - 1.0).abs() < 1e-6);
        let opposite = h0.neg().unwrap();
        let (l, g) = repr_loss(&ReprLoss::Deviation { beta: 2.0 }, &opposite, &h0).unwrap();
        assert!((l - (-4f64).exp()).abs() < 1e-6);
        let gn: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(gn < 1e-6, "the gradient vanishes at cos = −1");
    }
}
