//! Requests and limits, as the kubelet turns them into the kernel's
//! controls: CPU shares from the request, a CFS quota from the limit, the
//! memory limit (past which the kernel's OOM killer stops the container,
//! reported `OOMKilled`), and an OOM score by QoS class, so that under
//! node pressure best-effort containers go first.

use commitd_api::quantity::{cpu_millis, memory_bytes};
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
fn amount(list: Option<&std::collections::BTreeMap<String, Quantity>>, name: &str) -> Option<i64> {
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

/// The pod's QoS class, by Kubernetes' rules over all its containers
/// (init containers included).
pub fn qos_class(spec: &PodSpec) -> QosClass {
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        for name in ["cpu", "memory"] {
            let (request, limit) = request_and_limit(c.resources.as_ref(), name);
            if request.is_some_and(|v| v != 0) || limit.is_some_and(|v| v != 0) {
                any = true;
            }
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => QosClass::BestEffort,
        (true, true) => QosClass::Guaranteed,
        (true, false) => QosClass::Burstable,
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
