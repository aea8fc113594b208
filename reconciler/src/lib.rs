//! The reconciler: turns each new commit of the watched repository into
//! desired state in etcd, keeps Git-owned objects as Git says (drift), and
//! runs the controllers that derive ReplicaSets and Pods from them.

pub mod apply;
pub mod controllers;
pub mod drift;
pub mod git_source;
pub mod immutable_fields;
pub mod job_templates;
pub mod signatures;
pub mod tags;
pub mod trust;
pub mod waves;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use commitd_api::backoff::Backoff;
use commitd_api::controller::ApplyGate;
use commitd_api::health::{HealthStatus, ObjectHealth};
use commitd_api::keys;
use commitd_api::manifest::Manifest;
use commitd_api::records::{AppliedCommit, Provenance};
use commitd_api::reflector::sleep_or_cancel;
use commitd_api::Store;
use futures::future::select_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::apply::{
    allocate_services, apply_commit, correct_drift, live_revision, ApplyOptions, ApplyOutcome,
};
use crate::controllers::MissingObjects;
use crate::drift::GitKindCaches;
use crate::git_source::{warn_once, GitSource, GitSourceConfig};

/// The applied commit's manifests, kept to notice and correct drift: all
/// of them, or while it is applied a sync wave at a time, those of the
/// waves written.
struct Desired {
    sha: String,
    through_wave: Option<i64>,
    manifests: Vec<Manifest>,
    /// The objects of the waves still to come, with their wave: those not
    /// in etcd yet are reported `Missing`.
    pending: Vec<(Manifest, i64)>,
}

/// How often a commit waiting for a sync wave to become healthy is looked
/// at again, besides the changes to its objects that wake the loop.
const WAVE_RECHECK: Duration = Duration::from_secs(2);

/// Runs the Git source loop (apply new commits, correct drift) and the
/// controllers until `cancel` fires, with the default [`ApplyOptions`]
/// (etcd's default transaction limits).
pub async fn run(
    store: Store,
    source: GitSourceConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    run_with(store, source, ApplyOptions::default(), cancel).await
}

