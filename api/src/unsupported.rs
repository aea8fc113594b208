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
    "volumes",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "nodeName",
    "nodeSelector",
    "dnsPolicy",
    "schedulerName",
    "enableServiceLinks",
    "securityContext",
    "tolerations",
    "affinity",
    "hostname",
    "subdomain",
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
    "volumeMounts",
    "workingDir",
    "resources",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "restartPolicy",
    "livenessProbe",
    "lifecycle",
    "readinessProbe",
    "startupProbe",
    "securityContext",
];
/// Deployment spec fields commitd acts on.
const DEPLOYMENT_SPEC: &[&str] = &[
    "replicas",
    "selector",
    "template",
    "strategy",
    "minReadySeconds",
    "progressDeadlineSeconds",
    "paused",
    "revisionHistoryLimit",
];
const REPLICASET_SPEC: &[&str] = &["replicas", "selector", "template", "minReadySeconds"];
/// Job spec fields commitd acts on; `podReplacementPolicy` only as
/// `TerminatingOrFailed` (checked apart).
const JOB_SPEC: &[&str] = &[
    "suspend",
    "parallelism",
    "completions",
    "backoffLimit",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "completionMode",
    "selector",
    "manualSelector",
    "template",
];
/// CronJob spec fields commitd acts on.
const CRON_JOB_SPEC: &[&str] = &[
    "schedule",
    "timeZone",
    "concurrencyPolicy",
    "startingDeadlineSeconds",
    "suspend",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "jobTemplate",
];
/// DaemonSet spec fields commitd acts on.
const DAEMON_SET_SPEC: &[&str] = &[
    "selector",
    "template",
    "updateStrategy",
    "minReadySeconds",
    "revisionHistoryLimit",
];
/// StatefulSet spec fields commitd acts on.
const STATEFUL_SET_SPEC: &[&str] = &[
    "replicas",
    "selector",
    "template",
    "serviceName",
    "podManagementPolicy",
    "updateStrategy",
    "volumeClaimTemplates",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
    "revisionHistoryLimit",
];
/// PersistentVolumeClaim spec fields commitd acts on.
const CLAIM_SPEC: &[&str] = &[
    "accessModes",
    "resources",
    "storageClassName",
    "volumeMode",
    "volumeName",
];
/// PersistentVolume spec fields commitd acts on.
const VOLUME_SPEC: &[&str] = &[
    "capacity",
    "accessModes",
    "persistentVolumeReclaimPolicy",
    "storageClassName",
    "volumeMode",
    "hostPath",
    "local",
    "nodeAffinity",
    "claimRef",
];
/// StorageClass fields commitd acts on (besides `apiVersion`, `kind`,
/// `metadata`).
const STORAGE_CLASS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "provisioner",
    "reclaimPolicy",
    "volumeBindingMode",
];

/// Pod `securityContext` fields commitd acts on; `supplementalGroupsPolicy`
/// only as `Merge`, what it does anyway. `fsGroupChangePolicy` changes
/// nothing: volumes are given to the group only when they are made, which
/// both policies do alike for the volumes commitd has.
const POD_SECURITY_CONTEXT: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "supplementalGroups",
    "fsGroup",
    "fsGroupChangePolicy",
    "seLinuxOptions",
    "seccompProfile",
    "appArmorProfile",
];
/// Container `securityContext` fields commitd acts on; `procMount` only as
/// `Default`.
const CONTAINER_SECURITY_CONTEXT: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "privileged",
    "capabilities",
    "seLinuxOptions",
    "seccompProfile",
    "appArmorProfile",
];

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

