//! `hf:org/name[@revision]` parsed and checked, and the environment a download reads
//! (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`).

use super::*;

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
    pub(super) fn label(&self) -> String {
        format!("{}@{}", self.repo, self.revision)
    }
}

/// Why `repo` is not a hub model id `org/name`, if it is not.
pub(super) fn repo_id_problem(repo: &str) -> Option<&'static str> {
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
pub(super) fn revision_problem(revision: &str) -> Option<&'static str> {
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
pub(super) fn read_token_file(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the hub token file {}", path.display())),
    }
}
