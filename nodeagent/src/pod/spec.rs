//! The CRI configs of a pod's sandbox and containers, built from the Pod
//! object. Pure, so what reaches the runtime is unit-tested field by field.
//!
//! Supported: command, args, env (values, ConfigMap and Secret keys,
//! downward-API fields and resources) and `envFrom`, `$(VAR)` expansion as
//! Kubernetes does it, workingDir, ports with hostPort, tty/stdin, volume
//! mounts (prepared by [`super::volumes`]), resources (see
//! [`super::resources`]) and security contexts (see [`super::security`]).
//! What is not supported yet (some security-context fields) is reported
//! as a warning naming the field instead of being dropped silently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::desired::DesiredPod;
use super::resources::{container_resources, qos_class};
use super::{cgroup_parent, ANNOTATION_BACKOFF, ANNOTATION_RESTART_COUNT, ANNOTATION_SPEC_HASH};
use super::{LABEL_CONTAINER_NAME, LABEL_NODE, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};
use crate::cri::proto::{
    ContainerConfig, ContainerMetadata, DnsConfig, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxPodSandboxConfig, Mount, PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
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
            security_context: Some(super::security::sandbox_security_context(&spec)),
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
    /// The `data` of the ConfigMaps the pod refers to (see
    /// [`referenced_objects`]) that exist, by name.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// The values of the Secrets it refers to that exist, by name.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// The node's CPU (millicores) and memory (bytes): what
    /// `resourceFieldRef` reports for a limit that is not set.
    pub node_cpu_millis: i64,
    /// See [`EnvFacts::node_cpu_millis`].
    pub node_memory_bytes: i64,
}

/// The names of the ConfigMaps and Secrets a pod's containers take
/// environment from (`valueFrom` and `envFrom`), so only those are read.
pub fn referenced_objects(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let spec = pod.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    for c in containers {
        for var in c.env.iter().flatten() {
            if let Some(from) = &var.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    config_maps.insert(r.name.clone());
                }
                if let Some(r) = &from.secret_key_ref {
                    secrets.insert(r.name.clone());
                }
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (config_maps, secrets)
}

/// Why a container cannot be configured (`CreateContainerConfigError`):
/// the kubelet's message, e.g. `configmap "app" not found`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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

/// A container config, plus warnings about fields not supported yet; an
/// error when its environment refers to a ConfigMap, Secret or key that
/// does not exist and is not optional.
pub fn container_config(
    pod: &Pod,
    desired: &DesiredPod,
    container: &Container,
    node: &str,
    instance: &Instance<'_>,
    facts: &EnvFacts,
    mounts: Vec<Mount>,
) -> Result<(ContainerConfig, Vec<String>), ConfigError> {
    let mut warnings = unsupported_fields(container);
    let (envs, env_warnings) = environment(pod, container, facts)?;
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
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", container.name, instance.restart_count),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(LinuxContainerConfig {
            resources: Some(container_resources(
                container,
                qos_class(pod.spec.as_ref().unwrap_or(&Default::default())),
                facts.node_memory_bytes,
            )),
            security_context: Some(super::security::container_security_context(pod, container)?),
        }),
        ..Default::default()
    };
    Ok((config, warnings))
}

/// Warnings naming the fields of `c` that commitd does not support yet.
fn unsupported_fields(c: &Container) -> Vec<String> {
    super::security::unsupported_fields(c)
}

