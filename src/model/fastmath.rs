//! Fast element-wise kernels for f32 tensors on the CPU: GELU-tanh and its derivative.
//! candle's `tanh` calls libm once per element (≈ 20 ns each, 11 ms for one MLP activation of
//! a 8 × 32 batch of Gemma 3 270M); these loops use a polynomial `exp` that the compiler
//! vectorizes. Absolute error of `tanh` below 2e-7, far inside the float32 rounding of the
//! results. Other devices and dtypes fall back to candle's ops — the device-generic paths,
//! which the CPU can be made to take too (`UNLEARN_GENERIC_KERNELS=1` or [`set_generic_only`])
//! so that tests compare them with the fast ones.

use anyhow::Result;
use candle_core::{DType, Device, Storage, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not yet read from the environment; 1: fast CPU paths; 2: generic paths only.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Take the device-generic paths on the CPU too (process-wide).
pub fn set_generic_only(on: bool) {
    MODE.store(if on { 2 } else { 1 }, Ordering::SeqCst);
}

/// Whether the CPU-only kernels may run on `device`.
pub fn fast_on(device: &Device) -> bool {
    if !matches!(device, Device::Cpu) {
        return false;
    }
    let mode = match MODE.load(Ordering::Relaxed) {
        0 => {
            let generic = std::env::var_os("UNLEARN_GENERIC_KERNELS").is_some_and(|v| v == "1");
            let m = if generic { 2 } else { 1 };
            MODE.store(m, Ordering::SeqCst);
            m
        }
        m => m,
    };
    mode == 1
}

/// `e^x` for f32, relative error below 2e-7 over the whole range (flush to 0 / saturate to
/// `f32::MAX` outside [-87, 88]).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5·2²³ trick (no libm call, so loops vectorize).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    // Cody–Waite: ln 2 split in a high part exact in f32 and a low correction.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `tanh(x)` for f32 with absolute error below 2e-7.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let e = exp_f32(2.0 * x.clamp(-20.0, 20.0));
    1.0 - 2.0 / (e + 1.0)
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2/π)
const GELU_A: f32 = 0.044715;

#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh_f32(GELU_C * (x + GELU_A * x * x * x)))
}

#[inline(always)]
fn gelu_grad_one(x: f32) -> f32 {
    let t = tanh_f32(GELU_C * (x + GELU_A * x * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)
}

/// Run `f` over the f32 data of CPU tensors when all are contiguous f32 on the CPU.
fn with_cpu_f32(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> Vec<f32>) -> Result<Option<Tensor>> {
    let first = ts[0];
    if !fast_on(first.device())
        || ts
            .iter()
            .any(|t| t.dtype() != DType::F32 || !t.is_contiguous() || t.dims() != first.dims())
    {
        return Ok(None);
    }
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: Vec<&[f32]> = Vec::with_capacity(ts.len());
    for (g, l) in &guards {
        let Storage::Cpu(cpu) = &**g else {
            return Ok(None);
        };
        let all = cpu.as_slice::<f32>()?;
        let start = l.start_offset();
        slices.push(&all[start..start + l.shape().elem_count()]);
    }
    let out = f(&slices);
    Ok(Some(Tensor::from_vec(out, first.dims(), first.device())?))
}

/// Apply `f` element-wise into a new vector, compiled for AVX2+FMA when the CPU has them.
macro_rules! map_kernel {
    ($name:ident, $avx:ident, ($($arg:ident),+), $body:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx($($arg: &[f32]),+) -> Vec<f32> {
            let n = [$($arg.len()),+][0];
            let mut out = vec![0f32; n];
            for i in 0..n {
                out[i] = $body($($arg[i]),+);
            }
            out
        }

        fn $name($($arg: &[f32]),+) -> Vec<f32> {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features the function was compiled for.
                    return unsafe { $avx($($arg),+) };
                }
            }
            let n = [$($arg.len()),+][0];
            (0..n).map(|i| $body($($arg[i]),+)).collect()
        }
    };
}

map_kernel!(gelu_slice, gelu_slice_avx2, (x), gelu_one);
map_kernel!(
    gelu_bwd_slice,
    gelu_bwd_slice_avx2,
    (x, dy),
    |v: f32, g: f32| g * gelu_grad_one(v)
);

/// GELU-tanh of a contiguous CPU f32 tensor (None: use the generic path).
pub fn gelu(x: &Tensor) -> Result<Option<Tensor>> {
    with_cpu_f32(&[x], |s| gelu_slice(s[0]))
}

