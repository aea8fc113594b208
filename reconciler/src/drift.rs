//! Noticing drift cheaply: caches of the kinds Git declares are compared in
//! memory with the applied commit's manifests; only when something differs
//! does the reconciler run the transactional correction.
//!
//! A Git-owned Job is drift only in what Git declares (its status is the
//! controller's). A Job the cluster deleted on purpose — its
//! `ttlSecondsAfterFinished` expired — leaves a tombstone
//! ([`commitd_api::records::Tombstone`]); while Git still declares the same
//! Job, it is not missing, and not put back.

use std::sync::Arc;

use commitd_api::k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use commitd_api::k8s_openapi::api::batch::v1::{CronJob, Job};
use commitd_api::k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
    ServiceAccount,
};
use commitd_api::k8s_openapi::api::storage::v1::StorageClass;
use commitd_api::manifest::Manifest;
use commitd_api::records::Tombstone;
use commitd_api::reflector::{reflect, reflect_prefix, Cache};
use commitd_api::{keys, Kind, Object, Store};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::apply::{desired_view, keep_assigned_fields};
use crate::job_templates::tombstone_view;

/// Caches of every kind a commit may declare.
#[derive(Clone)]
pub struct GitKindCaches {
    namespaces: Cache<Namespace>,
    config_maps: Cache<ConfigMap>,
    secrets: Cache<Secret>,
    service_accounts: Cache<ServiceAccount>,
    services: Cache<Service>,
    pods: Cache<Pod>,
    replica_sets: Cache<ReplicaSet>,
    deployments: Cache<Deployment>,
    jobs: Cache<Job>,
    cron_jobs: Cache<CronJob>,
    daemon_sets: Cache<DaemonSet>,
    stateful_sets: Cache<StatefulSet>,
    claims: Cache<PersistentVolumeClaim>,
    volumes: Cache<PersistentVolume>,
    storage_classes: Cache<StorageClass>,
    tombstones: Cache<Tombstone>,
}

fn json_of<T: Object>(c: &Cache<T>, ns: Option<&str>, name: &str) -> Option<Value> {
    c.get(ns, name)
        .and_then(|o: Arc<T>| serde_json::to_value(o.as_ref()).ok())
}

impl GitKindCaches {
    /// Starts the caches.
    pub fn start(store: &Store, cancel: &CancellationToken) -> GitKindCaches {
        GitKindCaches {
            namespaces: reflect(store.clone(), cancel.clone()),
            config_maps: reflect(store.clone(), cancel.clone()),
            secrets: reflect(store.clone(), cancel.clone()),
            service_accounts: reflect(store.clone(), cancel.clone()),
            services: reflect(store.clone(), cancel.clone()),
            pods: reflect(store.clone(), cancel.clone()),
            replica_sets: reflect(store.clone(), cancel.clone()),
            deployments: reflect(store.clone(), cancel.clone()),
            jobs: reflect(store.clone(), cancel.clone()),
            cron_jobs: reflect(store.clone(), cancel.clone()),
            daemon_sets: reflect(store.clone(), cancel.clone()),
            stateful_sets: reflect(store.clone(), cancel.clone()),
            claims: reflect(store.clone(), cancel.clone()),
            volumes: reflect(store.clone(), cancel.clone()),
            storage_classes: reflect(store.clone(), cancel.clone()),
            tombstones: reflect_prefix(
                store.clone(),
                keys::TOMBSTONE_PREFIX.to_string(),
                |_, kv| serde_json::from_slice(kv.value()).map_err(|e| e.to_string()),
                cancel.clone(),
            ),
        }
    }

    /// Receivers that wake when any of the caches changes.
    pub fn changes(&self) -> Vec<watch::Receiver<u64>> {
        vec![
            self.namespaces.changes(),
            self.config_maps.changes(),
            self.secrets.changes(),
            self.service_accounts.changes(),
            self.services.changes(),
            self.pods.changes(),
            self.replica_sets.changes(),
            self.deployments.changes(),
            self.jobs.changes(),
            self.cron_jobs.changes(),
            self.daemon_sets.changes(),
            self.stateful_sets.changes(),
            self.claims.changes(),
            self.volumes.changes(),
            self.storage_classes.changes(),
            self.tombstones.changes(),
        ]
    }

