//! Weight matrices stored in bf16 / f16 (`--weights`): Gemma 3 270M against the PyTorch f32
//! reference prompts (top-1 agreement, |Δ log-softmax| over the reference's top 20), and
//! training stays in f32 (trainable weights are widened, their gradients are f32). Its own
//! test binary, because the storage dtype is process-wide.

mod refcheck;

use candle_core::{DType, Device};
use refcheck::{
    against_gemma_reference as against_reference, next_token_grads, short_unlearning_runs_write_f32,
};
use unlearn::model::{set_weights_dtype, LanguageModel};

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
        let name = "model.layers.5.mlp.down_proj.weight";
        let ids = lm
            .tokenizer
            .encode("The capital of France is", true)
            .unwrap();
        let grads = next_token_grads(&lm.model, DType::F32, &ids, 5, &[name]);
        assert_eq!(grads[name].dtype(), DType::F32);
    }
    // Unlearning runs through the real trainer with bf16-stored weights: KUDA with its
    // null-space projection and RMU's steering target; what they write is f32.
    set_weights_dtype(DType::BF16);
    short_unlearning_runs_write_f32("weights bf16");
    set_weights_dtype(DType::F32);
    assert!(
        seen[1] > seen[0],
        "bf16 storage changes the numbers (the switch is live)"
    );
}
