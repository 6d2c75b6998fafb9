//! What happens on bad input, through the command line: the input model is never modified,
//! contradictory facts are refused, and what can be checked fails before any long work.

mod files;
use files::walk;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn unlearn(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(args)
        .output()
        .expect("running unlearn");
    (out, t0.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = walk(dir)
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

/// A Hugging Face directory as far as `--model` is concerned (it is refused before loading).
fn model_dir(root: &Path) -> std::path::PathBuf {
    let m = root.join("model");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
    std::fs::write(m.join("model.safetensors"), vec![7u8; 4096]).unwrap();
    m
}

#[test]
fn an_output_onto_the_input_model_is_refused_and_the_model_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let m = model_dir(d.path());
    let before = snapshot(&m);
    let ms = m.to_str().unwrap();
    let sub = m.join("run");
    for (out, how) in [
        (ms.to_string(), "is the input model"),
        (sub.display().to_string(), "lies inside the input model"),
        (d.path().display().to_string(), "contains the input model"),
    ] {
        let (o, took) = unlearn(&[
            "forget", "--model", ms, "--layers", "2-4", "--full", "--out", &out,
        ]);
        let e = stderr(&o);
        assert!(
            !o.status.success() && e.contains(how) && e.contains("--model"),
            "{e}"
        );
        assert!(
            took < Duration::from_secs(20),
            "refused only after {took:?}"
        );
    }
    for cmd in [
        vec!["export", "--model", ms, "--out", ms],
        vec!["eval", "--model", ms, "--out", ms],
        vec![
            "learn",
            "--model",
            ms,
            "--data",
            "data/wikitext2/wiki.test.raw",
            "--out",
            ms,
        ],
    ] {
        let (o, _) = unlearn(&cmd);
        assert!(
            stderr(&o).contains("is the input model"),
            "{cmd:?}: {}",
            stderr(&o)
        );
    }
    // An experiment whose model lies inside its output directory.
    let exp = d.path().join("e.toml");
    std::fs::write(
        &exp,
        format!("name = \"e\"\nmodel = \"{ms}\"\n[[unlearn]]\nname = \"ga\"\nmethod = \"ga\"\n"),
    )
    .unwrap();
    let (o, _) = unlearn(&[
        "run",
        exp.to_str().unwrap(),
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("contains the input model"),
        "{}",
        stderr(&o)
    );
    assert!(!sub.exists(), "nothing was created inside the model");
    assert_eq!(snapshot(&m), before, "the input model changed");
}

/// The fake model of [`model_dir`] cannot load: an error about anything else proves that the
/// check came before the model was loaded.
#[test]
fn duplicate_facts_are_refused_naming_both_lines_before_the_model_loads() {
    let d = tempfile::tempdir().unwrap();
    let m = model_dir(d.path());
    let facts = d.path().join("facts.jsonl");
    let a = "{\"prompt\": \"Fact: LeBron James plays the sport of\", \"subject\": \"LeBron James\", \"answer\": \"basketball\"}";
    let b = "{\"prompt\": \"Fact: Tom Brady plays the sport of\", \"subject\": \"Tom Brady\", \"answer\": \"football\"}";
    std::fs::write(&facts, format!("{a}\n{b}\n{a}\n")).unwrap();
    for cmd in ["forget", "locate", "eval", "relearn"] {
        let out = d.path().join(cmd);
        let mut args = vec![
            cmd,
            "--model",
            m.to_str().unwrap(),
            "--task",
            facts.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if cmd == "forget" {
            args.extend(["--layers", "2-4"]);
        }
        let (o, took) = unlearn(&args);
        let e = stderr(&o);
        assert!(
            !o.status.success()
                && e.contains("facts.jsonl: line 3 repeats")
                && e.contains("facts.jsonl: line 1")
                && e.contains("--dedup"),
            "{cmd}: {e}"
        );
        assert!(
            took < Duration::from_secs(20),
            "{cmd}: refused only after {took:?}"
        );
    }
}

#[test]
fn an_output_that_cannot_be_written_fails_first() {
    let d = tempfile::tempdir().unwrap();
    let m = model_dir(&d.path().join("m"));
    let file = d.path().join("taken");
    std::fs::write(&file, "x").unwrap();
    for cmd in ["eval", "locate", "relearn", "forget"] {
        let mut args = vec![
            cmd,
            "--model",
            m.to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ];
        if cmd == "forget" {
            args.extend(["--layers", "2-4"]);
        }
        let (o, took) = unlearn(&args);
        let e = stderr(&o);
        assert!(e.contains("a file is in the way"), "{cmd}: {e}");
        assert!(took < Duration::from_secs(20), "{cmd}: {took:?}");
    }
    let dir = d.path().join("runs");
    std::fs::create_dir(&dir).unwrap();
    let (o, _) = unlearn(&[
        "report",
        dir.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("a directory; the report is one file"),
        "{}",
        stderr(&o)
    );
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
    assert_eq!(left.len(), 3, "a temporary file was left: {left:?}");
}

/// A user's facts without candidate answers: the run reports top-1 over the vocabulary (which
/// can move) instead of "top-1 among the candidates", which would always be 100 %.
#[test]
fn facts_without_candidates_are_not_measured_against_themselves() {
    let d = tempfile::tempdir().unwrap();
    let facts = d.path().join("capitals.jsonl");
    let rows = [
        (
            "The Eiffel Tower is located in the city of",
            "Eiffel Tower",
            "Paris",
        ),
        (
            "The Colosseum is located in the city of",
            "Colosseum",
            "Rome",
        ),
        ("Big Ben is located in the city of", "Big Ben", "London"),
        (
            "The Brandenburg Gate is located in the city of",
            "Brandenburg Gate",
            "Berlin",
        ),
        (
            "The Statue of Liberty is located in the city of",
            "Statue of Liberty",
            "New York",
        ),
        ("The Kremlin is located in the city of", "Kremlin", "Moscow"),
    ];
    let text: String = rows
        .iter()
        .map(|(p, s, a)| {
            format!("{{\"prompt\": \"{p}\", \"subject\": \"{s}\", \"answer\": \"{a}\"}}\n")
        })
        .collect();
    std::fs::write(&facts, text).unwrap();
    // A forget target read among candidates cannot be asked for.
    let out = d.path().join("stop");
    let (o, _) = unlearn(&[
        "forget",
        "--task",
        facts.to_str().unwrap(),
        "--known",
        "p>=0",
        "--forget",
        "first-2",
        "--layers",
        "2-3",
        "--set",
        "stop_at_forget_acc=0.05",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("stop_at_forget_acc") && e.contains("candidate"),
        "{e}"
    );
    let out = d.path().join("run");
    let (o, _) = unlearn(&[
        "forget",
        "--task",
        facts.to_str().unwrap(),
        "--known",
        "p>=0",
        "--forget",
        "first-2",
        "--method",
        "ga",
        "--layers",
        "2-3",
        "--steps",
        "1",
        "--set",
        "retain_facts=2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("top-1 over the vocabulary") && !e.contains("among candidates"),
        "{e}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert!(
        m["metrics"]["before"]["forget_floor"].is_null(),
        "{}",
        m["metrics"]
    );
}

/// A preset that does not exist, one that disagrees with --method, one given with --config,
/// and `unlearn edit --method kuda` fail at once, saying why; a valid preset prints the
/// settings it stands for, with the user's --set on top.
#[test]
fn presets_are_checked_before_anything_loads() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["forget", "--preset", "nope", "--out", out],
            "no preset `nope`",
        ),
        (
            &[
                "forget",
                "--preset",
                "kuda-sports",
                "--method",
                "npo",
                "--out",
                out,
            ],
            "--preset kuda-sports is a kuda preset",
        ),
        (
            &[
                "forget",
                "--preset",
                "kuda-sports",
                "--config",
                "x.toml",
                "--out",
                out,
            ],
            "give one of them",
        ),
        (
            &["edit", "--method", "kuda", "--layers", "2-4", "--out", out],
            "KUDA has none",
        ),
    ];
    for (args, want) in cases {
        let (o, took) = unlearn(args);
        assert!(
            !o.status.success() && stderr(&o).contains(want),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(took < Duration::from_secs(10), "{args:?}: {took:?}");
    }
    assert!(!Path::new(out).exists());
    let (o, _) = unlearn(&[
        "forget",
        "--preset",
        "kuda-sports",
        "--set",
        "steps=7",
        "--print-config",
    ]);
    let toml = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(toml.contains("steps = 7"), "{toml}");
    let (o, _) = unlearn(&["presets", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "kuda-sports"));
}

#[test]
fn only_must_name_a_run_of_the_experiment_before_anything_loads() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/sweep-sports-validation.toml");
    let (o, took) = unlearn(&[
        "run",
        file.to_str().unwrap(),
        "--only",
        "npo,rmu9",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("sweep-sports-validation.toml")
            && err.contains("--only rmu9")
            && err.contains("rmu-lr-half"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!out.exists());
}

/// The full fine-tuning attack's options are checked before any model loads: `--layers`
/// without `--full`, and `--full` on the original model without the layers to fine-tune.
#[test]
fn the_full_attack_needs_its_weights_named_before_anything_loads() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let o = out.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--layers", "4-6"],
            "--layers chooses what a --full attack",
        ),
        (
            vec!["--full"],
            "--full on the original model: give --layers",
        ),
    ] {
        let mut all = vec![
            "relearn",
            "--model",
            "qwen2.5-coder-1.5b",
            "--task",
            "wmdp-qa:0",
            "--measure",
            "wmdp:4",
            "--out",
            o,
        ];
        all.extend(args);
        let (r, took) = unlearn(&all);
        let err = stderr(&r);
        assert!(!r.status.success() && err.contains(says), "{says}: {err}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
