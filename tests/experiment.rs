//! `unlearn run experiment.toml` on the real Gemma 3 270M: an interrupted experiment resumes
//! (finished stages are not run again, the training continues from its checkpoint), and a
//! finished experiment re-runs nothing.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const EXPERIMENT: &str = r#"
name = "tiny"
forget = "first-4"

[[localization]]
name = "one-random-mlp"
method = "random"
top_k = 1

[[unlearn]]
name = "kuda"
method = "kuda"
localization = "one-random-mlp"
set = ["steps=3", "batch_size=4", "retain_facts=16", "kuda.key_text_chunks=8", "checkpoint_every=1"]

[eval]
suite = "none"

[relearn]
steps = 0
"#;

fn unlearn(file: &Path, out: &Path, stop_after: Option<usize>) -> std::process::Output {
    unlearn_with(file, out, stop_after, None)
}

/// `unlearn run`, stopped after a training step, or as if built from other code.
fn unlearn_with(
    file: &Path,
    out: &Path,
    stop_after: Option<usize>,
    code: Option<&str>,
) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unlearn"));
    c.arg("run").arg(file).arg("--out").arg(out);
    if let Some(s) = stop_after {
        c.env("UNLEARN_STOP_AFTER_STEP", s.to_string());
    }
    if let Some(code) = code {
        c.env("UNLEARN_CODE_FINGERPRINT", code);
    }
    c.output().unwrap()
}

fn outcomes(out: &Path) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("experiment.json")).unwrap())
            .unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[1].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_interrupted_experiment_resumes_and_a_finished_one_reruns_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tiny.toml");
    std::fs::write(&file, EXPERIMENT).unwrap();
    let out = tmp.path().join("out");

    // Killed after the first training step: the localization is finished, the training is not.
    let r = unlearn(&file, &out, Some(1));
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("stopped after step 1"), "{err}");
    assert!(out.join("locate/one-random-mlp/stage.json").exists());
    assert!(!out.join("unlearn/kuda/stage.json").exists());

    // Run again: the localization is skipped, the training resumes from step 1.
    let r = unlearn(&file, &out, None);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("resuming from the checkpoint after step 1"),
        "{err}"
    );
    assert_eq!(outcomes(&out), ["cached", "ran"]);
    let log = std::fs::read_to_string(out.join("unlearn/kuda/train.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "one log line per step: {log}");
    assert!(out.join("report.html").exists());
    let weights = out.join("unlearn/kuda/changed.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let mtime = std::fs::metadata(&weights).unwrap().modified().unwrap();

    // Run once more: nothing runs, nothing changes.
    let r = unlearn(&file, &out, None);
    assert!(r.status.success());
    assert_eq!(outcomes(&out), ["cached", "cached"]);
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        mtime
    );

    // A changed setting re-runs that stage only.
    std::fs::write(&file, EXPERIMENT.replace("steps=3", "steps=2")).unwrap();
    let r = unlearn(&file, &out, None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(outcomes(&out), ["cached", "ran"]);
    let log = std::fs::read_to_string(out.join("unlearn/kuda/train.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);

    // Other code (a changed binary): every stage runs again, nothing cached is trusted.
    let r = unlearn_with(&file, &out, None, Some("0123456789abcdef"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(outcomes(&out), ["ran", "ran"]);
    let manifest = std::fs::read_to_string(out.join("unlearn/kuda/manifest.json")).unwrap();
    assert!(manifest.contains("(code 0123456789abcdef)"), "{manifest}");
}
