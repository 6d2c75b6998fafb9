//! Models from the Hugging Face hub (`--model hf:org/name[@revision]`): the config, tokenizer
//! and safetensors weights of a revision are downloaded into the hub's own cache layout (shared
//! with Python's `huggingface_hub`). A blob is renamed into place only after its hash matches,
//! an interrupted download resumes, and a cached snapshot serves offline.

use crate::model::hf_dir::{self, INDEX_FILE};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The hub that `HF_ENDPOINT` replaces.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files fetched besides the weights when the revision has them; the first two are required.
const METADATA_FILES: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    INDEX_FILE,
];

/// Requests made for one file before a network failure is given up on (each resumes).
const ATTEMPTS: usize = 3;

/// Files at least this large get a progress bar.
const PROGRESS_MIN_BYTES: u64 = 8 << 20;

/// A parsed `hf:org/name[@revision]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSpec {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit sha (default `main`).
    pub revision: String,
}

impl RepoSpec {
    /// Parse what follows `hf:`; an error names the whole spec.
    pub fn parse(id: &str) -> Result<RepoSpec> {
        let (repo, revision) = id.split_once('@').unwrap_or((id, "main"));
        if let Some(why) = repo_id_problem(repo).or_else(|| revision_problem(revision)) {
            bail!("--model hf:{id}: {why} (expected hf:org/name or hf:org/name@revision)");
        }
        Ok(RepoSpec {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// `org/name@revision`, for messages.
    fn label(&self) -> String {
        format!("{}@{}", self.repo, self.revision)
    }
}

/// Why `repo` is not a hub model id `org/name`, if it is not.
fn repo_id_problem(repo: &str) -> Option<&'static str> {
    let parts: Vec<&str> = repo.split('/').collect();
    let [org, name] = parts.as_slice() else {
        return Some("a model id is org/name, with exactly one `/`");
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    if !part_ok(org) || !part_ok(name) {
        return Some("org and name are letters, digits, `-`, `_` and `.`, not starting or ending with `-` or `.`");
    }
    if repo.contains("--") || repo.contains("..") {
        return Some("a model id has no `--` or `..`");
    }
    None
}

/// Why `revision` is not a usable branch, tag or commit name, if it is not.
fn revision_problem(revision: &str) -> Option<&'static str> {
    let bad_char = revision
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    let bad_part = revision
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..");
    (bad_char || bad_part).then_some(
        "the revision after `@` is a branch, tag or commit without spaces, `\\`, `.`/`..` parts or empty parts",
    )
}

/// Where and how the hub is reached: from the environment by [`HubEnv::from_env`], or built
/// by hand (tests).
#[derive(Clone, Debug)]
pub struct HubEnv {
    /// Base URL without a trailing `/` (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Access token sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// The hub cache directory (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache: PathBuf,
    /// No request at all: only the cache (`HF_HUB_OFFLINE`).
    pub offline: bool,
}

impl HubEnv {
    /// From the process environment: `HF_ENDPOINT`, `HF_TOKEN` (else the file `HF_TOKEN_PATH`,
    /// else `$HF_HOME/token`), `HF_HUB_CACHE`, `HF_HOME` (default `~/.cache/huggingface`) and
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<HubEnv> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`HubEnv::from_env`], with `var` looking up the variables (empty means unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<HubEnv> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let home = match var("HF_HOME") {
            Some(h) => PathBuf::from(h),
            None => match var("XDG_CACHE_HOME") {
                Some(x) => PathBuf::from(x),
                None => dirs::home_dir()
                    .context("no home directory: set HF_HOME")?
                    .join(".cache"),
            }
            .join("huggingface"),
        };
        let token = match var("HF_TOKEN") {
            Some(t) => Some(t.trim().to_string()),
            None => read_token_file(
                &var("HF_TOKEN_PATH").map_or_else(|| home.join("token"), PathBuf::from),
            )?,
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "on" | "yes" | "true"
            )
        });
        Ok(HubEnv {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token,
            cache: var("HF_HUB_CACHE").map_or_else(|| home.join("hub"), PathBuf::from),
            offline,
        })
    }
}

/// The token stored in `path`, None when there is no such file or it is empty.
fn read_token_file(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the hub token file {}", path.display())),
    }
}

