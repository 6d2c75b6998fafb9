//! The optimizer: AdamW (or plain SGD) with linear warm-up and cosine decay, global-norm
//! gradient clipping, and a state that is saved with checkpoints so a run resumes exactly.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Which update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    #[default]
    Adamw,
    Sgd,
}

/// Optimizer settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub rule: Rule,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Cosine decay to `lr · min_lr_ratio` at the last step.
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub clip_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            rule: Rule::Adamw,
            lr: 1e-5,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 2,
            min_lr_ratio: 0.1,
            clip_norm: 1.0,
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64, name: &str| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("optim.{name} must be a positive number (got {v})");
            }
            Ok(())
        };
        pos(self.lr, "lr")?;
        pos(self.eps, "eps")?;
        for (v, name) in [(self.beta1, "beta1"), (self.beta2, "beta2")] {
            if !(0.0..1.0).contains(&v) {
                bail!("optim.{name} must be in [0, 1) (got {v})");
            }
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!("optim.weight_decay must be ≥ 0 (got {})", self.weight_decay);
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!(
                "optim.min_lr_ratio must be in [0, 1] (got {})",
                self.min_lr_ratio
            );
        }
        if !(self.clip_norm >= 0.0 && self.clip_norm.is_finite()) {
            bail!("optim.clip_norm must be ≥ 0 (got {})", self.clip_norm);
        }
        Ok(())
    }

    /// Learning rate of step `s` (0-based) of `total`.
    pub fn lr_at(&self, s: usize, total: usize) -> f64 {
        if s < self.warmup_steps {
            return self.lr * (s + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let frac = ((s - self.warmup_steps) as f64 / span).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * frac).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cos)
    }
}

/// Global L2 norm of a set of gradients.
pub fn global_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut s = 0.0;
    for g in grads.values() {
        s += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(s.sqrt())
}

/// AdamW moments per parameter and the step count. Between updates the moments can be parked
/// in a file ([`Optimizer::park`]): a large model's moments are only read by the update, and
/// out of memory they leave room for the forward and backward passes.
#[derive(Clone, Default)]
pub struct Optimizer {
    pub cfg: OptimConfig,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    pub t: usize,
    /// Where the moments are while parked (and on which device they go back).
    parked: Option<(PathBuf, Device)>,
}

impl Optimizer {
    pub fn new(cfg: OptimConfig) -> Self {
        Optimizer {
            cfg,
            ..Default::default()
        }
    }

