//! `experiments/wmdp-qwen.sh`, the WMDP protocol's driver, with a stand-in binary
//! (`tests/scriptcheck/fake_unlearn.py`) that logs its calls: two runs side by side on one
//! output folder, each with two steps at a time, make every step exactly once (the locks), in
//! order (the window before the runs that need it) and at most one forget run at a time (the
//! stand-in fails otherwise); a third run makes nothing (every step is a file); the tables are
//! made from what they wrote. Named runs (RUNS) make exactly those, with their variants'
//! settings.

mod pyscript;

use std::path::Path;
use std::process::{Command, Stdio};

fn driver(out: &Path, log: &Path) -> std::process::Child {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("bash")
        .arg(root.join("experiments/wmdp-qwen.sh"))
        .arg(out)
        .arg(root.join("tests/scriptcheck/fake_unlearn.py"))
        .env("FAKE_LOG", log)
        .env("JOBS", "2")
        .env("METHODS", "kuda ga")
        .env("LR_FACTORS", "0.5 1")
        .env("MODEL", "fake")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs")
}

fn finish(c: std::process::Child) {
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn side_by_side_runs_make_each_step_once_and_a_rerun_makes_none() {
    let t = tempfile::tempdir().unwrap();
    let (out, log) = (t.path().join("out"), t.path().join("calls.log"));
    let (a, b) = (driver(&out, &log), driver(&out, &log));
    finish(a);
    finish(b);
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), lines.len(), "a step was made twice:\n{calls}");
    let count = |what: &str| lines.iter().filter(|l| l.starts_with(what)).count();
    // 2 methods × 2 learning rates; the original's and each chosen run's retrainings (1 + 2
    // validation, 2 + 2 × 2 reported); the window once.
    assert_eq!(count("forget "), 4, "{calls}");
    assert_eq!(count("locate "), 1, "{calls}");
    assert_eq!(count("relearn "), 9, "{calls}");
    // Original: 2 validation + 3 reported sets; each sweep run 2; each chosen run 3.
    assert_eq!(count("mcq "), 2 + 3 + 4 * 2 + 2 * 3, "{calls}");
    let at = |what: &str| lines.iter().position(|l| l.contains(what)).unwrap();
    assert!(
        at("locate ") < at("--method kuda "),
        "the window before KUDA:\n{calls}"
    );
    assert!(out.join("chosen.json").exists());
    finish(driver(&out, &log));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        calls,
        "a rerun made something"
    );
    let table = pyscript::run("wmdp-table.py", &[out.to_str().unwrap()]);
    assert!(table.contains("| kuda (lr 0.0005) |"), "{table}");

    // On a fresh machine with only the kept JSON: nothing is made again until a reported
    // measurement is missing; then its chosen model is made again first, and only that.
    let kept = t.path().join("kept");
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/keep-results.sh"))
        .args([&out, &kept])
        .status()
        .unwrap();
    assert!(status.success());
    let log2 = t.path().join("calls2.log");
    finish(driver(&kept, &log2));
    assert!(
        !log2.exists(),
        "made again from kept JSON: {:?}",
        std::fs::read_to_string(&log2)
    );
    let chosen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kept.join("chosen.json")).unwrap()).unwrap();
    let ga = chosen["ga"].as_str().unwrap();
    std::fs::remove_file(
        kept.join("measured")
            .join(ga)
            .join("retrain-full/relearn.json"),
    )
    .unwrap();
    finish(driver(&kept, &log2));
    let again = std::fs::read_to_string(&log2).unwrap();
    let lines: Vec<&str> = again.lines().collect();
    assert_eq!(lines.len(), 2, "{again}");
    assert!(
        lines[0].starts_with("forget ") && lines[0].contains(&format!("sweep/{ga}")),
        "{again}"
    );
    assert!(
        lines[1].starts_with("relearn ") && lines[1].contains("--full"),
        "{again}"
    );
}

#[test]
fn named_runs_make_exactly_those_with_their_variants_settings() {
    let t = tempfile::tempdir().unwrap();
    let (out, log) = (t.path().join("out"), t.path().join("calls.log"));
    let run = |runs: &str| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Command::new("bash")
            .arg(root.join("experiments/wmdp-qwen.sh"))
            .arg(&out)
            .arg(root.join("tests/scriptcheck/fake_unlearn.py"))
            .env("FAKE_LOG", &log)
            .env("RUNS", runs)
            .env("PHASE", "validation")
            .env("MODEL", "fake")
            .output()
            .expect("bash runs")
    };
    // An unknown variant stops the run before anything is made, naming the run.
    let bad = run("ga-lr1 kuda.nosuch-lr1");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("kuda.nosuch-lr1: no variant kuda.nosuch"),
        "{err}"
    );
    assert!(
        !log.exists(),
        "made something: {:?}",
        std::fs::read_to_string(&log)
    );

    let ok = run("kuda.text1024-lr1 ga-lr0.5");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let forgets: Vec<&str> = calls.lines().filter(|l| l.starts_with("forget ")).collect();
    assert_eq!(forgets.len(), 2, "{calls}");
    let kuda = forgets
        .iter()
        .find(|l| l.contains("--method kuda "))
        .unwrap();
    assert!(
        kuda.contains("--set kuda.key_text_chunks=1024")
            && kuda.contains("sweep/kuda.text1024-lr1")
            && kuda.contains("--localization"),
        "{calls}"
    );
    let ga = forgets.iter().find(|l| l.contains("--method ga ")).unwrap();
    assert!(!ga.contains("key_text_chunks"), "{calls}");
    let chosen = std::fs::read_to_string(out.join("chosen.json")).unwrap();
    assert!(chosen.contains("\"kuda.text1024-lr1\""), "{chosen}");
}
