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
//!
//! Layout: this file holds the source itself (configuration, local
//! repositories, watching, reading snapshots); `url.rs` tells local paths
//! from remote URLs and parses them; `remote.rs` keeps the mirror and
//! fetches into it; `credentials.rs` holds the fetch callbacks
//! (credential files, host-key check) and `known_hosts.rs` the
//! known_hosts matching.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use commitd_api::manifest::is_manifest_path;
use commitd_api::records::CommitInfo;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::tags::{self, TagHead};
use crate::trust::{Signed, TrustPolicy};
use crate::webhook::{PushTarget, WebhookConfig, WebhookServer};

mod credentials;
pub(crate) mod known_hosts;
mod remote;
mod url;

pub use self::remote::FetchOutcome;
pub use self::url::{RemoteUrl, RepoLocation, RepoUrlError, Scheme};

use self::remote::{fetch_loop, is_ancestor_blocking, Remote};

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

/// A commit's metadata and manifest files.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub commit: CommitInfo,
    /// `(path in repository, content)` of each manifest file, sorted.
    pub files: Vec<(String, Vec<u8>)>,
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

    #[tokio::test]
    async fn a_remote_without_a_mirror_folder_is_an_error() {
        let source = GitSource::new(GitSourceConfig {
            repo: "https://git.example.com/r.git".into(),
            ..Default::default()
        });
        let e = source.head().await.unwrap_err();
        assert!(format!("{e}").contains("mirror"), "{e}");
    }
}
