//! `unlearn bench`: forward and forward+backward speed and peak memory on a real model, written
//! as JSON beside the PyTorch figures of SPEC.md §6 (and, with `--pytorch`, PyTorch measured on
//! the same work in the same run by `bench/pytorch_bench.py`).
//!
//! The work: a batch of 8 × 32 token ids (fixed formula, the same in the PyTorch script);
//! a forward with logits at every position and at the last position only; forward+backward of
//! the cross-entropy of each row's last-position logits against a fixed token, with (a) the MLPs
//! of the 3 middle blocks trainable and (b) every weight trainable.

use crate::model::transformer::{LogitsAt, RunOpts};
use crate::model::{ops, Batch, LanguageModel, PadSide};
use crate::util::{current_rss, peak_rss, reset_peak};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// The model SPEC.md §6 measured PyTorch on: its figures are shown only beside this model.
const SPEC_MODEL: &str = "gemma3-270m";

/// PyTorch 2.15 on this kind of machine, 1 thread (SPEC.md §6, Gemma 3 270M), seconds.
const PYTORCH_1T: [(&str, Option<f64>); 5] = [
    ("trace_sweep", Some(79.0)),
    ("forward_full_logits", Some(1.18)),
    ("forward_last_logits", None),
    ("fwd_bwd_3_mlps", Some(1.06)),
    ("fwd_bwd_all_weights", Some(2.69)),
];

