//! `scripts/experiment-table.py`, which makes the tables of docs/results.md, on a made-up
//! experiment output: the mean over seeds, a bootstrap interval that holds the mean, "tie"
//! against the reference run when two runs agree and "lower" when one is far below, the
//! relearning column, and the forget target judged from the means.

mod pyscript;

use serde_json::json;
use std::path::Path;

/// An `eval/NAME/metrics.json` with the rows the table reads.
fn write_eval(root: &Path, name: &str, forget: f64, held_out: f64, ppl: f64) {
    write_eval_of(root, name, "kuda", forget, held_out, ppl);
}

/// The same, for a run of `method`.
fn write_eval_of(root: &Path, name: &str, method: &str, forget: f64, held_out: f64, ppl: f64) {
    let row = |metric: &str, n: usize, original: f64, unlearned: f64| {
        json!({"metric": metric, "n": n, "original": original, "unlearned": unlearned,
               "lower_is_better": false, "reference": false})
    };
    let m = json!({
        "task": "sports",
        "manifest": {"method": method, "param_count": 11_800_000},
        "rows": [
            row("forget.top1_candidates", 16, 1.0, forget),
            row("held_out.top1_candidates", 80, 1.0, held_out),
            row("utility.wikitext_perplexity", 2048, 14.0, ppl),
        ],
    });
    let d = root.join("eval").join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("metrics.json"), m.to_string()).unwrap();
}

fn write_relearn(root: &Path, name: &str, before: f64, after: f64) {
    let point = |v: f64| json!({"n": 8, "top1": v, "top1_candidates": v, "mean_p": v});
    let r = json!({"curve": {"unseen": [point(before), point(after)]}});
    let d = root.join("relearn").join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("relearn.json"), r.to_string()).unwrap();
}

fn table(args: &[&str]) -> String {
    pyscript::run("experiment-table.py", args)
}

/// The cells of the seed table's row for `run`.
fn seed_row(text: &str, run: &str) -> Vec<String> {
    let after = text.split("Mean over seeds").nth(1).expect("a seed table");
    let line = after
        .lines()
        .find(|l| l.starts_with(&format!("| {run} |")))
        .unwrap_or_else(|| panic!("no row {run} in\n{text}"));
    line.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

#[test]
fn seed_table_gives_means_intervals_ties_and_the_target() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    for s in 0..3 {
        // "keeps": forgets nothing; "same": the same numbers; "forgets": meets the target.
        write_eval(root, &format!("keeps-seed{s}"), 1.0, 1.0, 14.0);
        write_eval(root, &format!("same-seed{s}"), 1.0, 1.0, 14.0);
        let f = [0.0, 0.0625, 0.0][s];
        write_eval(root, &format!("forgets-seed{s}"), f, 0.975, 14.2);
        write_relearn(root, &format!("keeps-seed{s}"), 1.0, 1.0);
        write_relearn(root, &format!("same-seed{s}"), 1.0, 1.0);
        write_relearn(root, &format!("forgets-seed{s}"), 0.0, 0.25);
    }
    let root_s = root.to_str().unwrap();
    let text = table(&["--vs", "keeps", root_s]);
    let head = text
        .split("Mean over seeds")
        .nth(1)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("| run |"))
        .unwrap()
        .to_string();
    assert!(head.contains("relearn: unseen half after"), "{head}");
    assert!(head.ends_with("forget target |"), "{head}");

    let keeps = seed_row(&text, "keeps");
    assert_eq!(keeps[1], "0,1,2");
    assert_eq!(keeps[2], "100.0% [100.0%, 100.0%]", "{text}");
    assert_eq!(keeps.last().unwrap(), "not met (forget)");

    let same = seed_row(&text, "same");
    assert!(same[2].ends_with(" tie"), "{text}");

    let forgets = seed_row(&text, "forgets");
    // Mean of 0, 1/16 and 0; its interval holds the mean; far below "keeps".
    assert!(forgets[2].starts_with("2.1% ["), "{text}");
    assert!(forgets[2].ends_with(" lower"), "{text}");
    let bounds: Vec<f64> = forgets[2]
        .split(['[', ']'])
        .nth(1)
        .unwrap()
        .split(", ")
        .map(|x| x.trim_end_matches('%').parse().unwrap())
        .collect();
    assert!(bounds[0] <= 2.1 && 2.1 <= bounds[1], "{bounds:?}");
    // Held-out 97.5 % (−2.5 points) and perplexity +1.4 %: inside the other two bounds.
    assert_eq!(forgets.last().unwrap(), "met", "{text}");
    assert!(forgets[forgets.len() - 2].starts_with("25.0% ["), "{text}");

    // The same numbers read against another reference: "keeps" is now the one far above.
    let text = table(&["--vs", "forgets", root_s]);
    assert!(seed_row(&text, "keeps")[2].ends_with(" higher"), "{text}");

    // A reference that is not there is an error naming the runs.
    let out = pyscript::output("experiment-table.py", &["--vs", "nope", root_s]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--vs nope") && err.contains("keeps"), "{err}");
}

