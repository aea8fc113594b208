//! Controllers that turn desired objects into derived ones: Deployments into
//! ReplicaSets, ReplicaSets and Jobs into Pods, and a garbage collector that
//! removes what lost its owner.
//!
//! Every loop has the shape of [`commitd_api::controller::run`]: it reads
//! shared list+watch caches, compares what is with what should be and takes
//! the next step. Nothing is remembered between passes except
//! *expectations* (the etcd revision of a controller's own last write), so
//! a controller can be killed at any instant and started again.
//!
//! Git-owned objects are written by the reconciler from Git; these loops
//! write only their `status`. Objects a controller creates carry a
//! controller owner reference to the uid of what they derive from.

pub mod cronjob;
mod daemonset;
mod daemonset_plan;
mod deployment;
mod endpoints;
mod expectations;
mod garbage_collector;
mod health;
mod job;
mod pod_readiness;
mod replicaset;
mod statefulset;
mod statefulset_plan;
mod storage;
mod strategy;
mod volume_binder;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use commitd_api::controller::{self, ApplyGate};
use commitd_api::k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use commitd_api::k8s_openapi::api::batch::v1::{CronJob, Job};
use commitd_api::k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use commitd_api::k8s_openapi::api::storage::v1::StorageClass;
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta_v1;
use commitd_api::reflector::{reflect, Cache};
use commitd_api::{keys, meta, Object, Store, StoreError};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use deployment::pod_template_hash;
pub use endpoints::{
    desired_subsets, is_managed, ComputedEndpoints, HEADLESS_LABEL, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE, MAX_ENDPOINT_ADDRESSES, OVER_CAPACITY_ANNOTATION,
};
pub use health::MissingObjects;
pub use job::{COMPLETION_INDEX_ANNOTATION, COMPLETION_INDEX_ENV};

/// The grace period Kubernetes gives a pod whose spec does not say.
const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

/// How often a guarded pod deletion re-reads the pod after a conflict
/// before giving up (the caller's loop retries later).
const DELETE_ATTEMPTS: usize = 5;

/// The caches the controllers share, started once so that a Deployment,
/// its ReplicaSets and their pods are seen through one set of watches.
#[derive(Clone)]
pub(crate) struct Caches {
    pub deployments: Cache<Deployment>,
    pub replica_sets: Cache<ReplicaSet>,
    pub jobs: Cache<Job>,
    pub cron_jobs: Cache<CronJob>,
    pub daemon_sets: Cache<DaemonSet>,
    pub stateful_sets: Cache<StatefulSet>,
    pub controller_revisions: Cache<ControllerRevision>,
    pub claims: Cache<PersistentVolumeClaim>,
    pub volumes: Cache<PersistentVolume>,
    pub storage_classes: Cache<StorageClass>,
    pub nodes: Cache<Node>,
    pub pods: Cache<Pod>,
}

impl Caches {
    /// Whether every cache has listed once; before that an empty cache
    /// means "unknown", and acting on it would delete everything.
    pub fn ready(&self) -> bool {
        self.deployments.is_ready()
            && self.replica_sets.is_ready()
            && self.jobs.is_ready()
            && self.cron_jobs.is_ready()
            && self.daemon_sets.is_ready()
            && self.stateful_sets.is_ready()
            && self.controller_revisions.is_ready()
            && self.claims.is_ready()
            && self.volumes.is_ready()
            && self.storage_classes.is_ready()
            && self.nodes.is_ready()
            && self.pods.is_ready()
    }

    /// Waits until every cache has listed once.
    async fn all_ready(&self) {
        self.deployments.ready().await;
        self.replica_sets.ready().await;
        self.jobs.ready().await;
        self.cron_jobs.ready().await;
        self.daemon_sets.ready().await;
        self.stateful_sets.ready().await;
        self.controller_revisions.ready().await;
        self.claims.ready().await;
        self.volumes.ready().await;
        self.storage_classes.ready().await;
        self.nodes.ready().await;
        self.pods.ready().await;
    }
}

/// Runs the Deployment, ReplicaSet, Job and garbage-collection loops until
/// `cancel` fires. The reconciler calls this once; the loops need nothing
/// else, so the same call works in the all-in-one process and on its own.
pub async fn run(store: Store, cancel: CancellationToken) -> anyhow::Result<()> {
    run_with(store, MissingObjects::none(), cancel).await
}

