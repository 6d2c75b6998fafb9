//! `unlearn report DIR… --out report.html`: one self-contained HTML page (inline CSS and SVG,
//! no scripts, nothing fetched) from the directories the other commands write — evaluations
//! (`metrics.json`: before/after table, latent-knowledge probes, fluency samples), relearning
//! attacks (`relearn.json`), TOFU (`unlearn tofu eval`), unlearning runs (`manifest.json`,
//! `train.jsonl`: settings and loss curves) and localizations (`localization.json`,
//! `trace.svg`, `components.svg`) — with a side-by-side table when there are several
//! evaluations.

use crate::eval::schema::{EvalMetrics, Table};
use crate::report::svg::{esc, lines};
use anyhow::{bail, Result};
use serde_json::Value;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What was found in one directory.
struct Input {
    dir: PathBuf,
    /// `metrics.json` of `unlearn eval` or `unlearn muse`.
    metrics: Option<Table>,
    /// `forget`'s own before/after numbers.
    run_metrics: Option<Value>,
    manifest: Option<Value>,
    /// `relearn.json` of `unlearn relearn`.
    relearn: Option<Value>,
    /// `metrics.json` of `unlearn tofu eval`.
    tofu: Option<Value>,
    train_log: Vec<Value>,
    svgs: Vec<(String, String)>,
}

fn read_input(dir: &Path) -> Result<Input> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let train_log = std::fs::read_to_string(dir.join("train.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut svgs = Vec::new();
    for name in ["trace.svg", "heads.svg", "probes.svg", "components.svg"] {
        if let Ok(s) = std::fs::read_to_string(dir.join(name)) {
            if s.trim_start().starts_with("<svg") && !s.contains("<script") {
                svgs.push((name.to_string(), s));
            }
        }
    }
    // metrics.json of `eval` has rows; that of `forget` has before/after (shown with the run).
    let path = dir.join("metrics.json");
    let metrics = crate::util::read_json(&path)?;
    let table = match &metrics {
        Some(m) => Table::from_value(m, &path)?,
        None => None,
    };
    let (metrics, run_metrics, tofu) = match metrics {
        _ if table.is_some() => (table, None, None),
        Some(m) if m["benchmark"] == "tofu" => (None, None, Some(m)),
        other => (None, other, None),
    };
    let input = Input {
        dir: dir.to_path_buf(),
        metrics,
        run_metrics,
        manifest: crate::util::read_json(&dir.join("manifest.json"))?,
        relearn: crate::util::read_json(&dir.join("relearn.json"))?,
        tofu,
        train_log,
        svgs,
    };
    if input.metrics.is_none()
        && input.tofu.is_none()
        && input.manifest.is_none()
        && input.relearn.is_none()
        && input.svgs.is_empty()
    {
        bail!(
            "{}: nothing to report (no metrics.json, manifest.json, relearn.json, trace.svg or components.svg)",
            dir.display()
        );
    }
    Ok(input)
}

fn fmt(v: &Value) -> String {
    fmt_num(v.as_f64())
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
        None => "–".into(),
    }
}

/// TOFU: forget quality and model utility of every model measured.
fn tofu_table(t: &Value) -> String {
    let mut s = String::from(
        "<table><tr><th>model</th><th>forget quality (KS p)</th><th>model utility</th>\
         <th>forget P(answer)</th><th>forget ROUGE-L recall</th><th>retain P(answer)</th>\
         <th>retain ROUGE-L recall</th></tr>",
    );
    for m in t["models"].as_array().into_iter().flatten() {
        let sc = &m["scores"];
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(m["name"].as_str().unwrap_or("?")),
            m["forget_quality"].as_f64().map_or("–".into(), |p| format!("{p:.2e}")),
            fmt(&m["model_utility"]),
            fmt(&sc["forget"]["probability"]),
            fmt(&sc["forget"]["rouge_l_recall"]),
            fmt(&sc["retain"]["probability"]),
            fmt(&sc["retain"]["rouge_l_recall"]),
        );
    }
    s.push_str("</table>");
    s
}

