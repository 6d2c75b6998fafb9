//! What the reference tests share: reading the PyTorch + transformers reference pack
//! (tests/fixtures/reference/<model>/*.json) and comparing logits with it.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;

pub fn reference(name: &str, file: &str) -> Value {
    let p = format!(
        "{}/tests/fixtures/reference/{name}/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&p).expect(&p)).unwrap()
}

pub fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn row(t: &Tensor, i: usize) -> Vec<f32> {
    t.get(i)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn log_softmax(r: &[f32]) -> Vec<f64> {
    let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    r.iter().map(|&x| x as f64 - lse).collect()
}

/// The same top-k ids as the reference, where the order may differ only between logits closer
/// than 1e-4, and log-probabilities within 1e-3.
pub fn check_top(
    name: &str,
    what: &str,
    logits: &[f32],
    ref_ids: &[u32],
    ref_logprobs: Option<&[f64]>,
) {
    let k = ref_ids.len();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let ours: Vec<u32> = idx[..k].iter().map(|&i| i as u32).collect();
    for (pos, (&a, &b)) in ours.iter().zip(ref_ids).enumerate() {
        if a != b {
            let gap = (logits[a as usize] - logits[b as usize]).abs();
            assert!(gap < 1e-4, "{name} {what}: top-{k} differs at rank {pos}: ours {a}, reference {b} (logit gap {gap})\nours {ours:?}\nref  {ref_ids:?}");
        }
    }
    let mut s1 = ours.clone();
    let mut s2 = ref_ids.to_vec();
    s1.sort();
    s2.sort();
    // The set may differ only at the boundary, by a near tie.
    if s1 != s2 {
        let last = logits[ref_ids[k - 1] as usize];
        let kth = logits[ours[k - 1] as usize];
        assert!(
            (last - kth).abs() < 1e-4,
            "{name} {what}: top-{k} sets differ: {ours:?} vs {ref_ids:?}"
        );
    }
    if let Some(lp) = ref_logprobs {
        let ls = log_softmax(logits);
        for (&id, &want) in ref_ids.iter().zip(lp) {
            let d = (ls[id as usize] - want).abs();
            assert!(
                d <= 1e-3,
                "{name} {what}: log-softmax of token {id}: ours {}, reference {want}",
                ls[id as usize]
            );
        }
    }
}

/// Largest |a − b| over all entries (any device, compared in f64 on the CPU).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let f = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    max_abs(&(f(a) - f(b)).unwrap())
}

/// Largest |a| over all entries (any device, in f64).
pub fn max_abs(a: &Tensor) -> f64 {
    a.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Gemma 3 270M against its PyTorch f32 reference prompts: (top-1 agreements, prompts, max
/// |Δ log-softmax| over each prompt's reference top 20).
pub fn against_gemma_reference(lm: &unlearn::model::LanguageModel) -> (usize, usize, f64) {
    let r = reference("gemma3", "prompts.json");
    let (mut agree, mut n, mut worst) = (0, 0, 0f64);
    for p in r["prompts"].as_array().unwrap() {
        let ids = ids_of(&p["input_ids"]);
        let b = unlearn::model::Batch::new(
            &[ids],
            lm.pad_id(),
            unlearn::model::PadSide::Left,
            &Device::Cpu,
        )
        .unwrap();
        let logits = lm
            .model
            .run(&b, &unlearn::model::RunOpts::default())
            .unwrap()
            .logits
            .unwrap();
        let ls = log_softmax(&row(&logits, 0));
        let top = ids_of(&p["top20_ids"]);
        let want = floats(&p["top20_logprobs"]);
        let best = (0..ls.len())
            .max_by(|&a, &b| ls[a].total_cmp(&ls[b]))
            .unwrap();
        agree += usize::from(best as u32 == top[0]);
        n += 1;
        for (id, w) in top.iter().zip(want) {
            worst = worst.max((ls[*id as usize] - w).abs());
        }
    }
    (agree, n, worst)
}

/// KUDA (with its null-space projection) and RMU (its steering target) run through the real
/// trainer for two steps on Gemma 3 270M under the process-wide dtypes of the moment, which
/// `precision` names as the manifest must (`weights bf16`, `compute f16`); what they write is f32.
pub fn short_unlearning_runs_write_f32(precision: &str) -> Vec<HashMap<String, Tensor>> {
    use unlearn::forget::config::Method;
    use unlearn::forget::run::{run, ForgetArgs};
    let mut written = Vec::new();
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
        run(&args, &Device::Cpu).unwrap_or_else(|e| panic!("{method:?} ({precision}): {e:#}"));
        let changed: HashMap<String, Tensor> =
            candle_core::safetensors::load(out.join("changed.safetensors"), &Device::Cpu).unwrap();
        assert!(!changed.is_empty() && changed.values().all(|t| t.dtype() == DType::F32));
        // The manifest says how the run held and computed the model.
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["precision"], precision, "{method:?}");
        written.push(changed);
    }
    written
}

/// Gradients of the next-token loss (`target` after `ids`) with respect to the matrices
/// `names` (trainable, so f32 masters) of `base` computing in `dtype`.
pub fn next_token_grads(
    base: &unlearn::model::Transformer,
    dtype: DType,
    ids: &[u32],
    target: u32,
    names: &[&str],
) -> std::collections::BTreeMap<String, Tensor> {
    let mut m =
        unlearn::model::Transformer::new(base.config.clone(), base.weights().clone()).unwrap();
    m.set_compute_dtype(dtype).unwrap();
    m.set_trainable(names).unwrap();
    for n in names {
        assert_eq!(m.weights().get(n).unwrap().dtype(), DType::F32, "{n}");
    }
    let b = unlearn::model::Batch::new(
        &[ids.to_vec()],
        0,
        unlearn::model::PadSide::Left,
        &Device::Cpu,
    )
    .unwrap();
    let out = m
        .run(
            &b,
            &unlearn::model::RunOpts {
                logits: unlearn::model::LogitsAt::Last,
                grad: true,
                ..Default::default()
            },
        )
        .unwrap();
    let target = Tensor::new(&[target], &Device::Cpu).unwrap();
    let (_, g) =
        unlearn::model::ops::cross_entropy_with_grad(out.logits.as_ref().unwrap(), &target)
            .unwrap();
    m.backward(&out, Some(&g), None).unwrap().params
}