/// [`run`], with the health controller told which declared objects the
/// Git source found missing.
pub async fn run_with(
    store: Store,
    missing: MissingObjects,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // The reflectors stop with `cancel`, and also when this function
    // returns for any other reason.
    let caches_cancel = cancel.child_token();
    let _stop_caches = caches_cancel.clone().drop_guard();
    let caches = Caches {
        deployments: reflect::<Deployment>(store.clone(), caches_cancel.clone()),
        replica_sets: reflect::<ReplicaSet>(store.clone(), caches_cancel.clone()),
        jobs: reflect::<Job>(store.clone(), caches_cancel.clone()),
        cron_jobs: reflect::<CronJob>(store.clone(), caches_cancel.clone()),
        daemon_sets: reflect::<DaemonSet>(store.clone(), caches_cancel.clone()),
        stateful_sets: reflect::<StatefulSet>(store.clone(), caches_cancel.clone()),
        controller_revisions: reflect::<ControllerRevision>(store.clone(), caches_cancel.clone()),
        claims: reflect::<PersistentVolumeClaim>(store.clone(), caches_cancel.clone()),
        volumes: reflect::<PersistentVolume>(store.clone(), caches_cancel.clone()),
        storage_classes: reflect::<StorageClass>(store.clone(), caches_cancel.clone()),
        nodes: reflect::<Node>(store.clone(), caches_cancel.clone()),
        pods: reflect::<Pod>(store.clone(), caches_cancel.clone()),
    };
    // No pass starts while a commit is half-applied.
    let gate = ApplyGate::watch(store.clone(), caches_cancel.clone());
    tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        _ = caches.all_ready() => {}
    }
    info!("controllers started: deployment, replicaset, daemonset, job, cronjob, statefulset, garbage-collector, endpoints, health, storage");
    // Each loop's future is boxed: joined inline, their states (large in
    // debug builds) would all be laid out on the polling thread's stack.
    controller::gated(gate, async {
        tokio::join!(
            Box::pin(deployment::run(
                store.clone(),
                caches.clone(),
                cancel.clone()
            )),
            Box::pin(replicaset::run(
                store.clone(),
                caches.clone(),
                cancel.clone()
            )),
            Box::pin(job::run(store.clone(), caches.clone(), cancel.clone())),
            Box::pin(daemonset::run(
                store.clone(),
                caches.clone(),
                cancel.clone()
            )),
            Box::pin(cronjob::run(store.clone(), caches.clone(), cancel.clone())),
            Box::pin(statefulset::run(
                store.clone(),
                caches.clone(),
                cancel.clone()
            )),
            Box::pin(garbage_collector::run(
                store.clone(),
                caches.clone(),
                cancel.clone()
            )),
            Box::pin(endpoints::run(
                store.clone(),
                caches.clone(),
                cancel.clone()
            )),
            Box::pin(health::run(
                store.clone(),
                caches.clone(),
                missing,
                cancel.clone()
            )),
            Box::pin(storage::run(store.clone(), caches.clone(), cancel.clone())),
        )
    })
    .await;
    info!("controllers stopped");
    Ok(())
}

/// What [`delete_pod`] did, with the etcd revision of its write so callers
/// can wait for their cache to see it before counting pods again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDeletion {
    /// The pod is bound to a node: `deletionTimestamp` was set and the node
    /// agent will stop its containers and then delete the object.
    Marked {
        /// The etcd revision of the write.
        revision: i64,
    },
    /// The pod was bound to no node, so nobody would ever stop it: the
    /// object was deleted from etcd.
    Deleted {
        /// The etcd revision of the delete.
        revision: i64,
    },
    /// Graceful deletion was already under way; nothing was written.
    AlreadyTerminating,
    /// The pod (with this uid) no longer exists.
    Gone,
}

impl PodDeletion {
    /// The revision of the write, if one was made.
    pub fn revision(&self) -> Option<i64> {
        match self {
            PodDeletion::Marked { revision } | PodDeletion::Deleted { revision } => Some(*revision),
            PodDeletion::AlreadyTerminating | PodDeletion::Gone => None,
        }
    }
}

/// Deletes a pod the way every controller must: gracefully when a node
/// agent runs it (it stops the containers, then deletes the object), and
/// outright when it is bound to no node. Writes are guarded by the pod's
/// `resourceVersion`; on a conflict (the scheduler bound it, the node agent
/// wrote status) the pod is read again and the decision made again, so a
/// pod is never deleted from under a node that just got it.
pub async fn delete_pod(store: &Store, pod: &Pod) -> Result<PodDeletion, StoreError> {
    let namespace = meta::namespace(pod).map(str::to_owned);
    let name = meta::name(pod).to_owned();
    let uid = pod.metadata.uid.clone();
    let mut current = pod.clone();
    for _ in 0..DELETE_ATTEMPTS {
        match try_delete_pod(store, &current).await? {
            Some(outcome) => return Ok(outcome),
            None => {
                debug!(pod = %meta::display_key(&current), "pod changed; reading it again");
                match store.get::<Pod>(namespace.as_deref(), &name).await? {
                    Some(fresh) if fresh.metadata.uid == uid => current = fresh,
                    _ => return Ok(PodDeletion::Gone),
                }
            }
        }
    }
    Err(StoreError::Conflict {
        key: keys::object_key(Pod::STORE_KIND, namespace.as_deref(), &name),
    })
}

