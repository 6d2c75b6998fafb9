//! A training run's state on disk and in memory: checkpoints (written every few steps and
//! after [`CHECKPOINT_AFTER`] of wall time, matched to the run by its key and thread count, put
//! back exactly on resume) and the copy of the state before the last update that a stop on
//! NaN or divergence goes back to.

use crate::forget::config::ForgetConfig;
use crate::forget::optim::{load_tensors, Optimizer};
use crate::forget::trainer::Plan;
use crate::model::Transformer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Serialize, Deserialize)]
pub(crate) struct CheckpointMeta {
    /// Steps completed.
    step: usize,
    /// Hash of what determines the run (config, data, parameters, base model).
    run_key: String,
    /// Worker threads of the run (none in checkpoints written before it was recorded).
    #[serde(default)]
    threads: Option<usize>,
}

/// Checkpoint entry of KUDA's focus weights (a run resumed between two readings uses them).
pub(crate) const FOCUS_KEY: &str = "focus/weights";

/// The state before the last update: the updated weights, the optimizer and KUDA's focus.
pub(crate) struct BeforeUpdate {
    pub(crate) weights: BTreeMap<String, Tensor>,
    pub(crate) opt: Optimizer,
    pub(crate) focus: Option<Vec<f64>>,
}

/// The state before the last update, to go back to: held, or written to the undo checkpoint.
pub(crate) enum Undo {
    Held(Box<BeforeUpdate>),
    Written,
}

/// A directory removed when this goes out of scope.
pub(crate) struct RemovedOnDrop(pub(crate) PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Wall time after which a step writes a checkpoint whatever `checkpoint_every` says, so that
/// an interrupted run of long steps loses at most this (and a step). A checkpoint is exact, so
/// when they are written does not change the weights.
pub(crate) const CHECKPOINT_AFTER: Duration = Duration::from_secs(600);

/// Whether the state after `done` steps is checkpointed, `since` after the last checkpoint.
pub(crate) fn checkpoint_due(done: usize, cfg: &ForgetConfig, since: Duration) -> bool {
    done.is_multiple_of(cfg.checkpoint_every) || done == cfg.steps || since >= CHECKPOINT_AFTER
}

/// [`Checkpoints::undo_in_memory_bytes`] of a run.
pub(crate) const UNDO_IN_MEMORY_BYTES: usize = 256 << 20;

/// Bytes of the updated parameters.
pub(crate) fn trainable_bytes(model: &Transformer, plan: &Plan) -> Result<usize> {
    plan.params.iter().try_fold(0, |sum, p| {
        let w = model.weights().get(p)?;
        Ok(sum + w.elem_count() * w.dtype().size_in_bytes())
    })
}

/// Put the state of a checkpoint written after `step` steps back into the model, the
/// optimizer and the focus weights.
pub(crate) fn restore_state(
    model: &mut Transformer,
    plan: &Plan,
    opt: &mut Optimizer,
    focus: &mut Option<Vec<f64>>,
    step: usize,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    for p in &plan.params {
        let w = tensors
            .get(&format!("param/{p}"))
            .with_context(|| format!("checkpoint lacks `{p}`"))?;
        model.set_param(p, w.to_device(model.device())?)?;
    }
    opt.restore(tensors, step, model.device())?;
    if let Some(w) = tensors.get(FOCUS_KEY) {
        *focus = Some(w.to_dtype(DType::F64)?.to_vec1()?);
    }
    Ok(())
}

/// Checkpoint entry of the divergence guard's first retain loss.
pub(crate) const RETAIN_FIRST_KEY: &str = "guard/retain_first";

/// The updated parameters' current values.
pub(crate) fn param_map(model: &Transformer, plan: &Plan) -> Result<BTreeMap<String, Tensor>> {
    plan.params
        .iter()
        .map(|p| Ok((p.clone(), model.weights().get(p)?.clone())))
        .collect()
}

/// Where a run's checkpoints go and what they must match to be resumed: the run's key and
/// the thread count (results depend on it, see [`crate::util::threads`]).
pub(crate) struct Checkpoints<'a> {
    pub(crate) dir: PathBuf,
    pub(crate) run_key: &'a str,
    pub(crate) threads: usize,
    /// Trainable state (weights and Adam's moments) up to which the copy kept to undo an
    /// update is held in memory; above it, it is written to `undo/` beside the checkpoint.
    pub(crate) undo_in_memory_bytes: usize,
}

