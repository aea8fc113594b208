//! The Git source: one branch of one repository, read only through commits
//! and their trees, never a working tree.
//!
//! The repository is either a local path (bare or not) or a remote URL
//! (`https://`, `http://`, `git://`, `ssh://`, or scp-like
//! `git@host:org/repo.git`).
//!
//! - A local repository is read in place. New commits are noticed within a
//!   second by watching its refs with `notify`, with a slow poll as a
//!   safety net.
//! - A remote repository is fetched into a private bare mirror
//!   (`<mirror_dir>/<hash of the URL>`, mode 0700), only the followed
//!   branch, shallow (depth 1) the first time so a big repository does not
//!   slow start-up, incrementally afterwards. [`GitSource::watch`] fetches
//!   on every poll interval and whenever the push webhook
//!   ([`crate::webhook`]) says so; a fetch that moved the branch wakes the
//!   follower, which then reads [`GitSource::head`] and
//!   [`GitSource::snapshot`] from the mirror. A failing fetch is logged
//!   once per distinct error and retried with back-off; the mirror keeps
//!   serving the last head fetched.
//!
//! Credentials only come from files (never from the URL, so they cannot
//! leak into logs or `ps`): an HTTPS token or password, an SSH private key
//! (and passphrase), and a known_hosts file the SSH host key must match.
//!
//! All git2 work runs on blocking threads.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use commitd_api::backoff::Backoff;
use commitd_api::manifest::is_manifest_path;
use commitd_api::records::CommitInfo;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::tags::{self, TagHead};
use crate::trust::{Signed, TrustPolicy};
use crate::webhook::{PushTarget, WebhookConfig, WebhookServer};

/// The poll interval of a local repository when none is given: ref
/// changes are seen at once through `notify`, the poll is a safety net.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// The poll interval the CLI should default to for a remote repository:
/// each poll is a network round trip to the Git server, and webhooks make
/// pushes visible at once anyway.
pub const DEFAULT_REMOTE_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// How long one fetch may take before it is abandoned, unless
/// [`RemoteOptions::fetch_timeout`] says otherwise.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest wait between two tries of a failing fetch (shorter when
/// the poll interval is).
const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(300);
/// How often one fetch offers its credentials: each new connection of a
/// fetch (finding the default branch, then fetching) asks again, and a
/// refused credential is asked for again at once, so a bound is what
/// stops a wrong one.
const CREDENTIAL_TRIES: u32 = 3;

/// The HTTPS user name sent with a token when none is configured: GitHub,
/// Gitea and Forgejo accept any name with a token, GitHub documents this one.
const TOKEN_USERNAME: &str = "x-access-token";

/// Which repository, branch and folder hold the desired state.
///
/// Build it with struct update syntax (`..Default::default()`) or
/// [`GitSourceConfig::local`]; a remote only needs `repo` set to its URL
/// and `remote.mirror_dir`.
#[derive(Debug, Clone)]
pub struct GitSourceConfig {
    /// Where the repository is: a local path (its work tree or a bare
    /// repository), or a remote URL (`https://`, `http://`, `git://`,
    /// `ssh://`, scp-like `git@host:org/repo.git`), told apart as `git
    /// clone` does. See [`GitSourceConfig::location`].
    pub repo: PathBuf,
    /// Branch to follow; `None` follows the branch HEAD names (for a remote,
    /// the remote's default branch).
    pub branch: Option<String>,
    /// Follow the newest tag (by semantic version) matching this glob
    /// (`v*`) instead of a branch.
    pub tags: Option<String>,
    /// Folder inside the tree to read manifests from ("" for the root).
    pub path: String,
    /// How often to look for new commits when nothing else said so: for a
    /// local repository a safety net behind `notify`, for a remote how
    /// often it is fetched.
    pub poll_interval: Duration,
    /// How a remote repository is fetched (mirror and credentials); unused
    /// for a local path.
    pub remote: RemoteOptions,
    /// A push-webhook receiver started by [`GitSource::watch`], so a push
    /// is fetched at once instead of at the next poll.
    pub webhook: Option<WebhookConfig>,
    /// What a head must be to be applied: signed by an allowed key, not a
    /// rewrite of the applied commit's history.
    pub trust: TrustPolicy,
}

impl Default for GitSourceConfig {
    fn default() -> GitSourceConfig {
        GitSourceConfig {
            repo: PathBuf::new(),
            branch: None,
            tags: None,
            path: String::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            remote: RemoteOptions::default(),
            webhook: None,
            trust: TrustPolicy::default(),
        }
    }
}

impl GitSourceConfig {
    /// A local repository followed on the branch its HEAD names, manifests
    /// at the root, polled at the default interval.
    pub fn local(repo: impl Into<PathBuf>) -> GitSourceConfig {
        GitSourceConfig {
            repo: repo.into(),
            ..GitSourceConfig::default()
        }
    }

    /// Whether `repo` is a local path or a remote URL (and which).
    pub fn location(&self) -> Result<RepoLocation, RepoUrlError> {
        RepoLocation::parse(&self.repo.to_string_lossy())
    }

    /// The repository as it may be logged: never with a password.
    pub fn repo_display(&self) -> String {
        match self.location() {
            Ok(RepoLocation::Local(p)) => p.display().to_string(),
            Ok(RepoLocation::Remote(u)) => u.to_string(),
            Err(RepoUrlError::PasswordInUrl { url }) => url,
            Err(_) => "<invalid repository URL>".into(),
        }
    }
}

/// How a remote repository is fetched. Every field is optional; the
/// credential files are read at each fetch, so they can be rotated
/// without a restart.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// The folder that holds the private mirrors, one per URL, e.g.
    /// `<state dir>/git-mirror` (created with mode 0700). Required for a
    /// remote repository.
    pub mirror_dir: Option<PathBuf>,
    /// User name: for HTTPS with a token (default `x-access-token`) or a
    /// password (default: the URL's), for SSH (default: the URL's, else
    /// `git`).
    pub username: Option<String>,
    /// File holding an HTTPS access token, sent as the password.
    pub token_file: Option<PathBuf>,
    /// File holding an HTTPS password (basic authentication).
    pub password_file: Option<PathBuf>,
    /// SSH private key file.
    pub ssh_key_file: Option<PathBuf>,
    /// File holding the SSH private key's passphrase.
    pub ssh_passphrase_file: Option<PathBuf>,
    /// known_hosts file the SSH host key must be listed in (default
    /// `~/.ssh/known_hosts`); an unknown or changed host key is refused.
    pub known_hosts_file: Option<PathBuf>,
    /// How long one fetch may take (default [`DEFAULT_FETCH_TIMEOUT`]).
    pub fetch_timeout: Option<Duration>,
}

/// Where a repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    /// A path on this machine.
    Local(PathBuf),
    /// A repository fetched over the network.
    Remote(RemoteUrl),
}

impl RepoLocation {
    /// Tells a local path from a remote URL as `git clone` does: a
    /// `scheme://` prefix, or a colon before the first slash (scp-like
    /// `[user@]host:path`), means a URL; `file://` is a local path.
    pub fn parse(repo: &str) -> Result<RepoLocation, RepoUrlError> {
        if let Some(path) = repo.strip_prefix("file://") {
            return Ok(RepoLocation::Local(PathBuf::from(path)));
        }
        if repo.contains("://") || scp_like(repo).is_some() {
            return RemoteUrl::parse(repo).map(RepoLocation::Remote);
        }
        Ok(RepoLocation::Local(PathBuf::from(repo)))
    }
}

