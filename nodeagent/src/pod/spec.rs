//! The CRI configs of a pod's sandbox and containers, built from the Pod
//! object. Pure, so what reaches the runtime is unit-tested field by field.
//!
//! Supported: command, args, env (`value`, and `valueFrom.fieldRef` for the
//! downward-API fields known here), `$(VAR)` expansion as Kubernetes does
//! it, workingDir, ports with hostPort, tty/stdin. Not yet: `envFrom`,
//! config map / secret / resource env sources, volumes, resources,
//! security contexts — each is reported as a warning naming the field
//! instead of being dropped silently.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::desired::DesiredPod;
use super::{cgroup_parent, ANNOTATION_BACKOFF, ANNOTATION_RESTART_COUNT, ANNOTATION_SPEC_HASH};
use super::{LABEL_CONTAINER_NAME, LABEL_NODE, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};
use crate::cri::proto::{
    ContainerConfig, ContainerMetadata, DnsConfig, ImageSpec, KeyValue, LinuxPodSandboxConfig,
    PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
};

/// The labels that identify a pod's objects in the runtime.
pub fn pod_labels(desired: &DesiredPod, node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_POD_UID.to_string(), desired.uid.clone()),
        (LABEL_POD_NAME.to_string(), desired.name.clone()),
        (LABEL_POD_NAMESPACE.to_string(), desired.namespace.clone()),
        (LABEL_NODE.to_string(), node.to_string()),
    ])
}

/// The sandbox config. Rebuilt identically for every container created in
/// the sandbox (CRI wants the config the sandbox was run with), so it must
/// depend only on the pod, the node and the attempt.
pub fn sandbox_config(
    pod: &Pod,
    desired: &DesiredPod,
    node: &str,
    log_dir: &Path,
    attempt: u32,
    dns_config: Option<DnsConfig>,
) -> PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    // Like the kubelet: the pod's own labels and annotations, then ours.
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.extend(pod_labels(desired, node));
    let annotations: HashMap<String, String> = pod
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let hostname = spec
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| desired.name.clone());
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = p.host_port.filter(|hp| *hp > 0)?;
            Some(PortMapping {
                protocol: protocol(p.protocol.as_deref()) as i32,
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: desired.name.clone(),
            uid: desired.uid.clone(),
            namespace: desired.namespace.clone(),
            attempt,
        }),
        // A hostname is at most 63 characters; the kubelet truncates too.
        hostname: hostname.chars().take(63).collect(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        port_mappings,
        dns_config,
        labels,
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(&desired.uid),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn protocol(value: Option<&str>) -> Protocol {
    match value {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

/// Facts the downward API may expose to a container's environment.
#[derive(Debug, Clone, Default)]
pub struct EnvFacts {
    /// The node's name.
    pub node_name: String,
    /// The node's IP.
    pub host_ip: String,
    /// The pod's IP, once its sandbox has one.
    pub pod_ip: Option<String>,
    /// The service environment variables (see
    /// [`super::service_links::service_env`]); the container's own `env`
    /// comes after them and may refer to them.
    pub service_env: Vec<KeyValue>,
}

/// Instance facts recorded on the container for later passes.
#[derive(Debug, Clone)]
pub struct Instance<'a> {
    /// Restart count of this instance.
    pub restart_count: u32,
    /// Crash-loop back-off armed on it.
    pub backoff: Duration,
    /// Hash of the spec it is built from.
    pub spec_hash: &'a str,
    /// The image as resolved by the pull (the runtime's reference).
    pub image_ref: &'a str,
}

/// A container config, plus warnings about fields not supported yet.
pub fn container_config(
    pod: &Pod,
    desired: &DesiredPod,
    container: &Container,
    node: &str,
    instance: &Instance<'_>,
    facts: &EnvFacts,
) -> (ContainerConfig, Vec<String>) {
    let mut warnings = unsupported_fields(container);
    let (envs, env_warnings) = environment(pod, container, facts);
    warnings.extend(env_warnings);
    let lookup: HashMap<&str, &str> = envs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    let expand_all = |items: &Option<Vec<String>>| -> Vec<String> {
        items
            .iter()
            .flatten()
            .map(|s| expand(s, &|name| lookup.get(name).map(|v| v.to_string())))
            .collect()
    };
    let mut labels: HashMap<String, String> = pod_labels(desired, node).into_iter().collect();
    labels.insert(LABEL_CONTAINER_NAME.to_string(), container.name.clone());
    let annotations = HashMap::from([
        (
            ANNOTATION_RESTART_COUNT.to_string(),
            instance.restart_count.to_string(),
        ),
        (
            ANNOTATION_SPEC_HASH.to_string(),
            instance.spec_hash.to_string(),
        ),
        (
            ANNOTATION_BACKOFF.to_string(),
            instance.backoff.as_secs().to_string(),
        ),
    ]);
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: container.name.clone(),
            attempt: instance.restart_count,
        }),
        image: Some(ImageSpec {
            image: instance.image_ref.to_string(),
            ..Default::default()
        }),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs,
        labels,
        annotations,
        log_path: format!("{}/{}.log", container.name, instance.restart_count),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        ..Default::default()
    };
    (config, warnings)
}

