//! Qwen2.5-Coder-Instruct (0.5B and 1.5B, Q4_K_M GGUF) against PyTorch + transformers on the
//! same file (tests/fixtures/reference/qwen2.5-coder-*, made by scripts/make_refpack.py):
//! top-20 tokens and log-softmax of fact and multiple-choice prompts, gradients of an MLP
//! weight and an attention bias, greedy generation, tokenizer ids of 400+ texts, the chat
//! turn of the GGUF's template. The 0.5B model
//! runs by default; the 1.5B model only with UNLEARN_TEST_QWEN15=1 (it needs ~7 GB).

mod refcheck;

use candle_core::{DType, Device, Tensor};
use refcheck::{check_top, floats, ids_of, log_softmax, reference};
use std::sync::OnceLock;
use unlearn::model::chat::ChatFormat;
use unlearn::model::generate::{generate, Sampling};
use unlearn::model::transformer::{LogitsAt, RunOpts};
use unlearn::model::{ops, LanguageModel, Transformer};

const SMALL: &str = "qwen2.5-coder-0.5b";
const LARGE: &str = "qwen2.5-coder-1.5b";

fn model(alias: &str) -> &'static LanguageModel {
    static SMALL_LM: OnceLock<LanguageModel> = OnceLock::new();
    static LARGE_LM: OnceLock<LanguageModel> = OnceLock::new();
    let cell = if alias == SMALL { &SMALL_LM } else { &LARGE_LM };
    cell.get_or_init(|| LanguageModel::load(alias, &Device::Cpu).expect("model loads"))
}

/// Top-20 set and log-softmax (≤ 1e-3) at the last position of every reference prompt, each
/// run alone; the answer's log-probability and rank too.
fn prompts(alias: &str) {
    let lm = model(alias);
    let r = reference(alias, "prompts.json");
    let mut worst = 0f64;
    for (i, p) in r["prompts"].as_array().unwrap().iter().enumerate() {
        let ids = ids_of(&p["input_ids"]);
        let text = p["prompt"].as_str().unwrap();
        assert_eq!(
            lm.tokenizer.encode(text, true).unwrap(),
            ids,
            "{alias} prompt {i}: token ids"
        );
        let l = &lm.last_logits(std::slice::from_ref(&ids)).unwrap()[0];
        let ref_lp = floats(&p["top20_logprobs"]);
        let top = ids_of(&p["top20_ids"]);
        check_top(alias, &format!("prompt {i}"), l, &top, Some(&ref_lp));
        let ls = log_softmax(l);
        for (&id, want) in top.iter().zip(&ref_lp) {
            worst = worst.max((ls[id as usize] - want).abs());
        }
        let a = p["answer_token_id"].as_u64().unwrap() as usize;
        let want = p["answer_logprob"].as_f64().unwrap();
        assert!(
            (ls[a] - want).abs() <= 1e-3,
            "{alias} prompt {i}: answer log-prob {} vs {want}",
            ls[a]
        );
    }
    eprintln!("{alias}: max |Δ log-softmax| over the top-20 of all prompts {worst:.2e}");
}

/// Token ids of every reference text, special tokens as transformers adds them.
fn tokenizer(alias: &str) {
    let lm = model(alias);
    let r = reference(alias, "tokenizer.json");
    let texts = r["texts"].as_array().unwrap();
    assert!(texts.len() >= 400, "{} texts", texts.len());
    for (i, t) in texts.iter().enumerate() {
        let text = t["text"].as_str().unwrap();
        assert_eq!(
            lm.tokenizer.encode(text, true).unwrap(),
            ids_of(&t["ids"]),
            "{alias} text {i}: {text:?}"
        );
    }
}

