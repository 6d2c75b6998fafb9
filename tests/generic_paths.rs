//! The device-generic paths — what every non-CPU device runs instead of the CPU-only kernels
//! (fast GELU, the vocabulary-gradient kernel, the few-row LM head, the one-pass log-prob and
//! moments) — taken on the CPU and compared with the fast paths: a whole forward, its backward
//! into every parameter, and a causal trace, on tiny models of each architecture. Its own test
//! binary, because the switch is process-wide.

mod refcheck;

use candle_core::{DType, Device, Tensor};
use refcheck::{max_abs, max_abs_diff};
use std::collections::BTreeMap;
use std::path::PathBuf;
use unlearn::locate::trace::{trace, TraceKind, TraceOpts};
use unlearn::model::fastmath::{gelu, set_generic_only};
use unlearn::model::transformer::{LogitsAt, RunOpts};
use unlearn::model::{ops, Batch, LanguageModel, PadSide, Transformer};

const TOL: f64 = 1e-5;

/// Everything one pass computes: logits at every position, last-position logits (the few-row
/// head), every parameter's gradient, and trace grids of the residual stream and the MLPs.
struct Outputs {
    all: Tensor,
    last: Tensor,
    grads: BTreeMap<String, Tensor>,
    traces: Vec<Vec<Vec<f64>>>,
}

fn outputs(lm: &LanguageModel) -> Outputs {
    let seqs: Vec<Vec<u32>> = [
        "Fact: Tom Brady plays the sport of",
        "The capital of France is",
    ]
    .iter()
    .map(|p| lm.tokenizer.encode(p, true).unwrap())
    .collect();
    let mut m = Transformer::new(lm.model.config.clone(), lm.model.weights().clone()).unwrap();
    let names: Vec<String> = m.weights().tensors.keys().cloned().collect();
    m.set_trainable(&names).unwrap();
    let b = Batch::new(&seqs, lm.pad_id(), PadSide::Left, &Device::Cpu).unwrap();
    let run = |at: LogitsAt, grad: bool| {
        m.run(
            &b,
            &RunOpts {
                logits: at,
                grad,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let last = run(LogitsAt::Last, false).logits.unwrap();
    let out = run(LogitsAt::Last, true);
    let targets = Tensor::new(&[7u32, 11], &Device::Cpu).unwrap();
    let (_, g) = ops::cross_entropy_with_grad(out.logits.as_ref().unwrap(), &targets).unwrap();
    let grads = m.backward(&out, Some(&g), None).unwrap().params;
    let ids = &seqs[0];
    let traces = [TraceKind::Resid, TraceKind::Mlp]
        .into_iter()
        .map(|kind| {
            let o = TraceOpts {
                kind,
                samples: 3,
                ..Default::default()
            };
            trace(&lm.model, ids, 3..5, 9, &o).unwrap().grid
        })
        .collect();
    Outputs {
        all: run(LogitsAt::All, false).logits.unwrap(),
        last,
        grads,
        traces,
    }
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs_diff(a, b) / max_abs(b).max(1e-12)
}

#[test]
fn generic_paths_give_the_fast_paths_numbers() {
    for arch in ["gemma3", "gemma2", "llama", "qwen3"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny")
            .join(arch);
        let lm = LanguageModel::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
        let probe = Tensor::ones((2, 8), DType::F32, &Device::Cpu).unwrap();
        set_generic_only(false);
        assert!(
            gelu(&probe).unwrap().is_some(),
            "the fast GELU runs on the CPU"
        );
        let fast = outputs(&lm);
        set_generic_only(true);
        assert!(
            gelu(&probe).unwrap().is_none(),
            "the switch turns the fast GELU off"
        );
        let generic = outputs(&lm);
        set_generic_only(false);
        let mut worst = rel_diff(&generic.all, &fast.all).max(rel_diff(&generic.last, &fast.last));
        assert_eq!(fast.grads.len(), generic.grads.len());
        for (name, g) in &fast.grads {
            worst = worst.max(rel_diff(&generic.grads[name], g));
        }
        for (a, b) in fast
            .traces
            .iter()
            .flatten()
            .flatten()
            .zip(generic.traces.iter().flatten().flatten())
        {
            worst = worst.max((a - b).abs());
        }
        eprintln!("{arch}: largest relative difference, generic vs fast paths: {worst:.1e}");
        assert!(
            worst <= TOL,
            "{arch}: generic paths differ from the fast ones by {worst:.1e}"
        );
    }
}
