//! The Deployment controller, Kubernetes style: each distinct pod template
//! of a Deployment gets its own ReplicaSet, named after a hash of the
//! template, so going back to an earlier template finds the earlier
//! ReplicaSet again (a `git revert` is a rollback that reuses its pods'
//! identity). The ReplicaSet of the current template is scaled up and
//! every other one down, a step at a time as the strategy allows
//! (`super::strategy`: RollingUpdate within `maxSurge` and
//! `maxUnavailable`, or Recreate), and old, empty ones beyond
//! `revisionHistoryLimit` are deleted. The Deployment itself is Git's:
//! only its `status` is written.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use commitd_api::k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use commitd_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use commitd_api::meta::{self, POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION};
use commitd_api::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::expectations::{sync_each, Expectations};
use super::strategy::{self, max_unavailable, SetCounts};
use super::{controlled_by, controlled_in, resource_version, Caches};

/// How long the loop sleeps when nothing changes.
const RESYNC: Duration = Duration::from_secs(30);
/// Kubernetes' default `revisionHistoryLimit`.
const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// Condition types, reasons and messages, as Kubernetes' deployment util.
const AVAILABLE: &str = "Available";
const PROGRESSING: &str = "Progressing";
const MIN_AVAILABLE_REASON: &str = "MinimumReplicasAvailable";
const MIN_UNAVAILABLE_REASON: &str = "MinimumReplicasUnavailable";
const NEW_RS_REASON: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS_REASON: &str = "FoundNewReplicaSet";
const RS_UPDATED_REASON: &str = "ReplicaSetUpdated";
const NEW_RS_AVAILABLE_REASON: &str = "NewReplicaSetAvailable";
const TIMED_OUT_REASON: &str = "ProgressDeadlineExceeded";
const PAUSED_REASON: &str = "DeploymentPaused";
const RESUMED_REASON: &str = "DeploymentResumed";

/// The Deployment annotation that declares the safety net: roll back to
/// the previous ReplicaSet when a rollout misses its progress deadline.
pub const ROLLBACK_ON_FAILURE_ANNOTATION: &str = "commitd.io/rollback-on-failure";
/// Put on a ReplicaSet whose template failed under the safety net: the
/// Deployment generation it failed at. A newer generation retries it.
const FAILED_AT_GENERATION_ANNOTATION: &str = "commitd.io/failed-at-generation";

/// The alphabet of Kubernetes' `rand.SafeEncodeString`: no vowels (no
/// words), no look-alike characters.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash` of a pod template: FNV-32a over the template's
/// JSON (and the Deployment's `collisionCount`, if any, as Kubernetes mixes
/// it in), its decimal digits encoded like Kubernetes'
/// `rand.SafeEncodeString`. It names a Deployment's ReplicaSet
/// `<deployment>-<hash>` and is stable across processes and restarts, so a
/// template that comes back maps to the same ReplicaSet. Public so that
/// read-only commands and tests can tell which ReplicaSet is current.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    // Serializing these types cannot fail (string-keyed maps only); the
    // Debug form is a deterministic fallback rather than a panic.
    let json =
        serde_json::to_vec(template).unwrap_or_else(|_| format!("{template:?}").into_bytes());
    let mut hash = fnv32a(FNV32_OFFSET, &json);
    if let Some(count) = collision_count {
        // Kubernetes writes the count as a little-endian uint32 into an
        // 8-byte buffer.
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(count as u32).to_le_bytes());
        hash = fnv32a(hash, &bytes);
    }
    safe_encode(&hash.to_string())
}

const FNV32_OFFSET: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;

fn fnv32a(mut hash: u32, bytes: &[u8]) -> u32 {
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(FNV32_PRIME);
    }
    hash
}

/// Kubernetes' `rand.SafeEncodeString`: each byte picks a character of the
/// safe alphabet.
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// Runs the Deployment loop until `cancel` fires.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    // Pods too: Recreate waits for the last old pod to be gone, which no
    // ReplicaSet status change announces.
    let triggers = vec![
        caches.deployments.changes(),
        caches.replica_sets.changes(),
        caches.pods.changes(),
    ];
    let ctl = Arc::new(DeploymentController {
        store,
        caches,
        expectations: Expectations::default(),
    });
    controller::run("deployment", triggers, RESYNC, cancel, move || {
        let ctl = ctl.clone();
        async move { ctl.reconcile_all().await }
    })
    .await;
}

struct DeploymentController {
    store: Store,
    caches: Caches,
    /// Per Deployment uid: the revision of our last ReplicaSet write.
    expectations: Expectations,
}

/// How the ReplicaSet of the current template was obtained this pass; it
/// decides the `Progressing` condition as in Kubernetes.
#[derive(Debug, Clone, PartialEq)]
enum NewRsEvent {
    Created(String),
    Found(String),
}

/// A Deployment's ReplicaSets split into the one running the current
/// template and the others.
#[derive(Debug, Clone, Default)]
struct Rollout {
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
}

impl Rollout {
    /// Splits `owned` as Kubernetes' `FindNewReplicaSet` does: the oldest
    /// ReplicaSet whose template equals the Deployment's (ignoring the hash
    /// label) is the new one.
    fn split(template: &PodTemplateSpec, mut owned: Vec<ReplicaSet>) -> Rollout {
        owned.sort_by(by_creation);
        let new = owned
            .iter()
            .position(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, template))
            })
            .map(|i| owned.remove(i));
        Rollout { new, old: owned }
    }

    /// The revision the current template should carry: one more than any
    /// other ReplicaSet's, so the newest rollout always has the highest.
    fn next_revision(&self) -> i64 {
        self.old.iter().map(revision_of).max().unwrap_or(0) + 1
    }

    fn all(&self) -> Vec<&ReplicaSet> {
        self.new.iter().chain(self.old.iter()).collect()
    }

    /// Puts a freshly written ReplicaSet in place of its stale copy.
    fn replace(&mut self, rs: ReplicaSet) {
        let uid = rs.metadata.uid.clone();
        if let Some(new) = self.new.as_mut().filter(|n| n.metadata.uid == uid) {
            *new = rs;
        } else if let Some(old) = self.old.iter_mut().find(|o| o.metadata.uid == uid) {
            *old = rs;
        }
    }
}