fn unsupported_fields(c: &Container) -> Vec<String> {
    let mut w = Vec::new();
    let name = &c.name;
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        w.push(format!(
            "container {name}: envFrom is not supported yet; ignored"
        ));
    }
    if c.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        w.push(format!(
            "container {name}: volumeMounts are not supported yet; ignored"
        ));
    }
    // Requests are honoured (the scheduler places pods by them); limits
    // are not enforced on the node yet.
    if c.resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .is_some_and(|l| !l.is_empty())
    {
        w.push(format!(
            "container {name}: resources.limits are not enforced yet; ignored"
        ));
    }
    if c.security_context.is_some() {
        w.push(format!(
            "container {name}: securityContext is not supported yet; ignored"
        ));
    }
    if c.lifecycle.is_some() {
        w.push(format!(
            "container {name}: lifecycle is not supported yet; ignored"
        ));
    }
    for (field, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if probe.as_ref().is_some_and(crate::probe::is_https) {
            w.push(format!(
                "container {name}: {field}: httpGet with scheme HTTPS is not supported yet; the probe is ignored"
            ));
        }
    }
    w
}

/// The container's environment in order, each value expanded against the
/// variables before it, as Kubernetes does.
fn environment(pod: &Pod, c: &Container, facts: &EnvFacts) -> (Vec<KeyValue>, Vec<String>) {
    let mut out: Vec<KeyValue> = facts.service_env.clone();
    let mut warnings = Vec::new();
    for var in c.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            match source.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some(path) => match field_value(pod, path, facts) {
                    Some(v) => v,
                    None => {
                        warnings.push(format!(
                            "container {}: env {}: fieldRef {path:?} is not supported; set to \"\"",
                            c.name, var.name
                        ));
                        String::new()
                    }
                },
                None => {
                    warnings.push(format!(
                        "container {}: env {}: only valueFrom.fieldRef is supported yet; skipped",
                        c.name, var.name
                    ));
                    continue;
                }
            }
        } else {
            let raw = var.value.clone().unwrap_or_default();
            expand(&raw, &|name| {
                out.iter()
                    .rev()
                    .find(|kv| kv.key == name)
                    .map(|kv| kv.value.clone())
            })
        };
        out.retain(|kv| kv.key != var.name);
        out.push(KeyValue {
            key: var.name.clone(),
            value,
        });
    }
    (out, warnings)
}

