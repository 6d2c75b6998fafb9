//! Models from the Hugging Face hub (`--model hf:org/name[@revision]`): the config, tokenizer
//! and safetensors weights of a revision are downloaded into the hub's own cache layout (shared
//! with Python's `huggingface_hub`). A blob is renamed into place only after its hash matches,
//! an interrupted download resumes, and a cached snapshot serves offline.

mod cache;
mod http;
mod revision;
mod spec;

pub use cache::*;
use http::*;
pub use revision::*;
pub use spec::*;

use crate::model::hf_dir::{self, INDEX_FILE};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
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
        // An adapter beside the model is not the model's weights; without model.safetensors
        // every top-level file is.
        let beside = ["model.safetensors", "adapter_model.safetensors"];
        assert_eq!(
            weight_files("o/n", &beside, None).unwrap(),
            ["model.safetensors"]
        );
        let split = ["b.safetensors", "a.safetensors", "sub/c.safetensors"];
        assert_eq!(
            weight_files("o/n", &split, None).unwrap(),
            ["a.safetensors", "b.safetensors"]
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
