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
    run(
        &LearnArgs {
            model: "gemma3-270m".into(),
            data,
            layers: Some("2-4".into()),
            sets: vec![
                "steps=6".into(),
                "optim.lr=3e-4".into(),
                "text_batch_size=1".into(),
            ],
            max_chunks: 16,
            out: out.clone(),
        },
        &Device::Cpu,
    )
    .unwrap();
    let learned = LanguageModel::load(out.to_str().unwrap(), &Device::Cpu).unwrap();
    let after = accuracy(&learned, &facts, |f| f.answer.clone()).unwrap();
    assert!(
        after.mean_p > before.mean_p + 0.2,
        "P(first answer token) {:.3} → {:.3}",
        before.mean_p,
        after.mean_p
    );
    assert!(out.join("facts.jsonl").exists());
}

#[test]
fn the_relearning_attack_runs_and_reports_every_few_steps() {
    let mut lm = LanguageModel::load("gemma3-270m", &Device::Cpu).unwrap();
    let known = unlearn::data::known::known_facts(&lm, "sports", "top1").unwrap();
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
    let c = relearn(&mut lm, &seen, &unseen, retain, &cfg).unwrap();
    assert_eq!(c.steps, [0, 1, 2]);
    assert_eq!(c.unseen[0], before, "step 0 is the model as given");
    assert_eq!(c.losses.len(), 2);
    assert!(c.losses.iter().all(|l| l.is_finite()));
    // 2 × rank × (in + out) per adapted matrix, 7 matrices per layer.
    assert!(
        c.lora_params > 0 && c.lora_params < 10_000_000,
        "{}",
        c.lora_params
    );
}
