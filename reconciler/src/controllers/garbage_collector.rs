//! The garbage collector: derived objects whose controller owner is gone
//! are deleted (Kubernetes' background cascading deletion). This is how
//! removing a Deployment's file from Git removes its ReplicaSets, and then
//! their pods; how a deleted (or replaced) Job's pods go, a CronJob's Jobs,
//! DaemonSet and StatefulSet pods, and the claims a StatefulSet owns. It
//! also finishes the deletion of terminating pods that no node will ever
//! stop because none was assigned.
//!
//! The caches may lag each other (a ReplicaSet can be seen before the
//! Deployment that created it), so an owner missing from the cache is
//! looked up in etcd before anything is deleted, and nothing is done before
//! every cache has listed once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use commitd_api::k8s_openapi::api::batch::v1::{CronJob, Job};
use commitd_api::k8s_openapi::api::core::v1::Pod;
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use commitd_api::reflector::Cache;
use commitd_api::{meta, Object, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{delete_pod, pass_result, Caches, PodDeletion};

/// How long the loop sleeps when nothing changes.
const RESYNC: Duration = Duration::from_secs(60);
/// How soon to look again when the caches have not listed yet.
const NOT_READY_REQUEUE: Duration = Duration::from_secs(1);

/// Runs the garbage-collection loop until `cancel` fires.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    let triggers = vec![
        caches.deployments.changes(),
        caches.replica_sets.changes(),
        caches.jobs.changes(),
        caches.cron_jobs.changes(),
        caches.daemon_sets.changes(),
        caches.stateful_sets.changes(),
        caches.claims.changes(),
        caches.pods.changes(),
    ];
    let gc = Arc::new(GarbageCollector { store, caches });
    controller::run("garbage-collector", triggers, RESYNC, cancel, move || {
        let gc = gc.clone();
        async move { gc.collect().await }
    })
    .await;
}

struct GarbageCollector {
    store: Store,
    caches: Caches,
}

/// Whether a dependent's controller owner exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    Present,
    Absent,
    /// A kind this collector does not know: never delete on a guess.
    Unknown,
}

impl GarbageCollector {
    async fn collect(&self) -> Result<Requeue> {
        if !self.caches.ready() {
            return Ok(Some(NOT_READY_REQUEUE));
        }
        let mut failed = Vec::new();
        for rs in self.caches.replica_sets.list() {
            let key = meta::display_key(&*rs);
            let span = info_span!("gc", replica_set = %key);
            if let Err(e) = self.collect_owned(&*rs).instrument(span).await {
                warn!(replica_set = %key, error = format!("{e:#}"), "garbage collection failed");
                failed.push(format!("{key}: {e:#}"));
            }
        }
        for job in self.caches.jobs.list() {
            let key = meta::display_key(&*job);
            let span = info_span!("gc", job = %key);
            if let Err(e) = self.collect_owned(&*job).instrument(span).await {
                warn!(job = %key, error = format!("{e:#}"), "garbage collection failed");
                failed.push(format!("{key}: {e:#}"));
            }
        }
        for revision in self.caches.controller_revisions.list() {
            let key = meta::display_key(&*revision);
            let span = info_span!("gc", controller_revision = %key);
            if let Err(e) = self.collect_owned(&*revision).instrument(span).await {
                warn!(controller_revision = %key, error = format!("{e:#}"), "garbage collection failed");
                failed.push(format!("{key}: {e:#}"));
            }
        }
        for claim in self.caches.claims.list() {
            let key = meta::display_key(&*claim);
            let span = info_span!("gc", claim = %key);
            if let Err(e) = self.collect_owned(&*claim).instrument(span).await {
                warn!(claim = %key, error = format!("{e:#}"), "garbage collection failed");
                failed.push(format!("{key}: {e:#}"));
            }
        }
        for pod in self.caches.pods.list() {
            let key = meta::display_key(&*pod);
            let span = info_span!("gc", pod = %key);
            if let Err(e) = self.collect_pod(&pod).instrument(span).await {
                warn!(pod = %key, error = format!("{e:#}"), "garbage collection failed");
                failed.push(format!("{key}: {e:#}"));
            }
        }
        pass_result("garbage-collector", failed, None)
    }

