//! LoRA adapters on the model's linear layers: W = W₀ + (α/r)·B·A with A (r × in) drawn
//! uniformly in ±1/√in and B (out × r) zero, so training starts at W₀. The adapters run beside
//! their matrices ([`crate::model::adapter`]): the transformer's backward gives their gradients
//! dL/dB = s·G·Aᵀ and dL/dA = s·Bᵀ·G (s = α/r, G = dL/dW) without forming G, so LoRA trains
//! through the same trainer as everything else. Dropout is applied to the adapter's input
//! features with one mask per step shared by all tokens; with the mask m the effective update
//! is s·B·A·diag(m)/(1 − p).

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::model::adapter::{self, Adapter};
use crate::model::Transformer;

/// Adapter settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// `all-linear` (attention q/k/v/o and MLP gate/up/down) or `mlp`.
    pub targets: String,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: "all-linear".into(),
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("lora.rank must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            bail!("lora.alpha must be a positive number, got {}", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("lora.dropout must be in [0, 1), got {}", self.dropout);
        }
        if !["all-linear", "mlp"].contains(&self.targets.as_str()) {
            bail!("lora.targets {:?}: use all-linear or mlp", self.targets);
        }
        Ok(())
    }

    /// The weight matrices adapted in `model`.
    pub fn target_names(&self, model: &Transformer) -> Vec<String> {
        let mats: &[&str] = if self.targets == "mlp" {
            &["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        } else {
            &[
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ]
        };
        (0..model.config.num_layers)
            .flat_map(|l| {
                mats.iter()
                    .map(move |m| format!("model.layers.{l}.{m}.weight"))
            })
            .collect()
    }
}

/// One adapter per target matrix (the frozen W₀ stays in the model).
#[derive(Debug)]
pub struct Lora {
    pub cfg: LoraConfig,
    /// Target matrix names and their input widths.
    inputs: BTreeMap<String, usize>,
    /// `{name}.lora_A` and `{name}.lora_B`.
    pub params: BTreeMap<String, Tensor>,
    /// Input-feature mask of the current step (None: no dropout).
    masks: BTreeMap<String, Tensor>,
}

impl Lora {
    pub fn new(model: &Transformer, cfg: LoraConfig, seed: u64) -> Result<Lora> {
        cfg.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut inputs, mut params) = (BTreeMap::new(), BTreeMap::new());
        // In the compute dtype (f32) even when the model stores its matrices in bf16.
        let (dtype, device) = (model.dtype(), model.device());
        for name in cfg.target_names(model) {
            let (out, inp) = model
                .weights()
                .get(&name)?
                .dims2()
                .with_context(|| format!("{name} is not a matrix"))?;
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f64> = (0..cfg.rank * inp)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Tensor::from_vec(a, (cfg.rank, inp), device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((out, cfg.rank), dtype, device)?;
            let (na, nb) = adapter::grad_names(&name);
            params.insert(na, a);
            params.insert(nb, b);
            inputs.insert(name, inp);
        }
        Ok(Lora {
            cfg,
            inputs,
            params,
            masks: BTreeMap::new(),
        })
    }

    fn scale(&self) -> f64 {
        self.cfg.alpha / self.cfg.rank as f64
    }

    pub fn targets(&self) -> Vec<String> {
        self.inputs.keys().cloned().collect()
    }

    /// A (r × in) with this step's dropout mask applied to its columns, rescaled by 1/(1 − p).
    fn a_eff(&self, name: &str) -> Result<Tensor> {
        let a = &self.params[&adapter::grad_names(name).0];
        Ok(match self.masks.get(name) {
            Some(m) => a.broadcast_mul(m)?,
            None => a.clone(),
        })
    }

