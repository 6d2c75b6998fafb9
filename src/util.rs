//! Small shared helpers: atomic file writes, hashing, thread setup.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// Write `bytes` to `path` atomically: a temporary file in the same directory, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all().ok();
    persist(tmp, path)
}

/// Write `value` as pretty-printed JSON to `path`, atomically (see [`write_atomic`]).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .with_context(|| format!("serializing {}", path.display()))?;
    write_atomic(path, text.as_bytes())
}

/// Read a JSON file: `None` when it cannot be read (absent), an error naming it when it is not
/// valid JSON.
pub fn read_json(p: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(p) {
        Ok(t) => {
            Ok(Some(serde_json::from_str(&t).with_context(|| {
                format!("{}: not valid JSON", p.display())
            })?))
        }
        Err(_) => Ok(None),
    }
}

/// The code fingerprint: a hash of the sources the binary was built from (see `build.rs`),
/// part of every cache key and experiment stage hash so that a changed binary recomputes what
/// older code cached. The environment variable `UNLEARN_CODE_FINGERPRINT` replaces it at run
/// time (a test, or a user who wants every cache entry recomputed).
pub fn code_fingerprint() -> String {
    std::env::var("UNLEARN_CODE_FINGERPRINT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| env!("UNLEARN_CODE_FINGERPRINT").to_string())
}

/// The tool and the code that wrote an output (`unlearn 0.1.0 (code 1a2b…)`).
pub fn tool_id() -> String {
    format!(
        "unlearn {} (code {})",
        env!("CARGO_PKG_VERSION"),
        code_fingerprint()
    )
}

/// Name prefix of the temporary files written beside their destination (see [`clean_stale_temps`]).
pub const TEMP_PREFIX: &str = ".unlearn-tmp-";

/// Age (seconds) after which an unlearn temporary file is taken for the leftover of a killed
/// process; a younger one may belong to a process still writing it.
pub const STALE_TEMP_SECS: u64 = 600;

/// A temporary file in the directory of `path` (created if needed), for an atomic rename.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
}

/// Give a finished temporary file the usual permissions (rw-r--r--) and rename it into place.
/// On failure the temporary file is removed at once (the error does not keep it alive until a
/// `process::exit` that runs no destructor).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).ok();
    }
    if let Err(e) = tmp.persist(path) {
        let why = e.error;
        e.file.close().ok();
        return Err(why).with_context(|| format!("renaming temporary file to {}", path.display()));
    }
    Ok(())
}

/// Remove the temporary files (see [`TEMP_PREFIX`]) that a killed process left in `dir`, once
/// they are [`STALE_TEMP_SECS`] old; returns how many were removed.
pub fn clean_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() >= STALE_TEMP_SECS);
        let ours = e.file_name().to_string_lossy().starts_with(TEMP_PREFIX);
        if ours && stale && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Write tensors as safetensors atomically (temporary file in the same directory, renamed).
pub fn save_safetensors_atomic(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    path: &Path,
) -> Result<()> {
    let tmp = temp_beside(path)?;
    candle_core::safetensors::save(tensors, tmp.path())
        .with_context(|| format!("writing {}", path.display()))?;
    persist(tmp, path)
}

/// Read a safetensors file onto `device` one tensor's bytes at a time: never the whole file in
/// memory beside its tensors (a 1.5B model's Adam moments are a gigabyte). Offsets and sizes are
/// checked, so a file cut short is refused rather than read as zeros.
pub fn load_safetensors(
    path: &Path,
    device: &candle_core::Device,
) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let file_len = f.metadata()?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > file_len.saturating_sub(8) {
        bail!("the header length {header_len} passes the end of the file ({file_len} bytes)");
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)?;
    let header: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).context("the header is not a JSON object")?;
    let data_start = 8 + header_len;
    let mut out = std::collections::HashMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let entry: TensorEntry = serde_json::from_value(info)
            .with_context(|| format!("tensor `{name}`: unreadable entry"))?;
        let dtype = match entry.dtype.as_str() {
            "F64" => candle_core::DType::F64,
            "F32" => candle_core::DType::F32,
            "BF16" => candle_core::DType::BF16,
            "F16" => candle_core::DType::F16,
            "I64" => candle_core::DType::I64,
            "U32" => candle_core::DType::U32,
            "U8" => candle_core::DType::U8,
            other => bail!("tensor `{name}`: unsupported dtype {other}"),
        };
        let [begin, end] = entry.data_offsets;
        let want = entry.shape.iter().product::<usize>() * dtype.size_in_bytes();
        if end < begin || (end - begin) as usize != want || data_start + end > file_len {
            bail!(
                "tensor `{name}`: bytes {begin}..{end} do not hold shape {:?} of {} or pass the end of the file",
                entry.shape,
                entry.dtype
            );
        }
        f.seek(SeekFrom::Start(data_start + begin))?;
        let mut bytes = vec![0u8; want];
        f.read_exact(&mut bytes)?;
        let t = candle_core::Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, device)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// One tensor of a safetensors header.
#[derive(serde::Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    feed_file(path, &mut |b| h.update(b))?;
    Ok(hex::encode(h.finalize()))
}

/// Pass a file's bytes to `f` in 1 MiB pieces.
pub fn feed_file(path: &Path, f: &mut dyn FnMut(&[u8])) -> Result<()> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}