/// The container's environment in order, as the kubelet builds it: the
/// service variables, then `envFrom` sources in order (keys that are not
/// valid variable names skipped with a warning), then `env`, each value
/// expanded against the variables before it; a later variable replaces an
/// earlier one of the same name.
fn environment(
    pod: &Pod,
    c: &Container,
    facts: &EnvFacts,
) -> Result<(Vec<KeyValue>, Vec<String>), ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out: Vec<KeyValue> = facts.service_env.clone();
    let mut warnings = Vec::new();
    let set = |out: &mut Vec<KeyValue>, key: String, value: String| {
        out.retain(|kv| kv.key != key);
        out.push(KeyValue { key, value });
    };
    for from in c.env_from.iter().flatten() {
        let (kind, name, optional, entries) = if let Some(r) = &from.config_map_ref {
            (
                "configmap",
                &r.name,
                r.optional,
                facts.config_maps.get(&r.name),
            )
        } else if let Some(r) = &from.secret_ref {
            ("secret", &r.name, r.optional, facts.secrets.get(&r.name))
        } else {
            continue;
        };
        let Some(entries) = entries else {
            if optional == Some(true) {
                continue;
            }
            return Err(ConfigError(format!("{kind} {name:?} not found")));
        };
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let mut invalid = Vec::new();
        for (key, value) in entries {
            let key = format!("{prefix}{key}");
            if commitd_api::validation::is_env_var_name(&key) {
                set(&mut out, key, value.clone());
            } else {
                invalid.push(key);
            }
        }
        if !invalid.is_empty() {
            warnings.push(format!(
                "container {}: keys [{}] from {kind} {name} are not valid environment variable names; skipped",
                c.name,
                invalid.join(", ")
            ));
        }
    }
    for var in c.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let raw = var.value.clone().unwrap_or_default();
                expand(&raw, &|name| {
                    out.iter()
                        .rev()
                        .find(|kv| kv.key == name)
                        .map(|kv| kv.value.clone())
                })
            }
            Some(source) => {
                let found = if let Some(f) = &source.field_ref {
                    let path = f.field_path.as_str();
                    Some(field_value(pod, path, facts).unwrap_or_else(|| {
                        warnings.push(format!(
                            "container {}: env {}: fieldRef {path:?} is not supported; set to \"\"",
                            c.name, var.name
                        ));
                        String::new()
                    }))
                } else if let Some(r) = &source.resource_field_ref {
                    match resource_value(pod, c, r, facts) {
                        Ok(v) => Some(v),
                        Err(why) => {
                            warnings.push(format!(
                                "container {}: env {}: {why}; set to \"\"",
                                c.name, var.name
                            ));
                            Some(String::new())
                        }
                    }
                } else if let Some(r) = &source.config_map_key_ref {
                    let map = facts.config_maps.get(&r.name);
                    key_value(
                        map,
                        "configmap",
                        "ConfigMap",
                        namespace,
                        &r.name,
                        &r.key,
                        r.optional,
                    )?
                } else if let Some(r) = &source.secret_key_ref {
                    let map = facts.secrets.get(&r.name);
                    key_value(
                        map, "secret", "Secret", namespace, &r.name, &r.key, r.optional,
                    )?
                } else {
                    None
                };
                match found {
                    Some(v) => v,
                    // An optional source that is missing: no variable.
                    None => continue,
                }
            }
        };
        set(&mut out, var.name.clone(), value);
    }
    Ok((out, warnings))
}

/// One key of a ConfigMap or Secret: `Ok(None)` when the object or key
/// is missing and the reference is optional.
fn key_value(
    map: Option<&BTreeMap<String, String>>,
    kind: &str,
    title: &str,
    namespace: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, ConfigError> {
    let optional = optional == Some(true);
    let Some(map) = map else {
        return if optional {
            Ok(None)
        } else {
            Err(ConfigError(format!("{kind} {name:?} not found")))
        };
    };
    match map.get(key) {
        Some(v) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => Err(ConfigError(format!(
            "couldn't find key {key} in {title} {namespace}/{name}"
        ))),
    }
}

/// `resourceFieldRef`: a container's request or limit divided by the
/// divisor and rounded up, as the kubelet reports it. An unset limit is the
/// node's capacity; an unset request is the limit if set, else 0.
pub(crate) fn resource_value(
    pod: &Pod,
    c: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    facts: &EnvFacts,
) -> Result<String, String> {
    use commitd_api::quantity::{cpu_millis, memory_bytes};
    let container = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => c,
        Some(name) => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|x| x.name == name))
            .ok_or_else(|| format!("resourceFieldRef: no container {name:?}"))?,
    };
    let unsupported = || format!("resourceFieldRef: unsupported resource {:?}", r.resource);
    let (section, resource) = r.resource.split_once('.').ok_or_else(unsupported)?;
    // Amounts in millicores for cpu, bytes for memory.
    let (amount_of, node): (fn(&_) -> _, i64) = match resource {
        "cpu" => (cpu_millis, facts.node_cpu_millis),
        "memory" => (memory_bytes, facts.node_memory_bytes),
        _ => return Err(unsupported()),
    };
    let bad = |e| format!("resourceFieldRef {}: {e}", r.resource);
    let resources = container.resources.as_ref();
    let limit = resources
        .and_then(|x| x.limits.as_ref())
        .and_then(|m| m.get(resource));
    let request = resources
        .and_then(|x| x.requests.as_ref())
        .and_then(|m| m.get(resource));
    let amount = match (section, request, limit) {
        ("limits", _, Some(q)) | ("requests", Some(q), _) | ("requests", None, Some(q)) => {
            amount_of(q).map_err(bad)?
        }
        ("limits", _, None) => node,
        ("requests", None, None) => 0,
        _ => return Err(unsupported()),
    };
    let divisor = match &r.divisor {
        Some(d) => amount_of(d).map_err(bad)?,
        None if resource == "cpu" => 1000,
        None => 1,
    };
    if divisor <= 0 {
        return Err(format!(
            "resourceFieldRef {}: divisor must be positive",
            r.resource
        ));
    }
    Ok(((amount + divisor - 1) / divisor).to_string())
}

