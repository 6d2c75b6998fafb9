//! Every architecture against PyTorch + transformers, on the tiny random-weight models of
//! tests/fixtures/tiny (made by its make_tiny.py): tokenizer ids, log-probabilities at every
//! position (alone and in a left-padded batch, where sliding windows meet padding), gradients of
//! every parameter (of every tensor as transformers has it: Phi-3's fused ones fused from the
//! gradients of their parts), greedy continuations, and an export whose config.json alone
//! (without the exact `unlearn` section) reads back to the same configuration.

mod refcheck;

use candle_core::{Device, Tensor};
use refcheck::{max_abs, max_abs_diff};
use std::path::PathBuf;
use unlearn::model::generate::{generate, Sampling};
use unlearn::model::hf_dir::{config_from_hf, export_hf_dir};
use unlearn::model::transformer::{LogitsAt, RunOpts};
use unlearn::model::{ops, Batch, LanguageModel, PadSide, Transformer};

/// Largest |Δ log-softmax| accepted (float32 on both sides, sizes of 32–64).
const LOGPROB_TOL: f64 = 1e-4;
/// Largest gradient error accepted, relative to the largest entry of that gradient.
const GRAD_TOL: f64 = 1e-3;

fn dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/tiny/{arch}"))
}

struct Reference {
    ids: Vec<Vec<u32>>,
    greedy: Vec<Vec<u32>>,
    loss: f64,
    tensors: std::collections::HashMap<String, Tensor>,
    prompts: Vec<String>,
}

fn reference(arch: &str) -> Reference {
    let d = dir(arch);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let ids_of = |v: &serde_json::Value| -> Vec<Vec<u32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect()
    };
    Reference {
        ids: ids_of(&j["ids"]),
        greedy: ids_of(&j["greedy"]),
        loss: j["loss"].as_f64().unwrap(),
        prompts: j["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
        tensors: candle_core::safetensors::load(d.join("reference.safetensors"), &Device::Cpu)
            .unwrap(),
    }
}

/// The device under test: the CPU, or `UNLEARN_TEST_DEVICE=cuda` (GPU 0, in a build with
/// `--features cuda`; scripts/gpu-check.sh runs these tests that way).
fn device() -> Device {
    match std::env::var("UNLEARN_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            Device::new_cuda(0).expect("UNLEARN_TEST_DEVICE=cuda needs a CUDA build and a GPU")
        }
        _ => Device::Cpu,
    }
}

/// Log-softmax `[T, V]` of every position of one row of a batch run.
fn logprobs(m: &Transformer, seqs: &[Vec<u32>], pad: u32) -> Vec<Tensor> {
    let b = Batch::new(seqs, pad, PadSide::Left, m.device()).unwrap();
    let out = m
        .run(
            &b,
            &RunOpts {
                logits: LogitsAt::All,
                ..Default::default()
            },
        )
        .unwrap();
    let logits = out.logits.unwrap();
    let t = b.len();
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            let row = logits
                .get(i)
                .unwrap()
                .narrow(0, t - s.len(), s.len())
                .unwrap();
            ops::log_softmax_last(&row).unwrap()
        })
        .collect()
}

fn check_arch(arch: &str) {
    let lm = LanguageModel::load(dir(arch).to_str().unwrap(), &device())
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    let r = reference(arch);
    let pad = lm.pad_id();
    // Tokenizer: the same ids as transformers' tokenizer, BOS included.
    for (p, want) in r.prompts.iter().zip(&r.ids) {
        assert_eq!(
            &lm.tokenizer.encode(p, true).unwrap(),
            want,
            "{arch}: ids of {p:?}"
        );
    }
    // Log-probabilities, one prompt at a time and all in one left-padded batch.
    let single: Vec<Tensor> = r
        .ids
        .iter()
        .flat_map(|s| logprobs(&lm.model, std::slice::from_ref(s), pad))
        .collect();
    let batched = logprobs(&lm.model, &r.ids, pad);
    let mut worst = 0f64;
    for (i, (a, b)) in single.iter().zip(&batched).enumerate() {
        let want = &r.tensors[&format!("logprobs.{i}")];
        let d = max_abs_diff(a, want);
        worst = worst.max(d).max(max_abs_diff(b, want));
        assert!(
            d <= LOGPROB_TOL,
            "{arch} prompt {i}: max |Δ log-softmax| {d:.2e}"
        );
        let d = max_abs_diff(b, want);
        assert!(
            d <= LOGPROB_TOL,
            "{arch} prompt {i} in a padded batch: max |Δ| {d:.2e}"
        );
        let top = |t: &Tensor| -> Vec<u32> { t.argmax(1).unwrap().to_vec1().unwrap() };
        assert_eq!(
            top(a),
            top(want),
            "{arch} prompt {i}: top-1 at every position"
        );
    }
    let grad_err = check_gradients(arch, &lm, &r);
    eprintln!(
        "{arch}: max |Δ log-softmax| {worst:.1e}, max relative gradient error {grad_err:.1e}"
    );
    // Greedy continuations (no stop token, as the reference generated them).
    for (seq, want) in r.ids.iter().zip(&r.greedy) {
        let got = generate(
            &lm.model,
            std::slice::from_ref(seq),
            want.len(),
            &[],
            pad,
            Sampling::default(),
        )
        .unwrap();
        assert_eq!(&got[0], want, "{arch}: greedy continuation");
    }
    check_export_config(arch, &lm);
}