    /// Draw this step's dropout masks (a no-op without dropout).
    pub fn new_masks(&mut self, seed: u64, step: usize) -> Result<()> {
        let p = self.cfg.dropout;
        if p == 0.0 {
            return Ok(());
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37));
        for (name, &inp) in &self.inputs {
            let a = &self.params[&adapter::grad_names(name).0];
            let m: Vec<f64> = (0..inp)
                .map(|_| {
                    if rng.random::<f64>() < p {
                        0.0
                    } else {
                        1.0 / (1.0 - p)
                    }
                })
                .collect();
            let m = Tensor::from_vec(m, (1, inp), a.device())?.to_dtype(a.dtype())?;
            self.masks.insert(name.clone(), m);
        }
        Ok(())
    }

    /// Run the adapters (A with this step's dropout mask) beside their matrices in `model`.
    pub fn attach(&self, model: &mut Transformer) -> Result<()> {
        let mut map = BTreeMap::new();
        for name in self.inputs.keys() {
            let b = self.params[&adapter::grad_names(name).1].clone();
            let a = self.a_eff(name)?;
            let scale = self.scale();
            map.insert(name.clone(), Adapter { a, b, scale });
        }
        model.set_adapters(map)
    }

    /// Write W₀ + s·B·A (no dropout) into the model's matrices, in the compute dtype, and take
    /// the adapters off.
    pub fn merge(&self, model: &mut Transformer) -> Result<()> {
        model.set_adapters(BTreeMap::new())?;
        let s = self.scale();
        for name in self.inputs.keys() {
            let (na, nb) = adapter::grad_names(name);
            let w0 = model
                .weights()
                .dense(name, model.device())?
                .to_dtype(model.dtype())?;
            let delta = self.params[&nb].matmul(&self.params[&na])?.affine(s, 0.0)?;
            model.set_param(name, (w0 + delta)?)?;
        }
        Ok(())
    }

    /// The adapters' gradients out of a backward's (d/dA of the masked A times the mask).
    pub fn adapter_grads(
        &self,
        mut g: BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for name in self.inputs.keys() {
            let (na, nb) = adapter::grad_names(name);
            if let Some(mut ga) = g.remove(&na) {
                if let Some(m) = self.masks.get(name) {
                    ga = ga.broadcast_mul(m)?;
                }
                out.insert(na, ga);
            }
            if let Some(gb) = g.remove(&nb) {
                out.insert(nb, gb);
            }
        }
        if let Some(other) = g.keys().next() {
            bail!("LoRA training gave a gradient for `{other}`, which is not an adapter");
        }
        Ok(out)
    }

    /// The same adapters without this step's dropout mask (for measuring).
    pub fn without_masks(&self) -> Lora {
        Lora {
            cfg: self.cfg.clone(),
            inputs: self.inputs.clone(),
            params: self.params.clone(),
            masks: BTreeMap::new(),
        }
    }

    /// Trainable adapter parameters.
    pub fn param_count(&self) -> usize {
        self.params.values().map(|t| t.elem_count()).sum()
    }
}

/// What a short fine-tuning ([`fine_tune`]) trains.
pub enum Tuned<'a> {
    /// LoRA adapters on the plan's matrices; W₀ + s·B·A is in the model after every step.
    Adapters(&'a mut Lora),
    /// The plan's parameters themselves (full fine-tuning of those tensors).
    Weights,
}

/// Where a [`fine_tune`] keeps its state between steps so that a run cut off goes on from
/// there: `dir/state.safetensors` (the trained tensors and Adam's moments) and
/// `dir/state.json` (`key` and the steps done). A state written under another key (other
/// settings, data, model or code) is not read.
pub struct Resume {
    pub dir: std::path::PathBuf,
    pub key: String,
}

impl Resume {
    /// The steps done by the state kept under this key (None: none kept).
    pub fn saved_step(&self) -> Option<usize> {
        let v = crate::util::read_json(&self.dir.join("state.json")).ok()??;
        (v["key"].as_str()? == self.key)
            .then(|| v["step"].as_u64())?
            .map(|s| s as usize)
    }

    fn save(
        &self,
        step: usize,
        params: &BTreeMap<String, Tensor>,
        opt: &crate::forget::optim::Optimizer,
    ) -> Result<()> {
        let mut t = opt.state_tensors()?;
        for (k, v) in params {
            t.insert(
                format!("param/{k}"),
                v.to_device(&candle_core::Device::Cpu)?,
            );
        }
        std::fs::create_dir_all(&self.dir)?;
        crate::util::save_safetensors_atomic(&t, &self.dir.join("state.safetensors"))?;
        crate::util::write_json(
            &self.dir.join("state.json"),
            &serde_json::json!({"key": self.key, "step": step}),
        )
    }

