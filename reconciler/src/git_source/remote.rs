//! A remote repository: its private bare mirror and the fetches into it.
//!
//! [`Remote`] fetches the followed branch (or the tags matching the
//! followed glob) into `<mirror_dir>/<hash of the URL>`, shallow the
//! first time and its whole history once when an older commit is
//! needed; [`fetch_loop`] is what [`super::GitSource::watch`] runs for a
//! remote. Each fetch runs on a blocking thread ([`FetchJob`]) that a
//! timeout or cancellation abandons. The credentials and host-key checks
//! it uses are in [`super::credentials`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use commitd_api::backoff::Backoff;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use super::credentials::CallbackContext;
use super::url::RemoteUrl;
use super::{
    full_ref, short, snapshot_blocking, GitSourceConfig, RemoteOptions, Snapshot,
    DEFAULT_FETCH_TIMEOUT,
};
use crate::tags;

/// The longest wait between two tries of a failing fetch (shorter when
/// the poll interval is).
const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(300);

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

/// Fetches a remote at once, then on every poll tick and trigger, until
/// `cancel`; wakes `wake` when the branch moved. Failures are retried with
/// back-off and logged once per distinct error.
pub(super) async fn fetch_loop(
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
pub(super) struct Remote {
    pub(super) url: RemoteUrl,
    pub(super) mirror: PathBuf,
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
    pub(super) followed: watch::Sender<Option<String>>,
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
    pub(super) fn new(url: RemoteUrl, mirror_dir: &Path, config: &GitSourceConfig) -> Remote {
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

    pub(super) async fn head(&self) -> anyhow::Result<String> {
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

    pub(super) async fn fetch(&self, cancel: &CancellationToken) -> anyhow::Result<FetchOutcome> {
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

    pub(super) async fn snapshot(&self, sub: &str, sha: &str) -> anyhow::Result<Snapshot> {
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
    pub(super) async fn is_ancestor(
        &self,
        ancestor: &str,
        descendant: &str,
    ) -> anyhow::Result<Option<bool>> {
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
pub(super) fn is_ancestor_blocking(
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
