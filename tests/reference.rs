//! The real models against the PyTorch + transformers reference pack (tests/fixtures/reference,
//! made by its scripts/make_refpack.py): logits of single prompts and padded batches, residual
//! norms, gradients of a middle MLP weight and of the residual stream, greedy generations.
//! The models are fetched through the same path a user's first run takes.

mod refcheck;

use candle_core::{DType, Device, Tensor};
use refcheck::{check_top, floats, ids_of, log_softmax, reference, row};
use std::sync::OnceLock;
use unlearn::model::generate::{generate, Sampling};
use unlearn::model::transformer::{LogitsAt, RunOpts};
use unlearn::model::{ops, Batch, HookPoint, Hooks, LanguageModel, PadSide};

fn model(name: &str) -> &'static LanguageModel {
    static GEMMA: OnceLock<LanguageModel> = OnceLock::new();
    static SMOL: OnceLock<LanguageModel> = OnceLock::new();
    let (cell, alias) = match name {
        "gemma3" => (&GEMMA, "gemma3-270m"),
        _ => (&SMOL, "smollm2-135m"),
    };
    cell.get_or_init(|| LanguageModel::load(alias, &Device::Cpu).expect("model loads"))
}

fn single_prompts(name: &str) {
    let lm = model(name);
    let r = reference(name, "prompts.json");
    for (i, p) in r["prompts"].as_array().unwrap().iter().enumerate() {
        let ids = ids_of(&p["input_ids"]);
        assert_eq!(
            lm.tokenizer
                .encode(p["prompt"].as_str().unwrap(), true)
                .unwrap(),
            ids,
            "{name} prompt {i}: token ids"
        );
        let b = Batch::new(&[ids], lm.pad_id(), PadSide::Left, &Device::Cpu).unwrap();
        let logits = lm
            .model
            .run(&b, &RunOpts::default())
            .unwrap()
            .logits
            .unwrap();
        let l = row(&logits, 0);
        check_top(
            name,
            &format!("prompt {i}"),
            &l,
            &ids_of(&p["top20_ids"]),
            Some(&floats(&p["top20_logprobs"])),
        );
        let ls = log_softmax(&l);
        let a = p["answer_token_id"].as_u64().unwrap() as usize;
        let want = p["answer_logprob"].as_f64().unwrap();
        assert!(
            (ls[a] - want).abs() <= 1e-3,
            "{name} prompt {i}: answer log-prob {} vs {want}",
            ls[a]
        );
        let rank = l.iter().filter(|&&x| x > l[a]).count();
        assert_eq!(
            rank as u64,
            p["answer_rank"].as_u64().unwrap(),
            "{name} prompt {i}: answer rank"
        );
    }
}

