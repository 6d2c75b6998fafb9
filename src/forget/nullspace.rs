//! KUDA's relaxed null-space projection. For each updated matrix W (input keys k), the key
//! statistics Σ = E[k kᵀ] over retain facts and general text are computed once (and cached on
//! disk), eigendecomposed with faer (Σ = U Λ Uᵀ), and turned into a projector applied on the
//! input side of W's gradient (G ← G·P):
//!
//! * strict (AlphaEdit): P = U₀U₀ᵀ over the eigenvalues below τ — W·k does not move for keys
//!   in Σ's range;
//! * relaxed: P = U diag(τ / (λᵢ + τ)) Uᵀ — directions the retain keys use a lot are damped,
//!   rarely used ones pass.
//!
//! τ is given relative to the mean eigenvalue (trace/n), so one value fits every matrix.

use crate::forget::seqs::Seq;
use crate::model::{Batch, HookPoint, Hooks, PadSide, RunOpts, Transformer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Which projection the forget gradient gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Projection {
    None,
    Strict,
    #[default]
    Relaxed,
}

impl std::str::FromStr for Projection {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Projection::None,
            "strict" => Projection::Strict,
            "relaxed" => Projection::Relaxed,
            _ => bail!("projection {s:?}: use none, strict or relaxed"),
        })
    }
}

/// Σ = Σₖ k kᵀ and the number of keys, per key point name.
pub type KeySums = BTreeMap<String, (Tensor, usize)>;

/// Sum k kᵀ over every real position of `seqs` for the key points of `params`.
pub fn key_sums(
    model: &Transformer,
    seqs: &[Seq],
    params: &[String],
    pad: u32,
    bs: usize,
) -> Result<KeySums> {
    let mut sums: KeySums = BTreeMap::new();
    for_key_rows(model, seqs, params, pad, bs, |point, k| {
        let kk = k.t()?.matmul(k)?.to_dtype(DType::F64)?;
        let e = sums
            .entry(point.to_string())
            .or_insert_with(|| (kk.zeros_like().expect("zeros"), 0));
        e.0 = (&e.0 + kk)?;
        e.1 += k.dim(0)?;
        Ok(())
    })?;
    Ok(sums)
}

/// Call `f(point, keys)` with the keys `[positions, n]` of every real position of a batch of
/// `seqs`, for each key point of `params`, a batch of `bs` at a time.
fn for_key_rows(
    model: &Transformer,
    seqs: &[Seq],
    params: &[String],
    pad: u32,
    bs: usize,
    mut f: impl FnMut(&HookPoint, &Tensor) -> Result<()>,
) -> Result<()> {
    let mut points: BTreeMap<HookPoint, Vec<&String>> = BTreeMap::new();
    for p in params {
        let kp = model.key_point(p).with_context(|| {
            format!("null-space projection: `{p}` is not a block weight matrix")
        })?;
        points.entry(kp).or_default().push(p);
    }
    let Some(top) = points.keys().filter_map(|p| p.layer()).max() else {
        return Ok(());
    };
    let mut hooks = Hooks::new();
    for p in points.keys() {
        hooks = hooks.cache(*p);
    }
    for chunk in seqs.chunks(bs.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|s| s.ids.clone()).collect();
        let batch = Batch::new(&ids, pad, PadSide::Right, model.device())?;
        let out = model.run(
            &batch,
            &RunOpts {
                hooks: Some(&hooks),
                stop_at: Some(top + 1),
                logits: crate::model::LogitsAt::None,
                ..Default::default()
            },
        )?;
        for (point, names) in &points {
            let x = model.matrix_input(names[0], &out.cache[point])?;
            let rows: Vec<Tensor> = chunk
                .iter()
                .enumerate()
                .map(|(k, s)| x.get(k)?.narrow(0, 0, s.ids.len()))
                .collect::<candle_core::Result<_>>()?;
            f(point, &Tensor::cat(&rows, 0)?)?;
        }
    }
    Ok(())
}