/// What creating the ReplicaSet of a new template came to.
enum Creation {
    Created(ReplicaSet),
    /// It existed already (our cache had not seen it yet).
    Found(ReplicaSet),
    /// Another object holds the name: the hash must change.
    Collision,
}

impl DeploymentController {
    async fn reconcile_all(&self) -> Result<Requeue> {
        let pods = pod_counts(&self.caches.pods.list());
        sync_each(
            "deployment",
            self.caches.deployments.list(),
            &self.expectations,
            self.caches.replica_sets.revision(),
            |d, uid| {
                let pods = &pods;
                async move { self.reconcile(&d, uid, pods).await }
            },
        )
        .await
    }

    /// One Deployment: make sure the ReplicaSet of its template exists with
    /// the right revision, scale every ReplicaSet, prune history, report.
    async fn reconcile(&self, d: &Deployment, uid: String, pods: &PodCounts) -> Result<Requeue> {
        let Some(spec) = d.spec.as_ref() else {
            return Ok(None);
        };
        let namespace = meta::namespace(d);
        let owned: Vec<ReplicaSet> = controlled_in(&self.caches.replica_sets, namespace, &uid)
            .into_iter()
            .map(|rs| (*rs).clone())
            .collect();
        let mut rollout = Rollout::split(&spec.template, owned);
        let paused = spec.paused == Some(true);
        let mut written = 0i64;
        let mut event = None;

        if rollout.new.is_none() && !paused {
            match self.create_new(d, &uid, &rollout, pods).await? {
                Creation::Created(rs) => {
                    written = written.max(resource_version(&rs.metadata).unwrap_or_default());
                    event = Some(NewRsEvent::Created(meta::name(&rs).to_string()));
                    rollout.new = Some(rs);
                }
                Creation::Found(rs) => {
                    written = written.max(resource_version(&rs.metadata).unwrap_or_default());
                    event = Some(NewRsEvent::Found(meta::name(&rs).to_string()));
                    rollout.new = Some(rs);
                }
                Creation::Collision => {
                    self.bump_collision_count(d, &uid).await?;
                    return Ok(None);
                }
            }
        } else if let Some(new) = &rollout.new {
            event = Some(NewRsEvent::Found(meta::name(new).to_string()));
        }

        // The current template's ReplicaSet carries the newest revision,
        // also when an older one is reused (a rollback).
        let want = rollout.next_revision();
        if let Some(new) = rollout.new.clone().filter(|n| revision_of(n) < want) {
            let value = want.to_string();
            // The commit rolling it out again (a revert, typically): the
            // history then names it, not the commit that first made it.
            let commit = meta::annotation(&d.metadata, meta::COMMIT_ANNOTATION);
            let stored = self
                .update_replica_set(&new, |rs| {
                    if !set_annotation(rs, REVISION_ANNOTATION, &value) {
                        return false;
                    }
                    let annotations = rs.metadata.annotations.get_or_insert_with(Default::default);
                    match commit {
                        Some(sha) => annotations
                            .insert(meta::ROLLOUT_COMMIT_ANNOTATION.to_string(), sha.to_string()),
                        None => annotations.remove(meta::ROLLOUT_COMMIT_ANNOTATION),
                    };
                    true
                })
                .await?;
            info!(
                replica_set = meta::name(&stored),
                revision = want,
                "replica set takes the newest revision"
            );
            written = written.max(resource_version(&stored.metadata).unwrap_or_default());
            rollout.replace(stored);
        }

        let rolled_back_to = self.safety_net(d, &mut rollout, &mut written).await?;
        let targets = match (&rollout.new, &rolled_back_to) {
            (Some(_), _) if paused => Vec::new(),
            (Some(new), None) => scale_targets(spec, new, &rollout.old, pods),
            // Rolled back: the previous ReplicaSet is brought back as if
            // it were the new one, by the same strategy.
            (Some(new), Some(to)) => {
                let (back, mut others): (Vec<ReplicaSet>, Vec<ReplicaSet>) = rollout
                    .old
                    .iter()
                    .cloned()
                    .partition(|rs| meta::name(rs) == to.as_str());
                others.insert(0, new.clone());
                match back.first() {
                    Some(back) => scale_targets(spec, back, &others, pods),
                    None => Vec::new(),
                }
            }
            (None, _) => Vec::new(),
        };
        for (rs, target) in targets {
            if replicas_of(&rs) == target {
                continue;
            }
            let stored = self
                .update_replica_set(&rs, |cur| {
                    let spec = cur.spec.get_or_insert_with(Default::default);
                    if spec.replicas == Some(target) {
                        return false;
                    }
                    spec.replicas = Some(target);
                    // A spec change, as the API server counts it.
                    cur.metadata.generation = Some(cur.metadata.generation.unwrap_or(0) + 1);
                    true
                })
                .await?;
            info!(
                replica_set = meta::name(&stored),
                from = replicas_of(&rs),
                to = target,
                "scaled replica set"
            );
            written = written.max(resource_version(&stored.metadata).unwrap_or_default());
            rollout.replace(stored);
        }

        let limit = spec
            .revision_history_limit
            .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT);
        let prune: Vec<ReplicaSet> = history_to_prune(&rollout.old, limit)
            .into_iter()
            .cloned()
            .collect();
        for rs in prune {
            let name = meta::name(&rs);
            let rv = rs.metadata.resource_version.as_deref();
            match self.store.delete::<ReplicaSet>(namespace, name, rv).await {
                Ok(_) => {
                    info!(
                        replica_set = name,
                        revision = revision_of(&rs),
                        "deleted old replica set beyond the revision history limit"
                    );
                    rollout.old.retain(|o| o.metadata.uid != rs.metadata.uid);
                }
                // Changed since read: the next pass decides again.
                Err(e) if e.is_conflict() => debug!(
                    replica_set = name,
                    "replica set changed; not pruning it now"
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("deleting old replica set {name}"))
                }
            }
        }

        self.expectations.expect(&uid, written);

        let now = now_seconds();
        let (status, requeue) = compute_status(
            d,
            rollout.new.as_ref(),
            &rollout.all(),
            event.as_ref(),
            rolled_back_to.as_deref(),
            now,
        );
        // The Deployment names its current revision, as in Kubernetes.
        let revision = rollout
            .new
            .as_ref()
            .map(revision_of)
            .filter(|r| *r > 0)
            .map(|r| r.to_string());
        let revision_moved = revision.is_some()
            && revision.as_deref() != meta::annotation(&d.metadata, REVISION_ANNOTATION);
        if d.status.as_ref() != Some(&status) || revision_moved {
            self.write_status(d, status, revision).await?;
        }
        Ok(requeue)
    }

    /// The declared safety net (`commitd.io/rollback-on-failure: "true"`):
    /// once the current template's ReplicaSet misses its progress deadline,
    /// it is marked failed at the Deployment's generation and the previous
    /// ReplicaSet (the highest other revision) is brought back; a later
    /// commit that changes the Deployment clears the mark and the template
    /// is tried again. Git stays the only writer of desired state: the
    /// Deployment keeps saying what Git says, and its status says it is
    /// degraded. Returns the ReplicaSet rolled back to, if any.
    async fn safety_net(
        &self,
        d: &Deployment,
        rollout: &mut Rollout,
        written: &mut i64,
    ) -> Result<Option<String>> {
        let Some(new) = rollout.new.clone() else {
            return Ok(None);
        };
        let generation = d.metadata.generation.unwrap_or(0);
        let policy = meta::annotation(&d.metadata, ROLLBACK_ON_FAILURE_ANNOTATION) == Some("true");
        let previous = rollout
            .old
            .iter()
            .max_by_key(|rs| revision_of(rs))
            .map(|rs| meta::name(rs).to_string());
        let failed_at = meta::annotation(&new.metadata, FAILED_AT_GENERATION_ANNOTATION)
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(failed_at) = failed_at {
            if policy && failed_at >= generation {
                return Ok(previous);
            }
            let stored = self
                .update_replica_set(&new, |rs| {
                    rs.metadata
                        .annotations
                        .as_mut()
                        .is_some_and(|a| a.remove(FAILED_AT_GENERATION_ANNOTATION).is_some())
                })
                .await?;
            info!(
                replica_set = meta::name(&new),
                "the deployment changed since its template failed; trying it again"
            );
            *written = (*written).max(resource_version(&stored.metadata).unwrap_or_default());
            rollout.replace(stored);
            return Ok(None);
        }
        // This template timed out (the condition names its ReplicaSet, so a
        // stale condition of an earlier template does not count).
        let timed_out = d
            .status
            .as_ref()
            .and_then(|s| get_condition(s.conditions.as_deref()?, PROGRESSING))
            .is_some_and(|c| {
                c.reason.as_deref() == Some(TIMED_OUT_REASON)
                    && c.message
                        .as_deref()
                        .is_some_and(|m| m.contains(&format!("{:?}", meta::name(&new))))
            });
        let (true, true, Some(previous)) = (policy, timed_out, previous) else {
            return Ok(None);
        };
        let value = generation.to_string();
        let stored = self
            .update_replica_set(&new, |rs| {
                set_annotation(rs, FAILED_AT_GENERATION_ANNOTATION, &value)
            })
            .await?;
        warn!(
            replica_set = meta::name(&new),
            to = %previous,
            commit = meta::annotation(&d.metadata, meta::COMMIT_ANNOTATION).unwrap_or_default(),
            "progress deadline exceeded; rolling back as the deployment's rollback-on-failure asks"
        );
        *written = (*written).max(resource_version(&stored.metadata).unwrap_or_default());
        rollout.replace(stored);
        Ok(Some(previous))
    }

    /// Creates the ReplicaSet of the Deployment's current template.
    async fn create_new(
        &self,
        d: &Deployment,
        uid: &str,
        rollout: &Rollout,
        pods: &PodCounts,
    ) -> Result<Creation> {
        let Some(spec) = d.spec.as_ref() else {
            bail!("deployment has no spec");
        };
        let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = pod_template_hash(&spec.template, collision_count);
        let revision = rollout.next_revision();
        let replicas = new_replica_set_replicas(spec, &rollout.old, pods);
        let rs = new_replica_set(d, &hash, revision, replicas);
        let name = meta::name(&rs).to_string();
        let namespace = meta::namespace(d);
        match self.store.create(rs).await {
            Ok(created) => {
                info!(replica_set = %name, revision, replicas, "created new replica set");
                Ok(Creation::Created(created))
            }
            Err(StoreError::AlreadyExists { .. }) => {
                let existing = self
                    .store
                    .get::<ReplicaSet>(namespace, &name)
                    .await
                    .with_context(|| format!("reading replica set {name}"))?;
                match existing {
                    Some(rs)
                        if controlled_by(&rs.metadata, uid)
                            && rs
                                .spec
                                .as_ref()
                                .and_then(|s| s.template.as_ref())
                                .is_some_and(|t| equal_ignore_hash(t, &spec.template)) =>
                    {
                        Ok(Creation::Found(rs))
                    }
                    Some(_) => {
                        warn!(replica_set = %name, "hash collision: the name is taken by another replica set");
                        Ok(Creation::Collision)
                    }
                    None => bail!("replica set {name} vanished while being created"),
                }
            }
            Err(e) => Err(e).with_context(|| format!("creating replica set {name}")),
        }
    }

    /// Kubernetes' answer to a hash collision: count it in the status, which
    /// changes the hash of the next attempt.
    async fn bump_collision_count(&self, d: &Deployment, uid: &str) -> Result<()> {
        let seen = d.status.as_ref().and_then(|s| s.collision_count);
        let next = seen.unwrap_or(0).saturating_add(1);
        self.store
            .modify::<Deployment, _>(meta::namespace(d), meta::name(d), |cur| {
                let status = cur.status.get_or_insert_with(Default::default);
                if cur.metadata.uid.as_deref() != Some(uid) || status.collision_count != seen {
                    return false;
                }
                status.collision_count = Some(next);
                true
            })
            .await
            .context("recording a hash collision")?;
        Ok(())
    }

    /// Writes a Deployment's status and revision annotation (and nothing
    /// else: the rest is Git's).
    async fn write_status(
        &self,
        d: &Deployment,
        status: DeploymentStatus,
        revision: Option<String>,
    ) -> Result<()> {
        // Guarded by the revision the status was computed from, as
        // Kubernetes' UpdateStatus is: the status depends on the previous
        // conditions, so one computed from a stale copy must not be
        // written over a fresher one. On conflict the cache is behind; its
        // update triggers the next pass, which recomputes.
        let mut next = d.clone();
        next.status = Some(status);
        if let Some(revision) = revision {
            next.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(REVISION_ANNOTATION.to_string(), revision);
        }
        match self.store.update(next).await {
            Ok(_) => debug!("wrote deployment status"),
            Err(e) if e.is_conflict() => {
                debug!("deployment changed since it was read; the next pass recomputes")
            }
            Err(e) => return Err(e).context("writing deployment status"),
        }
        Ok(())
    }

    /// Edits a ReplicaSet we own, re-reading it on conflicts, and only if
    /// it is still the same object (same uid).
    async fn update_replica_set<F>(&self, rs: &ReplicaSet, mut change: F) -> Result<ReplicaSet>
    where
        F: FnMut(&mut ReplicaSet) -> bool,
    {
        let uid = rs.metadata.uid.clone();
        let name = meta::name(rs);
        let stored = self
            .store
            .modify::<ReplicaSet, _>(meta::namespace(rs), name, |cur| {
                cur.metadata.uid == uid && change(cur)
            })
            .await
            .with_context(|| format!("updating replica set {name}"))?;
        match stored {
            Some(s) if s.metadata.uid == uid => Ok(s),
            _ => bail!("replica set {name} was deleted or replaced"),
        }
    }
}

