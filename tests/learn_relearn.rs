//! `unlearn learn` and the relearning attack on the real Gemma 3 270M: learning a few QA pairs
//! raises their answers' probability and the result loads with `--model DIR`; the LoRA attack
//! runs through the hooked transformer, starts from the model's own numbers and leaves the
//! base weights it was given untouched outside the adapters.

use candle_core::Device;
use unlearn::data::Fact;
use unlearn::eval::completion::accuracy;
use unlearn::eval::relearn::{halves, relearn, RelearnConfig};
use unlearn::forget::learn::{qa_fact, run, LearnArgs};
use unlearn::model::LanguageModel;

/// `unlearn learn` on the QA file for 6 steps (one WikiText chunk per step), loaded back.
fn learn(
    data: &std::path::Path,
    out: &std::path::Path,
    layers: Option<&str>,
    sets: &[&str],
    lora: Option<unlearn::forget::lora::LoraConfig>,
) -> LanguageModel {
    let mut all = vec!["steps=6".to_string(), "text_batch_size=1".to_string()];
    all.extend(sets.iter().map(|s| s.to_string()));
    run(
        &LearnArgs {
            model: "gemma3-270m".into(),
            data: data.to_path_buf(),
            layers: layers.map(String::from),
            sets: all,
            max_chunks: 16,
            lora,
            out: out.to_path_buf(),
        },
        &Device::Cpu,
    )
    .unwrap();
    LanguageModel::load(out.to_str().unwrap(), &Device::Cpu).unwrap()
}

fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

const QA: &str = r#"[{"question": "What is the name of Zorblax's pet?", "answer": "Quibble"},
{"question": "Which city did Marnie Fevertree found?", "answer": "Ostrava Nine"}]"#;

#[test]
fn learning_qa_raises_its_answers_and_loads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("qa.json");
    std::fs::write(&data, QA).unwrap();
    let out = tmp.path().join("learned");
    let facts: Vec<Fact> = [
        ("What is the name of Zorblax's pet?", "Quibble"),
        ("Which city did Marnie Fevertree found?", "Ostrava Nine"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (q, a))| qa_fact(i, q, a))
    .collect();
    let base = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let before = accuracy(&base, &facts, |f| f.answer.clone()).unwrap();
    // Learning raised P(first answer token) of both QA pairs by more than 0.2 on average.
    let assert_learned = |lm: &LanguageModel, how: &str| {
        let after = accuracy(lm, &facts, |f| f.answer.clone()).unwrap();
        assert!(
            after.mean_p > before.mean_p + 0.2,
            "{how}: P(first answer token) {:.3} → {:.3}",
            before.mean_p,
            after.mean_p
        );
    };
    let learned = learn(&data, &out, Some("2-4"), &["optim.lr=3e-4"], None);
    assert_learned(&learned, "full fine-tuning");
    assert!(out.join("facts.jsonl").exists());

    // LoRA on the MLPs: the answers rise too; only the adapted matrices change, each by a
    // matrix of rank at most r (W − W₀ = s·B·A).
    let out = tmp.path().join("learned-lora");
    let lora = unlearn::forget::lora::LoraConfig {
        rank: 2,
        targets: "mlp".into(),
        ..Default::default()
    };
    let learned = learn(&data, &out, None, &[], Some(lora));
    assert_learned(&learned, "LoRA");
    let w = |lm: &LanguageModel, n: &str| lm.model.weights().get(n).unwrap().clone();
    let q = "model.layers.3.self_attn.q_proj.weight";
    assert_eq!(
        max_abs(&(w(&learned, q) - w(&base, q)).unwrap()),
        0.0,
        "attention is not adapted with targets = mlp"
    );
    let d = "model.layers.3.mlp.down_proj.weight";
    let delta = (w(&learned, d) - w(&base, d)).unwrap();
    assert!(max_abs(&delta) > 0.0);
    // Rank ≤ 2: a 3 × 3 minor of the change vanishes; Hadamard's bound |det| ≤ Π‖row‖ makes
    // the ratio scale-free (≈ 0.1–1 for a full-rank change).
    let m: Vec<Vec<f32>> = delta.to_vec2().unwrap();
    let (r, c) = ([0, 97, 311], [5, 700, 1500]);
    let e = |i: usize, j: usize| m[r[i]][c[j]] as f64;
    let det = e(0, 0) * (e(1, 1) * e(2, 2) - e(1, 2) * e(2, 1))
        - e(0, 1) * (e(1, 0) * e(2, 2) - e(1, 2) * e(2, 0))
        + e(0, 2) * (e(1, 0) * e(2, 1) - e(1, 1) * e(2, 0));
    let bound: f64 = (0..3)
        .map(|i| (0..3).map(|j| e(i, j).powi(2)).sum::<f64>().sqrt())
        .product();
    let det = det / bound;
    assert!(
        det.abs() < 1e-3,
        "3×3 minor of a rank-2 change / Hadamard bound: {det}"
    );
}