/// Load key sums from `path` if it exists, else compute and save them there (atomically).
pub fn cached_key_sums(path: &Path, compute: impl FnOnce() -> Result<KeySums>) -> Result<KeySums> {
    if path.exists() {
        let t = crate::util::load_safetensors(path, &Device::Cpu)
            .with_context(|| format!("reading cached key statistics {}", path.display()))?;
        let mut out = KeySums::new();
        for (name, sigma) in &t {
            if let Some(point) = name.strip_prefix("sigma/") {
                let n = t
                    .get(&format!("count/{point}"))
                    .context("cached key statistics without counts")?
                    .to_vec1::<f64>()?[0] as usize;
                out.insert(point.to_string(), (sigma.clone(), n));
            }
        }
        return Ok(out);
    }
    let sums = compute()?;
    let mut map = std::collections::HashMap::new();
    for (p, (s, n)) in &sums {
        map.insert(format!("sigma/{p}"), s.to_device(&Device::Cpu)?);
        map.insert(
            format!("count/{p}"),
            Tensor::new(&[*n as f64], &Device::Cpu)?,
        );
    }
    crate::util::save_safetensors_atomic(&map, path)?;
    Ok(sums)
}

/// Projector `[n, n]` (f32, on `device`) from a key sum, or None for `Projection::None`.
pub fn projector(
    sum: &Tensor,
    count: usize,
    mode: Projection,
    tau_rel: f64,
    device: &Device,
) -> Result<Option<Tensor>> {
    projector_as(sum, count, mode, tau_rel, device, DType::F32)
}

/// [`projector`] in a given dtype (the model's).
pub fn projector_as(
    sum: &Tensor,
    count: usize,
    mode: Projection,
    tau_rel: f64,
    device: &Device,
    dtype: DType,
) -> Result<Option<Tensor>> {
    if mode == Projection::None {
        return Ok(None);
    }
    if count == 0 {
        bail!("null-space projection: no keys to build it from");
    }
    if !(tau_rel.is_finite() && tau_rel > 0.0) {
        bail!("null-space projection: tau must be a positive number (got {tau_rel})");
    }
    let n = sum.dim(0)?;
    // One n×n matrix at a time beside the eigenvectors: at an MLP's down projection of the
    // 1.5B model (n = 8960) each is 0.64 GB in f64.
    let sigma = {
        let s: Vec<f64> = sum.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        faer::Mat::<f64>::from_fn(n, n, |i, j| s[i * n + j] / count as f64)
    };
    let evd = sigma
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| anyhow::anyhow!("eigendecomposition of the key covariance failed: {e:?}"))?;
    drop(sigma);
    let (u, lam) = (evd.U(), evd.S().column_vector());
    let mean = (0..n).map(|i| lam[i]).sum::<f64>() / n as f64;
    let tau = tau_rel * mean.max(f64::MIN_POSITIVE);
    let w: Vec<f64> = (0..n)
        .map(|i| {
            let l = lam[i].max(0.0);
            match mode {
                Projection::Strict => f64::from(u8::from(l < tau)),
                _ => tau / (l + tau),
            }
        })
        .collect();
    // P = U·diag(w)·Uᵀ = (U·√w)(U·√w)ᵀ, every w ≥ 0.
    let half = faer::Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * w[j].sqrt());
    drop(evd);
    let p = &half * half.transpose();
    drop(half);
    let at = |k: usize| p[(k / n, k % n)];
    Ok(Some(if dtype == DType::F64 {
        Tensor::from_vec((0..n * n).map(at).collect::<Vec<f64>>(), (n, n), device)?
    } else {
        let v: Vec<f32> = (0..n * n).map(|k| at(k) as f32).collect();
        Tensor::from_vec(v, (n, n), device)?.to_dtype(dtype)?
    }))
}

/// [`projector_as`] in the model's dtype, kept on disk (`projectors/` in the cache) under a key
/// of the code, the key sum itself and the settings: runs that differ in anything else (the
/// learning rate of a sweep, the steps) share one eigendecomposition, minutes each at an MLP's
/// down projection of a 1.5B model.
fn cached_projector(
    point: &str,
    sum: &Tensor,
    count: usize,
    mode: Projection,
    tau_rel: f64,
    model: &Transformer,
) -> Result<Option<Tensor>> {
    let dir = crate::model::source::cache_dir()?.join("projectors");
    projector_in(
        &dir,
        point,
        sum,
        count,
        mode,
        tau_rel,
        model.device(),
        model.dtype(),
    )
}

