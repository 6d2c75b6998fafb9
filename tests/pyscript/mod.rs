//! Run one of the repository's Python scripts (`scripts/NAME`): [`run`] returns what it
//! printed and fails the test with its error output if it fails; [`output`] returns its
//! exit status and output as they are; [`write_json`] lays out the files a script reads.

use std::path::Path;
use std::process::{Command, Output};

pub fn output(script: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3 runs")
}

pub fn run(script: &str, args: &[&str]) -> String {
    let out = output(script, args);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Write `v` to `p`, creating its folders.
#[allow(dead_code)] // not every test crate that includes this module writes its own input
pub fn write_json(p: &Path, v: serde_json::Value) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, v.to_string()).unwrap();
}