/// The transport of a remote URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTPS (token or password authentication).
    Https,
    /// Plain HTTP: only meant for tests on loopback.
    Http,
    /// The unauthenticated git protocol (`git daemon`).
    Git,
    /// SSH (`ssh://` or scp-like), key authentication.
    Ssh,
}

/// A remote repository URL, known to carry no password (so it can be
/// logged and put in errors as it is).
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    url: String,
    scheme: Scheme,
    host: String,
    port: Option<u16>,
    user: Option<String>,
}

impl RemoteUrl {
    /// Parses a `scheme://` or scp-like URL; refuses passwords in it.
    pub fn parse(repo: &str) -> Result<RemoteUrl, RepoUrlError> {
        if let Some((scheme, _)) = repo.split_once("://") {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "https" => Scheme::Https,
                "http" => Scheme::Http,
                "git" => Scheme::Git,
                "ssh" => Scheme::Ssh,
                other => {
                    return Err(RepoUrlError::UnsupportedScheme {
                        scheme: other.to_string(),
                    })
                }
            };
            let mut parsed = url::Url::parse(repo).map_err(|e| RepoUrlError::Invalid {
                reason: e.to_string(),
            })?;
            if parsed.password().is_some() {
                // Cannot fail for a URL with a host, which one with a
                // password has.
                let _ = parsed.set_password(None);
                return Err(RepoUrlError::PasswordInUrl {
                    url: parsed.to_string(),
                });
            }
            let host = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| RepoUrlError::Invalid {
                    reason: "no host".into(),
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if parsed.path().trim_matches('/').is_empty() {
                return Err(RepoUrlError::Invalid {
                    reason: format!("no repository path after the host {host}"),
                });
            }
            let user = Some(parsed.username())
                .filter(|u| !u.is_empty())
                .map(str::to_string);
            return Ok(RemoteUrl {
                url: parsed.to_string(),
                scheme,
                host,
                port: parsed.port(),
                user,
            });
        }
        let (user, host, _path) = scp_like(repo).ok_or_else(|| RepoUrlError::Invalid {
            reason: "neither scheme://host/path nor [user@]host:path".into(),
        })?;
        Ok(RemoteUrl {
            url: repo.to_string(),
            scheme: Scheme::Ssh,
            host: host.to_string(),
            port: None,
            user: user.map(str::to_string),
        })
    }

    /// The URL, as given to git (no password).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The transport.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port connected to (the scheme's default when none is given).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
            Scheme::Git => 9418,
            Scheme::Ssh => 22,
        })
    }

    /// The user name in the URL, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteUrl({})", self.url)
    }
}

/// `[user@]host:path` with no slash before the colon, as git reads it.
fn scp_like(repo: &str) -> Option<(Option<&str>, &str, &str)> {
    let (left, path) = repo.split_once(':')?;
    if left.contains('/') || path.is_empty() || path.starts_with("//") {
        return None;
    }
    let (user, host) = match left.rsplit_once('@') {
        Some((u, h)) => (Some(u).filter(|u| !u.is_empty()), h),
        None => (None, left),
    };
    (!host.is_empty()).then_some((user, host, path))
}

/// Why a repository URL cannot be used; the CLI can match on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoUrlError {
    /// A scheme git2 is not built for here.
    #[error("unsupported repository URL scheme {scheme}:// (use https, http, git or ssh)")]
    UnsupportedScheme { scheme: String },
    /// Credentials must come from files, so they never reach logs.
    #[error(
        "the repository URL {url} carries a password: put it in a token or password file instead"
    )]
    PasswordInUrl {
        /// The URL without its password.
        url: String,
    },
    /// Not a URL (the reason does not repeat it, in case it holds a secret).
    #[error("invalid repository URL: {reason}")]
    Invalid { reason: String },
}

/// A commit's metadata and manifest files.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub commit: CommitInfo,
    /// `(path in repository, content)` of each manifest file, sorted.
    pub files: Vec<(String, Vec<u8>)>,
}

/// What a fetch found: the followed ref and where it pointed before and
/// after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// The full ref fetched (`refs/heads/main`).
    pub refname: String,
    /// The mirror's commit before the fetch (`None`: first fetch).
    pub before: Option<String>,
    /// The commit now.
    pub after: String,
}

impl FetchOutcome {
    /// Whether the branch moved (or appeared).
    pub fn moved(&self) -> bool {
        self.before.as_deref() != Some(self.after.as_str())
    }
}

/// Reads commits of one branch of one repository.
#[derive(Debug, Clone)]
pub struct GitSource {
    config: GitSourceConfig,
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Local(PathBuf),
    Remote(Arc<Remote>),
    /// The configuration cannot work; the reason is reported on use.
    Invalid(String),
}

impl GitSource {
    /// A source for `config`; nothing is opened or fetched until used.
    pub fn new(config: GitSourceConfig) -> GitSource {
        let backend = match config.location() {
            Ok(RepoLocation::Local(path)) => Backend::Local(path),
            Ok(RepoLocation::Remote(url)) => match &config.remote.mirror_dir {
                Some(dir) => Backend::Remote(Arc::new(Remote::new(url, dir, &config))),
                None => Backend::Invalid(format!(
                    "the remote repository {url} needs a mirror folder (RemoteOptions::mirror_dir)"
                )),
            },
            Err(e) => Backend::Invalid(e.to_string()),
        };
        GitSource { config, backend }
    }

