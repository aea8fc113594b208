//! The Git source: a local repository (bare or not) and a branch, read only
//! through commits and their trees, never a working tree. New commits are
//! noticed within a second by watching the repository's refs with `notify`,
//! with a slow poll as a safety net. All git2 work runs on blocking threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use commitd_api::manifest::is_manifest_path;
use commitd_api::records::CommitInfo;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Which repository, branch and folder hold the desired state.
#[derive(Debug, Clone)]
pub struct GitSourceConfig {
    /// Path of the repository (its work tree or a bare repository).
    pub repo: PathBuf,
    /// Branch to follow; `None` follows the branch HEAD names.
    pub branch: Option<String>,
    /// Folder inside the tree to read manifests from ("" for the root).
    pub path: String,
    /// How often to look for new commits when no ref change was noticed.
    pub poll_interval: Duration,
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
}

impl GitSource {
    /// A source for `config`; nothing is opened until used.
    pub fn new(config: GitSourceConfig) -> GitSource {
        GitSource { config }
    }

    /// The followed branch's head commit id.
    pub async fn head(&self) -> anyhow::Result<String> {
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || head_blocking(&config)).await?
    }

    /// The metadata and manifest files of a commit.
    pub async fn snapshot(&self, sha: &str) -> anyhow::Result<Snapshot> {
        let config = self.config.clone();
        let sha = sha.to_string();
        tokio::task::spawn_blocking(move || snapshot_blocking(&config, &sha)).await?
    }

    /// Sends a unit whenever the repository's refs may have moved, and on
    /// every poll interval, until `cancel` fires. Spurious wake-ups are fine:
    /// the receiver compares heads.
    pub async fn watch(&self, cancel: CancellationToken) -> anyhow::Result<mpsc::Receiver<()>> {
        let (tx, rx) = mpsc::channel(1);
        let repo = self.config.repo.clone();
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
        let interval = self.config.poll_interval;
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
        Ok(rx)
    }
}

fn git_dir(repo: &Path) -> anyhow::Result<PathBuf> {
    let r = git2::Repository::open(repo)
        .with_context(|| format!("opening repository {}", repo.display()))?;
    Ok(r.path().to_path_buf())
}

fn open(config: &GitSourceConfig) -> anyhow::Result<git2::Repository> {
    git2::Repository::open(&config.repo)
        .with_context(|| format!("opening repository {}", config.repo.display()))
}

fn branch_ref(repo: &git2::Repository, config: &GitSourceConfig) -> anyhow::Result<String> {
    match &config.branch {
        Some(b) if b.starts_with("refs/") => Ok(b.clone()),
        Some(b) => Ok(format!("refs/heads/{b}")),
        None => {
            let head = repo.find_reference("HEAD").context("reading HEAD")?;
            head.symbolic_target()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("HEAD is detached; name a branch to follow"))
        }
    }
}

fn head_blocking(config: &GitSourceConfig) -> anyhow::Result<String> {
    let repo = open(config)?;
    let name = branch_ref(&repo, config)?;
    let reference = repo
        .find_reference(&name)
        .with_context(|| format!("branch {name} has no commit yet"))?;
    let commit = reference
        .peel_to_commit()
        .with_context(|| format!("{name} does not point at a commit"))?;
    Ok(commit.id().to_string())
}

fn snapshot_blocking(config: &GitSourceConfig, sha: &str) -> anyhow::Result<Snapshot> {
    let repo = open(config)?;
    let oid = git2::Oid::from_str(sha).with_context(|| format!("bad commit id {sha}"))?;
    let commit = repo
        .find_commit(oid)
        .with_context(|| format!("finding commit {sha}"))?;
    let info = commit_info(&commit);
    let root = commit.tree().context("reading the commit's tree")?;
    let sub = config.path.trim_matches('/');
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
