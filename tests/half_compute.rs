//! Forward passes computed in bf16 / f16 (`--compute`): Gemma 3 270M against the PyTorch f32
//! reference prompts (top-1 agreement, |Δ log-softmax| over the reference's top 20); the
//! scoring path (a few LM-head rows) and a causal trace run and agree with the f32 model; what a
//! run hands out is f32; training is mixed precision (f32 master weights and backward, gradients
//! close to the f32 model's; KUDA and RMU run through the trainer). Its own test binary, because
//! the compute dtype of loaded models is process-wide.

mod refcheck;

use candle_core::{DType, Device, Tensor};
use refcheck::{
    against_gemma_reference, log_softmax, next_token_grads, short_unlearning_runs_write_f32,
};
use std::collections::BTreeMap;
use unlearn::locate::trace::{trace, TraceKind, TraceOpts};
use unlearn::model::transformer::{LogitsAt, RunOpts};
use unlearn::model::{
    set_compute_dtype, set_weights_dtype, Batch, LanguageModel, PadSide, Transformer,
};

/// The scores of three candidate answers at the end of two fact prompts, and the MLP and
/// residual trace grids of the first prompt (subject tokens 3..5, 3 noise samples; the
/// residual one by the sweep with cached corrupted keys and values).
fn scores_and_trace(lm: &LanguageModel) -> (Vec<Vec<f32>>, [Vec<Vec<f64>>; 2]) {
    let prompts = [
        "Fact: Tom Brady plays the sport of",
        "Fact: Serena Williams plays the sport of",
    ];
    let seqs: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| lm.tokenizer.encode(p, true).unwrap())
        .collect();
    let cands: Vec<u32> = [" football", " tennis", " golf"]
        .iter()
        .map(|c| lm.tokenizer.encode(c, false).unwrap()[0])
        .collect();
    let scores = lm.last_token_logits(&seqs, &cands, 2).unwrap();
    let o = TraceOpts {
        kind: TraceKind::Mlp,
        samples: 3,
        ..Default::default()
    };
    let grid = |kind| {
        let o = TraceOpts { kind, ..o.clone() };
        trace(&lm.model, &seqs[0], 3..5, cands[0], &o).unwrap().grid
    };
    (scores, [grid(TraceKind::Mlp), grid(TraceKind::Resid)])
}

/// One test, because the dtypes of loaded models are process-wide.
/// The largest relative (Frobenius) error of `got` against `want`, over the matrices of `want`.
fn worst_relative_error(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) -> f64 {
    let norm2 = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    want.iter()
        .map(|(name, w)| {
            let g = &got[name];
            assert_eq!(g.dtype(), DType::F32, "{name}");
            (norm2(&(g - w).unwrap()) / norm2(w)).sqrt()
        })
        .fold(0f64, f64::max)
}

/// The gradients of an attention and an MLP matrix of Gemma 3 270M for " Paris" after the
/// Eiffel Tower prompt, computing in `dtype`.
fn gemma_grads(lm: &LanguageModel, dtype: DType) -> BTreeMap<String, Tensor> {
    let ids = lm
        .tokenizer
        .encode("The Eiffel Tower is located in the city of", true)
        .unwrap();
    let paris = lm.tokenizer.encode(" Paris", false).unwrap()[0];
    let names = [
        "model.layers.4.self_attn.q_proj.weight",
        "model.layers.5.mlp.down_proj.weight",
    ];
    next_token_grads(&lm.model, dtype, &ids, paris, &names)
}

