//! Every method unlearns: on the planted model (its facts live, by construction, in the MLP of
//! one layer), each method runs through the real plan and trainer on 12 forget facts (24 retain
//! facts) and must bring their accuracy (top-1 among the three answers; chance 1/3) down to a
//! stated bound while 12 held-out facts, never trained on, stay above one. Each test says the
//! numbers measured when it was written; the bounds are those plus one fact (1/12) of margin.
//! The settings (steps, learning rate, retain weight) were picked by a small sweep per method
//! on this model. What they show: localized fine-tuning, KUDA, RMU and SimNPO reach chance or
//! below with the held-out facts kept; gradient ascent reaches chance only by taking the
//! held-out facts along; GradDiff and NPO stop above chance at the settings that keep them.

use crate::forget::config::{ForgetConfig, Method};
use crate::forget::nullspace::{key_sums, Projection, Projectors};
use crate::forget::plan::{plan_for, TrainCtx};
use crate::forget::seqs::Seq;
use crate::forget::trainer::train;
use crate::locate::planted::{self, PlantedFact, ANSWERS, PLANTED_LAYER};
use crate::model::Transformer;
use rand::{Rng, SeedableRng};

const PAD: u32 = 0;

/// A planted fact as a training sequence: its answer is the target at the subject, which is
/// also where the representation losses act.
fn seq(f: &PlantedFact) -> Seq {
    Seq {
        ids: f.ids.clone(),
        targets: vec![(f.subject_pos, f.answer)],
        rep_positions: vec![f.subject_pos],
        subject: Some(f.subject_pos..f.subject_pos + 1),
        rivals: ANSWERS.iter().copied().filter(|&a| a != f.answer).collect(),
    }
}

/// Share of `facts` whose answer beats the other two answers.
fn accuracy(model: &Transformer, facts: &[PlantedFact]) -> f64 {
    let ids: Vec<Vec<u32>> = facts.iter().map(|f| f.ids.clone()).collect();
    let z = model.last_token_logits(&ids, &ANSWERS, PAD, 16).unwrap();
    let right = facts
        .iter()
        .zip(&z)
        .filter(|(f, row)| {
            let best = (0..3).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            best == f.class
        })
        .count();
    right as f64 / facts.len() as f64
}

/// General text: seeded random token chunks outside the subjects and answers.
fn text() -> Vec<Seq> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    (0..8)
        .map(|_| {
            let mut ids = vec![1u32];
            ids.extend((0..11).map(|_| rng.random_range(2..10u32)));
            Seq::text(ids).unwrap()
        })
        .collect()
}

/// What one method did: forget and held-out accuracy before and after.
struct Outcome {
    forget: (f64, f64),
    held_out: (f64, f64),
}

/// The training context of the planted facts: forget 0..12, retain 12..36, the planted
/// layer's MLP updated, key statistics when KUDA projects.
fn planted_ctx(model: &Transformer, method: Method, cfg: &ForgetConfig) -> TrainCtx {
    let facts = planted::facts();
    let params = model.mlp_param_names(&[PLANTED_LAYER]);
    let retain_seqs: Vec<Seq> = facts[12..36].iter().map(seq).collect();
    let text_seqs = text();
    let projected = method == Method::Kuda && cfg.kuda.projection != Projection::None;
    let projectors = if projected {
        let keys: Vec<Seq> = retain_seqs.iter().chain(&text_seqs).cloned().collect();
        let sums = key_sums(model, &keys, &params, PAD, 8).unwrap();
        Projectors::build(model, &sums, &params, cfg.kuda.projection, cfg.kuda.tau).unwrap()
    } else {
        Projectors::default()
    };
    TrainCtx {
        method,
        edit: false,
        forget_seqs: facts[..12].iter().map(seq).collect(),
        known_retain: retain_seqs.len(),
        retain_seqs,
        text_seqs,
        params,
        rep_layer: crate::forget::methods::rep_layer(method, cfg, PLANTED_LAYER).unwrap(),
        projectors,
        forget_ids: (0..12).map(|i| i.to_string()).collect(),
        retain_ids: (12..36).map(|i| i.to_string()).collect(),
        new_answers: None,
        base_fp: "planted".into(),
        partitions: 1,
        ppl_probe: None,
    }
}

