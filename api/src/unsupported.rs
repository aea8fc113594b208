//! Fields Kubernetes knows that commitd does not act on yet. They are
//! accepted and stored, and each use is named in a warning when a commit
//! is applied, so nothing is dropped silently.

use serde_json::Value;

use crate::field_path::FieldPath;
use crate::kinds::Kind;

/// Pod spec fields commitd acts on.
const POD_SPEC: &[&str] = &[
    "containers",
    "initContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "nodeName",
    "nodeSelector",
    "dnsPolicy",
    "schedulerName",
    "enableServiceLinks",
];
/// Container fields commitd acts on.
const CONTAINER: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "envFrom",
    "ports",
    "workingDir",
    "resources",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
];
/// Deployment spec fields commitd acts on.
const DEPLOYMENT_SPEC: &[&str] = &[
    "replicas",
    "selector",
    "template",
    "strategy",
    "revisionHistoryLimit",
];
const REPLICASET_SPEC: &[&str] = &["replicas", "selector", "template"];

fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn check_keys(v: &Value, path: &FieldPath, allowed: &[&str], out: &mut Vec<(FieldPath, String)>) {
    for (k, child) in v.as_object().into_iter().flatten() {
        if !allowed.contains(&k.as_str()) && !empty(child) {
            out.push((
                path.key(k),
                "not supported by commitd yet; the field is stored but ignored".into(),
            ));
        }
    }
}

fn pod_spec(spec: &Value, path: &FieldPath, out: &mut Vec<(FieldPath, String)>) {
    check_keys(spec, path, POD_SPEC, out);
    let lists = ["containers", "initContainers"].map(|key| {
        let items = spec
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        items
            .enumerate()
            .map(move |(i, c)| (path.key(key).index(i), c))
    });
    for (cp, c) in lists.into_iter().flatten() {
        check_keys(c, &cp, CONTAINER, out);
        for (j, e) in c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_keys(
                e,
                &cp.key("env").index(j),
                &["name", "value", "valueFrom"],
                out,
            );
        }
        if let Some(r) = c.get("resources") {
            check_keys(r, &cp.key("resources"), &["requests", "limits"], out);
        }
    }
}

/// The fields of `obj` that are set but not acted on, with the reason.
pub fn fields(kind: Kind, obj: &Value) -> Vec<(FieldPath, String)> {
    let mut out = Vec::new();
    let spec = FieldPath::root().key("spec");
    match kind {
        Kind::Pod => {
            if let Some(s) = obj.get("spec") {
                pod_spec(s, &spec, &mut out);
            }
        }
        Kind::Deployment | Kind::ReplicaSet => {
            let Some(s) = obj.get("spec") else { return out };
            let allowed = if kind == Kind::Deployment {
                DEPLOYMENT_SPEC
            } else {
                REPLICASET_SPEC
            };
            check_keys(s, &spec, allowed, &mut out);
            if let Some(ps) = s.get("template").and_then(|t| t.get("spec")) {
                pod_spec(ps, &spec.key("template").key("spec"), &mut out);
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_each_unsupported_field_once() {
        let d = json!({"spec": {"replicas": 2, "minReadySeconds": 5, "template": {"spec": {
            "volumes": [{"name": "v"}], "securityContext": {},
            "containers": [{"name": "c", "image": "i", "livenessProbe": {"tcpSocket": {"port": 80}},
                "lifecycle": {"preStop": {"exec": {"command": ["true"]}}},
                "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}]}}}});
        let got: Vec<String> = fields(Kind::Deployment, &d)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "spec.minReadySeconds",
                "spec.template.spec.volumes",
                "spec.template.spec.containers[0].lifecycle",
            ]
        );
    }
}