#[test]
fn half_precision_compute_agrees_with_f32_and_trains_in_mixed_precision() {
    f16_compute_agrees_with_f32_on_models_whose_activations_fit();
    let f32_model = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    assert_eq!(f32_model.model.compute_dtype(), DType::F32);
    let (scores32, grid32) = scores_and_trace(&f32_model);
    let grads32 = gemma_grads(&f32_model, DType::F32);
    drop(f32_model);
    // Gemma's residual stream goes past f16's range: an error that says so, not numbers.
    set_compute_dtype(DType::F16);
    let lm = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let ids = lm
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    let err = lm.last_logits(&[ids]).unwrap_err();
    assert!(format!("{err:#}").contains("--compute bf16"), "{err:#}");
    drop(lm);
    for (dtype, max_delta) in [(DType::BF16, 0.3)] {
        set_compute_dtype(dtype);
        let lm = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
        assert_eq!(lm.model.compute_dtype(), dtype);
        assert_eq!(lm.model.dtype(), DType::F32, "what runs hand out");
        let w = lm
            .model
            .weights()
            .get("model.layers.3.mlp.down_proj.weight")
            .unwrap();
        assert_eq!(w.dtype(), dtype, "matrices are stored in the compute dtype");
        let (agree, n, delta) = against_gemma_reference(&lm);
        eprintln!(
            "compute {dtype:?}: top-1 agrees on {agree}/{n}, max |Δ log-softmax| (top 20) {delta:.2e}"
        );
        assert_eq!(agree, n, "{dtype:?}: top-1 agrees on {agree}/{n} only");
        assert!(delta <= max_delta, "{dtype:?}: |Δ log-softmax| {delta:.2e}");
        assert!(
            delta > 1e-4,
            "{dtype:?}: the numbers should carry half-precision rounding"
        );

        // What a run hands out is f32, whatever it computes in.
        let ids = lm
            .tokenizer
            .encode("The capital of France is", true)
            .unwrap();
        let b = Batch::new(&[ids], lm.pad_id(), PadSide::Left, &Device::Cpu).unwrap();
        let out = lm
            .model
            .run(
                &b,
                &RunOpts {
                    logits: LogitsAt::Last,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(out.logits.unwrap().dtype(), DType::F32);
        assert_eq!(out.resid.dtype(), DType::F32);

        // The few-row scoring path and a causal trace: same answers, close effects.
        let (scores, grid) = scores_and_trace(&lm);
        for (a, b) in scores.iter().zip(&scores32) {
            let top = |v: &Vec<f32>| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j]));
            assert_eq!(top(a), top(b), "{dtype:?}: {a:?} vs {b:?}");
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 0.5, "{dtype:?}: logit {x} vs {y}");
            }
        }
        for (what, g, g32) in [
            ("MLP", &grid[0], &grid32[0]),
            ("residual", &grid[1], &grid32[1]),
        ] {
            let worst = g
                .iter()
                .flatten()
                .zip(g32.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0f64, f64::max);
            eprintln!("compute {dtype:?}: {what} trace grid differs by at most {worst:.3}");
            assert!(worst < 0.05, "{dtype:?}: {what} trace differs by {worst}");
        }

        // Mixed-precision training: f32 master weights, the backward in f32 on the widened
        // activations; the gradient is the f32 model's up to the forward's rounding.
        let rel = worst_relative_error(&gemma_grads(&lm, dtype), &grads32);
        eprintln!("compute {dtype:?}: gradients' largest relative error {rel:.2e}");
        assert!(rel < 0.15, "relative gradient error {rel}");
        drop(lm);
        // The trainer runs in mixed precision: KUDA with its projection, and RMU's steering;
        // what they write is f32.
        short_unlearning_runs_write_f32(&format!("compute {}", unlearn::model::dtype_name(dtype)));
    }
    set_compute_dtype(DType::F32);
    set_weights_dtype(DType::F32);
}

/// f16 where the activations fit its range: the tiny random Llama and Qwen 3 models give the
/// f32 model's greedy tokens and log-probabilities within f16's rounding. (Called with the
/// process-wide dtypes at f32.)
fn f16_compute_agrees_with_f32_on_models_whose_activations_fit() {
    for arch in ["llama", "qwen3"] {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/tiny/{arch}"));
        let lm = LanguageModel::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
        let ids: Vec<u32> = (1..20).collect();
        let want = lm
            .last_logits(std::slice::from_ref(&ids))
            .unwrap()
            .remove(0);
        let mut m = Transformer::new(lm.model.config.clone(), lm.model.weights().clone()).unwrap();
        m.set_compute_dtype(DType::F16).unwrap();
        let got = m
            .last_logits(std::slice::from_ref(&ids), lm.pad_id())
            .unwrap()
            .remove(0);
        let (a, b) = (log_softmax(&got), log_softmax(&want));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f64, f64::max);
        let top = |v: &[f64]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        eprintln!("{arch}: f16 compute, max |Δ log-softmax| {worst:.2e}");
        assert_eq!(top(&a), top(&b), "{arch}");
        assert!(worst > 0.0 && worst < 0.05, "{arch}: {worst}");
        // Gradients of every matrix of block 1: the error scales with the forward's rounding,
        // f16 (10 mantissa bits) about 8 times closer to f32 than bf16 (7 bits): the backward is
        // right and the difference is the rounding.
        let names: Vec<String> = lm
            .model
            .weights()
            .tensors
            .keys()
            .filter(|n| n.starts_with("model.layers.1.") && n.ends_with("proj.weight"))
            .cloned()
            .collect();
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let want = next_token_grads(&lm.model, DType::F32, &ids, 7, &names);
        let e16 = worst_relative_error(
            &next_token_grads(&lm.model, DType::F16, &ids, 7, &names),
            &want,
        );
        let eb16 = worst_relative_error(
            &next_token_grads(&lm.model, DType::BF16, &ids, 7, &names),
            &want,
        );
        eprintln!("{arch}: gradients' largest relative error: f16 {e16:.2e}, bf16 {eb16:.2e}");
        assert!(
            4.0 * e16 < eb16 && e16 < 0.05 && eb16 < 0.3,
            "{arch}: f16 {e16}, bf16 {eb16}"
        );
    }
}
