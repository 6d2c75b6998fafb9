//! Divergence guards of the trainer: a run whose updated weights grow past a multiple of their
//! original norm (`diverge_weight_ratio`), or whose retain cross-entropy grows past a multiple
//! of its value at the first step (`diverge_retain_ratio`), is stopped the way a loss that is
//! not a number stops it, without a single non-finite value having to appear first.

use crate::forget::config::ForgetConfig;
use crate::forget::optim::global_norm;
use crate::forget::trainer::{DataSet, Loss, Plan};
use anyhow::Result;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// The limits of one run and what they are measured against.
pub struct Guard {
    /// `diverge_weight_ratio` and the original L2 norm of the updated weights.
    weights: Option<(f64, f64)>,
    /// `diverge_retain_ratio` and the retain terms it watches (cross-entropies on retain data).
    retain: Option<(f64, Vec<String>)>,
    /// The watched retain loss at the run's first step.
    retain_first: Option<f64>,
}

impl Guard {
    /// The guard of `plan` under `cfg`; `original` are the updated parameters' values before
    /// training (not those of a resumed checkpoint).
    pub fn new(
        cfg: &ForgetConfig,
        plan: &Plan,
        original: &BTreeMap<String, Tensor>,
    ) -> Result<Guard> {
        let weights = match cfg.diverge_weight_ratio {
            r if r > 0.0 => Some((r, global_norm(original)?)),
            _ => None,
        };
        let terms: Vec<String> = plan
            .terms
            .iter()
            .filter(|t| t.data == DataSet::Retain && matches!(t.loss, Loss::Logit(_)))
            .map(|t| t.name.clone())
            .collect();
        let retain = (cfg.diverge_retain_ratio > 0.0 && !terms.is_empty())
            .then_some((cfg.diverge_retain_ratio, terms));
        Ok(Guard {
            weights,
            retain,
            retain_first: None,
        })
    }

    /// Why the weights `next` (every updated parameter) count as diverged, if they do.
    pub fn weights_diverged(&self, next: &BTreeMap<String, Tensor>) -> Result<Option<String>> {
        let Some((ratio, norm0)) = self.weights else {
            return Ok(None);
        };
        let norm = global_norm(next)?;
        Ok(exceeds(norm, ratio * norm0).then(|| {
            format!(
                "the updated weights' norm {norm:.4e} exceeds diverge_weight_ratio × their original \
                 norm ({ratio} × {norm0:.4e})"
            )
        }))
    }

    /// Why the retain loss of a step's `losses` counts as diverged, if it does; the first
    /// call (or [`Guard::set_retain_first`]) sets the value it is compared with.
    pub fn retain_diverged(&mut self, losses: &BTreeMap<String, f64>) -> Option<String> {
        let (ratio, terms) = self.retain.as_ref()?;
        let loss: f64 = terms.iter().filter_map(|t| losses.get(t)).sum();
        let first = *self.retain_first.get_or_insert(loss);
        (first > 0.0 && exceeds(loss, ratio * first)).then(|| {
            format!(
                "the retain loss ({}) {loss:.4e} exceeds diverge_retain_ratio × its first value \
                 ({ratio} × {first:.4e})",
                terms.join(" + ")
            )
        })
    }

    /// The retain loss at the first step, once seen (kept in checkpoints).
    pub fn retain_first(&self) -> Option<f64> {
        self.retain_first
    }

    /// Restore the first retain loss of a resumed run.
    pub fn set_retain_first(&mut self, v: f64) {
        self.retain_first = Some(v);
    }
}

/// `x` is above `limit`, or not a number.
fn exceeds(x: f64, limit: f64) -> bool {
    x.is_nan() || x > limit
}
