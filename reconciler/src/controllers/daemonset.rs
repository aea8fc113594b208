//! The DaemonSet controller: one pod of a DaemonSet's template on every
//! node that should run one (see [`super::daemonset_plan`] for which), kept
//! up to date by RollingUpdate or OnDelete, with Kubernetes' status counts.
//!
//! Pods are bound directly (`spec.nodeName` is set at creation), as
//! Kubernetes did before it handed daemon pods to the scheduler: the
//! controller already decided the node, and daemons must also land on
//! nodes the scheduler refuses (not ready, cordoned). They carry the
//! tolerations Kubernetes adds to every daemon pod, so the node agent and
//! anyone reading the pod see why they are there.
//!
//! Nodes come from the shared node cache (written by node agents), so a
//! node that registers later gets its pod on the next pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::k8s_openapi::api::apps::v1::DaemonSet;
use commitd_api::k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta::{self, COMMIT_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::{defaults, Store, StoreError};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::daemonset_plan::{
    self, daemon_tolerations, Revision, REVISION_HASH_LABEL, TEMPLATE_GENERATION_LABEL,
};
use super::expectations::{delete_pods, sync_each, Expectations};
use super::{controlled_in, earliest, pod_template_hash, resource_version, Caches};

/// How long the loop sleeps when nothing changes.
const RESYNC: Duration = Duration::from_secs(30);
/// At most this many pods are created or deleted per DaemonSet and pass
/// (Kubernetes' `BurstReplicas` for DaemonSets); the next pass does the
/// rest.
const BURST_REPLICAS: usize = 250;
/// Generated names that collide are tried again with a new suffix.
const NAME_ATTEMPTS: usize = 8;
/// Kubernetes' `maxGeneratedNameLength` (63 − 5 random characters).
const MAX_GENERATED_NAME_PREFIX: usize = 58;
/// The first wait before a node's next failed daemon pod is replaced.
const FAILED_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait (Kubernetes' `failedPodsBackoff` maximum).
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// Runs the DaemonSet loop until `cancel` fires.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    let triggers = vec![
        caches.daemon_sets.changes(),
        caches.pods.changes(),
        caches.nodes.changes(),
    ];
    let ctl = Arc::new(DaemonSetController {
        store,
        caches,
        expectations: Expectations::default(),
        failures: FailureBackoff::default(),
    });
    controller::run("daemonset", triggers, RESYNC, cancel, move || {
        let ctl = ctl.clone();
        async move { ctl.reconcile_all().await }
    })
    .await;
}

struct DaemonSetController {
    store: Store,
    caches: Caches,
    /// Per DaemonSet uid: the revision of our last pod write.
    expectations: Expectations,
    /// Per DaemonSet and node: when a failed pod may next be replaced.
    failures: FailureBackoff,
}

impl DaemonSetController {
    async fn reconcile_all(&self) -> Result<Requeue> {
        self.failures.forget_stale(Instant::now());
        sync_each(
            "daemonset",
            self.caches.daemon_sets.list(),
            &self.expectations,
            self.caches.pods.revision(),
            |ds, uid| async move { self.reconcile(&ds, uid).await },
        )
        .await
    }

    async fn reconcile(&self, ds: &DaemonSet, uid: String) -> Result<Requeue> {
        let namespace = meta::namespace(ds);
        let nodes: Vec<Arc<Node>> = self.caches.nodes.list();
        let node_refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
        let owned: Vec<Arc<Pod>> = controlled_in(&self.caches.pods, namespace, &uid);
        let pods: Vec<&Pod> = owned.iter().map(|p| &**p).collect();
        let revision = revision_of(ds);
        let now = Timestamp::now();

        let plan = daemonset_plan::plan(ds, &revision, &node_refs, &pods, now);
        let mut requeue = None;
        let mut create_on = plan.create_on;
        let mut delete = plan.delete;
        for pod in plan.delete_failed {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            match self.failures.next(&format!("{uid}/{node}"), Instant::now()) {
                Ok(()) => {
                    info!(pod = %meta::display_key(pod), node = %node, "replacing failed daemon pod");
                    delete.push(pod);
                }
                Err(wait) => {
                    debug!(node = %node, ?wait, "failed daemon pod in back-off");
                    create_on.retain(|n| *n != node);
                    requeue = earliest(requeue, Some(wait));
                }
            }
        }
        create_on.truncate(BURST_REPLICAS);
        delete.truncate(BURST_REPLICAS);

        let deleted =
            delete_pods(&self.store, &self.expectations, &uid, delete, "daemon pods").await;
        let created = self.create_pods(ds, &uid, &revision, &create_on).await;

        let (status, status_requeue) =
            daemonset_plan::compute_status(ds, &revision, &node_refs, &pods, now);
        requeue = earliest(requeue, status_requeue);
        if ds.status.as_ref() != Some(&status) {
            self.store
                .modify::<DaemonSet, _>(namespace, meta::name(ds), |cur| {
                    if cur.metadata.uid.as_deref() != Some(uid.as_str())
                        || cur.status.as_ref() == Some(&status)
                    {
                        return false;
                    }
                    cur.status = Some(status.clone());
                    true
                })
                .await
                .context("writing daemon set status")?;
        }
        deleted.and(created).map(|()| requeue)
    }