/// `dy · gelu'(x)` (None: use the generic path).
pub fn gelu_bwd(x: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
    with_cpu_f32(&[x, dy], |s| gelu_bwd_slice(s[0], s[1]))
}

/// Gradient of a vocabulary-sized matrix `[V, D]` (embedding / LM head): `dlᵀ · h` for a few
/// rows (`dl`: `[N, V]`, `h`: `[N, D]`) plus `g[j]` added at row `ids[j]` (embedding lookups),
/// in one pass that writes the big matrix once. CPU f32 only.
pub fn vocab_grad_cpu(
    dense: Option<(&[f32], &[f32], usize)>,
    rows: Option<(&[u32], &[f32])>,
    v: usize,
    d: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; v * d];
    if let Some((dl, h, n)) = dense {
        vocab_dense_kernel(&mut out, dl, h, n, v, d);
    }
    if let Some((ids, g)) = rows {
        for (j, &id) in ids.iter().enumerate() {
            let o = &mut out[id as usize * d..(id as usize + 1) * d];
            for (a, b) in o.iter_mut().zip(&g[j * d..(j + 1) * d]) {
                *a += b;
            }
        }
    }
    out
}

fn vocab_dense_kernel(out: &mut [f32], dl: &[f32], h: &[f32], n: usize, v: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { vocab_dense_avx2(out, dl, h, n, v, d) };
        }
    }
    vocab_dense_generic(out, dl, h, n, v, d)
}