/// The before/after table of one evaluation.
fn metrics_table(m: &Table) -> String {
    let mut s = String::from(
        "<table><tr><th>metric</th><th>n</th><th>original</th><th>unlearned</th><th>change</th></tr>",
    );
    for r in &m.head().rows {
        let (o, u) = (r.original, r.unlearned);
        let (lower, reference) = (r.lower_is_better, r.reference);
        let (delta, class) = match u {
            Some(u) => {
                let d = u - o;
                let good = if lower { d < 0.0 } else { d > 0.0 };
                (
                    format!("{d:+.3}"),
                    if d.abs() < 1e-9 || reference {
                        ""
                    } else if good {
                        "good"
                    } else {
                        "bad"
                    },
                )
            }
            _ => ("".into(), ""),
        };
        let _ = write!(
            s,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{delta}</td></tr>",
            esc(&r.metric),
            if reference { " <small>(reference)</small>" } else { "" },
            r.n,
            fmt_num(Some(o)),
            fmt_num(u)
        );
    }
    s.push_str("</table>");
    s
}

/// `forget`'s quick before/after numbers.
fn run_metrics_table(m: &Value) -> String {
    let mut s =
        String::from("<table><tr><th>during the run</th><th>before</th><th>after</th></tr>");
    for (name, path) in [
        (
            "forget top-1 among candidates",
            ["forget", "top1_candidates"],
        ),
        ("forget mean P(answer)", ["forget", "mean_p"]),
        (
            "held-out top-1 among candidates",
            ["held_out", "top1_candidates"],
        ),
        ("WikiText-2 perplexity", ["wikitext", "perplexity"]),
    ] {
        let _ = write!(
            s,
            "<tr><td>{name}</td><td>{}</td><td>{}</td></tr>",
            fmt(&m["before"][path[0]][path[1]]),
            fmt(&m["after"][path[0]][path[1]])
        );
    }
    s.push_str("</table>");
    s
}

fn samples_table(m: &EvalMetrics) -> String {
    let o = &m.fluency_samples.original;
    let u = m.fluency_samples.unlearned.clone().unwrap_or_default();
    if o.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "<table class=\"samples\"><tr><th>prompt</th><th>original</th><th>unlearned</th></tr>",
    );
    for (i, x) in o.iter().enumerate().take(12) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td></tr>",
            esc(&x.0),
            esc(&x.1),
            esc(u.get(i).map_or("–", |y| y.1.as_str()))
        );
    }
    s.push_str("</table>");
    s
}

/// Probe accuracy on the forget facts by layer, original vs unlearned, one chart per position.
fn latent_chart(m: &EvalMetrics) -> String {
    let pts = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect()
    };
    let mut out = String::new();
    for c in &m.latent {
        let mut series = vec![("original, true answer".to_string(), pts(&c.original))];
        for (v, name) in [
            (&c.unlearned, "unlearned, true answer"),
            (&c.unlearned_new_answer, "unlearned, new answer"),
        ] {
            if let Some(v) = v {
                series.push((name.to_string(), pts(v)));
            }
        }
        series.push((
            "original, held-out retain facts".to_string(),
            pts(&c.retain_test),
        ));
        out.push_str(&lines(
            &format!(
                "Probe accuracy on forget facts at the {} (0 = embeddings)",
                c.at.name()
            ),
            "layer",
            &series,
        ));
    }
    out
}