/// A `securityContext`: the fields not acted on, a field set to the one
/// value that is what commitd does anyway excepted; and a Localhost
/// seccomp profile, which keeps the container from starting.
fn security_context(
    sc: &Value,
    path: &FieldPath,
    allowed: &[&str],
    defaults: &[(&str, &str)],
    out: &mut Vec<(FieldPath, String)>,
) {
    let Some(map) = sc.as_object() else { return };
    let rest: serde_json::Map<String, Value> = map
        .iter()
        .filter(|(k, v)| !defaults.contains(&(k.as_str(), v.as_str().unwrap_or_default())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_keys(&Value::Object(rest), path, allowed, out);
    let seccomp = sc.get("seccompProfile").and_then(|p| p.get("type"));
    if seccomp.and_then(Value::as_str) == Some("Localhost") {
        out.push((
            path.key("seccompProfile").key("type"),
            "Localhost profiles are not supported by commitd yet; the container will not be started".into(),
        ));
    }
}

fn pod_spec(spec: &Value, path: &FieldPath, out: &mut Vec<(FieldPath, String)>) {
    check_keys(spec, path, POD_SPEC, out);
    // Only required node affinity is acted on (by the scheduler).
    if let Some(affinity) = spec.get("affinity") {
        let ap = path.key("affinity");
        check_keys(affinity, &ap, &["nodeAffinity"], out);
        if let Some(node) = affinity.get("nodeAffinity") {
            check_keys(
                node,
                &ap.key("nodeAffinity"),
                &["requiredDuringSchedulingIgnoredDuringExecution"],
                out,
            );
        }
    }
    if let Some(sc) = spec.get("securityContext") {
        security_context(
            sc,
            &path.key("securityContext"),
            POD_SECURITY_CONTEXT,
            &[("supplementalGroupsPolicy", "Merge")],
            out,
        );
    }
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
        if let Some(sc) = c.get("securityContext") {
            security_context(
                sc,
                &cp.key("securityContext"),
                CONTAINER_SECURITY_CONTEXT,
                &[("procMount", "Default")],
                out,
            );
        }
    }
}

/// A Job's spec (or a CronJob's `jobTemplate.spec`): `podReplacementPolicy`
/// only as `TerminatingOrFailed`.
fn job_spec(s: &Value, spec: &FieldPath, out: &mut Vec<(FieldPath, String)>) {
    let rest: serde_json::Map<String, Value> = s
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| {
            k.as_str() != "podReplacementPolicy" || v.as_str() != Some("TerminatingOrFailed")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_keys(&Value::Object(rest), spec, JOB_SPEC, out);
    if let Some(ps) = s.get("template").and_then(|t| t.get("spec")) {
        pod_spec(ps, &spec.key("template").key("spec"), out);
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
        Kind::Job => {
            if let Some(s) = obj.get("spec") {
                job_spec(s, &spec, &mut out);
            }
        }
        Kind::CronJob => {
            let Some(s) = obj.get("spec") else { return out };
            check_keys(s, &spec, CRON_JOB_SPEC, &mut out);
            if let Some(js) = s.get("jobTemplate").and_then(|t| t.get("spec")) {
                job_spec(js, &spec.key("jobTemplate").key("spec"), &mut out);
            }
        }
        Kind::DaemonSet | Kind::StatefulSet => {
            let Some(s) = obj.get("spec") else { return out };
            let allowed = if kind == Kind::DaemonSet {
                DAEMON_SET_SPEC
            } else {
                STATEFUL_SET_SPEC
            };
            check_keys(s, &spec, allowed, &mut out);
            if let Some(ps) = s.get("template").and_then(|t| t.get("spec")) {
                pod_spec(ps, &spec.key("template").key("spec"), &mut out);
            }
            for (i, claim) in s
                .get("volumeClaimTemplates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(cs) = claim.get("spec") {
                    let p = spec.key("volumeClaimTemplates").index(i).key("spec");
                    check_keys(cs, &p, CLAIM_SPEC, &mut out);
                }
            }
        }
        Kind::PersistentVolumeClaim => {
            if let Some(s) = obj.get("spec") {
                check_keys(s, &spec, CLAIM_SPEC, &mut out);
            }
        }
        Kind::PersistentVolume => {
            if let Some(s) = obj.get("spec") {
                check_keys(s, &spec, VOLUME_SPEC, &mut out);
            }
        }
        Kind::StorageClass => {
            check_keys(obj, &FieldPath::root(), STORAGE_CLASS, &mut out);
            if obj.get("volumeBindingMode").and_then(Value::as_str) == Some("WaitForFirstConsumer")
            {
                out.push((
                    FieldPath::root().key("volumeBindingMode"),
                    "WaitForFirstConsumer is treated as Immediate by commitd: a claim is bound (or its volume made) before a pod uses it".into(),
                ));
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
        let d = json!({"metadata": {"annotations": {"argocd.argoproj.io/sync-wave": "1"}},
            "spec": {"replicas": 2, "minReadySeconds": 5, "progressDeadlineSeconds": 60,
            "paused": false, "template": {"spec": {
            "volumes": [{"name": "v"}], "securityContext": {},
            "containers": [{"name": "c", "image": "i", "livenessProbe": {"tcpSocket": {"port": 80}},
                "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
                "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}]}}}});
        let got: Vec<String> = fields(Kind::Deployment, &d)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(got, vec!["spec.template.spec.containers[0].resizePolicy",]);
    }

    #[test]
    fn job_fields_not_acted_on_are_named() {
        let j = json!({"spec": {"completions": 2, "suspend": false,
            "podReplacementPolicy": "TerminatingOrFailed", "backoffLimitPerIndex": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
        let got: Vec<String> = fields(Kind::Job, &j)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(got, vec!["spec.backoffLimitPerIndex"]);
        let j = json!({"spec": {"suspend": true, "podReplacementPolicy": "Failed"}});
        let got: Vec<String> = fields(Kind::Job, &j)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(got, vec!["spec.podReplacementPolicy"]);
    }

    #[test]
    fn security_context_fields_not_acted_on_are_named() {
        let p = json!({"spec": {
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000, "supplementalGroupsPolicy": "Merge",
                "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}],
                "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "runAsNonRoot": true, "readOnlyRootFilesystem": true, "procMount": "Default",
                "capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": false}},
                {"name": "d", "image": "i", "securityContext": {"procMount": "Unmasked",
                "windowsOptions": {"runAsUserName": "x"}}}]}});
        let got: Vec<String> = fields(Kind::Pod, &p)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "spec.securityContext.sysctls",
                "spec.securityContext.seccompProfile.type",
                "spec.containers[1].securityContext.procMount",
                "spec.containers[1].securityContext.windowsOptions",
            ]
        );
    }

    #[test]
    fn scheduling_fields_are_acted_on_except_preferences() {
        let ds = json!({"spec": {"selector": {}, "template": {"spec": {
            "containers": [], "tolerations": [{"operator": "Exists"}],
            "hostname": "a", "subdomain": "b",
            "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []},
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}]},
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}}}}}});
        let got: Vec<String> = fields(Kind::DaemonSet, &ds)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "spec.template.spec.affinity.podAntiAffinity",
                "spec.template.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution",
            ]
        );
    }

    #[test]
    fn waiting_for_the_first_consumer_is_named() {
        let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "slow"}, "provisioner": "commitd.io/local-path",
            "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true});
        let got: Vec<String> = fields(Kind::StorageClass, &class)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(got, vec!["allowVolumeExpansion", "volumeBindingMode"]);
    }
}