/// One repo's place in the hub cache: `models--org--name/{blobs,snapshots,refs}`.
#[derive(Clone, Debug)]
pub struct RepoCache {
    /// `<cache>/models--org--name`.
    pub root: PathBuf,
    /// The lock that one download of the repo at a time holds.
    pub lock_path: PathBuf,
}

impl RepoCache {
    /// The place of `repo` (`org/name`) in the cache directory `cache`.
    pub fn new(cache: &Path, repo: &str) -> RepoCache {
        let folder = format!("models--{}", repo.replace('/', "--"));
        RepoCache {
            root: cache.join(&folder),
            lock_path: cache.join(".locks").join(&folder).join("unlearn.lock"),
        }
    }

    /// A verified file, named by its hash.
    pub fn blob(&self, hash: &str) -> PathBuf {
        self.root.join("blobs").join(hash)
    }

    /// A blob being downloaded.
    pub fn incomplete(&self, hash: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{hash}.incomplete"))
    }

    /// The files of a commit, as links to their blobs.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// The file holding the commit sha of a branch or tag.
    pub fn ref_file(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }

    /// Hold the repo's download lock (waiting for another process that holds it).
    fn lock(&self, repo: &str) -> Result<std::fs::File> {
        let dir = self.lock_path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the lock directory {}", dir.display()))?;
        let f = std::fs::File::create(&self.lock_path)
            .with_context(|| format!("creating the lock file {}", self.lock_path.display()))?;
        if f.try_lock().is_err() {
            eprintln!("hf:{repo}: waiting for another download of this model to finish");
            f.lock()
                .with_context(|| format!("locking {}", self.lock_path.display()))?;
        }
        Ok(f)
    }
}

/// What a file is checked against: LFS files by sha256, others by their git blob id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobHash {
    Sha256(String),
    /// sha1 of `blob {len}\0` followed by the bytes.
    GitSha1(String),
}

impl BlobHash {
    /// The hash in lowercase hex (also the blob's file name).
    pub fn hex(&self) -> &str {
        match self {
            BlobHash::Sha256(h) | BlobHash::GitSha1(h) => h,
        }
    }

    /// The hash of the file at `path` computed the same way.
    fn of_file(&self, path: &Path) -> Result<String> {
        match self {
            BlobHash::Sha256(_) => crate::util::sha256_file(path),
            BlobHash::GitSha1(_) => git_blob_sha1(path),
        }
    }

    /// `sha256` or `git blob sha1`, for messages.
    fn kind(&self) -> &'static str {
        match self {
            BlobHash::Sha256(_) => "sha256",
            BlobHash::GitSha1(_) => "git blob sha1",
        }
    }
}