    /// The private mirror a remote is fetched into (`None` for a local
    /// repository).
    pub fn mirror_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Remote(r) => Some(&r.mirror),
            _ => None,
        }
    }

    /// The followed branch's head commit id. For a remote, the mirror's
    /// after the last fetch; the first call fetches, and when that fails
    /// the mirror's head from an earlier run is used (with a warning) if it
    /// has one.
    pub async fn head(&self) -> anyhow::Result<String> {
        match &self.backend {
            Backend::Local(path) => {
                let path = path.clone();
                let (branch, tags) = (self.config.branch.clone(), self.config.tags.clone());
                tokio::task::spawn_blocking(move || {
                    head_blocking(&path, branch.as_deref(), tags.as_deref())
                })
                .await?
            }
            Backend::Remote(remote) => remote.head().await,
            Backend::Invalid(e) => Err(anyhow!("{e}")),
        }
    }

    /// Fetches a remote now and says whether the branch moved; `None` for a
    /// local repository (nothing to fetch).
    pub async fn fetch(&self) -> anyhow::Result<Option<FetchOutcome>> {
        match &self.backend {
            Backend::Local(_) => Ok(None),
            Backend::Remote(remote) => remote.fetch(&CancellationToken::new()).await.map(Some),
            Backend::Invalid(e) => Err(anyhow!("{e}")),
        }
    }

    /// The metadata and manifest files of a commit. For a remote whose
    /// shallow mirror lacks an older commit (one applied before a
    /// restart), the branch's history is fetched once in full to find it.
    pub async fn snapshot(&self, sha: &str) -> anyhow::Result<Snapshot> {
        match &self.backend {
            Backend::Local(path) => {
                let (path, sub, sha) = (path.clone(), self.config.path.clone(), sha.to_string());
                tokio::task::spawn_blocking(move || snapshot_blocking(&path, &sub, &sha)).await?
            }
            Backend::Remote(remote) => remote.snapshot(&self.config.path, sha).await,
            Backend::Invalid(e) => Err(anyhow!("{e}")),
        }
    }

    /// The object whose signature vouches for `head`: the annotated tag
    /// followed, when tags are followed and it names `head`, else the
    /// commit itself.
    pub async fn signed_object(&self, head: &str) -> anyhow::Result<Signed> {
        let commit = git2::Oid::from_str(head).with_context(|| format!("bad commit id {head}"))?;
        let Some(pattern) = self.config.tags.clone() else {
            return Ok(Signed::Commit(commit));
        };
        self.with_repository(move |repo| {
            Ok(match tags::newest(repo, &pattern)? {
                Some(TagHead {
                    commit: named,
                    tag: Some(tag),
                    ..
                }) if named == commit => Signed::Tag(tag),
                _ => Signed::Commit(commit),
            })
        })
        .await
    }

    /// Runs `read` on the repository (a local one, or a remote's mirror as
    /// last fetched) on a blocking thread: for checks such as signature
    /// verification that need the objects themselves.
    pub async fn with_repository<T, F>(&self, read: F) -> anyhow::Result<T>
    where
        F: FnOnce(&git2::Repository) -> anyhow::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let path = match &self.backend {
            Backend::Local(path) => path.clone(),
            Backend::Remote(remote) => remote.mirror.clone(),
            Backend::Invalid(e) => return Err(anyhow!("{e}")),
        };
        tokio::task::spawn_blocking(move || read(&open(&path)?)).await?
    }

    /// Whether `ancestor` is in the history of `descendant` (a commit is
    /// its own ancestor): `Some(false)` after a rewrite of the branch
    /// (force-push). For a remote whose shallow mirror cannot tell, its
    /// branch's whole history is fetched once; `None` when the history
    /// still stops before an answer.
    pub async fn is_ancestor(
        &self,
        ancestor: &str,
        descendant: &str,
    ) -> anyhow::Result<Option<bool>> {
        let (ancestor, descendant) = (ancestor.to_string(), descendant.to_string());
        match &self.backend {
            Backend::Local(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    is_ancestor_blocking(&open(&path)?, &ancestor, &descendant)
                })
                .await?
            }
            Backend::Remote(remote) => remote.is_ancestor(&ancestor, &descendant).await,
            Backend::Invalid(e) => Err(anyhow!("{e}")),
        }
    }

    /// Sends a unit whenever the branch may have moved, until `cancel`
    /// fires. Spurious wake-ups are fine: the receiver compares heads.
    ///
    /// A local repository is watched with `notify` and polled every
    /// `poll_interval`. A remote is fetched at once, then every
    /// `poll_interval` and on each webhook push; only a fetch that moved
    /// the branch wakes the receiver. The webhook receiver, if configured,
    /// is bound before this returns (a bind error is returned).
    pub async fn watch(&self, cancel: CancellationToken) -> anyhow::Result<mpsc::Receiver<()>> {
        let (tx, rx) = mpsc::channel(1);
        // Bound first: a taken port is an error before anything started,
        // and nothing keeps the port when a later step fails.
        let server = match &self.config.webhook {
            Some(config) => Some(WebhookServer::bind(config).await?),
            None => None,
        };
        let serve = |followed, trigger| {
            if let Some(server) = server {
                info!(
                    addr = %server.local_addr(),
                    repo = %self.config.repo_display(),
                    "serving push webhooks"
                );
                let target = PushTarget { followed, trigger };
                tokio::spawn(server.serve(target, cancel.clone()));
            }
        };
        match &self.backend {
            Backend::Local(path) => {
                watch_local(path, self.config.poll_interval, tx.clone(), cancel.clone()).await?;
                // Any push may bring a new tag.
                let followed = match self.config.tags {
                    Some(_) => None,
                    None => self.config.branch.as_deref().map(full_ref),
                };
                serve(watch::channel(followed).1, tx);
            }
            Backend::Remote(remote) => {
                let (trigger_tx, trigger_rx) = mpsc::channel(1);
                serve(remote.followed.subscribe(), trigger_tx.clone());
                let remote = remote.clone();
                let interval = self.config.poll_interval.max(Duration::from_secs(1));
                let span = info_span!("git_remote", url = %remote.url);
                let cancel = cancel.clone();
                tokio::spawn(
                    async move {
                        // Held so the trigger channel stays open without a webhook.
                        let _keep = trigger_tx;
                        fetch_loop(&remote, interval, trigger_rx, tx, cancel).await;
                    }
                    .instrument(span),
                );
            }
            Backend::Invalid(e) => bail!("{e}"),
        }
        Ok(rx)
    }
}

/// Watches a local repository's refs; sends on `tx` on changes and polls.
async fn watch_local(
    repo: &Path,
    interval: Duration,
    tx: mpsc::Sender<()>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let repo = repo.to_path_buf();
    let git_dir = tokio::task::spawn_blocking(move || git_dir(&repo)).await??;
    let notify_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = notify_tx.try_send(());
        }
    })
    .context("starting the file watcher")?;
    // Refs move by rename into refs/heads/… or by rewriting packed-refs
    // and HEAD, all inside the git directory.
    for p in [git_dir.join("refs"), git_dir.clone()] {
        let mode = if p.ends_with("refs") {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher
            .watch(&p, mode)
            .with_context(|| format!("watching {}", p.display()))?;
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {
                    let _ = tx.try_send(());
                }
            }
        }
    });
    Ok(())
}

/// Fetches a remote at once, then on every poll tick and trigger, until
/// `cancel`; wakes `wake` when the branch moved. Failures are retried with
/// back-off and logged once per distinct error.
async fn fetch_loop(
    remote: &Remote,
    interval: Duration,
    mut triggers: mpsc::Receiver<()>,
    wake: mpsc::Sender<()>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), interval.min(MAX_FETCH_BACKOFF));
    let mut last_error: Option<String> = None;
    let mut delay = Duration::ZERO;
    loop {
        let why = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = triggers.recv() => "webhook",
            _ = tokio::time::sleep(delay) => "poll",
        };
        debug!(why, "fetching");
        match remote.fetch(&cancel).await {
            Ok(outcome) => {
                if last_error.take().is_some() {
                    info!("fetching works again");
                }
                backoff.reset();
                delay = interval;
                if outcome.moved() {
                    let _ = wake.try_send(());
                }
            }
            Err(_) if cancel.is_cancelled() => return,
            Err(e) => {
                let text = format!("{e:#}");
                if last_error.as_deref() != Some(&text) {
                    warn!(error = %text, "cannot fetch the repository; retrying with back-off");
                    last_error = Some(text);
                }
                delay = backoff.next_delay();
            }
        }
    }
}

/// A remote repository and its mirror.
#[derive(Debug)]
struct Remote {
    url: RemoteUrl,
    mirror: PathBuf,
    /// The configured branch as a full ref (`None`: the remote's default).
    branch: Option<String>,
    /// The tag glob followed instead of a branch.
    tags: Option<String>,
    options: RemoteOptions,
    /// One fetch at a time; what the fetches learnt.
    state: tokio::sync::Mutex<FetchState>,
    /// Held by the thread running a fetch, which may outlive an abandoned
    /// (timed out or cancelled) fetch: a new fetch waits for none.
    running: Arc<StdMutex<()>>,
    /// The full ref followed, once known (for the webhook's branch filter).
    followed: watch::Sender<Option<String>>,
}

