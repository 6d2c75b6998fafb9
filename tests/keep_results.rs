//! `scripts/keep-results.sh`, which copies what an experiment's tables read out of its output
//! folder: JSON and JSONL files keep their paths; models, checkpoints and large files stay
//! behind; the destination is replaced as a whole; a missing source is refused.

mod files;
use files::walk;

use std::path::Path;
use std::process::Command;

fn keep(src: &Path, dst: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/keep-results.sh"))
        .arg(src)
        .arg(dst)
        .output()
        .expect("bash runs")
}

fn put(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn only_the_small_json_files_are_kept_with_their_paths() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("run"), t.path().join("kept"));
    put(&src.join("measured/original/mcq-wmdp.json"), b"{\"a\": 1}");
    put(&src.join("sweep/kuda-lr1/manifest.json"), b"{}");
    put(&src.join("sweep/kuda-lr1/train.jsonl"), b"{}\n{}\n");
    put(&src.join("sweep/kuda-lr1/changed.safetensors"), b"weights");
    put(&src.join("sweep/kuda-lr1/checkpoint/state.json"), b"{}");
    put(&src.join("sweep/kuda-lr1/big.json"), &vec![b' '; 5 << 20]);
    put(&dst.join("stale.json"), b"{}");
    let out = keep(&src, &dst);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut kept: Vec<String> = walk(&dst)
        .iter()
        .map(|p| p.strip_prefix(&dst).unwrap().display().to_string())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            "measured/original/mcq-wmdp.json",
            "sweep/kuda-lr1/manifest.json",
            "sweep/kuda-lr1/train.jsonl"
        ]
    );
    assert_eq!(
        std::fs::read(dst.join("measured/original/mcq-wmdp.json")).unwrap(),
        b"{\"a\": 1}"
    );
    let out = keep(&t.path().join("absent"), &dst);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent is not a folder"));
    assert!(
        dst.join("sweep/kuda-lr1/manifest.json").exists(),
        "a refused copy leaves DEST as it was"
    );
}