/// [`run`] against an etcd whose transaction limits `options` describe.
pub async fn run_with(
    store: Store,
    source: GitSourceConfig,
    options: ApplyOptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // After a key rotation, values still sealed with the old key are
    // sealed again with the new one.
    match store.reseal_stale().await {
        Ok(0) => {}
        Ok(n) => info!(
            values = n,
            "rewrote values not stored with the current encryption key"
        ),
        Err(e) => warn!(error = %e, "cannot rewrite values stored with an older encryption key"),
    }
    let (missing_tx, missing) = MissingObjects::channel();
    let controllers = tokio::spawn(controllers::run_with(
        store.clone(),
        missing,
        cancel.clone(),
    ));
    let result = follow_reporting(store, source, options, Some(missing_tx), cancel.clone()).await;
    cancel.cancel();
    match controllers.await {
        Ok(Err(e)) => warn!(error = %format!("{e:#}"), "controllers stopped with an error"),
        Err(e) => warn!(error = %e, "controllers task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// Follows the branch: applies each new head, keeps the applied state.
pub async fn follow(
    store: Store,
    source: GitSourceConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    follow_with(store, source, ApplyOptions::default(), cancel).await
}

/// [`follow`] with explicit [`ApplyOptions`].
///
/// The head is applied until it is recorded (applied or rejected): a head
/// found busy (another reconciler holds the apply lock) or whose apply
/// failed midway is tried again when the lock goes away or after a
/// back-off, so a commit left half-applied by a reconciler that died is
/// completed here even if nothing new is committed. A head read before
/// another reconciler applied a commit is read again rather than applied
/// over it (it may be older than what that reconciler saw).
pub async fn follow_with(
    store: Store,
    source: GitSourceConfig,
    options: ApplyOptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    follow_reporting(store, source, options, None, cancel).await
}

/// [`follow_with`], publishing to `missing` the declared objects that are
/// not in etcd (for the health controller).
async fn follow_reporting(
    store: Store,
    source: GitSourceConfig,
    options: ApplyOptions,
    missing: Option<watch::Sender<Arc<Vec<ObjectHealth>>>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let git = GitSource::new(source.clone());
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut wake = loop {
        match git.watch(cancel.clone()).await {
            Ok(rx) => break rx,
            Err(e) => {
                warn!(repo = %source.repo_display(), error = %format!("{e:#}"), "cannot watch the repository yet");
                if sleep_or_cancel(backoff.next_delay(), &cancel).await {
                    return Ok(());
                }
            }
        }
    };
    let caches = GitKindCaches::start(&store, &cancel);
    let gate = ApplyGate::watch(store.clone(), cancel.clone());
    // Cache changes (drift) and the apply lock coming or going wake a pass.
    let mut triggers = caches.changes();
    triggers.push(gate.changes());
    let mut desired: Option<Desired> = None;
    let mut last_error = None;
    let mut handled_head: Option<String> = None;
    let mut waiting_for: Option<String> = None;
    let mut waiting_for_wave: Option<(String, i64)> = None;
    info!(repo = %source.repo_display(), path = %source.path, "following the repository");
    loop {
        // Marked seen before the pass, so what changes during it wakes the
        // next one.
        for t in triggers.iter_mut() {
            t.borrow_and_update();
        }
        let mut read_head_again = false;
        let mut recheck = None;
        let step = async {
            // Before the head: an apply by another reconciler after this
            // read makes ours stand back and read the head again, so a
            // head read before that apply never overwrites it.
            let live = live_revision(&store).await?;
            let head = git.head().await?;
            if handled_head.as_deref() != Some(head.as_str()) {
                let span = info_span!("commit", commit = %&head[..head.len().min(7)]);
                let snapshot = git.snapshot(&head).instrument(span.clone()).await?;
                let provenance = provenance_of(&store, &git, &source, &head)
                    .instrument(span.clone())
                    .await?;
                let outcome = apply_commit(
                    &store,
                    &options,
                    &snapshot.commit,
                    snapshot.files,
                    &provenance,
                    live,
                )
                .instrument(span)
                .await?;
                match &outcome {
                    ApplyOutcome::WaveApplied(r) => {
                        for w in &r.warnings {
                            warn!(commit = r.commit.short_sha(), "{w}");
                        }
                        // The next wave is decided on the next pass.
                        waiting_for = None;
                        read_head_again = true;
                        return anyhow::Ok(());
                    }
                    ApplyOutcome::WaitingForWave { wave, why } => {
                        let key = (head.clone(), *wave);
                        if waiting_for_wave.as_ref() != Some(&key) {
                            info!(
                                commit = %&head[..head.len().min(7)],
                                wave,
                                why = %why,
                                "waiting for the sync wave to be healthy"
                            );
                            waiting_for_wave = Some(key);
                        }
                        recheck = Some(WAVE_RECHECK);
                    }
                    ApplyOutcome::Recorded(r) => {
                        for w in &r.warnings {
                            warn!(commit = r.commit.short_sha(), "{w}");
                        }
                        for e in &r.errors {
                            warn!(commit = r.commit.short_sha(), "{e}");
                        }
                        if let Some(refusal) = &r.provenance.refusal {
                            warn!(commit = r.commit.short_sha(), reason = %refusal.reason, "refused: {}", refusal.message);
                        } else if let Some(from) = &r.provenance.rewrite_of {
                            warn!(
                                commit = r.commit.short_sha(),
                                applied = &from[..from.len().min(7)],
                                "applied a head that does not descend from the applied commit (history was rewritten)"
                            );
                        }
                    }
                    ApplyOutcome::AlreadyKnown => {}
                    ApplyOutcome::Superseded => {
                        debug!("another reconciler applied meanwhile; reading the head again");
                        read_head_again = true;
                        return anyhow::Ok(());
                    }
                    ApplyOutcome::Busy(lock) => {
                        if waiting_for.as_deref() != Some(lock.commit.sha.as_str()) {
                            info!(
                                commit = %&head[..head.len().min(7)],
                                applying = lock.commit.short_sha(),
                                lease = lock.lease,
                                "another apply holds the apply lock; waiting for it"
                            );
                            waiting_for = Some(lock.commit.sha.clone());
                        }
                        // Not handled: tried again when the lock goes away.
                        return anyhow::Ok(());
                    }
                }
                waiting_for = None;
                if !matches!(outcome, ApplyOutcome::WaitingForWave { .. }) {
                    handled_head = Some(head);
                }
            }
            refresh_desired(&store, &options, &git, &mut desired).await?;
            if let Some(d) = &desired {
                if gate.is_open() && caches.differs(&d.manifests, &d.sha) {
                    correct_drift(&store, &options, &d.sha, d.through_wave, &d.manifests).await?;
                }
            }
            if let Some(tx) = &missing {
                publish_missing(tx, &caches, desired.as_ref());
            }
            anyhow::Ok(())
        };
        let wait = match step.await {
            Ok(()) if read_head_again => continue,
            Ok(()) => {
                backoff.reset();
                last_error = None;
                recheck
            }
            Err(e) => {
                warn_once(&mut last_error, &e);
                Some(backoff.next_delay())
            }
        };
        let changed = async {
            let futs: Vec<_> = triggers.iter_mut().map(|t| Box::pin(t.changed())).collect();
            let _ = select_all(futs).await;
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = wake.recv() => {}
            _ = changed => {}
            _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))) => {}
        }
    }
}