#[derive(Debug, Default)]
struct FetchState {
    /// Whether `head` fetched once already (later fetches are the watch's).
    attempted: bool,
    /// The followed ref once resolved (the remote's default branch when
    /// none is configured).
    refname: Option<String>,
    /// Whether the mirror's history was completed once to find an old
    /// commit.
    deepened: bool,
}

impl Remote {
    fn new(url: RemoteUrl, mirror_dir: &Path, config: &GitSourceConfig) -> Remote {
        let digest = Sha256::digest(url.as_str().as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let branch = config.branch.as_deref().map(full_ref);
        let (followed, _) = watch::channel(branch.clone());
        Remote {
            mirror: mirror_dir.join(name),
            url,
            branch,
            tags: config.tags.clone(),
            options: config.remote.clone(),
            state: tokio::sync::Mutex::new(FetchState::default()),
            running: Arc::new(StdMutex::new(())),
            followed,
        }
    }

    async fn head(&self) -> anyhow::Result<String> {
        let mut state = self.state.lock().await;
        let known = self.mirror_head(&state).await?;
        if let (true, Some(head)) = (state.attempted, &known) {
            return Ok(head.clone());
        }
        state.attempted = true;
        match self
            .fetch_locked(&mut state, false, &CancellationToken::new())
            .await
        {
            Ok(outcome) => Ok(outcome.after),
            Err(e) => match known {
                Some(head) => {
                    warn!(
                        url = %self.url,
                        error = %format!("{e:#}"),
                        commit = %short(&head),
                        "cannot fetch the repository; using the head fetched before"
                    );
                    Ok(head)
                }
                None => Err(e),
            },
        }
    }

    /// The mirror's commit of the followed ref, if it has one.
    async fn mirror_head(&self, state: &FetchState) -> anyhow::Result<Option<String>> {
        let mirror = self.mirror.clone();
        let refname = state.refname.clone().or_else(|| self.branch.clone());
        let tags = self.tags.clone();
        tokio::task::spawn_blocking(move || {
            if !mirror.join("HEAD").exists() {
                return Ok(None);
            }
            let repo = git2::Repository::open_bare(&mirror)
                .with_context(|| format!("opening the mirror {}", mirror.display()))?;
            if let Some(pattern) = tags {
                return Ok(tags::newest(&repo, &pattern)?.map(|t| t.commit.to_string()));
            }
            let refname = match refname {
                Some(r) => r,
                None => match repo
                    .find_reference("HEAD")
                    .ok()
                    .and_then(|h| h.symbolic_target().map(str::to_string))
                {
                    Some(r) => r,
                    None => return Ok(None),
                },
            };
            Ok(repo.refname_to_id(&refname).ok().map(|id| id.to_string()))
        })
        .await?
    }

    async fn fetch(&self, cancel: &CancellationToken) -> anyhow::Result<FetchOutcome> {
        let mut state = self.state.lock().await;
        state.attempted = true;
        self.fetch_locked(&mut state, false, cancel).await
    }

    /// One fetch into the mirror (`deepen`: the branch's whole history),
    /// abandoned after the fetch timeout or on `cancel`.
    async fn fetch_locked(
        &self,
        state: &mut FetchState,
        deepen: bool,
        cancel: &CancellationToken,
    ) -> anyhow::Result<FetchOutcome> {
        let abort = Arc::new(AtomicBool::new(false));
        let job = FetchJob {
            url: self.url.clone(),
            mirror: self.mirror.clone(),
            refname: state.refname.clone().or_else(|| self.branch.clone()),
            tags: self.tags.clone(),
            options: self.options.clone(),
            deepen,
            abort: abort.clone(),
            running: self.running.clone(),
        };
        let timeout = self.options.fetch_timeout.unwrap_or(DEFAULT_FETCH_TIMEOUT);
        let span = info_span!(
            "git_fetch",
            url = %self.url,
            branch = job.refname.as_deref().unwrap_or("(remote default)"),
        );
        let task = tokio::task::spawn_blocking(move || span.in_scope(|| job.run()));
        let result = tokio::select! {
            joined = task => joined.context("fetch task failed")?,
            _ = tokio::time::sleep(timeout) => {
                abort.store(true, Ordering::Relaxed);
                bail!("fetching from {} took longer than {timeout:?}; abandoned", self.url)
            }
            _ = cancel.cancelled() => {
                abort.store(true, Ordering::Relaxed);
                bail!("fetching from {} was cancelled", self.url)
            }
        };
        let outcome = result?;
        // With tags, every push may bring a new one: no ref filter.
        if self.tags.is_none() && state.refname.as_deref() != Some(outcome.refname.as_str()) {
            state.refname = Some(outcome.refname.clone());
            self.followed.send_replace(Some(outcome.refname.clone()));
        }
        if outcome.moved() {
            info!(
                url = %self.url,
                branch = %outcome.refname,
                from = outcome.before.as_deref().map(short).unwrap_or("none"),
                to = %short(&outcome.after),
                commit = %outcome.after,
                "fetched a new head"
            );
        } else {
            debug!(url = %self.url, commit = %short(&outcome.after), "fetched; no new commit");
        }
        Ok(outcome)
    }

    async fn snapshot(&self, sub: &str, sha: &str) -> anyhow::Result<Snapshot> {
        let read = || {
            let (mirror, sub, sha) = (self.mirror.clone(), sub.to_string(), sha.to_string());
            tokio::task::spawn_blocking(move || {
                let missing = !has_commit(&mirror, &sha);
                (missing, snapshot_blocking(&mirror, &sub, &sha))
            })
        };
        let (missing, result) = read().await?;
        if !missing {
            return result;
        }
        let mut state = self.state.lock().await;
        if state.deepened {
            return result.with_context(|| {
                format!(
                    "commit {sha} is not in the history of the branch fetched from {}",
                    self.url
                )
            });
        }
        state.deepened = true;
        info!(url = %self.url, commit = %sha, "commit not in the shallow mirror; fetching the branch's whole history");
        self.fetch_locked(&mut state, true, &CancellationToken::new())
            .await?;
        drop(state);
        read().await?.1
    }
}

impl Remote {
    async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> anyhow::Result<Option<bool>> {
        let ask = || {
            let (mirror, a, d) = (
                self.mirror.clone(),
                ancestor.to_string(),
                descendant.to_string(),
            );
            tokio::task::spawn_blocking(move || {
                let repo = git2::Repository::open_bare(&mirror)
                    .with_context(|| format!("opening the mirror {}", mirror.display()))?;
                is_ancestor_blocking(&repo, &a, &d)
            })
        };
        if let Some(answer) = ask().await?? {
            return Ok(Some(answer));
        }
        let mut state = self.state.lock().await;
        if state.deepened {
            return Ok(None);
        }
        state.deepened = true;
        info!(url = %self.url, "history too shallow to compare commits; fetching the branch's whole history");
        self.fetch_locked(&mut state, true, &CancellationToken::new())
            .await?;
        drop(state);
        ask().await?
    }
}

/// Walks the history of `descendant` looking for `ancestor`, stopping at
/// a shallow repository's boundary (libgit2's own graph walks fail there):
/// `None` when the walk stopped there without finding it.
fn is_ancestor_blocking(
    repo: &git2::Repository,
    ancestor: &str,
    descendant: &str,
) -> anyhow::Result<Option<bool>> {
    let ancestor =
        git2::Oid::from_str(ancestor).with_context(|| format!("bad commit id {ancestor}"))?;
    let descendant =
        git2::Oid::from_str(descendant).with_context(|| format!("bad commit id {descendant}"))?;
    // The commits whose parents a shallow fetch left out.
    let shallow: std::collections::HashSet<git2::Oid> =
        std::fs::read_to_string(repo.path().join("shallow"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| git2::Oid::from_str(l.trim()).ok())
            .collect();
    let mut seen = std::collections::HashSet::new();
    let mut queue = std::collections::VecDeque::from([descendant]);
    let mut cut = false;
    while let Some(id) = queue.pop_front() {
        if id == ancestor {
            return Ok(Some(true));
        }
        if !seen.insert(id) {
            continue;
        }
        let Ok(commit) = repo.find_commit(id) else {
            cut = true;
            continue;
        };
        if shallow.contains(&id) {
            cut = true;
            continue;
        }
        queue.extend(commit.parent_ids());
    }
    Ok(if cut { None } else { Some(false) })
}

/// One fetch, run on a blocking thread.
struct FetchJob {
    url: RemoteUrl,
    mirror: PathBuf,
    refname: Option<String>,
    tags: Option<String>,
    options: RemoteOptions,
    deepen: bool,
    abort: Arc<AtomicBool>,
    running: Arc<StdMutex<()>>,
}

impl FetchJob {
    fn run(self) -> anyhow::Result<FetchOutcome> {
        let _running = self.running.try_lock().map_err(|_| {
            anyhow!(
                "an earlier, abandoned fetch from {} is still running",
                self.url
            )
        })?;
        let repo = open_or_init_mirror(&self.mirror)?;
        let ctx = CallbackContext::new(&self.url, &self.options, self.abort.clone())?;
        let mut remote = repo
            .remote_anonymous(self.url.as_str())
            .with_context(|| format!("setting up the remote {}", self.url))?;
        if let Some(pattern) = &self.tags {
            return self.fetch_tags(&repo, &mut remote, &ctx, pattern);
        }
        let refname = match &self.refname {
            Some(r) => r.clone(),
            None => {
                let branch = {
                    let connection = remote
                        .connect_auth(git2::Direction::Fetch, Some(ctx.callbacks()), None)
                        .map_err(|e| ctx.error(e))
                        .with_context(|| format!("connecting to {}", self.url))?;
                    let head = connection.default_branch().with_context(|| {
                        format!(
                            "{} names no default branch; configure the branch to follow",
                            self.url
                        )
                    })?;
                    head.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow!("{}: default branch name is not UTF-8", self.url))?
                };
                // Remembered so a later run without network still knows
                // which ref it followed.
                repo.set_head(&branch)
                    .with_context(|| format!("recording {branch} as the mirror's HEAD"))?;
                branch
            }
        };
        let before = repo.refname_to_id(&refname).ok();
        let mut options = git2::FetchOptions::new();
        options
            .remote_callbacks(ctx.callbacks())
            .download_tags(git2::AutotagOption::None)
            .update_fetchhead(false);
        if self.deepen {
            // libgit2's GIT_FETCH_DEPTH_UNSHALLOW.
            options.depth(i32::MAX);
        } else if before.is_none() {
            options.depth(1);
        }
        let refspec = format!("+{refname}:{refname}");
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(|e| ctx.error(e))
            .with_context(|| format!("fetching {refname} from {}", self.url))?;
        let after = repo
            .refname_to_id(&refname)
            .map_err(|_| anyhow!("{} has no branch {refname}", self.url))?;
        Ok(FetchOutcome {
            refname,
            before: before.map(|id| id.to_string()),
            after: after.to_string(),
        })
    }
}

impl FetchJob {
    /// Fetches the tags matching `pattern` (each shallow the first time),
    /// and says which is the newest now.
    fn fetch_tags(
        &self,
        repo: &git2::Repository,
        remote: &mut git2::Remote<'_>,
        ctx: &CallbackContext,
        pattern: &str,
    ) -> anyhow::Result<FetchOutcome> {
        let before = tags::newest(repo, pattern)?;
        let mut options = git2::FetchOptions::new();
        options
            .remote_callbacks(ctx.callbacks())
            .download_tags(git2::AutotagOption::None)
            .update_fetchhead(false);
        if self.deepen {
            options.depth(i32::MAX);
        } else if before.is_none() {
            options.depth(1);
        }
        let refspec = format!("+refs/tags/{pattern}:refs/tags/{pattern}");
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(|e| ctx.error(e))
            .with_context(|| format!("fetching the tags {pattern} from {}", self.url))?;
        let after = tags::newest(repo, pattern)?.ok_or_else(|| {
            anyhow!(
                "{} has no tag matching {pattern} with a semantic version",
                self.url
            )
        })?;
        Ok(FetchOutcome {
            refname: after.refname,
            before: before.map(|t| t.commit.to_string()),
            after: after.commit.to_string(),
        })
    }
}

/// Opens the mirror, creating it (and its parent) with mode 0700 as
/// needed; a mirror that cannot be opened is made again.
fn open_or_init_mirror(dir: &Path) -> anyhow::Result<git2::Repository> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating the mirror folder {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("creating the mirror {}", dir.display()));
        }
    }
    // Also when it existed: the mirror may hold private content.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making the mirror {} private", dir.display()))?;
    if dir.join("HEAD").exists() {
        match git2::Repository::open_bare(dir) {
            Ok(repo) => return Ok(repo),
            Err(e) => {
                warn!(mirror = %dir.display(), error = %e, "the mirror is damaged; fetching it again");
                for entry in std::fs::read_dir(dir)
                    .with_context(|| format!("reading the mirror {}", dir.display()))?
                {
                    let path = entry?.path();
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.with_context(|| format!("removing {}", path.display()))?;
                }
            }
        }
    }
    let mut init = git2::RepositoryInitOptions::new();
    init.bare(true).mkdir(false);
    git2::Repository::init_opts(dir, &init)
        .with_context(|| format!("creating the mirror {}", dir.display()))
}

