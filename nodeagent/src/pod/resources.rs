//! Requests and limits, as the kubelet turns them into the kernel's
//! controls: CPU shares from the request, a CFS quota from the limit, the
//! memory limit (past which the kernel's OOM killer stops the container,
//! reported `OOMKilled`), and an OOM score by QoS class, so that under
//! node pressure best-effort containers go first.

use commitd_api::quantity::{cpu_millis, memory_bytes};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::cri::proto::LinuxContainerResources;

/// The CFS period the kubelet uses (100 ms), in µs.
const CPU_PERIOD: i64 = 100_000;
/// The smallest quota the kernel accepts, in µs.
const MIN_QUOTA: i64 = 1_000;
/// CPU shares of a container without a CPU request (the kernel's minimum).
const MIN_SHARES: i64 = 2;

/// A pod's quality-of-service class (`status.qosClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Every container has equal requests and limits for CPU and memory.
    Guaranteed,
    /// Something is requested or limited, but not that.
    Burstable,
    /// Nothing is requested or limited.
    BestEffort,
}

impl QosClass {
    /// The name Kubernetes shows.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// One resource of a container in the unit the kernel wants (millicores,
/// bytes); `None` when not set or unreadable (validation rejects bad
/// quantities before they get here).
fn amount(list: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<i64> {
    let q = list?.get(name)?;
    match name {
        "cpu" => cpu_millis(q).ok(),
        _ => memory_bytes(q).ok(),
    }
}

/// A container's request and limit of `name`; a request left out is the
/// limit, as the API server defaults it.
fn request_and_limit(r: Option<&ResourceRequirements>, name: &str) -> (Option<i64>, Option<i64>) {
    let limit = amount(r.and_then(|r| r.limits.as_ref()), name);
    let request = amount(r.and_then(|r| r.requests.as_ref()), name).or(limit);
    (request, limit)
}

/// The resources the QoS class is decided by.
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// The CPU and memory amounts above zero in a resource list.
fn positive(list: Option<&BTreeMap<String, Quantity>>) -> BTreeMap<&'static str, i64> {
    QOS_RESOURCES
        .into_iter()
        .filter_map(|name| Some((name, amount(list, name).filter(|v| *v > 0)?)))
        .collect()
}

/// The pod's QoS class, as Kubernetes decides it (`GetPodQOS`): from the
/// pod's own resources when it sets them, otherwise from all its
/// containers (init containers included), requests defaulting to limits;
/// `Guaranteed` when everything limits CPU and memory and requests equal
/// limits, `BestEffort` when nothing is requested or limited (a zero
/// counts as nothing), `Burstable` otherwise.
pub fn qos_class(spec: &PodSpec) -> QosClass {
    let groups: Vec<Option<&ResourceRequirements>> = match &spec.resources {
        Some(pod_level) => vec![Some(pod_level)],
        None => spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .map(|c| c.resources.as_ref())
            .collect(),
    };
    let mut requests: BTreeMap<&str, i64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i64> = BTreeMap::new();
    let mut guaranteed = true;
    for group in groups {
        let limited = positive(group.and_then(|g| g.limits.as_ref()));
        let mut requested = positive(group.and_then(|g| g.requests.as_ref()));
        // A request left out is the limit; one set to zero stays zero.
        let stated = group.and_then(|g| g.requests.as_ref());
        for (name, v) in &limited {
            if !stated.is_some_and(|r| r.contains_key(*name)) {
                requested.insert(name, *v);
            }
        }
        if !QOS_RESOURCES.iter().all(|r| limited.contains_key(r)) {
            guaranteed = false;
        }
        for (name, v) in requested {
            *requests.entry(name).or_default() += v;
        }
        for (name, v) in limited {
            *limits.entry(name).or_default() += v;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    let equal = requests.len() == limits.len()
        && requests.iter().all(|(name, r)| limits.get(name) == Some(r));
    if guaranteed && equal {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// The CRI resources of `container` in a pod of class `qos` on a node with
/// `node_memory` bytes.
pub fn container_resources(
    container: &Container,
    qos: QosClass,
    node_memory: i64,
) -> LinuxContainerResources {
    let r = container.resources.as_ref();
    let (cpu_request, cpu_limit) = request_and_limit(r, "cpu");
    let (memory_request, memory_limit) = request_and_limit(r, "memory");
    let cpu_shares = cpu_request
        .map(|m| m.saturating_mul(1024) / 1000)
        .unwrap_or(0)
        .max(MIN_SHARES);
    let (cpu_period, cpu_quota) = match cpu_limit {
        Some(m) => (
            CPU_PERIOD,
            (m.saturating_mul(CPU_PERIOD) / 1000).max(MIN_QUOTA),
        ),
        None => (0, 0),
    };
    // The kubelet's OOM scores: critical last, best effort first, the
    // rest by how much of the node they asked for.
    let oom_score_adj = match qos {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let asked = memory_request.unwrap_or(0).max(0);
            let score = if node_memory > 0 {
                1000 - (1000i128 * i128::from(asked) / i128::from(node_memory)) as i64
            } else {
                1000
            };
            score.clamp(2, 999)
        }
    };
    LinuxContainerResources {
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes: memory_limit.unwrap_or(0).max(0),
        oom_score_adj,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(resources: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "c", "image": "i", "resources": resources
        }))
        .expect("container")
    }

    fn spec(containers: Vec<Container>) -> PodSpec {
        PodSpec {
            containers,
            ..Default::default()
        }
    }

    #[test]
    fn qos_classes_follow_kubernetes() {
        let none = container(serde_json::json!({}));
        let equal = container(serde_json::json!({
            "limits": {"cpu": "500m", "memory": "64Mi"}
        }));
        let requests = container(serde_json::json!({
            "requests": {"cpu": "50m", "memory": "16Mi"}
        }));
        let unequal = container(serde_json::json!({
            "requests": {"cpu": "250m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "64Mi"}
        }));
        assert_eq!(qos_class(&spec(vec![none.clone()])), QosClass::BestEffort);
        assert_eq!(qos_class(&spec(vec![equal.clone()])), QosClass::Guaranteed);
        assert_eq!(qos_class(&spec(vec![requests])), QosClass::Burstable);
        assert_eq!(qos_class(&spec(vec![unequal])), QosClass::Burstable);
        assert_eq!(
            qos_class(&spec(vec![equal.clone(), none])),
            QosClass::Burstable
        );
        assert_eq!(QosClass::Guaranteed.as_str(), "Guaranteed");
        // Zero counts as unset; other resources do not count; requests
        // written in other units still equal their limits.
        for (resources, want) in [
            (
                serde_json::json!({"requests": {"cpu": "0"}}),
                QosClass::BestEffort,
            ),
            (
                serde_json::json!({"requests": {"ephemeral-storage": "1Gi"}}),
                QosClass::BestEffort,
            ),
            (
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"},
                                   "requests": {"cpu": "1000m", "memory": "1024Mi"}}),
                QosClass::Guaranteed,
            ),
            (
                serde_json::json!({"limits": {"cpu": "1"}}),
                QosClass::Burstable,
            ),
        ] {
            assert_eq!(
                qos_class(&spec(vec![container(resources.clone())])),
                want,
                "{resources}"
            );
        }
        // Init containers count as containers do.
        let mut s = spec(vec![equal]);
        s.init_containers = Some(vec![container(
            serde_json::json!({"requests": {"memory": "1Mi"}}),
        )]);
        assert_eq!(qos_class(&s), QosClass::Burstable);
    }

    #[test]
    fn requests_and_limits_become_shares_quota_and_memory_limit() {
        let c = container(serde_json::json!({
            "requests": {"cpu": "250m", "memory": "64Mi"},
            "limits": {"cpu": "1500m", "memory": "128Mi"}
        }));
        let r = container_resources(&c, QosClass::Burstable, 1 << 30);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 150_000));
        assert_eq!(r.memory_limit_in_bytes, 128 << 20);
        // 64 MiB of 1 GiB: 1000 - 62.
        assert_eq!(r.oom_score_adj, 938);

        let bare = container(serde_json::json!({}));
        let r = container_resources(&bare, QosClass::BestEffort, 1 << 30);
        assert_eq!(r.cpu_shares, MIN_SHARES);
        assert_eq!(
            (r.cpu_period, r.cpu_quota, r.memory_limit_in_bytes),
            (0, 0, 0)
        );
        assert_eq!(r.oom_score_adj, 1000);

        let tiny = container(serde_json::json!({"limits": {"cpu": "1m", "memory": "8Mi"}}));
        let r = container_resources(&tiny, QosClass::Guaranteed, 1 << 30);
        assert_eq!(r.cpu_shares, MIN_SHARES);
        assert_eq!(r.cpu_quota, MIN_QUOTA);
        assert_eq!(r.oom_score_adj, -997);
    }
}