/// The downward-API value of `path`, for the fields the node knows.
pub(crate) fn field_value(pod: &Pod, path: &str, facts: &EnvFacts) -> Option<String> {
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
        let (c, warnings) = container_config(
            &p,
            &d,
            container,
            "n1",
            &instance,
            &EnvFacts::default(),
            Vec::new(),
        )
        .expect("config");
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
    fn https_probes_are_supported() {
        let mut p = pod();
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.liveness_probe = Some(
            serde_json::from_value(
                serde_json::json!({"httpGet": {"port": 443, "scheme": "HTTPS"}}),
            )
            .expect("probe"),
        );
        assert_eq!(unsupported_fields(c), Vec::<String>::new());
    }

    fn with_env(env: serde_json::Value, env_from: serde_json::Value) -> Pod {
        let mut p = pod();
        if let Some(spec) = p.spec.as_mut() {
            let c = &mut spec.containers[0];
            c.env = serde_json::from_value(env).expect("env");
            c.env_from = serde_json::from_value(env_from).expect("envFrom");
            c.resources = serde_json::from_value(serde_json::json!({
                "limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}
            }))
            .expect("resources");
        }
        p
    }

    fn sources() -> EnvFacts {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        EnvFacts {
            config_maps: BTreeMap::from([(
                "app".to_string(),
                map(&[("mode", "fast"), ("LEVEL", "3"), ("bad key", "x")]),
            )]),
            secrets: BTreeMap::from([("db".to_string(), map(&[("password", "s3cret")]))]),
            node_cpu_millis: 2000,
            node_memory_bytes: 8 << 30,
            ..EnvFacts::default()
        }
    }

    /// Variables as pairs, and warnings.
    type Env = (Vec<(String, String)>, Vec<String>);

    fn env_of(p: &Pod, facts: &EnvFacts) -> Result<Env, ConfigError> {
        let c = &p.spec.as_ref().expect("spec").containers[0];
        let (envs, warnings) = environment(p, c, facts)?;
        Ok((
            envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            warnings,
        ))
    }

    #[test]
    fn env_comes_from_config_maps_secrets_and_resources() {
        let p = with_env(
            serde_json::json!([
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "mode"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "LEVEL", "value": "env wins over envFrom: $(APP_LEVEL)"}
            ]),
            serde_json::json!([
                {"configMapRef": {"name": "app"}, "prefix": "APP_"},
                {"secretRef": {"name": "absent", "optional": true}}
            ]),
        );
        let (env, warnings) = env_of(&p, &sources()).expect("environment");
        assert_eq!(
            env,
            [
                ("APP_LEVEL", "3"),
                ("APP_mode", "fast"),
                ("MODE", "fast"),
                ("PASSWORD", "s3cret"),
                ("MEM_MI", "64"),
                ("CPU_LIMIT", "2"),
                ("CPU_REQ_M", "250"),
                ("LEVEL", "env wins over envFrom: 3"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec()
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("[APP_bad key]"), "{warnings:?}");
    }

    #[test]
    fn missing_sources_are_config_errors_in_the_kubelet_words() {
        let cases = [
            (
                serde_json::json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]),
                serde_json::json!([]),
                "configmap \"nope\" not found",
            ),
            (
                serde_json::json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "nokey"}}}]),
                serde_json::json!([]),
                "couldn't find key nokey in ConfigMap demo/app",
            ),
            (
                serde_json::json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "user"}}}]),
                serde_json::json!([]),
                "couldn't find key user in Secret demo/db",
            ),
            (
                serde_json::json!([]),
                serde_json::json!([{"secretRef": {"name": "tls"}}]),
                "secret \"tls\" not found",
            ),
        ];
        for (env, env_from, message) in cases {
            let p = with_env(env, env_from);
            assert_eq!(
                env_of(&p, &sources()),
                Err(ConfigError(message.to_string()))
            );
        }
    }

    #[test]
    fn referenced_objects_cover_env_and_env_from() {
        let p = with_env(
            serde_json::json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}]),
            serde_json::json!([{"configMapRef": {"name": "app"}}]),
        );
        let (cms, secrets) = referenced_objects(&p);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["app"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["db"]);
    }
}