fn padded_batches(name: &str) {
    let lm = model(name);
    let r = reference(name, "batch.json");
    let prompts = reference(name, "prompts.json");
    let seqs: Vec<Vec<u32>> = prompts["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ids_of(&p["input_ids"]))
        .collect();
    for (variant, side) in [("left", PadSide::Left), ("right", PadSide::Right)] {
        let b = Batch::new(&seqs, lm.pad_id(), side, &Device::Cpu).unwrap();
        let want_ids: Vec<Vec<u32>> = r[variant]["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids_of)
            .collect();
        let got_ids: Vec<Vec<u32>> = b.ids.to_vec2().unwrap();
        assert_eq!(got_ids, want_ids, "{name} {variant}: padded ids");
        let logits = lm
            .model
            .run(&b, &RunOpts::default())
            .unwrap()
            .logits
            .unwrap();
        for (i, rr) in r[variant]["rows"].as_array().unwrap().iter().enumerate() {
            let l = row(&logits, i);
            let top = ids_of(&rr["top5_ids"]);
            check_top(name, &format!("{variant} row {i}"), &l, &top, None);
            for (&id, want) in top.iter().zip(floats(&rr["top5_logits"])) {
                let d = (l[id as usize] as f64 - want).abs();
                assert!(
                    d < 2e-3 * (1.0 + want.abs()),
                    "{name} {variant} row {i}: logit of {id} {} vs {want}",
                    l[id as usize]
                );
            }
        }
    }
}

fn gradients(name: &str) {
    // Clone the weights so this test can mark a parameter trainable without touching the shared model.
    let base = model(name);
    let mut m =
        unlearn::model::Transformer::new(base.model.config.clone(), base.model.weights().clone())
            .unwrap();
    let r = reference(name, "grad.json");
    let ids = ids_of(&r["input_ids"]);
    let mid = r["mid_layer"].as_u64().unwrap() as usize;
    let pname = format!("model.layers.{mid}.mlp.down_proj.weight");
    let w = m.weights().get(&pname).unwrap();
    let wrow: Vec<f32> = w
        .get(0)
        .unwrap()
        .narrow(0, 0, 8)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in wrow.iter().zip(floats(&r["weight_row0_cols0_8"])) {
        assert!(
            (*a as f64 - b).abs() < 1e-6,
            "{name}: dequantized weight {a} vs {b}"
        );
    }
    m.set_trainable(&[&pname]).unwrap();
    let b = Batch::new(std::slice::from_ref(&ids), 0, PadSide::Left, &Device::Cpu).unwrap();
    let hooks = Hooks::new().grad(HookPoint::ResidPre(mid));
    let out = m
        .run(
            &b,
            &RunOpts {
                hooks: Some(&hooks),
                logits: LogitsAt::Last,
                grad: true,
                ..Default::default()
            },
        )
        .unwrap();
    let target = Tensor::new(
        &[r["answer_token_id"].as_u64().unwrap() as u32],
        &Device::Cpu,
    )
    .unwrap();
    let (loss, g) = ops::cross_entropy_with_grad(out.logits.as_ref().unwrap(), &target).unwrap();
    let want_loss = r["loss"].as_f64().unwrap();
    assert!(
        (loss - want_loss).abs() < 1e-3 * want_loss.abs().max(1.0),
        "{name}: loss {loss} vs {want_loss}"
    );
    let grads = m.backward(&out, Some(&g), None).unwrap();
    let gw = &grads.params[&pname];
    let gv: Vec<f64> = gw
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let norm = gv.iter().map(|x| x * x).sum::<f64>().sqrt();
    let want = r["grad_frobenius_norm"].as_f64().unwrap();
    assert!(
        (norm - want).abs() <= 1e-3 * want,
        "{name}: gradient norm {norm} vs {want}"
    );
    let g0: Vec<f32> = gw
        .get(0)
        .unwrap()
        .narrow(0, 0, 8)
        .unwrap()
        .to_vec1()
        .unwrap();
    let want0 = floats(&r["grad_entries_row0_cols0_8"]);
    let scale = want0.iter().fold(0f64, |a, b| a.max(b.abs()));
    for (a, b) in g0.iter().zip(&want0) {
        assert!(
            (*a as f64 - b).abs() <= 1e-3 * scale,
            "{name}: gradient entry {a} vs {b}"
        );
    }
    let gr = &grads.hooks[&HookPoint::ResidPre(mid)];
    let per_pos: Vec<f64> = gr
        .get(0)
        .unwrap()
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (t, (a, b)) in per_pos
        .iter()
        .zip(floats(&r["residual_input_grad_l2_per_position"]))
        .enumerate()
    {
        assert!(
            (a - b).abs() <= 1e-3 * b.abs() + 1e-6,
            "{name}: residual gradient norm at position {t}: {a} vs {b}"
        );
    }
}

fn greedy_generation(name: &str) {
    let lm = model(name);
    let r = reference(name, "generate.json");
    for g in r["generations"].as_array().unwrap() {
        let ids = ids_of(&g["input_ids"]);
        let want = ids_of(&g["new_token_ids"]);
        let got = generate(
            &lm.model,
            &[ids],
            12,
            &lm.stop_ids(),
            lm.pad_id(),
            Sampling::default(),
        )
        .unwrap();
        assert_eq!(
            got[0], want,
            "{name}: greedy generation of {:?}",
            g["prompt"]
        );
        assert_eq!(
            lm.tokenizer.decode(&got[0]).unwrap(),
            g["new_text"].as_str().unwrap()
        );
    }
}

fn residual_norms(name: &str) {
    let lm = model(name);
    let r = reference(name, "hidden.json");
    let ids = ids_of(&r["input_ids"]);
    let n = lm.model.config.num_layers;
    let mut hooks = Hooks::new().cache(HookPoint::Embed);
    for l in 0..n {
        hooks = hooks.cache(HookPoint::ResidPost(l));
    }
    let b = Batch::new(&[ids], 0, PadSide::Left, &Device::Cpu).unwrap();
    let out = lm
        .model
        .run(
            &b,
            &RunOpts {
                hooks: Some(&hooks),
                logits: LogitsAt::None,
                ..Default::default()
            },
        )
        .unwrap();
    for (i, want) in r["raw_residual_norms"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let p = if i == 0 {
            HookPoint::Embed
        } else {
            HookPoint::ResidPost(i - 1)
        };
        let a = &out.cache[&p];
        let got: Vec<f64> = a
            .get(0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (t, (g, w)) in got.iter().zip(floats(want)).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs() + 1e-3,
                "{name}: residual norm at {p}, position {t}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn gemma3_single_prompts_match_reference() {
    single_prompts("gemma3");
}

#[test]
fn smollm2_single_prompts_match_reference() {
    single_prompts("smollm2");
}

#[test]
fn gemma3_padded_batches_match_reference() {
    padded_batches("gemma3");
}

#[test]
fn smollm2_padded_batches_match_reference() {
    padded_batches("smollm2");
}

#[test]
fn gemma3_gradients_match_reference() {
    gradients("gemma3");
}

#[test]
fn smollm2_gradients_match_reference() {
    gradients("smollm2");
}

#[test]
fn gemma3_greedy_generation_matches_reference() {
    greedy_generation("gemma3");
}

#[test]
fn smollm2_greedy_generation_matches_reference() {
    greedy_generation("smollm2");
}

#[test]
fn gemma3_residual_norms_match_reference() {
    residual_norms("gemma3");
}

#[test]
fn smollm2_residual_norms_match_reference() {
    residual_norms("smollm2");
}

#[test]
fn gemma3_restoring_the_clean_residual_restores_the_clean_prediction() {
    use unlearn::model::{Patch, PatchMode, Selection};
    let lm = model("gemma3");
    let ids = lm
        .tokenizer
        .encode("The Eiffel Tower is located in the city of", true)
        .unwrap();
    let b = Batch::new(&[ids], 0, PadSide::Left, &Device::Cpu).unwrap();
    let l = 6;
    let p = HookPoint::ResidPost(l);
    let clean = lm
        .model
        .run(
            &b,
            &RunOpts {
                hooks: Some(&Hooks::new().cache(p)),
                ..Default::default()
            },
        )
        .unwrap();
    let noise = Tensor::randn(0f32, 3.0, (1, 10, 640), &Device::Cpu).unwrap();
    let corrupt = Patch {
        point: HookPoint::Embed,
        mode: PatchMode::Add,
        value: noise,
        sel: Selection {
            positions: Some(vec![2, 3]),
            ..Default::default()
        },
    };
    let bad = lm
        .model
        .run(
            &b,
            &RunOpts {
                hooks: Some(&Hooks::new().patch(corrupt.clone())),
                ..Default::default()
            },
        )
        .unwrap();
    let restore = Patch {
        point: p,
        mode: PatchMode::Replace,
        value: clean.cache[&p].clone(),
        sel: Selection::default(),
    };
    let fixed = lm
        .model
        .run(
            &b,
            &RunOpts {
                hooks: Some(&Hooks::new().patch(corrupt).patch(restore)),
                ..Default::default()
            },
        )
        .unwrap();
    let c = clean.logits.unwrap();
    let diff = |x: &Tensor| {
        (x - &c)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(
        diff(bad.logits.as_ref().unwrap()) > 0.1,
        "the noise must change the prediction"
    );
    assert_eq!(diff(fixed.logits.as_ref().unwrap()), 0.0);
}
