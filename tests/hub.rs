//! `--model hf:org/name[@revision]` against a Hugging Face hub served by this test on
//! 127.0.0.1: the committed tiny Llama as a repo (API JSON computed from its files, LFS files
//! behind a redirect, `Range` support), with switches for a required token, a transfer cut off
//! midway, a corrupted file, and a log of the requests. The real binary must predict exactly
//! what it predicts from the local directory, download only once, work offline from the cache,
//! explain a missing token, cache nothing of a corrupt download, and load a sharded repo.

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const REPO: &str = "tiny-org/tiny-llama";
const TOKEN: &str = "hf_test_token";
/// The files of the tiny model that the hub serves (not its reference.* files).
const FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];
const PROMPTS: [&str; 2] = ["The capital of France is", "Hello world"];

/// The committed tiny model directory.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama")
}

/// The fixture's served files: name → bytes.
fn fixture_files() -> BTreeMap<String, Vec<u8>> {
    FILES
        .iter()
        .map(|f| (f.to_string(), std::fs::read(fixture().join(f)).unwrap()))
        .collect()
}

/// The sha256 of `b` in hex.
fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The git blob id of `b`.
fn git_sha1_hex(b: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex::encode(h.finalize())
}

/// A repo of the test hub: its commit and files.
struct Repo {
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
}

impl Repo {
    /// A repo of `files`, with a commit sha derived from them.
    fn new(files: BTreeMap<String, Vec<u8>>) -> Repo {
        let mut all = Vec::new();
        for (n, b) in &files {
            all.extend_from_slice(n.as_bytes());
            all.extend_from_slice(b);
        }
        Repo {
            commit: git_sha1_hex(&all),
            files,
        }
    }

    /// The API's revision JSON: LFS entries (sha256) for safetensors, git blob ids otherwise.
    fn revision_json(&self) -> String {
        let siblings: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|(name, b)| {
                let mut s = serde_json::json!({"rfilename": name, "size": b.len(), "blobId": git_sha1_hex(b)});
                if name.ends_with(".safetensors") {
                    s["lfs"] = serde_json::json!({"sha256": sha256_hex(b), "size": b.len(), "pointerSize": 134});
                }
                s
            })
            .collect();
        serde_json::json!({"id": REPO, "sha": self.commit, "siblings": siblings}).to_string()
    }
}

/// What the test hub serves, does and saw.
#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    /// The bearer token the API and `resolve/` require, if any.
    token: Option<String>,
    /// Files whose next response stops halfway.
    cut: HashSet<String>,
    /// Files served with one byte changed.
    corrupt: HashSet<String>,
    /// Answer range requests with the whole file (200), as some servers do.
    no_ranges: bool,
    /// Every request: path and `Range` header.
    seen: Vec<(String, Option<String>)>,
}

/// An answer of the test hub.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Send only the first half of the body (with the full Content-Length), then close.
    cut: bool,
}

impl Answer {
    /// An answer with `status` and `body` and no extra header.
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            headers: vec![],
            body: body.into(),
            cut: false,
        }
    }
}

/// A hub on 127.0.0.1 serving `State` until dropped.
struct Hub {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// Serve `state` on a free port of 127.0.0.1.
    fn start(state: State) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || serve(stream, &s));
                }
            }
        });
        Hub {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The base URL, for HF_ENDPOINT.
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests seen so far, and forget them.
    fn take_seen(&self) -> Vec<(String, Option<String>)> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }
}

impl Drop for Hub {
    /// Stop accepting connections (a last one wakes the accept loop).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        TcpStream::connect(("127.0.0.1", self.port)).ok();
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// Answer one request on `stream` (one request per connection).
fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let answer = {
        let mut s = state.lock().unwrap();
        s.seen.push((path.clone(), headers.get("range").cloned()));
        route(&mut s, &path, &headers)
    };
    write_answer(stream, answer).ok();
}

/// Write `a` as an HTTP/1.1 response and close.
fn write_answer(mut stream: TcpStream, a: Answer) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        a.status,
        a.body.len()
    );
    for (k, v) in &a.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let n = if a.cut {
        a.body.len() / 2
    } else {
        a.body.len()
    };
    stream.write_all(&a.body[..n])?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