fn has_commit(repo: &Path, sha: &str) -> bool {
    let Ok(oid) = git2::Oid::from_str(sha) else {
        return false;
    };
    git2::Repository::open_bare(repo).is_ok_and(|r| r.find_commit(oid).is_ok())
}

/// Credentials read from their files for one fetch; `Debug` hides them.
struct Credentials {
    http: Option<HttpSecret>,
    ssh_key: Option<PathBuf>,
    ssh_passphrase: Option<String>,
}

enum HttpSecret {
    Token(String),
    Password(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("http", &self.http.as_ref().map(|_| "<redacted>"))
            .field("ssh_key", &self.ssh_key)
            .field(
                "ssh_passphrase",
                &self.ssh_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    fn load(options: &RemoteOptions) -> anyhow::Result<Credentials> {
        let http = match (&options.token_file, &options.password_file) {
            (Some(_), Some(_)) => {
                bail!("configure a token file or a password file, not both")
            }
            (Some(t), None) => Some(HttpSecret::Token(read_secret(t, "token")?)),
            (None, Some(p)) => Some(HttpSecret::Password(read_secret(p, "password")?)),
            (None, None) => None,
        };
        if let Some(key) = &options.ssh_key_file {
            std::fs::metadata(key)
                .with_context(|| format!("reading the SSH key file {}", key.display()))?;
        }
        let ssh_passphrase = options
            .ssh_passphrase_file
            .as_deref()
            .map(|p| read_secret(p, "SSH passphrase"))
            .transpose()?;
        Ok(Credentials {
            http,
            ssh_key: options.ssh_key_file.clone(),
            ssh_passphrase,
        })
    }
}

/// A secret file's content without the trailing newline; the error names
/// the file, never the content.
fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} file {}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(secret)
}

