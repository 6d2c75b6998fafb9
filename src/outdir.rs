//! Output directories, checked before any work. An `--out` that is, contains or lies inside an
//! input model is refused: writing there could replace the model's own files (the input model
//! is never modified), and a re-run that clears a stale stage directory could delete them. An
//! `--out` that cannot be written (an existing file, a directory without write permission) is
//! refused too, before the first model call rather than after minutes of work.

use crate::model::source::{self, Format};
use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};

/// `p` made absolute and free of `.`/`..`, with symbolic links resolved as far as it exists (the
/// part that does not exist yet is appended as written).
pub fn normalize(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(p)
    };
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    // Resolve links on the longest existing prefix.
    let mut existing = clean.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    Ok(out)
}

/// The files and directories a `--model` argument reads: the GGUF file or the model directory,
/// and for an unlearn output its base model too (recursively).
pub fn model_inputs(spec: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut spec = spec.to_string();
    for _ in 0..16 {
        let o = source::resolve(&spec)?;
        out.push(normalize(&o.path)?);
        if o.format != Format::Delta {
            return Ok(out);
        }
        let m = o.path.join("manifest.json");
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&m).with_context(|| format!("reading {}", m.display()))?,
        )
        .with_context(|| format!("{}: not valid JSON", m.display()))?;
        spec = v["base_model"]
            .as_str()
            .with_context(|| format!("{}: no `base_model`", m.display()))?
            .to_string();
    }
    bail!("--model {spec}: unlearn outputs nest more than 16 deep (a loop of base models?)")
}

/// Refuse an output directory that is, contains or lies inside one of `inputs` (`(flag, path)`
/// pairs such as `("--model", …)`).
pub fn check_overlap(out: &Path, inputs: &[(&str, PathBuf)]) -> Result<()> {
    let o = normalize(out)?;
    for (flag, input) in inputs {
        let i = normalize(input)?;
        let how = if o == i {
            "is"
        } else if o.starts_with(&i) {
            "lies inside"
        } else if i.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        bail!(
            "--out {} {how} the input model {} ({flag}): writing there could overwrite or delete \
             the model, which is never modified; choose another --out",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

/// The `(flag, spec)` pairs of a command that reads `--model` and maybe `--unlearned`.
pub fn with_unlearned(model: &str, unlearned: &Option<PathBuf>) -> Vec<(&'static str, String)> {
    let mut v = vec![("--model", model.to_string())];
    if let Some(u) = unlearned {
        v.push(("--unlearned", u.display().to_string()));
    }
    v
}

/// Check an output directory before any work: not overlapping the models named by `models`
/// (`(flag, spec)` pairs), creatable, and writable (a probe file is created and removed).
pub fn prepare(out: &Path, models: &[(&str, String)]) -> Result<()> {
    let mut inputs = Vec::new();
    for (flag, spec) in models {
        for p in model_inputs(spec)? {
            inputs.push((*flag, p));
        }
    }
    check_overlap(out, &inputs)?;
    writable(out)
}

/// Create `out` if needed and prove it can be written.
pub fn writable(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {}: a file is in the way (the output is a directory)",
            out.display()
        );
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create the directory", out.display()))?;
    crate::util::clean_stale_temps(out);
    tempfile::Builder::new()
        .prefix(".write-probe")
        .tempfile_in(out)
        .with_context(|| format!("--out {}: cannot write in this directory", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_that_is_contains_or_lies_in_the_input_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        let inputs = [("--model", model.clone())];
        for (out, how) in [
            (model.clone(), " is the input model"),
            (model.join("sub"), " lies inside the input model"),
            (model.join("sub/../."), " is the input model"),
            (d.path().to_path_buf(), " contains the input model"),
        ] {
            let e = check_overlap(&out, &inputs).unwrap_err().to_string();
            assert!(e.contains(how) && e.contains("--model"), "{out:?}: {e}");
        }
        check_overlap(&d.path().join("model-out"), &inputs).unwrap();
        check_overlap(&d.path().join("mod"), &inputs).unwrap();
        let e = prepare(&model, &[("--model", model.display().to_string())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the input model"), "{e}");
    }

    #[test]
    fn a_link_to_the_input_is_the_input() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        let e = check_overlap(&link.join("x"), &[("--model", model)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lies inside"), "{e}");
    }

    #[test]
    fn an_output_that_cannot_be_written_is_refused_first() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = writable(&file).unwrap_err().to_string();
        assert!(e.contains("a file is in the way"), "{e}");
        let e = writable(&file.join("sub")).unwrap_err().to_string();
        assert!(e.contains("cannot create"), "{e}");
        writable(&d.path().join("new/deep")).unwrap();
        let left: Vec<_> = std::fs::read_dir(d.path().join("new/deep"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "the probe file stays behind");
    }
}