/// Gemma 3 270M and the Sports athletes it knows.
fn gemma_and_known_athletes() -> (LanguageModel, Vec<Fact>) {
    let lm = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let known = unlearn::data::known::known_facts(
        &lm,
        "sports",
        "top1",
        unlearn::data::dedup::Policy::Refuse,
    )
    .unwrap();
    (lm, known)
}

#[test]
fn the_relearning_attack_runs_and_reports_every_few_steps() {
    let (mut lm, known) = gemma_and_known_athletes();
    let (seen, unseen) = halves(&known[..8]);
    let retain = &known[8..16];
    let before = accuracy(&lm, &unseen, |f| f.answer.clone()).unwrap();
    let cfg = RelearnConfig {
        steps: 2,
        eval_every: 1,
        batch_size: 4,
        retain_batch_size: 4,
        text_batch_size: 1,
        lora: unlearn::forget::lora::LoraConfig {
            rank: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let c = relearn(&mut lm, &seen, &unseen, retain, &cfg, None).unwrap();
    assert_eq!(c.steps, [0, 1, 2]);
    assert_eq!(c.unseen[0], before, "step 0 is the model as given");
    assert_eq!(c.losses.len(), 2);
    assert!(c.losses.iter().all(|l| l.is_finite()));
    // rank × (in + out) per adapted matrix (A is rank × in, B is out × rank), for q, k, v, o,
    // gate, up and down of every layer.
    let mc = &lm.model.config;
    let (h, q, kv, i) = (
        mc.hidden_size,
        mc.num_heads * mc.head_dim,
        mc.num_kv_heads * mc.head_dim,
        mc.intermediate_size,
    );
    let per_layer = 2 * (h + q) + 2 * (h + kv) + 3 * (h + i);
    assert_eq!(c.lora_params, 2 * per_layer * mc.num_layers);
    assert_eq!(c.lora_params, 474_624, "Gemma 3 270M, rank 2");
}

/// `--full`: the attack fine-tunes the named weights themselves (exactly those: every other
/// tensor is bit-identical afterwards) at `full_lr`, and the facts it trains on gain.
#[test]
fn the_full_fine_tuning_attack_trains_exactly_the_named_weights() {
    let (mut lm, known) = gemma_and_known_athletes();
    let (seen, unseen) = halves(&known[..8]);
    let retain = &known[8..16];
    let names = lm.model.mlp_param_names(&[3, 4]);
    let before: Vec<(String, candle_core::Tensor)> = lm
        .model
        .weights()
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    let cfg = RelearnConfig {
        steps: 3,
        eval_every: 3,
        full_lr: 1e-4,
        batch_size: 4,
        retain_batch_size: 4,
        text_batch_size: 1,
        ..Default::default()
    };
    let c = relearn(&mut lm, &seen, &unseen, retain, &cfg, Some(&names)).unwrap();
    assert_eq!(c.steps, [0, 3]);
    let mc = &lm.model.config;
    assert_eq!(c.full_params, 2 * 3 * mc.hidden_size * mc.intermediate_size);
    assert_eq!(c.lora_params, 0);
    assert!(
        c.seen[1].mean_p > c.seen[0].mean_p,
        "trained facts: mean p {} -> {}",
        c.seen[0].mean_p,
        c.seen[1].mean_p
    );
    for (k, t0) in &before {
        let t1 = lm.model.weights().get(k).unwrap();
        let d = max_abs(
            &(t1.to_dtype(candle_core::DType::F32).unwrap()
                - t0.to_dtype(candle_core::DType::F32).unwrap())
            .unwrap(),
        );
        if names.contains(k) {
            assert!(d > 0.0, "{k} was not trained");
        } else {
            assert_eq!(d, 0.0, "{k} changed");
        }
    }
}
