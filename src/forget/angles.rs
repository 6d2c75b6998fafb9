//! The angle between the forget gradient and the gradient of the retain facts' cross-entropy,
//! before and after KUDA's null-space projection. A loss on the retain facts has a weight
//! gradient Σ δ·kᵀ over the retain keys, so projecting the forget gradient off those keys
//! turns it towards 90° from every such gradient (exactly, for the strict projection and keys
//! the projector was built from): the number shows what the projection protects.

use crate::forget::config::ForgetConfig;
use crate::forget::terms::LogitLoss;
use crate::forget::trainer::{draw_members, term_grads, DataSet, Loss, Plan, Term};
use crate::model::Transformer;
use anyhow::Result;
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Angles in degrees between the forget gradient (its terms' weighted sum) and the retain
/// cross-entropy gradient.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GradAngles {
    /// Before the projection (the raw forget gradient).
    pub before_deg: f64,
    /// After the projection (the same as `before_deg` when the run projects nothing).
    pub after_deg: f64,
}

/// Retain sequences the angle probe's cross-entropy gradient is taken on.
pub const ANGLE_PROBE_ROWS: usize = 8;

/// Angles at the model's current weights (its trainable set must be `plan.params`) on the
/// batch of step `step`; `None` when the run has
/// no retain facts (nothing to compare with) or a gradient is zero.
pub fn gradient_angles(
    model: &Transformer,
    plan: &Plan,
    cfg: &ForgetConfig,
    step: usize,
) -> Result<Option<GradAngles>> {
    if plan.retain.is_empty() || !plan.terms.iter().any(|t| t.data == DataSet::Retain) {
        return Ok(None);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x00A9_61E5_u64);
    let mut forget: BTreeMap<String, Tensor> = BTreeMap::new();
    for term in plan.terms.iter().filter(|t| t.data == DataSet::Forget) {
        let members = draw_members(plan, cfg, DataSet::Forget, step, 0);
        let (_, g) = term_grads(model, plan, term, &members, &mut rng, None)?;
        for (n, t) in g {
            let t = t.affine(term.weight, 0.0)?;
            let sum = match forget.remove(&n) {
                Some(a) => (a + t)?,
                None => t,
            };
            forget.insert(n, sum);
        }
    }
    let probe = Term {
        name: "retain_ce (angle)".into(),
        weight: 1.0,
        data: DataSet::Retain,
        loss: Loss::Logit(LogitLoss::Ce),
        project: false,
    };
    // A few retain sequences are enough for a direction, and the probe runs the whole model
    // down to the updated layers (on a 1.5B model a full retain batch of text chunks cost
    // 8 GB more than the training step itself).
    let mut members = draw_members(plan, cfg, DataSet::Retain, step, 0);
    members.truncate(ANGLE_PROBE_ROWS);
    let (_, retain) = term_grads(model, plan, &probe, &members, &mut rng, None)?;
    let before = angle(&forget, &retain)?;
    let mut projected = forget;
    plan.projectors.apply(&mut projected)?;
    let after = angle(&projected, &retain)?;
    Ok(before.zip(after).map(|(before_deg, after_deg)| GradAngles {
        before_deg,
        after_deg,
    }))
}

/// Angle in degrees between two gradients over the parameters they share (None if either is
/// zero there).
pub fn angle(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> Result<Option<f64>> {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (n, x) in a {
        let Some(y) = b.get(n) else { continue };
        let x = x.to_dtype(DType::F64)?;
        let y = y.to_dtype(DType::F64)?;
        dot += (&x * &y)?.sum_all()?.to_scalar::<f64>()?;
        na += x.sqr()?.sum_all()?.to_scalar::<f64>()?;
        nb += y.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    if na <= 0.0 || nb <= 0.0 {
        return Ok(None);
    }
    let c = (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0);
    Ok(Some(c.acos().to_degrees()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn g(v: &[f32]) -> BTreeMap<String, Tensor> {
        BTreeMap::from([(
            "w".to_string(),
            Tensor::from_slice(v, (v.len(),), &Device::Cpu).unwrap(),
        )])
    }

    #[test]
    fn angle_of_hand_made_vectors() {
        let a = angle(&g(&[1.0, 0.0]), &g(&[0.0, 2.0])).unwrap().unwrap();
        assert!((a - 90.0).abs() < 1e-9);
        let a = angle(&g(&[1.0, 1.0]), &g(&[1.0, 0.0])).unwrap().unwrap();
        assert!((a - 45.0).abs() < 1e-5);
        let a = angle(&g(&[1.0, 0.0]), &g(&[-3.0, 0.0])).unwrap().unwrap();
        assert!((a - 180.0).abs() < 1e-9);
        assert_eq!(angle(&g(&[0.0, 0.0]), &g(&[1.0, 0.0])).unwrap(), None);
    }
}