/// Sets an annotation of `rs`; whether it changed (an update to write).
fn set_annotation(rs: &mut ReplicaSet, key: &str, value: &str) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(Default::default);
    if annotations.get(key).map(String::as_str) == Some(value) {
        return false;
    }
    annotations.insert(key.to_string(), value.to_string());
    true
}

/// Seconds precision, as stored: a status computed twice from the same
/// inputs then compares equal to what was written.
fn now_seconds() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// The replica count each ReplicaSet of a Deployment should have next,
/// by its strategy ([`strategy::next_step`]); `old` is oldest first.
fn scale_targets(
    spec: &DeploymentSpec,
    new: &ReplicaSet,
    old: &[ReplicaSet],
    pods: &PodCounts,
) -> Vec<(ReplicaSet, i32)> {
    let counts: Vec<SetCounts> = old.iter().map(|rs| set_counts(rs, pods)).collect();
    let step = strategy::next_step(spec, set_counts(new, pods), &counts);
    std::iter::once((new.clone(), step.new))
        .chain(old.iter().cloned().zip(step.old))
        .collect()
}

/// The size a ReplicaSet for a new template is created with: the first
/// step of the strategy from zero.
fn new_replica_set_replicas(spec: &DeploymentSpec, old: &[ReplicaSet], pods: &PodCounts) -> i32 {
    let counts: Vec<SetCounts> = old.iter().map(|rs| set_counts(rs, pods)).collect();
    strategy::next_step(spec, SetCounts::default(), &counts).new
}

