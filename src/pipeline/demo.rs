//! `unlearn demo`: the default job on Gemma 3 270M and Sports Facts — the experiment in
//! `experiments/demo.toml` (built into the binary) run by the experiment pipeline, then a short
//! table of the headline numbers. It locates the first 16 known athletes twice (causal tracing
//! → KUDA's MLP window; fact-lookup probes → the FLU layers), unlearns them with KUDA on the
//! traced window (as specified, and with its representation layer at 12), localized
//! fine-tuning on the FLU layers and gradient ascent on the traced window, evaluates each
//! against the original model, attacks each with a short LoRA relearning run and writes one
//! HTML report. Stages are cached by content hash like any `unlearn run`: a re-run skips what
//! is finished and an interrupted training resumes.

use crate::eval::schema::Table;
use crate::pipeline::experiment::{self, stage_dir, Experiment};
use crate::util::read_json;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The experiment `unlearn demo` runs (the same text as `experiments/demo.toml`).
pub const DEMO_EXPERIMENT: &str = include_str!("../../experiments/demo.toml");

/// Options of `unlearn demo`.
#[derive(Clone, Debug)]
pub struct DemoArgs {
    pub model: String,
    pub forget: String,
    pub seed: u64,
    pub out: PathBuf,
}

/// The built-in demo experiment with the command line's model, split and seed.
pub fn experiment(a: &DemoArgs) -> Result<Experiment> {
    let mut e: Experiment =
        toml::from_str(DEMO_EXPERIMENT).context("the built-in demo experiment")?;
    e.model = a.model.clone();
    e.forget = a.forget.clone();
    e.seed = a.seed;
    Ok(e)
}

/// Run the demo; returns the report's path.
pub fn run(a: &DemoArgs, device: &candle_core::Device) -> Result<PathBuf> {
    let e = experiment(a)?;
    let (report, _) = experiment::run(&e, &a.out, device)?;
    println!("\n{}", summary(&e, &a.out)?);
    Ok(report)
}