/// The downward-API value of `path`, for the fields the node knows.
fn field_value(pod: &Pod, path: &str, facts: &EnvFacts) -> Option<String> {
    let meta = &pod.metadata;
    let map_value = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(facts.node_name.clone()),
        "spec.serviceAccountName" => Some(
            pod.spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
        ),
        "status.hostIP" | "status.hostIPs" => Some(facts.host_ip.clone()),
        "status.podIP" | "status.podIPs" => Some(facts.pod_ip.clone().unwrap_or_default()),
        _ => map_value(&meta.labels, "metadata.labels['")
            .or_else(|| map_value(&meta.annotations, "metadata.annotations['")),
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined one is left as written, `$$` is a literal `$`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("demo".into()),
                uid: Some("u1".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("reg/web:1".into()),
                    command: Some(vec!["sh".into(), "-c".into()]),
                    args: Some(vec!["echo $(GREETING) $(MISSING) $$(GREETING)".into()]),
                    working_dir: Some("/www".into()),
                    env: Some(vec![
                        EnvVar {
                            name: "NAME".into(),
                            value: Some("world".into()),
                            ..Default::default()
                        },
                        EnvVar {
                            name: "GREETING".into(),
                            value: Some("hello $(NAME)".into()),
                            ..Default::default()
                        },
                        EnvVar {
                            name: "POD".into(),
                            value_from: Some(EnvVarSource {
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.name".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ports: Some(vec![
                        ContainerPort {
                            container_port: 80,
                            host_port: Some(8080),
                            ..Default::default()
                        },
                        ContainerPort {
                            container_port: 53,
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn sandbox_carries_identity_logs_cgroup_and_host_ports() {
        let p = pod();
        let d = DesiredPod::from_pod(&p).unwrap();
        let c = sandbox_config(&p, &d, "n1", Path::new("/s/pods/demo_web_u1"), 2, None);
        let m = c.metadata.clone().unwrap();
        assert_eq!(
            (
                m.name.as_str(),
                m.namespace.as_str(),
                m.uid.as_str(),
                m.attempt
            ),
            ("web", "demo", "u1", 2)
        );
        assert_eq!(c.hostname, "web");
        assert_eq!(c.log_directory, "/s/pods/demo_web_u1");
        assert_eq!(c.labels.get(LABEL_POD_UID).map(String::as_str), Some("u1"));
        assert_eq!(c.labels.get(LABEL_NODE).map(String::as_str), Some("n1"));
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(c.linux.unwrap().cgroup_parent, "/commitd/podu1");
        assert_eq!(c.port_mappings.len(), 1);
        assert_eq!(
            (
                c.port_mappings[0].container_port,
                c.port_mappings[0].host_port
            ),
            (80, 8080)
        );
    }

    #[test]
    fn container_config_expands_and_records_the_instance() {
        let p = pod();
        let d = DesiredPod::from_pod(&p).unwrap();
        let container = &p.spec.as_ref().unwrap().containers[0];
        let instance = Instance {
            restart_count: 3,
            backoff: Duration::from_secs(40),
            spec_hash: "abc",
            image_ref: "sha256:1",
        };
        let (c, warnings) =
            container_config(&p, &d, container, "n1", &instance, &EnvFacts::default());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.args, vec!["echo hello world $(MISSING) $(GREETING)"]);
        assert_eq!(c.log_path, "c/3.log");
        assert_eq!(c.metadata.unwrap().attempt, 3);
        assert_eq!(c.image.unwrap().image, "sha256:1");
        assert_eq!(c.working_dir, "/www");
        let env: Vec<(String, String)> = c.envs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(
            env,
            vec![
                ("NAME".into(), "world".into()),
                ("GREETING".into(), "hello world".into()),
                ("POD".into(), "web".into())
            ]
        );
        assert_eq!(
            c.annotations
                .get(ANNOTATION_RESTART_COUNT)
                .map(String::as_str),
            Some("3")
        );
        assert_eq!(
            c.annotations.get(ANNOTATION_BACKOFF).map(String::as_str),
            Some("40")
        );
        assert_eq!(
            c.labels.get(LABEL_CONTAINER_NAME).map(String::as_str),
            Some("c")
        );
    }

    #[test]
    fn expansion_matches_kubernetes() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)", &lookup), "x-$(B)");
        assert_eq!(expand("$$(A)", &lookup), "$(A)");
        assert_eq!(expand("$A $", &lookup), "$A $");
        assert_eq!(expand("$(A", &lookup), "$(A");
    }

    #[test]
    fn unsupported_fields_are_named() {
        let mut p = pod();
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.volume_mounts = Some(vec![Default::default()]);
        assert_eq!(
            unsupported_fields(c),
            vec!["container c: volumeMounts are not supported yet; ignored"]
        );
    }
}
