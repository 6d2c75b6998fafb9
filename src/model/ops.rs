//! Differentiable ops: each forward comes with a hand-written backward, built from candle tensor
//! ops so that it runs on any candle device (CPU, CUDA).
//!
//! Why not candle's autograd: candle-nn's fused norm/softmax/rope have no backward (the
//! gradient is silently missing) and candle's matmul backward always computes the weight
//! gradient, also for frozen weights. Here every backward computes exactly what is asked for:
//! the input gradient, and the parameter gradient only when the parameter is trainable.
//! Every op is checked against central finite differences in the tests below.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

/// `x @ wᵀ` for `x` of shape `[.., in]` and `w` of shape `[out, in]` (the nn.Linear layout).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = *dims.last().expect("rank >= 1");
    let n = x.elem_count() / inp.max(1);
    let x2 = x.reshape((n, inp))?;
    let y = match crate::model::fastmath::few_rows_matmul_nt(&x2, w)? {
        Some(y) => y,
        None => x2.matmul(&w.t()?)?,
    };
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = w.dim(0)?;
    Ok(y.reshape(out)?)
}

/// [`linear`] with f32 output for a bf16/f16 `w` (an LM head): `w` is widened to f32 a block
/// of rows at a time, so that logits are not rounded to half precision (where near
/// candidates would tie) and the widened matrix never exists whole. Any other `w` goes to
/// [`linear`].
pub fn linear_wide(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !is_half(w.dtype()) {
        return linear(x, w);
    }
    const ROWS: usize = 16_384;
    let x = x.to_dtype(DType::F32)?;
    let out = w.dim(0)?;
    let mut parts = Vec::with_capacity(out.div_ceil(ROWS));
    let mut start = 0;
    while start < out {
        let n = ROWS.min(out - start);
        parts.push(linear(&x, &w.narrow(0, start, n)?.to_dtype(DType::F32)?)?);
        start += n;
    }
    Ok(Tensor::cat(&parts, x.rank() - 1)?)
}

