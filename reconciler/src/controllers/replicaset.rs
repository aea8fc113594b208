//! The ReplicaSet controller: keeps as many live pods as a ReplicaSet asks
//! for. Pods belong to a ReplicaSet by their controller owner reference (its
//! uid), so a ReplicaSet recreated under the same name never adopts the
//! pods of its predecessor. Missing pods are created from the template;
//! extra ones are deleted gracefully, the least useful first.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use commitd_api::k8s_openapi::api::core::v1::{Pod, PodStatus, PodTemplateSpec};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta::{self, COMMIT_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::{defaults, selector, Store, StoreError};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::expectations::{delete_pods, sync_each, Expectations};
use super::pod_readiness::{availability, is_ready, ready_since};
use super::{controlled_in, earliest, Caches};

/// How long the loop sleeps when nothing changes.
const RESYNC: Duration = Duration::from_secs(30);
/// At most this many pods are created or deleted per ReplicaSet and pass
/// (Kubernetes' `burstReplicas`); the next pass does the rest.
const BURST_REPLICAS: usize = 500;
/// Generated names that collide are tried again with a new suffix.
const NAME_ATTEMPTS: usize = 8;
/// Kubernetes' `maxGeneratedNameLength` (63 − 5 random characters).
const MAX_GENERATED_NAME_PREFIX: usize = 58;

/// Runs the ReplicaSet loop until `cancel` fires.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    let triggers = vec![caches.replica_sets.changes(), caches.pods.changes()];
    let ctl = Arc::new(ReplicaSetController {
        store,
        caches,
        expectations: Expectations::default(),
    });
    controller::run("replicaset", triggers, RESYNC, cancel, move || {
        let ctl = ctl.clone();
        async move { ctl.reconcile_all().await }
    })
    .await;
}

struct ReplicaSetController {
    store: Store,
    caches: Caches,
    /// Per ReplicaSet uid: the revision of our last pod write.
    expectations: Expectations,
}

impl ReplicaSetController {
    async fn reconcile_all(&self) -> Result<Requeue> {
        sync_each(
            "replicaset",
            self.caches.replica_sets.list(),
            &self.expectations,
            self.caches.pods.revision(),
            |rs, uid| async move { self.reconcile(&rs, uid).await },
        )
        .await
    }

    async fn reconcile(&self, rs: &ReplicaSet, uid: String) -> Result<Requeue> {
        let namespace = meta::namespace(rs);
        let desired =
            usize::try_from(rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(0);
        let owned: Vec<Arc<Pod>> = controlled_in(&self.caches.pods, namespace, &uid);
        let active: Vec<&Pod> = owned
            .iter()
            .map(|p| &**p)
            .filter(|p| is_active(p))
            .collect();
        let (status, requeue) = compute_status(rs, &active, Timestamp::now());

        let mut result = Ok(());
        if active.len() < desired {
            let missing = (desired - active.len()).min(BURST_REPLICAS);
            result = self.create_pods(rs, &uid, missing).await;
        } else if active.len() > desired {
            let extra = (active.len() - desired).min(BURST_REPLICAS);
            let pods = select_for_deletion(&active, extra);
            result = delete_pods(&self.store, &self.expectations, &uid, pods, "extra pods").await;
        }

        if rs.status.as_ref() != Some(&status) {
            self.store
                .modify::<ReplicaSet, _>(namespace, meta::name(rs), |cur| {
                    if cur.metadata.uid.as_deref() != Some(uid.as_str())
                        || cur.status.as_ref() == Some(&status)
                    {
                        return false;
                    }
                    cur.status = Some(status.clone());
                    true
                })
                .await
                .context("writing replica set status")?;
        }
        result.map(|()| requeue)
    }

    /// Creates `count` pods in slow-start batches (1, 2, 4, …) as Kubernetes
    /// does, so a template that cannot be created fails once, not 500
    /// times.
    async fn create_pods(&self, rs: &ReplicaSet, uid: &str, count: usize) -> Result<()> {
        let Some(template) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) else {
            bail!("replica set has no pod template");
        };
        let mut remaining = count;
        let mut batch = 1;
        let mut created = 0;
        while remaining > 0 {
            let n = batch.min(remaining);
            let results = join_all((0..n).map(|_| self.create_pod(rs, template, uid))).await;
            created += results.iter().filter(|r| r.is_ok()).count();
            if let Some(err) = results.into_iter().find_map(Result::err) {
                info!(
                    created,
                    wanted = count,
                    "created pods (stopped at an error)"
                );
                return Err(err);
            }
            remaining -= n;
            batch *= 2;
        }
        info!(created, "created pods");
        Ok(())
    }

