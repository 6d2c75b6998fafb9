//! Build script: the code fingerprint, a hash of every source file that makes the binary
//! (`src/`, the built-in `presets/`, `build.rs`, `Cargo.toml`, `Cargo.lock`). Every cache key and experiment stage hash
//! includes it, so a changed binary recomputes what older code cached. It also builds the list
//! of built-in presets from `presets/*.toml` (`$OUT_DIR/presets.rs`, and their names for `--help`).

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
    built_in_presets(&root);
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=presets");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
}

/// `$OUT_DIR/presets.rs`: `BUILT_IN`, (name, TOML text) of every `presets/NAME.toml` in name
/// order; and `UNLEARN_PRESET_NAMES`, the names joined by ", ".
fn built_in_presets(root: &Path) {
    let mut found = Vec::new();
    files(&root.join("presets"), &mut found);
    let mut presets: Vec<(String, PathBuf)> = found
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p.clone())))
        .collect();
    presets.sort();
    let mut code = String::from("/// The presets built in: (name, TOML text), in name order.\n");
    code.push_str("const BUILT_IN: &[(&str, &str)] = &[\n");
    for (name, path) in &presets {
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("presets.rs");
    std::fs::write(&out, code).expect("writing presets.rs");
    let names: Vec<&str> = presets.iter().map(|(n, _)| n.as_str()).collect();
    println!("cargo:rustc-env=UNLEARN_PRESET_NAMES={}", names.join(", "));
}