impl Checkpoints<'_> {
    /// Write the state after `step` steps.
    pub(crate) fn save(
        &self,
        model: &Transformer,
        plan: &Plan,
        opt: &Optimizer,
        focus: Option<&[f64]>,
        retain_first: Option<f64>,
        step: usize,
    ) -> Result<()> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir)?;
        let cpu = &candle_core::Device::Cpu;
        let mut tensors: HashMap<String, Tensor> = opt.state_tensors()?;
        if let Some(w) = focus {
            tensors.insert(FOCUS_KEY.into(), Tensor::from_slice(w, w.len(), cpu)?);
        }
        if let Some(v) = retain_first {
            tensors.insert(RETAIN_FIRST_KEY.into(), Tensor::from_slice(&[v], 1, cpu)?);
        }
        for p in &plan.params {
            tensors.insert(
                format!("param/{p}"),
                model.weights().get(p)?.to_device(cpu)?,
            );
        }
        crate::util::save_safetensors_atomic(&tensors, &dir.join("state.safetensors"))?;
        let meta = CheckpointMeta {
            step,
            run_key: self.run_key.into(),
            threads: Some(self.threads),
        };
        crate::util::write_atomic(
            &dir.join("state.json"),
            serde_json::to_string(&meta)?.as_bytes(),
        )
    }

    /// Put the state of this run's checkpoint back (see [`restore_state`]); its step.
    pub(crate) fn restore(
        &self,
        model: &mut Transformer,
        plan: &Plan,
        opt: &mut Optimizer,
        focus: &mut Option<Vec<f64>>,
    ) -> Result<usize> {
        let (step, t) = self
            .read()?
            .with_context(|| format!("{} holds no state of this run", self.dir.display()))?;
        restore_state(model, plan, opt, focus, step, &t)?;
        Ok(step)
    }

    /// The step and state of this run's checkpoint; none when there is none or it belongs to
    /// another run; an error when it was written with another thread count.
    pub(crate) fn read(&self) -> Result<Option<(usize, HashMap<String, Tensor>)>> {
        let dir = &self.dir;
        let meta_path = dir.join("state.json");
        let Ok(text) = std::fs::read_to_string(&meta_path) else {
            return Ok(None);
        };
        let meta: CheckpointMeta = serde_json::from_str(&text)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        if meta.run_key != self.run_key {
            eprintln!(
                "note: {} belongs to a different run (other settings or data); starting from step 0",
                dir.display()
            );
            return Ok(None);
        }
        if let Some(t) = meta.threads.filter(|&t| t != self.threads) {
            bail!(
                "{}: the run was checkpointed after step {} with --threads {t}, and this \
                 process runs with --threads {}; the results depend on the thread count (sums are added in \
                 another order), so resuming would not give the weights of an uninterrupted \
                 run. Resume with --threads {t}, or delete {} to start again",
                dir.display(),
                meta.step,
                self.threads,
                dir.display()
            );
        }
        Ok(Some((
            meta.step,
            load_tensors(&dir.join("state.safetensors"))?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_written_every_checkpoint_every_steps_at_the_end_and_after_ten_minutes() {
        let mut cfg = ForgetConfig {
            steps: 30,
            checkpoint_every: 10,
            ..Default::default()
        };
        let (soon, late) = (Duration::from_secs(5), Duration::from_secs(600));
        let due: Vec<usize> = (1..=30)
            .filter(|&d| checkpoint_due(d, &cfg, soon))
            .collect();
        assert_eq!(due, [10, 20, 30]);
        assert!(
            checkpoint_due(7, &cfg, late),
            "a step ten minutes after the last checkpoint"
        );
        assert!(!checkpoint_due(7, &cfg, late - Duration::from_secs(1)));
        cfg.steps = 25;
        assert!(checkpoint_due(25, &cfg, soon), "the last step");
    }
}