/// The answer to `path`: the revision API, `resolve/` (LFS files redirect to `/cdn/`, which
/// needs no token) and `/cdn/`.
fn route(s: &mut State, path: &str, headers: &HashMap<String, String>) -> Answer {
    let path = path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let authorized = s
        .token
        .as_ref()
        .is_none_or(|t| headers.get("authorization") == Some(&format!("Bearer {t}")));
    match parts.as_slice() {
        ["cdn", org, name, file] => serve_file(s, &format!("{org}/{name}"), file, headers),
        _ if !authorized => {
            let mut a = Answer::new(401, "unauthorized");
            a.headers.push((
                "X-Error-Message",
                "Invalid credentials in Authorization header".into(),
            ));
            a
        }
        ["api", "models", org, name, rest] => {
            let Some(repo) = s.repos.get(&format!("{org}/{name}")) else {
                return Answer::new(404, "no such repo");
            };
            match rest.strip_prefix("revision/") {
                Some(rev) if rev == "main" || rev == repo.commit => {
                    Answer::new(200, repo.revision_json())
                }
                _ => Answer::new(404, "no such revision"),
            }
        }
        [org, name, "resolve", rev, file] => {
            let repo = format!("{org}/{name}");
            if s.repos.get(&repo).is_none_or(|r| r.commit != *rev) {
                return Answer::new(404, "no such revision");
            }
            if file.ends_with(".safetensors") {
                let mut a = Answer::new(302, "");
                a.headers.push(("Location", format!("/cdn/{repo}/{file}")));
                return a;
            }
            serve_file(s, &repo, file, headers)
        }
        _ => Answer::new(404, "not found"),
    }
}

/// A file of a repo, from the `Range: bytes=N-` start when asked (206); corrupted or cut off
/// when switched so.
fn serve_file(s: &mut State, repo: &str, file: &str, headers: &HashMap<String, String>) -> Answer {
    let Some(mut bytes) = s.repos.get(repo).and_then(|r| r.files.get(file)).cloned() else {
        return Answer::new(404, "no such file");
    };
    if s.corrupt.contains(file) {
        bytes[0] ^= 0xff;
    }
    let from = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let mut a = match from {
        Some(n) if n < bytes.len() && !s.no_ranges => {
            let mut a = Answer::new(206, bytes[n..].to_vec());
            a.headers.push((
                "Content-Range",
                format!("bytes {n}-{}/{}", bytes.len() - 1, bytes.len()),
            ));
            a
        }
        _ => Answer::new(200, bytes),
    };
    a.cut = s.cut.remove(file);
    a
}

/// `unlearn predict --json` of the test prompts on `model`, with no HF_* variable of this
/// process.
fn predict(model: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unlearn"));
    c.args(["predict", "--json", "--top-k", "8", "--model", model])
        .args(PROMPTS);
    for v in [
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "XDG_CACHE_HOME",
    ] {
        c.env_remove(v);
    }
    c
}

/// [`predict`] of `hf:{repo}` through the hub at `endpoint` with `home` as HF_HOME and `token`.
fn predict_hub(repo: &str, endpoint: &str, home: &Path, token: Option<&str>) -> Command {
    let mut c = predict(&format!("hf:{repo}"));
    c.env("HF_ENDPOINT", endpoint).env("HF_HOME", home);
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c
}

/// Run `c`: (stdout, stderr) when it succeeds.
fn ok(c: &mut Command) -> (String, String) {
    let o = c.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "{c:?} failed:\n{err}");
    (out, err)
}

/// Run `c`, which must fail: its stderr.
fn fails(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{c:?} succeeded:\n{err}");
    err
}

/// What predict prints for the local fixture directory.
fn local_prediction() -> String {
    ok(&mut predict(fixture().to_str().unwrap())).0
}

/// The cache directory of `repo` under HF_HOME `home`.
fn repo_cache(home: &Path, repo: &str) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
}