/// [`cached_projector`] with the cache folder given.
#[allow(clippy::too_many_arguments)]
fn projector_in(
    dir: &Path,
    point: &str,
    sum: &Tensor,
    count: usize,
    mode: Projection,
    tau_rel: f64,
    device: &Device,
    dtype: DType,
) -> Result<Option<Tensor>> {
    use sha2::{Digest, Sha256};
    if mode == Projection::None {
        return Ok(None);
    }
    let mut h = Sha256::new();
    h.update(crate::util::code_fingerprint().as_bytes());
    h.update(format!("{mode:?}|{tau_rel:e}|{count}|{dtype:?}|{:?}|", sum.dims()).as_bytes());
    for x in sum.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()? {
        h.update(x.to_le_bytes());
    }
    let path = dir.join(format!("{}.safetensors", &hex::encode(h.finalize())[..32]));
    if path.exists() {
        let mut t = crate::util::load_safetensors(&path, device)
            .with_context(|| format!("reading the cached projector {}", path.display()))?;
        let p = t
            .remove("projector")
            .with_context(|| format!("{}: no `projector` tensor", path.display()))?;
        return Ok(Some(p.to_dtype(dtype)?));
    }
    let sp = crate::util::spinner(&format!(
        "null-space projector at {point} (eigendecomposition)"
    ));
    let p = projector_as(sum, count, mode, tau_rel, device, dtype)?;
    sp.finish_and_clear();
    if let Some(p) = &p {
        let map = std::collections::HashMap::from([("projector".to_string(), p.clone())]);
        crate::util::save_safetensors_atomic(&map, &path)?;
    }
    Ok(p)
}

/// How much of a set of keys' energy a projector lets through, ‖K·P‖²_F / ‖K‖²_F (= tr(PΣP) /
/// tr(Σ)): the share of an update's effect on those keys that survives the projection. Near
/// 0 for the key data it was built from; general text the statistics never saw can pass far
/// more, and what passes is what the forget update may move.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PassShare {
    /// Over the key data (retain rows and the key text) the projector was built from.
    pub key_data: f64,
    /// Over held-out general text (the training's perplexity probe), when measured.
    pub held_out_text: Option<f64>,
}

/// Projectors of the updated matrices, by parameter name.
#[derive(Clone, Default)]
pub struct Projectors {
    by_param: BTreeMap<String, Tensor>,
    /// The projectors' [`PassShare`]s, by key point.
    pub pass: BTreeMap<String, PassShare>,
}

impl Projectors {
    /// Build projectors for `params` from key sums (one eigendecomposition per key point).
    pub fn build(
        model: &Transformer,
        sums: &KeySums,
        params: &[String],
        mode: Projection,
        tau_rel: f64,
    ) -> Result<Projectors> {
        let mut by_point: BTreeMap<String, Option<Tensor>> = BTreeMap::new();
        let mut by_param = BTreeMap::new();
        let mut pass = BTreeMap::new();
        for p in params {
            let Some(kp) = model.key_point(p) else {
                continue;
            };
            let key = kp.to_string();
            if !by_point.contains_key(&key) {
                let (s, n) = sums
                    .get(&key)
                    .with_context(|| format!("no key statistics for `{key}`"))?;
                let pm = cached_projector(&key, s, *n, mode, tau_rel, model)?;
                if let Some(pm) = &pm {
                    let key_data = sum_pass_share(pm, s)?;
                    pass.insert(
                        key.clone(),
                        PassShare {
                            key_data,
                            held_out_text: None,
                        },
                    );
                }
                by_point.insert(key.clone(), pm);
            }
            if let Some(pm) = &by_point[&key] {
                by_param.insert(p.clone(), pm.clone());
            }
        }
        Ok(Projectors { by_param, pass })
    }

