//! Build script: the code fingerprint, a hash of every source file that makes the binary
//! (`src/`, the built-in `presets/`, `build.rs`, `Cargo.toml`, `Cargo.lock`). Every cache key and experiment stage hash
//! includes it, so a changed binary recomputes what older code cached.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut paths = Vec::new();
    files(&root.join("src"), &mut paths);
    files(&root.join("presets"), &mut paths);
    for f in ["build.rs", "Cargo.toml", "Cargo.lock"] {
        paths.push(root.join(f));
    }
    paths.sort();
    let mut h = Sha256::new();
    for p in &paths {
        let rel = p.strip_prefix(&root).unwrap_or(p);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(p).unwrap_or_default());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=UNLEARN_CODE_FINGERPRINT={}", &hex[..16]);
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=presets");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
}
