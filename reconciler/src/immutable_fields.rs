//! The fields Kubernetes refuses to change on an existing object, checked
//! against etcd before a commit is applied: a workload's selector, the
//! StatefulSet spec beyond what a rollout may change, a claim's spec. A
//! commit that changes one is rejected, naming the file, line and field,
//! with Kubernetes' message, unless the object carries
//! [`REPLACE_ON_CHANGE_ANNOTATION`]: then the old object is deleted (its
//! pods go with it) and the new one created, as Argo CD's `Replace=true`.
//!
//! A Job's pod template is immutable the same way; rather than recreated
//! in place, a changed Job is best renamed.

use anyhow::Context;
use commitd_api::diagnostic::Diagnostic;
use commitd_api::field_path::FieldPath;
use commitd_api::k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use commitd_api::k8s_openapi::api::batch::v1::Job;
use commitd_api::k8s_openapi::api::core::v1::PersistentVolumeClaim;
use commitd_api::manifest::Manifest;
use commitd_api::{Kind, Object, Store};
use serde_json::Value;

use crate::job_templates::{
    changed_template_field, keep_job_identity, replace_on_change, REPLACE_ON_CHANGE_ANNOTATION,
};

/// The StatefulSet spec fields an update may change, as Kubernetes lists
/// them (`revisionHistoryLimit` too, which it allows).
const STATEFUL_SET_MUTABLE: [&str; 7] = [
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
    "revisionHistoryLimit",
];

/// A change to an immutable field: where, and Kubernetes' message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImmutableChange {
    pub field: FieldPath,
    pub message: String,
}

/// The first immutable field `desired` changes relative to `current` (both
/// as stored, `desired` defaulted), if any.
pub fn immutable_change(kind: Kind, desired: &Value, current: &Value) -> Option<ImmutableChange> {
    let spec = FieldPath::root().key("spec");
    let field_is_immutable = |field: FieldPath| {
        let value = field.lookup(desired).cloned().unwrap_or(Value::Null);
        ImmutableChange {
            message: format!("Invalid value: {value}: field is immutable"),
            field,
        }
    };
    match kind {
        Kind::Job => {
            // The selector and labels made from the Job's uid are not Git's.
            let mut desired = desired.clone();
            keep_job_identity(&mut desired, current);
            changed_template_field(&desired, current).map(|field| ImmutableChange {
                field,
                message:
                    "Invalid value: field is immutable: the pod template of a Job cannot change"
                        .into(),
            })
        }
        Kind::Deployment | Kind::ReplicaSet | Kind::DaemonSet => {
            let selector = spec.key("selector");
            (selector.lookup(desired) != selector.lookup(current))
                .then(|| field_is_immutable(selector))
        }
        Kind::StatefulSet => {
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(o) = s.as_object_mut() {
                    o.retain(|k, _| !STATEFUL_SET_MUTABLE.contains(&k.as_str()));
                }
                s
            };
            (strip(desired) != strip(current)).then(|| ImmutableChange {
                field: spec,
                message: "Forbidden: updates to statefulset spec for fields other than 'replicas', \
                          'ordinals', 'template', 'updateStrategy', \
                          'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
                    .into(),
            })
        }
        Kind::PersistentVolumeClaim => {
            // What the cluster assigns (the bound volume, the default
            // class) is compared only where Git sets it.
            let fixed = ["accessModes", "volumeMode", "selector", "dataSource"];
            let assigned = ["volumeName", "storageClassName"];
            let changed = fixed.iter().any(|f| {
                let p = spec.key(f);
                p.lookup(desired) != p.lookup(current)
            }) || assigned.iter().any(|f| {
                let p = spec.key(f);
                p.lookup(desired)
                    .is_some_and(|d| Some(d) != p.lookup(current))
            });
            changed.then(|| ImmutableChange {
                field: spec,
                message: "Forbidden: spec is immutable after creation except resources.requests \
                          and volumeAttributesClassName for bound claims"
                    .into(),
            })
        }
        _ => None,
    }
}

