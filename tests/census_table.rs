//! `scripts/census-table.py`, which makes the census tables of `docs/results.md`, on made-up
//! outputs of `scripts/census.sh`: a step that was not run shows as "–", the model is named by
//! whichever file exists, the near subjects are listed from either shot count, and WMDP's
//! splits, the chat columns and the known-fact counts land in their cells.

mod pyscript;

use pyscript::write_json as write;
use serde_json::json;
use std::path::Path;

fn mcq(d: &Path, step: &str, model: &str, acc: f64, groups: &[(&str, f64)]) {
    let groups: Vec<_> = groups
        .iter()
        .map(|(name, a)| json!({"name": name, "n": 100, "accuracy": a, "stderr": 0.05}))
        .collect();
    let score = json!({"accuracy": acc, "stderr": 0.02, "groups": groups, "chosen": [1, 2, 3, 4]});
    write(
        &d.join(format!("{step}.json")),
        json!({"model": model, "score": score}),
    );
}

fn known(d: &Path, step: &str, model: &str, top1: usize, candidates: usize, of: usize) {
    let rules = json!([
        {"rule": "top1", "known": top1, "of": of},
        {"rule": "candidates", "known": candidates, "of": of},
        {"rule": "p>=0.5", "known": top1 / 2, "of": of},
    ]);
    write(
        &d.join(format!("{step}.json")),
        json!({"model": model, "known": rules}),
    );
}

#[test]
fn every_step_lands_in_its_cell_and_a_missing_one_is_a_dash() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    mcq(&a, "mmlu-0shot", "model-a", 0.5, &[]);
    mcq(&a, "mmlu-0shot-chat", "model-a", 0.45, &[]);
    let splits: Vec<_> = (0..5)
        .map(|i| (format!("split_{i}"), 0.3 + 0.1 * i as f64))
        .collect();
    let splits: Vec<_> = splits.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    mcq(&a, "wmdp-0shot", "model-a", 0.5, &splits);
    mcq(
        &a,
        "mmlu-near-5shot",
        "model-a",
        0.6,
        &[("virology", 0.4), ("college_biology", 0.7)],
    );
    known(&a, "known-sports", "model-a", 300, 900, 1500);
    // Model b has only its CounterFact count: still named, every other cell a dash.
    known(&b, "known-counterfact", "model-b", 40, 70, 100);

    let out = pyscript::run(
        "census-table.py",
        &[a.to_str().unwrap(), b.to_str().unwrap()],
    );
    let lines: Vec<&str> = out.lines().collect();
    let has = |row: &str| assert!(lines.contains(&row), "no row {row:?} in\n{out}");
    has("| model-a | 50.0 ± 2.0 | – | 45.0 ± 2.0 | – | 60.0 ± 2.0 | 50.0 ± 2.0 | – |");
    has("| model-b | – | – | – | – | – | – | – |");
    has("| model-a | 30.0 ± 5.0 | 40.0 ± 5.0 | 50.0 ± 5.0 | 60.0 ± 5.0 | 70.0 ± 5.0 | A 1 B 2 C 3 D 4 |");
    has("| model-b | – | – | – | – | – | – |");
    // Near subjects in the tables' fixed order, from the 5-shot file alone.
    let bio = out.find("| model-a | college_biology (100) | – | 70.0 ± 5.0 |");
    let vir = out.find("| model-a | virology (100) | – | 40.0 ± 5.0 |");
    assert!(bio.is_some() && vir.is_some() && bio < vir, "{out}");
    has("| model-a | Sports athletes | 300 / 1500 (20.0 %) | 900 / 1500 (60.0 %) | 150 / 1500 (10.0 %) |");
    has("| model-a | CounterFact facts | – | – | – |");
    has("| model-b | CounterFact facts | 40 / 100 (40.0 %) | 70 / 100 (70.0 %) | 20 / 100 (20.0 %) |");
}