    /// Deletes a derived object (a ReplicaSet, a CronJob's Job, a
    /// StatefulSet's claim) whose controller owner is gone; its own
    /// dependents follow on later passes.
    async fn collect_owned<T: Object>(&self, obj: &T) -> Result<()> {
        let m = obj.metadata();
        if meta::is_git_owned(m) || meta::is_terminating(m) {
            return Ok(());
        }
        let Some(owner) = meta::controller_of(m) else {
            return Ok(());
        };
        if self.owner_state(meta::namespace(obj), owner).await? != OwnerState::Absent {
            return Ok(());
        }
        let name = meta::name(obj);
        let kind = T::STORE_KIND;
        let rv = m.resource_version.as_deref();
        match self.store.delete::<T>(meta::namespace(obj), name, rv).await {
            Ok(deleted) => {
                if deleted {
                    info!(%kind, owner = %format!("{}/{}", owner.kind, owner.name), "deleted object whose owner is gone");
                }
                Ok(())
            }
            // It changed since the cache saw it: decide again next pass.
            Err(e) if e.is_conflict() => {
                debug!(%kind, "object changed; collecting it later");
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("deleting {kind} {name}")),
        }
    }

    async fn collect_pod(&self, pod: &Pod) -> Result<()> {
        let unbound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty);
        if meta::is_terminating(&pod.metadata) && unbound {
            // No node agent will ever finish this deletion.
            let outcome = delete_pod(&self.store, pod)
                .await
                .context("deleting terminating unbound pod")?;
            if matches!(outcome, PodDeletion::Deleted { .. }) {
                info!("deleted terminating pod that no node runs");
            }
            return Ok(());
        }
        if meta::is_git_owned(&pod.metadata) || meta::is_terminating(&pod.metadata) {
            return Ok(());
        }
        let Some(owner) = meta::controller_of(&pod.metadata) else {
            return Ok(());
        };
        if self.owner_state(meta::namespace(pod), owner).await? != OwnerState::Absent {
            return Ok(());
        }
        let outcome = delete_pod(&self.store, pod)
            .await
            .context("deleting orphaned pod")?;
        info!(owner = %format!("{}/{}", owner.kind, owner.name), ?outcome, "deleting pod whose owner is gone");
        Ok(())
    }

    /// Looks for the owner (same kind, name and uid) in the cache, and in
    /// etcd when the cache does not have it.
    async fn owner_state(
        &self,
        namespace: Option<&str>,
        owner: &OwnerReference,
    ) -> Result<OwnerState> {
        if is_kind::<Deployment>(owner) {
            self.present::<Deployment>(&self.caches.deployments, namespace, owner)
                .await
        } else if is_kind::<ReplicaSet>(owner) {
            self.present::<ReplicaSet>(&self.caches.replica_sets, namespace, owner)
                .await
        } else if is_kind::<Job>(owner) {
            self.present::<Job>(&self.caches.jobs, namespace, owner)
                .await
        } else if is_kind::<CronJob>(owner) {
            self.present::<CronJob>(&self.caches.cron_jobs, namespace, owner)
                .await
        } else if is_kind::<DaemonSet>(owner) {
            self.present::<DaemonSet>(&self.caches.daemon_sets, namespace, owner)
                .await
        } else if is_kind::<StatefulSet>(owner) {
            self.present::<StatefulSet>(&self.caches.stateful_sets, namespace, owner)
                .await
        } else {
            debug!(kind = %owner.kind, api_version = %owner.api_version, "owner kind not collected");
            Ok(OwnerState::Unknown)
        }
    }

    async fn present<T: Object>(
        &self,
        cache: &Cache<T>,
        namespace: Option<&str>,
        owner: &OwnerReference,
    ) -> Result<OwnerState> {
        let same = |obj: &T| obj.metadata().uid.as_deref() == Some(owner.uid.as_str());
        if cache.get(namespace, &owner.name).is_some_and(|o| same(&o)) {
            return Ok(OwnerState::Present);
        }
        let live = self
            .store
            .get::<T>(namespace, &owner.name)
            .await
            .with_context(|| format!("looking up owner {}/{}", owner.kind, owner.name))?;
        Ok(if live.as_ref().is_some_and(same) {
            OwnerState::Present
        } else {
            OwnerState::Absent
        })
    }
}

/// Whether an owner reference names kind `T` (group and kind, as
/// Kubernetes matches owners).
fn is_kind<T: Object>(owner: &OwnerReference) -> bool {
    owner.kind == T::KIND && owner.api_version == T::API_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_match_by_group_and_kind() {
        let mut owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            uid: "u".into(),
            ..Default::default()
        };
        assert!(is_kind::<Deployment>(&owner));
        assert!(!is_kind::<ReplicaSet>(&owner));
        owner.api_version = "example.com/v1".into();
        assert!(!is_kind::<Deployment>(&owner));
    }
}