/// Gradients of every parameter of loss = mean over prompts of the mean next-token NLL.
fn check_gradients(arch: &str, lm: &LanguageModel, r: &Reference) -> f64 {
    let mut m = Transformer::new(lm.model.config.clone(), lm.model.weights().clone()).unwrap();
    let names: Vec<String> = m.weights().tensors.keys().cloned().collect();
    m.set_trainable(&names).unwrap();
    let n = r.ids.len() as f64;
    let mut total: std::collections::BTreeMap<String, Tensor> = Default::default();
    let mut loss = 0.0;
    for seq in &r.ids {
        let b = Batch::new(
            std::slice::from_ref(seq),
            lm.pad_id(),
            PadSide::Left,
            m.device(),
        )
        .unwrap();
        let out = m
            .run(
                &b,
                &RunOpts {
                    logits: LogitsAt::All,
                    grad: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let t = seq.len();
        let logits = out.logits.as_ref().unwrap().get(0).unwrap();
        let targets = Tensor::new(&seq[1..], m.device()).unwrap();
        let (l, g) =
            ops::cross_entropy_with_grad(&logits.narrow(0, 0, t - 1).unwrap(), &targets).unwrap();
        loss += l / n;
        let zero = Tensor::zeros((1, g.dim(1).unwrap()), g.dtype(), m.device()).unwrap();
        let g = (Tensor::cat(&[&g, &zero], 0).unwrap() / n)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        for (name, gp) in m.backward(&out, Some(&g), None).unwrap().params {
            let sum = match total.remove(&name) {
                Some(prev) => (prev + gp).unwrap(),
                None => gp,
            };
            total.insert(name, sum);
        }
    }
    assert!(
        (loss - r.loss).abs() < 1e-5 * r.loss,
        "{arch}: loss {loss} vs {}",
        r.loss
    );
    let c = &lm.model.config;
    c.arch.tensors_to_hf(c, &mut total).unwrap();
    let (mut checked, mut worst) = (0, 0f64);
    for (key, want) in &r.tensors {
        let Some(name) = key.strip_prefix("grad.") else {
            continue;
        };
        let got = total
            .get(name)
            .unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
        let d = max_abs_diff(got, want) / max_abs(want).max(1e-12);
        assert!(
            d <= GRAD_TOL,
            "{arch}: gradient of {name}: relative error {d:.2e}"
        );
        checked += 1;
        worst = worst.max(d);
    }
    assert_eq!(
        checked,
        total.len(),
        "{arch}: every parameter's gradient is checked"
    );
    worst
}

/// An export's config.json, read as transformers would (no `unlearn` section), gives back the
/// same configuration.
fn check_export_config(arch: &str, lm: &LanguageModel) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    export_hf_dir(
        &lm.model.config,
        lm.model.weights(),
        &lm.tokenizer,
        &out,
        None,
    )
    .unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("unlearn");
    let back = config_from_hf(&v, &out.join("config.json")).unwrap();
    assert_eq!(
        back, lm.model.config,
        "{arch}: exported config.json reads back"
    );
}

#[test]
fn llama_with_llama3_rope_scaling_matches_transformers() {
    check_arch("llama");
}

#[test]
fn mistral_with_a_sliding_window_matches_transformers() {
    check_arch("mistral");
}

#[test]
fn qwen2_with_qkv_bias_matches_transformers() {
    check_arch("qwen2");
}

#[test]
fn qwen3_with_qk_norms_matches_transformers() {
    check_arch("qwen3");
}

/// Fused qkv/gate-up projections, LongRoPE (the long factors for the 25-token prompt, the short
/// ones for the others, the attention factor on all; greedy continuations that pass the
/// original context), a sliding window on every layer.
#[test]
fn phi3_with_fused_projections_longrope_and_a_window_matches_transformers() {
    check_arch("phi3");
}

#[test]
fn gemma_1_matches_transformers() {
    check_arch("gemma");
}

#[test]
fn gemma2_with_soft_capping_and_alternating_windows_matches_transformers() {
    check_arch("gemma2");
}

#[test]
fn gemma3_with_local_and_global_layers_matches_transformers() {
    check_arch("gemma3");
}

/// llama.cpp stores Llama 3.1's RoPE scaling as per-frequency divisors (`rope_freqs.weight`,
/// computed by its converter as below); the tiny Llama run with those divisors instead of the
/// `rope_scaling` parameters still matches transformers.
#[test]
fn llama_with_gguf_style_rope_factors_matches_transformers() {
    let lm = LanguageModel::load(dir("llama").to_str().unwrap(), &device()).unwrap();
    let mut c = lm.model.config.clone();
    let s = c
        .rope_scaling
        .take()
        .expect("the tiny Llama has Llama 3.1 scaling");
    let (old, dim) = (s.original_max_position_embeddings as f64, c.head_dim);
    let factors: Vec<f64> = (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / (c.rope_theta as f32).powf(2.0 * i as f32 / dim as f32) as f64;
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < old / s.high_freq_factor {
                1.0
            } else if wavelen > old / s.low_freq_factor {
                s.factor
            } else {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            }
        })
        .collect();
    // Both the smoothed band and the fully scaled frequencies occur.
    assert!(factors.iter().any(|&f| f > 1.0 && f < s.factor) && factors.contains(&s.factor));
    c.rope_freq_factors = Some(factors);
    let m = Transformer::new(c, lm.model.weights().clone()).unwrap();
    let r = reference("llama");
    for (i, seq) in r.ids.iter().enumerate() {
        let got = &logprobs(&m, std::slice::from_ref(seq), lm.pad_id())[0];
        let d = max_abs_diff(got, &r.tensors[&format!("logprobs.{i}")]);
        assert!(d <= LOGPROB_TOL, "prompt {i}: max |Δ log-softmax| {d:.2e}");
    }
}

