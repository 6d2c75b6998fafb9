//! Tests of the hooked transformer on tiny random models (f64, so finite differences are
//! exact enough to check every gradient).

use super::*;
use crate::model::batch::PadSide;
use crate::model::config::{Arch, Llama3RopeScaling, LongRope};
use crate::model::hooks::{Patch, Selection};
use crate::model::ops::tests::rnd;

/// A tiny config of `arch` that exercises its particulars: windows of 3 on alternating layers
/// (Gemma 2/3) or on every layer (Phi-3), soft caps the scores reach (Gemma 2), Llama 3.1 RoPE
/// scaling and q/k/v biases (Llama), a final soft cap (Gemma 3), LongRoPE past 4 tokens (Phi-3:
/// of the two [`seqs`], the longer takes the long factors).
pub(crate) fn tiny_config(arch: Arch) -> ModelConfig {
    let defaults = arch.defaults();
    let windowed = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
    ModelConfig {
        arch,
        vocab_size: 23,
        hidden_size: 8,
        intermediate_size: 12,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_local_theta: (arch == Arch::Gemma3).then_some(100.0),
        sliding_window: (windowed || arch == Arch::Phi3).then_some(3),
        sliding_window_pattern: windowed.then_some(2),
        max_position_embeddings: 64,
        tie_word_embeddings: defaults.tie_word_embeddings,
        attention_bias: arch == Arch::Llama,
        query_pre_attn_scalar: windowed.then_some(6.0),
        final_logit_softcapping: windowed.then_some(3.0),
        attn_logit_softcapping: (arch == Arch::Gemma2).then_some(2.0),
        activation: defaults.activation,
        rope_scaling: (arch == Arch::Llama).then_some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16,
        }),
        rope_linear_factor: None,
        rope_freq_factors: None,
        rope_longrope: (arch == Arch::Phi3).then(|| LongRope {
            short_factor: vec![1.0, 2.0],
            long_factor: vec![3.0, 5.0],
            original_max_position_embeddings: 4,
            attention_factor: 1.2,
        }),
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(0),
    }
}

pub(crate) fn tiny_model(arch: Arch) -> Transformer {
    let c = tiny_config(arch);
    let mut w = Weights::default();
    for (i, (name, shape)) in Weights::expected_shapes(&c).into_iter().enumerate() {
        let scale = if name.contains("norm") { 0.3 } else { 0.6 };
        w.tensors.insert(name, rnd(&shape, 1000 + i as u64, scale));
    }
    Transformer::new(c, w).unwrap()
}

fn seqs() -> Vec<Vec<u32>> {
    vec![vec![1, 5, 9, 3, 7, 11], vec![1, 4, 8, 15]]
}

fn batch(m: &Transformer, side: PadSide) -> Batch {
    Batch::new(&seqs(), 0, side, m.device()).unwrap()
}