/// What the git2 callbacks of one fetch share: credentials, the host key
/// check, the abort flag, and why a callback refused (libgit2's own
/// message for that is vague).
struct CallbackContext<'a> {
    url: &'a RemoteUrl,
    options: &'a RemoteOptions,
    credentials: Credentials,
    abort: Arc<AtomicBool>,
    ssh_tries: Cell<u32>,
    password_tries: Cell<u32>,
    refusal: RefCell<Option<String>>,
}

impl<'a> CallbackContext<'a> {
    fn new(
        url: &'a RemoteUrl,
        options: &'a RemoteOptions,
        abort: Arc<AtomicBool>,
    ) -> anyhow::Result<CallbackContext<'a>> {
        let credentials = Credentials::load(options)?;
        if url.scheme() == Scheme::Http && credentials.http.is_some() {
            debug!(url = %url, "credentials may be sent over plain HTTP");
        }
        Ok(CallbackContext {
            url,
            options,
            credentials,
            abort,
            ssh_tries: Cell::new(0),
            password_tries: Cell::new(0),
            refusal: RefCell::new(None),
        })
    }

    fn callbacks(&self) -> git2::RemoteCallbacks<'_> {
        let mut cb = git2::RemoteCallbacks::new();
        cb.credentials(|_url, url_user, allowed| self.credential(url_user, allowed));
        cb.certificate_check(|cert, host| self.check_certificate(cert, host));
        cb.transfer_progress(|_| !self.abort.load(Ordering::Relaxed));
        cb.sideband_progress(|_| !self.abort.load(Ordering::Relaxed));
        cb
    }

    fn refuse(&self, message: String) -> git2::Error {
        let error = git2::Error::from_str(&message);
        *self.refusal.borrow_mut() = Some(message);
        error
    }

    /// The error of a failed git2 call: the callback's reason if one
    /// refused.
    fn error(&self, e: git2::Error) -> anyhow::Error {
        match self.refusal.borrow_mut().take() {
            Some(reason) => anyhow!("{reason}"),
            None if self.abort.load(Ordering::Relaxed) => anyhow!("abandoned"),
            None => anyhow!("{}", e.message()),
        }
    }

    fn credential(
        &self,
        url_user: Option<&str>,
        allowed: git2::CredentialType,
    ) -> Result<git2::Cred, git2::Error> {
        let configured_user = self.options.username.as_deref();
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            let tries = self.ssh_tries.get() + 1;
            self.ssh_tries.set(tries);
            if tries > CREDENTIAL_TRIES {
                return Err(self.refuse(format!("{} refused the SSH key", self.url)));
            }
            let Some(key) = &self.credentials.ssh_key else {
                return Err(self.refuse(format!(
                    "{} asks for an SSH key; configure an SSH key file",
                    self.url
                )));
            };
            let user = configured_user.or(url_user).unwrap_or("git");
            return git2::Cred::ssh_key(
                user,
                None,
                key,
                self.credentials.ssh_passphrase.as_deref(),
            );
        }
        if allowed.contains(git2::CredentialType::USERNAME) {
            return git2::Cred::username(configured_user.or(url_user).unwrap_or("git"));
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            let tries = self.password_tries.get() + 1;
            self.password_tries.set(tries);
            if tries > CREDENTIAL_TRIES {
                return Err(self.refuse(format!("{} refused the credentials", self.url)));
            }
            let user = configured_user.or(url_user).or(self.url.user());
            return match &self.credentials.http {
                Some(HttpSecret::Token(token)) => {
                    git2::Cred::userpass_plaintext(user.unwrap_or(TOKEN_USERNAME), token)
                }
                Some(HttpSecret::Password(password)) => match user {
                    Some(user) => git2::Cred::userpass_plaintext(user, password),
                    None => Err(self.refuse(format!(
                        "a password for {} needs a user name (in the URL or configured)",
                        self.url
                    ))),
                },
                None => Err(self.refuse(format!(
                    "{} asks for credentials; configure a token file or a password file",
                    self.url
                ))),
            };
        }
        Err(self.refuse(format!(
            "{} asks for an unsupported kind of credentials ({allowed:?})",
            self.url
        )))
    }

    fn check_certificate(
        &self,
        cert: &git2::cert::Cert<'_>,
        host: &str,
    ) -> Result<git2::CertificateCheckStatus, git2::Error> {
        let Some(hostkey) = cert.as_hostkey() else {
            // TLS: OpenSSL's verification against the system's CAs decides.
            return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
        };
        let Some(key) = hostkey.hostkey() else {
            return Err(self.refuse(format!("the SSH server {host} gave no host key to check")));
        };
        let key_type = known_hosts::key_type(key)
            .map(str::to_string)
            .or_else(|| hostkey.hostkey_type().map(|t| t.name().to_string()))
            .unwrap_or_else(|| "unknown".into());
        let path = match &self.options.known_hosts_file {
            Some(p) => p.clone(),
            None => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(".ssh/known_hosts"),
                None => {
                    return Err(self.refuse(
                        "no known_hosts file configured and no HOME to find ~/.ssh/known_hosts"
                            .into(),
                    ))
                }
            },
        };
        let contents = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) => {
                return Err(self.refuse(format!(
                    "cannot check the host key of {host}: reading known_hosts {}: {e}",
                    path.display()
                )))
            }
        };
        let port = self.url.port();
        match known_hosts::check(&contents, host, port, &key_type, key) {
            known_hosts::Verdict::Match => {
                debug!(host, key_type, "SSH host key matches known_hosts");
                Ok(git2::CertificateCheckStatus::CertificateOk)
            }
            verdict => Err(self.refuse(verdict.explain(host, port, &key_type, key, &path))),
        }
    }
}