    /// Creates one pod per node in slow-start batches (1, 2, 4, …) as
    /// Kubernetes does, so a template that cannot be created fails once,
    /// not once per node.
    async fn create_pods(
        &self,
        ds: &DaemonSet,
        uid: &str,
        revision: &Revision,
        nodes: &[String],
    ) -> Result<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        let mut rest = nodes;
        let mut batch = 1;
        let mut created = 0;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            let results = join_all(
                now.iter()
                    .map(|node| self.create_pod(ds, uid, revision, node)),
            )
            .await;
            created += results.iter().filter(|r| r.is_ok()).count();
            if let Some(err) = results.into_iter().find_map(Result::err) {
                info!(
                    created,
                    wanted = nodes.len(),
                    "created daemon pods (stopped at an error)"
                );
                return Err(err);
            }
            rest = later;
            batch *= 2;
        }
        info!(created, "created daemon pods");
        Ok(())
    }

    async fn create_pod(
        &self,
        ds: &DaemonSet,
        uid: &str,
        revision: &Revision,
        node: &str,
    ) -> Result<()> {
        let prefix = generate_name_prefix(meta::name(ds));
        for _ in 0..NAME_ATTEMPTS {
            let name = format!("{prefix}{}", meta::random_suffix(5));
            let pod = daemon_pod(ds, revision, node, &prefix, &name)?;
            match self.store.create(pod).await {
                Ok(pod) => {
                    let written = resource_version(&pod.metadata).unwrap_or_default();
                    self.expectations.expect(uid, written);
                    debug!(pod = %name, node, "created daemon pod");
                    return Ok(());
                }
                Err(StoreError::AlreadyExists { .. }) => {
                    debug!(pod = %name, "generated pod name taken; trying another");
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating pod {name} for node {node}"))
                }
            }
        }
        bail!("no free pod name after {NAME_ATTEMPTS} attempts with prefix {prefix}")
    }
}

/// The revision current pods must carry: the template's hash (with the
/// collision count, as Deployments do) and the DaemonSet's generation.
fn revision_of(ds: &DaemonSet) -> Revision {
    let spec = ds.spec.clone().unwrap_or_default();
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    Revision {
        hash: pod_template_hash(&spec.template, collisions),
        generation: ds.metadata.generation,
    }
}

/// `<ds>-`, cut as Kubernetes' name generator does so that the generated
/// name stays a valid label value.
fn generate_name_prefix(ds_name: &str) -> String {
    let mut prefix = format!("{ds_name}-");
    if prefix.len() > MAX_GENERATED_NAME_PREFIX {
        let mut cut = MAX_GENERATED_NAME_PREFIX;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
    }
    prefix
}

/// A daemon pod for `node`: the template's labels (plus the revision
/// labels), annotations and spec, the daemon tolerations, bound to the
/// node, with the DaemonSet as controller. Git's provenance annotations
/// are never copied: a derived pod must not look declared in Git.
fn daemon_pod(
    ds: &DaemonSet,
    revision: &Revision,
    node: &str,
    prefix: &str,
    name: &str,
) -> Result<Pod> {
    let Some(template) = ds.spec.as_ref().map(|s| &s.template) else {
        bail!("daemon set has no spec");
    };
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH_LABEL.into(), revision.hash.clone());
    if let Some(generation) = revision.generation {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation.to_string());
    }
    let annotations = template_meta.annotations.map(|mut a| {
        a.remove(COMMIT_ANNOTATION);
        a.remove(SOURCE_ANNOTATION);
        a
    });
    let mut spec = template.spec.clone().unwrap_or_default();
    defaults::pod_spec(&mut spec);
    spec.tolerations = Some(daemon_tolerations(&spec));
    spec.node_name = Some(node.to_string());
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            generate_name: Some(prefix.to_string()),
            namespace: meta::namespace(ds).map(str::to_owned),
            labels: Some(labels),
            annotations: annotations.filter(|a| !a.is_empty()),
            owner_references: Some(vec![meta::controller_reference(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    })
}