    /// The update Δ (to be added to each parameter) for gradients `grads` at learning rate `lr`.
    /// Each gradient goes as soon as its step is made (on a large model the gradients and the
    /// update are never both whole in memory).
    pub fn update(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        grads: BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<BTreeMap<String, Tensor>> {
        self.unpark()?;
        self.t += 1;
        let c = &self.cfg;
        let graded: std::collections::BTreeSet<String> = grads.keys().cloned().collect();
        let mut out = BTreeMap::new();
        for (owned, g) in grads {
            let (name, g) = (&owned, &g);
            // A projected term's own moments (see `ProjectAt::OwnMoments`) update the same
            // parameter as its other entry.
            let base = name
                .strip_prefix(crate::forget::trainer::OWN_MOMENTS)
                .unwrap_or(name);
            let w = params
                .get(base)
                .with_context(|| format!("optimizer: no parameter `{base}`"))?;
            let step = match c.rule {
                Rule::Sgd => g.affine(-lr, 0.0)?,
                Rule::Adamw => {
                    let m = match self.m.get(name) {
                        Some(m) => ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?,
                        None => (g * (1.0 - c.beta1))?,
                    };
                    let v = match self.v.get(name) {
                        Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                        None => (g.sqr()? * (1.0 - c.beta2))?,
                    };
                    let bc1 = 1.0 - c.beta1.powi(self.t as i32);
                    let bc2 = 1.0 - c.beta2.powi(self.t as i32);
                    let denom = (v.affine(1.0 / bc2, 0.0)?.sqrt()? + c.eps)?;
                    let s = (m.affine(1.0 / bc1, 0.0)? / denom)?.affine(-lr, 0.0)?;
                    self.m.insert(name.clone(), m);
                    self.v.insert(name.clone(), v);
                    s
                }
            };
            // Weight decay once per parameter.
            let decays = base == name || !graded.contains(base);
            let step = if c.weight_decay > 0.0 && decays {
                (step - w.affine(lr * c.weight_decay, 0.0)?)?
            } else {
                step
            };
            out.insert(name.clone(), step);
        }
        Ok(out)
    }

    /// Write the moments to `path` and let them go from memory until the next update,
    /// [`Optimizer::unpark`] or [`Optimizer::restore`] (exact: f32 written and read back).
    pub fn park(&mut self, path: &Path) -> Result<()> {
        let Some(device) = self.m.values().next().map(|t| t.device().clone()) else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::util::save_safetensors_atomic(&self.state_tensors()?, path)?;
        self.m.clear();
        self.v.clear();
        self.parked = Some((path.to_path_buf(), device));
        Ok(())
    }

    /// Bring parked moments back into memory (nothing when they are there).
    pub fn unpark(&mut self) -> Result<()> {
        if let Some((path, device)) = self.parked.take() {
            let t = self.t;
            self.restore(&load_tensors(&path)?, t, &device)?;
        }
        Ok(())
    }

    /// Moments as named tensors (for a checkpoint); read from their file while parked.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        if let Some((path, _)) = &self.parked {
            return load_tensors(path);
        }
        let mut out = HashMap::new();
        for (n, t) in &self.m {
            out.insert(format!("adam.m/{n}"), t.to_device(&Device::Cpu)?);
        }
        for (n, t) in &self.v {
            out.insert(format!("adam.v/{n}"), t.to_device(&Device::Cpu)?);
        }
        Ok(out)
    }

    /// Restore moments from checkpoint tensors and the step count (moments the tensors do not
    /// hold, such as those of a state before the first update, are none).
    pub fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        t: usize,
        device: &Device,
    ) -> Result<()> {
        self.parked = None;
        self.m.clear();
        self.v.clear();
        for (k, v) in tensors {
            if let Some(n) = k.strip_prefix("adam.m/") {
                self.m.insert(n.into(), v.to_device(device)?);
            } else if let Some(n) = k.strip_prefix("adam.v/") {
                self.v.insert(n.into(), v.to_device(device)?);
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Read a checkpoint's tensors (on the CPU, a tensor at a time: [`crate::util::load_safetensors`]).
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    crate::util::load_safetensors(path, &Device::Cpu)
        .with_context(|| format!("reading checkpoint {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 3,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        let lrs: Vec<f64> = (0..13).map(|s| c.lr_at(s, 13)).collect();
        assert!(lrs[0] < lrs[1] && lrs[1] < lrs[2] && lrs[2] < lrs[3]);
        assert!((lrs[3] - 1.0).abs() < 1e-12);
        assert!(lrs[3..].windows(2).all(|w| w[1] <= w[0]));
        assert!((c.lr_at(13, 13) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn adamw_first_step_is_lr_times_sign() {
        let dev = Device::Cpu;
        let w: BTreeMap<_, _> =
            [("w".to_string(), Tensor::new(&[1f32, 2.0], &dev).unwrap())].into();
        let g: BTreeMap<_, _> =
            [("w".to_string(), Tensor::new(&[0.5f32, -3.0], &dev).unwrap())].into();
        let mut o = Optimizer::new(OptimConfig::default());
        let d: Vec<f32> = o.update(&w, g.clone(), 0.01).unwrap()["w"]
            .to_vec1()
            .unwrap();
        assert!(
            (d[0] + 0.01).abs() < 1e-6 && (d[1] - 0.01).abs() < 1e-6,
            "{d:?}"
        );
    }

    #[test]
    fn parked_moments_leave_memory_and_come_back_exactly() {
        let dev = Device::Cpu;
        let w: BTreeMap<_, _> = [(
            "w".to_string(),
            Tensor::new(&[1f32, 2.0, -1.0], &dev).unwrap(),
        )]
        .into();
        let grads = |k: f32| -> BTreeMap<String, Tensor> {
            [(
                "w".to_string(),
                Tensor::new(&[0.3f32 * k, -1.7 / k, 0.01 * k * k], &dev).unwrap(),
            )]
            .into()
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut held, mut parked) = (
            Optimizer::new(OptimConfig::default()),
            Optimizer::new(OptimConfig::default()),
        );
        for k in 1..=4 {
            let a: Vec<f32> = held.update(&w, grads(k as f32), 0.01).unwrap()["w"]
                .to_vec1()
                .unwrap();
            let b: Vec<f32> = parked.update(&w, grads(k as f32), 0.01).unwrap()["w"]
                .to_vec1()
                .unwrap();
            assert_eq!(a, b, "update {k}");
            parked.park(&dir.path().join("m.safetensors")).unwrap();
            assert!(parked.m.is_empty() && parked.v.is_empty());
            // A checkpoint of a parked optimizer holds the same moments.
            let mut x: Vec<_> = held.state_tensors().unwrap().into_iter().collect();
            let mut y: Vec<_> = parked.state_tensors().unwrap().into_iter().collect();
            x.sort_by(|a, b| a.0.cmp(&b.0));
            y.sort_by(|a, b| a.0.cmp(&b.0));
            let vals = |v: &[(String, Tensor)]| -> Vec<(String, Vec<f32>)> {
                v.iter()
                    .map(|(n, t)| (n.clone(), t.to_vec1().unwrap()))
                    .collect()
            };
            assert_eq!(vals(&x), vals(&y));
        }
    }

    #[test]
    fn checkpoint_files_read_back_as_written_and_a_cut_file_is_named() {
        let dev = Device::Cpu;
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert(
            "a".into(),
            Tensor::new(&[[1f32, -2.5], [3.0, 4.0]], &dev).unwrap(),
        );
        t.insert("b".into(), Tensor::new(&[0.1f64, 2e-300], &dev).unwrap());
        t.insert(
            "c".into(),
            Tensor::new(&[1f32, 2.0, 3.0], &dev)
                .unwrap()
                .to_dtype(candle_core::DType::BF16)
                .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        crate::util::save_safetensors_atomic(&t, &p).unwrap();
        let back = load_tensors(&p).unwrap();
        assert_eq!(back.len(), 3);
        for (n, x) in &t {
            let y = &back[n];
            assert_eq!((x.dtype(), x.dims()), (y.dtype(), y.dims()), "{n}");
            let f = |t: &Tensor| -> Vec<f64> {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            assert_eq!(f(x), f(y), "{n}");
        }
        // A file cut short (a disk that filled up) is refused, naming the file.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = format!("{:#}", load_tensors(&p).unwrap_err());
        assert!(
            e.contains("s.safetensors") && e.contains("end of the file"),
            "{e}"
        );
    }

    #[test]
    fn restoring_a_state_before_any_update_leaves_no_moments() {
        let dev = Device::Cpu;
        let w: BTreeMap<_, _> = [("w".to_string(), Tensor::new(&[1f32], &dev).unwrap())].into();
        let g: BTreeMap<_, _> = [("w".to_string(), Tensor::new(&[0.5f32], &dev).unwrap())].into();
        let mut o = Optimizer::new(OptimConfig::default());
        o.update(&w, g, 0.1).unwrap();
        o.restore(&HashMap::new(), 0, &dev).unwrap();
        assert!(o.m.is_empty() && o.v.is_empty() && o.t == 0);
    }

    #[test]
    fn nonsense_settings_are_refused() {
        for c in [
            OptimConfig {
                lr: -1.0,
                ..Default::default()
            },
            OptimConfig {
                beta2: 1.0,
                ..Default::default()
            },
            OptimConfig {
                clip_norm: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(c.validate().is_err());
        }
    }
}
