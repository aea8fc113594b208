//! Kubernetes' defaulting: the values the API server fills in, so stored
//! objects look as they would in Kubernetes and a field left out means what
//! it means there.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ClientIPConfig, Container, DownwardAPIVolumeFile, EmptyDirVolumeSource, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, Probe, Secret,
    Service, SessionAffinityConfig, Volume,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

/// Fills in the defaults of a pod spec (`restartPolicy: Always`, grace
/// period 30 s, `dnsPolicy: ClusterFirst`, pull policies, protocols …).
pub fn pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context
        .get_or_insert_with(PodSecurityContext::default);
    spec.enable_service_links.get_or_insert(true);
    for c in spec.containers.iter_mut() {
        container(c);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        container(c);
    }
    for v in spec.volumes.iter_mut().flatten() {
        volume(v);
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise, as
/// Kubernetes decides.
pub fn image_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        let image = c.image.clone().unwrap_or_default();
        c.image_pull_policy = Some(image_pull_policy(&image).into());
    }
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for p in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        probe(p);
    }
}

/// Probe defaults: a 1 s timeout every 10 s, one success to pass, three
/// failures to fail, and an HTTP GET of `/` over plain HTTP. Zero or empty
/// counts as unset, as Go's zero values do in Kubernetes.
fn probe(p: &mut Probe) {
    for (field, default) in [
        (&mut p.timeout_seconds, 1),
        (&mut p.period_seconds, 10),
        (&mut p.success_threshold, 1),
        (&mut p.failure_threshold, 3),
    ] {
        if field.is_none_or(|v| v == 0) {
            *field = Some(default);
        }
    }
    if let Some(get) = p.http_get.as_mut() {
        if get.path.as_deref().is_none_or(str::is_empty) {
            get.path = Some("/".into());
        }
        if get.scheme.as_deref().is_none_or(str::is_empty) {
            get.scheme = Some("HTTP".into());
        }
    }
}

/// The mode of the files of configMap, secret, downward API and projected
/// volumes when none is given: 0644.
const VOLUME_FILE_MODE: i32 = 0o644;

/// Volume defaults: a volume with no source is an empty directory; file
/// modes 0644; `hostPath.type` empty (no check of what is there); a pod
/// field's `apiVersion` v1; service account tokens valid for an hour.
fn volume(v: &mut Volume) {
    let bare = Volume {
        name: v.name.clone(),
        ..Volume::default()
    };
    if *v == bare {
        v.empty_dir = Some(EmptyDirVolumeSource::default());
    }
    if let Some(h) = v.host_path.as_mut() {
        h.type_.get_or_insert_with(String::new);
    }
    if let Some(s) = v.secret.as_mut() {
        s.default_mode.get_or_insert(VOLUME_FILE_MODE);
    }
    if let Some(c) = v.config_map.as_mut() {
        c.default_mode.get_or_insert(VOLUME_FILE_MODE);
    }
    if let Some(d) = v.downward_api.as_mut() {
        d.default_mode.get_or_insert(VOLUME_FILE_MODE);
        d.items.iter_mut().flatten().for_each(downward_file);
    }
    if let Some(p) = v.projected.as_mut() {
        p.default_mode.get_or_insert(VOLUME_FILE_MODE);
        for s in p.sources.iter_mut().flatten() {
            if let Some(d) = s.downward_api.as_mut() {
                d.items.iter_mut().flatten().for_each(downward_file);
            }
            if let Some(t) = s.service_account_token.as_mut() {
                t.expiration_seconds.get_or_insert(3600);
            }
        }
    }
}

fn downward_file(f: &mut DownwardAPIVolumeFile) {
    if let Some(r) = f.field_ref.as_mut() {
        if r.api_version.as_deref().is_none_or(str::is_empty) {
            r.api_version = Some("v1".into());
        }
    }
}

/// Deployment defaults: one replica, RollingUpdate 25 %/25 %, ten old
/// ReplicaSets kept, a 600 s progress deadline.
pub fn deployment(d: &mut Deployment) {
    let spec = d.spec.get_or_insert_with(Default::default);
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec
        .strategy
        .get_or_insert_with(DeploymentStrategy::default);
    let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if kind == "RollingUpdate" {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        ru.max_surge
            .get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    if let Some(t) = spec.template.spec.as_mut() {
        pod_spec(t);
    }
}

/// ReplicaSet defaults: one replica and the pod spec's defaults.
pub fn replica_set(rs: &mut ReplicaSet) {
    let spec = rs.spec.get_or_insert_with(Default::default);
    spec.replicas.get_or_insert(1);
    if let Some(t) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
        pod_spec(t);
    }
}