#[inline(always)]
fn vocab_dense_generic(out: &mut [f32], dl: &[f32], h: &[f32], n: usize, v: usize, d: usize) {
    for (row, o) in out.chunks_exact_mut(d).enumerate().take(v) {
        for i in 0..n {
            let c = dl[i * v + row];
            if c != 0.0 {
                for (a, b) in o.iter_mut().zip(&h[i * d..(i + 1) * d]) {
                    *a += c * b;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn vocab_dense_avx2(out: &mut [f32], dl: &[f32], h: &[f32], n: usize, v: usize, d: usize) {
    vocab_dense_generic(out, dl, h, n, v, d)
}

/// `a · bᵀ` for a few rows `a` (`[m, k]`) against a tall matrix `b` (`[n, k]`), reading `b`
/// once from memory (the LM head at a few positions: `b` is the 671 MB embedding of Gemma 3).
/// Returns None when the tensors are not contiguous CPU f32 or `m` is large (GEMM is better).
pub fn few_rows_matmul_nt(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let (Ok((m, k)), Ok((n, k2))) = (a.dims2(), b.dims2()) else {
        return Ok(None);
    };
    if k != k2 {
        return Ok(None);
    }
    few_rows(a, b, (m, n), |av, bv, out| {
        few_rows_nt(av, bv, m, n, k, out)
    })
}

/// `a · b` for a few rows `a` (`[m, n]`) and a tall `b` (`[n, k]`), reading `b` once.
pub fn few_rows_matmul_nn(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let (Ok((m, n)), Ok((n2, k))) = (a.dims2(), b.dims2()) else {
        return Ok(None);
    };
    if n != n2 {
        return Ok(None);
    }
    few_rows(a, b, (m, k), |av, bv, out| {
        few_rows_nn(av, bv, m, n, k, out)
    })
}

/// Shared frame of the few-row products: checks, data access, output of shape `out_shape`.
fn few_rows(
    a: &Tensor,
    b: &Tensor,
    out_shape: (usize, usize),
    kernel: impl FnOnce(&[f32], &[f32], &mut [f32]),
) -> Result<Option<Tensor>> {
    if out_shape.0 > 32 || !cpu_f32_contiguous(&[a, b]) {
        return Ok(None);
    }
    let av = a.flatten_all()?.to_vec1::<f32>()?;
    let out = with_slice(b, |bv| {
        let mut out = vec![0f32; out_shape.0 * out_shape.1];
        kernel(&av, bv, &mut out);
        out
    })?;
    out.map(|o| Tensor::from_vec(o, out_shape, a.device()))
        .transpose()
        .map_err(Into::into)
}

/// Run `f` on the f32 data of a contiguous CPU tensor (None otherwise).
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    if !cpu_f32_contiguous(&[t]) {
        return Ok(None);
    }
    let (g, l) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*g else {
        return Ok(None);
    };
    let n = l.shape().elem_count();
    Ok(Some(f(
        &cpu.as_slice::<f32>()?[l.start_offset()..l.start_offset() + n]
    )))
}

fn cpu_f32_contiguous(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| fast_on(t.device()) && t.dtype() == DType::F32 && t.is_contiguous())
}

#[inline(always)]
fn dot_generic(x: &[f32], y: &[f32]) -> f32 {
    // Eight partial sums so the compiler can keep them in one vector register.
    let mut acc = [0f32; 8];
    let chunks = x.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += x[c * 8 + l] * y[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for j in chunks * 8..x.len() {
        s += x[j] * y[j];
    }
    s
}

#[inline(always)]
fn few_rows_nt_generic(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) {
    for v in 0..n {
        let bv = &b[v * k..(v + 1) * k];
        for i in 0..m {
            out[i * n + v] = dot_generic(&a[i * k..(i + 1) * k], bv);
        }
    }
}

#[inline(always)]
fn few_rows_nn_generic(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) {
    for v in 0..n {
        let bv = &b[v * k..(v + 1) * k];
        for i in 0..m {
            let c = a[i * n + v];
            if c != 0.0 {
                for (o, x) in out[i * k..(i + 1) * k].iter_mut().zip(bv) {
                    *o += c * x;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn few_rows_nt_avx2(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); 32];
    for v in 0..n {
        let bv = &b[v * k..(v + 1) * k];
        for a_i in acc.iter_mut().take(m) {
            *a_i = _mm256_setzero_ps();
        }
        let mut c = 0;
        while c < k8 {
            // SAFETY: c + 8 <= k, so the loads stay inside the rows.
            unsafe {
                let bx = _mm256_loadu_ps(bv.as_ptr().add(c));
                for (i, a_i) in acc.iter_mut().enumerate().take(m) {
                    let ax = _mm256_loadu_ps(a.as_ptr().add(i * k + c));
                    *a_i = _mm256_fmadd_ps(ax, bx, *a_i);
                }
            }
            c += 8;
        }
        for (i, a_i) in acc.iter().enumerate().take(m) {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a_i) };
            let mut sum: f32 = lanes.iter().sum();
            for j in k8..k {
                sum += a[i * k + j] * bv[j];
            }
            out[i * n + v] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn few_rows_nn_avx2(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    for v in 0..n {
        let bv = &b[v * k..(v + 1) * k];
        for i in 0..m {
            let c = a[i * n + v];
            if c == 0.0 {
                continue;
            }
            let o = &mut out[i * k..(i + 1) * k];
            let cx = _mm256_set1_ps(c);
            let mut j = 0;
            while j < k8 {
                // SAFETY: j + 8 <= k for both rows.
                unsafe {
                    let ox = _mm256_loadu_ps(o.as_ptr().add(j));
                    let bx = _mm256_loadu_ps(bv.as_ptr().add(j));
                    _mm256_storeu_ps(o.as_mut_ptr().add(j), _mm256_fmadd_ps(cx, bx, ox));
                }
                j += 8;
            }
            for j in k8..k {
                o[j] += c * bv[j];
            }
        }
    }
}

fn few_rows_nt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { few_rows_nt_avx2(a, b, m, n, k, out) };
        }
    }
    few_rows_nt_generic(a, b, m, n, k, out)
}

fn few_rows_nn(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { few_rows_nn_avx2(a, b, m, n, k, out) };
        }
    }
    few_rows_nn_generic(a, b, m, n, k, out)
}

/// log P(column `pick`) of each row of logits `[N, V]` (a full log-softmax read in one pass,
/// without temporaries). None when not contiguous CPU f32.
pub fn log_prob_of(logits: &Tensor, pick: usize) -> Result<Option<Vec<f64>>> {
    let Ok((_, v)) = logits.dims2() else {
        return Ok(None);
    };
    if pick >= v {
        return Ok(None);
    }
    with_slice(logits, |all| {
        all.chunks_exact(v)
            .map(|row| row_log_prob(row, pick))
            .collect()
    })
}

fn row_log_prob(row: &[f32], pick: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { row_log_prob_avx2(row, pick) };
        }
    }
    row_log_prob_generic(row, pick)
}

#[inline(always)]
fn row_log_prob_generic(row: &[f32], pick: usize) -> f64 {
    // Eight lanes for the max and the sum, so the loops vectorize.
    let mut mx = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            mx[i] = mx[i].max(c[i]);
        }
    }
    let m = tail.iter().fold(
        mx.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
        |a, &b| a.max(b),
    );
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    for c in chunks {
        for i in 0..8 {
            acc[i] += exp_f32(c[i] - m);
        }
    }
    let s: f64 = acc.iter().map(|&x| x as f64).sum::<f64>()
        + tail.iter().map(|&x| exp_f32(x - m) as f64).sum::<f64>();
    (row[pick] - m) as f64 - s.ln()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_log_prob_avx2(row: &[f32], pick: usize) -> f64 {
    row_log_prob_generic(row, pick)
}