    fn ready(&self) -> bool {
        self.namespaces.is_ready()
            && self.config_maps.is_ready()
            && self.secrets.is_ready()
            && self.service_accounts.is_ready()
            && self.services.is_ready()
            && self.pods.is_ready()
            && self.replica_sets.is_ready()
            && self.deployments.is_ready()
            && self.jobs.is_ready()
            && self.cron_jobs.is_ready()
            && self.daemon_sets.is_ready()
            && self.stateful_sets.is_ready()
            && self.claims.is_ready()
            && self.volumes.is_ready()
            && self.storage_classes.is_ready()
            && self.tombstones.is_ready()
    }

    /// The tombstone of an object the cluster deleted on purpose.
    fn tombstone(&self, kind: Kind, ns: Option<&str>, name: &str) -> Option<Arc<Tombstone>> {
        self.tombstones
            .get_key(&keys::tombstone_key(kind, ns, name))
    }

    fn json(&self, kind: Kind, ns: Option<&str>, name: &str) -> Option<Value> {
        match kind {
            Kind::Namespace => json_of(&self.namespaces, ns, name),
            Kind::ConfigMap => json_of(&self.config_maps, ns, name),
            Kind::Secret => json_of(&self.secrets, ns, name),
            Kind::ServiceAccount => json_of(&self.service_accounts, ns, name),
            Kind::Service => json_of(&self.services, ns, name),
            Kind::Pod => json_of(&self.pods, ns, name),
            Kind::ReplicaSet => json_of(&self.replica_sets, ns, name),
            Kind::Deployment => json_of(&self.deployments, ns, name),
            Kind::Job => json_of(&self.jobs, ns, name),
            Kind::CronJob => json_of(&self.cron_jobs, ns, name),
            Kind::DaemonSet => json_of(&self.daemon_sets, ns, name),
            Kind::StatefulSet => json_of(&self.stateful_sets, ns, name),
            Kind::PersistentVolumeClaim => json_of(&self.claims, ns, name),
            Kind::PersistentVolume => json_of(&self.volumes, ns, name),
            Kind::StorageClass => json_of(&self.storage_classes, ns, name),
            Kind::Node | Kind::Endpoints | Kind::ControllerRevision => None,
        }
    }

    /// Whether etcd holds the object, or `None` while the caches are not
    /// filled yet.
    pub fn has(&self, kind: Kind, ns: Option<&str>, name: &str) -> Option<bool> {
        if !self.ready() {
            return None;
        }
        // A Job deleted after it finished is not missing.
        let present = self.json(kind, ns, name).is_some()
            || (kind == Kind::Job && self.tombstone(kind, ns, name).is_some());
        Some(present)
    }

    /// Whether some declared object is missing or differs from Git (as far
    /// as the caches know; the correction re-reads etcd).
    pub fn differs(&self, manifests: &[Manifest], sha: &str) -> bool {
        if !self.ready() {
            return false;
        }
        manifests.iter().any(
            |m| match self.json(m.kind, m.namespace.as_deref(), &m.name) {
                None => !self.deleted_on_purpose(m, sha),
                Some(current) => {
                    let mut desired = m.object.clone();
                    annotate_for_compare(&mut desired, m, sha);
                    keep_assigned_fields(m.kind, &mut desired, &current);
                    desired_view(&current) != desired_view(&desired)
                }
            },
        )
    }
}

impl GitKindCaches {
    /// Whether a missing object was deleted by the cluster on purpose and
    /// Git still declares it as it was then.
    fn deleted_on_purpose(&self, m: &Manifest, sha: &str) -> bool {
        let Some(t) = self.tombstone(m.kind, m.namespace.as_deref(), &m.name) else {
            return false;
        };
        let mut desired = m.object.clone();
        annotate_for_compare(&mut desired, m, sha);
        t.view == tombstone_view(m.kind, &desired)
    }
}

fn annotate_for_compare(v: &mut Value, m: &Manifest, sha: &str) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        let ann = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = ann.as_object_mut() {
            a.insert(
                commitd_api::meta::COMMIT_ANNOTATION.into(),
                Value::from(sha),
            );
            a.insert(
                commitd_api::meta::SOURCE_ANNOTATION.into(),
                Value::from(m.source.to_string()),
            );
        }
    }
}
