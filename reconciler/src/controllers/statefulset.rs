//! The StatefulSet controller: pods with stable names (`web-0 … web-N-1`),
//! each with its own claims (`data-web-0`) that outlive it, a hostname and
//! the governing Service as subdomain, so `web-0.web.<ns>.svc` always names
//! the same member. Ordering and updates follow [`super::statefulset_plan`].
//!
//! Templates are kept as ControllerRevisions (`web-<hash>`), as in
//! Kubernetes: a pod below a rolling update's partition that has to be
//! made again is made from the template it had, not the new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use commitd_api::k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodStatus, PodTemplateSpec,
    Volume,
};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use commitd_api::k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta::{self, COMMIT_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::{defaults, Store, StoreError};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::expectations::{delete_pods, sync_each, Expectations};
use super::pod_readiness::{availability, is_ready};
use super::statefulset_plan::{plan, Action, Member, PodHealth, SetState};
use super::{controlled_by, controlled_in, earliest, pod_template_hash, Caches};

/// How long the loop sleeps when nothing changes.
const RESYNC: Duration = Duration::from_secs(30);
/// The label naming the revision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The label naming the pod, so a Service can select one member.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Runs the StatefulSet loop until `cancel` fires.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    let triggers = vec![
        caches.stateful_sets.changes(),
        caches.pods.changes(),
        caches.claims.changes(),
        caches.controller_revisions.changes(),
    ];
    let ctl = Arc::new(StatefulSetController {
        store,
        caches,
        expectations: Expectations::default(),
    });
    controller::run("statefulset", triggers, RESYNC, cancel, move || {
        let ctl = ctl.clone();
        async move { ctl.reconcile_all().await }
    })
    .await;
}

struct StatefulSetController {
    store: Store,
    caches: Caches,
    /// Per StatefulSet uid: the revision of our last pod or claim write.
    expectations: Expectations,
}

/// The ordinal of a member pod from its name (`web-3` → 3).
fn ordinal_of(set_name: &str, pod_name: &str) -> Option<i32> {
    let rest = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok().filter(|o: &i32| *o >= 0)
}

/// A member's health for ordering.
fn health(pod: &Pod) -> PodHealth {
    if meta::is_terminating(&pod.metadata) {
        return PodHealth::Terminating;
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Failed" | "Succeeded") => PodHealth::Finished,
        Some("Running") if is_ready(pod) => PodHealth::Ready,
        _ => PodHealth::NotReady,
    }
}

fn pod_revision(pod: &Pod) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .cloned()
        .unwrap_or_default()
}

/// `<claim template>-<set>-<ordinal>`, the claim a member mounts.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

impl StatefulSetController {
    async fn reconcile_all(&self) -> Result<Requeue> {
        sync_each(
            "statefulset",
            self.caches.stateful_sets.list(),
            &self.expectations,
            self.caches.pods.revision(),
            |set, uid| async move { self.reconcile(&set, uid).await },
        )
        .await
    }

    async fn reconcile(&self, set: &StatefulSet, uid: String) -> Result<Requeue> {
        let name = meta::name(set);
        let namespace = meta::namespace(set);
        let spec = set.spec.clone().unwrap_or_default();

        let update = self.ensure_revision(set, &uid, &spec.template).await?;
        let current_name = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| update.name.clone());
        let current = self
            .revision_template(namespace, &current_name, &uid)
            .unwrap_or_else(|| update.clone());