    /// Measure each projector's [`PassShare::held_out_text`] on the keys of `seqs` (general
    /// text no key statistic read).
    pub fn measure_held_out(&mut self, model: &Transformer, seqs: &[Seq], pad: u32) -> Result<()> {
        let params: Vec<String> = self.by_param.keys().cloned().collect();
        let mut energy: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        let by_point: BTreeMap<String, Tensor> = params
            .iter()
            .filter_map(|p| Some((model.key_point(p)?.to_string(), self.by_param[p].clone())))
            .collect();
        for_key_rows(model, seqs, &params, pad, 1, |point, k| {
            let point = point.to_string();
            let Some(pm) = by_point.get(&point) else {
                return Ok(());
            };
            let k = k.to_dtype(pm.dtype())?;
            let passed = sq_sum(&k.matmul(pm)?)?;
            let e = energy.entry(point).or_default();
            e.0 += passed;
            e.1 += sq_sum(&k)?;
            Ok(())
        })?;
        for (point, (passed, all)) in energy {
            if let Some(ps) = self.pass.get_mut(&point) {
                ps.held_out_text = Some(passed / all.max(f64::MIN_POSITIVE));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_param.is_empty()
    }

    /// G ← G·P for every gradient that has a projector.
    pub fn apply(&self, grads: &mut BTreeMap<String, Tensor>) -> Result<()> {
        for (name, g) in grads.iter_mut() {
            if let Some(p) = self.by_param.get(name) {
                *g = g.matmul(p)?;
            }
        }
        Ok(())
    }
}

/// Σ of the squared entries of `t`, in f64.
fn sq_sum(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// tr(PΣP) / tr(Σ) for a symmetric projector `p` and a key sum `sum` (any count: it cancels).
fn sum_pass_share(p: &Tensor, sum: &Tensor) -> Result<f64> {
    let n = sum.dim(0)?;
    let s = sum.to_dtype(p.dtype())?;
    let num = (p.matmul(&s)? * p)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    let at: Vec<u32> = (0..n).map(|i| (i * (n + 1)) as u32).collect();
    let diag = Tensor::new(at.as_slice(), sum.device())?;
    let tr = sum
        .flatten_all()?
        .index_select(&diag, 0)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(num / tr.max(f64::MIN_POSITIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize, d: usize, seed: u64) -> Tensor {
        crate::model::ops::tests::rnd(&[n, d], seed, 1.0)
            .to_dtype(DType::F32)
            .unwrap()
    }

    /// Σ kᵀk of keys `[n, d]`, in f64 (a key sum).
    fn gram(k: &Tensor) -> Tensor {
        k.t()
            .unwrap()
            .matmul(k)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }

    fn moved(g: &Tensor, p: Option<&Tensor>, k: &Tensor) -> f32 {
        let dw = match p {
            Some(p) => g.matmul(p).unwrap(),
            None => g.clone(),
        };
        dw.matmul(&k.t().unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// A projector is made once per key sum and settings: the second request reads the file
    /// the first wrote (a file changed on disk is what comes back), other settings make
    /// another one, and what is kept equals what is computed.
    #[test]
    fn a_projector_is_computed_once_and_read_back() {
        let dev = Device::Cpu;
        let k = keys(6, 10, 3);
        let sum = gram(&k);
        let dir = tempfile::tempdir().unwrap();
        let get = |tau: f64| {
            projector_in(
                dir.path(),
                "p",
                &sum,
                6,
                Projection::Relaxed,
                tau,
                &dev,
                DType::F32,
            )
            .unwrap()
            .unwrap()
        };
        let direct = projector(&sum, 6, Projection::Relaxed, 0.1, &dev)
            .unwrap()
            .unwrap();
        let first = get(0.1);
        let same = |a: &Tensor, b: &Tensor| {
            let d: f32 = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            d == 0.0
        };
        assert!(same(&first, &direct));
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 1);
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let marked = (&first * 2.0).unwrap();
        let map = std::collections::HashMap::from([("projector".to_string(), marked.clone())]);
        crate::util::save_safetensors_atomic(&map, &file).unwrap();
        assert!(
            same(&get(0.1), &marked),
            "the second request was computed again"
        );
        let other = get(0.2);
        assert_eq!(files(), 2);
        assert!(!same(&other, &first));
        assert!(projector_in(
            dir.path(),
            "p",
            &sum,
            6,
            Projection::None,
            0.1,
            &dev,
            DType::F32
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn strict_keeps_w_k_relaxed_sits_between() {
        let dev = Device::Cpu;
        // 6 keys in 10 dimensions: Σ has a 4-dimensional null space.
        let k = keys(6, 10, 3);
        let sum = gram(&k);
        let g = keys(4, 10, 9);
        let strict = projector(&sum, 6, Projection::Strict, 1e-6, &dev).unwrap();
        let relaxed = projector(&sum, 6, Projection::Relaxed, 0.1, &dev).unwrap();
        assert!(projector(&sum, 6, Projection::None, 0.1, &dev)
            .unwrap()
            .is_none());
        let (s, r, n) = (
            moved(&g, strict.as_ref(), &k),
            moved(&g, relaxed.as_ref(), &k),
            moved(&g, None, &k),
        );
        assert!(s < 1e-4 * n, "strict moves W·k by {s} (none: {n})");
        assert!(s < r && r < n, "strict {s} < relaxed {r} < none {n}");
        // The strict projector is a projection onto the null space: P² = P, rank 4.
        let p = strict.unwrap();
        let p2 = p.matmul(&p).unwrap();
        let err: f32 = (&p2 - &p)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err < 1e-5);
        let tr: f32 = (&p * Tensor::eye(10, DType::F32, &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((tr - 4.0).abs() < 1e-4, "trace {tr}");
    }

    #[test]
    fn bad_tau_is_an_error() {
        let sum = Tensor::eye(3, DType::F64, &Device::Cpu).unwrap();
        for tau in [0.0, -1.0, f64::NAN] {
            let e = projector(&sum, 3, Projection::Relaxed, tau, &Device::Cpu).unwrap_err();
            assert!(e.to_string().contains("tau"), "{e}");
        }
    }

    /// The pass share from a key sum equals ‖K·P‖²/‖K‖² over the keys themselves; a strict
    /// projector built from keys in a 6-dimensional subspace passes none of their energy and
    /// all of keys orthogonal to them, and a relaxed one sits between.
    #[test]
    fn the_pass_share_is_what_the_projector_lets_through() {
        let dev = Device::Cpu;
        // 40 keys in the span of the first 6 of 10 coordinates; 20 in the other 4.
        let mask = |lo: usize, hi: usize| {
            let m: Vec<f32> = (0..10)
                .map(|i| f32::from(u8::from((lo..hi).contains(&i))))
                .collect();
            Tensor::new(m.as_slice(), &dev).unwrap()
        };
        let inside = keys(40, 10, 5).broadcast_mul(&mask(0, 6)).unwrap();
        let outside = keys(20, 10, 6).broadcast_mul(&mask(6, 10)).unwrap();
        let sum = gram(&inside);
        let direct =
            |p: &Tensor, k: &Tensor| sq_sum(&k.matmul(p).unwrap()).unwrap() / sq_sum(k).unwrap();
        for mode in [Projection::Strict, Projection::Relaxed] {
            let p = projector(&sum, 40, mode, 0.01, &dev).unwrap().unwrap();
            let from_sum = sum_pass_share(&p, &sum).unwrap();
            let from_keys = direct(&p, &inside);
            assert!(
                (from_sum - from_keys).abs() < 1e-5,
                "{mode:?}: {from_sum} vs {from_keys}"
            );
            let out = direct(&p, &outside);
            assert!(out > 0.999, "{mode:?}: keys outside the data pass {out}");
            match mode {
                Projection::Strict => assert!(from_sum < 1e-8, "strict passes {from_sum}"),
                _ => assert!(
                    from_sum > 1e-6 && from_sum < 0.05,
                    "relaxed passes {from_sum}"
                ),
            }
        }
    }
}