/// Worker threads of the CPU kernels: `RAYON_NUM_THREADS` (which `--threads` sets) when set,
/// else one per core. Float sums split across threads add in an order that depends on this
/// count, so results (trained weights) do too: runs record it and resume only with the same.
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Keep freed memory in the process instead of returning it to the kernel after every large
/// tensor: fresh pages cost a page fault and zeroing each time (a third of a backward pass on
/// Gemma 3 270M went there). Called once by the binary; glibc only.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

pub use crate::progress::{progress, spinner};

/// A JSON value computed once and kept in the cache directory under `kind/`, keyed by the
/// sha256 of the code fingerprint and `key` (which must name everything else the value
/// depends on).
pub fn cached_json<T: serde::Serialize + serde::de::DeserializeOwned>(
    kind: &str,
    key: &[u8],
    compute: impl FnOnce() -> Result<T>,
) -> Result<T> {
    cached_json_if(kind, key, |_| true, compute)
}

/// [`cached_json`], but a cached value that `fresh` rejects (written by an older version that
/// measured less, say) is computed again and replaced.
pub fn cached_json_if<T: serde::Serialize + serde::de::DeserializeOwned>(
    kind: &str,
    key: &[u8],
    fresh: impl Fn(&T) -> bool,
    compute: impl FnOnce() -> Result<T>,
) -> Result<T> {
    cached_json_in(
        &crate::model::source::cache_dir()?,
        kind,
        key,
        fresh,
        compute,
    )
}

fn cached_json_in<T: serde::Serialize + serde::de::DeserializeOwned>(
    dir: &Path,
    kind: &str,
    key: &[u8],
    fresh: impl Fn(&T) -> bool,
    compute: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let mut hasher = Sha256::new();
    hasher.update(code_fingerprint().as_bytes());
    hasher.update(key);
    let h = hex::encode(hasher.finalize());
    clean_stale_temps(&dir.join(kind));
    let path = dir.join(kind).join(format!("{}.json", &h[..32]));
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(v) = serde_json::from_str::<T>(&text) {
            if fresh(&v) {
                return Ok(v);
            }
        }
    }
    let v = compute()?;
    write_atomic(&path, serde_json::to_string(&v)?.as_bytes())?;
    Ok(v)
}

/// A `kB` field of /proc/self/status, in bytes (Linux; None elsewhere).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory since the last [`reset_peak`], in bytes (Linux; None elsewhere).
pub fn peak_rss() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Resident memory now, in bytes (Linux; None elsewhere).
pub fn current_rss() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// Reset the peak-RSS counter (Linux `clear_refs` 5).
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_value_is_reused_unless_stale_or_unreadable() {
        let d = tempfile::tempdir().unwrap();
        let runs = std::cell::Cell::new(0);
        let get = |fresh: &dyn Fn(&Vec<u32>) -> bool, v: Vec<u32>| {
            cached_json_in(d.path(), "k", b"key", fresh, || {
                runs.set(runs.get() + 1);
                Ok(v)
            })
            .unwrap()
        };
        assert_eq!(get(&|_| true, vec![1]), [1]);
        assert_eq!(get(&|_| true, vec![2]), [1], "cached");
        assert_eq!(runs.get(), 1);
        // An older entry that lacks what is measured now is computed again and replaced.
        assert_eq!(get(&|v| v.len() == 2, vec![1, 2]), [1, 2]);
        assert_eq!(get(&|v| v.len() == 2, vec![9, 9]), [1, 2]);
        assert_eq!(runs.get(), 2);
        // A corrupt entry is computed again, not an error.
        let file = std::fs::read_dir(d.path().join("k"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&file, "{trunc").unwrap();
        assert_eq!(get(&|_| true, vec![3]), [3]);
        assert_eq!(runs.get(), 3);
    }

    #[test]
    fn json_is_written_whole_into_a_new_directory_and_replaces_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/metrics.json");
        write_json(&p, &serde_json::json!({"x": 1})).unwrap();
        write_json(&p, &serde_json::json!({"x": [2, 3]})).unwrap();
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back, serde_json::json!({"x": [2, 3]}));
        // Nothing but the file itself is left in the directory (no temporary files).
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["metrics.json"]);
        // A path whose parent is a file is an error that names it.
        let err = write_json(&p.join("x.json"), &1).unwrap_err();
        assert!(format!("{err:#}").contains("metrics.json"), "{err:#}");
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary_file_and_stale_ones_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("report.html");
        std::fs::create_dir(&dir).unwrap();
        // Renaming a file onto a directory fails: the error is kept alive, the file is not.
        let err = write_atomic(&dir, b"page").unwrap_err();
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, ["report.html"], "{err:#}");
        // What a killed writer left is removed once stale; a young one is not touched.
        let old = d.path().join(format!("{TEMP_PREFIX}old"));
        let young = d.path().join(format!("{TEMP_PREFIX}young"));
        std::fs::write(&old, "x").unwrap();
        std::fs::write(&young, "x").unwrap();
        let past =
            std::time::SystemTime::now() - std::time::Duration::from_secs(STALE_TEMP_SECS + 5);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        assert_eq!(clean_stale_temps(d.path()), 1);
        assert!(!old.exists() && young.exists() && dir.exists());
    }
}