/// Accuracy of the unseen and the trained half of the forget facts over the attack's steps.
fn relearn_chart(r: &Value) -> String {
    let c = &r["curve"];
    let steps: Vec<f64> = c["steps"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    let series_of = |key: &str, field: &str| -> Vec<(f64, f64)> {
        c[key]
            .as_array()
            .map(|v| {
                steps
                    .iter()
                    .zip(v)
                    .map(|(&s, a)| (s, a[field].as_f64().unwrap_or(f64::NAN)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let lora = &r["config"]["lora"];
    // A `--full` attack fine-tunes weights themselves, not adapters.
    let attack = match c["full_params"].as_u64().filter(|&n| n > 0) {
        Some(n) => format!(
            "Full fine-tuning of {} tensors ({n} parameters), lr {}",
            r["full_weights"].as_array().map_or(0, |v| v.len()),
            r["config"]["full_lr"]
        ),
        None => format!(
            "LoRA rank {}, α {}, on {} ({} adapter parameters), lr {}",
            lora["rank"],
            lora["alpha"],
            esc(lora["targets"].as_str().unwrap_or("?")),
            c["lora_params"],
            r["config"]["lr"]
        ),
    };
    format!(
        "<p>{attack}: trained on {} forget facts, measured on {} it never sees.</p>{}",
        r["seen_ids"].as_array().map_or(0, |v| v.len()),
        r["unseen_ids"].as_array().map_or(0, |v| v.len()),
        lines(
            "Forget accuracy (top-1 among candidates) during the relearning attack",
            "step",
            &[
                (
                    "unseen half".to_string(),
                    series_of("unseen", "top1_candidates")
                ),
                (
                    "trained half".to_string(),
                    series_of("seen", "top1_candidates")
                ),
                (
                    "unseen half, top-1 over the vocabulary".to_string(),
                    series_of("unseen", "top1")
                ),
            ],
        )
    )
}

fn loss_chart(log: &[Value]) -> String {
    let mut names: Vec<String> = Vec::new();
    for l in log {
        for k in l["terms"].as_object().into_iter().flatten().map(|(k, _)| k) {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = names
        .iter()
        .map(|n| {
            let pts = log
                .iter()
                .filter_map(|l| Some((l["step"].as_f64()?, l["terms"][n].as_f64()?)))
                .collect();
            (n.clone(), pts)
        })
        .collect();
    let mut h = lines("loss terms per step", "step", &series);
    // The perplexity of held-out text, read every `ppl_every` steps (before the step).
    let ppl: Vec<(f64, f64)> = log
        .iter()
        .filter_map(|l| Some((l["step"].as_f64()?, l["text_ppl"].as_f64()?)))
        .collect();
    if !ppl.is_empty() {
        h.push_str(&lines(
            "perplexity of held-out text during training (before the step)",
            "step",
            &[("text_ppl".to_string(), ppl)],
        ));
    }
    h
}

/// Side-by-side of the unlearned values of several evaluations.
fn comparison(inputs: &[&Input]) -> String {
    let mut metrics: Vec<String> = Vec::new();
    for i in inputs {
        for r in i.metrics.iter().flat_map(|m| &m.head().rows) {
            if !metrics.contains(&r.metric) {
                metrics.push(r.metric.clone());
            }
        }
    }
    let mut s = String::from("<table><tr><th>metric</th><th>original</th>");
    for i in inputs {
        let _ = write!(s, "<th>{}</th>", esc(&label(i)));
    }
    s.push_str("</tr>");
    for k in &metrics {
        let row = |i: &Input| i.metrics.as_ref().and_then(|m| m.row(k)).cloned();
        let orig = inputs
            .iter()
            .find_map(|i| row(i))
            .map(|r| fmt_num(Some(r.original)))
            .unwrap_or_default();
        let _ = write!(s, "<tr><td>{}</td><td>{orig}</td>", esc(k));
        for i in inputs {
            let _ = write!(
                s,
                "<td>{}</td>",
                row(i).map(|r| fmt_num(r.unlearned)).unwrap_or_default()
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

/// For runs repeated over seeds (directories `NAME-seedS`): per metric of `KEYS`, each run's
/// mean over seeds with an approximate 95 % interval over seeds and facts (normal: the spread
/// between seeds plus each seed's binomial spread over its facts), as bar charts.
fn seed_charts(inputs: &[&Input]) -> String {
    const KEYS: [(&str, &str); 2] = [
        (
            "forget.top1_candidates",
            "forget accuracy (lower is better)",
        ),
        ("held_out.top1_candidates", "held-out accuracy"),
    ];
    let mut groups: Vec<(String, Vec<&Input>)> = Vec::new();
    for i in inputs {
        let name = i
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let Some((base, seed)) = name.rsplit_once("-seed") else {
            continue;
        };
        if seed.parse::<u64>().is_err() {
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == base) {
            Some(g) => g.1.push(i),
            None => groups.push((base.to_string(), vec![i])),
        }
    }
    if groups.is_empty() {
        return String::new();
    }
    let mut out = String::from("<section id=\"seeds\"><h2>Over seeds</h2><p>Mean over seeds; bars: ≈95 % interval over seeds and facts (normal approximation).</p>");
    for (key, title) in KEYS {
        let (mut labels, mut mean, mut lo, mut hi) = (vec![], vec![], vec![], vec![]);
        for (base, runs) in &groups {
            let vals: Vec<(f64, f64)> = runs
                .iter()
                .filter_map(|i| {
                    let r = i.metrics.as_ref()?.row(key)?;
                    Some((r.unlearned?, r.n as f64))
                })
                .collect();
            if vals.is_empty() {
                continue;
            }
            let s = vals.len() as f64;
            let m = vals.iter().map(|v| v.0).sum::<f64>() / s;
            let between = if vals.len() > 1 {
                vals.iter().map(|v| (v.0 - m).powi(2)).sum::<f64>() / (s - 1.0)
            } else {
                0.0
            };
            let within = vals
                .iter()
                .map(|(p, n)| p * (1.0 - p) / n.max(1.0))
                .sum::<f64>()
                / s;
            let half = 1.96 * (between / s + within / s).sqrt();
            labels.push(format!("{base} ({})", vals.len()));
            mean.push(m);
            lo.push((m - half).max(0.0));
            hi.push((m + half).min(1.0));
        }
        if !mean.is_empty() {
            out.push_str(&crate::report::svg::bars_with_errors(
                title, &labels, &mean, &lo, &hi,
            ));
        }
    }
    out.push_str("</section>");
    out
}

fn label(i: &Input) -> String {
    let method = i
        .metrics
        .as_ref()
        .and_then(|m| m.manifest()?["method"].as_str().map(String::from))
        .or_else(|| {
            i.manifest
                .as_ref()
                .and_then(|m| m["method"].as_str().map(String::from))
        });
    let name = i
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    match method {
        Some(m) => format!("{name} ({m})"),
        None => name,
    }
}

const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}.good{color:#1a7f37}.bad{color:#c62828}\
pre{margin:0;white-space:pre-wrap;text-align:left;font-size:12px}.samples td{vertical-align:top;max-width:330px}\
section{border-top:2px solid #eee;margin-top:2em}code{background:#f4f4f4;padding:1px 4px}";

/// Build the page from `dirs`.
pub fn render(dirs: &[PathBuf]) -> Result<String> {
    if dirs.is_empty() {
        bail!("give at least one directory written by eval, forget/edit or locate");
    }
    let inputs: Vec<Input> = dirs.iter().map(|d| read_input(d)).collect::<Result<_>>()?;
    let mut h = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>unlearn report</title><style>{CSS}</style></head><body>\
         <h1>unlearn report</h1><p>{} — {} director{}: {}</p>",
        esc(&crate::util::tool_id()),
        inputs.len(),
        if inputs.len() == 1 { "y" } else { "ies" },
        inputs.iter().map(|i| format!("<code>{}</code>", esc(&i.dir.display().to_string()))).collect::<Vec<_>>().join(", ")
    );
    let evals: Vec<&Input> = inputs.iter().filter(|i| i.metrics.is_some()).collect();
    if evals.len() > 1 {
        h.push_str("<section id=\"comparison\"><h2>Side by side</h2><p>Unlearned values of each run; the first column is the original model.</p>");
        h.push_str(&comparison(&evals));
        h.push_str("</section>");
        h.push_str(&seed_charts(&evals));
    }
    for i in &inputs {
        let _ = write!(h, "<section><h2>{}</h2>", esc(&label(i)));
        if let Some(m) = &i.metrics {
            let _ = write!(
                h,
                "<h3>Before and after</h3><p>Task {}, {} forget facts, {} held-out facts; forget rows: lower is better.</p>{}",
                esc(&m.head().task),
                m.head().forget_facts,
                m.head().held_out_facts,
                metrics_table(m)
            );
            if let Some(e) = m.eval() {
                let lc = latent_chart(e);
                if !lc.is_empty() {
                    let _ = write!(h, "<h3>Latent knowledge</h3><p>Per-layer answer probes trained on the original model's residual stream (retain facts), applied to the forget facts: what the layers still carry, whatever the output says.</p>{lc}");
                }
                let st = samples_table(e);
                if !st.is_empty() {
                    let _ = write!(h, "<h3>Answers to forget prompts (greedy)</h3>{st}");
                }
            }
        }
        let manifest = i
            .manifest
            .as_ref()
            .or_else(|| i.metrics.as_ref().and_then(|m| m.manifest()))
            .filter(|m| !m.is_null());
        if let Some(m) = manifest {
            let _ = write!(
                h,
                "<h3>Run</h3><p>method <b>{}</b>{}, {} parameters in {} tensors, {} steps, seed {}; base {} (sha256 {}).</p>",
                esc(m["method"].as_str().unwrap_or("?")),
                if m["edit"].as_bool() == Some(true) { " (edit)" } else { "" },
                m["param_count"],
                m["params"].as_array().map_or(0, |v| v.len()),
                m["steps"],
                m["seed"],
                esc(m["base_model"].as_str().unwrap_or("?")),
                esc(&m["base_sha256"].as_str().unwrap_or("?").chars().take(12).collect::<String>())
            );
        }
        if let Some(a) = manifest
            .and_then(|m| m.get("gradient_angles"))
            .filter(|a| !a.is_null())
        {
            let _ = write!(
                h,
                "<p>Forget vs retain gradient angle: {}° → {}° after the projection at the start, {}° → {}° at the end.</p>",
                fmt(&a["start"]["before_deg"]),
                fmt(&a["start"]["after_deg"]),
                fmt(&a["end"]["before_deg"]),
                fmt(&a["end"]["after_deg"])
            );
        }
        if let Some(t) = &i.tofu {
            let _ = write!(
                h,
                "<h3>TOFU</h3><p>Split {}; forget quality: KS test of the forget truth ratios against the retain-only model (higher = closer to never having learned them).</p>{}",
                esc(t["options"]["split"].as_str().unwrap_or("?")),
                tofu_table(t)
            );
        }
        if let Some(rm) = &i.run_metrics {
            h.push_str(&run_metrics_table(rm));
        }
        if let Some(r) = &i.relearn {
            let _ = write!(h, "<h3>Relearning attack</h3>{}", relearn_chart(r));
        }
        if !i.train_log.is_empty() {
            h.push_str(&loss_chart(&i.train_log));
        }
        for (name, svg) in &i.svgs {
            let _ = write!(h, "<h3>{}</h3>{svg}", esc(name));
        }
        h.push_str("</section>");
    }
    h.push_str("</body></html>");
    Ok(h)
}

/// Write the report.
pub fn run(dirs: &[PathBuf], out: &Path) -> Result<()> {
    if out.is_dir() {
        anyhow::bail!(
            "--out {}: a directory; the report is one file (e.g. --out {})",
            out.display(),
            out.join("report.html").display()
        );
    }
    let page = render(dirs)?;
    crate::util::write_atomic(out, page.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {

    /// A full fine-tuning attack is described as one, not as LoRA with no parameters.
    #[test]
    fn a_full_fine_tuning_attack_is_named_as_such() {
        let acc =
            |v: f64| serde_json::json!({"n": 8, "top1": v, "top1_candidates": v, "mean_p": v});
        let rl = serde_json::json!({"config": {"lr": 0.001, "full_lr": 2e-5, "lora": {"rank": 8}},
            "full_weights": ["a", "b", "c"], "seen_ids": ["1"], "unseen_ids": ["2"],
            "curve": {"steps": [0, 5], "unseen": [acc(0.1), acc(0.6)], "seen": [acc(0.1), acc(1.0)],
                      "lora_params": 0, "full_params": 300}});
        let h = relearn_chart(&rl);
        assert!(
            h.contains("Full fine-tuning of 3 tensors (300 parameters), lr 0.00002"),
            "{h}"
        );
        assert!(!h.contains("LoRA"), "{h}");
    }
    use super::*;
    use crate::eval::latent::LatentCurve;
    use crate::eval::schema::{BeforeAfter, Row};
    use crate::locate::probe::ProbeAt;

    fn row(metric: &str, n: usize, original: f64, unlearned: f64, reference: bool) -> Row {
        Row {
            metric: metric.into(),
            n,
            original,
            unlearned: Some(unlearned),
            lower_is_better: true,
            reference,
        }
    }

    #[test]
    fn runs_over_seeds_get_error_bars() {
        let d = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        for (name, v) in [("ga-seed0", 0.5), ("ga-seed1", 0.7), ("kuda-seed0", 0.1)] {
            let dir = d.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let m = EvalMetrics::with_rows(vec![row("forget.top1_candidates", 16, 1.0, v, false)]);
            std::fs::write(dir.join("metrics.json"), serde_json::to_string(&m).unwrap()).unwrap();
            dirs.push(dir);
        }
        let page = render(&dirs).unwrap();
        assert!(page.contains("Over seeds"), "{page}");
        assert!(
            page.contains("ga (2)") && page.contains("kuda (1)"),
            "{page}"
        );
        // ga: mean 0.6; between-seed variance 0.02, mean within-seed variance (0.25 + 0.21)/16/2,
        // each over 2 seeds.
        let half = 1.96 * (0.02f64 / 2.0 + (0.25 + 0.21) / 16.0 / 2.0 / 2.0).sqrt();
        assert!(
            page.contains(&format!("0.600 [{:.3}, {:.3}]", 0.6 - half, 0.6 + half)),
            "{page}"
        );
        assert!(!render(&dirs[2..]).unwrap().contains("Over seeds"));
    }

    #[test]
    fn a_page_with_every_section() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, loc) = (d.path().join("a"), d.path().join("b"), d.path().join("loc"));
        for (dir, v) in [(&a, 0.0), (&b, 0.25)] {
            std::fs::create_dir_all(dir).unwrap();
            let mut m = EvalMetrics::with_rows(vec![
                row("forget.top1_candidates", 16, 1.0, v, false),
                row(
                    "forget.know_nothing_floor.top1_candidates",
                    16,
                    0.5,
                    0.375,
                    true,
                ),
            ]);
            m.head.manifest = Some(
                serde_json::json!({"method": "kuda", "params": ["x"], "param_count": 10,
                "steps": 3, "seed": 0, "base_model": "gemma3-270m", "base_sha256": "abc"}),
            );
            m.fluency_samples = BeforeAfter {
                original: vec![("p <1>".into(), "golf".into())],
                unlearned: Some(vec![("p <1>".into(), "tennis".into())]),
            };
            m.latent = vec![LatentCurve {
                at: ProbeAt::LastToken,
                retain_test: vec![0.4, 0.9],
                original: vec![0.5, 1.0],
                unlearned: Some(vec![0.5, v]),
                unlearned_new_answer: None,
            }];
            std::fs::write(dir.join("metrics.json"), serde_json::to_string(&m).unwrap()).unwrap();
            std::fs::write(
                dir.join("train.jsonl"),
                "{\"step\":1,\"terms\":{\"f\":1.0},\"text_ppl\":12.5}\n{\"step\":2,\"terms\":{\"f\":0.5}}\n",
            )
            .unwrap();
        }
        std::fs::create_dir_all(&loc).unwrap();
        std::fs::write(loc.join("trace.svg"), "<svg><rect/></svg>").unwrap();
        let acc =
            |v: f64| serde_json::json!({"n": 8, "top1": v, "top1_candidates": v, "mean_p": v});
        let rl = serde_json::json!({"config": {"lr": 0.001, "lora": {"rank": 8, "alpha": 16.0, "targets": "all-linear"}},
            "seen_ids": ["1"], "unseen_ids": ["2"],
            "curve": {"steps": [0, 5], "unseen": [acc(0.1), acc(0.6)], "seen": [acc(0.1), acc(1.0)], "lora_params": 100}});
        std::fs::write(a.join("relearn.json"), rl.to_string()).unwrap();
        let tofu = d.path().join("tofu");
        std::fs::create_dir_all(&tofu).unwrap();
        let t = serde_json::json!({"benchmark": "tofu", "options": {"split": "forget01"},
            "models": [{"name": "kuda", "forget_quality": 0.012, "model_utility": 0.3,
                        "scores": {"forget": {"probability": 0.2, "rouge_l_recall": 0.3},
                                   "retain": {"probability": 0.5, "rouge_l_recall": 0.6}}}]});
        std::fs::write(tofu.join("metrics.json"), t.to_string()).unwrap();
        let page = render(&[a, b, loc, tofu]).unwrap();
        for part in [
            "Side by side",
            "Before and after",
            "Answers to forget prompts",
            "Latent knowledge",
            "Relearning attack",
            "unseen half",
            "unlearned, true answer",
            "loss terms per step",
            "perplexity of held-out text during training",
            "trace.svg",
            "p &lt;1&gt;",
            "class=\"good\"",
            "TOFU",
            "1.20e-2",
        ] {
            assert!(page.contains(part), "missing {part}");
        }
        assert!(
            !page.contains("<script") && !page.contains("http://")
                || page.contains("xmlns=\"http://www.w3.org/2000/svg\"")
        );
        // The know-nothing floor is a yardstick: marked as such, its change left uncoloured.
        assert!(page.contains(
            "floor.top1_candidates <small>(reference)</small></td><td>16</td><td>0.500</td><td>0.375</td><td class=\"\">-0.125</td>"
        ));
        let e = render(&[d.path().join("missing")]).unwrap_err();
        assert!(e.to_string().contains("missing"));
        // A table that does not parse as one is an error naming the file, not a blank table.
        let bad = d.path().join("bad");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("metrics.json"), r#"{"rows": [{"metric": 1}]}"#).unwrap();
        let e = format!("{:#}", render(&[bad]).unwrap_err());
        assert!(e.contains("bad/metrics.json"), "{e}");
    }
}