/// The labels the API server puts on a Job's pod template (and so on its
/// pods) naming the Job, as Kubernetes does when the selector is generated.
pub const JOB_NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];
/// The labels naming the Job's uid; set when the Job is created (the uid
/// is not known before), with the selector that matches them.
pub const JOB_UID_LABELS: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];

/// Job defaults, as the API server fills them in: with neither
/// `completions` nor `parallelism` set both are 1 (with only `parallelism`
/// set the Job is a work queue and `completions` stays unset); backoff
/// limit 6, `NonIndexed`, not suspended, pods replaced once terminating or
/// failed, the job-name labels on the template (unless `manualSelector`),
/// and the pod spec's defaults. `restartPolicy` is left unset if it is, so
/// validation can say it is required rather than that `Always` is wrong.
pub fn job(j: &mut Job) {
    let name = j.metadata.name.clone().unwrap_or_default();
    let spec = j.spec.get_or_insert_with(Default::default);
    job_spec(spec);
    if spec.manual_selector != Some(true) {
        let labels = spec
            .template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default);
        for key in JOB_NAME_LABELS {
            labels.insert(key.to_string(), name.clone());
        }
    }
}

/// The defaults of a Job's spec that do not depend on its name, shared
/// with a CronJob's `jobTemplate` (whose Jobs get their labels when made).
fn job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit.get_or_insert(6);
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    spec.pod_replacement_policy
        .get_or_insert_with(|| "TerminatingOrFailed".into());
    if let Some(t) = spec.template.spec.as_mut() {
        let restart_unset = t.restart_policy.is_none();
        pod_spec(t);
        if restart_unset {
            t.restart_policy = None;
        }
    }
}

/// CronJob defaults: `concurrencyPolicy: Allow`, not suspended, three
/// successful and one failed Job kept, and the Job defaults on the template.
pub fn cron_job(c: &mut CronJob) {
    let spec = c.spec.get_or_insert_with(Default::default);
    spec.concurrency_policy
        .get_or_insert_with(|| "Allow".into());
    spec.suspend.get_or_insert(false);
    spec.successful_jobs_history_limit.get_or_insert(3);
    spec.failed_jobs_history_limit.get_or_insert(1);
    if let Some(js) = spec.job_template.spec.as_mut() {
        job_spec(js);
    }
}

/// DaemonSet defaults: RollingUpdate with `maxUnavailable: 1` and
/// `maxSurge: 0`, ten old revisions kept, and the pod spec's defaults.
pub fn daemon_set(d: &mut DaemonSet) {
    let spec = d.spec.get_or_insert_with(Default::default);
    spec.revision_history_limit.get_or_insert(10);
    let strategy = spec
        .update_strategy
        .get_or_insert_with(DaemonSetUpdateStrategy::default);
    let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if kind == "RollingUpdate" {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDaemonSet::default);
        ru.max_unavailable.get_or_insert(IntOrString::Int(1));
        ru.max_surge.get_or_insert(IntOrString::Int(0));
    }
    if let Some(t) = spec.template.spec.as_mut() {
        pod_spec(t);
    }
}

/// StatefulSet defaults: one replica, `OrderedReady`, RollingUpdate with
/// partition 0, ten old revisions, claims retained on deletion and scale
/// down, and Filesystem claim templates.
pub fn stateful_set(s: &mut StatefulSet) {
    let spec = s.spec.get_or_insert_with(Default::default);
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.pod_management_policy
        .get_or_insert_with(|| "OrderedReady".into());
    let strategy = spec
        .update_strategy
        .get_or_insert_with(StatefulSetUpdateStrategy::default);
    let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if kind == "RollingUpdate" {
        strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateStatefulSetStrategy::default)
            .partition
            .get_or_insert(0);
    }
    let retention = spec
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
    retention
        .when_deleted
        .get_or_insert_with(|| "Retain".into());
    retention.when_scaled.get_or_insert_with(|| "Retain".into());
    for claim in spec.volume_claim_templates.iter_mut().flatten() {
        if let Some(cs) = claim.spec.as_mut() {
            claim_spec(cs);
        }
    }
    if let Some(t) = spec.template.spec.as_mut() {
        pod_spec(t);
    }
}

/// PersistentVolumeClaim defaults: a Filesystem volume.
pub fn persistent_volume_claim(c: &mut PersistentVolumeClaim) {
    claim_spec(c.spec.get_or_insert_with(Default::default));
}

fn claim_spec(spec: &mut PersistentVolumeClaimSpec) {
    spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
}

