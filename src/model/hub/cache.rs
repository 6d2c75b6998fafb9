//! The hub's cache layout of one repository (`blobs/`, `snapshots/<commit>/`, `refs/`), shared
//! with Python's `huggingface_hub`, and the hashes blobs are named and checked by.

use super::*;

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
    pub(super) fn lock(&self, repo: &str) -> Result<std::fs::File> {
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
    pub(super) fn of_file(&self, path: &Path) -> Result<String> {
        match self {
            BlobHash::Sha256(_) => crate::util::sha256_file(path),
            BlobHash::GitSha1(_) => git_blob_sha1(path),
        }
    }

    /// `sha256` or `git blob sha1`, for messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            BlobHash::Sha256(_) => "sha256",
            BlobHash::GitSha1(_) => "git blob sha1",
        }
    }
}

/// The git blob id of a file: sha1 of `blob {len}\0` followed by its bytes.
pub fn git_blob_sha1(path: &Path) -> Result<String> {
    use sha1::Digest as _;
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {len}\0").as_bytes());
    crate::util::feed_file(path, &mut |b| h.update(b))?;
    Ok(hex::encode(h.finalize()))
}

/// Point `snapshots/<commit>/<name>` at `../../blobs/<hash>` (a copy where there are no
/// symbolic links), replacing whatever else is there.
pub(super) fn link_blob(cache: &RepoCache, commit: &str, file: &RemoteFile) -> Result<()> {
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