/// Train `method` with `cfg` on the planted layer's MLP: forget facts 0..12, retain facts
/// 12..36, held out 36..48.
fn unlearn(method: Method, cfg: &ForgetConfig) -> Outcome {
    let mut model = planted::model();
    let facts = planted::facts();
    let (forget, rest) = facts.split_at(12);
    let held_out = &rest[24..];
    let before = (accuracy(&model, forget), accuracy(&model, held_out));
    let ctx = planted_ctx(&model, method, cfg);
    let part: Vec<usize> = (0..12).collect();
    let plan = plan_for(&model, PAD, &ctx, cfg, &part, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    train(&mut model, &plan, cfg, method.name(), dir.path(), None).unwrap();
    let after = (accuracy(&model, forget), accuracy(&model, held_out));
    let o = Outcome {
        forget: (before.0, after.0),
        held_out: (before.1, after.1),
    };
    eprintln!(
        "{} ({:?}): forget {:.3} → {:.3}, held out {:.3} → {:.3}",
        method.name(),
        cfg.kuda.projection,
        o.forget.0,
        o.forget.1,
        o.held_out.0,
        o.held_out.1
    );
    o
}

/// The method's defaults with the step count and learning rate of a test run.
fn config(method: Method, steps: usize, lr: f64) -> ForgetConfig {
    let mut c = ForgetConfig::for_method(method);
    c.steps = steps;
    c.optim.lr = lr;
    c.checkpoint_every = steps;
    // The planted model starts with a retain loss near 0 (1.6e-3): any ratio to it diverges.
    c.diverge_retain_ratio = 0.0;
    c
}

/// The planted model knows all its facts; a method must take the forget facts to at most
/// `forget_max` and keep the held-out ones at least at `held_out_min`.
fn check(o: &Outcome, forget_max: f64, held_out_min: f64) {
    assert_eq!(o.forget.0, 1.0, "the planted model knows its forget facts");
    assert_eq!(
        o.held_out.0, 1.0,
        "the planted model knows its held-out facts"
    );
    assert!(
        o.forget.1 <= forget_max,
        "forget accuracy {} above {forget_max}",
        o.forget.1
    );
    assert!(
        o.held_out.1 >= held_out_min,
        "held-out accuracy {} below {held_out_min}",
        o.held_out.1
    );
}

#[test]
fn kuda_unlearns_under_each_projection() {
    // Measured: none .333 / .917, strict .417 / 1, relaxed .333 / 1.
    for p in [Projection::None, Projection::Strict, Projection::Relaxed] {
        let mut c = config(Method::Kuda, 100, 3e-3);
        c.kuda.experimental.retain_ce_weight = 5.0;
        c.kuda.projection = p;
        check(&unlearn(Method::Kuda, &c), 0.5, 0.83);
    }
}

#[test]
fn localized_fine_tuning_unlearns() {
    // Measured: 0 / 1.
    let c = config(Method::LocalizedFt, 50, 3e-3);
    check(&unlearn(Method::LocalizedFt, &c), 0.09, 0.9);
}

#[test]
fn gradient_ascent_unlearns_and_without_a_retain_term_takes_the_held_out_facts_along() {
    // Measured: 20 steps .583 / .917; 50 steps .333 / .5.
    check(
        &unlearn(Method::Ga, &config(Method::Ga, 20, 3e-3)),
        0.67,
        0.83,
    );
    let long = unlearn(Method::Ga, &config(Method::Ga, 50, 3e-3));
    check(&long, 0.42, 0.0);
    assert!(long.held_out.1 <= 0.75, "{}", long.held_out.1);
}

#[test]
fn gradient_difference_unlearns() {
    // Measured: .583 / .917.
    let mut c = config(Method::Graddiff, 30, 3e-3);
    c.graddiff_retain_weight = 5.0;
    check(&unlearn(Method::Graddiff, &c), 0.67, 0.83);
}

#[test]
fn npo_and_simnpo_unlearn() {
    // Measured: NPO .667 / 1, SimNPO .333 / .917.
    let mut c = config(Method::Npo, 30, 3e-3);
    c.npo.retain_weight = 30.0;
    check(&unlearn(Method::Npo, &c), 0.75, 0.9);
    check(
        &unlearn(Method::Simnpo, &config(Method::Simnpo, 100, 3e-3)),
        0.42,
        0.83,
    );
}

#[test]
fn rmu_unlearns() {
    // Measured: .333 / 1.
    check(
        &unlearn(Method::Rmu, &config(Method::Rmu, 50, 1e-3)),
        0.42,
        0.9,
    );
}

/// The plan of `method` on the planted facts with default settings (forget 0..12, retain
/// 12..36), and the model it was made from.
fn planted_plan(method: Method) -> (Transformer, crate::forget::trainer::Plan) {
    let model = planted::model();
    let cfg = ForgetConfig::for_method(method);
    let ctx = planted_ctx(&model, method, &cfg);
    let plan = plan_for(&model, PAD, &ctx, &cfg, &(0..12).collect::<Vec<_>>(), None).unwrap();
    (model, plan)
}

/// NPO's reference: log π_ref(answer) of each forget fact is the original model's
/// log-softmax of the answer at the subject, computed here from plain logits.
#[test]
fn npo_reference_log_probabilities_are_the_original_models() {
    let (model, plan) = planted_plan(Method::Npo);
    let refs = plan
        .forget
        .logp_ref
        .as_ref()
        .expect("NPO caches its reference");
    assert_eq!(refs.len(), 12);
    for (f, &r) in planted::facts()[..12].iter().zip(refs) {
        let z = &model
            .last_logits(std::slice::from_ref(&f.ids), PAD)
            .unwrap()[0];
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        let want = z[f.answer as usize] as f64 - lse;
        assert!((r - want).abs() < 1e-5, "{r} vs {want}");
    }
}

/// RMU's steering: the target c·u is a fixed seeded direction of norm steer_coeff × the mean
/// norm of the forget rows at its layer (the last updated layer by default), and training
/// moves the forget rows toward it while the retain rows stay.
#[test]
fn rmu_steers_the_forget_rows_at_its_layer_toward_a_seeded_target() {
    use crate::forget::refs::mean_ref_norm;
    use crate::forget::terms::ReprLoss;
    use crate::forget::trainer::Loss;
    let (_, plan) = planted_plan(Method::Rmu);
    assert_eq!(plan.rep_layer, Some(PLANTED_LAYER));
    let target = plan
        .terms
        .iter()
        .find_map(|t| match &t.loss {
            Loss::Repr {
                loss: ReprLoss::Steer { target: v },
                ..
            } => Some(v.clone()),
            _ => None,
        })
        .expect("RMU has a steering term");
    let cfg = ForgetConfig::for_method(Method::Rmu);
    let norm = target
        .iter()
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let want = cfg.rmu.steer_coeff * mean_ref_norm(&plan.forget).unwrap();
    assert!((norm - want).abs() < 1e-3 * want, "{norm} vs {want}");
    let (_, again) = planted_plan(Method::Rmu);
    let again_target = again.terms.iter().find_map(|t| match &t.loss {
        Loss::Repr {
            loss: ReprLoss::Steer { target: v },
            ..
        } => Some(v.clone()),
        _ => None,
    });
    assert_eq!(Some(target.clone()), again_target, "seeded");

    // After training, the forget rows at the layer point toward the target.
    let mut model = planted::model();
    let mut c = config(Method::Rmu, 50, 1e-3);
    c.seed = cfg.seed;
    let dir = tempfile::tempdir().unwrap();
    train(&mut model, &plan, &c, "rmu", dir.path(), None).unwrap();
    let cos = |m: &Transformer| -> f64 {
        let mut d = 0.0;
        for f in &planted::facts()[..12] {
            let b = crate::model::Batch::new(
                std::slice::from_ref(&f.ids),
                PAD,
                crate::model::PadSide::Right,
                m.device(),
            )
            .unwrap();
            let hooks =
                crate::model::Hooks::new().cache(crate::model::HookPoint::ResidPost(PLANTED_LAYER));
            let out = m
                .run(
                    &b,
                    &crate::model::RunOpts {
                        hooks: Some(&hooks),
                        ..Default::default()
                    },
                )
                .unwrap();
            let row: Vec<f64> = out.cache[&crate::model::HookPoint::ResidPost(PLANTED_LAYER)]
                .get(0)
                .unwrap()
                .get(f.subject_pos)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let tn = target
                .iter()
                .map(|&b| (b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let rn = row.iter().map(|a| a * a).sum::<f64>().sqrt();
            d += row
                .iter()
                .zip(&target)
                .map(|(a, &b)| a * b as f64)
                .sum::<f64>()
                / (tn * rn);
        }
        d / 12.0
    };
    let (before, after) = (cos(&planted::model()), cos(&model));
    eprintln!("RMU: mean cosine of the forget rows with c·u {before:.3} → {after:.3}");
    // Measured: −0.024 → 0.127.
    assert!(after > before + 0.1, "{before} → {after}");
}
