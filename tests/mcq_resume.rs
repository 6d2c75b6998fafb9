//! `unlearn mcq` keeps each batch's letter logits as it is done: asked again, or resumed after
//! an interruption, it gives the score of an uninterrupted run to the bit.

use std::path::Path;
use std::process::Command;

fn mcq(cache: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args([
            "mcq",
            "--model",
            "random:tiny",
            "--json",
            "--batch-size",
            "4",
            "--limit",
            "64",
        ])
        .args(args)
        .env("UNLEARN_CACHE", cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_interrupted_mcq_resumes_to_the_same_score() {
    // Zero-shot WMDP (whole prompts) and 1-shot MMLU (a shared prefix per subject).
    for args in [
        &["--set", "wmdp:3"][..],
        &["--set", "mmlu-val", "--shots", "1"],
    ] {
        let cache = tempfile::tempdir().unwrap();
        let first = mcq(cache.path(), args);
        assert_eq!(first["batches_read_back"], 0);
        let kept: Vec<_> = std::fs::read_dir(cache.path().join("scores"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(kept.len(), 1, "one file for the model");
        let text = std::fs::read_to_string(&kept[0]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 4, "{args:?}: {} batches", lines.len());

        // Asked again: every batch read back, the same score.
        let again = mcq(cache.path(), args);
        assert_eq!(again["batches_read_back"], lines.len());
        assert_eq!(again["score"], first["score"], "{args:?}");

        // Interrupted after a third of the batches, in the middle of writing the next.
        let third = lines.len() / 3;
        let mut cut = lines[..third].join("\n");
        cut.push('\n');
        cut.push_str(&lines[third][..lines[third].len() / 2]);
        std::fs::write(&kept[0], cut).unwrap();
        let resumed = mcq(cache.path(), args);
        assert_eq!(resumed["batches_read_back"], third);
        assert_eq!(resumed["score"], first["score"], "{args:?}");
        // The resumed run kept the rest: now everything is read back.
        assert_eq!(mcq(cache.path(), args)["batches_read_back"], lines.len());
    }
}