/// The errors of every manifest that changes an immutable field of the
/// object in etcd without asking for replacement. One read per object of
/// a kind with such fields; a commit is applied rarely, never on a hot
/// path.
pub async fn check(store: &Store, manifests: &[Manifest]) -> anyhow::Result<Vec<Diagnostic>> {
    let mut out = Vec::new();
    for m in manifests {
        if replace_on_change(&m.object) {
            continue;
        }
        let current = match m.kind {
            Kind::Deployment => current::<Deployment>(store, m).await?,
            Kind::ReplicaSet => current::<ReplicaSet>(store, m).await?,
            Kind::DaemonSet => current::<DaemonSet>(store, m).await?,
            Kind::StatefulSet => current::<StatefulSet>(store, m).await?,
            Kind::PersistentVolumeClaim => current::<PersistentVolumeClaim>(store, m).await?,
            Kind::Job => current::<Job>(store, m).await?,
            _ => None,
        };
        let Some(current) = current else { continue };
        if let Some(change) = immutable_change(m.kind, &m.object, &current) {
            let remedy = if m.kind == Kind::Job {
                format!(
                    "rename the Job to run the new template, or annotate it \
                     {REPLACE_ON_CHANGE_ANNOTATION}: \"true\" to delete the old Job and its pods and run the new one"
                )
            } else {
                format!(
                    "annotate the {} {REPLACE_ON_CHANGE_ANNOTATION}: \"true\" to delete and recreate it",
                    m.kind
                )
            };
            out.push(m.error(&change.field, format!("{}; {remedy}", change.message)));
        }
    }
    Ok(out)
}

async fn current<T: Object>(store: &Store, m: &Manifest) -> anyhow::Result<Option<Value>> {
    let Some(obj) = store
        .get::<T>(m.namespace.as_deref(), &m.name)
        .await
        .with_context(|| format!("reading {}", m.display_name()))?
    else {
        return Ok(None);
    };
    Ok(Some(serde_json::to_value(&obj).with_context(|| {
        format!("encoding {}", m.display_name())
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_cannot_change() {
        let cur = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "replicas": 1}});
        let scaled = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "replicas": 3}});
        assert_eq!(immutable_change(Kind::Deployment, &scaled, &cur), None);
        let moved = json!({"spec": {"selector": {"matchLabels": {"app": "b"}}, "replicas": 1}});
        let change = immutable_change(Kind::DaemonSet, &moved, &cur).expect("a change");
        assert_eq!(change.field.to_string(), "spec.selector");
        assert_eq!(
            change.message,
            "Invalid value: {\"matchLabels\":{\"app\":\"b\"}}: field is immutable"
        );
    }

    #[test]
    fn stateful_sets_change_only_what_a_rollout_may() {
        let cur = json!({"spec": {"serviceName": "db", "replicas": 1,
            "template": {"metadata": {"labels": {"v": "1"}}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}});
        let rolled = json!({"spec": {"serviceName": "db", "replicas": 3,
            "template": {"metadata": {"labels": {"v": "2"}}},
            "updateStrategy": {"type": "OnDelete"},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}});
        assert_eq!(immutable_change(Kind::StatefulSet, &rolled, &cur), None);
        let renamed = json!({"spec": {"serviceName": "store", "replicas": 1,
            "template": {"metadata": {"labels": {"v": "1"}}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}});
        let change = immutable_change(Kind::StatefulSet, &renamed, &cur).expect("a change");
        assert!(change
            .message
            .starts_with("Forbidden: updates to statefulset spec"));
    }

    #[test]
    fn claims_keep_their_spec_but_may_grow_and_be_bound() {
        let cur = json!({"spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pvc-1",
            "storageClassName": "local-path", "resources": {"requests": {"storage": "1Gi"}}}});
        let grown = json!({"spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}}}});
        assert_eq!(
            immutable_change(Kind::PersistentVolumeClaim, &grown, &cur),
            None
        );
        let shared = json!({"spec": {"accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}}}});
        assert!(immutable_change(Kind::PersistentVolumeClaim, &shared, &cur).is_some());
        let other_class = json!({"spec": {"accessModes": ["ReadWriteOnce"],
            "storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
        assert!(immutable_change(Kind::PersistentVolumeClaim, &other_class, &cur).is_some());
    }
}