fn flat_first8(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .narrow(0, 0, 8)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn frobenius(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt()
}

/// Loss and gradients (norm and first entries within 1e-3 relative) of the reference
/// parameters; their dequantized values too.
fn gradients(alias: &str) {
    let base = model(alias);
    let r = reference(alias, "grad.json");
    let mut m = Transformer::new(base.model.config.clone(), base.model.weights().clone()).unwrap();
    let params = r["params"].as_object().unwrap();
    let names: Vec<&String> = params.keys().collect();
    for (n, p) in params {
        let w = flat_first8(m.weights().get(n).unwrap());
        for (a, b) in w.iter().zip(floats(&p["weight_first8"])) {
            assert!((a - b).abs() < 1e-6, "{alias} {n}: weight {a} vs {b}");
        }
    }
    m.set_trainable(&names).unwrap();
    let ids = ids_of(&r["input_ids"]);
    let b = unlearn::model::Batch::new(
        &[ids],
        base.pad_id(),
        unlearn::model::PadSide::Left,
        &Device::Cpu,
    )
    .unwrap();
    let opts = RunOpts {
        logits: LogitsAt::Last,
        grad: true,
        ..Default::default()
    };
    let out = m.run(&b, &opts).unwrap();
    let target = Tensor::new(
        &[r["answer_token_id"].as_u64().unwrap() as u32],
        &Device::Cpu,
    )
    .unwrap();
    let (loss, g) = ops::cross_entropy_with_grad(out.logits.as_ref().unwrap(), &target).unwrap();
    let want_loss = r["loss"].as_f64().unwrap();
    assert!(
        (loss - want_loss).abs() <= 1e-3 * want_loss.abs().max(1.0),
        "{alias}: loss {loss} vs {want_loss}"
    );
    let grads = m.backward(&out, Some(&g), None).unwrap();
    for (n, p) in params {
        let gt = &grads.params[n.as_str()];
        let norm = frobenius(gt);
        let want = p["grad_frobenius_norm"].as_f64().unwrap();
        assert!(
            (norm - want).abs() <= 1e-3 * want,
            "{alias} {n}: gradient norm {norm} vs {want}"
        );
        let want8 = floats(&p["grad_first8"]);
        let scale = p["grad_abs_max"].as_f64().unwrap();
        for (a, b) in flat_first8(gt).iter().zip(&want8) {
            assert!(
                (a - b).abs() <= 1e-3 * scale,
                "{alias} {n}: gradient entry {a} vs {b} (largest entry {scale})"
            );
        }
        eprintln!("{alias} {n}: gradient norm {norm:.6e}, reference {want:.6e}");
    }
}

/// Greedy generation of 16 tokens gives transformers' tokens and text.
fn greedy(alias: &str) {
    let lm = model(alias);
    let r = reference(alias, "generate.json");
    for g in r["generations"].as_array().unwrap() {
        let ids = ids_of(&g["input_ids"]);
        let got = generate(
            &lm.model,
            &[ids],
            16,
            &lm.stop_ids(),
            lm.pad_id(),
            Sampling::default(),
        )
        .unwrap();
        assert_eq!(
            got[0],
            ids_of(&g["new_token_ids"]),
            "{alias}: greedy generation of {:?}",
            g["prompt"]
        );
        assert_eq!(
            lm.tokenizer.decode(&got[0]).unwrap(),
            g["new_text"].as_str().unwrap()
        );
    }
}

/// Letter logits of length-bucketed batches with the head restricted to the letters equal
/// those of each question's full-vocabulary run alone.
fn bucketed_mcq(alias: &str) {
    use unlearn::eval::mcq;
    let lm = model(alias);
    let qs: Vec<mcq::Mcq> = mcq::load_set("mmlu")
        .unwrap()
        .into_iter()
        .step_by(41)
        .collect();
    let letters: Vec<u32> = ["A", "B", "C", "D"]
        .iter()
        .map(|l| lm.tokenizer.encode(&format!(" {l}"), false).unwrap()[0])
        .collect();
    let ids: Vec<Vec<u32>> = qs
        .iter()
        .map(|q| lm.tokenizer.encode(&mcq::prompt(q), true).unwrap())
        .collect();
    let lens: std::collections::BTreeSet<usize> = ids.iter().map(|s| s.len()).collect();
    assert!(lens.len() > 5, "the questions differ in length: {lens:?}");
    let fast = lm.last_token_logits(&ids, &letters, 4).unwrap();
    for (i, (s, got)) in ids.iter().zip(&fast).enumerate() {
        let full = &lm.last_logits(std::slice::from_ref(s)).unwrap()[0];
        for (k, &t) in letters.iter().enumerate() {
            let d = (got[k] - full[t as usize]).abs();
            assert!(
                d < 1e-3,
                "{alias} question {i}: letter {k} logit {} bucketed vs {} alone",
                got[k],
                full[t as usize]
            );
        }
    }
}

/// The chat format read from the GGUF's template renders a user turn as transformers'
/// `apply_chat_template(..., add_generation_prompt=True)` does.
fn chat(alias: &str) {
    let lm = model(alias);
    let r = reference(alias, "chat.json");
    assert_eq!(
        lm.tokenizer.chat_template.as_deref(),
        r["template"].as_str(),
        "{alias}: chat template"
    );
    let f = ChatFormat::of(&lm.tokenizer).unwrap();
    assert_eq!(
        f.user_turn(r["prompt"].as_str().unwrap()),
        r["rendered"].as_str().unwrap(),
        "{alias}: rendered user turn"
    );
}

fn large_enabled() -> bool {
    let on = std::env::var("UNLEARN_TEST_QWEN15").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set UNLEARN_TEST_QWEN15=1 to compare {LARGE} (needs ~7 GB)");
    }
    on
}

#[test]
fn qwen05_prompts_match_reference() {
    prompts(SMALL);
}

#[test]
fn qwen05_tokenizer_matches_reference() {
    tokenizer(SMALL);
}

#[test]
fn qwen05_gradients_match_reference() {
    gradients(SMALL);
}

#[test]
fn qwen05_greedy_generation_matches_reference() {
    greedy(SMALL);
}

#[test]
fn qwen05_bucketed_letter_logits_equal_one_prompt_at_a_time() {
    bucketed_mcq(SMALL);
}

#[test]
fn qwen05_chat_turn_matches_transformers() {
    chat(SMALL);
}

#[test]
fn qwen15_matches_reference() {
    if !large_enabled() {
        return;
    }
    tokenizer(LARGE);
    chat(LARGE);
    prompts(LARGE);
    greedy(LARGE);
    gradients(LARGE);
}