/// The names of the files in `dir` (none when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_hub_model_downloads_once_resumes_and_then_serves_from_the_cache() {
    let repo = Repo::new(fixture_files());
    let commit = repo.commit.clone();
    let model_sha = sha256_hex(&repo.files["model.safetensors"]);
    let hub = Hub::start(State {
        repos: [(REPO.to_string(), repo)].into(),
        token: Some(TOKEN.into()),
        cut: ["model.safetensors".to_string()].into(),
        ..Default::default()
    });
    let home = tempfile::tempdir().unwrap();
    let want = local_prediction();
    let hub_run = || predict_hub(REPO, &hub.endpoint(), home.path(), Some(TOKEN));

    let (got, err) = ok(&mut hub_run());
    assert_eq!(got, want, "predictions differ from the local directory");
    assert!(err.contains("resuming"), "{err}");
    let seen = hub.take_seen();
    let resumed = seen.iter().any(|(p, r)| {
        p.ends_with("/model.safetensors")
            && r.as_deref()
                .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-")
    });
    assert!(
        resumed,
        "no Range request resumed the cut transfer: {seen:?}"
    );

    let cache = repo_cache(home.path(), REPO);
    assert_eq!(
        std::fs::read_to_string(cache.join("refs/main")).unwrap(),
        commit
    );
    let link = cache
        .join("snapshots")
        .join(&commit)
        .join("model.safetensors");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../../blobs").join(&model_sha)
    );
    assert_eq!(names_in(&cache.join("snapshots").join(&commit)), FILES);
    assert!(
        names_in(&cache.join("blobs"))
            .iter()
            .all(|n| !n.ends_with(".incomplete")),
        "a partial download was left"
    );

    assert_eq!(ok(&mut hub_run()).0, want);
    let seen = hub.take_seen();
    assert_eq!(seen.len(), 1, "a second run downloaded again: {seen:?}");
    assert!(
        seen[0]
            .0
            .starts_with(&format!("/api/models/{REPO}/revision/main")),
        "{seen:?}"
    );

    let endpoint = hub.endpoint();
    drop(hub);
    let offline = ok(predict_hub(REPO, &endpoint, home.path(), None).env("HF_HUB_OFFLINE", "1"));
    assert_eq!(offline.0, want);
    let unreachable = ok(&mut predict_hub(REPO, &endpoint, home.path(), None));
    assert_eq!(unreachable.0, want);
    assert!(
        unreachable.1.contains("warning") && unreachable.1.contains(&commit),
        "{}",
        unreachable.1
    );
    let by_commit = format!("{REPO}@{commit}");
    assert_eq!(
        ok(predict_hub(&by_commit, &endpoint, home.path(), None).env("HF_HUB_OFFLINE", "1")).0,
        want
    );
    let e = fails(
        predict_hub(&format!("{REPO}@v2"), &endpoint, home.path(), None).env("HF_HUB_OFFLINE", "1"),
    );
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("@v2"), "{e}");
}