        let pods: Vec<Arc<Pod>> = controlled_in(&self.caches.pods, namespace, &uid);
        let mut members: BTreeMap<i32, &Pod> = BTreeMap::new();
        for pod in &pods {
            match ordinal_of(name, meta::name(&**pod)) {
                Some(o) => {
                    members.insert(o, pod);
                }
                None => debug!(pod = %meta::name(&**pod), "owned pod without an ordinal; ignored"),
            }
        }
        let state = SetState {
            replicas: spec.replicas.unwrap_or(1),
            parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
            rolling_partition: match spec
                .update_strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref())
            {
                Some("OnDelete") => None,
                _ => Some(
                    spec.update_strategy
                        .as_ref()
                        .and_then(|s| s.rolling_update.as_ref())
                        .and_then(|r| r.partition)
                        .unwrap_or(0),
                ),
            },
            update_revision: update.name.clone(),
            pods: members
                .iter()
                .map(|(o, p)| {
                    (
                        *o,
                        Member {
                            revision: pod_revision(p),
                            health: health(p),
                        },
                    )
                })
                .collect(),
        };

        let mut result = Ok(());
        for action in plan(&state) {
            let step = match action {
                Action::Create { ordinal, at_update } => {
                    let revision = if at_update { &update } else { &current };
                    self.create_member(set, &uid, ordinal, revision).await
                }
                Action::Delete { ordinal } => match members.get(&ordinal) {
                    Some(pod) => {
                        delete_pods(&self.store, &self.expectations, &uid, vec![pod], "a member")
                            .await
                    }
                    None => Ok(()),
                },
            };
            if let Err(e) = step {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            result = self.release_scaled_claims(set, &spec, &members).await;
        }
        if result.is_ok() {
            let in_use = [update.name.as_str(), current.name.as_str()];
            result = self.prune_revisions(set, &uid, &members, &in_use).await;
        }

        let (status, requeue) = compute_status(set, &members, &update.name, &current.name);
        if set.status.as_ref() != Some(&status) {
            self.store
                .modify::<StatefulSet, _>(namespace, name, |cur| {
                    if cur.metadata.uid.as_deref() != Some(uid.as_str())
                        || cur.status.as_ref() == Some(&status)
                    {
                        return false;
                    }
                    cur.status = Some(status.clone());
                    true
                })
                .await
                .context("writing stateful set status")?;
        }
        result.map(|()| requeue)
    }

    /// The ControllerRevision of the set's template, created when the
    /// template is new (numbered after the newest one).
    async fn ensure_revision(
        &self,
        set: &StatefulSet,
        uid: &str,
        template: &PodTemplateSpec,
    ) -> Result<Revision> {
        let namespace = meta::namespace(set);
        let name = format!("{}-{}", meta::name(set), pod_template_hash(template, None));
        if let Some(found) = self.revision_template(namespace, &name, uid) {
            return Ok(found);
        }
        let newest = controlled_in(&self.caches.controller_revisions, namespace, uid)
            .iter()
            .map(|r| r.revision)
            .max()
            .unwrap_or(0);
        let revision = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: namespace.map(str::to_owned),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![meta::controller_reference(set)]),
                ..Default::default()
            },
            data: Some(RawExtension(
                json!({"spec": {"template": template, "$patch": "replace"}}),
            )),
            revision: newest + 1,
        };
        match self.store.create(revision).await {
            Ok(_) => info!(revision = %name, "created controller revision"),
            Err(StoreError::AlreadyExists { .. }) => {
                debug!(revision = %name, "controller revision exists already")
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating controller revision {name}"))
            }
        }
        Ok(Revision {
            name,
            template: template.clone(),
        })
    }

    /// The template a revision of this set holds, from the cache.
    fn revision_template(
        &self,
        namespace: Option<&str>,
        name: &str,
        uid: &str,
    ) -> Option<Revision> {
        let r = self.caches.controller_revisions.get(namespace, name)?;
        if !controlled_by(&r.metadata, uid) {
            return None;
        }
        let template = r
            .data
            .as_ref()
            .and_then(|d| d.0.pointer("/spec/template"))
            .and_then(|t| serde_json::from_value::<PodTemplateSpec>(t.clone()).ok())?;
        Some(Revision {
            name: name.to_string(),
            template,
        })
    }

    /// Creates the claims of `ordinal` that do not exist, then its pod.
    async fn create_member(
        &self,
        set: &StatefulSet,
        uid: &str,
        ordinal: i32,
        revision: &Revision,
    ) -> Result<()> {
        let namespace = meta::namespace(set);
        for claim in member_claims(set, ordinal) {
            let claim_name = meta::name(&claim).to_string();
            match self.caches.claims.get(namespace, &claim_name) {
                Some(existing) if meta::is_terminating(&existing.metadata) => {
                    bail!("claim {claim_name} is being deleted; the pod waits for it to go")
                }
                Some(_) => continue,
                None => {}
            }
            match self.store.create(claim).await {
                Ok(created) => {
                    let rv = super::resource_version(&created.metadata).unwrap_or_default();
                    self.expectations.expect(uid, rv);
                    info!(claim = %claim_name, "created claim");
                }
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("creating claim {claim_name}")),
            }
        }
        let pod = member_pod(set, ordinal, revision);
        let pod_name = meta::name(&pod).to_string();
        match self.store.create(pod).await {
            Ok(created) => {
                let rv = super::resource_version(&created.metadata).unwrap_or_default();
                self.expectations.expect(uid, rv);
                info!(pod = %pod_name, revision = %revision.name, "created pod");
                Ok(())
            }
            // The old pod of this name is still being deleted.
            Err(StoreError::AlreadyExists { .. }) => {
                debug!(pod = %pod_name, "pod name still taken; waiting");
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("creating pod {pod_name}")),
        }
    }

    /// Deletes the oldest revisions beyond `revisionHistoryLimit`, never
    /// one a member or the status still names.
    async fn prune_revisions(
        &self,
        set: &StatefulSet,
        uid: &str,
        members: &BTreeMap<i32, &Pod>,
        in_use: &[&str],
    ) -> Result<()> {
        let namespace = meta::namespace(set);
        let limit = set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let limit = usize::try_from(limit).unwrap_or(0);
        let used: Vec<String> = members.values().map(|p| pod_revision(p)).collect();
        let mut old: Vec<Arc<ControllerRevision>> =
            controlled_in(&self.caches.controller_revisions, namespace, uid)
                .into_iter()
                .filter(|r| {
                    let name = meta::name(&**r);
                    !in_use.contains(&name) && !used.iter().any(|u| u == name)
                })
                .collect();
        if old.len() <= limit {
            return Ok(());
        }
        old.sort_by_key(|r| r.revision);
        let excess = old.len() - limit;
        for r in old.into_iter().take(excess) {
            let rv = r.metadata.resource_version.as_deref();
            match self
                .store
                .delete::<ControllerRevision>(namespace, meta::name(&*r), rv)
                .await
            {
                Ok(_) => debug!(revision = %meta::name(&*r), "pruned controller revision"),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e).context("pruning controller revisions"),
            }
        }
        Ok(())
    }

    /// With `whenScaled: Delete`, the claims of ordinals above `replicas`
    /// go once their pod has.
    async fn release_scaled_claims(
        &self,
        set: &StatefulSet,
        spec: &commitd_api::k8s_openapi::api::apps::v1::StatefulSetSpec,
        members: &BTreeMap<i32, &Pod>,
    ) -> Result<()> {
        let when_scaled = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref());
        if when_scaled != Some("Delete") {
            return Ok(());
        }
        let namespace = meta::namespace(set);
        let replicas = spec.replicas.unwrap_or(1);
        let templates: Vec<String> = spec
            .volume_claim_templates
            .iter()
            .flatten()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        for claim in self.caches.claims.list() {
            if meta::namespace(&*claim) != namespace || meta::is_terminating(&claim.metadata) {
                continue;
            }
            let condemned = templates.iter().find_map(|t| {
                let rest = meta::name(&*claim)
                    .strip_prefix(t.as_str())?
                    .strip_prefix('-')?;
                ordinal_of(meta::name(set), rest)
            });
            let Some(ordinal) = condemned.filter(|o| *o >= replicas) else {
                continue;
            };
            if members.contains_key(&ordinal) {
                continue;
            }
            let rv = claim.metadata.resource_version.as_deref();
            match self
                .store
                .delete::<PersistentVolumeClaim>(namespace, meta::name(&*claim), rv)
                .await
            {
                Ok(_) => info!(claim = %meta::name(&*claim), "deleted claim of a scaled-down pod"),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e).context("deleting claim of a scaled-down pod"),
            }
        }
        Ok(())
    }
}

