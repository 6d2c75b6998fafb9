//! Log-probabilities of target tokens read from final residual rows, with the LM head computed
//! a chunk of rows at a time: a loss or a score on N target tokens never holds an `[N, V]`
//! matrix (256-token passages in a batch of 8 on a 152k-token vocabulary would need 1.2 GB
//! per copy, and a softmax gradient takes several copies). The gradient comes back per row
//! (d log p(target_i) / d row_i), so any loss that is a function of the rows' log-probabilities
//! scales it by d(loss)/d(log p_i) and hands it to the transformer's backward as a residual
//! gradient.

use crate::model::ops;
use crate::model::{Batch, LogitsAt, RunOpts, Transformer};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Elements of one chunk's logits (64 MB in f32).
const CHUNK_ELEMS: usize = 1 << 24;

/// Row positions `(batch row, position)` of a run's `[B, T, D]` residual, flattened.
pub struct RowIndex {
    idx: Tensor,
    shape: (usize, usize, usize),
}

impl RowIndex {
    /// The index of `at` in a residual of shape `shape` (`[B, T, D]`).
    pub fn new(
        at: &[(usize, usize)],
        shape: (usize, usize, usize),
        model: &Transformer,
    ) -> Result<Self> {
        let (b, t, _) = shape;
        let mut flat = Vec::with_capacity(at.len());
        for &(r, p) in at {
            if r >= b || p >= t {
                bail!("target row ({r}, {p}) lies outside the batch ({b} × {t})");
            }
            flat.push((r * t + p) as u32);
        }
        let n = flat.len();
        Ok(Self {
            idx: Tensor::from_vec(flat, n, model.device())?,
            shape,
        })
    }

    /// The rows `[N, D]` of a residual `[B, T, D]`.
    pub fn gather(&self, resid: &Tensor) -> Result<Tensor> {
        let (b, t, d) = self.shape;
        Ok(resid.reshape((b * t, d))?.index_select(&self.idx, 0)?)
    }

    /// A residual-shaped gradient `[B, T, D]`, zero except at the rows, which get `rows`.
    pub fn scatter(&self, rows: &Tensor) -> Result<Tensor> {
        let (b, t, d) = self.shape;
        Ok(Tensor::zeros((b * t, d), rows.dtype(), rows.device())?
            .index_add(&self.idx, rows, 0)?
            .reshape((b, t, d))?)
    }
}

/// What [`target_logprobs`] returns.
pub struct TargetLogprobs {
    /// log p(target_i) at each row.
    pub lp: Vec<f64>,
    /// d log p(target_i) / d row_i, `[N, D]` (only when asked).
    pub d_rows: Option<Tensor>,
}

/// Log-probability of `targets[i]` given final residual row `rows[i]` (`[N, D]`, before the
/// final norm), through the final norm, the LM head and its soft-capping; with `grad`, also
/// the gradient of each row's log-probability with respect to that row. The final norm and the
/// LM head are taken as frozen (their own gradients are not computed).
pub fn target_logprobs(
    model: &Transformer,
    rows: &Tensor,
    targets: &[u32],
    grad: bool,
) -> Result<TargetLogprobs> {
    let per = (CHUNK_ELEMS / model.config.vocab_size.max(1)).max(1);
    chunked(model, rows, targets, grad, per)
}

