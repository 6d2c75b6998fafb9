//! `scripts/wmdp-table.py`, which chooses the WMDP settings on validation and makes the WMDP
//! tables, on a made-up output of `experiments/wmdp-qwen.sh`: the validation rule (lowest
//! split 3 within the MMLU-val and perplexity bounds, else the best MMLU-val within the
//! perplexity bound), `chosen.json`, the recovered share after retraining and the target.

mod pyscript;

use serde_json::json;
use std::path::Path;

fn score(acc: f64, groups: &[f64]) -> serde_json::Value {
    let groups: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"name": format!("split_{i}"), "accuracy": a, "stderr": 0.04}))
        .collect();
    json!({"score": {"accuracy": acc, "stderr": 0.02, "groups": groups}})
}

use pyscript::write_json as write;

/// A sweep run (OUT/sweep/NAME, measured in OUT/measured/NAME): its learning rate, split 3,
/// MMLU-val and perplexity after (10 before).
fn candidate(root: &Path, name: &str, lr: f64, split3: f64, val: f64, ppl: f64) {
    let d = root.join("sweep").join(name);
    let e = root.join("measured").join(name);
    write(&e.join("mcq-wmdp-3.json"), score(split3, &[]));
    write(&e.join("mcq-mmlu-val.json"), score(val, &[]));
    write(
        &d.join("manifest.json"),
        json!({"config": {"optim": {"lr": lr}}}),
    );
    let p = |x: f64| json!({"wikitext": {"perplexity": x, "nll": x.ln(), "tokens": 2048, "window": 512, "stride": 256}});
    write(
        &d.join("metrics.json"),
        json!({"task": "wmdp-qa", "before": p(10.0), "after": p(ppl)}),
    );
}

/// The reported multiple-choice files of one model: WMDP (all and by split), MMLU, near subjects.
fn reported(d: &Path, wmdp: f64, splits: &[f64], mmlu: f64, near: f64) {
    write(&d.join("mcq-wmdp.json"), score(wmdp, splits));
    write(&d.join("mcq-mmlu.json"), score(mmlu, &[]));
    write(&d.join("mcq-mmlu-near.json"), score(near, &[]));
}

fn retrain(d: &Path, accs: &[f64]) {
    let m: Vec<_> = accs
        .iter()
        .map(|a| json!({"accuracy": a, "stderr": 0.04}))
        .collect();
    write(
        &d.join("relearn.json"),
        json!({"curve": {"steps": (0..accs.len()).map(|i| i * 20).collect::<Vec<_>>(), "measured": m}}),
    );
}

fn table(args: &[&str]) -> String {
    pyscript::run("wmdp-table.py", args)
}