    async fn create_pod(
        &self,
        rs: &ReplicaSet,
        template: &PodTemplateSpec,
        uid: &str,
    ) -> Result<()> {
        let prefix = generate_name_prefix(meta::name(rs));
        for _ in 0..NAME_ATTEMPTS {
            let name = format!("{prefix}{}", meta::random_suffix(5));
            match self
                .store
                .create(pod_from_template(rs, template, &prefix, &name))
                .await
            {
                Ok(pod) => {
                    let revision = super::resource_version(&pod.metadata).unwrap_or_default();
                    self.expectations.expect(uid, revision);
                    debug!(pod = %name, "created pod");
                    return Ok(());
                }
                Err(StoreError::AlreadyExists { .. }) => {
                    debug!(pod = %name, "generated pod name taken; trying another");
                }
                Err(e) => return Err(e).with_context(|| format!("creating pod {name}")),
            }
        }
        bail!("no free pod name after {NAME_ATTEMPTS} attempts with prefix {prefix}")
    }
}

/// `<rs>-`, cut as Kubernetes' name generator does so that the generated
/// name stays a valid label value.
fn generate_name_prefix(rs_name: &str) -> String {
    let mut prefix = format!("{rs_name}-");
    if prefix.len() > MAX_GENERATED_NAME_PREFIX {
        let mut cut = MAX_GENERATED_NAME_PREFIX;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
    }
    prefix
}

/// A pod as a ReplicaSet stamps it out: the template's labels, annotations
/// and spec, the ReplicaSet as controller, phase `Pending` as the API
/// server sets it. Git's provenance annotations are never copied: a derived
/// pod must not look declared in Git.
fn pod_from_template(rs: &ReplicaSet, template: &PodTemplateSpec, prefix: &str, name: &str) -> Pod {
    let template_meta = template.metadata.clone().unwrap_or_default();
    let annotations = template_meta.annotations.map(|mut a| {
        a.remove(COMMIT_ANNOTATION);
        a.remove(SOURCE_ANNOTATION);
        a
    });
    let mut spec = template.spec.clone().unwrap_or_default();
    defaults::pod_spec(&mut spec);
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            generate_name: Some(prefix.to_string()),
            namespace: meta::namespace(rs).map(str::to_owned),
            labels: template_meta.labels,
            annotations: annotations.filter(|a| !a.is_empty()),
            owner_references: Some(vec![meta::controller_reference(rs)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

/// Pods that count toward the replicas: not being deleted, not finished
/// (Kubernetes' `FilterActivePods`).
fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !meta::is_terminating(&pod.metadata) && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn nonzero(n: usize) -> Option<i32> {
    (n != 0).then(|| i32::try_from(n).unwrap_or(i32::MAX))
}

/// The ReplicaSet status Kubernetes would write for these live pods, and
/// when a ready pod will turn available (so the loop looks again then).
fn compute_status(rs: &ReplicaSet, active: &[&Pod], now: Timestamp) -> (ReplicaSetStatus, Requeue) {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .and_then(|t| t.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            selector::matches_map(
                &template_labels,
                p.metadata.labels.as_ref().unwrap_or(&Default::default()),
            )
        })
        .count();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let mut available = 0;
    let mut requeue = None;
    for pod in active {
        match availability(pod, min_ready, now) {
            Ok(true) => available += 1,
            Ok(false) => {}
            Err(wait) => requeue = earliest(requeue, Some(wait)),
        }
    }
    let mut status = rs.status.clone().unwrap_or_default();
    status.replicas = i32::try_from(active.len()).unwrap_or(i32::MAX);
    status.fully_labeled_replicas = nonzero(fully_labeled);
    status.ready_replicas = nonzero(ready);
    status.available_replicas = nonzero(available);
    status.observed_generation = rs.metadata.generation;
    (status, requeue)
}

/// The `count` pods to delete first when scaling down, as Kubernetes ranks
/// them (`ActivePods`): unscheduled before scheduled, pending before
/// unknown before running, not ready before ready, ready for less time
/// before longer, more restarts before fewer, newer before older.
fn select_for_deletion<'a>(pods: &[&'a Pod], count: usize) -> Vec<&'a Pod> {
    let mut ranked = pods.to_vec();
    ranked.sort_by(|a, b| deletion_order(a, b));
    ranked.truncate(count);
    ranked
}

fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let unassigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty)
    };
    let phase = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().map(|c| c.restart_count).max())
            .unwrap_or(0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    unassigned(b)
        .cmp(&unassigned(a))
        .then_with(|| phase(a).cmp(&phase(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(ta), Some(tb)) => after_or_zero(ta, tb),
            _ => Ordering::Equal,
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| after_or_zero(created(a), created(b)))
        .then_with(|| meta::name(a).cmp(meta::name(b)))
}

/// Kubernetes' `afterOrZero` as an ordering: a missing time first, then
/// the later time first.
fn after_or_zero(a: Option<Timestamp>, b: Option<Timestamp>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid time")
    }

    fn pod(
        name: &str,
        node: Option<&str>,
        phase: &str,
        ready_at: Option<i64>,
        created: i64,
    ) -> Pod {
        let mut conditions = Vec::new();
        if let Some(at) = ready_at {
            conditions.push(serde_json::json!({"type": "Ready", "status": "True",
                "lastTransitionTime": Time(t(at))}));
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"},
                          "creationTimestamp": Time(t(created))},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": phase, "conditions": conditions}
        }))
        .expect("valid pod")
    }

    fn replica_set(min_ready: i32) -> ReplicaSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "demo", "uid": "rs-uid", "generation": 4},
            "spec": {"replicas": 3, "minReadySeconds": min_ready,
                      "selector": {"matchLabels": {"app": "web"}},
                      "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"},
                                                "annotations": {"note": "x", "commitd.io/commit": "c0ffee"}},
                                   "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}
        }))
        .expect("valid replica set")
    }

    fn names(pods: Vec<&Pod>) -> Vec<&str> {
        pods.into_iter().map(meta::name).collect()
    }

    #[test]
    fn deletion_prefers_unscheduled_then_pending_then_not_ready_then_newest() {
        let running_ready_old = pod("ready-old", Some("n1"), "Running", Some(10), 0);
        let running_ready_new = pod("ready-new", Some("n1"), "Running", Some(50), 1);
        let running_not_ready = pod("not-ready", Some("n1"), "Running", None, 2);
        let pending = pod("pending", Some("n1"), "Pending", None, 3);
        let unknown = pod("unknown", Some("n1"), "Unknown", None, 3);
        let unscheduled = pod("unscheduled", None, "Pending", None, 0);
        let all = vec![
            &running_ready_old,
            &running_not_ready,
            &unscheduled,
            &running_ready_new,
            &pending,
            &unknown,
        ];
        assert_eq!(
            names(select_for_deletion(&all, 6)),
            vec![
                "unscheduled",
                "pending",
                "unknown",
                "not-ready",
                "ready-new",
                "ready-old"
            ]
        );
        assert_eq!(
            names(select_for_deletion(&all, 2)),
            vec!["unscheduled", "pending"]
        );

        // Equal otherwise: the most recently created goes first.
        let a = pod("a", Some("n1"), "Running", None, 5);
        let b = pod("b", Some("n1"), "Running", None, 9);
        assert_eq!(names(select_for_deletion(&[&a, &b], 1)), vec!["b"]);
        // More restarts goes first.
        let mut c = pod("c", Some("n1"), "Running", None, 1);
        c.status.as_mut().expect("status").container_statuses = Some(vec![serde_json::from_value(
            serde_json::json!({"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 4}),
        )
        .expect("valid container status")]);
        assert_eq!(names(select_for_deletion(&[&a, &b, &c], 1)), vec!["c"]);
    }

    #[test]
    fn status_counts_live_ready_available_and_labeled_pods() {
        let rs = replica_set(0);
        let a = pod("a", Some("n1"), "Running", Some(0), 0);
        let b = pod("b", Some("n1"), "Running", None, 0);
        let mut c = pod("c", None, "Pending", None, 0);
        c.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
        let (status, requeue) = compute_status(&rs, &[&a, &b, &c], t(100));
        assert_eq!(status.replicas, 3);
        assert_eq!(status.ready_replicas, Some(1));
        assert_eq!(status.available_replicas, Some(1));
        // Template labels include the hash label, which these pods lack.
        assert_eq!(status.fully_labeled_replicas, None);
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(requeue, None);

        let (empty, _) = compute_status(&rs, &[], t(0));
        assert_eq!(
            (
                empty.replicas,
                empty.ready_replicas,
                empty.available_replicas
            ),
            (0, None, None)
        );
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let rs = replica_set(30);
        let a = pod("a", Some("n1"), "Running", Some(0), 0);
        let (status, requeue) = compute_status(&rs, &[&a], t(10));
        assert_eq!(status.ready_replicas, Some(1));
        assert_eq!(status.available_replicas, None);
        assert_eq!(requeue, Some(Duration::from_millis(20_100)));
        let (status, requeue) = compute_status(&rs, &[&a], t(31));
        assert_eq!(status.available_replicas, Some(1));
        assert_eq!(requeue, None);
    }

    #[test]
    fn finished_and_terminating_pods_do_not_count() {
        let done = pod("done", Some("n1"), "Succeeded", None, 0);
        let failed = pod("failed", Some("n1"), "Failed", None, 0);
        let mut leaving = pod("leaving", Some("n1"), "Running", Some(0), 0);
        leaving.metadata.deletion_timestamp = Some(Time(t(1)));
        let live = pod("live", Some("n1"), "Running", None, 0);
        assert!(!is_active(&done) && !is_active(&failed) && !is_active(&leaving));
        assert!(is_active(&live));
    }

    #[test]
    fn pods_are_stamped_from_the_template() {
        let rs = replica_set(0);
        let template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .expect("template");
        let prefix = generate_name_prefix(meta::name(&rs));
        let p = pod_from_template(&rs, &template, &prefix, "web-abc-xyz12");
        assert_eq!(meta::name(&p), "web-abc-xyz12");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("demo"));
        let labels = p.metadata.labels.clone().expect("labels");
        assert_eq!(
            labels.get("pod-template-hash").map(String::as_str),
            Some("abc")
        );
        let annotations = p.metadata.annotations.clone().expect("annotations");
        assert_eq!(annotations.get("note").map(String::as_str), Some("x"));
        assert!(!meta::is_git_owned(&p.metadata));
        let owner = meta::controller_of(&p.metadata).expect("controller");
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ReplicaSet", "rs-uid")
        );
        let spec = p.spec.expect("spec");
        assert_eq!(spec.containers[0].image.as_deref(), Some("i:1"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    }

    #[test]
    fn long_names_are_cut_like_kubernetes() {
        let long = "a".repeat(80);
        assert_eq!(generate_name_prefix(&long).len(), MAX_GENERATED_NAME_PREFIX);
        assert_eq!(generate_name_prefix("web"), "web-");
    }
}