/// The tiny Gemma 1, Gemma 2, Qwen 3 and Phi-3 as llama.cpp's converter writes them
/// (model.gguf, by make_gguf.py; transformers reads the Qwen 3 and Phi-3 files' tensors back
/// exactly) load to the Hugging Face directory's weights (Phi-3's fused ones split alike) and
/// configuration — up to what GGUF does not carry: Gemma 2's query scale, which llama.cpp fixes
/// at 1/sqrt(head_dim), and float32 metadata (the norm epsilon, LongRoPE's attention factor) —
/// and the same token ids; where the configuration is whole, the log-probabilities match
/// transformers.
#[test]
fn gguf_files_of_gemma_gemma2_qwen3_and_phi3_load_as_their_directories() {
    for arch in ["gemma", "gemma2", "qwen3", "phi3"] {
        let hf = LanguageModel::load(dir(arch).to_str().unwrap(), &device()).unwrap();
        let gguf = dir(arch).join("model.gguf");
        let g = LanguageModel::load(gguf.to_str().unwrap(), &device())
            .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        let mut want = hf.model.config.clone();
        assert!((g.model.config.rms_norm_eps - want.rms_norm_eps).abs() < 1e-12);
        want.rms_norm_eps = g.model.config.rms_norm_eps;
        if let (Some(w), Some(g)) = (&mut want.rope_longrope, &g.model.config.rope_longrope) {
            assert!((g.attention_factor - w.attention_factor).abs() < 1e-6);
            w.attention_factor = g.attention_factor;
        }
        let scale_carried = arch != "gemma2";
        if !scale_carried {
            want.query_pre_attn_scalar = Some(want.head_dim as f64);
        }
        assert_eq!(
            g.model.config, want,
            "{arch}: configuration from GGUF metadata"
        );
        let (a, b) = (&hf.model.weights().tensors, &g.model.weights().tensors);
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{arch}"
        );
        for (name, t) in a {
            // Exact, but for the f32 rounding of Gemma's (1 + w) − 1.
            let d = max_abs_diff(t, &b[name]);
            assert!(d <= 1e-6, "{arch}: tensor {name} differs by {d:.1e}");
        }
        let r = reference(arch);
        for (i, (p, ids)) in r.prompts.iter().zip(&r.ids).enumerate() {
            assert_eq!(
                &g.tokenizer.encode(p, true).unwrap(),
                ids,
                "{arch}: ids of {p:?}"
            );
            if scale_carried {
                let got = &logprobs(&g.model, std::slice::from_ref(ids), g.pad_id())[0];
                let d = max_abs_diff(got, &r.tensors[&format!("logprobs.{i}")]);
                assert!(d <= LOGPROB_TOL, "{arch} GGUF prompt {i}: max |Δ| {d:.2e}");
            }
        }
    }
}