/// A template and the revision name it is kept under.
#[derive(Clone)]
struct Revision {
    name: String,
    template: PodTemplateSpec,
}

/// The claims of one member, from the set's claim templates: labelled with
/// the set's selector, owned by the set when `whenDeleted: Delete`.
fn member_claims(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let owned = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .filter_map(|template| {
            let template_name = template.metadata.name.clone()?;
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            Some(PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&template_name, meta::name(set), ordinal)),
                    namespace: meta::namespace(set).map(str::to_owned),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: owned.then(|| vec![meta::controller_reference(set)]),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            })
        })
        .collect()
}

/// The pod of one member: the revision's template, its stable name as
/// hostname, the governing Service as subdomain, and each claim template
/// mounted through the member's own claim.
fn member_pod(set: &StatefulSet, ordinal: i32, revision: &Revision) -> Pod {
    let spec = set.spec.clone().unwrap_or_default();
    let name = format!("{}-{ordinal}", meta::name(set));
    let template_meta = revision.template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), revision.name.clone());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let annotations = template_meta.annotations.map(|mut a| {
        a.remove(COMMIT_ANNOTATION);
        a.remove(SOURCE_ANNOTATION);
        a
    });
    let mut pod_spec = revision.template.spec.clone().unwrap_or_default();
    defaults::pod_spec(&mut pod_spec);
    pod_spec.hostname = Some(name.clone());
    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for template in spec.volume_claim_templates.iter().flatten() {
        let Some(template_name) = template.metadata.name.clone() else {
            continue;
        };
        volumes.retain(|v| v.name != template_name);
        volumes.push(Volume {
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&template_name, meta::name(set), ordinal),
                read_only: None,
            }),
            name: template_name,
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: meta::namespace(set).map(str::to_owned),
            labels: Some(labels),
            annotations: annotations.filter(|a| !a.is_empty()),
            owner_references: Some(vec![meta::controller_reference(set)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

/// The status Kubernetes would write for these members, and when a ready
/// pod turns available (`minReadySeconds`) so the loop looks again then.
fn compute_status(
    set: &StatefulSet,
    members: &BTreeMap<i32, &Pod>,
    update_revision: &str,
    current_revision: &str,
) -> (StatefulSetStatus, Requeue) {
    let spec = set.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Timestamp::now();
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: Some(0),
        ..Default::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    let mut requeue = None;
    for pod in members.values() {
        status.replicas += 1;
        if health(pod) == PodHealth::Ready {
            ready += 1;
            match availability(pod, min_ready, now) {
                Ok(true) => available += 1,
                Ok(false) => {}
                Err(wait) => requeue = earliest(requeue, Some(wait)),
            }
        }
        if meta::is_terminating(&pod.metadata) {
            continue;
        }
        let revision = pod_revision(pod);
        if revision == current_revision {
            current += 1;
        }
        if revision == update_revision {
            updated += 1;
        }
    }
    let replicas = spec.replicas.unwrap_or(1);
    let mut current_revision = current_revision.to_string();
    // A rollout is complete once every wanted pod runs the new revision
    // and is ready: the update revision becomes the current one.
    if updated == replicas && ready == replicas && status.replicas == replicas {
        current_revision = update_revision.to_string();
        current = updated;
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    status.current_revision = Some(current_revision);
    status.update_revision = Some(update_revision.to_string());
    (status, requeue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "u1"},
            "spec": {
                "replicas": 3, "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"},
                        "annotations": {COMMIT_ANNOTATION: "abc"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox",
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}],
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"}
            }
        }))
        .expect("a StatefulSet")
    }

    #[test]
    fn ordinals_come_from_names_only() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webb-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn members_have_stable_identities_and_their_own_claims() {
        let s = set();
        let revision = Revision {
            name: "web-abc".into(),
            template: s.spec.clone().expect("spec").template,
        };
        let pod = member_pod(&s, 2, &revision);
        assert_eq!(pod.metadata.name.as_deref(), Some("web-2"));
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let volumes = spec.volumes.expect("volumes");
        assert_eq!(volumes.len(), 1);
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-web-2")
        );
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(labels[REVISION_LABEL], "web-abc");
        assert_eq!(labels[POD_NAME_LABEL], "web-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        // Git's provenance stays on the StatefulSet.
        assert!(pod.metadata.annotations.is_none());
        let claims = member_claims(&s, 2);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-2"));
        assert_eq!(
            claims[0]
                .metadata
                .labels
                .as_ref()
                .map(|l| l["app"].as_str()),
            Some("web")
        );
        // whenDeleted: Delete makes the set the claim's owner.
        assert!(meta::controller_of(&claims[0].metadata).is_some());
    }
}