/// [`target_logprobs`] with `per` rows in each chunk.
fn chunked(
    model: &Transformer,
    rows: &Tensor,
    targets: &[u32],
    grad: bool,
    per: usize,
) -> Result<TargetLogprobs> {
    let (n, _) = rows.dims2()?;
    let v = model.config.vocab_size;
    if targets.len() != n {
        bail!("{} targets for {n} rows", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("target token {t} is outside the vocabulary (size {v})");
    }
    let dev = rows.device();
    let scale = model.final_norm_scale()?;
    let (hn, rstd) = ops::rms_norm(rows, &scale, model.config.rms_norm_eps)?;
    let w = model.lm_weight()?;
    // The gradient is f32 arithmetic: a half-precision head is widened for it.
    let w = if grad && ops::is_half(w.dtype()) {
        w.to_dtype(DType::F32)?
    } else {
        w
    };
    let cap = model.config.final_logit_softcapping;
    // Softmax arithmetic in f32 at least (f64 when the model computes in f64).
    let wide = if rows.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mut lp = Vec::with_capacity(n);
    let mut dhn = Vec::new();
    let mut start = 0;
    while start < n {
        let k = per.min(n - start);
        let h = hn.narrow(0, start, k)?;
        let mut logits = ops::linear_wide(&h, &w)?.to_dtype(wide)?;
        if let Some(c) = cap {
            logits = ops::softcap(&logits, c)?;
        }
        let lsm = ops::log_softmax_last(&logits.to_dtype(wide)?)?;
        let idx = Tensor::from_vec(targets[start..start + k].to_vec(), (k, 1), dev)?;
        let picked = lsm.gather(&idx, 1)?.flatten_all()?.to_dtype(DType::F64)?;
        lp.extend(picked.to_vec1::<f64>()?);
        if grad {
            // d log p(t) / d logits = onehot(t) − softmax.
            let ones = Tensor::ones((k, 1), wide, dev)?;
            let mut u = lsm
                .exp()?
                .neg()?
                .scatter_add(&idx, &ones, 1)?
                .to_dtype(rows.dtype())?;
            if let Some(c) = cap {
                u = ops::softcap_bwd(&logits, &u, c)?;
            }
            dhn.push(ops::linear_bwd(&h, &w, &u, false)?.0);
        }
        start += k;
    }
    let d_rows = if grad && n > 0 {
        let dhn = Tensor::cat(&dhn, 0)?;
        Some(ops::rms_norm_bwd(rows, &scale, &rstd, &dhn, false)?.0)
    } else if grad {
        Some(rows.zeros_like()?)
    } else {
        None
    };
    Ok(TargetLogprobs { lp, d_rows })
}

/// Scale row `i` of `d_rows` by `c[i]`: the gradient of a loss whose derivative with respect
/// to log p(target_i) is `c[i]`.
pub fn scale_rows(d_rows: &Tensor, c: &[f64]) -> Result<Tensor> {
    let ct =
        Tensor::from_vec(c.to_vec(), (c.len(), 1), d_rows.device())?.to_dtype(d_rows.dtype())?;
    Ok(d_rows.broadcast_mul(&ct)?)
}

/// [`target_logprobs`] at `(batch row, position)` `at[i]` of a run's final residual `resid`
/// (`[B, T, D]`), with the index that puts row gradients back in place.
pub fn resid_logprobs(
    model: &Transformer,
    resid: &Tensor,
    at: &[(usize, usize)],
    targets: &[u32],
    grad: bool,
) -> Result<(TargetLogprobs, RowIndex)> {
    let index = RowIndex::new(at, resid.dims3()?, model)?;
    let tl = target_logprobs(model, &index.gather(resid)?, targets, grad)?;
    Ok((tl, index))
}

/// Log-probability of `targets[i]` at `(batch row, position)` `rows[i]` of a forward run of
/// `batch` (no gradient).
pub fn run_target_logprobs(
    model: &Transformer,
    batch: &Batch,
    rows: &[(usize, usize)],
    targets: &[u32],
) -> Result<Vec<f64>> {
    let out = model.run(
        batch,
        &RunOpts {
            logits: LogitsAt::None,
            ..Default::default()
        },
    )?;
    Ok(resid_logprobs(model, &out.resid, rows, targets, false)?
        .0
        .lp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forget::seqs::logprobs_of;
    use crate::forget::terms::logits_grad;
    use crate::model::transformer::tests::tiny_model;
    use crate::model::{Arch, PadSide};

    use crate::model::ops::tests::to_vec as v;

    fn rows_and_targets() -> (Vec<(usize, usize)>, Vec<u32>) {
        (
            vec![(0, 1), (0, 4), (1, 0), (1, 2), (0, 2)],
            vec![5, 22, 7, 0, 13],
        )
    }

    /// Each row's gradient is d log p(target) / d row: checked by central differences on every
    /// coordinate, through the final norm and (Gemma 3) the final soft cap.
    #[test]
    fn row_gradients_match_finite_differences() {
        for arch in [Arch::Gemma3, Arch::Llama] {
            let m = tiny_model(arch);
            let rows = crate::model::ops::tests::rnd(&[3, 8], 7, 1.5);
            let targets = [3u32, 0, 19];
            let got = target_logprobs(&m, &rows, &targets, true).unwrap();
            let d = v(got.d_rows.as_ref().unwrap());
            let base = v(&rows);
            let eps = 1e-5;
            for i in 0..3 {
                for j in 0..8 {
                    let at = |x: f64| {
                        let mut b = base.clone();
                        b[i * 8 + j] += x;
                        let r = Tensor::from_vec(b, (3, 8), rows.device()).unwrap();
                        target_logprobs(&m, &r, &targets, false).unwrap().lp[i]
                    };
                    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                    let g = d[i * 8 + j];
                    assert!(
                        (fd - g).abs() < 1e-7 * (1.0 + fd.abs()),
                        "{arch:?} row {i} coordinate {j}: {g} vs {fd}"
                    );
                }
            }
        }
    }

    /// Chunks of 1, 2 or all rows, and the whole-logits path (log-softmax of the run's logits,
    /// its gradient through the backward), give the same log-probabilities and the same
    /// parameter gradients of a loss Σ cᵢ log pᵢ.
    #[test]
    fn chunks_and_the_full_logits_path_agree() {
        for arch in [Arch::Gemma3, Arch::Gemma2, Arch::Llama] {
            let mut m = tiny_model(arch);
            m.set_trainable(&m.mlp_param_names(&[1, 2])).unwrap();
            let ids = vec![vec![1u32, 5, 9, 3, 7, 11], vec![1, 4, 8, 15]];
            let batch = Batch::new(&ids, 0, PadSide::Right, m.device()).unwrap();
            let (at, targets) = rows_and_targets();
            let c = [0.5, -1.0, 2.0, 0.25, -0.75];
            let full = m
                .run(
                    &batch,
                    &RunOpts {
                        logits: LogitsAt::Rows(at.clone()),
                        grad: true,
                        ..Default::default()
                    },
                )
                .unwrap();
            let logits = full.logits.as_ref().unwrap();
            let (lp_full, sm) = logprobs_of(logits, &targets).unwrap();
            let dl = logits_grad(&c, &targets, &sm)
                .unwrap()
                .to_dtype(logits.dtype())
                .unwrap();
            let g_full = m.backward(&full, Some(&dl), None).unwrap().params;
            let out = m
                .run(
                    &batch,
                    &RunOpts {
                        logits: LogitsAt::None,
                        grad: true,
                        ..Default::default()
                    },
                )
                .unwrap();
            let idx = RowIndex::new(&at, out.resid.dims3().unwrap(), &m).unwrap();
            let rows = idx.gather(&out.resid).unwrap();
            for per in [1, 2, 5] {
                let tl = chunked(&m, &rows, &targets, true, per).unwrap();
                for (a, b) in tl.lp.iter().zip(&lp_full) {
                    // The whole-logits path takes its log-softmax in f32.
                    assert!((a - b).abs() < 1e-6, "{arch:?} chunk {per}: {a} vs {b}");
                }
                let d = scale_rows(tl.d_rows.as_ref().unwrap(), &c).unwrap();
                let g = m
                    .backward(&out, None, Some(&idx.scatter(&d).unwrap()))
                    .unwrap()
                    .params;
                assert_eq!(g.len(), g_full.len());
                for (name, t) in &g {
                    let (a, b) = (v(t), v(&g_full[name]));
                    let scale = b.iter().fold(0f64, |x, y| x.max(y.abs()));
                    let diff = a
                        .iter()
                        .zip(&b)
                        .fold(0f64, |x, (p, q)| x.max((p - q).abs()));
                    assert!(
                        diff <= 1e-6 * scale.max(1e-12),
                        "{arch:?} chunk {per} {name}: {diff} of {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_targets_and_rows_are_refused() {
        let m = tiny_model(Arch::Llama);
        let rows = crate::model::ops::tests::rnd(&[2, 8], 3, 1.0);
        assert!(target_logprobs(&m, &rows, &[1], false).is_err());
        let e = target_logprobs(&m, &rows, &[1, 23], false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("outside the vocabulary"), "{e}");
        assert!(RowIndex::new(&[(2, 0)], (2, 3, 8), &m).is_err());
    }
}