/// The headline numbers of each unlearning run beside the original model's, as a text table
/// (read from the stages' `eval/NAME/metrics.json` and `relearn/NAME/relearn.json`).
pub fn summary(e: &Experiment, out: &Path) -> Result<String> {
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
    let mut table = format!("{:<14}", "model");
    for (_, h) in COLS {
        table.push_str(&format!("{h:>14}"));
    }
    // One value of a metrics file (or the attack's last unseen-half accuracy, for "relearn").
    let cell = |m: &Table, rl: &Option<Value>, k: &str, unlearned: bool| -> Option<f64> {
        if k == "relearn" {
            return rl.as_ref().filter(|_| unlearned).and_then(|r| {
                r["curve"]["unseen"].as_array()?.last()?["top1_candidates"].as_f64()
            });
        }
        let r = m.row(k)?;
        if unlearned {
            r.unlearned
        } else {
            Some(r.original)
        }
    };
    // The original model's row takes each column from the first evaluation that has it.
    let mut original: Vec<Option<f64>> = vec![None; COLS.len()];
    let mut lines: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for u in &e.unlearn {
        let path = stage_dir(out, "eval", &u.name).join("metrics.json");
        let Some(m) = read_json(&path)? else {
            continue;
        };
        let Some(m) = Table::from_value(&m, &path)? else {
            continue;
        };
        let rl = read_json(&stage_dir(out, "relearn", &u.name).join("relearn.json"))?;
        for (o, (k, _)) in original.iter_mut().zip(COLS) {
            *o = o.or_else(|| cell(&m, &rl, k, false));
        }
        let values = COLS.iter().map(|(k, _)| cell(&m, &rl, k, true));
        lines.push((u.name.clone(), values.collect()));
    }
    if !lines.is_empty() {
        lines.insert(0, ("original".into(), original));
    }
    for (name, values) in lines {
        table.push_str(&format!("\n{name:<14}"));
        for v in values {
            table.push_str(&format!(
                "{:>14}",
                v.map_or("–".into(), |v| format!("{v:.3}"))
            ));
        }
    }
    table.push_str(
        "\nforget acc / MCQ: the true sport wins among the three (lower = more forgotten; chance 1/3); \
         latent probe: best per-layer probe accuracy on the forget athletes; relearned: accuracy \
         on the half of them the LoRA attack never saw, after it",
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::schema::{EvalMetrics, Row};
    use serde_json::json;

    fn args() -> DemoArgs {
        DemoArgs {
            model: "some/model.gguf".into(),
            forget: "random-8".into(),
            seed: 7,
            out: "unused".into(),
        }
    }

    #[test]
    fn the_demo_is_the_shipped_experiment_with_the_command_line_overrides() {
        let e = experiment(&args()).unwrap();
        let shipped = Experiment::load(Path::new("experiments/demo.toml")).unwrap();
        assert_eq!(
            serde_json::to_value(&shipped.unlearn).unwrap(),
            serde_json::to_value(&e.unlearn).unwrap()
        );
        let names: Vec<&str> = e.unlearn.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["kuda", "kuda-preset", "localized-ft", "ga"]);
        assert_eq!(
            (e.model.as_str(), e.forget.as_str(), e.seed),
            ("some/model.gguf", "random-8", 7)
        );
        assert_eq!(shipped.model, "gemma3-270m");
    }

    #[test]
    fn the_summary_reads_each_runs_evaluation_and_attack() {
        let d = tempfile::tempdir().unwrap();
        let e = experiment(&args()).unwrap();
        let write = |rel: &str, v: Value| {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v.to_string()).unwrap();
        };
        let row = |m: &str, o: f64, u: f64| Row {
            metric: m.into(),
            n: 16,
            original: o,
            unlearned: Some(u),
            lower_is_better: true,
            reference: false,
        };
        let metrics = |rows: Vec<Row>| serde_json::to_value(EvalMetrics::with_rows(rows)).unwrap();
        write(
            "eval/kuda/metrics.json",
            metrics(vec![
                row("forget.top1_candidates", 1.0, 0.25),
                row("utility.wikitext_perplexity", 13.94, 14.5),
            ]),
        );
        write(
            "relearn/kuda/relearn.json",
            json!({"curve": {"unseen": [{"top1_candidates": 0.25}, {"top1_candidates": 0.625}]}}),
        );
        // ga was evaluated but not attacked; localized-ft has no evaluation yet.
        write(
            "eval/ga/metrics.json",
            metrics(vec![
                row("forget.top1_candidates", 1.0, 0.5),
                row("forget.know_nothing_floor.top1_candidates", 0.375, 0.5),
            ]),
        );
        let s = summary(&e, d.path()).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        let cells = |name: &str| -> Vec<String> {
            let l = lines.iter().find(|l| l.starts_with(name)).unwrap();
            l.split_whitespace().map(String::from).collect()
        };
        // model, forget acc, know-nothing, MCQ, held-out, ppl, H, answer ppl, probe, relearned
        assert_eq!(cells("original")[1], "1.000");
        assert_eq!(cells("original")[5], "13.940");
        assert_eq!(cells("original")[9], "–");
        // A column the first evaluation lacks (an older version's) comes from the next one.
        assert_eq!(cells("original")[2], "0.375");
        assert_eq!(cells("kuda")[2], "–");
        assert_eq!(cells("kuda")[1], "0.250");
        assert_eq!(cells("kuda")[5], "14.500");
        assert_eq!(cells("kuda")[9], "0.625");
        assert_eq!(cells("ga")[1], "0.500");
        assert_eq!(cells("ga")[9], "–");
        assert!(!s.contains("localized-ft"));
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("original")).count(),
            1
        );
        // A broken file is an error naming it, not a silent blank.
        std::fs::write(d.path().join("eval/ga/metrics.json"), "{oops").unwrap();
        let err = format!("{:#}", summary(&e, d.path()).unwrap_err());
        assert!(err.contains("eval/ga/metrics.json"), "{err}");
    }
}