/// Exponential back-off per DaemonSet and node for replacing failed pods
/// (Kubernetes' `failedPodsBackoff`), so a node that keeps rejecting a pod
/// is not hammered with new ones.
#[derive(Debug, Default)]
struct FailureBackoff {
    /// Key → (when the next replacement may happen, the current delay).
    entries: Mutex<HashMap<String, (Instant, Duration)>>,
}

impl FailureBackoff {
    /// `Ok` if a failed pod under `key` may be replaced now (and the next
    /// one waits twice as long), else how long until it may.
    fn next(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, delay)) = entries.get(key).copied() {
            if now < at {
                return Err(at - now);
            }
            let delay = (delay * 2).min(FAILED_BACKOFF_MAX);
            entries.insert(key.to_string(), (now + delay, delay));
        } else {
            entries.insert(
                key.to_string(),
                (now + FAILED_BACKOFF_INITIAL, FAILED_BACKOFF_INITIAL),
            );
        }
        Ok(())
    }

    /// Forgets nodes that have not failed for twice the longest delay, as
    /// Kubernetes' back-off garbage collection does.
    fn forget_stale(&self, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < FAILED_BACKOFF_MAX * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds() -> DaemonSet {
        let mut d: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "demo", "uid": "ds-uid", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"},
                                               "annotations": {"note": "x", "commitd.io/commit": "c0ffee"}},
                                  "spec": {"containers": [{"name": "c", "image": "agent:1"}],
                                           "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}]}}}
        }))
        .expect("valid daemon set");
        defaults::daemon_set(&mut d);
        d
    }

    #[test]
    fn daemon_pods_are_bound_labelled_owned_and_tolerant() -> Result<()> {
        let d = ds();
        let revision = revision_of(&d);
        let prefix = generate_name_prefix(meta::name(&d));
        let pod = daemon_pod(&d, &revision, "node-1", &prefix, "agent-abc12")?;
        assert_eq!(meta::name(&pod), "agent-abc12");
        assert_eq!(pod.metadata.namespace.as_deref(), Some("demo"));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
        assert_eq!(
            labels.get(REVISION_HASH_LABEL),
            Some(&pod_template_hash(
                &d.spec.clone().unwrap_or_default().template,
                None
            ))
        );
        assert_eq!(
            labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str),
            Some("3")
        );
        assert!(revision.is_current(&pod));
        assert!(!meta::is_git_owned(&pod.metadata));
        let owner = meta::controller_of(&pod.metadata).context("controller")?;
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("DaemonSet", "ds-uid")
        );
        let spec = pod.spec.context("spec")?;
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        let tolerations = spec.tolerations.unwrap_or_default();
        assert_eq!(tolerations.len(), 7, "{tolerations:?}");
        assert!(tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));
        Ok(())
    }

    #[test]
    fn a_template_change_changes_the_revision() {
        let a = ds();
        let mut b = ds();
        if let Some(s) = b.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            s.containers[0].image = Some("agent:2".into());
        }
        assert_ne!(revision_of(&a).hash, revision_of(&b).hash);
        // A strategy change alone keeps the revision.
        let mut c = ds();
        if let Some(u) = c.spec.as_mut().and_then(|s| s.update_strategy.as_mut()) {
            u.type_ = Some("OnDelete".into());
        }
        assert_eq!(revision_of(&a).hash, revision_of(&c).hash);
    }

    #[test]
    fn failed_pods_back_off_per_node() {
        let b = FailureBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.next("ds/n1", t0), Ok(()));
        assert_eq!(
            b.next("ds/n1", t0 + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        // Another node is not held back.
        assert_eq!(b.next("ds/n2", t0), Ok(()));
        assert_eq!(b.next("ds/n1", t0 + Duration::from_secs(1)), Ok(()));
        // The delay doubled.
        assert_eq!(
            b.next("ds/n1", t0 + Duration::from_secs(2)),
            Err(Duration::from_secs(1))
        );
        b.forget_stale(t0 + FAILED_BACKOFF_MAX * 3);
        assert_eq!(b.next("ds/n1", t0 + FAILED_BACKOFF_MAX * 3), Ok(()));
    }
}