    /// The kept trained tensors into `params` and moments into `opt`, at `step`.
    fn load(
        &self,
        step: usize,
        params: &mut BTreeMap<String, Tensor>,
        opt: &mut crate::forget::optim::Optimizer,
    ) -> Result<()> {
        let path = self.dir.join("state.safetensors");
        let t = crate::forget::optim::load_tensors(&path)?;
        for (k, v) in params.iter_mut() {
            let saved = t
                .get(&format!("param/{k}"))
                .with_context(|| format!("{}: no `{k}`", path.display()))?;
            *v = saved.to_device(v.device())?.to_dtype(v.dtype())?;
        }
        let device = params.values().next().map(|v| v.device().clone());
        opt.restore(&t, step, &device.unwrap_or(candle_core::Device::Cpu))
    }
}

/// Fine-tune `tuned` on `plan` for `cfg.steps` steps (AdamW at `cfg.optim.lr`, no weight decay,
/// `cfg.optim`'s schedule and clipping, the trainer's data order). `after_step(step,
/// total_loss, lm)` runs after each step, with the model holding the trained weights (adapters
/// without dropout, run beside their matrices and left there at the end: [`Lora::merge`]
/// writes them into the weights), and says whether to keep the state there (with `resume`);
/// a run whose state is kept goes on from its last kept step. `what` names the run in errors.
/// Returns the last step's loss per term (none when every step was done before).
pub fn fine_tune(
    lm: &mut crate::model::LanguageModel,
    plan: &crate::forget::trainer::Plan,
    cfg: &crate::forget::config::ForgetConfig,
    mut tuned: Tuned,
    what: &str,
    resume: Option<&Resume>,
    mut after_step: impl FnMut(usize, f64, &crate::model::LanguageModel) -> Result<bool>,
) -> Result<BTreeMap<String, f64>> {
    use crate::forget::optim::{global_norm, Optimizer};
    let mut ocfg = cfg.optim.clone();
    ocfg.weight_decay = 0.0;
    let mut opt = Optimizer::new(ocfg.clone());
    let mut weights = BTreeMap::new();
    match &tuned {
        // The adapters without dropout run in the model after every step (B = 0 before the
        // first); only a step with dropout masks needs its own first. The matrices themselves
        // are frozen: the backward gives the adapters' gradients only.
        Tuned::Adapters(lora) => {
            lm.model.set_trainable::<&str>(&[])?;
            lora.without_masks().attach(&mut lm.model)?
        }
        Tuned::Weights => {
            lm.model.set_trainable(&plan.params)?;
            for p in &plan.params {
                weights.insert(p.clone(), lm.model.weights().get(p)?.clone());
            }
        }
    }
    let start = resume
        .and_then(Resume::saved_step)
        .unwrap_or(0)
        .min(cfg.steps);
    if start > 0 {
        let r = resume.expect("a kept step has a state");
        match &mut tuned {
            Tuned::Adapters(lora) => {
                r.load(start, &mut lora.params, &mut opt)?;
                lora.without_masks().attach(&mut lm.model)?;
            }
            Tuned::Weights => {
                r.load(start, &mut weights, &mut opt)?;
                for (k, w) in &weights {
                    lm.model.set_param(k, w.clone())?;
                }
            }
        }
    }
    let mut last = BTreeMap::new();
    for step in start..cfg.steps {
        if let Tuned::Adapters(lora) = &mut tuned {
            if lora.cfg.dropout > 0.0 {
                lora.new_masks(cfg.seed, step)?;
                lora.attach(&mut lm.model)?;
            }
        }
        let (g, losses) = crate::forget::trainer::step_grads(&lm.model, plan, cfg, step, None)
            .with_context(|| format!("{what}, step {}", step + 1))?;
        let (params, mut grads) = match &mut tuned {
            Tuned::Adapters(lora) => {
                let ga = lora.adapter_grads(g)?;
                (&mut lora.params, ga)
            }
            Tuned::Weights => (&mut weights, g),
        };
        let norm = global_norm(&grads)?;
        if !norm.is_finite() {
            bail!("{what}, step {}: the gradient is not a number", step + 1);
        }
        if ocfg.clip_norm > 0.0 && norm > ocfg.clip_norm {
            for t in grads.values_mut() {
                *t = t.affine(ocfg.clip_norm / norm, 0.0)?;
            }
        }
        let upd = opt.update(params, grads, ocfg.lr_at(step, cfg.steps))?;
        for (k, u) in upd {
            let p = (&params[&k] + u)?;
            params.insert(k, p);
        }
        let total: f64 = plan.terms.iter().map(|t| t.weight * losses[&t.name]).sum();
        if !total.is_finite() {
            bail!("{what}, step {}: the loss is not a number", step + 1);
        }
        match &tuned {
            Tuned::Adapters(lora) => lora.without_masks().attach(&mut lm.model)?,
            Tuned::Weights => {
                for (k, w) in &weights {
                    lm.model.set_param(k, w.clone())?;
                }
            }
        }
        if after_step(step, total, lm)? {
            if let Some(r) = resume {
                let params = match &tuned {
                    Tuned::Adapters(lora) => &lora.params,
                    Tuned::Weights => &weights,
                };
                r.save(step + 1, params, &opt)?;
            }
        }
        last = losses;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transformer::tests::{max_diff, tiny_model};
    use crate::model::{Arch, Batch, Checkpoint, LogitsAt, PadSide, RunOpts};

    /// A scalar metric of the model: sum of the last-position logits times fixed weights.
    fn metric(m: &Transformer) -> (f64, BTreeMap<String, Tensor>) {
        metric_with(m, Checkpoint::Off)
    }

    fn metric_with(m: &Transformer, checkpoint: Checkpoint) -> (f64, BTreeMap<String, Tensor>) {
        let b = Batch::new(
            &[vec![1, 5, 9, 3], vec![1, 4, 8]],
            0,
            PadSide::Left,
            m.device(),
        )
        .unwrap();
        let out = m
            .run(
                &b,
                &RunOpts {
                    logits: LogitsAt::Last,
                    grad: true,
                    checkpoint,
                    ..Default::default()
                },
            )
            .unwrap();
        let logits = out.logits.clone().unwrap();
        let wts = crate::model::ops::tests::rnd(logits.dims(), 77, 1.0);
        let v: f64 = (&logits * &wts)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let g = m.backward(&out, Some(&wts), None).unwrap();
        (v, g.params)
    }

    /// The factored adapter gradients equal finite differences of the metric in A and B,
    /// with and without dropout.
    #[test]
    fn adapter_gradients_match_finite_differences() {
        for dropout in [0.0, 0.5] {
            let mut m = tiny_model(Arch::Gemma3);
            let cfg = LoraConfig {
                rank: 2,
                alpha: 3.0,
                dropout,
                targets: "all-linear".into(),
            };
            let mut lora = Lora::new(&m, cfg, 1).unwrap();
            lora.new_masks(4, 0).unwrap();
            // Non-zero B so that dL/dA is not trivially zero.
            for (k, v) in lora.params.iter_mut() {
                if k.ends_with("lora_B") {
                    let dims = v.dims().to_vec();
                    *v = crate::model::ops::tests::rnd(&dims, 5, 0.3);
                }
            }
            lora.attach(&mut m).unwrap();
            let (_, g) = metric(&m);
            let ga = lora.adapter_grads(g).unwrap();
            for key in [
                "model.layers.1.mlp.up_proj.weight.lora_A",
                "model.layers.0.self_attn.q_proj.weight.lora_B",
            ] {
                let base = lora.params[key].clone();
                let mut flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
                let analytic: Vec<f64> = ga[key].flatten_all().unwrap().to_vec1().unwrap();
                for i in [0, flat.len() / 2, flat.len() - 1] {
                    let h = 1e-5;
                    let x0 = flat[i];
                    let mut eval = |x: f64| {
                        flat[i] = x;
                        let t = Tensor::from_vec(flat.clone(), base.dims(), base.device()).unwrap();
                        lora.params.insert(key.into(), t);
                        lora.attach(&mut m).unwrap();
                        metric(&m).0
                    };
                    let fd = (eval(x0 + h) - eval(x0 - h)) / (2.0 * h);
                    eval(x0);
                    assert!(
                        (fd - analytic[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{key}[{i}] dropout {dropout}: fd {fd} vs {}",
                        analytic[i]
                    );
                }
            }
        }
    }

    /// Adapters run beside their matrices give the model W₀ + s·B·A gives (outputs and, with
    /// block checkpointing too, the adapter gradients s·G·Aᵀ and s·Bᵀ·G of the merged
    /// matrices' gradients G), on every block layout (Qwen2's q/k/v bias, Gemma 3's sandwich
    /// and q/k norms).
    #[test]
    fn adapters_beside_the_matrices_equal_the_merged_matrices() {
        for arch in [Arch::Llama, Arch::Gemma3, Arch::Qwen3] {
            let base = tiny_model(arch);
            let cfg = LoraConfig {
                rank: 3,
                alpha: 5.0,
                dropout: 0.0,
                targets: "all-linear".into(),
            };
            let mut lora = Lora::new(&base, cfg, 2).unwrap();
            for (k, v) in lora.params.iter_mut() {
                if k.ends_with("lora_B") {
                    let dims = v.dims().to_vec();
                    *v = crate::model::ops::tests::rnd(&dims, 9, 0.3);
                }
            }
            let mut merged = tiny_model(arch);
            lora.merge(&mut merged).unwrap();
            merged.set_trainable(&lora.targets()).unwrap();
            let (v_merged, g_merged) = metric(&merged);
            let mut beside = tiny_model(arch);
            lora.attach(&mut beside).unwrap();
            for checkpoint in [Checkpoint::Off, Checkpoint::On] {
                let (v, g) = metric_with(&beside, checkpoint);
                assert!(
                    (v - v_merged).abs() < 1e-9 * (1.0 + v.abs()),
                    "{arch:?}: {v} vs {v_merged}"
                );
                let g = lora.adapter_grads(g).unwrap();
                assert_eq!(
                    g.len(),
                    lora.params.len(),
                    "{arch:?}: every adapter has a gradient"
                );
                let s = lora.scale();
                for name in lora.targets() {
                    let (na, nb) = adapter::grad_names(&name);
                    let gw = &g_merged[&name];
                    let want_b = gw
                        .matmul(&lora.params[&na].t().unwrap())
                        .unwrap()
                        .affine(s, 0.0)
                        .unwrap();
                    let want_a = lora.params[&nb]
                        .t()
                        .unwrap()
                        .matmul(gw)
                        .unwrap()
                        .affine(s, 0.0)
                        .unwrap();
                    for (got, want, what) in [(&g[&na], &want_a, &na), (&g[&nb], &want_b, &nb)] {
                        let scale = want
                            .abs()
                            .unwrap()
                            .max_all()
                            .unwrap()
                            .to_scalar::<f64>()
                            .unwrap();
                        let d = max_diff(got, want);
                        assert!(
                            d <= 1e-9 * (1.0 + scale),
                            "{arch:?} {what} {checkpoint:?}: {d}"
                        );
                    }
                }
            }
            // Off again: the model is W₀.
            beside.set_adapters(BTreeMap::new()).unwrap();
            let (v0, _) = metric(&tiny_model(arch));
            assert_eq!(metric(&beside).0, v0);
        }
    }

    #[test]
    fn starts_at_the_base_weights_and_rejects_nonsense() {
        let mut m = tiny_model(Arch::Llama);
        let (v0, _) = metric(&m);
        let w0 = m
            .weights()
            .get("model.layers.0.mlp.up_proj.weight")
            .unwrap()
            .clone();
        let lora = Lora::new(&m, LoraConfig::default(), 0).unwrap();
        lora.attach(&mut m).unwrap();
        assert_eq!(metric(&m).0, v0, "B = 0: the adapters add nothing");
        lora.merge(&mut m).unwrap();
        let w1 = m
            .weights()
            .get("model.layers.0.mlp.up_proj.weight")
            .unwrap();
        assert_eq!(max_diff(&w0, w1), 0.0);
        assert_eq!(metric(&m).0, v0);
        // A pair that does not fit its matrix is refused, naming it.
        let name = "model.layers.0.mlp.up_proj.weight";
        let wrong = Adapter {
            a: Tensor::zeros((2, 3), w0.dtype(), w0.device()).unwrap(),
            b: Tensor::zeros((w0.dim(0).unwrap(), 2), w0.dtype(), w0.device()).unwrap(),
            scale: 1.0,
        };
        let e = m
            .set_adapters(BTreeMap::from([(name.to_string(), wrong)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name) && e.contains("expected"), "{e}");
        let bad = LoraConfig {
            dropout: 1.0,
            ..Default::default()
        };
        assert!(Lora::new(&m, bad, 0)
            .unwrap_err()
            .to_string()
            .contains("lora.dropout"));
    }
}