/// Matching SSH host keys against an OpenSSH known_hosts file: plain and
/// hashed (`|1|salt|hash`) host names, `[host]:port`, `*`/`?` patterns and
/// `!` negations, and `@revoked` keys (`@cert-authority` lines are
/// skipped: host certificates are not supported).
pub(crate) mod known_hosts {
    use std::path::Path;

    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    /// What known_hosts says about a host's key.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Verdict {
        Match,
        Unknown,
        Revoked,
        /// A key of the same type is listed for the host, but not this one.
        Changed,
        /// Only keys of other types are listed for the host.
        OtherTypes(Vec<String>),
    }

    impl Verdict {
        /// The error message for a refused key.
        pub(crate) fn explain(
            &self,
            host: &str,
            port: u16,
            key_type: &str,
            key: &[u8],
            path: &Path,
        ) -> String {
            let name = lookup_name(host, port);
            let fp = fingerprint(key);
            let file = path.display();
            match self {
                Verdict::Match => format!("{name} matches {file}"),
                Verdict::Unknown => format!(
                    "the SSH host {name} is not in the known_hosts file {file}: check its key \
                     ({key_type} {fp}) and add it, e.g. with `ssh-keyscan -p {port} {host} >> {file}`"
                ),
                Verdict::Revoked => format!(
                    "the SSH host key of {name} ({key_type} {fp}) is marked @revoked in {file}"
                ),
                Verdict::Changed => format!(
                    "the SSH host key of {name} ({key_type} {fp}) does not match the one in {file}: \
                     it was replaced, or someone is intercepting the connection; refusing to connect"
                ),
                Verdict::OtherTypes(types) => format!(
                    "{file} lists {} keys for {name}, but the server offered {key_type} {fp}; \
                     add that key if its fingerprint is right",
                    types.join(", ")
                ),
            }
        }
    }

    /// The name known_hosts lists a host under: `[host]:port` unless the
    /// port is 22.
    fn lookup_name(host: &str, port: u16) -> String {
        if port == 22 {
            host.to_ascii_lowercase()
        } else {
            format!("[{}]:{port}", host.to_ascii_lowercase())
        }
    }

    /// OpenSSH's `SHA256:…` fingerprint of a key blob.
    pub(crate) fn fingerprint(key: &[u8]) -> String {
        format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(key)))
    }

    /// The type name at the start of an SSH public key blob.
    pub(crate) fn key_type(blob: &[u8]) -> Option<&str> {
        let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
        std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
    }

    /// Looks `key` (a raw SSH key blob of `key_type`) up for `host:port`.
    pub(crate) fn check(
        contents: &str,
        host: &str,
        port: u16,
        key_type: &str,
        key: &[u8],
    ) -> Verdict {
        let name = lookup_name(host, port);
        let (mut matched, mut changed) = (false, false);
        let mut other_types: Vec<String> = Vec::new();
        for line in contents.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let Some(mut first) = fields.next() else {
                continue;
            };
            let marker = if first.starts_with('@') {
                let m = first;
                let Some(next) = fields.next() else {
                    continue;
                };
                first = next;
                Some(m)
            } else {
                None
            };
            let (Some(line_type), Some(line_key)) = (fields.next(), fields.next()) else {
                continue;
            };
            if !hosts_match(first, &name) {
                continue;
            }
            let Ok(line_key) = STANDARD.decode(line_key) else {
                continue;
            };
            match marker {
                Some("@revoked") => {
                    if line_key == key {
                        return Verdict::Revoked;
                    }
                }
                Some(_) => {}
                None if line_type == key_type => {
                    if line_key == key {
                        matched = true;
                    } else {
                        changed = true;
                    }
                }
                None => {
                    if !other_types.iter().any(|t| t == line_type) {
                        other_types.push(line_type.to_string());
                    }
                }
            }
        }
        if matched {
            Verdict::Match
        } else if changed {
            Verdict::Changed
        } else if !other_types.is_empty() {
            Verdict::OtherTypes(other_types)
        } else {
            Verdict::Unknown
        }
    }

    /// Whether a known_hosts host field names `name`.
    fn hosts_match(field: &str, name: &str) -> bool {
        if let Some(hashed) = field.strip_prefix("|1|") {
            return hashed_match(hashed, name);
        }
        let mut matched = false;
        for pattern in field.split(',') {
            let (negated, pattern) = match pattern.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, pattern),
            };
            if glob(pattern.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
                if negated {
                    return false;
                }
                matched = true;
            }
        }
        matched
    }

    /// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
    fn hashed_match(field: &str, name: &str) -> bool {
        let Some((salt, hash)) = field.split_once('|') else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
            return false;
        };
        mac.update(name.as_bytes());
        mac.verify_slice(&hash).is_ok()
    }

    /// `*` (any run) and `?` (one byte) patterns.
    fn glob(pattern: &[u8], text: &[u8]) -> bool {
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
                p += 1;
                t += 1;
            } else if p < pattern.len() && pattern[p] == b'*' {
                star = Some((p, t));
                p += 1;
            } else if let Some((sp, st)) = star {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        pattern[p..].iter().all(|&c| c == b'*')
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A fake key blob of `key_type`, as SSH encodes public keys.
        fn blob(key_type: &str, body: &[u8]) -> Vec<u8> {
            let mut b = (key_type.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(key_type.as_bytes());
            b.extend_from_slice(body);
            b
        }

        fn line(hosts: &str, key: &[u8]) -> String {
            format!(
                "{hosts} {} {}",
                key_type(key).expect("type"),
                STANDARD.encode(key)
            )
        }

        #[test]
        fn plain_ported_and_patterned_names_match() {
            let key = blob("ssh-ed25519", b"good");
            let file = [
                "# comment",
                "",
                &line("git.example.com,10.0.0.1", &key),
                &line("[git.example.com]:2222", &key),
                &line("*.corp.example,!bad.corp.example", &key),
            ]
            .join("\n");
            let check = |host, port| check(&file, host, port, "ssh-ed25519", &key);
            assert_eq!(check("git.example.com", 22), Verdict::Match);
            assert_eq!(check("GIT.example.com", 22), Verdict::Match);
            assert_eq!(check("10.0.0.1", 22), Verdict::Match);
            assert_eq!(check("git.example.com", 2222), Verdict::Match);
            assert_eq!(check("git.example.com", 2200), Verdict::Unknown);
            assert_eq!(check("a.corp.example", 22), Verdict::Match);
            assert_eq!(check("bad.corp.example", 22), Verdict::Unknown);
            assert_eq!(check("other.example.com", 22), Verdict::Unknown);
        }

        #[test]
        fn changed_revoked_and_other_types_are_refused() {
            let good = blob("ssh-ed25519", b"good");
            let evil = blob("ssh-ed25519", b"evil");
            let rsa = blob("ssh-rsa", b"rsa");
            let file = format!(
                "{}\n{}\n@revoked {}\n",
                line("a.example", &good),
                line("b.example", &rsa),
                line("*", &evil)
            );
            assert_eq!(
                check(&file, "a.example", 22, "ssh-ed25519", &evil),
                Verdict::Revoked
            );
            let other = blob("ssh-ed25519", b"other");
            assert_eq!(
                check(&file, "a.example", 22, "ssh-ed25519", &other),
                Verdict::Changed
            );
            assert_eq!(
                check(&file, "b.example", 22, "ssh-ed25519", &other),
                Verdict::OtherTypes(vec!["ssh-rsa".into()])
            );
            let message =
                Verdict::Changed.explain("a.example", 22, "ssh-ed25519", &other, Path::new("/kh"));
            assert!(message.contains("does not match"), "{message}");
            assert!(message.contains("SHA256:"), "{message}");
        }

        #[test]
        fn hashed_names_match() {
            let key = blob("ssh-ed25519", b"good");
            let salt = b"0123456789abcdefghij";
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).expect("any key length");
            mac.update(b"[git.example.com]:2222");
            let hash = mac.finalize().into_bytes();
            let hosts = format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(hash));
            let file = line(&hosts, &key);
            assert_eq!(
                check(&file, "git.example.com", 2222, "ssh-ed25519", &key),
                Verdict::Match
            );
            assert_eq!(
                check(&file, "git.example.com", 22, "ssh-ed25519", &key),
                Verdict::Unknown
            );
        }

        #[test]
        fn globs() {
            assert!(glob(b"*", b"anything"));
            assert!(glob(b"a*c", b"abbbc"));
            assert!(glob(b"a?c", b"abc"));
            assert!(!glob(b"a?c", b"abbc"));
            assert!(glob(b"*.example", b"x.y.example"));
            assert!(!glob(b"*.example", b"example"));
        }

        #[test]
        fn key_type_reads_the_blob() {
            assert_eq!(key_type(&blob("ssh-rsa", b"x")), Some("ssh-rsa"));
            assert_eq!(key_type(b"\0\0\0\x09short"), None);
        }
    }
}