/// PersistentVolume defaults: a Filesystem volume kept (`Retain`) when
/// its claim goes, as for any volume not made by a provisioner.
pub fn persistent_volume(v: &mut PersistentVolume) {
    let spec = v.spec.get_or_insert_with(Default::default);
    spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    spec.persistent_volume_reclaim_policy
        .get_or_insert_with(|| "Retain".into());
}

/// StorageClass defaults: volumes deleted with their claim, bound at once.
pub fn storage_class(c: &mut StorageClass) {
    c.reclaim_policy.get_or_insert_with(|| "Delete".into());
    c.volume_binding_mode
        .get_or_insert_with(|| "Immediate".into());
}

/// Secret defaults: type `Opaque`, and `stringData` merged into `data` as
/// the API server does on write (stringData wins).
pub fn secret(s: &mut Secret) {
    s.type_.get_or_insert_with(|| "Opaque".into());
    if let Some(string_data) = s.string_data.take() {
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in string_data {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
}

/// Service defaults, as the API server fills them in: type `ClusterIP`,
/// no session affinity (ClientIP sticks for 3 hours), TCP ports whose
/// target port is the port, single-stack IPv4, traffic policies `Cluster`.
pub fn service(s: &mut Service) {
    let spec = s.spec.get_or_insert_with(Default::default);
    let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    let affinity = spec.session_affinity.get_or_insert_with(|| "None".into());
    if affinity == "ClientIP" {
        let config = spec
            .session_affinity_config
            .get_or_insert_with(SessionAffinityConfig::default)
            .client_ip
            .get_or_insert_with(ClientIPConfig::default);
        config.timeout_seconds.get_or_insert(10800);
    }
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
        if port.target_port.is_none() {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
    if ty != "ExternalName" {
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
        spec.ip_family_policy
            .get_or_insert_with(|| "SingleStack".into());
        spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
    if ty == "LoadBalancer" {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(image_pull_policy("busybox"), "Always");
        assert_eq!(image_pull_policy("busybox:latest"), "Always");
        assert_eq!(image_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(image_pull_policy("127.0.0.1:5000/web"), "Always");
        assert_eq!(image_pull_policy("127.0.0.1:5000/web:1"), "IfNotPresent");
        assert_eq!(image_pull_policy("web@sha256:abcd"), "IfNotPresent");
    }

    #[test]
    fn deployment_gets_kubernetes_defaults() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 80}]}]}}}
        }))
        .expect("valid deployment");
        deployment(&mut d);
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.revision_history_limit, Some(10));
        let ru = spec
            .strategy
            .and_then(|s| s.rolling_update)
            .expect("rolling update");
        assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            pod.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(
            pod.containers[0].ports.as_ref().expect("ports")[0]
                .protocol
                .as_deref(),
            Some("TCP")
        );
    }

    #[test]
    fn job_gets_kubernetes_defaults() {
        let mut j: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pi"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "pi", "image": "perl:5"}]}}}
        }))
        .expect("valid job");
        job(&mut j);
        let spec = j.spec.expect("spec");
        assert_eq!((spec.completions, spec.parallelism), (Some(1), Some(1)));
        assert_eq!(spec.backoff_limit, Some(6));
        assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
        assert_eq!(spec.suspend, Some(false));
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        assert_eq!(labels.get("job-name").map(String::as_str), Some("pi"));
        assert_eq!(
            labels
                .get("batch.kubernetes.io/job-name")
                .map(String::as_str),
            Some("pi")
        );
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.termination_grace_period_seconds, Some(30));

        // A work queue: only parallelism set, completions stay unset.
        let mut q: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "q"},
            "spec": {"parallelism": 3, "template": {"spec": {
                "containers": [{"name": "w", "image": "w:1"}]}}}
        }))
        .expect("valid job");
        job(&mut q);
        let spec = q.spec.expect("spec");
        assert_eq!((spec.completions, spec.parallelism), (None, Some(3)));
        // restartPolicy is not defaulted to Always: validation requires it.
        assert_eq!(spec.template.spec.expect("pod").restart_policy, None);
    }

    #[test]
    fn probes_get_kubernetes_defaults() {
        let mut spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "web", "image": "web:1",
                "livenessProbe": {"httpGet": {"port": 80, "path": ""}, "periodSeconds": 0},
                "readinessProbe": {"httpGet": {"port": "http", "path": "/ready", "scheme": "HTTPS"},
                    "timeoutSeconds": 5, "periodSeconds": 2, "successThreshold": 2, "failureThreshold": 1}}],
            "initContainers": [{"name": "side", "image": "side:1",
                "startupProbe": {"exec": {"command": ["true"]}}}]
        }))
        .expect("valid pod spec");
        pod_spec(&mut spec);
        let c = &spec.containers[0];
        let live = c.liveness_probe.as_ref().expect("liveness probe");
        assert_eq!(live.timeout_seconds, Some(1));
        assert_eq!(live.period_seconds, Some(10));
        assert_eq!(live.success_threshold, Some(1));
        assert_eq!(live.failure_threshold, Some(3));
        assert_eq!(live.initial_delay_seconds, None);
        let get = live.http_get.as_ref().expect("httpGet");
        assert_eq!(get.path.as_deref(), Some("/"));
        assert_eq!(get.scheme.as_deref(), Some("HTTP"));
        let ready = c.readiness_probe.as_ref().expect("readiness probe");
        assert_eq!(
            (
                ready.timeout_seconds,
                ready.period_seconds,
                ready.success_threshold,
                ready.failure_threshold
            ),
            (Some(5), Some(2), Some(2), Some(1))
        );
        let get = ready.http_get.as_ref().expect("httpGet");
        assert_eq!(get.path.as_deref(), Some("/ready"));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        let init = spec.init_containers.as_ref().expect("init containers");
        let startup = init[0].startup_probe.as_ref().expect("startup probe");
        assert_eq!(startup.period_seconds, Some(10));
        assert!(startup.http_get.is_none());
    }

    #[test]
    fn service_gets_kubernetes_defaults() {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "sessionAffinity": "ClientIP",
                "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}
        }))
        .expect("valid service");
        service(&mut s);
        let spec = s.spec.expect("spec");
        let ports = spec.ports.expect("ports");
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(ports[0].target_port, Some(IntOrString::Int(80)));
        assert_eq!(
            ports[1].target_port,
            Some(IntOrString::String("dns".into()))
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
        let timeout = spec
            .session_affinity_config
            .and_then(|c| c.client_ip)
            .and_then(|c| c.timeout_seconds);
        assert_eq!(timeout, Some(10800));
    }

    #[test]
    fn string_data_merges_into_data() {
        let mut s: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"b": "y"}
        }))
        .expect("valid secret");
        secret(&mut s);
        let data = s.data.expect("data");
        assert_eq!(data["a"].0, b"x");
        assert_eq!(data["b"].0, b"y");
        assert!(s.string_data.is_none());
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
    }

    #[test]
    fn volumes_get_kubernetes_defaults() {
        let mut spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "web", "image": "web:1"}],
            "volumes": [
                {"name": "bare"},
                {"name": "tmp", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": "/var/log"}},
                {"name": "conf", "configMap": {"name": "web", "defaultMode": 0o755}},
                {"name": "creds", "secret": {"secretName": "db"}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "all", "projected": {"sources": [
                    {"downwardAPI": {"items": [{"path": "uid",
                        "fieldRef": {"apiVersion": "", "fieldPath": "metadata.uid"}}]}},
                    {"serviceAccountToken": {"path": "token"}},
                    {"serviceAccountToken": {"path": "short", "expirationSeconds": 600}}]}}
            ]
        }))
        .expect("valid pod spec");
        pod_spec(&mut spec);
        let v = spec.volumes.expect("volumes");
        assert_eq!(v[0].empty_dir, Some(EmptyDirVolumeSource::default()));
        assert_eq!(v[1].empty_dir, Some(EmptyDirVolumeSource::default()));
        assert!(v[1].host_path.is_none());
        assert_eq!(
            v[2].host_path.as_ref().and_then(|h| h.type_.as_deref()),
            Some("")
        );
        assert_eq!(
            v[3].config_map.as_ref().and_then(|c| c.default_mode),
            Some(0o755)
        );
        assert_eq!(v[4].secret.as_ref().and_then(|s| s.default_mode), Some(420));
        let info = v[5].downward_api.as_ref().expect("downwardAPI");
        assert_eq!(info.default_mode, Some(420));
        let items = info.items.as_ref().expect("items");
        let field = items[0].field_ref.as_ref().expect("fieldRef");
        assert_eq!(field.api_version.as_deref(), Some("v1"));
        let all = v[6].projected.as_ref().expect("projected");
        assert_eq!(all.default_mode, Some(420));
        let sources = all.sources.as_ref().expect("sources");
        let items = sources[0]
            .downward_api
            .as_ref()
            .and_then(|d| d.items.as_ref());
        let field = items.expect("items")[0]
            .field_ref
            .as_ref()
            .expect("fieldRef");
        assert_eq!(field.api_version.as_deref(), Some("v1"));
        let expiry = |i: usize| {
            sources[i]
                .service_account_token
                .as_ref()
                .and_then(|t| t.expiration_seconds)
        };
        assert_eq!((expiry(1), expiry(2)), (Some(3600), Some(600)));
    }
}