#[test]
fn a_missing_or_wrong_token_is_explained_and_the_token_file_is_read() {
    let hub = Hub::start(State {
        repos: [(REPO.to_string(), Repo::new(fixture_files()))].into(),
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    let home = tempfile::tempdir().unwrap();
    for token in [None, Some("hf_wrong")] {
        let e = fails(&mut predict_hub(REPO, &hub.endpoint(), home.path(), token));
        assert!(
            e.contains("HF_TOKEN") && e.contains("401") && e.contains(REPO),
            "{e}"
        );
        assert!(
            e.contains("Invalid credentials"),
            "the hub's own message is shown: {e}"
        );
    }
    std::fs::write(home.path().join("token"), format!("{TOKEN}\n")).unwrap();
    assert_eq!(
        ok(&mut predict_hub(REPO, &hub.endpoint(), home.path(), None)).0,
        local_prediction()
    );
}

#[test]
fn a_corrupt_download_is_refused_and_nothing_is_cached() {
    for file in ["model.safetensors", "tokenizer.json"] {
        let repo = Repo::new(fixture_files());
        let (commit, hash) = (
            repo.commit.clone(),
            if file.ends_with(".safetensors") {
                sha256_hex(&repo.files[file])
            } else {
                git_sha1_hex(&repo.files[file])
            },
        );
        let hub = Hub::start(State {
            repos: [(REPO.to_string(), repo)].into(),
            corrupt: [file.to_string()].into(),
            ..Default::default()
        });
        let home = tempfile::tempdir().unwrap();
        let e = fails(&mut predict_hub(REPO, &hub.endpoint(), home.path(), None));
        assert!(
            e.contains(file) && e.contains(&hash) && e.contains("not cached"),
            "{e}"
        );
        let cache = repo_cache(home.path(), REPO);
        let blobs = names_in(&cache.join("blobs"));
        assert!(
            blobs.iter().all(|b| !b.starts_with(&hash)),
            "{file}: {blobs:?}"
        );
        assert!(!cache.join("snapshots").join(&commit).join(file).exists());
        assert!(!cache.join("refs/main").exists());
    }
}

#[test]
fn a_sharded_repo_loads_exactly_its_shards_with_the_same_predictions() {
    let mut files = fixture_files();
    let tensors =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let dir = tempfile::tempdir().unwrap();
    let mut weight_map = BTreeMap::new();
    for (i, half) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", i + 1);
        let part: HashMap<String, Tensor> = half
            .iter()
            .map(|n| (n.to_string(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, dir.path().join(&shard)).unwrap();
        files.insert(
            shard.clone(),
            std::fs::read(dir.path().join(&shard)).unwrap(),
        );
        for n in half {
            weight_map.insert(n.to_string(), shard.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    files.insert(
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    );
    // The unsharded file is in the repo too (as some repos keep one): the index decides.
    let hub = Hub::start(State {
        repos: [("tiny-org/sharded".to_string(), Repo::new(files))].into(),
        ..Default::default()
    });
    let home = tempfile::tempdir().unwrap();
    let (got, _) = ok(&mut predict_hub(
        "tiny-org/sharded",
        &hub.endpoint(),
        home.path(),
        None,
    ));
    assert_eq!(got, local_prediction());
    let seen = hub.take_seen();
    assert!(
        !seen.iter().any(|(p, _)| p.ends_with("/model.safetensors")),
        "a file the index does not name was downloaded: {seen:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|(p, _)| p.contains("-of-00002.safetensors"))
            .count(),
        4,
        "{seen:?}"
    );
}

#[test]
fn unknown_repos_revisions_and_bin_only_repos_are_explained() {
    let mut bin_only = fixture_files();
    bin_only.remove("model.safetensors");
    bin_only.insert("pytorch_model.bin".into(), b"not read".to_vec());
    let hub = Hub::start(State {
        repos: [
            (REPO.to_string(), Repo::new(fixture_files())),
            ("tiny-org/bin-only".to_string(), Repo::new(bin_only)),
        ]
        .into(),
        ..Default::default()
    });
    let home = tempfile::tempdir().unwrap();
    let cases = [
        (
            "tiny-org/bin-only",
            ".bin weights; unlearn reads safetensors",
        ),
        ("tiny-org/nope", "check the model name tiny-org/nope"),
        ("tiny-org/tiny-llama@v9", "revision v9"),
        ("tiny-llama", "hf:org/name"),
    ];
    for (repo, says) in cases {
        let e = fails(&mut predict_hub(repo, &hub.endpoint(), home.path(), None));
        assert!(e.contains(repo) && e.contains(says), "{repo}: {e}");
    }
}

#[test]
fn a_partial_download_left_by_a_killed_run_is_continued() {
    let repo = Repo::new(fixture_files());
    let bytes = repo.files["model.safetensors"].clone();
    let hash = sha256_hex(&bytes);
    let hub = Hub::start(State {
        repos: [(REPO.to_string(), repo)].into(),
        ..Default::default()
    });
    let want = local_prediction();
    let half = bytes.len() / 2;
    // The true first half (continued with Range), then a wrong one that a server ignoring
    // Range replaces with the whole file.
    for (partial, ranges) in [(bytes[..half].to_vec(), true), (vec![7u8; half], false)] {
        hub.state.lock().unwrap().no_ranges = !ranges;
        let home = tempfile::tempdir().unwrap();
        let blobs = repo_cache(home.path(), REPO).join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join(format!("{hash}.incomplete")), &partial).unwrap();
        let (got, _) = ok(&mut predict_hub(REPO, &hub.endpoint(), home.path(), None));
        assert_eq!(got, want);
        assert_eq!(std::fs::read(blobs.join(&hash)).unwrap(), bytes);
        let range = format!("bytes={half}-");
        let seen = hub.take_seen();
        assert!(
            seen.iter()
                .any(|(p, r)| p.starts_with("/cdn/") && r.as_deref() == Some(range.as_str())),
            "{seen:?}"
        );
        assert!(!blobs.join(format!("{hash}.incomplete")).exists());
    }
}