/// What the Git source's trust policy makes of `head`, against the commit
/// the cluster runs.
async fn provenance_of(
    store: &Store,
    git: &GitSource,
    source: &GitSourceConfig,
    head: &str,
) -> anyhow::Result<Provenance> {
    let applied: Option<AppliedCommit> = store.get_record(keys::APPLIED).await?;
    trust::assess(
        git,
        head,
        applied.as_ref().map(|a| a.commit.sha.as_str()),
        &source.trust,
    )
    .await
}

/// Loads the applied commit's manifests when the applied commit changed.
async fn refresh_desired(
    store: &Store,
    options: &ApplyOptions,
    git: &GitSource,
    desired: &mut Option<Desired>,
) -> anyhow::Result<()> {
    let applied: Option<AppliedCommit> = store.get_record(keys::APPLIED).await?;
    let Some(applied) = applied else {
        *desired = None;
        return Ok(());
    };
    if desired
        .as_ref()
        .is_some_and(|d| d.sha == applied.commit.sha && d.through_wave == applied.through_wave)
    {
        return Ok(());
    }
    let snapshot = git
        .snapshot(&applied.commit.sha)
        .await
        .with_context(|| format!("reading applied commit {}", applied.commit.short_sha()))?;
    let mut loaded = options.load(snapshot.files);
    let mut pending = Vec::new();
    if let Some(through) = applied.through_wave {
        let (written, later) = loaded
            .manifests
            .into_iter()
            .partition(|m| commitd_api::waves::wave_of(&m.object) <= through);
        loaded.manifests = written;
        pending = later
            .into_iter()
            .map(|m: Manifest| {
                let wave = commitd_api::waves::wave_of(&m.object);
                (m, wave)
            })
            .collect();
    }
    // The addresses and ports the applied Services were given.
    allocate_services(store, &mut loaded.manifests, options).await?;
    *desired = Some(Desired {
        sha: applied.commit.sha,
        through_wave: applied.through_wave,
        manifests: loaded.manifests,
        pending,
    });
    Ok(())
}

/// Tells the health controller which objects of the applied commit's waves
/// still to come are not in etcd yet. Objects of the waves written that
/// someone deleted are not reported: drift correction puts them back at
/// once.
fn publish_missing(
    tx: &watch::Sender<Arc<Vec<ObjectHealth>>>,
    caches: &GitKindCaches,
    desired: Option<&Desired>,
) {
    let mut missing = Vec::new();
    for (m, wave) in desired.map_or(&[][..], |d| &d.pending[..]) {
        match caches.has(m.kind, m.namespace.as_deref(), &m.name) {
            // Not known yet: keep what was published.
            None => return,
            Some(true) => {}
            Some(false) => missing.push(ObjectHealth {
                kind: m.kind.to_string(),
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                status: HealthStatus::Missing,
                reason: Some("WaitingForSyncWave".into()),
                message: Some(format!(
                    "sync wave {wave} is applied once the waves before it are healthy"
                )),
                commit: desired.map(|d| d.sha.clone()),
            }),
        }
    }
    tx.send_if_modified(|current| {
        if **current == missing {
            return false;
        }
        *current = Arc::new(missing);
        true
    });
}