/// Per ReplicaSet uid, its pods that still run or may (not finished):
/// all of them, terminating ones included (Recreate waits for those), and
/// those not being deleted.
type PodCounts = HashMap<String, (i32, i32)>;

fn pod_counts(pods: &[Arc<Pod>]) -> PodCounts {
    let mut counts = PodCounts::new();
    for p in pods {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        if let Some(owner) = meta::controller_of(&p.metadata) {
            let (all, active) = counts.entry(owner.uid.clone()).or_default();
            *all += 1;
            if !meta::is_terminating(&p.metadata) {
                *active += 1;
            }
        }
    }
    counts
}

/// What the strategy reads of a ReplicaSet.
fn set_counts(rs: &ReplicaSet, pods: &PodCounts) -> SetCounts {
    let status = rs.status.as_ref();
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let (all, active) = pods.get(uid).copied().unwrap_or_default();
    SetCounts {
        wanted: replicas_of(rs),
        available: status.and_then(|s| s.available_replicas).unwrap_or(0),
        active,
        pods: all,
    }
}

/// The ReplicaSet for a Deployment's current template, as Kubernetes
/// builds it: named `<deployment>-<hash>`, the hash label added to its
/// labels, selector and pod template, the Deployment as controller.
fn new_replica_set(d: &Deployment, hash: &str, revision: i64, replicas: i32) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template;
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.to_string());
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
    let mut selector = spec.selector;
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.to_string());
    let mut annotations =
        std::collections::BTreeMap::from([(REVISION_ANNOTATION.to_string(), revision.to_string())]);
    // The commit that rolls this template out, as Kubernetes copies
    // `kubernetes.io/change-cause`; under its own key, since the Git
    // annotation would make the derived ReplicaSet look Git-owned.
    if let Some(commit) = meta::annotation(&d.metadata, meta::COMMIT_ANNOTATION) {
        annotations.insert(
            meta::ROLLOUT_COMMIT_ANNOTATION.to_string(),
            commit.to_string(),
        );
    }
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", meta::name(d))),
            namespace: meta::namespace(d).map(str::to_owned),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![meta::controller_reference(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// Template equality as Kubernetes' `EqualIgnoreHash`: the hash label the
/// controller added does not count.
fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(labels) = m.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
            if labels.is_empty() {
                m.labels = None;
            }
        }
        if *m == ObjectMeta::default() {
            t.metadata = None;
        }
    }
    t
}

/// A ReplicaSet's revision annotation (0 if missing or unreadable, as
/// Kubernetes treats it).
fn revision_of(rs: &ReplicaSet) -> i64 {
    meta::annotation(&rs.metadata, REVISION_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let ts = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    ts(a)
        .cmp(&ts(b))
        .then_with(|| meta::name(a).cmp(meta::name(b)))
}

fn by_revision(a: &&ReplicaSet, b: &&ReplicaSet) -> Ordering {
    revision_of(a)
        .cmp(&revision_of(b))
        .then_with(|| by_creation(a, b))
}

/// Old ReplicaSets to delete, as Kubernetes' `cleanupDeployment`: the
/// oldest revisions beyond `limit`, and of those only the ones fully
/// scaled down (no pods, spec 0, the scale-down observed).
fn history_to_prune(old: &[ReplicaSet], limit: i32) -> Vec<&ReplicaSet> {
    let mut cleanable: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| !meta::is_terminating(&rs.metadata))
        .collect();
    let excess = cleanable
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    if excess == 0 {
        return Vec::new();
    }
    cleanable.sort_by(by_revision);
    cleanable
        .into_iter()
        .take(excess)
        .filter(|rs| {
            let status = rs.status.clone().unwrap_or_default();
            let observed =
                status.observed_generation.unwrap_or(0) >= rs.metadata.generation.unwrap_or(0);
            status.replicas == 0 && replicas_of(rs) == 0 && observed
        })
        .collect()
}

fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
        last_update_time: Some(Time(now)),
    }
}

fn get_condition<'a>(
    conditions: &'a [DeploymentCondition],
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Kubernetes' `SetDeploymentCondition`: the transition time survives
/// while the status holds. Unlike Kubernetes, a new message under the same
/// status and reason is taken too: a rollout fast enough to skip the
/// intermediate reasons must not leave the message naming the old
/// ReplicaSet.
fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(cur) = get_condition(conditions, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason && cur.message == c.message {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conditions.retain(|x| x.type_ != c.type_);
    conditions.push(c);
}

/// The Deployment status Kubernetes' `calculateStatus` and
/// `syncRolloutStatus` would write, and when to look again for a progress
/// deadline. `event` says how the new ReplicaSet was come by this pass.
fn compute_status(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    event: Option<&NewRsEvent>,
    rolled_back_to: Option<&str>,
    now: Timestamp,
) -> (DeploymentStatus, Requeue) {
    let default_spec = DeploymentSpec::default();
    let spec = d.spec.as_ref().unwrap_or(&default_spec);
    let desired = spec.replicas.unwrap_or(1).max(0);
    let paused = spec.paused == Some(true);
    let deadline = spec.progress_deadline_seconds.filter(|s| *s != i32::MAX);

    // The status as Kubernetes has it after `checkPausedConditions` and
    // `getNewReplicaSet` wrote their conditions.
    let mut before = d.status.clone().unwrap_or_default();
    let mut conditions = before.conditions.take().unwrap_or_default();
    let progressing = get_condition(&conditions, PROGRESSING).cloned();
    let paused_reason =
        progressing.as_ref().and_then(|c| c.reason.as_deref()) == Some(PAUSED_REASON);
    if deadline.is_some() {
        if paused && !paused_reason {
            set_condition(
                &mut conditions,
                condition(
                    PROGRESSING,
                    "Unknown",
                    PAUSED_REASON,
                    "Deployment is paused".into(),
                    now,
                ),
            );
        } else if !paused && paused_reason {
            set_condition(
                &mut conditions,
                condition(
                    PROGRESSING,
                    "Unknown",
                    RESUMED_REASON,
                    "Deployment is resumed".into(),
                    now,
                ),
            );
        }
        match event {
            Some(NewRsEvent::Created(name)) => set_condition(
                &mut conditions,
                condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_REASON,
                    format!("Created new replica set {name:?}"),
                    now,
                ),
            ),
            Some(NewRsEvent::Found(name)) if get_condition(&conditions, PROGRESSING).is_none() => {
                set_condition(
                    &mut conditions,
                    condition(
                        PROGRESSING,
                        "True",
                        FOUND_NEW_RS_REASON,
                        format!("Found new replica set {name:?}"),
                        now,
                    ),
                )
            }
            _ => {}
        }
    }
    let before_progressing = get_condition(&conditions, PROGRESSING).cloned();

    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let available = sum(&|rs| status_of(rs).available_replicas.unwrap_or(0));
    let spec_total = sum(&|rs| replicas_of(rs));
    let replicas = sum(&|rs| status_of(rs).replicas);
    let updated = new.map(|rs| status_of(rs).replicas).unwrap_or(0);
    let ready = sum(&|rs| status_of(rs).ready_replicas.unwrap_or(0));

    if available >= desired - max_unavailable(spec) {
        set_condition(
            &mut conditions,
            condition(
                AVAILABLE,
                "True",
                MIN_AVAILABLE_REASON,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut conditions,
            condition(
                AVAILABLE,
                "False",
                MIN_UNAVAILABLE_REASON,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nonzero(replicas),
        updated_replicas: nonzero(updated),
        ready_replicas: nonzero(ready),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero((spec_total - available).max(0)),
        collision_count: before.collision_count,
        terminating_replicas: before.terminating_replicas,
        conditions: None,
    };

    let mut requeue = None;
    match deadline {
        None => conditions.retain(|c| c.type_ != PROGRESSING),
        // Paused: Kubernetes only recounts, it estimates no progress.
        Some(_) if paused => {}
        // Rolled back by policy: the new template failed and stays failed
        // until a commit changes the Deployment.
        Some(_) if rolled_back_to.is_some() => {
            let failed = new.map_or_else(
                || meta::name(d).to_string(),
                |rs| meta::name(rs).to_string(),
            );
            set_condition(
                &mut conditions,
                condition(
                    PROGRESSING,
                    "False",
                    TIMED_OUT_REASON,
                    format!(
                        "ReplicaSet {failed:?} has timed out progressing; rolled back to ReplicaSet {:?}",
                        rolled_back_to.unwrap_or_default()
                    ),
                    now,
                ),
            );
        }
        Some(deadline) => {
            let complete_before = replicas == updated
                && before_progressing
                    .as_ref()
                    .and_then(|c| c.reason.as_deref())
                    == Some(NEW_RS_AVAILABLE_REASON);
            if !complete_before {
                let subject = match new {
                    Some(rs) => format!("ReplicaSet {:?}", meta::name(rs)),
                    None => format!("Deployment {:?}", meta::name(d)),
                };
                let old_replicas_before =
                    before.replicas.unwrap_or(0) - before.updated_replicas.unwrap_or(0);
                let complete = updated == desired && replicas == desired && available == desired;
                let progressed = updated > before.updated_replicas.unwrap_or(0)
                    || replicas - updated < old_replicas_before
                    || ready > before.ready_replicas.unwrap_or(0)
                    || available > before.available_replicas.unwrap_or(0);
                if complete {
                    set_condition(
                        &mut conditions,
                        condition(
                            PROGRESSING,
                            "True",
                            NEW_RS_AVAILABLE_REASON,
                            format!("{subject} has successfully progressed."),
                            now,
                        ),
                    );
                } else if progressed {
                    let mut c = condition(
                        PROGRESSING,
                        "True",
                        RS_UPDATED_REASON,
                        format!("{subject} is progressing."),
                        now,
                    );
                    if let Some(cur) = get_condition(&conditions, PROGRESSING) {
                        if cur.status == "True" {
                            c.last_transition_time = cur.last_transition_time.clone();
                        }
                    }
                    conditions.retain(|x| x.type_ != PROGRESSING);
                    conditions.push(c);
                } else if timed_out(&conditions, deadline, now) {
                    set_condition(
                        &mut conditions,
                        condition(
                            PROGRESSING,
                            "False",
                            TIMED_OUT_REASON,
                            format!("{subject} has timed out progressing."),
                            now,
                        ),
                    );
                }
                requeue = deadline_requeue(&conditions, deadline, now);
            }
        }
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    (status, requeue)
}

/// Kubernetes' `DeploymentTimedOut`: no progress for `deadline` seconds
/// since the Progressing condition was last updated.
fn timed_out(conditions: &[DeploymentCondition], deadline: i32, now: Timestamp) -> bool {
    let Some(c) = get_condition(conditions, PROGRESSING) else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE_REASON) => false,
        Some(TIMED_OUT_REASON) => true,
        _ => c
            .last_update_time
            .as_ref()
            .and_then(|t| {
                t.0.checked_add(SignedDuration::from_secs(i64::from(deadline)))
                    .ok()
            })
            .is_some_and(|end| end < now),
    }
}

/// When a rollout still in progress would pass its deadline, so the
/// condition turns `ProgressDeadlineExceeded` on time without any change.
fn deadline_requeue(conditions: &[DeploymentCondition], deadline: i32, now: Timestamp) -> Requeue {
    let c = get_condition(conditions, PROGRESSING)?;
    if c.status != "True" || c.reason.as_deref() == Some(NEW_RS_AVAILABLE_REASON) {
        return None;
    }
    let end = c
        .last_update_time
        .as_ref()?
        .0
        .checked_add(SignedDuration::from_secs(i64::from(deadline)))
        .ok()?;
    let left = now.duration_until(end);
    Some(if left.is_negative() {
        Duration::from_secs(1)
    } else {
        left.unsigned_abs() + Duration::from_secs(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::api::apps::v1::ReplicaSetStatus;

    #[test]
    fn a_new_message_replaces_a_stale_one_and_keeps_the_transition_time() {
        let t0 = Timestamp::from_second(1_000).expect("time");
        let t1 = Timestamp::from_second(2_000).expect("time");
        let mut conds = Vec::new();
        let avail = |rs: &str, t| {
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs}\" has successfully progressed."),
                t,
            )
        };
        set_condition(&mut conds, avail("web-a", t0));
        set_condition(&mut conds, avail("web-b", t1));
        assert_eq!(conds.len(), 1);
        assert_eq!(
            conds[0].message.as_deref(),
            Some("ReplicaSet \"web-b\" has successfully progressed.")
        );
        assert_eq!(conds[0].last_transition_time, Some(Time(t0)));
        assert_eq!(conds[0].last_update_time, Some(Time(t1)));
        // The very same condition again changes nothing.
        set_condition(&mut conds, avail("web-b", t0));
        assert_eq!(conds[0].last_update_time, Some(Time(t1)));
    }

    fn deployment(replicas: i32, image: &str) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "d-uid", "generation": 3,
                          "annotations": {"commitd.io/commit": "abc"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]}
                }
            }
        }))
        .expect("valid deployment");
        commitd_api::defaults::deployment(&mut d);
        d
    }

    fn rs(name: &str, revision: i64, spec_replicas: i32, status: ReplicaSetStatus) -> ReplicaSet {
        let created = Timestamp::from_second(1_700_000_000 + revision).expect("valid time");
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("demo".into()),
                uid: Some(format!("{name}-uid")),
                generation: Some(1),
                creation_timestamp: Some(Time(created)),
                annotations: Some([(REVISION_ANNOTATION.to_string(), revision.to_string())].into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(spec_replicas),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                observed_generation: Some(1),
                ..status
            }),
        }
    }

    fn counts(replicas: i32, ready: i32, available: i32) -> ReplicaSetStatus {
        ReplicaSetStatus {
            replicas,
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            ..Default::default()
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid time")
    }

    #[test]
    fn fnv32a_matches_reference_vectors() {
        assert_eq!(fnv32a(FNV32_OFFSET, b""), 0x811c_9dc5);
        assert_eq!(fnv32a(FNV32_OFFSET, b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(FNV32_OFFSET, b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn safe_encoding_maps_digits_like_kubernetes() {
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    #[test]
    fn hash_is_stable_and_uses_the_safe_alphabet() {
        let d = deployment(2, "web:1");
        let template = &d.spec.as_ref().expect("spec").template;
        let h = pod_template_hash(template, None);
        assert_eq!(h, pod_template_hash(&template.clone(), None));
        assert!(!h.is_empty() && h.len() <= 10, "{h}");
        assert!(h.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{h}");
        // Pinned: a change here renames every ReplicaSet (and restarts
        // every pod) on upgrade.
        let fixed: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1"}]}
        }))
        .expect("valid template");
        assert_eq!(
            pod_template_hash(&fixed, None),
            pod_template_hash(&fixed, None)
        );
        assert_eq!(pod_template_hash(&fixed, None), PINNED_HASH);
        let other = deployment(2, "web:2");
        assert_ne!(
            h,
            pod_template_hash(&other.spec.as_ref().expect("spec").template, None)
        );
        assert_ne!(h, pod_template_hash(template, Some(1)));
        assert_ne!(
            pod_template_hash(template, Some(1)),
            pod_template_hash(template, Some(2))
        );
    }

    const PINNED_HASH: &str = "794686fc5b";

    #[test]
    fn new_replica_set_carries_hash_owner_and_revision() {
        let d = deployment(2, "web:1");
        let hash = pod_template_hash(&d.spec.as_ref().expect("spec").template, None);
        let rs = new_replica_set(&d, &hash, 4, 2);
        assert_eq!(meta::name(&rs), format!("web-{hash}"));
        assert_eq!(rs.metadata.namespace.as_deref(), Some("demo"));
        let labels = rs.metadata.labels.clone().expect("labels");
        assert_eq!(labels.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let spec = rs.spec.clone().expect("spec");
        let selector = spec.selector.match_labels.expect("match labels");
        assert_eq!(selector.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
        let template = spec.template.expect("template");
        let template_labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert_eq!(template_labels.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(revision_of(&rs), 4);
        let owner = meta::controller_of(&rs.metadata).expect("controller");
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.name.as_str()),
            ("Deployment", "d-uid", "web")
        );
        // Git's annotation stays on the Deployment: the ReplicaSet is derived.
        assert!(!meta::is_git_owned(&rs.metadata));
        assert!(equal_ignore_hash(
            &template,
            &d.spec.as_ref().expect("spec").template
        ));
    }

    #[test]
    fn new_replica_set_names_the_commit_that_rolls_it_out() {
        let mut d = deployment(2, "web:1");
        let hash = pod_template_hash(&d.spec.as_ref().expect("spec").template, None);
        let rs = new_replica_set(&d, &hash, 1, 2);
        assert_eq!(
            meta::annotation(&rs.metadata, meta::ROLLOUT_COMMIT_ANNOTATION),
            Some("abc")
        );
        // It is a copy under another key: the ReplicaSet stays derived.
        assert_eq!(
            meta::annotation(&rs.metadata, meta::COMMIT_ANNOTATION),
            None
        );
        assert!(!meta::is_git_owned(&rs.metadata));

        // A Deployment that did not come from Git names no commit.
        d.metadata.annotations = None;
        let rs = new_replica_set(&d, &hash, 1, 2);
        assert_eq!(
            meta::annotation(&rs.metadata, meta::ROLLOUT_COMMIT_ANNOTATION),
            None
        );
        assert_eq!(revision_of(&rs), 1);
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let mut plain: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "web", "image": "web:1"}]}
        }))
        .expect("valid template");
        let mut hashed = plain.clone();
        hashed.metadata = Some(ObjectMeta {
            labels: Some([(POD_TEMPLATE_HASH_LABEL.to_string(), "abc".to_string())].into()),
            ..Default::default()
        });
        assert!(equal_ignore_hash(&plain, &hashed));
        plain.metadata = Some(ObjectMeta::default());
        assert!(equal_ignore_hash(&plain, &hashed));
        if let Some(spec) = plain.spec.as_mut() {
            spec.containers[0].image = Some("web:2".into());
        }
        assert!(!equal_ignore_hash(&plain, &hashed));
    }

    #[test]
    fn revisions_number_new_templates_and_reuse_bumps() {
        let d = deployment(2, "web:1");
        let template = d.spec.as_ref().expect("spec").template.clone();
        let hash = pod_template_hash(&template, None);
        let mut current = new_replica_set(&d, &hash, 1, 2);
        current.metadata.creation_timestamp = Some(Time(t(0)));
        let mut other = rs("web-other", 3, 0, counts(0, 0, 0));
        other.spec.as_mut().expect("spec").template = Some(PodTemplateSpec::default());
        let mut older = rs("web-older", 2, 0, counts(0, 0, 0));
        older.spec.as_mut().expect("spec").template = Some(PodTemplateSpec::default());

        // No ReplicaSets yet: revision 1.
        let empty = Rollout::split(&template, vec![]);
        assert!(empty.new.is_none());
        assert_eq!(empty.next_revision(), 1);

        // The earlier template comes back: found, and it must take 4.
        let rollout = Rollout::split(
            &template,
            vec![other.clone(), current.clone(), older.clone()],
        );
        assert_eq!(
            rollout.new.as_ref().map(meta::name),
            Some(meta::name(&current))
        );
        assert_eq!(rollout.old.len(), 2);
        assert_eq!(rollout.next_revision(), 4);

        // A brand-new template after those: revision 4 too (max + 1).
        let changed = deployment(2, "web:9");
        let rollout = Rollout::split(
            &changed.spec.as_ref().expect("spec").template,
            vec![other, current, older],
        );
        assert!(rollout.new.is_none());
        assert_eq!(rollout.next_revision(), 4);

        // Unreadable revisions count as 0.
        let mut bad = rs("web-bad", 1, 0, counts(0, 0, 0));
        bad.metadata.annotations =
            Some([(REVISION_ANNOTATION.to_string(), "x".to_string())].into());
        assert_eq!(revision_of(&bad), 0);
    }

    #[test]
    fn history_beyond_the_limit_is_pruned_oldest_first() {
        let mut old: Vec<ReplicaSet> = (1..=12)
            .map(|r| rs(&format!("web-{r}"), r, 0, counts(0, 0, 0)))
            .collect();
        old.reverse();
        let names = |v: Vec<&ReplicaSet>| {
            v.into_iter()
                .map(|r| meta::name(r).to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(history_to_prune(&old, 10)), vec!["web-1", "web-2"]);
        assert!(history_to_prune(&old, 12).is_empty());
        assert_eq!(history_to_prune(&old, 0).len(), 12);

        // One that still has pods (or whose scale-down is not observed) is
        // kept, and not replaced by a younger one.
        old.iter_mut().for_each(|r| {
            if meta::name(r) == "web-1" {
                r.status.as_mut().expect("status").replicas = 1;
            }
            if meta::name(r) == "web-2" {
                r.metadata.generation = Some(2);
            }
        });
        assert!(history_to_prune(&old, 10).is_empty());
        assert_eq!(names(history_to_prune(&old, 9)), vec!["web-3"]);
    }

    fn reason(s: &DeploymentStatus, type_: &str) -> Option<(String, String, String)> {
        let c = get_condition(s.conditions.as_deref()?, type_)?;
        Some((c.status.clone(), c.reason.clone()?, c.message.clone()?))
    }

    #[test]
    fn status_counts_and_conditions_follow_the_replica_sets() {
        let mut d = deployment(2, "web:1");
        let new = rs("web-abc", 1, 2, counts(0, 0, 0));

        // Just created: nothing ready, Progressing says so.
        let created = NewRsEvent::Created("web-abc".into());
        let (s1, requeue) = compute_status(&d, Some(&new), &[&new], Some(&created), None, t(0));
        assert_eq!(s1.observed_generation, Some(3));
        assert_eq!(s1.replicas, None);
        assert_eq!(s1.unavailable_replicas, Some(2));
        assert_eq!(
            reason(&s1, AVAILABLE),
            Some((
                "False".into(),
                MIN_UNAVAILABLE_REASON.into(),
                "Deployment does not have minimum availability.".into()
            ))
        );
        assert_eq!(
            reason(&s1, PROGRESSING),
            Some((
                "True".into(),
                NEW_RS_REASON.into(),
                "Created new replica set \"web-abc\"".into()
            ))
        );
        assert_eq!(requeue, Some(Duration::from_secs(601)));
        d.status = Some(s1.clone());

        // The same inputs again: the same status, nothing to write.
        let (again, _) = compute_status(&d, Some(&new), &[&new], None, None, t(5));
        assert_eq!(again, s1);

        // Pods exist and one is ready: progressing.
        let new = rs("web-abc", 1, 2, counts(2, 1, 1));
        let (s2, _) = compute_status(&d, Some(&new), &[&new], None, None, t(10));
        assert_eq!(
            (
                s2.replicas,
                s2.updated_replicas,
                s2.ready_replicas,
                s2.available_replicas
            ),
            (Some(2), Some(2), Some(1), Some(1))
        );
        assert_eq!(s2.unavailable_replicas, Some(1));
        assert_eq!(
            reason(&s2, PROGRESSING),
            Some((
                "True".into(),
                RS_UPDATED_REASON.into(),
                "ReplicaSet \"web-abc\" is progressing.".into()
            ))
        );
        let p = get_condition(s2.conditions.as_deref().expect("conditions"), PROGRESSING)
            .expect("progressing");
        assert_eq!(
            p.last_transition_time,
            Some(Time(t(0))),
            "still True: transition time kept"
        );
        assert_eq!(p.last_update_time, Some(Time(t(10))));
        d.status = Some(s2);

        // All available: complete.
        let new = rs("web-abc", 1, 2, counts(2, 2, 2));
        let (s3, requeue) = compute_status(&d, Some(&new), &[&new], None, None, t(20));
        assert_eq!(s3.unavailable_replicas, None);
        assert_eq!(
            reason(&s3, AVAILABLE),
            Some((
                "True".into(),
                MIN_AVAILABLE_REASON.into(),
                "Deployment has minimum availability.".into()
            ))
        );
        assert_eq!(
            reason(&s3, PROGRESSING),
            Some((
                "True".into(),
                NEW_RS_AVAILABLE_REASON.into(),
                "ReplicaSet \"web-abc\" has successfully progressed.".into()
            ))
        );
        assert_eq!(requeue, None);
        let avail = get_condition(s3.conditions.as_deref().expect("conditions"), AVAILABLE)
            .expect("available");
        assert_eq!(avail.last_transition_time, Some(Time(t(20))));
    }

    #[test]
    fn status_during_a_template_change_counts_old_and_new() {
        let mut d = deployment(3, "web:2");
        d.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            updated_replicas: Some(3),
            ready_replicas: Some(3),
            available_replicas: Some(3),
            conditions: Some(vec![condition(
                PROGRESSING,
                "True",
                NEW_RS_AVAILABLE_REASON,
                "x".into(),
                t(0),
            )]),
            ..Default::default()
        });
        // The pass that creates the new ReplicaSet (old one not yet
        // scaled down in the status it reports).
        let old = rs("web-old", 1, 0, counts(3, 3, 3));
        let new = rs("web-new", 2, 3, counts(0, 0, 0));
        let created = NewRsEvent::Created("web-new".into());
        let (s, _) = compute_status(&d, Some(&new), &[&new, &old], Some(&created), None, t(30));
        assert_eq!(
            (s.replicas, s.updated_replicas, s.available_replicas),
            (Some(3), None, Some(3))
        );
        assert_eq!(
            reason(&s, PROGRESSING),
            Some((
                "True".into(),
                NEW_RS_REASON.into(),
                "Created new replica set \"web-new\"".into()
            ))
        );
        d.status = Some(s);

        // A first new pod exists: progressing, old and new both counted.
        let new = rs("web-new", 2, 3, counts(1, 0, 0));
        let (s, _) = compute_status(&d, Some(&new), &[&new, &old], None, None, t(40));
        assert_eq!(
            (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas
            ),
            (Some(4), Some(1), Some(3), Some(3))
        );
        assert_eq!(s.unavailable_replicas, None, "spec total 3, available 3");
        assert_eq!(
            reason(&s, PROGRESSING).map(|r| r.1),
            Some(RS_UPDATED_REASON.to_string())
        );
        assert_eq!(
            reason(&s, AVAILABLE).map(|r| r.1),
            Some(MIN_AVAILABLE_REASON.to_string())
        );
    }

    #[test]
    fn stalled_rollouts_time_out() {
        let mut d = deployment(2, "web:1");
        let new = rs("web-abc", 1, 2, counts(2, 0, 0));
        d.status = Some(DeploymentStatus {
            replicas: Some(2),
            updated_replicas: Some(2),
            conditions: Some(vec![condition(
                PROGRESSING,
                "True",
                RS_UPDATED_REASON,
                "x".into(),
                t(0),
            )]),
            ..Default::default()
        });
        let (s, requeue) = compute_status(&d, Some(&new), &[&new], None, None, t(100));
        assert_eq!(
            reason(&s, PROGRESSING).map(|r| r.1),
            Some(RS_UPDATED_REASON.to_string())
        );
        assert_eq!(requeue, Some(Duration::from_secs(501)));
        let (s, requeue) = compute_status(&d, Some(&new), &[&new], None, None, t(601));
        assert_eq!(
            reason(&s, PROGRESSING),
            Some((
                "False".into(),
                TIMED_OUT_REASON.into(),
                "ReplicaSet \"web-abc\" has timed out progressing.".into()
            ))
        );
        assert_eq!(requeue, None);
    }

    #[test]
    fn paused_deployments_say_so() {
        let mut d = deployment(2, "web:1");
        d.spec.as_mut().expect("spec").paused = Some(true);
        let (s, _) = compute_status(&d, None, &[], None, None, t(0));
        assert_eq!(
            reason(&s, PROGRESSING).map(|r| r.1),
            Some(PAUSED_REASON.to_string())
        );
        d.status = Some(s);
        d.spec.as_mut().expect("spec").paused = Some(false);
        let (s, _) = compute_status(&d, None, &[], None, None, t(1));
        assert_eq!(
            reason(&s, PROGRESSING).map(|r| r.1),
            Some(RESUMED_REASON.to_string())
        );
    }
}
