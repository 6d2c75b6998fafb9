//! What the `inspect`, `generate`, `predict` and `mcq` commands print.

use crate::eval::mcq;
use crate::model::chat::ChatFormat;
use crate::model::generate::{generate as gen, Sampling};
use crate::model::predict::predict as pred;
use crate::model::{source::Format, LanguageModel};
use anyhow::{bail, Result};
use candle_core::Device;
use serde_json::json;

/// The device commands run on: CUDA when built with the `cuda` feature and a GPU is present.
pub fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return Ok(d);
        }
    }
    Ok(Device::Cpu)
}

fn load(spec: &str) -> Result<LanguageModel> {
    let t = std::time::Instant::now();
    let lm = LanguageModel::load(spec, &device()?)?;
    eprintln!(
        "loaded {} in {:.1}s",
        lm.origin.path.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(lm)
}

/// `unlearn inspect`.
pub fn inspect(spec: &str, as_json: bool) -> Result<()> {
    let lm = load(spec)?;
    let c = &lm.model.config;
    let o = &lm.origin;
    let layer_types: Vec<&str> = (0..c.num_layers)
        .map(|l| if c.is_sliding(l) { "sliding" } else { "global" })
        .collect();
    let v = json!({
        "model": spec,
        "path": o.path,
        "format": match o.format { Format::Gguf => "gguf", Format::HfDir => "hf-directory", Format::Delta => "unlearn-delta", Format::Random => "random" },
        "provenance": o.provenance,
        "sha256": o.sha256,
        "architecture": c.arch.name(),
        "parameters": lm.model.weights().num_params(),
        "config": c,
        "layer_types": layer_types,
        "tokenizer": {
            "kind": format!("{:?}", lm.tokenizer.kind),
            "vocab_size": lm.tokenizer.vocab_size(),
            "bos": lm.tokenizer.bos_id, "eos": lm.tokenizer.eos_ids, "pad": lm.tokenizer.pad_id,
            "adds_bos": lm.tokenizer.add_bos,
        },
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model        {spec}");
    println!(
        "file         {} ({})",
        o.path.display(),
        v["format"].as_str().unwrap_or("")
    );
    println!("from         {}", o.provenance);
    if let Some(h) = &o.sha256 {
        println!("sha256       {h}");
    }
    println!("architecture {}", c.arch.name());
    println!(
        "parameters   {} ({:.1} M)",
        lm.model.weights().num_params(),
        lm.model.weights().num_params() as f64 / 1e6
    );
    println!(
        "layers       {} (d_model {}, d_mlp {}, activation {:?})",
        c.num_layers, c.hidden_size, c.intermediate_size, c.activation
    );
    println!(
        "attention    {} heads, {} key/value heads, head dim {}",
        c.num_heads, c.num_kv_heads, c.head_dim
    );
    if let Some(w) = c.sliding_window {
        let globals: Vec<usize> = (0..c.num_layers).filter(|&l| !c.is_sliding(l)).collect();
        println!("             sliding window {w}, global layers {globals:?}");
    }
    if c.attn_logit_softcapping.is_some() || c.final_logit_softcapping.is_some() {
        println!(
            "             soft caps: attention scores {:?}, final logits {:?}",
            c.attn_logit_softcapping, c.final_logit_softcapping
        );
    }
    println!(
        "rope         base {} (local {:?})",
        c.rope_theta, c.rope_local_theta
    );
    if let Some(lr) = &c.rope_longrope {
        println!(
            "             LongRoPE: long factors past {} tokens, attention factor {:.4}",
            lr.original_max_position_embeddings, lr.attention_factor
        );
    }
    println!(
        "vocabulary   {} (embeddings tied: {})",
        c.vocab_size, c.tie_word_embeddings
    );
    println!(
        "tokenizer    {:?}, bos {:?}, eos {:?}, pad {:?}, adds bos: {}",
        lm.tokenizer.kind,
        lm.tokenizer.bos_id,
        lm.tokenizer.eos_ids,
        lm.tokenizer.pad_id,
        lm.tokenizer.add_bos
    );
    Ok(())
}

/// The chat format of `lm` when `chat` is set (`--chat`).
fn chat_format(lm: &LanguageModel, chat: bool) -> Result<Option<ChatFormat>> {
    chat.then(|| ChatFormat::of(&lm.tokenizer)).transpose()
}

/// The prompts as the model sees them: with a chat format, each as a single user turn.
fn as_seen(prompts: &[String], chat: Option<&ChatFormat>) -> Vec<String> {
    prompts
        .iter()
        .map(|p| match chat {
            Some(c) => c.user_turn(p),
            None => p.clone(),
        })
        .collect()
}

/// `unlearn generate`.
pub fn generate(
    spec: &str,
    prompts: &[String],
    max_new: usize,
    temperature: f64,
    seed: u64,
    chat: bool,
    as_json: bool,
) -> Result<()> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        anyhow::bail!("--temperature must be a number ≥ 0, got {temperature}");
    }
    let lm = load(spec)?;
    let chat = chat_format(&lm, chat)?;
    let ids: Vec<Vec<u32>> = as_seen(prompts, chat.as_ref())
        .iter()
        .map(|p| lm.tokenizer.encode(p, true))
        .collect::<Result<_>>()?;
    let out = gen(
        &lm.model,
        &ids,
        max_new,
        &lm.stop_ids(),
        lm.pad_id(),
        Sampling { temperature, seed },
    )?;
    let mut rows = Vec::new();
    for (p, new) in prompts.iter().zip(&out) {
        let text = lm.tokenizer.decode(new)?;
        if as_json {
            rows.push(json!({"prompt": p, "new_token_ids": new, "new_text": text}));
        } else if chat.is_some() {
            println!("{p}\n→ {text}");
        } else {
            println!("{p}{text}");
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// `unlearn predict`.
pub fn predict(
    spec: &str,
    prompts: &[String],
    top_k: usize,
    answer: Option<&str>,
    batch: usize,
    chat: bool,
    as_json: bool,
) -> Result<()> {
    let lm = load(spec)?;
    let chat = chat_format(&lm, chat)?;
    let preds = pred(&lm, &as_seen(prompts, chat.as_ref()), top_k, answer, batch)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&preds)?);
        return Ok(());
    }
    for p in &preds {
        println!("{:?} ({} tokens)", p.prompt, p.n_tokens);
        for (i, t) in p.top.iter().enumerate() {
            println!(
                "  {:>3}. {:<20} {:>8.4}  (logit {:.3}, id {})",
                i + 1,
                format!("{:?}", t.token),
                t.prob,
                t.logit,
                t.id
            );
        }
        if let Some(a) = &p.answer {
            let note = if a.multi_token {
                " (first token only)"
            } else {
                ""
            };
            println!(
                "  answer {:?}: p = {:.4}, rank {}{note}",
                a.answer, a.prob, a.rank
            );
        }
    }
    Ok(())
}

/// `unlearn mcq`: letter accuracy on a multiple-choice set (MMLU, WMDP or a JSONL file),
/// with its standard error and, where questions have subjects or splits, per group.
pub fn mcq(
    spec: &str,
    set: &str,
    limit: Option<usize>,
    batch: usize,
    chat: bool,
    shots: usize,
    as_json: bool,
) -> Result<()> {
    let mut qs = mcq::load_set(set)?;
    if let Some(n) = limit {
        qs.truncate(n);
    }
    let examples = if shots > 0 {
        let dev = mcq::dev_examples()?;
        if let Some(q) = qs.iter().find(|q| {
            !q.subject
                .as_ref()
                .is_some_and(|s| dev.iter().any(|e| e.subject.as_ref() == Some(s)))
        }) {
            bail!(
                "--shots {shots}: question {:?} of {set} has no MMLU subject with dev examples (subject {:?}); few-shot works on MMLU sets",
                q.question.chars().take(60).collect::<String>(),
                q.subject
            );
        }
        dev
    } else {
        Vec::new()
    };
    let lm = load(spec)?;
    let chat = chat_format(&lm, chat)?;
    // Each batch's letter logits are kept as it is done: an interrupted run resumes, and the
    // same questions asked again of the same model are read back.
    let memo = crate::model::memo::BatchMemo::for_model(&lm)?;
    let how = mcq::Asking {
        chat: chat.as_ref(),
        shots,
        examples: &examples,
        memo: Some(&memo),
    };
    let t = std::time::Instant::now();
    let s = mcq::score_with(&lm, &qs, batch, &how)?;
    let secs = t.elapsed().as_secs_f64();
    memo.report_hits("");
    if as_json {
        let v = json!({"model": spec, "set": set, "chat": chat.is_some(), "shots": shots,
            "seconds": secs, "batches_read_back": memo.hits(),
            "tool": crate::util::tool_id(), "score": s});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{set} ({shots}-shot{}): {} questions in {secs:.1}s, accuracy {:.3} ± {:.3} (s.e.; chance {:.3}), mean p(correct letter) {:.3}, letters chosen {:?}",
        if chat.is_some() { ", chat" } else { "" },
        s.n, s.accuracy, s.stderr, s.chance, s.mean_p_correct, s.chosen
    );
    for g in &s.groups {
        println!(
            "  {:<28} {:>4} questions  accuracy {:.3} ± {:.3}",
            g.name, g.n, g.accuracy, g.stderr
        );
    }
    Ok(())
}

/// `unlearn known`: how many facts of a task the model knows under each rule, with standard
/// errors of the shares.
pub fn known(spec: &str, task: &str, as_json: bool) -> Result<()> {
    use crate::data::known::{cached_scores, KnownRule};
    let facts = crate::data::load_task(task, crate::data::dedup::Policy::Refuse)?;
    let lm = load(spec)?;
    crate::data::context::check_facts_fit(&lm, &facts, task)?;
    let scores = cached_scores(&lm, &facts)?;
    let with_rivals = facts.iter().filter(|f| f.candidates.len() >= 2).count();
    let rules = [
        ("top1", KnownRule::Top1, facts.len()),
        ("candidates", KnownRule::Top1AmongCandidates, with_rivals),
        ("p>=0.5", KnownRule::MinProb(0.5), facts.len()),
    ];
    let rows: Vec<serde_json::Value> = rules
        .iter()
        .filter(|(_, _, n)| *n > 0)
        .map(|(name, rule, n)| {
            let k = facts
                .iter()
                .zip(&scores)
                .filter(|(f, s)| {
                    (*name != "candidates" || f.candidates.len() >= 2) && rule.holds(s)
                })
                .count();
            let share = k as f64 / *n as f64;
            json!({"rule": name, "known": k, "of": n, "share": share,
                "stderr": mcq::stderr(share, *n)})
        })
        .collect();
    if as_json {
        let v = json!({"model": spec, "task": task, "facts": facts.len(),
            "tool": crate::util::tool_id(), "known": rows});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{task}: {} facts", facts.len());
    for r in &rows {
        println!(
            "  --known {:<10} {:>6} of {:>6}  ({:.1} % ± {:.1})",
            r["rule"].as_str().unwrap_or(""),
            r["known"],
            r["of"],
            100.0 * r["share"].as_f64().unwrap_or(0.0),
            100.0 * r["stderr"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// `unlearn export`.
pub fn export(spec: &str, out: &std::path::Path) -> Result<()> {
    crate::outdir::prepare(out, &[("--model", spec.to_string())])?;
    let lm = load(spec)?;
    crate::model::hf_dir::export_hf_dir(
        &lm.model.config,
        lm.model.weights(),
        &lm.tokenizer,
        out,
        None,
    )?;
    eprintln!(
        "wrote {} ({} tensors)",
        out.display(),
        lm.model.weights().names().len()
    );
    Ok(())
}

/// `unlearn presets`: every built-in preset with what it sets and where it was chosen.
pub fn presets(as_json: bool) -> Result<()> {
    let all = crate::forget::presets::all()?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for p in &all {
        println!("{} ({})", p.name, p.method);
        println!("  {}", p.description);
        if let Some(l) = &p.layers {
            println!("  layers: {l}");
        }
        println!("  settings: {}", p.set.join(" "));
        println!("  chosen on: {}\n", p.chosen_on);
    }
    Ok(())
}