/// Backward of [`linear`]: the input gradient, and the weight gradient only when `need_dw`
/// (a frozen weight costs no gradient computation or memory).
pub fn linear_bwd(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    need_dw: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (out, inp) = w.dims2()?;
    let n = dy.elem_count() / out.max(1);
    let dy2 = dy.reshape((n, out))?;
    let dx = match crate::model::fastmath::few_rows_matmul_nn(&dy2, w)? {
        Some(d) => d,
        None => dy2.matmul(w)?,
    }
    .reshape(x.dims())?;
    let dw = if need_dw {
        Some(dy2.t()?.matmul(&x.reshape((n, inp))?)?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// Only the weight gradient of [`linear`] (for trainable weights whose input needs no gradient).
pub fn linear_dw(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let out = *dy.dims().last().expect("rank >= 1");
    let inp = *x.dims().last().expect("rank >= 1");
    let n = dy.elem_count() / out.max(1);
    Ok(dy.reshape((n, out))?.t()?.matmul(&x.reshape((n, inp))?)?)
}

/// RMSNorm over the last dimension: `y = x · rstd · scale` with `rstd = 1/sqrt(mean(x²)+eps)`.
/// `scale` is the effective multiplier (Gemma: 1 + w). Returns `(y, rstd)`; `rstd` has a
/// trailing dimension of 1 and is what the backward needs.
/// Half-precision inputs (bf16/f16) are normalized in f32 and the result returned in their
/// dtype (`rstd` stays f32).
pub fn rms_norm(x: &Tensor, scale: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    if is_half(x.dtype()) {
        let (y, rstd) = rms_norm(&x.to_dtype(DType::F32)?, &scale.to_dtype(DType::F32)?, eps)?;
        return Ok((y.to_dtype(x.dtype())?, rstd));
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let rstd = (ms + eps)?.sqrt()?.recip()?;
    let y = x.broadcast_mul(&rstd)?.broadcast_mul(scale)?;
    Ok((y, rstd))
}

/// Backward of [`rms_norm`]: `(dx, dscale)`; `dscale` only when `need_dscale`.
pub fn rms_norm_bwd(
    x: &Tensor,
    scale: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    need_dscale: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let xhat = x.broadcast_mul(rstd)?;
    let g = dy.broadcast_mul(scale)?;
    let dot = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
    let dx = (g - xhat.broadcast_mul(&dot)?)?.broadcast_mul(rstd)?;
    let dscale = if need_dscale {
        let d = *x.dims().last().expect("rank >= 1");
        Some((dy * &xhat)?.reshape(((), d))?.sum(0)?)
    } else {
        None
    };
    Ok((dx, dscale))
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::model::fastmath::gelu(x)? {
        return Ok(y);
    }
    Ok(x.gelu()?)
}

/// Backward of [`gelu_tanh`].
pub fn gelu_tanh_bwd(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    // y = 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x³), c = sqrt(2/π)
    // dy/dx = 0.5 (1 + t) + 0.5 x (1 - t²) c (1 + 3·0.044715 x²)
    if let Some(d) = crate::model::fastmath::gelu_bwd(x, dy)? {
        return Ok(d);
    }
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let x2 = x.sqr()?;
    let u = ((x * (x2.affine(0.044715, 1.0)?))? * c)?;
    let t = u.tanh()?;
    let a = t.affine(0.5, 0.5)?;
    let one_minus_t2 = t.sqr()?.affine(-1.0, 1.0)?;
    let b = ((x * one_minus_t2)? * x2.affine(3.0 * 0.044715 * 0.5 * c, 0.5 * c))?;
    Ok((dy * (a + b)?)?)
}

/// SiLU (`x · sigmoid(x)`).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
}

/// Backward of [`silu`].
pub fn silu_bwd(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    // d/dx x σ(x) = σ (1 + x (1 − σ))
    let s = sigmoid(x)?;
    let d = (&s * (x * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
    Ok((dy * d)?)
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(x.neg()?.exp()?.affine(1.0, 1.0)?.recip()?)
}

/// Whether `d` is a half-precision dtype (bf16 or f16).
pub fn is_half(d: DType) -> bool {
    matches!(d, DType::BF16 | DType::F16)
}

/// Softmax over the last dimension (max-subtracted).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Backward of [`softmax_last`] given its output `y`.
pub fn softmax_last_bwd(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dot = (dy * y)?.sum_keepdim(D::Minus1)?;
    Ok((y * dy.broadcast_sub(&dot)?)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let z = x.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(z.broadcast_sub(&lse)?)
}

/// `rotate_half` of HF's RoPE: `[x1, x2] → [−x2, x1]` over the last dimension.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let h = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, h)?;
    let x2 = x.narrow(D::Minus1, h, h)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

/// Transpose of [`rotate_half`]: `[g1, g2] → [g2, −g1]`.
fn rotate_half_t(g: &Tensor) -> Result<Tensor> {
    let h = g.dim(D::Minus1)? / 2;
    let g1 = g.narrow(D::Minus1, 0, h)?;
    let g2 = g.narrow(D::Minus1, h, h)?;
    Ok(Tensor::cat(&[&g2, &g1.neg()?], D::Minus1)?)
}

/// Rotary position embedding (HF, non-interleaved halves). `x`: `[B, H, T, hd]`; `cos`, `sin`:
/// `[B, 1, T, hd]` (per row, so left-padded rows get their own positions).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok((x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?)?)
}

/// Backward of [`rope`] (it is linear in `x`).
pub fn rope_bwd(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok((dy.broadcast_mul(cos)? + rotate_half_t(&dy.broadcast_mul(sin)?)?)?)
}

/// RoPE tables `cos`, `sin` of shape `[max_pos, hd]` for a given base and optional frequency
/// scaling.
pub fn rope_tables(
    max_pos: usize,
    head_dim: usize,
    base: f64,
    scaling: &RopeScaling,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut inv: Vec<f64> = (0..half)
        .map(|i| 1.0 / base.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    if let Some(s) = scaling.llama3 {
        let low_wl = s.original_max_position_embeddings as f64 / s.low_freq_factor;
        let high_wl = s.original_max_position_embeddings as f64 / s.high_freq_factor;
        for f in inv.iter_mut() {
            let wl = 2.0 * std::f64::consts::PI / *f;
            if wl > low_wl {
                *f /= s.factor;
            } else if wl >= high_wl {
                let smooth = (s.original_max_position_embeddings as f64 / wl - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
            }
        }
    }
    if let Some(factor) = scaling.linear {
        for f in inv.iter_mut() {
            *f /= factor;
        }
    }
    if let Some(factors) = scaling.factors {
        for (f, d) in inv.iter_mut().zip(factors) {
            *f /= d;
        }
    }
    // Angles in f32 like the reference (inv_freq f32, positions f32, product in f32).
    let inv32: Vec<f32> = inv.iter().map(|&v| v as f32).collect();
    let scale = scaling.cos_sin_scale.unwrap_or(1.0) as f32;
    let mut cos = Vec::with_capacity(max_pos * head_dim);
    let mut sin = Vec::with_capacity(max_pos * head_dim);
    for p in 0..max_pos {
        for _half in 0..2 {
            for &f in &inv32 {
                let a = (p as f32) * f;
                cos.push(a.cos() * scale);
                sin.push(a.sin() * scale);
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (max_pos, head_dim), device)?,
        Tensor::from_vec(sin, (max_pos, head_dim), device)?,
    ))
}

/// Frequency scaling of a RoPE table: Llama 3.1's, and linear (positions / factor).
#[derive(Clone, Copy, Debug, Default)]
pub struct RopeScaling<'a> {
    pub llama3: Option<&'a crate::model::config::Llama3RopeScaling>,
    pub linear: Option<f64>,
    /// Per-frequency divisors (llama.cpp's `rope_freqs`, LongRoPE's factors).
    pub factors: Option<&'a [f64]>,
    /// cos and sin multiplied by this (LongRoPE's attention factor).
    pub cos_sin_scale: Option<f64>,
}

/// How attention scores are formed from q·k: multiplied by `scale`, then, when `softcap` is
/// set, soft-capped to `cap · tanh(s / cap)` (Gemma 2) before the mask and the softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnScores {
    pub scale: f64,
    pub softcap: Option<f64>,
}

impl From<f64> for AttnScores {
    fn from(scale: f64) -> Self {
        AttnScores {
            scale,
            softcap: None,
        }
    }
}

/// Scaled dot-product attention with grouped key/value heads.
/// `q`: `[B, H, T, hd]`, `k`, `v`: `[B, KV, S, hd]`, `mask`: additive `[B, 1, T, S]`.
/// Returns `(z, p)`: the head outputs `[B, H, T, hd]` and the attention pattern `[B, H, T, S]`.
/// With bf16/f16 `q`, `k`, `v` the mask is f32 and so is the pattern `p`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    how: &AttnScores,
) -> Result<(Tensor, Tensor)> {
    let (b, h, t, hd) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let g = h / kv;
    // Heads that share a key/value head are stacked along the rows: no repeat of k/v.
    let qg = q.reshape((b, kv, g * t, hd))?;
    let mut scores = qg.matmul(&k.t()?)?;
    // Half-precision products: scores, mask and softmax in f32, the pattern applied in half.
    let half = is_half(q.dtype());
    if half {
        scores = scores.to_dtype(DType::F32)?;
    }
    let mut scores = (scores * how.scale)?.reshape((b, h, t, s))?;
    if let Some(cap) = how.softcap {
        scores = softcap(&scores, cap)?;
    }
    let p = softmax_last(&scores.broadcast_add(mask)?)?;
    let pv = if half {
        p.to_dtype(v.dtype())?
    } else {
        p.clone()
    };
    let z = pv
        .reshape((b, kv, g * t, s))?
        .matmul(v)?
        .reshape((b, h, t, hd))?;
    Ok((z, p))
}

/// Backward of [`attention`]: `(dq, dk, dv)`.
pub fn attention_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Tensor,
    dz: &Tensor,
    how: &AttnScores,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, h, t, hd) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let g = h / kv;
    let pg = p.reshape((b, kv, g * t, s))?;
    let dzg = dz.reshape((b, kv, g * t, hd))?;
    let dv = pg.t()?.matmul(&dzg)?;
    let dp = dzg.matmul(&v.t()?)?.reshape((b, h, t, s))?;
    let mut ds = softmax_last_bwd(p, &dp)?;
    if let Some(cap) = how.softcap {
        // Recompute the capped scores rather than keep them for every layer.
        let qg = q.reshape((b, kv, g * t, hd))?;
        let capped = softcap(&(qg.matmul(&k.t()?)? * how.scale)?, cap)?.reshape((b, h, t, s))?;
        ds = softcap_bwd(&capped, &ds, cap)?;
    }
    let ds = (ds * how.scale)?.reshape((b, kv, g * t, s))?;
    let dq = ds.matmul(k)?.reshape((b, h, t, hd))?;
    let dk = ds.t()?.matmul(&q.reshape((b, kv, g * t, hd))?)?;
    Ok((dq, dk, dv))
}

/// Gradient of a vocabulary-sized matrix `[vocab, d]` (embedding or LM head): `dlᵀ · h` from
/// the logits rows (`dl`: `[N, vocab]`, `h`: `[N, d]`) plus `g[j]` added at row `ids[j]` from
/// embedding lookups. On the CPU the big matrix is written once.
pub fn vocab_grad(
    dense: Option<(&Tensor, &Tensor)>,
    rows: Option<(&Tensor, &Tensor)>,
    vocab: usize,
    d: usize,
    device: &Device,
) -> Result<Tensor> {
    let all_f32 = dense
        .iter()
        .all(|(a, b)| a.dtype() == DType::F32 && b.dtype() == DType::F32)
        && rows.iter().all(|(_, g)| g.dtype() == DType::F32);
    if crate::model::fastmath::fast_on(device) && all_f32 {
        let dense_v = match dense {
            Some((dl, h)) => Some((
                dl.flatten_all()?.to_vec1::<f32>()?,
                h.flatten_all()?.to_vec1::<f32>()?,
                dl.dim(0)?,
            )),
            None => None,
        };
        let rows_v = match rows {
            Some((ids, g)) => Some((
                ids.flatten_all()?.to_vec1::<u32>()?,
                g.flatten_all()?.to_vec1::<f32>()?,
            )),
            None => None,
        };
        let out = crate::model::fastmath::vocab_grad_cpu(
            dense_v
                .as_ref()
                .map(|(a, b, n)| (a.as_slice(), b.as_slice(), *n)),
            rows_v.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())),
            vocab,
            d,
        );
        return Ok(Tensor::from_vec(out, (vocab, d), device)?);
    }
    let dtype = dense
        .map(|x| x.0.dtype())
        .or(rows.map(|x| x.1.dtype()))
        .unwrap_or(DType::F32);
    let mut out = match dense {
        Some((dl, h)) => dl.t()?.matmul(h)?,
        None => Tensor::zeros((vocab, d), dtype, device)?,
    };
    if let Some((ids, g)) = rows {
        out = out.index_add(&ids.flatten_all()?, g, 0)?;
    }
    Ok(out)
}