/// `--choose`: per method, the lowest forget accuracy among candidates that keep held-out
/// accuracy >= 95 % and perplexity within +5 %; failing that, the highest held-out accuracy
/// within the perplexity bound.
#[test]
fn choose_applies_the_preset_rule_per_method() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    for s in 0..3 {
        // npo: "deep" forgets most but loses held-out facts; "mild" qualifies; "hot" breaks
        // the perplexity bound with the best numbers otherwise.
        write_eval_of(root, &format!("npo-deep-seed{s}"), "npo", 0.0, 0.90, 14.0);
        write_eval_of(root, &format!("npo-mild-seed{s}"), "npo", 0.25, 0.97, 14.2);
        write_eval_of(root, &format!("npo-soft-seed{s}"), "npo", 0.50, 0.99, 14.0);
        write_eval_of(root, &format!("npo-hot-seed{s}"), "npo", 0.0, 1.0, 15.0);
        // ga: none keeps 95 %; the one with the higher held-out accuracy is taken.
        write_eval_of(root, &format!("ga-a-seed{s}"), "ga", 0.0, 0.50, 14.0);
        write_eval_of(root, &format!("ga-b-seed{s}"), "ga", 0.25, 0.80, 14.0);
    }
    let text = table(&["--choose", root.to_str().unwrap()]);
    let chosen: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("**chosen**"))
        .map(|l| l.split('|').nth(2).unwrap().trim())
        .collect();
    assert_eq!(chosen, ["ga-b", "npo-mild"], "{text}");
    let hot = text.lines().find(|l| l.contains("| npo-hot |")).unwrap();
    assert!(hot.contains("| no |"), "{hot}");
}

/// `--choose RUN --write-presets SWEEP SUFFIX DIR`: one preset per method with the picked
/// candidate's settings (from the sweep file), the traced window's layers, the rule's outcome
/// and every candidate's numbers; each file loads as a built-in preset does.
#[test]
fn write_presets_turns_the_choice_into_loadable_presets() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("run");
    for s in 0..3 {
        write_eval_of(&root, &format!("npo-soft-seed{s}"), "npo", 0.50, 0.99, 14.0);
        write_eval_of(&root, &format!("npo-mild-seed{s}"), "npo", 0.25, 0.97, 14.2);
        write_eval_of(&root, &format!("ga-a-seed{s}"), "ga", 0.0, 0.50, 14.0);
        write_eval_of(&root, &format!("ga-b-seed{s}"), "ga", 0.25, 0.80, 14.0);
    }
    let loc = root.join("locate/traced");
    std::fs::create_dir_all(&loc).unwrap();
    let chosen = json!({"chosen": [{"layer": 3, "type": "mlp"}, {"layer": 4, "type": "mlp"},
                                   {"layer": 5, "type": "mlp"}]});
    std::fs::write(loc.join("localization.json"), chosen.to_string()).unwrap();
    let sweep = d.path().join("sweep.toml");
    let rows = [
        ("npo-soft", "npo", "optim.lr=2.5e-05"),
        ("npo-mild", "npo", "optim.lr=5e-05"),
        ("ga-a", "ga", "optim.lr=4e-05"),
        ("ga-b", "ga", "optim.lr=1e-05"),
    ];
    let mut text = "name = \"s\"\ntask = \"counterfact\"\nforget = \"validation:first-16\"\nseeds = [0, 1, 2]\n".to_string();
    for (name, method, set) in rows {
        text += &format!("\n[[unlearn]]\nname = \"{name}\"\nmethod = \"{method}\"\nlocalization = \"traced\"\nset = [\"{set}\"]\n");
    }
    std::fs::write(&sweep, text).unwrap();
    let out = d.path().join("presets");
    std::fs::create_dir_all(&out).unwrap();
    table(&[
        "--choose",
        root.to_str().unwrap(),
        "--write-presets",
        sweep.to_str().unwrap(),
        "counterfact",
        out.to_str().unwrap(),
    ]);
    let npo = std::fs::read_to_string(out.join("npo-counterfact.toml")).unwrap();
    let p = unlearn::forget::presets::parse("npo-counterfact", &npo).unwrap();
    assert_eq!(p.method, "npo");
    assert_eq!(p.layers.as_deref(), Some("3-5"));
    assert_eq!(p.set, ["optim.lr=5e-05"]);
    assert!(p.chosen_on.contains("picked npo-mild"), "{}", p.chosen_on);
    assert!(p.chosen_on.contains("npo-soft 50.0 % ["), "{}", p.chosen_on);
    let ga = std::fs::read_to_string(out.join("ga-counterfact.toml")).unwrap();
    let p = unlearn::forget::presets::parse("ga-counterfact", &ga).unwrap();
    assert_eq!(p.set, ["optim.lr=1e-05"]);
    assert!(
        p.chosen_on.contains("highest held-out accuracy"),
        "{}",
        p.chosen_on
    );
    // What `--write-presets` says on stderr when it refuses.
    let refused = || {
        let o = pyscript::output(
            "experiment-table.py",
            &[
                "--choose",
                root.to_str().unwrap(),
                "--write-presets",
                sweep.to_str().unwrap(),
                "x",
                out.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    // A sweep with a seed missing cannot make presets: the error names the candidate.
    std::fs::remove_dir_all(root.join("eval/ga-b-seed2")).unwrap();
    let err = refused();
    assert!(err.contains("ga-b (2 of 3 seeds)"), "{err}");
    // A sweep on anything but validation facts cannot make presets.
    std::fs::write(
        &sweep,
        std::fs::read_to_string(&sweep)
            .unwrap()
            .replace("validation:", "test:"),
    )
    .unwrap();
    let err = refused();
    assert!(err.contains("validation facts only"), "{err}");
}