/// Mean and standard deviation of a CPU f32 tensor in one pass (f64 accumulation).
pub fn mean_std(t: &Tensor) -> Result<Option<(f64, f64)>> {
    with_slice(t, |all| {
        let (mut s, mut s2) = (0f64, 0f64);
        for c in all.chunks(4096) {
            let (mut a, mut b) = (0f32, 0f32);
            for &x in c {
                a += x;
                b += x * x;
            }
            s += a as f64;
            s2 += b as f64;
        }
        let n = all.len().max(1) as f64;
        let mean = s / n;
        (mean, (s2 / n - mean * mean).max(0.0).sqrt())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_tanh_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_tanh = 0f64;
        let mut x = -30.0f32;
        while x < 30.0 {
            let e = (exp_f32(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
            worst_exp = worst_exp.max(e);
            worst_tanh = worst_tanh.max((tanh_f32(x) as f64 - (x as f64).tanh()).abs());
            x += 0.001_37;
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_tanh < 3e-7, "tanh absolute error {worst_tanh}");
        assert_eq!(tanh_f32(100.0), 1.0);
        assert_eq!(tanh_f32(-100.0), -1.0);
    }

    #[test]
    fn vocab_grad_is_dense_outer_product_plus_rows() {
        let (n, v, d) = (3, 7, 5);
        let dl: Vec<f32> = (0..n * v)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let h: Vec<f32> = (0..n * d)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0)
            .collect();
        let ids = [4u32, 1, 4];
        let g: Vec<f32> = (0..3 * d).map(|i| i as f32 * 0.25).collect();
        let out = vocab_grad_cpu(Some((&dl, &h, n)), Some((&ids, &g)), v, d);
        for r in 0..v {
            for c in 0..d {
                let mut want: f32 = (0..n).map(|i| dl[i * v + r] * h[i * d + c]).sum();
                for (j, &id) in ids.iter().enumerate() {
                    if id as usize == r {
                        want += g[j * d + c];
                    }
                }
                assert!((out[r * d + c] - want).abs() < 1e-5, "({r},{c})");
            }
        }
    }

    #[test]
    fn few_row_products_match_matmul() {
        let a = Tensor::randn(0f32, 1.0, (5, 37), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, (301, 37), &Device::Cpu).unwrap();
        let want = a.matmul(&b.t().unwrap()).unwrap();
        let got = few_rows_matmul_nt(&a, &b).unwrap().unwrap();
        let d = (want - &got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "nt {d}");
        let dl = Tensor::randn(0f32, 1.0, (5, 301), &Device::Cpu).unwrap();
        let want = dl.matmul(&b).unwrap();
        let got = few_rows_matmul_nn(&dl, &b).unwrap().unwrap();
        let d = (want - &got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "nn {d}");
        assert!(few_rows_matmul_nt(
            &Tensor::zeros((64, 37), DType::F32, &Device::Cpu).unwrap(),
            &b
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn log_prob_and_moments_match_direct_computation() {
        let x = Tensor::randn(0f32, 4.0, (3, 1003), &Device::Cpu).unwrap();
        let lp = log_prob_of(&x, 17).unwrap().unwrap();
        let rows: Vec<Vec<f32>> = x.to_vec2().unwrap();
        for (r, got) in rows.iter().zip(lp) {
            let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + r.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            assert!((got - (r[17] as f64 - lse)).abs() < 1e-5, "{got}");
        }
        let (mean, std) = mean_std(&x).unwrap().unwrap();
        let v: Vec<f64> = x
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&a| a as f64)
            .collect();
        let m2 = v.iter().sum::<f64>() / v.len() as f64;
        let s2 = (v.iter().map(|a| (a - m2).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(
            (mean - m2).abs() < 1e-4 && (std - s2).abs() < 1e-4,
            "{mean} {std} vs {m2} {s2}"
        );
    }

    #[test]
    fn fast_gelu_matches_candle() {
        let x = Tensor::randn(0f32, 3.0, (64, 33), &Device::Cpu).unwrap();
        let a: Vec<f32> = gelu(&x)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = x.gelu().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < 1e-6 * (1.0 + q.abs()), "{p} vs {q}");
        }
        // Non-contiguous or non-f32 input takes the generic path.
        assert!(gelu(&x.t().unwrap()).unwrap().is_none());
        assert!(gelu(&x.to_dtype(DType::F64).unwrap()).unwrap().is_none());
    }
}