/// `cap · tanh(x / cap)` (Gemma's logit soft-capping).
pub fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    Ok(((x / cap)?.tanh()? * cap)?)
}

/// Backward of [`softcap`] given its output `y`.
pub fn softcap_bwd(y: &Tensor, dy: &Tensor, cap: f64) -> Result<Tensor> {
    let t = (y / cap)?;
    Ok((dy * t.sqr()?.affine(-1.0, 1.0)?)?)
}

/// Mean cross-entropy of `logits` `[N, V]` against `targets` (u32 `[N]`), and its gradient
/// with respect to the logits.
pub fn cross_entropy_with_grad(logits: &Tensor, targets: &Tensor) -> Result<(f64, Tensor)> {
    let n = logits.dim(0)?;
    let lsm = log_softmax_last(logits)?;
    let picked = lsm.gather(&targets.unsqueeze(1)?, 1)?;
    let loss = picked.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? / -(n as f64);
    let onehot = Tensor::zeros_like(&lsm)?.scatter_add(
        &targets.unsqueeze(1)?,
        &Tensor::ones((n, 1), lsm.dtype(), lsm.device())?,
        1,
    )?;
    let grad = ((lsm.exp()? - onehot)? / n as f64)?;
    Ok((loss, grad))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Deterministic pseudo-random f64 tensor.
    pub fn rnd(shape: &[usize], seed: u64, scale: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub fn to_vec(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Check an analytic gradient against central differences of `f(x)·w` for a fixed
    /// random projection `w` (so one scalar loss exercises every output).
    pub fn check_grad(
        f: &dyn Fn(&Tensor) -> Tensor,
        x: &Tensor,
        analytic: &dyn Fn(&Tensor) -> Tensor,
    ) {
        let y = f(x);
        let w = rnd(y.dims(), 99, 1.0);
        let dx = to_vec(&analytic(&w));
        let xv = to_vec(x);
        let eps = 1e-6;
        for i in 0..xv.len() {
            let mut p = xv.clone();
            p[i] += eps;
            let mut m = xv.clone();
            m[i] -= eps;
            let tp = Tensor::from_vec(p, x.dims(), &Device::Cpu).unwrap();
            let tm = Tensor::from_vec(m, x.dims(), &Device::Cpu).unwrap();
            let lp = (f(&tp) * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let lm = (f(&tm) * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let num = (lp - lm) / (2.0 * eps);
            let err = (num - dx[i]).abs();
            assert!(
                err <= 1e-6 * (1.0 + num.abs()),
                "element {i}: finite difference {num}, analytic {}",
                dx[i]
            );
        }
    }

    #[test]
    fn linear_grads_match_finite_differences() {
        let x = rnd(&[2, 3, 5], 1, 1.0);
        let w = rnd(&[4, 5], 2, 1.0);
        check_grad(&|x| linear(x, &w).unwrap(), &x, &|dy| {
            linear_bwd(&x, &w, dy, false).unwrap().0
        });
        check_grad(&|w| linear(&x, w).unwrap(), &w, &|dy| {
            linear_bwd(&x, &w, dy, true).unwrap().1.unwrap()
        });
        let dy = rnd(&[2, 3, 4], 3, 1.0);
        let a = to_vec(&linear_dw(&x, &dy).unwrap());
        let b = to_vec(&linear_bwd(&x, &w, &dy, true).unwrap().1.unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn rms_norm_grads_match_finite_differences() {
        let x = rnd(&[3, 6], 4, 2.0);
        let s = rnd(&[6], 5, 1.0);
        check_grad(&|x| rms_norm(x, &s, 1e-6).unwrap().0, &x, &|dy| {
            let (_, r) = rms_norm(&x, &s, 1e-6).unwrap();
            rms_norm_bwd(&x, &s, &r, dy, false).unwrap().0
        });
        check_grad(&|s| rms_norm(&x, s, 1e-6).unwrap().0, &s, &|dy| {
            let (_, r) = rms_norm(&x, &s, 1e-6).unwrap();
            rms_norm_bwd(&x, &s, &r, dy, true).unwrap().1.unwrap()
        });
    }

    #[test]
    fn activation_grads_match_finite_differences() {
        let x = rnd(&[4, 7], 6, 3.0);
        check_grad(&|x| gelu_tanh(x).unwrap(), &x, &|dy| {
            gelu_tanh_bwd(&x, dy).unwrap()
        });
        check_grad(&|x| silu(x).unwrap(), &x, &|dy| silu_bwd(&x, dy).unwrap());
        check_grad(&|x| softcap(x, 5.0).unwrap(), &x, &|dy| {
            softcap_bwd(&softcap(&x, 5.0).unwrap(), dy, 5.0).unwrap()
        });
    }

    #[test]
    fn gelu_is_the_tanh_approximation() {
        let x = Tensor::new(&[-3.0f64, -1.0, 0.0, 0.5, 2.0], &Device::Cpu).unwrap();
        let y = to_vec(&gelu_tanh(&x).unwrap());
        for (xi, yi) in to_vec(&x).iter().zip(y) {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let want = 0.5 * xi * (1.0 + (c * (xi + 0.044715 * xi.powi(3))).tanh());
            assert!((want - yi).abs() < 1e-12, "{xi}: {yi} vs {want}");
        }
    }

    #[test]
    fn softmax_grads_match_finite_differences() {
        let x = rnd(&[3, 5], 7, 3.0);
        check_grad(&|x| softmax_last(x).unwrap(), &x, &|dy| {
            softmax_last_bwd(&softmax_last(&x).unwrap(), dy).unwrap()
        });
        let l = to_vec(&log_softmax_last(&x).unwrap());
        let s = to_vec(&softmax_last(&x).unwrap());
        for (a, b) in l.iter().zip(s) {
            assert!((a.exp() - b).abs() < 1e-12);
        }
    }

    #[test]
    fn rope_grads_match_finite_differences_and_rotate() {
        let dev = Device::Cpu;
        let (cos, sin) = rope_tables(8, 6, 10000.0, &RopeScaling::default(), &dev).unwrap();
        let pos = Tensor::new(&[0u32, 3, 5, 7], &dev).unwrap();
        let c = cos
            .index_select(&pos, 0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .reshape((1, 1, 4, 6))
            .unwrap();
        let s = sin
            .index_select(&pos, 0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .reshape((1, 1, 4, 6))
            .unwrap();
        let x = rnd(&[1, 2, 4, 6], 8, 1.0);
        check_grad(&|x| rope(x, &c, &s).unwrap(), &x, &|dy| {
            rope_bwd(dy, &c, &s).unwrap()
        });
        // A rotation keeps norms.
        let y = rope(&x, &c, &s).unwrap();
        let nx = x
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let ny = y
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((nx - ny).abs() < 1e-5 * nx);
    }

    fn causal_mask(b: usize, t: usize) -> Tensor {
        let mut m = vec![0f64; b * t * t];
        for bi in 0..b {
            for i in 0..t {
                for j in i + 1..t {
                    m[bi * t * t + i * t + j] = -1e30;
                }
            }
        }
        Tensor::from_vec(m, (b, 1, t, t), &Device::Cpu).unwrap()
    }

    #[test]
    fn attention_grads_match_finite_differences() {
        let (b, h, kv, t, hd) = (2, 4, 2, 3, 4);
        let q = rnd(&[b, h, t, hd], 9, 1.0);
        let k = rnd(&[b, kv, t, hd], 10, 1.0);
        let v = rnd(&[b, kv, t, hd], 11, 1.0);
        let mask = causal_mask(b, t);
        // Plain, and soft-capped at a cap the scores reach (Gemma 2).
        for sc in [
            AttnScores::from(0.5),
            AttnScores {
                scale: 0.9,
                softcap: Some(0.8),
            },
        ] {
            let bwd = |dz: &Tensor| {
                let (_, p) = attention(&q, &k, &v, &mask, &sc).unwrap();
                attention_bwd(&q, &k, &v, &p, dz, &sc).unwrap()
            };
            check_grad(
                &|q| attention(q, &k, &v, &mask, &sc).unwrap().0,
                &q,
                &|dz| bwd(dz).0,
            );
            check_grad(
                &|k| attention(&q, k, &v, &mask, &sc).unwrap().0,
                &k,
                &|dz| bwd(dz).1,
            );
            check_grad(
                &|v| attention(&q, &k, v, &mask, &sc).unwrap().0,
                &v,
                &|dz| bwd(dz).2,
            );
        }
    }

    #[test]
    fn attention_with_grouped_heads_equals_repeated_heads() {
        let (b, h, kv, t, hd) = (1, 4, 1, 5, 3);
        let q = rnd(&[b, h, t, hd], 12, 1.0);
        let k = rnd(&[b, kv, t, hd], 13, 1.0);
        let v = rnd(&[b, kv, t, hd], 14, 1.0);
        let mask = causal_mask(b, t);
        let (z, _) = attention(&q, &k, &v, &mask, &0.7.into()).unwrap();
        for head in 0..h {
            let qh = q.narrow(1, head, 1).unwrap().contiguous().unwrap();
            let (zh, _) = attention(&qh, &k, &v, &mask, &0.7.into()).unwrap();
            let a = to_vec(&zh);
            let b2 = to_vec(&z.narrow(1, head, 1).unwrap());
            for (x, y) in a.iter().zip(b2) {
                assert!((x - y).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let x = rnd(&[3, 5], 15, 2.0);
        let tg = Tensor::new(&[1u32, 4, 0], &Device::Cpu).unwrap();
        let (_, g) = cross_entropy_with_grad(&x, &tg).unwrap();
        let gv = to_vec(&g);
        let xv = to_vec(&x);
        let eps = 1e-6;
        for i in 0..xv.len() {
            let f = |d: f64| {
                let mut p = xv.clone();
                p[i] += d;
                let t = Tensor::from_vec(p, (3, 5), &Device::Cpu).unwrap();
                cross_entropy_with_grad(&t, &tg).unwrap().0
            };
            let num = (f(eps) - f(-eps)) / (2.0 * eps);
            assert!((num - gv[i]).abs() < 1e-4, "{i}: {num} vs {}", gv[i]);
        }
    }
}
