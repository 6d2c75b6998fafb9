//! Weight matrices stored in bf16 / f16 (`--weights`): Gemma 3 270M against the PyTorch f32
//! reference prompts (top-1 agreement, |Δ log-softmax| over the reference's top 20), and
//! training stays in f32 (trainable weights are widened, their gradients are f32). Its own
//! test binary, because the storage dtype is process-wide.

mod refcheck;

use candle_core::{DType, Device, Tensor};
use refcheck::against_gemma_reference as against_reference;
use unlearn::forget::config::Method;
use unlearn::forget::run::{run, ForgetArgs};
use unlearn::model::transformer::{LogitsAt, RunOpts};
use unlearn::model::{ops, set_weights_dtype, Batch, LanguageModel, PadSide};

#[test]
fn half_precision_weights_agree_with_the_f32_reference_and_train_in_f32() {
    let mut seen = Vec::new();
    for (dtype, min_agree, max_delta) in [
        (DType::F32, 8, 1e-3),
        (DType::BF16, 8, 0.1),
        (DType::F16, 8, 0.02),
    ] {
        set_weights_dtype(dtype);
        let lm = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
        let w = lm
            .model
            .weights()
            .get("model.layers.3.mlp.down_proj.weight")
            .unwrap();
        assert_eq!(w.dtype(), dtype, "matrices are stored in {dtype:?}");
        let norm = lm.model.weights().get("model.norm.weight").unwrap();
        assert_eq!(norm.dtype(), DType::F32, "vectors stay f32");
        let (agree, n, delta) = against_reference(&lm);
        eprintln!(
            "{dtype:?}: top-1 agrees on {agree}/{n}, max |Δ log-softmax| (top 20) {delta:.2e}"
        );
        assert!(
            agree >= min_agree,
            "{dtype:?}: top-1 agrees on {agree}/{n} only"
        );
        assert!(delta <= max_delta, "{dtype:?}: |Δ log-softmax| {delta:.2e}");
        seen.push(delta);
        // A training step: the trainable matrix is widened to f32 and so is its gradient.
        let mut m =
            unlearn::model::Transformer::new(lm.model.config.clone(), lm.model.weights().clone())
                .unwrap();
        let name = "model.layers.5.mlp.down_proj.weight";
        m.set_trainable(&[name]).unwrap();
        assert_eq!(m.weights().get(name).unwrap().dtype(), DType::F32);
        let ids = lm
            .tokenizer
            .encode("The capital of France is", true)
            .unwrap();
        let b = Batch::new(&[ids], lm.pad_id(), PadSide::Left, &Device::Cpu).unwrap();
        let out = m
            .run(
                &b,
                &RunOpts {
                    logits: LogitsAt::Last,
                    grad: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let target = Tensor::new(&[5u32], &Device::Cpu).unwrap();
        let (_, g) = ops::cross_entropy_with_grad(out.logits.as_ref().unwrap(), &target).unwrap();
        let grads = m.backward(&out, Some(&g), None).unwrap();
        assert_eq!(grads.params[name].dtype(), DType::F32);
    }
    // Unlearning runs through the real trainer with bf16-stored weights: KUDA with its
    // null-space projection and RMU's steering target; what they write is f32.
    set_weights_dtype(DType::BF16);
    for method in [Method::Kuda, Method::Rmu] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let args = ForgetArgs {
            forget: "validation:first-4".into(),
            layers: Some("2-3".into()),
            sets: vec![
                "steps=2".into(),
                "batch_size=4".into(),
                "retain_facts=16".into(),
                "kuda.key_text_chunks=8".into(),
            ],
            eval: false,
            ..ForgetArgs::defaults("gemma3-270m", method, out.clone())
        };
        run(&args, &Device::Cpu).unwrap_or_else(|e| panic!("{method:?} with bf16 weights: {e:#}"));
        let changed: std::collections::HashMap<String, Tensor> =
            candle_core::safetensors::load(out.join("changed.safetensors"), &Device::Cpu).unwrap();
        assert!(!changed.is_empty() && changed.values().all(|t| t.dtype() == DType::F32));
    }
    set_weights_dtype(DType::F32);
    assert!(
        seen[1] > seen[0],
        "bf16 storage changes the numbers (the switch is live)"
    );
}