fn full_ref(branch: &str) -> String {
    if branch.starts_with("refs/") {
        branch.to_string()
    } else {
        format!("refs/heads/{branch}")
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

fn git_dir(repo: &Path) -> anyhow::Result<PathBuf> {
    let r = git2::Repository::open(repo)
        .with_context(|| format!("opening repository {}", repo.display()))?;
    Ok(r.path().to_path_buf())
}

fn open(repo: &Path) -> anyhow::Result<git2::Repository> {
    git2::Repository::open(repo).with_context(|| format!("opening repository {}", repo.display()))
}

fn branch_ref(repo: &git2::Repository, branch: Option<&str>) -> anyhow::Result<String> {
    match branch {
        Some(b) => Ok(full_ref(b)),
        None => {
            let head = repo.find_reference("HEAD").context("reading HEAD")?;
            head.symbolic_target()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("HEAD is detached; name a branch to follow"))
        }
    }
}

fn head_blocking(path: &Path, branch: Option<&str>, tags: Option<&str>) -> anyhow::Result<String> {
    let repo = open(path)?;
    if let Some(pattern) = tags {
        let tag = tags::newest(&repo, pattern)?
            .ok_or_else(|| anyhow!("no tag matches {pattern} with a semantic version yet"))?;
        return Ok(tag.commit.to_string());
    }
    let name = branch_ref(&repo, branch)?;
    let reference = repo
        .find_reference(&name)
        .with_context(|| format!("branch {name} has no commit yet"))?;
    let commit = reference
        .peel_to_commit()
        .with_context(|| format!("{name} does not point at a commit"))?;
    Ok(commit.id().to_string())
}

fn snapshot_blocking(path: &Path, sub: &str, sha: &str) -> anyhow::Result<Snapshot> {
    let repo = open(path)?;
    let oid = git2::Oid::from_str(sha).with_context(|| format!("bad commit id {sha}"))?;
    let commit = repo
        .find_commit(oid)
        .with_context(|| format!("finding commit {sha}"))?;
    let info = commit_info(&commit);
    let root = commit.tree().context("reading the commit's tree")?;
    let sub = sub.trim_matches('/');
    let tree = if sub.is_empty() {
        root
    } else {
        match root.get_path(Path::new(sub)) {
            Ok(entry) => entry
                .to_object(&repo)
                .and_then(|o| o.peel_to_tree())
                .with_context(|| format!("{sub} is not a folder in commit {sha}"))?,
            Err(_) => {
                debug!(path = sub, "folder absent from the commit: no manifests");
                return Ok(Snapshot {
                    commit: info,
                    files: Vec::new(),
                });
            }
        }
    };
    let mut files = Vec::new();
    let mut failure = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or_default();
        let rel = format!("{dir}{name}");
        if entry.kind() == Some(git2::ObjectType::Blob) && is_manifest_path(name) {
            match repo.find_blob(entry.id()) {
                Ok(blob) => {
                    let full = if sub.is_empty() {
                        rel
                    } else {
                        format!("{sub}/{rel}")
                    };
                    files.push((full, blob.content().to_vec()));
                }
                Err(e) => {
                    failure = Some(anyhow!("reading {rel}: {e}"));
                    return git2::TreeWalkResult::Abort;
                }
            }
        }
        git2::TreeWalkResult::Ok
    })
    .context("walking the commit's tree")?;
    if let Some(e) = failure {
        return Err(e);
    }
    files.sort();
    Ok(Snapshot {
        commit: info,
        files,
    })
}

fn commit_info(c: &git2::Commit<'_>) -> CommitInfo {
    let author = c.author();
    let time = author.when();
    let ts = jiff::Timestamp::from_second(time.seconds())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let message = String::from_utf8_lossy(c.message_bytes()).into_owned();
    CommitInfo {
        sha: c.id().to_string(),
        author: String::from_utf8_lossy(author.name_bytes()).into_owned(),
        email: String::from_utf8_lossy(author.email_bytes()).into_owned(),
        time: ts,
        summary: message.lines().next().unwrap_or_default().to_string(),
        message,
    }
}

/// Warns once per distinct error, so a broken repository does not flood logs.
pub(crate) fn warn_once(last: &mut Option<String>, e: &anyhow::Error) {
    let text = format!("{e:#}");
    if last.as_deref() != Some(&text) {
        warn!(error = %text, "cannot read the repository");
        *last = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(s: &str) -> RemoteUrl {
        match RepoLocation::parse(s) {
            Ok(RepoLocation::Remote(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn locations_are_told_apart_as_git_does() {
        for local in ["/srv/repo", "repo", "./a:b", "../x/y.git", ""] {
            assert_eq!(
                RepoLocation::parse(local),
                Ok(RepoLocation::Local(PathBuf::from(local))),
                "{local}"
            );
        }
        assert_eq!(
            RepoLocation::parse("file:///srv/repo"),
            Ok(RepoLocation::Local(PathBuf::from("/srv/repo")))
        );
        let u = remote("https://git.example.com/org/repo.git");
        assert_eq!(
            (u.scheme(), u.host(), u.port()),
            (Scheme::Https, "git.example.com", 443)
        );
        let u = remote("http://127.0.0.1:8080/repo");
        assert_eq!((u.scheme(), u.port()), (Scheme::Http, 8080));
        let u = remote("git://127.0.0.1/repo.git");
        assert_eq!((u.scheme(), u.port()), (Scheme::Git, 9418));
        let u = remote("ssh://deploy@[::1]:2222/srv/repo.git");
        assert_eq!(
            (u.scheme(), u.host(), u.port(), u.user()),
            (Scheme::Ssh, "::1", 2222, Some("deploy"))
        );
        let u = remote("git@github.com:org/repo.git");
        assert_eq!(
            (u.scheme(), u.host(), u.port(), u.user(), u.as_str()),
            (
                Scheme::Ssh,
                "github.com",
                22,
                Some("git"),
                "git@github.com:org/repo.git"
            )
        );
        let u = remote("host:repo");
        assert_eq!((u.host(), u.user()), ("host", None));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        let e = RepoLocation::parse("https://me:s3cret@git.example.com/r.git").unwrap_err();
        assert!(matches!(e, RepoUrlError::PasswordInUrl { .. }));
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().contains("git.example.com"), "{e}");
        assert!(matches!(
            RepoLocation::parse("ftp://example.com/r"),
            Err(RepoUrlError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            RepoLocation::parse("https://example.com/"),
            Err(RepoUrlError::Invalid { .. })
        ));
        let config = GitSourceConfig {
            repo: "https://me:s3cret@git.example.com/r.git".into(),
            ..Default::default()
        };
        assert!(!config.repo_display().contains("s3cret"));
    }

    #[tokio::test]
    async fn a_remote_without_a_mirror_folder_is_an_error() {
        let source = GitSource::new(GitSourceConfig {
            repo: "https://git.example.com/r.git".into(),
            ..Default::default()
        });
        let e = source.head().await.unwrap_err();
        assert!(format!("{e}").contains("mirror"), "{e}");
    }

    #[test]
    fn credentials_need_exactly_one_http_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "abc\n").expect("write");
        let options = RemoteOptions {
            token_file: Some(token.clone()),
            ..Default::default()
        };
        let c = Credentials::load(&options).expect("loads");
        assert!(matches!(c.http, Some(HttpSecret::Token(ref t)) if t == "abc"));
        assert!(!format!("{c:?}").contains("abc"));
        let both = RemoteOptions {
            token_file: Some(token.clone()),
            password_file: Some(token),
            ..Default::default()
        };
        assert!(Credentials::load(&both).is_err());
        let missing = RemoteOptions {
            token_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = Credentials::load(&missing).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
    }
}
