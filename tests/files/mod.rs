//! Files on disk as tests see them: [`walk`] lists every file under a folder.

use std::path::{Path, PathBuf};

/// Every file under `dir`, at any depth (in no particular order).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
