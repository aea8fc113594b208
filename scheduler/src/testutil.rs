//! Builders for the unit tests: nodes and pods with just the fields the
//! scheduler reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Node, NodeAffinity, NodeCondition, NodeSelector,
    NodeSelectorTerm, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::info::{NodeInfo, PodInfo};

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

/// A Ready node offering `cpu`, `memory` and 110 pods.
pub fn node(name: &str, cpu: &str, memory: &str) -> Node {
    node_with_pods(name, cpu, memory, "110")
}

/// A Ready node offering `cpu`, `memory` and `pods`.
pub fn node_with_pods(name: &str, cpu: &str, memory: &str, pods: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(quantities(&[
                ("cpu", cpu),
                ("memory", memory),
                ("pods", pods),
            ])),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// The scheduler's view of a heartbeating node.
pub fn info(node: Node) -> NodeInfo {
    NodeInfo::new(Arc::new(node), true)
}

/// Marks the node unschedulable.
pub fn cordon(node: &mut Node) {
    node.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
}

/// Sets the node's Ready condition.
pub fn set_ready(node: &mut Node, status: &str) {
    if let Some(c) = node
        .status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .and_then(|c| c.iter_mut().find(|c| c.type_ == "Ready"))
    {
        c.status = status.to_string();
    }
}

/// Adds a taint.
pub fn with_taint(mut node: Node, key: &str, value: &str, effect: &str) -> Node {
    node.spec
        .get_or_insert_with(Default::default)
        .taints
        .get_or_insert_with(Vec::new)
        .push(Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            ..Default::default()
        });
    node
}

/// Adds a label.
pub fn with_label(mut node: Node, key: &str, value: &str) -> Node {
    node.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
    node
}

/// A pod in `default` with one container requesting `cpu` and `memory`.
pub fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some("busybox".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(&[("cpu", cpu), ("memory", memory)])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// The scheduler's view of a pod with valid quantities.
pub fn pod_info(pod: Pod) -> PodInfo {
    PodInfo::new(Arc::new(pod)).expect("valid quantities")
}

/// Removes every container's resources.
pub fn no_requests(mut pod: Pod) -> Pod {
    for c in pod.spec.iter_mut().flat_map(|s| s.containers.iter_mut()) {
        c.resources = None;
    }
    pod
}

/// Adds a request to the first container.
pub fn with_request(mut pod: Pod, name: &str, amount: &str) -> Pod {
    if let Some(r) = pod
        .spec
        .as_mut()
        .and_then(|s| s.containers.first_mut())
        .and_then(|c| c.resources.as_mut())
    {
        r.requests
            .get_or_insert_with(BTreeMap::new)
            .insert(name.into(), Quantity(amount.into()));
    }
    pod
}

/// Binds the pod.
pub fn bound(mut pod: Pod, node: &str) -> Pod {
    pod.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
    pod
}

/// Sets the creation time.
pub fn created_at(mut pod: Pod, time: &str) -> Pod {
    pod.metadata.creation_timestamp = time.parse().ok().map(Time);
    pod
}

/// Sets the node selector.
pub fn set_node_selector(pod: &mut Pod, labels: &[(&str, &str)]) {
    pod.spec.get_or_insert_with(Default::default).node_selector = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
}

/// Sets required node affinity terms.
pub fn with_required_affinity(mut pod: Pod, terms: Vec<NodeSelectorTerm>) -> Pod {
    pod.spec.get_or_insert_with(Default::default).affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

/// Sets tolerations.
pub fn with_tolerations(mut pod: Pod, tolerations: Vec<Toleration>) -> Pod {
    pod.spec.get_or_insert_with(Default::default).tolerations = Some(tolerations);
    pod
}

/// A toleration.
pub fn toleration(
    key: Option<&str>,
    operator: &str,
    value: Option<&str>,
    effect: Option<&str>,
) -> Toleration {
    Toleration {
        key: key.map(str::to_string),
        operator: Some(operator.to_string()).filter(|o| !o.is_empty()),
        value: value.map(str::to_string),
        effect: effect.map(str::to_string),
        ..Default::default()
    }
}

/// Adds a host port to the first container.
pub fn with_host_port(mut pod: Pod, port: i32, ip: Option<&str>, protocol: Option<&str>) -> Pod {
    if let Some(c) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        c.ports.get_or_insert_with(Vec::new).push(ContainerPort {
            container_port: port,
            host_port: Some(port),
            host_ip: ip.map(str::to_string),
            protocol: protocol.map(str::to_string),
            ..Default::default()
        });
    }
    pod
}
