//! `unlearn demo`: the default job on Gemma 3 270M and Sports Facts. Locate the first 16 known
//! athletes twice — by causal tracing (KUDA's MLP window) and by fact-lookup probes (the FLU
//! layers, same number of MLPs) — unlearn them with KUDA on the traced window, localized
//! fine-tuning on the FLU layers and gradient ascent on the traced window, evaluate each
//! against the original model (completion, MCQ, spellings, fluency, latent probes, perplexity),
//! attack each with a short LoRA relearning run, and write one HTML report. Each stage is
//! skipped when its output is already there, so an interrupted demo continues where it
//! stopped (an interrupted training resumes from its checkpoint).

use crate::eval::relearn::{RelearnArgs, RelearnConfig};
use crate::eval::run::{EvalArgs, Suite};
use crate::forget::config::Method;
use crate::forget::run::ForgetArgs;
use crate::locate::run::LocateArgs;
use anyhow::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Options of `unlearn demo`.
#[derive(Clone, Debug)]
pub struct DemoArgs {
    pub model: String,
    pub forget: String,
    pub seed: u64,
    pub out: PathBuf,
}

fn done(p: &Path) -> bool {
    p.exists()
}

/// Run the demo; returns the report's path.
pub fn run(a: &DemoArgs, device: &candle_core::Device) -> Result<PathBuf> {
    let t0 = std::time::Instant::now();
    let stage = |n: usize, what: &str| {
        eprintln!(
            "\n[{n}/5] {what} ({:.0}s so far)",
            t0.elapsed().as_secs_f64()
        )
    };
    let loc_dir = a.out.join("locate");
    let flu_dir = a.out.join("locate-flu");
    stage(
        1,
        "locating the facts: causal tracing → KUDA's MLP window; probes → FLU layers",
    );
    for (dir, method) in [(&loc_dir, "kuda-window"), (&flu_dir, "probe")] {
        if done(&dir.join("localization.json")) {
            eprintln!("already done: {}", dir.display());
            continue;
        }
        crate::locate::run::run(
            &LocateArgs {
                model: a.model.clone(),
                task: "sports".into(),
                forget: a.forget.clone(),
                known: "top1".into(),
                seed: a.seed,
                method: method.into(),
                top_k: 3,
                window: 3,
                samples: 5,
                max_facts: 8,
                budget_of: None,
                corruption: "noise".into(),
                heads: false,
                out: dir.clone(),
            },
            device,
        )?;
    }
    let methods = [Method::Kuda, Method::LocalizedFt, Method::Ga];
    stage(
        2,
        "unlearning: KUDA (traced window), localized fine-tuning (FLU layers), gradient ascent (traced window)",
    );
    for m in methods {
        let out = a.out.join(m.name());
        if done(&out.join("manifest.json")) {
            eprintln!("already done: {}", out.display());
            continue;
        }
        eprintln!("— {}", m.name());
        let loc = if m == Method::LocalizedFt {
            &flu_dir
        } else {
            &loc_dir
        };
        crate::forget::run::run(
            &ForgetArgs {
                forget: a.forget.clone(),
                localization: Some(loc.join("localization.json")),
                sets: vec![format!("seed={}", a.seed)],
                eval: false,
                ..ForgetArgs::defaults(&a.model, m, out)
            },
            device,
        )?;
    }
    stage(3, "evaluating each result beside the original model");
    let mut evals = Vec::new();
    for m in methods {
        let out = a.out.join(format!("eval-{}", m.name()));
        if !done(&out.join("metrics.json")) {
            eprintln!("— {}", m.name());
            crate::eval::run::run(
                &EvalArgs {
                    model: a.model.clone(),
                    unlearned: Some(a.out.join(m.name())),
                    task: "sports".into(),
                    forget: a.forget.clone(),
                    known: "top1".into(),
                    seed: a.seed,
                    suite: Suite::Quick,
                    held_out: 200,
                    out: out.clone(),
                },
                device,
            )?;
        }
        evals.push(out);
    }
    stage(4, "relearning attack on each result (LoRA, 10 steps)");
    for m in methods {
        let out = a.out.join(format!("eval-{}", m.name()));
        if done(&out.join("relearn.json")) {
            continue;
        }
        eprintln!("— {}", m.name());
        crate::eval::relearn::run(
            &RelearnArgs {
                model: a.model.clone(),
                unlearned: Some(a.out.join(m.name())),
                task: "sports".into(),
                forget: a.forget.clone(),
                known: "top1".into(),
                seed: a.seed,
                cfg: RelearnConfig {
                    steps: 10,
                    seed: a.seed,
                    ..Default::default()
                },
                out,
            },
            device,
        )?;
    }
    stage(5, "writing the report");
    let mut dirs = evals.clone();
    dirs.extend(methods.iter().map(|m| a.out.join(m.name())));
    dirs.push(loc_dir);
    dirs.push(flu_dir);
    let report = a.out.join("report.html");
    crate::report::html::run(&dirs, &report)?;
    print_summary(&evals)?;
    eprintln!(
        "\ndemo finished in {:.0}s; report: {}",
        t0.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(report)
}

/// A short table of the headline numbers of each evaluation.
fn print_summary(evals: &[PathBuf]) -> Result<()> {
    const COLS: [(&str, &str); 9] = [
        ("forget.top1_candidates", "forget acc"),
        // What the same model scores about made-up subjects: forgotten = at this level.
        ("forget.know_nothing_floor.top1_candidates", "know-nothing"),
        ("forget.mcq_accuracy", "forget MCQ"),
        ("held_out.top1_candidates", "held-out acc"),
        ("utility.wikitext_perplexity", "WikiText ppl"),
        ("fluency.ngram_entropy", "fluency H"),
        ("fluency.perplexity_under_original", "answer ppl"),
        (
            "latent.forget.best_layer_probe_last_subject_token",
            "latent probe",
        ),
        ("relearn", "relearned"),
    ];
    let mut header = format!("{:<14}", "model");
    for (_, h) in COLS {
        header.push_str(&format!("{h:>14}"));
    }
    println!("\n{header}");
    let mut first = true;
    for dir in evals {
        let m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json"))?)?;
        let rl: Option<Value> = std::fs::read_to_string(dir.join("relearn.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let get = |k: &str, field: &str| -> String {
            if k == "relearn" {
                // Unseen-half accuracy at the end of the attack (unlearned column only).
                return rl
                    .as_ref()
                    .filter(|_| field == "unlearned")
                    .and_then(|r| {
                        r["curve"]["unseen"].as_array()?.last()?["top1_candidates"].as_f64()
                    })
                    .map_or("–".into(), |v| format!("{v:.3}"));
            }
            m["rows"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["metric"] == k))
                .and_then(|r| r[field].as_f64())
                .map_or("–".into(), |v| format!("{v:.3}"))
        };
        if first {
            let mut line = format!("{:<14}", "original");
            for (k, _) in COLS {
                line.push_str(&format!("{:>14}", get(k, "original")));
            }
            println!("{line}");
            first = false;
        }
        let name = m["manifest"]["method"].as_str().unwrap_or("?").to_string();
        let mut line = format!("{name:<14}");
        for (k, _) in COLS {
            line.push_str(&format!("{:>14}", get(k, "unlearned")));
        }
        println!("{line}");
    }
    println!(
        "forget acc / MCQ: the true sport wins among the three (lower = more forgotten; chance 1/3); \
         latent probe: best per-layer probe accuracy on the forget athletes; relearned: accuracy \
         on the half of them the LoRA attack never saw, after it"
    );
    Ok(())
}
