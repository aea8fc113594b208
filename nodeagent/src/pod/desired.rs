//! What a Pod object asks of this node, reduced to the facts the state
//! machine decides on. Built fresh from the cached Pod on every pass, with
//! Kubernetes' defaults for anything left out, so decisions never depend on
//! whether someone defaulted the object before storing it.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::probe::ContainerProbes;

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart whatever the exit code (the default).
    Always,
    /// Restart only after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Parses the field; unknown values fall back to the default `Always`
    /// (validation rejects them before they get here).
    pub fn parse(value: Option<&str>) -> RestartPolicy {
        match value {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether an instance that exited with `exit_code` is restarted.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull before every container start.
    Always,
    /// Pull only when the node lacks the image.
    IfNotPresent,
    /// Never pull; fail when the image is absent.
    Never,
}

impl PullPolicy {
    /// Parses the field, defaulting as the API server does from the tag
    /// (`:latest` or none → Always, otherwise IfNotPresent).
    pub fn parse(value: Option<&str>, image: &str) -> PullPolicy {
        let value = value.unwrap_or_else(|| commitd_api::defaults::image_pull_policy(image));
        match value {
            "Always" => PullPolicy::Always,
            "Never" => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// One container of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredContainer {
    /// Its name, unique in the pod.
    pub name: String,
    /// The image as written in the spec.
    pub image: String,
    /// When to pull it.
    pub pull_policy: PullPolicy,
    /// Hash of the fields the runtime config is built from.
    pub hash: String,
    /// Its startup, readiness and liveness probes.
    pub probes: ContainerProbes,
    /// An init container with `restartPolicy: Always` (a sidecar): it
    /// keeps running beside the app containers and is always restarted.
    pub sidecar: bool,
}

/// The pod as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPod {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `spec.containers`, in order.
    pub containers: Vec<DesiredContainer>,
    /// `spec.initContainers`, in order.
    pub init_containers: Vec<DesiredContainer>,
    /// Set when the pod is being deleted: the grace period in seconds.
    pub deletion_grace: Option<i64>,
    /// `spec.terminationGracePeriodSeconds` (default 30), for stops that
    /// are not deletions (a changed spec, a duplicate).
    pub grace_period: i64,
    /// The pod already reached Succeeded or Failed; Kubernetes never moves
    /// a pod out of a terminal phase, so nothing is restarted.
    pub terminal: bool,
}

/// The smallest grace period the kubelet honours for a normal deletion.
pub const MIN_GRACE_SECONDS: i64 = 2;

impl DesiredPod {
    /// Reads a Pod. `None` when it lacks a uid, which only a hand-written
    /// object could; such a pod cannot be tracked in the runtime.
    pub fn from_pod(pod: &Pod) -> Option<DesiredPod> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        let spec = pod.spec.clone().unwrap_or_default();
        let grace_period = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
        let deletion_grace = meta.deletion_timestamp.as_ref().map(|_| {
            meta.deletion_grace_period_seconds
                .unwrap_or(grace_period)
                .max(MIN_GRACE_SECONDS)
        });
        let terminal = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        Some(DesiredPod {
            uid,
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            restart_policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
            containers: spec.containers.iter().map(desired_container).collect(),
            init_containers: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| DesiredContainer {
                    sidecar: c.restart_policy.as_deref() == Some("Always"),
                    ..desired_container(c)
                })
                .collect(),
            deletion_grace,
            grace_period,
            terminal,
        })
    }

    /// `name_namespace(uid)`, how the kubelet names a pod in messages.
    pub fn display(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }
}

fn desired_container(c: &Container) -> DesiredContainer {
    let image = c.image.clone().unwrap_or_default();
    DesiredContainer {
        name: c.name.clone(),
        pull_policy: PullPolicy::parse(c.image_pull_policy.as_deref(), &image),
        hash: spec_hash(c),
        image,
        probes: ContainerProbes::of(c),
        sidecar: false,
    }
}

/// A stable hash (FNV-1a over JSON) of the fields the runtime config is
/// built from. Stable across processes and builds, unlike `DefaultHasher`,
/// so a restarted agent does not mistake every container for changed.
pub fn spec_hash(c: &Container) -> String {
    let mut relevant = serde_json::json!({
        "name": c.name,
        "image": c.image,
        "command": c.command,
        "args": c.args,
        "env": c.env,
        "workingDir": c.working_dir,
        "ports": c.ports,
    });
    // Fields the agent learned to act on later join the hash only when
    // set, so containers that do not use them keep their hash (and keep
    // running) across an agent upgrade.
    if let Some(map) = relevant.as_object_mut() {
        let later = [
            ("envFrom", serde_json::to_value(&c.env_from)),
            ("resources", serde_json::to_value(&c.resources)),
            ("securityContext", serde_json::to_value(&c.security_context)),
            ("volumeMounts", serde_json::to_value(&c.volume_mounts)),
        ];
        for (key, value) in later {
            match value {
                Ok(v) if !v.is_null() => {
                    map.insert(key.to_string(), v);
                }
                _ => {}
            }
        }
    }
    fnv1a_hex(&relevant.to_string())
}

fn fnv1a_hex(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("demo".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("reg/web:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn defaults_like_kubernetes() {
        let d = DesiredPod::from_pod(&pod()).unwrap();
        assert_eq!(d.restart_policy, RestartPolicy::Always);
        assert_eq!(d.grace_period, 30);
        assert_eq!(d.deletion_grace, None);
        assert!(!d.terminal);
        assert_eq!(d.containers[0].pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(d.display(), "web_demo(u1)");
        assert_eq!(PullPolicy::parse(None, "busybox"), PullPolicy::Always);
    }

    #[test]
    fn deletion_uses_the_grace_period_with_a_floor() {
        let mut p = pod();
        p.metadata.deletion_timestamp = Some(commitd_api::meta::now());
        p.metadata.deletion_grace_period_seconds = Some(0);
        assert_eq!(DesiredPod::from_pod(&p).unwrap().deletion_grace, Some(2));
        p.metadata.deletion_grace_period_seconds = None;
        assert_eq!(DesiredPod::from_pod(&p).unwrap().deletion_grace, Some(30));
    }

    #[test]
    fn terminal_phases_stick() {
        let mut p = pod();
        p.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(DesiredPod::from_pod(&p).unwrap().terminal);
    }

    #[test]
    fn pods_without_uid_are_not_tracked() {
        let mut p = pod();
        p.metadata.uid = None;
        assert!(DesiredPod::from_pod(&p).is_none());
    }

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::Always.restarts(0));
        assert!(!RestartPolicy::OnFailure.restarts(0));
        assert!(RestartPolicy::OnFailure.restarts(2));
        assert!(!RestartPolicy::Never.restarts(1));
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let mut c = Container {
            name: "c".into(),
            image: Some("a:1".into()),
            ..Default::default()
        };
        let h = spec_hash(&c);
        assert_eq!(h, spec_hash(&c.clone()));
        c.image = Some("a:2".into());
        assert_ne!(h, spec_hash(&c));
        // A container that sets none of the fields added later hashes as
        // before they were added: an upgraded agent does not restart it.
        let before = serde_json::json!({
            "name": c.name, "image": c.image, "command": c.command, "args": c.args,
            "env": c.env, "workingDir": c.working_dir, "ports": c.ports,
        });
        assert_eq!(spec_hash(&c), fnv1a_hex(&before.to_string()));
        c.resources = serde_json::from_value(serde_json::json!({"limits": {"memory": "1Gi"}}))
            .expect("resources");
        assert_ne!(spec_hash(&c), fnv1a_hex(&before.to_string()));
    }
}
