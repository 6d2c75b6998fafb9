//! Each method as a weighted list of loss terms (see [`crate::forget::terms`]):
//!
//! | method | forget data | retain facts | general text |
//! |---|---|---|---|
//! | kuda | exp(−β(1−cos(h,h₀))) at ℓ*, sampled tokens, projected | ‖h−h₀‖² at ℓ* (+ CE) | ‖h−h₀‖² at ℓ* |
//! | localized-ft | λ₁·−log(1−p) (edit: λ₁·CE to the new answer) | λ₂·CE | λ₃·CE |
//! | ga | −CE | – | – |
//! | graddiff | −CE | CE | – |
//! | npo | (2/β)·softplus(β·(log π − log π_ref)) | CE | – |
//! | simnpo | −(2/β)·log σ(−β/\|y\|·log π − γ) | CE | – |
//! | rmu | ‖h − c·u‖² at ℓ | α·‖h−h₀‖² at ℓ | α·‖h−h₀‖² at ℓ |
//!
//! Mechanistic Unlearning writes its forget term as log(1 − p), to be maximized; here every
//! term is minimized, so it appears as −log(1 − p).

use crate::forget::config::{ForgetConfig, Method};
use crate::forget::nullspace::Projection;
use crate::forget::terms::{LogitLoss, ReprLoss};
use crate::forget::trainer::{DataSet, Loss, Term};
use anyhow::{bail, Result};

/// The terms of a method. `edit`: the forget data carries new answers to inject;
/// `steer` is RMU's target vector c·u (known once the reference activations are).
pub fn terms(
    m: Method,
    cfg: &ForgetConfig,
    edit: bool,
    steer: Option<Vec<f32>>,
) -> Result<Vec<Term>> {
    let term = |name: &str, weight: f64, data: DataSet, loss: Loss| Term {
        name: name.into(),
        weight,
        data,
        loss,
        project: false,
    };
    let retain_ce = |w: f64| term("retain_ce", w, DataSet::Retain, Loss::Logit(LogitLoss::Ce));
    if edit && m != Method::LocalizedFt {
        bail!(
            "editing injects a new answer with localized fine-tuning; method {} only unlearns",
            m.name()
        );
    }
    Ok(match m {
        Method::Kuda => {
            let k = &cfg.kuda;
            let mse = ReprLoss::RefMse { sink: cfg.sink };
            vec![
                Term {
                    project: k.projection != Projection::None,
                    ..term(
                        "forget_deviation",
                        1.0,
                        DataSet::Forget,
                        Loss::Repr {
                            loss: ReprLoss::Deviation { beta: k.beta },
                            sample: k.token_ratio,
                        },
                    )
                },
                term(
                    "retain_mse",
                    k.retain_weight,
                    DataSet::Retain,
                    Loss::Repr {
                        loss: mse.clone(),
                        sample: 1.0,
                    },
                ),
                term(
                    "text_mse",
                    k.text_weight,
                    DataSet::Text,
                    Loss::Repr {
                        loss: mse,
                        sample: 1.0,
                    },
                ),
                retain_ce(k.experimental.retain_ce_weight),
            ]
        }
        Method::LocalizedFt => {
            let f = &cfg.localized_ft;
            let forget = if edit {
                term(
                    "inject_ce",
                    f.forget_weight,
                    DataSet::Forget,
                    Loss::Logit(LogitLoss::Ce),
                )
            } else {
                term(
                    "forget_unlikely",
                    f.forget_weight,
                    DataSet::Forget,
                    Loss::Logit(LogitLoss::Unlikely),
                )
            };
            vec![
                forget,
                retain_ce(f.retain_weight),
                term(
                    "text_ce",
                    f.text_weight,
                    DataSet::Text,
                    Loss::Logit(LogitLoss::Ce),
                ),
            ]
        }
        Method::Ga => vec![term(
            "forget_ascent",
            1.0,
            DataSet::Forget,
            Loss::Logit(LogitLoss::Ascent),
        )],
        Method::Graddiff => vec![
            term(
                "forget_ascent",
                1.0,
                DataSet::Forget,
                Loss::Logit(LogitLoss::Ascent),
            ),
            retain_ce(cfg.graddiff_retain_weight),
        ],
        Method::Npo => vec![
            term(
                "forget_npo",
                1.0,
                DataSet::Forget,
                Loss::Logit(LogitLoss::Npo { beta: cfg.npo.beta }),
            ),
            retain_ce(cfg.npo.retain_weight),
        ],
        Method::Simnpo => vec![
            term(
                "forget_simnpo",
                1.0,
                DataSet::Forget,
                Loss::Logit(LogitLoss::SimNpo {
                    beta: cfg.simnpo.beta,
                    gamma: cfg.simnpo.gamma,
                }),
            ),
            retain_ce(cfg.simnpo.retain_weight),
        ],
        Method::Rmu => {
            let Some(target) = steer else {
                bail!("RMU needs its steering vector");
            };
            let a = cfg.rmu.retain_weight;
            vec![
                term(
                    "forget_steer",
                    1.0,
                    DataSet::Forget,
                    Loss::Repr {
                        loss: ReprLoss::Steer { target },
                        sample: 1.0,
                    },
                ),
                term(
                    "retain_mse",
                    a,
                    DataSet::Retain,
                    Loss::Repr {
                        loss: ReprLoss::RefMse { sink: cfg.sink },
                        sample: 1.0,
                    },
                ),
                term(
                    "text_mse",
                    a,
                    DataSet::Text,
                    Loss::Repr {
                        loss: ReprLoss::RefMse { sink: cfg.sink },
                        sample: 1.0,
                    },
                ),
            ]
        }
    })
}

/// The representation layer a method reads (KUDA's ℓ*, RMU's ℓ), given the updated layers.
pub fn rep_layer(m: Method, cfg: &ForgetConfig, top_updated: usize) -> Result<Option<usize>> {
    let chosen = match m {
        Method::Kuda => cfg.kuda.rep_layer.unwrap_or(top_updated),
        Method::Rmu => cfg.rmu.layer.unwrap_or(top_updated),
        _ => return Ok(None),
    };
    if chosen < top_updated {
        bail!(
            "the representation layer ({chosen}) is below the last updated layer ({top_updated}): \
             that layer's update would not reach the loss"
        );
    }
    Ok(Some(chosen))
}