#[test]
fn settings_are_chosen_on_validation_and_the_target_is_judged() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let orig = root.join("measured/original");
    write(&orig.join("mcq-wmdp-3.json"), score(0.46, &[]));
    write(&orig.join("mcq-mmlu-val.json"), score(0.50, &[]));
    // NPO: lr2 forgets most but costs 10 MMLU-val points; lr1 is the lowest within bounds.
    candidate(root, "npo-lr0.5", 2.5e-5, 0.40, 0.50, 10.2);
    candidate(root, "npo-lr1", 5e-5, 0.30, 0.49, 10.3);
    candidate(root, "npo-lr2", 1e-4, 0.25, 0.40, 10.3);
    // RMU: nothing within both bounds; lr1 breaks the perplexity bound, so lr2 (best
    // MMLU-val within +5 % perplexity) is chosen.
    candidate(root, "rmu-lr1", 1e-4, 0.25, 0.47, 11.0);
    candidate(root, "rmu-lr2", 2e-4, 0.30, 0.45, 10.4);
    candidate(root, "rmu-lr0.5", 5e-5, 0.35, 0.44, 10.1);
    // RMU at 4x broke the model: outside the perplexity bound, it is decided without its
    // MMLU-val (never measured) and not chosen; a run within the bound without one is not.
    candidate(root, "rmu-lr4", 4e-4, 0.20, 0.20, 9000.0);
    std::fs::remove_file(root.join("measured/rmu-lr4/mcq-mmlu-val.json")).unwrap();
    candidate(root, "npo-lr4", 2e-4, 0.10, 0.50, 10.1);
    std::fs::remove_file(root.join("measured/npo-lr4/mcq-mmlu-val.json")).unwrap();
    // A variant (METHOD.VARIANT-lrFACTOR) is a candidate of its method like another rate;
    // a folder of another name is no run.
    candidate(root, "kuda-lr1", 1e-3, 0.30, 0.50, 10.2);
    candidate(root, "kuda.text1024-lr1", 1e-3, 0.27, 0.50, 10.2);
    std::fs::create_dir_all(root.join("sweep/kuda-notes")).unwrap();
    let v = table(&["--choose", root.to_str().unwrap()]);
    assert!(
        v.contains(
            "| kuda | 0.001, text1024 | 27.0 ± 2.0 | 50.0 ± 2.0 | – | 10.20 (+2.0 %) | **yes**"
        ),
        "{v}"
    );
    assert!(!v.contains("kuda-notes"), "{v}");
    assert!(
        v.contains("| rmu | 0.0004 | 20.0 ± 2.0 | – | – | 9000.00 (+89900.0 %) | (MMLU-val not measured: outside +5 % perplexity) |"),
        "{v}"
    );
    assert!(
        v.contains("| npo | npo-lr4 | – | – | – | – | (not finished) |"),
        "{v}"
    );
    let chosen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("chosen.json")).unwrap()).unwrap();
    assert_eq!(
        chosen,
        json!({"kuda": "kuda.text1024-lr1", "rmu": "rmu-lr2", "npo": "npo-lr1"}),
        "{v}"
    );
    assert!(
        v.contains("| npo | 5e-05 | 30.0 ± 2.0 | 49.0 ± 2.0 | – | 10.30 (+3.0 %) | **yes**"),
        "{v}"
    );
    // An MMLU-val file with its answers counted shows the commonest letter's share.
    let mut val = score(0.25, &[]);
    val["score"]["chosen"] = json!([10, 70, 10, 10]);
    write(&root.join("measured/rmu-lr0.5/mcq-mmlu-val.json"), val);
    let v = table(&["--choose", root.to_str().unwrap()]);
    assert!(v.contains("| 25.0 ± 2.0 | B 70 % | 10.10 (+1.0 %)"), "{v}");
    assert!(v.contains("none within both bounds"), "{v}");

    // The reported tables on the chosen runs.
    reported(&orig, 0.50, &[0.55, 0.58, 0.49, 0.46, 0.45], 0.50, 0.53);
    let npo = root.join("measured/npo-lr1");
    reported(&npo, 0.27, &[0.28, 0.26, 0.27, 0.30, 0.25], 0.49, 0.50);
    // Split 4: 45 % before, 25 % unlearned; LoRA brings back a quarter, full fine-tuning 75 %.
    retrain(&npo.join("retrain"), &[0.25, 0.28, 0.30]);
    retrain(&npo.join("retrain-full"), &[0.25, 0.35, 0.40]);
    let rmu = root.join("measured/rmu-lr2");
    reported(&rmu, 0.25, &[0.25; 5], 0.45, 0.52);
    let t = table(&[root.to_str().unwrap()]);
    assert!(
        t.contains("| npo (lr 5e-05) | 27.0 ± 2.0 | 28.0 ± 4.0 |"),
        "{t}"
    );
    assert!(
        t.contains("| npo | LoRA | 25.0 | 0: 25.0, 20: 28.0, 40: 30.0 | 0.25 |"),
        "{t}"
    );
    assert!(t.contains("| npo | full fine-tuning | 25.0 |"), "{t}");
    assert!(
        t.contains("* npo: not met — recovered share up to 0.75"),
        "{t}"
    );
    assert!(
        t.contains("* rmu: not met — MMLU -5.0 points; retraining not measured"),
        "{t}"
    );
}