/// Token ids of the benchmark batch: `B × T`, the same formula as bench/pytorch_bench.py.
pub fn bench_ids(b: usize, t: usize) -> Vec<Vec<u32>> {
    (0..b)
        .map(|i| {
            (0..t)
                .map(|j| 1000 + ((i * t + j) as u32 * 7919) % 20000)
                .collect()
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time `f` (one warm-up, then `repeats` runs); returns (median seconds, peak RSS bytes).
/// Median seconds of `repeats` runs of `f` after one warm-up, waiting for the device's queued
/// work before each clock reading (GPU kernels run asynchronously), and the peak RSS.
fn time_it(
    device: &Device,
    repeats: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Option<u64>)> {
    f()?;
    device.synchronize()?;
    reset_peak();
    let mut ts = Vec::new();
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok((median(ts), peak_rss()))
}

/// GFLOP/s of a square f32 matmul of size n (the GEMM ceiling of this build).
pub fn gemm_gflops(n: usize, repeats: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let (t, _) = time_it(&Device::Cpu, repeats, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / t / 1e9)
}

/// One forward+backward of last-position cross-entropy with the current trainable set.
fn fwd_bwd(lm: &LanguageModel, batch: &Batch, targets: &Tensor) -> Result<()> {
    let out = lm.model.run(
        batch,
        &RunOpts {
            logits: LogitsAt::Last,
            grad: true,
            ..Default::default()
        },
    )?;
    let (_, g) = ops::cross_entropy_with_grad(out.logits.as_ref().expect("logits"), targets)?;
    let grads = lm.model.backward(&out, Some(&g), None)?;
    anyhow::ensure!(
        grads.params.len() == lm.model.trainable().len(),
        "backward missed a trainable parameter"
    );
    Ok(())
}

/// Run the benchmark and write `out`.
pub fn run(spec: &str, out: &Path, repeats: usize, pytorch: bool) -> Result<()> {
    let threads = crate::util::threads();
    let t0 = Instant::now();
    let device = crate::cli::device()?;
    let mut lm = LanguageModel::load(spec, &device)?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_model = current_rss();
    eprintln!("loaded {spec} in {load_s:.1}s; {threads} thread(s)");
    let (b, t) = (8, 32);
    let vocab = lm.model.config.vocab_size as u32;
    let batch = Batch::new(
        // Ids wrap around vocabularies smaller than the formula's range (random:tiny).
        &bench_ids(b, t)
            .into_iter()
            .map(|r| r.into_iter().map(|x| x % vocab).collect())
            .collect::<Vec<_>>(),
        lm.pad_id(),
        PadSide::Left,
        lm.model.device(),
    )?;
    let targets = Tensor::from_vec(vec![1000u32 % vocab; b], b, lm.model.device())?;
    let mut rows = Vec::new();
    let mut record = |name: &str, secs: f64, peak: Option<u64>, extra: Value| {
        let torch = PYTORCH_1T
            .iter()
            .find(|(n, _)| *n == name && spec == SPEC_MODEL)
            .and_then(|(_, v)| *v);
        eprintln!(
            "{name:<22} {secs:>7.3} s   peak RSS {:>6.0} MiB{}",
            peak.map_or(f64::NAN, |p| p as f64 / 1048576.0),
            torch.map_or(String::new(), |p| format!(
                "   PyTorch {p:.2} s, speed-up ×{:.2}",
                p / secs
            ))
        );
        rows.push(json!({
            "name": name, "seconds": secs, "peak_rss_bytes": peak,
            "pytorch_spec_seconds": torch, "speedup_vs_pytorch_spec": torch.map(|p| p / secs),
            "details": extra,
        }));
    };

    for (name, at) in [
        ("forward_last_logits", LogitsAt::Last),
        ("forward_full_logits", LogitsAt::All),
    ] {
        let (s, peak) = time_it(&device, repeats, || {
            lm.model.run(
                &batch,
                &RunOpts {
                    logits: at.clone(),
                    ..Default::default()
                },
            )?;
            Ok(())
        })?;
        record(name, s, peak, json!({"batch": b, "tokens": t}));
    }
    let n = lm.model.config.num_layers;
    let mid: Vec<usize> = vec![n / 2 - 1, n / 2, n / 2 + 1];
    let names = lm.model.mlp_param_names(&mid);
    lm.model.set_trainable(&names)?;
    let trainable_params: usize = names
        .iter()
        .map(|x| lm.model.weights().elem_count(x))
        .sum::<anyhow::Result<usize>>()?;
    let (s, peak) = time_it(&device, repeats, || fwd_bwd(&lm, &batch, &targets))?;
    record(
        "fwd_bwd_3_mlps",
        s,
        peak,
        json!({"layers": mid, "trainable_params": trainable_params, "loss": "CE of last-position logits"}),
    );
    // Full fine-tuning widens every weight to f32 and keeps a gradient of each: timed up to
    // 2 B parameters (a 7–8 B model would need 64 GB for that alone).
    if lm.model.weights().num_params() <= 2_000_000_000 {
        let all: Vec<String> = lm.model.weights().names();
        lm.model.set_trainable(&all)?;
        let (s, peak) = time_it(&device, repeats, || fwd_bwd(&lm, &batch, &targets))?;
        record(
            "fwd_bwd_all_weights",
            s,
            peak,
            json!({"trainable_params": lm.model.weights().num_params(), "loss": "CE of last-position logits"}),
        );
        lm.model.set_trainable::<&str>(&[])?;
    }

    // Causal-tracing sweep (SPEC §6): the reference prompt, 10 noise samples, the residual
    // restored at every (layer, token), P(" Paris") from the full softmax.
    let (ids, span) = lm.tokenizer.encode_with_span(
        "The Eiffel Tower is located in the city of",
        "Eiffel Tower",
        true,
    )?;
    let answer = lm.tokenizer.encode(" Paris", false)?[0];
    let opts = crate::locate::trace::TraceOpts::default();
    let t = Instant::now();
    let grid = crate::locate::trace::trace(&lm.model, &ids, span.clone(), answer, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    let c = &lm.model.config;
    let layer_params =
        (c.param_count() - c.vocab_size * c.hidden_size - c.hidden_size) / c.num_layers;
    let (l_n, t_n, n) = (c.num_layers, ids.len(), opts.samples);
    let token_layers: usize = (0..l_n - 1)
        .map(|l| {
            (span.start..t_n)
                .map(|t| (t_n - t) * (l_n - 1 - l) * n)
                .sum::<usize>()
        })
        .sum();
    let head_rows = (l_n - 1) * (t_n - span.start) * n;
    let flops = 2.0 * (token_layers * layer_params) as f64
        + 2.0 * (head_rows * c.vocab_size * c.hidden_size) as f64;
    record(
        "trace_sweep",
        secs,
        peak_rss(),
        json!({"tokens": t_n, "samples": n, "p_clean": grid.p_clean, "p_corrupt": grid.p_corrupt,
               "useful_gflop": flops / 1e9, "gflops_achieved": flops / secs / 1e9,
               "note": "useful FLOPs only: restored suffixes through the later blocks plus one LM-head row per restoration"}),
    );
    for (name, secs, extra) in unlearning_steps(&mut lm, repeats)? {
        record(&name, secs, peak_rss(), extra);
    }
    let gflops = gemm_gflops(1024, repeats)?;
    eprintln!("gemm 1024³            {gflops:>7.1} GFLOP/s");
    // Our model is dropped first: PyTorch loads its own copy of the weights, and both at once
    // do not fit beside a 1.5B model's training buffers in 24 GB.
    let model_path = lm.origin.path.clone();
    let compute = crate::model::dtype_name(lm.model.compute_dtype());
    drop(lm);
    let pytorch_run = if pytorch {
        run_pytorch(&model_path, repeats)
    } else {
        Value::Null
    };
    // Ratios against PyTorch measured in this run, on this machine.
    for r in rows.iter_mut() {
        let name = r["name"].as_str().unwrap_or("").to_string();
        if let Some(p) = pytorch_run["seconds"][&name].as_f64() {
            let ours = r["seconds"].as_f64().unwrap_or(f64::NAN);
            r["pytorch_same_run_seconds"] = json!(p);
            r["speedup_vs_pytorch_same_run"] = json!(p / ours);
            eprintln!(
                "{name:<22} ours {ours:.3} s, PyTorch (same run) {p:.3} s: ×{:.2}",
                p / ours
            );
        }
    }
    let report = json!({
        "tool": "unlearn bench",
        "version": env!("CARGO_PKG_VERSION"),
        "model": spec,
        "model_path": model_path,
        "threads": threads,
        "device": format!("{:?}", device.location()),
        "compute_dtype": compute,
        "weights_dtype": crate::model::dtype_name(crate::model::weights_dtype()),
        "weights_as_gguf_blocks": crate::model::keeps_blocks(),
        "load_seconds": load_s,
        "rss_after_load_bytes": rss_model,
        "gemm_1024_gflops": gflops,
        "pytorch_reference": "SPEC.md §6: PyTorch 2.15 + transformers, 1 thread, Gemma 3 270M f32",
        "results": rows,
        "pytorch_same_run": pytorch_run,
    });
    crate::util::write_json(out, &report)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Run bench/pytorch_bench.py on the same GGUF when python3 can import torch.
fn run_pytorch(model_path: &Path, repeats: usize) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pytorch_bench.py");
    let res = std::process::Command::new("python3")
        .arg(&script)
        .arg("--gguf")
        .arg(model_path)
        .arg("--repeats")
        .arg(repeats.to_string())
        .env("OMP_NUM_THREADS", crate::util::threads().to_string())
        .output()
        .with_context(|| format!("running {}", script.display()));
    match res {
        Ok(o) if o.status.success() => {
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| json!({"error": e.to_string()}))
        }
        Ok(o) => {
            // The last stderr line that is not a progress bar, and how the process ended (a
            // kill by signal 9 is usually the kernel's out-of-memory killer).
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            let last = err
                .split(['\r', '\n'])
                .rfind(|l| !l.trim().is_empty() && !l.contains("it/s]") && !l.contains("s/it]"))
                .unwrap_or("no message")
                .to_string();
            json!({"skipped": format!("{} ({last})", o.status)})
        }
        Err(e) => json!({"skipped": format!("{e:#}")}),
    }
}

/// One step of KUDA and of localized fine-tuning on Sports Facts (16 forget facts, 16 retain
/// facts, 4 WikiText chunks of 64 tokens; MLPs 2–4 updated), each beside the naive step on the
/// same sequences: a full forward from the embeddings with logits everywhere and a backward of
/// the next-token loss, same trainable weights.
fn unlearning_steps(lm: &mut LanguageModel, repeats: usize) -> Result<Vec<(String, f64, Value)>> {
    use crate::forget::config::{ForgetConfig, Method};
    let device = lm.model.device().clone();
    use crate::forget::seqs::{text_chunks, Seq, SeqSet};
    use crate::forget::trainer::{step_grads, Plan};
    let facts = crate::data::load_task("sports", crate::data::dedup::Policy::Refuse)?;
    let fact_seqs = |r: std::ops::Range<usize>| -> Result<Vec<Seq>> {
        facts[r]
            .iter()
            .map(|f| Seq::fact(lm, f, &f.answer))
            .collect()
    };
    let forget = fact_seqs(0..16)?;
    let retain = fact_seqs(16..32)?;
    let (wiki, _) = crate::data::wikitext_halves()?;
    let text = text_chunks(lm, &wiki, 64, 4)?;
    // Layers 2–4 (the SPEC's benchmark), or the last three of a smaller model.
    let first = 2.min(lm.model.config.num_layers.saturating_sub(3));
    let params = lm.model.mlp_param_names(&[first, first + 1, first + 2]);
    let mut out = Vec::new();
    for m in [Method::Kuda, Method::LocalizedFt] {
        let cfg = ForgetConfig::for_method(m);
        let mut plan = Plan {
            terms: crate::forget::methods::terms(m, &cfg, false, None)?,
            forget: SeqSet::new("forget", forget.clone()),
            retain: SeqSet::new("retain", retain.clone()),
            text: SeqSet::new("text", text.clone()),
            params: params.clone(),
            rep_layer: crate::forget::methods::rep_layer(m, &cfg, first + 2)?,
            projectors: Default::default(),
            project_at: crate::forget::trainer::ProjectAt::Gradient,
            pad: lm.pad_id(),
            text_rows: cfg.text_ce_rows,
            ppl_probe: None,
        };
        plan.precompute(&lm.model, 16)?;
        lm.model.set_trainable(&params)?;
        let (s, _) = time_it(&device, repeats, || {
            step_grads(&lm.model, &plan, &cfg, 0, None)?;
            Ok(())
        })?;
        let (naive, _) = time_it(&device, repeats, || {
            for set in [&forget, &retain, &text] {
                naive_step(lm, set)?;
            }
            Ok(())
        })?;
        let name = format!("{}_step", m.name().replace('-', "_"));
        out.push((
            name,
            s,
            json!({"facts": 16, "retain_facts": 16, "text_chunks": 4, "text_tokens": 64, "layers": [2, 3, 4],
                   "naive_full_fwd_bwd_seconds": naive, "speedup_vs_naive": naive / s,
                   "terms": plan.terms.iter().map(|t| t.name.clone()).collect::<Vec<_>>()}),
        ));
        eprintln!(
            "  naive full forward+backward of the same sequences: {naive:.3} s (×{:.1})",
            naive / s
        );
    }
    lm.model.set_trainable::<&str>(&[])?;
    Ok(out)
}

/// Full forward from the embeddings, logits at every position, next-token loss, backward.
fn naive_step(lm: &LanguageModel, seqs: &[crate::forget::seqs::Seq]) -> Result<()> {
    let ids: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
    let batch = Batch::new(&ids, lm.pad_id(), PadSide::Right, lm.model.device())?;
    let out = lm.model.run(
        &batch,
        &RunOpts {
            logits: LogitsAt::All,
            grad: true,
            ..Default::default()
        },
    )?;
    let logits = out.logits.as_ref().expect("logits");
    let (b, t, v) = logits.dims3()?;
    let mut targets = vec![0u32; b * t];
    for (k, s) in ids.iter().enumerate() {
        for j in 0..s.len().saturating_sub(1) {
            targets[k * t + j] = s[j + 1];
        }
    }
    let tt = Tensor::from_vec(targets, b * t, lm.model.device())?;
    let (_, g) = ops::cross_entropy_with_grad(&logits.reshape((b * t, v))?, &tt)?;
    lm.model
        .backward(&out, Some(&g.reshape((b, t, v))?), None)?;
    Ok(())
}
