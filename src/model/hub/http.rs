//! Requests to the hub: one file downloaded into its blob (resumed with `Range`, retried,
//! checked), with the errors that say what to do.

use super::*;

/// Make `snapshots/<commit>/<name>` point at its verified blob, downloading the blob when the
/// cache lacks it.
pub(super) fn fetch_file(
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
pub(super) fn download_blob(
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
pub(super) fn download_attempt(
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
pub(super) fn check_content_range(
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
pub(super) fn progress(name: &str, size: u64, start: u64) -> indicatif::ProgressBar {
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

/// Percent-encode a path for a URL, keeping unreserved characters; `/` is kept only between
/// file path parts when `keep_slash`.
pub(super) fn encode(s: &str, keep_slash: bool) -> String {
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
pub(super) fn encode_path(name: &str) -> String {
    encode(name, true)
}

/// A failure that may pass: no connection, a timeout, a transfer cut off, a busy server. A
/// download resumes after it, and a cached snapshot may stand in.
#[derive(Debug)]
pub(super) struct NetworkError(String);

impl std::fmt::Display for NetworkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetworkError {}

/// A [`NetworkError`] as an anyhow error.
pub(super) fn network(msg: String) -> anyhow::Error {
    NetworkError(msg).into()
}

/// Whether `e` is (caused by) a [`NetworkError`].
pub(super) fn is_network(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<NetworkError>())
}

/// What a request is for, to name in errors.
pub(super) struct Target<'a> {
    spec: &'a RepoSpec,
    /// The file downloaded; None: the revision's file list.
    file: Option<&'a str>,
}

impl Target<'_> {
    /// `file of hf:org/name@rev`, or `the file list of hf:org/name@rev`.
    pub(super) fn label(&self) -> String {
        match self.file {
            Some(f) => format!("{f} of hf:{}", self.spec.label()),
            None => format!("the file list of hf:{}", self.spec.label()),
        }
    }
}

/// HTTP access to the hub, with the token.
pub(super) struct Client {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

impl Client {
    /// A client for `env`'s endpoint and token; redirects are followed (the token goes only
    /// to the same host), statuses are handled by [`Client::get`].
    pub(super) fn new(env: &HubEnv) -> Client {
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
    pub(super) fn get(
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
    pub(super) fn status_error(
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
    pub(super) fn revision(&self, spec: &RepoSpec) -> Result<Revision> {
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