fn v(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    v(a).iter()
        .zip(v(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A scalar metric of last-position logits: Σ w ⊙ logits with a fixed random w.
fn metric_weights(m: &Transformer, rows: usize) -> Tensor {
    rnd(&[rows, m.config.vocab_size], 77, 1.0)
}

/// A run with last-position logits and a tape, then the backward of the fixed metric.
fn run_and_backward(m: &Transformer, b: &Batch, hooks: Option<&Hooks>) -> (RunOutput, Grads) {
    let opts = RunOpts {
        hooks,
        logits: LogitsAt::Last,
        grad: true,
        ..Default::default()
    };
    let out = m.run(b, &opts).unwrap();
    let dl = metric_weights(m, b.size())
        .to_dtype(
            m.weights()
                .get("model.embed_tokens.weight")
                .unwrap()
                .dtype(),
        )
        .unwrap();
    let grads = m.backward(&out, Some(&dl), None).unwrap();
    (out, grads)
}

fn metric(m: &Transformer, b: &Batch, hooks: Option<&Hooks>) -> f64 {
    let out = m
        .run(
            b,
            &RunOpts {
                hooks,
                logits: LogitsAt::Last,
                ..Default::default()
            },
        )
        .unwrap();
    let w = metric_weights(m, b.size());
    (out.logits.unwrap() * w)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn parameter_gradients_match_finite_differences() {
    for arch in Arch::ALL {
        let mut m = tiny_model(arch);
        let names: Vec<String> = m.weights().tensors.keys().cloned().collect();
        m.set_trainable(&names).unwrap();
        let b = batch(&m, PadSide::Left);
        let (_, grads) = run_and_backward(&m, &b, None);
        for name in &names {
            let g = grads
                .params
                .get(name)
                .unwrap_or_else(|| panic!("{arch:?}: no gradient for {name}"));
            let w0 = m.weights().get(name).unwrap().clone();
            let gv = v(g);
            let n = w0.elem_count();
            // A few entries of each parameter (all of the small ones).
            let picks: Vec<usize> = if n <= 12 {
                (0..n).collect()
            } else {
                (0..6).map(|i| (i * 7919 + 13) % n).collect()
            };
            for i in picks {
                let mut f = |d: f64| {
                    let mut wv = v(&w0);
                    wv[i] += d;
                    m.set_param(name, Tensor::from_vec(wv, w0.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    let r = metric(&m, &b, None);
                    m.set_param(name, w0.clone()).unwrap();
                    r
                };
                let num = (f(1e-6) - f(-1e-6)) / 2e-6;
                assert!(
                    (num - gv[i]).abs() < 1e-5 * (1.0 + num.abs()),
                    "{arch:?} {name}[{i}]: numeric {num}, analytic {}",
                    gv[i]
                );
            }
        }
    }
}

#[test]
fn frozen_parameters_get_no_gradient_and_same_values() {
    let mut m = tiny_model(Arch::Gemma3);
    let b = batch(&m, PadSide::Right);
    let all: Vec<String> = m.weights().tensors.keys().cloned().collect();
    m.set_trainable(&all).unwrap();
    let (_, full) = run_and_backward(&m, &b, None);
    let some = m.mlp_param_names(&[1]);
    m.set_trainable(&some).unwrap();
    let (_, part) = run_and_backward(&m, &b, None);
    assert_eq!(part.params.keys().cloned().collect::<Vec<_>>(), {
        let mut s = some.clone();
        s.sort();
        s
    });
    for n in &some {
        assert!(max_diff(&part.params[n], &full.params[n]) < 1e-12, "{n}");
    }
    assert!(m
        .set_trainable(&["model.layers.9.mlp.up_proj.weight"])
        .unwrap_err()
        .to_string()
        .contains("no such parameter"));
}

#[test]
fn hook_gradients_match_finite_differences() {
    for arch in Arch::ALL {
        let m = tiny_model(arch);
        let b = batch(&m, PadSide::Left);
        let points = HookPoint::all(m.config.num_layers);
        let mut hooks = Hooks::new();
        for &p in &points {
            hooks = hooks.grad(p).cache(p);
        }
        let (out, grads) = run_and_backward(&m, &b, Some(&hooks));
        for &p in &points {
            let g = v(&grads.hooks[&p]);
            let a = out.cache[&p].clone();
            let n = a.elem_count();
            for i in [(n / 3 + 1) % n, n - 1, (2 * n) / 3] {
                let f = |d: f64| {
                    let mut dv = vec![0.0; n];
                    dv[i] = d;
                    let delta = Tensor::from_vec(dv, a.dims(), &Device::Cpu).unwrap();
                    let h = Hooks::new().patch(Patch {
                        point: p,
                        mode: PatchMode::Add,
                        value: delta,
                        sel: Selection::default(),
                    });
                    metric(&m, &b, Some(&h))
                };
                let num = (f(1e-6) - f(-1e-6)) / 2e-6;
                assert!(
                    (num - g[i]).abs() < 1e-5 * (1.0 + num.abs()),
                    "{arch:?} {p}[{i}]: numeric {num}, analytic {}",
                    g[i]
                );
            }
        }
    }
}

#[test]
fn patching_the_clean_activation_restores_the_clean_output_exactly() {
    for arch in [Arch::Gemma3, Arch::Llama] {
        let m = tiny_model(arch);
        let clean = batch(&m, PadSide::Left);
        let all = Hooks::new().cache_all(m.config.num_layers);
        let cref = m
            .run(
                &clean,
                &RunOpts {
                    hooks: Some(&all),
                    logits: LogitsAt::All,
                    ..Default::default()
                },
            )
            .unwrap();
        // Corrupt: noise on the embeddings of positions 1..3.
        let noise = rnd(&[2, 6, 8], 5, 3.0);
        let corrupt_sel = Selection {
            rows: None,
            positions: Some(vec![1, 2, 3]),
            heads: None,
        };
        let corrupt = Patch {
            point: HookPoint::Embed,
            mode: PatchMode::Add,
            value: noise,
            sel: corrupt_sel,
        };
        let h = Hooks::new().patch(corrupt.clone());
        let bad = m
            .run(
                &clean,
                &RunOpts {
                    hooks: Some(&h),
                    logits: LogitsAt::All,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(max_diff(&bad.logits.clone().unwrap(), cref.logits.as_ref().unwrap()) > 1e-3);
        for p in HookPoint::all(m.config.num_layers) {
            if p == HookPoint::Embed {
                continue;
            }
            // Residual stream points carry everything: restoring them fully restores the output.
            let full = matches!(
                p,
                HookPoint::ResidPre(_) | HookPoint::ResidPost(_) | HookPoint::ResidMid(_)
            );
            let h = Hooks::new().patch(corrupt.clone()).patch(Patch {
                point: p,
                mode: PatchMode::Replace,
                value: cref.cache[&p].clone(),
                sel: Selection::default(),
            });
            let out = m
                .run(
                    &clean,
                    &RunOpts {
                        hooks: Some(&h),
                        logits: LogitsAt::All,
                        ..Default::default()
                    },
                )
                .unwrap();
            let d = max_diff(out.logits.as_ref().unwrap(), cref.logits.as_ref().unwrap());
            if full && p.layer() == Some(0) || matches!(p, HookPoint::ResidPost(_)) {
                assert_eq!(
                    d, 0.0,
                    "{arch:?} {p}: restoring the clean residual must give the clean logits exactly"
                );
            }
            if !full {
                assert!(
                    d > 0.0
                        || p.layer() == Some(m.config.num_layers - 1)
                            && matches!(p, HookPoint::MlpOut(_))
                );
            }
        }
        // Patching only one row leaves the other row corrupted.
        let p = HookPoint::ResidPost(0);
        let h = Hooks::new().patch(corrupt.clone()).patch(Patch {
            point: p,
            mode: PatchMode::Replace,
            value: cref.cache[&p].clone(),
            sel: Selection {
                rows: Some(vec![0]),
                positions: None,
                heads: None,
            },
        });
        let out = m
            .run(
                &clean,
                &RunOpts {
                    hooks: Some(&h),
                    logits: LogitsAt::All,
                    ..Default::default()
                },
            )
            .unwrap();
        let lo = out.logits.unwrap();
        let cl = cref.logits.clone().unwrap();
        assert_eq!(
            max_diff(&lo.narrow(0, 0, 1).unwrap(), &cl.narrow(0, 0, 1).unwrap()),
            0.0
        );
        assert!(max_diff(&lo.narrow(0, 1, 1).unwrap(), &cl.narrow(0, 1, 1).unwrap()) > 1e-3);
    }
}

#[test]
fn padded_batches_match_single_runs_on_both_sides() {
    for arch in [Arch::Gemma3, Arch::Llama, Arch::Phi3] {
        let m = tiny_model(arch);
        for side in [PadSide::Left, PadSide::Right] {
            let b = batch(&m, side);
            let lb = m.run(&b, &RunOpts::default()).unwrap().logits.unwrap();
            for (i, s) in seqs().iter().enumerate() {
                let one = Batch::new(std::slice::from_ref(s), 0, side, m.device()).unwrap();
                let l1 = m.run(&one, &RunOpts::default()).unwrap().logits.unwrap();
                assert!(
                    max_diff(&lb.narrow(0, i, 1).unwrap(), &l1) < 1e-12,
                    "{arch:?} {side:?} row {i}"
                );
            }
        }
    }
}

#[test]
fn layer_ranges_compose() {
    let m = tiny_model(Arch::Gemma3);
    let b = batch(&m, PadSide::Left);
    let h = Hooks::new()
        .cache(HookPoint::ResidPre(2))
        .cache(HookPoint::ResidPost(0));
    let full = m
        .run(
            &b,
            &RunOpts {
                hooks: Some(&h),
                logits: LogitsAt::Rows(vec![(0, 2), (1, 5)]),
                ..Default::default()
            },
        )
        .unwrap();
    let stop = m
        .run(
            &b,
            &RunOpts {
                stop_at: Some(2),
                logits: LogitsAt::None,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        max_diff(&stop.resid, &full.cache[&HookPoint::ResidPre(2)]),
        0.0
    );
    let rest = m
        .run(
            &b,
            &RunOpts {
                start: Some((2, stop.resid.clone())),
                logits: LogitsAt::Rows(vec![(0, 2), (1, 5)]),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        max_diff(&rest.logits.unwrap(), full.logits.as_ref().unwrap()),
        0.0
    );
    // Gradient with respect to the starting residual equals the hook gradient of a full run.
    let hooks = Hooks::new().grad(HookPoint::ResidPre(1));
    let (_, g_full) = run_and_backward(&m, &b, Some(&hooks));
    let mid = m
        .run(
            &b,
            &RunOpts {
                stop_at: Some(1),
                logits: LogitsAt::None,
                ..Default::default()
            },
        )
        .unwrap()
        .resid;
    let out = m
        .run(
            &b,
            &RunOpts {
                start: Some((1, mid)),
                grad: true,
                grad_start: true,
                ..Default::default()
            },
        )
        .unwrap();
    let g_part = m
        .backward(&out, Some(&metric_weights(&m, 2)), None)
        .unwrap();
    assert!(
        max_diff(
            &g_part.start.unwrap(),
            &g_full.hooks[&HookPoint::ResidPre(1)]
        ) < 1e-12
    );
    // Asking for logits in a run stopped early is an error.
    assert!(m
        .run(
            &b,
            &RunOpts {
                stop_at: Some(1),
                logits: LogitsAt::Last,
                ..Default::default()
            }
        )
        .is_err());
}

#[test]
fn kv_cache_generation_matches_recomputation() {
    // Phi-3: the shorter prompt passes LongRoPE's original context at its first new token.
    for arch in [Arch::Gemma3, Arch::Llama, Arch::Phi3] {
        let m = tiny_model(arch);
        let prompts = seqs();
        let fast =
            crate::model::generate::generate(&m, &prompts, 6, &[], 0, Default::default()).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let mut ids = p.clone();
            for (step, &want) in fast[i].iter().enumerate() {
                let b =
                    Batch::new(std::slice::from_ref(&ids), 0, PadSide::Left, m.device()).unwrap();
                let l: Vec<f32> = m
                    .run(&b, &RunOpts::default())
                    .unwrap()
                    .logits
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let next = crate::model::generate::argmax(&l);
                assert_eq!(next, want, "{arch:?} row {i} step {step}");
                ids.push(next);
            }
        }
    }
}

#[test]
fn prompts_longer_than_the_context_are_rejected() {
    let m = tiny_model(Arch::Llama);
    let long = vec![(0..70u32).map(|i| i % 20).collect::<Vec<_>>()];
    let b = Batch::new(&long, 0, PadSide::Left, m.device()).unwrap();
    let e = m
        .run(&b, &RunOpts::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("longer than the context"), "{e}");
}

#[test]
fn float32_gradients_agree_with_float64() {
    // The f32 CPU path uses fused kernels (GELU, vocabulary gradient) that the f64 path does not.
    for arch in [Arch::Gemma3, Arch::Llama] {
        let m64 = tiny_model(arch);
        let mut w32 = Weights::default();
        for (k, t) in &m64.weights().tensors {
            w32.tensors
                .insert(k.clone(), t.to_dtype(DType::F32).unwrap());
        }
        let mut m32 = Transformer::new(m64.config.clone(), w32).unwrap();
        let mut m64 = m64;
        let names: Vec<String> = m64.weights().tensors.keys().cloned().collect();
        m64.set_trainable(&names).unwrap();
        m32.set_trainable(&names).unwrap();
        let b = batch(&m64, PadSide::Left);
        let dl = metric_weights(&m64, 2);
        let o64 = m64
            .run(
                &b,
                &RunOpts {
                    logits: LogitsAt::Last,
                    grad: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let g64 = m64.backward(&o64, Some(&dl), None).unwrap();
        let o32 = m32
            .run(
                &b,
                &RunOpts {
                    logits: LogitsAt::Last,
                    grad: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let g32 = m32
            .backward(&o32, Some(&dl.to_dtype(DType::F32).unwrap()), None)
            .unwrap();
        for n in &names {
            let scale = v(&g64.params[n]).iter().fold(0f64, |a, b| a.max(b.abs()));
            let d = max_diff(&g64.params[n], &g32.params[n]);
            assert!(
                d <= 1e-4 * (1.0 + scale),
                "{arch:?} {n}: f32 vs f64 gradient differ by {d} (scale {scale})"
            );
        }
    }
}

/// A checkpointed run keeps only each block's input and recomputes the block in the backward:
/// the same gradients, bit for bit, for parameters of every block, the embeddings and the
/// starting residual, on every architecture.
#[test]
fn checkpointed_runs_give_the_same_gradients() {
    for arch in [
        Arch::Gemma,
        Arch::Gemma2,
        Arch::Gemma3,
        Arch::Llama,
        Arch::Qwen3,
        Arch::Phi3,
    ] {
        let mut m = tiny_model(arch);
        let mut names = m.mlp_param_names(&[0, 2]);
        names.push("model.layers.1.self_attn.q_proj.weight".into());
        names.push("model.embed_tokens.weight".into());
        m.set_trainable(&names).unwrap();
        let b = batch(&m, PadSide::Right);
        let dl = rnd(&[2, 6, m.config.vocab_size], 11, 1.0);
        let grads = |checkpoint: bool, start: Option<(usize, Tensor)>| {
            let out = m
                .run(
                    &b,
                    &RunOpts {
                        logits: LogitsAt::All,
                        grad: true,
                        grad_start: start.is_some(),
                        start,
                        checkpoint: if checkpoint {
                            Checkpoint::On
                        } else {
                            Checkpoint::Off
                        },
                        ..Default::default()
                    },
                )
                .unwrap();
            m.backward(&out, Some(&dl), None).unwrap()
        };
        let (plain, ckpt) = (grads(false, None), grads(true, None));
        assert_eq!(plain.params.len(), names.len());
        for (n, g) in &plain.params {
            assert_eq!(v(g), v(&ckpt.params[n]), "{arch:?} {n}");
        }
        let start = rnd(&[2, 6, m.config.hidden_size], 12, 1.0);
        let (plain, ckpt) = (
            grads(false, Some((1, start.clone()))),
            grads(true, Some((1, start))),
        );
        assert_eq!(
            v(plain.start.as_ref().unwrap()),
            v(ckpt.start.as_ref().unwrap())
        );
        assert_eq!(plain.params.len(), ckpt.params.len());
        for (n, g) in &plain.params {
            assert_eq!(v(g), v(&ckpt.params[n]), "{arch:?} from block 1: {n}");
        }
    }
}
