//! What the cluster assigns to a Job and what it never lets change: the
//! selector and template labels Kubernetes generates from a Job's uid
//! (neither drift nor a change, as Git cannot know the uid), where a Job's
//! pod template changed (the rule that it may not is applied with the other
//! immutable fields, [`crate::immutable_fields`]), and the view a Job
//! deleted by its TTL is remembered by (see
//! [`commitd_api::records::Tombstone`]).

use commitd_api::defaults;
use commitd_api::field_path::FieldPath;
use commitd_api::meta::SOURCE_ANNOTATION;
use commitd_api::Kind;
use serde_json::Value;

use crate::apply::desired_view;

/// Whether a Job's selector is generated (from its uid), as it is unless
/// `spec.manualSelector` is true.
pub(crate) fn job_selector_generated(job: &Value) -> bool {
    job.pointer("/spec/manualSelector").and_then(Value::as_bool) != Some(true)
}

/// A Job's generated selector and the uid labels of its template, which
/// the cluster assigns when the Job is created (Git cannot know the uid):
/// copied from the stored Job so they are neither drift nor a change.
pub(crate) fn keep_job_identity(desired: &mut Value, current: &Value) {
    if !job_selector_generated(desired) {
        return;
    }
    if let (Some(sel), Some(spec)) = (
        current.pointer("/spec/selector").cloned(),
        desired.get_mut("spec").and_then(Value::as_object_mut),
    ) {
        spec.insert("selector".into(), sel);
    }
    let assigned: Vec<(&str, Value)> = defaults::JOB_UID_LABELS
        .iter()
        .filter_map(|k| {
            current
                .pointer("/spec/template/metadata/labels")
                .and_then(|l| l.get(*k))
                .map(|v| (*k, v.clone()))
        })
        .collect();
    if let Some(labels) = desired
        .pointer_mut("/spec/template/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        for (k, v) in assigned {
            labels.insert(k.to_string(), v);
        }
    }
}

/// Gives a Job being created what Kubernetes generates from its uid: the
/// selector `batch.kubernetes.io/controller-uid=<uid>` and the uid labels
/// on its pod template. Call after the uid is set.
pub(crate) fn assign_job_identity(desired: &mut Value) {
    if !job_selector_generated(desired) {
        return;
    }
    let Some(uid) = desired
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return;
    };
    let Some(spec) = desired.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert(
        "selector".into(),
        serde_json::json!({"matchLabels": {defaults::JOB_UID_LABELS[0]: uid}}),
    );
    let template = spec
        .entry("template")
        .or_insert_with(|| Value::Object(Default::default()));
    let labels = template
        .as_object_mut()
        .map(|t| {
            t.entry("metadata")
                .or_insert_with(|| Value::Object(Default::default()))
        })
        .and_then(Value::as_object_mut)
        .map(|m| {
            m.entry("labels")
                .or_insert_with(|| Value::Object(Default::default()))
        })
        .and_then(Value::as_object_mut);
    if let Some(labels) = labels {
        for k in defaults::JOB_UID_LABELS {
            labels.insert(k.to_string(), Value::from(uid.clone()));
        }
    }
}

/// The annotation that lets a commit change a Job's pod template: the old
/// Job (and so its pods) is replaced by a new one, instead of the commit
/// being rejected.
pub const REPLACE_ON_CHANGE_ANNOTATION: &str = "commitd.io/replace-on-change";

/// Whether a Job asks to be replaced when its template changes.
pub(crate) fn replace_on_change(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(REPLACE_ON_CHANGE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// The first field under a Job's `spec.template` where `desired` and
/// `current` differ (`None` if the templates are equal).
pub(crate) fn changed_template_field(desired: &Value, current: &Value) -> Option<FieldPath> {
    let root = FieldPath::root().key("spec").key("template");
    let (d, c) = (
        desired.pointer("/spec/template").unwrap_or(&Value::Null),
        current.pointer("/spec/template").unwrap_or(&Value::Null),
    );
    (d != c).then(|| first_difference(d, c, root))
}

fn first_difference(d: &Value, c: &Value, at: FieldPath) -> FieldPath {
    match (d, c) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (x, y) = (a.get(k), b.get(k));
                if x != y {
                    let null = Value::Null;
                    return first_difference(x.unwrap_or(&null), y.unwrap_or(&null), at.key(k));
                }
            }
            at
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    return first_difference(x, y, at.index(i));
                }
            }
            at
        }
        _ => at,
    }
}

/// What a Git-owned object is compared with after the cluster deleted it
/// on purpose ([`Tombstone`](commitd_api::records::Tombstone)): its desired view without provenance and,
/// for a Job, without the selector and labels generated from its uid.
pub fn tombstone_view(kind: Kind, obj: &Value) -> Value {
    let mut v = desired_view(obj);
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(SOURCE_ANNOTATION);
            if a.is_empty() {
                m.remove("annotations");
            }
        }
    }
    if kind == Kind::Job && job_selector_generated(&v) {
        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("selector");
        }
        if let Some(labels) = v
            .pointer_mut("/spec/template/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            for k in defaults::JOB_UID_LABELS {
                labels.remove(k);
            }
        }
    }
    v
}
