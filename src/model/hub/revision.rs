//! What the hub says a revision holds, and which of its files a model needs.

use super::*;

/// One file of a revision to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path in the repo (`rfilename`).
    pub name: String,
    pub size: u64,
    pub hash: BlobHash,
}

/// A revision as the hub's API describes it.
#[derive(Debug, Deserialize)]
pub struct Revision {
    /// The commit sha.
    #[serde(rename = "sha")]
    pub commit: String,
    siblings: Vec<Sibling>,
}

/// A file entry of the API's revision JSON.
#[derive(Debug, Deserialize)]
pub(super) struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

/// The LFS part of a file entry.
#[derive(Debug, Deserialize)]
pub(super) struct Lfs {
    sha256: String,
    size: u64,
}

impl Revision {
    /// Parse the API's JSON for `repo` and check the commit sha.
    pub fn parse(repo: &str, text: &str) -> Result<Revision> {
        let r: Revision = serde_json::from_str(text).with_context(|| {
            format!("hf:{repo}: the hub's answer is not a revision description (JSON with `sha` and `siblings`)")
        })?;
        if !is_hex(&r.commit, 40) {
            bail!(
                "hf:{repo}: the hub gave {:?} as the commit, not a 40-digit sha",
                r.commit
            );
        }
        Ok(r)
    }

    /// The paths of the revision's files.
    pub fn names(&self) -> Vec<&str> {
        self.siblings.iter().map(|s| s.rfilename.as_str()).collect()
    }

    /// The file `name` with its size and hash.
    pub fn file(&self, repo: &str, name: &str) -> Result<RemoteFile> {
        let s = self
            .siblings
            .iter()
            .find(|s| s.rfilename == name)
            .with_context(|| format!("hf:{repo}: the revision has no file {name}"))?;
        let (hash, size) = match (&s.lfs, &s.blob_id, s.size) {
            (Some(l), _, _) => (BlobHash::Sha256(l.sha256.to_ascii_lowercase()), l.size),
            (None, Some(id), Some(size)) => (BlobHash::GitSha1(id.to_ascii_lowercase()), size),
            _ => {
                bail!("hf:{repo}: the hub gave no size and hash (blobId or lfs.sha256) for {name}")
            }
        };
        let digits = if matches!(hash, BlobHash::Sha256(_)) {
            64
        } else {
            40
        };
        if !is_hex(hash.hex(), digits) {
            bail!(
                "hf:{repo}: the hub gave {:?} as the {} of {name}",
                hash.hex(),
                hash.kind()
            );
        }
        Ok(RemoteFile {
            name: name.to_string(),
            size,
            hash,
        })
    }
}

/// Whether `s` is `digits` hex digits.
pub(super) fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `name` is a safetensors file at the top of the repo.
pub(super) fn is_top_safetensors(name: &str) -> bool {
    !name.contains('/') && name.ends_with(".safetensors")
}

/// The files to fetch before the weights (config, tokenizer files, the shard index) out of the
/// revision's `names`; errors when config.json, tokenizer.json or safetensors weights are missing.
pub fn metadata_files(repo: &str, names: &[&str]) -> Result<Vec<String>> {
    let has = |f: &str| names.contains(&f);
    if !has("config.json") {
        bail!("hf:{repo}: the repo has no config.json; it is not a transformers model");
    }
    if !has("tokenizer.json") {
        bail!("hf:{repo}: the repo has no tokenizer.json; the model needs a tokenizer.json (the fast tokenizer's file) to be used by unlearn");
    }
    if !has(INDEX_FILE) && !names.iter().any(|n| is_top_safetensors(n)) {
        if names.iter().any(|n| n.ends_with(".bin")) {
            bail!("hf:{repo}: the repo has only PyTorch .bin weights; unlearn reads safetensors");
        }
        bail!("hf:{repo}: the repo has no *.safetensors weights");
    }
    Ok(METADATA_FILES
        .iter()
        .filter(|f| has(f))
        .map(|f| f.to_string())
        .collect())
}

/// The weight files to fetch: exactly the shards the index's weight map names (each must be in
/// the revision), else `model.safetensors`, else every top-level `*.safetensors` file; sorted.
pub fn weight_files(
    repo: &str,
    names: &[&str],
    index: Option<&BTreeMap<String, String>>,
) -> Result<Vec<String>> {
    let Some(map) = index else {
        // As the directory loader reads it: `model.safetensors` alone when there is one.
        if names.contains(&"model.safetensors") {
            return Ok(vec!["model.safetensors".to_string()]);
        }
        return Ok(names
            .iter()
            .filter(|n| is_top_safetensors(n))
            .map(|n| n.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect());
    };
    let shards: BTreeSet<&String> = map.values().collect();
    if shards.is_empty() {
        bail!("hf:{repo}: {INDEX_FILE} names no shard");
    }
    for s in &shards {
        if !names.contains(&s.as_str()) {
            bail!("hf:{repo}: {INDEX_FILE} names the shard {s}, which the revision does not have");
        }
    }
    Ok(shards.into_iter().cloned().collect())
}