/// The git blob id of a file: sha1 of `blob {len}\0` followed by its bytes.
pub fn git_blob_sha1(path: &Path) -> Result<String> {
    use sha1::Digest as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

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
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

/// The LFS part of a file entry.
#[derive(Debug, Deserialize)]
struct Lfs {
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
fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `name` is a safetensors file at the top of the repo.
fn is_top_safetensors(name: &str) -> bool {
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
/// the revision), else every top-level `*.safetensors` file; sorted.
pub fn weight_files(
    repo: &str,
    names: &[&str],
    index: Option<&BTreeMap<String, String>>,
) -> Result<Vec<String>> {
    let Some(map) = index else {
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

/// A model in the local hub cache.
#[derive(Clone, Debug)]
pub struct HubModel {
    /// `org/name`.
    pub repo: String,
    pub commit: String,
    /// `snapshots/<commit>`: a Hugging Face model directory.
    pub dir: PathBuf,
    /// sha256 over the weight files' sha256 values, in file-name order.
    pub fingerprint: String,
}

/// Resolve what follows `hf:`: download what the cache lacks, or, offline or when the hub
/// cannot be reached, use the cached snapshot of the revision.
pub fn fetch(id: &str, env: &HubEnv) -> Result<HubModel> {
    let spec = RepoSpec::parse(id)?;
    let cache = RepoCache::new(&env.cache, &spec.repo);
    if env.offline {
        return cached(&spec, &cache).context(
            "HF_HUB_OFFLINE is set, so only the cache is used: run once without it to download the model",
        );
    }
    let client = Client::new(env);
    let revision = match client.revision(&spec) {
        Ok(r) => r,
        Err(e) if is_network(&e) => {
            let m = cached(&spec, &cache)
                .map_err(|c| anyhow!("{e:#}; and no cached copy can stand in: {c:#}"))?;
            eprintln!(
                "warning: hf:{}: the hub cannot be reached; using the cached snapshot {}",
                spec.label(),
                m.commit
            );
            return Ok(m);
        }
        Err(e) => return Err(e),
    };
    let _lock = cache.lock(&spec.repo)?;
    download(&client, &spec, &cache, &revision)?;
    model_at(&spec, &cache, &revision.commit)
}

/// The cached snapshot of `spec` found without any request: the commit in `refs/<revision>`,
/// or the revision itself when it is a commit sha.
fn cached(spec: &RepoSpec, cache: &RepoCache) -> Result<HubModel> {
    let ref_file = cache.ref_file(&spec.revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(s) => s.trim().to_string(),
        Err(_) if is_hex(&spec.revision, 40) => spec.revision.to_ascii_lowercase(),
        Err(_) => bail!(
            "hf:{} is not in the hub cache {} (no {})",
            spec.label(),
            cache.root.display(),
            ref_file.display()
        ),
    };
    if !is_hex(&commit, 40) {
        bail!("{}: holds {commit:?}, not a commit sha", ref_file.display());
    }
    model_at(spec, cache, &commit)
}

/// The model in `snapshots/<commit>`, checked to be complete: config.json, tokenizer.json and
/// every weight file present.
fn model_at(spec: &RepoSpec, cache: &RepoCache, commit: &str) -> Result<HubModel> {
    let dir = cache.snapshot(commit);
    let incomplete = || {
        format!(
            "hf:{}: the cached snapshot {} is incomplete",
            spec.label(),
            dir.display()
        )
    };
    for f in ["config.json", "tokenizer.json"] {
        if !dir.join(f).is_file() {
            return Err(anyhow!("{f} is missing").context(incomplete()));
        }
    }
    let weights = hf_dir::safetensors_files(&dir).with_context(incomplete)?;
    Ok(HubModel {
        repo: spec.repo.clone(),
        commit: commit.to_string(),
        fingerprint: fingerprint(&weights)?,
        dir,
    })
}

/// sha256 over the sha256 values of `files` (one per line, in the given order); a file's value
/// is the name of the sha256-named blob its snapshot link points to, so no weight file is read,
/// except one that is no such link, which is hashed.
pub fn fingerprint(files: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    for f in files {
        let linked = std::fs::read_link(f).ok().and_then(|t| {
            let name = t.file_name()?.to_str()?.to_string();
            is_hex(&name, 64).then_some(name)
        });
        let value = match linked {
            Some(v) => v,
            None => crate::util::sha256_file(f)?,
        };
        h.update(value.as_bytes());
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// Fetch the metadata files, then the weight files they call for, into `snapshots/<commit>`,
/// and point `refs/<revision>` at the commit.
fn download(client: &Client, spec: &RepoSpec, cache: &RepoCache, rev: &Revision) -> Result<()> {
    let names = rev.names();
    for name in metadata_files(&spec.repo, &names)? {
        fetch_file(client, spec, cache, rev, &name)?;
    }
    let index = hf_dir::read_index(&cache.snapshot(&rev.commit))
        .with_context(|| format!("hf:{}: reading {INDEX_FILE}", spec.label()))?;
    for name in weight_files(&spec.repo, &names, index.as_ref())? {
        fetch_file(client, spec, cache, rev, &name)?;
    }
    if spec.revision != rev.commit {
        crate::util::write_atomic(&cache.ref_file(&spec.revision), rev.commit.as_bytes())?;
    }
    Ok(())
}

/// Make `snapshots/<commit>/<name>` point at its verified blob, downloading the blob when the
/// cache lacks it.
fn fetch_file(
    client: &Client,
    spec: &RepoSpec,
    cache: &RepoCache,
    rev: &Revision,
    name: &str,
) -> Result<()> {
    let file = rev.file(&spec.repo, name)?;
    if !cache.blob(file.hash.hex()).is_file() {
        let url = format!(
            "{}/{}/resolve/{}/{}",
            client.endpoint,
            spec.repo,
            rev.commit,
            encode_path(name)
        );
        download_blob(client, spec, cache, &url, &file)?;
    }
    link_blob(cache, &rev.commit, &file)
}

/// Download `file` from `url` into `blobs/<hash>.incomplete` (continuing what is there, and
/// resuming after a network failure), then check its hash and rename it to `blobs/<hash>`.
fn download_blob(
    client: &Client,
    spec: &RepoSpec,
    cache: &RepoCache,
    url: &str,
    file: &RemoteFile,
) -> Result<()> {
    let part = cache.incomplete(file.hash.hex());
    let blobs = part.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(blobs).with_context(|| format!("creating {}", blobs.display()))?;
    eprintln!(
        "hf:{}: downloading {} ({})",
        spec.repo,
        file.name,
        indicatif::HumanBytes(file.size)
    );
    for attempt in 1..=ATTEMPTS {
        match download_attempt(client, spec, url, &part, file) {
            Ok(()) => break,
            Err(e) if attempt < ATTEMPTS && is_network(&e) => {
                eprintln!("{e:#}; resuming (attempt {}/{ATTEMPTS})", attempt + 1)
            }
            Err(e) => return Err(e),
        }
    }
    let got = file.hash.of_file(&part)?;
    if got != file.hash.hex() {
        std::fs::remove_file(&part).ok();
        bail!(
            "hf:{}: the download of {} has {} {got}, but the hub lists {}; the download was deleted, not cached",
            spec.label(),
            file.name,
            file.hash.kind(),
            file.hash.hex()
        );
    }
    let blob = cache.blob(file.hash.hex());
    std::fs::rename(&part, &blob)
        .with_context(|| format!("renaming {} to {}", part.display(), blob.display()))
}

/// One request for the bytes that `part` still lacks (`Range` when it has some), written to it;
/// a server that answers 200 to a range request sends the whole file, which replaces `part`.
fn download_attempt(
    client: &Client,
    spec: &RepoSpec,
    url: &str,
    part: &Path,
    file: &RemoteFile,
) -> Result<()> {
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > file.size {
        have = 0;
    }
    if have == file.size {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .with_context(|| format!("creating {}", part.display()))?;
        return Ok(());
    }
    let target = Target {
        spec,
        file: Some(&file.name),
    };
    let mut resp = client.get(url, (have > 0).then_some(have), &target)?;
    let resumed = resp.status().as_u16() == 206;
    if resumed {
        check_content_range(&resp, have, &target)?;
    } else {
        have = 0;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .with_context(|| format!("opening {}", part.display()))?;
    let bar = progress(&file.name, file.size, have);
    let mut w = std::io::BufWriter::new(bar.wrap_write(out));
    let copied = std::io::copy(&mut resp.body_mut().as_reader(), &mut w);
    bar.finish_and_clear();
    let copied = copied.map_err(|e| network(format!("{} cut off: {e}", target.label())))?;
    w.flush()
        .with_context(|| format!("writing {}", part.display()))?;
    if have + copied < file.size {
        return Err(network(format!(
            "{} cut off after {} of {} bytes",
            target.label(),
            have + copied,
            file.size
        )));
    }
    Ok(())
}

/// Check that a 206 answer starts at byte `from`.
fn check_content_range(
    resp: &ureq::http::Response<ureq::Body>,
    from: u64,
    target: &Target,
) -> Result<()> {
    let range = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !range.starts_with(&format!("bytes {from}-")) {
        bail!(
            "{}: asked for the bytes from {from} on, the server answered 206 with Content-Range {range:?}",
            target.label()
        );
    }
    Ok(())
}

/// A byte progress bar for a file of `size` bytes at `start` (hidden for small files, and by
/// indicatif when stderr is no terminal).
fn progress(name: &str, size: u64, start: u64) -> indicatif::ProgressBar {
    if size < PROGRESS_MIN_BYTES {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar.set_position(start);
    bar
}

/// Point `snapshots/<commit>/<name>` at `../../blobs/<hash>` (a copy where there are no
/// symbolic links), replacing whatever else is there.
fn link_blob(cache: &RepoCache, commit: &str, file: &RemoteFile) -> Result<()> {
    let link = cache.snapshot(commit).join(&file.name);
    let dir = link.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = Path::new("../../blobs").join(file.hash.hex());
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    std::fs::remove_file(&link).ok();
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(&target, &link);
    #[cfg(not(unix))]
    let made = std::fs::copy(cache.blob(file.hash.hex()), &link).map(|_| ());
    made.with_context(|| format!("linking {} to its blob", link.display()))
}

/// Percent-encode a path for a URL, keeping unreserved characters; `/` is kept only between
/// file path parts when `keep_slash`.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A file path of the repo, encoded for a URL.
fn encode_path(name: &str) -> String {
    encode(name, true)
}

/// A failure that may pass: no connection, a timeout, a transfer cut off, a busy server. A
/// download resumes after it, and a cached snapshot may stand in.
#[derive(Debug)]
struct NetworkError(String);

impl std::fmt::Display for NetworkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetworkError {}

/// A [`NetworkError`] as an anyhow error.
fn network(msg: String) -> anyhow::Error {
    NetworkError(msg).into()
}

/// Whether `e` is (caused by) a [`NetworkError`].
fn is_network(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<NetworkError>())
}

/// What a request is for, to name in errors.
struct Target<'a> {
    spec: &'a RepoSpec,
    /// The file downloaded; None: the revision's file list.
    file: Option<&'a str>,
}

impl Target<'_> {
    /// `file of hf:org/name@rev`, or `the file list of hf:org/name@rev`.
    fn label(&self) -> String {
        match self.file {
            Some(f) => format!("{f} of hf:{}", self.spec.label()),
            None => format!("the file list of hf:{}", self.spec.label()),
        }
    }
}

/// HTTP access to the hub, with the token.
struct Client {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

impl Client {
    /// A client for `env`'s endpoint and token; redirects are followed (the token goes only
    /// to the same host), statuses are handled by [`Client::get`].
    fn new(env: &HubEnv) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(format!("unlearn/{}", env!("CARGO_PKG_VERSION")))
            .accept_encoding("identity")
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client {
            agent,
            endpoint: env.endpoint.clone(),
            token: env.token.clone(),
        }
    }

    /// GET `url` (from byte `from` on when given); answers other than 200 and 206 become
    /// errors that say what to do.
    fn get(
        &self,
        url: &str,
        from: Option<u64>,
        target: &Target,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self.agent.get(url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(n) = from {
            req = req.header("range", format!("bytes={n}-"));
        }
        let resp = req.call().map_err(|e| match e {
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_) => {
                network(format!("fetching {} from {url}: {e}", target.label()))
            }
            e => anyhow!("fetching {} from {url}: {e}", target.label()),
        })?;
        match resp.status().as_u16() {
            200 | 206 => Ok(resp),
            status => Err(self.status_error(status, &resp, target)),
        }
    }

    /// The error for an HTTP `status`: for 401, 403 and 404 what to do about it; 429 and 5xx
    /// are network errors (they may pass).
    fn status_error(
        &self,
        status: u16,
        resp: &ureq::http::Response<ureq::Body>,
        target: &Target,
    ) -> anyhow::Error {
        let repo = &target.spec.repo;
        let said = resp
            .headers()
            .get("x-error-message")
            .and_then(|v| v.to_str().ok())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        let what = format!(
            "{}: the hub at {} answered HTTP {status}{said}",
            target.label(),
            self.endpoint
        );
        match status {
            401 => anyhow!("{what}: a valid token is needed — set HF_TOKEN (or HF_TOKEN_PATH, or log in so that $HF_HOME/token exists) to an access token that may read {repo}; a private repo and a misspelt name both answer 401"),
            403 => anyhow!("{what}: access denied — if the model is gated, accept its licence at {}/{repo} with the account whose token HF_TOKEN holds, and check that the token may read gated repos", self.endpoint),
            404 => anyhow!("{what}: not found — check the model name {repo} and the revision {}", target.spec.revision),
            429 | 500..=599 => network(what),
            _ => anyhow!(what),
        }
    }

    /// The commit and files of `spec`'s revision.
    fn revision(&self, spec: &RepoSpec) -> Result<Revision> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.endpoint,
            spec.repo,
            encode(&spec.revision, false)
        );
        let target = Target { spec, file: None };
        let mut resp = self.get(&url, None, &target)?;
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| network(format!("reading {} from {url}: {e}", target.label())))?;
        Revision::parse(&spec.repo, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn specs_parse_and_bad_ones_are_named() {
        let s = RepoSpec::parse("google/gemma-3-270m").unwrap();
        assert_eq!(
            (s.repo.as_str(), s.revision.as_str()),
            ("google/gemma-3-270m", "main")
        );
        let s = RepoSpec::parse("Org_1/na.me@refs/pr/1").unwrap();
        assert_eq!(
            (s.repo.as_str(), s.revision.as_str()),
            ("Org_1/na.me", "refs/pr/1")
        );
        for bad in [
            "gemma",
            "a/b/c",
            "/name",
            "org/",
            "org/na me",
            "org/x--y",
            "org/-x",
            "org/x.",
            "org/name@",
            "org/name@../x",
            "org/name@a//b",
            "org/name@a b",
            "",
        ] {
            let e = RepoSpec::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("hf:{bad}:")) && e.contains("hf:org/name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_environment_is_read_with_the_hubs_defaults_and_precedence() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("hf");
        std::fs::create_dir_all(&home).unwrap();
        let vars = |pairs: &[(&str, String)]| {
            let m: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            HubEnv::from_vars(|k| m.get(k).cloned()).unwrap()
        };
        let h = home.display().to_string();
        let e = vars(&[("HF_HOME", h.clone())]);
        assert_eq!(e.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(
            (e.cache, e.token, e.offline),
            (home.join("hub"), None, false)
        );

        std::fs::write(home.join("token"), "hf_file\n").unwrap();
        assert_eq!(
            vars(&[("HF_HOME", h.clone())]).token.as_deref(),
            Some("hf_file")
        );
        let other = d.path().join("other-token");
        std::fs::write(&other, "hf_path").unwrap();
        let e = vars(&[
            ("HF_HOME", h.clone()),
            ("HF_TOKEN_PATH", other.display().to_string()),
            ("HF_ENDPOINT", "http://127.0.0.1:9/".into()),
            ("HF_HUB_CACHE", "/c".into()),
            ("HF_HUB_OFFLINE", "1".into()),
        ]);
        assert_eq!(e.token.as_deref(), Some("hf_path"));
        assert_eq!(
            (e.endpoint.as_str(), e.cache, e.offline),
            ("http://127.0.0.1:9", PathBuf::from("/c"), true)
        );
        let e = vars(&[
            ("HF_HOME", h.clone()),
            ("HF_TOKEN", "hf_env".into()),
            ("HF_HUB_OFFLINE", "0".into()),
        ]);
        assert_eq!((e.token.as_deref(), e.offline), (Some("hf_env"), false));
        let x = vars(&[("XDG_CACHE_HOME", "/x".into()), ("HF_TOKEN", "t".into())]);
        assert_eq!(x.cache, PathBuf::from("/x/huggingface/hub"));
    }

    #[test]
    fn the_cache_layout_is_the_hubs() {
        let c = RepoCache::new(Path::new("/c"), "org/name");
        let sha = "a".repeat(40);
        assert_eq!(c.root, Path::new("/c/models--org--name"));
        assert_eq!(c.blob("ab"), Path::new("/c/models--org--name/blobs/ab"));
        assert_eq!(
            c.incomplete("ab"),
            Path::new("/c/models--org--name/blobs/ab.incomplete")
        );
        assert_eq!(
            c.snapshot(&sha),
            Path::new("/c/models--org--name/snapshots").join(&sha)
        );
        assert_eq!(
            c.ref_file("refs/pr/1"),
            Path::new("/c/models--org--name/refs/refs/pr/1")
        );
        assert_eq!(
            c.lock_path,
            Path::new("/c/.locks/models--org--name/unlearn.lock")
        );
    }

    #[test]
    fn files_are_chosen_by_index_or_as_the_top_level_safetensors() {
        let names = [
            "config.json",
            "tokenizer.json",
            "generation_config.json",
            "README.md",
            "model.safetensors",
            "onnx/model.safetensors",
            "pytorch_model.bin",
        ];
        assert_eq!(
            metadata_files("o/n", &names).unwrap(),
            ["config.json", "tokenizer.json", "generation_config.json"]
        );
        assert_eq!(
            weight_files("o/n", &names, None).unwrap(),
            ["model.safetensors"]
        );

        let sharded = [
            "config.json",
            "tokenizer.json",
            INDEX_FILE,
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "consolidated.safetensors",
        ];
        assert!(metadata_files("o/n", &sharded)
            .unwrap()
            .contains(&INDEX_FILE.to_string()));
        let map: BTreeMap<String, String> = [
            ("a", "model-00002-of-00002.safetensors"),
            ("b", "model-00001-of-00002.safetensors"),
            ("c", "model-00002-of-00002.safetensors"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            weight_files("o/n", &sharded, Some(&map)).unwrap(),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        let e = weight_files("o/n", &sharded[..4], Some(&map))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hf:o/n") && e.contains("model-00002-of-00002.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn missing_tokenizer_or_safetensors_are_explained() {
        let e = metadata_files(
            "o/n",
            &["config.json", "tokenizer.json", "pytorch_model.bin"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("hf:o/n") && e.contains(".bin") && e.contains("safetensors"),
            "{e}"
        );
        let e = metadata_files("o/n", &["config.json", "model.safetensors"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a tokenizer.json"), "{e}");
        let e = metadata_files("o/n", &["tokenizer.json", "model.safetensors"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
    }

    #[test]
    fn the_api_answer_gives_hashes_and_bad_ones_are_rejected() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let v = json!({"sha": sha, "siblings": [
            {"rfilename": "config.json", "size": 5, "blobId": "E69DE29BB2D1D6434B8B29AE775AD8C2E48C5391"},
            {"rfilename": "model.safetensors", "size": 9, "blobId": sha,
             "lfs": {"sha256": "ab".repeat(32), "size": 9}},
            {"rfilename": "odd.json"},
            {"rfilename": "bad.json", "size": 1, "blobId": "../../x"}]});
        let r = Revision::parse("o/n", &v.to_string()).unwrap();
        assert_eq!(r.commit, sha);
        assert_eq!(
            r.file("o/n", "config.json").unwrap().hash,
            BlobHash::GitSha1("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391".into())
        );
        let m = r.file("o/n", "model.safetensors").unwrap();
        assert_eq!((m.size, m.hash), (9, BlobHash::Sha256("ab".repeat(32))));
        for (f, says) in [
            ("odd.json", "no size"),
            ("bad.json", "../../x"),
            ("none.json", "no file"),
        ] {
            let e = r.file("o/n", f).unwrap_err().to_string();
            assert!(
                e.contains("hf:o/n") && e.contains(f) && e.contains(says),
                "{e}"
            );
        }
        let e = Revision::parse("o/n", r#"{"sha": "main", "siblings": []}"#).unwrap_err();
        assert!(e.to_string().contains("commit"), "{e}");
        assert!(Revision::parse("o/n", "<html>").is_err());
    }

    #[test]
    fn git_blob_ids_are_sha1_of_the_header_and_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, "hello\n").unwrap();
        assert_eq!(
            git_blob_sha1(&p).unwrap(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        std::fs::write(&p, "").unwrap();
        assert_eq!(
            git_blob_sha1(&p).unwrap(),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
    }

    #[test]
    fn revisions_and_paths_are_percent_encoded() {
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode_path("sub dir/a+b.json"), "sub%20dir/a%2Bb.json");
    }

    #[test]
    #[cfg(unix)]
    fn the_fingerprint_reads_blob_names_and_hashes_plain_files() {
        let d = tempfile::tempdir().unwrap();
        let c = RepoCache::new(d.path(), "o/n");
        let hash = "cd".repeat(32);
        let file = RemoteFile {
            name: "a.safetensors".into(),
            size: 0,
            hash: BlobHash::Sha256(hash.clone()),
        };
        std::fs::create_dir_all(c.blob(&hash).parent().unwrap()).unwrap();
        std::fs::write(c.blob(&hash), b"not hashed").unwrap();
        let commit = "1".repeat(40);
        link_blob(&c, &commit, &file).unwrap();
        link_blob(&c, &commit, &file).unwrap();
        let linked = c.snapshot(&commit).join("a.safetensors");
        assert_eq!(std::fs::read(&linked).unwrap(), b"not hashed");
        let plain = d.path().join("b.safetensors");
        std::fs::write(&plain, b"x").unwrap();
        let want = hex::encode(Sha256::digest(
            format!("{hash}\n{}\n", hex::encode(Sha256::digest(b"x"))).as_bytes(),
        ));
        assert_eq!(fingerprint(&[linked, plain]).unwrap(), want);
    }

    #[test]
    fn offline_without_a_cache_entry_says_so() {
        let d = tempfile::tempdir().unwrap();
        let env = HubEnv {
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            cache: d.path().to_path_buf(),
            offline: true,
        };
        let e = format!("{:#}", fetch("o/n@v1", &env).unwrap_err());
        assert!(
            e.contains("hf:o/n@v1") && e.contains("HF_HUB_OFFLINE") && e.contains("refs"),
            "{e}"
        );
    }
}