/// One guarded attempt; `None` means the pod changed since it was read.
async fn try_delete_pod(store: &Store, pod: &Pod) -> Result<Option<PodDeletion>, StoreError> {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let Some(rv) = resource_version(&pod.metadata) else {
        // Never read from the store: read it first.
        return Ok(None);
    };
    if !bound {
        return guarded_delete(store, pod, rv)
            .await
            .map(|r| r.map(|revision| PodDeletion::Deleted { revision }));
    }
    if meta::is_terminating(&pod.metadata) {
        return Ok(Some(PodDeletion::AlreadyTerminating));
    }
    let mut marked = pod.clone();
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
    marked.metadata.deletion_timestamp = Some(meta::now());
    marked.metadata.deletion_grace_period_seconds = Some(grace);
    match store.update(marked).await {
        Ok(stored) => Ok(Some(PodDeletion::Marked {
            revision: resource_version(&stored.metadata).unwrap_or_default(),
        })),
        Err(e) if e.is_conflict() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes an object if its mod revision is still `rv`, returning the
/// revision of the delete (which `Store::delete` does not report, and
/// which read-your-writes needs).
async fn guarded_delete<T: Object>(
    store: &Store,
    obj: &T,
    rv: i64,
) -> Result<Option<i64>, StoreError> {
    let key = keys::object_key(T::STORE_KIND, meta::namespace(obj), meta::name(obj));
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rv)])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    let resp = store.client().txn(txn).await?;
    if !resp.succeeded() {
        return Ok(None);
    }
    Ok(Some(
        resp.header().map(|h| h.revision()).unwrap_or_default(),
    ))
}

/// The etcd mod revision a cached object was read at.
pub(crate) fn resource_version(m: &meta_v1::ObjectMeta) -> Option<i64> {
    m.resource_version.as_deref().and_then(|v| v.parse().ok())
}

/// The earlier of two requeue requests.
pub(crate) fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The objects of `cache` in `namespace` that `owner_uid` controls.
pub(crate) fn controlled_in<T: Object>(
    cache: &Cache<T>,
    namespace: Option<&str>,
    owner_uid: &str,
) -> Vec<Arc<T>> {
    cache
        .list()
        .into_iter()
        .filter(|o| meta::namespace(&**o) == namespace && controlled_by(o.metadata(), owner_uid))
        .collect()
}

/// Whether `obj` names `owner_uid` as its controller.
pub(crate) fn controlled_by(m: &meta_v1::ObjectMeta, owner_uid: &str) -> bool {
    meta::controller_of(m).is_some_and(|o| o.uid == owner_uid)
}

/// Turns a list of per-object failures into the error of a pass, so the
/// loop backs off while every object still got its turn.
pub(crate) fn pass_result(
    controller: &str,
    failed: Vec<String>,
    requeue: Option<Duration>,
) -> anyhow::Result<Option<Duration>> {
    if failed.is_empty() {
        return Ok(requeue);
    }
    Err(anyhow::anyhow!("{}", failed.join("; ")))
        .with_context(|| format!("{controller}: {} object(s) failed", failed.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_prefers_the_sooner_request() {
        let s = Duration::from_secs;
        assert_eq!(earliest(None, None), None);
        assert_eq!(earliest(Some(s(3)), None), Some(s(3)));
        assert_eq!(earliest(None, Some(s(2))), Some(s(2)));
        assert_eq!(earliest(Some(s(3)), Some(s(2))), Some(s(2)));
    }

    #[test]
    fn pod_deletion_reports_its_revision() {
        assert_eq!(PodDeletion::Marked { revision: 7 }.revision(), Some(7));
        assert_eq!(PodDeletion::Deleted { revision: 9 }.revision(), Some(9));
        assert_eq!(PodDeletion::Gone.revision(), None);
        assert_eq!(PodDeletion::AlreadyTerminating.revision(), None);
    }

    #[test]
    fn failed_passes_name_the_objects() {
        let err =
            pass_result("replicaset", vec!["demo/web: boom".into()], None).expect_err("a failure");
        let text = format!("{err:#}");
        assert!(text.contains("replicaset: 1 object(s) failed"), "{text}");
        assert!(text.contains("demo/web: boom"), "{text}");
    }
}
